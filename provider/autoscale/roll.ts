/**
 * AutoscaleRoll: one step of an autoscale group's rolling replacement (Heat's rolling_update,
 * docs/autoscale.md "Launch changes"). The AutoscaleGroup puts two around every slot's Server:
 *
 *   roll-out(i) ──> Server(i) ──> roll-in(i) ──> roll-out(next slot) ──> …
 *
 * Both carry `launchHash`, a hash of what the slot's Server is built from (core/autoscale.ts
 * launchHash), so they UPDATE exactly when the slot's launch configuration changes, in Pulumi's
 * dependency order: roll-out before the Server is replaced or redefined, roll-in after it.
 * roll-out outputs a fresh `rollId` every time its roll runs, and roll-in takes it as
 * `afterRoll`: roll-in runs whenever a roll-out ran, even when the launch change was reverted
 * before roll-in's first run (a failed Server update), so no slot stays out of service.
 *
 *   check   group, member (`<group>-<i>`), phase, hash, hosts, bounds
 *   diff    pure: group/member/phase replace; a new launchHash (or, for roll-in, a new afterRoll)
 *           is an update that rolls; any other change (hosts, timeout) an update that runs nothing
 *   create  nothing on any host (the slot's Server is new too: nothing is in service)
 *   read    nothing on any host (the state is the truth; `kvmlab asg status` shows the hosts')
 *   update  (launchHash changed) find the group's controller (the host holding the group's
 *           agent.conf under this stack's owner marker), install the package's agent.sh there
 *           as roll.sh and run `roll.sh DIR roll-out|roll-in MEMBER` under the group lock the
 *           agent honours: out = drain and stop the member, never leaving fewer than `min` in
 *           service (a spare slot goes in first; below `min` it waits, bounded, then refuses);
 *           in = start it, health check, back in the pool, the spare leaves again
 *   delete  roll-in phase: clear a leftover "rolling" mark of the slot (idempotent; nothing when
 *           the group is gone); roll-out phase: nothing
 *
 * Host objects: roll.sh and state/<member>.roll live in the group's folder
 * (/var/lib/kvmlab/asg/<group>/), which the group's owner marker covers and the agent's
 * teardown removes; every command first checks that marker is this stack's.
 */
import type * as pulumi from "@pulumi/pulumi";
import { checkHostList, runChecked, shQuote, uploadStep, type HostConnection, type Step } from "../host";
import {
  applyRules,
  changedKeys,
  checkedOwner,
  defineResource,
  failureList,
  isKnown,
  KvmlabResource,
  normalizeHosts,
  rules,
  type Checked,
  type DiffResult,
  type HostConnectionArgs,
} from "../kit";
import { OWNER_REFUSED, ownerMarkerPath } from "../kit/owner";
import { GROUP_NAME_RE, MEMBER_NAME_RE } from "../../core/autoscale";
import { asgDir, memberStackContent } from "./steps";
import { shippedScript } from "./scripts";

export type RollPhase = "out" | "in";

export interface AutoscaleRollArgs {
  readonly groupName: pulumi.Input<string>;
  /** The slot, `<group>-<i>`. */
  readonly member: pulumi.Input<string>;
  /** "out": before the slot's Server changes; "in": after. */
  readonly phase: pulumi.Input<RollPhase>;
  /** Hash of the slot's launch configuration: a new value rolls the slot. */
  readonly launchHash: pulumi.Input<string>;
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** Bound of one roll step on the host (seconds). */
  readonly timeoutSec: pulumi.Input<number>;
  /** roll-in: the slot's roll-out `rollId`; a new value runs roll-in even when the hash is back to the old one. */
  readonly afterRoll?: pulumi.Input<string>;
  readonly owner?: pulumi.Input<string>;
}

export interface AutoscaleRollInputs {
  groupName: string;
  member: string;
  phase: RollPhase;
  launchHash: string;
  hosts: HostConnection[];
  timeoutSec: number;
  /** "" when not given (roll-out, or a roll-out that has never rolled). */
  afterRoll: string;
  owner: string;
}

export interface AutoscaleRollOutputs extends AutoscaleRollInputs {
  /** The controller the last roll ran on ("" when nothing ran). */
  rolledOn: string;
  /** What the last roll printed (its decisions.log lines are on the controller). */
  rolled: string;
  /** roll-out: a fresh random id each time its roll ran ("" before the first); roll-in: "". */
  rollId: string;
}

const HASH = /^[0-9a-f]{64}$/;
const ROLL_ID = /^([0-9a-f]{32})?$/;
/** Seconds roll.sh gets on the host: it ends (timeout(1)) before the client's bound of the step. */
export const ROLL_HOST_MARGIN_SEC = 30;

/** Validates raw inputs (pure). */
export function checkAutoscaleRollInputs(news: Record<string, unknown>): Checked {
  const out = failureList();
  const v = applyRules(
    news,
    {
      groupName: {
        rule: rules.expect(
          (x) => typeof x === "string" && GROUP_NAME_RE.test(x),
          "1-31 lowercase letters, digits or '-', starting with a letter",
        ),
      },
      member: {
        rule: rules.expect(
          (x) => typeof x === "string" && /^[a-z][a-z0-9-]{0,30}-(0|[1-9]\d?)$/.test(x),
          "a slot name <group>-<i>",
        ),
      },
      phase: { rule: rules.oneOf(["out", "in"]) },
      launchHash: {
        rule: rules.expect((x) => typeof x === "string" && HASH.test(x), "a sha256 hex digest (launchHash)"),
      },
      timeoutSec: { rule: rules.int(60, 7200, "seconds") },
      afterRoll: {
        rule: rules.expect(
          (x) => typeof x === "string" && ROLL_ID.test(x),
          'a roll-out\'s rollId (32 hex digits) or ""',
        ),
        default: "",
      },
    },
    out,
  );
  if (isKnown(v.groupName) && isKnown(v.member) && typeof v.member === "string") {
    if (!v.member.startsWith(`${v.groupName as string}-`))
      out.add("member", `member: ${v.member} is not a slot of group ${v.groupName as string}`);
  }
  out.add("hosts", checkHostList("hosts", news.hosts));
  return {
    inputs: {
      ...v,
      hosts: normalizeHosts(news.hosts),
      owner: checkedOwner(news, "AutoscaleRoll", "member", out.add),
    },
    failures: out.failures,
  };
}

export const AUTOSCALE_ROLL_REPLACE_KEYS = ["groupName", "member", "phase"] as const;

/** Pure diff: identity replaces; a new hash (or afterRoll) rolls; hosts/timeout update without a command. */
export function diffAutoscaleRoll(olds: AutoscaleRollOutputs, news: AutoscaleRollInputs): DiffResult {
  // A state from before afterRoll existed has none: the same as "".
  const o = { ...olds, afterRoll: olds.afterRoll ?? "" };
  const replaces = changedKeys(o, news, AUTOSCALE_ROLL_REPLACE_KEYS);
  const updates = changedKeys(o, news, ["launchHash", "hosts", "timeoutSec", "afterRoll"] as const);
  return {
    changes: replaces.length > 0 || updates.length > 0,
    replaces,
    stables: replaces.length === 0 ? ["groupName", "member", "phase"] : [],
    deleteBeforeReplace: false,
  };
}

/** Every host: does it hold this group's agent, and whose is it? Prints `mine`, `none` or `other <owner>`. */
export function findControllerStep(group: string, owner: string): Step {
  const stack = memberStackContent(owner).trim();
  return {
    label: `look for group ${group}'s agent`,
    script: [
      `d=${shQuote(asgDir(group))}; m=${shQuote(ownerMarkerPath("asg", group))}`,
      '[ -f "$d/agent.conf" ] || { echo none; exit 0; }',
      'cur=$(head -n1 "$m" 2>/dev/null)',
      `case "$cur" in ${shQuote(stack)}/*) echo mine ;; *) echo "other $cur" ;; esac`,
    ].join("\n"),
  };
}

/** Controller: the group's folder must be this stack's (first step of every roll batch). */
export function groupOwnedStep(group: string, owner: string): Step {
  const stack = memberStackContent(owner).trim();
  return {
    label: `check that autoscale group ${group} is this stack's`,
    script: [
      `m=${shQuote(ownerMarkerPath("asg", group))}`,
      'cur=$(head -n1 "$m" 2>/dev/null)',
      `case "$cur" in ${shQuote(stack)}/*) exit 0 ;; esac`,
      `echo ${shQuote(`autoscale group ${group} on this host belongs to `)}"\${cur:-nobody (no owner marker)}"${shQuote(`, not to stack ${stack}; the rolling replacement touches only this stack's group. Fix: give this group another groupName`)} >&2`,
      `exit ${OWNER_REFUSED}`,
    ].join("\n"),
  };
}

/**
 * Controller: run one roll step with the package's agent script (installed as roll.sh), under
 * timeout(1) ROLL_HOST_MARGIN_SEC shorter than the client's bound `timeoutSec`: the script and
 * the children in timeout's process group (its `sleep`s) never outlive a failed `up`. A member
 * start in flight is the exception (review A3): the agent's inner `timeout -k 5 60 ssh` puts
 * itself in its own process group, so it ends by itself within 65 s of its start (possibly after
 * the step failed), holding the group lock until then, so nothing reads a half-done start.
 */
export function rollCommandStep(group: string, member: string, phase: RollPhase, timeoutSec: number): Step {
  if (!GROUP_NAME_RE.test(group) || !MEMBER_NAME_RE.test(member))
    throw new Error(
      `rollCommandStep: invalid group ${JSON.stringify(group)} or member ${JSON.stringify(member)}`,
    );
  const hostSec = Math.floor(timeoutSec) - ROLL_HOST_MARGIN_SEC;
  if (!Number.isInteger(hostSec) || hostSec < 20)
    throw new Error(`rollCommandStep: timeoutSec ${timeoutSec} leaves no time on the host (at least 50)`);
  const d = shQuote(asgDir(group));
  return {
    label: `roll-${phase} ${member} of group ${group}`,
    script: [
      `timeout -k 10 ${hostSec} /bin/sh ${d}/roll.sh ${d} roll-${phase} ${shQuote(member)}`,
      "rc=$?",
      `case $rc in 124 | 137) echo ${shQuote(`autoscale group ${group}: roll-${phase} of ${member} did not finish within ${hostSec} s and was stopped; the slot may be left out of service (state rolling). Fix: see kvmlab asg status ${group} and its decisions.log, then run up again (roll-in runs after any roll-out)`)} >&2 ;; esac`,
      "exit $rc",
    ].join("\n"),
  };
}

/** Controller: clear a leftover "rolling" mark of a slot (delete; idempotent, under the group lock). */
export function clearRollStep(group: string, member: string): Step {
  const d = shQuote(asgDir(group));
  return {
    label: `clear the rolling mark of ${member}`,
    script: [
      `cd ${d} 2>/dev/null && [ -d state ] || exit 0`,
      "exec 7>>group.lock; flock -w 60 7 || exit 75",
      `m=${shQuote(member)}`,
      'rm -f "state/$m.roll"',
      'if [ "$(awk \'{print $1}\' "state/$m" 2>/dev/null)" = rolling ]; then echo "stopped 0" > "state/$m.tmp" && mv -f "state/$m.tmp" "state/$m"; fi',
    ].join("\n"),
  };
}

/** Picks the controller from the answers of every host (pure). */
export function pickController(
  group: string,
  answers: readonly { host: string; answer: string }[],
): { host: string | undefined; note: string } {
  const mine = answers.filter((a) => a.answer.trim() === "mine");
  if (mine.length > 1)
    throw new Error(
      `autoscale group ${group}: ${mine.map((a) => a.host).join(" and ")} both hold this stack's agent; stop one (kvmlab asg status ${group} --controller <host>), then run up again`,
    );
  if (mine.length === 1) return { host: mine[0].host, note: "" };
  const others = answers.filter((a) => a.answer.startsWith("other"));
  return {
    host: undefined,
    note:
      others.length > 0
        ? `no agent of this stack (${others.map((a) => `${a.host}: ${a.answer.slice(6)}`).join(", ")})`
        : "no agent on any host",
  };
}

const AGENT_SCRIPT = shippedScript("agent.sh");

/** Does an update run the roll command? A new hash; for roll-in also a new afterRoll (pure). */
export function rollRuns(olds: AutoscaleRollOutputs, news: AutoscaleRollInputs): boolean {
  if (olds.launchHash !== news.launchHash) return true;
  return news.phase === "in" && (olds.afterRoll ?? "") !== news.afterRoll;
}

async function findController(i: AutoscaleRollInputs): Promise<{ host?: HostConnection; note: string }> {
  const answers: { host: string; answer: string }[] = [];
  for (const h of i.hosts) {
    const [a] = await runChecked(h, [findControllerStep(i.groupName, i.owner)]);
    answers.push({ host: h.name, answer: a.trim() });
  }
  const { host, note } = pickController(i.groupName, answers);
  return { host: i.hosts.find((h) => h.name === host), note };
}

const roll = defineResource<AutoscaleRollInputs, AutoscaleRollOutputs>({
  type: "AutoscaleRoll",
  inputKeys: ["groupName", "member", "phase", "launchHash", "hosts", "timeoutSec", "afterRoll", "owner"],
  outputKeys: ["rolledOn", "rolled", "rollId"],
  secretOutputs: ["hosts"],
  check: (news) => checkAutoscaleRollInputs(news),
  diff: diffAutoscaleRoll,

  async create(inputs) {
    // The slot's Server is created in the same run: nothing is in service yet, nothing to roll.
    return {
      id: `${inputs.member}/${inputs.phase}`,
      outs: { ...inputs, rolledOn: "", rolled: "", rollId: "" },
    };
  },

  async read(_id, props) {
    return props;
  },

  async update(_id, olds, news) {
    if (!rollRuns(olds, news))
      return { ...news, rolledOn: olds.rolledOn, rolled: olds.rolled, rollId: olds.rollId ?? "" };
    // roll-out: a fresh id, so the slot's roll-in runs after it whatever the hash does next.
    const crypto: typeof import("node:crypto") = require("node:crypto");
    const rollId = news.phase === "out" ? crypto.randomBytes(16).toString("hex") : "";
    const { host, note } = await findController(news);
    if (host === undefined) return { ...news, rolledOn: "", rolled: `nothing to roll: ${note}`, rollId };
    const d = asgDir(news.groupName);
    const outs = await runChecked(
      host,
      [
        groupOwnedStep(news.groupName, news.owner),
        uploadStep(`${d}/roll.sh`, AGENT_SCRIPT, { mode: "0755" }),
        rollCommandStep(news.groupName, news.member, news.phase, news.timeoutSec),
      ],
      { timeoutMs: news.timeoutSec * 1000 },
    );
    return { ...news, rolledOn: host.name, rolled: (outs[2] ?? "").trim(), rollId };
  },

  async delete(_id, olds) {
    if (olds.phase !== "in") return;
    const { host } = await findController(olds);
    if (host === undefined) return;
    await runChecked(host, [
      groupOwnedStep(olds.groupName, olds.owner),
      clearRollStep(olds.groupName, olds.member),
    ]);
  },
});

export const autoscaleRollProvider = roll.provider;

/** One roll step of an autoscale slot (`pulumi-nodejs:dynamic/kvmlab:AutoscaleRoll`); the AutoscaleGroup component wires them. */
export class AutoscaleRoll extends KvmlabResource<AutoscaleRollInputs, AutoscaleRollOutputs> {
  declare readonly member: pulumi.Output<string>;
  declare readonly phase: pulumi.Output<RollPhase>;
  declare readonly launchHash: pulumi.Output<string>;
  declare readonly rolledOn: pulumi.Output<string>;
  declare readonly rolled: pulumi.Output<string>;
  declare readonly rollId: pulumi.Output<string>;

  constructor(name: string, args: AutoscaleRollArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(roll, name, { ...args }, opts);
  }
}
