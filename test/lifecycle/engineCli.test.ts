/**
 * The engine harness's command line (`npm run engine -- …`) on the TypeScript fixture
 * (test/fixtures/programs/tsdemo), which runs from source through the SDK's ts-node as under the
 * CLI. Proves the command, its exit codes and its --json shape; see engine.test.ts for the step rules.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runLifecycle } from "../harness/engine/lifecycle";

const CLI = path.resolve(__dirname, "..", "harness", "engine", "cli.js");
const TSDEMO = path.resolve(__dirname, "..", "..", "..", "test", "fixtures", "programs", "tsdemo");
const FILES = path.resolve(__dirname, "..", "..", "..", "test", "fixtures", "programs", "files");

function engine(
  args: string[],
  env: Record<string, string> = {},
): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: "utf8",
    env: { ...process.env, ...env },
    timeout: 180_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("npm run engine: up, preview, destroy a TypeScript program with --json", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-engine-cli-"));
  const state = path.join(dir, "state.json");
  try {
    const started = Date.now();
    const up = engine(["up", TSDEMO, "--state", state, "--config", `dir=${dir}`, "--json"]);
    console.log(`ts-node up took ${Date.now() - started} ms`);
    assert.equal(up.code, 0, up.stderr);
    const j = JSON.parse(up.stdout) as {
      ok: boolean;
      steps: Record<string, number>;
      outputs: Record<string, unknown>;
    };
    assert.equal(j.ok, true);
    assert.deepEqual(j.steps, { create: 1, same: 0, update: 0, replace: 0, delete: 0 });
    assert.deepEqual(j.outputs, { notePath: path.join(dir, "note.txt"), noteSize: 5 });
    assert.equal(fs.readFileSync(path.join(dir, "note.txt"), "utf8"), "hello");

    // Text mode: per-resource step with old → new, and a summary line. PULUMI_NODEJS_TRANSPILE_ONLY passes through.
    const pv = engine(
      ["preview", TSDEMO, "--state", state, "--config", `dir=${dir}`, "--config", "content=bye"],
      { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
    );
    assert.equal(pv.code, 0, pv.stderr);
    assert.match(
      pv.stdout,
      /~\s+update\s+pulumi-nodejs:dynamic\/kvmlab-test:File note\n\s+content: "hello" => "bye"/,
    );
    assert.match(pv.stdout, /Resources: 0 to create, 1 to update, 0 to replace, 0 to delete, 0 unchanged/);

    const down = engine(["destroy", TSDEMO, "--state", state, "--json"]);
    assert.equal(down.code, 0, down.stderr);
    assert.equal((JSON.parse(down.stdout) as { steps: { delete: number } }).steps.delete, 1);
    assert.ok(!fs.existsSync(path.join(dir, "note.txt")));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("npm run engine: bad usage exits 2, a failing program exits 1 with its error", () => {
  const usage = engine(["launch", TSDEMO]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /unknown command "launch"[\s\S]*usage: npm run engine/);
  const missing = engine(["up", TSDEMO, "--config"]);
  assert.equal(missing.code, 2);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-engine-cli-"));
  try {
    // The files fixture requires the config value "spec": the program fails.
    const started = Date.now();
    const failed = engine(["up", FILES, "--state", path.join(dir, "s.json"), "--json"]);
    console.log(`failing program run took ${Date.now() - started} ms`);
    assert.equal(failed.code, 1);
    const j = JSON.parse(failed.stdout) as { ok: boolean; errors: string[] };
    assert.equal(j.ok, false);
    assert.ok(
      j.errors.some((e) => e.includes("Missing required configuration variable 'files:spec'")),
      j.errors.join("\n"),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("runLifecycle drives a program through preview, up, no-op, change, up, destroy", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-engine-cli-"));
  try {
    const r = await runLifecycle(TSDEMO, {
      config: [{ key: "dir", value: dir, secret: false }],
      change: [{ key: "content", value: "changed", secret: false }],
      env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
    });
    assert.equal(r.preview.counts.create, 1);
    assert.equal(r.change.counts.update, 1);
    assert.equal(r.destroy.counts.delete, 1);
    assert.ok(!fs.existsSync(path.join(dir, "note.txt")));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
