/**
 * `kvmlab asg status <group>`, `kvmlab asg signal <group> <policy>` and `kvmlab asg reset <group>
 * <member>|--all-failed`: an autoscale group's agent as it runs on its controller host
 * (docs/autoscale.md). `signal` is Heat's signal URL by hand: the policy is applied with Heat's
 * rules (it does nothing inside the cooldown). `reset` gives a FAILED slot back once its cause is
 * fixed (review A4): Heat's "mark unhealthy, then update" replaces the member; the agent makes no
 * server, so the slot becomes stopped and the agent's next evaluation starts it if the group is
 * below min.
 */
import { parseArgs, UsageError } from "./args";
import { commandHosts } from "./hosts";
import { GROUP_NAME_RE, slotGroup } from "../core/autoscale";
import { shQuote } from "../provider/host/quote";
import { OWNER_RE, ownerStack } from "../provider/kit/owner";

const USAGE = `usage: kvmlab asg status <group> [--controller <host>] [--log N] [--sandbox <instance> | --hosts <hosts.json>] [--json]
       kvmlab asg signal <group> <policy> [--controller <host>] [--sandbox <instance> | --hosts <hosts.json>]
       kvmlab asg reset <group> <member> | --all-failed [--owner <project>/<stack>] [--controller <host>] [--sandbox <instance> | --hosts <hosts.json>]

status  the agent (running, pid), the current size, every member slot and its state, the
        cooldown, the last average CPU, the last N decisions (default 20), and the command
        that gives each FAILED slot back
signal  ask the agent to apply a scaling policy now, as Heat's signal URL does; the outcome
        (scaled, in cooldown, no change) is the next line of the group's decisions log
reset   give a FAILED slot back once its cause is fixed (its serial log says why it did not
        answer): under the group's lock it becomes stopped, and the agent's next evaluation
        starts it if the group is below min (else a scale-out may); refused when the slot is
        not FAILED, not of this group, its domain is not shut off or not defined, or the group
        belongs to another owner than the one read just before (--owner <project>/<stack>: also
        refused unless the group is that stack's). --all-failed: every FAILED slot
  --sandbox <instance>  use a running kvmlab sandbox (default: $KVMLAB_SANDBOX_INSTANCE or "default")
  --hosts <file>        a JSON list of hosts {name, address, port, user, privateKeyPath, hostKey}
  --controller <host>   the group's controller host (needed when more than one host holds
                        an agent of that group name, e.g. two stacks on the same hosts)
  --json                print the status as JSON

The agent runs on one of the hosts (the group's load balancer host); every host is asked, and
the command refuses to guess when two hosts hold a group of that name.`;

/** A command line of `kvmlab asg`, checked (pure). */
export type AsgCommand = {
  group: string;
  logLines: number;
  controller?: string;
  json: boolean;
  /** The host options given (`--sandbox`, `--hosts`, `--controller`), to repeat in a printed command. */
  hostArgs: string[];
  options: Map<string, string | true>;
} & (
  | { verb: "status" }
  | { verb: "signal"; policy: string }
  | {
      verb: "reset";
      members: string[] | "all-failed";
      /** `--owner <project>/<stack>`: the stack whose group the operator means. */
      ownerStack?: string;
    }
);

/** Parses and checks the arguments (pure): a command, help, or a usage error (exit 2). */
export function parseAsgArgs(argv: readonly string[]): AsgCommand | { help: true } | { usage: string } {
  let parsed;
  try {
    parsed = parseArgs(argv, {
      valued: ["sandbox", "hosts", "log", "controller", "owner"],
      flags: ["json", "all-failed"],
    });
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    return { usage: err.message };
  }
  if (parsed.help) return { help: true };
  const [verb, group, third] = parsed.positional;
  const n = parsed.positional.length;
  const allFailed = parsed.options.has("all-failed");
  const okShape =
    (verb === "status" && n === 2) ||
    (verb === "signal" && n === 3) ||
    (verb === "reset" && ((n === 3 && !allFailed) || (n === 2 && allFailed)));
  if (!okShape) {
    if (verb === "reset")
      return {
        usage:
          n === 3
            ? `reset takes one member or --all-failed, not both`
            : `expected "reset <group> <member>" or "reset <group> --all-failed"`,
      };
    return { usage: `expected "status <group>", "signal <group> <policy>" or "reset <group> <member>"` };
  }
  if (allFailed && verb !== "reset") return { usage: `--all-failed goes with reset only` };
  const ownerOpt = parsed.options.get("owner");
  if (ownerOpt !== undefined && verb !== "reset") return { usage: `--owner goes with reset only` };
  if (ownerOpt !== undefined && (typeof ownerOpt !== "string" || !STACK_RE.test(ownerOpt)))
    return {
      usage: `--owner expects <project>/<stack> as pulumi names them (the group's owner marker begins with it; kvmlab asg status shows it), got ${JSON.stringify(ownerOpt)}`,
    };
  const ownerStackOpt = typeof ownerOpt === "string" ? { ownerStack: ownerOpt } : {};
  if (!GROUP_NAME_RE.test(group))
    return {
      usage: `invalid group name ${JSON.stringify(group)} (lowercase letters, digits, '-', starting with a letter, at most 31)`,
    };
  const logOpt = parsed.options.get("log");
  const logLines = typeof logOpt === "string" ? Number(logOpt) : 20;
  if (!Number.isInteger(logLines) || logLines < 0 || logLines > 10000)
    return { usage: `--log expects a number of lines 0..10000` };
  const controllerOpt = parsed.options.get("controller");
  const controller = typeof controllerOpt === "string" ? controllerOpt : undefined;
  const hostArgs: string[] = [];
  for (const k of ["controller", "sandbox", "hosts"]) {
    const v = parsed.options.get(k);
    if (typeof v === "string") hostArgs.push(`--${k}`, v);
  }
  const base = {
    group,
    logLines,
    controller,
    json: parsed.options.has("json"),
    hostArgs,
    options: parsed.options,
  };
  if (verb === "status") return { ...base, verb };
  if (verb === "signal") {
    if (!/^[a-z][a-z0-9_-]{0,30}$/.test(third))
      return { usage: `invalid policy name ${JSON.stringify(third)} (lowercase letters, digits, '_', '-')` };
    return { ...base, verb, policy: third };
  }
  if (allFailed) return { ...base, verb: "reset", members: "all-failed", ...ownerStackOpt };
  const slot = slotGroup(third);
  if (slot === undefined)
    return {
      usage: `invalid member name ${JSON.stringify(third)}: a member of group ${group} is ${group}-<i> (see kvmlab asg status ${group})`,
    };
  if (slot !== group)
    return {
      usage: `${third} is not a member of group ${group} (its members are ${group}-0, ${group}-1, …); reset it with its own group: kvmlab asg reset ${slot} ${third}`,
    };
  return { ...base, verb: "reset", members: [third], ...ownerStackOpt };
}

/** `<project>/<stack>` as an owner's first two segments are encoded (provider/kit/owner.ts). */
const STACK_RE = /^[A-Za-z0-9_%-][A-Za-z0-9_.%-]*\/[A-Za-z0-9_%-][A-Za-z0-9_.%-]*$/;

/**
 * Why the reset must not act on a group whose owner marker reads `owner` (pure; undefined: it
 * may): no owner (nobody's), not an owner string, or not the stack `--owner` named (review 9b G2).
 */
export function resetOwnerRefusal(
  group: string,
  host: string,
  owner: string,
  wanted?: string,
): string | undefined {
  if (owner === "")
    return `autoscale group ${group} on ${host} has no owner marker, so it is nobody's to change; nothing was changed. Fix: run pulumi up for the stack that owns it (it writes the marker)`;
  if (!OWNER_RE.test(owner))
    return `autoscale group ${group} on ${host} has an owner marker that names no owner (${JSON.stringify(owner.slice(0, 80))}); nothing was changed. Fix: run pulumi up for the stack that owns it`;
  if (wanted !== undefined && ownerStack(owner) !== wanted)
    return `autoscale group ${group} on ${host} belongs to stack ${ownerStack(owner)} (owner ${owner}), not ${wanted}; nothing was changed. Fix: name its controller with --controller if your stack's group is on another host, or check that you mean this stack's group`;
  return undefined;
}

/** The exact `kvmlab asg reset` command for a member (or `--all-failed`), shell-quoted (pure). */
export function resetCommand(group: string, member: string, hostArgs: readonly string[]): string {
  return ["kvmlab", "asg", "reset", group, member, ...hostArgs].map(quoteWord).join(" ");
}

function quoteWord(w: string): string {
  return /^[A-Za-z0-9_.,:/=@%+-]+$/.test(w) ? w : shQuote(w);
}

/** What `status` prints about FAILED slots: each with its reset command (pure; [] when none). */
export function failedLines(
  group: string,
  slots: Record<string, string>,
  hostArgs: readonly string[],
  size: number,
  min: number,
): string[] {
  const failed = Object.entries(slots)
    .filter(([, st]) => st === "failed")
    .map(([n]) => n);
  if (failed.length === 0) return [];
  const stopped = Object.values(slots).filter((st) => st === "stopped").length;
  const lines = [
    `FAILED: ${failed.join(", ")} (powered off; the agent never starts a FAILED slot again)` +
      (size < min && stopped === 0 ? `: the group is below its min ${min} until one comes back` : ""),
    `  once the cause is fixed (its serial log says why it did not answer), give it back:`,
    ...failed.map((n) => `    ${resetCommand(group, n, hostArgs)}`),
  ];
  if (failed.length > 1) lines.push(`    ${resetCommand(group, "--all-failed", hostArgs)}`);
  return lines;
}

export async function main(argv: string[]): Promise<number> {
  const cmd = parseAsgArgs(argv);
  if ("help" in cmd) {
    console.log(USAGE);
    return 0;
  }
  if ("usage" in cmd) {
    console.error(`kvmlab asg: ${cmd.usage}\n\n${USAGE}`);
    return 2;
  }
  const { group, controller } = cmd;
  const allHosts = commandHosts(cmd.options);
  const hosts = controller === undefined ? allHosts : allHosts.filter((h) => h.name === controller);
  if (hosts.length === 0) {
    console.error(
      `kvmlab asg: --controller ${controller}: no such host (hosts: ${allHosts.map((h) => h.name).join(", ")})`,
    );
    return 2;
  }
  const a = require("../provider/autoscale") as typeof import("../provider/autoscale");
  const { runSteps, closeHostSessions } = require("../provider/host") as typeof import("../provider/host");
  try {
    // Find the controller: the host whose group folder holds agent.conf. Every host is asked;
    // two hosts with a group of that name (another stack's) are refused, never guessed.
    const candidates: { host: (typeof hosts)[number]; state: ReturnType<typeof a.parseAgentState> }[] = [];
    const unasked: string[] = [];
    for (const h of hosts) {
      const [r] = await runSteps(h, [a.agentReadStep(group, cmd.logLines)]).catch((e: unknown) => [
        { code: -1, stdout: "", stderr: String(e) },
      ]);
      if (r.code !== 0) {
        unasked.push(`${h.name} (${r.stderr.trim().split("\n").pop() ?? ""})`);
        continue;
      }
      const s = a.parseAgentState(r.stdout);
      if (s.present) candidates.push({ host: h, state: s });
    }
    if (candidates.length > 1) {
      console.error(
        `kvmlab asg: more than one host holds an autoscale group ${group}: ${candidates.map((c) => `${c.host.name} (owner ${c.state.owner || "none"})`).join(", ")}; ` +
          `name the group's controller with --controller <host> (pulumi stack output of the group's agentHost)`,
      );
      return 2;
    }
    // A host that could not be asked may hold the group too: the one found might be another
    // stack's. Refuse rather than guess, unless --controller named the host.
    if (unasked.length > 0 && controller === undefined) {
      console.error(
        `kvmlab asg: could not ask ${unasked.join(", ")}; the group may be there too. ` +
          `Name the group's controller with --controller <host>, or fix the connection`,
      );
      return 1;
    }
    const found = candidates[0];
    if (found === undefined) {
      console.error(
        `kvmlab asg: no autoscale group ${group} on ${hosts.map((h) => h.name).join(", ")}; check the name (pulumi stack output) and the hosts`,
      );
      return 1;
    }
    if (cmd.verb === "signal") {
      const [r] = await runSteps(found.host, [a.signalStep(group, cmd.policy)]);
      if (r.code !== 0) {
        console.error(`kvmlab asg: ${r.stderr.trim()}`);
        return 1;
      }
      console.log(
        `signal for policy ${cmd.policy} of group ${group} (owner ${found.state.owner || "none"}) sent to the agent on ${found.host.name} (${r.stdout.trim()}); ` +
          `the agent ${found.state.running ? "applies it within one interval" : "is NOT running: run pulumi up"}`,
      );
      return found.state.running ? 0 : 1;
    }
    if (cmd.verb === "reset") return await reset(cmd, found, runSteps, a);
    const s = found.state;
    if (cmd.json) {
      const failed = Object.keys(s.slots).filter((n) => s.slots[n] === "failed");
      console.log(
        JSON.stringify(
          {
            group,
            controller: found.host.name,
            ...s,
            failed,
            resetCommands: failed.map((n) => resetCommand(group, n, cmd.hostArgs)),
          },
          null,
          2,
        ),
      );
      return 0;
    }
    const now = Math.floor(Date.now() / 1000);
    console.log(
      `group ${group} (agent on ${found.host.name}: ${s.running ? `running, pid ${s.pid}` : "NOT RUNNING"}; owner ${s.owner || "none"})`,
    );
    console.log(
      `size ${s.size}${s.max > 0 ? ` (min ${s.min}, max ${s.max})` : ""}, in service: ${s.members.join(", ") || "none"}`,
    );
    console.log(
      `cooldown: ${s.cooldownEnd > now ? `${s.cooldownEnd - now} s left` : "none"}; average CPU: ${s.avgCpu || "none"}`,
    );
    for (const [n, st] of Object.entries(s.slots)) console.log(`  ${n.padEnd(24)} ${st}`);
    for (const l of failedLines(group, s.slots, cmd.hostArgs, s.size, s.min)) console.log(l);
    if (s.log.length > 0) {
      console.log("decisions:");
      for (const l of s.log) console.log(`  ${l}`);
    }
    return s.running ? 0 : 1;
  } finally {
    await closeHostSessions();
  }
}

/** `reset`: the agent's reset mode on the controller, its lines printed, its refusals explained. */
async function reset(
  cmd: Extract<AsgCommand, { verb: "reset" }>,
  found: {
    host: import("../provider/host").HostConnection;
    state: import("../provider/autoscale").AgentState;
  },
  runSteps: typeof import("../provider/host").runSteps,
  a: typeof import("../provider/autoscale"),
): Promise<number> {
  const { group } = cmd;
  const owner = found.state.owner;
  const refusal = resetOwnerRefusal(group, found.host.name, owner, cmd.ownerStack);
  if (refusal !== undefined) {
    console.error(`kvmlab asg reset: ${refusal}`);
    return 1;
  }
  // The owner is said before anything is changed; the step acts only while the marker still names it.
  console.log(`group ${group} (owner ${owner}, controller ${found.host.name}):`);
  // Bounded on the host: the lock wait (60 s) and one state query per slot (65 s at most each).
  const slots = cmd.members === "all-failed" ? Math.max(1, Object.keys(found.state.slots).length) : 1;
  const [r] = await runSteps(found.host, [a.resetStep(group, cmd.members, owner)], {
    timeoutMs: (90 + 65 * slots) * 1000,
  });
  const out = r.stdout.trim();
  if (out !== "") for (const l of out.split("\n")) console.log(`  ${l}`);
  if (r.code !== 0) {
    const what = cmd.members === "all-failed" ? "--all-failed" : cmd.members.join(" ");
    const msg =
      r.code === a.RESET_OLD_AGENT && /unknown mode/.test(r.stderr)
        ? oldAgentMessage(
            group,
            found.host.name,
            a.asgDir(group),
            cmd.members === "all-failed"
              ? Object.keys(found.state.slots).filter((n) => found.state.slots[n] === "failed")
              : cmd.members,
          )
        : r.stderr.trim() || `the reset exited ${r.code}`;
    console.error(`kvmlab asg reset ${group} ${what}: ${msg}`);
    return 1;
  }
  if (!found.state.running) {
    console.error(
      `kvmlab asg: the agent of group ${group} is NOT running: nothing starts the slot until it runs again (pulumi up restarts it)`,
    );
    return 1;
  }
  return 0;
}

/**
 * The reset by hand, for an agent installed before the reset mode (pure; review 9b G3): on the
 * controller, under the group lock waited for at most 60 s (a roll may hold it for longer: the
 * command then changes nothing and can be run again), each named slot whose state is FAILED
 * becomes stopped (its state file removed); any other is left as it is.
 */
export function handResetCommand(dir: string, members: readonly string[]): string {
  for (const m of [dir, ...members])
    if (!/^[A-Za-z0-9/_.-]+$/.test(m))
      throw new Error(`handResetCommand: ${JSON.stringify(m)} is not a plain name`);
  const script =
    `cd ${dir}/state && for m in ${members.join(" ")}; do ` +
    `if [ "$(cut -d" " -f1 "$m" 2>/dev/null)" = failed ]; then rm "$m" && echo "reset $m: FAILED -> stopped"; ` +
    `else echo "$m is not FAILED: left as it is"; fi; done`;
  return `flock -w 60 ${dir}/group.lock sh -c '${script}'`;
}

function oldAgentMessage(group: string, host: string, dir: string, members: readonly string[]): string {
  const fix = `the agent installed on ${host} predates kvmlab asg reset (nothing was changed). Fix: run pulumi up once (it installs this kvmlab's agent), then reset again`;
  if (members.length === 0) return fix;
  return (
    `${fix}; or by hand: first check on each slot's member host that \`virsh domstate <slot>\` says "shut off" ` +
    `(not running, paused, in shutdown, pmsuspended; the slot's server must exist), then on ${host} as root: ${handResetCommand(dir, members)}`
  );
}
