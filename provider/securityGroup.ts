/**
 * SecurityGroup and SecurityGroupPort: Neutron's iptables_hybrid firewall on kvmlab hosts
 * (research/openstack-semantics.md §2; names and the ruleset in core/securityGroup.ts).
 *
 * SecurityGroup  the group's rules (Neutron's default egress-any rule first unless
 *                `defaultEgress: false`) and its members' addresses as the ipset kvmlab-g<id>
 *                on every host, replaced atomically (`ipset restore`: build <set>-n, `swap`).
 *                Members that leave have their conntrack entries removed.
 * SecurityGroupPort  one port's firewall on its host: the rendered ruleset (derived by check, so
 *                preview shows it) applied with `iptables-restore -n -w`, the jumps from FORWARD,
 *                INPUT, kvmlab-sg-chain and raw PREROUTING, and for OVS ports Neutron's hybrid
 *                plumbing: the tap joins a per-port Linux bridge qbr<id>, linked to the OVS bridge
 *                by the veth pair qvb<id>/qvo<id> (so physdev matching sees the tap, and the port
 *                gets its own conntrack zone). A rule removed in an update has the flows it allowed
 *                removed (`conntrack -D -w <zone>` with the rule's match).
 */
import type * as pulumi from "@pulumi/pulumi";
import { KVMLAB_STATE_DIR } from "../core/paths";
import {
  DEFAULT_EGRESS,
  SG_SHARED_CHAINS,
  checkSgRule,
  CONNTRACK_ZONES,
  ZONE_ON_HOST,
  hybridDevices,
  portFirewallChains,
  portFirewallJumps,
  renderIpsetSwap,
  renderPortFirewall,
  securityGroupSet,
  type SecurityGroupRule,
} from "../core/securityGroup";
import { isIPv4, tryParseCidr } from "../core/net";
import {
  UNKNOWN,
  checkDeviceName,
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
  changedKeys,
  checkedOwner,
  claimStep,
  claimedNow,
  defineResource,
  guardStep,
  ownerIn,
  ownerProject,
  ovsOwnerGuardLines,
  ovsOwnerIds,
  ovsRelabelGuardLines,
  releaseOwnerStep,
  type OwnedObject,
  failureList,
  hostNamed,
  isKnown,
  normalizeHosts,
  onEveryHost,
  parseKeyValues,
  type Checked,
  type DiffResult,
  type HostConnectionArgs,
  type InProjectArgs,
} from "./kit";
import { charges } from "./quota";
import type { NetworkDriver } from "./network";

export type { SecurityGroupRule } from "../core/securityGroup";

type Inputish<T> = { [K in keyof T]: pulumi.Input<T[K]> };

/** A rule as programs write it: only direction is required. */
export interface SecurityGroupRuleArgs {
  direction: "ingress" | "egress";
  /** @default "any" */
  protocol?: "tcp" | "udp" | "icmp" | "any";
  /** A single port (sets portMin = portMax). */
  port?: number;
  portMin?: number;
  portMax?: number;
  remoteCidr?: string;
  remoteGroup?: string;
  ethertype?: "IPv4";
}

/** Fills a rule's defaults (pure). */
export function normalizeRule(r: SecurityGroupRuleArgs): SecurityGroupRule {
  const min = r.port ?? r.portMin ?? 0;
  return {
    direction: r.direction,
    protocol: r.protocol ?? "any",
    portMin: min,
    portMax: r.port ?? r.portMax ?? min,
    remoteCidr: r.remoteCidr ?? "",
    remoteGroup: r.remoteGroup ?? "",
    ethertype: r.ethertype ?? "IPv4",
  };
}

// ---------------------------------------------------------------- SecurityGroup

export interface SecurityGroupArgs extends InProjectArgs {
  readonly groupName?: pulumi.Input<string>;
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  readonly rules?: pulumi.Input<SecurityGroupRuleArgs[]>;
  /** Neutron's default egress-any rule first. @default true */
  readonly defaultEgress?: pulumi.Input<boolean>;
  /** Addresses of the group's ports (remote-group rules of other ports match them). @default [] */
  readonly members?: pulumi.Input<pulumi.Input<string>[]>;
  /** Owner (kit/owner.ts). @default filled by the base class */
  readonly owner?: pulumi.Input<string>;
}

export interface SecurityGroupInputs {
  groupName: string;
  hosts: HostConnection[];
  rules: SecurityGroupRule[];
  defaultEgress: boolean;
  members: string[];
  /** The `ipset restore` text (derived by check). */
  ipset: string;
  /** Owner of the group's ipset and files on every host (kit/owner.ts). */
  owner: string;
}

export interface SecurityGroupOutputs extends SecurityGroupInputs {
  setName: string;
  hostKeys: Record<string, string>;
  /** Per host: the members found in the set (sorted), or null when the set is missing. */
  realized: Record<string, string[] | null>;
}

export function checkSecurityGroupInputs(news: Record<string, unknown>): Checked {
  const found = failureList();
  const add = (f: string, r: string | undefined): void => found.add(f, r);
  if (isKnown(news.groupName)) add("groupName", checkName("groupName", news.groupName));
  for (const e of checkHostList("hosts", news.hosts)) add("hosts", e);
  const out: Record<string, unknown> = { ...news, hosts: normalizeHosts(news.hosts) };
  out.owner = checkedOwner(news, "SecurityGroup", "groupName", add);
  out.defaultEgress = news.defaultEgress ?? true;
  out.members = news.members ?? [];
  if (isKnown(out.defaultEgress) && typeof out.defaultEgress !== "boolean")
    add("defaultEgress", `defaultEgress: expected true or false, got ${showValue(out.defaultEgress)}`);
  const raw = news.rules ?? [];
  if (isKnown(raw)) {
    if (!Array.isArray(raw)) add("rules", `rules: expected a list of rules, got ${showValue(raw)}`);
    else {
      const rules = raw.map((r) =>
        r !== null && typeof r === "object" && "ethertype" in r && "portMax" in r
          ? (r as SecurityGroupRule)
          : normalizeRule(r as SecurityGroupRuleArgs),
      );
      rules.forEach((r, i) => checkSgRule(`rules[${i}]`, r).forEach((e) => add(`rules[${i}]`, e)));
      const withDefault =
        out.defaultEgress === true && !rules.some((r) => JSON.stringify(r) === JSON.stringify(DEFAULT_EGRESS))
          ? [DEFAULT_EGRESS, ...rules]
          : rules;
      out.rules = withDefault;
    }
  } else out.rules = raw;
  if (isKnown(out.members)) {
    if (!Array.isArray(out.members))
      add("members", `members: expected a list of IPv4 addresses, got ${showValue(out.members)}`);
    else
      out.members.forEach((m, i) => {
        if (!isIPv4(m) && !(typeof m === "string" && tryParseCidr(m)))
          add(`members[${i}]`, `members[${i}]: expected an IPv4 address or network, got ${showValue(m)}`);
      });
  }
  out.ipset =
    found.failures.length === 0 && isKnown(news.groupName) && isKnown(out.members)
      ? renderIpsetSwap(news.groupName as string, out.members as string[])
      : UNKNOWN;
  return { inputs: out, failures: found.failures };
}

export function diffSecurityGroup(olds: SecurityGroupOutputs, news: SecurityGroupInputs): DiffResult {
  const replaces = changedKeys(olds, news, ["groupName"]);
  const updates = changedKeys(olds, news, ["hosts", "rules", "defaultEgress", "members", "ipset", "owner"]);
  const want = JSON.stringify([...news.members].sort());
  const drift =
    !Array.isArray(news.hosts) ||
    news.hosts.some((h) => JSON.stringify(olds.realized?.[h.name] ?? null) !== want);
  return { changes: replaces.length > 0 || updates.length > 0 || drift, replaces, deleteBeforeReplace: true };
}

export function ipsetApplyStep(groupName: string, ipset: string, removed: readonly string[]): Step {
  const dir = `${KVMLAB_STATE_DIR}/secgroups/${groupName}`;
  return {
    label: `replace the member set of security group ${groupName}`,
    script: [
      "set -e",
      'command -v ipset >/dev/null || { echo "ipset is missing on this host; install the Debian package ipset" >&2; exit 50; }',
      `ipset restore < ${shQuote(`${dir}/ipset.restore`)}`,
      // Flows of members that left the group end (Neutron does the same on membership changes).
      ...removed.map(
        (ip) =>
          `conntrack -D -s ${ip} >/dev/null 2>&1 || true; conntrack -D -d ${ip} >/dev/null 2>&1 || true`,
      ),
    ].join("\n"),
  };
}

export function ipsetReadStep(groupName: string): Step {
  const set = securityGroupSet(groupName);
  return {
    label: `read security group ${groupName}`,
    script: `if ipset list -n ${set} >/dev/null 2>&1; then echo set=yes; echo "members=$(ipset list ${set} | sed -n '/^Members:/,$p' | tail -n +2 | awk '{print $1}' | sort | paste -sd' ')"; else echo set=no; fi`,
  };
}

function parseIpset(stdout: string): string[] | null {
  const kv = parseKeyValues(stdout);
  if (kv.get("set") !== "yes") return null;
  // ipset prints /32 host entries without a prefix; keep the form members were given in.
  return (kv.get("members") ?? "")
    .split(" ")
    .filter((m) => m !== "")
    .sort();
}

/** A group's objects on one host (its ipset and folder), for the owner guards. */
export function securityGroupOwned(groupName: string): OwnedObject {
  const set = securityGroupSet(groupName);
  return {
    kind: "secgroup",
    key: [groupName],
    what: `security group ${groupName} (ipset ${set})`,
    field: "groupName",
    exists: `{ [ -d ${shQuote(`${KVMLAB_STATE_DIR}/secgroups/${groupName}`)} ] || ipset list -n ${set} >/dev/null 2>&1; }`,
  };
}

async function applyGroup(
  inputs: SecurityGroupInputs,
  removed: string[],
  owners: readonly string[],
  adoptUnmarked: (host: HostConnection) => boolean,
): Promise<SecurityGroupOutputs> {
  const realized: Record<string, string[] | null> = {};
  await onEveryHost(inputs.hosts, `security group ${inputs.groupName}`, async (h) => {
    await requireFeatures(h, ["firewall"]);
    const outs = await withHostLock(h, () =>
      runChecked(h, [
        // First: a group of another owner stops the batch before anything is written.
        guardStep(securityGroupOwned(inputs.groupName), owners, adoptUnmarked(h)),
        uploadStep(`${KVMLAB_STATE_DIR}/secgroups/${inputs.groupName}/ipset.restore`, inputs.ipset, {
          mode: "0644",
        }),
        ipsetApplyStep(inputs.groupName, inputs.ipset, removed),
        ipsetReadStep(inputs.groupName),
      ]),
    );
    realized[h.name] = parseIpset(outs[outs.length - 1]);
  });
  return { ...inputs, setName: securityGroupSet(inputs.groupName), hostKeys: {}, realized };
}

export function ipsetDeleteStep(groupName: string): Step {
  return {
    label: `delete security group ${groupName}`,
    script: [
      `ipset destroy ${securityGroupSet(groupName)}-n 2>/dev/null || true`,
      `if ipset list -n ${securityGroupSet(groupName)} >/dev/null 2>&1; then ipset destroy ${securityGroupSet(groupName)} || { echo "the set of security group ${groupName} is still used by a port's rules; delete those ports first" >&2; exit 51; }; fi`,
      `rm -rf ${shQuote(`${KVMLAB_STATE_DIR}/secgroups/${groupName}`)}`,
      `rmdir ${shQuote(`${KVMLAB_STATE_DIR}/secgroups`)} 2>/dev/null || true`,
    ].join("\n"),
  };
}

/** Removes a group from one host: guarded by its owner ("" = state from before owners: no guard). */
function removeGroupSteps(groupName: string, owner: string): Step[] {
  const owned = securityGroupOwned(groupName);
  return [
    ...(owner ? [guardStep(owned, [owner])] : []),
    ipsetDeleteStep(groupName),
    ...(owner ? [releaseOwnerStep(owned, [owner])] : []),
  ];
}

const securityGroup = defineResource<SecurityGroupInputs, SecurityGroupOutputs>({
  type: "SecurityGroup",
  inputKeys: ["groupName", "hosts", "rules", "defaultEgress", "members", "ipset", "owner"],
  outputKeys: ["setName", "hostKeys", "realized"],
  secretOutputs: ["hosts"],
  check: (news) => checkSecurityGroupInputs(news),
  diff: diffSecurityGroup,
  quota: charges((i) => ({
    securityGroups: 1,
    securityGroupRules: i.rules.length + (i.defaultEgress ? 1 : 0),
  })), // issue 14: charged to the project by the kit
  async create(inputs) {
    // Claim on every host first; a host where another owner holds the group refuses the create.
    const made: HostConnection[] = [];
    try {
      await onEveryHost(inputs.hosts, `security group ${inputs.groupName}`, async (h) => {
        const [c] = await withHostLock(h, () =>
          runChecked(h, [claimStep(securityGroupOwned(inputs.groupName), inputs.owner)]),
        );
        if (claimedNow(c)) made.push(h);
      });
      return { id: inputs.groupName, outs: await applyGroup(inputs, [], [inputs.owner], () => false) };
    } catch (err) {
      // Clean only the hosts where this call made the group (never another owner's).
      for (const h of made)
        await withHostLock(h, () => runChecked(h, removeGroupSteps(inputs.groupName, inputs.owner))).catch(
          () => undefined,
        );
      throw err;
    }
  },
  async read(_id, props) {
    const realized: Record<string, string[] | null> = {};
    await onEveryHost(props.hosts, `security group ${props.groupName}`, async (h) => {
      const [r] = await runSteps(h, [ipsetReadStep(props.groupName)]);
      realized[h.name] = parseIpset(r.stdout);
    });
    return Object.values(realized).some((v) => v !== null) ? { ...props, realized } : undefined;
  },
  async update(_id, olds, news) {
    const oldNames = new Set(olds.hosts.map((h) => h.name));
    const newNames = new Set(news.hosts.map((h) => h.name));
    // A host the update adds is claimed as at create: an object already there with no marker
    // (or another owner's) is refused, never adopted. Only hosts the group was already on may
    // adopt a missing marker (state from before owners were recorded).
    const added = news.hosts.filter((h) => !oldNames.has(h.name));
    const made: HostConnection[] = [];
    try {
      for (const h of added) {
        const [c] = await withHostLock(h, () =>
          runChecked(h, [claimStep(securityGroupOwned(news.groupName), news.owner)]),
        );
        if (claimedNow(c)) made.push(h);
      }
    } catch (err) {
      for (const h of made)
        await withHostLock(h, () => runChecked(h, removeGroupSteps(news.groupName, news.owner))).catch(
          () => undefined,
        );
      throw err;
    }
    const outs = await applyGroup(
      news,
      olds.members.filter((m) => !news.members.includes(m)),
      [news.owner, ownerIn(olds)],
      (h) => oldNames.has(h.name),
    );
    // Hosts the update drops lose the group (its set and folder), guarded by its owner.
    const dropped = olds.hosts.filter((h) => !newNames.has(h.name));
    await onEveryHost(dropped, `security group ${olds.groupName}`, (h) =>
      withHostLock(h, () => runChecked(h, removeGroupSteps(olds.groupName, ownerIn(olds)))),
    );
    return outs;
  },
  async delete(_id, olds) {
    await onEveryHost(olds.hosts, `security group ${olds.groupName}`, (h) =>
      withHostLock(h, () => runChecked(h, removeGroupSteps(olds.groupName, ownerIn(olds)))),
    );
  },
});

export const securityGroupProvider = securityGroup.provider;

/** A security group (`pulumi-nodejs:dynamic/kvmlab:SecurityGroup`). */
export class SecurityGroup extends KvmlabResource<SecurityGroupInputs, SecurityGroupOutputs> {
  declare readonly groupName: pulumi.Output<string>;
  declare readonly rules: pulumi.Output<SecurityGroupRule[]>;
  declare readonly members: pulumi.Output<string[]>;
  declare readonly setName: pulumi.Output<string>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<Record<string, string[] | null>>;
  constructor(name: string, args: SecurityGroupArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(securityGroup, name, { ...args, groupName: args.groupName ?? name }, opts);
  }
}

// ---------------------------------------------------------------- SecurityGroupPort

export interface SecurityGroupPortArgs extends InProjectArgs {
  /** A unique port name, e.g. `<server>-<index>`. */
  readonly portName: pulumi.Input<string>;
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** The host the port's server runs on. */
  readonly host: pulumi.Input<string>;
  readonly tap: pulumi.Input<string>;
  readonly mac: pulumi.Input<string>;
  readonly ip: pulumi.Input<string>;
  /**
   * Further addresses the port may send from with its MAC (Neutron's allowed_address_pairs,
   * e.g. the VIP on a load balancer amphora). @default []
   */
  readonly allowedAddresses?: pulumi.Input<pulumi.Input<string>[]>;
  readonly driver: pulumi.Input<NetworkDriver>;
  /** The network's bridge (Network.bridge). */
  readonly networkBridge: pulumi.Input<string>;
  /** The groups (SecurityGroup.groupName and .rules). */
  readonly groups: pulumi.Input<pulumi.Input<Inputish<{ groupName: string; rules: SecurityGroupRule[] }>>[]>;
  /** Owner (kit/owner.ts). @default filled by the base class */
  readonly owner?: pulumi.Input<string>;
}

export interface SecurityGroupPortInputs {
  portName: string;
  hosts: HostConnection[];
  host: string;
  tap: string;
  mac: string;
  ip: string;
  allowedAddresses: string[];
  driver: NetworkDriver;
  networkBridge: string;
  groups: { groupName: string; rules: SecurityGroupRule[] }[];
  /** The rendered ruleset (derived by check). */
  ruleset: string;
  /** Owner of the port's chains, hybrid devices and files (kit/owner.ts). */
  owner: string;
}

export interface SecurityGroupPortState {
  rules: string;
  jumps: number;
  /** OVS hybrid plumbing in place ("" for Linux bridge ports). */
  hybrid: string;
}

export interface SecurityGroupPortOutputs extends SecurityGroupPortInputs {
  /** The bridge the server's tap must join: qbr<id> for OVS ports, the network's bridge otherwise. */
  portBridge: string;
  zone: number;
  hostKeys: Record<string, string>;
  realized: SecurityGroupPortState;
}

/** The bridge a port's tap joins, and the bridge whose traffic carries its conntrack zone. */
export function portBridgeOf(tap: string, driver: NetworkDriver, networkBridge: string): string {
  return driver === "openvswitch" ? hybridDevices(tap).qbr : networkBridge;
}

export function checkSecurityGroupPortInputs(news: Record<string, unknown>): Checked {
  const found = failureList();
  const add = (f: string, r: string | undefined): void => found.add(f, r);
  if (isKnown(news.portName)) add("portName", checkName("portName", news.portName));
  for (const e of checkHostList("hosts", news.hosts)) add("hosts", e);
  const hosts = normalizeHosts(news.hosts);
  const out: Record<string, unknown> = { ...news, hosts };
  out.owner = checkedOwner(news, "SecurityGroupPort", "portName", add);
  const list = Array.isArray(hosts) && isKnown(hosts) ? (hosts as HostConnection[]) : undefined;
  if (list && isKnown(news.host) && !list.some((h) => h.name === news.host))
    add(
      "host",
      `host: ${showValue(news.host)} is not one of the hosts (${list.map((h) => h.name).join(", ")})`,
    );
  if (isKnown(news.tap)) add("tap", checkDeviceName("tap", news.tap));
  if (isKnown(news.networkBridge)) add("networkBridge", checkDeviceName("networkBridge", news.networkBridge));
  if (isKnown(news.mac) && (typeof news.mac !== "string" || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(news.mac)))
    add("mac", `mac: expected a lower-case MAC like fa:16:3e:00:00:01, got ${showValue(news.mac)}`);
  if (isKnown(news.ip) && !isIPv4(news.ip))
    add("ip", `ip: expected the port's IPv4 address, got ${showValue(news.ip)}`);
  const pairs = news.allowedAddresses ?? [];
  out.allowedAddresses = pairs;
  if (isKnown(pairs)) {
    if (!Array.isArray(pairs))
      add("allowedAddresses", `allowedAddresses: expected a list of IPv4 addresses, got ${showValue(pairs)}`);
    else
      pairs.forEach((a, i) => {
        if (isKnown(a) && !isIPv4(a))
          add(
            `allowedAddresses[${i}]`,
            `allowedAddresses[${i}]: expected an IPv4 address the port may also send from, got ${showValue(a)}`,
          );
      });
  }
  if (isKnown(news.driver) && news.driver !== "linuxbridge" && news.driver !== "openvswitch")
    add("driver", `driver: expected "linuxbridge" or "openvswitch", got ${showValue(news.driver)}`);
  const groups = news.groups ?? [];
  out.groups = groups;
  if (isKnown(groups)) {
    if (!Array.isArray(groups))
      add("groups", `groups: expected a list of security groups, got ${showValue(groups)}`);
    else
      groups.forEach((g, i) => {
        const x = (g ?? {}) as Record<string, unknown>;
        add(`groups[${i}].groupName`, checkName(`groups[${i}].groupName`, x.groupName));
        if (!Array.isArray(x.rules))
          add(`groups[${i}].rules`, `groups[${i}].rules: expected the group's rules (SecurityGroup.rules)`);
        else
          x.rules.forEach((r, j) =>
            checkSgRule(`groups[${i}].rules[${j}]`, r).forEach((e) => add(`groups[${i}].rules[${j}]`, e)),
          );
      });
  }
  const ready =
    ["portName", "tap", "mac", "ip", "driver", "networkBridge"].every((k) => isKnown(news[k])) &&
    isKnown(groups) &&
    Array.isArray(pairs) &&
    pairs.every((a) => isKnown(a));
  if (found.failures.length === 0 && ready) {
    const zoneBridge = portBridgeOf(
      news.tap as string,
      news.driver as NetworkDriver,
      news.networkBridge as string,
    );
    out.ruleset = renderPortFirewall({
      portName: news.portName as string,
      tap: news.tap as string,
      mac: news.mac as string,
      ip: news.ip as string,
      allowedAddresses: pairs as string[],
      zoneBridge,
      zone: ZONE_ON_HOST,
      rules: (groups as { rules: SecurityGroupRule[] }[]).flatMap((g) => g.rules),
      emptyGroups: [],
    });
  } else out.ruleset = UNKNOWN;
  return { inputs: out, failures: found.failures };
}

export const SECURITY_GROUP_PORT_REPLACE_KEYS = [
  "portName",
  "host",
  "tap",
  "driver",
  "networkBridge",
] as const;

export function diffSecurityGroupPort(
  olds: SecurityGroupPortOutputs,
  news: SecurityGroupPortInputs,
): DiffResult {
  const replaces = changedKeys(olds, news, SECURITY_GROUP_PORT_REPLACE_KEYS);
  // States from before allowedAddresses existed have none: the same as [].
  const was = { ...olds, allowedAddresses: olds.allowedAddresses ?? [] };
  const updates = changedKeys(was, news, [
    "hosts",
    "mac",
    "ip",
    "allowedAddresses",
    "groups",
    "ruleset",
    "owner",
  ]);
  const r = olds.realized;
  const drift =
    !r ||
    r.rules !== "sync" ||
    r.jumps !== portFirewallJumps(news.portName, news.tap).length ||
    (news.driver === "openvswitch" && r.hybrid !== "yes");
  return { changes: replaces.length > 0 || updates.length > 0 || drift, replaces, deleteBeforeReplace: true };
}

/** The port's folder on its host, keyed by its tap (its identity there). */
function portDir(tap: string): string {
  return `${KVMLAB_STATE_DIR}/ports/${tap}`;
}

/** Conntrack zone records: `<N>.zone` holds the bridge the zone is for, `<N>.users/` its ports' taps. */
export const ZONE_DIR = `${KVMLAB_STATE_DIR}/ctzones`;

/**
 * Shell lines that set `$zone` to the zone allocated to `bridge` (allocating the lowest free one
 * and recording this port as a user). Runs under the host lock (withHostLock), so two ports never
 * get the same new number.
 */
export function zoneAllocateLines(bridge: string, tap: string): string[] {
  return [
    ...zoneFindLines(bridge),
    'if [ -z "$zone" ]; then',
    `  z=${CONNTRACK_ZONES.min}; while [ -e "$zd/$z.zone" ]; do z=$((z+1)); done`,
    `  [ "$z" -le ${CONNTRACK_ZONES.max} ] || { echo "no free conntrack zone on this host (${CONNTRACK_ZONES.min}-${CONNTRACK_ZONES.max} are allocated in ${ZONE_DIR}); delete unused ports" >&2; exit 54; }`,
    `  printf '%s\\n' ${shQuote(bridge)} > "$zd/$z.zone"; zone=$z`,
    "fi",
    `mkdir -p "$zd/$zone.users"; : > "$zd/$zone.users/"${shQuote(tap)}`,
  ];
}

/** Shell lines that set `$zone` to the zone recorded for `bridge`, or "" (and `$zd`). */
function zoneFindLines(bridge: string): string[] {
  return [
    `zd=${shQuote(ZONE_DIR)}; mkdir -p "$zd"; zone=""`,
    `for zf in "$zd"/*.zone; do [ -e "$zf" ] || continue; if [ "$(head -n1 "$zf")" = ${shQuote(bridge)} ]; then zone=$(basename "$zf" .zone); break; fi; done`,
  ];
}

function portDump(tap: string): string {
  const c = portFirewallChains(tap);
  return `dump() { { iptables-save -t filter; iptables-save -t raw; } 2>/dev/null | grep -E '^-A (${c.ingress}|${c.egress}|${c.spoof}|${c.zone}) ' | sed 's/\\[[0-9:]*\\]//'; }`;
}

/** conntrack -D arguments that end the flows a rule allowed for a port (Neutron's cleanup). */
export function conntrackDeleteArgs(r: SecurityGroupRule, ip: string, zone: number | string): string {
  const a = [`-w ${zone}`];
  a.push(r.direction === "ingress" ? `-d ${ip}` : `-s ${ip}`);
  if (r.protocol !== "any") a.push(`-p ${r.protocol}`);
  if ((r.protocol === "tcp" || r.protocol === "udp") && r.portMin > 0 && r.portMin === r.portMax)
    a.push(`--dport ${r.portMin}`);
  const c = r.remoteCidr && r.remoteCidr !== "0.0.0.0/0" ? tryParseCidr(r.remoteCidr) : undefined;
  if (c && c.prefix === 32)
    a.push(r.direction === "ingress" ? `-s ${c.text.split("/")[0]}` : `-d ${c.text.split("/")[0]}`);
  return a.join(" ");
}

export function portApplyStep(
  inputs: SecurityGroupPortInputs,
  removedRules: readonly SecurityGroupRule[],
  owners: readonly string[] = [inputs.owner ?? ""],
): Step {
  const dir = portDir(inputs.tap);
  const zoneBridge = portBridgeOf(inputs.tap, inputs.driver, inputs.networkBridge);
  const hy = hybridDevices(inputs.tap);
  const ids = ovsOwnerIds(inputs.owner ?? "", ownerProject(inputs.owner ?? ""));
  const lines = [
    "set -e",
    `f=${shQuote(`${dir}/rules.v4`)}; saved=${shQuote(`${dir}/rules.saved`)}`,
    portDump(inputs.tap),
    'for t in conntrack ipset; do command -v $t >/dev/null || { echo "$t is missing on this host; install the Debian package $t" >&2; exit 52; }; done',
    `[ -e /sys/class/net/${inputs.networkBridge} ] || { echo "bridge ${inputs.networkBridge} is missing on this host; create the Network on it first" >&2; exit 53; }`,
    // br_netfilter: bridged IPv4 goes through iptables (per network namespace since Linux 5.3).
    "[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter",
    "sysctl -q -w net.bridge.bridge-nf-call-iptables=1",
  ];
  if (inputs.driver === "openvswitch")
    lines.push(
      // A tap plugged straight into OVS would bypass iptables: refuse, naming the fix.
      `if b=$(ovs-vsctl port-to-br ${inputs.tap} 2>/dev/null); then echo "port ${inputs.tap} is plugged straight into OVS bridge $b, where iptables cannot filter it; security groups on OVS need Neutron's hybrid layout: give the port securityGroups in the Server component (it plugs the tap into ${hy.qbr}), or plug the device into ${hy.qbr}" >&2; exit 55; fi`,
      // The Server (components/server.ts sets ports[].hybrid) normally made the plumbing before
      // the guest started; for a device nobody plumbed (a namespace, a VIP veth) the port makes
      // it and records that, so its delete removes only what it made.
      // Never another owner's qvo (reviews O2, L1, L5): both its rows are read before anything
      // of the plumbing changes. Allowed: this port's owners and the owner of the server whose
      // tap it is (a Server's qvo carries the Server's owner).
      ...(ids
        ? [
            'so=""',
            ...tapServersLines(inputs.tap, ['  so="$o"; break']),
            ...(["port", "interface"] as const).flatMap((t) =>
              ovsRelabelGuardLines(
                t,
                hy.qvo,
                owners,
                `the hybrid port of security group port ${inputs.portName}`,
                `check which stack holds the security groups of ${inputs.tap} (ovs-vsctl list port ${hy.qvo}); delete them from that stack`,
                ['"$so"'],
              ),
            ),
          ]
        : []),
      // A server's tap (after a host reboot the port may rebuild its plumbing before the Server
      // plugs again) stays the Server's: not marked made, so never relabelled here or removed by
      // this port's delete, and the Server's next plug finds its own qvo (review 7b, N1).
      `${ids ? "" : 'so=""; '}if ! ip link show ${hy.qbr} >/dev/null 2>&1; then if [ -z "$so" ]; then : > ${shQuote(`${dir}/hybrid.made`)}; fi; ip link add ${hy.qbr} type bridge; fi`,
      `ip link set ${hy.qbr} type bridge forward_delay 0 2>/dev/null || true`,
      `if ! ip link show ${hy.qvb} >/dev/null 2>&1; then ip link del ${hy.qvo} 2>/dev/null || true; ip link add ${hy.qvb} mtu 9000 type veth peer name ${hy.qvo}; fi`,
      `mtu=$(cat /sys/class/net/${inputs.networkBridge}/mtu); ip link set ${hy.qvb} mtu $mtu; ip link set ${hy.qvo} mtu $mtu`,
      `ip link set ${hy.qvb} master ${hy.qbr}`,
      `ovs-vsctl --may-exist add-port ${inputs.networkBridge} ${hy.qvo} -- set port ${hy.qvo} external_ids:kvmlab-port=${shQuote(inputs.portName)}`,
      // The qvo this port made carries its owner and project on both rows (issue 14, review L5);
      // a Server's keeps the Server's.
      ...(ids
        ? [
            `if [ -e ${shQuote(`${dir}/hybrid.made`)} ]; then`,
            `  ovs-vsctl set port ${hy.qvo} ${ids} -- set interface ${hy.qvo} ${ids}`,
            "fi",
          ]
        : []),
      `ethtool -K ${hy.qvb} tx off >/dev/null 2>&1 || true; ethtool -K ${hy.qvo} tx off >/dev/null 2>&1 || true`,
      `ip link set ${hy.qvb} up; ip link set ${hy.qvo} up; ip link set ${hy.qbr} up`,
    );
  lines.push(
    `iptables -w -N ${SG_SHARED_CHAINS.chain} 2>/dev/null && iptables -w -A ${SG_SHARED_CHAINS.chain} -m comment --comment "kvmlab: ports without a matching rule above" -j ACCEPT || true`,
    `iptables -w -N ${SG_SHARED_CHAINS.fallback} 2>/dev/null && iptables -w -A ${SG_SHARED_CHAINS.fallback} -m comment --comment "kvmlab: default drop rule for unmatched traffic" -j DROP || true`,
    // The zone (allocated here, under the host lock) goes into the rendered ruleset.
    ...zoneAllocateLines(zoneBridge, inputs.tap),
    `sed -i "s/${ZONE_ON_HOST}/$zone/g" "$f.new"`,
    'if ! { [ -f "$f" ] && cmp -s "$f.new" "$f" && [ -f "$saved" ] && dump | cmp -s - "$saved"; }; then',
    '  iptables-restore -n -w < "$f.new"; mv -f "$f.new" "$f"; dump > "$saved"',
    'else rm -f "$f.new"; fi',
    ...portFirewallJumps(inputs.portName, inputs.tap).map(
      ([t, chain, rule, how]) =>
        `iptables -w -t ${t} -C ${chain} ${rule} 2>/dev/null || iptables -w -t ${t} ${how === "insert" ? `-I ${chain} 1` : `-A ${chain}`} ${rule}`,
    ),
    ...removedRules.map(
      (r) => `conntrack -D ${conntrackDeleteArgs(r, inputs.ip, "$zone")} >/dev/null 2>&1 || true`,
    ),
    "echo zone=$zone",
  );
  return { label: `apply security groups of port ${inputs.portName}`, script: lines.join("\n") };
}

export function portReadStep(
  inputs: Pick<SecurityGroupPortInputs, "portName" | "tap" | "driver" | "networkBridge">,
): Step {
  const dir = portDir(inputs.tap);
  const hy = hybridDevices(inputs.tap);
  return {
    label: `read security groups of port ${inputs.portName}`,
    script: [
      `saved=${shQuote(`${dir}/rules.saved`)}`,
      portDump(inputs.tap),
      'if [ ! -f "$saved" ]; then echo rules=none; elif dump | cmp -s - "$saved"; then echo rules=sync; else echo rules=drift; fi',
      "n=0",
      ...portFirewallJumps(inputs.portName, inputs.tap).map(
        ([t, c, r]) => `iptables -w -t ${t} -C ${c} ${r} 2>/dev/null && n=$((n+1))`,
      ),
      "echo jumps=$n",
      inputs.driver === "openvswitch"
        ? // The plumbing, and the tap (when it exists) in qbr rather than anywhere else.
          `m=$(readlink /sys/class/net/${hy.qvb}/master 2>/dev/null || true); b=$(ovs-vsctl port-to-br ${hy.qvo} 2>/dev/null || true); t=yes; if [ -e /sys/class/net/${inputs.tap} ]; then tm=$(readlink /sys/class/net/${inputs.tap}/master 2>/dev/null || true); [ "\${tm##*/}" = ${hy.qbr} ] || t=no; fi; echo "hybrid=$([ "\${m##*/}" = ${hy.qbr} ] && [ "$b" = ${inputs.networkBridge} ] && [ $t = yes ] && echo yes || echo no)"`
        : "echo hybrid=",
    ].join("\n"),
  };
}

function parsePortState(stdout: string): SecurityGroupPortState {
  const kv = parseKeyValues(stdout.replace(/^zone=.*$/m, ""));
  return {
    rules: kv.get("rules") ?? "none",
    jumps: Number(kv.get("jumps") ?? "0"),
    hybrid: kv.get("hybrid") ?? "",
  };
}

export function portDeleteStep(
  inputs: Pick<SecurityGroupPortInputs, "portName" | "tap" | "driver" | "networkBridge" | "ip">,
  owners: readonly string[] = [],
): Step {
  const c = portFirewallChains(inputs.tap);
  const hy = hybridDevices(inputs.tap);
  const zoneBridge = portBridgeOf(inputs.tap, inputs.driver, inputs.networkBridge);
  const made = shQuote(`${portDir(inputs.tap)}/hybrid.made`);
  // The qvo this port made goes only while it carries no other owner (issue 14): checked before
  // any rule is removed. A qvo the port did not make is the Server's, never removed here.
  const qvoGuard =
    inputs.driver === "openvswitch"
      ? ovsOwnerGuardLines(
          "port",
          hy.qvo,
          owners,
          `the hybrid port ${hy.qvo} of security group port ${inputs.portName}`,
          `check which stack holds the security groups of ${inputs.tap} (ovs-vsctl list port ${hy.qvo}); delete them from that stack`,
        )
      : [];
  return {
    label: `delete security groups of port ${inputs.portName}`,
    script: [
      ...(qvoGuard.length > 0 ? [`if [ -e ${made} ]; then`, ...qvoGuard, "fi"] : []),
      ...portFirewallJumps(inputs.portName, inputs.tap).map(
        ([t, ch, r]) =>
          `while iptables -w -t ${t} -C ${ch} ${r} 2>/dev/null; do iptables -w -t ${t} -D ${ch} ${r}; done`,
      ),
      `for ch in ${c.ingress} ${c.egress} ${c.spoof}; do iptables -w -F $ch 2>/dev/null || true; done`,
      `for ch in ${c.ingress} ${c.egress} ${c.spoof}; do iptables -w -X $ch 2>/dev/null || true; done`,
      `iptables -w -t raw -F ${c.zone} 2>/dev/null || true; iptables -w -t raw -X ${c.zone} 2>/dev/null || true`,
      // The zone's entries for this port go (the whole zone for an OVS port: it is the port's own),
      // then this port's use of the zone; the zone's record goes with its last user.
      ...zoneFindLines(zoneBridge),
      'if [ -n "$zone" ]; then',
      inputs.driver === "openvswitch"
        ? '  conntrack -D -w "$zone" >/dev/null 2>&1 || true'
        : `  conntrack -D -w "$zone" -s ${inputs.ip} >/dev/null 2>&1 || true; conntrack -D -w "$zone" -d ${inputs.ip} >/dev/null 2>&1 || true`,
      `  rm -f "$zd/$zone.users/"${shQuote(inputs.tap)}`,
      '  if rmdir "$zd/$zone.users" 2>/dev/null; then rm -f "$zd/$zone.zone"; fi',
      "fi",
      'rmdir "$zd" 2>/dev/null || true',
      // Shared chains go with the last port (sg-chain then holds only its final ACCEPT).
      `if [ "$(iptables -w -S ${SG_SHARED_CHAINS.chain} 2>/dev/null | grep -c '^-A')" = 1 ] && ! iptables -w -S FORWARD | grep -q ${SG_SHARED_CHAINS.chain}; then iptables -w -F ${SG_SHARED_CHAINS.chain}; iptables -w -X ${SG_SHARED_CHAINS.chain}; iptables -w -F ${SG_SHARED_CHAINS.fallback} 2>/dev/null; iptables -w -X ${SG_SHARED_CHAINS.fallback} 2>/dev/null || true; fi`,
      // Hybrid plumbing only when this port made it (else it is the Server's, removed with it).
      inputs.driver === "openvswitch"
        ? `if [ -e ${made} ]; then ovs-vsctl --if-exists del-port ${hy.qvo}; ip link del ${hy.qvb} 2>/dev/null || true; ip link del ${hy.qbr} 2>/dev/null || true; fi`
        : "true",
      `rm -rf ${shQuote(portDir(inputs.tap))}`,
      `rmdir ${shQuote(`${KVMLAB_STATE_DIR}/ports`)} 2>/dev/null || true`,
    ].join("\n"),
  };
}

/**
 * A port's firewall objects on its host (chains, hybrid devices it made, folder), for the owner
 * guards. Keyed by the TAP: the firewall filters that device, so whoever holds the marker of a
 * tap is the only one who may change or remove its filtering, whatever portName they use.
 */
export function securityGroupPortOwned(tap: string): OwnedObject {
  const c = portFirewallChains(tap);
  return {
    kind: "sgport",
    key: [tap],
    what: `the security groups of device ${tap} (chain ${c.ingress})`,
    field: "tap",
    exists: `{ [ -d ${shQuote(portDir(tap))} ] || iptables -w -S ${c.ingress} >/dev/null 2>&1; }`,
  };
}

/**
 * Refuses (exit 73) when the tap is a port of a kvmlab server of another project/stack than the
 * SecurityGroupPort's owner: a stack filters only its own servers' ports. A device no server
 * names (a namespace stand-in, a load balancer's VIP veth) is governed by the tap's marker alone.
 */
/**
 * Shell lines looping over the kvmlab servers whose domain XML names `tap`: in the loop body
 * (`body`, run per server with an owner marker) `$s` is the server and `$o` its owner.
 */
function tapServersLines(tap: string, body: readonly string[]): string[] {
  return [
    `for x in ${KVMLAB_STATE_DIR}/instances/*/domain.xml; do`,
    '  [ -e "$x" ] || continue',
    `  grep -qF -- ${shQuote(`<target dev='${tap}'/>`)} "$x" || continue`,
    // The server is the domain the XML names: instance folders are keyed by UUID (issue 15).
    `  s=$(sed -n 's:^ *<name>\\([A-Za-z0-9._-]*\\)</name> *$:\\1:p' "$x" | head -n1)`,
    '  [ -n "$s" ] || s=$(basename "$(dirname "$x")")',
    `  o=$(head -n1 ${KVMLAB_STATE_DIR}/owners/server/"$s".owner 2>/dev/null || true)`,
    '  [ -n "$o" ] || continue',
    ...body,
    "done",
  ];
}

export function tapServerOwnerStep(tap: string, owner: string): Step {
  const stack = owner.split("/").slice(0, 2).join("/");
  return {
    label: `check that device ${tap} is a port of this stack's servers`,
    script: [
      ...tapServersLines(tap, [
        `  if [ "$(printf '%s' "$o" | cut -d/ -f1-2)" != ${shQuote(stack)} ]; then`,
        `    echo "device ${tap} is a port of server $s, which belongs to $o; a SecurityGroupPort of ${stack} may filter only the ports of its own stack's servers. Fix: set the security groups in the stack that owns the server" >&2; exit 73`,
        "  fi",
      ]),
      "true",
    ].join("\n"),
  };
}

async function applyPort(
  inputs: SecurityGroupPortInputs,
  removed: SecurityGroupRule[],
  owners: readonly string[],
  adoptUnmarked: boolean,
): Promise<SecurityGroupPortOutputs> {
  const host = hostNamed(inputs.hosts, inputs.host, "port");
  await requireFeatures(host, inputs.driver === "openvswitch" ? ["firewall", "openvswitch"] : ["firewall"]);
  const outs = await withHostLock(host, () =>
    runChecked(host, [
      // First: another owner's port stops the batch before anything is written.
      guardStep(securityGroupPortOwned(inputs.tap), owners, adoptUnmarked),
      tapServerOwnerStep(inputs.tap, inputs.owner),
      uploadStep(`${portDir(inputs.tap)}/rules.v4.new`, inputs.ruleset, { mode: "0644" }),
      portApplyStep(inputs, removed, owners),
      portReadStep(inputs),
    ]),
  );
  const portBridge = portBridgeOf(inputs.tap, inputs.driver, inputs.networkBridge);
  const zone = Number(/^zone=(\d+)$/m.exec(outs[outs.length - 2])?.[1] ?? "0");
  return {
    ...inputs,
    portBridge,
    zone,
    hostKeys: {},
    realized: parsePortState(outs[outs.length - 1]),
  };
}

/** Rules of `olds` no longer in `news` (by their iptables match). */
export function removedRules(
  olds: SecurityGroupPortInputs,
  news: SecurityGroupPortInputs,
): SecurityGroupRule[] {
  const key = (r: SecurityGroupRule): string => `${r.direction} ${JSON.stringify(r)}`;
  const now = new Set(news.groups.flatMap((g) => g.rules).map(key));
  return olds.groups.flatMap((g) => g.rules).filter((r) => !now.has(key(r)));
}

/** Removes a port's firewall: guarded by its owner ("" = state from before owners: no guard). */
function removePortSteps(
  inputs: Pick<SecurityGroupPortInputs, "portName" | "tap" | "driver" | "networkBridge" | "ip">,
  owner: string,
): Step[] {
  const owned = securityGroupPortOwned(inputs.tap);
  return [
    ...(owner ? [guardStep(owned, [owner])] : []),
    portDeleteStep(inputs, owner ? [owner] : []),
    ...(owner ? [releaseOwnerStep(owned, [owner])] : []),
  ];
}

const securityGroupPort = defineResource<SecurityGroupPortInputs, SecurityGroupPortOutputs>({
  type: "SecurityGroupPort",
  inputKeys: [
    "portName",
    "hosts",
    "host",
    "tap",
    "mac",
    "ip",
    "allowedAddresses",
    "driver",
    "networkBridge",
    "groups",
    "ruleset",
    "owner",
  ],
  outputKeys: ["portBridge", "zone", "hostKeys", "realized"],
  secretOutputs: ["hosts"],
  check: (news) => checkSecurityGroupPortInputs(news),
  diff: diffSecurityGroupPort,
  async create(inputs) {
    const host = hostNamed(inputs.hosts, inputs.host, "port");
    const [claim] = await withHostLock(host, () =>
      runChecked(host, [claimStep(securityGroupPortOwned(inputs.tap), inputs.owner)]),
    );
    try {
      return { id: inputs.portName, outs: await applyPort(inputs, [], [inputs.owner], false) };
    } catch (err) {
      // Clean only what this call made (never another owner's port).
      if (claimedNow(claim))
        await withHostLock(host, () => runChecked(host, removePortSteps(inputs, inputs.owner))).catch(
          () => undefined,
        );
      throw err;
    }
  },
  async read(_id, props) {
    const host = hostNamed(props.hosts, props.host, "port");
    const [r] = await runSteps(host, [portReadStep(props)]);
    if (r.code !== 0)
      throw new Error(`host ${host.name}: reading port ${props.portName} failed: ${r.stderr.trim()}`);
    const realized = parsePortState(r.stdout);
    return realized.rules !== "none" || realized.jumps > 0 ? { ...props, realized } : undefined;
  },
  async update(_id, olds, news) {
    return applyPort(news, removedRules(olds, news), [news.owner, ownerIn(olds)], true);
  },
  async delete(_id, olds) {
    const host = hostNamed(olds.hosts, olds.host, "port");
    await withHostLock(host, () => runChecked(host, removePortSteps(olds, ownerIn(olds))));
  },
});

export const securityGroupPortProvider = securityGroupPort.provider;

/** One port's security groups (`pulumi-nodejs:dynamic/kvmlab:SecurityGroupPort`). */
export class SecurityGroupPort extends KvmlabResource<SecurityGroupPortInputs, SecurityGroupPortOutputs> {
  declare readonly portName: pulumi.Output<string>;
  declare readonly portBridge: pulumi.Output<string>;
  declare readonly ruleset: pulumi.Output<string>;
  declare readonly zone: pulumi.Output<number>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<SecurityGroupPortState>;
  constructor(name: string, args: SecurityGroupPortArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(securityGroupPort, name, { ...args }, opts);
  }
}
