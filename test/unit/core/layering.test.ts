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

test("no import circle in core/, templates/ or lab/ (type-only imports included)", () => {
  const fs = require("node:fs") as typeof import("node:fs");
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith(".ts")) files.push(p);
    }
  };
  for (const folder of ["core", "templates", "lab"]) walk(path.join(ROOT, folder));
  const edges = new Map<string, string[]>();
  for (const f of files) {
    const targets = [...fs.readFileSync(f, "utf8").matchAll(/from "(\.[^"]+)"/g)].flatMap((m) => {
      const t = path.join(path.dirname(f), m[1]);
      return [`${t}.ts`, path.join(t, "index.ts")].filter((c) => fs.existsSync(c)).slice(0, 1);
    });
    edges.set(f, targets);
  }
  const state = new Map<string, "open" | "done">();
  const cycles: string[] = [];
  const visit = (n: string, stack: string[]): void => {
    state.set(n, "open");
    stack.push(n);
    for (const m of edges.get(n) ?? []) {
      if (state.get(m) === "open")
        cycles.push([...stack.slice(stack.indexOf(m)), m].map((x) => path.relative(ROOT, x)).join(" -> "));
      else if (!state.has(m)) visit(m, stack);
    }
    stack.pop();
    state.set(n, "done");
  };
  for (const f of files) if (!state.has(f)) visit(f, []);
  assert.ok(files.some((f) => f.endsWith(path.join("lab", "checks", "index.ts"))));
  assert.deepEqual(cycles, []);
});
