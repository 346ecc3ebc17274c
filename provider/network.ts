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
import * as pulumi from "@pulumi/pulumi";
import { networkDevices } from "../core/paths";
import { packagedProvider } from "./packaged";
import {
  UNKNOWN,
  checkHostList,
  collect,
  containsUnknown,
  deleteRecordStep,
  isIPv4,
  normalizeHostConnection,
  observedHostKey,
  pinFingerprint,
  recordPath,
  requireFeatures,
  runLocked,
  runSteps,
  shQuote,
  shortId,
  showValue,
  writeRecordStep,
  checkName,
  type HostConnection,
  type Step,
} from "./host";

export type NetworkKind = "provider" | "selfservice";
export type NetworkDriver = "linuxbridge" | "openvswitch";

/** A host as a program passes it (the private key should be a secret). */
export interface HostConnectionArgs {
  readonly name: pulumi.Input<string>;
  readonly address: pulumi.Input<string>;
  /** @default 22 */
  readonly port?: pulumi.Input<number>;
  /** @default "root" */
  readonly user?: pulumi.Input<string>;
  /** Private key text; wrap it in pulumi.secret. */
  readonly privateKey: pulumi.Input<string>;
  /** Public key line or SHA256 fingerprint of the host key. @default none: needs trustOnFirstUse */
  readonly hostKey?: pulumi.Input<string>;
  /** Accept the host key seen first and record it (outputs `hostKeys`). @default false */
  readonly trustOnFirstUse?: pulumi.Input<boolean>;
  /** Uplink device for provider networks, e.g. "eth1". @default none */
  readonly uplink?: pulumi.Input<string>;
  /** Underlay address for VXLAN. @default none */
  readonly tunnelAddress?: pulumi.Input<string>;
}

export interface NetworkArgs {
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
export function checkNetworkInputs(news: Record<string, unknown>): {
  inputs: Record<string, unknown>;
  failures: { property: string; reason: string }[];
} {
  const failures: { property: string; reason: string }[] = [];
  const fail = (property: string, reasons: string[]): void => {
    for (const reason of reasons) failures.push({ property, reason });
  };
  const known = (v: unknown): boolean => v !== UNKNOWN;
  const name = news.networkName;
  if (known(name)) fail("networkName", collect(checkName("networkName", name)));
  const kind = news.kind;
  if (known(kind) && kind !== "provider" && kind !== "selfservice") {
    fail("kind", [
      `kind: expected "provider" (flat, on each host's uplink) or "selfservice" (VXLAN between hosts), got ${showValue(kind)}`,
    ]);
  }
  const driver = news.driver === undefined ? "linuxbridge" : news.driver;
  if (known(driver) && driver !== "linuxbridge" && driver !== "openvswitch") {
    fail("driver", [`driver: expected "linuxbridge" or "openvswitch", got ${showValue(driver)}`]);
  }
  fail("hosts", checkHostList("hosts", news.hosts));
  const hosts = Array.isArray(news.hosts)
    ? news.hosts.map((h) =>
        h !== null && typeof h === "object" && !containsUnknown(h)
          ? normalizeHostConnection(h as Record<string, unknown>)
          : h,
      )
    : news.hosts;
  if (Array.isArray(hosts) && known(kind)) {
    hosts.forEach((h, i) => {
      if (h === null || typeof h !== "object" || containsUnknown(h)) return;
      const host = h as HostConnection;
      if (kind === "provider" && !host.uplink) {
        fail("hosts", [
          `hosts[${i}].uplink: a provider (flat) network needs the host's uplink device, e.g. "eth1"; set it in kvmlab:hosts`,
        ]);
      }
      if (kind === "selfservice" && hosts.length > 1 && !isIPv4(host.tunnelAddress)) {
        fail("hosts", [
          `hosts[${i}].tunnelAddress: a selfservice network on several hosts needs each host's VXLAN underlay address; set it in kvmlab:hosts`,
        ]);
      }
    });
  }
  let vni = news.vni;
  if (kind === "provider") vni = 0;
  else if (vni === undefined) vni = typeof name === "string" && known(name) ? defaultVni(name) : UNKNOWN;
  else if (known(vni) && (typeof vni !== "number" || !Number.isInteger(vni) || vni < 1 || vni > 16777215)) {
    fail("vni", [`vni: expected an integer 1-16777215, got ${showValue(vni)}`]);
  }
  let mtu = news.mtu;
  if (mtu === undefined) mtu = kind === "provider" ? 1500 : kind === "selfservice" ? 1450 : UNKNOWN;
  else if (known(mtu) && (typeof mtu !== "number" || !Number.isInteger(mtu) || mtu < 576 || mtu > 9000)) {
    fail("mtu", [
      `mtu: expected an integer 576-9000 (selfservice: the underlay MTU minus 50), got ${showValue(mtu)}`,
    ]);
  }
  return { inputs: { ...news, driver, hosts, vni, mtu }, failures };
}

/** Property-level diff; pure (never connects). */
export function diffNetwork(
  olds: NetworkOutputs,
  news: NetworkInputs,
): { changes: boolean; replaces: string[]; deleteBeforeReplace: boolean } {
  const replaces = (["networkName", "kind", "driver", "vni"] as const).filter(
    (k) => (news[k] as unknown) === UNKNOWN || olds[k] !== news[k],
  );
  let changes = replaces.length > 0 || (news.mtu as unknown) === UNKNOWN || olds.mtu !== news.mtu;
  if (!changes)
    changes = containsUnknown(news.hosts) || JSON.stringify(olds.hosts) !== JSON.stringify(news.hosts);
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
      `set bridge "$br" datapath_type=$dp external_ids:kvmlab-network="$name" external_ids:kvmlab-kind=${inputs.kind}`,
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
  const kv = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    const at = line.indexOf("=");
    if (at > 0) kv.set(line.slice(0, at), line.slice(at + 1).trim());
  }
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

/** The host with its recorded trust-on-first-use key pinned (later runs stay pinned). */
export function pinnedHost(
  host: HostConnection,
  hostKeys: Record<string, string> | undefined,
): HostConnection {
  const recorded = hostKeys?.[host.name];
  return !host.hostKey && recorded ? { ...host, hostKey: recorded } : host;
}

/** The fingerprint to record for a host after connecting. */
export function hostKeyRecord(host: HostConnection): string {
  if (host.hostKey) {
    const pin = pinFingerprint(host.hostKey);
    return "fingerprint" in pin ? pin.fingerprint : "";
  }
  return observedHostKey(host);
}

/** Applies the inputs on one host and reads back the result (one batch under the lock). */
async function applyOnHost(inputs: NetworkInputs, host: HostConnection): Promise<NetworkHostState> {
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
  };
  const outs = await runLocked(host, [
    networkApplyStep(inputs, host),
    writeRecordStep("network", inputs.networkName, record),
    networkReadStep(inputs.networkName, inputs.driver, host),
  ]);
  return parseNetworkState(outs[2]);
}

/** Removes the network from one host (one batch under the lock). */
async function removeFromHost(
  networkName: string,
  driver: NetworkDriver,
  host: HostConnection,
): Promise<void> {
  await runLocked(host, [
    networkDeleteStep(networkName, driver, host),
    deleteRecordStep("network", networkName),
  ]);
}

/** Runs `fn` on every host in parallel; throws one error listing every host that failed. */
async function onEveryHost<T>(
  hosts: HostConnection[],
  what: string,
  fn: (h: HostConnection) => Promise<T>,
): Promise<T[]> {
  const settled = await Promise.allSettled(hosts.map((h) => fn(h)));
  const errors = settled.flatMap((s) =>
    s.status === "rejected" ? [s.reason instanceof Error ? s.reason.message : String(s.reason)] : [],
  );
  if (errors.length > 0) throw new Error(`${what} failed:\n - ${errors.join("\n - ")}`);
  return settled.map((s) => (s as PromiseFulfilledResult<T>).value);
}

function outputsFor(inputs: NetworkInputs, realized: Record<string, NetworkHostState>): NetworkOutputs {
  const { shortId: id, bridge, vxlan } = networkDevices(inputs.networkName);
  const hostKeys: Record<string, string> = {};
  for (const h of inputs.hosts) hostKeys[h.name] = hostKeyRecord(h);
  return {
    ...inputs,
    shortId: id,
    bridge,
    vxlanDevice: inputs.kind === "selfservice" ? vxlan : "",
    hostKeys,
    realized,
  };
}

/** Only the input fields (outputs carry more). */
function inputsOf(o: NetworkInputs): NetworkInputs {
  return {
    networkName: o.networkName,
    kind: o.kind,
    driver: o.driver,
    hosts: o.hosts,
    vni: o.vni,
    mtu: o.mtu,
  };
}

export const networkProvider: pulumi.dynamic.ResourceProvider<NetworkInputs, NetworkOutputs> = {
  async check(_olds, news) {
    const { inputs, failures } = checkNetworkInputs(news as unknown as Record<string, unknown>);
    return { inputs: inputs as unknown as NetworkInputs, failures };
  },

  async diff(_id, olds, news) {
    return diffNetwork(olds, news);
  },

  async create(inputs) {
    const hosts = inputs.hosts;
    const realized: Record<string, NetworkHostState> = {};
    try {
      await onEveryHost(hosts, `create network ${inputs.networkName}`, async (h) => {
        realized[h.name] = await applyOnHost(inputs, h);
      });
    } catch (err) {
      // Leave nothing behind on any host; report the original failure.
      await Promise.allSettled(hosts.map((h) => removeFromHost(inputs.networkName, inputs.driver, h)));
      throw err;
    }
    return { id: inputs.networkName, outs: outputsFor(inputsOf(inputs), realized) };
  },

  async read(id, props) {
    if (!props) return { id, props };
    const realized: Record<string, NetworkHostState> = {};
    await onEveryHost(props.hosts, `read network ${props.networkName}`, async (h) => {
      const host = pinnedHost(h, props.hostKeys);
      const [r] = await runSteps(host, [networkReadStep(props.networkName, props.driver, host)]);
      if (r.code !== 0)
        throw new Error(`host ${h.name}: reading network ${props.networkName} failed: ${r.stderr.trim()}`);
      realized[h.name] = parseNetworkState(r.stdout);
    });
    const anything = Object.values(realized).some((s) => s.bridge || s.record || s.vni !== 0);
    if (!anything) return { id: "", props: {} as NetworkOutputs };
    return { id, props: { ...props, realized } };
  },

  async update(_id, olds, news) {
    const keep = new Set(news.hosts.map((h) => h.name));
    const gone = olds.hosts.filter((h) => !keep.has(h.name));
    await onEveryHost(gone, `remove network ${olds.networkName} from hosts no longer listed`, (h) =>
      removeFromHost(olds.networkName, olds.driver, pinnedHost(h, olds.hostKeys)),
    );
    const realized: Record<string, NetworkHostState> = {};
    const hosts = news.hosts.map((h) => pinnedHost(h, olds.hostKeys));
    await onEveryHost(hosts, `update network ${news.networkName}`, async (h) => {
      realized[h.name] = await applyOnHost({ ...news, hosts }, h);
    });
    return { outs: outputsFor(inputsOf({ ...news, hosts: news.hosts }), realized) };
  },

  async delete(_id, olds) {
    await onEveryHost(olds.hosts, `delete network ${olds.networkName}`, (h) =>
      removeFromHost(olds.networkName, olds.driver, pinnedHost(h, olds.hostKeys)),
    );
  },
};

/**
 * A kvmlab network on one or more KVM hosts (`pulumi-nodejs:dynamic/kvmlab:Network`).
 * The hosts output is secret as a whole: it carries the private keys delete needs.
 */
export class Network extends pulumi.dynamic.Resource {
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

  constructor(name: string, args: NetworkArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(
      packagedProvider(networkProvider),
      name,
      {
        networkName: args.networkName ?? name,
        kind: args.kind,
        driver: args.driver,
        hosts: args.hosts,
        vni: args.vni,
        mtu: args.mtu,
        shortId: undefined,
        bridge: undefined,
        vxlanDevice: undefined,
        hostKeys: undefined,
        realized: undefined,
      },
      pulumi.mergeOptions(opts, { additionalSecretOutputs: ["hosts"] }),
      "kvmlab",
      "Network",
    );
  }
}
