/**
 * Network types (issue 16) without hosts: the pure type rules (core/network.ts), the Network
 * provider's check for each type (kind mapping, segmentation ids, refusals naming the field),
 * the diff of a state from before types (no replacement), the host scripts' shape per type, and
 * the host probe's refusals naming the fix.
 */
import { test } from "node:test";
import { spawnSync } from "node:child_process";
import * as assert from "node:assert/strict";
import { checkSegmentationId, defaultTypeMtu, kindOfType, typeOfKind } from "../../../core/network";
import {
  checkNetworkInputs as checkRaw,
  diffNetwork,
  GRE_LINK_OFFLOADS,
  greBridge,
  networkApplyStep,
  networkDeleteStep,
  networkDevices,
  networkReadStep,
  networkTypeRefusal,
  networkTypesProbeScript,
  parseNetworkTypesProbe,
  segmentDevices,
  underlayMtuRefusal,
  OWNER_REFUSED,
  type NetworkInputs,
  type NetworkOutputs,
} from "../../../provider";
import { testHost } from "../provider/fixtures";

const HOSTS = [testHost("hv1", 1), testHost("hv2", 2)];

/** check with the inputs typed for the tests. */
function checkNetworkInputs(raw: Record<string, unknown>): ReturnType<typeof checkRaw> {
  return checkRaw(raw);
}

function failuresOf(raw: Record<string, unknown>): string {
  return checkNetworkInputs(raw)
    .failures.map((f) => `${f.property}|${f.reason}`)
    .join("\n");
}

test("types map onto kinds and back; segmentation ids are checked per type", () => {
  assert.equal(kindOfType("vlan"), "provider");
  assert.equal(kindOfType("gre"), "selfservice");
  assert.equal(kindOfType("local"), "selfservice");
  assert.equal(typeOfKind("provider"), "flat");
  assert.equal(typeOfKind("selfservice"), "vxlan");
  assert.deepEqual(
    [defaultTypeMtu("vxlan"), defaultTypeMtu("gre"), defaultTypeMtu("vlan"), defaultTypeMtu("local")],
    [1450, 1458, 1500, 1500],
  );
  assert.equal(checkSegmentationId("vlan", 4094), undefined);
  assert.match(checkSegmentationId("vlan", 4095)!, /1-4094/);
  assert.match(checkSegmentationId("vlan", "7")!, /integer/);
  assert.match(checkSegmentationId("flat", 1)!, /no segmentation id/);
  assert.equal(checkSegmentationId("gre", 4294967295), undefined);
  assert.match(checkSegmentationId("gre", 4294967296)!, /1-4294967295/);
});

test("check: a type decides the kind, a kind alone decides the type; vni and segmentationId agree", () => {
  const vlan = checkNetworkInputs({ networkName: "v", type: "vlan", segmentationId: 100, hosts: HOSTS });
  assert.deepEqual(vlan.failures, []);
  const v = vlan.inputs as unknown as NetworkInputs;
  assert.deepEqual([v.kind, v.type, v.segmentationId, v.vni, v.mtu], ["provider", "vlan", 100, 0, 1500]);
  const old = checkNetworkInputs({ networkName: "lan", kind: "selfservice", vni: 5000, hosts: HOSTS });
  const o = old.inputs as unknown as NetworkInputs;
  assert.deepEqual([o.type, o.segmentationId, o.vni, o.mtu], ["vxlan", 5000, 5000, 1450]);
  const flat = checkNetworkInputs({ networkName: "ext", kind: "provider", hosts: HOSTS })
    .inputs as unknown as NetworkInputs;
  assert.deepEqual([flat.type, flat.segmentationId], ["flat", 0]);
  const gre = checkNetworkInputs({ networkName: "g", type: "gre", driver: "openvswitch", hosts: HOSTS });
  assert.deepEqual(gre.failures, []);
  assert.ok((gre.inputs as unknown as NetworkInputs).segmentationId >= 4096);
  const local = checkNetworkInputs({ networkName: "l", type: "local", hosts: [HOSTS[0]] });
  assert.deepEqual(local.failures, []);
});

test("check refuses bad types, ids and combinations, naming the field and the fix", () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ type: "vlan; reboot" }, /^type\|type: expected one of flat, vlan, vxlan, gre, local/m],
    [{ type: "vlan" }, /^segmentationId\|a vlan network needs segmentationId: its VLAN id, 1-4094/m],
    [{ type: "vlan", segmentationId: 0 }, /^segmentationId\|segmentationId must be an integer 1-4094/m],
    [{ type: "vlan", segmentationId: "5 && id" }, /^segmentationId\|segmentationId must be an integer/m],
    [{ type: "flat", segmentationId: 3 }, /^segmentationId\|a flat network has no segmentation id/m],
    [{ type: "gre" }, /^driver\|a gre network needs driver "openvswitch"/m],
    [{ type: "local" }, /^hosts\|a local network lives on one host/m],
    [{ type: "vxlan", segmentationId: 5, vni: 6 }, /^segmentationId\|segmentationId 5 and vni 6 differ/m],
    [
      { type: "vlan", segmentationId: 5, vni: 6 },
      /^vni\|vni is the VXLAN id; a vlan network has none: use segmentationId/m,
    ],
    [{ type: "vxlan", kind: "provider" }, /^kind\|kind "provider" does not match type "vxlan"/m],
    [{}, /^type\|set type \(flat, vlan, vxlan, gre or local\) or kind/m],
    [
      { type: "gre", driver: "openvswitch", hosts: [...HOSTS, testHost("hv3", 3)] },
      /^hosts\|a gre network spans at most 2 hosts/m,
    ],
  ];
  for (const [raw, want] of cases) assert.match(failuresOf({ networkName: "n", hosts: HOSTS, ...raw }), want);
});

test("diff: a state from before types is the same network, not a replacement; a new VLAN id replaces", () => {
  const news = checkNetworkInputs({ networkName: "lan", kind: "selfservice", hosts: HOSTS })
    .inputs as unknown as NetworkInputs;
  const { type: _t, segmentationId: _s, ...before } = news;
  const olds = { ...before, realized: {} } as unknown as NetworkOutputs;
  assert.deepEqual(diffNetwork(olds, news).replaces, []);
  const a = checkNetworkInputs({ networkName: "v", type: "vlan", segmentationId: 10, hosts: HOSTS })
    .inputs as unknown as NetworkInputs;
  const b = { ...a, segmentationId: 11 };
  assert.deepEqual(diffNetwork({ ...a, realized: {} } as unknown as NetworkOutputs, b).replaces, [
    "segmentationId",
  ]);
});

test("host scripts: VLAN on OVS tags the trunk end of a patch pair; GRE makes one tunnel port per other host; VXLAN on OVS turns GRO off", () => {
  const ovsVlan = checkNetworkInputs({
    networkName: "v",
    type: "vlan",
    segmentationId: 42,
    driver: "openvswitch",
    hosts: HOSTS,
  }).inputs as unknown as NetworkInputs;
  const { trunk, trunkPort } = segmentDevices("v", "eth1");
  const s = networkApplyStep(ovsVlan, HOSTS[0]).script;
  assert.ok(s.includes(`tr=${trunk}; tp=${trunkPort}`), s);
  assert.match(s, /set port "\$tp" tag=\$vid/);
  assert.match(s, /vid=42/);
  assert.match(networkDeleteStep("v", "openvswitch", HOSTS[0]).script, new RegExp(`del-port ${trunkPort}`));
  const lbVlan = networkApplyStep({ ...ovsVlan, driver: "linuxbridge" }, HOSTS[0]).script;
  assert.match(lbVlan, /type vlan id \$vid/);
  assert.match(lbVlan, /modprobe 8021q/);
  const gre = checkNetworkInputs({
    networkName: "g",
    type: "gre",
    driver: "openvswitch",
    segmentationId: 77,
    hosts: HOSTS,
  }).inputs as unknown as NetworkInputs;
  const g = networkApplyStep(gre, HOSTS[0]).script;
  assert.match(g, /type=gre options:remote_ip='?10\.254\.0\.12'? options:key=77/);
  assert.doesNotMatch(g, /remote_ip='?10\.254\.0\.11/);
  // Userspace datapath: the GRE ports go on the network's GRE bridge, joined to its bridge by a
  // veth pair with checksum offload off on both ends (OVS 3.1's native tunnels drop packets
  // that still carry offload flags); the kernel datapath keeps them on the network's bridge.
  const { bridge, vxlan, vxlanPort } = networkDevices("g");
  assert.match(g, new RegExp(`gb="\\$br"; tb=${greBridge("g")}; vi=${vxlanPort}`));
  assert.match(g, /if \[ "\$dp" = netdev \]; then\n {2}if ! ip link show dev "\$vi"/);
  assert.match(g, /ip link add "\$vi" mtu \$mtu type veth peer name "\$vx" mtu \$mtu/);
  assert.match(g, /ethtool -K "\$d" tx off/);
  assert.match(g, /--may-exist add-port "\$br" "\$vi" .* --may-exist add-port "\$tb" "\$vx"/);
  assert.match(
    g,
    /gb="\$tb"\nelse\n {2}ovs-vsctl --if-exists del-port "\$br" "\$vi" -- --if-exists del-br "\$tb"/,
  );
  assert.match(g, /--may-exist add-port "\$gb" kvlg-/);
  assert.ok(g.includes(`br=${bridge}; vx=${vxlan}`));
  assert.equal(GRE_LINK_OFFLOADS, "tx off");
  // The GRE ports come after the transaction that makes the network's bridge.
  assert.ok(g.indexOf('--may-exist add-br "$br"') < g.indexOf('add-port "$gb"'));
  // A one-host gre network makes no tunnel bridge and no GRE port (and removes leftovers).
  const one = networkApplyStep({ ...gre, hosts: [HOSTS[0]] }, HOSTS[0]).script;
  assert.match(one, /if false; then/);
  assert.doesNotMatch(one, /add-port "\$gb"/);
  // Every rendered script parses as shell.
  for (const script of [g, one, networkReadStep("g", "openvswitch", HOSTS[0]).script])
    assert.equal(spawnSync("sh", ["-n"], { input: script }).status, 0, script);
  // Read: GRE ports on the GRE bridge count only while the veth link joins the two bridges.
  const read = networkReadStep("g", "openvswitch", HOSTS[0]).script;
  assert.match(
    read,
    /port-to-br "\$vi" 2>\/dev\/null\)" = "\$br" \] && \[ "\$\(ovs-vsctl port-to-br "\$vx" 2>\/dev\/null\)" = "\$tb" \]; then gbs="\$br \$tb"/,
  );
  assert.match(
    networkDeleteStep("g", "openvswitch", HOSTS[0]).script,
    new RegExp(`del-br ${greBridge("g")}`),
  );
  const vx = checkNetworkInputs({ networkName: "x", type: "vxlan", driver: "openvswitch", hosts: HOSTS })
    .inputs as unknown as NetworkInputs;
  assert.match(networkApplyStep(vx, HOSTS[0]).script, /ethtool -K "\$vx" gro off/);
});

test("host probe: each refusal names what the host lacks and the fix", () => {
  const none = parseNetworkTypesProbe(
    "vlan=no\nvxlan=yes\novs=yes\nethtool=yes\novskernel=no\ntundev=eth2\ntunprefix=24\ntunmtu=1500\ntunovs=no\n",
  );
  assert.equal(none.tunnelDevice, "eth2");
  assert.match(networkTypeRefusal(none, "linuxbridge", "vlan")!, /8021q.*modprobe 8021q/);
  assert.equal(networkTypeRefusal(none, "openvswitch", "vlan"), undefined);
  assert.match(networkTypeRefusal(none, "linuxbridge", "gre")!, /driver openvswitch/);
  // GRE between hosts on the userspace datapath: the tunnel address must be on an OVS bridge.
  assert.match(
    networkTypeRefusal(none, "openvswitch", "gre", true, "10.254.0.11")!,
    /userspace \(netdev\) datapath .*the tunnel address 10\.254\.0\.11 is on eth2, not an OVS bridge: .*add-port br-phy eth2; ip addr del 10\.254\.0\.11\/24 dev eth2; ip addr add 10\.254\.0\.11\/24 dev br-phy.*modprobe openvswitch.*type vxlan/,
  );
  const onBrPhy = parseNetworkTypesProbe(
    "vlan=no\nvxlan=yes\novs=yes\nethtool=yes\novskernel=no\ntundev=br-phy\ntunovs=yes\n",
  );
  assert.equal(networkTypeRefusal(onBrPhy, "openvswitch", "gre", true, "10.254.0.11"), undefined);
  assert.match(
    networkTypeRefusal({ ...onBrPhy, ethtool: false }, "openvswitch", "gre")!,
    /gre network .*ethtool.*apt-get install -y ethtool/,
  );
  assert.equal(networkTypeRefusal(none, "openvswitch", "gre", false), undefined, "one host: no tunnel port");
  const kernel = parseNetworkTypesProbe("vlan=no\nvxlan=yes\novs=yes\nethtool=yes\novskernel=yes\n");
  assert.equal(networkTypeRefusal(kernel, "openvswitch", "gre"), undefined);
  // The probe script asks which device holds the tunnel address (quoted) and if it is a bridge.
  const probe = networkTypesProbeScript("10.254.0.11");
  assert.match(probe, /ta='?10\.254\.0\.11'?/);
  assert.match(probe, /ovs-vsctl br-exists "\$d"/);
  assert.equal(spawnSync("sh", ["-n"], { input: probe }).status, 0);
  assert.match(
    networkTypeRefusal({ ...kernel, ethtool: false }, "openvswitch", "vxlan")!,
    /apt-get install -y ethtool/,
  );
});

const ME = "lab/dev/Network/g/project=Default%2Fdemo";
const OTHER = "lab/prod/Network/lan";

/** Runs `lines` in bash (set -e) after `fake`, a stand-in ovs-vsctl (and whatever else it defines). */
function runFake(fake: string, lines: readonly string[]): { code: number | null; stderr: string } {
  const r = spawnSync("bash", ["--noprofile", "--norc", "-c", ["set -e", fake, ...lines].join("\n")], {
    encoding: "utf8",
  });
  return { code: r.status, stderr: r.stderr };
}

test("GRE names: the tunnel bridge has a role letter of its own (kvle-), so no GRE port (kvlg-) can share its name", () => {
  assert.match(greBridge("g"), /^kvle-[0-9a-f]{8}$/);
  assert.match(segmentDevices("g", "", "10.254.0.12").grePort, /^kvlg-[0-9a-f]{8}$/);
  // The other device kinds of a network keep their letters (no two kinds share a prefix).
  const { bridge, vxlan, vxlanPort } = networkDevices("g");
  const { trunk, trunkPort } = segmentDevices("g", "eth1");
  const prefixes = [
    bridge,
    vxlan,
    vxlanPort,
    trunk,
    trunkPort,
    greBridge("g"),
    segmentDevices("g", "", "x").grePort,
  ].map((n) => n.slice(0, 5));
  assert.equal(new Set(prefixes).size, prefixes.length, prefixes.join(" "));
});

test("GRE apply: the tunnel bridge, the veth ports and the GRE ports are read before anything labels them; another owner's is refused (exit 73), a colliding GRE port name too (exit 17)", () => {
  const gre = {
    ...(checkNetworkInputs({ networkName: "g", type: "gre", driver: "openvswitch", hosts: HOSTS, owner: ME })
      .inputs as unknown as NetworkInputs),
    project: "Default/demo",
  };
  const tb = greBridge("g");
  const { bridge, vxlan, vxlanPort } = networkDevices("g");
  const { grePort } = segmentDevices("g", "", "10.254.0.12");
  const script = networkApplyStep(gre, HOSTS[0]).script;
  const all = script.split("\n");
  const from = all.findIndex((l) => l.includes(`get bridge ${tb} external_ids:kvmlab-owner`));
  const to = all.findIndex((l) => l.startsWith('gb="$br"'));
  assert.ok(from >= 0 && from < to, script);
  // Before the first ovs-vsctl that makes, labels or removes the tunnel bridge or its ports.
  assert.ok(script.indexOf(`get bridge ${tb} `) < script.indexOf('--may-exist add-br "$tb"'));
  assert.ok(script.indexOf(`get bridge ${tb} `) < script.indexOf('--if-exists del-br "$tb"'));
  const guard = [`name='g'; br=${bridge}`, ...all.slice(from, to)];
  /** A stand-in: `row` answers with `owner`, every other row with ours; GRE ports on `greOn`. */
  const fake = (row: string, owner: string, greOn = ""): string =>
    [
      "ovs-vsctl() {",
      '  case "$*" in',
      `    *" get ${row} "*) echo ${JSON.stringify(`"${owner}"`)} ;;`,
      `    *" get "*) echo ${JSON.stringify(`"${ME}"`)} ;;`,
      `    "port-to-br ${grePort}") echo ${JSON.stringify(greOn)} ;;`,
      "  esac",
      "}",
    ].join("\n");
  for (const row of [`bridge ${tb}`, `port ${tb}`, `port ${vxlanPort}`, `port ${vxlan}`, `port ${grePort}`]) {
    const r = runFake(fake(row, OTHER), guard);
    assert.equal(r.code, OWNER_REFUSED, `${row}: ${r.stderr}`);
    assert.ok(r.stderr.includes(`network g: OVS ${row} belongs to ${OTHER}, not to ${ME}`), r.stderr);
    assert.match(r.stderr, /Fix: check which stack or project holds network g on host hv1/);
  }
  // Ours, or no owner (being made now): passes.
  assert.equal(runFake(fake(`bridge ${tb}`, ME, tb), guard).code, 0);
  assert.equal(runFake(fake(`bridge ${tb}`, "", bridge), guard).code, 0);
  // A GRE port name that is a port of another bridge (another network's device) is refused.
  const clash = runFake(fake(`bridge ${tb}`, ME, "kvlb-99999999"), guard);
  assert.equal(clash.code, 17, clash.stderr);
  assert.match(
    clash.stderr,
    new RegExp(
      `GRE port ${grePort} of network g is already a port of bridge kvlb-99999999 .*rename this network`,
    ),
  );
  assert.equal(spawnSync("sh", ["-n"], { input: script }).status, 0);
});

test("GRE delete: the tunnel bridge is owner-checked before any del-br, and another owner's port on it blocks the delete", () => {
  const tb = greBridge("g");
  const net = networkDeleteStep("g", "openvswitch", HOSTS[0], ME).script;
  assert.equal(spawnSync("sh", ["-n"], { input: net }).status, 0);
  const all = net.split("\n").map((l) => l.trim());
  const firstDel = all.findIndex((l) => /del-(br|port)/.test(l));
  const from = all.findIndex((l) => l.includes("external_ids:kvmlab-owner"));
  assert.ok(all.findIndex((l) => l.includes(`get bridge ${tb} `)) < firstDel, net);
  const { bridge } = networkDevices("g");
  const run = (bridgeOwner: string, portOwner: string) =>
    runFake(
      [
        "ovs-vsctl() {",
        '  case "$*" in',
        '    "br-exists "*) return 0 ;;',
        `    "list-ports ${bridge}") echo kvli-00000000 ;;`,
        `    "list-ports ${tb}") echo kvlg-00000001 ;;`,
        `    *" get bridge ${tb} "*) echo ${JSON.stringify(`"${bridgeOwner}"`)} ;;`,
        `    *" get port kvlg-00000001 "*) echo ${JSON.stringify(`"${portOwner}"`)} ;;`,
        `    *" get "*) echo ${JSON.stringify(`"${ME}"`)} ;;`,
        "  esac",
        "}",
      ].join("\n"),
      [`br=${bridge}`, ...all.slice(from, firstDel)],
    );
  const bridgeRefused = run(OTHER, ME);
  assert.equal(bridgeRefused.code, OWNER_REFUSED, bridgeRefused.stderr);
  assert.ok(
    bridgeRefused.stderr.includes(`OVS bridge ${tb} (GRE tunnel bridge) of network g belongs to ${OTHER}`),
    bridgeRefused.stderr,
  );
  const portRefused = run(ME, OTHER);
  assert.equal(portRefused.code, OWNER_REFUSED, portRefused.stderr);
  assert.ok(portRefused.stderr.includes(`still has port kvlg-00000001 of ${OTHER}`), portRefused.stderr);
  assert.equal(run(ME, ME).code, 0);
  assert.equal(run("", "").code, 0);
});

test("underlay MTU: the probe reports the tunnel device's MTU (an OVS bridge's smallest port) and prefix; a GRE network on OVS's userspace datapath whose mtu plus the tunnel overhead exceeds it is refused naming mtu, both numbers and the fix", () => {
  // The probe script in bash against stand-ins: 10.254.0.11/16 on br-phy (9000), whose port eth2 has 1500.
  const stand = [
    "ip() { echo '5: br-phy    inet 10.254.0.11/16 brd 10.254.255.255 scope global br-phy\\       valid_lft forever preferred_lft forever'; }",
    'ovs-vsctl() { case "$1" in list-ports) echo eth2 ;; esac; return 0; }',
    'cat() { case "$1" in */br-phy/mtu) echo 9000 ;; */eth2/mtu) echo 1500 ;; *) command cat "$@" ;; esac; }',
  ].join("\n");
  const r = spawnSync(
    "bash",
    ["--noprofile", "--norc", "-c", `${stand}\n${networkTypesProbeScript("10.254.0.11")}`],
    {
      encoding: "utf8",
    },
  );
  assert.equal(r.status, 0, r.stderr);
  // The userspace datapath (as in the sandbox): the machine running the test may have the module.
  const caps = { ...parseNetworkTypesProbe(r.stdout), ovsKernelDatapath: false };
  assert.deepEqual(
    [caps.tunnelDevice, caps.tunnelPrefix, caps.tunnelMtu, caps.tunnelOnOvsBridge],
    ["br-phy", 16, 1500, true],
  );
  assert.equal(underlayMtuRefusal(caps, "gre", 1458), undefined);
  assert.equal(underlayMtuRefusal(caps, "vxlan", 1450), undefined);
  const gre = underlayMtuRefusal(caps, "gre", 1500)!;
  assert.match(
    gre,
    /^mtu: a gre network's mtu 1500 plus its 42-byte tunnel overhead is 1542, more than the underlay MTU 1500 of br-phy/,
  );
  assert.match(gre, /Fix: set mtu to at most 1458 \(or leave it out: the default is 1458\), .*at least 1542/);
  // Below a 1500 underlay the default does not fit either: the fix does not offer it.
  assert.match(underlayMtuRefusal({ ...caps, tunnelMtu: 1400 }, "gre", 1458)!, /at most 1358, or raise/);
  // Only OVS's native GRE on the userspace datapath drops oversized frames silently; the
  // kernel's tunnels fragment them, so those networks are not refused (review 7b, N2).
  assert.equal(underlayMtuRefusal(caps, "vxlan", 1451), undefined, "kernel VXLAN fragments");
  assert.equal(
    underlayMtuRefusal({ ...caps, tunnelMtu: 1450 }, "vxlan", 1450),
    undefined,
    "cloud VM underlay",
  );
  assert.equal(
    underlayMtuRefusal({ ...caps, ovsKernelDatapath: true }, "gre", 1500),
    undefined,
    "kernel GRE",
  );
  assert.equal(underlayMtuRefusal(caps, "gre", 1500, true, "linuxbridge"), undefined, "not OVS");
  assert.equal(underlayMtuRefusal(caps, "vxlan", 1500, false), undefined, "one host: no tunnel");
  assert.equal(underlayMtuRefusal(caps, "vlan", 9000), undefined, "no tunnel overhead");
  assert.equal(underlayMtuRefusal({ ...caps, tunnelMtu: 0 }, "gre", 1500), undefined, "unknown underlay");
  // The br-phy fix prints the address's real prefix, not /24.
  const onEth2 = { ...caps, tunnelDevice: "eth2", tunnelOnOvsBridge: false, ovsKernelDatapath: false };
  const fix = networkTypeRefusal(onEth2, "openvswitch", "gre", true, "10.254.0.11")!;
  assert.match(fix, /ip addr del 10\.254\.0\.11\/16 dev eth2; ip addr add 10\.254\.0\.11\/16 dev br-phy/);
  assert.doesNotMatch(fix, /\/24/);
});
