/**
 * The engine harness's `preview --json` prints the document `pulumi preview --json` prints, and
 * `kvmlab preview-report` turns it into the review comment: end to end on the `files` fixture
 * program (local files as dynamic resources), through the harness's command line.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import { FixtureStack, FILES_PROGRAM, type Spec } from "../harness/engine/fixture";
import { parsePreviewDigest, renderPreviewReport } from "../../report/preview";

const CLI = path.resolve(__dirname, "..", "harness", "engine", "cli.js");

test("harness preview --json has the CLI's shape and feeds preview-report", async () => {
  const stack = new FixtureStack("preview-json");
  try {
    const before: Spec = {
      files: [
        { name: "conf", content: "global\n    maxconn 100\n\nbackend web\n    server web-0 10.0.0.10:80\n" },
        { name: "seed", file: "seed.txt", dbr: true },
        { name: "cred", secretExtra: true },
        { name: "gone" },
      ],
    };
    const up = await stack.run("up", before, { secrets: { token: "old-token-value" } });
    assert.ok(up.ok, up.errors.join("\n"));

    const after: Spec = {
      files: [
        {
          name: "conf",
          content:
            "global\n    maxconn 100\n\nbackend web\n    server web-0 10.0.0.10:80\n    server web-1 10.0.0.11:80\n",
        },
        { name: "seed", file: "seed-v2.txt", dbr: true },
        { name: "cred", secretExtra: true },
      ],
    };
    const r = spawnSync(
      process.execPath,
      [
        CLI,
        "preview",
        FILES_PROGRAM,
        "--state",
        stack.stateFile,
        "--config",
        `spec=${JSON.stringify({ dir: stack.dir, ...after })}`,
        "--secret",
        "token=new-token-value",
        "--json",
      ],
      { encoding: "utf8", timeout: 180_000 },
    );
    assert.equal(r.status, 0, r.stderr);
    for (const secret of ["old-token-value", "new-token-value"])
      assert.ok(!r.stdout.includes(secret), `${secret} leaked into --json`);
    assert.match(r.stdout, /^\{\n {4}"config": \{/, "indented like the CLI's json.MarshalIndent");

    const d = parsePreviewDigest(r.stdout);
    assert.deepEqual(d.changeSummary, { same: 1, update: 2, replace: 1, delete: 1 });
    assert.deepEqual(d.config?.["files:token"], "[secret]");
    const ops = (d.steps ?? []).map((s) => `${s.op} ${s.urn.split("::").pop()}`);
    assert.deepEqual(ops.sort(), [
      "create-replacement seed",
      "delete gone",
      "delete-replaced seed",
      "replace seed",
      "same files-dev",
      "update conf",
      "update cred",
    ]);
    const seedOps = (d.steps ?? []).filter((s) => s.urn.endsWith("::seed")).map((s) => s.op);
    assert.deepEqual(
      seedOps,
      ["delete-replaced", "replace", "create-replacement"],
      "delete-before-replace order",
    );
    for (const s of d.steps ?? []) assert.equal(s.detailedDiff, null);
    const conf = d.steps!.find((s) => s.urn.endsWith("::conf"))!;
    assert.deepEqual(conf.diffReasons, ["content"]);
    assert.equal(conf.newState?.outputs, undefined, "a planned state has no outputs yet");
    assert.ok(conf.oldState?.outputs, "the old state carries its outputs");
    const cred = d.steps!.find((s) => s.urn.endsWith("::cred"))!;
    assert.equal(cred.newState?.inputs?.extra, "[secret]");

    const md = renderPreviewReport(d);
    const diff = md.split("\n").filter((l) => /^[-+][^-+]/.test(l) || /^[-+]$/.test(l));
    assert.deepEqual(diff, ["+    server web-1 10.0.0.11:80"], md);
    assert.match(
      md,
      /\| \*\*replace\*\* \| <code>seed<\/code> \| <code>kvmlab-test:File<\/code> \| <code>file<\/code>: <code>&quot;seed\.txt&quot;<\/code> → <code>&quot;seed-v2\.txt&quot;<\/code> — \*\*delete-before-replace\*\*/,
    );
    assert.match(md, /\| \*\*delete\*\* \| <code>gone<\/code> \|/);
    assert.match(md, /\| <code>extra<\/code> \| \[secret\] \| \[secret\] \(changed; value hidden\) \|/);
    assert.ok(!md.includes("token-value"));
  } finally {
    stack.cleanup();
  }
});
