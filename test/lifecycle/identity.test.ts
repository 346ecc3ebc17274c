/**
 * test/fixtures/programs/identity through the engine harness (real cmd/run, real dynamic-provider
 * plugin) on a one-host sandbox ("lc-identity", or $KVMLAB_LC_IDENTITY_INSTANCE):
 *
 *   up                 every identity object is a record on the controller; a password given as
 *                      stack config secret appears in clear in no state file, no program or
 *                      provider log line, no file on the host, and no process's arguments on
 *                      this machine while the run lasts
 *   new password       the User is an update (not a replace); the record's hash verifies the new
 *                      password and not the old one; still nowhere in clear
 *   destroy            no identity record is left on the host
 *
 * The harness ports the Go engine's step rules; it is not the Pulumi engine
 * (docs/engine-harness.md).
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { verifyPassword } from "../../provider/identity/password";
import { runEngine, type RunResult } from "../harness/engine/engine";
import { sshCheck, startSandbox, stopSandbox, type SandboxStatus } from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_LC_IDENTITY_INSTANCE ?? "lc-identity";
const KEEP = process.env.KVMLAB_LC_KEEP === "1";
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "test", "fixtures", "programs", "identity");
const PW1 = `first-${process.pid}-Hq2Wk8Lp`;
const PW2 = `second-${process.pid}-Tz5Xc1Vb`;
let status: SandboxStatus;
let stateDir = "";
let destroyed = false;
const logLines: string[] = [];

before(async () => {
  status = await startSandbox(INSTANCE, 1);
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-identity-"));
});

after(async () => {
  if (!destroyed && stateDir) await run("destroy", PW2).catch(() => undefined);
  if (!KEEP) await stopSandbox(INSTANCE);
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

function run(operation: "up" | "destroy", password: string): Promise<RunResult> {
  return runEngine({
    operation,
    programDir: PROGRAM,
    stack: "lc",
    stateFile: path.join(stateDir, "state.json"),
    config: [
      { key: "identity:sandboxInstance", value: INSTANCE, secret: false },
      { key: "identity:alicePassword", value: password, secret: true },
    ],
    env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
    onLog: (line) => logLines.push(line),
  });
}

function ok(r: RunResult): RunResult {
  assert.ok(r.ok, `${r.operation} failed:\n${r.errors.join("\n")}`);
  return r;
}

/** Every argv on this machine, sampled every 5 ms while `fn` runs; true when one held `needle`. */
async function argsDuring<T>(needle: string, fn: () => Promise<T>): Promise<{ value: T; seen: boolean }> {
  let seen = false;
  let done = false;
  const loop = (async () => {
    while (!done) {
      for (const pid of fs.readdirSync("/proc")) {
        if (!/^\d+$/.test(pid)) continue;
        try {
          if (fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(needle)) seen = true;
        } catch {
          /* gone */
        }
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  try {
    return { value: await fn(), seen };
  } finally {
    done = true;
    await loop;
  }
}

function on(cmd: string): Promise<string> {
  return sshCheck(status, status.hosts[0].name, cmd, { timeoutMs: 60_000 });
}

/** Everything the password could have leaked into, as text. */
async function everywhere(): Promise<{ where: string; text: string }[]> {
  const files = fs
    .readdirSync(stateDir)
    .map((f) => ({ where: `state ${f}`, text: fs.readFileSync(path.join(stateDir, f), "latin1") }));
  const host = await on(
    "grep -rlF -D skip -e first- -e second- /var/lib/kvmlab /etc /tmp /run /var/log 2>/dev/null; true",
  );
  return [...files, { where: "logs", text: logLines.join("\n") }, { where: "host files", text: host }];
}

async function aliceHash(): Promise<string> {
  const out = await on("cat /var/lib/kvmlab/records/identity-user/*.json");
  const recs = out.split(/\n(?=\{)/).map((t) => JSON.parse(t) as { id: string; passwordHash: string });
  return recs.find((r) => r.id === "Default/alice")?.passwordHash ?? "";
}

test(
  "identity through the engine: up, new password (update), destroy; the password nowhere in clear",
  { timeout: 600_000 },
  async () => {
    const up = await argsDuring(PW1, () => run("up", PW1));
    ok(up.value);
    assert.equal(up.seen, false, "the password appeared in a process's arguments");
    assert.equal(up.value.outputs.demo, "Default/demo");
    const records = await on("ls /var/lib/kvmlab/records/identity-*/ | grep -c json");
    // Default domain, demo, alice, bob, ops, two assignments.
    assert.equal(records.trim(), "7");
    assert.ok(verifyPassword(PW1, await aliceHash()));
    for (const { where, text } of await everywhere())
      assert.ok(!text.includes(PW1), `the password is in ${where}`);

    const second = await argsDuring(PW2, () => run("up", PW2));
    const r2 = ok(second.value);
    assert.equal(second.seen, false);
    const userSteps = r2.steps.filter((s) => s.urn.endsWith("::lab-user-Default-alice"));
    assert.deepEqual(
      userSteps.map((s) => s.op),
      ["update"],
      `a new password updates the user: ${JSON.stringify(r2.steps.map((s) => [s.urn.split("::").pop(), s.op]))}`,
    );
    const hash = await aliceHash();
    assert.ok(verifyPassword(PW2, hash));
    assert.ok(!verifyPassword(PW1, hash));
    for (const { where, text } of await everywhere()) {
      assert.ok(!text.includes(PW1), `the old password is in ${where}`);
      assert.ok(!text.includes(PW2), `the new password is in ${where}`);
    }

    ok(await run("destroy", PW2));
    destroyed = true;
    assert.equal(
      (await on("ls /var/lib/kvmlab/records/identity-*/ 2>/dev/null | grep json; true")).trim(),
      "",
    );
  },
);
