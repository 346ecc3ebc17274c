/**
 * AutoscaleAgent host steps (pure builders) and the parser of the agent's status file.
 * Layout (both on the controller and on every member host): /var/lib/kvmlab/asg/<group>/.
 *
 *   controller   agent.sh, agent.conf, agent_key(.pub) (generated there: the private key never
 *                leaves the host), known_hosts (the member hosts' sshd keys), requests/desired,
 *                agent.pid, status, decisions.log, state/, samples/
 *   member host  member.sh (the forced command), members (the names it may start and stop),
 *                one authorized_keys line: from="<controller>",restrict,command="/bin/sh …/member.sh" <key> kvmlab-asg:<group>
 */
import { shQuote, type Step } from "../host";
import {
  GROUP_NAME_RE,
  MEMBER_NAME_RE,
  agentKeyTag,
  asgDir,
  forcedCommandLine,
  slotGroup,
} from "../../core/autoscale";
import { parseKeyValues } from "../kit/kv";
import { OWNER_RE, OWNER_REFUSED, ownerMarkerPath, ownerStack } from "../kit/owner";

export { asgDir } from "../../core/autoscale";

function dirOf(group: string): string {
  if (!GROUP_NAME_RE.test(group))
    throw new Error(`autoscale steps: invalid group name ${JSON.stringify(group)}`);
  return asgDir(group);
}

/** Controller: the folder and the agent's key (kept when present); prints the public key line. */
export function agentKeyStep(group: string): Step {
  const d = shQuote(dirOf(group));
  return {
    label: `prepare the agent folder and key of group ${group}`,
    script: [
      "set -e",
      'command -v ssh-keygen >/dev/null 2>&1 || { echo "ssh-keygen is missing on the controller: apt-get install openssh-client" >&2; exit 27; }',
      'command -v ssh >/dev/null 2>&1 || { echo "ssh is missing on the controller: apt-get install openssh-client" >&2; exit 27; }',
      `mkdir -p ${d}/state ${d}/samples ${d}/requests`,
      `chmod 0700 ${d}`,
      `[ -s ${d}/agent_key ] || ssh-keygen -q -t ed25519 -N '' -C ${shQuote(agentKeyTag(group))} -f ${d}/agent_key`,
      `cat ${d}/agent_key.pub`,
    ].join("\n"),
  };
}

/** Member host: the forced command may start/stop exactly these names. */
export function memberListContent(names: readonly string[]): string {
  for (const n of names)
    if (!MEMBER_NAME_RE.test(n)) throw new Error(`invalid member name ${JSON.stringify(n)}`);
  return names.length > 0 ? `${names.join("\n")}\n` : "";
}

/**
 * Member host: authorize the agent's key for the forced command only, from the controller's
 * address only (replaces an older line of the group).
 */
export function authorizeAgentStep(
  authorizedKeysFile: string,
  group: string,
  publicKeyLine: string,
  controllerAddress: string,
): Step {
  const line = forcedCommandLine(group, publicKeyLine, controllerAddress);
  const tag = agentKeyTag(group);
  return {
    label: `authorize group ${group}'s agent key (forced command) on this host`,
    script: [
      "set -e",
      `f=${shQuote(authorizedKeysFile)}; tag=${shQuote(tag)}; line=${shQuote(line)}`,
      'mkdir -p "$(dirname "$f")"',
      '[ -f "$f" ] || { : > "$f"; chmod 0600 "$f"; }',
      'grep -qxF -- "$line" "$f" && exit 0',
      't=$(mktemp "$f.kvmlab-tmp.XXXXXX")',
      `trap 'rm -f "$t"' EXIT`,
      // Tagged lines end with " <tag>": drop the old one, add the new one. Any failure stops
      // here (set -e) before the file is replaced; the count proves nothing else was lost.
      'keep=$(awk -v tag="$tag" \'$NF != tag\' "$f" | wc -l)',
      'awk -v tag="$tag" \'$NF != tag\' "$f" > "$t"',
      'printf "%s\\n" "$line" >> "$t"',
      '[ "$(wc -l < "$t")" -eq $((keep + 1)) ] || { echo "authorized_keys rewrite came out short; $f left as it was" >&2; exit 1; }',
      'chmod --reference="$f" "$t"; chown --reference="$f" "$t"',
      'mv -f "$t" "$f"',
    ].join("\n"),
  };
}

/** Member host: remove the key line, the member command and list (idempotent). */
export function unauthorizeAgentStep(authorizedKeysFile: string, group: string, keepDir: boolean): Step {
  const d = shQuote(dirOf(group));
  return {
    label: `remove group ${group}'s agent key and member command from this host`,
    script: [
      "set -e",
      // "" = no key line to remove here (a controller that holds no member).
      `f=${shQuote(authorizedKeysFile === "" ? "/nonexistent/kvmlab-no-key-file" : authorizedKeysFile)}; tag=${shQuote(agentKeyTag(group))}`,
      'if [ -f "$f" ] && awk -v tag="$tag" \'$NF == tag {found=1} END {exit !found}\' "$f"; then',
      '  t=$(mktemp "$f.kvmlab-tmp.XXXXXX")',
      `  trap 'rm -f "$t"' EXIT`,
      '  keep=$(awk -v tag="$tag" \'$NF != tag\' "$f" | wc -l)',
      '  awk -v tag="$tag" \'$NF != tag\' "$f" > "$t"',
      '  [ "$(wc -l < "$t")" -eq "$keep" ] || { echo "authorized_keys rewrite came out short; $f left as it was" >&2; exit 1; }',
      '  chmod --reference="$f" "$t"; chown --reference="$f" "$t"; mv -f "$t" "$f"',
      "fi",
      `rm -f ${d}/member.sh ${d}/members ${d}/stack`,
      keepDir ? ":" : `rmdir ${d} 2>/dev/null || true`,
    ].join("\n"),
  };
}

/**
 * Controller: the pid of a live agent of this group, else nothing (used by start/stop/read).
 * Only what the agent recorded under its single-instance lock counts (review R5): the pid in
 * `agent.pid` must still be the process that started at the time in `agent.start` (field 22 of
 * /proc/PID/stat, as the agent's `start_time` writes it) and run in the group's folder. Never a
 * command-line match: another process whose argv names agent.sh (an admin's `less`, `sh -x`) is
 * not the agent. An agent without `agent.start` (from before it was recorded) is not found.
 */
function livePidScript(group: string): string {
  const d = dirOf(group);
  return [
    `d=${shQuote(d)}`,
    'pid=$(cat "$d/agent.pid" 2>/dev/null || true)',
    'case "$pid" in ""|*[!0-9]*) pid="" ;; esac',
    'started=$(cat "$d/agent.start" 2>/dev/null || true)',
    // The pid must still be this group's agent (pids are reused): same start time, same folder.
    'if [ -n "$pid" ] && ! { [ -n "$started" ] && [ "$(sed \'s/^.*) //\' "/proc/$pid/stat" 2>/dev/null | awk \'{print $20}\')" = "$started" ] && [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$(readlink -f "$d")" ]; }; then pid=""; fi',
  ].join("\n");
}

/**
 * Controller: stop the agent, bounded; idempotent. The agent found by {@link livePidScript}
 * (pid + start time) gets TERM, then KILL while it is still that process (pid + start time
 * checked again); its process group too (its `sleep` children) only when it leads that group
 * (setsid made it so), never a group it merely belongs to or a reused pid's group. Its in-flight
 * `timeout ssh` calls are not in that group (GNU timeout makes its own, review A3): each ends by
 * itself within 65 s, holding the group lock until then (under systemd-run the unit's
 * control-group kill ends them too).
 */
export function stopAgentStep(group: string): Step {
  const unit = `kvmlab-asg-${group}`;
  return {
    label: `stop group ${group}'s agent`,
    script: [
      livePidScript(group),
      `if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then systemctl stop ${shQuote(unit)} >/dev/null 2>&1 || true; fi`,
      'if [ -n "$pid" ]; then',
      "  pg=$(sed 's/^.*) //' \"/proc/$pid/stat\" 2>/dev/null | awk '{print $3}')",
      '  if [ "$pg" = "$pid" ]; then tgt="-$pid"; else tgt=$pid; fi',
      '  kill -TERM -- "$tgt" 2>/dev/null || true',
      "  i=0",
      '  while [ $i -lt 50 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; i=$((i+1)); done',
      // KILL only what is still the agent (review L4): its pid may have been reused once it
      // exited. Its group (leftover sleep/ssh children) only when it led it and is gone: a group
      // whose leader's pid is free again is still the agent's (pids are not reused while a group
      // of that id has members); a live non-agent process at that pid leads a group of its own.
      '  if kill -0 "$pid" 2>/dev/null && [ "$(sed \'s/^.*) //\' "/proc/$pid/stat" 2>/dev/null | awk \'{print $20}\')" = "$started" ]; then',
      '    kill -KILL -- "$tgt" 2>/dev/null || true',
      '  elif [ "$tgt" = "-$pid" ] && ! kill -0 "$pid" 2>/dev/null && [ -n "$(pgrep -g "$pid" 2>/dev/null)" ]; then',
      '    kill -KILL -- "$tgt" 2>/dev/null || true',
      "  fi",
      "fi",
    ].join("\n"),
  };
}

/**
 * Controller: start the agent unless it runs (restart=true: stop it first). Detached in its own
 * session (setsid); with systemd on the host, as a transient unit that restarts it.
 * Prints `pid=`.
 */
export function startAgentStep(group: string, restart: boolean): Step {
  const unit = `kvmlab-asg-${group}`;
  return {
    label: `${restart ? "restart" : "start"} group ${group}'s agent`,
    script: [
      ...(restart ? [stopAgentStep(group).script, "pid="] : []),
      livePidScript(group),
      'if [ -z "$pid" ]; then',
      '  rm -f "$d/agent.pid"',
      "  if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then",
      `    systemctl reset-failed ${shQuote(unit)} >/dev/null 2>&1 || true`,
      `    systemd-run --quiet --unit=${shQuote(unit)} --property=Restart=always --property=KillMode=control-group /bin/sh "$d/agent.sh" "$d"`,
      "  else",
      '    setsid /bin/sh "$d/agent.sh" "$d" </dev/null >>"$d/agent.out" 2>&1 &',
      "  fi",
      "  i=0",
      '  while [ $i -lt 50 ] && [ ! -s "$d/agent.pid" ]; do sleep 0.1; i=$((i+1)); done',
      '  pid=$(cat "$d/agent.pid" 2>/dev/null || true)',
      "fi",
      '[ -n "$pid" ] || { echo "the agent of this group did not start; see $d/agent.out" >&2; exit 30; }',
      'echo "pid=$pid"',
    ].join("\n"),
  };
}

/** Controller: ask the agent for this desired size (Heat: a group update with desired_capacity). */
export function desiredRequestStep(group: string, generation: number, desired: number): Step {
  if (!Number.isInteger(generation) || generation < 1 || !Number.isInteger(desired) || desired < 0)
    throw new Error(`desiredRequestStep: invalid generation ${generation} or desired ${desired}`);
  const d = shQuote(dirOf(group));
  return {
    label: `ask group ${group}'s agent for ${desired} members`,
    script: `mkdir -p ${d}/requests && echo ${generation} ${desired} > ${d}/requests/desired.tmp && mv -f ${d}/requests/desired.tmp ${d}/requests/desired`,
  };
}

/** Controller: a manual signal for a policy (`kvmlab asg signal`), stamped with its time. */
export function signalStep(group: string, policy: string): Step {
  if (!/^[a-z][a-z0-9_-]{0,30}$/.test(policy))
    throw new Error(`invalid policy name ${JSON.stringify(policy)}`);
  const d = shQuote(dirOf(group));
  return {
    label: `signal policy ${policy} of group ${group}`,
    script: [
      `[ -f ${d}/agent.conf ] || { echo "no autoscale group ${group} on this host" >&2; exit 44; }`,
      `grep -qx "POLICY_[0-9]*_NAME='${policy}'" ${d}/agent.conf || { echo "group ${group} has no policy ${policy}; its policies: $(sed -n "s/^POLICY_[0-9]*_NAME='\\(.*\\)'$/\\1/p" ${d}/agent.conf | tr '\\n' ' ')" >&2; exit 45; }`,
      `t=$(date +%s%3N); echo > ${d}/requests/signal.${policy}.$t; echo "received_ms=$t"`,
    ].join("\n"),
  };
}

/** Whether `member` is a slot of `group`: `<group>-<i>`, i below 100, as memberNames makes them. */
export function isSlotOf(group: string, member: string): boolean {
  return slotGroup(member) === group;
}

/** Exit statuses of {@link resetStep} besides the agent's own refusals (69, 70, 71, 75). */
export const RESET_NO_GROUP = 44;
export const RESET_UNOWNED = 46;
/** The installed agent.sh has no reset mode (installed by a kvmlab before `asg reset`). */
export const RESET_OLD_AGENT = 64;

/**
 * Controller: give FAILED slots back (`kvmlab asg reset`, review A4), through the group's
 * installed agent in its reset mode: under the group lock (at most 60 s), each named slot (or
 * every FAILED one) that is FAILED and whose domain its host reports off becomes stopped; the
 * agent's next evaluation starts it if the group is below min. `owner` is the group's owner
 * marker as the caller read it (`kvmlab asg` reads it with the status, review 9b G2): the step
 * acts only while the marker still names it. Refused with nothing changed: no group here (44),
 * a group folder without an owner marker (46), a marker naming another owner ({@link
 * OWNER_REFUSED}: the group was replaced since it was read), an installed agent older than the
 * reset mode (64), and the agent's refusals (69 not a slot, 70 not FAILED, 71 domain not shut
 * off or its host cannot say, 72 no domain, 75 the lock stayed held). Prints the agent's lines.
 */
export function resetStep(group: string, members: readonly string[] | "all-failed", owner: string): Step {
  const d = dirOf(group);
  if (!OWNER_RE.test(owner))
    throw new Error(`resetStep: ${JSON.stringify(owner)} is not an owner (<project>/<stack>/<Type>/<name>)`);
  const args = members === "all-failed" ? ["--all-failed"] : [...members];
  if (members !== "all-failed") {
    if (members.length === 0) throw new Error("resetStep: no member named");
    for (const m of members)
      if (!isSlotOf(group, m))
        throw new Error(`resetStep: ${JSON.stringify(m)} is not a slot of group ${group} (${group}-<i>)`);
  }
  return {
    label: `reset ${members === "all-failed" ? "every FAILED slot" : members.join(", ")} of group ${group}`,
    script: [
      `d=${shQuote(d)}; m=${shQuote(ownerMarkerPath("asg", group))}`,
      `[ -f "$d/agent.conf" ] && [ -f "$d/agent.sh" ] || { echo ${shQuote(`no autoscale group ${group} on this host`)} >&2; exit ${RESET_NO_GROUP}; }`,
      `[ -s "$m" ] || { echo ${shQuote(`autoscale group ${group} on this host has no owner marker (${ownerMarkerPath("asg", group)}), so it is nobody's to change; nothing was changed. Fix: run pulumi up for the stack that owns it (it writes the marker)`)} >&2; exit ${RESET_UNOWNED}; }`,
      // Only the owner the caller saw (a marker's text is data: shown through a strict charset).
      `o=$(head -n1 "$m"); if [ "$o" != ${shQuote(owner)} ]; then echo "autoscale group ${group} on this host belongs to $(printf %s "$o" | tr -cd 'A-Za-z0-9_.%=/-' | cut -c1-400) now, not ${owner} as read before the reset (replaced meanwhile); nothing was changed. Fix: check whose group it is (kvmlab asg status ${group}), then reset again" >&2; exit ${OWNER_REFUSED}; fi`,
      `exec /bin/sh "$d/agent.sh" "$d" reset ${args.map(shQuote).join(" ")}`,
    ].join("\n"),
  };
}

/** Controller: whether the agent runs, its status file and the last log lines. */
export function agentReadStep(group: string, logLines = 0): Step {
  return {
    label: `read group ${group}'s agent`,
    script: [
      livePidScript(group),
      '[ -d "$d" ] || { echo "present=no"; exit 0; }',
      'echo "present=$([ -f "$d/agent.conf" ] && echo yes || echo no)"',
      'echo "running=$([ -n "$pid" ] && echo yes || echo no)"',
      'echo "agentpid=$pid"',
      `echo "owner=$(head -n1 ${shQuote(ownerMarkerPath("asg", group))} 2>/dev/null)"`,
      'cat "$d/status" 2>/dev/null | sed "s/^/status./"',
      ...(logLines > 0
        ? [`tail -n ${Math.trunc(logLines)} "$d/decisions.log" 2>/dev/null | sed "s/^/log=/"`]
        : []),
    ].join("\n"),
  };
}

/** What the controller reports about the agent. */
export interface AgentState {
  present: boolean;
  running: boolean;
  pid: number;
  size: number;
  /** Members in service. */
  members: string[];
  /** Every slot: name → running | stopped | starting | failed | rolling (a launch change replaces it). */
  slots: Record<string, string>;
  /** The group's bounds as the agent last wrote them (0 when unknown). */
  min: number;
  max: number;
  cooldownEnd: number;
  avgCpu: string;
  /** The group's owner marker on that host (`<project>/<stack>/AutoscaleAgent/<name>`), "" if none. */
  owner: string;
  log: string[];
}

export function parseAgentState(stdout: string): AgentState {
  const kv = parseKeyValues(stdout);
  const slots: Record<string, string> = {};
  const log: string[] = [];
  for (const line of stdout.split("\n")) {
    if (line.startsWith("status.member=")) {
      const [name, state] = line.slice("status.member=".length).split(" ");
      if (name) slots[name] = state ?? "";
    } else if (line.startsWith("log=")) log.push(line.slice(4));
  }
  const num = (k: string): number => {
    const v = Number(kv.get(k) ?? "0");
    return Number.isFinite(v) ? v : 0;
  };
  return {
    present: kv.get("present") === "yes",
    running: kv.get("running") === "yes",
    pid: num("agentpid"),
    size: num("status.size"),
    members: Object.entries(slots)
      .filter(([, s]) => s === "running")
      .map(([n]) => n),
    slots,
    min: num("status.min"),
    max: num("status.max"),
    cooldownEnd: num("status.cooldown_end"),
    avgCpu: kv.get("status.avg_cpu") ?? "",
    owner: kv.get("owner") ?? "",
    log,
  };
}

/** Controller: remove the folder (after the agent stopped). */
export function removeAgentDirStep(group: string): Step {
  const d = shQuote(dirOf(group));
  return { label: `remove group ${group}'s agent files`, script: `rm -rf ${d}` };
}

/** Controller: known_hosts for the agent's SSH (the member hosts' keys, read over pinned connections). */
export function knownHostsContent(
  entries: readonly { address: string; port: number; keys: readonly string[] }[],
): string {
  const lines: string[] = [];
  for (const e of entries) {
    if (!/^[A-Za-z0-9.:-]+$/.test(e.address))
      throw new Error(`invalid host address ${JSON.stringify(e.address)}`);
    const h = e.port === 22 ? e.address : `[${e.address}]:${e.port}`;
    for (const k of e.keys) {
      if (!/^[a-z0-9@.-]+ [A-Za-z0-9+/]+=*$/.test(k)) continue;
      lines.push(`${h} ${k}`);
    }
  }
  return lines.length > 0 ? `${lines.join("\n")}\n` : "";
}

/** The `<pulumi project>/<stack>` the member command lets the agent act for (a `stack` file beside it). */
export function memberStackContent(owner: string): string {
  const stack = ownerStack(owner);
  if (stack.startsWith("kvmlab-direct/") || !/^[A-Za-z0-9._%@:-]+\/[A-Za-z0-9._%@:-]+$/.test(stack))
    throw new Error(
      `AutoscaleAgent owner ${JSON.stringify(owner)}: an autoscale agent drives servers only for a Pulumi program's stack (owner <project>/<stack>/…), never for a raw provider call; create it with the AutoscaleGroup component`,
    );
  return `${stack}\n`;
}

/**
 * Member host: the server `name` must carry an owner marker of this stack (it must EXIST: an
 * unmarked domain is nobody's to start or stop). Refuses with OWNER_REFUSED, naming the fix.
 */
export function memberOwnedStep(group: string, name: string, owner: string): Step {
  return stackOwnedStep(group, owner, "server", name, `remove ${name} from membersByHost`);
}

/**
 * Controller: the load balancer whose haproxy socket the agent drives must carry an owner
 * marker of this stack (the agent sets its servers ready, drain and maint).
 */
export function poolOwnedStep(group: string, lbName: string, owner: string): Step {
  return stackOwnedStep(group, owner, "lb", lbName, "point the group at a load balancer of this stack");
}

function stackOwnedStep(group: string, owner: string, kind: string, name: string, fix: string): Step {
  const stack = memberStackContent(owner).trim();
  const f = ownerMarkerPath(kind, name);
  const what = kind === "lb" ? `load balancer ${name}` : `server ${name}`;
  return {
    label: `check that ${what} is this stack's`,
    script: [
      `f=${shQuote(f)}`,
      `if [ ! -f "$f" ]; then echo ${shQuote(`autoscale group ${group}: ${what} has no owner marker on this host, so it is nobody's to drive. Fix: create it first (the AutoscaleGroup component does), or ${fix}`)} >&2; exit ${OWNER_REFUSED}; fi`,
      'cur=$(head -n1 "$f")',
      `case "$cur" in ${shQuote(stack)}/*) echo mine; exit 0 ;; esac`,
      `echo ${shQuote(`autoscale group ${group}: ${what} belongs to `)}"$cur"${shQuote(`, not to stack ${stack}. Fix: ${fix}`)} >&2`,
      `exit ${OWNER_REFUSED}`,
    ].join("\n"),
  };
}

/**
 * The authorized keys files to remove a group's key line from on one host (pure): the file sshd
 * reads now (`sshd -T`, "" when it could not be read) and the file the line was written to (the
 * state records it; absent in a state from before it was recorded). Neither known: a clear
 * refusal, never a guess (a guessed /root/.ssh/authorized_keys could leave the real line).
 */
export function revocationFiles(
  host: string,
  user: string,
  group: string,
  sshdFile: string,
  recordedFile: string | undefined,
): string[] {
  const files = [...new Set([sshdFile, recordedFile ?? ""].filter((f) => f.startsWith("/")))];
  if (files.length === 0)
    throw new Error(
      `host ${host}: cannot tell which authorized_keys file holds autoscale group ${group}'s agent key: \`sshd -T\` could not be read there as ${user} and the state records no file (written before kvmlab recorded it), so nothing was removed. Fix: make \`sshd -T -C user=${user}\` work on ${host}, or delete the line ending in ${agentKeyTag(group)} from ${host}'s authorized keys file by hand, then run the operation again`,
    );
  return files;
}

/** The load balancer a group's agent drives, as agent.conf names it (LB_SOCKET, LB_BACKEND); undefined without a pool. */
export function agentPool(agentConfig: string): { socket: string; backend: string } | undefined {
  const socket = /^LB_SOCKET='(\/var\/lib\/kvmlab\/lb\/[A-Za-z0-9_-]+\/haproxy\.sock)'$/m.exec(
    agentConfig,
  )?.[1];
  const backend = /^LB_BACKEND='([A-Za-z0-9._-]{1,64}:[A-Za-z0-9._-]{1,64})'$/m.exec(agentConfig)?.[1];
  return socket !== undefined && backend !== undefined ? { socket, backend } : undefined;
}

function checkedSlots(group: string, members: readonly string[]): void {
  for (const m of members)
    if (!isSlotOf(group, m) || !MEMBER_NAME_RE.test(m))
      throw new Error(`autoscale steps: ${JSON.stringify(m)} is not a slot of group ${group} (${group}-<i>)`);
}

/** What {@link markCreateStartsStep} prints when the group's state/ already holds something. */
export const CREATE_STARTS_NOT_FRESH = "fresh=no";

/**
 * Controller, under the group lock (issue 13, session 12): the create of a FRESH group (its
 * `state/` empty) marks the members it is about to start `starting`, exactly as the agent's
 * set_mstate writes it ("starting 0"), with a `state/<m>.create` beside it (the agent's start-up
 * logs them as started at create), and puts each in `maint` in the pool (as start_members does).
 * A folder whose `state/` holds anything is not fresh: nothing is marked, prints `fresh=no`.
 * Prints `fresh=yes` after marking.
 */
export function markCreateStartsStep(
  group: string,
  members: readonly string[],
  pool: { socket: string; backend: string } | undefined,
): Step {
  checkedSlots(group, members);
  const d = shQuote(dirOf(group));
  return {
    label: `mark ${members.join(", ") || "no member"} of group ${group} starting (the group's first start)`,
    script: [
      `cd ${d} && [ -d state ] || { echo "the folder of group ${group} has no state/" >&2; exit 1; }`,
      `if [ -n "$(ls -A state)" ]; then echo ${CREATE_STARTS_NOT_FRESH}; exit 0; fi`,
      ...members.flatMap((m) => [
        // The create mark says `unknown` until the record step says the start answered (review 12d
        // N2): a provider that dies in between leaves an outcome nobody knows.
        `printf 'starting 0\\n' > state/${m}.tmp && mv -f state/${m}.tmp state/${m} && printf 'unknown\\n' > state/${m}.create`,
        ...(pool
          ? [
              `echo ${shQuote(`set server ${pool.backend}/${m} state maint`)} | timeout 5 socat -t 2 stdio ${shQuote(`unix-connect:${pool.socket}`)} >/dev/null 2>&1 || true`,
            ]
          : []),
      ]),
      "echo fresh=yes",
    ].join("\n"),
  };
}

/**
 * Member host: start one member through the group's member command itself (its allow-list and
 * owner check, as the agent's forced command runs it). SSH_ORIGINAL_COMMAND is cleared so the
 * command reads its arguments.
 */
export function memberCommandStep(group: string, verb: "start" | "stop", member: string): Step {
  checkedSlots(group, [member]);
  return {
    label: `${verb} member ${member} of group ${group}`,
    script: `env -u SSH_ORIGINAL_COMMAND /bin/sh ${shQuote(`${dirOf(group)}/member.sh`)} ${verb} ${shQuote(member)}`,
  };
}

/**
 * Member host: the member command's `stats` (every slot of the group on this host: "name state
 * cpu", a slot not defined here absent), read by a fresh group's create before it marks anything:
 * a slot that runs or is paused means the members are not off (a replaced agent: the Servers kept
 * running), and the create starts nothing.
 */
export function memberStatsStep(group: string): Step {
  return {
    label: `read the members of group ${group} on this host`,
    script: `env -u SSH_ORIGINAL_COMMAND /bin/sh ${shQuote(`${dirOf(group)}/member.sh`)} stats`,
  };
}

/** The slots a `stats` answer reports running or paused (anything else: off). */
export function liveSlots(stats: string): string[] {
  return stats
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 2 && (f[1] === "running" || f[1] === "paused"))
    .map((f) => f[0]);
}

/**
 * Controller, under the group lock: a fresh group's create that starts no member because a slot
 * already runs or is paused (`live`: a replaced agent, the Servers kept running) or a member host
 * did not answer (`silent`) logs it in decisions.log, in the agent's format (review 12c N2):
 * `event=create-starts result=skipped reason=members-live members=web-0,web-1 note=the-agent-decides
 * cause=create`, or `reason=host-silent silent_hosts=hv2` (`silent_hosts=` added to the first
 * when both). Names are checked: slots of the group,
 * host names of kvmlab's rule.
 */
export function createStartsSkippedStep(
  group: string,
  found: { live: readonly string[]; silent: readonly string[] },
): Step {
  checkedSlots(group, found.live);
  for (const h of found.silent)
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(h)) throw new Error(`invalid host name ${JSON.stringify(h)}`);
  const why = [
    found.live.length > 0 ? `reason=members-live members=${found.live.join(",")}` : "reason=host-silent",
    ...(found.silent.length > 0 ? [`silent_hosts=${found.silent.join(",")}`] : []),
  ].join(" ");
  return {
    label: `log that group ${group}'s create starts no member (${found.live.length > 0 ? "members already live" : "a member host silent"})`,
    script: `cd ${shQuote(dirOf(group))} && echo "ts=$(date +%s%3N) event=create-starts result=skipped ${why} note=the-agent-decides cause=create" >> decisions.log`,
  };
}

/** One member start of a create: its host, and ok or why it failed (an exit status, or "host"). */
export interface CreateStart {
  member: string;
  host: string;
  ok: boolean;
  /** The member command's exit status; undefined when the host call itself failed. */
  rc?: number;
}

/**
 * Controller, still under the group lock: a member whose member command answered non-zero goes
 * back to `stopped` (one whose host call failed stays `starting`, outcome unknown)
 * (the agent's keep_bounds/program_desired start another), and every start is logged in
 * decisions.log as the agent's start_members logs it, with `cause=create`.
 */
export function createStartsDoneStep(group: string, starts: readonly CreateStart[], startMs: number): Step {
  checkedSlots(
    group,
    starts.map((s) => s.member),
  );
  if (!Number.isInteger(startMs) || startMs < 0)
    throw new Error(`createStartsDoneStep: invalid start_ms ${startMs}`);
  const d = shQuote(dirOf(group));
  const lines = starts.flatMap((s) => {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(s.host))
      throw new Error(`invalid host name ${JSON.stringify(s.host)}`);
    if (s.ok)
      return [
        `printf 'started\\n' > state/${s.member}.create`,
        `echo "ts=$(date +%s%3N) event=action action=start member=${s.member} host=${s.host} start_ms=${startMs} cause=create" >> decisions.log`,
      ];
    // The host call itself failed (a step timeout, a dropped connection): its `virsh start` may
    // still have run, so the slot stays `starting` with its `.create` mark (review 12a S2), the
    // agent's dead_starts case: running -> health wait; host silent -> still `starting`,
    // counted; off -> FAILED, not stopped (review 12c N6: the start may still be on its way and
    // boot the guest later; a FAILED slot found running is powered off at every evaluation, a
    // stopped one would run untracked). `stopped` is trusted without a check, so only a member
    // command that answered non-zero goes back to it.
    if (s.rc === undefined)
      return [
        `printf 'unknown\\n' > state/${s.member}.create`,
        `echo "ts=$(date +%s%3N) event=action action=start member=${s.member} host=${s.host} result=unknown reason=host-call-failed state=starting cause=create" >> decisions.log`,
      ];
    const why = `reason=start-command-failed rc=${Math.trunc(s.rc)}`;
    return [
      `printf 'stopped 0\\n' > state/${s.member}.tmp && mv -f state/${s.member}.tmp state/${s.member} && rm -f state/${s.member}.create`,
      `echo "ts=$(date +%s%3N) event=action action=start member=${s.member} host=${s.host} result=failed ${why} state=stopped cause=create" >> decisions.log`,
    ];
  });
  return {
    label: `record the first start of group ${group}`,
    script: [`cd ${d}`, ...lines].join(" &&\n"),
  };
}
