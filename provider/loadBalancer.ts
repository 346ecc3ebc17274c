/**
 * LoadBalancer: an Octavia-style load balancer (topology SINGLE): one haproxy per load balancer
 * in its own namespace on one host, the VIP on a veth plugged into the VIP subnet's bridge.
 *
 * On the load balancer's host (`lbHost`, or the host running the fewest load balancers):
 *   namespace  qlbaas-<id>              (<id> = 8 hex digits of sha256(lbName))
 *   veth       kvlv-<id> in the network's bridge  <->  kvlw-<id> in the namespace, holding
 *              the VIP/<prefix> and the stable MAC fa:16:3e:xx:xx:xx (the "VIP port")
 *   haproxy    master-worker (`-Ws -D`), config /var/lib/kvmlab/lb/<lb>/haproxy.cfg, master CLI
 *              master.sock, runtime API haproxy.sock, server state servers-state, pid haproxy.pid
 *   IPAM       the VIP is reserved in the subnet's IPAM record as owner `lb:<lbName>`
 *
 *   check   validates every field (unknowns accepted); the config must bind the VIP and use
 *           this load balancer's stats socket (render it with templates' renderHaproxyCfg)
 *   diff    pure: name, network, subnet, VIP and host replace; the config (listeners, pools,
 *           members, monitors) is an update with a reload, never a replacement
 *   create  VIP reserved, port plugged, config written beside the old one, checked with
 *           `haproxy -c`, renamed over it, haproxy started; read back
 *   read    port, process, config hash and the stats socket → statuses and drift
 *   update  members the new config drops are drained first; a config haproxy refuses is kept as
 *           haproxy.cfg.failed and the update fails with haproxy's message while the old
 *           process keeps serving; else renamed atomically and reloaded through the master
 *           (server state saved before, loaded after)
 *   delete  stops haproxy, removes veth, files, namespace and the VIP reservation
 *
 * Topology ACTIVE_STANDBY (Octavia's): two amphorae, each the above on its own host (lbHost and
 * standbyHost, never the same), each port holding its own VRRP address (reserved in the IPAM as
 * `lb:<lbName>:vrrp<n>`) instead of the VIP; keepalived in each namespace (`--vrrp`, PID files
 * under the load balancer's folder, no systemd) holds the VIP on the MASTER, with unicast VRRP to
 * the peer over the VIP network. keepalived.conf is rendered in the program (keepalivedConfs),
 * checked with `keepalived -t` before it replaces the old one. Changing the topology replaces.
 *
 * Serialization: as network.ts.
 */
import type * as pulumi from "@pulumi/pulumi";
import { amphoraMac, loadBalancerPaths } from "../core/paths";
import {
  checkHostList,
  checkName,
  runChecked,
  shQuote,
  runSteps,
  showValue,
  uploadStep,
  withHostLock,
  requireFeatures,
  type HostConnection,
  type Step,
} from "./host";
import {
  KvmlabResource,
  changedKeys,
  checkedOwner,
  claimStep,
  claimedNow,
  guardStep,
  ownerIn,
  ownerProject,
  ovsOwnerIds,
  releaseOwnerStep,
  type OwnedObject,
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
import { allocateAddress, ipv4ToInt, parseCidr4, releaseAddress } from "./ipam";
import type { NetworkDriver } from "./network";
import {
  applyConfigStep,
  drainStep,
  keepalivedApplyStep,
  loadBalancerDeleteStep,
  loadBalancerReadStep,
  loadCountStep,
  operatingStatuses,
  parseLoadBalancerState,
  removedServers,
  vipPortStep,
  type LoadBalancerHostState,
  type MemberOperatingStatus,
  type OperatingStatus,
  type VipPortSpec,
} from "./loadBalancer/steps";

export * from "./loadBalancer/steps";

export interface LoadBalancerArgs extends InProjectArgs {
  /** Name on the hosts. @default the resource name */
  readonly lbName?: pulumi.Input<string>;
  /** The VIP network's hosts (the load balancer runs on one of them). */
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** Host to run on. @default "" (the host running the fewest load balancers, chosen at create) */
  readonly lbHost?: pulumi.Input<string>;
  /** The VIP network (Network.networkName, Network.bridge, Network.driver). */
  readonly networkName: pulumi.Input<string>;
  readonly networkBridge: pulumi.Input<string>;
  readonly driver: pulumi.Input<NetworkDriver>;
  /** The VIP subnet (Subnet.subnetName, .cidr, .gateway, .dhcpHost: where its IPAM record lives). */
  readonly subnetName: pulumi.Input<string>;
  readonly cidr: pulumi.Input<string>;
  readonly gateway?: pulumi.Input<string>;
  readonly subnetHost: pulumi.Input<string>;
  /** The VIP address (reserved in the subnet's IPAM). */
  readonly vipAddress: pulumi.Input<string>;
  /** haproxy.cfg rendered for this load balancer (renderHaproxyCfg with loadBalancerPaths()). */
  readonly haproxyCfg: pulumi.Input<string>;
  /** Seconds a removed member may keep its sessions before the reload drops it. @default 10 */
  readonly drainTimeout?: pulumi.Input<number>;
  /** @default 1500 */
  readonly mtu?: pulumi.Input<number>;
  /** Who owns it on the hosts (filled by the base class: <project>/<stack>/LoadBalancer/<name>). */
  readonly owner?: pulumi.Input<string>;
  /** Octavia's topology. @default "SINGLE" */
  readonly topology?: pulumi.Input<LoadBalancerTopology>;
  /** ACTIVE_STANDBY: host of the second amphora. @default "" (least loaded, never lbHost's) */
  readonly standbyHost?: pulumi.Input<string>;
  /** ACTIVE_STANDBY: the two amphorae's own addresses on the VIP subnet (reserved in its IPAM). */
  readonly vrrpAddresses?: pulumi.Input<pulumi.Input<string>[]>;
  /** ACTIVE_STANDBY: keepalived.conf of amphora 0 (MASTER) and 1 (BACKUP), renderKeepalivedConf. */
  readonly keepalivedConfs?: pulumi.Input<pulumi.Input<string>[]>;
}

export type LoadBalancerTopology = "SINGLE" | "ACTIVE_STANDBY";

/** One amphora of an ACTIVE_STANDBY load balancer as refresh found it. */
export interface AmphoraStatus {
  host: string;
  /** The role its config gives it (priority 100 / 90). */
  role: "MASTER" | "BACKUP";
  vrrpAddress: string;
  /** keepalived's VRRP state (its notify script): MASTER, BACKUP, FAULT, STOP, or "" before any. */
  vrrpState: string;
  /** This amphora's device holds the VIP now. */
  holdsVip: boolean;
  keepalived: boolean;
  haproxy: boolean;
}

export interface LoadBalancerInputs {
  lbName: string;
  owner: string;
  hosts: HostConnection[];
  lbHost: string;
  networkName: string;
  networkBridge: string;
  driver: NetworkDriver;
  subnetName: string;
  cidr: string;
  gateway: string;
  subnetHost: string;
  vipAddress: string;
  haproxyCfg: string;
  drainTimeout: number;
  mtu: number;
  topology: LoadBalancerTopology;
  standbyHost: string;
  vrrpAddresses: string[];
  keepalivedConfs: string[];
}

export interface LoadBalancerOutputs extends LoadBalancerInputs {
  /** The host it runs on. */
  host: string;
  namespace: string;
  /** The VIP port: a floating IP or security group targets these. */
  vipPort: {
    address: string;
    subnet: string;
    network: string;
    bridge: string;
    device: string;
    mac: string;
    host: string;
  };
  /** Octavia's provisioning status: ACTIVE, or ERROR when refresh finds drift. */
  provisioningStatus: "ACTIVE" | "ERROR";
  /** Octavia's operating status of the load balancer. */
  operatingStatus: OperatingStatus;
  /** `<pool>/<member>` → Octavia member operating status. */
  memberStatus: Record<string, MemberOperatingStatus>;
  /** What refresh found differs from the program (empty when none). */
  drift: string[];
  /** Milliseconds the last reload took (new worker up); 0 when haproxy was started. */
  reloadMs: number;
  hostKeys: Record<string, string>;
  realized: LoadBalancerHostState;
  /** ACTIVE_STANDBY: the two amphorae ([] for SINGLE). */
  amphorae: AmphoraStatus[];
  /** ACTIVE_STANDBY: what each amphora's host holds (realized is amphora 0's). */
  realizedAmphorae: LoadBalancerHostState[];
}

const IPAM_OWNER_PREFIX = "lb:";

/** The owner marker of a load balancer on its host (kind "lb", keyed by its name). */
export function loadBalancerOwned(lbName: string): OwnedObject {
  const p = loadBalancerPaths(lbName);
  return {
    kind: "lb",
    key: [lbName],
    what: `load balancer ${lbName}`,
    field: "lbName",
    exists: `[ -e /run/netns/${p.namespace} ] || [ -d ${shQuote(p.dir)} ]`,
  };
}

function sha256(text: string): string {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  return crypto.createHash("sha256").update(text, "utf8").digest("hex");
}

/** Validates and normalizes raw inputs (pure). */
export function checkLoadBalancerInputs(news: Record<string, unknown>): Checked {
  const found = failureList();
  const fail = (property: string, reason: string | undefined): void => found.add(property, reason);
  const known = isKnown;
  for (const f of ["lbName", "networkName", "subnetName"] as const)
    if (known(news[f])) fail(f, checkName(f, news[f]));
  if (
    known(news.networkBridge) &&
    (typeof news.networkBridge !== "string" || !/^kvlb-[0-9a-f]{8}$/.test(news.networkBridge))
  )
    fail(
      "networkBridge",
      `networkBridge: expected the Network's bridge output (kvlb-xxxxxxxx), got ${showValue(news.networkBridge)}`,
    );
  if (known(news.driver) && news.driver !== "linuxbridge" && news.driver !== "openvswitch")
    fail(
      "driver",
      `driver: expected the Network's driver ("linuxbridge" or "openvswitch"), got ${showValue(news.driver)}`,
    );
  for (const e of checkHostList("hosts", news.hosts)) fail("hosts", e);
  const hosts = normalizeHosts(news.hosts);
  const out: Record<string, unknown> = { ...news, hosts };
  out.owner = checkedOwner(news, "LoadBalancer", "lbName", fail);
  out.lbHost = news.lbHost ?? "";
  out.gateway = news.gateway ?? "";
  out.mtu = news.mtu ?? 1500;
  out.drainTimeout = news.drainTimeout ?? 10;
  out.topology = news.topology ?? "SINGLE";
  out.standbyHost = news.standbyHost ?? "";
  out.vrrpAddresses = news.vrrpAddresses ?? [];
  out.keepalivedConfs = news.keepalivedConfs ?? [];
  if (known(out.topology) && out.topology !== "SINGLE" && out.topology !== "ACTIVE_STANDBY")
    fail("topology", `topology: expected "SINGLE" or "ACTIVE_STANDBY", got ${showValue(out.topology)}`);
  const standby = out.topology === "ACTIVE_STANDBY";
  if (known(out.topology) && !standby) {
    for (const f of ["vrrpAddresses", "keepalivedConfs"] as const)
      if (known(out[f]) && Array.isArray(out[f]) && (out[f] as unknown[]).length > 0)
        fail(f, `${f}: only for topology "ACTIVE_STANDBY"; remove it or set topology`);
    if (known(out.standbyHost) && out.standbyHost !== "")
      fail("standbyHost", `standbyHost: only for topology "ACTIVE_STANDBY"; remove it or set topology`);
  }
  const names = Array.isArray(hosts) && known(hosts) ? hosts.map((h) => (h as HostConnection).name) : null;
  if (standby && Array.isArray(hosts) && known(hosts) && hosts.length < 2)
    fail("hosts", `hosts: topology "ACTIVE_STANDBY" needs two hosts of the VIP network, got ${hosts.length}`);
  if (
    standby &&
    known(out.lbHost) &&
    known(out.standbyHost) &&
    out.lbHost !== "" &&
    out.lbHost === out.standbyHost
  )
    fail(
      "standbyHost",
      `standbyHost: the two amphorae must run on different hosts; both are ${String(out.lbHost)}`,
    );
  for (const f of ["lbHost", "subnetHost", "standbyHost"] as const) {
    const v = out[f];
    if (!known(v) || ((f === "lbHost" || f === "standbyHost") && v === "")) continue;
    if (typeof v !== "string" || (names !== null && !names.includes(v)))
      fail(
        f,
        `${f}: ${showValue(v)} is not one of the hosts (${(names ?? []).join(", ")}); name one of them`,
      );
  }
  if (
    known(out.mtu) &&
    !(typeof out.mtu === "number" && Number.isInteger(out.mtu) && out.mtu >= 576 && out.mtu <= 9000)
  )
    fail("mtu", `mtu: expected an integer 576-9000, got ${showValue(out.mtu)}`);
  if (
    known(out.drainTimeout) &&
    !(
      typeof out.drainTimeout === "number" &&
      Number.isInteger(out.drainTimeout) &&
      out.drainTimeout >= 0 &&
      out.drainTimeout <= 3600
    )
  )
    fail(
      "drainTimeout",
      `drainTimeout: expected seconds, an integer 0-3600, got ${showValue(out.drainTimeout)}`,
    );
  const c = known(news.cidr) && typeof news.cidr === "string" ? parseCidr4(news.cidr) : undefined;
  if (known(news.cidr) && (!c || c.prefix < 8 || c.prefix > 30))
    fail(
      "cidr",
      `cidr: expected the VIP subnet's IPv4 network like 10.10.0.0/24, got ${showValue(news.cidr)}`,
    );
  const inside = (field: string, v: unknown): void => {
    if (!known(v) || c === undefined) return;
    const n = typeof v === "string" ? ipv4ToInt(v) : Number.NaN;
    if (Number.isNaN(n) || n <= c.network || n >= c.broadcast)
      fail(field, `${field}: expected a host address inside ${String(news.cidr)}, got ${showValue(v)}`);
  };
  inside("vipAddress", news.vipAddress);
  if (standby && known(out.vrrpAddresses)) {
    const v = out.vrrpAddresses;
    if (!Array.isArray(v) || v.length !== 2)
      fail(
        "vrrpAddresses",
        `vrrpAddresses: expected the two amphorae's addresses on the VIP subnet, got ${showValue(v)}`,
      );
    else {
      v.forEach((a, i) => inside(`vrrpAddresses[${i}]`, a));
      if (known(v[0]) && v[0] === v[1]) fail("vrrpAddresses", "vrrpAddresses: the two addresses must differ");
      if (v.some((a) => known(a) && known(news.vipAddress) && a === news.vipAddress))
        fail("vrrpAddresses", "vrrpAddresses: must differ from vipAddress (keepalived holds the VIP)");
    }
  }
  if (standby && known(out.keepalivedConfs)) {
    const k = out.keepalivedConfs;
    const v = out.vrrpAddresses;
    if (!Array.isArray(k) || k.length !== 2 || k.some((c) => known(c) && typeof c !== "string"))
      fail(
        "keepalivedConfs",
        `keepalivedConfs: expected two keepalived.conf texts (renderKeepalivedConf: MASTER, BACKUP), got ${showValue(k)}`,
      );
    else if (known(v) && Array.isArray(v) && known(news.vipAddress))
      k.forEach((c, i) => {
        if (!known(c) || !known(v[i])) return;
        const lines = (c as string).split("\n").map((l) => l.trim());
        if (!lines.includes(`unicast_src_ip ${String(v[i])}`))
          fail(
            "keepalivedConfs",
            `keepalivedConfs[${i}]: expected "unicast_src_ip ${String(v[i])}" (render it for amphora ${i} with renderKeepalivedConf)`,
          );
        if (!lines.some((l) => l.startsWith(`${String(news.vipAddress)}/`)))
          fail(
            "keepalivedConfs",
            `keepalivedConfs[${i}]: expected the VIP ${String(news.vipAddress)} in virtual_ipaddress`,
          );
        if ((c as string).includes("\u0000"))
          fail("keepalivedConfs", `keepalivedConfs[${i}]: contains a NUL byte`);
      });
  }
  if (out.gateway !== "") inside("gateway", out.gateway);
  if (known(news.haproxyCfg) && known(news.lbName) && known(news.vipAddress)) {
    const cfg = news.haproxyCfg;
    const paths = typeof news.lbName === "string" ? loadBalancerPaths(news.lbName) : null;
    if (typeof cfg !== "string" || paths === null) {
      fail("haproxyCfg", `haproxyCfg: expected the haproxy.cfg text, got ${showValue(cfg)}`);
    } else {
      const lines = cfg.split("\n").map((l) => l.trim());
      if (!lines.some((l) => l.startsWith(`stats socket ${paths.statsSocket} `)))
        fail(
          "haproxyCfg",
          `haproxyCfg: expected a config rendered for this load balancer (a "stats socket ${paths.statsSocket}" line); render it with renderHaproxyCfg(toHaproxyView({...})) using loadBalancerPaths(lbName)`,
        );
      const binds = lines.filter((l) => l.startsWith("bind "));
      const foreign = binds.filter((l) => !l.startsWith(`bind ${String(news.vipAddress)}:`));
      if (foreign.length > 0)
        fail(
          "haproxyCfg",
          `haproxyCfg: every listener must bind the VIP ${String(news.vipAddress)}, found "${foreign[0]}"`,
        );
      if (cfg.includes("\u0000")) fail("haproxyCfg", "haproxyCfg: contains a NUL byte");
    }
  }
  return { inputs: out, failures: found.failures };
}

/** Fields whose change makes a new load balancer. */
export const LOADBALANCER_REPLACE_KEYS = [
  "lbName",
  "networkName",
  "networkBridge",
  "driver",
  "subnetName",
  "cidr",
  "subnetHost",
  "vipAddress",
  "topology",
  "vrrpAddresses",
] as const;

/** Drift found by a refresh, as sentences (pure). */
export function loadBalancerDrift(
  r: LoadBalancerHostState,
  want: { vipAddress: string; cidr: string; haproxyCfg: string; mac: string; keepalivedConf?: string },
): string[] {
  const out: string[] = [];
  if (!r.namespace) out.push("the load balancer's namespace is gone");
  if (!r.port || !r.portInBridge) out.push("the VIP port is missing or not in the network's bridge");
  if (r.namespace && r.address !== `${want.vipAddress}/${want.cidr.split("/")[1]}`)
    out.push(`the VIP port holds ${r.address || "no address"} instead of ${want.vipAddress}`);
  if (want.keepalivedConf !== undefined) {
    if (!r.keepalived) out.push("keepalived is not running");
    if (r.keepalivedConfigSha !== sha256(want.keepalivedConf))
      out.push(
        r.keepalivedConfigSha === ""
          ? "keepalived.conf is missing"
          : "keepalived.conf on the host differs from the program's (edited by hand?)",
      );
  }
  if (r.namespace && r.mac !== "" && r.mac !== want.mac)
    out.push(`the VIP port's MAC is ${r.mac}, not ${want.mac}`);
  if (!r.haproxy) out.push("haproxy is not running");
  if (r.configSha !== sha256(want.haproxyCfg))
    out.push(
      r.configSha === ""
        ? "haproxy.cfg is missing"
        : "haproxy.cfg on the host differs from the program's (edited by hand?)",
    );
  return out;
}

/** Pure diff: the config is an update (reload), never a replacement. */
export function diffLoadBalancer(prior: LoadBalancerOutputs, news: LoadBalancerInputs): DiffResult {
  // A state from before topologies is SINGLE.
  const olds: LoadBalancerOutputs = {
    ...prior,
    topology: prior.topology ?? "SINGLE",
    vrrpAddresses: prior.vrrpAddresses ?? [],
    keepalivedConfs: prior.keepalivedConfs ?? [],
  };
  const replaces: string[] = changedKeys(olds, news, LOADBALANCER_REPLACE_KEYS);
  // A named host other than where it runs moves it; "" (least loaded) keeps it where it is.
  if (isKnown(news.lbHost) && news.lbHost !== "" && olds.host !== undefined && news.lbHost !== olds.host)
    replaces.push("lbHost");
  else if (!isKnown(news.lbHost)) replaces.push("lbHost");
  // The standby amphora's host likewise (olds.standbyHost is where it runs).
  const oldStandby = (olds.amphorae ?? [])[1]?.host;
  if (
    isKnown(news.standbyHost) &&
    news.standbyHost !== "" &&
    oldStandby !== undefined &&
    news.standbyHost !== oldStandby
  )
    replaces.push("standbyHost");
  const updates = changedKeys(olds, news, [
    "hosts",
    "gateway",
    "haproxyCfg",
    "drainTimeout",
    "mtu",
    "keepalivedConfs",
  ]);
  const drift = !olds.realized || (olds.drift ?? []).length > 0;
  return { changes: replaces.length > 0 || updates.length > 0 || drift, replaces, deleteBeforeReplace: true };
}

function pick(hosts: readonly HostConnection[], name: string): HostConnection {
  return hostNamed(hosts, name, "load balancer");
}

/** The host with the fewest load balancers (first listed on a tie). */
async function leastLoaded(all: readonly HostConnection[], except = ""): Promise<string> {
  const hosts = all.filter((h) => h.name !== except);
  if (hosts.length === 0)
    throw new Error(`hosts: no host left for the standby amphora besides ${except}; list two hosts`);
  const counts = await Promise.all(
    hosts.map(async (h) => {
      const [out] = await runChecked(h, [loadCountStep()]);
      return Number(parseKeyValues(out).get("lbs") ?? "0");
    }),
  );
  let best = 0;
  counts.forEach((c, i) => {
    if (c < counts[best]) best = i;
  });
  return hosts[best].name;
}

function prefixOf(cidr: string): number {
  return Number(cidr.split("/")[1]);
}

function isStandby(i: Pick<LoadBalancerInputs, "topology">): boolean {
  return i.topology === "ACTIVE_STANDBY";
}

async function readState(inputs: LoadBalancerInputs, hostName: string): Promise<LoadBalancerHostState> {
  const host = pick(inputs.hosts, hostName);
  const [r] = await runSteps(host, [
    loadBalancerReadStep(
      inputs.lbName,
      inputs.driver,
      inputs.networkBridge,
      loadBalancerPaths(inputs.lbName),
      isStandby(inputs) ? `${inputs.vipAddress}/${prefixOf(inputs.cidr)}` : "",
    ),
  ]);
  if (r.code !== 0)
    throw new Error(`host ${host.name}: reading load balancer ${inputs.lbName} failed: ${r.stderr.trim()}`);
  return parseLoadBalancerState(r.stdout);
}

/** Drift of every amphora (ACTIVE_STANDBY: prefixed with the amphora's host), pure. */
export function amphoraeDrift(
  inputs: LoadBalancerInputs,
  hostNames: readonly string[],
  states: readonly LoadBalancerHostState[],
): string[] {
  const paths = loadBalancerPaths(inputs.lbName);
  if (!isStandby(inputs)) return loadBalancerDrift(states[0], { ...inputs, mac: paths.vipMac });
  const out = states.flatMap((r, i) =>
    loadBalancerDrift(r, {
      ...inputs,
      vipAddress: inputs.vrrpAddresses[i],
      mac: amphoraMac(inputs.lbName, i),
      keepalivedConf: inputs.keepalivedConfs[i],
    }).map((d) => `amphora ${i} on ${hostNames[i]}: ${d}`),
  );
  const holders = states.filter((r) => r.holdsVip).length;
  if (holders === 0) out.push(`no amphora holds the VIP ${inputs.vipAddress}`);
  if (holders > 1) out.push(`both amphorae hold the VIP ${inputs.vipAddress} (split brain)`);
  return out;
}

function outputsOf(
  inputs: LoadBalancerInputs,
  hostNames: readonly string[],
  states: readonly LoadBalancerHostState[],
  reloadMs: number,
): LoadBalancerOutputs {
  const paths = loadBalancerPaths(inputs.lbName);
  const hostName = hostNames[0];
  const drift = amphoraeDrift(inputs, hostNames, states);
  // The active amphora's haproxy is the one serving: its statuses are the load balancer's.
  const active = isStandby(inputs)
    ? Math.max(
        0,
        states.findIndex((r) => r.holdsVip),
      )
    : 0;
  const realized = states[active];
  const st = operatingStatuses(realized);
  const amphorae: AmphoraStatus[] = isStandby(inputs)
    ? states.map((r, i) => ({
        host: hostNames[i],
        role: i === 0 ? "MASTER" : "BACKUP",
        vrrpAddress: inputs.vrrpAddresses[i],
        vrrpState: r.vrrpState,
        holdsVip: r.holdsVip,
        keepalived: r.keepalived,
        haproxy: r.haproxy,
      }))
    : [];
  return {
    ...inputs,
    host: hostName,
    namespace: paths.namespace,
    vipPort: {
      address: inputs.vipAddress,
      subnet: inputs.subnetName,
      network: inputs.networkName,
      bridge: inputs.networkBridge,
      device: paths.hostDevice,
      mac: isStandby(inputs) ? amphoraMac(inputs.lbName, active) : paths.vipMac,
      host: hostNames[active],
    },
    provisioningStatus: drift.length === 0 ? "ACTIVE" : "ERROR",
    operatingStatus: st.loadBalancer,
    memberStatus: st.members,
    drift,
    reloadMs,
    hostKeys: {},
    realized,
    amphorae,
    realizedAmphorae: isStandby(inputs) ? [...states] : [],
  };
}

/**
 * The VIP port of amphora `amphora` (0 for SINGLE): its address, MAC and, on OVS, the owner and
 * project external_ids (issue 14: the project is the owner's `project=` segment).
 */
export function vipPortSpecOf(
  inputs: Pick<
    LoadBalancerInputs,
    | "lbName"
    | "owner"
    | "networkBridge"
    | "driver"
    | "cidr"
    | "vipAddress"
    | "vrrpAddresses"
    | "gateway"
    | "mtu"
    | "topology"
  >,
  amphora = 0,
  owners: readonly string[] = [inputs.owner ?? ""],
): VipPortSpec {
  const paths = loadBalancerPaths(inputs.lbName);
  const standby = isStandby(inputs);
  return {
    lbName: inputs.lbName,
    networkBridge: inputs.networkBridge,
    driver: inputs.driver,
    addressCidr: `${standby ? inputs.vrrpAddresses[amphora] : inputs.vipAddress}/${prefixOf(inputs.cidr)}`,
    mac: standby ? amphoraMac(inputs.lbName, amphora) : paths.vipMac,
    gateway: inputs.gateway,
    mtu: inputs.mtu,
    ...(standby ? { vipCidr: `${inputs.vipAddress}/${prefixOf(inputs.cidr)}` } : {}),
    ovsIds: ovsOwnerIds(inputs.owner ?? "", ownerProject(inputs.owner ?? "")),
    ovsGuard: owners,
  };
}

/** Converging apply on the load balancer's host; returns the reload time (ms). */
async function applyLoadBalancer(
  inputs: LoadBalancerInputs,
  hostName: string,
  oldCfg: string | null,
  owners: readonly string[],
  amphora = 0,
): Promise<number> {
  const host = pick(inputs.hosts, hostName);
  const paths = loadBalancerPaths(inputs.lbName);
  const standby = isStandby(inputs);
  await requireFeatures(host, inputs.driver === "openvswitch" ? ["haproxy", "openvswitch"] : ["haproxy"]);
  const steps: Step[] = [
    // Never touch a load balancer of the same name that another program owns.
    guardStep(loadBalancerOwned(inputs.lbName), owners, true),
    vipPortStep(vipPortSpecOf(inputs, amphora, owners), paths),
  ];
  const removed = oldCfg === null ? [] : removedServers(oldCfg, inputs.haproxyCfg);
  if (removed.length > 0) steps.push(drainStep(inputs.lbName, paths, removed, inputs.drainTimeout));
  steps.push(
    uploadStep(paths.newConfig, inputs.haproxyCfg, { mode: "0600" }),
    applyConfigStep(inputs.lbName, paths),
  );
  if (standby)
    steps.push(
      // Root-owned scripts in the root-owned folder (keepalived's enable_script_security).
      uploadStep(
        paths.checkScript,
        `#!/bin/sh\n# kvmlab: exit 0 while this amphora's haproxy master runs\npid=$(cat ${shQuote(paths.pidFile)} 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid"\n`,
        { mode: "0755" },
      ),
      uploadStep(
        paths.notifyScript,
        `#!/bin/sh\n# kvmlab: keepalived notify (type name state priority): the VRRP state for refresh\necho "$3" > ${shQuote(paths.vrrpStateFile)}.tmp && mv -f ${shQuote(paths.vrrpStateFile)}.tmp ${shQuote(paths.vrrpStateFile)}\n`,
        { mode: "0755" },
      ),
      uploadStep(paths.keepalivedNewConfig, inputs.keepalivedConfs[amphora], { mode: "0600" }),
      keepalivedApplyStep(inputs.lbName, paths),
    );
  const outs = await withHostLock(host, () =>
    runChecked(host, steps, { timeoutMs: 60000 + inputs.drainTimeout * 1000 }),
  );
  const applied = outs[outs.length - (standby ? 5 : 1)];
  return Number(parseKeyValues(applied).get("reloadMs") ?? "0");
}

/** ACTIVE_STANDBY: the IPAM owner of amphora `i`'s VRRP address. */
function vrrpIpamOwner(lbName: string, i: number): string {
  return `${IPAM_OWNER_PREFIX}${lbName}:vrrp${i}`;
}

/** The hosts the amphorae run on (one for SINGLE). */
function hostsOf(o: LoadBalancerOutputs): string[] {
  return isStandby(o) ? (o.amphorae ?? []).map((a) => a.host) : [o.host];
}

async function removeLoadBalancer(
  o: Pick<LoadBalancerInputs, "lbName" | "driver" | "hosts">,
  hostName: string,
  owner: string,
): Promise<void> {
  const host = pick(o.hosts, hostName);
  const owned = loadBalancerOwned(o.lbName);
  // owner "" = a state from before owners: no guard.
  await withHostLock(host, () =>
    runChecked(host, [
      ...(owner ? [guardStep(owned, [owner])] : []),
      loadBalancerDeleteStep(o.lbName, o.driver, loadBalancerPaths(o.lbName), owner ? [owner] : []),
      ...(owner ? [releaseOwnerStep(owned, [owner])] : []),
    ]),
  );
}

function subnetRef(inputs: Pick<LoadBalancerInputs, "hosts" | "subnetHost" | "networkName" | "subnetName">) {
  return {
    host: pick(inputs.hosts, inputs.subnetHost),
    networkName: inputs.networkName,
    subnetName: inputs.subnetName,
  };
}

const loadBalancer = defineResource<LoadBalancerInputs, LoadBalancerOutputs>({
  type: "LoadBalancer",
  inputKeys: [
    "lbName",
    "owner",
    "hosts",
    "lbHost",
    "networkName",
    "networkBridge",
    "driver",
    "subnetName",
    "cidr",
    "gateway",
    "subnetHost",
    "vipAddress",
    "haproxyCfg",
    "drainTimeout",
    "mtu",
    "topology",
    "standbyHost",
    "vrrpAddresses",
    "keepalivedConfs",
  ],
  outputKeys: [
    "host",
    "namespace",
    "vipPort",
    "provisioningStatus",
    "operatingStatus",
    "memberStatus",
    "drift",
    "reloadMs",
    "hostKeys",
    "realized",
    "amphorae",
    "realizedAmphorae",
  ],
  secretOutputs: ["hosts"],
  check: (news) => checkLoadBalancerInputs(news),
  diff: diffLoadBalancer,

  async create(inputs) {
    const first = inputs.lbHost !== "" ? inputs.lbHost : await leastLoaded(inputs.hosts);
    const hostNames = isStandby(inputs)
      ? [first, inputs.standbyHost !== "" ? inputs.standbyHost : await leastLoaded(inputs.hosts, first)]
      : [first];
    if (hostNames.length === 2 && hostNames[0] === hostNames[1])
      throw new Error(`standbyHost: the two amphorae must run on different hosts; both are ${first}`);
    const ipamOwner = `${IPAM_OWNER_PREFIX}${inputs.lbName}`;
    const made: string[] = [];
    const reserved: string[] = [];
    let reloadMs = 0;
    try {
      for (const hostName of hostNames) {
        const host = pick(inputs.hosts, hostName);
        // Claim first: refused (another program's load balancer of that name) → nothing touched.
        const [claim] = await withHostLock(host, () =>
          runChecked(host, [claimStep(loadBalancerOwned(inputs.lbName), inputs.owner)]),
        );
        if (claimedNow(claim)) made.push(hostName);
      }
      await allocateAddress(subnetRef(inputs), ipamOwner, {
        fixedIp: inputs.vipAddress,
        holder: inputs.owner,
      });
      reserved.push(ipamOwner);
      if (isStandby(inputs))
        for (const [i, a] of inputs.vrrpAddresses.entries()) {
          await allocateAddress(subnetRef(inputs), vrrpIpamOwner(inputs.lbName, i), {
            fixedIp: a,
            holder: inputs.owner,
          });
          reserved.push(vrrpIpamOwner(inputs.lbName, i));
        }
      for (const [i, hostName] of hostNames.entries()) {
        const ms = await applyLoadBalancer(inputs, hostName, null, [inputs.owner], i);
        if (i === 0) reloadMs = ms;
      }
    } catch (err) {
      // Clean only what this call made.
      for (const hostName of made)
        await removeLoadBalancer(inputs, hostName, inputs.owner).catch(() => undefined);
      if (made.length > 0)
        for (const o of reserved)
          await releaseAddress(subnetRef(inputs), o, inputs.owner).catch(() => undefined);
      throw err;
    }
    const states = await Promise.all(hostNames.map((h) => readState(inputs, h)));
    return { id: inputs.lbName, outs: outputsOf(inputs, hostNames, states, reloadMs) };
  },

  async read(_id, props) {
    const hostNames = hostsOf(props);
    const states = await Promise.all(hostNames.map((h) => readState(props, h)));
    const gone = (r: LoadBalancerHostState) =>
      !r.namespace && !r.port && !r.haproxy && r.configSha === "" && !r.keepalived;
    if (states.every(gone)) return undefined;
    return outputsOf(props, hostNames, states, props.reloadMs ?? 0);
  },

  async update(_id, olds, news) {
    const first = news.lbHost !== "" ? news.lbHost : olds.host;
    const hostNames = isStandby(news) ? [first, hostsOf(olds)[1]] : [first];
    let reloadMs = 0;
    // Both amphorae reload on a config change (the BACKUP first: the serving one changes last).
    for (const i of [...hostNames.keys()].reverse()) {
      const ms = await applyLoadBalancer(news, hostNames[i], olds.haproxyCfg, [news.owner, ownerIn(olds)], i);
      if (i === 0) reloadMs = ms;
    }
    const states = await Promise.all(hostNames.map((h) => readState(news, h)));
    return outputsOf(news, hostNames, states, reloadMs);
  },

  async delete(_id, olds) {
    for (const hostName of hostsOf(olds)) await removeLoadBalancer(olds, hostName, ownerIn(olds));
    await releaseAddress(subnetRef(olds), `${IPAM_OWNER_PREFIX}${olds.lbName}`, ownerIn(olds));
    if (isStandby(olds))
      for (const i of [0, 1])
        await releaseAddress(subnetRef(olds), vrrpIpamOwner(olds.lbName, i), ownerIn(olds));
  },
});

export const loadBalancerProvider = loadBalancer.provider;

/** An Octavia-style load balancer, topology SINGLE or ACTIVE_STANDBY (`pulumi-nodejs:dynamic/kvmlab:LoadBalancer`). */
export class LoadBalancer extends KvmlabResource<LoadBalancerInputs, LoadBalancerOutputs> {
  declare readonly lbName: pulumi.Output<string>;
  declare readonly host: pulumi.Output<string>;
  declare readonly namespace: pulumi.Output<string>;
  declare readonly vipAddress: pulumi.Output<string>;
  declare readonly vipPort: pulumi.Output<LoadBalancerOutputs["vipPort"]>;
  declare readonly haproxyCfg: pulumi.Output<string>;
  declare readonly provisioningStatus: pulumi.Output<string>;
  declare readonly operatingStatus: pulumi.Output<string>;
  declare readonly memberStatus: pulumi.Output<Record<string, string>>;
  declare readonly drift: pulumi.Output<string[]>;
  declare readonly reloadMs: pulumi.Output<number>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<LoadBalancerHostState>;
  declare readonly hosts: pulumi.Output<HostConnection[]>;
  declare readonly topology: pulumi.Output<LoadBalancerTopology>;
  declare readonly amphorae: pulumi.Output<AmphoraStatus[]>;

  constructor(name: string, args: LoadBalancerArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(loadBalancer, name, { ...args, lbName: args.lbName ?? name }, opts);
  }
}
