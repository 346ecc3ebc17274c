/**
 * AutoscaleAgent: the scaling agent of an autoscale group (docs/autoscale.md), a POSIX sh
 * process on the controller host that scales the group between `pulumi up`s, as Heat does with
 * its alarms. Everything it acts on is rendered in the program (the member servers, the pool,
 * agent.conf); the hosts render nothing.
 *
 *   check   group name, controller host, agent.conf (re-parsed line by line against an
 *           allow-list, agreeing with groupName/min/max), desired size, member lists (only
 *           `<group>-<i>` with i < max, each once, exactly agent.conf's slots on its hosts)
 *   scripts the agent and the member command are the provider's OWN copies (the templates shipped
 *           with this package, loaded when the module loads): no input can change what runs as
 *           root; their sha256 is an output, and a new package version's scripts are an update
 *   diff    pure: groupName/controllerHost replace; files, member lists, hosts update; desired
 *           updates only when the PROGRAM's value changed (a no-change up runs nothing, and the
 *           agent's current size is left alone); an agent found dead by refresh updates
 *   create  claim on every involved host; controller: folder + key (generated there); member
 *           hosts: every member server must be this stack's (its owner marker), then forced
 *           command, member list, authorized_keys line (from= the controller's address);
 *           controller: known_hosts
 *           (member hosts' sshd keys read over the pinned connections), agent files; on a
 *           folder this create claimed, the first clamp(desired, min, max) members marked
 *           `starting` and started under the group lock (startInitialMembers); the desired
 *           request, start the agent
 *   read    agent alive?, its status (current size, members in service, cooldown)
 *   update  claim hosts new to the group (a failed update releases what it claimed); strip
 *           the key, files and owner marker from hosts it left; rewrite what changed; a new desired size becomes a request the agent applies;
 *           restart the agent when its files changed or it was found dead
 *   delete  stop the agent, revoke the key everywhere, remove the files and the owner markers
 */
import type * as pulumi from "@pulumi/pulumi";
import { createHash } from "node:crypto";
import {
  checkHostList,
  runChecked,
  runLocked,
  runSteps,
  shQuote,
  uploadStep,
  withNamedHostLock,
  type HostConnection,
  type Step,
} from "./host";
import {
  applyRules,
  changedKeys,
  checkedOwner,
  claimStep,
  claimedNow,
  defineResource,
  failureList,
  guardStep,
  hostNamed,
  isKnown,
  KvmlabResource,
  normalizeHosts,
  ownerIn,
  releaseOwnerStep,
  rules,
  type Checked,
  type DiffResult,
  type HostConnectionArgs,
  type OwnedObject,
} from "./kit";
import {
  agentKeyStep,
  agentPool,
  agentReadStep,
  asgDir,
  authorizeAgentStep,
  createStartsDoneStep,
  createStartsSkippedStep,
  CREATE_STARTS_NOT_FRESH,
  desiredRequestStep,
  knownHostsContent,
  markCreateStartsStep,
  memberCommandStep,
  memberListContent,
  memberOwnedStep,
  memberStatsStep,
  liveSlots,
  memberStackContent,
  poolOwnedStep,
  parseAgentState,
  removeAgentDirStep,
  revocationFiles,
  startAgentStep,
  stopAgentStep,
  unauthorizeAgentStep,
  type AgentState,
  type CreateStart,
} from "./autoscale/steps";
import { destinationFactsStep, parseDestinationFacts } from "./server/migrate";
import {
  GROUP_NAME_RE,
  agentConfigProblems,
  memberSlotsDisagreement,
  membersToStart,
} from "../core/autoscale";
import { shippedScript } from "./autoscale/scripts";

export * from "./autoscale/steps";
export * from "./autoscale/roll";

export interface AutoscaleAgentArgs {
  /** The group (member domains are `<group>-<n>`). */
  readonly groupName: pulumi.Input<string>;
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** Host the agent runs on (the load balancer's host when the group has a pool). */
  readonly controllerHost: pulumi.Input<string>;
  /** agent.conf, rendered in the program (templates/autoscale.ts renderAgentConfig). */
  readonly agentConfig: pulumi.Input<string>;
  /** Host name → the member slots defined there. */
  readonly membersByHost: pulumi.Input<Record<string, pulumi.Input<string>[]>>;
  /** The program's desired size; applied when it changes. */
  readonly desired: pulumi.Input<number>;
  readonly min: pulumi.Input<number>;
  readonly max: pulumi.Input<number>;
  readonly owner?: pulumi.Input<string>;
}

export interface AutoscaleAgentInputs {
  groupName: string;
  hosts: HostConnection[];
  controllerHost: string;
  agentConfig: string;
  membersByHost: Record<string, string[]>;
  desired: number;
  min: number;
  max: number;
  owner: string;
}

export interface AutoscaleAgentRealized {
  agentRunning: boolean;
  /** Current size (members in service) as the agent reports it. */
  currentSize: number;
  members: string[];
  slots: Record<string, string>;
  cooldownEnd: number;
}

export interface AutoscaleAgentOutputs extends AutoscaleAgentInputs {
  /** The agent key's public line (the private key stays on the controller). */
  agentPublicKey: string;
  /** Generation of the last desired request written (the agent applies each once). */
  desiredGeneration: number;
  agentPid: number;
  currentSize: number;
  members: string[];
  hostKeys: Record<string, string>;
  /** sha256 of the agent and member scripts installed (the provider's own copies). */
  scriptsSha256: string;
  /** Host name → the authorized keys file the agent's key line was written to (for its removal). */
  authorizedKeysFiles?: Record<string, string>;
  realized: AutoscaleAgentRealized;
}

/**
 * The scripts that run as root on the hosts: the package's own templates, read once when this
 * module loads (Pulumi's closure serializer captures the strings with the provider), never an input.
 */
const AGENT_SCRIPT = shippedScript("agent.sh");
const MEMBER_SCRIPT = shippedScript("member.sh");
export const AUTOSCALE_SCRIPTS_SHA256 = createHash("sha256")
  .update(`${AGENT_SCRIPT}\u0000${MEMBER_SCRIPT}`)
  .digest("hex");

/** Validates and normalizes raw inputs (pure). */
export function checkAutoscaleAgentInputs(news: Record<string, unknown>): Checked {
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
      controllerHost: { rule: rules.name },
      agentConfig: {
        rule: rules.expect(
          (x) => typeof x === "string" && x.length > 0 && x.length < 65536,
          "the rendered agent.conf",
        ),
      },
      min: { rule: rules.int(0, 32, "the group's minimum size") },
      max: { rule: rules.int(1, 32, "the group's maximum size") },
      desired: { rule: rules.int(0, 32, "the desired size") },
    },
    out,
  );
  if (isKnown(v.min) && isKnown(v.max) && isKnown(v.desired)) {
    const [min, max, desired] = [v.min as number, v.max as number, v.desired as number];
    if (min > max) out.add("min", `min: ${min} is above max ${max}; lower min or raise max`);
    else if (desired < min || desired > max)
      out.add("desired", `desired: ${desired} is outside min..max (${min}..${max}); set it within`);
  }
  const confHosts = normalizeHosts(news.hosts);
  let confOk = false;
  if (isKnown(v.agentConfig) && isKnown(v.groupName) && isKnown(v.min) && isKnown(v.max)) {
    const problems = agentConfigProblems(v.agentConfig as string, {
      group: v.groupName as string,
      min: v.min as number,
      max: v.max as number,
      controller: isKnown(v.controllerHost) ? (v.controllerHost as string) : undefined,
      hosts:
        isKnown(confHosts) && Array.isArray(confHosts)
          ? (confHosts as HostConnection[]).map((h) => ({
              name: h.name,
              address: h.address,
              port: h.port,
              user: h.user,
            }))
          : undefined,
    });
    for (const p of problems)
      out.add("agentConfig", `agentConfig: ${p}; render it with templates/autoscale.ts renderAgentConfig`);
    confOk = problems.length === 0;
  }
  const mbh = news.membersByHost ?? {};
  if (isKnown(mbh)) {
    if (typeof mbh !== "object" || mbh === null || Array.isArray(mbh))
      out.add("membersByHost", "membersByHost: expected host name → member names");
    else {
      const group = isKnown(v.groupName) ? (v.groupName as string) : undefined;
      const max = isKnown(v.max) ? (v.max as number) : undefined;
      const seen = new Set<string>();
      for (const [h, names] of Object.entries(mbh as Record<string, unknown>)) {
        if (!isKnown(names)) continue;
        if (!Array.isArray(names)) {
          out.add("membersByHost", `membersByHost.${h}: expected a list of member names like <group>-0`);
          continue;
        }
        for (const n of names) {
          if (!isKnown(n) || group === undefined || max === undefined) continue;
          const m = typeof n === "string" ? /^(.*)-(0|[1-9]\d{0,1})$/.exec(n) : null;
          if (m === null || m[1] !== group || Number(m[2]) >= max)
            out.add(
              "membersByHost",
              `membersByHost.${h}: ${JSON.stringify(n)} is not a slot of group ${group}; only ${group}-0 … ${group}-${max - 1} (<group>-<i>, i < max) may be listed`,
            );
          else if (seen.has(n))
            out.add("membersByHost", `membersByHost.${h}: ${n} is listed twice; list each slot on one host`);
          seen.add(n as string);
        }
      }
      // The agent and the create must pick from the same slots (review 12a N3).
      const lists = Object.values(mbh as Record<string, unknown>);
      if (
        confOk &&
        lists.every(
          (l) => isKnown(l) && Array.isArray(l) && l.every((n) => isKnown(n) && typeof n === "string"),
        )
      ) {
        const why = memberSlotsDisagreement(
          v.agentConfig as string,
          v.max as number,
          mbh as Record<string, string[]>,
        );
        if (why !== undefined)
          out.add(
            "membersByHost",
            `membersByHost: ${why}; render both from the same slots (templates/autoscale.ts membersByHost and renderAgentConfig, as the AutoscaleGroup component does)`,
          );
      }
    }
  }
  out.add("hosts", checkHostList("hosts", news.hosts));
  const hosts = normalizeHosts(news.hosts);
  if (isKnown(hosts) && isKnown(v.controllerHost) && Array.isArray(hosts)) {
    const names = (hosts as { name?: string }[]).map((h) => h.name);
    if (!names.includes(v.controllerHost as string))
      out.add(
        "controllerHost",
        `controllerHost: ${JSON.stringify(v.controllerHost)} is not one of the hosts (${names.join(", ")})`,
      );
    if (isKnown(mbh) && typeof mbh === "object" && mbh !== null)
      for (const h of Object.keys(mbh))
        if (!names.includes(h))
          out.add(
            "membersByHost",
            `membersByHost: ${JSON.stringify(h)} is not one of the hosts (${names.join(", ")})`,
          );
  }
  return {
    inputs: {
      ...v,
      membersByHost: mbh,
      hosts,
      owner: checkedOwner(news, "AutoscaleAgent", "groupName", out.add),
    },
    failures: out.failures,
  };
}

export const AUTOSCALE_AGENT_REPLACE_KEYS = ["groupName", "controllerHost"] as const;
const UPDATE_KEYS = ["agentConfig", "membersByHost", "desired", "min", "max", "hosts"] as const;

/** Pure diff: replace on identity, update on files/lists/desired, and when refresh found the agent dead. */
export function diffAutoscaleAgent(olds: AutoscaleAgentOutputs, news: AutoscaleAgentInputs): DiffResult {
  const replaces = changedKeys(olds, news, AUTOSCALE_AGENT_REPLACE_KEYS);
  const updates = changedKeys(olds, news, UPDATE_KEYS);
  const dead = olds.realized !== undefined && !olds.realized.agentRunning;
  // Another package version ships other scripts: reinstall them (an update, never a replace).
  const scripts = olds.scriptsSha256 !== AUTOSCALE_SCRIPTS_SHA256;
  return {
    changes: replaces.length > 0 || updates.length > 0 || dead || scripts,
    replaces,
    stables: replaces.length === 0 ? ["groupName", "controllerHost", "agentPublicKey"] : [],
    deleteBeforeReplace: true,
  };
}

/** The group's folder on one host, for the owner guards. */
export function asgOwned(group: string): OwnedObject {
  return {
    kind: "asg",
    key: [group],
    what: `autoscale group ${group}`,
    field: "groupName",
    exists: `[ -d ${shQuote(asgDir(group))} ]`,
  };
}

/**
 * Hosts called at once (issue 13: the agent's create is on the path to the members' first
 * start), settled with `Promise.allSettled` so that every host has answered before anything is
 * thrown (a failed create's cleanup must never run beside a host call still writing).
 * The values in host order, or an error: one host's error as it was (unlike `onEveryHost`, which
 * wraps even one); several hosts' (review 10b P5): the first one's message, then every other
 * host's, each named (the first as `cause`), so a refusal on one host does not hide another host
 * being unreachable until the next try.
 */
export function firstError<T>(
  settled: readonly PromiseSettledResult<T>[],
  hosts: readonly HostConnection[],
): T[] {
  const bad = settled.flatMap((r, k) =>
    r.status === "rejected" ? [{ host: hosts[k]?.name ?? `#${k}`, reason: r.reason as unknown }] : [],
  );
  if (bad.length === 1) throw bad[0].reason;
  if (bad.length > 1) {
    const msg = (e: unknown): string => (e instanceof Error ? e.message : String(e));
    throw new Error(
      `${msg(bad[0].reason)}\n(${bad.length} hosts failed; every one:\n${bad.map((b) => ` - ${b.host}: ${msg(b.reason)}`).join("\n")})`,
      { cause: bad[0].reason },
    );
  }
  return settled.map((r) => (r as PromiseFulfilledResult<T>).value);
}

function involvedHosts(i: AutoscaleAgentInputs): HostConnection[] {
  const names = new Set([i.controllerHost, ...Object.keys(i.membersByHost)]);
  return i.hosts.filter((h) => names.has(h.name));
}

/**
 * The lane of the agent's steps that take no host lock (the member hosts' owner guard, server
 * checks and facts, which took no host lock before either: the guard may write the group's owner
 * marker; the members' `stats`, start and stop through the member command, the agent's state;
 * inside the group's named lock, a worker batch skips runSteps' lost-lock check, and the record
 * step after the starts runs in the main shell and has it): a worker shell
 * of the host's connection, so they neither wait behind nor hold up the main shell's batches of
 * the other resources an `up` creates on the same hosts beside the agent (issue 13: a member's
 * `virsh start` takes seconds). The batches that take the host lock stay in the main shell.
 */
const WORKER = { lane: "worker" } as const;

/** Member host: files + key line; returns its sshd host keys (for the controller's known_hosts). */
async function setUpMemberHost(
  i: AutoscaleAgentInputs,
  host: HostConnection,
  publicKey: string,
  controllerAddress: string,
  owners: readonly string[],
): Promise<{ hostKeys: string[]; authorizedKeysFile: string }> {
  const d = asgDir(i.groupName);
  const outs = await runChecked(
    host,
    [
      guardStep(asgOwned(i.groupName), owners, true),
      // The forced command may start and stop these domains: each must be a server of this stack.
      ...(i.membersByHost[host.name] ?? []).map((n) => memberOwnedStep(i.groupName, n, i.owner)),
      destinationFactsStep(),
    ],
    WORKER,
  );
  const { hostKeys, authorizedKeysFile } = parseDestinationFacts(outs[outs.length - 1] ?? "");
  if (authorizedKeysFile === "")
    throw new Error(`host ${host.name}: could not find the authorized keys file sshd uses for ${host.user}`);
  await runLocked(host, [
    guardStep(asgOwned(i.groupName), owners, true),
    { label: "group folder", script: `mkdir -p ${shQuote(d)}` },
    uploadStep(`${d}/member.sh`, MEMBER_SCRIPT, { mode: "0755" }),
    // member.sh re-checks each server's owner marker against this before every start/stop.
    uploadStep(`${d}/stack`, memberStackContent(i.owner), { mode: "0644" }),
    uploadStep(`${d}/members`, memberListContent(i.membersByHost[host.name] ?? []), { mode: "0644" }),
    authorizeAgentStep(authorizedKeysFile, i.groupName, publicKey, controllerAddress),
  ]);
  return { hostKeys, authorizedKeysFile };
}

async function controllerFiles(
  i: AutoscaleAgentInputs,
  controller: HostConnection,
  known: string,
  owners: readonly string[],
  extra: Step[],
): Promise<string[]> {
  const d = asgDir(i.groupName);
  // The load balancer the agent drives (LB_SOCKET, checked at check to be a kvmlab LB's) is this stack's.
  const lb = /^LB_SOCKET='\/var\/lib\/kvmlab\/lb\/([A-Za-z0-9_-]+)\/haproxy\.sock'$/m.exec(
    i.agentConfig,
  )?.[1];
  const checks: Step[] = [
    guardStep(asgOwned(i.groupName), owners, true),
    ...(lb !== undefined ? [poolOwnedStep(i.groupName, lb, i.owner)] : []),
  ];
  // Only the outputs of the uploads (and `extra`) are returned: agent.sh first, then agent.conf.
  return (
    await runLocked(controller, [
      ...checks,
      uploadStep(`${d}/agent.sh`, AGENT_SCRIPT, { mode: "0755" }),
      uploadStep(`${d}/agent.conf`, i.agentConfig, { mode: "0600" }),
      uploadStep(`${d}/known_hosts`, known, { mode: "0600" }),
      ...extra,
    ])
  ).slice(checks.length);
}

async function wire(
  i: AutoscaleAgentInputs,
  owners: readonly string[],
): Promise<{ publicKey: string; changed: boolean; authorizedKeysFiles: Record<string, string> }> {
  const controller = hostNamed(i.hosts, i.controllerHost, "controllerHost");
  const [, pub] = await runLocked(controller, [
    guardStep(asgOwned(i.groupName), owners, true),
    agentKeyStep(i.groupName),
  ]);
  const publicKey = pub.trim().split("\n").pop() ?? "";
  const entries: { address: string; port: number; keys: string[] }[] = [];
  const authorizedKeysFiles: Record<string, string> = {};
  // Every member host at once (each its own files and key line); known_hosts in host order.
  const memberHosts = i.hosts.filter((x) => Object.hasOwn(i.membersByHost, x.name));
  const set = firstError(
    await Promise.allSettled(
      memberHosts.map((h) => setUpMemberHost(i, h, publicKey, controller.address, owners)),
    ),
    memberHosts,
  );
  memberHosts.forEach((h, k) => {
    entries.push({ address: h.address, port: h.port, keys: set[k].hostKeys });
    authorizedKeysFiles[h.name] = set[k].authorizedKeysFile;
  });
  const outs = await controllerFiles(i, controller, knownHostsContent(entries), owners, []);
  const changed = outs.slice(0, 2).some((o) => o.trim().split("\n").pop() === "changed");
  return { publicKey, changed, authorizedKeysFiles };
}

async function readAgent(i: AutoscaleAgentInputs): Promise<AgentState> {
  const controller = hostNamed(i.hosts, i.controllerHost, "controllerHost");
  const [r] = await runSteps(controller, [agentReadStep(i.groupName)], WORKER);
  if (r.code !== 0)
    throw new Error(
      `host ${controller.name}: reading group ${i.groupName}'s agent failed: ${r.stderr.trim()}`,
    );
  return parseAgentState(r.stdout);
}

function outputsFor(
  i: AutoscaleAgentInputs,
  publicKey: string,
  generation: number,
  s: AgentState,
  authorizedKeysFiles: Record<string, string>,
): AutoscaleAgentOutputs {
  return {
    ...i,
    authorizedKeysFiles,
    agentPublicKey: publicKey,
    desiredGeneration: generation,
    agentPid: s.pid,
    currentSize: s.size,
    members: s.members,
    hostKeys: {},
    scriptsSha256: AUTOSCALE_SCRIPTS_SHA256,
    realized: {
      agentRunning: s.running,
      currentSize: s.size,
      members: s.members,
      slots: s.slots,
      cooldownEnd: s.cooldownEnd,
    },
  };
}

/** The authorized keys files to strip the group's key line from on `h` (see revocationFiles). */
async function revocationFilesOn(
  h: HostConnection,
  group: string,
  recorded: Record<string, string> | undefined,
  holdsMembers: boolean,
): Promise<string[]> {
  // A host without members (the controller alone) never got the key line.
  if (!holdsMembers) return [""];
  const [facts] = await runChecked(h, [destinationFactsStep()]).catch(() => [""]);
  return revocationFiles(
    h.name,
    h.user,
    group,
    parseDestinationFacts(facts).authorizedKeysFile,
    recorded !== undefined && Object.hasOwn(recorded, h.name) ? recorded[h.name] : undefined,
  );
}

/** What {@link teardown} throws: every host's failure in the message, and which hosts failed. */
export interface TeardownError extends Error {
  /** The hosts whose cleanup failed (each one's agent stop, key removal, folder or marker). */
  hosts: string[];
}

/**
 * Stops the agent and removes the group from every involved host (or only from `only`: the
 * hosts a failed create claimed). Each host is cleaned on its own: a refusal or an unreachable
 * host does not stop the others; the failures are thrown together at the end (a
 * {@link TeardownError}, naming the hosts).
 */
async function teardown(
  i: AutoscaleAgentInputs & Pick<AutoscaleAgentOutputs, "authorizedKeysFiles">,
  owner: string,
  only?: ReadonlySet<string>,
): Promise<void> {
  const owned = asgOwned(i.groupName);
  const guard = owner ? [guardStep(owned, [owner])] : [];
  const failures: string[] = [];
  const failed = new Set<string>();
  const hosts = involvedHosts(i).filter((h) => only === undefined || only.has(h.name));
  if (hosts.some((h) => h.name === i.controllerHost)) {
    const controller = hostNamed(i.hosts, i.controllerHost, "controllerHost");
    await runLocked(controller, [...guard, stopAgentStep(i.groupName)]).catch((e: unknown) => {
      failures.push(`${controller.name}: ${(e as Error).message}`);
      failed.add(controller.name);
    });
  }
  for (const h of hosts) {
    try {
      const files = await revocationFilesOn(
        h,
        i.groupName,
        i.authorizedKeysFiles,
        Object.hasOwn(i.membersByHost, h.name),
      );
      await runLocked(h, [
        ...guard,
        ...files.map((f) => unauthorizeAgentStep(f, i.groupName, h.name === i.controllerHost)),
        ...(h.name === i.controllerHost ? [removeAgentDirStep(i.groupName)] : []),
        ...(owner ? [releaseOwnerStep(owned, [owner])] : []),
      ]);
    } catch (e) {
      failures.push(`${h.name}: ${(e as Error).message}`);
      failed.add(h.name);
    }
  }
  if (failures.length > 0)
    throw Object.assign(
      new Error(`autoscale group ${i.groupName}: cleanup failed on ${failures.join("; ")}`),
      {
        hosts: [...failed],
      },
    ) as TeardownError;
}

/**
 * The members a FRESH group's create starts (issue 13, session 12; Heat creates and boots an
 * AutoScalingGroup's initial members at stack create): clamp(desired, min, max) of the slots
 * listed in membersByHost, the lowest first (the agent's asg_to_start, core membersToStart).
 * The agent picks from agent.conf's MEMBER_<i>_NAME instead: check refuses membersByHost unless
 * it lists exactly those slots on agent.conf's hosts (memberSlotsDisagreement, review 12a N3), so
 * both pick the same members. Pure.
 */
export function initialMembers(i: AutoscaleAgentInputs): { member: string; host: string }[] {
  const hostOf = new Map<string, string>();
  for (const [h, names] of Object.entries(i.membersByHost)) for (const n of names) hostOf.set(n, h);
  const count = Math.min(Math.max(i.desired, i.min), i.max);
  const slots = [...hostOf.keys()].map((name) => ({
    name,
    index: Number(name.slice(name.lastIndexOf("-") + 1)),
    state: "stopped" as const,
    startedAt: 0,
  }));
  return membersToStart(slots, count).map((member) => ({ member, host: hostOf.get(member) ?? "" }));
}

/**
 * A fresh group's first start, before its agent runs. Under the group lock on the controller
 * (`group.lock`, the agent's flock): the chosen members are marked `starting` (nothing is marked
 * when `state/` already holds anything, or when any slot runs or a member host is silent: the
 * agent decides), THEN each is started on its member host through the member command (all at
 * once), then each answer is recorded (a refused start back to `stopped`; a failed host call
 * left `starting` with its mark `unknown`) and every start is logged (`cause=create`); when
 * nothing is started because a slot runs or a host is silent, that is logged. A crash
 * anywhere leaves `starting` slots marked `unknown`, which the agent's start-up health-waits, or
 * marks FAILED when their domain is off (dead_starts). Every member whose
 * start was sent goes into `sent` before its host is called (a failed create's cleanup powers
 * them off again, whatever the answer was).
 */
async function startInitialMembers(
  i: AutoscaleAgentInputs,
  controller: HostConnection,
  sent: { member: string; host: string }[],
): Promise<CreateStart[]> {
  const chosen = initialMembers(i);
  if (chosen.length === 0) return [];
  const d = asgDir(i.groupName);
  return withNamedHostLock(
    controller,
    "asg-group",
    async () => {
      // "Fresh folder" is not "members off" (review 12a M1: a replaced agent, or a new
      // controllerHost, claims every folder fresh while the member Servers keep running). Every
      // member host is asked once, all at once; a slot that runs or is paused, or a host that does
      // not answer: nothing is marked or started (the agent decides, as before). So a member the
      // create starts was off before it, and only those are ever powered off by its cleanup.
      const found = await memberHostsAnswer(i);
      if (found.live.length > 0 || found.silent.length > 0) {
        // Logged, so a replaced agent's create is told apart from one on an adopted folder
        // (review 12c N2).
        await runChecked(controller, [
          guardStep(asgOwned(i.groupName), [i.owner]),
          createStartsSkippedStep(i.groupName, found),
        ]);
        return [];
      }
      const [mark] = await runChecked(controller, [
        guardStep(asgOwned(i.groupName), [i.owner]),
        markCreateStartsStep(
          i.groupName,
          chosen.map((c) => c.member),
          agentPool(i.agentConfig),
        ),
      ]).then((o) => o.slice(1));
      if (mark.trim().split("\n").pop() === CREATE_STARTS_NOT_FRESH) return [];
      sent.push(...chosen);
      const t0 = Date.now();
      const settled = await Promise.allSettled(
        chosen.map((c) =>
          // Bounded as the agent bounds its own start (timeout -k 5 60 ssh).
          runSteps(
            hostNamed(i.hosts, c.host, "membersByHost"),
            [memberCommandStep(i.groupName, "start", c.member)],
            { timeoutMs: 65_000, ...WORKER },
          ),
        ),
      );
      const startMs = Date.now() - t0;
      const starts: CreateStart[] = chosen.map((c, k) => {
        const r = settled[k];
        if (r.status === "rejected") return { ...c, ok: false };
        const code = r.value[0]?.code ?? 1;
        return { ...c, ok: code === 0, rc: code };
      });
      await runChecked(controller, [createStartsDoneStep(i.groupName, starts, startMs)]);
      return starts;
    },
    // A fresh group's lock is free (no agent runs yet); bounded all the same. The bound also
    // covers the wait for the main shell's fd 8 when sshd refuses lock shells and another group's
    // first start holds that turn (review 13b S1): its stats (30 s), starts (65 s) and batches.
    180,
    `${d}/group.lock`,
  );
}

/** The create's question to the member hosts takes at most this long, all hosts together. */
export const MEMBER_STATS_BOUND_MS = 30_000;

/**
 * Every member host's `stats`, all at once: the group's slots found running or paused (`live`:
 * only names listed in membersByHost, a host's text is data) and the hosts that did not answer
 * (`silent`: an error, a non-zero exit, or no answer within {@link MEMBER_STATS_BOUND_MS}). Both
 * empty: every member is off. The bound is wall-clock from the question, the connection and any
 * queue included (review 12c N2: the batch's own timeout started only once it ran, behind the
 * host's other batches, after a connect of up to 15 s, all with the group lock held); the batches
 * run in a worker shell (no lock needed on a member host), so a Server's slow batch in the main
 * shell does not hold them up. A batch still out at the bound is left to finish (a read).
 */
async function memberHostsAnswer(i: AutoscaleAgentInputs): Promise<{ live: string[]; silent: string[] }> {
  const hosts = Object.entries(i.membersByHost)
    .filter(([, names]) => names.length > 0)
    .map(([h]) => h);
  const slots = new Set(Object.values(i.membersByHost).flat());
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<"silent">((r) => {
    timer = setTimeout(() => r("silent"), MEMBER_STATS_BOUND_MS);
  });
  try {
    const answers = await Promise.all(
      hosts.map(async (h) => {
        const asked = (async () =>
          runSteps(hostNamed(i.hosts, h, "membersByHost"), [memberStatsStep(i.groupName)], {
            timeoutMs: MEMBER_STATS_BOUND_MS,
            ...WORKER,
          }))();
        const r = await Promise.race([asked, bound]).catch(() => "silent" as const);
        if (r === "silent" || r[0]?.code !== 0) return { host: h, live: [] as string[], silent: true };
        return { host: h, live: liveSlots(r[0].stdout).filter((m) => slots.has(m)), silent: false };
      }),
    );
    return {
      live: [...new Set(answers.flatMap((a) => a.live))].sort(
        (a, b) => Number(a.slice(a.lastIndexOf("-") + 1)) - Number(b.slice(b.lastIndexOf("-") + 1)),
      ),
      silent: answers.filter((a) => a.silent).map((a) => a.host),
    };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A failed create's cleanup: power off again the members its first start started. Returns the
 * ones left running ("web-1 (hv2: why)"); never throws (review 12a S6, N4: the callbacks are
 * async, so even a synchronous throw becomes a named failure).
 */
async function stopInitialMembers(
  i: AutoscaleAgentInputs,
  started: readonly { member: string; host: string }[],
): Promise<string[]> {
  const settled = await Promise.allSettled(
    started.map(async (s) => {
      const [r] = await runSteps(
        hostNamed(i.hosts, s.host, "membersByHost"),
        [memberCommandStep(i.groupName, "stop", s.member)],
        WORKER,
      );
      if (r?.code !== 0)
        throw new Error(`exit ${String(r?.code)}${r?.stderr.trim() ? `: ${r.stderr.trim()}` : ""}`);
    }),
  );
  return settled.flatMap((r, k) =>
    r.status === "rejected"
      ? [
          `${started[k].member} (${started[k].host}: ${r.reason instanceof Error ? r.reason.message : String(r.reason)})`,
        ]
      : [],
  );
}

/**
 * A failed create's advice when its agent could not be stopped before the members' power-off
 * (review 12c N1, 12d N5): what holds depends on whether the teardown (which stops the agent
 * again and removes the group folder, decisions.log with it) then worked on the controller.
 * `teardownFailedOn`: the hosts the teardown failed on (undefined: it worked everywhere).
 */
export function agentStopNote(
  i: Pick<AutoscaleAgentInputs, "groupName" | "controllerHost" | "membersByHost">,
  why: string,
  teardownFailedOn: readonly string[] | undefined,
): string {
  const head = `the group's agent could not be stopped before the members' power-off (${why})`;
  const memberHosts = Object.entries(i.membersByHost)
    .filter(([, names]) => names.length > 0)
    .map(([h]) => h);
  const slots = Object.values(i.membersByHost)
    .flat()
    .sort((a, b) => Number(a.slice(a.lastIndexOf("-") + 1)) - Number(b.slice(b.lastIndexOf("-") + 1)));
  if (teardownFailedOn?.includes(i.controllerHost))
    return `${head}, and the cleanup failed on ${i.controllerHost} too, so the agent may still run and its folder may be left: see \`kvmlab asg status ${i.groupName} --controller ${i.controllerHost}\`, and virsh list on ${memberHosts.join(", ")}`;
  // The create started members only after every slot was found off (memberHostsAnswer), so a slot
  // that runs now was started by this create or by its agent.
  return `${head}; the cleanup stopped it afterwards and removed the group's folder on ${i.controllerHost} (its decisions.log with it), but if it ran meanwhile it may have started members in their place: every slot was off before this create, so any of ${slots.join(", ")} running now on ${memberHosts.join(", ")} (virsh list) was started by this create or its agent: power those off (virsh destroy)`;
}

const agent = defineResource<AutoscaleAgentInputs, AutoscaleAgentOutputs>({
  type: "AutoscaleAgent",
  inputKeys: [
    "groupName",
    "hosts",
    "controllerHost",
    "agentConfig",
    "membersByHost",
    "desired",
    "min",
    "max",
    "owner",
  ],
  outputKeys: [
    "agentPublicKey",
    "desiredGeneration",
    "agentPid",
    "currentSize",
    "members",
    "hostKeys",
    "scriptsSha256",
    "authorizedKeysFiles",
    "realized",
  ],
  secretOutputs: ["hosts"],
  check: (news) => checkAutoscaleAgentInputs(news),
  diff: diffAutoscaleAgent,

  async create(inputs) {
    const claimed: HostConnection[] = [];
    const started: { member: string; host: string }[] = [];
    try {
      // Every host's claim at once; all have answered before a refusal is thrown, so the
      // cleanup below sees every host this call claimed.
      const hosts = involvedHosts(inputs);
      const claims = await Promise.allSettled(
        hosts.map((h) => runLocked(h, [claimStep(asgOwned(inputs.groupName), inputs.owner)])),
      );
      claims.forEach((r, k) => {
        if (r.status === "fulfilled" && claimedNow(r.value[0])) claimed.push(hosts[k]);
      });
      firstError(claims, hosts);
      const { publicKey, authorizedKeysFiles } = await wire(inputs, [inputs.owner]);
      const controller = hostNamed(inputs.hosts, inputs.controllerHost, "controllerHost");
      // A group folder this create claimed (fresh): its first members start now, before the
      // agent (which finds them `starting` and health-waits them). Adopted: the agent decides.
      if (claimed.some((h) => h.name === inputs.controllerHost))
        await startInitialMembers(inputs, controller, started);
      await runLocked(controller, [
        guardStep(asgOwned(inputs.groupName), [inputs.owner]),
        desiredRequestStep(inputs.groupName, 1, inputs.desired),
        startAgentStep(inputs.groupName, false),
      ]);
      const s = await readAgent(inputs);
      return { id: inputs.groupName, outs: outputsFor(inputs, publicKey, 1, s, authorizedKeysFiles) };
    } catch (err) {
      // Clean only the hosts this call claimed: an adopted host's group is not this call's to remove.
      // The members this create started are powered off first (their agent never ran, and the
      // teardown removes the member command); a start whose host call failed may have run too.
      // An agent this create started (its pid wait gave up, readAgent failed) is stopped FIRST
      // (review 12a S1): a live agent would see its members off and start others over its own
      // ssh, which the teardown would then leave running. The teardown stops it again (idempotent).
      let agentStop = "";
      if (started.length > 0 && claimed.some((h) => h.name === inputs.controllerHost))
        await runLocked(hostNamed(inputs.hosts, inputs.controllerHost, "controllerHost"), [
          guardStep(asgOwned(inputs.groupName), [inputs.owner]),
          stopAgentStep(inputs.groupName),
        ]).catch((e: unknown) => {
          agentStop = (e as Error).message;
        });
      const leftRunning = await stopInitialMembers(inputs, started).catch((e: unknown) => [
        `(the power-off itself failed: ${(e as Error).message})`,
      ]);
      // The teardown's own failure is named too (review 12d N5), and which hosts it failed on
      // decides what the advice below can point at.
      let cleanup: { message: string; hosts: string[] } | undefined;
      if (claimed.length > 0)
        await teardown(inputs, inputs.owner, new Set(claimed.map((h) => h.name))).catch((e: unknown) => {
          cleanup = { message: (e as Error).message, hosts: (e as Partial<TeardownError>).hosts ?? [] };
        });
      // What the cleanup could not undo is named (review 12a S6, 12c N1), the original error first.
      const notUndone = [
        ...(leftRunning.length > 0
          ? [
              `members this create started and could not power off again, left running: ${leftRunning.join("; ")}; power them off (virsh destroy) or run up again`,
            ]
          : []),
        ...(agentStop !== "" ? [agentStopNote(inputs, agentStop, cleanup?.hosts)] : []),
        ...(cleanup !== undefined
          ? [
              `the cleanup could not remove everything this create made (${cleanup.message}); what is left stays marked as this stack's: run up again (the next create takes it over), or remove it by hand`,
            ]
          : []),
      ];
      if (notUndone.length > 0)
        throw new Error(`${(err as Error).message}; ${notUndone.join("; ")}`, { cause: err });
      throw err;
    }
  },

  async read(_id, props) {
    const s = await readAgent(props);
    if (!s.present) return undefined;
    return {
      ...props,
      agentPid: s.pid,
      currentSize: s.size,
      members: s.members,
      realized: {
        agentRunning: s.running,
        currentSize: s.size,
        members: s.members,
        slots: s.slots,
        cooldownEnd: s.cooldownEnd,
      },
    };
  },

  async update(_id, olds, news) {
    const owners = [news.owner, ownerIn(olds)];
    const before = new Set(involvedHosts(olds).map((h) => h.name));
    const now = new Set(involvedHosts(news).map((h) => h.name));
    // The hosts THIS update claimed: a failure later releases them again (and only them).
    const claimed: string[] = [];
    try {
      // Hosts new to the group are CLAIMED (refused when another owner holds the group there),
      // never adopted: an unmarked folder there is not this stack's.
      for (const h of involvedHosts(news).filter((x) => !before.has(x.name))) {
        const [c] = await runLocked(h, [claimStep(asgOwned(news.groupName), news.owner)]);
        if (claimedNow(c)) claimed.push(h.name);
      }
      // Hosts that no longer hold members lose the key and the member command; hosts the group
      // left altogether also lose its folder and owner marker.
      for (const h of olds.hosts.filter(
        (x) => Object.hasOwn(olds.membersByHost, x.name) && !Object.hasOwn(news.membersByHost, x.name),
      )) {
        const files = await revocationFilesOn(h, olds.groupName, olds.authorizedKeysFiles, true);
        const gone = !now.has(h.name);
        await runLocked(h, [
          guardStep(asgOwned(olds.groupName), owners, true),
          ...files.map((f) => unauthorizeAgentStep(f, olds.groupName, h.name === news.controllerHost)),
          ...(gone ? [releaseOwnerStep(asgOwned(olds.groupName), owners)] : []),
        ]);
      }
      const { publicKey, changed, authorizedKeysFiles } = await wire(news, owners);
      const controller = hostNamed(news.hosts, news.controllerHost, "controllerHost");
      let generation = olds.desiredGeneration ?? 1;
      const steps: Step[] = [guardStep(asgOwned(news.groupName), owners, true)];
      if (news.desired !== olds.desired) {
        generation += 1;
        steps.push(desiredRequestStep(news.groupName, generation, news.desired));
      }
      const restart = changed || news.min !== olds.min || news.max !== olds.max;
      steps.push(startAgentStep(news.groupName, restart));
      await runLocked(controller, steps);
      const s = await readAgent(news);
      return outputsFor(news, publicKey, generation, s, authorizedKeysFiles);
    } catch (err) {
      // A failed update gives back the hosts it claimed (key lines, member command, on a new
      // controller the agent and its folder, and the owner marker), as a failed create does.
      // Hosts the group already held, or adopted, are left as they are.
      // Its own failure is named (review 12d N5), after the original error (kept as the cause).
      let cleanup = "";
      if (claimed.length > 0)
        await teardown(news, news.owner, new Set(claimed)).catch((e: unknown) => {
          cleanup = (e as Error).message;
        });
      if (cleanup !== "")
        throw new Error(
          `${(err as Error).message}; the cleanup could not give back every host this update claimed (${cleanup}); what is left stays marked as this stack's: run up again, or remove it by hand`,
          { cause: err },
        );
      throw err;
    }
  },

  async delete(_id, olds) {
    await teardown(olds, ownerIn(olds));
  },
});

export const autoscaleAgentProvider = agent.provider;

/** The scaling agent of an autoscale group (`pulumi-nodejs:dynamic/kvmlab:AutoscaleAgent`); the AutoscaleGroup component wires it. */
export class AutoscaleAgent extends KvmlabResource<AutoscaleAgentInputs, AutoscaleAgentOutputs> {
  declare readonly groupName: pulumi.Output<string>;
  declare readonly controllerHost: pulumi.Output<string>;
  declare readonly agentPublicKey: pulumi.Output<string>;
  declare readonly desired: pulumi.Output<number>;
  declare readonly desiredGeneration: pulumi.Output<number>;
  declare readonly agentPid: pulumi.Output<number>;
  declare readonly currentSize: pulumi.Output<number>;
  declare readonly members: pulumi.Output<string[]>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly authorizedKeysFiles: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<AutoscaleAgentRealized>;

  constructor(name: string, args: AutoscaleAgentArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(agent, name, { ...args }, opts);
  }
}
