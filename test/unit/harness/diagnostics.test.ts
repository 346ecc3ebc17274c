/**
 * The network diagnostics a sandbox test appends to its failure (test/support/diagnostics.ts):
 * run with bash over fake ovs-vsctl/ovs-ofctl/ip/tc that print far too much or fail, the script
 * reads every device it should (the VXLAN devices and kvmlab's OVS internal ports, kvli-*, even
 * behind many bridge ports: their ingress filters are the redirect) and stays within its bounds;
 * with many devices, each subnet's dnsmasq state, leases and hosts (what a no-lease failure needs)
 * are still kept.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import {
  DIAG_COMMAND_BYTES,
  DIAG_DEVICE_BYTES,
  DIAG_HOST_BYTES,
  networkDiagnosticsScript,
} from "../../support/diagnostics";

function fakes(dir: string, tools: Record<string, string>): void {
  for (const [name, body] of Object.entries(tools)) {
    const f = path.join(dir, name);
    fs.writeFileSync(f, `#!/bin/bash\n${body}\n`);
    fs.chmodSync(f, 0o755);
  }
}

const LOTS = "head -c 20000 /dev/zero | tr '\\0' x";

test("network diagnostics: every VXLAN device and internal port read, each command and the host bounded, failures do not stop it", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-diag-"));
  try {
    fakes(dir, {
      "ovs-vsctl": [
        'case "$1 $2" in',
        '  "list-br ") echo kvbr-a; echo kvbr-b ;;',
        // As ovs-vsctl --bare: a blank line between records, the bridges' own ports first.
        '  "--bare --columns=name") for i in $(seq 15); do echo kvbr-$i; echo; done; echo kvli-a ;;',
        '  "show ") echo OVS-SHOW; exit 1 ;;',
        "esac",
      ].join("\n"),
      "ovs-ofctl": `echo "FLOWS $2"; ${LOTS}`,
      ip: [
        'if [ "$1 $2 $3 $4 $5" = "-o link show type vxlan" ]; then echo "7: kvvx-a@NONE: <UP> mtu 1450"; exit 0; fi',
        'echo "IP $*"',
      ].join("\n"),
      tc: 'echo "TC $*"; [ "$2" = filter ] && echo "action order 1: mirred (Egress Redirect to device kvli-a) stolen"',
    });
    const r = spawnSync("bash", ["-c", networkDiagnosticsScript()], {
      encoding: "utf8",
      env: { PATH: `${dir}:/usr/bin:/bin` },
      timeout: 30_000,
    });
    assert.equal(r.status, 0, r.stderr);
    const out = r.stdout;
    assert.ok(out.length <= DIAG_HOST_BYTES, `host output bounded: ${out.length}`);
    assert.match(
      out,
      /## ovs-vsctl show\nOVS-SHOW/,
      "a failing command's output is kept and the script goes on",
    );
    assert.match(out, /## ovs-ofctl dump-flows kvbr-a\nFLOWS kvbr-a/);
    const flows = out.split("## ovs-ofctl dump-flows kvbr-a\n")[1].split("\n## ")[0];
    assert.ok(flows.length <= DIAG_COMMAND_BYTES + 1, `one command's output bounded: ${flows.length}`);
    for (const dev of ["kvvx-a", "kvli-a"]) {
      assert.match(out, new RegExp(`## ip -s -d link show dev ${dev}\\n`), dev);
      assert.match(out, new RegExp(`## tc qdisc show dev ${dev}\\nTC qdisc show dev ${dev}`), dev);
      assert.match(out, new RegExp(`## tc -s filter show dev ${dev} ingress\\n[^#]*Egress Redirect`), dev);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("network diagnostics: with more devices than the host's bytes hold, each subnet's dnsmasq, leases and hosts are kept, and come before the devices", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-diag-"));
  try {
    const bin = path.join(dir, "bin");
    const sub = path.join(dir, "state", "dhcp", "net1", "sub1");
    fs.mkdirSync(bin);
    fs.mkdirSync(sub, { recursive: true });
    fs.writeFileSync(path.join(sub, "dnsmasq.pid"), "999999999\n");
    fs.writeFileSync(path.join(sub, "dnsmasq.leases"), "LEASE 52:54:00:00:00:01 10.0.0.5 sga\n");
    fs.writeFileSync(path.join(sub, "hosts"), "HOST 52:54:00:00:00:01,10.0.0.5,sga\n");
    fakes(bin, {
      "ovs-vsctl":
        'case "$1 $2" in "--bare --columns=name") for i in $(seq 20); do echo kvli-$i; echo; done ;; esac',
      ip: [
        'if [ "$1 $2 $3 $4 $5" = "-o link show type vxlan" ]; then',
        '  for i in $(seq 20); do echo "$i: kvvx-$i@NONE: <UP> mtu 1450"; done; exit 0',
        "fi",
        `echo "IP $*"; ${LOTS}`,
      ].join("\n"),
      tc: `echo "TC $*"; ${LOTS}`,
    });
    const r = spawnSync("bash", ["-c", networkDiagnosticsScript(path.join(dir, "state"))], {
      encoding: "utf8",
      env: { PATH: `${bin}:/usr/bin:/bin` },
      timeout: 60_000,
    });
    assert.equal(r.status, 0, r.stderr);
    const out = r.stdout;
    assert.ok(out.length <= DIAG_HOST_BYTES, `host output bounded: ${out.length}`);
    assert.match(out, /dnsmasq pid 999999999: not running/);
    assert.match(out, /# leases\nLEASE 52:54:00:00:00:01 10\.0\.0\.5 sga/);
    assert.match(out, /# hosts\nHOST 52:54:00:00:00:01,10\.0\.0\.5,sga/);
    const devices = out.indexOf("## ip -s -d link show dev kvvx-1\n");
    assert.ok(devices > out.indexOf("# hosts"), "the DHCP section comes first");
    assert.ok(out.length - devices <= DIAG_DEVICE_BYTES + 1000, "the devices kept to their own budget");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
