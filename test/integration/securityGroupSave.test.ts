/**
 * Security group goldens as `iptables-save` output (issue 10): per scenario, the provider's own
 * apply script (provider/securityGroup.ts portApplyStep: shared chains, `iptables-restore -n -w`
 * of the rendered ruleset, the zone allocated and substituted, the jumps from FORWARD, INPUT,
 * kvmlab-sg-chain and raw PREROUTING) runs inside a throwaway network namespace on this machine
 * (state folder in a temporary directory; ovs-vsctl stubbed: the namespace has no OVS), then
 * `iptables-save` (filter and raw, `#` lines dropped, counters zeroed) is compared with the
 * golden. Re-applying changes nothing; the delete script leaves the namespace's tables as they
 * were before. The ipset member set is checked the same way (`ipset save`). Needs root; touches
 * nothing outside the namespace and the temporary directory.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as cp from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { expectGolden } from "../unit/templates/support";
import {
  checkSecurityGroupPortInputs,
  normalizeRule,
  portApplyStep,
  portDeleteStep,
  type SecurityGroupPortInputs,
} from "../../provider";
import { DEFAULT_EGRESS, renderIpsetSwap } from "../../core/securityGroup";
import { testHost } from "../unit/provider/fixtures";

const NS = `kvsg-save-${process.pid}`;
let root = "";

function inNs(script: string): { code: number; stdout: string; stderr: string } {
  const r = cp.spawnSync(
    "ip",
    ["netns", "exec", NS, "bash", "-c", script.split("/var/lib/kvmlab").join(root)],
    {
      encoding: "utf8",
      timeout: 30_000,
    },
  );
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function ok(script: string): string {
  const r = inNs(script);
  assert.equal(r.code, 0, `${script.slice(0, 200)}…\n${r.stderr}`);
  return r.stdout;
}

/** iptables-save of filter and raw, without date comments, counters zeroed. */
function saved(): string {
  return ok("iptables-save -t filter; iptables-save -t raw")
    .split("\n")
    .filter((l) => !l.startsWith("#"))
    .map((l) => l.replace(/\[\d+:\d+\]/g, "[0:0]"))
    .join("\n");
}

before(() => {
  assert.equal(process.getuid?.(), 0, "this test needs root (ip netns, iptables)");
  root = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-sgsave-"));
  cp.execFileSync("ip", ["netns", "add", NS]);
  // The network's bridge the port's checks look for (a Linux bridge in the namespace).
  ok("ip link add kvlb-00000001 type bridge && ip link add kvlo-00000001 type bridge");
});

after(() => {
  cp.spawnSync("ip", ["netns", "del", NS]);
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

const WEB = [
  DEFAULT_EGRESS,
  normalizeRule({ direction: "ingress", protocol: "tcp", port: 80 }),
  normalizeRule({ direction: "ingress", protocol: "tcp", port: 443 }),
  normalizeRule({ direction: "ingress", protocol: "tcp", port: 22, remoteGroup: "bastion" }),
  normalizeRule({ direction: "ingress", protocol: "icmp", remoteCidr: "10.0.0.0/8" }),
  normalizeRule({ direction: "ingress", protocol: "udp", portMin: 5000, portMax: 5010 }),
];

function port(over: Record<string, unknown>): SecurityGroupPortInputs {
  const r = checkSecurityGroupPortInputs({
    portName: "web1-0",
    hosts: [testHost("hv1", 1)],
    host: "hv1",
    tap: "tap1a2b3c4d",
    mac: "fa:16:3e:00:00:01",
    ip: "10.10.1.5",
    driver: "openvswitch",
    networkBridge: "kvlo-00000001",
    groups: [{ groupName: "web", rules: WEB }],
    ...over,
  });
  assert.deepEqual(r.failures, []);
  return r.inputs as unknown as SecurityGroupPortInputs;
}

/** The provider's apply script as the host runs it (after the upload of rules.v4.new). */
function apply(p: SecurityGroupPortInputs): void {
  const dir = path.join(root, "ports", p.tap);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "rules.v4.new"), p.ruleset);
  ok(['ovs-vsctl() { [ "$1" != port-to-br ]; }', portApplyStep(p, []).script].join("\n"));
}

function remove(p: SecurityGroupPortInputs): void {
  ok(["ovs-vsctl() { :; }", portDeleteStep(p).script].join("\n"));
}

test("the bastion group's ipset: `ipset restore` accepts the swap input; `ipset save` matches the golden", () => {
  ok(`ipset restore <<'EOF'\n${renderIpsetSwap("bastion", ["10.10.9.7", "10.10.9.3"])}EOF`);
  // The hash seed (initval) is random per set, and so is the order of a hash set's members:
  // the seed is zeroed like counters and the members sorted.
  const [create, ...members] = ok("ipset save")
    .replace(/ initval 0x[0-9a-f]+/, " initval 0x0")
    .split("\n")
    .filter((l) => l !== "");
  expectGolden("secgroup/save-ipset-bastion.txt", [create, ...members.sort()].join("\n") + "\n");
});

for (const [name, over] of [
  ["save-port-web-ovs-hybrid.v4", {}],
  [
    "save-port-ssh-only-linuxbridge.v4",
    {
      driver: "linuxbridge",
      networkBridge: "kvlb-00000001",
      tap: "tap5e6f7a8b",
      groups: [{ groupName: "ssh", rules: [WEB[3]] }],
    },
  ],
] as [string, Record<string, unknown>][]) {
  test(`${name}: iptables accepts the port's apply; iptables-save matches the golden; re-apply is a no-op; delete restores the tables`, () => {
    const pristine = saved();
    const p = port(over);
    apply(p);
    const once = saved();
    expectGolden(`secgroup/${name}`, once);
    apply(p);
    assert.equal(saved(), once, "applying again adds nothing");
    remove(p);
    assert.equal(
      saved(),
      pristine,
      "delete leaves the tables as before (the shared chains go with the last port)",
    );
    assert.deepEqual(
      fs.readdirSync(root).filter((f) => f === "ctzones"),
      [],
      "the zone record is gone",
    );
  });
}
