/**
 * FloatingIp: an address of the external subnet (allocated through its IPAM, owner fip:<name>)
 * that reaches a fixed address behind a Router, as Neutron's L3 agent does it
 * (research/openstack-semantics.md §1.4-1.5):
 *
 *   nat kvmlab-f<id>-d: -d <fip>/32 -j DNAT --to-destination <fixed>   (jumped to from kvmlab-float-dnat,
 *                        which the router's PREROUTING and OUTPUT chains jump to)
 *   nat kvmlab-f<id>-s: -s <fixed>/32 -j SNAT --to-source <fip>         (from kvmlab-float-snat, first in snat)
 *
 * The rules are applied (iptables-restore -n -w) BEFORE the /32 is added to the router's qg-
 * device, then gratuitous ARP (arping -U, -A). Disassociation removes the address and the
 * conntrack entries of the floating and the old fixed address (`conntrack -D`) so live flows end.
 * Re-association (a new target) is an update: the chains are replaced atomically and the old
 * target's conntrack entries removed.
 *
 * The target is "an address on a subnet": a server port's fixed IP or a load balancer's VIP.
 */
import type * as pulumi from "@pulumi/pulumi";
import { KVMLAB_STATE_DIR } from "../core/paths";
import { floatingIpChains, floatingIpOwner, routerNames } from "../core/router";
import { cidrContains, isIPv4, tryParseCidr } from "../core/net";
import { floatingIpJumps, renderFloatingIpRuleset } from "../core/router";
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
  type HostConnection,
  type Step,
} from "./host";
import {
  KvmlabResource,
  checkedOwner,
  claimStep,
  claimedNow,
  guardStep,
  ownerIn,
  releaseOwnerStep,
  sameStackStep,
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

/** What a floating IP points at: a server port's fixed IP or a load balancer VIP. */
export interface FloatingIpTarget {
  /** The fixed address (server port) or the VIP. */
  address: string;
  /** Its subnet and network (for the record and the docs; the router must be attached to it). */
  subnetName: string;
  networkName: string;
}

export interface FloatingIpExternal {
  networkName: string;
  subnetName: string;
  cidr: string;
  /** The host keeping the external subnet's IPAM record. */
  ipamHost: string;
}

type Inputish<T> = { [K in keyof T]: pulumi.Input<T[K]> };

export interface FloatingIpArgs extends InProjectArgs {
  /** @default the resource name */
  readonly fipName?: pulumi.Input<string>;
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** The router's host (Router.host). */
  readonly host: pulumi.Input<string>;
  /** The router (Router.routerName). */
  readonly routerName: pulumi.Input<string>;
  readonly external: pulumi.Input<Inputish<FloatingIpExternal>>;
  /** A fixed floating address; "" allocates the lowest free pool address. @default "" */
  readonly address?: pulumi.Input<string>;
  readonly target: pulumi.Input<Inputish<FloatingIpTarget>>;
  /** @default true */
  readonly randomFully?: pulumi.Input<boolean>;
  /** Owner (kit/owner.ts). @default filled by the base class */
  readonly owner?: pulumi.Input<string>;
}

export interface FloatingIpInputs {
  fipName: string;
  hosts: HostConnection[];
  host: string;
  routerName: string;
  external: FloatingIpExternal;
  address: string;
  target: FloatingIpTarget;
  randomFully: boolean;
  /** Rendered by check when `address` is given, else at create (then an output). */
  ruleset: string;
  /** Owner of the chains, address, files and the IPAM allocation (kit/owner.ts). */
  owner: string;
}

export interface FloatingIpHostState {
  /** The /32 is on the router's qg- device. */
  addressOnGateway: boolean;
  rules: string;
  jumps: number;
}

export interface FloatingIpOutputs extends FloatingIpInputs {
  floatingIp: string;
  hostKeys: Record<string, string>;
  realized: FloatingIpHostState;
}

function render(fipName: string, floatingIp: string, fixedIp: string, randomFully: boolean): string {
  const c = floatingIpChains(fipName);
  return renderFloatingIpRuleset({
    fipName,
    floatingIp,
    fixedIp,
    dnatChain: c.dnat,
    snatChain: c.snat,
    randomFully,
  });
}

export function checkFloatingIpInputs(news: Record<string, unknown>): Checked {
  const found = failureList();
  const add = (f: string, r: string | undefined): void => found.add(f, r);
  for (const f of ["fipName", "routerName"]) if (isKnown(news[f])) add(f, checkName(f, news[f]));
  for (const e of checkHostList("hosts", news.hosts)) add("hosts", e);
  const hosts = normalizeHosts(news.hosts);
  const out: Record<string, unknown> = { ...news, hosts };
  out.address = news.address ?? "";
  out.randomFully = news.randomFully ?? true;
  if (isKnown(out.randomFully) && typeof out.randomFully !== "boolean")
    add("randomFully", `randomFully: expected true or false, got ${showValue(out.randomFully)}`);
  const hostList = Array.isArray(hosts) && isKnown(hosts) ? (hosts as HostConnection[]) : undefined;
  for (const [f, v] of [
    ["host", news.host],
    [
      "external.ipamHost",
      isKnown(news.external) && news.external !== null && typeof news.external === "object"
        ? (news.external as Record<string, unknown>).ipamHost
        : UNKNOWN,
    ],
  ] as const)
    if (hostList && isKnown(v) && !hostList.some((h) => h.name === v))
      add(f, `${f}: ${showValue(v)} is not one of the hosts (${hostList.map((h) => h.name).join(", ")})`);
  let ext: ReturnType<typeof tryParseCidr>;
  if (isKnown(news.external)) {
    const e = (news.external ?? {}) as Record<string, unknown>;
    for (const f of ["networkName", "subnetName"])
      if (isKnown(e[f])) add(`external.${f}`, checkName(`external.${f}`, e[f]));
    ext = typeof e.cidr === "string" ? tryParseCidr(e.cidr) : undefined;
    if (isKnown(e.cidr) && !ext)
      add(
        "external.cidr",
        `external.cidr: expected an IPv4 network like 172.24.4.0/24, got ${showValue(e.cidr)}`,
      );
  }
  if (isKnown(out.address) && out.address !== "") {
    if (!isIPv4(out.address))
      add(
        "address",
        `address: expected an IPv4 address or "" to allocate one, got ${showValue(out.address)}`,
      );
    else if (ext && !cidrContains(ext, out.address as string))
      add("address", `address: ${out.address as string} is not inside the external subnet ${ext.text}`);
  }
  if (isKnown(news.target)) {
    const t = (news.target ?? {}) as Record<string, unknown>;
    if (isKnown(t.address) && !isIPv4(t.address))
      add(
        "target.address",
        `target.address: expected the server port's fixed IP or the load balancer VIP (IPv4), got ${showValue(t.address)}`,
      );
    for (const f of ["networkName", "subnetName"])
      if (isKnown(t[f])) add(`target.${f}`, checkName(`target.${f}`, t[f]));
  }
  const target = news.target as FloatingIpTarget | undefined;
  out.owner = checkedOwner(news, "FloatingIp", "fipName", add);
  if (
    found.failures.length === 0 &&
    isKnown(news.fipName) &&
    isKnown(out.address) &&
    out.address !== "" &&
    isKnown(target) &&
    isKnown(out.randomFully)
  )
    out.ruleset = render(
      news.fipName as string,
      out.address as string,
      target!.address,
      out.randomFully as boolean,
    );
  else out.ruleset = news.ruleset ?? (isKnown(out.address) && out.address === "" ? "" : UNKNOWN);
  return { inputs: out, failures: found.failures };
}

export const FLOATING_IP_REPLACE_KEYS = ["fipName", "host", "routerName", "external", "address"] as const;

export function diffFloatingIp(olds: FloatingIpOutputs, news: FloatingIpInputs): DiffResult {
  const replaces = changedKeys(olds, news, FLOATING_IP_REPLACE_KEYS);
  // A dynamically allocated address is rendered at create: compare the target, not the text.
  const keys =
    news.address === ""
      ? (["hosts", "target", "randomFully"] as const)
      : (["hosts", "target", "randomFully", "ruleset"] as const);
  const updates = changedKeys(olds, news, [...keys]);
  const r = olds.realized;
  const drift = !r || !r.addressOnGateway || r.rules !== "sync" || r.jumps !== 2;
  return { changes: replaces.length > 0 || updates.length > 0 || drift, replaces, deleteBeforeReplace: true };
}

function fipDir(fipName: string): string {
  return `${KVMLAB_STATE_DIR}/floatingips/${fipName}`;
}

function dumpLine(fipName: string): string {
  const c = floatingIpChains(fipName);
  return `dump() { ip netns exec "$ns" iptables-save -t nat 2>/dev/null | grep -E '^-A (${c.dnat}|${c.snat}) ' | sed 's/\\[[0-9:]*\\]//'; }`;
}

function jumpRules(fipName: string): string[] {
  const c = floatingIpChains(fipName);
  return floatingIpJumps({ fipName, dnatChain: c.dnat, snatChain: c.snat });
}

/** Step: rules first, then the /32 on qg-, GARP, and conntrack cleanup of a previous target. */
export function floatingIpApplyStep(
  inputs: FloatingIpInputs,
  floatingIp: string,
  previousFixed: string,
): Step {
  const n = routerNames(inputs.routerName);
  const dir = fipDir(inputs.fipName);
  return {
    label: `associate floating IP ${inputs.fipName}`,
    script: [
      "set -e",
      `ns=${shQuote(n.namespace)}; qg=${n.gatewayDevice}; fip=${floatingIp}; f=${shQuote(`${dir}/rules.v4`)}; saved=${shQuote(`${dir}/rules.saved`)}`,
      dumpLine(inputs.fipName),
      '[ -e "/run/netns/$ns" ] || { echo "router namespace $ns is missing on this host; create the Router first" >&2; exit 41; }',
      'ip netns exec "$ns" iptables -w -t nat -S kvmlab-float-dnat >/dev/null 2>&1 || { echo "router $ns has no kvmlab-float-dnat chain; update the Router" >&2; exit 42; }',
      'if ! { [ -f "$f" ] && cmp -s "$f.new" "$f" && [ -f "$saved" ] && dump | cmp -s - "$saved"; }; then',
      '  ip netns exec "$ns" iptables-restore -n -w < "$f.new"',
      '  mv -f "$f.new" "$f"; dump > "$saved"',
      'else rm -f "$f.new"; fi',
      ...jumpRules(inputs.fipName).map(
        (r) =>
          `ip netns exec "$ns" iptables -w -t nat -C ${r} 2>/dev/null || ip netns exec "$ns" iptables -w -t nat -A ${r}`,
      ),
      previousFixed
        ? `ip netns exec "$ns" conntrack -D -d "$fip" >/dev/null 2>&1 || true; ip netns exec "$ns" conntrack -D -s ${previousFixed} >/dev/null 2>&1 || true`
        : "true",
      'if ! ip netns exec "$ns" ip -4 -o addr show dev "$qg" | grep -q " $fip/32 "; then',
      '  ip netns exec "$ns" ip addr add "$fip/32" dev "$qg"',
      // GARP in the background (Neutron: a thread); no reply is expected, so each arping waits out -w.
      '  setsid sh -c \'ip netns exec "$1" arping -U -I "$2" -c 1 -w 1 "$3"; ip netns exec "$1" arping -A -I "$2" -c 1 -w 1 "$3"\' garp "$ns" "$qg" "$fip" </dev/null >/dev/null 2>&1 &',
      "fi",
    ].join("\n"),
  };
}

export function floatingIpReadStep(
  inputs: Pick<FloatingIpInputs, "fipName" | "routerName">,
  floatingIp: string,
): Step {
  const n = routerNames(inputs.routerName);
  const dir = fipDir(inputs.fipName);
  return {
    label: `read floating IP ${inputs.fipName}`,
    script: [
      `ns=${shQuote(n.namespace)}; qg=${n.gatewayDevice}; fip=${floatingIp}; saved=${shQuote(`${dir}/rules.saved`)}`,
      dumpLine(inputs.fipName),
      'if [ ! -e "/run/netns/$ns" ]; then echo onqg=no; echo rules=none; echo jumps=0; exit 0; fi',
      'echo "onqg=$(ip netns exec "$ns" ip -4 -o addr show dev "$qg" 2>/dev/null | grep -q " $fip/32 " && echo yes || echo no)"',
      'if [ ! -f "$saved" ]; then echo rules=none; elif dump | cmp -s - "$saved"; then echo rules=sync; else echo rules=drift; fi',
      "n=0",
      ...jumpRules(inputs.fipName).map(
        (r) => `ip netns exec "$ns" iptables -w -t nat -C ${r} 2>/dev/null && n=$((n+1))`,
      ),
      "echo jumps=$n",
    ].join("\n"),
  };
}

export function parseFloatingIpState(stdout: string): FloatingIpHostState {
  const kv = parseKeyValues(stdout);
  return {
    addressOnGateway: kv.get("onqg") === "yes",
    rules: kv.get("rules") ?? "none",
    jumps: Number(kv.get("jumps") ?? "0"),
  };
}

/** Step: address, conntrack entries, jumps, chains and files gone (idempotent). */
export function floatingIpDeleteStep(
  inputs: Pick<FloatingIpInputs, "fipName" | "routerName">,
  floatingIp: string,
  fixedIp: string,
): Step {
  const n = routerNames(inputs.routerName);
  const c = floatingIpChains(inputs.fipName);
  return {
    label: `disassociate floating IP ${inputs.fipName}`,
    script: [
      `ns=${shQuote(n.namespace)}; qg=${n.gatewayDevice}; fip=${floatingIp}`,
      'if [ -e "/run/netns/$ns" ]; then',
      '  ip netns exec "$ns" ip addr del "$fip/32" dev "$qg" 2>/dev/null || true',
      '  ip netns exec "$ns" conntrack -D -d "$fip" >/dev/null 2>&1 || true',
      fixedIp ? `  ip netns exec "$ns" conntrack -D -s ${fixedIp} >/dev/null 2>&1 || true` : "  true",
      ...jumpRules(inputs.fipName).map(
        (r) =>
          `  while ip netns exec "$ns" iptables -w -t nat -C ${r} 2>/dev/null; do ip netns exec "$ns" iptables -w -t nat -D ${r}; done`,
      ),
      `  for ch in ${c.dnat} ${c.snat}; do ip netns exec "$ns" iptables -w -t nat -F $ch 2>/dev/null || true; ip netns exec "$ns" iptables -w -t nat -X $ch 2>/dev/null || true; done`,
      "fi",
      `rm -rf ${shQuote(fipDir(inputs.fipName))}`,
      `rmdir ${shQuote(`${KVMLAB_STATE_DIR}/floatingips`)} 2>/dev/null || true`,
    ].join("\n"),
  };
}

function ipamRef(i: Pick<FloatingIpInputs, "hosts" | "external">) {
  return {
    host: hostNamed(i.hosts, i.external.ipamHost, "external.ipamHost"),
    networkName: i.external.networkName,
    subnetName: i.external.subnetName,
  };
}

/**
 * The router a floating IP lives in, for the same-stack check (the Router's own marker, see
 * router.ts routerOwned; Neutron refuses another tenant's router).
 */
function routerOf(inputs: FloatingIpInputs): OwnedObject {
  return {
    kind: "router",
    key: [inputs.routerName],
    what: `router ${inputs.routerName}`,
    field: "routerName",
  };
}

/** The floating IP's objects on its router's host, for the owner guards. */
export function floatingIpOwned(fipName: string): OwnedObject {
  return {
    kind: "floatingip",
    key: [fipName],
    what: `floating IP ${fipName}`,
    field: "fipName",
    exists: `[ -d ${shQuote(fipDir(fipName))} ]`,
  };
}

async function applyFloatingIp(
  inputs: FloatingIpInputs,
  previousFixed: string,
  owners: readonly string[],
  made: { floatingIp: string } = { floatingIp: "" },
): Promise<FloatingIpOutputs> {
  const host = hostNamed(inputs.hosts, inputs.host, "floating IP");
  await requireFeatures(host, ["firewall"]);
  const guard = guardStep(floatingIpOwned(inputs.fipName), owners, true);
  const router = sameStackStep(routerOf(inputs), inputs.owner, `floating IP ${inputs.fipName}`);
  await withHostLock(host, () => runChecked(host, [guard, router]));
  const floatingIp = await allocateAddress(
    ipamRef(inputs),
    floatingIpOwner(inputs.fipName),
    inputs.address === "" ? { holder: inputs.owner } : { fixedIp: inputs.address, holder: inputs.owner },
  );
  // Known to the caller from here on: a failed create removes the rules and /32 of THIS address
  // before its IPAM entry goes back to the pool (a dynamic address is not in the inputs).
  made.floatingIp = floatingIp;
  const ruleset = render(inputs.fipName, floatingIp, inputs.target.address, inputs.randomFully);
  const outs = await withHostLock(host, () =>
    runChecked(host, [
      guard,
      uploadStep(`${fipDir(inputs.fipName)}/rules.v4.new`, ruleset, { mode: "0644" }),
      floatingIpApplyStep(inputs, floatingIp, previousFixed),
      floatingIpReadStep(inputs, floatingIp),
    ]),
  );
  return {
    ...inputs,
    ruleset,
    floatingIp,
    hostKeys: {},
    realized: parseFloatingIpState(outs[outs.length - 1]),
  };
}

async function removeFloatingIp(o: FloatingIpInputs, floatingIp: string): Promise<void> {
  const host = hostNamed(o.hosts, o.host, "floating IP");
  const owner = ownerIn(o);
  const owned = floatingIpOwned(o.fipName);
  await withHostLock(host, () =>
    runChecked(host, [
      ...(owner ? [guardStep(owned, [owner])] : []),
      ...(floatingIp !== "" ? [floatingIpDeleteStep(o, floatingIp, o.target.address)] : []),
      ...(owner ? [releaseOwnerStep(owned, [owner])] : []),
    ]),
  );
  await releaseAddress(ipamRef(o), floatingIpOwner(o.fipName), owner);
}

const floatingIp = defineResource<FloatingIpInputs, FloatingIpOutputs>({
  type: "FloatingIp",
  inputKeys: [
    "fipName",
    "hosts",
    "host",
    "routerName",
    "external",
    "address",
    "target",
    "randomFully",
    "ruleset",
    "owner",
  ],
  outputKeys: ["floatingIp", "hostKeys", "realized"],
  secretOutputs: ["hosts"],
  check: (news) => checkFloatingIpInputs(news),
  diff: diffFloatingIp,
  quota: charges(() => ({ floatingIps: 1 })), // issue 14: charged to the project by the kit
  async create(inputs) {
    const host = hostNamed(inputs.hosts, inputs.host, "floating IP");
    // A foreign router is refused before anything is claimed or allocated.
    const [, claim] = await withHostLock(host, () =>
      runChecked(host, [
        sameStackStep(routerOf(inputs), inputs.owner, `floating IP ${inputs.fipName}`),
        claimStep(floatingIpOwned(inputs.fipName), inputs.owner),
      ]),
    );
    const made = { floatingIp: "" };
    try {
      const outs = await applyFloatingIp(inputs, "", [inputs.owner], made);
      return { id: inputs.fipName, outs };
    } catch (err) {
      // Clean only what this call made (never another owner's floating IP), by the address it
      // allocated: with a dynamic address, inputs.address is "" and its rules would stay behind.
      if (claimedNow(claim))
        await removeFloatingIp(inputs, made.floatingIp || inputs.address).catch(() => undefined);
      throw err;
    }
  },
  async read(_id, props) {
    const host = hostNamed(props.hosts, props.host, "floating IP");
    const [r] = await runSteps(host, [floatingIpReadStep(props, props.floatingIp)]);
    if (r.code !== 0)
      throw new Error(`host ${host.name}: reading floating IP ${props.fipName} failed: ${r.stderr.trim()}`);
    const realized = parseFloatingIpState(r.stdout);
    return realized.addressOnGateway || realized.rules !== "none" ? { ...props, realized } : undefined;
  },
  async update(_id, olds, news) {
    const prev = olds.target.address !== news.target.address ? olds.target.address : "";
    return applyFloatingIp(news, prev, [news.owner, ownerIn(olds)]);
  },
  async delete(_id, olds) {
    await removeFloatingIp(olds, olds.floatingIp);
  },
});

export const floatingIpProvider = floatingIp.provider;

/** A floating IP (`pulumi-nodejs:dynamic/kvmlab:FloatingIp`). */
export class FloatingIp extends KvmlabResource<FloatingIpInputs, FloatingIpOutputs> {
  declare readonly fipName: pulumi.Output<string>;
  declare readonly floatingIp: pulumi.Output<string>;
  declare readonly target: pulumi.Output<FloatingIpTarget>;
  declare readonly ruleset: pulumi.Output<string>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<FloatingIpHostState>;

  constructor(name: string, args: FloatingIpArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(floatingIp, name, { ...args, fipName: args.fipName ?? name }, opts);
  }
}
