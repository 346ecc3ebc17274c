/**
 * examples/autoscale through the engine harness on a sandbox instance of its own ("lc-asg", or
 * $KVMLAB_LC_ASG_INSTANCE): a group min 1 / max 3 behind a load balancer with a floating IP,
 * short policy windows (20 s) and cooldowns (30 s), TCG guests. Scale-out alarm at 30 % (a
 * burning TCG guest on a busy 2-core runner measured 42-44 %), scale-in below 15 % (idle: 0-6 %).
 *
 *   up              every slot web-0..2 is defined; the agent brings web-0 into service
 *   up (no change)  nothing changes: every resource "same", the agent's size left alone
 *   load + burn     a bounded load generator (from the sandbox's internet namespace through the
 *                   floating IP) runs the whole time; CPU burnt in every member in service
 *                   (GET /cgi-bin/burn) makes the group scale out to 3; when the burn stops it
 *                   scales in to 1, oldest first; the load generator saw 0 failed requests and
 *                   every member answered it
 *   timeline        every decision of the agent's log is printed with its inputs; no action
 *                   happened inside a cooldown
 *   forced command  the agent's key runs the member command and nothing else (no other
 *                   command, no other member, no pty, no port forwarding)
 *   kill the agent  refresh reports it gone; the next up starts it again; a second agent
 *                   started by hand exits at once (logged)
 *   launch change   (after the scale-in, load generator still running) a new kernel command line
 *                   for every slot: each slot rolled out and back in, one at a time, highest
 *                   first, a spare standing in for the running member; never below min in
 *                   service; every domain has the new XML; a no-change up afterwards is all "same"
 *   replace change  (load generator still running) new user data for every slot: each slot's
 *                   Server is REPLACED (deleted, created anew), rolled the same way: one slot
 *                   out at a time, never below min in service, no member lost, 0 failed requests
 *   asg reset       (review A4) a stopped slot marked FAILED by hand, as the agent marks one:
 *                   `kvmlab asg status` names it with its reset command; `kvmlab asg reset` refuses
 *                   the member in service (not FAILED) and gives the FAILED one back (stopped,
 *                   logged), through the agent's reset mode on the controller
 *   destroy         no member domain, agent process, key line, folder, owner marker or
 *                   load balancer namespace is left on any host
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type RunResult } from "../harness/engine/engine";
import {
  sshCheck,
  sshExec,
  startSandbox,
  stopSandbox,
  waitFor,
  type SandboxStatus,
} from "../support/sandbox";
import { loadBalancerPaths } from "../../core/paths";

const INSTANCE = process.env.KVMLAB_LC_ASG_INSTANCE ?? "lc-asg";
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "examples", "autoscale");
const DIR = "/var/lib/kvmlab/asg/web";
const COOLDOWN = 30;
let status: SandboxStatus;
let stateDir = "";
let destroyed = false;
let loadgen: ChildProcess | undefined;

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-asg-"));
});

after(async () => {
  if (loadgen?.pid !== undefined && loadgen.exitCode === null) loadgen.kill("SIGTERM");
  if (!destroyed && stateDir) await run("destroy").catch(() => undefined);
  await stopSandbox(INSTANCE);
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

let launchTag = "";
let launchUserData = "";
function run(operation: "up" | "refresh" | "destroy"): Promise<RunResult> {
  const cfg = (k: string, v: string) => ({ key: `autoscale:${k}`, value: v, secret: false });
  return runEngine({
    operation,
    programDir: PROGRAM,
    stack: "dev",
    stateFile: path.join(stateDir, "state.json"),
    config: [
      { key: "kvmlab:sandboxInstance", value: INSTANCE, secret: false },
      cfg("periodSec", "20"),
      cfg("cooldown", String(COOLDOWN)),
      cfg("interval", "5"),
      cfg("outThreshold", "30"),
      cfg("inThreshold", "15"),
      ...(launchTag ? [cfg("launchTag", launchTag)] : []),
      ...(launchUserData ? [cfg("launchUserData", launchUserData)] : []),
    ],
    // The Server provider's per-operation timings (how long each slot's create took).
    env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true", KVMLAB_METRICS_FILE: path.join(stateDir, "metrics.jsonl") },
  });
}

function ok(r: RunResult): RunResult {
  assert.ok(r.ok, `${r.operation} failed:\n${r.errors.join("\n")}`);
  return r;
}

/** The agent resource's outputs as the state file holds them. */
function agentState(): {
  realized: { agentRunning: boolean; currentSize: number; members: string[] };
  agentPid: number;
} {
  const s = JSON.parse(fs.readFileSync(path.join(stateDir, "state.json"), "utf8")) as {
    resources: { urn: string; outputs: Record<string, unknown> }[];
  };
  const r = s.resources.find((x) => x.urn.endsWith("kvmlab:AutoscaleAgent::web-agent"));
  assert.ok(r, "the state holds the AutoscaleAgent");
  return r.outputs as never;
}

/** Every slot domain on every host, "name uuid", sorted. */
async function domainUuids(): Promise<string[]> {
  const all: string[] = [];
  for (const h of status.hosts) {
    const out = await sshCheck(
      status,
      h.name,
      "for d in $(virsh list --all --name | grep '^web-'); do echo \"$d $(virsh domuuid $d)\"; done",
      { timeoutMs: 30_000 },
    );
    all.push(
      ...out
        .split("\n")
        .filter((l) => /^web-\d+ /.test(l.trim()))
        .map((l) => l.trim()),
    );
  }
  return all.sort();
}

interface Status {
  size: number;
  slots: Record<string, string>;
  pid: number;
}

async function agentStatus(host: string): Promise<Status> {
  const text = await sshCheck(status, host, `cat ${DIR}/status 2>/dev/null || true`, { timeoutMs: 30_000 });
  const slots: Record<string, string> = {};
  let size = -1;
  let pid = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("size=")) size = Number(line.slice(5));
    if (line.startsWith("pid=")) pid = Number(line.slice(4));
    if (line.startsWith("member=")) {
      const [n, st] = line.slice(7).split(" ");
      slots[n] = st;
    }
  }
  return { size, slots, pid };
}

function inService(s: Status): string[] {
  return Object.entries(s.slots)
    .filter(([, st]) => st === "running")
    .map(([n]) => n);
}

let lastProgress = 0;
function waitSize(
  host: string,
  size: number,
  timeoutMs: number,
  also?: () => Promise<void>,
): Promise<Status> {
  return waitFor(
    `group size ${size}`,
    async () => {
      if (also) await also();
      const s = await agentStatus(host);
      if (Date.now() - lastProgress > 30_000) {
        lastProgress = Date.now();
        const tail = await sshExec(status, host, `tail -n 3 ${DIR}/decisions.log 2>/dev/null`);
        console.log(
          `# waiting for size ${size}: ${JSON.stringify(s)}\n#   ${tail.stdout.trim().split("\n").join("\n#   ")}`,
        );
      }
      return s.size === size ? s : undefined;
    },
    { timeoutMs, intervalMs: 3000 },
  );
}

/** One parsed line of decisions.log. */
type Entry = Record<string, string> & { ts: string; event: string };
function parseLog(text: string): Entry[] {
  return text
    .split("\n")
    .filter((l) => l.startsWith("ts="))
    .map((l) => {
      const e: Record<string, string> = {};
      for (const w of l.split(" ")) {
        const i = w.indexOf("=");
        if (i > 0) e[w.slice(0, i)] = w.slice(i + 1);
      }
      return e as Entry;
    });
}

test(
  "autoscale: CPU scales the group out to 3 and back to 1 behind the load balancer with no failed request",
  { timeout: 1_800_000 },
  async () => {
    try {
      await scenario();
    } catch (err) {
      await diagnose();
      throw err;
    }
  },
);

/** On failure: what the agent and the hosts say (the after hook destroys everything). */
async function diagnose(): Promise<void> {
  for (const h of status.hosts) {
    const r = await sshExec(
      status,
      h.name,
      [
        `for f in status decisions.log agent.out agent.err stats.tmp agent.conf known_hosts members; do [ -f ${DIR}/$f ] && { echo "--- $f"; tail -n 60 ${DIR}/$f; }; done`,
        "echo '--- authorized_keys'; grep -h kvmlab-asg /etc/ssh/lab_authorized_keys ~/.ssh/authorized_keys 2>/dev/null | cut -c1-120",
        "echo '--- domains'; virsh -c qemu:///system list --all",
        `for d in web-0 web-1 web-2; do f=$(virsh -c qemu:///system dumpxml $d 2>/dev/null | sed -n "s:.*<log file='\\([^']*\\)'.*:\\1:p" | head -n1); [ -f "$f" ] && { echo "--- $d serial"; tail -n 15 "$f"; }; done`,
        `echo '--- agent process'; grep -l "asg/web/agent[.]sh" /proc/[0-9]*/cmdline 2>/dev/null`,
      ].join("; "),
      { timeoutMs: 60_000 },
    ).catch((e: unknown) => ({ code: -1, stdout: "", stderr: String(e) }));
    console.log(`# ==== ${h.name} (exit ${r.code})\n${r.stdout}\n${r.stderr}`.replace(/\n/g, "\n# "));
  }
}

async function scenario(): Promise<void> {
  {
    const up = ok(await run("up"));
    // What the roll chain costs at create: the slots' Server creates run one after another
    // (each waits for the roll steps of the slot before it). Parallel, they would take at least
    // the longest one; chained, their sum.
    const creates = fs
      .readFileSync(path.join(stateDir, "metrics.jsonl"), "utf8")
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as { op: string; server: string; totalMs: number })
      .filter((m) => m.op === "create");
    const sum = creates.reduce((a, m) => a + m.totalMs, 0);
    const longest = Math.max(...creates.map((m) => m.totalMs));
    console.log(
      `# first up ${(up.durationMs / 1000).toFixed(1)} s; slot creates ${creates.map((m) => `${m.server} ${(m.totalMs / 1000).toFixed(1)} s`).join(", ")}: chained ${(sum / 1000).toFixed(1)} s vs the longest ${(longest / 1000).toFixed(1)} s (the chain costs at most ${((sum - longest) / 1000).toFixed(1)} s)`,
    );
    const fip = up.outputs.floatingIp as string;
    const agentHost = up.outputs.agentHost as string;
    const lbHost = up.outputs.lbHost as string;
    const ips = up.outputs.memberIps as string[];
    assert.equal(agentHost, lbHost, "the agent runs beside the load balancer");
    assert.equal(ips.length, 3, "every slot has an address reserved");
    const first = await waitSize(agentHost, 1, 360_000);
    assert.deepEqual(inService(first), ["web-0"]);
    // Every slot is defined; only web-0 runs.
    for (const h of status.hosts) {
      const defined = await sshCheck(status, h.name, "virsh list --all --name | grep '^web-' || true");
      const running = await sshCheck(status, h.name, "virsh list --name | grep '^web-' || true");
      console.log(
        `# ${h.name}: defined [${defined.trim().split("\n").join(" ")}] running [${running.trim().split("\n").join(" ")}]`,
      );
    }

    // A no-change up runs nothing: every step "same", the size stays.
    const again = ok(await run("up"));
    const changed = again.steps.filter((s) => s.op !== "same").map((s) => `${s.op} ${s.urn}`);
    assert.deepEqual(changed, [], "a no-change up changes nothing");
    console.log(`# no-change up ${(again.durationMs / 1000).toFixed(1)} s`);

    // The forced-command key runs the member command and nothing else.
    const other = status.hosts.find((h) => h.name !== agentHost) ?? status.hosts[0];
    const key = `ssh -n -i ${DIR}/agent_key -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile=${DIR}/known_hosts -o StrictHostKeyChecking=yes -o LogLevel=ERROR ${other.user}@${other.address}`;
    const stats = await sshExec(status, agentHost, `${key} stats`);
    assert.equal(stats.code, 0, `stats through the key works: ${stats.stderr}`);
    assert.match(stats.stdout, /^web-\d /m);
    for (const cmd of [
      "id",
      "cat /etc/shadow",
      "start web-1; id",
      "start web-1 && id",
      "start $(id)",
      "stop other-vm",
      "sh -c id",
      "",
    ]) {
      const r = await sshExec(status, agentHost, `${key} '${cmd}'`);
      assert.equal(r.code, 64, `"${cmd}" is refused (exit ${r.code}, ${r.stdout}${r.stderr})`);
      assert.doesNotMatch(r.stdout, /uid=/);
    }
    const pty = await sshExec(status, agentHost, `${key.replace("ssh -n", "ssh -tt")} stats </dev/null`);
    assert.match(pty.stderr, /PTY allocation request failed/i, "no pty");
    const fwd = await sshExec(
      status,
      agentHost,
      `${key.replace("ssh -n", "ssh -o ExitOnForwardFailure=yes -N -R 127.0.0.1:15999:127.0.0.1:22")}`,
      { timeoutMs: 30_000 },
    );
    assert.notEqual(fwd.code, 0, `remote port forwarding is refused: ${fwd.stderr}`);
    // from=: the key works only from the controller's address (the stats call above came from
    // it). From a second address of the controller, added to its management interface for this
    // one call, the same key to the same host is refused.
    const self = status.hosts.find((h) => h.name === agentHost) ?? status.hosts[0];
    const alt = self.address.replace(/\.\d+$/, ".211");
    const fromAlt = await sshExec(
      status,
      agentHost,
      [
        `dev=$(ip -4 -o addr show | awk -v a=${self.address} '{split($4, x, "/")} x[1] == a {print $2; exit}')`,
        `ip addr add ${alt}/32 dev "$dev" || exit 90`,
        `${key.replace("ssh -n", `ssh -n -b ${alt}`)} stats; r=$?`,
        `ip addr del ${alt}/32 dev "$dev"`,
        "exit $r",
      ].join("\n"),
      { timeoutMs: 30_000 },
    );
    assert.notEqual(fromAlt.code, 0, `the key is refused from another source address (${alt})`);
    assert.notEqual(fromAlt.code, 90, `could not add ${alt}: ${fromAlt.stderr}`);
    assert.match(fromAlt.stderr, /Permission denied/, `refused by from=, not unreachable: ${fromAlt.stderr}`);

    // The agent killed by hand: refresh reports it gone, the next up starts it again.
    const prior = await agentStatus(agentHost);
    await sshCheck(status, agentHost, `kill -KILL -- -${prior.pid}`);
    ok(await run("refresh"));
    assert.equal(agentState().realized.agentRunning, false, "refresh reports the agent gone");
    assert.equal(agentState().realized.currentSize, 1, "refresh reports the current size");
    const back = ok(await run("up"));
    assert.ok(back.steps.some((s) => s.op === "update" && s.urn.endsWith("AutoscaleAgent::web-agent")));
    const restarted = await waitFor(
      "the agent back",
      async () => {
        const s = await agentStatus(agentHost);
        return s.pid !== prior.pid && s.pid > 0 ? s : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 2000 },
    );
    assert.equal(restarted.size, 1, "the restarted agent keeps the running member");
    assert.equal(agentState().realized.agentRunning, true);
    // A second agent started by hand while this one runs exits at once, logged.
    const second = await sshExec(status, agentHost, `timeout 20 /bin/sh ${DIR}/agent.sh ${DIR}`, {
      timeoutMs: 30_000,
    });
    assert.equal(second.code, 3, `a second agent exits (exit ${second.code}: ${second.stderr})`);
    assert.match(second.stderr, new RegExp(`already runs \\(pid ${restarted.pid}\\)`));
    const exitLine = await sshCheck(
      status,
      agentHost,
      `grep 'event=agent-exit' ${DIR}/decisions.log | tail -n1`,
    );
    assert.match(exitLine, new RegExp(`reason=another-agent-runs .*other=${restarted.pid}`));
    assert.equal((await agentStatus(agentHost)).pid, restarted.pid, "the running agent is untouched");

    // Bounded load generator through the floating IP: at most 6000 requests / 1200 s, one at a time.
    const script = [
      "n=0; fail=0",
      'while [ $n -lt 6000 ] && [ ! -e "$STOP" ]; do',
      "  n=$((n+1))",
      '  if out=$(timeout 5 busybox wget -qO- http://$FIP/ 2>/dev/null); then echo "ok $out"; else echo "FAIL $n $(date +%s)"; fi',
      "  sleep 0.2",
      "done",
    ].join("\n");
    const stopFile = path.join(stateDir, "stop-load");
    const loadOut: string[] = [];
    loadgen = spawn(
      "timeout",
      ["1200", "ip", "netns", "exec", status.external.internetNetns, "sh", "-c", script],
      { env: { ...process.env, FIP: fip, STOP: stopFile }, stdio: ["ignore", "pipe", "inherit"] },
    );
    let buf = "";
    loadgen.stdout?.on("data", (b: Buffer) => {
      buf += b.toString("utf8");
      const lines = buf.split("\n");
      buf = lines.pop() ?? "";
      loadOut.push(...lines);
    });
    const loadDone = new Promise<void>((r) => loadgen?.on("exit", () => r()));

    // Burn CPU in every member in service (from the load balancer's namespace), until 3.
    const ns = loadBalancerPaths("web-lb").namespace;
    let lastBurn = 0;
    let burnSeen = false;
    const burn = async (arg: string, every = 15_000): Promise<void> => {
      if (Date.now() - lastBurn < every) return;
      lastBurn = Date.now();
      const s = await agentStatus(agentHost);
      for (const m of inService(s)) {
        const ip = ips[Number(m.split("-")[1])];
        const r = await sshExec(
          status,
          lbHost,
          `ip netns exec ${ns} timeout 5 busybox wget -qO- 'http://${ip}/cgi-bin/burn?${arg}'`,
          { timeoutMs: 20_000 },
        );
        if (arg.startsWith("seconds") && !burnSeen) {
          assert.match(r.stdout, /^burning/, `${m} burns CPU on request (guest image with /cgi-bin/burn)`);
          burnSeen = true;
        }
      }
    };
    const burnStart = Date.now();
    const three = await waitSize(agentHost, 3, 600_000, () => burn("seconds=40"));
    console.log(
      `# scaled out to 3 in ${((Date.now() - burnStart) / 1000).toFixed(0)} s: ${inService(three).join(" ")}`,
    );
    await burn("stop", 0);
    const stopAt = Date.now();
    const one = await waitSize(agentHost, 1, 420_000, () => burn("stop"));
    console.log(
      `# scaled in to 1 in ${((Date.now() - stopAt) / 1000).toFixed(0)} s: ${inService(one).join(" ")}`,
    );
    // Oldest first: web-0 entered service first, then web-1, so web-2 stays.
    assert.deepEqual(inService(one), ["web-2"], "scale-in removed the oldest members first");

    // A launch change (a new kernel command line for every slot) while the load generator runs:
    // rolled one slot at a time (web-2, web-1, web-0), web-2 stood in for by a spare.
    const rollFrom = Date.now();
    launchTag = "r2";
    const rolled = ok(await run("up"));
    const rollSeconds = (Date.now() - rollFrom) / 1000;
    const rollSteps = rolled.steps
      .filter((x) => x.op !== "same")
      .map((x) => `${x.op} ${x.urn.split("::").pop()}`);
    console.log(
      `# launch change: up took ${rollSeconds.toFixed(1)} s (engine ${(rolled.durationMs / 1000).toFixed(1)} s); steps: ${rollSteps.join(", ")}`,
    );
    for (const i of [0, 1, 2])
      for (const want of [`update web-${i}-roll-out`, `update web-${i}`, `update web-${i}-roll-in`])
        assert.ok(rollSteps.includes(want), `${want} (got ${rollSteps.join(", ")})`);
    assert.equal(rollSteps.length, 9, "only the slots' servers and their roll steps changed");
    for (const h of status.hosts) {
      const xml = await sshCheck(
        status,
        h.name,
        "for d in $(virsh list --all --name | grep '^web-'); do echo \"$d $(virsh dumpxml $d | grep -c 'lab.rev=r2')\"; done",
      );
      for (const line of xml
        .trim()
        .split("\n")
        .filter((l) => l !== ""))
        assert.match(line, / 1$/, `${h.name}: ${line}: the domain has the new command line`);
    }
    const afterRoll = await agentStatus(agentHost);
    assert.deepEqual(inService(afterRoll), ["web-2"], "the group is back to its size and members");
    const noop = ok(await run("up"));
    assert.deepEqual(
      noop.steps.filter((x) => x.op !== "same").map((x) => `${x.op} ${x.urn}`),
      [],
      "a no-change up after the launch change changes nothing",
    );
    console.log(`# no-change up after the launch change ${(noop.durationMs / 1000).toFixed(1)} s`);

    // A launch change that REPLACES the slots' Servers (new user data: a new seed), still with
    // the load generator running: the same roll steps around each Server's replacement.
    const uuidsBefore = await domainUuids();
    const replaceFrom = Date.now();
    launchUserData = "u2";
    const replaced = ok(await run("up"));
    const replaceSteps = replaced.steps
      .filter((x) => x.op !== "same")
      .map((x) => `${x.op} ${x.urn.split("::").pop()}`);
    console.log(
      `# replace launch change: up took ${((Date.now() - replaceFrom) / 1000).toFixed(1)} s (engine ${(replaced.durationMs / 1000).toFixed(1)} s); steps: ${replaceSteps.join(", ")}`,
    );
    for (const i of [0, 1, 2])
      for (const want of [`update web-${i}-roll-out`, `replace web-${i}`, `update web-${i}-roll-in`])
        assert.ok(replaceSteps.includes(want), `${want} (got ${replaceSteps.join(", ")})`);
    for (const i of [0, 1, 2]) {
      const r = replaced.steps.find((x) => x.op === "replace" && x.urn.endsWith(`::web-${i}`));
      assert.ok(r?.replaceKeys?.includes("cloudInit"), `web-${i} is replaced for its user data`);
    }
    // Each slot comes back on its fixed address (the agent's health check and the pool use it).
    assert.deepEqual(replaced.outputs.memberIps, ips, "every replaced slot has its address back");
    // Each slot is the same domain identity again (name, UUID derived from them), defined anew.
    assert.deepEqual(await domainUuids(), uuidsBefore, "every slot is back, same UUIDs");
    const afterReplace = await agentStatus(agentHost);
    assert.deepEqual(inService(afterReplace), ["web-2"], "the group is back to its size and members");
    const noop2 = ok(await run("up"));
    assert.deepEqual(
      noop2.steps.filter((x) => x.op !== "same").map((x) => `${x.op} ${x.urn}`),
      [],
      "a no-change up after the replace launch change changes nothing",
    );
    await new Promise((r) => setTimeout(r, 5000));
    fs.writeFileSync(stopFile, "");
    await Promise.race([loadDone, new Promise((r) => setTimeout(r, 30_000))]);

    const failed = loadOut.filter((l) => l.startsWith("FAIL"));
    const served = new Map<string, number>();
    for (const l of loadOut.filter((x) => x.startsWith("ok ")))
      served.set(l.slice(3), (served.get(l.slice(3)) ?? 0) + 1);
    console.log(
      `# load generator: ${loadOut.length} requests, ${failed.length} failed; answers: ${JSON.stringify(Object.fromEntries(served))}`,
    );
    assert.deepEqual(
      failed,
      [],
      "no request failed during scale-out, scale-in and the two launch changes (update and replace)",
    );
    for (const m of ["web-0", "web-1", "web-2"])
      assert.ok((served.get(`hello from ${m}`) ?? 0) > 0, `${m} received traffic`);

    // The timeline: every decision with its inputs; nothing acted inside a cooldown.
    const log = parseLog(await sshCheck(status, agentHost, `cat ${DIR}/decisions.log`));
    const t0 = Number(log[0].ts);
    console.log("# timeline (s since the agent started; every line of decisions.log):");
    for (const e of log) {
      const rest = Object.entries(e)
        .filter(([k]) => k !== "ts")
        .map(([k, v]) => `${k}=${v}`)
        .join(" ");
      console.log(`#   +${((Number(e.ts) - t0) / 1000).toFixed(1).padStart(7)}  ${rest}`);
    }
    let cooldownEnd = 0;
    let outs = 0;
    let ins = 0;
    for (const e of log) {
      if (e.event === "decision" && e.policy !== undefined) {
        assert.ok(
          Math.floor(Number(e.ts) / 1000) >= cooldownEnd,
          `decision at ${e.ts} is inside the cooldown ending ${cooldownEnd}`,
        );
        if (e.policy === "scale_out") outs++;
        if (e.policy === "scale_in") ins++;
      }
      // No start, stop, drain or in-service either while a cooldown runs (Heat: nothing acts);
      // a rolling replacement (cause=roll) is `pulumi up`'s, not a scaling.
      if (e.event === "action" && e.cause !== "roll")
        assert.ok(
          Math.floor(Number(e.ts) / 1000) >= cooldownEnd,
          `action ${e.action} ${e.member} at ${e.ts} is inside the cooldown ending ${cooldownEnd}`,
        );
      if (e.event === "scaled") cooldownEnd = Number(e.cooldown_end);
    }
    assert.ok(outs >= 2 && ins >= 2, `two scale-out and two scale-in decisions (got ${outs} and ${ins})`);
    const stops = log.filter((e) => e.event === "action" && e.action === "stop").map((e) => e.member);
    assert.deepEqual(stops.slice(0, 2), ["web-0", "web-1"], "oldest first");
    const drains = log.filter((e) => e.event === "action" && e.action === "drain").map((e) => e.member);
    assert.deepEqual(drains.slice(0, 2), ["web-0", "web-1"], "each member drained before it stopped");

    // The rolling replacement's timeline: one slot out at a time, never below min (1) in service.
    const rollStart = log.findIndex((e) => e.event.startsWith("roll-"));
    assert.ok(rollStart >= 0, "the launch change rolled");
    let serving = 1; // web-2 alone, as the scale-in left it
    let out = 0;
    // Per roll (the in-place one, then the replacing one): roll-out -> roll-in seconds per slot.
    const perSlot: Record<string, number>[] = [];
    const outAt: Record<string, number> = {};
    for (const e of log.slice(rollStart)) {
      if (e.event === "action" && e.action === "in-service") serving++;
      if (e.event === "action" && e.action === "drain") serving--;
      if (e.event === "roll-out" && e.note === undefined) {
        out++;
        outAt[e.member] = Number(e.ts);
      }
      if (e.event === "roll-in") {
        out--;
        if (e.member === "web-2") perSlot.push({});
        perSlot[perSlot.length - 1][e.member] = (Number(e.ts) - outAt[e.member]) / 1000;
      }
      assert.ok(out <= 1, `two slots out at once at ${e.ts}`);
      assert.ok(serving >= 1, `fewer than min in service at ${e.ts}`);
      assert.notEqual(
        e.event,
        "member-lost",
        `the agent lost a member during the roll: ${JSON.stringify(e)}`,
      );
    }
    assert.equal(out, 0, "every slot rolled back in");
    assert.deepEqual(
      log.filter((e) => e.event === "roll-out").map((e) => e.member),
      ["web-2", "web-1", "web-0", "web-2", "web-1", "web-0"],
      "highest slot first, in both launch changes",
    );
    console.log(
      `# roll-out -> roll-in per slot (s), in-place change then replace change: ${JSON.stringify(perSlot)}`,
    );

    // kvmlab asg reset (review A4), through the CLI as a user runs it: a stopped slot marked
    // FAILED (under the group lock, as the agent marks one whose boot failed; its domain is off).
    const beforeReset = await agentStatus(agentHost);
    const inServiceNow = inService(beforeReset);
    const spare = Object.keys(beforeReset.slots).find((n) => beforeReset.slots[n] === "stopped");
    assert.ok(
      inServiceNow.length > 0 && spare !== undefined,
      `a member in service and a stopped slot: ${JSON.stringify(beforeReset)}`,
    );
    await sshCheck(
      status,
      agentHost,
      `flock ${DIR}/group.lock sh -c 'echo "failed 1" > ${DIR}/state/${spare}'`,
    );
    // The agent's next evaluation writes it into the status file `kvmlab asg status` reads.
    await waitFor(
      `${spare} FAILED in the agent's status`,
      async () => ((await agentStatus(agentHost)).slots[spare] === "failed" ? true : undefined),
      { timeoutMs: 60_000, intervalMs: 1000 },
    );
    const asg = (...args: string[]): { code: number | null; out: string; err: string } => {
      const cli = path.resolve(__dirname, "..", "..", "cli", "index.js");
      const r = spawnSync(process.execPath, [cli, "asg", ...args, "--sandbox", INSTANCE], {
        encoding: "utf8",
        timeout: 240_000,
      });
      return { code: r.status, out: r.stdout, err: r.stderr };
    };
    const shown = asg("status", "web");
    assert.equal(shown.code, 0, shown.err);
    assert.ok(
      shown.out.includes(`kvmlab asg reset web ${spare} --sandbox ${INSTANCE}`),
      `status names the reset command: ${shown.out}`,
    );
    const refused = asg("reset", "web", inServiceNow[0]);
    assert.equal(refused.code, 1, refused.out);
    assert.match(refused.err, new RegExp(`${inServiceNow[0]} is not FAILED: it is in service`));
    const reset = asg("reset", "web", spare);
    assert.equal(reset.code, 0, `${reset.out}\n${reset.err}`);
    assert.match(
      reset.out,
      new RegExp(`reset ${spare} \\(host hv\\d, domain shut-off\\): FAILED -> stopped`),
    );
    assert.match(reset.out, /next: \d+ in service \(min 1, max 3\)/);
    console.log(`# asg reset: ${reset.out.trim().split("\n").join(" | ")}`);
    assert.equal((await agentStatus(agentHost)).slots[spare], "stopped");
    const resets = parseLog(await sshCheck(status, agentHost, `cat ${DIR}/decisions.log`)).filter(
      (e) => e.event === "reset",
    );
    assert.deepEqual(
      resets.map((e) => `${e.member} ${e.was}`),
      [`${spare} failed`],
      "the reset is logged once; the refusal is not",
    );

    // Destroy leaves nothing of the group on any host.
    const gone = ok(await run("destroy"));
    destroyed = true;
    // The roll chain orders deletes too: the slots' Servers are deleted one after another.
    const deletes = fs
      .readFileSync(path.join(stateDir, "metrics.jsonl"), "utf8")
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as { op: string; server: string; totalMs: number })
      .filter((m) => m.op === "delete")
      // The destroy's own (the replace launch change deleted each slot's old Server before).
      .slice(-3);
    console.log(
      `# destroy ${(gone.durationMs / 1000).toFixed(1)} s; slot deletes ${deletes.map((m) => `${m.server} ${(m.totalMs / 1000).toFixed(1)} s`).join(", ")}`,
    );
    for (const h of status.hosts) {
      const left = await sshCheck(
        status,
        h.name,
        [
          "virsh list --all --name | grep -c '^web-' || true",
          "ls /var/lib/kvmlab/asg 2>/dev/null | wc -l",
          "cat /etc/ssh/lab_authorized_keys ~/.ssh/authorized_keys 2>/dev/null | grep -c kvmlab-asg || true",
          "grep -l 'asg/web/agent[.]sh' /proc/[0-9]*/cmdline 2>/dev/null | wc -l",
          "ls /var/lib/kvmlab/owners/asg 2>/dev/null | wc -l",
          "ip netns list | grep -c qlbaas || true",
        ].join("; "),
        { timeoutMs: 30_000 },
      );
      assert.equal(left.trim().split(/\s+/).join(" "), "0 0 0 0 0 0", `${h.name}: nothing of the group left`);
    }
  }
}
