/**
 * Subnet: an IPv4 subnet of a Network, with IP allocation records and (optionally) DHCP by
 * dnsmasq in the network's `qdhcp-<network>` namespace on one host, like Neutron's DHCP agent.
 *
 * On the DHCP host (the first host of the network unless `dhcpHost` names another):
 *   namespace  qdhcp-<network> (shared by the network's subnets; removed with the last one)
 *   veth       kvld-<id> in the network's bridge  <->  kvln-<id> in the namespace, holding
 *              `dhcpAddress`/<prefix>  (<id> = 8 hex digits of sha256("<network>/<subnet>"))
 *   dnsmasq    --conf-file=/var/lib/kvmlab/dhcp/<network>/<subnet>/dnsmasq.conf (the
 *              `dnsmasqConf` input, rendered by the program with templates' renderDnsmasqConf
 *              from dhcpPaths()); --dhcp-hostsfile=…/hosts (fixed-IP reservations)
 *   record     /var/lib/kvmlab/records/ipam/<ipamRecordName(network, subnet)>.json (ipam.ts)
 *   owner      /var/lib/kvmlab/owners/subnet/<network>/<subnet>.owner (kit/owner.ts): create
 *              claims it first, update and delete refuse another owner's subnet, a failed create
 *              cleans only when this call made the claim
 *
 *   check   validates every field (unknowns accepted), fills defaults, checks the config was
 *           rendered for this subnet (its interface and pid-file lines)
 *   diff    pure: names, network, cidr and DHCP host replace; the rest updates
 *   create  under the host lock: namespace and veth, config validated with `dnsmasq --test`
 *           before it replaces the running one, IPAM record (kept allocations), dnsmasq
 *           (re)started only when the config changed; read back. Failure: cleaned again.
 *   read    namespace, veth, dnsmasq process, record (all gone = deleted)
 *   update  same converging apply as create
 *   delete  stops dnsmasq, removes veth, files, record and the namespace when it is empty
 *
 * Serialization: as network.ts.
 */
import type * as pulumi from "@pulumi/pulumi";
import { subnetDefaults } from "../core/net";
import {
  UNKNOWN,
  checkHostList,
  checkName,
  parseRecord,
  readRecordStep,
  recordPath,
  requireFeatures,
  runChecked,
  runLocked,
  runSteps,
  shQuote,
  showValue,
  uploadStep,
  withHostLock,
  type HostConnection,
  type Step,
  vethLegLines,
} from "./host";
import {
  KvmlabResource,
  changedKeys,
  checkedOwner,
  checkDnsmasqConf,
  claimStep,
  claimedNow,
  defineResource,
  guardStep,
  ovsOwnerGuardLines,
  ovsOwnerIds,
  ownerIn,
  releaseOwnerStep,
  type OwnedObject,
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
import {
  dhcpPaths,
  ipamCommitSteps,
  ipamRecordName,
  ipv4ToInt,
  parseCidr4,
  planAllocation,
  planRelease,
  type DhcpPaths,
  type IpamRecord,
} from "./ipam";
import type { NetworkDriver } from "./network";

export { dhcpPaths, type DhcpPaths } from "./ipam";

export interface SubnetArgs extends InProjectArgs {
  /** Name on the hosts (records, dnsmasq tag). @default the resource name */
  readonly subnetName?: pulumi.Input<string>;
  /** The network's name (Network.networkName). */
  readonly networkName: pulumi.Input<string>;
  /** The network's bridge device (Network.bridge). */
  readonly networkBridge: pulumi.Input<string>;
  /** The network's driver (Network.driver). */
  readonly driver: pulumi.Input<NetworkDriver>;
  /** The network's hosts. */
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** e.g. "10.10.0.0/24" (the network address). */
  readonly cidr: pulumi.Input<string>;
  /** Gateway address; "" for none. @default the first host address */
  readonly gateway?: pulumi.Input<string>;
  /** Addresses handed out. @default gateway+1 .. last host address */
  readonly allocationPool?: pulumi.Input<{ start: pulumi.Input<string>; end: pulumi.Input<string> }>;
  /** DNS servers announced by DHCP. @default [] */
  readonly dnsServers?: pulumi.Input<pulumi.Input<string>[]>;
  /** Run dnsmasq for this subnet. @default true */
  readonly enableDhcp?: pulumi.Input<boolean>;
  /** Host name that runs DHCP and keeps the IPAM record. @default the first host */
  readonly dhcpHost?: pulumi.Input<string>;
  /** Address of the DHCP port. @default the pool's first address (reserved in IPAM) */
  readonly dhcpAddress?: pulumi.Input<string>;
  /** dnsmasq.conf text rendered for this subnet (renderDnsmasqConf with dhcpPaths()). "" without DHCP. */
  readonly dnsmasqConf: pulumi.Input<string>;
  /** MTU of the DHCP port. @default 1500 */
  readonly mtu?: pulumi.Input<number>;
  /** Owner of the host objects. @default set by the kit: "<project>/<stack>/Subnet/<name>" */
  readonly owner?: pulumi.Input<string>;
}

export interface SubnetInputs {
  subnetName: string;
  networkName: string;
  networkBridge: string;
  driver: NetworkDriver;
  hosts: HostConnection[];
  cidr: string;
  gateway: string;
  allocationPool: { start: string; end: string };
  dnsServers: string[];
  enableDhcp: boolean;
  dhcpHost: string;
  dhcpAddress: string;
  dnsmasqConf: string;
  mtu: number;
  /** Owner of the DHCP port, dnsmasq, folder and IPAM record (kit/owner.ts). */
  owner: string;
  /** Identity project `<domain>/<name>` ("" = none; the kit fills it): in the DHCP port's external_ids. */
  project?: string;
}

export interface SubnetHostState {
  namespace: boolean;
  port: boolean;
  portInBridge: boolean;
  address: string;
  dnsmasq: boolean;
  record: boolean;
}

export interface SubnetOutputs extends SubnetInputs {
  namespace: string;
  hostDevice: string;
  nsDevice: string;
  hostKeys: Record<string, string>;
  realized: SubnetHostState;
}

/** A subnet's default gateway, pool and DHCP address (one definition: core/net.ts). */
export { subnetDefaults } from "../core/net";

/** Validates and normalizes raw inputs (pure). */
export function checkSubnetInputs(news: Record<string, unknown>): Checked {
  const found = failureList();
  const { failures } = found;
  const fail = (property: string, reason: string | undefined): void => found.add(property, reason);
  const known = isKnown;
  for (const f of ["subnetName", "networkName"] as const) if (known(news[f])) fail(f, checkName(f, news[f]));
  if (
    known(news.networkBridge) &&
    (typeof news.networkBridge !== "string" || !/^kvlb-[0-9a-f]{8}$/.test(news.networkBridge))
  ) {
    fail(
      "networkBridge",
      `networkBridge: expected the Network's bridge output (kvlb-xxxxxxxx), got ${showValue(news.networkBridge)}`,
    );
  }
  if (known(news.driver) && news.driver !== "linuxbridge" && news.driver !== "openvswitch") {
    fail(
      "driver",
      `driver: expected the Network's driver ("linuxbridge" or "openvswitch"), got ${showValue(news.driver)}`,
    );
  }
  for (const e of checkHostList("hosts", news.hosts)) fail("hosts", e);
  const hosts = normalizeHosts(news.hosts);
  const out: Record<string, unknown> = { ...news, hosts };
  out.dnsServers = news.dnsServers ?? [];
  out.enableDhcp = news.enableDhcp ?? true;
  out.mtu = news.mtu ?? 1500;
  if (
    known(out.mtu) &&
    (typeof out.mtu !== "number" || !Number.isInteger(out.mtu) || out.mtu < 576 || out.mtu > 9000)
  ) {
    fail("mtu", `mtu: expected an integer 576-9000, got ${showValue(out.mtu)}`);
  }
  if (news.dhcpHost === undefined) {
    out.dhcpHost =
      Array.isArray(hosts) && hosts.length > 0 && known(hosts[0])
        ? (hosts[0] as HostConnection).name
        : UNKNOWN;
  } else if (
    known(news.dhcpHost) &&
    Array.isArray(hosts) &&
    known(hosts) &&
    !hosts.some((h) => (h as HostConnection).name === news.dhcpHost)
  ) {
    fail(
      "dhcpHost",
      `dhcpHost: ${showValue(news.dhcpHost)} is not one of the network's hosts (${hosts.map((h) => (h as HostConnection).name).join(", ")})`,
    );
  }
  if (!known(news.cidr)) return { inputs: out, failures };
  const c = typeof news.cidr === "string" ? parseCidr4(news.cidr) : undefined;
  if (!c || c.prefix < 8 || c.prefix > 29) {
    fail(
      "cidr",
      `cidr: expected an IPv4 network like 10.10.0.0/24 (prefix 8-29, host bits zero), got ${showValue(news.cidr)}`,
    );
    return { inputs: out, failures };
  }
  const inside = (field: string, v: unknown): boolean => {
    const n = typeof v === "string" ? ipv4ToInt(v) : Number.NaN;
    if (Number.isNaN(n) || n <= c.network || n >= c.broadcast) {
      fail(field, `${field}: expected a host address inside ${news.cidr as string}, got ${showValue(v)}`);
      return false;
    }
    return true;
  };
  if (known(news.gateway) && news.gateway !== undefined && news.gateway !== "")
    inside("gateway", news.gateway);
  const defaults = known(news.gateway)
    ? subnetDefaults(news.cidr as string, news.gateway as string | undefined)
    : undefined;
  out.gateway = news.gateway ?? defaults?.gateway ?? UNKNOWN;
  out.allocationPool = news.allocationPool ?? defaults?.allocationPool ?? UNKNOWN;
  if (known(out.allocationPool)) {
    const p = out.allocationPool as { start: unknown; end: unknown };
    if (p === null || typeof p !== "object")
      fail("allocationPool", `allocationPool: expected {start, end}, got ${showValue(p)}`);
    else if (inside("allocationPool.start", p.start) && inside("allocationPool.end", p.end)) {
      if (ipv4ToInt(p.start as string) > ipv4ToInt(p.end as string))
        fail(
          "allocationPool",
          `allocationPool: start ${String(p.start)} comes after end ${String(p.end)}; swap them`,
        );
      if (known(out.gateway) && out.gateway !== "") {
        const g = ipv4ToInt(out.gateway as string);
        if (g >= ipv4ToInt(p.start as string) && g <= ipv4ToInt(p.end as string))
          fail(
            "allocationPool",
            `allocationPool: contains the gateway ${String(out.gateway)}; start the pool after it`,
          );
      }
    }
  }
  out.dhcpAddress =
    news.dhcpAddress ??
    (known(out.allocationPool) ? (out.allocationPool as { start: string }).start : UNKNOWN);
  if (known(out.dhcpAddress)) inside("dhcpAddress", out.dhcpAddress);
  if (known(out.dnsServers)) {
    if (!Array.isArray(out.dnsServers))
      fail("dnsServers", `dnsServers: expected a list of IPv4 addresses, got ${showValue(out.dnsServers)}`);
    else
      out.dnsServers.forEach(
        (d, i) =>
          Number.isNaN(typeof d === "string" ? ipv4ToInt(d) : Number.NaN) &&
          fail("dnsServers", `dnsServers[${i}]: expected an IPv4 address, got ${showValue(d)}`),
      );
  }
  if (known(out.enableDhcp) && typeof out.enableDhcp !== "boolean")
    fail("enableDhcp", `enableDhcp: expected true or false, got ${showValue(out.enableDhcp)}`);
  if (
    known(news.dnsmasqConf) &&
    known(news.subnetName) &&
    known(news.networkName) &&
    out.enableDhcp === true
  ) {
    const conf = news.dnsmasqConf;
    const paths = dhcpPaths(news.networkName as string, news.subnetName as string);
    // Parsed against an allow-list: dnsmasq runs as root, so `user=`, `dhcp-script=`,
    // `conf-dir=`, `tftp-root=` or a lease file elsewhere would be a way in (issue 15).
    if (typeof conf !== "string")
      fail("dnsmasqConf", `dnsmasqConf: expected the config text, got ${showValue(conf)}`);
    else
      fail(
        "dnsmasqConf",
        checkDnsmasqConf(conf, {
          interface: paths.nsDevice,
          pidFile: paths.pidFile,
          leaseFile: paths.leaseFile,
        }),
      );
  }
  out.owner = checkedOwner(
    news,
    "Subnet",
    "subnetName",
    (property, reason) => reason && fail(property, reason),
  );
  return { inputs: out, failures };
}

/** Fields whose change makes a new subnet. */
export const SUBNET_REPLACE_KEYS = [
  "subnetName",
  "networkName",
  "networkBridge",
  "driver",
  "cidr",
  "dhcpHost",
] as const;

/** Pure diff. */
export function diffSubnet(olds: SubnetOutputs, news: SubnetInputs): DiffResult {
  const replaces = changedKeys(olds, news, SUBNET_REPLACE_KEYS);
  const updates = changedKeys(olds, news, [
    "hosts",
    "gateway",
    "allocationPool",
    "dnsServers",
    "enableDhcp",
    "dhcpAddress",
    "dnsmasqConf",
    "mtu",
  ]);
  const r = olds.realized;
  const drift =
    !r ||
    !r.record ||
    (news.enableDhcp !== false &&
      (!r.namespace || !r.port || !r.portInBridge || !r.dnsmasq || r.address !== news.dhcpAddress));
  return { changes: replaces.length > 0 || updates.length > 0 || drift, replaces, deleteBeforeReplace: true };
}

function prefixOf(cidr: string): number {
  return Number(cidr.split("/")[1]);
}

/** Step: namespace, veth into the bridge, address (idempotent). */
export function dhcpPortStep(
  inputs: SubnetInputs,
  paths: DhcpPaths,
  owners: readonly string[] = [inputs.owner ?? ""],
): Step {
  const lines = [
    "set -e",
    `ns=${shQuote(paths.namespace)}; hd=${paths.hostDevice}; nd=${paths.nsDevice}; br=${shQuote(inputs.networkBridge)}; mtu=${inputs.mtu}`,
    `addr=${shQuote(`${inputs.dhcpAddress}/${prefixOf(inputs.cidr)}`)}`,
    '[ -e "/sys/class/net/$br" ] || { echo "bridge $br of network is missing on this host; create or refresh the Network first" >&2; exit 21; }',
    '[ -e "/run/netns/$ns" ] || ip netns add "$ns"',
    'ip netns exec "$ns" ip link set lo up',
    ...vethLegLines({
      externalId: { key: "kvmlab-subnet", value: inputs.subnetName },
      openvswitch: inputs.driver === "openvswitch",
      // Owner and project on the DHCP port (issue 14).
      ovsIds: ovsOwnerIds(inputs.owner ?? "", inputs.project ?? ""),
      ovsGuard: owners,
      ovsGuardText: {
        what: `the DHCP port of subnet ${inputs.subnetName}`,
        fix: `check which stack holds subnet ${inputs.subnetName} of network ${inputs.networkName} (ovs-vsctl list port ${paths.hostDevice}); rename this subnet or delete it from that stack`,
      },
    }),
  ];
  lines.push(
    'ip netns exec "$ns" ip link set dev "$nd" mtu $mtu up',
    'for a in $(ip netns exec "$ns" ip -4 -o addr show dev "$nd" | awk \'{print $4}\'); do [ "$a" = "$addr" ] || ip netns exec "$ns" ip addr del "$a" dev "$nd"; done',
    'ip netns exec "$ns" ip addr replace "$addr" dev "$nd"',
  );
  return { label: `plug DHCP port of subnet ${inputs.subnetName}`, script: lines.join("\n") };
}

/** Step: validate the uploaded config and swap it in; (re)start dnsmasq when needed. */
export function dnsmasqStep(inputs: SubnetInputs, paths: DhcpPaths): Step {
  return {
    label: `start dnsmasq for subnet ${inputs.subnetName}`,
    script: [
      "set -e",
      `ns=${shQuote(paths.namespace)}; conf=${shQuote(paths.confFile)}; pidf=${shQuote(paths.pidFile)}; hostsf=${shQuote(paths.hostsFile)}`,
      'if ! dnsmasq --test --conf-file="$conf.new" >/dev/null 2>"$conf.err"; then cat "$conf.err" >&2; rm -f "$conf.new" "$conf.err"; echo "the new dnsmasq config was refused; the running one stays" >&2; exit 22; fi',
      'rm -f "$conf.err"',
      'changed=yes; if cmp -s "$conf.new" "$conf"; then changed=no; rm -f "$conf.new"; else mv -f "$conf.new" "$conf"; fi',
      '[ -f "$hostsf" ] || : > "$hostsf"',
      'alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(awk \'{print $3}\' "/proc/$1/stat")" != Z ] && grep -q dnsmasq "/proc/$1/comm"; }',
      'pid=$(cat "$pidf" 2>/dev/null || true)',
      'if alive "$pid" && [ "$changed" = yes ]; then kill "$pid"; i=0; while alive "$pid" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; fi',
      'if ! alive "$pid" || [ "$changed" = yes ]; then',
      '  if ! ip netns exec "$ns" dnsmasq --conf-file="$conf" --dhcp-hostsfile="$hostsf" </dev/null >/dev/null 2>"$conf.start"; then cat "$conf.start" >&2; rm -f "$conf.start"; exit 23; fi',
      '  rm -f "$conf.start"',
      "fi",
      'echo "changed=$changed"',
    ].join("\n"),
  };
}

/** Step printing the subnet's state on its host. */
export function subnetReadStep(
  inputs: Pick<SubnetInputs, "subnetName" | "networkName" | "networkBridge" | "driver">,
  paths: DhcpPaths,
): Step {
  return {
    label: `read subnet ${inputs.subnetName}`,
    script: [
      `ns=${shQuote(paths.namespace)}; hd=${paths.hostDevice}; nd=${paths.nsDevice}; br=${shQuote(inputs.networkBridge)}; pidf=${shQuote(paths.pidFile)}`,
      `rec=${shQuote(recordPath("ipam", ipamRecordName(inputs.networkName, inputs.subnetName)))}`,
      'echo "record=$( [ -f "$rec" ] && echo yes || echo no)"',
      'echo "namespace=$( [ -e "/run/netns/$ns" ] && echo yes || echo no)"',
      'echo "port=$( ip link show dev "$hd" >/dev/null 2>&1 && echo yes || echo no)"',
      inputs.driver === "openvswitch"
        ? 'echo "inbridge=$( [ "$(ovs-vsctl port-to-br "$hd" 2>/dev/null)" = "$br" ] && echo yes || echo no)"'
        : 'm=$(readlink "/sys/class/net/$hd/master" 2>/dev/null || true); echo "inbridge=$( [ "${m##*/}" = "$br" ] && echo yes || echo no)"',
      'if [ -e "/run/netns/$ns" ]; then echo "address=$(ip netns exec "$ns" ip -4 -o addr show dev "$nd" 2>/dev/null | awk \'{print $4}\' | head -n1 | cut -d/ -f1)"; fi',
      'pid=$(cat "$pidf" 2>/dev/null || true)',
      'if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] && [ "$(awk \'{print $3}\' "/proc/$pid/stat")" != Z ] && grep -q dnsmasq "/proc/$pid/comm"; then echo dnsmasq=yes; else echo dnsmasq=no; fi',
    ].join("\n"),
  };
}

export function parseSubnetState(stdout: string): SubnetHostState {
  const kv = parseKeyValues(stdout);
  return {
    namespace: kv.get("namespace") === "yes",
    port: kv.get("port") === "yes",
    portInBridge: kv.get("inbridge") === "yes",
    address: kv.get("address") ?? "",
    dnsmasq: kv.get("dnsmasq") === "yes",
    record: kv.get("record") === "yes",
  };
}

/** Step removing everything of the subnet from its host (idempotent). */
export function subnetDeleteStep(
  subnetName: string,
  networkName: string,
  driver: NetworkDriver,
  opts: { keepRecord?: boolean; owners?: readonly string[] } = {},
): Step {
  const paths = dhcpPaths(networkName, subnetName);
  // The DHCP port goes only while it carries no other owner (issue 14).
  const portGuard = ovsOwnerGuardLines(
    "port",
    '"$hd"',
    opts.owners ?? [],
    `the DHCP port ${paths.hostDevice} of subnet ${subnetName}`,
    `check which stack holds subnet ${subnetName} of network ${networkName} (ovs-vsctl list port ${paths.hostDevice}); delete it from that stack`,
  );
  return {
    label: opts.keepRecord ? `stop DHCP of subnet ${subnetName}` : `delete subnet ${subnetName}`,
    script: [
      `ns=${shQuote(paths.namespace)}; hd=${paths.hostDevice}; dir=${shQuote(paths.dir)}; pidf=${shQuote(paths.pidFile)}`,
      // Before anything is stopped or removed.
      ...(driver === "openvswitch" ? portGuard : []),
      'alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(awk \'{print $3}\' "/proc/$1/stat")" != Z ] && grep -q dnsmasq "/proc/$1/comm"; }',
      'pid=$(cat "$pidf" 2>/dev/null || true)',
      'if alive "$pid"; then kill "$pid"; i=0; while alive "$pid" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; alive "$pid" && kill -9 "$pid"; fi',
      driver === "openvswitch"
        ? 'command -v ovs-vsctl >/dev/null 2>&1 && ovs-vsctl --if-exists del-port "$hd"'
        : "true",
      'ip link del dev "$hd" 2>/dev/null || true',
      'rm -rf "$dir"',
      // The network's folder holds its subnets' folders: it goes with the last one.
      'rmdir "${dir%/*}" 2>/dev/null || true',
      opts.keepRecord
        ? "true"
        : `rm -f ${shQuote(recordPath("ipam", ipamRecordName(networkName, subnetName)))}`,
      // The namespace is shared by the network's subnets: remove it with the last port.
      'if [ -e "/run/netns/$ns" ] && [ -z "$(ip netns exec "$ns" ip -o link show 2>/dev/null | awk -F\': \' \'$2 != "lo" {print $2}\')" ]; then ip netns del "$ns"; fi',
      "true",
    ].join("\n"),
  };
}

function dhcpHostOf(inputs: Pick<SubnetInputs, "hosts" | "dhcpHost">): HostConnection {
  return hostNamed(inputs.hosts, inputs.dhcpHost, "subnet");
}

/** The subnet's objects on its DHCP host, for the owner guards (keyed by network + subnet). */
export function subnetOwned(networkName: string, subnetName: string): OwnedObject {
  const paths = dhcpPaths(networkName, subnetName);
  const rec = recordPath("ipam", ipamRecordName(networkName, subnetName));
  return {
    kind: "subnet",
    key: [networkName, subnetName],
    what: `subnet ${subnetName} of network ${networkName}`,
    field: "subnetName",
    exists: `{ [ -e ${shQuote(rec)} ] || [ -e ${shQuote(paths.dir)} ] || ip link show dev ${paths.hostDevice} >/dev/null 2>&1; }`,
  };
}

/**
 * Converging apply on the DHCP host: returns the state read back. The first step claims the
 * subnet (`claim`, create: sets `made.claimed` when this call made the claim) or refuses another
 * owner's (`owners`: the old and the new owner of an update).
 */
async function applySubnet(
  inputs: SubnetInputs,
  guard: { claim: true; made: { claimed: boolean } } | { claim: false; owners: readonly string[] },
): Promise<SubnetHostState> {
  const host = dhcpHostOf(inputs);
  const paths = dhcpPaths(inputs.networkName, inputs.subnetName);
  const recName = ipamRecordName(inputs.networkName, inputs.subnetName);
  const owned = subnetOwned(inputs.networkName, inputs.subnetName);
  if (inputs.enableDhcp)
    await requireFeatures(host, inputs.driver === "openvswitch" ? ["dhcp", "openvswitch"] : ["dhcp"]);
  return withHostLock(host, async () => {
    const [ownerOut, recText] = await runChecked(host, [
      guard.claim ? claimStep(owned, inputs.owner) : guardStep(owned, guard.owners, true),
      readRecordStep("ipam", recName),
    ]);
    if (guard.claim) guard.made.claimed = claimedNow(ownerOut);
    const old = parseRecord<IpamRecord>(recText, `ipam/${recName} (subnet ${inputs.subnetName})`);
    let record: IpamRecord = {
      subnet: inputs.subnetName,
      network: inputs.networkName,
      owner: inputs.owner,
      cidr: inputs.cidr,
      gateway: inputs.gateway,
      pool: inputs.allocationPool,
      allocations: old && old.cidr === inputs.cidr ? planRelease(old, "dhcp").allocations : {},
    };
    if (inputs.enableDhcp) {
      const plan = planAllocation(record, "dhcp", { fixedIp: inputs.dhcpAddress });
      if ("error" in plan) throw new Error(`dhcpAddress: ${plan.error}`);
      record = plan.record;
    }
    const steps: Step[] = [];
    // DHCP turned off (or never on): no dnsmasq, port or namespace may stay behind.
    if (!inputs.enableDhcp) {
      steps.push(
        subnetDeleteStep(inputs.subnetName, inputs.networkName, inputs.driver, {
          keepRecord: true,
          owners: guard.claim ? [inputs.owner] : guard.owners,
        }),
      );
    }
    steps.push(...ipamCommitSteps(record, paths, inputs.networkName));
    if (inputs.enableDhcp) {
      steps.push(
        dhcpPortStep(inputs, paths, guard.claim ? [inputs.owner] : guard.owners),
        uploadStep(`${paths.confFile}.new`, inputs.dnsmasqConf, { mode: "0644" }),
        dnsmasqStep(inputs, paths),
      );
    }
    steps.push(subnetReadStep(inputs, paths));
    const outs = await runChecked(host, steps, { timeoutMs: 60000 });
    return parseSubnetState(outs[outs.length - 1]);
  });
}

/**
 * Removes the subnet from its DHCP host; the first step refuses a subnet another owner holds
 * (state from before owners, owner "", is not guarded).
 */
async function removeSubnet(
  o: Pick<SubnetOutputs, "subnetName" | "networkName" | "driver" | "hosts" | "dhcpHost">,
  owner: string,
): Promise<void> {
  const owned = subnetOwned(o.networkName, o.subnetName);
  await runLocked(dhcpHostOf(o), [
    ...(owner ? [guardStep(owned, [owner])] : []),
    subnetDeleteStep(o.subnetName, o.networkName, o.driver, { owners: [owner] }),
    ...(owner ? [releaseOwnerStep(owned, [owner])] : []),
  ]);
}

function subnetOutputs(inputs: SubnetInputs, realized: SubnetHostState): SubnetOutputs {
  const paths = dhcpPaths(inputs.networkName, inputs.subnetName);
  return {
    ...inputs,
    namespace: paths.namespace,
    hostDevice: paths.hostDevice,
    nsDevice: paths.nsDevice,
    hostKeys: {},
    realized,
  };
}

const subnet = defineResource<SubnetInputs, SubnetOutputs>({
  type: "Subnet",
  inputKeys: [
    "subnetName",
    "networkName",
    "networkBridge",
    "driver",
    "hosts",
    "cidr",
    "gateway",
    "allocationPool",
    "dnsServers",
    "enableDhcp",
    "dhcpHost",
    "dhcpAddress",
    "dnsmasqConf",
    "mtu",
    "owner",
  ],
  outputKeys: ["namespace", "hostDevice", "nsDevice", "hostKeys", "realized"],
  secretOutputs: ["hosts"],
  check: (news) => checkSubnetInputs(news),
  diff: diffSubnet,
  quota: charges(() => ({ subnets: 1 })), // issue 14: charged to the project by the kit

  async create(inputs) {
    let realized: SubnetHostState;
    const made = { claimed: false };
    try {
      realized = await applySubnet(inputs, { claim: true, made });
    } catch (err) {
      // Only what this call made: never another owner's subnet (its dnsmasq, folder, record).
      if (made.claimed) await removeSubnet(inputs, inputs.owner).catch(() => undefined);
      throw err;
    }
    return { id: inputs.subnetName, outs: subnetOutputs(inputs, realized) };
  },

  async read(_id, props) {
    const host = dhcpHostOf(props);
    const [r] = await runSteps(host, [subnetReadStep(props, dhcpPaths(props.networkName, props.subnetName))]);
    if (r.code !== 0)
      throw new Error(`host ${host.name}: reading subnet ${props.subnetName} failed: ${r.stderr.trim()}`);
    const realized = parseSubnetState(r.stdout);
    return realized.record || realized.port || realized.dnsmasq ? { ...props, realized } : undefined;
  },

  async update(_id, olds, news) {
    return subnetOutputs(
      news,
      await applySubnet(news, { claim: false, owners: [news.owner, ownerIn(olds)] }),
    );
  },

  async delete(_id, olds) {
    await removeSubnet(olds, ownerIn(olds));
  },
});

export const subnetProvider = subnet.provider;

/** A subnet with IPAM and optional DHCP (`pulumi-nodejs:dynamic/kvmlab:Subnet`). */
export class Subnet extends KvmlabResource<SubnetInputs, SubnetOutputs> {
  declare readonly subnetName: pulumi.Output<string>;
  declare readonly networkName: pulumi.Output<string>;
  declare readonly cidr: pulumi.Output<string>;
  declare readonly gateway: pulumi.Output<string>;
  declare readonly allocationPool: pulumi.Output<{ start: string; end: string }>;
  declare readonly dnsServers: pulumi.Output<string[]>;
  declare readonly enableDhcp: pulumi.Output<boolean>;
  declare readonly dhcpHost: pulumi.Output<string>;
  declare readonly dhcpAddress: pulumi.Output<string>;
  declare readonly namespace: pulumi.Output<string>;
  declare readonly hostDevice: pulumi.Output<string>;
  declare readonly nsDevice: pulumi.Output<string>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<SubnetHostState>;
  declare readonly hosts: pulumi.Output<HostConnection[]>;
  declare readonly owner: pulumi.Output<string>;

  constructor(name: string, args: SubnetArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(subnet, name, { ...args, subnetName: args.subnetName ?? name }, opts);
  }
}
