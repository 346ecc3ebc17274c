/**
 * SecurityGroup and SecurityGroupPort: the port ruleset and the ipset swap against goldens
 * (Neutron's order, anti-spoofing, zones, remote groups), check refusals naming the field with no
 * host reached, diff (rule changes are updates, drift), conntrack cleanup of a revoked rule,
 * step text, serialization.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { assertSerializable } from "../../harness/serialization";
import { expectGolden } from "../templates/support";
import { testHost } from "./fixtures";
import {
  checkSecurityGroupInputs,
  checkSecurityGroupPortInputs,
  conntrackDeleteArgs,
  diffSecurityGroupPort,
  hostPoolStats,
  normalizeRule,
  portApplyStep,
  portDeleteStep,
  removedRules,
  securityGroupPortOwned,
  securityGroupPortProvider,
  securityGroupProvider,
  tapServerOwnerStep,
  zoneAllocateLines,
  type SecurityGroupInputs,
  type SecurityGroupPortInputs,
  type SecurityGroupPortOutputs,
} from "../../../provider";
import {
  DEFAULT_EGRESS,
  portFirewallChains,
  renderIpsetSwap,
  renderPortFirewall,
  securityGroupSet,
} from "../../../core/securityGroup";

const HOSTS = [testHost("hv1", 1)];
const WEB = [
  normalizeRule({ direction: "ingress", protocol: "tcp", port: 80 }),
  normalizeRule({ direction: "ingress", protocol: "tcp", port: 443 }),
  normalizeRule({ direction: "ingress", protocol: "tcp", port: 22, remoteGroup: "bastion" }),
  normalizeRule({ direction: "ingress", protocol: "icmp", remoteCidr: "10.0.0.0/8" }),
  normalizeRule({ direction: "ingress", protocol: "udp", portMin: 5000, portMax: 5010 }),
];

function portRaw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    portName: "web1-0",
    hosts: HOSTS,
    host: "hv1",
    tap: "tap1a2b3c4d",
    mac: "fa:16:3e:00:00:01",
    ip: "10.10.1.5",
    driver: "openvswitch",
    networkBridge: "kvlb-00000001",
    groups: [
      { groupName: "web", rules: [DEFAULT_EGRESS, ...WEB] },
      { groupName: "default", rules: [DEFAULT_EGRESS] },
    ],
    ...over,
  };
}

test("port ruleset and ipset swap match their goldens, in Neutron's order", () => {
  const base = {
    portName: "web1-0",
    tap: "tap1a2b3c4d",
    mac: "fa:16:3e:00:00:01",
    ip: "10.10.1.5",
    emptyGroups: [],
  };
  const ovs = renderPortFirewall({
    ...base,
    zoneBridge: "qbr0a0b0c0d",
    zone: 4242,
    rules: [DEFAULT_EGRESS, ...WEB, DEFAULT_EGRESS],
  });
  expectGolden("secgroup/port-web-ovs-hybrid.rules", ovs);
  expectGolden(
    "secgroup/port-ssh-only-linuxbridge.rules",
    renderPortFirewall({ ...base, zoneBridge: "kvlb-00000001", zone: 5000, rules: [WEB[2]] }),
  );
  expectGolden("secgroup/ipset-bastion.restore", renderIpsetSwap("bastion", ["10.10.9.7", "10.10.9.3"]));
  const lines = ovs.split("\n");
  const i = (re: RegExp): number => lines.findIndex((l) => re.test(l));
  assert.ok(i(/-A kvmlab-i.* RELATED,ESTABLISHED/) < i(/-A kvmlab-i.*--dport 80/));
  assert.ok(i(/-A kvmlab-i.*--dport 80/) < i(/-A kvmlab-i.*INVALID/));
  assert.ok(i(/-A kvmlab-i.*INVALID/) < i(/-A kvmlab-i.*kvmlab-sg-fallback/));
  assert.equal(
    lines.filter((l) => /^-A kvmlab-o.* -j RETURN$/.test(l) && /security group rule/.test(l)).length,
    1,
    "egress-any deduplicated",
  );
  assert.match(
    ovs,
    new RegExp(`-p tcp -m tcp --dport 22 -m set --match-set ${securityGroupSet("bastion")} src`),
  );
  assert.match(ovs, /-s 10\.10\.1\.5\/32 -m mac --mac-source fa:16:3e:00:00:01 .* -j RETURN/);
  assert.match(ovs, /-i qbr0a0b0c0d .* -j CT --zone 4242/);
  assert.throws(
    () => renderPortFirewall({ ...base, ip: "10.0.0.1 -j ACCEPT", zoneBridge: "x", zone: 1, rules: [] }),
    /ip/,
  );
  // An amphora's port: its VRRP address, and the VIP as an allowed address pair (same MAC).
  const amphora = renderPortFirewall({
    ...base,
    ip: "10.10.1.61",
    allowedAddresses: ["10.10.1.60", "10.10.1.61"],
    zoneBridge: "kvlb-00000001",
    zone: 5000,
    rules: [WEB[0]],
  });
  expectGolden("secgroup/port-amphora-address-pair.rules", amphora);
  const spoof = amphora.split("\n").filter((l) => /^-A kvmlab-s/.test(l));
  assert.equal(spoof.length, 3, "own address, one pair (the duplicate of the own address dropped), drop");
  assert.match(
    spoof[1],
    /-s 10\.10\.1\.60\/32 -m mac --mac-source fa:16:3e:00:00:01 .*allowed address pair.* -j RETURN/,
  );
  assert.match(spoof[2], /-j DROP$/);
  assert.throws(
    () =>
      renderPortFirewall({
        ...base,
        allowedAddresses: ["10.0.0.1/0"],
        zoneBridge: "kvlb-00000001",
        zone: 1,
        rules: [],
      }),
    /allowedAddresses\[0\]/,
  );
});

test("check: defaults, derived ruleset, refusals naming the field, no host reached", () => {
  const before = JSON.stringify(hostPoolStats());
  const g = checkSecurityGroupInputs({
    groupName: "web",
    hosts: HOSTS,
    rules: [{ direction: "ingress", protocol: "tcp", port: 80 }],
  });
  assert.deepEqual(g.failures, []);
  const gi = g.inputs as unknown as SecurityGroupInputs;
  assert.deepEqual(gi.rules[0], DEFAULT_EGRESS, "Neutron's default egress rule comes first");
  assert.match(gi.ipset, /swap kvmlab-g[0-9a-f]{8}-n kvmlab-g[0-9a-f]{8}/);
  for (const [raw, field] of [
    [{ groupName: "web;x" }, "groupName"],
    [{ rules: [{ direction: "in" }] }, "rules[0]"],
    [{ rules: [{ direction: "ingress", protocol: "tcp", port: 70000 }] }, "rules[0]"],
    [{ rules: [{ direction: "ingress", remoteCidr: "10.0.0.0/8 -j ACCEPT" }] }, "rules[0]"],
    [{ rules: [{ direction: "ingress", remoteGroup: "$(id)" }] }, "rules[0]"],
    [{ members: ["10.0.0.1; reboot"] }, "members[0]"],
  ] as [Record<string, unknown>, string][]) {
    const f = checkSecurityGroupInputs({ groupName: "web", hosts: HOSTS, ...raw }).failures;
    assert.ok(
      f.some((x) => x.property === field),
      `${field}: ${JSON.stringify(f)}`,
    );
  }
  const p = checkSecurityGroupPortInputs(portRaw());
  assert.deepEqual(p.failures, []);
  assert.match((p.inputs as { ruleset: string }).ruleset, /--physdev|-j CT --zone/);
  for (const [raw, field] of [
    [{ tap: "tap x" }, "tap"],
    [{ mac: "FA:16" }, "mac"],
    [{ ip: "10.0.0.1/32 -j ACCEPT" }, "ip"],
    [{ driver: "nft" }, "driver"],
    [{ host: "hv9" }, "host"],
    [{ allowedAddresses: ["10.0.0.9 -j ACCEPT"] }, "allowedAddresses[0]"],
    [{ allowedAddresses: "10.0.0.9" }, "allowedAddresses"],
    [{ groups: [{ groupName: "a'b", rules: [] }] }, "groups[0].groupName"],
  ] as [Record<string, unknown>, string][]) {
    const f = checkSecurityGroupPortInputs(portRaw(raw)).failures;
    assert.ok(
      f.some((x) => x.property === field),
      `${field}: ${JSON.stringify(f)}`,
    );
  }
  assert.equal(JSON.stringify(hostPoolStats()), before, "check reached no host");
});

test("port diff: group rule changes are updates; drift; a revoked rule's flows are deleted by conntrack", () => {
  const news = checkSecurityGroupPortInputs(portRaw()).inputs as unknown as SecurityGroupPortInputs;
  const olds = {
    ...news,
    portBridge: "",
    zone: 4242,
    hostKeys: {},
    realized: { rules: "sync", jumps: 6, hybrid: "yes" },
  } as SecurityGroupPortOutputs;
  assert.equal(diffSecurityGroupPort(olds, news).changes, false);
  const fewer = checkSecurityGroupPortInputs(
    portRaw({ groups: [{ groupName: "web", rules: [DEFAULT_EGRESS, ...WEB.slice(1)] }] }),
  ).inputs as unknown as SecurityGroupPortInputs;
  const d = diffSecurityGroupPort(olds, fewer);
  assert.deepEqual(d.replaces, []);
  assert.equal(d.changes, true);
  assert.equal(
    diffSecurityGroupPort({ ...olds, realized: { ...olds.realized, rules: "drift" } }, news).changes,
    true,
  );
  const removed = removedRules(news, fewer);
  assert.deepEqual(removed, [WEB[0]]);
  assert.equal(conntrackDeleteArgs(WEB[0], "10.10.1.5", 4242), "-w 4242 -d 10.10.1.5 -p tcp --dport 80");
  assert.match(
    portApplyStep(fewer, removed).script,
    /conntrack -D -w \$zone -d 10\.10\.1\.5 -p tcp --dport 80/,
  );
  const apply = portApplyStep(news, []).script;
  assert.match(apply, /iptables-restore -n -w < "\$f\.new"/);
  assert.match(apply, /ovs-vsctl --may-exist add-port kvlb-00000001 qvo/);
  assert.match(apply, /bridge-nf-call-iptables=1/);
  const del = portDeleteStep(news).script;
  assert.match(del, /-X \$ch/);
  // The hybrid plumbing goes only when this port made it (else it is the Server's).
  assert.match(
    del,
    /if \[ -e \S+\/hybrid\.made \]; then ovs-vsctl --if-exists del-port qvo\S+; ip link del qvb/,
  );
});

test("security group providers serialize without captured modules or secrets", async () => {
  for (const p of [securityGroupProvider, securityGroupPortProvider])
    await assertSerializable(p, {
      forbid: [/handlebars/i, /require\("yaml"\)/, /\.hbs\b/, /templates\//],
      methods: ["check", "diff", "create", "read", "update", "delete"],
      maxBytes: 256 * 1024,
    });
});

/** Runs a host script locally with kvmlab's state folder moved under `root` (no host reached). */
function runLocally(root: string, script: string): { code: number; stdout: string; stderr: string } {
  const cp: typeof import("node:child_process") = require("node:child_process");
  const r = cp.spawnSync("bash", ["-c", script.split("/var/lib/kvmlab").join(root)], { encoding: "utf8" });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function tmpRoot(): string {
  const fs: typeof import("node:fs") = require("node:fs");
  const os: typeof import("node:os") = require("node:os");
  const path: typeof import("node:path") = require("node:path");
  return fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-sg-"));
}

test("conntrack zones are allocated on the host: a zone per OVS port, one per Linux bridge network, freed with the last user", () => {
  const fs: typeof import("node:fs") = require("node:fs");
  const root = tmpRoot();
  try {
    const alloc = (bridge: string, tap: string): number => {
      const r = runLocally(root, ["set -e", ...zoneAllocateLines(bridge, tap), "echo $zone"].join("\n"));
      assert.equal(r.code, 0, r.stderr);
      return Number(r.stdout.trim());
    };
    const a = alloc("qbr1a2b3c4d", "tap1a2b3c4d");
    const b = alloc("qbr9f8e7d6c", "tap9f8e7d6c");
    const lb1 = alloc("kvlb-00000001", "tapaaaa");
    const lb2 = alloc("kvlb-00000001", "tapbbbb");
    assert.deepEqual([a, b, lb1], [4097, 4098, 4099], "distinct, lowest free first");
    assert.equal(lb2, lb1, "ports of one Linux bridge network share its zone");
    assert.equal(alloc("qbr1a2b3c4d", "tap1a2b3c4d"), a, "re-applying keeps the zone");
    // Deleting the first OVS port frees its zone; the next new port gets it, never a used one.
    const del = (tap: string, bridge: string, driver: "openvswitch" | "linuxbridge"): void => {
      const s = portDeleteStep({ portName: "p", tap, driver, networkBridge: bridge, ip: "10.0.0.5" }).script;
      const r = runLocally(
        root,
        [
          "iptables() { return 1; }; conntrack() { :; }; ovs-vsctl() { :; }",
          ...s.split("\n").filter((l) => !/^\s*(rm -rf|rmdir) .*\/ports/.test(l)),
        ].join("\n"),
      );
      assert.equal(r.code, 0, r.stderr);
    };
    del("tap1a2b3c4d", "kvlo-1", "openvswitch");
    assert.equal(
      fs.existsSync(`${root}/ctzones/4097.zone`),
      false,
      "the zone record went with its only port",
    );
    del("tapaaaa", "kvlb-00000001", "linuxbridge");
    assert.equal(
      fs.existsSync(`${root}/ctzones/4099.zone`),
      true,
      "still used by the other port of the network",
    );
    assert.equal(alloc("qbrcafe0001", "tapcafe0001"), 4097);
    assert.equal(alloc("qbrcafe0002", "tapcafe0002"), 4100);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("a port's firewall is owned by its tap: chains, folder and marker follow the tap, and a tap of another stack's server is refused", () => {
  const fs: typeof import("node:fs") = require("node:fs");
  const a = portFirewallChains("tap1a2b3c4d");
  const p1 = checkSecurityGroupPortInputs(portRaw({ portName: "one" })).inputs as { ruleset: string };
  const p2 = checkSecurityGroupPortInputs(portRaw({ portName: "two" })).inputs as { ruleset: string };
  for (const p of [p1, p2]) assert.ok(p.ruleset.includes(`:${a.ingress} `), "the chains are the tap's");
  assert.deepEqual(securityGroupPortOwned("tap1a2b3c4d").key, ["tap1a2b3c4d"]);
  assert.match(p1.ruleset, /-j CT --zone @ZONE@/, "the zone is allocated on the host");
  const root = tmpRoot();
  try {
    fs.mkdirSync(`${root}/instances/web1`, { recursive: true });
    fs.mkdirSync(`${root}/owners/server`, { recursive: true });
    fs.writeFileSync(
      `${root}/instances/web1/domain.xml`,
      "<interface type='bridge'><target dev='tap1a2b3c4d'/>",
    );
    fs.writeFileSync(`${root}/owners/server/web1.owner`, "lab/prod/Server/web1\n");
    const mine = runLocally(
      root,
      tapServerOwnerStep("tap1a2b3c4d", "lab/prod/SecurityGroupPort/web1-port0").script,
    );
    assert.equal(mine.code, 0, mine.stderr);
    const other = runLocally(root, tapServerOwnerStep("tap1a2b3c4d", "lab/dev/SecurityGroupPort/x").script);
    assert.equal(other.code, 73);
    assert.match(
      other.stderr,
      /device tap1a2b3c4d is a port of server web1, which belongs to lab\/prod\/Server\/web1/,
    );
    // Instance folders are keyed by the server's UUID (issue 15): the server is the domain the
    // XML names, not the folder.
    const uuidDir = `${root}/instances/6f1e1d9a-3b1c-4a57-9a39-8d3a3f0e6b11`;
    fs.mkdirSync(uuidDir, { recursive: true });
    fs.writeFileSync(
      `${uuidDir}/domain.xml`,
      "<domain type='qemu'>\n  <name>db1</name>\n  <devices>\n    <interface type='bridge'><target dev='tap5e6f7a8b'/>\n",
    );
    fs.writeFileSync(`${root}/owners/server/db1.owner`, "lab/prod/Server/db1\n");
    const byUuid = runLocally(root, tapServerOwnerStep("tap5e6f7a8b", "lab/dev/SecurityGroupPort/x").script);
    assert.equal(byUuid.code, 73, byUuid.stderr);
    assert.match(
      byUuid.stderr,
      /device tap5e6f7a8b is a port of server db1, which belongs to lab\/prod\/Server\/db1/,
    );
    assert.equal(
      runLocally(root, tapServerOwnerStep("tap5e6f7a8b", "lab/prod/SecurityGroupPort/db1-port0").script).code,
      0,
    );
    const free = runLocally(root, tapServerOwnerStep("tap0000", "lab/dev/SecurityGroupPort/x").script);
    assert.equal(
      free.code,
      0,
      "a device no server names (a stand-in, a VIP veth) is governed by its marker alone",
    );
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
