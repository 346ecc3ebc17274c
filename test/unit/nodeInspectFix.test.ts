/**
 * nodejs/node#64011 (Node 20.20): formatting an Error with colors whose stack has a frame
 * ending in `node_modules/<name>` runs out of memory. Importing kvmlab must protect a real
 * `pulumi up` (whose language host formats errors that way): a child node process WITHOUT the
 * test preload requires the package entry and formats such an error, within seconds.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as path from "node:path";
import { spawnSync } from "node:child_process";

const SCRIPT = `
const util = require("node:util");
if (process.argv[1]) require(process.argv[1]);
const e = new Error("boom");
e.stack = "Error: boom\\n    at f (/w/node_modules/@pulumi/pulumi/resource.ts:602:13)\\n    at g (/w/node_modules/@pulumi/pulumi)";
const s = util.inspect(e, { colors: true });
console.log(s.includes("boom") ? "formatted" : "lost");
`;

function run(entry: string): { status: number | null; out: string; ms: number } {
  const t = Date.now();
  const r = spawnSync(process.execPath, ["--max-old-space-size=192", "-e", SCRIPT, entry], {
    encoding: "utf8",
    timeout: 30000,
  });
  return { status: r.status, out: r.stdout.trim(), ms: Date.now() - t };
}

test("importing kvmlab protects the process from the Node 20.20 error-formatting hang", () => {
  const entry = path.resolve(__dirname, "..", "..", "index.js");
  const r = run(entry);
  assert.equal(r.status, 0, `the child exited ${r.status}`);
  assert.equal(r.out, "formatted");
  assert.ok(r.ms < 15000, `took ${r.ms} ms`);
  // The provider barrel (what the dynamic-provider plugin loads) installs it too.
  const p = run(path.resolve(__dirname, "..", "..", "provider", "index.js"));
  assert.equal(p.status, 0);
  assert.equal(p.out, "formatted");
});
