/**
 * `kvmlab asg status <group>` and `kvmlab asg signal <group> <policy>`: an autoscale group's
 * agent as it runs on its controller host (docs/autoscale.md). `signal` is Heat's signal URL by
 * hand: the policy is applied with Heat's rules (it does nothing inside the cooldown).
 */
import { parseArgs, UsageError } from "./args";
import { commandHosts } from "./hosts";

const USAGE = `usage: kvmlab asg status <group> [--controller <host>] [--log N] [--sandbox <instance> | --hosts <hosts.json>] [--json]
       kvmlab asg signal <group> <policy> [--controller <host>] [--sandbox <instance> | --hosts <hosts.json>]

status  the agent (running, pid), the current size, every member slot and its state, the
        cooldown, the last average CPU and the last N decisions (default 20)
signal  ask the agent to apply a scaling policy now, as Heat's signal URL does; the outcome
        (scaled, in cooldown, no change) is the next line of the group's decisions log
  --sandbox <instance>  use a running kvmlab sandbox (default: $KVMLAB_SANDBOX_INSTANCE or "default")
  --hosts <file>        a JSON list of hosts {name, address, port, user, privateKeyPath, hostKey}
  --controller <host>   the group's controller host (needed when more than one host holds
                        an agent of that group name, e.g. two stacks on the same hosts)
  --json                print the status as JSON

The agent runs on one of the hosts (the group's load balancer host); every host is asked, and
the command refuses to guess when two hosts hold a group of that name.`;

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(argv, { valued: ["sandbox", "hosts", "log", "controller"], flags: ["json"] });
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`kvmlab asg: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.help) {
    console.log(USAGE);
    return 0;
  }
  const [verb, group, policy] = parsed.positional;
  const okShape =
    (verb === "status" && parsed.positional.length === 2) ||
    (verb === "signal" && parsed.positional.length === 3);
  if (!okShape) {
    console.error(`kvmlab asg: expected "status <group>" or "signal <group> <policy>"\n\n${USAGE}`);
    return 2;
  }
  if (!/^[a-z][a-z0-9-]{0,30}$/.test(group)) {
    console.error(`kvmlab asg: invalid group name ${JSON.stringify(group)} (lowercase letters, digits, '-')`);
    return 2;
  }
  const logOpt = parsed.options.get("log");
  const logLines = typeof logOpt === "string" ? Number(logOpt) : 20;
  if (!Number.isInteger(logLines) || logLines < 0 || logLines > 10000) {
    console.error(`kvmlab asg: --log expects a number of lines 0..10000`);
    return 2;
  }
  const controllerOpt = parsed.options.get("controller");
  const controller = typeof controllerOpt === "string" ? controllerOpt : undefined;
  const allHosts = commandHosts(parsed.options);
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
      const [r] = await runSteps(h, [a.agentReadStep(group, logLines)]).catch((e: unknown) => [
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
    if (verb === "signal") {
      const [r] = await runSteps(found.host, [a.signalStep(group, policy)]);
      if (r.code !== 0) {
        console.error(`kvmlab asg: ${r.stderr.trim()}`);
        return 1;
      }
      console.log(
        `signal for policy ${policy} of group ${group} (owner ${found.state.owner || "none"}) sent to the agent on ${found.host.name} (${r.stdout.trim()}); ` +
          `the agent ${found.state.running ? "applies it within one interval" : "is NOT running: run pulumi up"}`,
      );
      return found.state.running ? 0 : 1;
    }
    const s = found.state;
    if (parsed.options.has("json")) {
      console.log(JSON.stringify({ group, controller: found.host.name, ...s }, null, 2));
      return 0;
    }
    const now = Math.floor(Date.now() / 1000);
    console.log(
      `group ${group} (agent on ${found.host.name}: ${s.running ? `running, pid ${s.pid}` : "NOT RUNNING"}; owner ${s.owner || "none"})`,
    );
    console.log(`size ${s.size}, in service: ${s.members.join(", ") || "none"}`);
    console.log(
      `cooldown: ${s.cooldownEnd > now ? `${s.cooldownEnd - now} s left` : "none"}; average CPU: ${s.avgCpu || "none"}`,
    );
    for (const [n, st] of Object.entries(s.slots)) console.log(`  ${n.padEnd(24)} ${st}`);
    if (s.log.length > 0) {
      console.log("decisions:");
      for (const l of s.log) console.log(`  ${l}`);
    }
    return s.running ? 0 : 1;
  } finally {
    await closeHostSessions();
  }
}
