/**
 * What the provider kit promises for EVERY resource type, checked through each real provider
 * object (Network, Subnet, Flavor, Keypair, Image, Server):
 *
 *   1. Preview unknowns: the sentinel anywhere in an input (top level, or nested inside hosts,
 *      ports, sources, flavors…) is accepted by check and counts as a change in diff; an unknown
 *      name replaces. One rule (provider/kit/check.ts isUnknown), so no provider accepts what
 *      another refuses.
 *   2. Trust on first use pins: a host without a configured key gets the key seen at create
 *      recorded in `hostKeys`; update keeps it (today's defect was `{"hv1": ""}`), and update and
 *      the operation after it reach the host pinned to that key.
 *
 * For (2) the host layer's step runners are replaced by a fake host that records which key
 * each call was pinned to and answers each step by its label; no SSH is involved. That the pool
 * itself refuses a changed key is proven against a real sshd in
 * test/integration/host-session.test.ts.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  UNKNOWN,
  checkFloatingIpInputs,
  checkRouterInputs,
  checkSecurityGroupInputs,
  checkSecurityGroupPortInputs,
  diffFloatingIp,
  diffRouter,
  diffSecurityGroup,
  diffSecurityGroupPort,
  checkFlavorInputs,
  checkImageInputs,
  checkKeypairInputs,
  checkNetworkInputs,
  checkServerInputs,
  checkSubnetInputs,
  dhcpPaths,
  ipamRecordName,
  diffFlavor,
  diffImage,
  diffKeypair,
  diffNetwork,
  diffServer,
  diffSubnet,
  flavorProvider,
  hostPool,
  imageProvider,
  isUnknown,
  keypairProvider,
  networkProvider,
  checkLoadBalancerInputs,
  diffLoadBalancer,
  loadBalancerProvider,
  AUTOSCALE_SCRIPTS_SHA256,
  autoscaleAgentProvider,
  checkAutoscaleAgentInputs,
  diffAutoscaleAgent,
  checkAutoscaleRollInputs,
  diffAutoscaleRoll,
  serverProvider,
  subnetProvider,
  type HostConnection,
  type KeypairOutputs,
  type NetworkOutputs,
  type Step,
  type StepResult,
} from "../../../provider";
import { checkVolumeInputs, diffVolume, volumeProvider } from "../../../provider/volume";
import { checkProjectInputs, checkUserInputs, diffProject, diffUser } from "../../../provider/identity";
import { loadBalancerRaw, serverRaw, testHost } from "./fixtures";

const SEEN = "SHA256:Z2l2ZW4tYnktdGhlLWZha2UtaG9zdC1vbi1maXJzdC11c2UA";
const SHA = "a".repeat(64);

function host(name: string, n: number, tofu = false): HostConnection {
  return testHost(name, n, tofu ? { hostKey: "", trustOnFirstUse: true } : {});
}

function subnetRaw(hosts: HostConnection[]): Record<string, unknown> {
  const paths = dhcpPaths("lan", "v4");
  return {
    subnetName: "v4",
    networkName: "lan",
    networkBridge: "kvlb-1a2b3c4d",
    driver: "linuxbridge",
    hosts,
    cidr: "10.10.0.0/24",
    // The two lines check ties the config to the subnet by (the real one comes from templates/).
    dnsmasqConf: `interface=${paths.nsDevice}\npid-file=${paths.pidFile}\ndhcp-leasefile=${paths.leaseFile}\n`,
  };
}

function autoscaleRaw(hosts: HostConnection[]): Record<string, unknown> {
  return {
    groupName: "web",
    hosts,
    controllerHost: "hv1",
    agentConfig: `GROUP='web'\nMIN=1\nMAX=${hosts.length}\n${hosts
      .map(
        (h, i) =>
          `MEMBER_${i}_NAME='web-${i}'\nMEMBER_${i}_HOST='${h.name}'\nMEMBER_${i}_ADDR='${h.address}'\nMEMBER_${i}_PORT=${h.port}\nMEMBER_${i}_USER='${h.user}'\n`,
      )
      .join("")}`,
    membersByHost: Object.fromEntries(hosts.map((h, i) => [h.name, [`web-${i}`]])),
    desired: 1,
    min: 1,
    max: hosts.length,
  };
}

/** One row per resource type: its pure check and diff, a valid raw input, its name field. */
interface Kind {
  type: string;
  name: string;
  check: (news: Record<string, unknown>) => { inputs: Record<string, unknown>; failures: unknown[] };
  diff: (olds: never, news: never) => { changes: boolean; replaces: string[] };
  raw: (hosts: HostConnection[]) => Record<string, unknown>;
  /** Output fields the diff reads besides the inputs. */
  outputs: (inputs: Record<string, unknown>) => Record<string, unknown>;
}

const KINDS: Kind[] = [
  {
    type: "AutoscaleAgent",
    name: "groupName",
    check: checkAutoscaleAgentInputs,
    diff: diffAutoscaleAgent as Kind["diff"],
    raw: (hosts) => autoscaleRaw(hosts),
    outputs: () => ({
      agentPublicKey: "ssh-ed25519 AAAA",
      desiredGeneration: 1,
      hostKeys: {},
      scriptsSha256: AUTOSCALE_SCRIPTS_SHA256,
      realized: { agentRunning: true, currentSize: 1, members: [], slots: {}, cooldownEnd: 0 },
    }),
  },
  {
    type: "AutoscaleRoll",
    name: "member",
    check: checkAutoscaleRollInputs,
    diff: diffAutoscaleRoll as Kind["diff"],
    raw: (hosts) => ({
      groupName: "web",
      member: "web-0",
      phase: "out",
      launchHash: SHA,
      hosts,
      timeoutSec: 1210,
    }),
    outputs: () => ({ rolledOn: "", rolled: "" }),
  },
  {
    type: "Project",
    name: "projectName",
    check: checkProjectInputs,
    diff: diffProject as Kind["diff"],
    raw: (hosts) => ({
      projectName: "demo",
      domain: "Default",
      parent: "top",
      quotas: { instances: 3 },
      hosts,
    }),
    outputs: () => ({ hostKeys: {}, realized: { record: true, matches: true } }),
  },
  {
    type: "User",
    name: "userName",
    check: checkUserInputs,
    diff: diffUser as Kind["diff"],
    raw: (hosts) => ({
      userName: "alice",
      password: "long enough secret",
      sshPublicKeys: ["ssh-ed25519 AAAA a@b"],
      hosts,
    }),
    outputs: () => ({ hostKeys: {}, realized: { record: true, matches: true } }),
  },
  {
    type: "Network",
    name: "networkName",
    check: checkNetworkInputs,
    diff: diffNetwork as Kind["diff"],
    raw: (hosts) => ({ networkName: "lan", kind: "selfservice", hosts }),
    outputs: () => ({ realized: {}, hostKeys: {} }),
  },
  {
    type: "Subnet",
    name: "subnetName",
    check: checkSubnetInputs,
    diff: diffSubnet as Kind["diff"],
    raw: subnetRaw,
    outputs: () => ({ hostKeys: {} }),
  },
  {
    type: "Flavor",
    name: "flavorName",
    check: checkFlavorInputs,
    diff: diffFlavor as Kind["diff"],
    raw: (hosts) => ({
      flavorName: "m1.tiny",
      vcpus: 1,
      ramMiB: 256,
      extraSpecs: { "hw:cpu_cores": "1" },
      hosts,
    }),
    outputs: () => ({ realized: { record: true, matches: true }, hostKeys: {} }),
  },
  {
    type: "Keypair",
    name: "keyName",
    check: checkKeypairInputs,
    diff: diffKeypair as Kind["diff"],
    raw: () => ({ keyName: "admin", comment: "kvmlab-admin" }),
    outputs: () => ({}),
  },
  {
    type: "Image",
    name: "imageName",
    check: checkImageInputs,
    diff: diffImage as Kind["diff"],
    raw: (hosts) => ({
      imageName: "tiny",
      hosts,
      kernel: { hostPath: "/boot/vmlinuz", sha256: SHA },
      ramdisk: { hostPath: "/boot/initrd.img", sha256: SHA },
      kernelCmdline: "console=ttyS0",
    }),
    outputs: () => ({ realized: {}, hostKeys: {} }),
  },
  {
    type: "Server",
    name: "serverName",
    check: (news) => checkServerInputs(news),
    diff: diffServer as Kind["diff"],
    raw: (hosts) => serverRaw(hosts),
    outputs: (i) => ({
      host: (i.hosts as HostConnection[])[0].name,
      addresses: [],
      domainType: "qemu",
      hostKeys: {},
    }),
  },
  {
    type: "LoadBalancer",
    name: "lbName",
    check: checkLoadBalancerInputs,
    diff: diffLoadBalancer as Kind["diff"],
    raw: (hosts) => loadBalancerRaw(hosts),
    outputs: (i) => ({ host: (i.hosts as HostConnection[])[0].name, realized: {}, drift: [], hostKeys: {} }),
  },
  {
    type: "Volume",
    name: "volumeName",
    check: (news) => checkVolumeInputs(news),
    diff: diffVolume as Kind["diff"],
    raw: (hosts) => ({ volumeName: "data", hosts, host: hosts[0].name, sizeGiB: 1, server: "web1" }),
    outputs: () => ({
      path: "/var/lib/kvmlab/volumes/data.qcow2",
      format: "qcow2",
      device: "vdb",
      realized: {
        present: true,
        host: "hv1",
        allocatedBytes: 0,
        virtualBytes: 1073741824,
        attachedTo: "web1",
        device: "vdb",
      },
      hostKeys: {},
    }),
  },
  {
    type: "Router",
    name: "routerName",
    check: checkRouterInputs,
    diff: diffRouter as Kind["diff"],
    raw: (hosts) => ({
      routerName: "r1",
      hosts,
      external: {
        subnetName: "ext-v4",
        networkName: "ext",
        bridge: "kvlb-0e0e0e0e",
        driver: "linuxbridge",
        cidr: "172.24.4.0/24",
        address: "172.24.4.100",
        gateway: "172.24.4.1",
        mtu: 1500,
        ipamHost: "hv1",
      },
      interfaces: [
        {
          subnetName: "lan-v4",
          networkName: "lan",
          bridge: "kvlb-00000001",
          driver: "openvswitch",
          cidr: "10.10.1.0/24",
          address: "10.10.1.1",
          mtu: 1450,
        },
      ],
    }),
    outputs: () => ({ hostKeys: {} }),
  },
  {
    type: "FloatingIp",
    name: "fipName",
    check: checkFloatingIpInputs,
    diff: diffFloatingIp as Kind["diff"],
    raw: (hosts) => ({
      fipName: "f1",
      hosts,
      host: "hv1",
      routerName: "r1",
      external: { networkName: "ext", subnetName: "ext-v4", cidr: "172.24.4.0/24", ipamHost: "hv1" },
      address: "172.24.4.150",
      target: { address: "10.10.1.5", subnetName: "lan-v4", networkName: "lan" },
    }),
    outputs: () => ({ floatingIp: "172.24.4.150", hostKeys: {} }),
  },
  {
    type: "SecurityGroup",
    name: "groupName",
    check: checkSecurityGroupInputs,
    diff: diffSecurityGroup as Kind["diff"],
    raw: (hosts) => ({
      groupName: "web",
      hosts,
      rules: [{ direction: "ingress", protocol: "tcp", port: 80 }],
      members: ["10.10.1.5"],
    }),
    outputs: () => ({ realized: {}, hostKeys: {} }),
  },
  {
    type: "SecurityGroupPort",
    name: "portName",
    check: checkSecurityGroupPortInputs,
    diff: diffSecurityGroupPort as Kind["diff"],
    raw: (hosts) => ({
      portName: "web1-0",
      hosts,
      host: "hv1",
      tap: "tap1a2b3c4d",
      mac: "fa:16:3e:00:00:01",
      ip: "10.10.1.5",
      driver: "linuxbridge",
      networkBridge: "kvlb-00000001",
      groups: [
        {
          groupName: "web",
          rules: [
            {
              direction: "ingress",
              protocol: "tcp",
              portMin: 80,
              portMax: 80,
              remoteCidr: "",
              remoteGroup: "",
              ethertype: "IPv4",
            },
          ],
        },
      ],
    }),
    outputs: () => ({ hostKeys: {} }),
  },
];

/** Every path to a value in `v` (objects and arrays included), e.g. ["hosts"], ["hosts", 0, "address"]. */
function paths(v: unknown, at: (string | number)[] = []): (string | number)[][] {
  const here = at.length > 0 ? [at] : [];
  if (Array.isArray(v)) return [...here, ...v.flatMap((x, i) => paths(x, [...at, i]))];
  if (v !== null && typeof v === "object")
    return [...here, ...Object.entries(v).flatMap(([k, x]) => paths(x, [...at, k]))];
  return here;
}

/** A deep copy of `v` with the value at `path` replaced by the preview sentinel. */
function withUnknown(v: Record<string, unknown>, path: (string | number)[]): Record<string, unknown> {
  const copy = JSON.parse(JSON.stringify(v)) as Record<string, unknown>;
  let o = copy as Record<string | number, unknown>;
  for (const k of path.slice(0, -1)) o = o[k] as Record<string | number, unknown>;
  o[path[path.length - 1]] = UNKNOWN;
  return copy;
}

test("the one unknown rule is deep: the sentinel anywhere makes the value unknown", () => {
  assert.equal(isUnknown(UNKNOWN), true);
  assert.equal(isUnknown({ a: [{ b: UNKNOWN }] }), true);
  assert.equal(isUnknown([1, [2, UNKNOWN]]), true);
  assert.equal(isUnknown({ a: [{ b: "x" }] }), false);
  assert.equal(isUnknown(""), false);
});

for (const kind of KINDS) {
  test(`${kind.type}: the preview sentinel anywhere in an input is accepted by check and is a change in diff`, () => {
    const hosts = [host("hv1", 1), host("hv2", 2)];
    const raw = kind.raw(hosts);
    const valid = kind.check(raw);
    assert.deepEqual(valid.failures, [], `${kind.type}: the base input is valid`);
    const olds = { ...valid.inputs, ...kind.outputs(valid.inputs) };
    const all = paths(raw);
    assert.ok(all.length >= 2, `${kind.type}: several places to put the sentinel`);
    for (const path of all) {
      const where = `${kind.type} with the sentinel at ${path.join(".")}`;
      const { inputs, failures } = kind.check(withUnknown(raw, path));
      assert.deepEqual(failures, [], `${where}: check accepts it`);
      const d = kind.diff(olds as never, inputs as never);
      assert.equal(d.changes, true, `${where}: diff reports a change`);
      if (path[0] === kind.name)
        assert.ok(d.replaces.includes(kind.name), `${where}: an unknown name replaces`);
    }
  });
}

/** The fake host layer: records the key every host call was pinned to; answers by step label. */
function fakeHosts(answers: [RegExp, string][]): {
  calls: { host: string; hostKey: string }[];
  restore: () => void;
} {
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const probe = require("../../../provider/host/probe") as Record<string, unknown>;
  const saved = { ...session };
  const savedProbe = { ...probe };
  const calls: { host: string; hostKey: string }[] = [];
  const touch = (h: HostConnection): void => {
    calls.push({ host: h.name, hostKey: h.hostKey });
    // What a first connection does in the pool: the key seen is recorded for the run.
    const pool = hostPool();
    const at = `${h.user}@${h.address}:${h.port}`;
    if (!h.hostKey && !pool.observedKeys.has(at)) pool.observedKeys.set(at, SEEN);
  };
  const answer = (s: Step): string => answers.find(([re]) => re.test(s.label ?? ""))?.[1] ?? "";
  const results = (steps: readonly Step[]): StepResult[] =>
    steps.map((s) => ({ code: 0, stdout: answer(s), stderr: "" }));
  session.runSteps = async (h: HostConnection, steps: readonly Step[]) => (touch(h), results(steps));
  session.runChecked = async (h: HostConnection, steps: readonly Step[]) => (
    touch(h),
    results(steps).map((r) => r.stdout)
  );
  session.runLocked = session.runChecked;
  session.withHostLock = async (
    h: HostConnection,
    fn: (first: string[]) => Promise<unknown>,
    _waitSec?: number,
    first: readonly Step[] = [],
  ) => (touch(h), fn(results(first).map((r) => r.stdout)));
  session.withNamedHostLock = async (h: HostConnection, _n: string, fn: () => Promise<unknown>) => (
    touch(h),
    fn()
  );
  probe.requireFeatures = async (h: HostConnection) => (
    touch(h),
    { kvm: false, libvirtVersion: "10", qemuVersion: "8", dnsmasq: true }
  );
  probe.requireNetworkType = async (h: HostConnection) => void touch(h);
  return {
    calls,
    restore: () => {
      Object.assign(session, saved);
      Object.assign(probe, savedProbe);
    },
  };
}

/** Per type: the provider, its raw input, and how the fake host answers its steps. */
const HOSTED: {
  type: string;
  provider: typeof networkProvider | typeof flavorProvider | typeof imageProvider;
  check: (news: Record<string, unknown>) => { inputs: Record<string, unknown>; failures: unknown[] };
  raw: (hosts: HostConnection[]) => Record<string, unknown>;
  answers: [RegExp, string][];
}[] = [
  {
    type: "Network",
    provider: networkProvider,
    check: checkNetworkInputs,
    raw: (hosts) => ({ networkName: "lan", kind: "selfservice", hosts }),
    answers: [[/^read network/, "record=yes\nbridge=yes\nmtu=1450"]],
  },
  {
    type: "Subnet",
    provider: subnetProvider as never,
    check: checkSubnetInputs,
    raw: subnetRaw,
    answers: [[/^read subnet/, "record=yes\nnamespace=yes\nport=yes\ndnsmasq=yes"]],
  },
  {
    type: "Flavor",
    provider: flavorProvider,
    check: checkFlavorInputs,
    raw: (hosts) => ({ flavorName: "m1.tiny", vcpus: 1, ramMiB: 256, hosts }),
    answers: [],
  },
  {
    type: "Image",
    provider: imageProvider,
    check: checkImageInputs,
    raw: (hosts) => ({
      imageName: "tiny",
      hosts,
      kernel: { hostPath: "/boot/vmlinuz", sha256: SHA },
      ramdisk: { hostPath: "/boot/initrd.img", sha256: SHA },
    }),
    answers: [[/^check image/, "kernel ok 10 1 -\nramdisk ok 5 1 -"]],
  },
  {
    type: "Server",
    provider: serverProvider as never,
    check: (news) => checkServerInputs(news),
    raw: (hosts) => serverRaw(hosts),
    answers: [
      [/^read domain/, "defined=yes\nstate=running\nvnc=:0\ntype=qemu"],
      [/^read host capacity/, "memtotal=4194304\nmemavailable=4000000\ncpus=2"],
      [
        new RegExp(`^read record ipam/${ipamRecordName("lan", "lan-v4")}$`),
        JSON.stringify({
          subnet: "lan-v4",
          cidr: "10.10.0.0/24",
          gateway: "10.10.0.1",
          pool: { start: "10.10.0.2", end: "10.10.0.254" },
          allocations: {},
        }),
      ],
    ],
  },
  {
    type: "AutoscaleAgent",
    provider: autoscaleAgentProvider as never,
    check: checkAutoscaleAgentInputs,
    // An agent drives servers only for a program's stack (a raw call's kvmlab-direct owner is refused).
    raw: (hosts: HostConnection[]) => ({
      ...autoscaleRaw(hosts),
      owner: "proj/dev/AutoscaleAgent/web-agent",
    }),
    answers: [
      [/^prepare the agent folder/, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv6k0Zq kvmlab-asg:web"],
      [/^read the destination/, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost\nakf=/root/.ssh/authorized_keys"],
      [/^read group web/, "present=yes\nrunning=yes\nagentpid=42\nstatus.size=1"],
      [/^claim /, "claimed"],
    ],
  },
  {
    type: "LoadBalancer",
    provider: loadBalancerProvider as never,
    check: checkLoadBalancerInputs,
    raw: (hosts) => loadBalancerRaw(hosts),
    answers: [
      [/^read load balancer/, "namespace=yes\nport=yes\ninbridge=yes\nhaproxy=yes"],
      [/^count load balancers/, "lbs=0"],
      [
        new RegExp(`^read record ipam/${ipamRecordName("lan", "lan-v4")}$`),
        JSON.stringify({
          subnet: "lan-v4",
          cidr: "10.10.0.0/24",
          gateway: "10.10.0.1",
          pool: { start: "10.10.0.2", end: "10.10.0.254" },
          allocations: {},
        }),
      ],
    ],
  },
  {
    type: "Volume",
    provider: volumeProvider as never,
    check: (news) => checkVolumeInputs(news),
    raw: (hosts) => ({ volumeName: "data", hosts, host: hosts[0].name, sizeGiB: 1 }),
    answers: [[/^read volume/, "present=1\nallocated=200704\nvirtual=1073741824\nattached=\ndevice="]],
  },
];

for (const row of HOSTED) {
  test(`${row.type}: a trust-on-first-use host's key is recorded at create, kept by update, and pins update and the next operation`, async () => {
    const pool = hostPool();
    const fake = fakeHosts(row.answers);
    try {
      pool.observedKeys.clear();
      const hosts = [host("hv1", 1, true)];
      const { inputs, failures } = row.check(row.raw(hosts));
      assert.deepEqual(failures, []);
      type P = Required<typeof networkProvider>;
      const p = row.provider as unknown as P;
      const created = (await p.create(inputs as never)) as { id: string; outs: NetworkOutputs };
      assert.equal(created.outs.hostKeys.hv1, SEEN, "create records the key seen first");
      assert.equal(created.outs.hosts[0].hostKey, "", "the hosts output stays as the program gave it");

      // A later run: a new process has seen nothing yet.
      pool.observedKeys.clear();
      fake.calls.length = 0;
      const checked = await p.check(created.outs as never, inputs as never);
      const updated = await p.update(created.id, created.outs, checked.inputs as never);
      assert.ok(fake.calls.length > 0, "update reaches the host");
      for (const c of fake.calls)
        assert.equal(c.hostKey, SEEN, `update reaches ${c.host} pinned to the recorded key`);
      assert.deepEqual(updated.outs?.hostKeys, { hv1: SEEN }, "update keeps the recorded key");

      pool.observedKeys.clear();
      fake.calls.length = 0;
      const outs = { ...created.outs, ...updated.outs };
      await p.read(created.id, outs);
      await p.delete(created.id, outs);
      assert.ok(fake.calls.length > 0, "read and delete reach the host");
      for (const c of fake.calls) assert.equal(c.hostKey, SEEN, `the next operations reach ${c.host} pinned`);
    } finally {
      fake.restore();
      pool.observedKeys.clear();
    }
  });
}

test("Keypair reaches no host, so it records no host keys", async () => {
  const fake = fakeHosts([]);
  try {
    const { inputs } = checkKeypairInputs({ keyName: "admin" });
    const created = (await keypairProvider.create!(inputs as never)) as { id: string; outs: KeypairOutputs };
    await keypairProvider.update!(created.id, created.outs, inputs as never);
    await keypairProvider.delete!(created.id, created.outs);
    assert.equal("hostKeys" in created.outs, false);
    assert.deepEqual(fake.calls, []);
  } finally {
    fake.restore();
  }
});
