/**
 * Names kvmlab gives to a router's objects on its host, after Neutron's L3 agent
 * (research/openstack-semantics.md §1). Pure.
 *
 *   namespace   qrouter-<routerName>            (Neutron: qrouter-<router uuid>)
 *   qr- leg     qr-<8 hex>  inside the namespace, one per attached subnet, holding the subnet's gateway
 *   qg- leg     qg-<8 hex>  inside the namespace, on the external network
 *   host ends   kvlt-<8 hex> in the network's bridge (the veth peer of each leg)
 *   chains      kvmlab-<CHAIN> in the namespace's nat and mangle tables (a fixed prefix, like
 *               Neutron's `neutron-l3-agent-`), kvmlab-f<8 hex>-d / -s per floating IP
 *
 * <8 hex> is sha256 of a key naming the object (see deviceName in names.ts), so every name is
 * stable across runs and hosts, and at most 15 characters.
 */
import { DEVICE_NAME_RE, NAME_RE, deviceName, shortId } from "./names";
import { isIPv4 } from "./net";

/** The chain prefix of every chain kvmlab writes (nat, mangle). */
export const CHAIN_PREFIX = "kvmlab-";

/** The mark Neutron sets on packets entering from the external network (external_ingress_mark). */
export const EXTERNAL_INGRESS_MARK = "0x2/0xffff";

/** Router-level chains, by table. The float-* chains are shared with the router's floating IPs. */
export const ROUTER_CHAINS = {
  nat: ["kvmlab-PREROUTING", "kvmlab-OUTPUT", "kvmlab-POSTROUTING", "kvmlab-snat"],
  natShared: ["kvmlab-float-dnat", "kvmlab-float-snat"],
  mangle: ["kvmlab-mark"],
} as const;

/** Jumps from the builtin chains into kvmlab's (table, builtin chain, target), in order. */
export const ROUTER_JUMPS: readonly (readonly [string, string, string])[] = [
  ["nat", "PREROUTING", "kvmlab-PREROUTING"],
  ["nat", "OUTPUT", "kvmlab-OUTPUT"],
  ["nat", "POSTROUTING", "kvmlab-POSTROUTING"],
  // Neutron's neutron-postrouting-bottom: SNAT after the exemption above.
  ["nat", "POSTROUTING", "kvmlab-snat"],
  ["mangle", "PREROUTING", "kvmlab-mark"],
];

export interface RouterNames {
  namespace: string;
  /** The qg- device inside the namespace. */
  gatewayDevice: string;
  /** Its veth peer in the external network's bridge. */
  gatewayHostDevice: string;
}

export function routerNames(routerName: string): RouterNames {
  return {
    namespace: `qrouter-${routerName}`,
    gatewayDevice: `qg-${shortId(`router/${routerName}`)}`,
    gatewayHostDevice: deviceName("t", `router/${routerName}`),
  };
}

/** The qr- leg of a router on a subnet, and its veth peer in the subnet's bridge. */
export function routerInterfaceNames(
  routerName: string,
  subnetName: string,
): { device: string; hostDevice: string } {
  const key = `router/${routerName}/${subnetName}`;
  return { device: `qr-${shortId(key)}`, hostDevice: deviceName("t", key) };
}

/** A floating IP's own nat chains in its router's namespace. */
export function floatingIpChains(fipName: string): { dnat: string; snat: string } {
  const id = shortId(`fip/${fipName}`);
  return { dnat: `${CHAIN_PREFIX}f${id}-d`, snat: `${CHAIN_PREFIX}f${id}-s` };
}

/** IPAM owner ids on the external subnet. */
export function routerGatewayOwner(routerName: string): string {
  return `router:${routerName}:gw`;
}
export function floatingIpOwner(fipName: string): string {
  return `fip:${fipName}`;
}

// ---- Rulesets (pure renderers; plain strings, no Handlebars, so the provider's check can derive them) ----
/*
 * Rulesets of a router and its floating IPs as `iptables-restore -n` input: pure renderers.
 * The rules are Neutron's L3 agent's (research/openstack-semantics.md §1.3-1.4,
 * neutron/agent/l3/router_info.py), in chains with kvmlab's fixed prefix instead of
 * `neutron-l3-agent-`. Every rule carries a comment naming its object.
 *
 * With `-n` (noflush) iptables-restore replaces exactly the chains the text declares, in one
 * transaction per table; nothing else in the namespace is touched. The router declares its own
 * chains; the shared `kvmlab-float-dnat`/`kvmlab-float-snat` chains are NOT declared by it (that
 * would flush them) — the provider creates them once and each floating IP hooks its own chains in.
 */

export interface RouterRulesetView {
  routerName: string;
  /** The qg- device. */
  gatewayDevice: string;
  /** The router's address on the external network. */
  gatewayAddress: string;
  enableSnat: boolean;
  /** Append `--random-fully` to SNAT rules (Neutron's use_random_fully, default true). */
  randomFully: boolean;
}

export interface FloatingIpRulesetView {
  fipName: string;
  floatingIp: string;
  fixedIp: string;
  dnatChain: string;
  snatChain: string;
  randomFully: boolean;
}

function assertView(fields: Record<string, [string, RegExp | ((v: string) => boolean)]>): void {
  for (const [field, [value, rule]] of Object.entries(fields)) {
    const ok = typeof rule === "function" ? rule(value) : rule.test(value);
    if (!ok) throw new Error(`${field}: refused ${JSON.stringify(value)} in a ruleset`);
  }
}

function comment(text: string): string {
  return `-m comment --comment "${text}"`;
}

/** The router's chains (nat + mangle), as `iptables-restore -n` input. */
export function renderRouterRuleset(v: RouterRulesetView): string {
  assertView({
    routerName: [v.routerName, NAME_RE],
    gatewayDevice: [v.gatewayDevice, DEVICE_NAME_RE],
    gatewayAddress: [v.gatewayAddress, isIPv4],
  });
  const qg = v.gatewayDevice;
  const rf = v.randomFully ? " --random-fully" : "";
  const who = `router ${v.routerName}`;
  const lines = ["*nat", ...ROUTER_CHAINS.nat.map((c) => `:${c} - [0:0]`)];
  lines.push(
    `-A kvmlab-PREROUTING ${comment(`${who}: floating IP DNAT`)} -j kvmlab-float-dnat`,
    `-A kvmlab-OUTPUT ${comment(`${who}: floating IP DNAT for local traffic`)} -j kvmlab-float-dnat`,
    `-A kvmlab-POSTROUTING ! -o ${qg} -m conntrack ! --ctstate DNAT ${comment(`${who}: no NAT between internal subnets`)} -j ACCEPT`,
    `-A kvmlab-snat ${comment(`${who}: floating IP SNAT first`)} -j kvmlab-float-snat`,
  );
  if (v.enableSnat)
    lines.push(
      `-A kvmlab-snat -o ${qg} ${comment(`${who}: gateway SNAT`)} -j SNAT --to-source ${v.gatewayAddress}${rf}`,
    );
  lines.push(
    `-A kvmlab-snat -m mark ! --mark ${EXTERNAL_INGRESS_MARK} -m conntrack --ctstate DNAT ${comment(`${who}: hairpin SNAT`)} -j SNAT --to-source ${v.gatewayAddress}${rf}`,
    "COMMIT",
    "*mangle",
    ...ROUTER_CHAINS.mangle.map((c) => `:${c} - [0:0]`),
    `-A kvmlab-mark -i ${qg} ${comment(`${who}: mark external ingress`)} -j MARK --set-xmark ${EXTERNAL_INGRESS_MARK}`,
    "COMMIT",
    "",
  );
  return lines.join("\n");
}

/** A floating IP's own chains, as `iptables-restore -n` input. */
export function renderFloatingIpRuleset(v: FloatingIpRulesetView): string {
  assertView({
    fipName: [v.fipName, NAME_RE],
    floatingIp: [v.floatingIp, isIPv4],
    fixedIp: [v.fixedIp, isIPv4],
    dnatChain: [v.dnatChain, /^kvmlab-f[0-9a-f]{8}-d$/],
    snatChain: [v.snatChain, /^kvmlab-f[0-9a-f]{8}-s$/],
  });
  const who = `floating IP ${v.fipName}`;
  return [
    "*nat",
    `:${v.dnatChain} - [0:0]`,
    `:${v.snatChain} - [0:0]`,
    `-A ${v.dnatChain} -d ${v.floatingIp}/32 ${comment(`${who}: DNAT`)} -j DNAT --to-destination ${v.fixedIp}`,
    `-A ${v.snatChain} -s ${v.fixedIp}/32 ${comment(`${who}: SNAT`)} -j SNAT --to-source ${v.floatingIp}${v.randomFully ? " --random-fully" : ""}`,
    "COMMIT",
    "",
  ].join("\n");
}

/** The jumps from the shared float chains into a floating IP's chains (table, chain, rule). */
export function floatingIpJumps(
  v: Pick<FloatingIpRulesetView, "fipName" | "dnatChain" | "snatChain">,
): string[] {
  return [
    `kvmlab-float-dnat ${comment(`floating IP ${v.fipName}`)} -j ${v.dnatChain}`,
    `kvmlab-float-snat ${comment(`floating IP ${v.fipName}`)} -j ${v.snatChain}`,
  ];
}
