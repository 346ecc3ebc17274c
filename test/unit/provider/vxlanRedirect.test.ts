/**
 * vxlanRedirectLines (provider/network.ts) run with bash over a fake `tc` that keeps each
 * device's ingress qdisc and filter as files: the redirect is retried when the qdisc is gone by
 * the time the filter is added (as a CI run of session 8 saw right after ovs-vswitchd made the
 * internal port), and fails with exit 23, naming both devices, when it never holds.
 *
 * A fake `ovs-vsctl` plays ovs-vswitchd's policing pass: while a link change of the internal port
 * is pending (the file `pending`), a reconfigure removes that port's ingress qdisc. A pass still
 * pending when the lines end runs after them, as ovs-vswitchd catching up on a loaded host
 * (session 9's second CI: the redirect read back, then gone, the guest got no DHCP lease).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { vxlanRedirectLines } from "../../../provider/network";

/** A fake tc: `lose` filter adds find their qdisc gone (exit 2, tc's message), then they work. */
const FAKE_TC = `#!/bin/bash
S="$KVT_STATE"
case "$1 $2" in
  "filter show") cat "$S/$4.filter" 2>/dev/null; exit 0 ;;
  "qdisc del") [ -e "$S/$4.qdisc" ] || exit 2; rm -f "$S/$4.qdisc" "$S/$4.filter"; exit 0 ;;
  "qdisc add") touch "$S/$4.qdisc"; echo "qdisc add $4" >> "$S/events"; exit 0 ;;
  "filter add")
    n=$(cat "$S/lost" 2>/dev/null || echo 0)
    if [ "$n" -lt "$KVT_LOSE" ]; then
      echo $((n + 1)) > "$S/lost"; rm -f "$S/$4.qdisc"
      echo "Error: Parent Qdisc doesn't exists." >&2; echo "We have an error talking to the kernel" >&2; exit 2
    fi
    [ -e "$S/$4.qdisc" ] || exit 2
    echo "action order 1: mirred (Egress Redirect to device \${@: -1}) stolen" > "$S/$4.filter"; exit 0 ;;
esac
exit 1
`;

/**
 * A fake ovs-vsctl: each `set` that changes the key's value is a reconfigure (a `set` to the value
 * the row already holds changes nothing, and ovs-vsctl then waits for no reconfigure). It runs
 * the policing pass when a link change of $vi is pending (removes $vi's ingress qdisc and filter;
 * logged as `pass` in events), and counts down `wipes`: a link change that comes again after the
 * pass (each `set` while wipes > 0 leaves the pass pending again). With the file `timeout`, a
 * `set` commits and then times out (exit 1, the key stays), as ovs-vsctl --timeout on a loaded host.
 */
const FAKE_OVS_VSCTL = `#!/bin/bash
S="$KVT_STATE"
echo "$*" >> "$S/ovs-vsctl.log"
[ "$1" = --timeout=10 ] || exit 1
if [ "$2" = set ]; then
  v=\${5#external_ids:kvmlab-settle=}
  [ "$v" != "$(cat "$S/settle-key" 2>/dev/null)" ] || exit 0
  echo "$v" > "$S/settle-key"
  if [ -e "$S/pending" ]; then rm -f "$S/pending" "$S/$4.qdisc" "$S/$4.filter"; echo pass >> "$S/events"; fi
  w=$(cat "$S/wipes" 2>/dev/null || echo 0)
  if [ "$w" -gt 0 ]; then echo $((w - 1)) > "$S/wipes"; touch "$S/pending"; fi
  [ ! -e "$S/timeout" ] || exit 1
fi
[ "$2" != remove ] || rm -f "$S/settle-key"
exit 0
`;

/** A fresh state folder for run(): fake tools and ovs-vswitchd's state. */
function stateDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-redir-"));
  fs.mkdirSync(path.join(dir, "bin"));
  fs.mkdirSync(path.join(dir, "state"));
  fs.writeFileSync(path.join(dir, "bin", "tc"), FAKE_TC, { mode: 0o755 });
  fs.writeFileSync(path.join(dir, "bin", "ovs-vsctl"), FAKE_OVS_VSCTL, { mode: 0o755 });
  return dir;
}

function run(
  lose: number,
  vswitchd: { pending?: boolean; wipes?: number; timeout?: boolean } = {},
  reuse?: string,
): { code: number; stderr: string; state: string; adds: number; settles: number; events: string[] } {
  const dir = reuse ?? stateDir();
  try {
    const bin = path.join(dir, "bin");
    const state = path.join(dir, "state");
    for (const f of ["ovs-vsctl.log", "events", "lost", "timeout"])
      fs.rmSync(path.join(state, f), { force: true });
    if (vswitchd.pending) fs.writeFileSync(path.join(state, "pending"), "");
    if (vswitchd.timeout) fs.writeFileSync(path.join(state, "timeout"), "");
    fs.writeFileSync(path.join(state, "wipes"), String(vswitchd.wipes ?? 0));
    const script = ["set -e", "vx=kvlv-1", "vi=kvlq-1", ...vxlanRedirectLines()].join("\n");
    const r = spawnSync("bash", ["--noprofile", "--norc", "-c", script], {
      encoding: "utf8",
      env: {
        PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}`,
        KVT_STATE: state,
        KVT_LOSE: String(lose),
      },
    });
    // ovs-vswitchd catches up after the lines: a pass still pending removes $vi's ingress.
    if (fs.existsSync(path.join(state, "pending")))
      for (const f of ["kvlq-1.qdisc", "kvlq-1.filter"]) fs.rmSync(path.join(state, f), { force: true });
    const read = (f: string) =>
      fs.existsSync(path.join(state, f)) ? fs.readFileSync(path.join(state, f), "utf8") : "";
    const log = read("ovs-vsctl.log");
    return {
      code: r.status ?? -1,
      stderr: r.stderr,
      state: `${read("kvlv-1.filter")}${read("kvlq-1.filter")}`,
      adds: Number(read("lost") || 0),
      settles: log
        .split("\n")
        .filter((l) => l.startsWith("--timeout=10 set interface kvlq-1 external_ids:kvmlab-settle=")).length,
      events: read("events").split("\n").filter(Boolean),
    };
  } finally {
    if (reuse === undefined) fs.rmSync(dir, { recursive: true, force: true });
  }
}

test("VXLAN redirect (userspace datapath): set both ways at once when tc works", () => {
  const r = run(0);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.state, /Egress Redirect to device kvlq-1\)/);
  assert.match(r.state, /Egress Redirect to device kvlv-1\)/);
});

test("VXLAN redirect: a qdisc gone before its filter is added is set again (bounded retry), and both redirects hold", () => {
  const r = run(3);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.adds, 3, "three filter adds lost their qdisc");
  assert.match(r.state, /Egress Redirect to device kvlq-1\)/);
  assert.match(r.state, /Egress Redirect to device kvlv-1\)/);
});

test("VXLAN redirect: a redirect that never holds fails with exit 23 naming both devices, after 5 tries", () => {
  const r = run(100);
  assert.equal(r.code, 23, r.stderr);
  assert.match(r.stderr, /cannot redirect the ingress of kvlv-1 to kvlq-1 \(tc, 5 tries\)/);
  assert.equal(r.adds, 5, "five tries, no more");
});

test("VXLAN redirect: a policing pass ovs-vswitchd still owes the internal port runs before the redirect is added, so the redirect outlives it", () => {
  const r = run(0, { pending: true });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.state, /Egress Redirect to device kvlq-1\)/);
  assert.match(
    r.state,
    /Egress Redirect to device kvlv-1\)/,
    "the internal port still redirects to the VXLAN device",
  );
  assert.equal(r.settles, 2, "settled before the redirect and once after it");
});

test("VXLAN redirect: a redirect ovs-vswitchd removed after it was added is added again, and the lines end only when it held through a reconfigure", () => {
  const r = run(0, { pending: true, wipes: 1 });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.state, /Egress Redirect to device kvlv-1\)/);
  assert.equal(
    r.settles,
    3,
    "one settle before, one after each of two rounds (the first one's redirect removed)",
  );
});

test("VXLAN redirect: one ovs-vswitchd removes after every round fails with exit 23 after 3 rounds", () => {
  const r = run(0, { pending: true, wipes: 100 });
  assert.equal(r.code, 23, r.stderr);
  assert.match(
    r.stderr,
    /cannot redirect the ingress of kvlq-1 to kvlv-1: ovs-vswitchd removed it again after each of 3 tries/,
  );
  assert.equal(r.settles, 4);
});

test("VXLAN redirect: a settle whose set timed out (key left on the row) does not make the next run's first settle a no-change write: the pending pass still runs before the redirect is added", () => {
  const dir = stateDir();
  try {
    const first = run(0, { timeout: true }, dir);
    assert.equal(first.code, 23, first.stderr);
    assert.match(first.stderr, /ovs-vswitchd did not reconfigure within 10 s/);
    assert.ok(fs.existsSync(path.join(dir, "state", "settle-key")), "the timed-out settle left its key");
    const r = run(0, { pending: true }, dir);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      r.events.slice(0, 2),
      ["pass", "qdisc add kvlv-1"],
      `the first settle made ovs-vswitchd reconfigure (its policing pass) before any redirect: ${r.events.join(", ")}`,
    );
    assert.equal(r.settles, 2, "one round: settled before the redirect and once after it");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
