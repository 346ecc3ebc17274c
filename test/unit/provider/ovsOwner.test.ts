/**
 * OVS objects carry their owner and project (issue 14): every `set bridge`/`set port` a Network
 * makes (bridge, VXLAN, flat uplink, VLAN patch pair, GRE) has `kvmlab-owner` and, with a
 * project, `kvmlab-project`; the DHCP port, router legs and hybrid qvo ports too. Deletes run the
 * owner check before any del-br/del-port: the guard lines are run here in a real bash against a
 * stand-in `ovs-vsctl` that answers with another owner, so the refusal (exit 73, naming the
 * owner and the fix) is the script's own behaviour.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  OWNER_REFUSED,
  checkNetworkInputs,
  networkApplyStep,
  networkDeleteStep,
  ovsOwnerGuardLines,
  ovsOwnerIds,
  checkSecurityGroupPortInputs,
  loadBalancerDeleteStep,
  ownerProject,
  portApplyStep,
  portDeleteStep,
  routerDeleteStep,
  vipPortSpecOf,
  vipPortStep,
  type SecurityGroupPortInputs,
  subnetDeleteStep,
  type NetworkInputs,
  checkSubnetInputs,
  checkRouterInputs,
  dhcpPaths,
  dhcpPortStep,
  routerPlumbStep,
  type RouterInputs,
  type SubnetInputs,
} from "../../../provider";
import { hybridPlugStep } from "../../../provider/server/hybrid";
import { deleteStep } from "../../../provider/server/steps";
import { testHost } from "./fixtures";
import { loadBalancerPaths } from "../../../core/paths";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ME = "lab/dev/Network/lan/project=Default%2Fdemo";
const OTHER = "lab/prod/Network/lan";

/** Runs `lines` in bash with `ovs-vsctl` answering every `get` with `answer`. */
function runWithOvs(lines: readonly string[], answer: string): { code: number | null; stderr: string } {
  const fake = `ovs-vsctl() { case "$*" in *" get "*) echo ${JSON.stringify(answer)} ;; esac; }`;
  const r = spawnSync("bash", ["--noprofile", "--norc", "-c", [fake, ...lines].join("\n")], {
    encoding: "utf8",
  });
  return { code: r.status, stderr: r.stderr };
}

/** A SecurityGroupPort on an OVS network's hybrid plumbing (tap kvlh-1a2b3c4d on hv1), checked. */
function sgPortOnOvs(portName: string, owner: string) {
  return checkSecurityGroupPortInputs({
    portName,
    hosts: [testHost("hv1", 1)],
    host: "hv1",
    tap: "kvlh-1a2b3c4d",
    mac: "fa:16:3e:00:00:01",
    ip: "10.10.1.5",
    driver: "openvswitch",
    networkBridge: "kvlb-00000001",
    groups: [{ groupName: "default", rules: [] }],
    owner,
  });
}

test("ovsOwnerIds: owner always, project when there is one, both quoted for ovs-vsctl and the shell; junk refused", () => {
  assert.equal(
    ovsOwnerIds(ME, "Default/demo"),
    `external_ids:kvmlab-owner='"${ME}"' external_ids:kvmlab-project='"Default/demo"'`,
  );
  assert.equal(ovsOwnerIds(ME), `external_ids:kvmlab-owner='"${ME}"'`);
  assert.equal(ovsOwnerIds(""), "", "a state from before owners");
  assert.throws(() => ovsOwnerIds("a'b/c/d/e"), /not an owner string/);
  assert.throws(() => ovsOwnerIds(ME, "x' ; reboot"), /not a project/);
});

test("every OVS bridge and port a Network makes carries its owner and project (vxlan, flat, vlan, gre)", () => {
  const hv1 = testHost("hv1", 1);
  const hv2 = testHost("hv2", 2);
  const cases: Record<string, unknown>[] = [
    { kind: "selfservice" },
    { kind: "provider" },
    { type: "vlan", segmentationId: 100 },
    { type: "gre" },
  ];
  for (const c of cases) {
    const { inputs, failures } = checkNetworkInputs({
      networkName: "lan",
      driver: "openvswitch",
      hosts: [hv1, hv2],
      owner: ME,
      ...c,
    });
    assert.deepEqual(failures, []);
    const i = { ...(inputs as unknown as NetworkInputs), project: "Default/demo" };
    const script = networkApplyStep(i, hv1).script;
    const owned = script
      .split(" -- ")
      .filter((s) => /^(set port|set bridge "\$br")/.test(s.trim()))
      .map((s) => s.trim());
    assert.ok(owned.length >= 2, JSON.stringify(c));
    assert.ok(
      owned.some((x) => x.startsWith('set port "$br"')),
      "the bridge's own port row carries the owner too",
    );
    for (const s of owned) {
      assert.ok(s.includes(`external_ids:kvmlab-owner='"${ME}"'`), `${JSON.stringify(c)}: ${s}`);
      assert.ok(s.includes(`external_ids:kvmlab-project='"Default/demo"'`), `${JSON.stringify(c)}: ${s}`);
    }
  }
});

test("deletes check the OVS owner before removing: another owner's bridge or port is refused naming it and the fix", () => {
  const hv1 = testHost("hv1", 1);
  const net = networkDeleteStep("lan", "openvswitch", hv1, ME).script.split("\n");
  const firstDel = net.findIndex((l) => /del-(br|port)/.test(l));
  const guard = net.findIndex((l) => l.includes("external_ids:kvmlab-owner"));
  assert.ok(guard >= 0 && guard < firstDel, "the owner check comes before any del-br/del-port");
  // Run the check lines (the deletes after them need a host).
  const upTo = runWithOvs(
    net.slice(guard, firstDel).map((l) => l.trim()),
    `"${OTHER}"`,
  );
  assert.equal(upTo.code, OWNER_REFUSED, upTo.stderr);
  assert.match(
    upTo.stderr,
    new RegExp(
      `OVS bridge kvlb-[0-9a-f]+ of network lan belongs to ${OTHER}, not to ${ME.replace(/[/.%=]/g, "\\$&")}; it was not removed\\. Fix: `,
    ),
  );
  // Its own owner, or none (made before owners), passes.
  assert.equal(
    runWithOvs(
      net.slice(guard, firstDel).map((l) => l.trim()),
      `"${ME}"`,
    ).code,
    0,
  );
  assert.equal(
    runWithOvs(
      net.slice(guard, firstDel).map((l) => l.trim()),
      "",
    ).code,
    0,
  );

  // The subnet's DHCP port: checked before dnsmasq is stopped.
  const sub = subnetDeleteStep("v4", "lan", "openvswitch", { owners: [ME] }).script.split("\n");
  const g = sub.findIndex((l) => l.includes("external_ids:kvmlab-owner"));
  const kill = sub.findIndex((l) => l.includes("kill"));
  assert.ok(g >= 0 && g < kill, "checked before anything is stopped");
  assert.equal(runWithOvs(sub.slice(0, g + 2), `"${OTHER}"`).code, OWNER_REFUSED);

  // The router's legs: all checked before the first goes.
  const r = routerDeleteStep("r1", [ME]).script;
  assert.ok(r.indexOf("external_ids:kvmlab-owner") < r.indexOf("del-port"));

  // A server's hybrid qvo: checked before the domain is destroyed.
  const port = {
    networkName: "lan",
    subnetName: "v4",
    dhcpHost: "hv1",
    dhcp: true,
    bridge: "kvlb-1a2b3c4d",
    driver: "openvswitch" as const,
    mac: "fa:16:3e:00:00:01",
    tap: "tap0123456789a",
    fixedIp: "",
    hybrid: true,
  };
  const s = deleteStep({
    serverName: "web1",
    uuid: "6f1e1d9a-3b1c-4a57-9a39-8d3a3f0e6b11",
    image: { name: "cirros", kind: "kernel", disk: "", format: "qcow2", kernel: "/k", ramdisk: "" },
    domainXml: { kvm: "", qemu: "" },
    ports: [port],
    owner: ME,
  }).script;
  assert.ok(s.indexOf("external_ids:kvmlab-owner") < s.indexOf("destroy"));
  const plug = hybridPlugStep("web1", [port], ME, "Default/demo")!.script;
  assert.match(plug, /set interface qvo[0-9a-f]+ external_ids:kvmlab-tap=\S+ external_ids:kvmlab-owner=/);
  assert.match(
    plug,
    /set port qvo[0-9a-f]+ external_ids:kvmlab-tap=\S+ external_ids:kvmlab-owner=\S+ external_ids:kvmlab-project=/,
  );

  // No owner (a state from before owners, review O2): only a record without a kvmlab-owner
  // passes; such a state never labelled one, so a labelled one is another owner's.
  const before = ovsOwnerGuardLines("port", '"$hd"', [""], "x", "y");
  assert.equal(runWithOvs(before, "").code, 0);
  const taken = runWithOvs(before, `"${OTHER}"`);
  assert.equal(taken.code, OWNER_REFUSED);
  assert.match(
    taken.stderr,
    /x belongs to lab\/prod\/Network\/lan, not to this state, which records no owner .*Fix: y/,
  );
});

test("a network delete refuses while another owner's port is on its bridge (del-br would take it), naming the port and its owner", () => {
  const hv1 = testHost("hv1", 1);
  const net = networkDeleteStep("lan", "openvswitch", hv1, ME).script.split("\n");
  const firstDel = net.findIndex((l) => /del-br/.test(l));
  const guard = net.findIndex((l) => l.includes("external_ids:kvmlab-owner"));
  // A stand-in ovs-vsctl: the bridge and the network's own ports are ours; kvld-00000001 (a
  // DHCP port another stack plugged into this network) is not.
  const run = (foreign: string) => {
    const fake = [
      "ovs-vsctl() {",
      '  case "$*" in',
      '    "br-exists "*) return 0 ;;',
      '    "list-ports "*) printf "%s\\n" kvli-00000000 kvld-00000001 tap0 ;;',
      `    *" get port kvld-00000001 "*) echo ${JSON.stringify(`"${foreign}"`)} ;;`,
      '    *" get port tap0 "*) return 1 ;;',
      `    *" get "*) echo ${JSON.stringify(`"${ME}"`)} ;;`,
      "  esac",
      "}",
    ].join("\n");
    return spawnSync(
      "bash",
      ["--noprofile", "--norc", "-c", [fake, ...net.slice(guard, firstDel).map((l) => l.trim())].join("\n")],
      { encoding: "utf8" },
    );
  };
  const refused = run(OTHER);
  assert.equal(refused.status, OWNER_REFUSED, refused.stderr);
  assert.match(
    refused.stderr,
    /network lan on host hv1 still has port kvld-00000001 of lab\/prod\/Network\/lan;/,
  );
  assert.match(refused.stderr, /Fix: delete that subnet, router leg or server port first/);
  // Our own ports and ports with no kvmlab owner (guests' taps) do not block the delete.
  assert.equal(run(ME).status, 0, run(ME).stderr);
});

test("a network delete from a state from before owners still refuses while another owner's port is on its bridge (review L2)", () => {
  const hv1 = testHost("hv1", 1);
  const net = networkDeleteStep("lan", "openvswitch", hv1, "").script.split("\n");
  const firstDel = net.findIndex((l) => /del-br/.test(l));
  const run = (foreign: string) => {
    const fake = [
      "ovs-vsctl() {",
      '  case "$*" in',
      '    "br-exists "*) return 0 ;;',
      '    "list-ports "*) printf "%s\\n" kvli-00000000 kvld-00000001 ;;',
      `    *" get port kvld-00000001 "*) echo ${JSON.stringify(foreign)} ;;`,
      '    *" get "*) return 1 ;;',
      "  esac",
      "}",
    ].join("\n");
    const from = net.findIndex((l) => l.includes("if command -v ovs-vsctl"));
    return spawnSync(
      "bash",
      [
        "--noprofile",
        "--norc",
        "-c",
        [fake, "br=kvlb-00000000", ...net.slice(from + 1, firstDel).map((l) => l.trim())].join("\n"),
      ],
      { encoding: "utf8" },
    );
  };
  const refused = run(`"${OTHER}"`);
  assert.equal(refused.status, OWNER_REFUSED, refused.stderr);
  assert.match(refused.stderr, /still has port kvld-00000001 of lab\/prod\/Network\/lan;/);
  // Unlabelled ports (all such a state ever made) pass.
  assert.equal(run("").status, 0, run("").stderr);
});

test("a SecurityGroupPort reads both rows of its qvo before any ip link change, allowing its owners and the tap's server (reviews L1, L5)", () => {
  const SGP = "lab/dev/SecurityGroupPort/web1-p0";
  const SRV = "lab/dev/Server/web1";
  const { inputs, failures } = sgPortOnOvs("web1-p0", SGP);
  assert.deepEqual(failures, []);
  const i = inputs as unknown as SecurityGroupPortInputs;
  const lines = portApplyStep(i, [], [SGP]).script.split("\n");
  const firstLink = lines.findIndex((l) => /^(if ! )?ip link|ovs-vsctl --may-exist/.test(l));
  const start = lines.findIndex((l) => l === 'so=""');
  assert.ok(start > 0 && start < firstLink, "the guard comes before the first ip link change");
  const guard = lines.slice(start, firstLink);
  assert.ok(
    guard.some((l) => / get port qvo\S+ external_ids:kvmlab-owner/.test(l)),
    "port row read",
  );
  assert.ok(
    guard.some((l) => / get interface qvo\S+ external_ids:kvmlab-owner/.test(l)),
    "interface row read",
  );
  const dir = mkdtempSync(join(tmpdir(), "sgp-l1-"));
  try {
    // A server web1 (owner SRV) whose domain XML names the tap.
    const inst = join(dir, "instances", "u1");
    const owners = join(dir, "owners", "server");
    mkdirSync(inst, { recursive: true });
    mkdirSync(owners, { recursive: true });
    writeFileSync(
      join(inst, "domain.xml"),
      "<domain>\n  <name>web1</name>\n  <target dev='kvlh-1a2b3c4d'/>\n</domain>\n",
    );
    writeFileSync(join(owners, "web1.owner"), `${SRV}\n`);
    const local = guard.map((l) => l.split("/var/lib/kvmlab").join(dir));
    // The stand-in answers the port row and the interface row separately.
    const run = (port: string, iface: string) => {
      const fake = `ovs-vsctl() { case "$*" in *" get port "*) echo ${JSON.stringify(port)} ;; *" get interface "*) echo ${JSON.stringify(iface)} ;; esac; }`;
      return spawnSync("bash", ["--noprofile", "--norc", "-c", [fake, ...local].join("\n")], {
        encoding: "utf8",
      });
    };
    for (const [p, f] of [
      [`"${OTHER}"`, ""],
      ["", `"${OTHER}"`],
    ]) {
      const r = run(p, f);
      assert.equal(r.status, OWNER_REFUSED, `${p}/${f}: ${r.stderr}`);
      assert.match(
        r.stderr,
        /belongs to lab\/prod\/Network\/lan, not to lab\/dev\/SecurityGroupPort\/web1-p0; it was not changed/,
      );
    }
    // Unlabelled, this port's own, and the tap's server's (a Server's qvo) pass.
    for (const [p, f] of [
      ["", ""],
      [`"${SGP}"`, `"${SGP}"`],
      [`"${SRV}"`, `"${SRV}"`],
    ])
      assert.equal(run(p, f).status, 0, `${p}/${f}: ${run(p, f).stderr}`);
    // Without that server's marker, its owner is nobody's to allow.
    rmSync(join(owners, "web1.owner"));
    assert.equal(run(`"${SRV}"`, "").status, OWNER_REFUSED);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ownerProject: the decoded project= segment of an owner, "" without one', () => {
  assert.equal(ownerProject(ME), "Default/demo");
  assert.equal(ownerProject(OTHER), "");
  assert.equal(ownerProject(""), "");
});

test("a load balancer's OVS VIP port carries its owner and project; its delete checks the OVS owner before anything stops", () => {
  const LB = "lab/dev/LoadBalancer/web-lb/project=Default%2Fdemo";
  const paths = loadBalancerPaths("web-lb");
  const base = {
    lbName: "web-lb",
    owner: LB,
    networkBridge: "kvlb-1a2b3c4d",
    driver: "openvswitch" as const,
    cidr: "10.10.0.0/24",
    vipAddress: "10.10.0.50",
    vrrpAddresses: [],
    gateway: "10.10.0.1",
    mtu: 1450,
    topology: "SINGLE" as const,
  };
  for (const spec of [
    vipPortSpecOf(base),
    vipPortSpecOf({ ...base, topology: "ACTIVE_STANDBY", vrrpAddresses: ["10.10.0.51", "10.10.0.52"] }, 1),
  ]) {
    const plug = vipPortStep(spec, paths).script;
    assert.match(
      plug,
      /-- set port "\$hd" external_ids:kvmlab-lb=web-lb external_ids:kvmlab-owner='"lab\/dev\/LoadBalancer\/web-lb\/project=Default%2Fdemo"' external_ids:kvmlab-project='"Default\/demo"'/,
    );
  }
  // Without a project in the owner: the owner only.
  const noProject = vipPortStep(
    vipPortSpecOf({ ...base, owner: "lab/dev/LoadBalancer/web-lb" }),
    paths,
  ).script;
  assert.match(noProject, /kvmlab-owner='"lab\/dev\/LoadBalancer\/web-lb"'/);
  assert.doesNotMatch(noProject, /kvmlab-project/);

  const del = loadBalancerDeleteStep("web-lb", "openvswitch", paths, [LB]).script.split("\n");
  const g = del.findIndex((l) => l.includes("external_ids:kvmlab-owner"));
  const kill = del.findIndex((l) => l.includes("kill"));
  const delPort = del.findIndex((l) => l.includes("del-port"));
  assert.ok(g >= 0 && g < kill && g < delPort, "checked before haproxy/keepalived stop and the port goes");
  const refused = runWithOvs(del.slice(0, g + 2), `"${OTHER}"`);
  assert.equal(refused.code, OWNER_REFUSED, refused.stderr);
  assert.match(
    refused.stderr,
    /the VIP port kvlv-[0-9a-f]+ of load balancer web-lb belongs to lab\/prod\/Network\/lan, not to lab\/dev\/LoadBalancer\/web-lb\/project=Default%2Fdemo; it was not removed\. Fix: check which stack holds load balancer web-lb/,
  );
  assert.equal(runWithOvs(del.slice(0, g + 2), `"${LB}"`).code, 0, "its own port passes");
  assert.equal(runWithOvs(del.slice(0, g + 2), "").code, 0, "a port from before owners passes");
  // linuxbridge: no OVS check.
  assert.ok(!loadBalancerDeleteStep("web-lb", "linuxbridge", paths, [LB]).script.includes("kvmlab-owner"));
});

test("a SecurityGroupPort's own hybrid qvo carries its owner and project; its delete checks the OVS owner of a qvo it made first", () => {
  const SGP = "lab/dev/SecurityGroupPort/lb-vip/project=Default%2Fdemo";
  const { inputs, failures } = sgPortOnOvs("lb-vip", SGP);
  assert.deepEqual(failures, []);
  const i = inputs as unknown as SecurityGroupPortInputs;
  const apply = portApplyStep(i, []).script;
  // Only on the qvo this port made (hybrid.made): a Server's qvo keeps the Server's owner. Both
  // rows are labelled (review L5), after the guard (review L1, tested below).
  const ids = `external_ids:kvmlab-owner='"lab/dev/SecurityGroupPort/lb-vip/project=Default%2Fdemo"' external_ids:kvmlab-project='"Default/demo"'`;
  assert.match(
    apply,
    new RegExp(
      `if \\[ -e \\S*/hybrid\\.made \\]; then\n {2}ovs-vsctl set port (qvo[0-9a-f-]+) ${ids.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} -- set interface \\1 ${ids.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\nfi`,
    ),
  );

  const del = portDeleteStep(i, [SGP]).script.split("\n");
  const first = del.findIndex((l) => l.includes("iptables"));
  const g = del.findIndex((l) => l.includes("external_ids:kvmlab-owner"));
  assert.ok(g >= 0 && g < first, "checked before any rule is removed");
  const dir = mkdtempSync(join(tmpdir(), "sgp-"));
  try {
    const made = join(dir, "hybrid.made");
    const guard = del.slice(0, first).map((l) => l.replace(/\S*\/hybrid\.made/, `'${made}'`));
    // The port made no plumbing (a Server's qvo): never refused, never removed here.
    assert.equal(runWithOvs(guard, `"${OTHER}"`).code, 0);
    writeFileSync(made, "");
    const refused = runWithOvs(guard, `"${OTHER}"`);
    assert.equal(refused.code, OWNER_REFUSED, refused.stderr);
    assert.match(
      refused.stderr,
      /the hybrid port qvo\S+ of security group port lb-vip belongs to lab\/prod\/Network\/lan, not to lab\/dev\/SecurityGroupPort\/lb-vip\/project=Default%2Fdemo; it was not removed\. Fix: /,
    );
    assert.equal(runWithOvs(guard, `"${SGP}"`).code, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a security group port that rebuilds a server's hybrid plumbing (after a host reboot) does not mark it as made, so it never relabels the Server's qvo (review 7b, N1)", () => {
  const SGP = "lab/dev/SecurityGroupPort/web1-p0";
  const { inputs } = sgPortOnOvs("web1-p0", SGP);
  const apply = portApplyStep(inputs as unknown as SecurityGroupPortInputs, []).script.split("\n");
  const line = apply.find((l) => l.includes("hybrid.made") && l.includes("type bridge"));
  assert.ok(line, "the qbr line is there");
  const dir = mkdtempSync(join(tmpdir(), "sgp-n1-"));
  try {
    const made = join(dir, "hybrid.made");
    const run = (so: string) => {
      rmSync(made, { force: true });
      // qbr is missing (a reboot took the plumbing); ip link add succeeds.
      const script = [
        'ip() { [ "$2" = show ] && return 1; return 0; }',
        `so=${so}`,
        line.replace(/\S*\/hybrid\.made/, `'${made}'`),
      ].join("\n");
      const r = spawnSync("bash", ["--noprofile", "--norc", "-c", script], { encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
      return existsSync(made);
    };
    assert.equal(
      run(`'"lab/dev/Server/web1"'`),
      false,
      "a server's tap: the Server's plumbing, not made here",
    );
    assert.equal(run('""'), true, "a device nobody plumbed (a namespace, a VIP veth): made here");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * Review O2: an apply path reads a record's kvmlab-owner before it labels it. For each path:
 * every `get … kvmlab-owner` guard comes before the first line that labels or recreates the
 * record, and run in bash against a stand-in ovs-vsctl it refuses another owner's record (exit
 * 73, naming the owner and the fix) and passes ours, the previous owner's and an unlabelled one.
 */
function assertRelabelGuarded(
  what: string,
  script: string,
  firstChange: RegExp,
  owners: { mine: string; previous?: string },
  message: RegExp,
): void {
  const lines = script.split("\n").map((l) => l.trim());
  const change = lines.findIndex((l) => firstChange.test(l));
  assert.ok(change > 0, `${what}: the change line is there`);
  const guards = lines.flatMap((l, i) =>
    /get (port|bridge|interface) \S+ external_ids:kvmlab-owner/.test(l) ? [i] : [],
  );
  assert.ok(guards.length > 0 && guards[0] < change, `${what}: a guard before line ${change}`);
  // Every port added and labelled has its own guard since the previous one.
  let prev = -1;
  lines.forEach((l, i) => {
    if (!/ovs-vsctl --may-exist add-port/.test(l)) return;
    assert.ok(
      guards.some((g) => g > prev && g < i),
      `${what}: line ${i} (${l.slice(0, 60)}) has a guard before it`,
    );
    prev = i;
  });
  // Shell variables the guards name are set to a device name; only the guard pairs run.
  const run = (answer: string) =>
    runWithOvs(
      [
        "hd=kvlx-1; br=kvlb-1; vport=kvlv-1; vx=kvlx-2; tp=kvlt-1; up=eth9",
        ...guards.flatMap((g) => [lines[g], lines[g + 1]]),
      ],
      answer,
    );
  const refused = run(`"${OTHER}"`);
  assert.equal(refused.code, OWNER_REFUSED, `${what}: ${refused.stderr}`);
  assert.match(refused.stderr, message, what);
  assert.match(
    refused.stderr,
    /belongs to lab\/prod\/Network\/lan, not to .*; it was not changed\. Fix: /,
    what,
  );
  for (const ok of ["", `"${owners.mine}"`, ...(owners.previous ? [`"${owners.previous}"`] : [])])
    assert.equal(run(ok).code, 0, `${what}: ${ok || "unlabelled"} passes: ${run(ok).stderr}`);
}

test("apply paths read a port's or bridge's kvmlab-owner before relabelling it and refuse another owner's (review O2)", () => {
  const hv1 = testHost("hv1", 1);
  const PREV = "lab/old/Network/lan";
  // Network: the bridge, its own port row and every port the transaction labels (vxlan, flat, vlan, gre).
  for (const c of [
    { kind: "selfservice" },
    { kind: "provider" },
    { type: "vlan", segmentationId: 100 },
    { type: "gre" },
  ]) {
    const { inputs } = checkNetworkInputs({
      networkName: "lan",
      driver: "openvswitch",
      hosts: [hv1, testHost("hv2", 2)],
      owner: ME,
      ...c,
    });
    const script = networkApplyStep(inputs as unknown as NetworkInputs, hv1, [ME, PREV]).script;
    assertRelabelGuarded(
      `network ${JSON.stringify(c)}`,
      script,
      /^ovs-vsctl --may-exist add-br/,
      { mine: ME, previous: PREV },
      /^network lan: OVS (bridge|port) \S+ belongs to/,
    );
    // Every labelled port row has its own guard.
    const labelled = [...script.matchAll(/set port ("\$[a-z]+"|[A-Za-z0-9_.-]+) [^-]*kvmlab-owner=/g)].map(
      (m) => m[1],
    );
    for (const p of labelled)
      assert.ok(
        script.includes(`get port ${p} external_ids:kvmlab-owner`),
        `${JSON.stringify(c)}: port ${p} is read first`,
      );
  }
  // Subnet's DHCP port (a veth leg: the guard comes before the pair is recreated).
  const { inputs: sn } = checkSubnetInputs({
    subnetName: "lan-v4",
    networkName: "lan",
    cidr: "10.10.0.0/24",
    networkBridge: "kvlb-00000001",
    driver: "openvswitch",
    hosts: [hv1],
    owner: ME,
  });
  const sub = sn as unknown as SubnetInputs;
  assertRelabelGuarded(
    "subnet",
    dhcpPortStep(sub, dhcpPaths("lan", "lan-v4"), [ME, PREV]).script,
    /^(ip link del dev "\$hd"|ovs-vsctl --may-exist add-port)/,
    { mine: ME, previous: PREV },
    /^the DHCP port of subnet lan-v4: OVS port kvlx-1 belongs to/,
  );
  // Load balancer's VIP port.
  const LB = "lab/dev/LoadBalancer/web-lb";
  const spec = vipPortSpecOf(
    {
      lbName: "web-lb",
      owner: LB,
      networkBridge: "kvlb-1a2b3c4d",
      driver: "openvswitch",
      cidr: "10.10.0.0/24",
      vipAddress: "10.10.0.50",
      vrrpAddresses: [],
      gateway: "10.10.0.1",
      mtu: 1450,
      topology: "SINGLE",
    },
    0,
    [LB],
  );
  assertRelabelGuarded(
    "load balancer",
    vipPortStep(spec, loadBalancerPaths("web-lb")).script,
    /^(ip link del dev "\$hd"|ovs-vsctl --may-exist add-port)/,
    { mine: LB },
    /^the VIP port of load balancer web-lb: OVS port kvlx-1 belongs to/,
  );
  // Server's hybrid qvo (interface row) before the veth is recreated or labelled.
  const port = {
    networkName: "lan",
    subnetName: "lan-v4",
    dhcpHost: "hv1",
    dhcp: true,
    bridge: "kvlb-1a2b3c4d",
    driver: "openvswitch" as const,
    mac: "fa:16:3e:00:00:01",
    tap: "tap0123456789a",
    fixedIp: "",
    hybrid: true,
  };
  const SRV = "lab/dev/Server/web1";
  assertRelabelGuarded(
    "server",
    hybridPlugStep("web1", [port], SRV, "", [PREV])!.script,
    /^ip link show qbr/,
    { mine: SRV, previous: PREV },
    /^the hybrid port of server web1: OVS interface qvo[0-9a-f]+ belongs to/,
  );
  // Both rows (review L5): a qvo whose port row only (as a SecurityGroupPort labelled it
  // before) carries another owner is refused too.
  const plug = hybridPlugStep("web1", [port], SRV, "", [PREV])!.script.split("\n");
  const firstChange = plug.findIndex((l) => /^ip link show qbr/.test(l));
  const rows = (port: string, iface: string) =>
    spawnSync(
      "bash",
      [
        "--noprofile",
        "--norc",
        "-c",
        [
          `ovs-vsctl() { case "$*" in *" get port "*) echo ${JSON.stringify(port)} ;; *" get interface "*) echo ${JSON.stringify(iface)} ;; esac; }`,
          ...plug.slice(0, firstChange),
        ].join("\n"),
      ],
      { encoding: "utf8" },
    );
  assert.equal(rows(`"${OTHER}"`, "").status, OWNER_REFUSED, "port row read");
  assert.equal(rows("", `"${OTHER}"`).status, OWNER_REFUSED, "interface row read");
  assert.equal(rows(`"${SRV}"`, `"${SRV}"`).status, 0);
  // A state from before owners labels nothing, so it reads nothing either.
  assert.doesNotMatch(hybridPlugStep("web1", [port], "", "")!.script, /kvmlab-owner/);
});

test("a router's OVS legs are read before they are relabelled (review O2)", () => {
  const R = "lab/dev/Router/r1";
  const plumb = routerPlumbStep(routerInputsForO2(R), [R, "lab/old/Router/r1"]).script;
  assertRelabelGuarded(
    "router",
    plumb,
    /^(ip link del dev "\$hd"|ovs-vsctl --may-exist add-port)/,
    { mine: R, previous: "lab/old/Router/r1" },
    /^the leg \S+ of router r1 on network \S+: OVS port kvlx-1 belongs to/,
  );
});

function routerInputsForO2(owner: string): RouterInputs {
  const { inputs, failures } = checkRouterInputs({
    routerName: "r1",
    hosts: [testHost("hv1", 1), testHost("hv2", 2)],
    external: {
      subnetName: "ext-v4",
      networkName: "ext",
      bridge: "kvlb-0e0e0e0e",
      driver: "openvswitch",
      cidr: "172.24.4.0/24",
      address: "172.24.4.100",
      gateway: "172.24.4.1",
      mtu: 1500,
      ipamHost: "hv1",
    },
    interfaces: [
      {
        subnetName: "lan2-v4",
        networkName: "lan2",
        bridge: "kvlb-00000002",
        driver: "openvswitch",
        cidr: "10.10.2.0/24",
        address: "10.10.2.1",
        mtu: 1450,
      },
    ],
    owner,
  });
  assert.deepEqual(failures, []);
  return inputs as unknown as RouterInputs;
}
