/**
 * The layering of docs/architecture.md is enforced: ESLint (eslint.config.mjs) refuses every
 * import that goes the wrong way, in every relative form, and accepts the allowed ones.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as path from "node:path";

const ROOT = path.resolve(__dirname, "../../../..");

async function lint(file: string, source: string): Promise<string[]> {
  const { ESLint } = require("eslint") as typeof import("eslint");
  const eslint = new ESLint({ cwd: ROOT });
  const [result] = await eslint.lintText(source, { filePath: path.join(ROOT, file) });
  return result.messages.filter((m) => m.ruleId === "no-restricted-imports").map((m) => m.message);
}

const REFUSED: [string, string][] = [
  ["core/x.ts", 'import "../templates";'],
  ["core/x.ts", 'import "../provider/host";'],
  ["core/x.ts", 'import "@pulumi/pulumi";'],
  ["core/x.ts", 'import "node:fs";'],
  ["templates/x.ts", 'import "../provider/network";'],
  ["templates/x.ts", 'import "../components/server";'],
  ["templates/x.ts", 'import "../lab/parse";'],
  ["lab/x.ts", 'import "../components/server";'],
  ["lab/checks/x.ts", 'import "../../provider/ipam";'],
  ["lab/x.ts", 'import "@pulumi/pulumi";'],
  ["lab/x.ts", 'import "node-ssh";'],
  ["lab/x.ts", 'import "../stacks/program";'],
  ["provider/x.ts", 'import "../templates";'],
  ["provider/x.ts", 'import "../templates/domain";'],
  ["provider/server/x.ts", 'import "../../templates";'],
  ["provider/server/x.ts", 'import "../../templates/server";'],
  ["provider/x.ts", 'import "../lab/plan";'],
  ["provider/x.ts", 'import "../components/network";'],
  ["provider/x.ts", 'import "handlebars";'],
  ["components/x.ts", 'import "../lab/parse";'],
  ["components/x.ts", 'import "../cli/sandbox/status";'],
  ["stacks/x.ts", 'import "../provider/server";'],
];

const ALLOWED: [string, string][] = [
  ["templates/x.ts", 'import "../core/net";'],
  ["lab/x.ts", 'import "../core/paths";'],
  ["lab/x.ts", 'import "../templates/server";'],
  ["lab/x.ts", 'import "../stacks/lab.schema.json";'],
  ["provider/server/x.ts", 'import "../../core/paths";'],
  ["components/x.ts", 'import "../core/paths";'],
  ["components/x.ts", 'import "../templates/subnet";'],
  ["components/x.ts", 'import "../provider/network";'],
  ["stacks/x.ts", 'import "../components/network";'],
  ["stacks/x.ts", 'import "../lab/parse";'],
  ["cli/x.ts", 'import "../provider/host";'],
];

test("ESLint refuses imports against the layering, in every relative form", async () => {
  for (const [file, source] of REFUSED) {
    const messages = await lint(file, source);
    assert.ok(messages.length > 0, `${file}: ${source} should be refused`);
  }
});

test("ESLint accepts the imports the layering allows", async () => {
  for (const [file, source] of ALLOWED) {
    assert.deepEqual(await lint(file, source), [], `${file}: ${source} should be allowed`);
  }
});
