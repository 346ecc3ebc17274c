/**
 * Ownership of host objects (issue 15): every finding of the issue about names shared between
 * owners, as input → clear error naming the owner, with the host's step log showing that no
 * destructive command ran.
 *
 * The fake host: the host layer's step runners are replaced. Owner steps (claim / check /
 * release) run in a real local bash against a temporary folder standing in for the host's
 * /var/lib/kvmlab (one per host), so the guards are the real scripts; every other step is
 * answered by its label and logged. Runs stop at the first failing step like runChecked.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import {
  OWNER_REFUSED,
  checkNetworkInputs,
  checkSecurityGroupInputs,
  checkSecurityGroupPortInputs,
  checkServerInputs,
  checkFloatingIpInputs,
  floatingIpProvider,
  checkRouterInputs,
  routerProvider,
  checkImageInputs,
  imageProvider,
  checkSubnetInputs,
  claimStep,
  dhcpPaths,
  guardStep,
  ipamRecordName,
  networkProvider,
  ownerOf,
  ownerSegment,
  planAllocation,
  planRelease,
  portOwner,
  releaseOwnerStep,
  securityGroupPortProvider,
  securityGroupProvider,
  serverProvider,
  subnetProvider,
  type HostConnection,
  type IpamRecord,
  type Step,
  type StepResult,
} from "../../../provider";
import { serverRaw, testHost } from "./fixtures";
import { checkedResults } from "./fakeHost";
import { routerGatewayOwner } from "../../../core/router";
import { planText } from "../../../provider/server/model";
import { parseDomainMetadata } from "../../../core/domainMetadata";

const ME = ownerOf({ pulumiProject: "lab", stack: "dev", type: "Network", name: "lan" });
const OTHER = ownerOf({ pulumiProject: "lab", stack: "prod", type: "Network", name: "lan" });

/** Runs a step script in bash with /var/lib/kvmlab mapped to `root`. */
function runLocal(root: string, script: string): StepResult {
  const r = spawnSync("bash", ["--noprofile", "--norc", "-c", script.split("/var/lib/kvmlab").join(root)], {
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface FakeHost {
  roots: Map<string, string>;
  /** Every step that ran: host and label. */
  log: { host: string; label: string; script: string }[];
  restore(): void;
}

const OWNER_STEP = /^(claim |check the owner of |check that .* is this stack's|release the owner marker of )/;

function fakeHost(answers: [RegExp, string][]): FakeHost {
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const probe = require("../../../provider/host/probe") as Record<string, unknown>;
  const saved = { ...session };
  const savedProbe = { ...probe };
  const roots = new Map<string, string>();
  const log: FakeHost["log"] = [];
  const rootOf = (h: HostConnection): string => {
    let r = roots.get(h.name);
    if (!r) {
      r = fs.mkdtempSync(path.join(os.tmpdir(), `kvl-own-${h.name}-`));
      roots.set(h.name, r);
    }
    return r;
  };
  const run = (h: HostConnection, steps: readonly Step[], stop: boolean): StepResult[] => {
    const out: StepResult[] = [];
    let skip = false;
    for (const s of steps) {
      if (skip) {
        out.push({ code: null, stdout: "", stderr: "" });
        continue;
      }
      log.push({ host: h.name, label: s.label ?? "", script: s.script });
      const r = OWNER_STEP.test(s.label ?? "")
        ? runLocal(rootOf(h), s.script)
        : { code: 0, stdout: answers.find(([re]) => re.test(s.label ?? ""))?.[1] ?? "", stderr: "" };
      out.push(r);
      if (stop && r.code !== 0) skip = true;
    }
    return out;
  };
  const checked = async (h: HostConnection, steps: readonly Step[]): Promise<string[]> =>
    checkedResults(h, steps, run(h, steps, true));
  session.runSteps = async (h: HostConnection, steps: readonly Step[]) => run(h, steps, false);
  session.runChecked = checked;
  session.runLocked = checked;
  session.withHostLock = async (
    h: HostConnection,
    fn: (first: string[]) => Promise<unknown>,
    _waitSec?: number,
    first: readonly Step[] = [],
  ) => fn(await checked(h, first));
  // The placement lock: logged like a step, so tests see where and when it is held.
  session.withNamedHostLock = async (h: HostConnection, name: string, fn: () => Promise<unknown>) => {
    log.push({ host: h.name, label: `${name} lock taken`, script: "" });
    try {
      return await fn();
    } finally {
      log.push({ host: h.name, label: `${name} lock released`, script: "" });
    }
  };
  probe.requireFeatures = async () => ({ kvm: false, libvirtVersion: "10", qemuVersion: "8", dnsmasq: true });
  return {
    roots,
    log,
    restore() {
      Object.assign(session, saved);
      Object.assign(probe, savedProbe);
      for (const r of roots.values()) fs.rmSync(r, { recursive: true, force: true });
    },
  };
}

/** Puts an owner marker on a fake host as another stack's create would have. */
function markOwned(fake: FakeHost, host: HostConnection, rel: string, owner: string): void {
  const r = fake.roots.get(host.name) ?? fs.mkdtempSync(path.join(os.tmpdir(), `kvl-own-${host.name}-`));
  fake.roots.set(host.name, r);
  const f = path.join(r, "owners", rel);
  fs.mkdirSync(path.dirname(f), { recursive: true });
  fs.writeFileSync(f, `${owner}\n`);
}

/** Anything that removes, stops or rewrites host objects. */
const DESTRUCTIVE = /^(delete |stop |remove |power off |shut down |write record |upload |release |reload )/;

function destructive(fake: FakeHost, host?: string): string[] {
  return fake.log
    .filter((l) => (host === undefined || l.host === host) && DESTRUCTIVE.test(l.label))
    .map((l) => `${l.host}: ${l.label}`);
}

type P = Required<typeof networkProvider>;

test("ownerOf: <project>/<stack>/<Type>/<name>, every segment encoded so it is safe in shell, XML and external_ids", () => {
  assert.equal(ME, "lab/dev/Network/lan");
  assert.equal(
    ownerOf({ pulumiProject: "lab", stack: "org/dev", type: "Server", name: "we b'$(x)", project: "demo" }),
    "lab/org%2Fdev/Server/we%20b%27%24%28x%29/project=demo",
  );
  assert.equal(ownerSegment("ü"), "%C3%BC");
  assert.equal(ownerSegment(""), "%00");
  assert.equal(ownerSegment(".."), "%2E.", "no segment reads as . or ..");
});

test("claim, guard and release steps: claimed, adopted by the same owner, refused for another, unmarked objects refused", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-own-"));
  try {
    const o = { kind: "network", key: ["lan"], what: "network lan", field: "networkName" };
    const first = runLocal(root, claimStep(o, ME).script);
    assert.equal(first.code, 0);
    assert.equal(first.stdout.trim(), "claimed");
    assert.equal(
      fs.statSync(path.join(root, "owners/network/lan.owner")).mode & 0o777,
      0o600,
      "marker is 0600",
    );
    assert.equal(fs.statSync(path.join(root, "owners")).mode & 0o777, 0o700, "owners folder is 0700");
    // A crash between create and the state write: the same owner adopts.
    assert.equal(runLocal(root, claimStep(o, ME).script).stdout.trim(), "adopted");
    const refused = runLocal(root, claimStep(o, OTHER).script);
    assert.equal(refused.code, OWNER_REFUSED);
    assert.match(
      refused.stderr,
      /network lan on this host belongs to lab\/dev\/Network\/lan, not to lab\/prod\/Network\/lan/,
    );
    assert.match(refused.stderr, /Fix: give this resource another networkName/);
    assert.equal(runLocal(root, guardStep(o, [OTHER]).script).code, OWNER_REFUSED);
    assert.equal(runLocal(root, guardStep(o, [ME, OTHER]).script).stdout.trim(), "mine");
    runLocal(root, releaseOwnerStep(o, [OTHER]).script);
    assert.ok(
      fs.existsSync(path.join(root, "owners/network/lan.owner")),
      "release by another owner keeps the marker",
    );
    runLocal(root, releaseOwnerStep(o, [ME]).script);
    assert.ok(!fs.existsSync(path.join(root, "owners/network/lan.owner")), "release by the owner removes it");
    // An object present without a marker (made by hand, or before owners) is not adopted by create...
    const present = { ...o, exists: "true" };
    const unmarked = runLocal(root, claimStep(present, ME).script);
    assert.equal(unmarked.code, OWNER_REFUSED);
    assert.match(unmarked.stderr, /already exists on this host with no kvmlab owner/);
    // ...but an update of a state from before owners adopts it.
    assert.equal(runLocal(root, guardStep(present, [ME], true).script).stdout.trim(), "unmarked");
    assert.equal(fs.readFileSync(path.join(root, "owners/network/lan.owner"), "utf8"), `${ME}\n`);
    assert.throws(() => claimStep(o, "not an owner; rm -rf /"), /owner: expected/);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("check: the owner input is refused when malformed, filled for raw provider calls", () => {
  const hosts = [testHost("hv1", 1)];
  const ok = checkNetworkInputs({ networkName: "lan", kind: "selfservice", hosts });
  assert.equal(ok.inputs.owner, "kvmlab-direct/-/Network/lan");
  const bad = checkNetworkInputs({ networkName: "lan", kind: "selfservice", hosts, owner: "x'; reboot" });
  assert.ok(bad.failures.some((f) => f.property === "owner" && /owner: expected/.test(f.reason)));
});

test("same-named subnets in two networks: folder, pid file, veth and IPAM record differ", () => {
  const a = dhcpPaths("lan", "v4");
  const b = dhcpPaths("dmz", "v4");
  for (const k of ["dir", "pidFile", "confFile", "hostsFile", "leaseFile", "hostDevice", "nsDevice"] as const)
    assert.notEqual(a[k], b[k], `${k} is keyed by network and subnet`);
  assert.notEqual(ipamRecordName("lan", "v4"), ipamRecordName("dmz", "v4"));
  // Joining names with a name character would be ambiguous; the record name is not.
  assert.notEqual(ipamRecordName("a.b", "c"), ipamRecordName("a", "b.c"));
});

function subnetRaw(
  network: string,
  owner: string,
  hosts: HostConnection[],
  over: Record<string, unknown> = {},
) {
  const p = dhcpPaths(network, "v4");
  return {
    subnetName: "v4",
    networkName: network,
    networkBridge: "kvlb-1a2b3c4d",
    driver: "linuxbridge",
    hosts,
    cidr: "10.10.0.0/24",
    dnsmasqConf: `interface=${p.nsDevice}\npid-file=${p.pidFile}\ndhcp-leasefile=${p.leaseFile}\n`,
    owner,
    ...over,
  };
}

test("subnets: two networks each with subnet v4 both create; a failed create next to another owner's subnet touches nothing of it", async () => {
  const hv1 = testHost("hv1", 1);
  const fake = fakeHost([[/^read subnet/, "record=yes\nnamespace=yes\nport=yes\ninbridge=yes\ndnsmasq=yes"]]);
  try {
    const p = subnetProvider as unknown as P;
    const sA = ownerOf({ pulumiProject: "lab", stack: "a", type: "Subnet", name: "v4" });
    const sB = ownerOf({ pulumiProject: "lab", stack: "b", type: "Subnet", name: "v4" });
    const lan = checkSubnetInputs(subnetRaw("lan", sA, [hv1]));
    const dmz = checkSubnetInputs(subnetRaw("dmz", sB, [hv1]));
    assert.deepEqual([...lan.failures, ...dmz.failures], []);
    await p.create(lan.inputs as never);
    await p.create(dmz.inputs as never);
    const writes = fake.log.filter((l) => l.label.startsWith("write record ipam/")).map((l) => l.label);
    assert.deepEqual(writes, [
      `write record ipam/${ipamRecordName("lan", "v4")}`,
      `write record ipam/${ipamRecordName("dmz", "v4")}`,
    ]);

    // Another stack's Subnet lan/v4 with a refused dhcpAddress: refused by owner, nothing removed.
    fake.log.length = 0;
    const clash = checkSubnetInputs(subnetRaw("lan", sB, [hv1], { dhcpAddress: "10.10.0.1" }));
    await assert.rejects(
      p.create(clash.inputs as never),
      /subnet v4 of network lan on this host belongs to lab\/a\/Subnet\/v4, not to lab\/b\/Subnet\/v4/,
    );
    assert.deepEqual(destructive(fake), [], "no destructive step ran");
    assert.ok(fs.existsSync(path.join(fake.roots.get("hv1") as string, "owners/subnet/lan/v4.owner")));
    // Deleting with the other owner's state is refused before anything is removed.
    fake.log.length = 0;
    await assert.rejects(
      p.delete("v4", { ...clash.inputs, owner: sB } as never),
      /belongs to lab\/a\/Subnet\/v4/,
    );
    assert.deepEqual(destructive(fake), []);
  } finally {
    fake.restore();
  }
});

test("a failed Network create next to a same-named network of another owner removes only what it made", async () => {
  const hv1 = testHost("hv1", 1);
  const hv2 = testHost("hv2", 2);
  const fake = fakeHost([[/^read network/, "record=yes\nbridge=yes\nmtu=1450"]]);
  try {
    markOwned(fake, hv2, "network/lan.owner", OTHER);
    const { inputs, failures } = checkNetworkInputs({
      networkName: "lan",
      kind: "selfservice",
      hosts: [hv1, hv2],
      owner: ME,
    });
    assert.deepEqual(failures, []);
    await assert.rejects(
      (networkProvider as unknown as P).create(inputs as never),
      /host hv2.*network lan \(bridge kvlb-[0-9a-f]{8}\) on this host belongs to lab\/prod\/Network\/lan, not to lab\/dev\/Network\/lan/s,
    );
    assert.deepEqual(destructive(fake, "hv2"), [], "nothing destructive ran on the other owner's host");
    assert.ok(
      fake.log.some((l) => l.host === "hv1" && l.label === "delete network lan on hv1"),
      "the host where this call made the network is cleaned",
    );
    assert.equal(
      fs.readFileSync(path.join(fake.roots.get("hv2") as string, "owners/network/lan.owner"), "utf8"),
      `${OTHER}\n`,
    );
  } finally {
    fake.restore();
  }
});

const IPAM_RECORD = (allocations: IpamRecord["allocations"]): IpamRecord => ({
  subnet: "lan-v4",
  cidr: "10.10.0.0/24",
  gateway: "10.10.0.1",
  pool: { start: "10.10.0.2", end: "10.10.0.254" },
  allocations,
});

test("IPAM: an allocation id held by another owner is neither handed out nor released", () => {
  const A = "lab/a/Server/web1";
  const B = "lab/b/Server/web1";
  const rec = IPAM_RECORD({ "10.10.0.2": { owner: "server:u1:0", mac: "", holder: A } });
  const same = planAllocation(rec, "server:u1:0", { holder: B });
  assert.ok(
    "error" in same && /belongs to lab\/a\/Server\/web1, not to lab\/b\/Server\/web1/.test(same.error),
  );
  assert.deepEqual(planRelease(rec, "server:u1:0", B), rec, "B cannot release A's address");
  assert.deepEqual(planRelease(rec, "server:u1:0", A).allocations, {}, "A can");
  const other = planAllocation(rec, "server:u2:0", { holder: B });
  assert.ok("ip" in other && other.ip === "10.10.0.3", "another server (UUID) gets another address");
});

function serverSetup(owner: string, hosts: HostConnection[], pin: string) {
  const { inputs, failures } = checkServerInputs({ ...serverRaw(hosts), host: pin, owner });
  assert.deepEqual(failures, []);
  return inputs as Record<string, unknown> & { uuid: string };
}

test("a Server create refused for a name another owner holds does not release that server's address", async () => {
  const hv1 = testHost("hv1", 1);
  const A = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const B = ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: "web1" });
  const inputs = serverSetup(B, [hv1], "hv1");
  const rec = IPAM_RECORD({ "10.10.0.2": { owner: portOwner(inputs.uuid, 0), mac: "", holder: A } });
  const fake = fakeHost([
    [/^read host capacity/, "memtotal=4194304\nmemavailable=4000000\ncpus=2"],
    [/^read record ipam\//, JSON.stringify(rec)],
  ]);
  try {
    markOwned(fake, hv1, "server/web1.owner", A);
    await assert.rejects(
      (serverProvider as unknown as P).create(inputs as never),
      /server web1 on this host belongs to lab\/a\/Server\/web1, not to lab\/b\/Server\/web1/,
    );
    assert.deepEqual(destructive(fake), [], "no address released, no domain or file removed");
  } finally {
    fake.restore();
  }
});

test("same-named servers of two stacks on two hosts do not share an address: the second is refused naming the first", async () => {
  const hv1 = testHost("hv1", 1);
  const hv2 = testHost("hv2", 2);
  const A = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const B = ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: "web1" });
  // Same lab, same project, same name: the same UUID. A holds its address on hv1's subnet.
  const inputs = serverSetup(B, [hv1, hv2], "hv2");
  const rec = IPAM_RECORD({ "10.10.0.2": { owner: portOwner(inputs.uuid, 0), mac: "", holder: A } });
  const fake = fakeHost([
    [/^read host capacity/, "memtotal=4194304\nmemavailable=4000000\ncpus=2"],
    [/^read record ipam\//, JSON.stringify(rec)],
  ]);
  try {
    markOwned(fake, hv1, "server/web1.owner", A);
    await assert.rejects(
      (serverProvider as unknown as P).create(inputs as never),
      /the address 10\.10\.0\.2 of server:[0-9a-f-]+:0 belongs to lab\/a\/Server\/web1, not to lab\/b\/Server\/web1/,
    );
    assert.deepEqual(destructive(fake, "hv1"), [], "nothing of A's changed on hv1 (its subnet host)");
    assert.ok(
      !fake.log.some((l) => l.label.startsWith("write record ipam/")),
      "A's IPAM record is not rewritten",
    );
  } finally {
    fake.restore();
  }
});

test("servers placed in one turn on one host: one refused for another owner's name, the other still created (each answered for itself)", async () => {
  const hv1 = testHost("hv1", 1);
  const A = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const B = (n: string) => ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: n });
  const web1 = serverSetup(B("web1"), [hv1], "hv1");
  const raw = serverRaw([hv1]);
  const uuid2 = "0b6d3c1e-2f4a-4b5c-8d9e-0f1a2b3c4d5e";
  const rename = (xml: string) =>
    xml
      .split("web1")
      .join("web2")
      .split(raw.uuid as string)
      .join(uuid2);
  const xml = raw.domainXml as { kvm: string; qemu: string };
  const { inputs: web2, failures } = checkServerInputs({
    ...raw,
    domainXml: { kvm: rename(xml.kvm), qemu: rename(xml.qemu) },
    serverName: "web2",
    uuid: uuid2,
    host: "hv1",
    owner: B("web2"),
  });
  assert.deepEqual(failures, []);
  const fake = fakeHost([
    [/^read host capacity/, "memtotal=4194304\nmemavailable=4000000\ncpus=2"],
    [/^read record ipam\//, JSON.stringify(IPAM_RECORD({}))],
    [/^read domain/, "defined=yes\nstate=shut off\ntype=qemu"],
  ]);
  try {
    markOwned(fake, hv1, "server/web1.owner", A);
    const p = serverProvider as unknown as P;
    const [r1, r2] = await Promise.allSettled([
      p.create({ ...web1, powerState: "external" } as never),
      p.create({ ...(web2 as object), powerState: "external" } as never),
    ]);
    assert.equal(r1.status, "rejected");
    assert.match(
      String((r1 as PromiseRejectedResult).reason),
      /server web1 on this host belongs to lab\/a\/Server\/web1, not to lab\/b\/Server\/web1/,
    );
    assert.equal(r2.status, "fulfilled", `web2 is created: ${String((r2 as PromiseRejectedResult).reason)}`);
    assert.ok(
      fake.log.some((l) => /^write record server\/web2/.test(l.label)),
      "web2's placement record is written",
    );
    assert.deepEqual(
      destructive(fake).filter((l) => /web1/.test(l)),
      [],
      "nothing is written over or removed of A's web1 (no record, no delete)",
    );
  } finally {
    fake.restore();
  }
});

test("placement takes no cross-process lock: the chosen host's claim batch begins with the records guard, then the host check, then the claims", async () => {
  const hv1 = testHost("hv1", 1);
  const hv2 = testHost("hv2", 2);
  const owner = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const inputs = serverSetup(owner, [hv2, hv1], "");
  const fake = fakeHost([
    [/^read host capacity/, "memtotal=4194304\nmemavailable=4000000\ncpus=2"],
    [/^read record ipam\//, JSON.stringify(IPAM_RECORD({}))],
    [/^read domain/, "defined=yes\nstate=running\ntype=qemu"],
  ]);
  try {
    await (serverProvider as unknown as P).create(inputs as never);
    const labels = fake.log.map((l) => `${l.host}: ${l.label}`);
    assert.ok(!labels.some((l) => / lock taken$/.test(l)), `no named lock is taken: ${labels.join(" | ")}`);
    const reads = labels.flatMap((l, i) => (/read host capacity/.test(l) ? [i] : []));
    const guard = labels.findIndex((l) =>
      /check that the server records on this host are as placement read them/.test(l),
    );
    const check = labels.findIndex((l) => /check host for server web1/.test(l));
    const claim = labels.findIndex((l) => /claim server web1/.test(l));
    assert.ok(reads.length === 2 && reads.every((i) => i < guard), "both hosts are read before the guard");
    assert.ok(guard >= 0 && guard < check && check < claim, "guard, then the host check, then the claim");
    assert.equal(labels[guard].split(":")[0], labels[claim].split(":")[0], "on the host claimed");
  } finally {
    fake.restore();
  }
});

test("security groups and ports: another owner's group or port is refused naming the owner and the fix, with no destructive step", async () => {
  const hv1 = testHost("hv1", 1);
  const fake = fakeHost([
    [/^read security group /, "set=yes\nmembers=10.10.1.5"],
    [/^read security groups of port/, "rules=sync\njumps=4\nhybrid=yes"],
  ]);
  try {
    const gA = ownerOf({ pulumiProject: "lab", stack: "a", type: "SecurityGroup", name: "web" });
    const gB = ownerOf({ pulumiProject: "lab", stack: "b", type: "SecurityGroup", name: "web" });
    const group = (owner: string) =>
      checkSecurityGroupInputs({ groupName: "web", hosts: [hv1], members: ["10.10.1.5"], owner });
    const a = group(gA);
    assert.deepEqual(a.failures, []);
    const pg = securityGroupProvider as unknown as P;
    await pg.create(a.inputs as never);
    assert.ok(fs.existsSync(path.join(fake.roots.get("hv1") as string, "owners/secgroup/web.owner")));

    // Stack b's group "web" on the same host: refused at the claim, before any upload or ipset restore.
    fake.log.length = 0;
    await assert.rejects(
      pg.create(group(gB).inputs as never),
      /security group web \(ipset kvmlab-g[^)]*\) on this host belongs to lab\/a\/SecurityGroup\/web, not to lab\/b\/SecurityGroup\/web.*Fix: give this resource another groupName/s,
    );
    assert.deepEqual(destructive(fake), [], "no destructive step ran");
    assert.ok(!fake.log.some((l) => /^replace the member set/.test(l.label)), "the set was not replaced");
    // Update and delete with b's state are refused before anything is written or removed.
    fake.log.length = 0;
    await assert.rejects(
      pg.update("web", group(gB).inputs as never, group(gB).inputs as never),
      /belongs to lab\/a/,
    );
    await assert.rejects(pg.delete("web", group(gB).inputs as never), /belongs to lab\/a/);
    assert.deepEqual(destructive(fake), []);
    assert.ok(!fake.log.some((l) => /^replace the member set/.test(l.label)));
    // The owner's own delete removes the set and releases the marker.
    fake.log.length = 0;
    await pg.delete("web", a.inputs as never);
    assert.ok(fake.log.some((l) => l.label === "delete security group web"));
    assert.ok(!fs.existsSync(path.join(fake.roots.get("hv1") as string, "owners/secgroup/web.owner")));

    // Ports: the same for SecurityGroupPort.
    const pA = ownerOf({ pulumiProject: "lab", stack: "a", type: "SecurityGroupPort", name: "web1-0" });
    const pB = ownerOf({ pulumiProject: "lab", stack: "b", type: "SecurityGroupPort", name: "web1-0" });
    // Keyed by the tap: stack b cannot take over stack a's filtering under another portName.
    const port = (owner: string, portName = "web1-0") =>
      checkSecurityGroupPortInputs({
        portName,
        hosts: [hv1],
        host: "hv1",
        tap: "tap1a2b3c4d",
        mac: "fa:16:3e:00:00:01",
        ip: "10.10.1.5",
        driver: "linuxbridge",
        networkBridge: "kvlb-00000001",
        groups: [{ groupName: "web", rules: [] }],
        owner,
      });
    assert.deepEqual(port(pA).failures, []);
    const pp = securityGroupPortProvider as unknown as P;
    await pp.create(port(pA).inputs as never);
    fake.log.length = 0;
    await assert.rejects(
      pp.create(port(pB).inputs as never),
      /security groups of device tap1a2b3c4d .*belongs to lab\/a\/SecurityGroupPort\/web1-0, not to lab\/b\/SecurityGroupPort\/web1-0.*Fix: give this resource another tap/s,
    );
    await assert.rejects(
      pp.create(port(pB, "elsewhere-0").inputs as never),
      /device tap1a2b3c4d .*belongs to lab\/a/s,
    );
    await assert.rejects(
      pp.delete("elsewhere-0", port(pB, "elsewhere-0").inputs as never),
      /belongs to lab\/a/,
    );
    await assert.rejects(
      pp.update("web1-0", port(pB).inputs as never, port(pB).inputs as never),
      /belongs to lab\/a/,
    );
    await assert.rejects(pp.delete("web1-0", port(pB).inputs as never), /belongs to lab\/a/);
    assert.deepEqual(destructive(fake), [], "no destructive step ran");
    assert.ok(!fake.log.some((l) => /^apply security groups of port/.test(l.label)), "no rule was applied");
    assert.ok(fs.existsSync(path.join(fake.roots.get("hv1") as string, "owners/sgport/tap1a2b3c4d.owner")));
    // A create after a crash (same owner, marker left) adopts; the owner's delete releases.
    await pp.create(port(pA).inputs as never);
    fake.log.length = 0;
    await pp.delete("web1-0", port(pA).inputs as never);
    assert.ok(fake.log.some((l) => l.label === "delete security groups of port web1-0"));
    assert.ok(!fs.existsSync(path.join(fake.roots.get("hv1") as string, "owners/sgport/tap1a2b3c4d.owner")));
  } finally {
    fake.restore();
  }
});

test("a live migration refuses a source guest another owner holds: no migration key is made and nothing moves", async () => {
  const hv1 = testHost("hv1", 1);
  const hv2 = testHost("hv2", 2);
  const A = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const B = ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: "web1" });
  const olds = {
    ...serverSetup(B, [hv1, hv2], "hv1"),
    host: "hv1",
    domainType: "qemu",
    addresses: [],
    hostKeys: {},
  };
  const news = { ...olds, host: "hv2" };
  const fake = fakeHost([[/^read domain web1/, "defined=yes\nstate=running\ntype=qemu"]]);
  try {
    markOwned(fake, hv1, "server/web1.owner", A);
    await assert.rejects(
      (serverProvider as unknown as P).update("web1", olds as never, news as never),
      /server web1 on this host belongs to lab\/a\/Server\/web1, not to lab\/b\/Server\/web1/,
    );
    const ran = fake.log.map((l) => `${l.host}: ${l.label}`);
    assert.deepEqual(
      ran,
      ["hv1: check the owner of server web1"],
      "the source's owner is checked first, nothing else runs",
    );
    assert.deepEqual(destructive(fake), [], "nothing removed or rewritten on either host");
  } finally {
    fake.restore();
  }
});

test("a floating IP on another stack's router is refused naming the router's owner; nothing is claimed or allocated", async () => {
  const hv1 = testHost("hv1", 1);
  const fake = fakeHost([]);
  try {
    const theirRouter = ownerOf({ pulumiProject: "lab", stack: "prod", type: "Router", name: "r1" });
    markOwned(fake, hv1, "router/r1.owner", theirRouter);
    const raw = {
      fipName: "web-fip",
      hosts: [hv1],
      host: "hv1",
      routerName: "r1",
      external: { networkName: "ext", subnetName: "ext-v4", cidr: "172.24.4.0/24", ipamHost: "hv1" },
      address: "172.24.4.150",
      target: { address: "10.10.1.5", subnetName: "lan1-v4", networkName: "lan1" },
      owner: ownerOf({ pulumiProject: "lab", stack: "dev", type: "FloatingIp", name: "web-fip" }),
    };
    const { inputs, failures } = checkFloatingIpInputs(raw);
    assert.deepEqual(failures, []);
    const fip = floatingIpProvider as unknown as Required<typeof floatingIpProvider>;
    await assert.rejects(
      fip.create(inputs as never),
      /floating IP web-fip uses router r1, which belongs to lab\/prod\/Router\/r1, another stack than lab\/dev;.*Fix: point routerName at a router of this stack/s,
    );
    assert.deepEqual(destructive(fake), []);
    assert.ok(
      !fake.log.some((l) => /^claim |allocate|write record/.test(l.label)),
      fake.log.map((l) => l.label).join("\n"),
    );
    assert.ok(!fs.existsSync(path.join(fake.roots.get("hv1") as string, "owners/floatingip/web-fip.owner")));
    // The same router owned by this stack is accepted (the claim runs).
    markOwned(
      fake,
      hv1,
      "router/r1.owner",
      ownerOf({ pulumiProject: "lab", stack: "dev", type: "Router", name: "r1" }),
    );
    await fip.create(inputs as never).catch(() => undefined);
    assert.ok(
      fake.log.some((l) => /^claim floating IP web-fip/.test(l.label)),
      "the claim ran",
    );
  } finally {
    fake.restore();
  }
});

const ROUTER_OWNER = ownerOf({ pulumiProject: "lab", stack: "dev", type: "Router", name: "r1" });

test("a floating IP whose target is another stack's port, or no port at all, is refused before anything is claimed or allocated", async () => {
  const hv1 = testHost("hv1", 1);
  const lanRecord = (holder: string): string =>
    JSON.stringify({
      subnet: "lan1-v4",
      network: "lan1",
      cidr: "10.10.1.0/24",
      gateway: "10.10.1.1",
      pool: { start: "10.10.1.2", end: "10.10.1.254" },
      allocations: { "10.10.1.5": { owner: portOwner("u-1", 0), mac: "52:54:00:00:00:05", holder } },
    });
  const raw = (address: string): Record<string, unknown> => ({
    fipName: "web-fip",
    hosts: [hv1],
    host: "hv1",
    routerName: "r1",
    external: { networkName: "ext", subnetName: "ext-v4", cidr: "172.24.4.0/24", ipamHost: "hv1" },
    address: "172.24.4.150",
    target: { address, subnetName: "lan1-v4", networkName: "lan1", ipamHost: "hv1" },
    owner: ownerOf({ pulumiProject: "lab", stack: "dev", type: "FloatingIp", name: "web-fip" }),
  });
  const fip = floatingIpProvider as unknown as Required<typeof floatingIpProvider>;
  const theirs = ownerOf({ pulumiProject: "lab", stack: "prod", type: "Server", name: "web" });
  const ours = ownerOf({ pulumiProject: "lab", stack: "dev", type: "Server", name: "web" });
  const lanName = ipamRecordName("lan1", "lan1-v4");
  for (const [holder, address, refusal] of [
    [
      theirs,
      "10.10.1.5",
      /target\.address 10\.10\.1\.5 in subnet lan1-v4 .* belongs to lab\/prod\/Server\/web, another stack than lab\/dev;.*Fix: target an address of this stack/s,
    ],
    [
      ours,
      "10.10.1.6",
      /target\.address 10\.10\.1\.6 is not allocated in subnet lan1-v4 \(its IPAM record on host hv1\).*Fix: use that port's or VIP's address/s,
    ],
  ] as const) {
    const fake = fakeHost([[new RegExp(`^read record ipam/${lanName}$`), lanRecord(holder)]]);
    try {
      markOwned(fake, hv1, "router/r1.owner", ROUTER_OWNER);
      const { inputs, failures } = checkFloatingIpInputs(raw(address));
      assert.deepEqual(failures, []);
      await assert.rejects(fip.create(inputs as never), refusal);
      assert.deepEqual(destructive(fake), []);
      assert.ok(
        !fake.log.some((l) => /^claim |allocate|write record/.test(l.label)),
        fake.log.map((l) => l.label).join("\n"),
      );
    } finally {
      fake.restore();
    }
  }
  // This stack's port: the create goes on to claim the floating IP.
  const fake = fakeHost([[new RegExp(`^read record ipam/${lanName}$`), lanRecord(ours)]]);
  try {
    markOwned(fake, hv1, "router/r1.owner", ROUTER_OWNER);
    const { inputs } = checkFloatingIpInputs(raw("10.10.1.5"));
    await fip.create(inputs as never).catch(() => undefined);
    assert.ok(
      fake.log.some((l) => /^claim floating IP web-fip/.test(l.label)),
      "the claim ran",
    );
  } finally {
    fake.restore();
  }
  // A target.ipamHost that is not one of the hosts is refused at check.
  const bad = checkFloatingIpInputs({
    ...raw("10.10.1.5"),
    target: { address: "10.10.1.5", subnetName: "lan1-v4", networkName: "lan1", ipamHost: "hv9" },
  });
  assert.match(
    bad.failures.map((f) => f.reason).join("\n"),
    /target\.ipamHost: "hv9" is not one of the hosts/,
  );
});

test("a Router update to another external subnet takes the new gateway address before giving up the old one", async () => {
  const hv1 = testHost("hv1", 1);
  const ext = (subnet: string, cidr: string, address: string) => ({
    subnetName: subnet,
    networkName: subnet === "ext-v4" ? "ext" : "ext2",
    bridge: subnet === "ext-v4" ? "kvlb-0e0e0e0e" : "kvlb-0f0f0f0f",
    driver: "linuxbridge",
    cidr,
    address,
    gateway: cidr.replace(/0\/24$/, "1"),
    mtu: 1500,
    ipamHost: "hv1",
  });
  const oldRec = ipamRecordName("ext", "ext-v4");
  const newRec = ipamRecordName("ext2", "ext2-v4");
  const taken: IpamRecord = {
    subnet: "ext2-v4",
    cidr: "172.24.9.0/24",
    gateway: "172.24.9.1",
    pool: { start: "172.24.9.2", end: "172.24.9.254" },
    allocations: { "172.24.9.100": { owner: "fip:someone", mac: "", holder: OTHER } },
  };
  const fake = fakeHost([
    [new RegExp(`^read record ipam/${newRec}`), JSON.stringify(taken)],
    [
      new RegExp(`^read record ipam/${oldRec}`),
      JSON.stringify({
        subnet: "ext-v4",
        cidr: "172.24.4.0/24",
        gateway: "172.24.4.1",
        pool: { start: "172.24.4.2", end: "172.24.4.254" },
        allocations: { "172.24.4.100": { owner: routerGatewayOwner("r1"), mac: "", holder: ROUTER_OWNER } },
      }),
    ],
  ]);
  try {
    const owner = ROUTER_OWNER;
    const olds = checkRouterInputs({
      routerName: "r1",
      hosts: [hv1],
      external: ext("ext-v4", "172.24.4.0/24", "172.24.4.100"),
      owner,
    });
    const news = checkRouterInputs({
      routerName: "r1",
      hosts: [hv1],
      external: ext("ext2-v4", "172.24.9.0/24", "172.24.9.100"),
      owner,
    });
    assert.deepEqual([...olds.failures, ...news.failures], []);
    const router = routerProvider as unknown as Required<typeof routerProvider>;
    await assert.rejects(
      router.update("r1", olds.inputs as never, news.inputs as never),
      /fixedIp: 172\.24\.9\.100 in subnet ext2-v4 is already allocated/,
    );
    const writes = fake.log.filter((l) => l.label.startsWith("write record ipam/")).map((l) => l.label);
    assert.deepEqual(writes, [], "the old gateway address was not released when the new one was refused");
    assert.deepEqual(destructive(fake), []);
  } finally {
    fake.restore();
  }
});

test("an Image update that adds a host claims the image there: an unmarked image on that host is refused, not adopted", async () => {
  const hv1 = testHost("hv1", 1);
  const hv2 = testHost("hv2", 2);
  const fake = fakeHost([[/^check image/, "kernel ok 10 1 -\nramdisk ok 5 1 -"]]);
  try {
    const owner = ownerOf({ pulumiProject: "lab", stack: "dev", type: "Image", name: "tiny" });
    const raw = (hosts: HostConnection[]) => ({
      imageName: "tiny",
      hosts,
      kernel: { hostPath: "/boot/vmlinuz", sha256: "a".repeat(64) },
      ramdisk: { hostPath: "/boot/initrd.img", sha256: "a".repeat(64) },
      owner,
    });
    const olds = checkImageInputs(raw([hv1]));
    const news = checkImageInputs(raw([hv1, hv2]));
    assert.deepEqual([...olds.failures, ...news.failures], []);
    markOwned(fake, hv1, "image/tiny.owner", owner);
    // hv2 holds an image folder of the same name that no kvmlab owner marked (made by hand).
    const hv2Root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-own-hv2-"));
    fake.roots.set("hv2", hv2Root);
    fs.mkdirSync(path.join(hv2Root, "images", "tiny"), { recursive: true });
    const img = imageProvider as unknown as Required<typeof imageProvider>;
    await assert.rejects(
      img.update("tiny", olds.inputs as never, news.inputs as never),
      /host hv2.*image tiny already exists on this host with no kvmlab owner/s,
    );
    assert.ok(
      !fs.existsSync(path.join(fake.roots.get("hv2") as string, "owners/image/tiny.owner")),
      "not adopted",
    );
    assert.deepEqual(destructive(fake, "hv2"), []);
  } finally {
    fake.restore();
  }
});

test("security group update: a host it adds is claimed (an unmarked group there is refused, not adopted); a host it drops loses the group", async () => {
  const [hv1, hv2] = [testHost("hv1", 1), testHost("hv2", 2)];
  const fake = fakeHost([[/^read security group /, "set=yes\nmembers=10.10.1.5"]]);
  try {
    const owner = ownerOf({ pulumiProject: "lab", stack: "a", type: "SecurityGroup", name: "web" });
    const group = (hosts: HostConnection[]) =>
      checkSecurityGroupInputs({ groupName: "web", hosts, members: ["10.10.1.5"], owner }).inputs;
    const pg = securityGroupProvider as unknown as P;
    const one = (await pg.create(group([hv1]) as never)) as unknown as { outs: Record<string, unknown> };
    // hv2 holds a folder of group "web" that nobody marked (made by hand, or before owners).
    markOwned(fake, hv2, "../secgroups/web/ipset.restore", "by hand");
    fake.log.length = 0;
    await assert.rejects(
      pg.update("web", one.outs as never, group([hv1, hv2]) as never),
      /security group web .* already exists on this host with no kvmlab owner/s,
    );
    assert.ok(
      !fake.log.some((l) => l.host === "hv2" && /^replace the member set/.test(l.label)),
      "nothing written on hv2",
    );
    assert.ok(!fs.existsSync(path.join(fake.roots.get("hv2") as string, "owners/secgroup/web.owner")));
    // With hv2 clean the update claims it; dropping hv1 later removes the group there.
    fs.rmSync(path.join(fake.roots.get("hv2") as string, "secgroups"), { recursive: true, force: true });
    const two = await pg.update("web", one.outs as never, group([hv1, hv2]) as never);
    assert.ok(fs.existsSync(path.join(fake.roots.get("hv2") as string, "owners/secgroup/web.owner")));
    fake.log.length = 0;
    await pg.update("web", { ...(two as object), ...group([hv1, hv2]) } as never, group([hv2]) as never);
    assert.ok(fake.log.some((l) => l.host === "hv1" && l.label === "delete security group web"));
    assert.ok(!fs.existsSync(path.join(fake.roots.get("hv1") as string, "owners/secgroup/web.owner")));
    assert.ok(!fake.log.some((l) => l.host === "hv2" && l.label === "delete security group web"));
  } finally {
    fake.restore();
  }
});

test("a Server whose kvmlab metadata alone changes (older state, new owner, drift) gets it set in place: no stop, no define", async () => {
  const hv1 = testHost("hv1", 1);
  const A = ownerOf({ pulumiProject: "lab", stack: "dev", type: "Server", name: "web1" });
  const A2 = ownerOf({ pulumiProject: "lab", stack: "dev", type: "Server", name: "web1", project: "x" });
  const news = serverSetup(A, [hv1], "hv1") as unknown as Record<string, unknown> & {
    domainXml: { kvm: string; qemu: string };
  };
  // The XML a state from before issue 14 holds: the stack in <kvmlab:project>, no stack element.
  const older = (x: string): string =>
    x
      .replace(/\n\s*<kvmlab:stack>[^<]*<\/kvmlab:stack>/, "")
      .replace("<kvmlab:project></kvmlab:project>", "<kvmlab:project>dev</kvmlab:project>");
  const olds = {
    ...news,
    domainXml: { kvm: older(news.domainXml.kvm), qemu: older(news.domainXml.qemu) },
    host: "hv1",
    domainType: "qemu",
    addresses: [],
    actualPowerState: "running",
    hostKeys: {},
  };
  const p = serverProvider as unknown as P;
  assert.equal((await p.diff("web1", olds as never, news as never)).changes, true);
  assert.match(
    planText(olds, news),
    /^set the domain's kvmlab metadata \(virsh metadata --live --config; the guest keeps running\)$/,
  );
  for (const [what, o, n] of [
    ["older state", olds, news],
    ["new owner", { ...olds, domainXml: news.domainXml }, { ...news, owner: A2 }],
    [
      "drift found by refresh",
      { ...olds, domainXml: news.domainXml, metadataDrift: 'project: host "Default/x", expected ""' },
      news,
    ],
  ] as const) {
    const fake = fakeHost([[/^read domain web1/, "defined=yes\nstate=running\ntype=qemu"]]);
    try {
      markOwned(fake, hv1, "server/web1.owner", A);
      const { outs } = (await p.update("web1", o as never, n as never)) as {
        outs: { metadataDrift?: string };
      };
      const labels = fake.log.map((l) => l.label);
      assert.ok(labels.includes("set kvmlab metadata of domain web1"), `${what}: ${labels.join(" | ")}`);
      assert.ok(
        !labels.some((l) => /^(define domain|shut down domain|power off domain|start domain)/.test(l)),
        `${what}: no stop, define or start: ${labels.join(" | ")}`,
      );
      const set = fake.log.find((l) => l.label === "set kvmlab metadata of domain web1")!.script;
      const owner = (n as { owner: string }).owner;
      assert.ok(set.includes(`<owner>${owner}</owner>`), `${what}: the owner is set`);
      assert.ok(set.includes("<stack>dev</stack><project></project>"), `${what}: stack and project are set`);
      assert.match(set, /--config \$live/);
      const file = fake.log.find((l) => /instances\/[0-9a-f-]+\/domain\.xml/.test(l.label))!;
      assert.ok(file, `${what}: the instance folder's copy of the XML is rewritten`);
      const b64 = /<<'(KVL_EOF_[0-9a-f]+)'\n([\s\S]*?)\1/.exec(file.script)![2];
      const written = Buffer.from(b64.replace(/\n/g, ""), "base64").toString("utf8");
      assert.equal(parseDomainMetadata(written).owner, owner, `${what}: the file has the owner`);
      assert.equal(outs.metadataDrift, "", `${what}: no drift left`);
    } finally {
      fake.restore();
    }
  }
});

test("a Server whose XML has no kvmlab metadata gets an owner change set in place (review O3); the step checks the domain's UUID (review O5)", async () => {
  const hv1 = testHost("hv1", 1);
  const A = ownerOf({ pulumiProject: "lab", stack: "dev", type: "Server", name: "web1" });
  const A2 = ownerOf({ pulumiProject: "lab", stack: "dev", type: "Server", name: "web1", project: "x" });
  const base = serverSetup(A, [hv1], "hv1") as unknown as Record<string, unknown> & {
    uuid: string;
    domainXml: { kvm: string; qemu: string };
  };
  // A raw provider call's XML: no <metadata> at all.
  const bare = (x: string): string => x.replace(/\n\s*<metadata>[\s\S]*?<\/metadata>/, "");
  const news = { ...base, domainXml: { kvm: bare(base.domainXml.kvm), qemu: bare(base.domainXml.qemu) } };
  assert.doesNotMatch(news.domainXml.qemu, /kvmlab:instance/);
  const olds = {
    ...news,
    host: "hv1",
    domainType: "qemu",
    addresses: [],
    actualPowerState: "running",
    hostKeys: {},
  };
  const p = serverProvider as unknown as P;
  const uuidLine = `uuid=${base.uuid}`;
  const fake = fakeHost([[/^read domain web1/, `defined=yes\n${uuidLine}\nstate=running\ntype=qemu`]]);
  let set: string;
  try {
    markOwned(fake, hv1, "server/web1.owner", A);
    await p.update("web1", olds as never, { ...news, owner: A2 } as never);
    const labels = fake.log.map((l) => l.label);
    assert.ok(
      !labels.some((l) => /^(define domain|shut down domain|power off domain|start domain)/.test(l)),
      labels.join(" | "),
    );
    set = fake.log.find((l) => l.label === "set kvmlab metadata of domain web1")!.script;
    assert.ok(set.includes(`--set '<instance><project></project><owner>${A2}</owner></instance>'`), set);
  } finally {
    fake.restore();
  }
  // The step's script against a fake virsh: another domain under the name (another UUID) is left
  // alone (exit 33, no --set); this server's domain gets the metadata, live and in its config.
  const runWith = (uuid: string): StepResult & { calls: string } => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-meta-"));
    try {
      const calls = path.join(dir, "calls");
      const fakeVirsh = `virsh() { echo "$*" >> ${calls}; case "$*" in *domuuid*) echo ${uuid} ;; *domstate*) echo running ;; esac; }`;
      const r = spawnSync("bash", ["--noprofile", "--norc", "-c", `${fakeVirsh}\n${set}`], {
        encoding: "utf8",
      });
      return {
        code: r.status,
        stdout: r.stdout,
        stderr: r.stderr,
        calls: fs.existsSync(calls) ? fs.readFileSync(calls, "utf8") : "",
      };
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
  const other = runWith("11111111-2222-4333-8444-555555555555");
  assert.equal(other.code, 33, other.stderr);
  assert.match(
    other.stderr,
    /the domain named web1 on this host is not this server .* it has UUID 11111111-.*Fix: run "pulumi refresh"/,
  );
  assert.doesNotMatch(other.calls, /--set/);
  const mine = runWith(base.uuid);
  assert.equal(mine.code, 0, mine.stderr);
  assert.match(mine.calls, /metadata web1 .*--set .* --config --live/);
  // The provider refuses before any step when it reads another UUID under the name.
  const fake2 = fakeHost([
    [/^read domain web1/, "defined=yes\nuuid=11111111-2222-4333-8444-555555555555\nstate=running\ntype=qemu"],
  ]);
  try {
    markOwned(fake2, hv1, "server/web1.owner", A);
    await assert.rejects(
      p.update("web1", olds as never, { ...news, owner: A2 } as never),
      /has UUID 11111111-.*not this server's/,
    );
    assert.deepEqual(destructive(fake2), []);
    assert.ok(!fake2.log.some((l) => l.label === "set kvmlab metadata of domain web1"));
  } finally {
    fake2.restore();
  }
});
