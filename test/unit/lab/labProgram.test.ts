/**
 * Render and apply stay aligned, for every object type: the lab program's body (`applyLab`, what
 * stacks/index.ts runs) under pulumi.runtime.setMocks hands the dynamic resources exactly what
 * `kvmlab render` writes, byte for byte, for both shipped labs (three-tier.yaml: disk images, OVS,
 * autoscale groups; three-tier-sandbox.yaml: the sandbox guest image with tier roles):
 *   every server's domain XML (kvm) and NoCloud seed files, UUID, MACs, taps, fixed addresses;
 *   every subnet's dnsmasq.conf; every load balancer's haproxy.cfg (pool members included);
 *   every router's ruleset (as the Router's own check derives it) and legs;
 *   every security group's members (the planned addresses of the ports and VIPs listing it).
 * Also: the sandbox lab's tier roles (web → WAS VIP, WAS → DB), the floating IPs and router
 * gateway are the plan's, and the identity section's quotas reach the Project as `cores`.
 */
import { before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { imageStorePaths, networkDevices } from "../../../core/paths";
import { routerInterfaceNames, routerNames } from "../../../core/router";
import { checkRouterInputs } from "../../../provider/router";
import { renderLab } from "../../../lab/artifacts";
import { volumeDiskXml, volumeFormat, volumePath } from "../../../core/volume";
import type { loadLab } from "../../../lab/parse";
import type { SandboxStatus } from "../../../components/sandbox";
import { repoRoot } from "../templates/support";

interface Registered {
  type: string;
  name: string;
  inputs: Record<string, unknown>;
}
let registered: Registered[] = [];
const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-lab-program\n-----END OPENSSH PRIVATE KEY-----\n";
const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJC9ivjyiIwVQaIynSL3v4u50/EB1w8amEowk2dv/zt";
const hosts = [
  { name: "hv1", address: "10.255.0.11", privateKey: KEY, hostKey: HOST_KEY, uplink: "eth1" },
  { name: "hv2", address: "10.255.0.12", privateKey: KEY, hostKey: HOST_KEY, uplink: "eth1" },
];

/**
 * One mocked Pulumi run: each apply is a program of its own (a new monitor), as each `pulumi up`
 * is, so the program's per-run checks (one owner per type and name) see one lab at a time.
 */
async function mockRun(): Promise<void> {
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({ type: args.type, name: args.name, inputs: args.inputs });
        const state: Record<string, unknown> = { ...args.inputs };
        const t = args.type;
        if (t.endsWith("kvmlab:Network"))
          state.bridge = networkDevices(args.inputs.networkName as string).bridge;
        if (t.endsWith("kvmlab:Server"))
          state.ips = (args.inputs.ports as { fixedIp: string }[]).map((p) => p.fixedIp);
        if (t.endsWith("kvmlab:Image")) {
          // What the Image provider reports: the store paths of its files.
          const kernel = args.inputs.kernel !== undefined;
          const format = kernel ? "kernel" : ((args.inputs.diskFormat as string) ?? "qcow2");
          const p = imageStorePaths(
            args.inputs.imageName as string,
            kernel ? "kernel" : "disk",
            kernel ? "qcow2" : (format as "qcow2"),
          );
          Object.assign(state, {
            format,
            diskFormat: kernel ? "" : format,
            diskPath: p.disk,
            kernelPath: p.kernel,
            ramdiskPath: p.ramdisk,
          });
        }
        if (t.endsWith("kvmlab:Project"))
          state.recordId = `${args.inputs.domain ?? "default"}/${args.inputs.projectName}`;
        if (t.endsWith("kvmlab:FloatingIp")) state.floatingIp = args.inputs.address ?? "";
        if (t.endsWith("kvmlab:LoadBalancer"))
          state.vipPort = {
            address: args.inputs.vipAddress,
            subnet: args.inputs.subnetName,
            network: args.inputs.networkName,
          };
        if (t.endsWith("kvmlab:Router")) state.host = args.inputs.host;
        // Placement puts an unpinned server on a host.
        if (t.endsWith("kvmlab:Server") && !args.inputs.host) state.host = "hv2";
        // The Subnet provider picks the first host for DHCP and IPAM unless told.
        if (t.endsWith("kvmlab:Subnet")) state.dhcpHost = args.inputs.dhcpHost ?? "hv1";
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
}

before(mockRun);

function unwrap<T>(o: pulumi.Output<T>): Promise<T> {
  return new Promise((resolve) => o.apply(resolve));
}

/** A fake running sandbox whose guest image files exist (the program hashes them). */
function fakeSandbox(): SandboxStatus {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lab-program-"));
  fs.writeFileSync(path.join(dir, "vmlinux"), "kernel");
  fs.writeFileSync(path.join(dir, "initrd.gz"), "ramdisk");
  return {
    image: {
      kernel: path.join(dir, "vmlinux"),
      ramdisk: path.join(dir, "initrd.gz"),
      kernelCompressed: "",
      kernelVersion: "6.1",
      cmdline: "console=ttyS0 quiet panic=-1",
    },
  } as unknown as SandboxStatus;
}

/**
 * A shipped lab. three-tier.yaml's OVS networks are read as Linux bridge ones until the Server
 * component applies security groups on OVS ports (issue 10); every other byte is the file's.
 */
function loadFile(file: string, edit: (text: string) => string = (t) => t): ReturnType<typeof loadLab> {
  const text = edit(fs.readFileSync(path.join(repoRoot(), "stacks", file), "utf8"));
  const { parseLab } = require("../../../lab/parse") as typeof import("../../../lab/parse");
  const { lab, issues } = parseLab(text.replace(/driver: openvswitch/g, "driver: linuxbridge"));
  assert.deepEqual(issues, []);
  return lab!;
}

async function applyAndCompare(
  file: string,
  edit: (text: string) => string = (t) => t,
): Promise<{ files: Map<string, string>; regs: Registered[]; out: Awaited<ReturnType<typeof apply>> }> {
  registered = [];
  const lab = loadFile(file, edit);
  const { files } = renderLab(lab, { domainType: "kvm" });
  const qemu = renderLab(lab, { domainType: "qemu" }).files;
  const out = await apply(lab);
  // Let every apply settle.
  await unwrap(pulumi.all(Object.values(out.servers).map((s) => s.ip)));
  await unwrap(pulumi.all(Object.values(out.floatingIps)));
  await new Promise((r) => setTimeout(r, 50));
  const regs = registered;
  const of = (type: string) => regs.filter((r) => r.type.endsWith(`kvmlab:${type}`));

  // Servers: whole files, identities and addresses.
  const plan = JSON.parse(files.get("plan.json")!);
  const servers = of("Server");
  assert.equal(servers.length, plan.servers.length, "one Server per planned server");
  for (const planned of plan.servers) {
    const s = servers.find((r) => r.inputs.serverName === planned.name);
    assert.ok(s, `server ${planned.name} applied`);
    const i = s.inputs as {
      uuid: string;
      domainXml: { kvm: string; qemu: string };
      cloudInit: { metaData: string; userData: string; networkConfig: string };
      ports: { mac: string; tap: string; bridge: string; fixedIp: string }[];
    };
    assert.equal(i.domainXml.kvm, files.get(`servers/${planned.name}.xml`), `${planned.name}.xml (kvm)`);
    assert.equal(i.domainXml.qemu, qemu.get(`servers/${planned.name}.xml`), `${planned.name}.xml (qemu)`);
    assert.equal(i.cloudInit.metaData, files.get(`servers/${planned.name}/meta-data`));
    assert.equal(i.cloudInit.userData, files.get(`servers/${planned.name}/user-data`));
    assert.equal(i.cloudInit.networkConfig, files.get(`servers/${planned.name}/network-config`));
    assert.equal(i.uuid, planned.uuid);
    planned.ports.forEach((p: { mac: string; tap: string; bridge: string; ip: string }, k: number) => {
      assert.equal(i.ports[k].mac, p.mac);
      assert.equal(i.ports[k].tap, p.tap);
      assert.equal(i.ports[k].bridge, p.bridge);
      assert.equal(i.ports[k].fixedIp, p.ip, `${planned.name} port ${k}: the planned address`);
    });
  }
  // Subnets.
  for (const sub of of("Subnet")) {
    const conf = files.get(`subnets/${sub.inputs.subnetName}/dnsmasq.conf`);
    if (conf !== undefined)
      assert.equal(sub.inputs.dnsmasqConf, conf, `${sub.inputs.subnetName} dnsmasq.conf`);
  }
  // Load balancers.
  const lbs = of("LoadBalancer");
  assert.equal(lbs.length, plan.loadBalancers.length);
  for (const lb of lbs) {
    assert.equal(
      await unwrap(pulumi.output(lb.inputs.haproxyCfg as string)),
      files.get(`loadbalancers/${lb.inputs.lbName}/haproxy.cfg`),
    );
    assert.equal(
      lb.inputs.vipAddress,
      plan.loadBalancers.find((x: { name: string }) => x.name === lb.inputs.lbName).ip,
    );
  }
  // Routers: the ruleset the Router's own check derives, and the legs.
  for (const r of of("Router")) {
    const name = r.inputs.routerName as string;
    // The hosts as the provider gets them (the mock keeps the private key wrapped as a secret).
    const checked = checkRouterInputs({
      ...r.inputs,
      hosts: hosts.map((h) => ({ ...h, port: 22, user: "root" })),
    });
    assert.deepEqual(checked.failures, [], `router ${name} passes check`);
    assert.equal(checked.inputs.ruleset, files.get(`routers/${name}/ruleset`), `router ${name} ruleset`);
    const ext = r.inputs.external as { address: string; cidr: string; bridge: string };
    const legs = [
      `${routerNames(name).gatewayDevice} ${ext.address}/${ext.cidr.split("/")[1]} ${ext.bridge}`,
      ...(r.inputs.interfaces as { subnetName: string; address: string; cidr: string; bridge: string }[]).map(
        (l) =>
          `${routerInterfaceNames(name, l.subnetName).device} ${l.address}/${l.cidr.split("/")[1]} ${l.bridge}`,
      ),
    ];
    assert.equal(`${legs.join("\n")}\n`, files.get(`routers/${name}/legs`), `router ${name} legs`);
    assert.equal(ext.address, plan.routerGateways[name]);
  }
  // Security groups: members are the planned addresses of what lists them.
  for (const g of of("SecurityGroup")) {
    const name = g.inputs.groupName as string;
    const want = [
      ...plan.servers
        .filter((s: { name: string }) => {
          const lab2 = loadFile(file, edit);
          const launch =
            lab2.servers.find((x) => x.name === s.name) ??
            lab2.autoscaleGroups.find((x) => s.name.startsWith(`${x.name}-`))?.launch;
          return launch?.securityGroups.includes(name);
        })
        .flatMap((s: { ports: { ip: string }[] }) => s.ports.map((p) => p.ip)),
      ...plan.loadBalancers
        .filter((lb: { name: string }) =>
          lab.loadBalancers.find((x) => x.name === lb.name)!.securityGroups.includes(name),
        )
        .map((lb: { ip: string }) => lb.ip),
    ];
    assert.deepEqual([...(g.inputs.members as string[])].sort(), want.sort(), `group ${name} members`);
  }
  // Volumes: one Volume per planned volume, on the planned host, attached to the planned server;
  // the <disk> the provider attaches (the same core/volume.ts function, from these inputs and the
  // planned device) is the rendered file, byte for byte.
  const volumes = of("Volume");
  assert.equal(volumes.length, (plan.volumes ?? []).length, "one Volume per planned volume");
  for (const planned of plan.volumes ?? []) {
    const v = volumes.find((r) => r.inputs.volumeName === planned.name);
    assert.ok(v, `volume ${planned.name} applied`);
    assert.equal(v.inputs.host, planned.host, `volume ${planned.name} host`);
    assert.equal(v.inputs.sizeGiB, planned.sizeGiB);
    assert.equal(v.inputs.provisioning, planned.provisioning);
    assert.equal(v.inputs.server ?? "", planned.server ?? "", `volume ${planned.name} server`);
    assert.equal(v.inputs.image ?? "", planned.image ?? "");
    assert.equal(volumePath(planned.name, v.inputs.provisioning as "thin" | "thick"), planned.path);
    if (planned.device !== null)
      assert.equal(
        volumeDiskXml({
          volumeName: v.inputs.volumeName as string,
          path: planned.path,
          format: volumeFormat(v.inputs.provisioning as "thin" | "thick"),
          device: planned.device,
        }),
        files.get(`volumes/${planned.name}.xml`),
      );
  }
  return { files, regs, out };
}

async function apply(lab: ReturnType<typeof loadLab>) {
  const { applyLab } = await import("../../../stacks/program");
  await mockRun();
  return applyLab(lab, {
    hosts,
    sandbox: fakeSandbox(),
    secret: (key) => pulumi.secret(`secret-of-${key}`),
  });
}

test("three-tier-sandbox.yaml: the lab program applies exactly what kvmlab render writes; tiers get their roles", async () => {
  const { files, regs, out } = await applyAndCompare("three-tier-sandbox.yaml");
  const plan = JSON.parse(files.get("plan.json")!);
  const xml = (n: string) => files.get(`servers/${n}.xml`)!;
  assert.match(xml("web-0"), /lab\.role=web lab\.upstream=10\.10\.2\.5:8080 lab\.sshkey=ssh-ed25519:AAAA/);
  assert.match(xml("was-1"), /lab\.role=was lab\.db=10\.10\.3\.5:3306/);
  assert.match(xml("db-0"), /lab\.name=db-0 lab\.role=db/);
  assert.match(xml("bastion"), /lab\.name=bastion lab\.role=bastion/);
  // The sandbox's guest image: the hosts see its files (their /var overlay), so they copy them
  // on the host instead of receiving the kernel through SSH.
  const images = regs.filter((r) => r.type.endsWith("kvmlab:Image"));
  assert.equal(images.length, 1);
  const sb = fakeSandbox();
  assert.deepEqual(
    [images[0].inputs.kernel, images[0].inputs.ramdisk].map((f) => Object.keys(f as object).sort()),
    [
      ["hostPath", "sha256"],
      ["hostPath", "sha256"],
    ],
  );
  assert.equal(
    path.basename((images[0].inputs.kernel as { hostPath: string }).hostPath),
    path.basename(sb.image.kernel),
  );
  // Floating IPs: the plan's, on the web VIP and the bastion.
  const fips = regs.filter((r) => r.type.endsWith("kvmlab:FloatingIp"));
  assert.deepEqual(
    fips.map((f) => f.inputs.address).sort(),
    [
      plan.loadBalancers.find((l: { name: string }) => l.name === "web-lb").floatingIp,
      plan.servers.find((s: { name: string }) => s.name === "bastion").floatingIp,
    ].sort(),
  );
  // The topology output is one `kvmlab graph` accepts, every server placed on a host.
  const { labTopology } = await import("../../../stacks/program");
  const { topologyFromOutputs } = await import("../../../report/graph/model");
  const lab = loadFile("three-tier-sandbox.yaml");
  const topo = await unwrap(labTopology(lab, hosts, out));
  const checked = topologyFromOutputs({ topology: topo });
  assert.equal(
    checked.edges.filter((e) => e.kind === "placement").length,
    8,
    "every server is drawn on its host (every slot of the groups too)",
  );
  // The app's outputs a person wants.
  const app = out.apps.shop;
  assert.equal(await unwrap(app.webUrl), `http://${plan.loadBalancers[0].floatingIp}/`);
  const ssh = await unwrap(app.sshCommands);
  assert.equal(ssh["db-0"], `ssh -o ProxyJump=root@${plan.servers[0].floatingIp} root@10.10.3.5`);
  assert.deepEqual(Object.keys(ssh).sort(), [
    "bastion",
    "db-0",
    "was-0",
    "was-1",
    "was-2",
    "web-0",
    "web-1",
    "web-2",
  ]);
  // The web and WAS tiers are the lab's autoscale groups: every slot defined, not started by
  // Pulumi; an agent each with the lab's sizes and CPU policies.
  for (const s of regs.filter((r) => r.type.endsWith("kvmlab:Server")))
    assert.equal(
      s.inputs.powerState ?? "running",
      /^(web|was)-\d$/.test(s.inputs.serverName as string) ? "external" : "running",
      `${String(s.inputs.serverName)} power state`,
    );
  const agents = regs.filter((r) => r.type.endsWith("kvmlab:AutoscaleAgent"));
  assert.deepEqual(agents.map((a) => a.inputs.groupName).sort(), ["was", "web"]);
  for (const a of agents) {
    assert.deepEqual([a.inputs.min, a.inputs.max, a.inputs.desired], [2, 3, 2]);
    const raw = a.inputs.agentConfig as string | { value: string };
    const conf = typeof raw === "string" ? raw : raw.value;
    assert.match(conf, /^INTERVAL=10$/m);
    assert.match(conf, /^POLICY_0_NAME='cpu-high'$/m);
    assert.match(conf, /^POLICY_0_CMP='gt'$/m);
    assert.match(conf, /^POLICY_0_PERIOD=60$/m);
    assert.match(conf, /^POLICY_1_CMP='lt'$/m);
    assert.match(conf, /^POLICY_1_THRESHOLD=15$/m);
    assert.match(conf, /^HEALTH_PATH='\/health'$/m);
  }
  // The load balancers' groups on their VIP ports (Linux-bridge VIP networks).
  const vipGroups = regs
    .filter((r) => r.type.endsWith("kvmlab:SecurityGroupPort"))
    .flatMap((p) => (p.inputs.groups as { groupName: string }[]).map((g) => g.groupName))
    .filter((g) => g.endsWith("-lb"))
    .sort();
  assert.deepEqual(vipGroups, ["was-lb", "web-lb"]);
  // Identity: the quota is `cores`, as kvmlab's Project takes it.
  const project = regs.find((r) => r.type.endsWith("kvmlab:Project"))!;
  assert.deepEqual(project.inputs.quotas, { instances: 8, cores: 8, ramMiB: 2048 });
  // Every server counts against the project, the autoscale slots too (their launch spec).
  const servers = regs.filter((r) => r.type.endsWith("kvmlab:Server"));
  assert.ok(servers.some((s) => /^(web|was)-\d$/.test(s.inputs.serverName as string)));
  for (const s of servers) assert.equal(s.inputs.project, "default/shop", s.inputs.serverName as string);
  // Networks, subnets, routers and security groups belong to the lab's defaultProject; the bastion's floating IP
  // to its server's project.
  for (const t of ["Network", "Subnet", "Router", "SecurityGroup"])
    for (const r of regs.filter((x) => x.type.endsWith(`kvmlab:${t}`)))
      assert.equal(r.inputs.project, "default/shop", `${t} ${r.name}: charged to the lab's defaultProject`);
  const bastionFip = regs.find((r) => r.type.endsWith("kvmlab:FloatingIp") && r.name === "bastion-fip")!;
  assert.equal(bastionFip.inputs.project, "default/shop");
  // Load balancers (the groups' and standalone ones) and their VIP security-group ports are the
  // lab's defaultProject's too: in their owners, so on the OVS VIP port (issue 14).
  const lbOwned = regs.filter(
    (r) =>
      r.type.endsWith("kvmlab:LoadBalancer") ||
      (r.type.endsWith("kvmlab:SecurityGroupPort") && /-vip\d?$/.test(r.inputs.portName as string)),
  );
  assert.ok(lbOwned.filter((r) => r.type.endsWith("kvmlab:LoadBalancer")).length >= 2);
  assert.ok(lbOwned.some((r) => r.type.endsWith("kvmlab:SecurityGroupPort")));
  for (const r of lbOwned)
    assert.match(
      r.inputs.owner as string,
      /\/project=default%2Fshop$/,
      `${r.type} ${r.name}: the lab's project`,
    );
  // An assignment names its user and project by id in the lab's domain: a bare "bob" would be
  // kvmlab's Default/bob, which the lab never creates (the sandbox run's failure).
  const users = regs
    .filter((r) => r.type.endsWith("kvmlab:User"))
    .map((r) => `${r.inputs.domain as string}/${r.inputs.userName as string}`);
  const projects = regs
    .filter((r) => r.type.endsWith("kvmlab:Project"))
    .map((r) => `${r.inputs.domain as string}/${r.inputs.projectName as string}`);
  const assignments = regs.filter((r) => r.type.endsWith("kvmlab:RoleAssignment"));
  assert.ok(assignments.length > 0);
  for (const a of assignments) {
    assert.ok(
      users.includes(a.inputs.user as string),
      `assignment user ${String(a.inputs.user)} is one of ${users}`,
    );
    assert.ok(
      projects.includes(a.inputs.project as string),
      `assignment project ${String(a.inputs.project)} is one of ${projects}`,
    );
  }
});

test("three-tier.yaml (disk images, OVS networks, secrets): the lab program applies exactly what kvmlab render writes", async () => {
  // With a data volume on the DB (a 3-tier app's server): thick, on db-0's host, the guest's vdb
  // (db-0 boots from vda).
  const withVolume = (t: string): string =>
    t
      .replace("    host: hv2\n    userData:", "    host: hv2\n    volumes: [db-data]\n    userData:")
      .replace(
        "\nloadBalancers:",
        "\nvolumes:\n  - { name: db-data, sizeGiB: 20, provisioning: thick }\n\nloadBalancers:",
      );
  const { regs, files } = await applyAndCompare("three-tier.yaml", withVolume);
  const plan = JSON.parse(files.get("plan.json")!);
  assert.deepEqual(
    (plan.volumes as { name: string; host: string; server: string; device: string }[]).map(
      (v) => `${v.name} ${v.host} ${v.server} ${v.device}`,
    ),
    ["db-data hv2 db-0 vdb"],
  );
  assert.match(
    files.get("volumes/db-data.xml")!,
    /<source file='\/var\/lib\/kvmlab\/volumes\/db-data\.raw'\/>/,
  );
  const user = regs.find((r) => r.type.endsWith("kvmlab:User") && r.inputs.userName === "alice")!;
  // The secret reference reads the stack secret, and stays a secret.
  assert.match(JSON.stringify(user.inputs.password), /secret-of-kvmlab:alicePassword/);
  assert.match(JSON.stringify(user.inputs.password), /4dabf18193072939515e22adb298388d/);
});

test("a lab network's ML2 type and segmentation id reach its Network (a vlan provider network stays vlan)", async () => {
  const vlan = (t: string): string =>
    t.replace(
      "    kind: provider\n    driver: linuxbridge\n",
      "    kind: provider\n    type: vlan\n    segmentationId: 101\n    driver: linuxbridge\n",
    );
  const { regs } = await applyAndCompare("three-tier-sandbox.yaml", vlan);
  const nets = Object.fromEntries(
    regs
      .filter((r) => r.type.endsWith("kvmlab:Network"))
      .map((r) => [r.inputs.networkName as string, r.inputs]),
  );
  assert.equal(nets.public.type, "vlan");
  assert.equal(nets.public.segmentationId, 101);
  assert.equal(nets["web-net"].type, "vxlan");
});
