/**
 * `kvmlab asg` (cli/asg.ts): the arguments of status, signal and reset (review A4), checked
 * before any host is asked; the exact reset command `status` prints for a FAILED slot; and the
 * controller step `reset` runs (provider/autoscale/steps.ts resetStep), run by sh against a
 * folder of its own.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  failedLines,
  handResetCommand,
  main,
  parseAsgArgs,
  resetCommand,
  resetOwnerRefusal,
} from "../../../cli/asg";
import { asgDir, resetStep } from "../../../provider/autoscale/steps";
import { ownerMarkerPath } from "../../../provider/kit/owner";
import { capture } from "../../support/console";
import { slotGroup } from "../../../core/autoscale";

const OWNER = "proj/dev/AutoscaleAgent/web";

function usage(argv: string[]): string {
  const r = parseAsgArgs(argv);
  assert.ok("usage" in r, `${argv.join(" ")} is refused: ${JSON.stringify(r)}`);
  return r.usage;
}

test("asg reset: one member of the group, or --all-failed; the host options are kept to print commands", () => {
  const r = parseAsgArgs(["reset", "web", "web-1", "--sandbox", "lc-asg"]);
  assert.ok("verb" in r && r.verb === "reset");
  assert.deepEqual(r.members, ["web-1"]);
  assert.deepEqual(r.hostArgs, ["--sandbox", "lc-asg"]);
  const all = parseAsgArgs(["reset", "web", "--all-failed", "--controller", "hv1"]);
  assert.ok("verb" in all && all.verb === "reset");
  assert.equal(all.members, "all-failed");
  assert.equal(all.controller, "hv1");
  assert.deepEqual(all.hostArgs, ["--controller", "hv1"]);
  // status and signal are as they were.
  assert.ok("verb" in parseAsgArgs(["status", "web", "--log", "5"]));
  const sig = parseAsgArgs(["signal", "web", "scale_out"]);
  assert.ok("verb" in sig && sig.verb === "signal" && sig.policy === "scale_out");
});

test("asg reset refuses, before any host is asked, a member of another group, a malformed name, both or neither of member and --all-failed", async () => {
  assert.match(
    usage(["reset", "web", "api-0"]),
    /api-0 is not a member of group web .* kvmlab asg reset api api-0/,
  );
  for (const bad of [
    "web-0;reboot",
    "web-0 ",
    "web-",
    "web-01",
    "web-100",
    "WEB-0",
    "'web-0'",
    "web-0\nweb-1",
  ])
    assert.match(usage(["reset", "web", bad]), /invalid member name .* web-<i>/, bad);
  assert.match(usage(["reset", "web", "web-0", "--all-failed"]), /one member or --all-failed, not both/);
  assert.match(usage(["reset", "web"]), /expected "reset <group> <member>" or "reset <group> --all-failed"/);
  assert.match(usage(["reset", "Web", "Web-0"]), /invalid group name "Web"/);
  // The last -<i> is the index: web-2-1 is slot 1 of group web-2, not a slot of web.
  assert.equal(slotGroup("web-2-1"), "web-2");
  assert.match(usage(["reset", "web", "web-2-1"]), /web-2-1 is not a member of group web/);
  assert.match(usage(["status", "web", "--all-failed"]), /--all-failed goes with reset only/);
  assert.match(usage(["signal", "web", "scale out"]), /invalid policy name/);
  // Through main: exit 2 with the reason and the usage, and no host asked (there is none here).
  const r = await capture(() => main(["reset", "web", "api-0", "--hosts", "/nonexistent/hosts.json"]));
  assert.equal(r.code, 2);
  assert.match(r.err, /api-0 is not a member of group web/);
  assert.match(r.err, /kvmlab asg reset <group> <member> \| --all-failed/);
});

test("asg status names every FAILED slot with the exact reset command, host options shell-quoted", () => {
  assert.equal(
    resetCommand("web", "web-1", ["--hosts", "/tmp/my hosts.json"]),
    "kvmlab asg reset web web-1 --hosts '/tmp/my hosts.json'",
  );
  const slots = { "web-0": "running", "web-1": "failed" };
  const lines = failedLines("web", slots, ["--sandbox", "lc-asg"], 1, 2);
  assert.match(lines[0], /^FAILED: web-1 .*below its min 2/);
  assert.ok(lines.includes("    kvmlab asg reset web web-1 --sandbox lc-asg"), lines.join("\n"));
  assert.ok(!lines.some((l) => l.includes("--all-failed")), "one FAILED slot: no --all-failed line");
  const two = failedLines("web", { "web-0": "failed", "web-1": "failed", "web-2": "stopped" }, [], 0, 1);
  assert.ok(!two[0].includes("below"), "a stopped slot is left: the agent restores min from it");
  assert.deepEqual(two.slice(2), [
    "    kvmlab asg reset web web-0",
    "    kvmlab asg reset web web-1",
    "    kvmlab asg reset web --all-failed",
  ]);
  assert.deepEqual(failedLines("web", { "web-0": "running" }, [], 1, 1), []);
});

test("the reset step runs the group's agent in its reset mode with the names quoted, refusing a folder with no group or no owner marker", () => {
  assert.throws(() => resetStep("web", ["web-0'; rm -rf /'"], OWNER), /not a slot of group web/);
  assert.throws(() => resetStep("web", ["api-0"], OWNER), /not a slot of group web/);
  assert.throws(() => resetStep("web", [], OWNER), /no member/);
  assert.throws(() => resetStep("web", ["web-1"], ""), /is not an owner/);
  assert.throws(
    () => resetStep("web", ["web-1"], "proj/dev'; reboot; '/AutoscaleAgent/web"),
    /is not an owner/,
  );
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-asg-reset-"));
  try {
    const dir = path.join(root, "asg");
    const marker = path.join(root, "web.owner");
    fs.mkdirSync(dir);
    // The step with the group's folder and marker moved under this test's folder.
    const run = (step: { script: string }) => {
      const script = step.script
        .split(asgDir("web"))
        .join(dir)
        .split(ownerMarkerPath("asg", "web"))
        .join(marker);
      assert.notEqual(script, step.script);
      return spawnSync("sh", ["-c", script], { encoding: "utf8" });
    };
    let r = run(resetStep("web", ["web-1"], OWNER));
    assert.equal(r.status, 44, r.stderr);
    assert.match(r.stderr, /no autoscale group web on this host/);
    fs.writeFileSync(path.join(dir, "agent.conf"), "GROUP='web'\n");
    // A fake agent that prints its arguments, one a line, and exits as told.
    fs.writeFileSync(
      path.join(dir, "agent.sh"),
      'for a in "$@"; do echo "arg=$a"; done; exit "$(cat "$1/rc" 2>/dev/null || echo 0)"\n',
    );
    r = run(resetStep("web", ["web-1"], OWNER));
    assert.equal(r.status, 46, r.stderr);
    assert.match(r.stderr, /has no owner marker .* nothing was changed/);
    fs.writeFileSync(marker, "proj/dev/AutoscaleAgent/web\n");
    r = run(resetStep("web", ["web-1"], OWNER));
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), [`arg=${dir}`, "arg=reset", "arg=web-1"]);
    r = run(resetStep("web", "all-failed", OWNER));
    assert.deepEqual(r.stdout.trim().split("\n"), [`arg=${dir}`, "arg=reset", "arg=--all-failed"]);
    fs.writeFileSync(path.join(dir, "rc"), "70\n");
    assert.equal(run(resetStep("web", ["web-1"], OWNER)).status, 70, "the agent's refusal is passed on");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("review 9b G2: the reset acts only on the group whose owner was read before it (and, with --owner, only on that stack's)", () => {
  // --owner <project>/<stack>, with reset only.
  const r = parseAsgArgs(["reset", "web", "web-1", "--owner", "proj/dev"]);
  assert.ok("verb" in r && r.verb === "reset" && r.ownerStack === "proj/dev", JSON.stringify(r));
  assert.match(usage(["reset", "web", "web-1", "--owner", "proj"]), /--owner expects <project>\/<stack>/);
  assert.match(usage(["reset", "web", "web-1", "--owner", "proj/dev/x"]), /--owner expects/);
  assert.match(usage(["status", "web", "--owner", "proj/dev"]), /--owner goes with reset only/);
  // The CLI's check of the owner status read, before any change.
  assert.match(
    resetOwnerRefusal("web", "hv1", "", undefined) ?? "",
    /has no owner marker, so it is nobody's/,
  );
  assert.match(resetOwnerRefusal("web", "hv1", "garbage", undefined) ?? "", /names no owner/);
  assert.match(
    resetOwnerRefusal("web", "hv1", "other/prod/AutoscaleAgent/web", "proj/dev") ?? "",
    /belongs to stack other\/prod .*not proj\/dev; nothing was changed/,
  );
  assert.equal(resetOwnerRefusal("web", "hv1", OWNER, "proj/dev"), undefined);
  assert.equal(resetOwnerRefusal("web", "hv1", OWNER, undefined), undefined);
  // The step on the controller: a marker that changed since it was read refuses, the agent is not run.
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-asg-owner-"));
  try {
    const dir = path.join(root, "asg");
    const marker = path.join(root, "web.owner");
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, "agent.conf"), "GROUP='web'\n");
    fs.writeFileSync(path.join(dir, "agent.sh"), 'echo "agent ran"\n');
    const run = (step: { script: string }) =>
      spawnSync(
        "sh",
        ["-c", step.script.split(asgDir("web")).join(dir).split(ownerMarkerPath("asg", "web")).join(marker)],
        { encoding: "utf8" },
      );
    fs.writeFileSync(marker, "other/prod/AutoscaleAgent/web\n");
    let r = run(resetStep("web", ["web-1"], OWNER));
    assert.equal(r.status, 73, r.stderr);
    assert.match(
      r.stderr,
      /belongs to other\/prod\/AutoscaleAgent\/web now, not proj\/dev\/AutoscaleAgent\/web/,
    );
    assert.equal(r.stdout, "", "the agent was not run");
    // A marker's text is shown through a strict charset only.
    fs.writeFileSync(marker, "x$(id)`id` ts=1 event=forged\n");
    r = run(resetStep("web", ["web-1"], OWNER));
    assert.equal(r.status, 73, r.stderr);
    const shown = /belongs to (.*) now, not /.exec(r.stderr)?.[1] ?? "";
    assert.match(shown, /^[A-Za-z0-9_.%=/-]+$/, r.stderr);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    fs.writeFileSync(marker, `${OWNER}\n`);
    r = run(resetStep("web", ["web-1"], OWNER));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "agent ran\n");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("review 9b G3: the by-hand reset for an old agent waits for the group lock at most 60 s and gives back only a FAILED slot", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-asg-hand-"));
  try {
    fs.mkdirSync(path.join(root, "state"));
    fs.writeFileSync(path.join(root, "state", "web-0"), "running 1000\n");
    fs.writeFileSync(path.join(root, "state", "web-1"), "failed 1000\n");
    const cmd = handResetCommand(root, ["web-0", "web-1", "web-2"]);
    assert.match(cmd, /^flock -w 60 /);
    assert.ok(!cmd.includes("<member>"), "the slots are named");
    const r = spawnSync("sh", ["-c", cmd], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^reset web-1: FAILED -> stopped$/m);
    assert.match(r.stdout, /^web-0 is not FAILED: left as it is$/m);
    assert.ok(!fs.existsSync(path.join(root, "state", "web-1")), "web-1 is stopped (no state file)");
    assert.equal(fs.readFileSync(path.join(root, "state", "web-0"), "utf8"), "running 1000\n");
    assert.throws(() => handResetCommand(root, ["web-1; reboot"]), /not a plain name/);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
