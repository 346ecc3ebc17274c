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
 * Serialization: as network.ts.
 */
import type * as pulumi from "@pulumi/pulumi";
import { loadBalancerPaths } from "../core/paths";
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
} from "./kit";
import { allocateAddress, ipv4ToInt, parseCidr4, releaseAddress } from "./ipam";
import type { NetworkDriver } from "./network";
import {
  applyConfigStep,
  drainStep,
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
} from "./loadBalancer/steps";

export * from "./loadBalancer/steps";

export interface LoadBalancerArgs {
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
  const names = Array.isArray(hosts) && known(hosts) ? hosts.map((h) => (h as HostConnection).name) : null;
  for (const f of ["lbHost", "subnetHost"] as const) {
    const v = out[f];
    if (!known(v) || (f === "lbHost" && v === "")) continue;
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
] as const;

/** Drift found by a refresh, as sentences (pure). */
export function loadBalancerDrift(
  r: LoadBalancerHostState,
  want: { vipAddress: string; cidr: string; haproxyCfg: string; mac: string },
): string[] {
  const out: string[] = [];
  if (!r.namespace) out.push("the load balancer's namespace is gone");
  if (!r.port || !r.portInBridge) out.push("the VIP port is missing or not in the network's bridge");
  if (r.namespace && r.address !== `${want.vipAddress}/${want.cidr.split("/")[1]}`)
    out.push(`the VIP port holds ${r.address || "no address"} instead of ${want.vipAddress}`);
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
export function diffLoadBalancer(olds: LoadBalancerOutputs, news: LoadBalancerInputs): DiffResult {
  const replaces: string[] = changedKeys(olds, news, LOADBALANCER_REPLACE_KEYS);
  // A named host other than where it runs moves it; "" (least loaded) keeps it where it is.
  if (isKnown(news.lbHost) && news.lbHost !== "" && olds.host !== undefined && news.lbHost !== olds.host)
    replaces.push("lbHost");
  else if (!isKnown(news.lbHost)) replaces.push("lbHost");
  const updates = changedKeys(olds, news, ["hosts", "gateway", "haproxyCfg", "drainTimeout", "mtu"]);
  const drift = !olds.realized || (olds.drift ?? []).length > 0;
  return { changes: replaces.length > 0 || updates.length > 0 || drift, replaces, deleteBeforeReplace: true };
}

function pick(hosts: readonly HostConnection[], name: string): HostConnection {
  return hostNamed(hosts, name, "load balancer");
}

/** The host with the fewest load balancers (first listed on a tie). */
async function leastLoaded(hosts: readonly HostConnection[]): Promise<string> {
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

async function readState(inputs: LoadBalancerInputs, hostName: string): Promise<LoadBalancerHostState> {
  const host = pick(inputs.hosts, hostName);
  const [r] = await runSteps(host, [
    loadBalancerReadStep(
      inputs.lbName,
      inputs.driver,
      inputs.networkBridge,
      loadBalancerPaths(inputs.lbName),
    ),
  ]);
  if (r.code !== 0)
    throw new Error(`host ${host.name}: reading load balancer ${inputs.lbName} failed: ${r.stderr.trim()}`);
  return parseLoadBalancerState(r.stdout);
}

function outputsOf(
  inputs: LoadBalancerInputs,
  hostName: string,
  realized: LoadBalancerHostState,
  reloadMs: number,
): LoadBalancerOutputs {
  const paths = loadBalancerPaths(inputs.lbName);
  const drift = loadBalancerDrift(realized, { ...inputs, mac: paths.vipMac });
  const st = operatingStatuses(realized);
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
      mac: paths.vipMac,
      host: hostName,
    },
    provisioningStatus: drift.length === 0 ? "ACTIVE" : "ERROR",
    operatingStatus: st.loadBalancer,
    memberStatus: st.members,
    drift,
    reloadMs,
    hostKeys: {},
    realized,
  };
}

/** Converging apply on the load balancer's host; returns the reload time (ms). */
async function applyLoadBalancer(
  inputs: LoadBalancerInputs,
  hostName: string,
  oldCfg: string | null,
  owners: readonly string[],
): Promise<number> {
  const host = pick(inputs.hosts, hostName);
  const paths = loadBalancerPaths(inputs.lbName);
  await requireFeatures(host, inputs.driver === "openvswitch" ? ["haproxy", "openvswitch"] : ["haproxy"]);
  const steps: Step[] = [
    // Never touch a load balancer of the same name that another program owns.
    guardStep(loadBalancerOwned(inputs.lbName), owners, true),
    vipPortStep(
      {
        lbName: inputs.lbName,
        networkBridge: inputs.networkBridge,
        driver: inputs.driver,
        addressCidr: `${inputs.vipAddress}/${prefixOf(inputs.cidr)}`,
        mac: paths.vipMac,
        gateway: inputs.gateway,
        mtu: inputs.mtu,
      },
      paths,
    ),
  ];
  const removed = oldCfg === null ? [] : removedServers(oldCfg, inputs.haproxyCfg);
  if (removed.length > 0) steps.push(drainStep(inputs.lbName, paths, removed, inputs.drainTimeout));
  steps.push(
    uploadStep(paths.newConfig, inputs.haproxyCfg, { mode: "0600" }),
    applyConfigStep(inputs.lbName, paths),
  );
  const outs = await withHostLock(host, () =>
    runChecked(host, steps, { timeoutMs: 60000 + inputs.drainTimeout * 1000 }),
  );
  return Number(parseKeyValues(outs[outs.length - 1]).get("reloadMs") ?? "0");
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
      loadBalancerDeleteStep(o.lbName, o.driver, loadBalancerPaths(o.lbName)),
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
  ],
  secretOutputs: ["hosts"],
  check: (news) => checkLoadBalancerInputs(news),
  diff: diffLoadBalancer,

  async create(inputs) {
    const hostName = inputs.lbHost !== "" ? inputs.lbHost : await leastLoaded(inputs.hosts);
    const ipamOwner = `${IPAM_OWNER_PREFIX}${inputs.lbName}`;
    const host = pick(inputs.hosts, hostName);
    // Claim first: refused (another program's load balancer of that name) → nothing touched.
    const [claim] = await withHostLock(host, () =>
      runChecked(host, [claimStep(loadBalancerOwned(inputs.lbName), inputs.owner)]),
    );
    const madeHere = claimedNow(claim);
    let reloadMs: number;
    try {
      await allocateAddress(subnetRef(inputs), ipamOwner, {
        fixedIp: inputs.vipAddress,
        holder: inputs.owner,
      });
      reloadMs = await applyLoadBalancer(inputs, hostName, null, [inputs.owner]);
    } catch (err) {
      // Clean only what this call made.
      if (madeHere) {
        await removeLoadBalancer(inputs, hostName, inputs.owner).catch(() => undefined);
        await releaseAddress(subnetRef(inputs), ipamOwner, inputs.owner).catch(() => undefined);
      }
      throw err;
    }
    return {
      id: inputs.lbName,
      outs: outputsOf(inputs, hostName, await readState(inputs, hostName), reloadMs),
    };
  },

  async read(_id, props) {
    const realized = await readState(props, props.host);
    if (!realized.namespace && !realized.port && !realized.haproxy && realized.configSha === "")
      return undefined;
    return outputsOf(props, props.host, realized, props.reloadMs ?? 0);
  },

  async update(_id, olds, news) {
    const hostName = news.lbHost !== "" ? news.lbHost : olds.host;
    const reloadMs = await applyLoadBalancer(news, hostName, olds.haproxyCfg, [news.owner, ownerIn(olds)]);
    return outputsOf(news, hostName, await readState(news, hostName), reloadMs);
  },

  async delete(_id, olds) {
    await removeLoadBalancer(olds, olds.host, ownerIn(olds));
    await releaseAddress(subnetRef(olds), `${IPAM_OWNER_PREFIX}${olds.lbName}`, ownerIn(olds));
  },
});

export const loadBalancerProvider = loadBalancer.provider;

/** An Octavia-style load balancer, topology SINGLE (`pulumi-nodejs:dynamic/kvmlab:LoadBalancer`). */
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

  constructor(name: string, args: LoadBalancerArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(loadBalancer, name, { ...args, lbName: args.lbName ?? name }, opts);
  }
}
