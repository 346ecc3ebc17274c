/**
 * Runs the compiled test suites with Node's built-in test runner.
 *
 *   node dist/test/run.js                 every suite: unit, wiring, integration, lifecycle
 *   node dist/test/run.js unit wiring     only those suites
 *
 * Suites run in this order, one file at a time: integration and lifecycle files build their
 * own sandbox hosts, and two of them at once would compete for the same two cores.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

const SUITES = ["unit", "wiring", "integration", "lifecycle"] as const;

function testFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const found: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) found.push(...testFiles(full));
    else if (entry.name.endsWith(".test.js")) found.push(full);
  }
  return found.sort();
}

function main(argv: string[]): number {
  const wanted = argv.length > 0 ? argv : [...SUITES];
  const unknown = wanted.filter((s) => !(SUITES as readonly string[]).includes(s));
  if (unknown.length > 0) {
    console.error(`unknown suite(s): ${unknown.join(", ")}; choose from ${SUITES.join(", ")}`);
    return 2;
  }
  const files = wanted.flatMap((suite) => testFiles(path.join(__dirname, suite)));
  if (files.length === 0) {
    console.error(
      `no test files found for ${wanted.join(", ")} under ${__dirname}: run "npm run build" first`,
    );
    return 1;
  }
  const preload = path.join(__dirname, "support", "inspectFix.js");
  const result = spawnSync(
    process.execPath,
    ["--require", preload, "--test", "--test-concurrency=1", "--test-reporter=spec", ...files],
    { stdio: "inherit" },
  );
  return result.status ?? 1;
}

process.exitCode = main(process.argv.slice(2));
