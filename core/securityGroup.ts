/**
 * Security groups after Neutron's iptables_hybrid firewall (research/openstack-semantics.md §2):
 * names, rule checks and the per-port ruleset as `iptables-restore -n` input. Pure.
 *
 * Per port (tap device <tap>, id = sha256 of the tap name, 8 hex: the tap is the port's identity
 * on its host, so two ports can never share chains, whatever their portNames):
 *   filter kvmlab-i<id>   ingress to the VM  (FORWARD --physdev-out <tap> --physdev-is-bridged)
 *   filter kvmlab-o<id>   egress from the VM (FORWARD/INPUT --physdev-in <tap> --physdev-is-bridged)
 *   filter kvmlab-s<id>   anti-spoofing: only the port's IP with its MAC
 *   raw    kvmlab-z<id>   conntrack zone: `-i <bridge> -j CT --zone N` (the port's own qbr- bridge
 *                         for OVS ports = a zone per port; the network's bridge for Linux bridge
 *                         ports = a zone per network, as Neutron's plain iptables driver does).
 *                         N is allocated on the host (a record per zone, under the host lock), so
 *                         it is not known at check: the rendered ruleset carries ZONE_ON_HOST.
 * Shared (created once per host, never declared in a restore, so never flushed):
 *   filter kvmlab-sg-chain     per-port jumps inserted at its top, `-j ACCEPT` last
 *   filter kvmlab-sg-fallback  `-j DROP`
 * Remote groups: ipset `kvmlab-g<id>` (hash:net), replaced with `ipset swap`.
 */
import { DEVICE_NAME_RE, NAME_RE, shortId } from "./names";
import { isIPv4, tryParseCidr } from "./net";

export type SgDirection = "ingress" | "egress";
export type SgProtocol = "tcp" | "udp" | "icmp" | "any";

export interface SecurityGroupRule {
  direction: SgDirection;
  protocol: SgProtocol;
  /** 0 = any (tcp/udp only). */
  portMin: number;
  portMax: number;
  /** "" = any, else an IPv4 CIDR. */
  remoteCidr: string;
  /** "" = none, else the name of a SecurityGroup whose members are the remote. */
  remoteGroup: string;
  ethertype: "IPv4";
}

export const SG_SHARED_CHAINS = { chain: "kvmlab-sg-chain", fallback: "kvmlab-sg-fallback" } as const;

export function portFirewallChains(tap: string): {
  ingress: string;
  egress: string;
  spoof: string;
  zone: string;
  id: string;
} {
  const id = shortId(`port/${tap}`);
  return {
    id,
    ingress: `kvmlab-i${id}`,
    egress: `kvmlab-o${id}`,
    spoof: `kvmlab-s${id}`,
    zone: `kvmlab-z${id}`,
  };
}

/** The ipset holding a group's member addresses. */
export function securityGroupSet(groupName: string): string {
  return `kvmlab-g${shortId(`sg/${groupName}`)}`;
}

/**
 * The hybrid plumbing of an OVS port, named after its tap as Neutron names them after the port
 * id (tap<id>, qbr<id>, qvb<id>, qvo<id>): qbr bridge, and the qvb (in qbr) / qvo (in OVS) veth
 * pair. A device not named tap<id> (a load balancer's VIP veth) gets a hash of its name.
 */
export function hybridDevices(tap: string): { qbr: string; qvb: string; qvo: string } {
  const id = /^tap[0-9A-Za-z_-]{1,12}$/.test(tap) ? tap.slice(3) : shortId(`port/${tap}`);
  return { qbr: `qbr${id}`, qvb: `qvb${id}`, qvo: `qvo${id}` };
}

/** Conntrack zones kvmlab allocates: Neutron's range. */
export const CONNTRACK_ZONES = { min: 4097, max: 65535 } as const;

/** Stands for the zone number in a ruleset rendered before the host allocated it. */
export const ZONE_ON_HOST = "@ZONE@";

/** Neutron's default rules for a new group: egress to anywhere. */
export const DEFAULT_EGRESS: SecurityGroupRule = {
  direction: "egress",
  protocol: "any",
  portMin: 0,
  portMax: 0,
  remoteCidr: "",
  remoteGroup: "",
  ethertype: "IPv4",
};

/** Reasons a rule is refused (each starting with `field: `). */
export function checkSgRule(field: string, r: unknown): string[] {
  const out: string[] = [];
  if (r === null || typeof r !== "object")
    return [`${field}: expected a rule {direction, protocol, ...}, got ${JSON.stringify(r)}`];
  const x = r as Record<string, unknown>;
  if (x.direction !== "ingress" && x.direction !== "egress")
    out.push(`${field}.direction: expected "ingress" or "egress", got ${JSON.stringify(x.direction)}`);
  if (!["tcp", "udp", "icmp", "any"].includes(x.protocol as string))
    out.push(`${field}.protocol: expected "tcp", "udp", "icmp" or "any", got ${JSON.stringify(x.protocol)}`);
  for (const f of ["portMin", "portMax"])
    if (
      typeof x[f] !== "number" ||
      !Number.isInteger(x[f]) ||
      (x[f] as number) < 0 ||
      (x[f] as number) > 65535
    )
      out.push(`${field}.${f}: expected a port 0-65535 (0 = any), got ${JSON.stringify(x[f])}`);
  if (typeof x.portMin === "number" && typeof x.portMax === "number" && x.portMin > x.portMax)
    out.push(`${field}.portMax: ${x.portMax} is below portMin ${x.portMin}`);
  if ((x.protocol === "icmp" || x.protocol === "any") && (x.portMin !== 0 || x.portMax !== 0))
    out.push(`${field}.portMin: ports apply only to tcp and udp; set 0`);
  if (x.remoteCidr !== "" && (typeof x.remoteCidr !== "string" || !tryParseCidr(x.remoteCidr)))
    out.push(
      `${field}.remoteCidr: expected "" or an IPv4 network like 10.0.0.0/24, got ${JSON.stringify(x.remoteCidr)}`,
    );
  if (x.remoteGroup !== "" && (typeof x.remoteGroup !== "string" || !NAME_RE.test(x.remoteGroup)))
    out.push(
      `${field}.remoteGroup: expected "" or a security group name, got ${JSON.stringify(x.remoteGroup)}`,
    );
  if (x.remoteCidr !== "" && x.remoteGroup !== "" && typeof x.remoteCidr === "string")
    out.push(`${field}.remoteGroup: give remoteCidr or remoteGroup, not both`);
  if (x.ethertype !== "IPv4")
    out.push(`${field}.ethertype: only "IPv4" is supported, got ${JSON.stringify(x.ethertype)}`);
  return out;
}

/** A rule's iptables match (canonical order: source/dest, protocol, ports), without the target. */
export function ruleMatch(r: SecurityGroupRule): string {
  const parts: string[] = [];
  const dir = r.direction === "ingress" ? "s" : "d";
  if (r.remoteCidr !== "" && r.remoteCidr !== "0.0.0.0/0") parts.push(`-${dir} ${r.remoteCidr}`);
  if (r.protocol !== "any") parts.push(`-p ${r.protocol}`);
  if ((r.protocol === "tcp" || r.protocol === "udp") && r.portMin > 0)
    parts.push(
      `-m ${r.protocol} --dport ${r.portMin === r.portMax ? r.portMin : `${r.portMin}:${r.portMax}`}`,
    );
  if (r.remoteGroup !== "")
    parts.push(
      `-m set --match-set ${securityGroupSet(r.remoteGroup)} ${r.direction === "ingress" ? "src" : "dst"}`,
    );
  return parts.join(" ");
}

export interface PortFirewallView {
  portName: string;
  tap: string;
  mac: string;
  ip: string;
  /**
   * Further source addresses the port may send from with its MAC (Neutron's
   * allowed_address_pairs): a load balancer amphora's VIP beside its own VRRP address.
   */
  allowedAddresses?: readonly string[];
  /** The bridge whose traffic gets the zone (qbr- for OVS hybrid, the network's bridge for Linux bridge). */
  zoneBridge: string;
  /** The allocated zone, or ZONE_ON_HOST (substituted on the host after allocation). */
  zone: number | typeof ZONE_ON_HOST;
  /** The groups' rules, in group order; duplicates are dropped (Neutron deduplicates across groups). */
  rules: SecurityGroupRule[];
  /** Groups with no members have no set: rules naming them are skipped (they match nothing). */
  emptyGroups: string[];
}

/** The port's filter and raw chains, as `iptables-restore -n` input (Neutron's order). */
export function renderPortFirewall(v: PortFirewallView): string {
  const bad = (f: string, val: unknown): never => {
    throw new Error(`${f}: refused ${JSON.stringify(val)} in a ruleset`);
  };
  if (!NAME_RE.test(v.portName)) bad("portName", v.portName);
  if (!DEVICE_NAME_RE.test(v.tap)) bad("tap", v.tap);
  if (!DEVICE_NAME_RE.test(v.zoneBridge)) bad("zoneBridge", v.zoneBridge);
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(v.mac)) bad("mac", v.mac);
  if (!isIPv4(v.ip)) bad("ip", v.ip);
  const pairs = v.allowedAddresses ?? [];
  pairs.forEach((a, i) => {
    if (!isIPv4(a)) bad(`allowedAddresses[${i}]`, a);
  });
  if (v.zone !== ZONE_ON_HOST && (!Number.isInteger(v.zone) || v.zone < 1 || v.zone > 65535))
    bad("zone", v.zone);
  v.rules.forEach((r, i) => {
    const e = checkSgRule(`rules[${i}]`, r);
    if (e.length > 0) throw new Error(e[0]);
  });
  const c = portFirewallChains(v.tap);
  const who = `port ${v.portName}`;
  const cm = (t: string): string => `-m comment --comment "${who}: ${t}"`;
  const seen = new Set<string>();
  const rules = { ingress: [] as string[], egress: [] as string[] };
  for (const r of v.rules) {
    if (r.remoteGroup !== "" && v.emptyGroups.includes(r.remoteGroup)) continue;
    const m = ruleMatch(r);
    const key = `${r.direction} ${m}`;
    if (seen.has(key)) continue;
    seen.add(key);
    rules[r.direction].push(
      `-A ${r.direction === "ingress" ? c.ingress : c.egress} ${m ? `${m} ` : ""}${cm("security group rule")} -j RETURN`,
    );
  }
  const generic = (chain: string, list: string[]): string[] => [
    `-A ${chain} -m state --state RELATED,ESTABLISHED ${cm("stateful")} -j RETURN`,
    // Neutron's "allow DHCP client traffic": the server's offer and ack answer a discover sent
    // to the broadcast address, which conntrack does not see as a reply. A guest that boots
    // behind its groups (an autoscale slot started by its agent) gets its address only so.
    ...(chain === c.ingress
      ? [`-A ${chain} -p udp -m udp --sport 67 --dport 68 ${cm("DHCP answers")} -j RETURN`]
      : []),
    ...list,
    `-A ${chain} -m state --state INVALID ${cm("drop invalid")} -j DROP`,
    `-A ${chain} ${cm("default deny")} -j ${SG_SHARED_CHAINS.fallback}`,
  ];
  return [
    "*filter",
    `:${c.ingress} - [0:0]`,
    `:${c.egress} - [0:0]`,
    `:${c.spoof} - [0:0]`,
    ...generic(c.ingress, rules.ingress),
    `-A ${c.egress} -s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 ${cm("DHCP discover")} -j RETURN`,
    `-A ${c.egress} ${cm("anti-spoofing")} -j ${c.spoof}`,
    `-A ${c.egress} -p udp -m udp --sport 68 --dport 67 ${cm("DHCP renew")} -j RETURN`,
    `-A ${c.egress} -p udp -m udp --sport 67 --dport 68 ${cm("no DHCP server in the VM")} -j DROP`,
    ...generic(c.egress, rules.egress),
    `-A ${c.spoof} -s ${v.ip}/32 -m mac --mac-source ${v.mac} ${cm("allowed address")} -j RETURN`,
    ...[...new Set(pairs)]
      .filter((a) => a !== v.ip)
      .map(
        (a) =>
          `-A ${c.spoof} -s ${a}/32 -m mac --mac-source ${v.mac} ${cm("allowed address pair")} -j RETURN`,
      ),
    `-A ${c.spoof} ${cm("drop traffic without an IP/MAC allow rule")} -j DROP`,
    "COMMIT",
    "*raw",
    `:${c.zone} - [0:0]`,
    `-A ${c.zone} -i ${v.zoneBridge} ${cm("conntrack zone")} -j CT --zone ${v.zone}`,
    "COMMIT",
    "",
  ].join("\n");
}

/** Rules outside the port's own chains (table, chain, rule), added when missing, removed on delete. */
export function portFirewallJumps(
  portName: string,
  tap: string,
): [string, string, string, "insert" | "append"][] {
  const c = portFirewallChains(tap);
  const cm = `-m comment --comment "port ${portName}"`;
  return [
    [
      "filter",
      "FORWARD",
      `-m physdev --physdev-out ${tap} --physdev-is-bridged ${cm} -j ${SG_SHARED_CHAINS.chain}`,
      "insert",
    ],
    [
      "filter",
      "FORWARD",
      `-m physdev --physdev-in ${tap} --physdev-is-bridged ${cm} -j ${SG_SHARED_CHAINS.chain}`,
      "insert",
    ],
    [
      "filter",
      SG_SHARED_CHAINS.chain,
      `-m physdev --physdev-out ${tap} --physdev-is-bridged ${cm} -j ${c.ingress}`,
      "insert",
    ],
    [
      "filter",
      SG_SHARED_CHAINS.chain,
      `-m physdev --physdev-in ${tap} --physdev-is-bridged ${cm} -j ${c.egress}`,
      "insert",
    ],
    ["filter", "INPUT", `-m physdev --physdev-in ${tap} --physdev-is-bridged ${cm} -j ${c.egress}`, "insert"],
    ["raw", "PREROUTING", `${cm} -j ${c.zone}`, "append"],
  ];
}

/** `ipset restore` text replacing a group's set atomically: build <set>-n, swap, destroy the temporary. */
export function renderIpsetSwap(groupName: string, members: readonly string[]): string {
  const set = securityGroupSet(groupName);
  for (const m of members)
    if (!isIPv4(m) && !tryParseCidr(m)) throw new Error(`members: refused ${JSON.stringify(m)}`);
  return [
    `create ${set} hash:net family inet -exist`,
    `create ${set}-n hash:net family inet -exist`,
    `flush ${set}-n`,
    ...[...members].sort().map((m) => `add ${set}-n ${m}`),
    `swap ${set}-n ${set}`,
    `destroy ${set}-n`,
    "",
  ].join("\n");
}
