/**
 * IPAM allocations that wait for one subnet share one turn of the DHCP host's lock (issue 13):
 * one reading of the record and leases, one commit. Each allocation still gets its own answer,
 * as if it had run alone: a refused one changes nothing and holds up none of the others, and a
 * failed commit gives none of them an address.
 *
 * The fake host keeps the subnet's IPAM record: "read record ipam/…" prints it, "write record
 * ipam/…" stores what the step uploads; the host lock is logged like a step.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  allocateAddress,
  allocateAddressOrigin,
  hostPoolStats,
  ipamRecordName,
  type HostConnection,
  type IpamRecord,
  type Step,
  type StepResult,
} from "../../../provider";
import { fakeHost, type Fake } from "./fakeHost";
import { lockedOverFake, type LockedFakeOptions } from "./ipamLockedFake";
import { testHost } from "./fixtures";

const hv1 = testHost("hv1", 1);
const REF = { host: hv1, networkName: "lan", subnetName: "lan-v4" };
const NAME = ipamRecordName("lan", "lan-v4");

const record = (allocations: IpamRecord["allocations"]): IpamRecord => ({
  subnet: "lan-v4",
  cidr: "10.10.0.0/24",
  gateway: "10.10.0.1",
  pool: { start: "10.10.0.2", end: "10.10.0.254" },
  allocations,
});

/** The content a write-record step uploads. */
function uploaded(script: string): string {
  const b64 = /<<'(KVL_EOF_[0-9a-f]+)'\n([\s\S]*?)\1/.exec(script)![2];
  return Buffer.from(b64.replace(/\n/g, ""), "base64").toString("utf8");
}

/**
 * A fake DHCP host holding one IPAM record; `failWrite` makes the commit fail; `afterRead(n)`
 * runs after the n-th reading of the record (another run committing meanwhile: `set`). The
 * commit's guard (ipamUnchangedStep) runs with bash over a file holding the record's text.
 */
function subnetHost(
  start: IpamRecord,
  opts: {
    failWrite?: boolean;
    /** The hostsfile's write fails (after the record's), `times` times (each commit's). */
    failHosts?: { times: number };
    afterRead?: (n: number, set: (r: IpamRecord) => void, locked: boolean) => void;
    /** Steps whose label matches fail with exit status 1 (a claim batch's own step). */
    failLabel?: RegExp;
    /** How runLocked's batches are sent (lockedOverFake: lost at a step, held before). */
    locked?: LockedFakeOptions;
    /**
     * After each unlocked reading (record and leases), the turn goes on only once every pending
     * callback ran (setImmediate): a claim batch started by afterRead then already waits for the
     * turn's ticket (ordering, not time).
     */
    pauseAfterRead?: boolean;
  } = {},
): Fake & { current(): IpamRecord } {
  let current = start;
  let reads = 0;
  // Under the lock taken by withHostLock (the locked turn): no other writer can change the record.
  let locked = false;
  const fs: typeof import("node:fs") = require("node:fs");
  const os: typeof import("node:os") = require("node:os");
  const path: typeof import("node:path") = require("node:path");
  const { spawnSync }: typeof import("node:child_process") = require("node:child_process");
  const fake = fakeHost((label, script): string | StepResult => {
    // The host keeps this one subnet's record (lan/lan-v4) and no other.
    if (/^read record ipam\//.test(label)) {
      if (!label.endsWith(NAME)) return "";
      const text = JSON.stringify(current);
      opts.afterRead?.(++reads, (r) => (current = r), locked);
      return text;
    }
    if (/^check that the IPAM record of subnet /.test(label)) {
      const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-ipam-guard-"));
      try {
        fs.mkdirSync(path.join(root, "records", "ipam"), { recursive: true });
        fs.writeFileSync(path.join(root, "records", "ipam", `${NAME}.json`), JSON.stringify(current));
        const r = spawnSync(
          "bash",
          ["--noprofile", "--norc", "-c", script.split("/var/lib/kvmlab").join(root)],
          {
            encoding: "utf8",
          },
        );
        return { code: r.status, stdout: r.stdout, stderr: r.stderr };
      } finally {
        fs.rmSync(root, { recursive: true, force: true });
      }
    }
    if (/^write record ipam\//.test(label)) {
      if (opts.failWrite) return { code: 1, stdout: "", stderr: "No space left on device" };
      current = JSON.parse(uploaded(script)) as IpamRecord;
    }
    if (opts.failLabel?.test(label)) return { code: 1, stdout: "", stderr: "Input/output error" };
    if (/^upload .*hosts/.test(label) && opts.failHosts && opts.failHosts.times > 0) {
      opts.failHosts.times -= 1;
      return { code: 1, stdout: "", stderr: "Read-only file system" };
    }
    return "";
  });
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const checked = session.runChecked as (h: HostConnection, steps: readonly Step[]) => Promise<string[]>;
  // The commit's lock (runLocked: one round trip, the real lockedBatch with its riders), logged
  // like a step.
  lockedOverFake(fake, opts.locked);
  if (opts.pauseAfterRead)
    session.runChecked = async (h: HostConnection, steps: readonly Step[]) => {
      const out = await checked(h, steps);
      if (steps[0]?.label === `read record ipam/${NAME}` && steps[1]?.label === "read dhcp leases")
        await new Promise((r) => setImmediate(r));
      return out;
    };
  session.withHostLock = async (
    h: HostConnection,
    fn: (first: string[]) => Promise<unknown>,
    _waitSec?: number,
    first: readonly Step[] = [],
  ) => {
    fake.log.push({ host: h.name, label: "host lock taken", script: "" });
    locked = true;
    try {
      return await fn(await checked(h, first));
    } finally {
      locked = false;
      fake.log.push({ host: h.name, label: "host lock released", script: "" });
    }
  };
  return Object.assign(fake, { current: () => current });
}

const labels = (fake: Fake): string[] => fake.log.map((l) => l.label);
/** The remote steps a turn ran, but the commit's uploads and dnsmasq's reload. */
const turnSteps = (fake: Fake): string[] => labels(fake).filter((l) => !/^(upload|reload)/.test(l));
/** An optimistic turn's start: the record and leases read without the lock, then its guard under it. */
const GUARDED_TURN = [
  `read record ipam/${NAME}`,
  "read dhcp leases",
  "host lock taken",
  "check that the IPAM record of subnet lan-v4 is as read",
];
const count = (fake: Fake, re: RegExp): number => labels(fake).filter((l) => re.test(l)).length;

test("allocations waiting for one subnet share one lock turn: one read, one commit, each its own address", async () => {
  const fake = subnetHost(record({}));
  try {
    const ips = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        allocateAddress(REF, `server:u${i}:0`, { mac: `52:54:00:00:00:0${i}`, holder: `lab/a/Server/s${i}` }),
      ),
    );
    assert.deepEqual(
      ips,
      ["10.10.0.2", "10.10.0.3", "10.10.0.4", "10.10.0.5"],
      "in the order asked, none twice",
    );
    assert.deepEqual(
      turnSteps(fake),
      [...GUARDED_TURN, `write record ipam/${NAME}`, "host lock released"],
      "one turn: one read, one commit under the host lock behind the guard",
    );
    const allocs = fake.current().allocations;
    assert.deepEqual(
      Object.entries(allocs).map(([ip, a]) => `${ip} ${a.owner} ${a.mac} ${a.holder}`),
      [0, 1, 2, 3].map((i) => `10.10.0.${i + 2} server:u${i}:0 52:54:00:00:00:0${i} lab/a/Server/s${i}`),
      "every allocation is committed with its MAC and holder",
    );
    // Asked again (a create run again): the same address, nothing written.
    assert.equal(
      await allocateAddress(REF, "server:u2:0", { mac: "52:54:00:00:00:02", holder: "lab/a/Server/s2" }),
      "10.10.0.4",
    );
    assert.equal(count(fake, /^write record ipam\//), 1, "an unchanged record is not written again");
  } finally {
    fake.restore();
  }
});

test("a refused allocation in a shared turn gets its own error; the others get their addresses and are committed", async () => {
  const A = "lab/a/Server/web1";
  const B = "lab/b/Server/web1";
  const fake = subnetHost(record({ "10.10.0.2": { owner: "server:u1:0", mac: "", holder: A } }));
  try {
    const [other, fixed, taken, dynamic] = await Promise.allSettled([
      // Another stack's allocation id: refused, naming the owner.
      allocateAddress(REF, "server:u1:0", { holder: B }),
      allocateAddress(REF, "server:u2:0", { fixedIp: "10.10.0.9", holder: "lab/b/Server/s2" }),
      // The fixed address the one before it just took: refused.
      allocateAddress(REF, "server:u3:0", { fixedIp: "10.10.0.9", holder: "lab/b/Server/s3" }),
      allocateAddress(REF, "server:u4:0", { holder: "lab/b/Server/s4" }),
    ]);
    assert.equal(other.status, "rejected");
    assert.match(
      String((other as PromiseRejectedResult).reason),
      /belongs to lab\/a\/Server\/web1, not to lab\/b\/Server\/web1/,
    );
    assert.deepEqual(fixed, { status: "fulfilled", value: "10.10.0.9" });
    assert.equal(taken.status, "rejected");
    assert.match(
      String((taken as PromiseRejectedResult).reason),
      /10\.10\.0\.9 .* is already allocated to server:u2:0/,
    );
    assert.deepEqual(dynamic, { status: "fulfilled", value: "10.10.0.3" }, "the next free address after A's");
    assert.equal(count(fake, /^read record ipam\//), 1, "one turn");
    assert.deepEqual(
      Object.fromEntries(
        Object.entries(fake.current().allocations).map(([ip, a]) => [ip, `${a.owner} ${a.holder}`]),
      ),
      {
        "10.10.0.2": `server:u1:0 ${A}`,
        "10.10.0.9": "server:u2:0 lab/b/Server/s2",
        "10.10.0.3": "server:u4:0 lab/b/Server/s4",
      },
      "A's allocation is kept as it was, the refused ones left no trace",
    );
  } finally {
    fake.restore();
  }
});

test("a failed commit gives no allocation of the turn an address; a refused one keeps its own reason", async () => {
  const A = "lab/a/Server/web1";
  const start = record({ "10.10.0.2": { owner: "server:u1:0", mac: "", holder: A } });
  const disk = { failWrite: true };
  const fake = subnetHost(start, disk);
  try {
    const results = await Promise.allSettled([
      allocateAddress(REF, "server:u5:0", { holder: "lab/b/Server/s5" }),
      allocateAddress(REF, "server:u1:0", { holder: "lab/b/Server/web1" }),
      allocateAddress(REF, "server:u6:0", { holder: "lab/b/Server/s6" }),
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      ["rejected", "rejected", "rejected"],
    );
    assert.match(
      String((results[0] as PromiseRejectedResult).reason),
      /write record ipam\/[0-9a-f]+.*No space left/s,
    );
    assert.match(String((results[1] as PromiseRejectedResult).reason), /belongs to lab\/a\/Server\/web1/);
    assert.match(String((results[2] as PromiseRejectedResult).reason), /No space left/);
    assert.deepEqual(fake.current(), start, "the record is as it was");
    assert.equal(count(fake, /^host lock taken/), 1, "one turn");
    // The subnet's queue is not stuck: the next allocation gets its own turn and its address.
    disk.failWrite = false;
    assert.equal(await allocateAddress(REF, "server:u5:0", { holder: "lab/b/Server/s5" }), "10.10.0.3");
    assert.equal(count(fake, /^host lock taken/), 2);
  } finally {
    fake.restore();
  }
});

test("allocations of two subnets do not share a turn, and a missing record refuses only its own subnet's", async () => {
  const fake = subnetHost(record({}));
  try {
    const other = { host: hv1, networkName: "lan2", subnetName: "v4" };
    const [a, b] = await Promise.allSettled([
      allocateAddress(REF, "server:u7:0", { holder: "lab/a/Server/s7" }),
      allocateAddress(other, "server:u7:1", { holder: "lab/a/Server/s7" }),
    ]);
    assert.deepEqual(a, { status: "fulfilled", value: "10.10.0.2" });
    assert.equal(b.status, "rejected");
    assert.match(
      String((b as PromiseRejectedResult).reason),
      /subnet v4 has no IPAM record on host hv1; create the Subnet first/,
    );
    assert.equal(count(fake, /^read record ipam\//), 2, "one turn per subnet");
    assert.equal(count(fake, /^host lock taken/), 1, "the subnet without a record commits nothing");
  } finally {
    fake.restore();
  }
});

test("an allocation tells what it did to its entry: made, mine, adopted from before holders, or that adoption deferred (nothing written)", async () => {
  const B = "lab/b/Server/web1";
  const before = record({ "10.10.0.7": { owner: "server:u9:0", mac: "52:54:00:00:00:09" } });
  const fake = subnetHost(before);
  try {
    // Beside placement (adopt: false): the entry from before holders is left as it was.
    assert.deepEqual(await allocateAddressOrigin(REF, "server:u9:0", { holder: B, adopt: false }), {
      ip: "10.10.0.7",
      origin: "deferred",
    });
    assert.deepEqual(fake.current(), before, "nothing written over the entry");
    assert.equal(count(fake, /^write record ipam\//), 0);
    assert.deepEqual(await allocateAddressOrigin(REF, "server:u1:0", { holder: B, adopt: false }), {
      ip: "10.10.0.2",
      origin: "made",
    });
    assert.deepEqual(await allocateAddressOrigin(REF, "server:u1:0", { holder: B }), {
      ip: "10.10.0.2",
      origin: "mine",
    });
    assert.deepEqual(await allocateAddressOrigin(REF, "server:u9:0", { holder: B }), {
      ip: "10.10.0.7",
      origin: "adopted",
    });
    assert.equal(fake.current().allocations["10.10.0.7"].holder, B, "adopted: the holder is written");
  } finally {
    fake.restore();
  }
});

test("adoptSameMacOnly (a server's port, review 8b Q4): an entry from before holders is taken over only when its MAC is the port's; else refused, naming address, subnet and fix", async () => {
  const B = "lab/b/Server/web1";
  const before = record({
    "10.10.0.7": { owner: "server:u9:0", mac: "52:54:00:00:00:09" },
    "10.10.0.8": { owner: "server:u8:0", mac: "fa:16:3e:00:00:08" },
  });
  const fake = subnetHost(before);
  try {
    // Another MAC (another stack's server of that UUID, maybe on another host): refused.
    await assert.rejects(
      allocateAddressOrigin(REF, "server:u9:0", {
        holder: B,
        mac: "fa:16:3e:00:00:01",
        adoptSameMacOnly: true,
      }),
      /subnet lan-v4: the address 10\.10\.0\.7 of server:u9:0 has no holder \(an entry from before holders\) and its MAC 52:54:00:00:00:09 is not this port's fa:16:3e:00:00:01: .* Fix: give this server another uuid, or first destroy the server that uses this address/,
    );
    assert.deepEqual(fake.current(), before, "nothing written over the entry");
    // Its own MAC: taken over.
    assert.deepEqual(
      await allocateAddressOrigin(REF, "server:u8:0", {
        holder: B,
        mac: "fa:16:3e:00:00:08",
        adoptSameMacOnly: true,
      }),
      { ip: "10.10.0.8", origin: "adopted" },
    );
    assert.equal(fake.current().allocations["10.10.0.8"].holder, B);
    // Without the option (other resources): adopted as before.
    assert.deepEqual(
      await allocateAddressOrigin(REF, "server:u9:0", { holder: B, mac: "fa:16:3e:00:00:01" }),
      { ip: "10.10.0.7", origin: "adopted" },
    );
  } finally {
    fake.restore();
  }
});

test("the IPAM commit (under the DHCP host's lock, issue 13) runs with only base64, mv and mkdir besides bash: record 0600, hostsfile 0644, dnsmasq sent SIGHUP", async () => {
  const fs: typeof import("node:fs") = require("node:fs");
  const os: typeof import("node:os") = require("node:os");
  const path: typeof import("node:path") = require("node:path");
  const { spawn, spawnSync }: typeof import("node:child_process") = require("node:child_process");
  const { ipamCommitSteps, dhcpPaths, hostsFileText } =
    require("../../../provider") as typeof import("../../../provider");
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-ipam-commit-"));
  // A PATH of its own: the commands the commit may start. The upload it replaces (sha256sum,
  // cut, stat, mktemp, chmod, chown: about twelve processes per file) fails here.
  const bin = path.join(root, "bin");
  fs.mkdirSync(bin);
  for (const tool of ["base64", "mv", "mkdir", "rm"]) {
    const found = spawnSync("bash", ["-c", `command -v ${tool}`], { encoding: "utf8" }).stdout.trim();
    fs.symlinkSync(found, path.join(bin, tool));
  }
  const bash = spawnSync("bash", ["-c", "command -v bash"], { encoding: "utf8" }).stdout.trim();
  // A process named dnsmasq (/proc/<pid>/comm: the name it was started by): a link to sleep.
  fs.symlinkSync(
    spawnSync("bash", ["-c", "command -v sleep"], { encoding: "utf8" }).stdout.trim(),
    path.join(root, "dnsmasq"),
  );
  const dnsmasq = spawn(path.join(root, "dnsmasq"), ["30"], { stdio: "ignore" });
  try {
    const paths = dhcpPaths("lan", "lan-v4");
    const local = (p: string) => p.split("/var/lib/kvmlab").join(root);
    fs.mkdirSync(path.dirname(local(paths.pidFile)), { recursive: true });
    fs.writeFileSync(local(paths.pidFile), `${dnsmasq.pid}\n`);
    const exited = new Promise<NodeJS.Signals | null>((r) => dnsmasq.on("exit", (_c, sig) => r(sig)));
    const rec = record({ "10.10.0.5": { owner: "server:u:0", mac: "52:54:00:00:00:05", holder: "h" } });
    for (const s of ipamCommitSteps(rec, paths, "lan")) {
      const r = spawnSync(bash, ["--noprofile", "--norc", "-c", `umask 000; ${local(s.script)}`], {
        encoding: "utf8",
        env: { PATH: bin },
      });
      assert.equal(r.status, 0, `${s.label}: ${r.stderr}`);
    }
    const recFile = path.join(root, "records", "ipam", `${NAME}.json`);
    assert.deepEqual(JSON.parse(fs.readFileSync(recFile, "utf8")), { ...rec, network: "lan" });
    assert.equal(fs.statSync(recFile).mode & 0o777, 0o600, "the record is root's alone");
    assert.equal(fs.readFileSync(local(paths.hostsFile), "utf8"), hostsFileText(rec));
    assert.equal(fs.statSync(local(paths.hostsFile)).mode & 0o777, 0o644, "dnsmasq reads the hostsfile");
    assert.deepEqual(
      fs.readdirSync(path.dirname(recFile)).filter((f) => f.includes("kvmlab-tmp")),
      [],
      "no temporary file left",
    );
    assert.equal(await exited, "SIGHUP", "dnsmasq (the pid file's process) got SIGHUP");
  } finally {
    dnsmasq.kill();
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("another run commits between an IPAM turn's reading and its commit (no lock held across them, issue 13): the guard refuses, the turn reads again, and no address is handed out twice", async () => {
  const theirs = record({
    "10.10.0.2": { owner: "server:x:0", mac: "52:54:00:00:00:aa", holder: "lab/b/Server/x" },
  });
  const fake = subnetHost(record({}), { afterRead: (n, set) => (n === 1 ? set(theirs) : undefined) });
  try {
    const ip = await allocateAddress(REF, "server:u1:0", {
      mac: "52:54:00:00:00:01",
      holder: "lab/a/Server/s1",
    });
    assert.equal(ip, "10.10.0.3", "the other run's address is not handed out again");
    assert.equal(count(fake, /^read record ipam\//), 2, "read again after the refusal");
    assert.equal(count(fake, /^write record ipam\//), 1, "written once, over the other run's record");
    assert.deepEqual(Object.keys(fake.current().allocations).sort(), ["10.10.0.2", "10.10.0.3"]);
    assert.equal(fake.current().allocations["10.10.0.2"].owner, "server:x:0", "theirs is kept");
  } finally {
    fake.restore();
  }
});

test("an IPAM record that changes between reading and commit on every unlocked reading (releases by another stack's destroy, review 9a R1): the turn, refused once, reads, plans and commits under the lock and allocates; no give-up", async () => {
  let n = 0;
  // A release on every reading without the lock: the entry of the reading before is gone.
  const fake = subnetHost(
    record({ "10.10.0.2": { owner: "server:x0:0", mac: "", holder: "lab/b/Server/x" } }),
    {
      afterRead: (_reads, set, locked) => {
        if (locked) return;
        n += 1;
        set(record({ [`10.10.0.${2 + n}`]: { owner: `server:x${n}:0`, mac: "", holder: "lab/b/Server/x" } }));
      },
    },
  );
  try {
    const ip = await allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" });
    assert.equal(
      ip,
      "10.10.0.2",
      "planned on the locked reading (10.10.0.3 is taken there, 10.10.0.2 released)",
    );
    assert.deepEqual(turnSteps(fake), [
      ...GUARDED_TURN,
      "host lock released",
      // The locked turn: read, plan and commit in one hold of the lock, no guard.
      "host lock taken",
      `read record ipam/${NAME}`,
      "read dhcp leases",
      `write record ipam/${NAME}`,
      "host lock released",
    ]);
    assert.deepEqual(
      Object.fromEntries(Object.entries(fake.current().allocations).map(([ip, a]) => [ip, a.owner])),
      { "10.10.0.2": "server:u1:0", "10.10.0.3": "server:x1:0" },
      "the other writer's entry is kept, no address twice",
    );
  } finally {
    fake.restore();
  }
});

test("an IPAM commit failing at another step than the guard (a write, the lock's take) is not retried: the allocations are refused with that error", async () => {
  const fake = subnetHost(record({}), { failWrite: true });
  try {
    await assert.rejects(
      allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" }),
      /write record ipam\/[0-9a-f]+.*No space left/s,
    );
    assert.equal(count(fake, /^read record ipam\//), 1, "not read again");
    assert.equal(
      count(fake, /^host lock taken/),
      1,
      "no locked turn after a failure that is not the guard's",
    );
  } finally {
    fake.restore();
  }
});

test("the IPAM guard on the real record format (review 9a R5): the record the real commit writes (2-space JSON and a newline), read back through the session's framing, passes the guard; one byte changed, a newline dropped or added, or another commit: refused with exit 38", () => {
  const fs: typeof import("node:fs") = require("node:fs");
  const os: typeof import("node:os") = require("node:os");
  const path: typeof import("node:path") = require("node:path");
  const { spawnSync }: typeof import("node:child_process") = require("node:child_process");
  const { ipamCommitSteps, dhcpPaths, ipamUnchangedStep, IPAM_CHANGED_EXIT } =
    require("../../../provider/ipam") as typeof import("../../../provider/ipam");
  const { frameBatch, createFrameParser, readRecordStep } =
    require("../../../provider/host") as typeof import("../../../provider/host");
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-ipam-format-"));
  const local = (p: string) => p.split("/var/lib/kvmlab").join(root);
  /** Runs steps in one bash as the session's shell does (framed), parsed by the session's parser. */
  const run = (steps: Step[]): StepResult[] => {
    const marker = "KVLtest";
    const steps2 = steps.map((s) => ({ ...s, script: local(s.script) }));
    const r = spawnSync("bash", ["--noprofile", "--norc", "-s"], {
      input: frameBatch(marker, 0, steps2, false),
      encoding: "utf8",
    });
    const parser = createFrameParser(marker, 0);
    parser.push("stdout", r.stdout);
    parser.push("stderr", r.stderr);
    return parser.take().map((t) => t.result);
  };
  try {
    const paths = dhcpPaths("lan", "lan-v4");
    const rec = record({ "10.10.0.5": { owner: "server:u:0", mac: "52:54:00:00:00:05", holder: "h" } });
    assert.ok(
      run(ipamCommitSteps(rec, paths, "lan")).every((r) => r.code === 0),
      "the real commit",
    );
    const [read] = run([readRecordStep("ipam", NAME)]);
    assert.equal(read.code, 0);
    assert.ok(read.stdout.endsWith("}\n"), "the record as read ends with its newline");
    assert.equal(read.stdout, fs.readFileSync(path.join(root, "records", "ipam", `${NAME}.json`), "utf8"));
    const guard = (expected: string) => run([ipamUnchangedStep("lan", "lan-v4", expected)])[0];
    assert.equal(guard(read.stdout).code, 0, "unchanged: passes");
    assert.equal(
      guard(read.stdout.replace("10.10.0.5", "10.10.0.6")).code,
      IPAM_CHANGED_EXIT,
      "a byte changed",
    );
    assert.equal(guard(read.stdout.slice(0, -1)).code, IPAM_CHANGED_EXIT, "its newline dropped");
    assert.equal(guard(`${read.stdout}\n`).code, IPAM_CHANGED_EXIT, "a newline added");
    // Another writer's commit (a release) after the reading: refused.
    assert.ok(run(ipamCommitSteps(record({}), paths, "lan")).every((r) => r.code === 0));
    const refused = guard(read.stdout);
    assert.equal(refused.code, IPAM_CHANGED_EXIT);
    assert.match(
      refused.stderr,
      /changed since it was read \(another writer, another kvmlab run or this one/,
    );
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("a remote step's failure carries its index in the caller's batch, label and exit status (RemoteStepError); the message users read is unchanged", () => {
  const { remoteStepError, failedStep, isRemoteStepError } =
    require("../../../provider/host/session") as typeof import("../../../provider/host/session");
  const e = remoteStepError(
    hv1,
    { label: "check x", script: "" },
    { code: 36, stdout: "", stderr: "a\nwhy\n" },
    2,
  );
  assert.ok(e instanceof Error && isRemoteStepError(e));
  assert.equal(
    Object.getPrototypeOf(e),
    Error.prototype,
    "a plain Error (provider code is serialized by value)",
  );
  assert.deepEqual(
    { host: e.host, label: e.label, exitStatus: e.exitStatus, stepIndex: e.stepIndex },
    { host: "hv1", label: "check x", exitStatus: 36, stepIndex: 2 },
  );
  assert.equal(
    e.message,
    `host hv1 (${hv1.user}@${hv1.address}:${hv1.port}): step "check x" failed with exit status 36:\na\nwhy`,
  );
  assert.deepEqual(failedStep(e), { index: 2, exitStatus: 36 });
  assert.deepEqual(
    failedStep(new Error('step "check x" failed with exit status 36')),
    { index: -1, exitStatus: null },
    "text is never parsed",
  );
  const skipped = remoteStepError(hv1, { script: "" }, { code: null, stdout: "", stderr: "" });
  assert.equal(
    skipped.message,
    `host hv1 (${hv1.user}@${hv1.address}:${hv1.port}): step "remote command" was skipped`,
  );
  assert.equal(skipped.stepIndex, -1);
});

test("dnsmasq's reload (review 9a R6): a pid file naming another process (a stale pid, reused) sends it no SIGHUP; the commit still succeeds", async () => {
  const fs: typeof import("node:fs") = require("node:fs");
  const os: typeof import("node:os") = require("node:os");
  const path: typeof import("node:path") = require("node:path");
  const { spawn, spawnSync }: typeof import("node:child_process") = require("node:child_process");
  const { ipamCommitSteps, dhcpPaths } = require("../../../provider") as typeof import("../../../provider");
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-ipam-hup-"));
  const other = spawn("sleep", ["30"], { stdio: "ignore" });
  try {
    const paths = dhcpPaths("lan", "lan-v4");
    const local = (p: string) => p.split("/var/lib/kvmlab").join(root);
    fs.mkdirSync(path.dirname(local(paths.pidFile)), { recursive: true });
    fs.writeFileSync(local(paths.pidFile), `${other.pid}\n`);
    let signal: NodeJS.Signals | null = null;
    other.on("exit", (_c, sig) => (signal = sig));
    const reload = ipamCommitSteps(record({}), paths, "lan").find((s) =>
      /^reload dhcp hosts/.test(s.label ?? ""),
    );
    assert.ok(reload);
    const r = spawnSync("bash", ["--noprofile", "--norc", "-c", local(reload.script)], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(signal, null, "the process that is not dnsmasq got no signal");
    assert.equal(other.exitCode, null, "and still runs");
  } finally {
    other.kill();
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("allocations asked for while a turn reads the record join that turn (session 10): one reading, one commit, no address twice", async () => {
  const joined: Promise<string>[] = [];
  const fake = subnetHost(record({}), {
    afterRead: (n) => {
      // Two creates arrive during the first (unlocked) reading.
      if (n === 1)
        for (const i of [2, 3])
          joined.push(allocateAddress(REF, `server:u${i}:0`, { holder: `lab/a/Server/s${i}` }));
    },
  });
  try {
    const first = await allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" });
    assert.deepEqual([first, ...(await Promise.all(joined))], ["10.10.0.2", "10.10.0.3", "10.10.0.4"]);
    assert.equal(count(fake, /^read record ipam\//), 1, "one reading: the late ones joined it");
    assert.equal(count(fake, /^write record ipam\//), 1, "one commit for all three");
    assert.deepEqual(
      Object.fromEntries(Object.entries(fake.current().allocations).map(([ip, a]) => [ip, a.owner])),
      { "10.10.0.2": "server:u1:0", "10.10.0.3": "server:u2:0", "10.10.0.4": "server:u3:0" },
    );
  } finally {
    fake.restore();
  }
});

test("an IPAM commit that fails after the record's write (the hostsfile, review 9a R8): every allocation of the turn is refused and the record gets back exactly what it held; another writer's entry and an entry already held stay", async () => {
  const start = record({
    "10.10.0.2": { owner: "server:u1:0", mac: "", holder: "lab/a/Server/s1" },
    "10.10.0.3": { owner: "server:u2:0", mac: "", holder: "lab/a/Server/s2" },
  });
  const failHosts = { times: 1 };
  const fake = subnetHost(start, { failHosts });
  try {
    const results = await Promise.allSettled([
      // Already this holder's: kept, not released by the undo.
      allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" }),
      // New: taken out again.
      allocateAddress(REF, "server:u5:0", { holder: "lab/a/Server/s5" }),
      // A move to a fixed address: the old address comes back, the new one goes.
      allocateAddress(REF, "server:u2:0", { fixedIp: "10.10.0.9", holder: "lab/a/Server/s2" }),
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      ["rejected", "rejected", "rejected"],
    );
    assert.match(String((results[1] as PromiseRejectedResult).reason), /Read-only file system/);
    assert.deepEqual(fake.current().allocations, start.allocations, "the record holds what it held");
    assert.equal(count(fake, /^write record ipam\//), 2, "the commit, then the undo");
    assert.equal(count(fake, /^host lock taken/), 2, "the undo under the lock");
  } finally {
    fake.restore();
  }
});

test("undoTurn (review 9a R8): takes out only what the turn wrote and the record still shows; an address another writer changed since is left as it is", () => {
  const { undoTurn } = require("../../../provider/ipam") as typeof import("../../../provider/ipam");
  const a = (owner: string) => ({ owner, mac: "", holder: "h" });
  const base = record({ "10.10.0.2": a("old"), "10.10.0.4": a("mover") });
  const next = record({
    "10.10.0.2": a("old"),
    "10.10.0.3": a("new"),
    "10.10.0.9": a("mover"),
    "10.10.0.5": a("new2"),
  });
  // Since the commit: another writer released 10.10.0.5 and gave it to someone else, and allocated 10.10.0.6.
  const current = record({ ...next.allocations, "10.10.0.5": a("theirs"), "10.10.0.6": a("other") });
  assert.deepEqual(undoTurn(current, base, next).allocations, {
    "10.10.0.2": a("old"),
    "10.10.0.4": a("mover"),
    "10.10.0.5": a("theirs"),
    "10.10.0.6": a("other"),
  });
  // The commit never reached the record: nothing to take out.
  assert.deepEqual(undoTurn(base, base, next), base);
});

test("an IPAM commit whose undo fails too (review 9a R8): the allocations are refused with both errors, saying the entries may stay", async () => {
  const failHosts = { times: 2 };
  const fake = subnetHost(record({}), { failHosts });
  try {
    await assert.rejects(
      allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" }),
      /Read-only file system.*taking this turn's entries out of the IPAM record of subnet lan-v4 again failed too .*Read-only file system.*removed by hand/s,
    );
  } finally {
    fake.restore();
  }
});

test("allocations asked for while the DHCP host's lock is busy in this process (a placement claim batch, session 10) join the turn waiting for it: one commit after the lock is free", async () => {
  const { hostPool } =
    require("../../../provider/host/session") as typeof import("../../../provider/host/session");
  const id = `${hv1.address}:${hv1.port}`;
  let free: () => void = () => undefined;
  // The claim batch holding the host's in-process lock.
  const held = new Promise<void>((r) => (free = r));
  hostPool().locks.set(id, held);
  const fake = subnetHost(record({}));
  try {
    const first = allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" });
    // The turn has read the record and waits for the lock; two more arrive meanwhile.
    for (let i = 0; i < 1000 && count(fake, /^read dhcp leases/) === 0; i++)
      await new Promise((r) => setImmediate(r));
    assert.equal(count(fake, /^read dhcp leases/), 1, "the turn read the record");
    await new Promise((r) => setTimeout(r, 20));
    const later = [2, 3].map((i) => allocateAddress(REF, `server:u${i}:0`, { holder: `lab/a/Server/s${i}` }));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(count(fake, /^write record ipam\//), 0, "no commit while the lock is held");
    free();
    hostPool().locks.delete(id);
    assert.deepEqual(await Promise.all([first, ...later]), ["10.10.0.2", "10.10.0.3", "10.10.0.4"]);
    assert.equal(count(fake, /^read record ipam\//), 1, "one reading");
    assert.equal(count(fake, /^write record ipam\//), 1, "one commit: the later ones joined");
  } finally {
    free();
    hostPool().locks.delete(id);
    fake.restore();
  }
});

/** Server b's entry (10.10.0.2) and a router's gateway (10.10.0.9): the record a stale reading shows. */
const B_MAC = "fa:16:3e:00:00:0b";
const withB = record({
  "10.10.0.2": { owner: "server:b:0", mac: B_MAC, holder: "lab/a/Server/b" },
  "10.10.0.9": { owner: "router-gw:r1", mac: "", holder: "lab/a/Router/r1" },
});
const withoutB = record({ "10.10.0.9": withB.allocations["10.10.0.9"]! });

test("an allocation that joins a turn with nothing to write (review 10a, finding 1) is confirmed under the lock: planned on a reading from before a release it followed, it is replanned locked, written, and no address goes out twice", async () => {
  let b: Promise<{ ip: string; origin: string }> | undefined;
  const fake = subnetHost(withB, {
    afterRead: (n, set) => {
      if (n !== 1) return;
      // Right after the turn's unlocked reading: b's delete releases its entry, then b's
      // replacement create (same uuid and MAC, deleteBeforeReplace) asks and joins the turn.
      set(withoutB);
      b = allocateAddressOrigin(REF, "server:b:0", {
        mac: B_MAC,
        holder: "lab/a/Server/b",
        adopt: false,
        adoptSameMacOnly: true,
      });
    },
  });
  try {
    // A router update re-allocating its gateway: nothing to write.
    const router = await allocateAddress(REF, "router-gw:r1", {
      fixedIp: "10.10.0.9",
      holder: "lab/a/Router/r1",
    });
    assert.equal(router, "10.10.0.9");
    assert.ok(b, "b asked during the reading");
    assert.deepEqual(
      await b,
      { ip: "10.10.0.2", origin: "made" },
      "replanned on the locked reading and written",
    );
    assert.equal(
      count(fake, /^check that the IPAM record/),
      1,
      "the guard ran although the first plan wrote nothing",
    );
    assert.equal(
      fake.current().allocations["10.10.0.2"]?.owner,
      "server:b:0",
      "b's address is in the record",
    );
    assert.equal(
      await allocateAddress(REF, "server:c:0", { mac: "fa:16:3e:00:00:0c", holder: "lab/a/Server/c" }),
      "10.10.0.3",
      "the next create does not get b's address",
    );
  } finally {
    fake.restore();
  }
});

test('a joined allocation refused on a stale reading ("already allocated" for an address released before it asked, review 10a) is replanned under the lock and gets the address', async () => {
  let c: Promise<string> | undefined;
  const fake = subnetHost(withB, {
    afterRead: (n, set) => {
      if (n !== 1) return;
      set(withoutB);
      c = allocateAddress(REF, "server:c:0", { fixedIp: "10.10.0.2", holder: "lab/a/Server/c" });
    },
  });
  try {
    assert.equal(
      await allocateAddress(REF, "router-gw:r1", { fixedIp: "10.10.0.9", holder: "lab/a/Router/r1" }),
      "10.10.0.9",
    );
    assert.ok(c);
    assert.equal(await c, "10.10.0.2");
    assert.equal(fake.current().allocations["10.10.0.2"]?.owner, "server:c:0");
  } finally {
    fake.restore();
  }
});

test("a turn with nothing to write and nobody joined (review 10a, finding 3) answers from its unlocked reading at once: it neither takes nor waits for the DHCP host's lock", async () => {
  const { hostPool } =
    require("../../../provider/host/session") as typeof import("../../../provider/host/session");
  const id = `${hv1.address}:${hv1.port}`;
  let free: () => void = () => undefined;
  // A long holder of the host's in-process lock (a migration's prepare on the DHCP host).
  hostPool().locks.set(id, new Promise<void>((r) => (free = r)));
  const fake = subnetHost(withB);
  let timer: NodeJS.Timeout | undefined;
  try {
    const answer = await Promise.race([
      allocateAddress(REF, "router-gw:r1", { fixedIp: "10.10.0.9", holder: "lab/a/Router/r1" }),
      new Promise<string>((r) => (timer = setTimeout(() => r("still waiting after 2 s"), 2000))),
    ]);
    assert.equal(answer, "10.10.0.9");
    assert.equal(count(fake, /^host lock taken/), 0, "no lock");
    assert.equal(count(fake, /^read record ipam\//), 1, "one reading");
  } finally {
    clearTimeout(timer);
    free();
    hostPool().locks.delete(id);
    fake.restore();
  }
});

test("the locked turn's commit failing at a step after the record's write (review 9a R8) is undone, in the same hold of the lock (review 10a, finding 2): the other writer's entry stays, this turn's goes, and no other writer can come between", async () => {
  const theirs = record({
    "10.10.0.2": { owner: "server:x:0", mac: "", holder: "lab/b/Server/x" },
  });
  const failHosts = { times: 0 };
  const fake = subnetHost(record({}), {
    afterRead: (n, set, locked) => {
      if (n === 1) set(theirs);
      if (n === 2 && locked) failHosts.times = 1;
    },
    failHosts,
  });
  try {
    await assert.rejects(
      allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" }),
      /Read-only file system/,
    );
    assert.equal(count(fake, /^write record ipam\//), 2, "the locked commit, then the undo");
    assert.deepEqual(
      fake.current().allocations,
      theirs.allocations,
      "the other run's entry, without this turn's",
    );
    // The guard's hold, then one hold for the locked turn's commit and its undo.
    assert.equal(count(fake, /^host lock taken/), 2, "no second hold for the undo");
    const steps = turnSteps(fake);
    const locked = steps.lastIndexOf("host lock taken");
    assert.deepEqual(
      steps.slice(locked).filter((l) => /^(write record|host lock|read record)/.test(l)),
      [
        "host lock taken",
        `read record ipam/${NAME}`,
        `write record ipam/${NAME}`,
        `read record ipam/${NAME}`,
        `write record ipam/${NAME}`,
        "host lock released",
      ],
      "commit, then the undo's reading and write, in one hold",
    );
  } finally {
    fake.restore();
  }
});

/**
 * A placement claim batch on the DHCP host that takes riders: the real runLocked's work
 * (lockedBatch over the fake, see ipamLockedFake.ts) with `riders`, started by `start()` while the
 * IPAM turn reads the record. With `pauseAfterRead` the turn goes on only after the batch waits
 * for its ticket. `claim` is the batch's own outcome (placement's).
 */
function claimBatch(label = "claim server s1"): { claim: () => Promise<string[]>; start: () => void } {
  let claim: Promise<string[]> | undefined;
  return {
    start: () => {
      const session = require("../../../provider/host/session") as {
        runLocked: (h: HostConnection, steps: readonly Step[], o: { riders?: boolean }) => Promise<string[]>;
      };
      claim = session.runLocked(hv1, [{ label, script: "true" }], { riders: true });
      claim.catch(() => undefined);
    },
    claim: () => {
      assert.ok(claim, "the claim batch was started");
      return claim;
    },
  };
}

/** The commit's labels (guard, record, hostsfile, reload), as turnSteps leaves them. */
const COMMIT = ["check that the IPAM record of subnet lan-v4 is as read", `write record ipam/${NAME}`];

test("an IPAM turn whose DHCP host has a placement claim batch waiting (session 11) carries its guard and commit in that batch, after the claim's steps, in its one lock hold: one commit", async () => {
  const batch = claimBatch();
  const fake = subnetHost(record({}), { pauseAfterRead: true, afterRead: (n) => n === 1 && batch.start() });
  try {
    const waits = hostPoolStats().riderWaits;
    const ip = await allocateAddress(REF, "server:u1:0", {
      mac: "52:54:00:00:00:01",
      holder: "lab/a/Server/s1",
    });
    assert.equal(ip, "10.10.0.2");
    assert.deepEqual(await batch.claim(), [""], "the claim's own stdouts");
    assert.deepEqual(
      labels(fake),
      [
        `read record ipam/${NAME}`,
        "read dhcp leases",
        "host lock taken",
        "claim server s1",
        ...COMMIT,
        "upload /var/lib/kvmlab/dhcp/lan/lan-v4/hosts",
        "reload dhcp hosts of subnet lan-v4",
        "host lock released",
      ],
      "the guard and the commit ran in the claim batch's hold; the turn took no lock of its own",
    );
    assert.equal(hostPoolStats().riderWaits, waits + 1, "the claim batch waited for the turn's ticket");
    assert.equal(fake.current().allocations["10.10.0.2"]?.owner, "server:u1:0");
  } finally {
    fake.restore();
  }
});

test("an IPAM turn carried in a claim batch whose guard refuses (another writer since its reading) runs the locked turn; a claim batch whose own step fails leaves it skipped, to take the lock itself; no address twice", async () => {
  // Refused: another run allocated 10.10.0.2 between the reading and the carried commit.
  const batch = claimBatch();
  const fake = subnetHost(record({}), {
    pauseAfterRead: true,
    afterRead: (n, set) => {
      if (n !== 1) return;
      batch.start();
      set(record({ "10.10.0.2": { owner: "server:other:0", mac: "", holder: "lab/other/Server/x" } }));
    },
  });
  try {
    const ip = await allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" });
    assert.equal(ip, "10.10.0.3", "not the address the other run took");
    assert.deepEqual(await batch.claim(), [""], "the guard's refusal is the rider's, not the claim's");
    assert.deepEqual(
      turnSteps(fake).slice(0, 7),
      [
        `read record ipam/${NAME}`,
        "read dhcp leases",
        "host lock taken",
        "claim server s1",
        COMMIT[0],
        "host lock released",
        "host lock taken",
      ],
      "refused in the claim batch (nothing written), then the locked turn",
    );
    assert.deepEqual(Object.keys(fake.current().allocations).sort(), ["10.10.0.2", "10.10.0.3"]);
  } finally {
    fake.restore();
  }
  // Skipped: the claim's own step failed first, nothing of the commit ran; the turn commits
  // under its own lock, as before session 11, and the claim gets its own failure.
  const failing = claimBatch();
  const fake2 = subnetHost(record({}), {
    pauseAfterRead: true,
    failLabel: /^claim server s1$/,
    afterRead: (n) => n === 1 && failing.start(),
  });
  try {
    assert.equal(await allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" }), "10.10.0.2");
    await assert.rejects(failing.claim(), (err: Error & { stepIndex?: number; exitStatus?: number }) => {
      assert.equal(err.stepIndex, 0);
      assert.equal(err.exitStatus, 1);
      return true;
    });
    assert.deepEqual(turnSteps(fake2), [
      `read record ipam/${NAME}`,
      "read dhcp leases",
      "host lock taken",
      "claim server s1",
      "host lock released",
      "host lock taken",
      ...COMMIT,
      "host lock released",
    ]);
  } finally {
    fake2.restore();
  }
});

test("review 11a S3(a): a claim batch lost between the carried commit's record write and its hostsfile: the claim (all its steps reported) succeeds, the allocation is refused with its own error and the record is undone under a lock of its own", async () => {
  const batch = claimBatch();
  const fake = subnetHost(record({}), {
    pauseAfterRead: true,
    afterRead: (n) => n === 1 && batch.start(),
    locked: { loseAt: (label) => /^upload .*\/hosts$/.test(label) },
  });
  try {
    await assert.rejects(
      allocateAddress(REF, "server:u1:0", { mac: "52:54:00:00:00:01", holder: "lab/a/Server/s1" }),
      (err: Error) => {
        assert.match(
          err.message,
          /^the IPAM commit of subnet lan-v4, carried in a placement claim batch on host hv1, was lost with that batch \(it may have run in part\): host hv1: SSH connection lost/,
        );
        return true;
      },
    );
    // Review 11a S1: a rider never changes the claim's outcome.
    assert.deepEqual(await batch.claim(), [""], "the claim's steps all reported: it stands");
    // The undo: one hold of its own after the lost batch, the record read and written back.
    const l = labels(fake);
    const lost = l.indexOf(`write record ipam/${NAME}`);
    assert.ok(lost > l.indexOf("claim server s1"), "the commit's record write ran in the claim batch");
    assert.deepEqual(
      l.slice(lost + 1).filter((x) => !/^reload/.test(x)),
      [
        "host lock taken",
        `read record ipam/${NAME}`,
        `write record ipam/${NAME}`,
        "upload /var/lib/kvmlab/dhcp/lan/lan-v4/hosts",
        "host lock released",
      ],
      "undone under a lock of its own (the lost batch's shell held the claim's)",
    );
    assert.deepEqual(fake.current().allocations, {}, "the record is back as it was");
  } finally {
    fake.restore();
  }
});

test("review 11a S3(c): a turn whose reading ends while another batch holds the DHCP host's process lock withdraws its ticket before it waits: a riders batch queued behind does not wait for it, and the turn commits under its own lock", async () => {
  const session = require("../../../provider/host/session") as {
    runLocked: (h: HostConnection, steps: readonly Step[], o?: { riders?: boolean }) => Promise<string[]>;
  };
  let open: () => void = () => undefined;
  const gate = new Promise<void>((r) => (open = r));
  const batch = claimBatch();
  const fake = subnetHost(record({}), {
    locked: { before: async (l) => void (l.includes("quota check") && (await gate)) },
    afterRead: (n) => {
      if (n !== 1) return;
      // The claim batch queues behind the held one; the gate opens once the turn, its reading
      // done (all of its microtasks run first), waits for the host's in-process lock.
      batch.start();
      setImmediate(open);
    },
  });
  const before = hostPoolStats();
  try {
    // Another operation's locked batch (not a claim: it takes no riders) holds the process lock.
    const held = session.runLocked(hv1, [{ label: "quota check", script: "true" }]);
    const ip = await allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" });
    assert.equal(ip, "10.10.0.2");
    await held;
    assert.deepEqual(await batch.claim(), [""]);
    const after = hostPoolStats();
    // Before the fix (the ticket left open while the turn waited): the claim batch waited
    // RIDER_WAIT_MS for a turn that waited for it, then went on without it.
    assert.equal(after.riderWaits - before.riderWaits, 0, "the claim batch waited for no ticket");
    assert.equal(after.riderWaitsTimedOut - before.riderWaitsTimedOut, 0);
    assert.deepEqual(turnSteps(fake), [
      `read record ipam/${NAME}`,
      "read dhcp leases",
      "host lock taken",
      "quota check",
      "host lock released",
      "host lock taken",
      "claim server s1",
      "host lock released",
      "host lock taken",
      ...COMMIT,
      "host lock released",
    ]);
  } finally {
    fake.restore();
  }
});

test("review 11a N5: a turn with nothing to write whose joined allocation's guard-only commit rode in a lost claim batch confirms it under a lock of its own instead of failing with the batch's error", async () => {
  // Both already hold their addresses (mine: nothing to write); u2 asks while u1's turn reads
  // and joins it, so the turn's commit is the guard alone.
  const both = record({
    "10.10.0.2": { owner: "server:u1:0", mac: "", holder: "lab/a/Server/s1" },
    "10.10.0.3": { owner: "server:u2:0", mac: "", holder: "lab/a/Server/s2" },
  });
  const batch = claimBatch();
  let joined: Promise<string> | undefined;
  let lost = false;
  const fake = subnetHost(both, {
    pauseAfterRead: true,
    afterRead: (n) => {
      if (n !== 1) return;
      batch.start();
      joined = allocateAddress(REF, "server:u2:0", { holder: "lab/a/Server/s2" });
    },
    // The claim batch is lost when it reaches the carried guard (once).
    locked: { loseAt: (label) => !lost && /^check that the IPAM record/.test(label) && (lost = true) },
  });
  try {
    assert.equal(await allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" }), "10.10.0.2");
    assert.equal(await joined, "10.10.0.3");
    assert.ok(lost, "the claim batch was lost at the carried guard");
    assert.deepEqual(await batch.claim(), [""], "the claim's steps all reported: it stands");
    assert.deepEqual(turnSteps(fake), [
      `read record ipam/${NAME}`,
      "read dhcp leases",
      "host lock taken",
      "claim server s1",
      "host lock taken",
      COMMIT[0],
      "host lock released",
    ]);
    assert.deepEqual(fake.current(), both, "nothing written");
  } finally {
    fake.restore();
  }
});

test("review 11a S2: a claim batch lost before its own steps all reported fails the claim and the carried commit with two errors: the IPAM undo's failure note goes on the commit's, never on the claim's", async () => {
  const batch = claimBatch();
  const fake = subnetHost(record({}), {
    pauseAfterRead: true,
    afterRead: (n) => n === 1 && batch.start(),
    // Lost at the claim's own step (nothing of the commit ran, but neither side can know); the
    // undo's record write then fails too.
    locked: { loseAt: (label) => label === "claim server s1" },
    failWrite: true,
  });
  try {
    const allocation = await allocateAddress(REF, "server:u1:0", { holder: "lab/a/Server/s1" }).catch(
      (e: Error) => e,
    );
    // Read after the IPAM side finished with it (its undo's note came last).
    const claimError = await batch.claim().then(
      () => undefined,
      (e: Error) => e,
    );
    assert.ok(claimError instanceof Error && allocation instanceof Error);
    assert.notEqual(allocation, claimError, "two error objects");
    assert.equal(
      claimError.message,
      "host hv1: SSH connection lost (closed)",
      "the claim's error as it was lost",
    );
    assert.match(allocation.message, /^the IPAM commit of subnet lan-v4, carried in a placement claim batch/);
    assert.match(
      allocation.message,
      /taking this turn's entries out of the IPAM record of subnet lan-v4 again failed too/,
    );
    assert.equal((allocation as Error & { cause?: unknown }).cause, claimError, "the loss as its cause");
  } finally {
    fake.restore();
  }
});
