/**
 * The Server component under pulumi.runtime.setMocks: what it registers (one Server dynamic
 * resource, parented to the component), what it renders into the inputs (both domain types,
 * ports from the network's outputs, NoCloud seed with the keypair, deterministic UUID/MAC/tap),
 * how zones map, how an Image component's paths reach the resource. Proves the
 * wiring only; test/integration/server.test.ts proves the hosts accept it.
 */
import { before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as pulumi from "@pulumi/pulumi";

interface Registered {
  type: string;
  name: string;
  inputs: Record<string, unknown>;
  parent?: string;
}

const registered: Registered[] = [];
const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-wiring\n-----END OPENSSH PRIVATE KEY-----\n";
const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
const hosts = [
  { name: "hv1", address: "10.255.0.11", privateKey: KEY, hostKey: HOST_KEY, uplink: "eth1" },
  { name: "hv2", address: "10.255.0.12", privateKey: KEY, hostKey: HOST_KEY, uplink: "eth1" },
];

before(async () => {
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({ type: args.type, name: args.name, inputs: args.inputs });
        const state: Record<string, unknown> = { ...args.inputs };
        if (args.type.endsWith("kvmlab:Network")) state.bridge = "kvlb-00000000";
        if (args.type.endsWith("kvmlab:Server")) state.ips = ["172.24.4.101"];
        if (args.type.endsWith("kvmlab:Image")) {
          // What the Image provider resolves for a raw disk image.
          const dir = `/var/lib/kvmlab/images/${args.inputs.imageName as string}`;
          Object.assign(state, {
            format: "raw",
            diskPath: `${dir}/disk.raw`,
            kernelPath: "",
            ramdiskPath: "",
          });
        }
        return { id: `${args.name}-id`, state };
      },
      call(args) {
        return args.inputs;
      },
    },
    "proj",
    "dev",
    false,
  );
});

function unwrap<T>(o: pulumi.Output<T>): Promise<T> {
  return new Promise((resolve) => o.apply(resolve));
}

test("a Server registers one Server resource with rendered XML, seed and ports", async () => {
  const { Network } = await import("../../components/network");
  const { Server, imageStorePaths } = await import("../../components/server");
  const net = new Network("ext", {
    kind: "provider",
    hosts,
    subnets: [{ name: "ext-v4", cidr: "172.24.4.0/24" }],
  });
  const web = new Server("web1", {
    hosts,
    image: { name: "labimg", kind: "kernel", ...imageStorePaths("labimg", "kernel") },
    flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128 },
    ports: [{ network: net, subnet: "ext-v4", fixedIp: "172.24.4.50" }],
    keypair: {
      publicKeyLine: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl op",
    },
    kernelCmdline: "console=ttyS0 lab.name=web1",
  });
  assert.equal(await unwrap(web.ip), "172.24.4.101");
  const r = registered.find((x) => x.type === "pulumi-nodejs:dynamic/kvmlab:Server" && x.name === "web1");
  assert.ok(r, `registered: ${registered.map((x) => x.type).join(", ")}`);
  const i = r.inputs as Record<string, never>;
  assert.equal(i.serverName, "web1");
  assert.equal(i.host, "");
  assert.deepEqual(i.readiness, { kind: "dhcp" });
  const ports = i.ports as { bridge: string; mac: string; tap: string; fixedIp: string; dhcpHost: string }[];
  assert.equal(ports[0].bridge, "kvlb-00000000");
  assert.equal(ports[0].fixedIp, "172.24.4.50");
  assert.match(ports[0].mac, /^fa:16:3e(:[0-9a-f]{2}){3}$/);
  assert.match(ports[0].tap, /^tap[0-9a-f]{11}$/);
  const xml = i.domainXml as { kvm: string; qemu: string };
  assert.ok(xml.kvm.startsWith("<domain type='kvm'>") && xml.qemu.startsWith("<domain type='qemu'>"));
  for (const x of [xml.kvm, xml.qemu]) {
    assert.ok(x.includes(`<uuid>${i.uuid as string}</uuid>`));
    assert.ok(x.includes(`<mac address='${ports[0].mac}'/>`));
    assert.ok(x.includes("<kernel>/var/lib/kvmlab/images/labimg/kernel</kernel>"));
    assert.ok(x.includes("<cmdline>console=ttyS0 lab.name=web1</cmdline>"));
    assert.ok(x.includes(`<source file='/var/lib/kvmlab/instances/${i.uuid as string}/seed.iso'/>`));
    assert.ok(x.includes("<memory unit='MiB'>128</memory>"));
  }
  const seed = i.cloudInit as { metaData: string; userData: string; networkConfig: string };
  assert.match(seed.metaData, new RegExp(i.uuid as string));
  assert.match(
    seed.userData,
    /ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl op/,
  );
  assert.match(seed.networkConfig, new RegExp(ports[0].mac));
  // Same name and stack → same identity on the next run.
  const { renderServer } = await import("../../components/server");
  assert.equal(
    renderServer({
      serverName: "web1",
      uuidSeed: "proj/dev/web1",
      lab: "proj",
      stack: "dev",
      project: "",
      image: { name: "labimg", kind: "kernel", disk: "", format: "qcow2", kernel: "/k", ramdisk: "" },
      flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128, diskGiB: 0 },
      ports: [],
      kernelCmdline: "",
      cloudInit: false,
      publicKeys: [],
      userName: "kvmlab",
      userData: {},
      consoleListen: "0.0.0.0",
    }).uuid,
    i.uuid,
  );
});

test("zones pin the server; an unknown zone or subnet is a clear error", async () => {
  const { Network } = await import("../../components/network");
  const { Server, hostsInZone } = await import("../../components/server");
  assert.deepEqual(hostsInZone(["hv1", "hv2"], "az2", { az1: ["hv1"], az2: ["hv2"] }), ["hv2"]);
  assert.throws(() => hostsInZone(["hv1"], "nope", { az1: ["hv1"] }), /zone "nope" is not defined/);
  const net = new Network("lan2", {
    kind: "provider",
    hosts,
    subnets: [{ name: "lan2-v4", cidr: "10.30.0.0/24" }],
  });
  const dbServer = new Server("db1", {
    hosts,
    image: { name: "img", kind: "disk", disk: "/var/lib/kvmlab/images/img/disk" },
    flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128, diskGiB: 1 },
    ports: [{ network: net, subnet: "lan2-v4" }],
    availabilityZone: "az2",
    availabilityZones: { az1: ["hv1"], az2: ["hv2"] },
  });
  await unwrap(dbServer.ip);
  const db = registered.find((x) => x.type.endsWith("kvmlab:Server") && x.name === "db1");
  assert.equal(db?.inputs.host, "hv2");
  assert.throws(
    () =>
      new Server("bad1", {
        hosts,
        image: { name: "img", kind: "disk", disk: "/d" },
        flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128 },
        ports: [{ network: net, subnet: "nosuch" }],
      }),
    /ports\[0\]\.subnet: the network has no subnet "nosuch"; use one of lan2-v4/,
  );
});

test("an Image component as image: the resource's resolved paths and kind reach the Server's inputs", async () => {
  const { Image } = await import("../../components/image");
  const { Server } = await import("../../components/server");
  const img = new Image("rawimg", {
    hosts,
    source: { localPath: "/srv/rawimg.raw", sha256: "e".repeat(64) },
    diskFormat: "raw",
  });
  const srv = new Server("app1", {
    hosts,
    image: img,
    flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128, diskGiB: 1 },
    cloudInit: false,
  });
  await unwrap(srv.uuid);
  const r = registered.find((x) => x.type.endsWith("kvmlab:Server") && x.name === "app1");
  assert.ok(r, `registered: ${registered.map((x) => `${x.type}/${x.name}`).join(", ")}`);
  assert.deepEqual(r.inputs.image, {
    name: "rawimg",
    kind: "disk",
    disk: "/var/lib/kvmlab/images/rawimg/disk.raw",
    format: "raw",
    kernel: "",
    ramdisk: "",
  });
  const xml = r.inputs.domainXml as { kvm: string; qemu: string };
  assert.ok(
    xml.qemu.includes(`<source file='/var/lib/kvmlab/instances/${r.inputs.uuid as string}/disk.qcow2'/>`),
  );
  assert.ok(xml.qemu.includes("<kvmlab:image>rawimg</kvmlab:image>"));
});

test("a Flavor resource as flavor: the whole flavor reaches the Server, its extra specs the XML", async () => {
  const { Flavor } = await import("../../provider/flavor");
  const { Server } = await import("../../components/server");
  const flavor = new Flavor("m1.watched", {
    flavorName: "m1.watched",
    vcpus: 2,
    ramMiB: 256,
    diskGiB: 1,
    extraSpecs: { "hw:cpu_sockets": "2", "hw:watchdog_action": "poweroff", "kvmlab:tier": "web" },
    hosts,
  });
  const srv = new Server("watched1", {
    hosts,
    image: { name: "img", kind: "disk", disk: "/var/lib/kvmlab/images/img/disk.qcow2" },
    flavor,
    cloudInit: false,
  });
  await unwrap(srv.uuid);
  const r = registered.find((x) => x.type.endsWith("kvmlab:Server") && x.name === "watched1");
  assert.ok(r);
  assert.deepEqual(r.inputs.flavor, {
    name: "m1.watched",
    vcpus: 2,
    ramMiB: 256,
    diskGiB: 1,
    ephemeralGiB: 0,
    swapMiB: 0,
    extraSpecs: { "hw:cpu_sockets": "2", "hw:watchdog_action": "poweroff", "kvmlab:tier": "web" },
  });
  const xml = r.inputs.domainXml as { kvm: string; qemu: string };
  for (const x of [xml.kvm, xml.qemu]) {
    assert.match(x, /<vcpu placement='static'>2<\/vcpu>/);
    assert.match(x, /<topology sockets='2' cores='1' threads='1'\/>/);
    assert.match(x, /<watchdog model='i6300esb' action='poweroff'\/>/);
    assert.ok(x.includes("<kvmlab:spec key='kvmlab:tier'>web</kvmlab:spec>"));
  }
});

test("securityGroups on a port: one SecurityGroupPort wired to the Server's host, tap, MAC and IP; the Server's inputs do not carry the groups", async () => {
  const { Network } = await import("../../components/network");
  const { Server, imageStorePaths } = await import("../../components/server");
  const { SecurityGroup } = await import("../../provider/securityGroup");
  const net = new Network("sgnet", {
    kind: "provider",
    hosts,
    subnets: [{ name: "v4", cidr: "172.24.4.0/24" }],
  });
  const web = new SecurityGroup("websg", {
    hosts,
    rules: [{ direction: "ingress", protocol: "tcp", port: 80 }],
  });
  const common = {
    serverName: "web9",
    hosts,
    host: "hv2",
    image: { name: "labimg", kind: "kernel" as const, ...imageStorePaths("labimg", "kernel") },
    flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128 },
  };
  const plain = new Server("web9-plain", { ...common, ports: [{ network: net, subnet: "v4" }] });
  const guarded = new Server("web9-sg", {
    ...common,
    ports: [{ network: net, subnet: "v4", securityGroups: [web] }],
  });
  assert.equal(plain.securityGroupPorts[0], undefined, "no groups, no SecurityGroupPort");
  const sgp = guarded.securityGroupPorts[0];
  assert.ok(sgp, "a SecurityGroupPort for the port with groups");
  await unwrap(sgp.portName);
  await unwrap(guarded.ip);
  await unwrap(plain.ip);
  const reg = (type: string, name: string) => {
    const r = registered.find((x) => x.type === `pulumi-nodejs:dynamic/kvmlab:${type}` && x.name === name);
    assert.ok(r, `${type} ${name} registered`);
    return r;
  };
  const server = reg("Server", "web9-sg");
  const port = reg("SecurityGroupPort", "web9-sg-port0");
  const sp = (server.inputs.ports as { tap: string; mac: string }[])[0];
  assert.equal(port.inputs.portName, "web9-0");
  assert.equal(port.inputs.host, "hv2", "the host the Server reports");
  assert.equal(port.inputs.tap, sp.tap);
  assert.equal(port.inputs.mac, sp.mac);
  assert.equal(port.inputs.ip, "172.24.4.101", "the Server's address");
  assert.equal(port.inputs.driver, "linuxbridge");
  assert.equal(port.inputs.networkBridge, "kvlb-00000000");
  assert.deepEqual(port.inputs.groups, [
    { groupName: "websg", rules: [{ direction: "ingress", protocol: "tcp", port: 80 }] },
  ]);
  // Groups live only on the SecurityGroupPort: the Server's inputs are the same with or without
  // them, so changing groups or rules can never update (or reboot) the guest.
  const strip = (i: Record<string, unknown>) => ({ ...i, owner: undefined });
  assert.deepEqual(strip(server.inputs), strip(reg("Server", "web9-plain").inputs));
});

test("securityGroups on an OVS port: the Server plugs the tap into its own qbr bridge (Neutron's hybrid layout), the SecurityGroupPort filters that tap; without the key the port stays on OVS", async () => {
  const { Network } = await import("../../components/network");
  const { Server, imageStorePaths } = await import("../../components/server");
  const { SecurityGroup } = await import("../../provider/securityGroup");
  const net = new Network("sgovs", {
    kind: "selfservice",
    driver: "openvswitch",
    hosts,
    subnets: [{ name: "v4", cidr: "10.77.0.0/24" }],
  });
  const web = new SecurityGroup("websg-ovs", {
    hosts,
    rules: [{ direction: "ingress", protocol: "tcp", port: 80 }],
  });
  const common = {
    hosts,
    host: "hv1",
    image: { name: "labimg", kind: "kernel" as const, ...imageStorePaths("labimg", "kernel") },
    flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128 },
  };
  const guarded = new Server("ovs-sg", {
    ...common,
    ports: [{ network: net, subnet: "v4", securityGroups: [web] }],
  });
  const reserved = new Server("ovs-empty", {
    ...common,
    ports: [{ network: net, subnet: "v4", securityGroups: [] }],
  });
  const plain = new Server("ovs-plain", { ...common, ports: [{ network: net, subnet: "v4" }] });
  assert.ok(guarded.securityGroupPorts[0]);
  assert.equal(reserved.securityGroupPorts[0], undefined, "[] plumbs the port but filters nothing yet");
  await unwrap(guarded.securityGroupPorts[0]!.portName);
  await Promise.all([unwrap(guarded.ip), unwrap(reserved.ip), unwrap(plain.ip)]);
  const reg = (type: string, name: string) => {
    const r = registered.find((x) => x.type === `pulumi-nodejs:dynamic/kvmlab:${type}` && x.name === name);
    assert.ok(r, `${type} ${name} registered`);
    return r;
  };
  for (const name of ["ovs-sg", "ovs-empty"]) {
    const s = reg("Server", name);
    const p = (s.inputs.ports as { tap: string; bridge: string; driver: string; hybrid?: boolean }[])[0];
    assert.equal(p.hybrid, true, `${name}: hybrid port`);
    assert.equal(p.driver, "openvswitch");
    const qbr = `qbr${p.tap.slice(3)}`;
    for (const x of Object.values(s.inputs.domainXml as Record<string, string>)) {
      assert.ok(x.includes(`<source bridge='${qbr}'/>`), `${name}: the XML names ${qbr}`);
      assert.ok(!x.includes("virtualport"), `${name}: the tap is not an OVS port`);
    }
  }
  const port = reg("SecurityGroupPort", "ovs-sg-port0");
  const sp = (reg("Server", "ovs-sg").inputs.ports as { tap: string }[])[0];
  assert.equal(port.inputs.driver, "openvswitch");
  assert.equal(port.inputs.tap, sp.tap);
  const p0 = (reg("Server", "ovs-plain").inputs.ports as { hybrid?: boolean }[])[0];
  assert.equal(p0.hybrid, undefined, "no securityGroups key: the tap stays an OVS port");
  const px = (reg("Server", "ovs-plain").inputs.domainXml as Record<string, string>).qemu;
  assert.match(px, /<virtualport type='openvswitch'/);
});
