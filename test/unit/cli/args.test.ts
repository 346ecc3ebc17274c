/**
 * One argument parser (cli/args.ts) for validate, render and sandbox: options with values in
 * both spellings, switches, help, `--`, and the messages each command has always printed.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { parseArgs, UsageError } from "../../../cli/args";
import { main as render } from "../../../cli/render";
import { main as sandbox } from "../../../cli/sandbox";
import { main as validate } from "../../../cli/validate";
import { capture } from "../../support/console";

test("parseArgs: --name value, --name=value, switches, positionals, --", () => {
  const r = parseArgs(["lab.yaml", "--out", "/tmp/x", "--stack=prod", "--json", "--", "--odd"], {
    valued: ["out", "stack"],
    flags: ["json"],
  });
  assert.deepEqual(r.positional, ["lab.yaml", "--odd"]);
  assert.deepEqual(
    [...r.options],
    [
      ["out", "/tmp/x"],
      ["stack", "prod"],
      ["json", true],
    ],
  );
  assert.equal(r.help, false);
  assert.equal(parseArgs(["--stack=a=b"], { valued: ["stack"] }).options.get("stack"), "a=b");
  assert.equal(parseArgs(["x", "-h"]).help, true);
  assert.equal(parseArgs(["--help", "--bogus"]).help, true, "help stops the parse");
  assert.equal(parseArgs(["help"]).help, false, "a file may be called help");
  assert.equal(parseArgs(["help"], { words: ["up"] }).help, true);
});

test("parseArgs: unknown options and missing values are usage errors with the old messages", () => {
  assert.throws(
    () => parseArgs(["--bogus"]),
    (e: Error) => e instanceof UsageError && e.message === "unknown option --bogus",
  );
  assert.throws(() => parseArgs(["--out"], { valued: ["out"] }), /^Error: --out needs a value$/);
  assert.throws(() => parseArgs(["--bogus"], { words: ["up"] }), /unknown argument "--bogus"/);
  assert.throws(() => parseArgs(["sideways"], { words: ["up"] }), /unknown argument "sideways"/);
});

test("validate, render and sandbox report usage errors through the one parser, exit 2", async () => {
  const v = await capture(() => validate(["--bogus"]));
  assert.equal(v.code, 2);
  assert.match(v.err, /^kvmlab validate: unknown option --bogus\n\nusage: kvmlab validate/);
  const r = await capture(() => render(["lab.yaml", "--out"]));
  assert.equal(r.code, 2);
  assert.match(r.err, /^kvmlab render: --out needs a value\n\nusage: kvmlab render/);
  const help = await capture(() => render(["--help"]));
  assert.equal(help.code, 0);
  assert.match(help.out, /^usage: kvmlab render <lab.yaml> --out DIR/);
  const cases: [string[], RegExp][] = [
    [
      ["up", "--hosts", "0", "--instance", "unit-never"],
      /invalid --hosts 0: give a whole number from 1 to 16/,
    ],
    [["up", "--hosts", "two"], /invalid --hosts "two"/],
    [["up", "--instance", "a;rm -rf /"], /invalid sandbox instance name "a;rm -rf \/"/],
    [["--instance", "x"], /give an action: up, status or down/],
    [["up", "down"], /give one action, not "up" and "down"/],
    [["sideways"], /unknown argument "sideways"/],
    [["up", "--bogus"], /unknown argument "--bogus"/],
    [["up", "--instance"], /--instance needs a value/],
  ];
  for (const [argv, message] of cases) {
    const s = await capture(() => sandbox(argv));
    assert.equal(s.code, 2, argv.join(" "));
    assert.match(s.err, message);
    assert.match(s.err, /usage: kvmlab sandbox <up\|status\|down>/);
  }
  const sh = await capture(() => sandbox(["help"]));
  assert.equal(sh.code, 0);
  assert.match(sh.out, /^usage: kvmlab sandbox/);
});
