/**
 * vxlanRedirectLines (provider/network.ts) run with bash over a fake `tc` that keeps each
 * device's ingress qdisc and filter as files: the redirect is retried when the qdisc is gone by
 * the time the filter is added (as a CI run of session 8 saw right after ovs-vswitchd made the
 * internal port), and fails with exit 23, naming both devices, when it never holds.
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
  "qdisc add") touch "$S/$4.qdisc"; exit 0 ;;
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

function run(lose: number): { code: number; stderr: string; state: string; adds: number } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-redir-"));
  try {
    const bin = path.join(dir, "bin");
    const state = path.join(dir, "state");
    fs.mkdirSync(bin);
    fs.mkdirSync(state);
    fs.writeFileSync(path.join(bin, "tc"), FAKE_TC, { mode: 0o755 });
    const script = ["set -e", "vx=kvlv-1", "vi=kvlq-1", ...vxlanRedirectLines()].join("\n");
    const r = spawnSync("bash", ["--noprofile", "--norc", "-c", script], {
      encoding: "utf8",
      env: {
        PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}`,
        KVT_STATE: state,
        KVT_LOSE: String(lose),
      },
    });
    const read = (f: string) =>
      fs.existsSync(path.join(state, f)) ? fs.readFileSync(path.join(state, f), "utf8") : "";
    return {
      code: r.status ?? -1,
      stderr: r.stderr,
      state: `${read("kvlv-1.filter")}${read("kvlq-1.filter")}`,
      adds: Number(read("lost") || 0),
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
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
