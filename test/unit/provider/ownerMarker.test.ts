/**
 * Owner markers written safely (issue 15, second-reader review): the claim never leaves an
 * empty marker when it is killed half-way, the adopt path of guardStep does not clobber a marker
 * another owner wrote meanwhile, and an empty marker (left by an older kvmlab) is refused with
 * the fix instead of "belongs to , not to …". The real step scripts run in a local bash with
 * /var/lib/kvmlab mapped to a temporary folder; "crashes" and races are injected by shadowing a
 * command with a shell function.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { OWNER_REFUSED, claimStep, guardStep, ownerOf, type OwnedObject } from "../../../provider";

const ME = ownerOf({ pulumiProject: "lab", stack: "dev", type: "Network", name: "lan" });
const OTHER = ownerOf({ pulumiProject: "lab", stack: "prod", type: "Network", name: "lan" });
const NET: OwnedObject = { kind: "network", key: ["lan"], what: "network lan", field: "networkName" };

function runLocal(
  root: string,
  script: string,
  prelude = "",
): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(
    "bash",
    ["--noprofile", "--norc", "-c", `${prelude}\n${script.split("/var/lib/kvmlab").join(root)}`],
    { encoding: "utf8", env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } },
  );
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function withRoot(fn: (root: string, marker: string) => void): void {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-marker-"));
  try {
    fn(root, path.join(root, "owners", "network", "lan.owner"));
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

test("a claim killed while writing its marker leaves no marker, and the next claim succeeds", () => {
  withRoot((root, marker) => {
    // The write is killed after the file was opened and before a byte was written.
    const crash = runLocal(root, claimStep(NET, ME).script, "printf() { kill -9 $BASHPID; }");
    assert.notEqual(crash.code, 0);
    assert.ok(!fs.existsSync(marker) || fs.readFileSync(marker, "utf8") !== "", "no empty marker is left");
    const again = runLocal(root, claimStep(NET, ME).script);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stdout.trim(), "claimed");
    assert.equal(fs.readFileSync(marker, "utf8"), `${ME}\n`);
    assert.equal(fs.statSync(marker).mode & 0o777, 0o600);
    assert.deepEqual(
      fs.readdirSync(path.dirname(marker)).filter((f) => f !== "lan.owner"),
      [],
      "no temporary file is left beside the marker",
    );
  });
});

test("an empty marker is refused with the fix, by claim and by guard", () => {
  withRoot((root, marker) => {
    fs.mkdirSync(path.dirname(marker), { recursive: true });
    fs.writeFileSync(marker, "");
    for (const step of [claimStep(NET, ME), guardStep(NET, [ME])]) {
      const r = runLocal(root, step.script);
      assert.equal(r.code, OWNER_REFUSED, step.label);
      assert.match(r.stderr, /network lan: its owner marker is empty/);
      assert.match(r.stderr, new RegExp(`printf '%s\\\\n' '${ME}' > ${root}/owners/network/lan\\.owner`));
      assert.equal(fs.readFileSync(marker, "utf8"), "", "the marker is left alone");
    }
  });
});

test("guardStep's adopt path does not clobber a marker another owner wrote meanwhile", () => {
  withRoot((root, marker) => {
    // Another run claims the object between this guard's existence test and its write.
    const race = `chmod() { mkdir -p "$(dirname "$f")"; printf '%s\\n' '${OTHER}' > "$f"; command chmod "$@"; }`;
    const r = runLocal(root, guardStep(NET, [ME], true).script, race);
    assert.equal(r.code, OWNER_REFUSED, r.stdout);
    assert.match(r.stderr, new RegExp(`belongs to ${OTHER}`));
    assert.equal(fs.readFileSync(marker, "utf8"), `${OTHER}\n`, "the other owner's marker stays");
    // Without a race the adopt path writes this owner.
    fs.rmSync(marker);
    const ok = runLocal(root, guardStep(NET, [ME], true).script);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(fs.readFileSync(marker, "utf8"), `${ME}\n`);
  });
});

test("an update whose owner changed moves the marker to the new owner; the next delete passes, the old owner's is refused", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-owner-move-"));
  try {
    const NEW = ownerOf({
      pulumiProject: "lab",
      stack: "dev",
      type: "Network",
      name: "lan",
      project: "teama",
    });
    assert.equal(runLocal(root, claimStep(NET, ME).script).stdout.trim(), "claimed");
    // Update: new owner first, the old one accepted.
    assert.equal(runLocal(root, guardStep(NET, [NEW, ME], true).script).stdout.trim(), "moved");
    const marker = fs
      .readdirSync(path.join(root, "owners/network"))
      .map((f) => fs.readFileSync(path.join(root, "owners/network", f), "utf8"));
    assert.deepEqual(marker, [`${NEW}\n`], "one marker, naming the new owner, no temporary left");
    assert.equal(
      runLocal(root, guardStep(NET, [NEW]).script).stdout.trim(),
      "mine",
      "delete as the new owner",
    );
    assert.equal(runLocal(root, guardStep(NET, [ME]).script).code, OWNER_REFUSED, "the old owner no longer");
    assert.equal(runLocal(root, guardStep(NET, [NEW, ME]).script).stdout.trim(), "mine", "idempotent");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
