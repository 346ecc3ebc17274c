/**
 * The review path on a real stack: examples/single-server is brought up on a sandbox instance
 * of its own ("lc-preview", or $KVMLAB_LC_PREVIEW_INSTANCE) through the engine harness, then
 * previewed with a changed flavor through the harness's command line with --json (the document
 * `pulumi preview --json` prints), and `kvmlab preview-report` turns it into the comment. The
 * comment's diff of the server's domain XML must be exactly the lines a resize changes.
 *
 * The harness ports the Go engine's step rules; it is not the Pulumi engine (docs/engine-harness.md).
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type RunResult } from "../harness/engine/engine";
import { KVMLAB_CLI, startSandbox, stopSandbox } from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_LC_PREVIEW_INSTANCE ?? "lc-preview";
const KEEP = process.env.KVMLAB_LC_KEEP === "1";
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "examples", "single-server");
const HARNESS = path.resolve(__dirname, "..", "harness", "engine", "cli.js");
const ENV = { PULUMI_NODEJS_TRANSPILE_ONLY: "true" };
let stateDir = "";
let upDone = false;

before(async () => {
  await startSandbox(INSTANCE, 1);
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-preview-"));
});

after(async () => {
  if (upDone) await run("destroy").catch(() => undefined);
  if (!KEEP) await stopSandbox(INSTANCE);
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

const baseConfig = [{ key: "kvmlab:sandboxInstance", value: INSTANCE, secret: false }];

function run(operation: "up" | "destroy"): Promise<RunResult> {
  return runEngine({
    operation,
    programDir: PROGRAM,
    stack: "lc",
    stateFile: path.join(stateDir, "state.json"),
    config: baseConfig,
    env: ENV,
    programTimeoutMs: 600_000,
  });
}

test(
  "single-server: a flavor change previewed with --json, the report diffs exactly the resized lines of the domain XML",
  { timeout: 900_000 },
  async () => {
    const up = await run("up");
    upDone = true;
    assert.ok(up.ok, up.errors.join("\n"));

    const preview = spawnSync(
      process.execPath,
      [
        "--require",
        path.resolve(__dirname, "..", "support", "inspectFix.js"),
        HARNESS,
        "preview",
        PROGRAM,
        "--stack",
        "lc",
        "--state",
        path.join(stateDir, "state.json"),
        "--config",
        `kvmlab:sandboxInstance=${INSTANCE}`,
        "--config",
        "flavor=m1.small",
        "--json",
      ],
      { encoding: "utf8", env: { ...process.env, ...ENV }, timeout: 600_000, maxBuffer: 64 * 1024 * 1024 },
    );
    assert.equal(preview.status, 0, preview.stderr);
    const previewFile = path.join(stateDir, "preview.json");
    fs.writeFileSync(previewFile, preview.stdout);

    const report = spawnSync(process.execPath, [KVMLAB_CLI, "preview-report", previewFile], {
      encoding: "utf8",
    });
    assert.equal(report.status, 0, report.stderr);
    const md = report.stdout;
    // Kept for people to read (git-ignored): the comment a reviewer would see for this change.
    const artifacts = path.resolve(__dirname, "..", "..", "..", "test-artifacts");
    fs.mkdirSync(artifacts, { recursive: true });
    fs.writeFileSync(path.join(artifacts, "single-server-resize-report.md"), md);
    fs.writeFileSync(path.join(artifacts, "single-server-resize-preview.json"), preview.stdout);

    assert.match(md, /\*\*1 to update · \d+ unchanged\*\*/, "a resize updates the server only");
    assert.doesNotMatch(md, /\[!CAUTION\]/, "nothing is replaced or deleted");
    assert.match(md, /<b>~ update<\/b> <code>web1<\/code> <i>kvmlab:Server<\/i>/);
    // The provider's plan for the change, computed by its Check, is in the comment.
    assert.match(
      md,
      /\| <code>changePlan<\/code> \| <code>&quot;create&quot;<\/code> \| <code>&quot;cold resize m1\.tiny \(1 vCPU, 128 MiB\) -&gt; m1\.small/,
    );
    // The domain XML diff: one block for both renderings (kvm and qemu), only the resized lines.
    const block =
      /<code>domainXml\.kvm<\/code>, <code>domainXml\.qemu<\/code> — libvirt domain XML, \+(\d+) −(\d+) lines \(the same change in each\):\n\n```diff\n([\s\S]*?)\n```/.exec(
        md,
      );
    assert.ok(block, `no domain XML diff in the report:\n${md}`);
    const changed = block[3].split("\n").filter((l) => l.startsWith("-") || l.startsWith("+"));
    assert.deepEqual(changed, [
      "-      <kvmlab:flavor>m1.tiny</kvmlab:flavor>",
      "+      <kvmlab:flavor>m1.small</kvmlab:flavor>",
      "-  <memory unit='MiB'>128</memory>",
      "-  <currentMemory unit='MiB'>128</currentMemory>",
      "+  <memory unit='MiB'>192</memory>",
      "+  <currentMemory unit='MiB'>192</currentMemory>",
    ]);
    assert.deepEqual([block[1], block[2]], ["3", "3"]);
    // The diff's context lines are the real XML around them: every line of the block is in the new XML.
    const digest = JSON.parse(preview.stdout) as {
      steps: { op: string; urn: string; newState?: { inputs?: { domainXml?: { kvm: string } } } }[];
    };
    const server = digest.steps.find(
      (s) => s.op === "update" && s.urn.endsWith("::web1") && s.urn.includes("kvmlab:Server"),
    );
    const newXml = server?.newState?.inputs?.domainXml?.kvm ?? "";
    for (const l of block[3].split("\n").filter((x) => x.startsWith(" ") || x.startsWith("+")))
      assert.ok(newXml.split("\n").includes(l.slice(1)), `not a line of the new domain XML: ${l}`);
    assert.ok(
      !/BEGIN OPENSSH PRIVATE KEY/.test(preview.stdout + md),
      "no private key in the preview or the report",
    );
    process.stdout.write(`# report: ${md.length} characters\n`);
  },
);
