/**
 * Heat's autoscaling rules, pure (no Pulumi, no SSH): the capacity math of a scaling policy
 * (heat/scaling/scalingutil.py), the cooldown (heat/scaling/cooldown.py), which member goes
 * first (heat/common/grouputils.py), and the check of a group's spec. The scaling agent
 * (templates/autoscale.ts, a POSIX sh script on the controller host) implements the same rules;
 * test/unit/core/autoscale.test.ts runs both on the same cases and requires the same answers.
 *
 * Sources: /work/shared/research/openstack-semantics.md §4.
 */
import { createHash } from "node:crypto";
import { FieldError } from "./errors";
import { KVMLAB_STATE_DIR, loadBalancerPaths } from "./paths";

export const ADJUSTMENT_TYPES = [
  "change_in_capacity",
  "exact_capacity",
  "percent_change_in_capacity",
] as const;
export type AdjustmentType = (typeof ADJUSTMENT_TYPES)[number];

export const ALARM_COMPARISONS = ["gt", "ge", "lt", "le"] as const;
export type AlarmComparison = (typeof ALARM_COMPARISONS)[number];

/**
 * The alarm feeding a policy (Aodh's threshold alarm on the members' CPU): the group's average
 * CPU over the last `periodSec` seconds, in percent of one vCPU per member, compared with
 * `threshold`. Like Aodh's default `repeat_actions: true`, an alarm that stays true signals its
 * policy on every evaluation; the cooldown is what stops repeats from acting.
 */
export interface AlarmSpec {
  readonly comparison: AlarmComparison;
  /** Percent of one vCPU, averaged over the members in service (0–100 per vCPU). */
  readonly threshold: number;
  /** The window, in seconds (Aodh: granularity × evaluation_periods). */
  readonly periodSec: number;
}

/** OS::Heat::ScalingPolicy. */
export interface ScalingPolicySpec {
  /** Name (for `kvmlab asg signal <group> <policy>` and the log). */
  readonly name: string;
  readonly adjustmentType: AdjustmentType;
  /** Heat's `scaling_adjustment` (may be negative; for exact_capacity the new size). */
  readonly scalingAdjustment: number;
  /** Seconds; overrides the group's cooldown. @default the group's cooldown */
  readonly cooldown?: number;
  /** percent_change_in_capacity only: the smallest change. @default 0 */
  readonly minAdjustmentStep?: number;
  /** When it fires by itself. @default none (only by `kvmlab asg signal`) */
  readonly alarm?: AlarmSpec;
}

/**
 * Heat's `calculate_new_capacity` (heat/scaling/scalingutil.py), exactly: change adds, exact
 * sets, percent computes `current * adjustment / 100` and rounds a fraction below 1 away from
 * zero, anything else toward zero; then `min_adjustment_step` (percent only: when it is larger
 * than the rounded change, the change becomes ±step, minus when the change is 0 or negative, as
 * in Heat); finally clamps to [min, max].
 */
export function newCapacity(
  current: number,
  adjustment: number,
  type: AdjustmentType,
  minAdjustmentStep: number,
  min: number,
  max: number,
): number {
  let next: number;
  if (type === "change_in_capacity") next = current + adjustment;
  else if (type === "exact_capacity") next = adjustment;
  else {
    const delta = (current * adjustment) / 100;
    let rounded: number;
    if (Math.abs(delta) < 1) rounded = delta > 0 ? Math.ceil(delta) : Math.floor(delta);
    else rounded = delta > 0 ? Math.floor(delta) : Math.ceil(delta);
    if (rounded === 0) rounded = 0; // -0 from Math.ceil(-0.x) never appears, but keep it plain
    if (minAdjustmentStep > 0 && minAdjustmentStep > Math.abs(rounded))
      rounded = rounded > 0 ? minAdjustmentStep : -minAdjustmentStep;
    next = current + rounded;
  }
  if (next > max) return max;
  if (next < min) return min;
  return next;
}

/** Group cooldown state: the end of the cooldown (epoch seconds; 0 = none). */
export interface CooldownState {
  readonly cooldownEnd: number;
}

/** Why a signal did nothing (Heat's NoActionRequired reasons), or "" when it acts. */
export type SignalOutcome = "" | "scaling in progress" | "in cooldown" | "no change";

/**
 * Heat's `adjust()` decision for one signal at `now`: refused while a scaling runs, inside the
 * cooldown, or when the new capacity equals the current one; otherwise the new size.
 */
export function decideSignal(
  now: number,
  state: CooldownState,
  scaling: boolean,
  current: number,
  policy: Pick<ScalingPolicySpec, "adjustmentType" | "scalingAdjustment" | "minAdjustmentStep">,
  min: number,
  max: number,
): { outcome: SignalOutcome; next: number } {
  if (scaling) return { outcome: "scaling in progress", next: current };
  if (now < state.cooldownEnd) return { outcome: "in cooldown", next: current };
  const next = newCapacity(
    current,
    policy.scalingAdjustment,
    policy.adjustmentType,
    policy.minAdjustmentStep ?? 0,
    min,
    max,
  );
  return next === current ? { outcome: "no change", next } : { outcome: "", next };
}

/**
 * Heat's `_finished_scaling`: after a size change the cooldown ends `cooldown` seconds after the
 * scaling finished, and an end already further away is kept (the max of both). A scaling that
 * changed nothing sets no cooldown.
 */
export function cooldownAfter(
  finishedAt: number,
  cooldownSec: number,
  prev: number,
  sizeChanged: boolean,
): number {
  if (!sizeChanged) return prev;
  return Math.max(prev, finishedAt + cooldownSec);
}

/** A pre-rendered member slot as the agent sees it. */
export interface MemberState {
  readonly name: string;
  /** Slot number (`<group>-<index>`). */
  readonly index: number;
  /**
   * running = in service; failed = started but never healthy (Heat: FAILED, not counted);
   * starting = a start under way, or (seen by a holder of the group lock) a dead start whose
   * host has not answered since: its guest may run.
   */
  readonly state: "running" | "stopped" | "failed" | "starting";
  /** When it entered service (epoch seconds; 0 for stopped). */
  readonly startedAt: number;
  /** false: its host did not answer the agent's last `stats` (default true). */
  readonly hostAnswered?: boolean;
}

/**
 * Which members leave on a scale-in by `count` (Heat's removal order): FAILED members first,
 * then the oldest by the time they entered service, then by name.
 */
export function membersToStop(members: readonly MemberState[], count: number): string[] {
  const candidates = members.filter((m) => m.state === "running" || m.state === "failed");
  const rank = (m: MemberState): number => (m.state === "failed" ? 0 : 1);
  return [...candidates]
    .sort(
      (a, b) =>
        rank(a) - rank(b) || a.startedAt - b.startedAt || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
    )
    .slice(0, Math.max(0, count))
    .map((m) => m.name);
}

/** Which stopped slots start on a scale-out by `count`: the lowest slot numbers. */
export function membersToStart(members: readonly MemberState[], count: number): string[] {
  return members
    .filter((m) => m.state === "stopped")
    .sort((a, b) => a.index - b.index)
    .slice(0, Math.max(0, count))
    .map((m) => m.name);
}

/** Heat's current_size: members in service (FAILED ones are not counted). */
export function currentSize(members: readonly MemberState[]): number {
  return members.filter((m) => m.state === "running").length;
}

/*
 * decisionSize and scaleInChoice are the TypeScript model of inline awk in agent.sh
 * (count_members; resize's scale-in filter and scale_in_wait_note), kept as documentation with
 * unit tests of their own: no provider code calls them, and unlike asg_to_stop/asg_to_start they
 * are not compared with the sh on random cases (review 11b), so a change to either side must be
 * made in both by hand; the agent tests (test/unit/templates/autoscaleAgent.test.ts) check the sh.
 */

/**
 * The size the agent's decisions use (agent.sh count_members: scalings, MIN, MAX): members in
 * service plus `starting` slots, whose guests may run (review 10c: a dead start on a silent host
 * left uncounted let the group start one more, one over desired until the host answered).
 */
export function decisionSize(members: readonly MemberState[]): number {
  return members.filter((m) => m.state === "running" || m.state === "starting").length;
}

/**
 * A scale-in by `count` (agent.sh resize): only members in service whose host answered are
 * chosen, in Heat's order (a stop on a silent host fails while its guest probably runs, review
 * 10c); `waiting` names, when fewer could be chosen, the slots counted toward the size whose
 * host did not answer: members in service and slots still `starting` (agent.sh
 * scale_in_wait_note, review 11b).
 */
export function scaleInChoice(
  members: readonly MemberState[],
  count: number,
): { stop: string[]; waiting: string[] } {
  const inService = members.filter((m) => m.state === "running");
  const stop = membersToStop(
    inService.filter((m) => m.hostAnswered !== false),
    count,
  );
  const waiting =
    stop.length < count
      ? members
          .filter((m) => (m.state === "running" || m.state === "starting") && m.hostAnswered === false)
          .map((m) => m.name)
      : [];
  return { stop, waiting };
}

/** Whether an alarm's comparison holds for the measured average. */
export function alarmHolds(comparison: AlarmComparison, value: number, threshold: number): boolean {
  switch (comparison) {
    case "gt":
      return value > threshold;
    case "ge":
      return value >= threshold;
    case "lt":
      return value < threshold;
    case "le":
      return value <= threshold;
  }
}

/**
 * Average CPU of members over a window from two cumulative `cpu.time` samples (nanoseconds) per
 * member, in percent of one vCPU per member (integer, truncated, as the sh agent computes it).
 * `null` when no member has a sample pair.
 */
export function averageCpuPercent(
  samples: readonly {
    readonly t0Ms: number;
    readonly cpu0Ns: number;
    readonly t1Ms: number;
    readonly cpu1Ns: number;
  }[],
): number | null {
  let total = 0;
  let n = 0;
  for (const s of samples) {
    const dt = s.t1Ms - s.t0Ms;
    if (dt <= 0) continue;
    // ns of CPU per ms of wall time / 10 000 = percent of one vCPU; integer like the agent's sh.
    total += Math.trunc((s.cpu1Ns - s.cpu0Ns) / (dt * 10000));
    n++;
  }
  return n === 0 ? null : Math.trunc(total / n);
}

/** A group name: 1-31 lowercase letters, digits or '-', starting with a letter (members are <group>-<n>). */
export const GROUP_NAME_RE = /^[a-z][a-z0-9-]{0,30}$/;
/** A member (slot) name as agent.conf, the member list and the roll and create steps accept it. */
export const MEMBER_NAME_RE = /^[a-z][a-z0-9-]{0,40}$/;

/**
 * The group a slot name belongs to: `<group>-<i>` with i below 100 and no leading zero (as
 * memberNames makes them), else undefined. The last `-<digits>` is the index: `web-2-1` is slot
 * 1 of group `web-2`.
 */
export function slotGroup(member: string): string | undefined {
  const m = /^([a-z][a-z0-9-]{0,30})-(0|[1-9]\d?)$/.exec(member);
  return m === null ? undefined : m[1];
}

/** The group's sizes and policies as the component takes them. */
export interface GroupSpec {
  readonly name: string;
  readonly min: number;
  readonly max: number;
  readonly desired: number;
  /** Group cooldown in seconds (Heat: the group's `cooldown`). */
  readonly cooldown: number;
  readonly policies: readonly ScalingPolicySpec[];
}

/** Largest group kvmlab renders (every slot is a pre-rendered server). */
export const MAX_GROUP_SIZE = 32;

function intIn(field: string, v: unknown, lo: number, hi: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi)
    throw new FieldError(
      field,
      `expected an integer ${lo}..${hi}, got ${JSON.stringify(v)}`,
      `set ${field} within ${lo}..${hi}`,
    );
  return v;
}

/** Checks a group spec; throws {@link FieldError} naming the first bad field and the fix. */
export function checkGroupSpec(spec: GroupSpec): GroupSpec {
  if (typeof spec.name !== "string" || !GROUP_NAME_RE.test(spec.name))
    throw new FieldError(
      "groupName",
      `invalid group name ${JSON.stringify(spec.name)}`,
      "use 1-31 lowercase letters, digits or '-', starting with a letter (member domains are <group>-<n>)",
    );
  const max = intIn("max", spec.max, 1, MAX_GROUP_SIZE);
  const min = intIn("min", spec.min, 0, max);
  intIn("desired", spec.desired, min, max);
  intIn("cooldown", spec.cooldown, 0, 86400);
  const names = new Set<string>();
  spec.policies.forEach((p, i) => {
    const f = `policies[${i}]`;
    if (typeof p.name !== "string" || !/^[a-z][a-z0-9_-]{0,30}$/.test(p.name))
      throw new FieldError(
        `${f}.name`,
        `invalid policy name ${JSON.stringify(p.name)}`,
        "use 1-31 lowercase letters, digits, '_' or '-'",
      );
    if (names.has(p.name))
      throw new FieldError(`${f}.name`, `duplicate policy ${p.name}`, "name each policy once");
    names.add(p.name);
    if (!(ADJUSTMENT_TYPES as readonly string[]).includes(p.adjustmentType))
      throw new FieldError(
        `${f}.adjustmentType`,
        `unknown adjustment type ${JSON.stringify(p.adjustmentType)}`,
        `use one of ${ADJUSTMENT_TYPES.join(", ")}`,
      );
    if (p.adjustmentType === "exact_capacity")
      intIn(`${f}.scalingAdjustment`, p.scalingAdjustment, 0, MAX_GROUP_SIZE);
    else intIn(`${f}.scalingAdjustment`, p.scalingAdjustment, -1000, 1000);
    if (p.cooldown !== undefined) intIn(`${f}.cooldown`, p.cooldown, 0, 86400);
    if (p.minAdjustmentStep !== undefined) {
      if (p.adjustmentType !== "percent_change_in_capacity")
        throw new FieldError(
          `${f}.minAdjustmentStep`,
          `minAdjustmentStep applies to percent_change_in_capacity only (Heat refuses it otherwise)`,
          "remove it or use percent_change_in_capacity",
        );
      intIn(`${f}.minAdjustmentStep`, p.minAdjustmentStep, 0, MAX_GROUP_SIZE);
    }
    if (p.alarm !== undefined) {
      const a = p.alarm;
      if (!(ALARM_COMPARISONS as readonly string[]).includes(a.comparison))
        throw new FieldError(
          `${f}.alarm.comparison`,
          `unknown comparison ${JSON.stringify(a.comparison)}`,
          `use one of ${ALARM_COMPARISONS.join(", ")}`,
        );
      intIn(`${f}.alarm.threshold`, a.threshold, 0, 100 * 64);
      intIn(`${f}.alarm.periodSec`, a.periodSec, 5, 86400);
    }
  });
  return spec;
}

/** Folder of a group's files on the controller and on every member host. */
export function asgDir(group: string): string {
  return `${KVMLAB_STATE_DIR}/asg/${group}`;
}

/** The comment tagging a group's key in authorized_keys (revocation matches it). */
export function agentKeyTag(group: string): string {
  return `kvmlab-asg:${group}`;
}

/**
 * The authorized_keys line of the agent's key: it can only run the member command (forced
 * command), with `restrict` (no pty, no port/agent/X11 forwarding, no ~/.ssh/rc), and only
 * from the controller host's address (`from=`).
 */
export function forcedCommandLine(group: string, publicKeyLine: string, from: string): string {
  const words = publicKeyLine.trim().split(/\s+/);
  if (words.length < 2 || words[0] !== "ssh-ed25519" || !/^[A-Za-z0-9+/]+=*$/.test(words[1]))
    throw new Error(
      `the controller produced an unexpected agent key line: ${JSON.stringify(publicKeyLine.slice(0, 80))}`,
    );
  if (!/^[A-Za-z0-9.:-]{1,253}$/.test(from))
    throw new Error(`invalid controller address for from=: ${JSON.stringify(from)}`);
  return `from="${from}",restrict,command="/bin/sh ${asgDir(group)}/member.sh" ${words[0]} ${words[1]} ${agentKeyTag(group)}`;
}

/** One host as the agent reaches it (agent.conf's MEMBER_<i>_ADDR/PORT/USER must be one of these). */
export interface AgentConfHost {
  readonly name: string;
  readonly address: string;
  readonly port: number;
  readonly user: string;
}

const CONF_IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
type ConfRule = (v: string, all: ReadonlyMap<string, string>) => string | undefined;
const confInt =
  (lo: number, hi: number): ConfRule =>
  (v) =>
    /^-?\d{1,9}$/.test(v) && Number(v) >= lo && Number(v) <= hi ? undefined : `an integer ${lo}..${hi}`;
const confWord =
  (re: RegExp, what: string): ConfRule =>
  (v) =>
    re.test(v) ? undefined : what;
const confOneOf =
  (xs: readonly string[]): ConfRule =>
  (v) =>
    xs.includes(v) ? undefined : `one of ${xs.join(", ")}`;

/**
 * agent.conf keys the agent reads, each with the same rule the renderer applies (the allow-list):
 * integers in their ranges, IPv4 addresses, plain user and host names, enums, absolute paths.
 */
const CONF_RULES: [RegExp, ConfRule][] = [
  [/^(MIN|MAX)$/, confInt(0, MAX_GROUP_SIZE)],
  [/^COOLDOWN$/, confInt(0, 86400)],
  [/^INTERVAL$/, confInt(1, 3600)],
  [/^BOOT_TIMEOUT$/, confInt(5, 3600)],
  [/^DRAIN_TIMEOUT$/, confInt(0, 3600)],
  [/^KEEP$/, confInt(1, 100000)],
  [/^NPOLICIES$/, confInt(0, 16)],
  [/^HEALTH_PORT$/, confInt(1, 65535)],
  [/^GROUP$/, confWord(GROUP_NAME_RE, "a group name")],
  [
    /^LB_SOCKET$/,
    confWord(
      /^(|\/var\/lib\/kvmlab\/lb\/[A-Za-z0-9_-]{1,63}\/haproxy\.sock)$/,
      "a kvmlab load balancer's haproxy.sock",
    ),
  ],
  [/^LB_BACKEND$/, confWord(/^(|[A-Za-z0-9._-]{1,64}:[A-Za-z0-9._-]{1,64})$/, "<pool>:<listener>")],
  [/^LB_NS$/, confWord(/^(|qlbaas-[0-9a-f]{1,16})$/, "a load balancer namespace qlbaas-<id>")],
  [/^HEALTH_PATH$/, confWord(/^\/[A-Za-z0-9._/~-]{0,200}$/, "a path starting with /")],
  // The controller's host name (review 9b G5: the commands the agent logs carry --controller).
  [/^CONTROLLER$/, confWord(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, "a host name")],
  [/^MEMBER_HOST_INDEXES$/, confWord(/^\d{1,2}( \d{1,2}){0,31}$/, "member indexes separated by spaces")],
  [/^MEMBER_\d{1,2}_NAME$/, confWord(MEMBER_NAME_RE, "a member name")],
  [/^MEMBER_\d{1,2}_IP$/, confWord(CONF_IPV4, "an IPv4 address")],
  [/^MEMBER_\d{1,2}_HOST$/, confWord(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, "a host name")],
  [/^MEMBER_\d{1,2}_ADDR$/, confWord(/^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$/, "a host address")],
  [/^MEMBER_\d{1,2}_PORT$/, confInt(1, 65535)],
  [/^MEMBER_\d{1,2}_USER$/, confWord(/^[a-z_][a-z0-9_-]{0,31}$/, "a plain user name")],
  [/^POLICY_\d{1,2}_NAME$/, confWord(/^[a-z][a-z0-9_-]{0,30}$/, "a policy name")],
  [/^POLICY_\d{1,2}_TYPE$/, confOneOf(ADJUSTMENT_TYPES)],
  [/^POLICY_\d{1,2}_CMP$/, confOneOf(ALARM_COMPARISONS)],
  [/^POLICY_\d{1,2}_ADJ$/, confInt(-1000, 1000)],
  [/^POLICY_\d{1,2}_COOLDOWN$/, confInt(0, 86400)],
  [/^POLICY_\d{1,2}_STEP$/, confInt(0, MAX_GROUP_SIZE)],
  [/^POLICY_\d{1,2}_THRESHOLD$/, confInt(0, 100 * 64)],
  [/^POLICY_\d{1,2}_PERIOD$/, confInt(0, 86400)],
];
const QUOTED = /^'([^']*)'$/;

/**
 * Re-parses a rendered agent.conf line by line against the allow-list above (the AutoscaleAgent
 * checks it before the file reaches a host, where the agent sources it as root): only comments
 * and `KEY=value` lines of known keys, each value an integer or a single-quoted value passing its
 * key's rule, no key twice; GROUP, MIN, MAX, every MEMBER_<i>_NAME agree with the resource's
 * inputs, every member's host address, port and user are those of one of its hosts, policy
 * indexes stay below NPOLICIES, and the load balancer namespace is the one of LB_SOCKET's load
 * balancer. Returns what is wrong (empty = fine).
 */
export function agentConfigProblems(
  text: string,
  want: {
    group: string;
    min: number;
    max: number;
    hosts?: readonly AgentConfHost[];
    /** The resource's controllerHost: CONTROLLER, when set, must name it. */
    controller?: string;
  },
): string[] {
  const problems: string[] = [];
  const seen = new Map<string, string>();
  text.split("\n").forEach((line, n) => {
    if (line === "" || (line.startsWith("# ") && !line.includes("\r"))) return;
    const m = /^([A-Z][A-Z0-9_]{0,40})=(.*)$/.exec(line);
    const rule = m ? CONF_RULES.find(([re]) => re.test(m[1]))?.[1] : undefined;
    if (!m || rule === undefined) {
      problems.push(`line ${n + 1} is not a known agent.conf setting: ${JSON.stringify(line.slice(0, 60))}`);
      return;
    }
    const q = QUOTED.exec(m[2]);
    const value = q ? q[1] : m[2];
    const bad =
      q === null && !/^-?\d{1,9}$/.test(m[2]) ? "an integer or a single-quoted value" : rule(value, seen);
    if (bad !== undefined) {
      problems.push(`line ${n + 1}: ${m[1]} must be ${bad}, got ${JSON.stringify(m[2].slice(0, 60))}`);
      return;
    }
    if (seen.has(m[1])) problems.push(`line ${n + 1}: ${m[1]} is set twice`);
    seen.set(m[1], value);
  });
  const expect = (k: string, v: string) => {
    if (seen.get(k) !== v)
      problems.push(`${k} is ${JSON.stringify(seen.get(k) ?? "(missing)")}, expected ${JSON.stringify(v)}`);
  };
  expect("GROUP", want.group);
  expect("MIN", String(want.min));
  expect("MAX", String(want.max));
  for (let i = 0; i < want.max; i++) expect(`MEMBER_${i}_NAME`, `${want.group}-${i}`);
  const npol = Number(seen.get("NPOLICIES") ?? "0");
  for (const k of seen.keys()) {
    const i = /^MEMBER_(\d+)_/.exec(k);
    if (i && Number(i[1]) >= want.max)
      problems.push(`${k}: member index ${i[1]} is not below MAX ${want.max}`);
    const p = /^POLICY_(\d+)_/.exec(k);
    if (p && Number(p[1]) >= npol) problems.push(`${k}: policy index ${p[1]} is not below NPOLICIES ${npol}`);
  }
  const ctl = seen.get("CONTROLLER");
  if (ctl !== undefined && want.controller !== undefined && ctl !== want.controller)
    problems.push(
      `CONTROLLER is ${JSON.stringify(ctl)}, expected the controller host ${JSON.stringify(want.controller)}`,
    );
  for (const x of (seen.get("MEMBER_HOST_INDEXES") ?? "").split(" "))
    if (x !== "" && Number(x) >= want.max)
      problems.push(`MEMBER_HOST_INDEXES: ${x} is not below MAX ${want.max}`);
  if (want.hosts !== undefined)
    for (let i = 0; i < want.max; i++) {
      const h = want.hosts.find((x) => x.name === seen.get(`MEMBER_${i}_HOST`));
      if (h === undefined)
        problems.push(
          `MEMBER_${i}_HOST ${JSON.stringify(seen.get(`MEMBER_${i}_HOST`))} is not one of the hosts`,
        );
      else if (
        seen.get(`MEMBER_${i}_ADDR`) !== h.address ||
        seen.get(`MEMBER_${i}_PORT`) !== String(h.port) ||
        seen.get(`MEMBER_${i}_USER`) !== h.user
      )
        problems.push(
          `MEMBER_${i}_ADDR/PORT/USER are not host ${h.name}'s (${h.user}@${h.address}:${h.port})`,
        );
    }
  const sock = seen.get("LB_SOCKET") ?? "";
  if (sock !== "") {
    const lb = sock.split("/")[5];
    const want = loadBalancerPaths(lb);
    if (want.statsSocket !== sock || seen.get("LB_NS") !== want.namespace)
      problems.push(
        `LB_NS ${JSON.stringify(seen.get("LB_NS"))} is not load balancer ${lb}'s namespace ${want.namespace}`,
      );
  }
  return problems;
}

/**
 * Whether agent.conf's slots (`MEMBER_<i>_NAME` on `MEMBER_<i>_HOST`, i < MAX) and membersByHost
 * (host → the slots defined there) are the same slots on the same hosts (review 12a N3): the
 * agent starts from agent.conf's, a fresh group's create from membersByHost's, and each member
 * host's member command allows only its membersByHost list. The component renders both from
 * the same slots; anything else is refused here, with both lists. Undefined when they agree.
 * Pure; read after agentConfigProblems found nothing wrong with the file itself.
 */
export function memberSlotsDisagreement(
  agentConfig: string,
  max: number,
  membersByHost: Readonly<Record<string, readonly string[]>>,
): string | undefined {
  const conf = new Map<string, string>();
  const values = new Map<string, string>();
  for (const line of agentConfig.split("\n")) {
    const m = /^(MEMBER_\d+_(?:NAME|HOST))='([^']*)'$/.exec(line);
    if (m) values.set(m[1], m[2]);
  }
  for (let i = 0; i < max; i++)
    conf.set(values.get(`MEMBER_${i}_NAME`) ?? `(MEMBER_${i}_NAME)`, values.get(`MEMBER_${i}_HOST`) ?? "?");
  const listed = new Map<string, string>();
  for (const [h, names] of Object.entries(membersByHost)) for (const n of names) listed.set(n, h);
  const same = conf.size === listed.size && [...conf].every(([n, h]) => listed.get(n) === h);
  if (same) return undefined;
  const show = (m: Map<string, string>): string =>
    [...m]
      .sort(([a], [b]) => Number(a.slice(a.lastIndexOf("-") + 1)) - Number(b.slice(b.lastIndexOf("-") + 1)))
      .map(([n, h]) => `${n}@${h}`)
      .join(", ") || "(none)";
  return `agent.conf's slots (MEMBER_<i>_NAME on MEMBER_<i>_HOST) are ${show(conf)}, membersByHost lists ${show(listed)}: the agent starts from the first, the create's first start and each host's member command from the second, so they must be the same slots on the same hosts`;
}

// ---- rolling replacement (Heat's rolling_update; docs/autoscale.md "Launch changes") ----------

/** JSON with object keys sorted at every level (a stable text for hashing). */
export function canonicalText(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalText).join(",")}]`;
  if (v !== null && typeof v === "object")
    return `{${Object.keys(v as object)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalText((v as Record<string, unknown>)[k])}`)
      .join(",")}}`;
  return JSON.stringify(v) ?? "null";
}

/**
 * The hash of one slot's launch configuration: everything its Server is rendered from (image,
 * flavor, ports, keypair, user data, cloud-init, kernel command line, readiness). The slot's
 * AutoscaleRoll resources carry it, so they update exactly when the slot's Server changes.
 */
export function launchHash(launch: unknown): string {
  return createHash("sha256").update(canonicalText(launch)).digest("hex");
}

/**
 * The order slots are rolled in: the highest first. Scale-out starts the lowest stopped slots and
 * scale-in keeps the newest, so the highest slots are the likeliest spares: replacing them first
 * means a running member, when its turn comes, can be stood in for by an already-replaced spare.
 */
export function rollOrder(max: number): number[] {
  return Array.from({ length: max }, (_, i) => max - 1 - i);
}
