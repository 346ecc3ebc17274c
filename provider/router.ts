/**
 * Router: Neutron's legacy L3 agent router on one network host (research/openstack-semantics.md §1).
 *
 * On the router's host (`host`, default the first of `hosts`):
 *   namespace  qrouter-<routerName> with Neutron's sysctls (ip_forward=1, arp_ignore=1,
 *              arp_announce=2, nf_conntrack_tcp_be_liberal=1)
 *   qr- legs   one veth per attached subnet: qr-<id> in the namespace holding the subnet's
 *              gateway address, its peer kvlt-<id> in the subnet's bridge (Linux bridge or OVS)
 *   qg- leg    qg-<id> on the external network's bridge with `external.address` (recorded in the
 *              external subnet's IPAM as owner router:<name>:gw) and the default route via
 *              `external.gateway`; gratuitous ARP (arping -U, -A) after the address is set
 *   rules      the `ruleset` input (renderRouterRuleset, derived by check: it shows in preview)
 *              applied with `iptables-restore -n -w` in the namespace, plus the jumps from the
 *              builtin chains; the applied dump is kept so read reports hand edits as drift
 *   files      /var/lib/kvmlab/routers/<name>/rules.v4, rules.saved; record router/<name>.json
 *
 * Attaching or detaching a subnet is an update: legs not listed any more are removed.
 * Cross-host: the router reaches servers on other hosts over the network's VXLAN (Network does it).
 */
import type * as pulumi from "@pulumi/pulumi";
import { KVMLAB_STATE_DIR } from "../core/paths";
import {
  ROUTER_CHAINS,
  ROUTER_JUMPS,
  routerGatewayOwner,
  routerInterfaceNames,
  routerNames,
} from "../core/router";
import { cidrContains, ipv4ToInt, isIPv4, tryParseCidr } from "../core/net";
import { renderRouterRuleset } from "../core/router";
import {
  UNKNOWN,
  checkHostList,
  checkName,
  requireFeatures,
  runChecked,
  runSteps,
  shQuote,
  showValue,
  uploadStep,
  withHostLock,
  writeRecordStep,
  type HostConnection,
  type Step,
  vethLegLines,
} from "./host";
import {
  KvmlabResource,
  checkedOwner,
  claimStep,
  claimedNow,
  guardStep,
  ovsOwnerGuardLines,
  ovsOwnerIds,
  ownerIn,
  releaseOwnerStep,
  type OwnedObject,
  changedKeys,
  defineResource,
  failureList,
  hostNamed,
  isKnown,
  normalizeHosts,
  parseKeyValues,
  type Checked,
  type DiffResult,
  type HostConnectionArgs,
  type InProjectArgs,
} from "./kit";
import { charges } from "./quota";
import { allocateAddress, releaseAddress } from "./ipam";
import type { NetworkDriver } from "./network";

/** A subnet the router is attached to (from the Network and Subnet outputs). */
export interface RouterLeg {
  subnetName: string;
  networkName: string;
  /** The network's bridge (Network.bridge). */
  bridge: string;
  driver: NetworkDriver;
  cidr: string;
  /** The subnet's gateway: the qr- leg holds it. */
  address: string;
  mtu: number;
}

export interface RouterExternal extends RouterLeg {
  /** The upstream gateway (the external subnet's gateway), the router's default route. */
  gateway: string;
  /** The host keeping the external subnet's IPAM record (its Subnet's dhcpHost). */
  ipamHost: string;
}

type Inputish<T> = { [K in keyof T]: pulumi.Input<T[K]> };

export interface RouterArgs extends InProjectArgs {
  /** @default the resource name */
  readonly routerName?: pulumi.Input<string>;
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** The network host that runs the router. @default the first host */
  readonly host?: pulumi.Input<string>;
  /** The external leg; `address` is the router's own address there (Neutron's gateway port). */
  readonly external: pulumi.Input<Inputish<RouterExternal>>;
  /** Attached subnets. @default [] */
  readonly interfaces?: pulumi.Input<pulumi.Input<Inputish<RouterLeg>>[]>;
  /** Gateway SNAT for internal subnets. @default true */
  readonly enableSnat?: pulumi.Input<boolean>;
  /** `--random-fully` on SNAT rules. @default true */
  readonly randomFully?: pulumi.Input<boolean>;
  /** Owner (kit/owner.ts). @default filled by the base class */
  readonly owner?: pulumi.Input<string>;
}

export interface RouterInputs {
  routerName: string;
  hosts: HostConnection[];
  host: string;
  external: RouterExternal;
  interfaces: RouterLeg[];
  enableSnat: boolean;
  randomFully: boolean;
  /** The rendered ruleset (derived by check; a multi-line string so preview --diff shows lines). */
  ruleset: string;
  /** Owner of the namespace, files, record and the gateway's IPAM allocation (kit/owner.ts). */
  owner: string;
  /** Identity project `<domain>/<name>` ("" = none; the kit fills it): in the record and the legs' external_ids. */
  project?: string;
}

export interface RouterHostState {
  namespace: boolean;
  /** device → "address/prefix master" as found. */
  legs: Record<string, string>;
  sysctls: string;
  defaultRoute: string;
  /** sha256 of the applied ruleset file, "" when none. */
  rulesetSha: string;
  /** "sync" when the chains are as applied, "drift" when edited by hand, "none" when missing. */
  rules: string;
  jumps: number;
  record: boolean;
}

export interface RouterOutputs extends RouterInputs {
  namespace: string;
  gatewayDevice: string;
  hostKeys: Record<string, string>;
  realized: RouterHostState;
}

export const ROUTER_SYSCTLS: readonly [string, string][] = [
  ["net.ipv4.ip_forward", "1"],
  ["net.ipv4.conf.all.arp_ignore", "1"],
  ["net.ipv4.conf.all.arp_announce", "2"],
  ["net.netfilter.nf_conntrack_tcp_be_liberal", "1"],
];

function checkLeg(field: string, leg: unknown, add: (f: string, r: string | undefined) => void): void {
  if (!isKnown(leg)) return;
  if (leg === null || typeof leg !== "object") {
    add(
      field,
      `${field}: expected {subnetName, networkName, bridge, driver, cidr, address, mtu}, got ${showValue(leg)}`,
    );
    return;
  }
  const l = leg as Record<string, unknown>;
  for (const f of ["subnetName", "networkName"])
    if (isKnown(l[f])) add(`${field}.${f}`, checkName(`${field}.${f}`, l[f]));
  if (isKnown(l.bridge) && (typeof l.bridge !== "string" || !/^kvlb-[0-9a-f]{8}$/.test(l.bridge)))
    add(
      `${field}.bridge`,
      `${field}.bridge: expected the Network's bridge output (kvlb-xxxxxxxx), got ${showValue(l.bridge)}`,
    );
  if (isKnown(l.driver) && l.driver !== "linuxbridge" && l.driver !== "openvswitch")
    add(
      `${field}.driver`,
      `${field}.driver: expected "linuxbridge" or "openvswitch", got ${showValue(l.driver)}`,
    );
  if (
    isKnown(l.mtu) &&
    (typeof l.mtu !== "number" || !Number.isInteger(l.mtu) || l.mtu < 576 || l.mtu > 9000)
  )
    add(`${field}.mtu`, `${field}.mtu: expected an integer 576-9000, got ${showValue(l.mtu)}`);
  const c = typeof l.cidr === "string" ? tryParseCidr(l.cidr) : undefined;
  if (isKnown(l.cidr) && (!c || c.prefix < 8 || c.prefix > 30))
    add(
      `${field}.cidr`,
      `${field}.cidr: expected an IPv4 network like 10.10.0.0/24 (prefix 8-30), got ${showValue(l.cidr)}`,
    );
  for (const f of ["address", "gateway"]) {
    if (!(f in l) || !isKnown(l[f])) continue;
    const v = l[f];
    if (!isIPv4(v)) add(`${field}.${f}`, `${field}.${f}: expected an IPv4 address, got ${showValue(v)}`);
    else if (c && (!cidrContains(c, v) || ipv4ToInt(v) === c.network || ipv4ToInt(v) === c.broadcast))
      add(`${field}.${f}`, `${field}.${f}: expected a host address inside ${c.text}, got ${showValue(v)}`);
  }
}

/** Validates and normalizes raw inputs, and renders the ruleset (pure). */
export function checkRouterInputs(news: Record<string, unknown>): Checked {
  const found = failureList();
  const add = (f: string, r: string | undefined): void => found.add(f, r);
  if (isKnown(news.routerName)) add("routerName", checkName("routerName", news.routerName));
  for (const e of checkHostList("hosts", news.hosts)) add("hosts", e);
  const hosts = normalizeHosts(news.hosts);
  const out: Record<string, unknown> = { ...news, hosts };
  out.interfaces = news.interfaces ?? [];
  out.enableSnat = news.enableSnat ?? true;
  out.randomFully = news.randomFully ?? true;
  for (const f of ["enableSnat", "randomFully"])
    if (isKnown(out[f]) && typeof out[f] !== "boolean")
      add(f, `${f}: expected true or false, got ${showValue(out[f])}`);
  const hostList = Array.isArray(hosts) && isKnown(hosts) ? (hosts as HostConnection[]) : undefined;
  out.host = news.host ?? (hostList && hostList.length > 0 ? hostList[0].name : news.host);
  if (hostList && isKnown(out.host) && !hostList.some((h) => h.name === out.host))
    add(
      "host",
      `host: ${showValue(out.host)} is not one of the hosts (${hostList.map((h) => h.name).join(", ")})`,
    );
  checkLeg("external", news.external, add);
  if (isKnown(news.external) && news.external && typeof news.external === "object") {
    const e = news.external as Record<string, unknown>;
    if (!("gateway" in e))
      add("external.gateway", "external.gateway: required (the external subnet's gateway)");
    if (hostList && isKnown(e.ipamHost) && !hostList.some((h) => h.name === e.ipamHost))
      add(
        "external.ipamHost",
        `external.ipamHost: ${showValue(e.ipamHost)} is not one of the hosts; give the external Subnet's dhcpHost`,
      );
  }
  if (isKnown(out.interfaces)) {
    if (!Array.isArray(out.interfaces))
      add("interfaces", `interfaces: expected a list of subnets, got ${showValue(out.interfaces)}`);
    else {
      const seen = new Set<string>();
      out.interfaces.forEach((leg, i) => {
        checkLeg(`interfaces[${i}]`, leg, add);
        const n = isKnown(leg) ? (leg as RouterLeg).subnetName : undefined;
        if (typeof n === "string" && seen.has(n))
          add(
            `interfaces[${i}].subnetName`,
            `interfaces[${i}].subnetName: ${n} is attached twice; list each subnet once`,
          );
        if (typeof n === "string") seen.add(n);
      });
    }
  }
  out.owner = checkedOwner(news, "Router", "routerName", add);
  const ready =
    found.failures.length === 0 &&
    isKnown(news.routerName) &&
    isKnown(news.external) &&
    isKnown(out.enableSnat) &&
    isKnown(out.randomFully);
  if (ready) {
    const names = routerNames(news.routerName as string);
    out.ruleset = renderRouterRuleset({
      routerName: news.routerName as string,
      gatewayDevice: names.gatewayDevice,
      gatewayAddress: (news.external as RouterExternal).address,
      enableSnat: out.enableSnat as boolean,
      randomFully: out.randomFully as boolean,
    });
  } else if (found.failures.length === 0) {
    out.ruleset = news.ruleset ?? UNKNOWN;
  }
  return { inputs: out, failures: found.failures };
}

export const ROUTER_REPLACE_KEYS = ["routerName", "host"] as const;

function sha256(text: string): string {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  return crypto.createHash("sha256").update(text).digest("hex");
}

/** What the host should have: legs as "address/prefix master". */
export function expectedLegs(
  inputs: Pick<RouterInputs, "routerName" | "external" | "interfaces">,
): Record<string, string> {
  const legs: Record<string, string> = {};
  const prefix = (cidr: string): string => cidr.split("/")[1];
  legs[routerNames(inputs.routerName).gatewayDevice] =
    `${inputs.external.address}/${prefix(inputs.external.cidr)} ${inputs.external.bridge}`;
  for (const l of inputs.interfaces)
    legs[routerInterfaceNames(inputs.routerName, l.subnetName).device] =
      `${l.address}/${prefix(l.cidr)} ${l.bridge}`;
  return legs;
}

export function routerDrift(news: RouterInputs, r: RouterHostState | undefined): boolean {
  if (!r) return true;
  return (
    !r.namespace ||
    !r.record ||
    JSON.stringify(r.legs) !== JSON.stringify(sortKeys(expectedLegs(news))) ||
    r.sysctls !== ROUTER_SYSCTLS.map(([, v]) => v).join(",") ||
    r.defaultRoute !== news.external.gateway ||
    r.rulesetSha !== sha256(news.ruleset) ||
    r.rules !== "sync" ||
    r.jumps !== ROUTER_JUMPS.length
  );
}

function sortKeys(o: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));
}

export function diffRouter(olds: RouterOutputs, news: RouterInputs): DiffResult {
  const replaces = changedKeys(olds, news, ROUTER_REPLACE_KEYS);
  const updates = changedKeys(olds, news, [
    "hosts",
    "external",
    "interfaces",
    "enableSnat",
    "randomFully",
    "ruleset",
  ]);
  return {
    changes: replaces.length > 0 || updates.length > 0 || routerDrift(news, olds.realized),
    replaces,
    deleteBeforeReplace: true,
  };
}

export function routerDir(routerName: string): string {
  return `${KVMLAB_STATE_DIR}/routers/${routerName}`;
}

/** Shell lines that dump kvmlab's router chains (not the floating IPs' ones) in the namespace. */
const DUMP_RULES =
  "dump() { { ip netns exec \"$ns\" iptables-save -t nat; ip netns exec \"$ns\" iptables-save -t mangle; } 2>/dev/null | grep -E '^-A (kvmlab-(PREROUTING|OUTPUT|POSTROUTING|snat|mark) |PREROUTING |OUTPUT |POSTROUTING )' | sed 's/\\[[0-9:]*\\]//'; }";

function legLines(
  ns: string,
  dev: string,
  hostDev: string,
  leg: RouterLeg,
  ovsIds: string,
  owners: readonly string[],
  routerName: string,
): string[] {
  const addr = `${leg.address}/${leg.cidr.split("/")[1]}`;
  return [
    `dev=${dev}; hd=${hostDev}; br=${shQuote(leg.bridge)}; addr=${shQuote(addr)}; mtu=${leg.mtu}`,
    '[ -e "/sys/class/net/$br" ] || { echo "bridge $br of network ' +
      leg.networkName +
      ' is missing on this host; create the Network on it first" >&2; exit 31; }',
    ...vethLegLines({
      nsDevVar: "dev",
      externalId: { key: "kvmlab-router", value: ns },
      openvswitch: leg.driver === "openvswitch",
      clearNsSide: true,
      ovsTxOff: true,
      ovsIds,
      ovsGuard: owners,
      ovsGuardText: {
        what: `the leg ${hostDev} of router ${routerName} on network ${leg.networkName}`,
        fix: `check which stack holds router ${routerName} (ovs-vsctl list port ${hostDev}); rename this router or delete it from that stack`,
      },
    }),
    'ip netns exec "$ns" ip link set dev "$dev" mtu $mtu up',
    'for a in $(ip netns exec "$ns" ip -4 -o addr show dev "$dev" | awk \'{print $4}\'); do [ "$a" = "$addr" ] || [ "${a%/32}" != "$a" ] || ip netns exec "$ns" ip addr del "$a" dev "$dev"; done',
    'ip netns exec "$ns" ip addr replace "$addr" dev "$dev"',
  ];
}

/** Step: namespace, sysctls, legs (extra qr- legs removed), default route. Idempotent. */
export function routerPlumbStep(
  inputs: RouterInputs,
  owners: readonly string[] = [inputs.owner ?? ""],
): Step {
  const n = routerNames(inputs.routerName);
  const ns = n.namespace;
  const keep = inputs.interfaces.map((l) => routerInterfaceNames(inputs.routerName, l.subnetName).device);
  // Every OVS leg carries the router's owner and project (issue 14).
  const ids = ovsOwnerIds(inputs.owner ?? "", inputs.project ?? "");
  const lines = [
    "set -e",
    `ns=${shQuote(ns)}`,
    'for t in arping conntrack; do command -v $t >/dev/null || { echo "$t is missing on this host; install the Debian package $t" >&2; exit 30; }; done',
    '[ -e "/run/netns/$ns" ] || ip netns add "$ns"',
    'ip netns exec "$ns" ip link set lo up',
    ...ROUTER_SYSCTLS.filter(([k]) => !k.startsWith("net.netfilter")).map(
      ([k, v]) => `ip netns exec "$ns" sysctl -q -w ${k}=${v}`,
    ),
    ...legLines(ns, n.gatewayDevice, n.gatewayHostDevice, inputs.external, ids, owners, inputs.routerName),
    ...inputs.interfaces.flatMap((l) => {
      const d = routerInterfaceNames(inputs.routerName, l.subnetName);
      return legLines(ns, d.device, d.hostDevice, l, ids, owners, inputs.routerName);
    }),
    // Detach: qr- legs no longer listed go, with their peers.
    `keep=" ${keep.join(" ")} "`,
    'for d in $(ip netns exec "$ns" ip -o link show | awk -F\': \' \'{print $2}\' | cut -d@ -f1 | grep "^qr-" || true); do case "$keep" in *" $d "*) ;; *) ip netns exec "$ns" ip link del dev "$d";; esac; done',
    // Deleting a qr- leg takes its kvlt- peer with it, but not the peer's OVS port row: remove
    // the rows of this router's legs that are no longer listed (a stale row would stay on the
    // network's bridge, labelled with the router's owner, and block the network's delete).
    `keepHost=" ${[n.gatewayHostDevice, ...inputs.interfaces.map((l) => routerInterfaceNames(inputs.routerName, l.subnetName).hostDevice)].join(" ")} "`,
    'if command -v ovs-vsctl >/dev/null 2>&1; then for hd in $(ovs-vsctl --bare --columns=name find port external_ids:kvmlab-router="$ns" 2>/dev/null || true); do case "$keepHost" in *" $hd "*) ;; *) ovs-vsctl --if-exists del-port "$hd";; esac; done; fi',
    `ip netns exec "$ns" ip route replace default via ${inputs.external.gateway} dev ${n.gatewayDevice}`,
    // Gratuitous ARP for the gateway address (Neutron: -U then -A, exit 1 = no reply, expected).
    // In the background, as Neutron sends it from a thread: no reply is expected, so each waits out -w.
    `setsid sh -c 'ip netns exec "$1" arping -U -I "$2" -c 1 -w 1 "$3"; ip netns exec "$1" arping -A -I "$2" -c 1 -w 1 "$3"' garp "$ns" ${n.gatewayDevice} ${inputs.external.address} </dev/null >/dev/null 2>&1 &`,
  ];
  return { label: `plumb router ${inputs.routerName}`, script: lines.join("\n") };
}

/** Step: the ruleset applied atomically (`iptables-restore -n -w`) and the builtin jumps. */
export function routerRulesStep(inputs: RouterInputs): Step {
  const ns = routerNames(inputs.routerName).namespace;
  const dir = routerDir(inputs.routerName);
  return {
    label: `apply rules of router ${inputs.routerName}`,
    script: [
      "set -e",
      `ns=${shQuote(ns)}; f=${shQuote(`${dir}/rules.v4`)}; saved=${shQuote(`${dir}/rules.saved`)}`,
      DUMP_RULES,
      // Unchanged file and unchanged chains: nothing to do (no mutating command).
      'if [ -f "$f" ] && cmp -s "$f.new" "$f" && [ -f "$saved" ] && dump | cmp -s - "$saved"; then rm -f "$f.new"; echo changed=no; exit 0; fi',
      ...ROUTER_CHAINS.natShared.map(
        (c) => `ip netns exec "$ns" iptables -w -t nat -N ${c} 2>/dev/null || true`,
      ),
      'ip netns exec "$ns" iptables-restore -n -w < "$f.new"',
      ...ROUTER_JUMPS.map(
        ([t, chain, target]) =>
          `ip netns exec "$ns" iptables -w -t ${t} -C ${chain} -j ${target} 2>/dev/null || ip netns exec "$ns" iptables -w -t ${t} -A ${chain} -j ${target}`,
      ),
      `ip netns exec "$ns" sysctl -q -w ${ROUTER_SYSCTLS[3][0]}=${ROUTER_SYSCTLS[3][1]}`,
      'mv -f "$f.new" "$f"',
      'dump > "$saved"',
      "echo changed=yes",
    ].join("\n"),
  };
}

export function routerReadStep(inputs: Pick<RouterInputs, "routerName">): Step {
  const ns = routerNames(inputs.routerName).namespace;
  const dir = routerDir(inputs.routerName);
  return {
    label: `read router ${inputs.routerName}`,
    script: [
      `ns=${shQuote(ns)}; f=${shQuote(`${dir}/rules.v4`)}; saved=${shQuote(`${dir}/rules.saved`)}; rec=${shQuote(`${KVMLAB_STATE_DIR}/records/router/${inputs.routerName}.json`)}`,
      DUMP_RULES,
      'echo "record=$([ -f "$rec" ] && echo yes || echo no)"',
      'if [ ! -e "/run/netns/$ns" ]; then echo namespace=no; exit 0; fi',
      "echo namespace=yes",
      "for d in $(ip netns exec \"$ns\" ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E \"^q[rg]-\" || true); do",
      '  a=$(ip netns exec "$ns" ip -4 -o addr show dev "$d" | awk \'{print $4}\' | grep -v "/32$" | head -n1)',
      '  p=$(ip netns exec "$ns" ethtool -S "$d" 2>/dev/null | awk \'/peer_ifindex/ {print $2}\')',
      "  hd=$(ip -o link show | awk -F': ' -v i=\"$p\" '$1 == i {print $2}' | cut -d@ -f1)",
      '  m=""; if [ -n "$hd" ]; then m=$(ovs-vsctl port-to-br "$hd" 2>/dev/null || true); [ -n "$m" ] || { m=$(readlink "/sys/class/net/$hd/master" 2>/dev/null || true); m=${m##*/}; }; fi',
      '  echo "leg.$d=$a $m"',
      "done",
      `echo "sysctls=$(for k in ${ROUTER_SYSCTLS.map(([k]) => k).join(" ")}; do ip netns exec "$ns" sysctl -n $k 2>/dev/null || echo x; done | paste -sd,)"`,
      'echo "route=$(ip netns exec "$ns" ip -4 route show default | awk \'{print $3}\' | head -n1)"',
      'echo "rulesetsha=$([ -f "$f" ] && sha256sum "$f" | cut -d" " -f1)"',
      'if [ ! -f "$saved" ]; then echo rules=none; elif dump | cmp -s - "$saved"; then echo rules=sync; else echo rules=drift; fi',
      `n=0; for j in ${ROUTER_JUMPS.map(([t, c, x]) => `${t}:${c}:${x}`).join(" ")}; do t=\${j%%:*}; r=\${j#*:}; c=\${r%%:*}; x=\${r#*:}; ip netns exec "$ns" iptables -w -t $t -C $c -j $x 2>/dev/null && n=$((n+1)); done; echo jumps=$n`,
    ].join("\n"),
  };
}

export function parseRouterState(stdout: string): RouterHostState {
  const kv = parseKeyValues(stdout);
  const legs: Record<string, string> = {};
  for (const [k, v] of kv) if (k.startsWith("leg.")) legs[k.slice(4)] = v;
  return {
    namespace: kv.get("namespace") === "yes",
    legs: sortKeys(legs),
    sysctls: kv.get("sysctls") ?? "",
    defaultRoute: kv.get("route") ?? "",
    rulesetSha: kv.get("rulesetsha") ?? "",
    rules: kv.get("rules") ?? "none",
    jumps: Number(kv.get("jumps") ?? "0"),
    record: kv.get("record") === "yes",
  };
}

/** Step: everything of the router gone from its host (idempotent): legs, peers, namespace, files, record. */
export function routerDeleteStep(routerName: string, owners: readonly string[] = []): Step {
  const n = routerNames(routerName);
  const guard = ovsOwnerGuardLines(
    "port",
    '"$hd"',
    owners,
    `an OVS port of router ${routerName}`,
    `check which stack holds router ${routerName} (ovs-vsctl find port external_ids:kvmlab-router=${n.namespace}); delete it from that stack`,
  );
  return {
    label: `delete router ${routerName}`,
    script: [
      `ns=${shQuote(n.namespace)}`,
      // Never across owners (issue 14): every OVS leg of this router is checked before any goes.
      ...(guard.length > 0
        ? [
            'for hd in $(ovs-vsctl --bare --columns=name find port external_ids:kvmlab-router="$ns" 2>/dev/null || true); do',
            ...guard.map((l) => `  ${l}`),
            "done",
          ]
        : []),
      'if [ -e "/run/netns/$ns" ]; then',
      "  for d in $(ip netns exec \"$ns\" ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E \"^q[rg]-\" || true); do",
      '    p=$(ip netns exec "$ns" ethtool -S "$d" 2>/dev/null | awk \'/peer_ifindex/ {print $2}\')',
      "    hd=$(ip -o link show | awk -F': ' -v i=\"$p\" '$1 == i {print $2}' | cut -d@ -f1)",
      '    [ -n "$hd" ] && { ovs-vsctl --if-exists del-port "$hd" 2>/dev/null || true; }',
      '    ip netns exec "$ns" ip link del dev "$d" 2>/dev/null || true',
      "  done",
      '  ip netns del "$ns"',
      "fi",
      // OVS port rows of this router whose device is already gone (owners checked above).
      'if command -v ovs-vsctl >/dev/null 2>&1; then for hd in $(ovs-vsctl --bare --columns=name find port external_ids:kvmlab-router="$ns" 2>/dev/null || true); do ovs-vsctl --if-exists del-port "$hd"; done; fi',
      // Peers left behind by a failed create (their namespace end already gone).
      `for hd in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^kvlt-' || true); do e=$(ovs-vsctl get port "$hd" external_ids:kvmlab-router 2>/dev/null | tr -d '"'); [ "$e" = "$ns" ] && { ovs-vsctl --if-exists del-port "$hd"; ip link del dev "$hd" 2>/dev/null || true; }; done; true`,
      `rm -rf ${shQuote(routerDir(routerName))}`,
      `rm -f ${shQuote(`${KVMLAB_STATE_DIR}/records/router/${routerName}.json`)}`,
      // Empty parents go too (under the host lock, so no create races this).
      `rmdir ${shQuote(`${KVMLAB_STATE_DIR}/records/router`)} ${shQuote(`${KVMLAB_STATE_DIR}/routers`)} 2>/dev/null || true`,
    ].join("\n"),
  };
}

/** The router's objects on its host, for the owner guards (keyed by the router's name). */
export function routerOwned(routerName: string): OwnedObject {
  const ns = routerNames(routerName).namespace;
  return {
    kind: "router",
    key: [routerName],
    what: `router ${routerName} (namespace ${ns})`,
    field: "routerName",
    exists: `[ -e ${shQuote(`/run/netns/${ns}`)} ]`,
  };
}

function routerHost(inputs: Pick<RouterInputs, "hosts" | "host">): HostConnection {
  return hostNamed(inputs.hosts, inputs.host, "router");
}

function externalRef(inputs: Pick<RouterInputs, "hosts" | "external">) {
  return {
    host: hostNamed(inputs.hosts, inputs.external.ipamHost, "external.ipamHost"),
    networkName: inputs.external.networkName,
    subnetName: inputs.external.subnetName,
  };
}

async function applyRouter(
  inputs: RouterInputs,
  owners: readonly string[],
  olds?: RouterInputs,
): Promise<RouterHostState> {
  const host = routerHost(inputs);
  await requireFeatures(host, ["firewall"]);
  const guard = guardStep(routerOwned(inputs.routerName), owners, true);
  await withHostLock(host, () => runChecked(host, [guard]));
  const owner = routerGatewayOwner(inputs.routerName);
  // The new gateway address is taken BEFORE the old one is given up: a refused address (taken,
  // outside the subnet) leaves the router on its old gateway. In the same IPAM record the move
  // is one atomic allocation (planAllocation gives up the owner's old fixed address).
  await allocateAddress(externalRef(inputs), owner, {
    fixedIp: inputs.external.address,
    holder: inputs.owner,
  });
  const moved = olds !== undefined && externalMoved(olds, inputs);
  const outs = await withHostLock(host, async () =>
    runChecked(
      host,
      [
        guard,
        // Another external network (bridge or driver): the gateway leg is made anew on it.
        ...(olds && olds.external.bridge !== inputs.external.bridge ? [gatewayUnplugStep(olds, owners)] : []),
        routerPlumbStep(inputs, owners),
        uploadStep(`${routerDir(inputs.routerName)}/rules.v4.new`, inputs.ruleset, { mode: "0644" }),
        routerRulesStep(inputs),
        writeRecordStep("router", inputs.routerName, {
          router: inputs.routerName,
          namespace: routerNames(inputs.routerName).namespace,
          subnets: inputs.interfaces.map((l) => l.subnetName),
          gateway: inputs.external.address,
          owner: inputs.owner,
          project: inputs.project ?? "",
        }),
        routerReadStep(inputs),
      ],
      { timeoutMs: 60_000 },
    ),
  );
  // The old gateway's record (another network, subnet or IPAM host) lets go only now.
  if (olds && moved) await releaseAddress(externalRef(olds), owner, ownerIn(olds));
  return parseRouterState(outs[outs.length - 1]);
}

/** True when the external leg moved to another IPAM record (network, subnet or its host). */
function externalMoved(olds: RouterInputs, news: RouterInputs): boolean {
  return (
    olds.external.networkName !== news.external.networkName ||
    olds.external.subnetName !== news.external.subnetName ||
    olds.external.ipamHost !== news.external.ipamHost
  );
}

/** Step: removes the router's gateway leg from the OLD external bridge (update to another network). */
function gatewayUnplugStep(olds: RouterInputs, owners: readonly string[]): Step {
  const n = routerNames(olds.routerName);
  return {
    label: `unplug router ${olds.routerName}'s gateway from bridge ${olds.external.bridge}`,
    script: [
      `hd=${shQuote(n.gatewayHostDevice)}; br=${shQuote(olds.external.bridge)}`,
      ...(olds.external.driver === "openvswitch"
        ? ovsOwnerGuardLines(
            "port",
            '"$hd"',
            owners,
            `the gateway port ${n.gatewayHostDevice} of router ${olds.routerName}`,
            `check which stack holds router ${olds.routerName}; delete it from that stack`,
          )
        : []),
      olds.external.driver === "openvswitch"
        ? 'command -v ovs-vsctl >/dev/null 2>&1 && ovs-vsctl --if-exists del-port "$br" "$hd"'
        : "true",
      'ip link del dev "$hd" 2>/dev/null || true',
    ].join("\n"),
  };
}

async function removeRouter(o: RouterInputs): Promise<void> {
  const host = routerHost(o);
  const owner = ownerIn(o);
  const owned = routerOwned(o.routerName);
  await withHostLock(host, () =>
    runChecked(host, [
      ...(owner ? [guardStep(owned, [owner])] : []),
      routerDeleteStep(o.routerName, [owner]),
      ...(owner ? [releaseOwnerStep(owned, [owner])] : []),
    ]),
  );
  await releaseAddress(externalRef(o), routerGatewayOwner(o.routerName), owner);
}

function routerOutputs(inputs: RouterInputs, realized: RouterHostState): RouterOutputs {
  const n = routerNames(inputs.routerName);
  return { ...inputs, namespace: n.namespace, gatewayDevice: n.gatewayDevice, hostKeys: {}, realized };
}

const router = defineResource<RouterInputs, RouterOutputs>({
  type: "Router",
  inputKeys: [
    "routerName",
    "hosts",
    "host",
    "external",
    "interfaces",
    "enableSnat",
    "randomFully",
    "ruleset",
    "owner",
  ],
  outputKeys: ["namespace", "gatewayDevice", "hostKeys", "realized"],
  secretOutputs: ["hosts"],
  check: (news) => checkRouterInputs(news),
  diff: diffRouter,
  quota: charges(() => ({ routers: 1 })), // issue 14: charged to the project by the kit
  async create(inputs) {
    const host = routerHost(inputs);
    const [claim] = await withHostLock(host, () =>
      runChecked(host, [claimStep(routerOwned(inputs.routerName), inputs.owner)]),
    );
    let realized: RouterHostState;
    try {
      realized = await applyRouter(inputs, [inputs.owner]);
    } catch (err) {
      // Clean only what this call made (never another owner's router).
      if (claimedNow(claim)) await removeRouter(inputs).catch(() => undefined);
      throw err;
    }
    return { id: inputs.routerName, outs: routerOutputs(inputs, realized) };
  },
  async read(_id, props) {
    const host = routerHost(props);
    const [r] = await runSteps(host, [routerReadStep(props)]);
    if (r.code !== 0)
      throw new Error(`host ${host.name}: reading router ${props.routerName} failed: ${r.stderr.trim()}`);
    const realized = parseRouterState(r.stdout);
    return realized.namespace || realized.record ? { ...props, realized } : undefined;
  },
  async update(_id, olds, news) {
    return routerOutputs(news, await applyRouter(news, [news.owner, ownerIn(olds)], olds));
  },
  async delete(_id, olds) {
    await removeRouter(olds);
  },
});

export const routerProvider = router.provider;

/** A Neutron-style router (`pulumi-nodejs:dynamic/kvmlab:Router`). */
export class Router extends KvmlabResource<RouterInputs, RouterOutputs> {
  declare readonly routerName: pulumi.Output<string>;
  declare readonly namespace: pulumi.Output<string>;
  declare readonly gatewayDevice: pulumi.Output<string>;
  declare readonly external: pulumi.Output<RouterExternal>;
  declare readonly ruleset: pulumi.Output<string>;
  declare readonly hosts: pulumi.Output<HostConnection[]>;
  declare readonly host: pulumi.Output<string>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<RouterHostState>;

  constructor(name: string, args: RouterArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(router, name, { ...args, routerName: args.routerName ?? name }, opts);
  }
}
