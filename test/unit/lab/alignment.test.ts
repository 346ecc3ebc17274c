/**
 * `kvmlab render` shows what apply puts on the hosts: the three-tier lab's web-0 and its
 * network, built as the lab program builds them (Network and Server components, Pulumi project
 * kvmlab-lab, stack "dev"; test/unit/lab/labProgram.test.ts covers every object type through the
 * lab program itself) under pulumi.runtime.setMocks, hand the dynamic resources exactly the
 * domain XML, seed files, UUID, MAC, tap, bridge and dnsmasq.conf that the render wrote; the
 * device names and paths in plan.json are the providers' own. Also: lab names no longer join
 * into host names ambiguously, the stack seeds identities, and a fixed address on a DHCP port
 * is refused as apply would refuse it.
 */
import { before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { dhcpPaths } from "../../../provider/ipam";
import { checkDnsmasqConf } from "../../../provider/kit";
import { networkDevices } from "../../../provider/network";
import { portOwner, serverPaths } from "../../../provider/server/model";
import { RenderError, identityProjectOf, renderLab } from "../../../lab/artifacts";
import { loadLab, parseLab } from "../../../lab/parse";
import { repoRoot } from "../templates/support";

interface Registered {
  type: string;
  name: string;
  inputs: Record<string, unknown>;
}

const registered: Registered[] = [];
const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-alignment\n-----END OPENSSH PRIVATE KEY-----\n";
const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJC9ivjyiIwVQaIynSL3v4u50/EB1w8amEowk2dv/zt";
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
        // What the Network provider reports: its devices, from the network's name.
        if (args.type.endsWith("kvmlab:Network"))
          state.bridge = networkDevices(args.inputs.networkName as string).bridge;
        if (args.type.endsWith("kvmlab:Server")) state.ips = ["10.10.1.12"];
        return { id: `${args.name}-id`, state };
      },
      call(args) {
        return args.inputs;
      },
    },
    "kvmlab-lab",
    "dev",
    false,
  );
});

function unwrap<T>(o: pulumi.Output<T>): Promise<T> {
  return new Promise((resolve) => o.apply(resolve));
}

const threeTier = () => loadLab(path.join(repoRoot(), "stacks", "three-tier.yaml"));

test("three-tier web-0: the render equals what the Network and Server components hand the providers", async () => {
  const { Network } = await import("../../../components/network");
  const { Server, imageStorePaths } = await import("../../../components/server");
  const lab = threeTier();
  const { files } = renderLab(lab, { domainType: "kvm" });
  const plan = JSON.parse(files.get("plan.json")!);

  const net = lab.networks.find((n) => n.name === "web-net")!;
  const sub = net.subnets[0];
  const network = new Network(net.name, {
    kind: net.kind,
    driver: net.driver,
    mtu: net.mtu ?? undefined,
    hosts,
    subnets: [
      {
        name: sub.name,
        cidr: sub.cidr,
        gateway: sub.gateway,
        allocationPool: sub.pool,
        dnsServers: sub.dns,
      },
    ],
  });
  const group = lab.autoscaleGroups.find((g) => g.name === "web")!;
  const image = lab.images.find((i) => i.name === group.launch.image)!;
  const flavor = lab.flavors.find((f) => f.name === group.launch.flavor)!;
  const keypair = lab.keypairs.find((k) => k.name === group.launch.keypair)!;
  const web0 = new Server("web-0", {
    hosts,
    image: { name: image.name, kind: "disk", ...imageStorePaths(image.name, "disk") },
    flavor: { name: flavor.name, vcpus: flavor.vcpus, ramMiB: flavor.ramMiB, diskGiB: flavor.diskGiB },
    ports: [{ network, subnet: sub.name }],
    keypair: { publicKeyLine: keypair.publicKey },
    // As the AutoscaleGroup component builds a slot: the launch spec's user name, which the lab
    // program sets to the image's defaultUser.
    userName: image.defaultUser,
    userData: { writeFiles: group.launch.userData.writeFiles, runcmd: group.launch.userData.runcmd },
    // As the lab program passes it: the identity section's project (issue 14: in the metadata).
    project: identityProjectOf(lab, group.project),
  });
  await unwrap(web0.ip);

  const server = registered.find((r) => r.type.endsWith("kvmlab:Server") && r.name === "web-0")!;
  const subnet = registered.find((r) => r.type.endsWith("kvmlab:Subnet"))!;
  const inputs = server.inputs as {
    uuid: string;
    domainXml: { kvm: string; qemu: string };
    cloudInit: { metaData: string; userData: string; networkConfig: string };
    ports: { mac: string; tap: string; bridge: string; networkName: string; subnetName: string }[];
  };

  // Whole files, byte for byte.
  assert.equal(files.get("servers/web-0.xml"), inputs.domainXml.kvm);
  assert.equal(renderLab(lab, { domainType: "qemu" }).files.get("servers/web-0.xml"), inputs.domainXml.qemu);
  assert.equal(files.get("servers/web-0/meta-data"), inputs.cloudInit.metaData);
  assert.equal(files.get("servers/web-0/user-data"), inputs.cloudInit.userData);
  assert.equal(files.get("servers/web-0/network-config"), inputs.cloudInit.networkConfig);
  assert.equal(files.get("subnets/web-subnet/dnsmasq.conf"), subnet.inputs.dnsmasqConf);

  // Identities and device names, as plan.json reports them.
  const planned = plan.servers.find((s: { name: string }) => s.name === "web-0");
  const port = inputs.ports[0];
  assert.equal(planned.uuid, inputs.uuid);
  assert.equal(planned.ports[0].mac, port.mac);
  assert.equal(planned.ports[0].tap, port.tap);
  assert.equal(planned.ports[0].bridge, port.bridge);
  assert.equal(port.bridge, networkDevices("web-net").bridge);
  assert.equal(port.bridge, await unwrap(network.bridge));
  assert.ok(
    files.get("servers/web-0.xml")!.includes(`<source bridge='${networkDevices("web-net").bridge}'/>`),
  );
  assert.equal(planned.instanceDir, serverPaths(inputs.uuid).dir, "keyed by the UUID (issue 15)");
  assert.ok(files.get("servers/web-0.xml")!.includes(`<log file='${serverPaths(inputs.uuid).serialLog}'`));
  assert.equal(
    plan.networks.find((n: { name: string }) => n.name === "web-net").bridge,
    networkDevices("web-net").bridge,
  );

  // DHCP: namespace, interface and files are the Subnet provider's; the hostsfile holds web-0.
  const paths = dhcpPaths("web-net", "web-subnet");
  const { name: _n, ...plannedPaths } = plan.subnets.find((s: { name: string }) => s.name === "web-subnet");
  assert.deepEqual(plannedPaths, paths);
  const conf = files.get("subnets/web-subnet/dnsmasq.conf")!.split("\n");
  assert.ok(conf.includes(`interface=${paths.nsDevice}`));
  assert.ok(conf.includes(`pid-file=${paths.pidFile}`));
  assert.ok(conf.some((l) => l.includes(paths.leaseFile)));
  // The rendered config passes the Subnet provider's allow-list (issue 15).
  assert.equal(
    checkDnsmasqConf(files.get("subnets/web-subnet/dnsmasq.conf")!, {
      interface: paths.nsDevice,
      pidFile: paths.pidFile,
      leaseFile: paths.leaseFile,
    }),
    undefined,
  );
  // The console has no password: by default it listens on the host's loopback only.
  assert.match(files.get("servers/web-0.xml")!, /<graphics type='vnc'[^>]*listen='127\.0\.0\.1'/);
  assert.doesNotMatch(files.get("servers/web-0.xml")!, /0\.0\.0\.0/);
  assert.ok(
    files.get("subnets/web-subnet/hosts")!.split("\n").includes(`${port.mac},${planned.ports[0].ip}`),
    "web-0's MAC and address in the dhcp-hostsfile",
  );
  assert.equal(subnet.inputs.dhcpAddress, plan.dhcpPorts["web-subnet"]);
  assert.equal(portOwner("web-0", 0), "server:web-0:0");
});

const tiny = (labName: string, server: string, extra = "") => `
name: ${labName}
hosts:
  - name: hv1
    address: 10.255.0.11
    privateKeyPath: ~/.ssh/kvmlab
    hostKey: ${HOST_KEY}
images:
  - name: cirros
    format: qcow2
    source: /var/cache/kvmlab/cirros.img
    checksum: "sha256:${"c".repeat(64)}"
flavors:
  - { name: m1.nano, vcpus: 1, ramMiB: 128, diskGiB: 1 }
networks:
  - name: lan
    kind: provider
    physicalInterface: eth1
    subnets:
      - { name: lan-subnet, cidr: 192.168.50.0/24, gateway: 192.168.50.1, pool: { start: 192.168.50.100, end: 192.168.50.110 } }
servers:
  - { name: ${server}, image: cirros, flavor: m1.nano, networks: [{ subnet: lan-subnet${extra} }] }
`;

function render(text: string, stack?: string) {
  const { lab, issues } = parseLab(text);
  assert.deepEqual(issues, []);
  return renderLab(lab!, { stack });
}

test("lab a-b + server c and lab a + server b-c get different domains, paths and identities", () => {
  const one = render(tiny("a-b", "c"));
  const two = render(tiny("a", "b-c"));
  const xml1 = one.files.get("servers/c.xml")!;
  const xml2 = two.files.get("servers/b-c.xml")!;
  const name = (xml: string) => /<name>([^<]*)<\/name>/.exec(xml)![1];
  assert.notEqual(name(xml1), name(xml2));
  assert.notEqual(one.servers.get("c")!.uuid, two.servers.get("b-c")!.uuid);
  assert.notEqual(one.servers.get("c")!.macs[0], two.servers.get("b-c")!.macs[0]);
  assert.ok(xml1.includes(`${serverPaths(one.servers.get("c")!.uuid).dir}/disk.qcow2`));
  assert.ok(xml2.includes(`${serverPaths(two.servers.get("b-c")!.uuid).dir}/disk.qcow2`));
  assert.equal(one.servers.get("c")!.uuidSeed, "kvmlab-lab/dev/c");
  assert.equal(two.servers.get("b-c")!.uuidSeed, "kvmlab-lab/dev/b-c");
});

test("the stack seeds UUID, MAC and tap (default dev); names and paths stay", () => {
  const dev = render(tiny("lab", "vm"));
  const prod = render(tiny("lab", "vm"), "prod");
  assert.deepEqual([...dev.files], [...render(tiny("lab", "vm"), "dev").files], "dev is the default");
  assert.notEqual(dev.servers.get("vm")!.uuid, prod.servers.get("vm")!.uuid);
  assert.notEqual(dev.servers.get("vm")!.macs[0], prod.servers.get("vm")!.macs[0]);
  assert.notEqual(dev.servers.get("vm")!.taps[0], prod.servers.get("vm")!.taps[0]);
  assert.match(prod.files.get("servers/vm.xml")!, /<name>vm<\/name>/);
  assert.equal(JSON.parse(prod.files.get("plan.json")!).stack, "prod");
  assert.throws(
    () => render(tiny("lab", "vm"), "bad stack"),
    (err: Error) => err instanceof RenderError && /^stack: stack: expected a name/.test(err.message),
  );
});

test("a fixed address on the DHCP port's address is refused, naming the field", () => {
  const { lab, issues } = parseLab(tiny("lab", "vm", ", fixedIp: 192.168.50.100"));
  assert.equal(lab, null);
  assert.equal(issues.length, 1);
  assert.equal(issues[0].path, "servers[0].networks[0].fixedIp");
  assert.match(
    issues[0].message,
    /^cannot render: 192\.168\.50\.100 is the DHCP port's address of subnet lan-subnet/,
  );
});

test("kvmlab render --stack writes the stack's identities; a bad --stack is a usage error", async () => {
  const { main } = await import("../../../cli/render");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-render-stack-"));
  const errors: string[] = [];
  const log = console.log;
  const error = console.error;
  console.log = () => {};
  console.error = (...a: unknown[]) => void errors.push(a.join(" "));
  try {
    const labFile = path.join(repoRoot(), "stacks", "three-tier.yaml");
    assert.equal(await main([labFile, "--out", path.join(dir, "out"), "--stack", "prod"]), 0);
    const plan = JSON.parse(fs.readFileSync(path.join(dir, "out", "plan.json"), "utf8"));
    assert.equal(plan.stack, "prod");
    assert.equal(plan.servers[0].uuidSeed, "kvmlab-lab/prod/bastion");
    assert.ok(fs.existsSync(path.join(dir, "out", "subnets", "web-subnet", "hosts")));
    assert.equal(await main([labFile, "--out", path.join(dir, "bad"), "--stack", "a;b"]), 2);
    assert.match(errors.join("\n"), /--stack: expected a name/);
    assert.ok(!fs.existsSync(path.join(dir, "bad")), "nothing written");
  } finally {
    console.log = log;
    console.error = error;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
