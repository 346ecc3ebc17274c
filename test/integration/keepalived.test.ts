/**
 * The ACTIVE_STANDBY building block on its own: the keepalived.conf pair templates/keepalived.ts
 * renders, run by keepalived (no systemd: `--vrrp` with per-LB PID files) in two "amphora"
 * namespaces on one bridge, a client namespace holding the bridge, and a bounded request loop
 * (curl every 0.1 s, 1 s timeout) to the VIP while the active instance stops.
 *
 * Proves: the MASTER holds the VIP; stopping its keepalived (SIGTERM) moves the VIP to the
 * BACKUP; the death of the MASTER's "haproxy" (here busybox httpd, watched by the rendered check
 * script) moves it too; prints requests sent, failed and how long they failed; everything it
 * started goes (processes by PID, namespaces, PID files).
 *
 * Not the sandbox's VXLAN: both amphorae are on one machine's bridge (unicast VRRP is plain IP
 * protocol 112, the same over VXLAN). Namespaces kvlt-kpa/kvlt-kpb/kvlt-kpc, created and removed
 * here; traffic stays inside them. Run under the sandbox lock (it creates namespaces).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { renderKeepalivedConf } from "../../templates/keepalived";

const SCRIPT = String.raw`
P="$1"; MODE="$2"
set -e
ip netns add kvlt-kpc
ip netns exec kvlt-kpc ip link set lo up
ip netns exec kvlt-kpc ip link add br0 type bridge
ip netns exec kvlt-kpc ip link set br0 up
ip netns exec kvlt-kpc ip addr add 10.99.0.30/24 dev br0
for n in a b; do
  ip netns add kvlt-kp$n
  ip link add kp$n type veth peer name eth0 netns kvlt-kp$n
  ip link set kp$n netns kvlt-kpc
  ip netns exec kvlt-kpc ip link set kp$n master br0 up
  ip netns exec kvlt-kp$n ip link set lo up
  ip netns exec kvlt-kp$n ip link set eth0 up
  ip netns exec kvlt-kp$n ip addr add "$(cat $P/$n.addr)/24" dev eth0
  mkdir -p $P/www-$n; echo "hello from $n" > $P/www-$n/index.html
  ip netns exec kvlt-kp$n busybox httpd -f -p 80 -h $P/www-$n </dev/null >/dev/null 2>&1 & echo $! > $P/httpd-$n.pid
  printf '#!/bin/sh\nkill -0 "$(cat %s/httpd-%s.pid)"\n' $P $n > $P/check-$n.sh; chmod 755 $P/check-$n.sh
  ip netns exec kvlt-kp$n keepalived --vrrp -f $P/$n.conf -p $P/$n.pid -r $P/$n-vrrp.pid -c $P/$n-chk.pid
done
set +e
i=0; until ip netns exec kvlt-kpa ip -o -4 addr show dev eth0 | grep -q ' 10.99.0.50/'; do i=$((i+1)); [ $i -ge 100 ] && { echo "NO_MASTER"; break; }; sleep 0.1; done
echo "before a=$(ip netns exec kvlt-kpa ip -o -4 addr show dev eth0 | grep -c ' 10.99.0.50/') b=$(ip netns exec kvlt-kpb ip -o -4 addr show dev eth0 | grep -c ' 10.99.0.50/')"
( sleep 3; if [ "$MODE" = keepalived ]; then kill "$(cat $P/a.pid)"; else kill "$(cat $P/httpd-a.pid)"; fi ) & killer=$!
end=$(( $(date +%s) + 20 ))
while [ "$(date +%s)" -lt $end ]; do
  t=$(date +%s.%N)
  out=$(ip netns exec kvlt-kpc curl -s -m 1 http://10.99.0.50/) || out=FAILED
  echo "REQ $t $out"
  sleep 0.1
done
wait $killer
echo "after a=$(ip netns exec kvlt-kpa ip -o -4 addr show dev eth0 | grep -c ' 10.99.0.50/') b=$(ip netns exec kvlt-kpb ip -o -4 addr show dev eth0 | grep -c ' 10.99.0.50/')"
`;

const CLEANUP = String.raw`
P="$1"
for f in $P/a.pid $P/b.pid $P/httpd-a.pid $P/httpd-b.pid; do [ -f $f ] && kill "$(cat $f)" 2>/dev/null; done
for i in $(seq 50); do
  alive=0; for f in $P/a.pid $P/b.pid; do [ -f $f ] && kill -0 "$(cat $f)" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break; sleep 0.1
done
for n in a b c; do ip netns del kvlt-kp$n 2>/dev/null; done
ip netns list | grep -c '^kvlt-kp' || true
`;

function run(script: string, args: string[], timeoutMs: number): string {
  const r = spawnSync("bash", ["-c", script, "bash", ...args], { encoding: "utf8", timeout: timeoutMs });
  return `${r.stdout}${r.stderr}`;
}

for (const mode of ["keepalived", "haproxy"] as const) {
  test(`keepalived VRRP: stopping the active instance (${mode === "keepalived" ? "keepalived stops" : "its haproxy dies"}) moves the VIP`, () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvlt-kp-"));
    fs.chmodSync(dir, 0o755);
    try {
      for (const [n, role, src, peer] of [
        ["a", "MASTER", "10.99.0.51", "10.99.0.52"],
        ["b", "BACKUP", "10.99.0.52", "10.99.0.51"],
      ] as const) {
        fs.writeFileSync(path.join(dir, `${n}.addr`), src);
        fs.writeFileSync(
          path.join(dir, `${n}.conf`),
          renderKeepalivedConf({
            name: "itest-lb",
            role,
            interface: "eth0",
            virtualRouterId: 7,
            vrrpAddress: src,
            peerAddress: peer,
            vipAddress: "10.99.0.50",
            cidr: "10.99.0.0/24",
            authPass: "kvlt1",
            checkScript: path.join(dir, `check-${n}.sh`),
          }),
        );
      }
      let out = "";
      try {
        out = run(SCRIPT, [dir, mode], 60_000);
      } finally {
        const left = run(CLEANUP, [dir], 30_000).trim();
        assert.equal(left.split("\n").pop(), "0", `namespaces left: ${left}`);
      }
      assert.match(out, /before a=1 b=0/, `the MASTER holds the VIP first:\n${out.slice(0, 2000)}`);
      assert.match(out, /after a=0 b=1/, `the VIP moved to the BACKUP:\n${out.slice(-2000)}`);
      const reqs = out
        .split("\n")
        .filter((l) => l.startsWith("REQ "))
        .map((l) => {
          const [, t, ...body] = l.split(" ");
          return { t: Number(t), body: body.join(" ") };
        });
      const failed = reqs.filter((r) => r.body === "FAILED");
      const served = new Set(reqs.map((r) => r.body));
      assert.ok(served.has("hello from a") && served.has("hello from b"), [...served].join(", "));
      const span = failed.length === 0 ? 0 : failed[failed.length - 1].t + 1 - failed[0].t;
      console.log(
        `# ${mode} stop: requests sent ${reqs.length}, failed ${failed.length}, failing for ≤ ${span.toFixed(1)} s`,
      );
      // After the move every request is served by b.
      assert.equal(reqs[reqs.length - 1].body, "hello from b");
      // Bounded outage: Octavia's defaults (advert 1 s; check every 5 s, fall 2).
      assert.ok(span <= (mode === "keepalived" ? 3 : 13), `outage ${span} s`);
      const pids = ["a.pid", "b.pid", "a-vrrp.pid", "b-vrrp.pid"].filter((f) =>
        fs.existsSync(path.join(dir, f)),
      );
      assert.deepEqual(pids, [], "keepalived removes its PID files when it stops");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}
