/**
 * Network: an L2 network present on every listed host, like a Neutron network with the ML2
 * `flat` or `vxlan` type and the `linuxbridge` or `openvswitch` mechanism driver.
 *
 *   kind "provider"     a bridge on each host holding the host's uplink (e.g. eth1)
 *   kind "selfservice"  a bridge on each host plus a kernel VXLAN device (one VNI per network,
 *                       unicast head-end replication to every other host's tunnel address),
 *                       MTU reduced by 50 bytes for the VXLAN overhead
 *   driver "linuxbridge"  Linux bridge; the VXLAN device is a bridge port
 *   driver "openvswitch"  OVS bridge (datapath_type=system when the openvswitch kernel module is
 *                         loaded, else netdev, recorded per host); the kernel VXLAN device is an
 *                         OVS port (not an OVS-native tunnel: those need full checksums from
 *                         every sender, see research/labhost.md)
 *
 * Names on hosts: bridge `kvlb-<id>`, VXLAN device `kvlx-<id>` with <id> = first 8 hex digits
 * of sha256(networkName); OVS objects carry external_ids kvmlab-network=<name>; the record
 * /var/lib/kvmlab/records/network/<name>.json maps the id back to the name, and create refuses
 * an id another network already uses.
 *
 *   check   validates every field (unknowns accepted during preview), fills defaults
 *   diff    pure (no SSH): name/kind/driver/vni replace; mtu, hosts and drift update
 *   create  per host, under the host lock, one batch: apply + record + read back; on failure
 *           every host is cleaned again
 *   read    one batch per host: what exists (drift shows as `realized`; all gone = deleted)
 *   update  re-applies on current hosts (converges), removes from hosts no longer listed
 *   delete  removes devices, OVS bridge and record per host; missing objects are fine
 *
 * Serialization: the provider object below is serialized into state; it references only the
 * host layer's functions, and `require`s nothing at module level.
 */
import type * as pulumi from "@pulumi/pulumi";
import { networkDevices } from "../core/paths";
import {
  UNKNOWN,
  checkHostList,
  deleteRecordStep,
  isIPv4,
  recordPath,
  requireFeatures,
  runLocked,
  runSteps,
  shQuote,
  shortId,
  writeRecordStep,
  type HostConnection,
  type Step,
} from "./host";
import {
  failureList,
  KvmlabResource,
  applyRules,
  changedKeys,
  checkedOwner,
  claimStep,
  claimedNow,
  defineResource,
  guardStep,
  ownerIn,
  releaseOwnerStep,
  type OwnedObject,
  isKnown,
  isUnknown,
  normalizeHosts,
  onEveryHost,
  parseKeyValues,
  rules,
  type Checked,
  type DiffResult,
  type HostConnectionArgs,
  type InProjectArgs,
} from "./kit";
import { charges } from "./quota";

// Kept here for programs and modules that imported them from the Network provider.
export { hostKeyRecord, pinnedHost, type HostConnectionArgs } from "./kit";

export type NetworkKind = "provider" | "selfservice";
export type NetworkDriver = "linuxbridge" | "openvswitch";

export interface NetworkArgs extends InProjectArgs {
  /** Name on the hosts (records, external_ids, qdhcp namespace). @default the resource name */
  readonly networkName?: pulumi.Input<string>;
  readonly kind: pulumi.Input<NetworkKind>;
  /** @default "linuxbridge" */
  readonly driver?: pulumi.Input<NetworkDriver>;
  /** Hosts the network spans (from components/hosts.ts resolveHosts, or explicit). */
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** VXLAN network identifier (selfservice). @default derived from the name, 4096-16777215 */
  readonly vni?: pulumi.Input<number>;
  /** Interface MTU on the network. @default 1450 for selfservice (1500 - 50), 1500 for provider */
  readonly mtu?: pulumi.Input<number>;
  /** Owner of the host objects. @default set by the kit: "<project>/<stack>/Network/<name>" */
  readonly owner?: pulumi.Input<string>;
}

/** Inputs as the provider sees them after check. */
export interface NetworkInputs {
  networkName: string;
  kind: NetworkKind;
  driver: NetworkDriver;
  hosts: HostConnection[];
  /** 0 for provider networks. */
  vni: number;
  mtu: number;
  /** Owner of the bridge, VXLAN device and record on every host (kit/owner.ts). */
  owner: string;
}

/** What one host actually has (read back after every change, and by refresh). */
export interface NetworkHostState {
  bridge: boolean;
  mtu: number;
  /** VNI of the VXLAN device when it exists and is attached to the bridge, else 0. */
  vni: number;
  /** Head-end replication targets (sorted). */
  remotes: string[];
  uplinkAttached: boolean;
  /** "linux", or the OVS datapath type ("system" / "netdev"). */
  datapathType: string;
  record: boolean;
}

export interface NetworkOutputs extends NetworkInputs {
  shortId: string;
  bridge: string;
  /** "" for provider networks. */
  vxlanDevice: string;
  /** SHA256 fingerprint per host name: the pin, or the key recorded on first use. */
  hostKeys: Record<string, string>;
  /** Per host name: what exists there. */
  realized: Record<string, NetworkHostState>;
}

/** Default VNI for a network name: deterministic, above the 4095 VLAN range. */
export function defaultVni(networkName: string): number {
  return 4096 + (Number.parseInt(shortId(networkName), 16) % (16777215 - 4096));
}

/** Device names of a network on every host (one definition: core/paths.ts). */
export { networkDevices } from "../core/paths";

/** What a host should have for these inputs (datapathType is not predicted). */
export function expectedHostState(
  inputs: NetworkInputs,
  host: HostConnection,
): Omit<NetworkHostState, "datapathType"> {
  const selfservice = inputs.kind === "selfservice";
  return {
    bridge: true,
    mtu: inputs.mtu,
    vni: selfservice ? inputs.vni : 0,
    remotes: selfservice
      ? inputs.hosts
          .filter((h) => h.name !== host.name)
          .map((h) => h.tunnelAddress)
          .sort()
      : [],
    uplinkAttached: inputs.kind === "provider",
    record: true,
  };
}

/** Validates and normalizes raw inputs; returns {inputs, failures}. Pure. */
export function checkNetworkInputs(news: Record<string, unknown>): Checked {
  const out = failureList();
  const {
    networkName: name,
    kind,
    driver,
  } = applyRules(
    news,
    {
      networkName: { rule: rules.name },
      kind: {
        rule: rules.oneOf(
          ["provider", "selfservice"],
          '"provider" (flat, on each host\'s uplink) or "selfservice" (VXLAN between hosts)',
        ),
      },
      driver: { rule: rules.oneOf(["linuxbridge", "openvswitch"]), default: "linuxbridge" },
    },
    out,
  );
  out.add("hosts", checkHostList("hosts", news.hosts));
  const hosts = normalizeHosts(news.hosts);
  if (Array.isArray(hosts) && isKnown(kind)) {
    hosts.forEach((h, i) => {
      if (h === null || typeof h !== "object" || isUnknown(h)) return;
      const host = h as HostConnection;
      if (kind === "provider" && !host.uplink) {
        out.add(
          "hosts",
          `hosts[${i}].uplink: a provider (flat) network needs the host's uplink device, e.g. "eth1"; set it in kvmlab:hosts`,
        );
      }
      if (kind === "selfservice" && hosts.length > 1 && !isIPv4(host.tunnelAddress)) {
        out.add(
          "hosts",
          `hosts[${i}].tunnelAddress: a selfservice network on several hosts needs each host's VXLAN underlay address; set it in kvmlab:hosts`,
        );
      }
    });
  }
  let vni = news.vni;
  if (kind === "provider") vni = 0;
  else if (vni === undefined) vni = typeof name === "string" && isKnown(name) ? defaultVni(name) : UNKNOWN;
  else if (isKnown(vni)) out.add("vni", rules.int(1, 16777215)("vni", vni));
  let mtu = news.mtu;
  if (mtu === undefined) mtu = kind === "provider" ? 1500 : kind === "selfservice" ? 1450 : UNKNOWN;
  else if (isKnown(mtu))
    out.add("mtu", rules.int(576, 9000, "", " (selfservice: the underlay MTU minus 50)")("mtu", mtu));
  const owner = checkedOwner(news, "Network", "networkName", out.add);
  return { inputs: { ...news, driver, hosts, vni, mtu, owner }, failures: out.failures };
}

/** Fields whose change makes a new network. */
export const NETWORK_REPLACE_KEYS = ["networkName", "kind", "driver", "vni"] as const;

/** Property-level diff; pure (never connects). */
export function diffNetwork(olds: NetworkOutputs, news: NetworkInputs): DiffResult {
  const replaces = changedKeys(olds, news, NETWORK_REPLACE_KEYS);
  let changes = replaces.length > 0 || changedKeys(olds, news, ["mtu", "hosts"]).length > 0;
  if (!changes) {
    // Drift found by refresh: anything on a host that differs from what the inputs ask for.
    changes = news.hosts.some((h) => {
      const have = olds.realized?.[h.name];
      if (!have) return true;
      const want = expectedHostState(news, h);
      return (Object.keys(want) as (keyof typeof want)[]).some(
        (k) => JSON.stringify(have[k]) !== JSON.stringify(want[k]),
      );
    });
  }
  // No `stables`: the dynamic-provider plugin does not forward them, so outputs of an updated
  // Network are unknown during preview; components pass names they know instead.
  return { changes, replaces, deleteBeforeReplace: true };
}

/** Step that makes a host match the inputs (idempotent). */
export function networkApplyStep(inputs: NetworkInputs, host: HostConnection): Step {
  const { shortId: id, bridge, vxlan } = networkDevices(inputs.networkName);
  const ovs = inputs.driver === "openvswitch";
  const want = expectedHostState(inputs, host);
  const lines = [
    "set -e",
    `name=${shQuote(inputs.networkName)}; br=${bridge}; vx=${vxlan}; id=${id}; mtu=${inputs.mtu}`,
    `rec=${shQuote(recordPath("network", inputs.networkName))}`,
    "mkdir -p /var/lib/kvmlab/records/network",
    // One grep over all records: is this device id already another network's?
    'other=$(grep -lF "\\"shortId\\": \\"$id\\"" /var/lib/kvmlab/records/network/*.json 2>/dev/null | grep -vxF "$rec" | head -n1 || true)',
    'if [ -n "$other" ]; then echo "device id $id of network $name is already used by network $(basename "$other" .json) on this host; rename one of them" >&2; exit 17; fi',
  ];
  // OVS changes go into ONE ovs-vsctl transaction (each call waits for ovs-vswitchd).
  const ovsTx: string[] = [];
  if (ovs) {
    lines.push("dp=netdev; [ -d /sys/module/openvswitch ] && dp=system");
    ovsTx.push(
      '--may-exist add-br "$br"',
      `set bridge "$br" datapath_type=$dp external_ids:kvmlab-network="$name" external_ids:kvmlab-kind=${inputs.kind} external_ids:kvmlab-owner=${shQuote(JSON.stringify(inputs.owner))}`,
      'set interface "$br" mtu_request=$mtu',
    );
  } else {
    lines.push(
      'ip link show dev "$br" >/dev/null 2>&1 || ip link add "$br" type bridge',
      'ip link set dev "$br" mtu $mtu',
      'ip link set dev "$br" up',
    );
  }
  if (inputs.kind === "selfservice") {
    const local = host.tunnelAddress || "";
    lines.push(
      `vni=${inputs.vni}; local=${shQuote(local)}`,
      // Recreate the device when its VNI or local address differ from the inputs.
      'if ! ip -d link show dev "$vx" 2>/dev/null | grep -Eq "vxlan id $vni ${local:+local $local }"; then',
      '  ip link del dev "$vx" 2>/dev/null || true',
      '  ip link add "$vx" type vxlan id $vni ${local:+local $local} dstport 4789',
      "fi",
      'ip link set dev "$vx" mtu $mtu',
    );
    if (ovs) {
      lines.push('ip link set dev "$vx" up');
      ovsTx.push('--may-exist add-port "$br" "$vx"', 'set port "$vx" external_ids:kvmlab-network="$name"');
    } else {
      lines.push('ip link set dev "$vx" master "$br" up');
    }
    lines.push(
      `want=" ${want.remotes.map((r) => shQuote(r)).join(" ")} "`,
      'for r in $(bridge fdb show dev "$vx" | awk \'$1=="00:00:00:00:00:00" {print $3}\'); do',
      '  case "$want" in *" $r "*) ;; *) bridge fdb del 00:00:00:00:00:00 dev "$vx" dst "$r" ;; esac',
      "done",
      "have=\" $(bridge fdb show dev \"$vx\" | awk '$1==\"00:00:00:00:00:00\" {print $3}' | tr '\\n' ' ') \"",
      'for r in $want; do case "$have" in *" $r "*) ;; *) bridge fdb append 00:00:00:00:00:00 dev "$vx" dst "$r" ;; esac; done',
    );
  }
  if (inputs.kind === "provider") {
    lines.push(
      `up=${shQuote(host.uplink)}`,
      'ip link show dev "$up" >/dev/null 2>&1 || { echo "uplink $up does not exist on host; set hosts[].uplink to the host\'s provider NIC" >&2; exit 18; }',
      'm=$(readlink "/sys/class/net/$up/master" 2>/dev/null || true); m=${m##*/}',
    );
    if (ovs) {
      lines.push(
        'b=$(ovs-vsctl port-to-br "$up" 2>/dev/null || true)',
        'if { [ -n "$m" ] && [ "$m" != ovs-system ]; } || { [ -n "$b" ] && [ "$b" != "$br" ]; }; then echo "uplink $up is already in bridge ${b:-$m}; a flat network needs the uplink for itself" >&2; exit 19; fi',
      );
      ovsTx.push('--may-exist add-port "$br" "$up"', 'set port "$up" external_ids:kvmlab-network="$name"');
    } else {
      lines.push(
        'if [ -n "$m" ] && [ "$m" != "$br" ]; then echo "uplink $up is already in bridge $m; a flat network needs the uplink for itself" >&2; exit 19; fi',
        'ip link set dev "$up" master "$br" up',
      );
    }
  }
  if (ovs) {
    lines.push(`ovs-vsctl ${ovsTx.join(" -- ")}`, 'ip link set dev "$br" up');
    if (inputs.kind === "provider") lines.push('ip link set dev "$up" up');
  }
  return { label: `create network ${inputs.networkName} on ${host.name}`, script: lines.join("\n") };
}

/** Step that prints what a host has, as key=value lines (see parseNetworkState). */
export function networkReadStep(networkName: string, driver: NetworkDriver, host: HostConnection): Step {
  const { bridge, vxlan } = networkDevices(networkName);
  const lines = [
    `br=${bridge}; vx=${vxlan}; up=${shQuote(host.uplink || "-")}`,
    `rec=${shQuote(recordPath("network", networkName))}`,
    'if [ -f "$rec" ]; then echo record=yes; else echo record=no; fi',
  ];
  if (driver === "openvswitch") {
    lines.push(
      'if ovs-vsctl br-exists "$br" 2>/dev/null; then echo bridge=yes; echo "datapath=$(ovs-vsctl get bridge "$br" datapath_type | tr -d \'"\')"; else echo bridge=no; fi',
      'echo "vxattached=$( [ "$(ovs-vsctl port-to-br "$vx" 2>/dev/null)" = "$br" ] && echo yes || echo no)"',
      'echo "upattached=$( [ "$(ovs-vsctl port-to-br "$up" 2>/dev/null)" = "$br" ] && echo yes || echo no)"',
    );
  } else {
    lines.push(
      'if [ -d "/sys/class/net/$br/bridge" ]; then echo bridge=yes; echo datapath=linux; else echo bridge=no; fi',
      'm=$(readlink "/sys/class/net/$vx/master" 2>/dev/null || true); echo "vxattached=$( [ "${m##*/}" = "$br" ] && echo yes || echo no)"',
      'm=$(readlink "/sys/class/net/$up/master" 2>/dev/null || true); echo "upattached=$( [ "${m##*/}" = "$br" ] && echo yes || echo no)"',
    );
  }
  lines.push(
    'if [ -e "/sys/class/net/$br" ]; then echo "mtu=$(cat "/sys/class/net/$br/mtu")"; fi',
    'if [ -e "/sys/class/net/$vx" ]; then',
    '  echo "vni=$(ip -d link show dev "$vx" | grep -o "vxlan id [0-9]*" | awk \'{print $3}\')"',
    "  echo \"remotes=$(bridge fdb show dev \"$vx\" | awk '$1==\"00:00:00:00:00:00\" {print $3}' | sort | tr '\\n' ' ')\"",
    "fi",
    "true",
  );
  return { label: `read network ${networkName} on ${host.name}`, script: lines.join("\n") };
}

/** Parses the read step's output. */
export function parseNetworkState(stdout: string): NetworkHostState {
  const kv = parseKeyValues(stdout);
  const bridge = kv.get("bridge") === "yes";
  const vxAttached = kv.get("vxattached") === "yes";
  return {
    bridge,
    mtu: bridge ? Number(kv.get("mtu") ?? 0) : 0,
    vni: vxAttached ? Number(kv.get("vni") ?? 0) : 0,
    remotes: (kv.get("remotes") ?? "")
      .split(/\s+/)
      .filter((r) => r !== "")
      .sort(),
    uplinkAttached: kv.get("upattached") === "yes",
    datapathType: bridge ? (kv.get("datapath") ?? "") : "",
    record: kv.get("record") === "yes",
  };
}

/** Step that removes everything the network made on a host (idempotent). */
export function networkDeleteStep(networkName: string, driver: NetworkDriver, host: HostConnection): Step {
  const { shortId: id, bridge, vxlan } = networkDevices(networkName);
  const lines = [
    `br=${bridge}; vx=${vxlan}; up=${shQuote(host.uplink || "-")}; id=${id}`,
    `rec=${shQuote(recordPath("network", networkName))}`,
    // Devices whose id another network's record claims are that network's: leave them.
    'other=$(grep -lF "\\"shortId\\": \\"$id\\"" /var/lib/kvmlab/records/network/*.json 2>/dev/null | grep -vxF "$rec" | head -n1 || true)',
    'if [ -z "$other" ]; then',
  ];
  if (driver === "openvswitch") {
    lines.push(
      // Deleting the bridge removes its ports (the uplink of a flat network included).
      '  if command -v ovs-vsctl >/dev/null 2>&1; then ovs-vsctl --if-exists del-br "$br"; fi',
      '  ip link del dev "$vx" 2>/dev/null || true',
    );
  } else {
    lines.push(
      '  m=$(readlink "/sys/class/net/$up/master" 2>/dev/null || true); if [ "${m##*/}" = "$br" ]; then ip link set dev "$up" nomaster; fi',
      '  ip link del dev "$vx" 2>/dev/null || true',
      '  ip link del dev "$br" 2>/dev/null || true',
    );
  }
  lines.push("fi", 'rm -f "$rec"', "true");
  return { label: `delete network ${networkName} on ${host.name}`, script: lines.join("\n") };
}

/** The network's objects on a host, for the owner guards (keyed by the network's name: its identity). */
export function networkOwned(networkName: string): OwnedObject {
  const { bridge } = networkDevices(networkName);
  return {
    kind: "network",
    key: [networkName],
    what: `network ${networkName} (bridge ${bridge})`,
    field: "networkName",
    // The bridge (Linux or OVS: both show as a link) or the record of a network made before owners.
    exists: `{ ip link show dev ${bridge} >/dev/null 2>&1 || [ -f ${shQuote(recordPath("network", networkName))} ]; }`,
  };
}

/** Claims the network on a host for its owner; true when this call made the claim. */
async function claimOnHost(inputs: NetworkInputs, host: HostConnection): Promise<boolean> {
  const [out] = await runLocked(host, [claimStep(networkOwned(inputs.networkName), inputs.owner)]);
  return claimedNow(out);
}

/**
 * Applies the inputs on one host and reads back the result (one batch under the lock). The
 * first step refuses a network another owner holds (`owners`: the old and the new owner).
 */
async function applyOnHost(
  inputs: NetworkInputs,
  host: HostConnection,
  owners: readonly string[],
): Promise<NetworkHostState> {
  await requireFeatures(host, inputs.driver === "openvswitch" ? ["openvswitch"] : ["linuxbridge"]);
  const { shortId: id, bridge, vxlan } = networkDevices(inputs.networkName);
  const record = {
    name: inputs.networkName,
    shortId: id,
    kind: inputs.kind,
    driver: inputs.driver,
    vni: inputs.vni,
    mtu: inputs.mtu,
    bridge,
    vxlan: inputs.kind === "selfservice" ? vxlan : "",
    uplink: inputs.kind === "provider" ? host.uplink : "",
    remotes: expectedHostState(inputs, host).remotes,
    owner: inputs.owner,
  };
  const outs = await runLocked(host, [
    guardStep(networkOwned(inputs.networkName), owners, true),
    networkApplyStep(inputs, host),
    writeRecordStep("network", inputs.networkName, record),
    networkReadStep(inputs.networkName, inputs.driver, host),
  ]);
  return parseNetworkState(outs[3]);
}

/**
 * Removes the network from one host (one batch under the lock). The first step refuses a
 * network another owner holds; state from before owners (owner "") is not guarded.
 */
async function removeFromHost(
  networkName: string,
  driver: NetworkDriver,
  host: HostConnection,
  owner: string,
): Promise<void> {
  const owned = networkOwned(networkName);
  await runLocked(host, [
    ...(owner ? [guardStep(owned, [owner])] : []),
    networkDeleteStep(networkName, driver, host),
    deleteRecordStep("network", networkName),
    ...(owner ? [releaseOwnerStep(owned, [owner])] : []),
  ]);
}

function outputsFor(inputs: NetworkInputs, realized: Record<string, NetworkHostState>): NetworkOutputs {
  const { shortId: id, bridge, vxlan } = networkDevices(inputs.networkName);
  return {
    ...inputs,
    shortId: id,
    bridge,
    vxlanDevice: inputs.kind === "selfservice" ? vxlan : "",
    hostKeys: {},
    realized,
  };
}

const network = defineResource<NetworkInputs, NetworkOutputs>({
  type: "Network",
  inputKeys: ["networkName", "kind", "driver", "hosts", "vni", "mtu", "owner"],
  outputKeys: ["shortId", "bridge", "vxlanDevice", "hostKeys", "realized"],
  secretOutputs: ["hosts"],
  check: (news) => checkNetworkInputs(news),
  diff: diffNetwork,
  quota: charges(() => ({ networks: 1 })), // issue 14: charged to the project by the kit

  async create(inputs) {
    const realized: Record<string, NetworkHostState> = {};
    // Hosts where THIS call made the owner claim: the only ones a failed create cleans.
    const made: HostConnection[] = [];
    try {
      await onEveryHost(inputs.hosts, `create network ${inputs.networkName}`, async (h) => {
        if (await claimOnHost(inputs, h)) made.push(h);
        realized[h.name] = await applyOnHost(inputs, h, [inputs.owner]);
      });
    } catch (err) {
      // Remove what this call made (never another owner's network); report the original failure.
      await Promise.allSettled(
        made.map((h) => removeFromHost(inputs.networkName, inputs.driver, h, inputs.owner)),
      );
      throw err;
    }
    return { id: inputs.networkName, outs: outputsFor(inputs, realized) };
  },

  async read(_id, props) {
    const realized: Record<string, NetworkHostState> = {};
    await onEveryHost(props.hosts, `read network ${props.networkName}`, async (host) => {
      const [r] = await runSteps(host, [networkReadStep(props.networkName, props.driver, host)]);
      if (r.code !== 0)
        throw new Error(`host ${host.name}: reading network ${props.networkName} failed: ${r.stderr.trim()}`);
      realized[host.name] = parseNetworkState(r.stdout);
    });
    const anything = Object.values(realized).some((s) => s.bridge || s.record || s.vni !== 0);
    return anything ? { ...props, realized } : undefined;
  },

  async update(_id, olds, news) {
    const keep = new Set(news.hosts.map((h) => h.name));
    const gone = olds.hosts.filter((h) => !keep.has(h.name));
    await onEveryHost(gone, `remove network ${olds.networkName} from hosts no longer listed`, (h) =>
      removeFromHost(olds.networkName, olds.driver, h, ownerIn(olds)),
    );
    const realized: Record<string, NetworkHostState> = {};
    const owners = [news.owner, ownerIn(olds)];
    const had = new Set(olds.hosts.map((h) => h.name));
    await onEveryHost(news.hosts, `update network ${news.networkName}`, async (h) => {
      // A host new to the network is a create there: claim it (refused when another owner holds it).
      if (!had.has(h.name)) await claimOnHost(news, h);
      realized[h.name] = await applyOnHost(news, h, owners);
    });
    return outputsFor(news, realized);
  },

  async delete(_id, olds) {
    await onEveryHost(olds.hosts, `delete network ${olds.networkName}`, (h) =>
      removeFromHost(olds.networkName, olds.driver, h, ownerIn(olds)),
    );
  },
});

export const networkProvider = network.provider;

/**
 * A kvmlab network on one or more KVM hosts (`pulumi-nodejs:dynamic/kvmlab:Network`).
 * The hosts output is secret as a whole: it carries the private keys delete needs.
 */
export class Network extends KvmlabResource<NetworkInputs, NetworkOutputs> {
  declare readonly networkName: pulumi.Output<string>;
  declare readonly kind: pulumi.Output<NetworkKind>;
  declare readonly driver: pulumi.Output<NetworkDriver>;
  declare readonly vni: pulumi.Output<number>;
  declare readonly mtu: pulumi.Output<number>;
  declare readonly shortId: pulumi.Output<string>;
  declare readonly bridge: pulumi.Output<string>;
  declare readonly vxlanDevice: pulumi.Output<string>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<Record<string, NetworkHostState>>;
  declare readonly hosts: pulumi.Output<HostConnection[]>;
  declare readonly owner: pulumi.Output<string>;

  constructor(name: string, args: NetworkArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(network, name, { ...args, networkName: args.networkName ?? name }, opts);
  }
}
