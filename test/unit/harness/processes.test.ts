/**
 * withOrphansStopped (test/support/processes.ts): the processes a spawned child leaves behind when
 * it is SIGKILLed are stopped by PID whether the test body succeeds or throws, and the body's own
 * error is the one the test reports (lifecycle/engineCheckpoint: the plugin ran on after a CI
 * failure because the orphans were read only on the success path).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { descendants, running, withOrphansStopped, type TreeProcess } from "../../support/processes";

/** A bash that starts a sleep below it (the orphan-to-be); resolves once the sleep is there. */
async function parentWithSleeper(): Promise<{
  child: ReturnType<typeof spawn>;
  sleeper: TreeProcess;
}> {
  const child = spawn("bash", ["--noprofile", "--norc", "-c", "sleep 30 & wait"], { stdio: "ignore" });
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const sleeper = descendants(child.pid!).find((p) => p.cmdline.startsWith("sleep"));
    if (sleeper) return { child, sleeper };
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  throw new Error("no sleep below the bash within 10 s");
}

test("withOrphansStopped: a body that throws before it kills the child still has the child's orphans stopped, and its own error is thrown", async () => {
  const { child, sleeper } = await parentWithSleeper();
  try {
    await assert.rejects(
      withOrphansStopped(child, async () => {
        throw new Error("the test's own failure");
      }),
      (e: Error) => e.message === "the test's own failure",
    );
    assert.equal(running(sleeper), false, "the orphaned sleep was stopped");
    assert.notEqual(child.signalCode ?? child.exitCode, null, "the child was killed");
  } finally {
    if (running(sleeper)) process.kill(sleeper.pid, "SIGKILL");
  }
});

test("withOrphansStopped: killChild reports what the kill orphaned (still running then), and it is stopped after the body", async () => {
  const { child, sleeper } = await parentWithSleeper();
  try {
    let seen: TreeProcess[] = [];
    let alive = false;
    await withOrphansStopped(child, async (killChild) => {
      seen = await killChild();
      alive = running(sleeper);
    });
    assert.deepEqual(
      seen.map((p) => p.pid),
      [sleeper.pid],
    );
    assert.ok(alive, "the sleep outlived the SIGKILL of its parent (an orphan)");
    assert.equal(running(sleeper), false, "and was stopped afterwards");
  } finally {
    if (running(sleeper)) process.kill(sleeper.pid, "SIGKILL");
  }
});
