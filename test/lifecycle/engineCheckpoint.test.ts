/**
 * The engine harness saves its state after every step, as the Pulumi CLI does (issue 15): an
 * `up` killed half-way (SIGKILL, no chance to clean up) leaves a state file that records what
 * the run already created. Before, the state was written only at the end of the run, so crash
 * recovery tests tested less than users see.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawn } from "node:child_process";
import { FILES_PROGRAM } from "../harness/engine/fixture";
import { running, withOrphansStopped } from "../support/processes";

test("an up killed half-way leaves the resources it created in the state file", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-engine-kill-"));
  const stateFile = path.join(dir, "state", "dev.json");
  const spec = {
    dir,
    // a is quick; b waits for a and then sleeps long enough to be killed in the middle.
    files: [{ name: "a" }, { name: "b", contentFrom: "a", sleepMs: 60000 }],
  };
  const cli = path.resolve(__dirname, "..", "harness", "engine", "cli.js");
  const child = spawn(
    process.execPath,
    [cli, "up", FILES_PROGRAM, "--state", stateFile, "--config", `spec=${JSON.stringify(spec)}`],
    { stdio: "ignore" },
  );
  // What the engine started (its program and its dynamic-provider plugin): the SIGKILL orphans
  // them, and the plugin, whose fixture sleeps, would run on for good. withOrphansStopped reads
  // the engine's tree and stops them by PID also when an assertion below fails first.
  try {
    await withOrphansStopped(child, async (killEngine) => {
      const deadline = Date.now() + 90000;
      let names: string[] = [];
      while (Date.now() < deadline) {
        if (fs.existsSync(stateFile)) {
          try {
            const s = JSON.parse(fs.readFileSync(stateFile, "utf8")) as { resources: { urn: string }[] };
            names = s.resources.map((r) => r.urn.split("::").pop() ?? "");
          } catch {
            // being written: read again
          }
        }
        if (names.includes("a") || child.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.equal(child.exitCode, null, "the run is still going (b sleeps) when a is recorded");
      const orphans = await killEngine();
      const s = JSON.parse(fs.readFileSync(stateFile, "utf8")) as {
        resources: { urn: string; id?: string }[];
      };
      const a = s.resources.find((r) => r.urn.endsWith("::a"));
      assert.ok(a?.id, `the killed run's state records a with its id: ${JSON.stringify(names)}`);
      assert.ok(fs.existsSync(path.join(dir, "a.txt")), "a exists on disk");
      assert.ok(!s.resources.some((r) => r.urn.endsWith("::b")), "b was not created, so it is not recorded");
      // The plugin is one of them, and outlived the engine (it is what the test has to stop).
      const plugin = orphans.filter((p) => p.cmdline.includes("dynamic-provider"));
      assert.equal(plugin.length, 1, `one plugin below the engine: ${JSON.stringify(orphans)}`);
      assert.ok(running(plugin[0]), "the plugin outlived the killed engine");
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
