/**
 * The autoscale agent's files, rendered in the program (pure): `agent.conf` (sh-sourced, every
 * value validated here so nothing can break out of its quotes), the agent and member scripts
 * (templates/autoscale/*.sh, read from the source tree), the forced-command `authorized_keys`
 * line, and each member host's `members` list. docs/autoscale.md describes them.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import {
  ADJUSTMENT_TYPES,
  ALARM_COMPARISONS,
  checkGroupSpec,
  type GroupSpec,
  type ScalingPolicySpec,
} from "../core/autoscale";
import { FieldError } from "../core/errors";
export { agentConfigProblems, agentKeyTag, asgDir, forcedCommandLine } from "../core/autoscale";
import { templatesDir } from "./render";

/** One pre-rendered member slot. */
export interface MemberSlot {
  /** `<group>-<index>` (the libvirt domain and the pool member name). */
  readonly name: string;
  /** Its address on the group's network (the health check target). */
  readonly ip: string;
  /** The KVM host it is defined on, and how the agent reaches that host over SSH. */
  readonly host: string;
  readonly hostAddress: string;
  readonly hostPort: number;
  readonly hostUser: string;
}

/** The load balancer pool members join; null = no pool. */
export interface AgentPool {
  /** The haproxy runtime socket (on the controller host: the agent runs beside the LB). */
  readonly socket: string;
  /** haproxy backend `<pool>:<listener>`. */
  readonly backend: string;
  /** Network namespace of the load balancer (health checks go from there). */
  readonly namespace: string;
  readonly healthPort: number;
  readonly healthPath: string;
}

export interface AgentConfigInput extends GroupSpec {
  readonly members: readonly MemberSlot[];
  readonly pool: AgentPool | null;
  /** Seconds between evaluations. @default 5 */
  readonly interval?: number;
  /** Seconds a started member has to answer its health check before it is FAILED. @default 300 */
  readonly bootTimeout?: number;
  /** Seconds a leaving member may keep its sessions. @default 10 */
  readonly drainTimeout?: number;
  /**
   * The controller host's name (the host the agent runs on), so the commands the agent logs
   * (`fix='kvmlab asg reset … --controller <host>'`) work as printed when two hosts hold a group
   * of that name (review 9b G5). Without it they name no controller.
   */
  readonly controller?: string;
}

const SAFE = /^[A-Za-z0-9._/:@-]*$/;
function safe(field: string, v: string): string {
  if (typeof v !== "string" || !SAFE.test(v))
    throw new FieldError(
      field,
      `unsafe value ${JSON.stringify(v)}`,
      "use letters, digits and . _ / : @ - only",
    );
  return v;
}
function int(field: string, v: unknown, lo: number, hi: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi)
    throw new FieldError(
      field,
      `expected an integer ${lo}..${hi}, got ${JSON.stringify(v)}`,
      `set it within ${lo}..${hi}`,
    );
  return v;
}
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** The member slot names of a group: `<group>-0 … <group>-(max-1)`. */
export function memberNames(group: string, max: number): string[] {
  return Array.from({ length: max }, (_, i) => `${group}-${i}`);
}

/**
 * agent.conf: sh variable assignments, one per line, single-quoted values that were checked
 * to hold no quote, space or shell metacharacter. Throws FieldError naming the field.
 */
export function renderAgentConfig(c: AgentConfigInput): string {
  checkGroupSpec(c);
  if (c.members.length !== c.max)
    throw new FieldError(
      "members",
      `expected ${c.max} member slots (max), got ${c.members.length}`,
      "render one slot per possible member",
    );
  const interval = int("interval", c.interval ?? 5, 1, 3600);
  const boot = int("bootTimeout", c.bootTimeout ?? 300, 5, 3600);
  const drain = int("drainTimeout", c.drainTimeout ?? 10, 0, 3600);
  const lines: string[] = [
    "# kvmlab autoscale agent configuration (rendered by the program; pulumi up rewrites it)",
    `GROUP='${c.name}'`,
    `MIN=${c.min}`,
    `MAX=${c.max}`,
    `COOLDOWN=${c.cooldown}`,
    `INTERVAL=${interval}`,
    `BOOT_TIMEOUT=${boot}`,
    `DRAIN_TIMEOUT=${drain}`,
  ];
  if (c.controller !== undefined) lines.push(`CONTROLLER='${safe("controller", c.controller)}'`);
  const periods = c.policies.map((p) => p.alarm?.periodSec ?? 0);
  // Samples kept per member: the longest window plus slack.
  lines.push(`KEEP=${Math.ceil(Math.max(0, ...periods) / interval) + 3}`);
  const firstOfHost = new Map<string, number>();
  c.members.forEach((m, i) => {
    const f = `members[${i}]`;
    if (m.name !== `${c.name}-${i}`)
      throw new FieldError(
        `${f}.name`,
        `expected ${c.name}-${i}, got ${JSON.stringify(m.name)}`,
        "slots are named <group>-<index>",
      );
    if (!IPV4.test(m.ip))
      throw new FieldError(
        `${f}.ip`,
        `not an IPv4 address: ${JSON.stringify(m.ip)}`,
        "give the member's address",
      );
    safe(`${f}.host`, m.host);
    safe(`${f}.hostAddress`, m.hostAddress);
    if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(m.hostUser))
      throw new FieldError(
        `${f}.hostUser`,
        `invalid user ${JSON.stringify(m.hostUser)}`,
        "use a plain user name",
      );
    int(`${f}.hostPort`, m.hostPort, 1, 65535);
    if (!firstOfHost.has(m.host)) firstOfHost.set(m.host, i);
    lines.push(
      `MEMBER_${i}_NAME='${m.name}'`,
      `MEMBER_${i}_IP='${m.ip}'`,
      `MEMBER_${i}_HOST='${m.host}'`,
      `MEMBER_${i}_ADDR='${m.hostAddress}'`,
      `MEMBER_${i}_PORT=${m.hostPort}`,
      `MEMBER_${i}_USER='${m.hostUser}'`,
    );
  });
  lines.push(`MEMBER_HOST_INDEXES='${[...firstOfHost.values()].join(" ")}'`);
  lines.push(`NPOLICIES=${c.policies.length}`);
  c.policies.forEach((p: ScalingPolicySpec, i) => {
    if (!(ADJUSTMENT_TYPES as readonly string[]).includes(p.adjustmentType))
      throw new FieldError(`policies[${i}].adjustmentType`, "unknown", "");
    const cmp = p.alarm?.comparison ?? "gt";
    if (!(ALARM_COMPARISONS as readonly string[]).includes(cmp))
      throw new FieldError(`policies[${i}].alarm.comparison`, "unknown", "");
    lines.push(
      `POLICY_${i}_NAME='${p.name}'`,
      `POLICY_${i}_TYPE='${p.adjustmentType}'`,
      `POLICY_${i}_ADJ=${p.scalingAdjustment}`,
      `POLICY_${i}_COOLDOWN=${p.cooldown ?? c.cooldown}`,
      `POLICY_${i}_STEP=${p.minAdjustmentStep ?? 0}`,
      `POLICY_${i}_CMP='${cmp}'`,
      `POLICY_${i}_THRESHOLD=${p.alarm?.threshold ?? 0}`,
      `POLICY_${i}_PERIOD=${p.alarm?.periodSec ?? 0}`,
    );
  });
  const pool = c.pool;
  if (pool !== null) {
    safe("pool.socket", pool.socket);
    if (!pool.socket.startsWith("/"))
      throw new FieldError("pool.socket", "not an absolute path", "give the haproxy stats socket path");
    if (!/^[A-Za-z0-9._-]+:[A-Za-z0-9._-]+$/.test(pool.backend))
      throw new FieldError(
        "pool.backend",
        `invalid backend ${JSON.stringify(pool.backend)}`,
        "use <pool>:<listener>",
      );
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(pool.namespace))
      throw new FieldError(
        "pool.namespace",
        `invalid namespace ${JSON.stringify(pool.namespace)}`,
        "give the load balancer's namespace",
      );
    int("pool.healthPort", pool.healthPort, 1, 65535);
    if (!/^\/[A-Za-z0-9._/~-]*$/.test(pool.healthPath))
      throw new FieldError(
        "pool.healthPath",
        `invalid path ${JSON.stringify(pool.healthPath)}`,
        "use a path like /health",
      );
  }
  lines.push(
    `LB_SOCKET='${pool?.socket ?? ""}'`,
    `LB_BACKEND='${pool?.backend ?? ""}'`,
    `LB_NS='${pool?.namespace ?? ""}'`,
    `HEALTH_PORT=${pool?.healthPort ?? 80}`,
    `HEALTH_PATH='${pool?.healthPath ?? "/"}'`,
  );
  return `${lines.join("\n")}\n`;
}

function script(name: string): string {
  return fs.readFileSync(path.join(templatesDir(), "autoscale", name), "utf8");
}

/** The agent (POSIX sh; runs on the controller host). */
export function agentScript(): string {
  return script("agent.sh");
}

/** The forced command on every member host. */
export function memberScript(): string {
  return script("member.sh");
}

/** Per host: the member names defined there (the `members` file the forced command allows). */
export function membersByHost(
  members: readonly Pick<MemberSlot, "name" | "host">[],
): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const m of members) (out[m.host] ??= []).push(m.name);
  return out;
}
