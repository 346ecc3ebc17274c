/**
 * The ThreeTierApp component under pulumi.runtime.setMocks, as examples/three-tier uses it (its
 * own security groups, guest roles): the web and WAS tiers are autoscale groups (min/desired 2,
 * max = the 3 slots given, the default CPU policies, a scaling agent each on its load balancer's
 * host), every slot a Server defined but not started (powerState "external") on its tier's subnet
 * with its fixed address, pinned round-robin; the canonical groups with their rules and member
 * sets (every slot's address), each created after the groups its rules name; every port in its
 * tier's group; each server's kernel command line carries its role, the WAS VIP (web), the DB
 * (WAS) and the key; the two groups' load balancers with every slot in their pools; floating IPs
 * on the web VIP and the bastion; the SSH and console outputs for every slot. A max that is not
 * the number of slots is refused.
 * The sandbox lifecycle test (test/lifecycle/three-tier.test.ts) proves the traffic.
 */
import { before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";

interface Registered {
  type: string;
  name: string;
  inputs: Record<string, unknown>;
}

const registered: Registered[] = [];
const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-wiring-3t-"));
const keyPath = path.join(keyDir, "id");
const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
const OPS = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPeN3vJSRn4BwgqNenNPcCH4hvCnyw2Vn312CotyhwiK ops";

before(async () => {
  fs.writeFileSync(
    keyPath,
    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    {
      mode: 0o600,
    },
  );
  const host = (n: number) => ({
    name: `hv${n}`,
    address: `10.255.0.1${n}`,
    privateKeyPath: keyPath,
    hostKey: HOST_KEY,
    uplink: "eth1",
    tunnelAddress: `10.254.0.1${n}`,
  });
  pulumi.runtime.setAllConfig({ "kvmlab:hosts": JSON.stringify([host(1), host(2)]) });
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({
          type: args.type,
          name: args.name,
          inputs: args.inputs,
        });
        const state: Record<string, unknown> = { ...args.inputs };
        const t = args.type;
        if (t.endsWith("kvmlab:Network")) state.bridge = `kvlb-${args.name}`;
        if (t.endsWith("kvmlab:Subnet")) state.dhcpHost = "hv1";
        if (t.endsWith("kvmlab:Router")) state.host = args.inputs.host ?? "hv1";
        if (t.endsWith("kvmlab:Server")) {
          state.ips = (args.inputs.ports as { fixedIp: string }[]).map((p) => p.fixedIp);
          state.consoleUrl = `vnc://${args.inputs.host}:5900`;
        }
        if (t.endsWith("kvmlab:LoadBalancer"))
          state.vipPort = {
            address: args.inputs.vipAddress,
            subnet: args.inputs.subnetName,
            network: args.inputs.networkName,
          };
        if (t.endsWith("kvmlab:FloatingIp"))
          state.floatingIp = args.name.startsWith("bastion") ? "172.24.4.102" : "172.24.4.101";
        return { id: `${args.name}-id`, state };
      },
      call(args) {
        return args.inputs;
      },
    },
    "three-tier",
    "dev",
    false,
  );
});

function unwrap<T>(o: pulumi.Output<T>): Promise<T> {
  return new Promise((resolve) => o.apply(resolve));
}

test("ThreeTierApp: servers, roles, security groups, load balancers, floating IPs and outputs", async () => {
  const { Network } = await import("../../components/network");
  const { ThreeTierApp } = await import("../../components/threeTierApp");
  const { Router } = await import("../../provider/router");
  const net = (name: string, third: number) =>
    new Network(name, { subnets: [{ name: `${name}-v4`, cidr: `10.30.${third}.0/24` }] });
  const ext = new Network("ext", {
    kind: "provider",
    subnets: [{ name: "ext-v4", cidr: "172.24.4.0/24", gateway: "172.24.4.1", enableDhcp: false }],
  });
  const [web, was, db, mgmt] = [net("web", 1), net("was", 2), net("db", 3), net("mgmt", 9)];
  const router = new Router("edge", {
    hosts: [],
    external: {
      subnetName: "ext-v4",
      networkName: "ext",
      bridge: "b",
      driver: "linuxbridge",
      cidr: "172.24.4.0/24",
      address: "172.24.4.100",
      gateway: "172.24.4.1",
      mtu: 1500,
      ipamHost: "hv1",
    },
  });
  const { SecurityGroup } = await import("../../provider/securityGroup");
  const wasVipGroup = new SecurityGroup("was-vip", {
    groupName: "was-vip",
    hosts: [],
    rules: [{ direction: "ingress", protocol: "tcp", portMin: 8080, portMax: 8080, remoteGroup: "shop-web" }],
    members: ["10.30.2.5"],
  });
  const app = new ThreeTierApp("shop", {
    image: { name: "labguest", kind: "kernel", kernel: "/k", ramdisk: "/r" },
    flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128 },
    keypair: { publicKeyLine: OPS },
    router,
    external: { network: ext, subnet: "ext-v4" },
    kernelCmdline: "console=ttyS0",
    web: {
      network: web,
      subnet: "web-v4",
      vipAddress: "10.30.1.5",
      members: ["10.30.1.11", "10.30.1.12", "10.30.1.13"],
    },
    was: {
      network: was,
      subnet: "was-v4",
      vipAddress: "10.30.2.5",
      members: ["10.30.2.11", "10.30.2.12", "10.30.2.13"],
      // A tier's VIP port in a group of its own (Octavia's vip_sg_ids).
      loadBalancerSecurityGroups: [wasVipGroup],
    },
    db: { network: db, subnet: "db-v4", name: "db", address: "10.30.3.11" },
    bastion: { network: mgmt, subnet: "mgmt-v4", name: "bastion", address: "10.30.9.11" },
    guestRoles: true,
    project: "default/shop",
  });
  const ssh = await unwrap(app.sshCommands);
  await unwrap(app.consoleUrls);
  await new Promise((r) => setTimeout(r, 50));

  const of = (type: string) => registered.filter((r) => r.type.endsWith(`kvmlab:${type}`));
  const servers = Object.fromEntries(of("Server").map((s) => [s.inputs.serverName as string, s.inputs]));
  assert.deepEqual(Object.keys(servers).sort(), [
    "bastion",
    "db",
    "shop-was-0",
    "shop-was-1",
    "shop-was-2",
    "shop-web-0",
    "shop-web-1",
    "shop-web-2",
  ]);
  // Every slot is defined, never started by Pulumi (the group's agent starts them); DB and bastion run.
  for (const n of ["shop-web-0", "shop-web-2", "shop-was-1"])
    assert.equal(servers[n].powerState, "external", `${n}: a slot of its tier's group`);
  assert.equal(servers.db.powerState ?? "running", "running");
  // Every server is in the app's project, the groups' slots too (their launch spec carries it).
  assert.ok(servers.db.project, "the DB has the app's project");
  for (const [n, inputs] of Object.entries(servers)) assert.equal(inputs.project, servers.db.project, n);
  // The tiers' load balancers (built by the groups from the args the app passes), the web floating
  // IP and the WAS VIP security-group port are in the app's project too (issue 14).
  const tierLbs = of("LoadBalancer");
  assert.deepEqual(tierLbs.map((l) => l.inputs.lbName).sort(), ["shop-was-lb", "shop-web-lb"]);
  const tierVipPorts = of("SecurityGroupPort").filter((p) => /-vip\d?$/.test(p.inputs.portName as string));
  assert.equal(tierVipPorts.length, 1);
  for (const r of [...tierLbs, ...tierVipPorts])
    assert.match(
      r.inputs.owner as string,
      /\/project=default%2Fshop$/,
      `${r.type} ${r.name}: the app's project`,
    );
  const webFip = of("FloatingIp").find((f) => f.inputs.fipName === "shop-web-lb-fip");
  assert.equal(
    webFip?.inputs.project,
    servers.db.project,
    "the web floating IP is charged to the app's project",
  );
  // The groups: min/desired 2, max 3, the default CPU policies, one agent each.
  const agents = Object.fromEntries(
    of("AutoscaleAgent").map((a) => [a.inputs.groupName as string, a.inputs]),
  );
  assert.deepEqual(Object.keys(agents).sort(), ["shop-was", "shop-web"]);
  for (const a of Object.values(agents)) {
    assert.deepEqual([a.min, a.max, a.desired], [2, 3, 2]);
    // The mock hands a secret input over as its wrapper.
    const raw = a.agentConfig as string | { value: string };
    const conf = typeof raw === "string" ? raw : raw.value;
    assert.match(conf, /^INTERVAL=10$/m, "two agents share the controller: 10 s");
    assert.match(conf, /^NPOLICIES=2$/m);
    assert.match(conf, /^POLICY_0_THRESHOLD=70$/m);
    assert.match(conf, /^POLICY_1_THRESHOLD=15$/m);
    assert.match(conf, /^HEALTH_PATH='\/health'$/m, "the agent checks /health before a member serves");
  }
  const cmdline = (n: string) =>
    (servers[n].domainXml as { kvm: string }).kvm.match(/<cmdline>([^<]*)<\/cmdline>/)![1];
  const key = "lab.sshkey=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5AAAAIPeN3vJSRn4BwgqNenNPcCH4hvCnyw2Vn312CotyhwiK";
  assert.equal(
    cmdline("shop-web-1"),
    `console=ttyS0 lab.name=shop-web-1 lab.role=web lab.upstream=10.30.2.5:8080 ${key}`,
  );
  assert.equal(
    cmdline("shop-was-0"),
    `console=ttyS0 lab.name=shop-was-0 lab.role=was lab.db=10.30.3.11:3306 ${key}`,
  );
  assert.equal(cmdline("db"), `console=ttyS0 lab.name=db lab.role=db ${key}`);
  assert.equal(cmdline("bastion"), `console=ttyS0 lab.name=bastion lab.role=bastion ${key}`);
  // Fixed addresses, spread over the hosts.
  assert.equal((servers["shop-web-0"].ports as { fixedIp: string }[])[0].fixedIp, "10.30.1.11");
  assert.deepEqual(
    ["shop-web-0", "shop-web-1", "shop-web-2", "shop-was-0", "shop-was-1", "db", "bastion"].map(
      (n) => servers[n].host,
    ),
    ["hv1", "hv2", "hv1", "hv2", "hv1", "hv2", "hv1"],
  );

  // Groups: canonical rules, member sets, and the order their rules need.
  const groups = Object.fromEntries(of("SecurityGroup").map((g) => [g.inputs.groupName as string, g]));
  assert.deepEqual(Object.keys(groups).sort(), [
    "shop-bastion",
    "shop-db",
    "shop-was",
    "shop-was-lb",
    "shop-web",
    "was-vip",
  ]);
  const rules = (g: string) =>
    (groups[g].inputs.rules as { portMin: number; remoteCidr: string; remoteGroup: string }[]).map(
      (r) => `${r.portMin}<${r.remoteCidr || r.remoteGroup}`,
    );
  assert.deepEqual(rules("shop-bastion"), ["22<0.0.0.0/0"]);
  assert.deepEqual(rules("shop-web"), ["80<0.0.0.0/0", "443<0.0.0.0/0", "22<shop-bastion"]);
  assert.deepEqual(rules("shop-was"), ["8080<shop-web", "8080<shop-was-lb", "22<shop-bastion"]);
  assert.deepEqual(rules("shop-db"), ["3306<shop-was", "22<shop-bastion"]);
  // Every slot's address, running or not (docs/autoscale.md "Security groups").
  assert.deepEqual(groups["shop-web"].inputs.members, ["10.30.1.11", "10.30.1.12", "10.30.1.13"]);
  assert.deepEqual(groups["shop-was"].inputs.members, ["10.30.2.11", "10.30.2.12", "10.30.2.13"]);
  assert.deepEqual(
    groups["shop-was-lb"].inputs.members,
    ["10.30.2.5"],
    "the WAS VIP: the source of proxied traffic",
  );
  assert.deepEqual(groups["shop-db"].inputs.members, ["10.30.3.11"]);
  // Each group is declared after the groups its rules name (and depends on them).
  const order = of("SecurityGroup")
    .map((g) => g.inputs.groupName)
    .filter((n) => n !== "was-vip");
  assert.deepEqual(order, ["shop-bastion", "shop-web", "shop-was-lb", "shop-was", "shop-db"]);
  // Ports: each server in its tier's group.
  const ports = Object.fromEntries(
    of("SecurityGroupPort").map((p) => [p.inputs.portName as string, p.inputs]),
  );
  const groupsOf = (port: string) => (ports[port].groups as { groupName: string }[]).map((g) => g.groupName);
  assert.deepEqual(groupsOf("shop-web-0-0"), ["shop-web"]);
  assert.deepEqual(groupsOf("shop-web-2-0"), ["shop-web"]);
  assert.deepEqual(groupsOf("shop-was-1-0"), ["shop-was"]);
  // The WAS VIP port in its group; the web VIP unfiltered (no groups given).
  const vipPorts = of("SecurityGroupPort").filter((p) =>
    (p.inputs.groups as { groupName: string }[]).some((g) => g.groupName === "was-vip"),
  );
  assert.equal(vipPorts.length, 1, "one SecurityGroupPort on the WAS VIP port");
  assert.deepEqual(groupsOf("db-0"), ["shop-db"]);
  assert.deepEqual(groupsOf("bastion-0"), ["shop-bastion"]);

  // Load balancers with their members; floating IPs on the web VIP and the bastion.
  const lbs = Object.fromEntries(of("LoadBalancer").map((l) => [l.inputs.lbName as string, l.inputs]));
  const webCfg = await unwrap(pulumi.output(lbs["shop-web-lb"].haproxyCfg as string));
  const wasCfg = await unwrap(pulumi.output(lbs["shop-was-lb"].haproxyCfg as string));
  assert.match(webCfg, /bind 10\.30\.1\.5:80/);
  assert.match(webCfg, /server shop-web-0 10\.30\.1\.11:80/);
  assert.match(webCfg, /server shop-web-1 10\.30\.1\.12:80/);
  assert.match(webCfg, /server shop-web-2 10\.30\.1\.13:80/, "every slot is in the pool");
  assert.match(wasCfg, /http-check send meth GET uri \/health/);
  assert.match(wasCfg, /bind 10\.30\.2\.5:8080/);
  assert.match(wasCfg, /server shop-was-1 10\.30\.2\.12:8080/);
  const fips = of("FloatingIp")
    .map((f) => f.inputs.fipName)
    .sort();
  assert.deepEqual(fips, ["bastion-fip", "shop-web-lb-fip"]);
  // Both floating IPs name their target's IPAM host, so the FloatingIp checks the address is
  // this stack's allocation before it opens it to the internet.
  for (const f of of("FloatingIp"))
    assert.ok(
      typeof (f.inputs.target as { ipamHost?: unknown }).ipamHost === "string",
      `${String(f.inputs.fipName)}: target.ipamHost set`,
    );

  assert.equal(await unwrap(app.webUrl), "http://172.24.4.101/");
  assert.equal(ssh.bastion, "ssh root@172.24.4.102");
  assert.equal(ssh.db, "ssh -o ProxyJump=root@172.24.4.102 root@10.30.3.11");
  assert.equal(ssh["shop-web-2"], "ssh -o ProxyJump=root@172.24.4.102 root@10.30.1.13", "every slot");
  assert.deepEqual(Object.keys(await unwrap(app.consoleCommands)).sort(), Object.keys(ssh).sort());
});

test("ThreeTierApp: a max that is not the number of slots is refused, naming the fix", async () => {
  const { Network } = await import("../../components/network");
  const { ThreeTierApp } = await import("../../components/threeTierApp");
  const { Router } = await import("../../provider/router");
  const n = (name: string) => new Network(`x-${name}`, { subnets: [{ name: "v4", cidr: "10.40.0.0/24" }] });
  const lan = n("lan");
  assert.throws(
    () =>
      new ThreeTierApp("bad", {
        image: { name: "labguest", kind: "kernel", kernel: "/k", ramdisk: "/r" },
        flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128 },
        router: new Router("x-edge", { hosts: [], external: {} as never }),
        external: { network: lan, subnet: "v4" },
        web: { network: lan, subnet: "v4", vipAddress: "10.40.0.5", members: ["10.40.0.11"], max: 3 },
        was: { network: lan, subnet: "v4", vipAddress: "10.40.0.6", members: ["10.40.0.21"] },
        db: { network: lan, subnet: "v4", address: "10.40.0.31" },
        bastion: { network: lan, subnet: "v4", address: "10.40.0.41" },
      }),
    /web\.max: the group has one slot per member address \(1 given\) and max is 3; give 3 addresses in web\.members or drop max/,
  );
});

test("review L7: a slot whose fixed address is the load balancer's VIP is refused at preview, naming the slot and the fix", async () => {
  const { Network } = await import("../../components/network");
  const { ThreeTierApp } = await import("../../components/threeTierApp");
  const { Router } = await import("../../provider/router");
  const lan = new Network("y-lan", { subnets: [{ name: "v4", cidr: "10.41.0.0/24" }] });
  assert.throws(
    () =>
      new ThreeTierApp("vipclash", {
        image: { name: "labguest", kind: "kernel", kernel: "/k", ramdisk: "/r" },
        flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128 },
        router: new Router("y-edge", { hosts: [], external: {} as never }),
        external: { network: lan, subnet: "v4" },
        web: { network: lan, subnet: "v4", vipAddress: "10.41.0.5", members: ["10.41.0.11", "10.41.0.5"] },
        was: { network: lan, subnet: "v4", vipAddress: "10.41.0.6", members: ["10.41.0.21"] },
        db: { network: lan, subnet: "v4", address: "10.41.0.31" },
        bastion: { network: lan, subnet: "v4", address: "10.41.0.41" },
      }),
    /launch\.ports\[0\]\.fixedIps: slot \S+-1's address 10\.41\.0\.5 is the load balancer's vipAddress in subnet v4; .*Fix: give the slots addresses apart from the VIP/,
  );
});
