/**
 * `kvmlab validate` and `kvmlab render` check and render a lab without the Pulumi SDK or an SSH
 * library: the real command runs in a child process with a preload that lists every module it
 * loaded, and none may come from @pulumi/, node-ssh or ssh2 (nor from kvmlab's provider/ or
 * components/, which would bring them in).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const ROOT = path.resolve(__dirname, "../../../..");
const PRELOAD = path.join(ROOT, "dist/test/support/moduleLog.js");
const FORBIDDEN = [
  /[\\/]node_modules[\\/]@pulumi[\\/]/,
  /[\\/]node_modules[\\/]node-ssh[\\/]/,
  /[\\/]node_modules[\\/]ssh2[\\/]/,
  /[\\/]dist[\\/]provider[\\/]/,
  /[\\/]dist[\\/]components[\\/]/,
];

function modulesOf(args: string[]): { status: number | null; stderr: string; modules: string[] } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-modules-"));
  try {
    const log = path.join(dir, "modules.json");
    const r = spawnSync(process.execPath, ["--require", PRELOAD, path.join(ROOT, "bin/kvmlab.js"), ...args], {
      cwd: ROOT,
      env: { ...process.env, KVMLAB_MODULE_LOG: log },
      encoding: "utf8",
      timeout: 60_000,
    });
    const modules = fs.existsSync(log) ? (JSON.parse(fs.readFileSync(log, "utf8")) as string[]) : [];
    return { status: r.status, stderr: r.stderr, modules };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function assertNoForbidden(what: string, modules: string[]): void {
  assert.ok(modules.length > 0, `${what}: the preload listed no modules`);
  const bad = modules.filter((m) => FORBIDDEN.some((re) => re.test(m)));
  assert.deepEqual(bad, [], `${what} loaded ${bad.length} forbidden modules (of ${modules.length})`);
}

test("kvmlab validate stacks/three-tier.yaml loads no @pulumi/, SSH, provider or component module", () => {
  const r = modulesOf(["validate", "stacks/three-tier.yaml"]);
  assert.equal(r.status, 0, r.stderr);
  assertNoForbidden("validate", r.modules);
  // A lab module must be among them, or the check proves nothing.
  assert.ok(r.modules.some((m) => /[\\/]dist[\\/]lab[\\/]parse\.js$/.test(m)));
});

test("kvmlab render stacks/three-tier.yaml loads no @pulumi/, SSH, provider or component module", () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-render-"));
  try {
    const r = modulesOf(["render", "stacks/three-tier.yaml", "--out", out]);
    assert.equal(r.status, 0, r.stderr);
    assertNoForbidden("render", r.modules);
    assert.ok(r.modules.some((m) => /[\\/]dist[\\/]templates[\\/]server\.js$/.test(m)));
    assert.ok(fs.existsSync(path.join(out, "plan.json")));
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
