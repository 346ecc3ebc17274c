/**
 * The placement guard (issue 13): placement holds no cross-process lock; each host's claim batch
 * begins with recordsUnchangedStep, which refuses (exit 36) when the host has a server record
 * line the placement turn did not read. These tests RUN the host's scripts with bash over sample
 * record folders: the stats step's lines (the same awk program as the guard's) go through
 * parseHostLoad and serverCapacityText into the guard's script, so the two sides are checked
 * to agree, and to disagree on every change that counts (an added record, another RAM/vCPU).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import {
  parseHostLoad,
  PLACEMENT,
  serverCapacityText,
  withPlaced,
  type ServerCapacity,
} from "../../../provider/server";
import {
  claimRecordStep,
  RECORDS_CHANGED_EXIT,
  recordsUnchangedStep,
  resizeFitsStep,
  RESIZE_REFUSED_EXIT,
  serverRecord,
  statsStep,
} from "../../../provider/server/steps";
import { checkServerInputs, ownerOf } from "../../../provider";
import { diskServerRaw, testHost } from "./fixtures";
import type { ServerInputs } from "../../../provider/server";

function bash(root: string, script: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync("bash", ["--noprofile", "--norc", "-c", script.split("/var/lib/kvmlab").join(root)], {
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A server record as kvmlab writes it (writeRecordStep: JSON.stringify(…, null, 2) + "\n"). */
function record(name: string, uuid: string, ramMiB: number, vcpus: number, ips: string[] = []): string {
  const value = {
    name,
    uuid,
    flavor: "m1.tiny",
    vcpus,
    ramMiB,
    image: "cirros",
    ports: ips.map((ip) => ({ ip, mac: "52:54:00:00:00:01" })),
    owner: `lab/a/Server/${name}`,
    project: "",
  };
  return `${JSON.stringify(value, null, 2)}\n`;
}

const U1 = "11111111-1111-5111-8111-111111111111";
const U2 = "22222222-2222-5222-8222-222222222222";
const U3 = "33333333-3333-5333-8333-333333333333";
const MINE = "99999999-9999-5999-8999-999999999999";

function withRecords(fn: (root: string, put: (name: string, text: string) => void) => void): void {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-guard-"));
  const dir = path.join(root, "records", "server");
  fs.mkdirSync(dir, { recursive: true });
  try {
    fn(root, (name, text) => fs.writeFileSync(path.join(dir, `${name}.json`), text));
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

/** What the placement turn reads: the real stats step over the folder, parsed. */
function reading(root: string): ServerCapacity[] {
  const r = bash(root, statsStep().script);
  assert.equal(r.code, 0, r.stderr);
  return parseHostLoad("hv1", r.stdout).capacity ?? [];
}

function guard(root: string, expected: string, skip: string[] = []) {
  return bash(root, recordsUnchangedStep(expected, skip).script);
}

/**
 * Runs resizeFitsStep for host hv1 with bash over the sample tree `root` (its records, and
 * `root/meminfo` for /proc/meminfo), with `bin` (a fake nproc) first on PATH.
 */
function runResizeFits(
  root: string,
  bin: string,
  i: { uuid: string; serverName: string; flavor: { name: string; ramMiB: number; vcpus: number } },
) {
  const script = resizeFitsStep(i as never, "hv1", PLACEMENT)
    .script.split("/var/lib/kvmlab")
    .join(root)
    .split("/proc/meminfo")
    .join(path.join(root, "meminfo"));
  return spawnSync("bash", ["--noprofile", "--norc", "-c", script], {
    encoding: "utf8",
    env: { PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}` },
  });
}

test("serverCapacityText: one sorted line per record, the skipped UUIDs left out; withPlaced adds its line", () => {
  const recs: ServerCapacity[] = [
    { uuid: U2, ramMiB: "256", vcpus: "2" },
    { uuid: U1, ramMiB: "128", vcpus: "1" },
    { uuid: "-", ramMiB: "-", vcpus: "-" },
  ];
  assert.equal(serverCapacityText(recs), `- - -\n${U1} 128 1\n${U2} 256 2`);
  assert.equal(serverCapacityText(recs, [U1]), `- - -\n${U2} 256 2`);
  assert.equal(serverCapacityText([]), "");
  const load = parseHostLoad("hv1", "memtotal=1\nmemavailable=1\ncpus=1\n");
  const placed = withPlaced(load, { uuid: U3, flavor: { ramMiB: 64, vcpus: 1 } });
  assert.equal(serverCapacityText(placed.capacity ?? []), `${U3} 64 1`);
});

test("the guard passes when nothing changed (no records, kvmlab's records, and odd files the same on both sides)", () => {
  withRecords((root, put) => {
    assert.equal(guard(root, serverCapacityText(reading(root))).code, 0, "no record at all");
    put("web1", record("web1", U1, 128, 1));
    put("web2", record("web2", U2, 256, 2, ["10.0.0.7"]));
    // Files kvmlab did not write read the same on both sides: not valid JSON, one-line JSON, empty.
    put("broken", '{\n  "uuid": "' + U3 + '",\n  "ramMiB": 64,\n');
    put("oneline", `{"uuid":"${U3}","ramMiB":64,"vcpus":1}\n`);
    put("empty", "");
    const expected = serverCapacityText(reading(root));
    assert.equal(expected, `- - -\n${U1} 128 1\n${U2} 256 2\n${U3} 64 -`);
    const r = guard(root, expected);
    assert.equal(r.code, 0, r.stderr);
  });
});

test("odd files in the records folder read the same in the stats step and the guard: the host stays placeable", () => {
  withRecords((root, put) => {
    put("web1", record("web1", U1, 128, 1));
    // Review 8, P3: once TypeScript and awk disagreed on these, and the guard refused every time.
    put("cr", "\r\n");
    put("ff", "\f\v\n");
    put("nbsp", "\u00a0\n");
    put("marker", `--record--\n--capacity--\n${record("m", U2, 256, 2)}`);
    fs.mkdirSync(path.join(root, "records", "server", "x.json"));
    const r0 = bash(root, statsStep().script);
    assert.equal(r0.code, 0, r0.stderr);
    const load = parseHostLoad("hv1", r0.stdout);
    assert.equal(load.allocatedRamMiB, 384, "kvmlab's records counted, the odd files count 0");
    assert.deepEqual([...load.serverUuids].sort(), [U1, U2]);
    const expected = serverCapacityText(load.capacity ?? []);
    for (let k = 0; k < 3; k++) {
      const r = guard(root, expected);
      assert.equal(r.code, 0, `unchanged host, the guard passes: ${r.stderr}`);
    }
    // And a real change still refuses.
    put("theirs", record("theirs", U3, 64, 1));
    assert.equal(guard(root, expected).code, RECORDS_CHANGED_EXIT);
  });
});

test("an awk failure in the guard is its own error (exit 1), not the refusal's 36", () => {
  withRecords((root, put) => {
    put("web1", record("web1", U1, 128, 1));
    const bin = path.join(root, "bin");
    fs.mkdirSync(bin);
    fs.writeFileSync(path.join(bin, "awk"), "#!/bin/sh\necho 'awk: read error' >&2\nexit 2\n", {
      mode: 0o755,
    });
    const script = recordsUnchangedStep("", []).script.split("/var/lib/kvmlab").join(root);
    const r = spawnSync("bash", ["--noprofile", "--norc", "-c", script], {
      encoding: "utf8",
      env: { PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}` },
    });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /placement guard: reading the server records \(awk\) failed/);
    assert.doesNotMatch(r.stderr, /changed since placement read them/);
  });
});

test("the guard refuses (exit 36) when another run added a server record since the reading", () => {
  withRecords((root, put) => {
    put("web1", record("web1", U1, 128, 1));
    const expected = serverCapacityText(reading(root));
    put("theirs", record("theirs", U2, 128, 1));
    const r = guard(root, expected);
    assert.equal(r.code, RECORDS_CHANGED_EXIT);
    assert.match(r.stderr, /the server records on this host changed since placement read them/);
  });
});

test("the guard refuses when a record's RAM or vCPUs changed; a record only removed passes (a destroy meanwhile)", () => {
  withRecords((root, put) => {
    put("web1", record("web1", U1, 128, 1));
    put("web2", record("web2", U2, 128, 1));
    const expected = serverCapacityText(reading(root));
    put("web2", record("web2", U2, 512, 1));
    assert.equal(guard(root, expected).code, RECORDS_CHANGED_EXIT, "RAM");
    assert.match(guard(root, expected).stderr, new RegExp(`meanwhile: ${U2} 512 1\\)`), "names the new line");
    put("web2", record("web2", U2, 128, 4));
    assert.equal(guard(root, expected).code, RECORDS_CHANGED_EXIT, "vCPUs");
    put("web2", record("web2", U2, 128, 1));
    assert.equal(guard(root, expected).code, 0, "back as read");
    fs.rmSync(path.join(root, "records", "server", "web2.json"));
    const r = guard(root, expected);
    assert.equal(r.code, 0, `removed (a destroy meanwhile): ${r.stderr}`);
    // Removed and another added: the added one refuses.
    put("theirs", record("theirs", U3, 128, 1));
    assert.equal(guard(root, expected).code, RECORDS_CHANGED_EXIT, "removed and added");
    // Every record removed (nothing on the host now): passes.
    fs.rmSync(path.join(root, "records", "server"), { recursive: true });
    assert.equal(guard(root, expected).code, 0, "all removed");
  });
});

test("the guard with nothing read: any record on the host refuses; a second record of the same line counts (multiset)", () => {
  withRecords((root, put) => {
    const expected = serverCapacityText(reading(root));
    assert.equal(expected, "");
    assert.equal(guard(root, expected).code, 0, "still nothing");
    put("theirs", record("theirs", U1, 128, 1));
    assert.equal(guard(root, expected).code, RECORDS_CHANGED_EXIT, "added to an empty host");
    const one = serverCapacityText(reading(root));
    assert.equal(guard(root, one).code, 0);
    // Two files with the same counted line (hand-copied): the second is new.
    put("copy", record("copy", U1, 128, 1));
    assert.equal(guard(root, one).code, RECORDS_CHANGED_EXIT, "a duplicate line is counted");
  });
});

test("the guard passes when a record was rewritten with its addresses only (the define batch)", () => {
  withRecords((root, put) => {
    put("web1", record("web1", U1, 128, 1));
    const expected = serverCapacityText(reading(root));
    put("web1", record("web1", U1, 128, 1, ["10.0.0.5", "10.0.1.5"]));
    const r = guard(root, expected);
    assert.equal(r.code, 0, r.stderr);
  });
});

test("the guard skips the UUIDs the turn claims on the host: a create run again, or its own record written meanwhile", () => {
  withRecords((root, put) => {
    put("web1", record("web1", U1, 128, 1));
    // A create run again: its record is on the host when read, and on the host when checked.
    put("mine", record("mine", MINE, 256, 2));
    const expected = serverCapacityText(reading(root), [MINE]);
    assert.equal(expected, `${U1} 128 1`);
    assert.equal(guard(root, expected, [MINE]).code, 0);
    // Not read, written since (a request of the same turn claimed before it in the fallback).
    fs.rmSync(path.join(root, "records", "server", "mine.json"));
    const before = serverCapacityText(reading(root), [MINE]);
    put("mine", record("mine", MINE, 256, 2));
    assert.equal(guard(root, before, [MINE]).code, 0);
    // Without the skip the same record counts as a change.
    assert.equal(guard(root, before, []).code, RECORDS_CHANGED_EXIT);
  });
});

test("the claim's record write (claimRecordStep): kvmlab's record text, mode 0600, read by the stats step and the guard alike", () => {
  withRecords((root) => {
    const { inputs, failures } = checkServerInputs({
      ...diskServerRaw(testHost("hv1", 1), { stack: "a", serverName: "web1" }),
      owner: ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" }),
    });
    assert.deepEqual(failures, []);
    const i = inputs as unknown as ServerInputs;
    fs.rmSync(path.join(root, "records"), { recursive: true });
    const before = serverCapacityText(reading(root));
    const w = bash(root, claimRecordStep(i).script);
    assert.equal(w.code, 0, w.stderr);
    const file = path.join(root, "records", "server", "web1.json");
    assert.equal(fs.readFileSync(file, "utf8"), `${JSON.stringify(serverRecord(i, []), null, 2)}\n`);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(fs.readdirSync(path.dirname(file)), ["web1.json"], "no temporary file left");
    assert.equal(serverCapacityText(reading(root)), `${i.uuid} ${i.flavor.ramMiB} ${i.flavor.vcpus}`);
    // Written since the reading: a change to another turn, none to the turn claiming it.
    assert.equal(guard(root, before).code, RECORDS_CHANGED_EXIT);
    assert.equal(guard(root, before, [i.uuid]).code, 0);
  });
});

test("resize fit check (resizeFitsStep): the new flavor against the host beside the other records, refused naming flavor, the free capacity and the fix", () => {
  withRecords((root, put) => {
    // A host of 2048 MiB and 1 CPU: 1536 MiB and 4 vCPUs for servers.
    const bin = path.join(root, "bin");
    fs.mkdirSync(bin);
    fs.writeFileSync(path.join(bin, "nproc"), "#!/bin/sh\necho 1\n", { mode: 0o755 });
    fs.writeFileSync(
      path.join(root, "meminfo"),
      "MemTotal:        2097152 kB\nMemFree: 1 kB\nMemAvailable: 2097152 kB\n",
    );
    const run = (i: { uuid: string; flavor: { name: string; ramMiB: number; vcpus: number } }) =>
      runResizeFits(root, bin, { ...i, serverName: "web1" });
    put("web1", record("web1", U1, 512, 1)); // its own record: left out
    put("web2", record("web2", U2, 1024, 2));
    // 1536 - 1024 = 512 MiB and 4 - 2 = 2 vCPUs free for web1.
    assert.equal(run({ uuid: U1, flavor: { name: "m1.small", ramMiB: 512, vcpus: 2 } }).status, 0);
    const ram = run({ uuid: U1, flavor: { name: "m1.large", ramMiB: 1024, vcpus: 2 } });
    assert.equal(ram.status, RESIZE_REFUSED_EXIT);
    assert.match(
      ram.stderr,
      /^flavor: m1\.large \(2 vCPU, 1024 MiB\) does not fit host hv1 beside its other servers: 512 MiB RAM and 2 vCPUs free for server web1; pick a smaller flavor, free capacity on hv1, or move the server to another host first/,
    );
    assert.equal(
      run({ uuid: U1, flavor: { name: "m1.cpu", ramMiB: 256, vcpus: 3 } }).status,
      RESIZE_REFUSED_EXIT,
    );
    fs.rmSync(path.join(root, "records", "server", "web2.json"));
    assert.equal(
      run({ uuid: U1, flavor: { name: "m1.large", ramMiB: 1024, vcpus: 3 } }).status,
      0,
      "room once web2 is gone",
    );
  });
});

test('a record with "uuid": "" reads one way (review 8b, Q2): the stats step counts it as the guard does, the guard passes, the resize sum counts it', () => {
  withRecords((root, put) => {
    put("a", record("a", U1, 1024, 1));
    put("blank", record("blank", "", 2048, 2));
    put("c", record("c", U3, 512, 1));
    const r0 = bash(root, statsStep().script);
    assert.equal(r0.code, 0, r0.stderr);
    const load = parseHostLoad("hv1", r0.stdout);
    assert.equal(load.allocatedRamMiB, 1024 + 2048 + 512, "the blank-UUID record counts");
    assert.equal(load.allocatedVcpus, 4);
    assert.deepEqual([...load.serverUuids].sort(), [U1, U3], "no empty or '-' UUID listed");
    // The guard of a turn claiming MINE here, and of one claiming nothing: the same view.
    for (const skip of [[MINE], [], [MINE, ""], ["-"]]) {
      const expected = serverCapacityText(load.capacity ?? [], skip);
      for (let k = 0; k < 3; k++) {
        const r = guard(root, expected, skip);
        assert.equal(r.code, 0, `skip ${JSON.stringify(skip)}, attempt ${k + 1}: ${r.stderr}`);
      }
    }
    // The resize sum: 4096 MiB and 2 CPUs (3584 MiB, 8 vCPUs for servers); others = 2048 + 512.
    const bin = path.join(root, "bin");
    fs.mkdirSync(bin);
    fs.writeFileSync(path.join(bin, "nproc"), "#!/bin/sh\necho 2\n", { mode: 0o755 });
    fs.writeFileSync(path.join(root, "meminfo"), "MemTotal:        4194304 kB\nMemAvailable: 4194304 kB\n");
    const run = (ramMiB: number, vcpus: number) =>
      runResizeFits(root, bin, { uuid: U1, flavor: { name: "m1.x", ramMiB, vcpus }, serverName: "a" });
    const fits = run(3584 - 2560, 8 - 3);
    assert.equal(fits.status, 0, fits.stderr);
    const over = run(3584 - 2560 + 1, 1);
    assert.equal(over.status, RESIZE_REFUSED_EXIT, "the blank-UUID record's 2048 MiB count");
    assert.match(over.stderr, / 1024 MiB RAM and 5 vCPUs free /);
  });
});

test("under the host lock, few processes (issue 13): a name's claim starts only chmod, ln and rm, and the host lock's take only chmod and flock, once their folders exist", () => {
  const { claimStep, takeLockStep } = require("../../../provider") as typeof import("../../../provider");
  const { serverOwned } = require("../../../provider/server") as typeof import("../../../provider/server");
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-procs-"));
  const which = (tool: string) =>
    spawnSync("bash", ["-c", `command -v ${tool}`], { encoding: "utf8" }).stdout.trim();
  const bash = which("bash");
  try {
    // A PATH with only those commands: a step that starts another one fails here.
    const bin = path.join(root, "bin");
    fs.mkdirSync(bin);
    for (const tool of ["chmod", "ln", "rm", "flock"]) fs.symlinkSync(which(tool), path.join(bin, tool));
    const state = path.join(root, "state");
    fs.mkdirSync(path.join(state, "owners", "server"), { recursive: true });
    const run = (script: string) =>
      spawnSync(bash, ["--noprofile", "--norc", "-c", script.split("/var/lib/kvmlab").join(state)], {
        encoding: "utf8",
        env: { PATH: bin },
      });
    const owner = "lab/a/Server/web1";
    const claim = run(claimStep(serverOwned("web1"), owner).script);
    assert.equal(claim.status, 0, claim.stderr);
    assert.equal(claim.stdout, "claimed\n");
    const marker = path.join(state, "owners", "server", "web1.owner");
    assert.equal(fs.readFileSync(marker, "utf8"), `${owner}\n`);
    assert.equal(fs.statSync(marker).mode & 0o777, 0o600, "the marker is root's alone");
    assert.equal(fs.statSync(path.join(state, "owners")).mode & 0o777, 0o700, "the markers' root is 0700");
    assert.deepEqual(fs.readdirSync(path.dirname(marker)), ["web1.owner"], "no temporary file left");
    // Claimed again by the same owner: adopted; by another: refused, the marker unchanged.
    assert.equal(run(claimStep(serverOwned("web1"), owner).script).stdout, "adopted\n");
    const theirs = run(claimStep(serverOwned("web1"), "lab/b/Server/web1").script);
    assert.notEqual(theirs.status, 0);
    assert.equal(fs.readFileSync(marker, "utf8"), `${owner}\n`);
    // The lock file made by the first take (mode 0600), then taken with chmod and flock only.
    fs.writeFileSync(path.join(state, "lock"), "", { mode: 0o644 });
    const take = run(takeLockStep("lock", 1).script);
    assert.equal(take.status, 0, take.stderr);
    assert.equal(
      fs.statSync(path.join(state, "lock")).mode & 0o777,
      0o600,
      "a world-readable lock is made 0600",
    );
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
