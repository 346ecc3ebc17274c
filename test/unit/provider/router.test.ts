/**
 * Router and FloatingIp: rulesets against their goldens (what iptables-restore -n gets), check
 * (defaults, derived ruleset, every hostile value refused with its field named, no host reached),
 * diff (replace vs update, drift from a hand-deleted rule), step text, serialization.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { assertSerializable } from "../../harness/serialization";
import { expectGolden } from "../templates/support";
import { testHost } from "./fixtures";
import {
  checkFloatingIpInputs,
  checkRouterInputs,
  diffFloatingIp,
  diffRouter,
  floatingIpApplyStep,
  floatingIpDeleteStep,
  floatingIpProvider,
  hostPoolStats,
  parseRouterState,
  routerDeleteStep,
  routerPlumbStep,
  routerProvider,
  routerRulesStep,
  type FloatingIpInputs,
  type FloatingIpOutputs,
  type RouterInputs,
  type RouterOutputs,
} from "../../../provider";
import {
  floatingIpChains,
  renderFloatingIpRuleset,
  renderRouterRuleset,
  routerInterfaceNames,
  routerNames,
} from "../../../core/router";

const HOSTS = [testHost("hv1", 1), testHost("hv2", 2)];

const EXTERNAL = {
  subnetName: "ext-v4",
  networkName: "ext",
  bridge: "kvlb-0e0e0e0e",
  driver: "linuxbridge",
  cidr: "172.24.4.0/24",
  address: "172.24.4.100",
  gateway: "172.24.4.1",
  mtu: 1500,
  ipamHost: "hv1",
};

function leg(n: number, driver = "linuxbridge"): Record<string, unknown> {
  return {
    subnetName: `lan${n}-v4`,
    networkName: `lan${n}`,
    bridge: `kvlb-0000000${n}`,
    driver,
    cidr: `10.10.${n}.0/24`,
    address: `10.10.${n}.1`,
    mtu: 1450,
  };
}

function routerRaw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    routerName: "r1",
    hosts: HOSTS,
    external: EXTERNAL,
    interfaces: [leg(1), leg(2, "openvswitch")],
    ...over,
  };
}

function checked(raw: Record<string, unknown>): RouterInputs {
  const r = checkRouterInputs(raw);
  assert.deepEqual(r.failures, []);
  return r.inputs as unknown as RouterInputs;
}

test("router ruleset: Neutron's SNAT rules, hairpin and exemption, golden per scenario", () => {
  const qg = routerNames("r1").gatewayDevice;
  assert.match(qg, /^qg-[0-9a-f]{8}$/);
  const base = { routerName: "r1", gatewayDevice: qg, gatewayAddress: "172.24.4.100" };
  const snat = renderRouterRuleset({ ...base, enableSnat: true, randomFully: true });
  expectGolden("router/router-snat.rules", snat);
  expectGolden(
    "router/router-nosnat.rules",
    renderRouterRuleset({ ...base, enableSnat: false, randomFully: false }),
  );
  // The semantics, independent of the golden text:
  assert.match(
    snat,
    new RegExp(`-A kvmlab-POSTROUTING ! -o ${qg} -m conntrack ! --ctstate DNAT .* -j ACCEPT`),
  );
  assert.match(snat, new RegExp(`-A kvmlab-snat -o ${qg} .*-j SNAT --to-source 172.24.4.100 --random-fully`));
  assert.match(snat, /-A kvmlab-snat -m mark ! --mark 0x2\/0xffff -m conntrack --ctstate DNAT .*-j SNAT/);
  assert.ok(
    snat.indexOf("-j kvmlab-float-snat") < snat.indexOf("-A kvmlab-snat -o qg-"),
    "float-snat comes first",
  );
  assert.doesNotMatch(
    snat,
    /^:kvmlab-float-/m,
    "the shared float chains are never declared (that would flush them)",
  );
  for (const line of snat.split("\n").filter((l) => l.startsWith("-A")))
    assert.match(line, /--comment "router r1: /, `every rule names its object: ${line}`);
  const c = floatingIpChains("web-fip");
  const fip = renderFloatingIpRuleset({
    fipName: "web-fip",
    floatingIp: "172.24.4.150",
    fixedIp: "10.10.1.5",
    dnatChain: c.dnat,
    snatChain: c.snat,
    randomFully: true,
  });
  expectGolden("router/floating-ip.rules", fip);
  assert.throws(
    () =>
      renderRouterRuleset({
        ...base,
        gatewayAddress: "1.2.3.4 -j ACCEPT",
        enableSnat: true,
        randomFully: true,
      }),
    /gatewayAddress/,
  );
});

test("router check: defaults, derived ruleset, and refusals naming the field (no host reached)", () => {
  const before = JSON.stringify(hostPoolStats());
  const inputs = checked(routerRaw());
  assert.equal(inputs.host, "hv1");
  assert.equal(inputs.enableSnat, true);
  assert.equal(inputs.randomFully, true);
  assert.match(inputs.ruleset, /--to-source 172\.24\.4\.100/);
  const hostile: [Record<string, unknown>, string][] = [
    [{ routerName: "r1; reboot" }, "routerName"],
    [{ host: "hv9" }, "host"],
    [{ external: { ...EXTERNAL, address: "172.24.4.100/32 -j ACCEPT" } }, "external.address"],
    [{ external: { ...EXTERNAL, address: "10.0.0.1" } }, "external.address"],
    [{ external: { ...EXTERNAL, gateway: "$(id)" } }, "external.gateway"],
    [{ external: { ...EXTERNAL, cidr: "172.24.4.0/24'" } }, "external.cidr"],
    [{ external: { ...EXTERNAL, bridge: "br0;x" } }, "external.bridge"],
    [{ external: { ...EXTERNAL, ipamHost: "elsewhere" } }, "external.ipamHost"],
    [{ interfaces: [{ ...leg(1), subnetName: "a b" }] }, "interfaces[0].subnetName"],
    [{ interfaces: [{ ...leg(1), cidr: "10.10.1.0/24 -j DROP" }] }, "interfaces[0].cidr"],
    [{ interfaces: [{ ...leg(1), address: "10.10.9.1" }] }, "interfaces[0].address"],
    [{ interfaces: [{ ...leg(1), driver: "nft" }] }, "interfaces[0].driver"],
    [{ interfaces: [leg(1), leg(1)] }, "interfaces[1].subnetName"],
    [{ enableSnat: "yes" }, "enableSnat"],
  ];
  for (const [over, field] of hostile) {
    const r = checkRouterInputs(routerRaw(over));
    assert.ok(
      r.failures.some((f) => f.property === field && f.reason.startsWith(`${field}: `)),
      `${JSON.stringify(over)} refused on ${field}: ${JSON.stringify(r.failures)}`,
    );
  }
  assert.equal(JSON.stringify(hostPoolStats()), before, "check reached no host");
});

test("router diff: name and host replace; attach/detach and SNAT are updates; a hand-deleted rule is drift", () => {
  const inputs = checked(routerRaw());
  const realized = parseRouterState(
    [
      "record=yes",
      "namespace=yes",
      `leg.${routerNames("r1").gatewayDevice}=172.24.4.100/24 kvlb-0e0e0e0e`,
      `leg.${routerInterfaceNames("r1", "lan1-v4").device}=10.10.1.1/24 kvlb-00000001`,
      `leg.${routerInterfaceNames("r1", "lan2-v4").device}=10.10.2.1/24 kvlb-00000002`,
      "sysctls=1,1,2,1",
      "route=172.24.4.1",
      `rulesetsha=${require("node:crypto").createHash("sha256").update(inputs.ruleset).digest("hex")}`,
      "rules=sync",
      "jumps=5",
    ].join("\n"),
  );
  const olds = {
    ...inputs,
    namespace: "qrouter-r1",
    gatewayDevice: "",
    hostKeys: {},
    realized,
  } as RouterOutputs;
  assert.deepEqual(diffRouter(olds, inputs), { changes: false, replaces: [], deleteBeforeReplace: true });
  const detach = checked(routerRaw({ interfaces: [leg(1)] }));
  assert.deepEqual(diffRouter(olds, detach).replaces, []);
  assert.equal(diffRouter(olds, detach).changes, true);
  assert.deepEqual(diffRouter(olds, checked(routerRaw({ host: "hv2" }))).replaces, ["host"]);
  assert.equal(diffRouter(olds, checked(routerRaw({ enableSnat: false }))).replaces.length, 0);
  const drifted = { ...olds, realized: { ...realized, rules: "drift" } };
  assert.equal(diffRouter(drifted, inputs).changes, true, "a rule deleted by hand is a change");
  assert.equal(diffRouter({ ...olds, realized: { ...realized, jumps: 4 } }, inputs).changes, true);
});

test("router steps: restore -n -w, jumps only when missing, no-op when unchanged, delete removes all", () => {
  const inputs = checked(routerRaw());
  const rules = routerRulesStep(inputs).script;
  assert.match(rules, /iptables-restore -n -w < "\$f\.new"/);
  assert.match(rules, /cmp -s "\$f\.new" "\$f" .* echo changed=no; exit 0/);
  assert.match(rules, /-C POSTROUTING -j kvmlab-snat 2>\/dev\/null \|\| .* -A POSTROUTING -j kvmlab-snat/);
  const plumb = routerPlumbStep(inputs).script;
  for (const s of ["net.ipv4.ip_forward=1", "arp_ignore=1", "arp_announce=2"])
    assert.ok(plumb.includes(s), s);
  assert.match(plumb, /ovs-vsctl --may-exist add-port/);
  assert.match(plumb, /master "\$br" up/);
  assert.match(plumb, /ip route replace default via 172\.24\.4\.1/);
  assert.match(plumb, /arping -U -I "\$2" .* garp "\$ns" qg-[0-9a-f]{8} 172\.24\.4\.100/);
  const del = routerDeleteStep("r1").script;
  assert.match(del, /ip netns del "\$ns"/);
  assert.match(del, /rm -rf .?\/var\/lib\/kvmlab\/routers\/r1/);
});

function fipRaw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    fipName: "web-fip",
    hosts: HOSTS,
    host: "hv1",
    routerName: "r1",
    external: { networkName: "ext", subnetName: "ext-v4", cidr: "172.24.4.0/24", ipamHost: "hv1" },
    address: "172.24.4.150",
    target: { address: "10.10.1.5", subnetName: "lan1-v4", networkName: "lan1" },
    ...over,
  };
}

test("floating IP: check derives the ruleset; hostile values refused; re-association is an update", () => {
  const r = checkFloatingIpInputs(fipRaw());
  assert.deepEqual(r.failures, []);
  const inputs = r.inputs as unknown as FloatingIpInputs;
  assert.match(inputs.ruleset, /-d 172\.24\.4\.150\/32 .*-j DNAT --to-destination 10\.10\.1\.5/);
  const dyn = checkFloatingIpInputs(fipRaw({ address: undefined }));
  assert.deepEqual(dyn.failures, []);
  assert.equal((dyn.inputs as { address: string }).address, "");
  for (const [over, field] of [
    [{ address: "172.24.5.1" }, "address"],
    [{ address: "1.2.3.4 -j ACCEPT" }, "address"],
    [{ target: { address: "10.10.1.5/32 -j DROP", subnetName: "s", networkName: "n" } }, "target.address"],
    [{ target: { address: "10.10.1.5", subnetName: "s`id`", networkName: "n" } }, "target.subnetName"],
    [{ routerName: "../r" }, "routerName"],
    [{ host: "hv7" }, "host"],
  ] as [Record<string, unknown>, string][]) {
    const f = checkFloatingIpInputs(fipRaw(over)).failures;
    assert.ok(
      f.some((x) => x.property === field),
      `${field}: ${JSON.stringify(f)}`,
    );
  }
  const olds = {
    ...inputs,
    floatingIp: "172.24.4.150",
    hostKeys: {},
    realized: { addressOnGateway: true, rules: "sync", jumps: 2 },
  } as FloatingIpOutputs;
  assert.equal(diffFloatingIp(olds, inputs).changes, false);
  const moved = checkFloatingIpInputs(
    fipRaw({ target: { address: "10.10.1.6", subnetName: "lan1-v4", networkName: "lan1" } }),
  ).inputs as unknown as FloatingIpInputs;
  assert.deepEqual(diffFloatingIp(olds, moved).replaces, []);
  assert.equal(diffFloatingIp(olds, moved).changes, true);
  assert.equal(
    diffFloatingIp({ ...olds, realized: { ...olds.realized, rules: "drift" } }, inputs).changes,
    true,
  );
  const apply = floatingIpApplyStep(inputs, "172.24.4.150", "10.10.1.4").script;
  assert.ok(
    apply.indexOf("iptables-restore -n -w") < apply.indexOf('ip addr add "$fip/32"'),
    "NAT before the address",
  );
  assert.match(apply, /conntrack -D -s 10\.10\.1\.4/);
  const del = floatingIpDeleteStep(inputs, "172.24.4.150", "10.10.1.5").script;
  assert.match(del, /ip addr del "\$fip\/32"/);
  assert.match(del, /conntrack -D -d "\$fip"/);
  assert.match(del, /-X \$ch/);
});

test("router and floating IP providers serialize without captured modules or secrets", async () => {
  for (const p of [routerProvider, floatingIpProvider])
    await assertSerializable(p, {
      forbid: [/handlebars/i, /require\("yaml"\)/, /\.hbs\b/, /templates\//],
      methods: ["check", "diff", "create", "read", "update", "delete"],
      maxBytes: 256 * 1024,
    });
});

test("detaching a leg removes its OVS port row too (the veth goes with its qr- end, the row would stay and block the network's delete); delete sweeps rows whose device is gone", () => {
  const inputs = checked(routerRaw({ interfaces: [leg(1)] }));
  const plumb = routerPlumbStep(inputs).script.split("\n");
  const sweep = plumb.filter(
    (l) => l.startsWith("keepHost=") || l.includes('find port external_ids:kvmlab-router="$ns"'),
  );
  assert.equal(sweep.length, 2, "the keep list and the sweep");
  const kept = routerInterfaceNames("r1", "lan1-v4").hostDevice;
  const gone = routerInterfaceNames("r1", "lan2-v4").hostDevice;
  // A stand-in ovs-vsctl: `find` lists the router's rows (the kept leg's, the detached leg's,
  // the gateway's); del-port calls are written to stdout.
  const fake = (rows: string[]) =>
    `ovs-vsctl() { case "$*" in *" find port "*) printf '%s\\n' ${rows.join(" ")} ;; *del-port*) echo "DEL \${@: -1}" ;; esac; }`;
  const run = (lines: string[], rows: string[]) =>
    spawnSync("bash", ["--noprofile", "--norc", "-c", [fake(rows), 'ns="qrouter-r1"', ...lines].join("\n")], {
      encoding: "utf8",
    });
  const gw = routerNames("r1").gatewayHostDevice;
  const detach = run(sweep, [kept, gone, gw]);
  assert.equal(detach.status, 0, detach.stderr);
  assert.equal(detach.stdout.trim(), `DEL ${gone}`);
  // Delete: every row still labelled with the router goes, device or not.
  const del = routerDeleteStep("r1")
    .script.split("\n")
    .filter((l) => l.includes("find port") && l.includes("del-port"));
  assert.equal(del.length, 1);
  const swept = run(del, [kept, gone]);
  assert.equal(
    swept.stdout.trim().split("\n").sort().join(","),
    [`DEL ${gone}`, `DEL ${kept}`].sort().join(","),
  );
});
