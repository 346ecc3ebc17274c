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
 *                         OVS port on the kernel datapath, and on netdev tc-redirected to and
 *                         from an OVS internal port kvli-<id> (a packet-socket port dropped
 *                         bursts). Not an OVS-native tunnel: those need full checksums from
 *                         every sender, see research/labhost.md
 *   type "gre"            OVS native GRE ports (kvlg-*); on netdev on a GRE bridge kvle-<id> behind a
 *                         checksum-completing veth pair (see greLines)
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
import {
  NETWORK_TYPES,
  checkSegmentationId,
  defaultSegmentationId,
  defaultTypeMtu,
  kindOfType,
  typeOfKind,
  type NetworkType,
} from "../core/network";
import { deviceName } from "../core/names";
import { networkDevices } from "../core/paths";
import {
  UNKNOWN,
  checkHostList,
  deleteRecordStep,
  isIPv4,
  recordPath,
  requireFeatures,
  requireNetworkType,
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
  OWNER_REFUSED,
  applyRules,
  changedKeys,
  checkedOwner,
  claimStep,
  claimedNow,
  defineResource,
  guardStep,
  ovsOwnerGuardLines,
  ovsOwnerIds,
  ovsRelabelGuardLines,
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
export type { NetworkType } from "../core/network";
export type NetworkDriver = "linuxbridge" | "openvswitch";

export interface NetworkArgs extends InProjectArgs {
  /** Name on the hosts (records, external_ids, qdhcp namespace). @default the resource name */
  readonly networkName?: pulumi.Input<string>;
  /** "provider" (flat) or "selfservice" (vxlan); may be left out when `type` is given. */
  readonly kind?: pulumi.Input<NetworkKind>;
  /** ML2 type: flat, vlan, vxlan, gre or local. @default from kind (provider: flat, selfservice: vxlan) */
  readonly type?: pulumi.Input<NetworkType>;
  /** VLAN id (vlan, 1-4094, required), VNI (vxlan, = vni) or GRE key (gre). @default derived from the name */
  readonly segmentationId?: pulumi.Input<number>;
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
  /** ML2 type (states from before types: derived from kind, see networkTypeOf). */
  type: NetworkType;
  /** VLAN id, VNI or GRE key; 0 for flat and local. */
  segmentationId: number;
  driver: NetworkDriver;
  hosts: HostConnection[];
  /** 0 for provider networks. */
  vni: number;
  mtu: number;
  /** Owner of the bridge, VXLAN device and record on every host (kit/owner.ts). */
  owner: string;
  /** Identity project `<domain>/<name>` ("" = none; the kit fills it): in the record and external_ids. */
  project?: string;
}

/** What one host actually has (read back after every change, and by refresh). */
export interface NetworkHostState {
  bridge: boolean;
  mtu: number;
  /** VNI of the VXLAN device when it exists and is attached to the bridge, else 0. */
  vni: number;
  /** VLAN tag of the network's trunk leg, or GRE key of its tunnel ports (else 0). */
  segmentationId?: number;
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

/** Device names of a network on every host (one definition: core/paths.ts). For a VLAN network
 * `vxlan` names its segment port (the patch port or 802.1Q device), for GRE it is unused. */
export { networkDevices } from "../core/paths";

/** What a host should have for these inputs (datapathType is not predicted). */
export function expectedHostState(
  inputs: NetworkInputs,
  host: HostConnection,
): Omit<NetworkHostState, "datapathType"> {
  const type = networkTypeOf(inputs);
  const tunnel = type === "vxlan" || type === "gre";
  return {
    bridge: true,
    mtu: inputs.mtu,
    vni: type === "vxlan" ? inputs.vni : 0,
    ...(type === "vlan" || type === "gre" ? { segmentationId: segmentationIdOf(inputs) } : {}),
    remotes: tunnel
      ? inputs.hosts
          .filter((h) => h.name !== host.name)
          .map((h) => h.tunnelAddress)
          .sort()
      : [],
    uplinkAttached: type === "flat" || type === "vlan",
    record: true,
  };
}

/** The ML2 type of a network's inputs or outputs (states from before types: from kind). */
export function networkTypeOf(n: { type?: NetworkType; kind: NetworkKind }): NetworkType {
  return n.type ?? typeOfKind(n.kind);
}

/** The segmentation id of a network's inputs or outputs (states from before types: the VNI). */
export function segmentationIdOf(n: {
  type?: NetworkType;
  kind: NetworkKind;
  segmentationId?: number;
  vni: number;
}): number {
  return n.segmentationId ?? (networkTypeOf(n) === "vxlan" ? n.vni : 0);
}

/** Device names a VLAN or GRE network adds on a host (see the header). */
export function segmentDevices(
  networkName: string,
  uplink: string,
  remote = "",
): { trunk: string; trunkPort: string; grePort: string } {
  return {
    trunk: deviceName("p", `trunk/${uplink}`),
    trunkPort: deviceName("u", networkName),
    grePort: deviceName("g", `${networkName}/${remote}`),
  };
}

/** Validates and normalizes raw inputs; returns {inputs, failures}. Pure. */
export function checkNetworkInputs(news: Record<string, unknown>): Checked {
  const out = failureList();
  const { networkName: name, driver } = applyRules(
    news,
    {
      networkName: { rule: rules.name },
      driver: { rule: rules.oneOf(["linuxbridge", "openvswitch"]), default: "linuxbridge" },
    },
    out,
  );
  // type decides kind; kind alone decides type (flat / vxlan), so labs from before types keep working.
  let kind = news.kind;
  let type = news.type;
  if (type !== undefined) {
    if (isKnown(type)) {
      const bad = rules.oneOf(
        NETWORK_TYPES,
        "one of flat, vlan, vxlan, gre, local (Neutron's ML2 type names)",
      )("type", type);
      if (bad) {
        out.add("type", bad);
        type = UNKNOWN;
      } else {
        const k = kindOfType(type as NetworkType);
        if (kind !== undefined && isKnown(kind) && kind !== k)
          out.add(
            "kind",
            `kind ${JSON.stringify(kind)} does not match type ${JSON.stringify(type)} (a ${String(type)} network is kind "${k}"); leave kind out`,
          );
        kind = k;
      }
    } else kind = isKnown(kind) ? kind : UNKNOWN;
  } else if (kind === undefined) {
    out.add("type", 'set type (flat, vlan, vxlan, gre or local) or kind ("provider" or "selfservice")');
  } else if (isKnown(kind)) {
    const bad = rules.oneOf(
      ["provider", "selfservice"],
      '"provider" (flat, on each host\'s uplink) or "selfservice" (VXLAN between hosts)',
    )("kind", kind);
    if (bad) out.add("kind", bad);
    else type = typeOfKind(kind as NetworkKind);
  } else type = UNKNOWN;
  const t = isKnown(type) && type !== undefined ? (type as NetworkType) : undefined;

  out.add("hosts", checkHostList("hosts", news.hosts));
  const hosts = normalizeHosts(news.hosts);
  if (t === "gre" && isKnown(driver) && driver !== "openvswitch")
    out.add(
      "driver",
      'a gre network needs driver "openvswitch" (OVS GRE tunnel ports); the Linux bridge driver has no GRE (it would need the ip_gre kernel module and gretap devices): set driver: "openvswitch" or type: "vxlan"',
    );
  if (Array.isArray(hosts) && t !== undefined) {
    if (t === "local" && hosts.length !== 1)
      out.add(
        "hosts",
        `a local network lives on one host and has no uplink or tunnel; list exactly one host (got ${hosts.length})`,
      );
    if (t === "gre" && hosts.length > 2)
      out.add(
        "hosts",
        `a gre network spans at most 2 hosts (its OVS tunnel ports form a full mesh, which loops without flow rules); got ${hosts.length}: use type vxlan for more hosts`,
      );
    hosts.forEach((h, i) => {
      if (h === null || typeof h !== "object" || isUnknown(h)) return;
      const host = h as HostConnection;
      if ((t === "flat" || t === "vlan") && !host.uplink) {
        out.add(
          "hosts",
          `hosts[${i}].uplink: a provider (${t}) network needs the host's uplink device, e.g. "eth1"; set it in kvmlab:hosts`,
        );
      }
      if ((t === "vxlan" || t === "gre") && hosts.length > 1 && !isIPv4(host.tunnelAddress)) {
        out.add(
          "hosts",
          `hosts[${i}].tunnelAddress: a ${t === "vxlan" ? "selfservice" : t} network on several hosts needs each host's tunnel underlay address; set it in kvmlab:hosts`,
        );
      }
    });
  }
  // Segmentation id: segmentationId, or vni (the old field) for vxlan; both must agree.
  let seg = news.segmentationId;
  let vni = news.vni;
  if (t !== undefined) {
    if (
      t === "vxlan" &&
      seg !== undefined &&
      vni !== undefined &&
      isKnown(seg) &&
      isKnown(vni) &&
      seg !== vni
    )
      out.add(
        "segmentationId",
        `segmentationId ${String(seg)} and vni ${String(vni)} differ; set only one of them`,
      );
    if (t === "vxlan" && seg === undefined) seg = vni;
    if (t !== "vxlan" && vni !== undefined && isKnown(vni))
      out.add(
        "vni",
        `vni is the VXLAN id; a ${t} network has none${t === "vlan" || t === "gre" ? ": use segmentationId" : ""}`,
      );
    if (seg === undefined) {
      if (t === "vlan") {
        out.add("segmentationId", "a vlan network needs segmentationId: its VLAN id, 1-4094");
        seg = UNKNOWN;
      } else
        seg =
          typeof name === "string" && isKnown(name)
            ? (defaultSegmentationId(t, shortId(name)) ?? 0)
            : t === "flat" || t === "local"
              ? 0
              : UNKNOWN;
    } else if (isKnown(seg)) {
      const bad = checkSegmentationId(t, seg);
      if (bad) out.add("segmentationId", bad);
    }
    vni = t === "vxlan" ? seg : 0;
  } else {
    if (vni !== undefined && isKnown(vni)) out.add("vni", rules.int(1, 16777215)("vni", vni));
    seg = seg ?? UNKNOWN;
    vni = vni ?? UNKNOWN;
  }
  let mtu = news.mtu;
  if (mtu === undefined) mtu = t !== undefined ? defaultTypeMtu(t) : UNKNOWN;
  else if (isKnown(mtu))
    out.add(
      "mtu",
      rules.int(576, 9000, "", " (vxlan: the underlay MTU minus 50; gre: minus 42)")("mtu", mtu),
    );
  const owner = checkedOwner(news, "Network", "networkName", out.add);
  return {
    inputs: { ...news, kind, type, segmentationId: seg, driver, hosts, vni, mtu, owner },
    failures: out.failures,
  };
}

/** Fields whose change makes a new network. */
export const NETWORK_REPLACE_KEYS = [
  "networkName",
  "kind",
  "type",
  "driver",
  "vni",
  "segmentationId",
] as const;

/** Property-level diff; pure (never connects). A state from before types reads as its kind's type. */
export function diffNetwork(oldsRaw: NetworkOutputs, news: NetworkInputs): DiffResult {
  const olds = { ...oldsRaw, type: networkTypeOf(oldsRaw), segmentationId: segmentationIdOf(oldsRaw) };
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

/**
 * Lines (after `up=<uplink>`) that refuse an uplink that does not exist, or that carries the
 * address kvmlab reaches the host on or the host's tunnel address: a bridge would take that NIC
 * and with it kvmlab's own SSH session (or every VXLAN/GRE tunnel), cutting the host off.
 */
function uplinkCheckLines(host: HostConnection): string[] {
  const own = [host.address, host.tunnelAddress ?? ""].filter((a) => isIPv4(a));
  return [
    'ip link show dev "$up" >/dev/null 2>&1 || { echo "uplink $up does not exist on host; set hosts[].uplink to the host\'s provider NIC" >&2; exit 18; }',
    ...own.map(
      (a) =>
        `if ip -o -4 addr show dev "$up" 2>/dev/null | awk '{split($4, p, "/"); print p[1]}' | grep -qxF ${shQuote(a)}; then echo "uplink $up carries ${a}, an address kvmlab reaches this host or its tunnels on; a bridge would take that NIC and cut the host off. Fix: set hosts[].uplink to a NIC that carries neither the management nor the tunnel address" >&2; exit 22; fi`,
    ),
  ];
}

/** Step that makes a host match the inputs (idempotent). */
export function networkApplyStep(
  inputs: NetworkInputs,
  host: HostConnection,
  owners: readonly string[] = [inputs.owner ?? ""],
): Step {
  const { shortId: id, bridge, vxlan, vxlanPort } = networkDevices(inputs.networkName);
  const ovs = inputs.driver === "openvswitch";
  const want = expectedHostState(inputs, host);
  const type = networkTypeOf(inputs);
  // Every OVS bridge and port the network makes carries its owner and project (issue 14).
  const ids = ovsOwnerIds(inputs.owner ?? "", inputs.project ?? "");
  const own = ids === "" ? "" : ` ${ids}`;
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
  // Review O2: every bridge and port row this step labels is read first; another owner's is
  // refused (exit 73) before anything changes, never relabelled, even when the owner marker
  // was adopted (lost, or a state from before owners).
  const relabelFix = `check which stack or project holds network ${inputs.networkName} on host ${host.name} (ovs-vsctl list bridge ${bridge}); rename this network, or delete it from the stack that owns it`;
  const relabelGuard = (table: "bridge" | "port", name: string): string[] =>
    ovsRelabelGuardLines(table, name, owners, `network ${inputs.networkName}`, relabelFix);
  if (ovs) {
    lines.push("dp=netdev; [ -d /sys/module/openvswitch ] && dp=system");
    if (ids !== "") lines.push(...relabelGuard("bridge", '"$br"'), ...relabelGuard("port", '"$br"'));
    ovsTx.push(
      '--may-exist add-br "$br"',
      `set bridge "$br" datapath_type=$dp external_ids:kvmlab-network="$name" external_ids:kvmlab-kind=${inputs.kind} external_ids:kvmlab-type=${type}${own}`,
      // The bridge's own (internal) port row too, so every port row of the bridge names its owner.
      `set port "$br" external_ids:kvmlab-network="$name"${own}`,
      'set interface "$br" mtu_request=$mtu',
    );
  } else {
    lines.push(
      'ip link show dev "$br" >/dev/null 2>&1 || ip link add "$br" type bridge',
      'ip link set dev "$br" mtu $mtu',
      'ip link set dev "$br" up',
    );
  }
  if (type === "vxlan") {
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
      // The kernel datapath takes the VXLAN device as a port. The userspace (netdev) datapath
      // would read such a port through an AF_PACKET socket, whose receive buffer (the host-wide
      // rmem_default, 208 KiB) a burst overflows, and TCP has to retransmit (docs/providers.md,
      // Known limits, the OVS 1 MiB "stall"). There the bridge gets
      // an internal port $vi instead, a tap that ovs-vswitchd reads through its file descriptor
      // (a queue of packets, not of 208 KiB), and tc redirects every frame between the VXLAN
      // device and $vi both ways (no Linux bridge: no br_netfilter, no conntrack on the way).
      // GRO stays off on the device (a loss costs one segment, not a 64 KiB merged packet).
      lines.push(
        `vi=${vxlanPort}`,
        'ip link set dev "$vx" up',
        `ethtool -K "$vx" ${VXLAN_OVS_OFFLOADS} >/dev/null 2>&1 || { echo "cannot set offloads on $vx (ethtool missing?); install ethtool" >&2; exit 20; }`,
        'if [ "$dp" = netdev ]; then',
        // A VXLAN device an older kvmlab made a port of this bridge leaves it for the redirect.
        '  if [ "$(ovs-vsctl port-to-br "$vx" 2>/dev/null)" = "$br" ]; then ovs-vsctl del-port "$br" "$vx"; fi',
        "  vport=$vi; vtype=internal",
        "else",
        // Kernel datapath (e.g. the module loaded since): the device is the port; no redirect.
        '  ovs-vsctl --if-exists del-port "$vi"; tc qdisc del dev "$vx" ingress 2>/dev/null || true',
        "  vport=$vx; vtype=system",
        "fi",
      );
      ovsTx.push(
        '--may-exist add-port "$br" "$vport"',
        'set interface "$vport" type=$vtype mtu_request=$mtu',
        `set port "$vport" external_ids:kvmlab-network="$name"${own}`,
      );
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
  if (type === "vlan") lines.push(...vlanLines(inputs, host, ovsTx, own));
  if (type === "flat") {
    lines.push(
      `up=${shQuote(host.uplink)}`,
      ...uplinkCheckLines(host),
      'm=$(readlink "/sys/class/net/$up/master" 2>/dev/null || true); m=${m##*/}',
    );
    if (ovs) {
      lines.push(
        'b=$(ovs-vsctl port-to-br "$up" 2>/dev/null || true)',
        'if { [ -n "$m" ] && [ "$m" != ovs-system ]; } || { [ -n "$b" ] && [ "$b" != "$br" ]; }; then echo "uplink $up is already in bridge ${b:-$m}; a flat network needs the uplink for itself" >&2; exit 19; fi',
      );
      ovsTx.push(
        '--may-exist add-port "$br" "$up"',
        `set port "$up" external_ids:kvmlab-network="$name"${own}`,
      );
    } else {
      lines.push(
        'if [ -n "$m" ] && [ "$m" != "$br" ]; then echo "uplink $up is already in bridge $m; a flat network needs the uplink for itself" >&2; exit 19; fi',
        'ip link set dev "$up" master "$br" up',
      );
    }
  }
  if (ovs) {
    // The port rows the transaction labels (their names are shell variables set above).
    if (ids !== "")
      for (const t of ovsTx) {
        const m = /^set port ("\$[a-z]+"|[A-Za-z0-9_.-]{1,15}) .*kvmlab-owner=/.exec(t);
        if (m && m[1] !== '"$br"') lines.push(...relabelGuard("port", m[1]));
      }
    lines.push(`ovs-vsctl ${ovsTx.join(" -- ")}`, 'ip link set dev "$br" up');
    // The internal port's tap exists once ovs-vswitchd has taken the transaction.
    if (type === "vxlan")
      lines.push('if [ "$dp" = netdev ]; then', '  ip link set dev "$vi" up', ...vxlanRedirectLines(), "fi");
    if (type === "flat" || type === "vlan") lines.push('ip link set dev "$up" up');
    if (type === "gre") lines.push(...greLines(inputs, host, own, owners));
  }
  return { label: `create network ${inputs.networkName} on ${host.name}`, script: lines.join("\n") };
}

/**
 * Shell lines (with $vx, $vi set) that redirect every frame arriving on the VXLAN device to the
 * internal port's transmit queue and back (tc ingress + u32 match-all + mirred). The tc part is
 * idempotent (a device whose ingress already redirects to its peer is left alone), but every run
 * writes $vi's interface row twice per settle and makes the host's ovs-vswitchd reconfigure (at
 * least two settles: four writes, four reconfigures), even when both redirects already exist.
 * That is acceptable because the lines run only on create and update (diff or drift), never in a
 * no-change `up`.
 *
 * ovs-vswitchd owns $vi, and removes the ingress qdisc of a port it owns (ingress policing,
 * netdev-linux `set_policing`: "remove any existing ingress qdisc") in its first reconfigure
 * after any link change of that port (a link message drops its policing cache; a link change
 * anywhere also makes it reconfigure). Its reconfigure after `ip link set $vi up`, or after the
 * MTU it set, can therefore come after the redirect was added and read back: on a loaded host
 * the redirect of $vi was silently gone after create (no frame from the bridge reached the VXLAN
 * device: a guest's DHCP discovers went unanswered, session 9's second CI, lifecycle/sg-guests),
 * or gone between the qdisc and its filter ("Parent Qdisc doesn't exists", session 8's CI).
 * Shown on a sandbox host: ovs-vswitchd stopped, `ip link set $vi up` and the redirect read back,
 * ovs-vswitchd continued, $vi's redirect gone a second later.
 *
 * So the lines first make ovs-vswitchd reconfigure twice and wait for it (`settle`: a key set
 * on $vi's interface row, to a value no earlier settle wrote, and removed again; ovs-vsctl waits
 * for each reconfigure, but only for a transaction that changes something): the first
 * handles the link messages already queued, the second runs the policing pass they call for.
 * Only then is the redirect added (tc retried 5 times, 0.2 s apart, each read back), settled
 * again and read back: a redirect ovs-vswitchd removed is added again, at most 3 rounds, then
 * exit 23 names the devices. A later link change of $vi (its MTU) runs these lines again
 * (network update); the read step reports a missing redirect as drift. Not covered: a link change
 * of $vi after these lines (one nobody ran them for), or an ovs-vswitchd restart (it reopens its
 * netdevs and removes every kvli-* ingress qdisc): the next reconfigure on the host removes the
 * redirect, and only a refresh shows it (docs/providers.md, Known limits).
 */
export function vxlanRedirectLines(): string[] {
  return [
    // The value changes on every settle (this shell's PID, the epoch second, a count): a key a
    // timed-out settle left behind must not make the next `set` a no-change transaction, which
    // ovs-vsctl commits without waiting for a reconfigure (only digits and dashes, quoted).
    "settles=0",
    'settle() { settles=$((settles + 1)); ovs-vsctl --timeout=10 set interface "$vi" "external_ids:kvmlab-settle=$$-$(date +%s)-$settles" && ovs-vsctl --timeout=10 remove interface "$vi" external_ids kvmlab-settle; }',
    'redir() { tc filter show dev "$1" ingress 2>/dev/null | grep -qF "Egress Redirect to device $2)"; }',
    'settle || { echo "ovs-vswitchd did not reconfigure within 10 s (ovs-vsctl set interface $vi); is it running?" >&2; exit 23; }',
    "r=0",
    'until redir "$vx" "$vi" && redir "$vi" "$vx"; do',
    "  r=$((r + 1))",
    '  if [ "$r" -gt 3 ]; then echo "cannot redirect the ingress of $vi to $vx: ovs-vswitchd removed it again after each of 3 tries (tc qdisc show dev $vi; ovs-vswitchd.log)" >&2; exit 23; fi',
    '  for pair in "$vx $vi" "$vi $vx"; do',
    "    set -- $pair",
    "    n=0",
    '    until redir "$1" "$2"; do',
    "      n=$((n + 1))",
    '      if [ "$n" -gt 5 ]; then echo "cannot redirect the ingress of $1 to $2 (tc, 5 tries): tc qdisc show dev $1; tc filter show dev $1 ingress" >&2; exit 23; fi',
    '      [ "$n" -eq 1 ] || sleep 0.2',
    '      tc qdisc del dev "$1" ingress 2>/dev/null || true',
    '      tc qdisc add dev "$1" ingress || continue',
    '      tc filter add dev "$1" ingress pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev "$2" || continue',
    "    done",
    "  done",
    '  settle || { echo "ovs-vswitchd did not reconfigure within 10 s (ovs-vsctl set interface $vi); is it running?" >&2; exit 23; }',
    "done",
  ];
}

/** Offloads turned off on a kernel VXLAN device that is an OVS (userspace datapath) port. */
export const VXLAN_OVS_OFFLOADS = "gro off";

/**
 * A VLAN network's leg on the host's uplink. OVS: the uplink sits in a shared trunk bridge
 * (kvlp-*, one per uplink), joined to the network's bridge by a patch-port pair whose trunk end
 * is an access port with tag = VLAN id (the userspace datapath tags and untags; no 8021q
 * module). Linux bridge: an 802.1Q device kvlx-* on the uplink (needs the 8021q module; the host
 * probe names it) is a port of the network's bridge.
 */
function vlanLines(inputs: NetworkInputs, host: HostConnection, ovsTx: string[], own: string): string[] {
  const { trunk, trunkPort } = segmentDevices(inputs.networkName, host.uplink ?? "");
  const vid = segmentationIdOf(inputs);
  const lines = [
    `up=${shQuote(host.uplink)}; vid=${vid}; tr=${trunk}; tp=${trunkPort}`,
    ...uplinkCheckLines(host),
    'm=$(readlink "/sys/class/net/$up/master" 2>/dev/null || true); m=${m##*/}',
  ];
  if (inputs.driver === "openvswitch") {
    lines.push(
      'b=$(ovs-vsctl port-to-br "$up" 2>/dev/null || true)',
      'if { [ -n "$m" ] && [ "$m" != ovs-system ]; } || { [ -n "$b" ] && [ "$b" != "$tr" ]; }; then echo "uplink $up is already in bridge ${b:-$m}; VLAN networks share the uplink through trunk bridge $tr, which a flat network on it prevents" >&2; exit 19; fi',
    );
    ovsTx.push(
      '--may-exist add-br "$tr"',
      'set bridge "$tr" datapath_type=$dp external_ids:kvmlab-trunk="$up"',
      '--may-exist add-port "$tr" "$up"',
      '--may-exist add-port "$br" "$vx"',
      'set interface "$vx" type=patch options:peer="$tp"',
      `set port "$vx" external_ids:kvmlab-network="$name"${own}`,
      '--may-exist add-port "$tr" "$tp"',
      'set interface "$tp" type=patch options:peer="$vx"',
      `set port "$tp" tag=$vid external_ids:kvmlab-network="$name"${own}`,
    );
    lines.push(
      'ip link set dev "$up" mtu $(( mtu > $(cat /sys/class/net/$up/mtu) ? mtu : $(cat /sys/class/net/$up/mtu) ))',
    );
  } else {
    lines.push(
      'if [ -n "$m" ]; then echo "uplink $up is already in bridge $m; a vlan network needs the uplink free of flat networks" >&2; exit 19; fi',
      '[ -d /proc/net/vlan ] || modprobe 8021q 2>/dev/null || { echo "this host has no 802.1Q VLAN support (8021q kernel module): load it with modprobe 8021q, or use driver openvswitch, whose userspace datapath tags without it" >&2; exit 21; }',
      'if ! ip -d link show dev "$vx" 2>/dev/null | grep -q "vlan protocol 802.1Q id $vid "; then',
      '  ip link del dev "$vx" 2>/dev/null || true',
      '  ip link add link "$up" name "$vx" type vlan id $vid',
      "fi",
      'ip link set dev "$vx" mtu $mtu',
      'ip link set dev "$vx" master "$br" up',
      'ip link set dev "$up" up',
    );
  }
  return lines;
}

/**
 * A GRE network's tunnels: one OVS native GRE port per other host (remote_ip, key = the
 * segmentation id), run after the bridge exists. On the kernel datapath the ports are on the
 * network's bridge. On the userspace (netdev) datapath they are on the network's GRE bridge
 * (`greBridge`), joined to the network's bridge by a veth pair ($vi in the network's bridge, $vx
 * in the GRE bridge) whose ends have checksum offload off: OVS 3.1's native tunnels drop every
 * packet that still carries offload flags (partial checksum or TSO, as guests and namespaces
 * send by default; coverage netdev_push_header_drops), so the frames cross the kernel once,
 * which completes their checksums and segments them, before the GRE push. It also needs the
 * host's tunnel address on an OVS bridge (the host probe checks it). Shell: $dp, $br, $vx, $mtu.
 * Before any of it, each row it labels or removes is read: another owner's is refused (exit 73,
 * review V1/X1), and a GRE port name that is a port of a bridge not this network's (a name
 * collision) too (exit 17).
 */
function greLines(
  inputs: NetworkInputs,
  host: HostConnection,
  own: string,
  owners: readonly string[],
): string[] {
  const key = segmentationIdOf(inputs);
  const remotes = expectedHostState(inputs, host).remotes;
  const { vxlanPort, vxlan } = networkDevices(inputs.networkName);
  const ports = remotes.map((r) => segmentDevices(inputs.networkName, "", r).grePort);
  const tb = greBridge(inputs.networkName);
  const fix = `check which stack or project holds network ${inputs.networkName} on host ${host.name} (ovs-vsctl list bridge ${tb}); rename this network, or delete it from the stack that owns it`;
  const rows: ["bridge" | "port", string][] = [
    ["bridge", tb],
    ...[tb, vxlanPort, vxlan, ...ports].map((p) => ["port", p] as ["port", string]),
  ];
  const lines = [
    ...rows.flatMap(([t, n]) => ovsRelabelGuardLines(t, n, owners, `network ${inputs.networkName}`, fix)),
    ...(ports.length > 0
      ? [
          `for p in ${ports.join(" ")}; do b=$(ovs-vsctl port-to-br "$p" 2>/dev/null || true); case "$b" in ""|"$br"|${tb}) ;; *) echo "GRE port $p of network $name is already a port of bridge $b (its name collides with another network's device); rename this network" >&2; exit 17 ;; esac; done`,
        ]
      : []),
    `gb="$br"; tb=${tb}; vi=${vxlanPort}`,
    remotes.length > 0 ? 'if [ "$dp" = netdev ]; then' : "if false; then",
    '  if ! ip link show dev "$vi" >/dev/null 2>&1 || ! ip link show dev "$vx" >/dev/null 2>&1; then',
    '    ip link del dev "$vx" 2>/dev/null || true; ip link del dev "$vi" 2>/dev/null || true',
    '    ip link add "$vi" mtu $mtu type veth peer name "$vx" mtu $mtu',
    "  fi",
    `  for d in "$vi" "$vx"; do ip link set dev "$d" mtu $mtu; ethtool -K "$d" ${GRE_LINK_OFFLOADS} >/dev/null 2>&1 || { echo "cannot turn checksum offload off on $d (ethtool missing?); install ethtool" >&2; exit 20; }; ip link set dev "$d" up; done`,
    `  ovs-vsctl --may-exist add-br "$tb" -- set bridge "$tb" datapath_type=$dp external_ids:kvmlab-network="$name" external_ids:kvmlab-kind=gre-tunnel${own} -- set port "$tb" external_ids:kvmlab-network="$name"${own} -- --may-exist add-port "$br" "$vi" -- set port "$vi" external_ids:kvmlab-network="$name"${own} -- --may-exist add-port "$tb" "$vx" -- set port "$vx" external_ids:kvmlab-network="$name"${own}`,
    '  ip link set dev "$tb" up',
    '  gb="$tb"',
    "else",
    '  ovs-vsctl --if-exists del-port "$br" "$vi" -- --if-exists del-br "$tb"; ip link del dev "$vx" 2>/dev/null || true',
    "fi",
    // GRE ports on the other bridge (the datapath changed) or towards hosts no longer listed go first.
    `keep=" ${ports.join(" ")} "`,
    'for b in "$br" "$tb"; do ovs-vsctl br-exists "$b" 2>/dev/null || continue; for p in $(ovs-vsctl list-ports "$b"); do case "$p" in kvlg-*) if [ "$b" != "$gb" ]; then ovs-vsctl del-port "$b" "$p"; else case "$keep" in *" $p "*) ;; *) ovs-vsctl del-port "$b" "$p" ;; esac; fi ;; esac; done; done',
  ];
  const tx = remotes.flatMap((r, i) => [
    `--may-exist add-port "$gb" ${ports[i]}`,
    `set interface ${ports[i]} type=gre options:remote_ip=${shQuote(r)} options:key=${key}` +
      (host.tunnelAddress ? ` options:local_ip=${shQuote(host.tunnelAddress)}` : ""),
    `set port ${ports[i]} external_ids:kvmlab-network="$name" external_ids:kvmlab-gre-remote=${shQuote(r)}${own}`,
  ]);
  if (tx.length > 0) lines.push(`ovs-vsctl ${tx.join(" -- ")}`);
  return lines;
}

/** A GRE network's tunnel bridge on the userspace datapath (see greLines). */
export function greBridge(networkName: string): string {
  return deviceName("e", networkName);
}

/** Offloads turned off on both ends of a GRE network's veth link (userspace datapath). */
export const GRE_LINK_OFFLOADS = "tx off";

/** Step that prints what a host has, as key=value lines (see parseNetworkState). */
export function networkReadStep(networkName: string, driver: NetworkDriver, host: HostConnection): Step {
  const { bridge, vxlan, vxlanPort } = networkDevices(networkName);
  const lines = [
    `name=${shQuote(networkName)}; br=${bridge}; vx=${vxlan}; up=${shQuote(host.uplink || "-")}`,
    `rec=${shQuote(recordPath("network", networkName))}`,
    'if [ -f "$rec" ]; then echo record=yes; else echo record=no; fi',
  ];
  if (driver === "openvswitch") {
    lines.push(
      'if ovs-vsctl br-exists "$br" 2>/dev/null; then echo bridge=yes; echo "datapath=$(ovs-vsctl get bridge "$br" datapath_type | tr -d \'"\')"; else echo bridge=no; fi',
      // Attached: the device is the bridge's port (kernel datapath), or the bridge's internal
      // port $vi and the device redirect to each other (userspace datapath).
      `vi=${vxlanPort}`,
      'redir() { tc filter show dev "$1" ingress 2>/dev/null | grep -qF "Egress Redirect to device $2)"; }',
      'echo "vxattached=$( { [ "$(ovs-vsctl port-to-br "$vx" 2>/dev/null)" = "$br" ] || { [ "$(ovs-vsctl port-to-br "$vi" 2>/dev/null)" = "$br" ] && redir "$vx" "$vi" && redir "$vi" "$vx"; }; } && echo yes || echo no)"',
      'echo "upattached=$( [ "$(ovs-vsctl port-to-br "$up" 2>/dev/null)" = "$br" ] && echo yes || echo no)"',
    );
  } else {
    lines.push(
      'if [ -d "/sys/class/net/$br/bridge" ]; then echo bridge=yes; echo datapath=linux; else echo bridge=no; fi',
      'm=$(readlink "/sys/class/net/$vx/master" 2>/dev/null || true); echo "vxattached=$( [ "${m##*/}" = "$br" ] && echo yes || echo no)"',
      'm=$(readlink "/sys/class/net/$up/master" 2>/dev/null || true); echo "upattached=$( [ "${m##*/}" = "$br" ] && echo yes || echo no)"',
    );
  }
  if (driver === "openvswitch") {
    // VLAN: tag of the trunk-side patch port; GRE: key and remotes of the kvlg-* ports.
    lines.push(
      'p=$(ovs-vsctl --bare --columns=name find port external_ids:kvmlab-network="$name" tag!=[] 2>/dev/null | head -n1)',
      'if [ -n "$p" ] && [ "$(ovs-vsctl get interface "$p" options:peer 2>/dev/null | tr -d \'"\')" = "$vx" ]; then echo "segid=$(ovs-vsctl get port "$p" tag)"; echo upattached=yes; fi',
      // On the userspace datapath the GRE ports sit on the GRE bridge $tb, which counts only
      // while the veth link joins it to the network's bridge.
      `tb=${greBridge(networkName)}; gbs="$br"`,
      'if [ "$(ovs-vsctl port-to-br "$vi" 2>/dev/null)" = "$br" ] && [ "$(ovs-vsctl port-to-br "$vx" 2>/dev/null)" = "$tb" ]; then gbs="$br $tb"; fi',
      'g=""; for b in $gbs; do for q in $(ovs-vsctl list-ports "$b" 2>/dev/null); do case "$q" in kvlg-*) g="$g $(ovs-vsctl get interface "$q" options:remote_ip | tr -d \'"\')"; echo "segid=$(ovs-vsctl get interface "$q" options:key | tr -d \'"\')" ;; esac; done; done',
      'if [ -n "$g" ]; then echo "remotes=$g"; fi',
    );
  } else {
    lines.push(
      'if ip -d link show dev "$vx" 2>/dev/null | grep -q "vlan protocol"; then echo "segid=$(ip -d link show dev "$vx" | grep -o "vlan protocol 802.1Q id [0-9]*" | awk \'{print $5}\')"; m=$(readlink "/sys/class/net/$vx/master" 2>/dev/null || true); [ "${m##*/}" = "$br" ] && echo upattached=yes; fi',
    );
  }
  lines.push(
    'if [ -e "/sys/class/net/$br" ]; then echo "mtu=$(cat "/sys/class/net/$br/mtu")"; fi',
    'if ip -d link show dev "$vx" 2>/dev/null | grep -q "vxlan id"; then',
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
    ...(kv.has("segid") ? { segmentationId: Number(kv.get("segid")) } : {}),
    datapathType: bridge ? (kv.get("datapath") ?? "") : "",
    record: kv.get("record") === "yes",
  };
}

/** Step that removes everything the network made on a host (idempotent). */
export function networkDeleteStep(
  networkName: string,
  driver: NetworkDriver,
  host: HostConnection,
  owner = "",
): Step {
  const { shortId: id, bridge, vxlan } = networkDevices(networkName);
  const lines = [
    `br=${bridge}; vx=${vxlan}; up=${shQuote(host.uplink || "-")}; id=${id}`,
    `rec=${shQuote(recordPath("network", networkName))}`,
    // Devices whose id another network's record claims are that network's: leave them.
    'other=$(grep -lF "\\"shortId\\": \\"$id\\"" /var/lib/kvmlab/records/network/*.json 2>/dev/null | grep -vxF "$rec" | head -n1 || true)',
    'if [ -z "$other" ]; then',
  ];
  if (driver === "openvswitch") {
    const { trunk, trunkPort } = segmentDevices(networkName, host.uplink ?? "");
    const fix = `check which stack or project holds network ${networkName} on host ${host.name} (ovs-vsctl list bridge ${bridge}); rename this network, or delete it from the stack that owns it`;
    lines.push(
      // Deleting the bridge removes its ports (the uplink of a flat network, GRE ports included).
      "  if command -v ovs-vsctl >/dev/null 2>&1; then",
      // Never across owners (issue 14): the bridge and the trunk end carry their owner.
      ...ovsOwnerGuardLines(
        "bridge",
        '"$br"',
        [owner],
        `OVS bridge ${bridge} of network ${networkName}`,
        fix,
      ).map((l) => `    ${l}`),
      ...ovsOwnerGuardLines(
        "port",
        trunkPort,
        [owner],
        `OVS port ${trunkPort} of network ${networkName}`,
        fix,
      ).map((l) => `    ${l}`),
      // A GRE network's tunnel bridge (review V1).
      ...ovsOwnerGuardLines(
        "bridge",
        greBridge(networkName),
        [owner],
        `OVS bridge ${greBridge(networkName)} (GRE tunnel bridge) of network ${networkName}`,
        fix,
      ).map((l) => `    ${l}`),
      // del-br takes every port with it: refuse while a port of another owner is on the bridge
      // (another stack's DHCP port, router leg or server port), as Neutron refuses to delete a
      // network with ports in use. Ports with no kvmlab owner (guests' taps) are not asked.
      // A delete from a state from before owners (owner "") passes only unlabelled ports (review L2).
      `    for b in "$br" ${greBridge(networkName)}; do ovs-vsctl br-exists "$b" || continue; for p in $(ovs-vsctl list-ports "$b"); do`,
      `      o=$(ovs-vsctl --if-exists get port "$p" external_ids:kvmlab-owner 2>/dev/null | tr -d '"' || true)`,
      `      case "$o" in ""|${shQuote(owner)}) ;; *) echo ${shQuote(`network ${networkName} on host ${host.name} still has port `)}"$p"${shQuote(" of ")}"$o"${shQuote("; the network was not removed (its bridge would take that port with it). Fix: delete that subnet, router leg or server port first, from the stack that owns it")} >&2; exit ${OWNER_REFUSED} ;; esac`,
      "    done; done",
      '    ovs-vsctl --if-exists del-br "$br"',
      // A GRE network's tunnel bridge (userspace datapath); its veth link goes with "$vx" below.
      `    ovs-vsctl --if-exists del-br ${greBridge(networkName)}`,
      // A VLAN network's trunk end; the trunk bridge goes with the last VLAN network on it.
      `    tr=${trunk}; ovs-vsctl --if-exists del-port ${trunkPort}`,
      '    if ovs-vsctl br-exists "$tr" && [ -z "$(ovs-vsctl list-ports "$tr" | grep -vxF "$up")" ]; then ovs-vsctl --if-exists del-br "$tr"; fi',
      "  fi",
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

/** Refuses a host that lacks the driver or the network type (probed once per host and process). */
async function requireForApply(inputs: NetworkInputs, host: HostConnection): Promise<void> {
  await requireFeatures(host, inputs.driver === "openvswitch" ? ["openvswitch"] : ["linuxbridge"]);
  await requireNetworkType(host, inputs.driver, networkTypeOf(inputs), inputs.hosts.length > 1, inputs.mtu);
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
  await requireForApply(inputs, host);
  const { shortId: id, bridge, vxlan } = networkDevices(inputs.networkName);
  const record = {
    name: inputs.networkName,
    shortId: id,
    kind: inputs.kind,
    type: networkTypeOf(inputs),
    segmentationId: segmentationIdOf(inputs),
    driver: inputs.driver,
    vni: inputs.vni,
    mtu: inputs.mtu,
    bridge,
    vxlan: networkTypeOf(inputs) === "vxlan" ? vxlan : "",
    uplink: inputs.kind === "provider" ? host.uplink : "",
    remotes: expectedHostState(inputs, host).remotes,
    owner: inputs.owner,
    project: inputs.project ?? "",
  };
  const outs = await runLocked(host, [
    guardStep(networkOwned(inputs.networkName), owners, true),
    networkApplyStep(inputs, host, owners),
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
    networkDeleteStep(networkName, driver, host, owner),
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
    vxlanDevice: networkTypeOf(inputs) === "vxlan" ? vxlan : "",
    hostKeys: {},
    realized,
  };
}

const network = defineResource<NetworkInputs, NetworkOutputs>({
  type: "Network",
  inputKeys: ["networkName", "kind", "type", "segmentationId", "driver", "hosts", "vni", "mtu", "owner"],
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
        // The host's capability probes (read-only, once per host and process: the first
        // networks of an up pay them) run beside the claim's turn of the host lock instead of
        // after it (issue 13: networks and subnets gate the 3-tier app's first slot). Both
        // settle before anything is thrown, so `made` always knows this call's claim.
        const [claim, probed] = await Promise.allSettled([
          claimOnHost(inputs, h),
          requireForApply(inputs, h),
        ]);
        if (claim.status === "fulfilled" && claim.value) made.push(h);
        if (claim.status === "rejected") throw claim.reason;
        if (probed.status === "rejected") throw probed.reason;
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
  declare readonly type: pulumi.Output<NetworkType>;
  declare readonly segmentationId: pulumi.Output<number>;
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
