/**
 * The network diagnostics a sandbox test appends to its failure (test/support/diagnostics.ts):
 * run with bash over fake ovs-vsctl/ovs-ofctl/ip/tc that print far too much or fail, the script
 * reads every device it should (the VXLAN devices and the OVS internal ports: their ingress
 * filters are the redirect) and stays within its bounds.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { DIAG_COMMAND_BYTES, DIAG_HOST_BYTES, networkDiagnosticsScript } from "../../support/diagnostics";

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
        '  "--bare --columns=name") echo kvvi-a ;;',
        '  "show ") echo OVS-SHOW; exit 1 ;;',
        "esac",
      ].join("\n"),
      "ovs-ofctl": `echo "FLOWS $2"; ${LOTS}`,
      ip: [
        'if [ "$1 $2 $3 $4 $5" = "-o link show type vxlan" ]; then echo "7: kvvx-a@NONE: <UP> mtu 1450"; exit 0; fi',
        'echo "IP $*"',
      ].join("\n"),
      tc: 'echo "TC $*"; [ "$2" = filter ] && echo "action order 1: mirred (Egress Redirect to device kvvi-a) stolen"',
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
    for (const dev of ["kvvx-a", "kvvi-a"]) {
      assert.match(out, new RegExp(`## ip -s -d link show dev ${dev}\\n`), dev);
      assert.match(out, new RegExp(`## tc qdisc show dev ${dev}\\nTC qdisc show dev ${dev}`), dev);
      assert.match(out, new RegExp(`## tc -s filter show dev ${dev} ingress\\n[^#]*Egress Redirect`), dev);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
