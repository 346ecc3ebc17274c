/**
 * Placement (issue 13) holds no cross-process lock. A placement turn reads the hosts once and
 * places every create waiting for it, each counted before the next is chosen, each with its own
 * answer; the creates that arrive while a turn runs go into the next turn together. Each host's
 * claim batch begins with the placement guard, run here with bash over the fake host's record
 * folder: when another run's record appears between the reading and the claim, the turn reads
 * again and places again (bounded), so two runs never count the same free RAM.
 *
 * Beside placement, a create's address (the DHCP host's lock) is allocated; a failure of either
 * still cleans up both.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import {
  checkServerInputs,
  ipamRecordName,
  ownerOf,
  portOwner,
  serverProvider,
  type HostConnection,
  type IpamRecord,
  type Step,
  type StepResult,
} from "../../../provider";
import { PLACEMENT_ATTEMPTS, PLACEMENT_BACKOFF_MS, type ServerInputs } from "../../../provider/server";
import { diskServerRaw, serverRaw, testHost } from "./fixtures";
import { fakeHost, serverOutputsOn } from "./fakeHost";
import { lockedOverFake } from "./ipamLockedFake";

const hv1 = testHost("hv1", 1);
const provider = serverProvider as unknown as Required<typeof serverProvider>;

function server(serverName: string): ServerInputs {
  const { inputs, failures } = checkServerInputs({
    ...diskServerRaw(hv1, { stack: "a", serverName }),
    powerState: "external",
    owner: ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: serverName }),
  });
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

/** The placement guard's step label (recordsUnchangedStep). */
const GUARD = "check that the server records on this host are as placement read them";

/**
 * A fake host whose server records are files in a temporary folder: the claim's record writes
 * land there, the stats step lists them, and the placement guard runs with bash over them.
 * `memKiB` is the host's memory (512 MiB of it reserved by placement); `availableKiB` its
 * MemAvailable (default: all of it).
 */
function recordsHost(memKiB: number | ((host: string) => number), runAlso?: RegExp, availableKiB?: number) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-place-"));
  // hv1's folder is `root`; any other host's is its own folder under it.
  const rootOf = (host: string) => (host === "hv1" ? root : path.join(root, "hosts", host));
  const dirOf = (host: string) => path.join(rootOf(host), "records", "server");
  const dir = dirOf("hv1");
  fs.mkdirSync(dir, { recursive: true });
  const guards: number[] = [];
  const fake = fakeHost((label, script, host): string | StepResult => {
    const hostRoot = rootOf(host);
    fs.mkdirSync(dirOf(host), { recursive: true });
    if (/^read host capacity/.test(label)) {
      // The real stats step over the folder, with this host's memory and CPUs.
      const r = spawnSync(
        "bash",
        ["--noprofile", "--norc", "-c", script.split("/var/lib/kvmlab").join(hostRoot)],
        { encoding: "utf8", env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } },
      );
      assert.equal(r.status, 0, r.stderr);
      const mem = typeof memKiB === "number" ? memKiB : memKiB(host);
      return r.stdout
        .replace(/^memtotal=.*$/m, `memtotal=${mem}`)
        .replace(/^memavailable=.*$/m, `memavailable=${availableKiB ?? mem}`)
        .replace(/^cpus=.*$/m, "cpus=2");
    }
    // The claim's record write (claimRecordStep) and the guard run with bash over the folder; the
    // define batch's rewrite (an upload with chown) is answered without running.
    if (
      (/^write record server\//.test(label) && !script.includes("base64 -d")) ||
      label === GUARD ||
      runAlso?.test(label)
    ) {
      const r = spawnSync(
        "bash",
        ["--noprofile", "--norc", "-c", script.split("/var/lib/kvmlab").join(hostRoot)],
        {
          encoding: "utf8",
          env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
        },
      );
      if (label === GUARD) guards.push(r.status ?? -1);
      return { code: r.status, stdout: r.stdout, stderr: r.stderr };
    }
    if (/^read domain /.test(label)) return "defined=yes\nstate=shut off\ntype=qemu\n";
    return "";
  });
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  return {
    ...fake,
    root,
    guards,
    /** Another run's server record (pretty JSON, as kvmlab writes it). */
    rootOf,
    theirs(name: string, uuid: string, ramMiB: number, host = "hv1") {
      const rec = {
        name,
        uuid,
        flavor: "m1.tiny",
        vcpus: 1,
        ramMiB,
        image: "cirros",
        ports: [],
        owner: "x",
        project: "",
      };
      fs.mkdirSync(dirOf(host), { recursive: true });
      fs.writeFileSync(path.join(dirOf(host), `${name}.json`), `${JSON.stringify(rec, null, 2)}\n`);
    },
    /** Another run's record removed (its destroy). */
    remove(name: string) {
      fs.rmSync(path.join(dir, `${name}.json`));
    },
    /** Runs `hook(n)` after the n-th reading of the hosts returned (1-based). */
    afterRead(hook: (n: number) => void | Promise<void>) {
      const inner = session.runChecked as (h: unknown, steps: { label?: string }[]) => Promise<string[]>;
      let n = 0;
      session.runChecked = async (h: unknown, steps: { label?: string }[]) => {
        const out = await inner(h, steps);
        if (/^read host capacity/.test(steps[0]?.label ?? "")) await hook(++n);
        return out;
      };
    },
    restore() {
      fake.restore();
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

const reads = (labels: string[]) => labels.filter((l) => /^read host capacity/.test(l)).length;

/** Starts web1, holds its turn at `hold` until web2 and web3 have arrived, then lets it go on. */
async function threeCreates(hold: (hook: () => Promise<void>) => void) {
  let open: () => void = () => undefined;
  const gate = new Promise<void>((r) => (open = r));
  let held: () => void = () => undefined;
  const reached = new Promise<void>((r) => (held = r));
  let once = false;
  hold(async () => {
    if (once) return;
    once = true;
    held();
    await gate;
  });
  const first = provider.create(server("web1"));
  await reached;
  const later = [provider.create(server("web2")), provider.create(server("web3"))];
  await new Promise((r) => setTimeout(r, 50));
  open();
  return Promise.allSettled([first, ...later]);
}

function assertTwoOfThree(fake: { log: { label: string }[] }, results: PromiseSettledResult<unknown>[]) {
  const labels = fake.log.map((l) => l.label);
  assert.ok(!labels.some((l) => / lock taken$/.test(l)), `no placement lock: ${labels.join(" | ")}`);
  // Room for two: the third is refused, which only happens when each placed server is counted
  // before the next is chosen.
  assert.deepEqual(
    results.map((r) => r.status),
    ["fulfilled", "fulfilled", "rejected"],
  );
  assert.match(
    String((results[2] as PromiseRejectedResult).reason),
    /placement of server web3: .*hv1: 0 MiB RAM free, needs 128/,
  );
  for (const n of ["web1", "web2"])
    assert.ok(
      labels.some((l) => l === `write record server/${n}`),
      `${n}'s placement record is written`,
    );
  assert.ok(
    !labels.some((l) => /web3/.test(l) && /^(write record|claim )/.test(l)),
    "nothing of web3 is claimed",
  );
}

test("creates that arrive while a placement turn reads the hosts join that turn: one reading, each counted before the next", async () => {
  const fake = recordsHost(786432); // 768 MiB - 512 reserved: room for two 128 MiB servers
  try {
    const results = await threeCreates((hook) => fake.afterRead(async (n) => (n === 1 ? hook() : undefined)));
    assertTwoOfThree(fake, results);
    assert.equal(reads(fake.log.map((l) => l.label)), 1, "the hosts are read once, for all three");
    assert.deepEqual(fake.guards, [0], "one claim batch on hv1, guarded, passed");
  } finally {
    fake.restore();
  }
});

test("creates that arrive while a placement turn claims go into the next turn together: one more reading for both", async () => {
  const fake = recordsHost(786432);
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  try {
    const results = await threeCreates((hook) => {
      const inner = session.runLocked as (h: unknown, steps: { label?: string }[]) => Promise<string[]>;
      session.runLocked = async (h: unknown, steps: { label?: string }[]) => {
        if (steps[0]?.label === GUARD) await hook();
        return inner(h, steps);
      };
    });
    assertTwoOfThree(fake, results);
    assert.equal(reads(fake.log.map((l) => l.label)), 2, "web2 and web3 share the second turn's reading");
    assert.deepEqual(fake.guards, [0, 0], "each turn's claim batch was guarded, and passed");
  } finally {
    fake.restore();
  }
});

test("another run's server placed between the reading and the claim: the guard refuses, the turn reads again and counts it (no over-commit)", async () => {
  // Room for one 128 MiB server (640 - 512 reserved).
  const fake = recordsHost(655360);
  fake.afterRead((n) => {
    if (n === 1) fake.theirs("theirs", "22222222-2222-5222-8222-222222222222", 128);
  });
  try {
    await assert.rejects(
      provider.create(server("web1")),
      /placement of server web1: no host fits .*hv1: 0 MiB RAM free, needs 128/,
    );
    const labels = fake.log.map((l) => l.label);
    assert.equal(reads(labels), 2, `read again after the refusal: ${labels.join(" | ")}`);
    assert.deepEqual(fake.guards, [36], "the first claim was refused by the guard");
    assert.ok(!labels.some((l) => /^(claim |write record server\/web1)/.test(l)), "web1 claimed nothing");
  } finally {
    fake.restore();
  }
});

test("placement knows the guard's refusal by the error's fields (step 0 of the batch, exit status 36), not by its text; another step's exit 36 is no refusal", async () => {
  const { remoteStepError } =
    require("../../../provider/host/session") as typeof import("../../../provider/host/session");
  // A remote step's failure with this message and these fields (what the runners throw).
  const stepError = (
    message: string,
    host: string,
    label: string,
    exitStatus: number | null,
    stepIndex: number,
  ) =>
    Object.assign(
      remoteStepError(
        { ...hv1, name: host },
        { label, script: "" },
        { code: exitStatus, stdout: "", stderr: "" },
        stepIndex,
      ),
      { message },
    );
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  // Room for one 128 MiB server (640 - 512 reserved).
  const fake = recordsHost(655360);
  const locked = session.runLocked as (h: HostConnection, steps: readonly Step[]) => Promise<string[]>;
  // The runner's errors with a message that names no step and no status: only the fields tell.
  session.runLocked = async (h: HostConnection, steps: readonly Step[]) => {
    try {
      return await locked(h, steps);
    } catch (err) {
      const e = err as import("../../../provider/host/session").RemoteStepError;
      throw stepError(`${h.name}: refused`, e.host, e.label, e.exitStatus, e.stepIndex);
    }
  };
  fake.afterRead((n) => {
    if (n === 1) fake.theirs("theirs", "22222222-2222-5222-8222-222222222222", 128);
  });
  try {
    await assert.rejects(provider.create(server("web1")), /placement of server web1: no host fits/);
    assert.equal(reads(fake.log.map((l) => l.label)), 2, "the guard's refusal made the turn read again");
    assert.deepEqual(fake.guards, [36]);
  } finally {
    fake.restore();
  }
  // A later step (the host check) failing with exit 36 is that step's failure: no reading again.
  const other = recordsHost(4194304);
  const inner = session.runLocked as (h: HostConnection, steps: readonly Step[]) => Promise<string[]>;
  session.runLocked = async (h: HostConnection, steps: readonly Step[]) => {
    const at = steps.findIndex((s) => /^check host for server/.test(s.label ?? ""));
    if (at > 0) throw stepError(`${h.name}: host check`, h.name, steps[at].label ?? "", 36, at);
    return inner(h, steps);
  };
  try {
    await assert.rejects(provider.create(server("web2")), /host check/);
    assert.equal(reads(other.log.map((l) => l.label)), 1, "read once");
  } finally {
    other.restore();
  }
});

/**
 * A create of server web1 run again with 256 MiB where its record (its first create) counts 128:
 * refused with `refusal`, nothing claimed; the same size then converges on its host as before.
 */
async function grownCreateRefused(fake: ReturnType<typeof recordsHost>, refusal: RegExp): Promise<void> {
  const i = server("web1");
  fake.theirs("web1", i.uuid, 128);
  try {
    const bigger = { ...i, flavor: { ...i.flavor, ramMiB: 256 } };
    await assert.rejects(provider.create(bigger), refusal);
    const labels = fake.log.map((l) => l.label);
    assert.ok(!labels.some((l) => /^(claim |write record server\/web1)/.test(l)), "nothing claimed");
    await provider.create(i);
    assert.ok(fake.log.some((l) => l.label === "write record server/web1"));
  } finally {
    fake.restore();
  }
}

test("a create run again with a bigger flavor (review 8b, P6) stays on its host only when the growth fits there; refused naming flavor, host and what is free, nothing claimed", async () => {
  // 640 MiB - 512 reserved: room for 128 MiB, which the server's own record (from its first create) takes.
  await grownCreateRefused(
    recordsHost(655360),
    /placement of server web1: flavor: m1\.\w+ \(1 vCPU, 256 MiB\) does not fit host hv1, where server web1 is recorded .*: 128 MiB RAM and \d+ vCPUs free for it; pick a smaller flavor/,
  );
});

test("a create run again with a bigger flavor that fits the host's allocation but not its memory available right now (review 9a R7): refused by placement's rule, nothing claimed", async () => {
  // 4 GiB, of which only 200 MiB available now: the allocation ratio has room for 256 MiB.
  await grownCreateRefused(
    recordsHost(4194304, undefined, 200 * 1024),
    /placement of server web1: flavor: m1\.\w+ \(1 vCPU, 256 MiB\) does not fit host hv1, where server web1 is recorded .*: only 200 MiB of memory available right now; pick a smaller flavor/,
  );
});

test("another run's server removed between the reading and the claim (a destroy meanwhile): the guard passes, one reading", async () => {
  const fake = recordsHost(4194304);
  fake.theirs("theirs", "22222222-2222-5222-8222-222222222222", 128);
  fake.afterRead(() => fake.remove("theirs"));
  try {
    await provider.create(server("web1"));
    assert.equal(reads(fake.log.map((l) => l.label)), 1, "no reading again");
    assert.deepEqual(fake.guards, [0], "the claim passed the guard");
  } finally {
    fake.restore();
  }
});

test("the claim batch scans for another user of the UUID once per create (claimableStep), and the UUID's claim, run with bash, writes its marker; another server's record with the UUID refuses before any marker", async () => {
  const claims = /^(check that server UUID .* can be claimed|claim server UUID |claim server web)/;
  const fake = recordsHost(4194304, claims);
  try {
    const i = server("web1");
    await provider.create(i);
    // The scan's text (otherUserOfUuidLines): the records grep for this UUID, in the claim batch
    // (the define batch's instance folder check has its own, outside the lock).
    const scans = fake.log.filter(
      (l) => claims.test(l.label) && l.script.includes(`"uuid": "${i.uuid}"`) && /grep -lF/.test(l.script),
    );
    assert.deepEqual(
      scans.map((l) => l.label),
      [`check that server UUID ${i.uuid} can be claimed for ${i.owner}`],
      "one scan, before any marker is written",
    );
    const marker = path.join(fake.root, "owners", "server-uuid", `${i.uuid}.owner`);
    assert.equal(fs.readFileSync(marker, "utf8"), `${i.owner}\n`, "the UUID's marker is this owner's");
    // Another server (another name) recorded with web2's UUID: refused at the scan, no marker.
    const j = { ...server("web2"), uuid: "33333333-3333-5333-8333-333333333333" };
    fake.theirs("other", j.uuid, 128);
    await assert.rejects(
      provider.create(j),
      /step "check that server UUID .* can be claimed .*" failed with exit status 73:\n.*already exists on this host with no kvmlab owner/,
    );
    assert.ok(!fs.existsSync(path.join(fake.root, "owners", "server", "web2.owner")), "no name marker");
    assert.ok(
      !fs.existsSync(path.join(fake.root, "owners", "server-uuid", `${j.uuid}.owner`)),
      "no UUID marker",
    );
  } finally {
    fake.restore();
  }
});

test("records that keep changing under the claim: the turn gives up after PLACEMENT_ATTEMPTS readings, naming the host and what to do", async () => {
  const fake = recordsHost(4194304);
  const readAt: number[] = [];
  fake.afterRead((n) => {
    readAt.push(Date.now());
    fake.theirs("theirs", "22222222-2222-5222-8222-222222222222", 100 + n);
  });
  try {
    await assert.rejects(
      provider.create(server("web1")),
      new RegExp(
        `placement of server web1: the server records on host hv1 changed between reading them and claiming, ${PLACEMENT_ATTEMPTS} times in a row \\(another kvmlab run`,
      ),
    );
    assert.equal(reads(fake.log.map((l) => l.label)), PLACEMENT_ATTEMPTS);
    assert.deepEqual(fake.guards, Array(PLACEMENT_ATTEMPTS).fill(36));
    // A jittered pause (PLACEMENT_BACKOFF_MS) before each reading again.
    for (let k = 1; k < readAt.length; k++)
      assert.ok(
        readAt[k] - readAt[k - 1] >= PLACEMENT_BACKOFF_MS.min - 5,
        `readings ${k} and ${k + 1}: ${readAt[k] - readAt[k - 1]} ms apart`,
      );
  } finally {
    fake.restore();
  }
});

/**
 * The claim batch is sent past the guard, its claim steps run, and then the shell is lost (a
 * timeout: no step's exit status). Review 8, P4: the create's cleanup runs on that host, after
 * checking that the name's marker is this owner's. The owner markers are real files (the claim,
 * the check and the guarded delete's owner steps run with bash over the fake host's folder).
 */
async function claimThenTimeout(markerOwner?: string) {
  const fake = recordsHost(
    4194304,
    /^(claim |check that server web1 was claimed|check the owner of |release the owner marker)/,
  );
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const inner = session.runLocked as (h: unknown, steps: { label?: string }[]) => Promise<string[]>;
  const i = server("web1");
  const marker = path.join(fake.root, "owners", "server", "web1.owner");
  if (markerOwner !== undefined) {
    fs.mkdirSync(path.dirname(marker), { recursive: true });
    fs.writeFileSync(marker, `${markerOwner}\n`);
  }
  session.runLocked = async (h: unknown, steps: { label?: string }[]) => {
    if (steps[0]?.label !== GUARD) return inner(h, steps);
    // The claim part runs (up to the record; a refusal stops it), then the channel times out.
    const upTo = steps.findIndex((s) => s.label === "write record server/web1");
    await inner(h, steps.slice(0, upTo + 1)).catch(() => undefined);
    throw new Error("host hv1: the remote command timed out after 120000 ms");
  };
  try {
    await assert.rejects(provider.create(i), /timed out after 120000 ms/);
    const left = fs.existsSync(marker) ? fs.readFileSync(marker, "utf8") : undefined;
    return { labels: fake.log.map((l) => l.label), marker: left };
  } finally {
    fake.restore();
  }
}

test("a claim batch lost after its claim steps ran (timeout): create's owner-guarded cleanup runs on that host", async () => {
  const { labels, marker } = await claimThenTimeout();
  const at = labels.indexOf("check that server web1 was claimed by this create");
  assert.ok(at >= 0, `the cleanup checks the name's marker first: ${labels.join(" | ")}`);
  assert.ok(
    labels.slice(at).includes("delete server web1"),
    "and then removes the server's claim and record",
  );
  assert.equal(marker, undefined, "the name's owner marker is released");
});

for (const failing of ["write record server/web1", "claim server UUID"]) {
  test(`a claim whose step "${failing}" fails with an I/O error after the name's marker was written (review 8b, Q7; the steps known by identity, review 9a R4): create's owner-guarded cleanup removes the markers`, async () => {
    const fake = recordsHost(
      4194304,
      /^(claim |check that server UUID|check that server web1 was claimed|check the owner of |release the owner marker)/,
    );
    const session = require("../../../provider/host/session") as Record<string, unknown>;
    const inner = session.runLocked as (h: unknown, steps: Step[]) => Promise<string[]>;
    // The record's write fails on the host (a full disk), after both claims wrote their markers.
    session.runLocked = async (h: unknown, steps: Step[]) =>
      inner(
        h,
        steps.map((s) =>
          (s.label ?? "").startsWith(failing) && !s.script.includes("base64 -d")
            ? { ...s, script: "echo 'No space left on device' >&2; exit 1" }
            : s,
        ),
      );
    const i = server("web1");
    try {
      await assert.rejects(
        provider.create(i),
        new RegExp(`${failing}[^"]*" failed with exit status 1:\nNo space left`),
      );
      const labels = fake.log.map((l) => l.label);
      const at = labels.indexOf("check that server web1 was claimed by this create");
      assert.ok(at >= 0, `the cleanup checks the name's marker first: ${labels.join(" | ")}`);
      assert.ok(labels.slice(at).includes("delete server web1"), "and then removes the server's claim");
      assert.ok(
        !fs.existsSync(path.join(fake.root, "owners", "server", "web1.owner")),
        "the name's marker is removed",
      );
      assert.ok(
        !fs.existsSync(path.join(fake.root, "owners", "server-uuid", `${i.uuid}.owner`)),
        "the UUID's marker is removed",
      );
    } finally {
      fake.restore();
    }
  });
}

test("a claim batch whose host lock could not be taken (flock's wait ran out: exit status, step -1, nothing ran; review 9a R3): the create fails with that error, no cleanup waits for the lock, nothing pinned", async () => {
  const fake = recordsHost(4194304, /^(claim |check that server UUID|check that server web1 was claimed)/);
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const inner = session.runLocked as (h: HostConnection, steps: Step[]) => Promise<string[]>;
  const { remoteStepError, takeLockStep } =
    require("../../../provider/host/session") as typeof import("../../../provider/host/session");
  let refusedTakes = 0;
  session.runLocked = async (h: HostConnection, steps: Step[]) => {
    if (steps[0]?.label !== GUARD) return inner(h, steps);
    refusedTakes += 1;
    throw remoteStepError(
      h,
      takeLockStep("take the host lock /var/lib/kvmlab/lock", 120),
      { code: 1, stdout: "", stderr: "" },
      -1,
    );
  };
  try {
    await assert.rejects(
      provider.create(server("web1")),
      /step "take the host lock \/var\/lib\/kvmlab\/lock" failed with exit status 1/,
    );
    const labels = fake.log.map((l) => l.label);
    assert.equal(refusedTakes, 1, "not retried");
    assert.ok(
      !labels.includes("check that server web1 was claimed by this create"),
      `no owner-guarded cleanup (it would wait for the same lock): ${labels.join(" | ")}`,
    );
    assert.ok(!labels.includes("delete server web1"), "nothing deleted");
  } finally {
    fake.restore();
  }
});

test("a claim batch lost where another owner holds the name: the cleanup touches nothing of theirs", async () => {
  const theirs = ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: "web1" });
  const { labels, marker } = await claimThenTimeout(theirs);
  assert.ok(labels.includes("check that server web1 was claimed by this create"), labels.join(" | "));
  assert.ok(!labels.includes("delete server web1"), `nothing deleted: ${labels.join(" | ")}`);
  assert.equal(marker, `${theirs}\n`, "their marker stays");
});

/**
 * Review 8b, Q3: two creates claimed on hv1 in one batch that is lost after web1's markers were
 * written (no record yet, so no reading lists web1 there); then another run's record makes the
 * guard refuse both, and hv1 is full while hv2 has room. Each is retried on hv1 only and fails
 * there with create's owner-guarded cleanup, which removes web1's markers; nothing goes to hv2.
 */
test("a create whose lost claim batch may have written its claim on a host is retried on that host only, and its failure cleans up there", async () => {
  let hv2MiB = 640; // at first hv2 has less room than hv1: both creates go to hv1
  const fake = recordsHost(
    (host) => (host === "hv1" ? 4194304 : hv2MiB * 1024),
    /^(claim |check that server web[12] (was claimed|can be claimed)|check the owner of |release the owner marker)/,
  );
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const inner = session.runLocked as (h: unknown, steps: { label?: string }[]) => Promise<string[]>;
  let lost = false;
  session.runLocked = async (h: unknown, steps: { label?: string }[]) => {
    const labels = steps.map((s) => s.label ?? "");
    if (lost || labels[0] !== GUARD || !labels.some((l) => /web2/.test(l))) return inner(h, steps);
    if (!labels.some((l) => /web1/.test(l))) return inner(h, steps);
    // The batch of both: web1's claim runs up to its UUID's marker, then the channel is lost.
    lost = true;
    const upTo = labels.indexOf("write record server/web1");
    await inner(h, steps.slice(0, upTo));
    fake.theirs("theirs", "22222222-2222-5222-8222-222222222222", 3500); // hv1 full, guard refuses
    hv2MiB = 4096; // and hv2 has room now
    throw new Error("host hv1: the remote command timed out after 120000 ms");
  };
  const hv2 = testHost("hv2", 2);
  const make = (serverName: string): ServerInputs => {
    const { inputs, failures } = checkServerInputs({
      ...diskServerRaw(hv1, { stack: "a", serverName }),
      hosts: [hv1, hv2],
      host: "", // not pinned: placement chooses between hv1 and hv2
      powerState: "external",
      owner: ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: serverName }),
    });
    assert.deepEqual(failures, []);
    return inputs as unknown as ServerInputs;
  };
  const marker = path.join(fake.root, "owners", "server", "web1.owner");
  try {
    const results = await Promise.allSettled([provider.create(make("web1")), provider.create(make("web2"))]);
    const labels = fake.log.map((l) => `${l.host}: ${l.label}`);
    assert.ok(lost, `the batch of both was sent: ${labels.join(" | ")}`);
    assert.ok(
      !labels.some((l) => /^hv2: .*web[12]/.test(l)),
      `nothing claimed on hv2: ${labels.join(" | ")}`,
    );
    for (const r of results) {
      assert.equal(r.status, "rejected");
      assert.match(
        String((r as PromiseRejectedResult).reason),
        /no host fits .*hv1: .* \(its claim on host hv1 may be partly written after a lost claim batch, so it was retried there only/,
      );
    }
    const at = labels.indexOf("hv1: check that server web1 was claimed by this create");
    assert.ok(at >= 0, `web1's cleanup runs on hv1: ${labels.join(" | ")}`);
    assert.ok(labels.slice(at).includes("hv1: delete server web1"), labels.join(" | "));
    assert.equal(fs.existsSync(marker), false, "web1's name marker on hv1 is released");
    assert.ok(!labels.includes("hv1: delete server web2"), "web2 claimed nothing: nothing of it deleted");
  } finally {
    fake.restore();
  }
});

/** A fake host with the subnet lan/lan-v4's IPAM record kept (read and written by the steps). */
function withIpam(start: IpamRecord, failHostCheck: boolean, refuseUuid = false) {
  let current = start;
  const name = ipamRecordName("lan", "lan-v4");
  const fake = fakeHost((label, script): string | StepResult => {
    if (/^read host capacity/.test(label)) return "memtotal=4194304\nmemavailable=4000000\ncpus=2\n";
    if (label === `read record ipam/${name}`) return JSON.stringify(current);
    if (label === `write record ipam/${name}`) {
      const b64 = /<<'(KVL_EOF_[0-9a-f]+)'\n([\s\S]*?)\1/.exec(script)![2];
      current = JSON.parse(Buffer.from(b64.replace(/\n/g, ""), "base64").toString("utf8")) as IpamRecord;
    }
    if (refuseUuid && /^check that server UUID .* can be claimed/.test(label))
      return { code: 73, stdout: "", stderr: "server UUID is lab/a/Server/web's (another stack)" };
    if (failHostCheck && /^check host for server /.test(label))
      return { code: 31, stdout: "", stderr: "image cirros: its kernel is not on this host" };
    if (/^read domain /.test(label)) return "defined=yes\nstate=shut off\ntype=qemu\n";
    return "";
  });
  return Object.assign(fake, { record: () => current });
}

const lanRecord = (allocations: IpamRecord["allocations"]): IpamRecord => ({
  subnet: "lan-v4",
  cidr: "10.10.0.0/24",
  gateway: "10.10.0.1",
  pool: { start: "10.10.0.2", end: "10.10.0.254" },
  allocations,
});

function lanServer(owner: string): ServerInputs {
  const { inputs, failures } = checkServerInputs({ ...serverRaw([hv1]), powerState: "external", owner });
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

test("the address and placement run side by side: a failed host check (before any claim) still releases the address allocated beside it", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const i = lanServer(me);
  const fake = withIpam(lanRecord({}), true);
  try {
    await assert.rejects(provider.create(i), /check host for server web1.*its kernel is not on this host/s);
    const labels = fake.log.map((l) => l.label);
    assert.ok(
      labels.includes(`write record ipam/${ipamRecordName("lan", "lan-v4")}`),
      "the address was allocated",
    );
    assert.deepEqual(fake.record().allocations, {}, `the address is released again: ${labels.join(" | ")}`);
    // The host check is the claim batch's first refusal: nothing was claimed on the host.
    assert.ok(
      !labels.some((l) => /^(claim |write record server\/)/.test(l)),
      "nothing is claimed on the host",
    );
    assert.ok(!labels.some((l) => /^define domain/.test(l)), "nothing is defined");
  } finally {
    fake.restore();
  }
});

test("review 11a S3(d): the address allocated beside placement on the placed host (its DHCP host) is committed inside the claim batch's lock hold: the IPAM guard and record write between the claim's take and release, no lock of its own", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const i = lanServer(me);
  const fake = withIpam(lanRecord({}), false);
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  // runLocked as the real one (lockedBatch, riders included) over the fake host.
  lockedOverFake(fake);
  const name = ipamRecordName("lan", "lan-v4");
  // As on a real host, where reading the hosts takes a round trip: placement's reading ends
  // after the IPAM turn announced its ticket and began its own reading, and that reading ends
  // after the claim batch began (so the batch waits for the turn's ticket; session 11's trace).
  let claimBegan: () => void = () => undefined;
  const began = new Promise<void>((r) => (claimBegan = r));
  let ipamReads: () => void = () => undefined;
  const reading = new Promise<void>((r) => (ipamReads = r));
  const locked = session.runLocked as (
    h: HostConnection,
    steps: readonly Step[],
    o?: object,
  ) => Promise<string[]>;
  session.runLocked = (h: HostConnection, steps: readonly Step[], o?: object) => {
    if (steps[0]?.label === GUARD) claimBegan();
    return locked(h, steps, o);
  };
  const checked = session.runChecked as (h: HostConnection, steps: readonly Step[]) => Promise<string[]>;
  session.runChecked = async (h: HostConnection, steps: readonly Step[]) => {
    if (steps[0]?.label === `read record ipam/${name}`) ipamReads();
    if (/^read host capacity/.test(steps[0]?.label ?? "")) await reading;
    const out = await checked(h, steps);
    if (steps[0]?.label === `read record ipam/${name}`) {
      await began;
      await new Promise((r) => setImmediate(r));
    }
    return out;
  };
  try {
    const out = await provider.create(i);
    assert.equal(out.outs?.host, "hv1");
    const labels = fake.log.map((l) => l.label);
    const all = labels.join(" | ");
    // The claim batch's hold: its take, the placement guard first, then the claim.
    const take = labels.findIndex((l, k) => l === "host lock taken" && labels[k + 1] === GUARD);
    const release = labels.indexOf("host lock released", take);
    assert.ok(take >= 0 && release > take, `the claim batch: ${all}`);
    const ipamGuard = "check that the IPAM record of subnet lan-v4 is as read";
    const claim = labels.indexOf("write record server/web1", take);
    const guardAt = labels.indexOf(ipamGuard);
    const writeAt = labels.indexOf(`write record ipam/${name}`);
    assert.ok(take < claim && claim < release, `the claim in that hold: ${all}`);
    assert.ok(
      claim < guardAt && guardAt < writeAt && writeAt < release,
      `the IPAM guard and commit after the claim, before the release: ${all}`,
    );
    assert.equal(labels.filter((l) => l === ipamGuard).length, 1, "one commit");
    assert.equal(fake.record().allocations["10.10.0.2"]?.owner, portOwner(i.uuid, 0));
  } finally {
    fake.restore();
  }
});

test("a refused address with the host check beside it: the server's claim on the host is removed, the other owner's address stays", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: "web1" });
  const theirs = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const i = lanServer(me);
  const start = lanRecord({ "10.10.0.2": { owner: portOwner(i.uuid, 0), mac: "", holder: theirs } });
  const fake = withIpam(start, false);
  try {
    await assert.rejects(provider.create(i), /belongs to lab\/a\/Server\/web1, not to lab\/b\/Server\/web1/);
    const labels = fake.log.map((l) => l.label);
    assert.deepEqual(fake.record(), start, "the other owner's address is kept, nothing written over it");
    assert.ok(
      labels.includes("delete server web1"),
      `the claim on the host is removed: ${labels.join(" | ")}`,
    );
    assert.ok(!labels.some((l) => /^define domain/.test(l)), "nothing is defined");
  } finally {
    fake.restore();
  }
});

test("placement refused and the address refused beside it: the user sees placement's error, and nothing is left", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: "web1" });
  const theirs = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const { inputs, failures } = checkServerInputs({
    ...serverRaw([hv1], { ramMiB: 65536 }),
    powerState: "external",
    owner: me,
  });
  assert.deepEqual(failures, []);
  const i = inputs as unknown as ServerInputs;
  const start = lanRecord({ "10.10.0.2": { owner: portOwner(i.uuid, 0), mac: "", holder: theirs } });
  const fake = withIpam(start, false);
  try {
    await assert.rejects(
      provider.create(i),
      /placement of server web1: no host fits the flavor \(1 vCPU, 65536 MiB\)/,
    );
    const labels = fake.log.map((l) => l.label);
    assert.ok(
      labels.some((l) => /^read record ipam\//.test(l)),
      `the address was tried beside placement: ${labels.join(" | ")}`,
    );
    assert.deepEqual(fake.record(), start, "the other owner's address is kept");
    assert.ok(
      !labels.some((l) => /^(claim |write record server\/)/.test(l)),
      "nothing is claimed on the host",
    );
  } finally {
    fake.restore();
  }
});

test("placement refused on a UUID another stack holds: its address entry from before holders is neither taken over nor released", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: "web1" });
  const i = lanServer(me);
  // Stack a's entry for this UUID, made before IPAM entries had holders.
  const start = lanRecord({ "10.10.0.2": { owner: portOwner(i.uuid, 0), mac: "52:54:00:aa:bb:cc" } });
  const fake = withIpam(start, false, true);
  try {
    await assert.rejects(provider.create(i), /another stack/);
    const labels = fake.log.map((l) => l.label);
    assert.ok(
      labels.some((l) => /^read record ipam\//.test(l)),
      `the address was tried beside placement: ${labels.join(" | ")}`,
    );
    assert.deepEqual(
      fake.record(),
      start,
      "their entry is kept as it was: no holder or MAC written, not released",
    );
    assert.ok(!labels.some((l) => /^write record ipam\//.test(l)), "the IPAM record was never written");
  } finally {
    fake.restore();
  }
});

test("a create over an address entry from before holders takes it over once placement claimed the UUID (one more IPAM turn)", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: "web1" });
  const i = lanServer(me);
  // Its own entry: the port's MAC (review 8b, Q4: the evidence that it is this server's).
  const start = lanRecord({ "10.10.0.2": { owner: portOwner(i.uuid, 0), mac: i.ports[0].mac } });
  const fake = withIpam(start, false);
  try {
    const r = await provider.create(i);
    assert.deepEqual(r.outs?.ips, ["10.10.0.2"]);
    assert.deepEqual(fake.record().allocations["10.10.0.2"], {
      owner: portOwner(i.uuid, 0),
      mac: i.ports[0].mac,
      holder: me,
    });
  } finally {
    fake.restore();
  }
});

test("a create over an address entry from before holders with another MAC (another stack's server of that UUID, on another host) is refused and leaves it as it was (review 8b, Q4)", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const i = lanServer(me);
  const start = lanRecord({ "10.10.0.2": { owner: portOwner(i.uuid, 0), mac: "fa:16:3e:0b:0b:0b" } });
  const fake = withIpam(start, false);
  try {
    await assert.rejects(
      provider.create(i),
      /subnet lan-v4: the address 10\.10\.0\.2 of .* has no holder .* its MAC fa:16:3e:0b:0b:0b is not this port's .* Fix: give this server another uuid, or first destroy the server that uses this address/,
    );
    assert.deepEqual(fake.record(), start, "their entry is neither taken over nor released");
    const labels = fake.log.map((l) => l.label);
    assert.ok(
      labels.includes("delete server web1"),
      `the claim on the host is removed: ${labels.join(" | ")}`,
    );
  } finally {
    fake.restore();
  }
});

test("a resize to a flavor that does not fit the host is refused before the guest is stopped; a smaller one is not checked", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const olds = serverOutputsOn(lanServer(me), hv1);
  const grown = (ramMiB: number) => {
    const { inputs, failures } = checkServerInputs(
      { ...serverRaw([hv1], { ramMiB }), powerState: "external", owner: me } as Record<string, unknown>,
      olds as unknown as Record<string, unknown>,
    );
    assert.deepEqual(failures, []);
    return inputs as unknown as ServerInputs;
  };
  const fake = fakeHost((label): string | StepResult => {
    if (/^check that flavor m1\.tiny fits host hv1 for server web1$/.test(label))
      return {
        code: 37,
        stdout: "",
        stderr: "flavor: m1.tiny (1 vCPU, 4096 MiB) does not fit host hv1 beside its other servers",
      };
    if (/^read domain /.test(label)) return "defined=yes\nstate=running\ntype=qemu\n";
    return "";
  });
  try {
    await assert.rejects(
      provider.update(olds.uuid, olds, grown(4096)),
      /flavor: m1\.tiny .*does not fit host hv1/,
    );
    const labels = fake.log.map((l) => l.label);
    assert.ok(
      labels.some((l) => /^check that flavor .* fits host hv1/.test(l)),
      labels.join(" | "),
    );
    assert.ok(
      !labels.some((l) => /^(shut down|destroy|define|write record server)/.test(l)),
      `guest untouched: ${labels.join(" | ")}`,
    );
    fake.log.length = 0;
    await provider
      .update(olds.uuid, { ...olds, flavor: { ...olds.flavor, ramMiB: 4096 } }, grown(128))
      .catch(() => undefined);
    assert.ok(!fake.log.some((l) => /^check that flavor/.test(l.label)), "a smaller flavor needs no check");
  } finally {
    fake.restore();
  }
});

/** The server records a fake host's log wrote (each write's JSON, decoded from its upload), in order. */
function recordsWritten(fake: { log: { label: string; script: string }[] }, name: string) {
  return fake.log
    .filter((l) => l.label === `write record server/${name}`)
    .map((l) => {
      const b64 = /<<'(KVL_EOF_[0-9a-f]+)'\n([\s\S]*?)\1/.exec(l.script)![2];
      return JSON.parse(Buffer.from(b64.replace(/\n/g, ""), "base64").toString("utf8")) as {
        ramMiB: number;
        owner: string;
      };
    });
}

test("a resize whose define fails rewrites the old record (review 8b, Q1): the host is not over-counted by the bigger flavor", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const olds = serverOutputsOn(lanServer(me), hv1);
  const { inputs, failures } = checkServerInputs(
    { ...serverRaw([hv1], { ramMiB: 1024 }), powerState: "external", owner: me } as Record<string, unknown>,
    olds as unknown as Record<string, unknown>,
  );
  assert.deepEqual(failures, []);
  const news = inputs as unknown as ServerInputs;
  let failAt: RegExp | undefined = /^define domain web1$/;
  const fake = fakeHost((label): string | StepResult => {
    if (failAt?.test(label)) return { code: 1, stdout: "", stderr: "error: failed to define domain" };
    if (/^read domain /.test(label)) return "defined=yes\nstate=shut off\ntype=qemu\n";
    return "";
  });
  try {
    await assert.rejects(provider.update(olds.uuid, olds, news), /failed to define domain/);
    const labels = fake.log.map((l) => l.label);
    assert.deepEqual(
      recordsWritten(fake, "web1").map((r) => r.ramMiB),
      [1024, 128],
      `the bigger record before the stop, the old one again after the failed define: ${labels.join(" | ")}`,
    );
    const restore = labels.lastIndexOf("write record server/web1");
    assert.match(
      labels[restore - 1],
      /^check the owner of server web1/,
      "owner-guarded, as the rest of update",
    );
    // A failure before the define batch (preflight) undoes the record too.
    fake.log.length = 0;
    failAt = /^check host for server web1$/;
    await assert.rejects(provider.update(olds.uuid, olds, news));
    assert.deepEqual(
      recordsWritten(fake, "web1").map((r) => r.ramMiB),
      [1024, 128],
    );
    // A define that succeeds keeps the new record.
    fake.log.length = 0;
    failAt = undefined;
    await provider.update(olds.uuid, olds, news);
    assert.deepEqual(
      recordsWritten(fake, "web1").map((r) => r.ramMiB),
      [1024, 1024],
    );
  } finally {
    fake.restore();
  }
});
