/**
 * `npm run bench:three-tier`: the whole `up` of examples/three-tier (6 guests: 2 web, 2 WAS, DB,
 * bastion, their networks, router, security groups, load balancers and floating IPs) against the
 * guest-boot limit measured in the same run on the same sandbox ("bench-three", or
 * $KVMLAB_BENCH_INSTANCE): the same number of guests of the same image and size, defined and
 * started directly with virsh (3 per host, in parallel), timed until each answers HTTP /health.
 * The web and WAS tiers are autoscale groups whose agents start their members after `up` has
 * created them, so the figure compared is `up` until both web and both WAS members serve through
 * the web floating IP (requests from the sandbox's internet namespace, bounded); `up` alone is
 * printed beside it. Prints both, and the ratio (goal: within 1.1×). Figures, not assertions.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type StepEvent } from "../harness/engine/engine";
import { sshCheck, startSandbox, stopSandbox, testGuestXml, type SandboxStatus } from "../support/sandbox";
import { pathsThroughWeb, plain } from "../support/threeTier";

const INSTANCE = process.env.KVMLAB_BENCH_INSTANCE ?? "bench-three";
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "examples", "three-tier");
const REPO = path.resolve(__dirname, "..", "..", "..");
const PER_HOST = 3;

function uuid(h: number, i: number): string {
  return `6b0b3e1e-0000-4000-8000-0000000${h}${i}`.padEnd(36, "0").slice(0, 36);
}

/** Defines and starts PER_HOST guests on host `h` with virsh; returns when each answers /health. */
async function bootDirect(status: SandboxStatus, h: number): Promise<void> {
  const host = status.hosts[h].name;
  const names = Array.from({ length: PER_HOST }, (_, i) => `bench3t-${h}-${i}`);
  const xmls = names.map((name, i) =>
    testGuestXml(status, {
      name,
      uuid: uuid(h, i),
      bridge: "kvbench3t",
      ipCidr: `10.77.${h}.${11 + i}/24`,
      memoryMiB: 128,
    }),
  );
  const script = [
    "set -e",
    "ip link add kvbench3t type bridge 2>/dev/null || true",
    "ip link set kvbench3t up",
    `ip addr replace 10.77.${h}.1/24 dev kvbench3t`,
    ...names.map(
      (n, i) =>
        `cat > /tmp/${n}.xml <<'KVLT_EOF'\n${xmls[i]}KVLT_EOF\nvirsh -q define /tmp/${n}.xml >/dev/null && virsh -q start ${n} >/dev/null`,
    ),
    `for i in ${names.map((_, i) => 11 + i).join(" ")}; do n=0; until curl -sf -m 2 http://10.77.${h}.$i/health >/dev/null; do n=$((n+1)); [ $n -ge 600 ] && { echo "10.77.${h}.$i never answered" >&2; exit 1; }; sleep 0.2; done; done`,
  ].join("\n");
  await sshCheck(status, host, script, { timeoutMs: 300_000 });
}

async function cleanDirect(status: SandboxStatus, h: number): Promise<void> {
  const names = Array.from({ length: PER_HOST }, (_, i) => `bench3t-${h}-${i}`);
  await sshCheck(
    status,
    status.hosts[h].name,
    `${names.map((n) => `virsh -q destroy ${n} >/dev/null 2>&1; virsh -q undefine ${n} >/dev/null 2>&1; rm -f /tmp/${n}.xml`).join("; ")}; ip link del kvbench3t 2>/dev/null; true`,
    { timeoutMs: 60_000 },
  );
}

/** Milliseconds as seconds with one decimal, "—" when unknown. */
const secs = (ms: number | undefined): string => (ms === undefined ? "—" : `${(ms / 1000).toFixed(1)} s`);

/** The agents' decisions.log lines as key=value records (only lines with a group and a time). */
function agentEvents(agentLog: string): Record<string, string>[] {
  return agentLog
    .split("\n")
    .map((l): Record<string, string> => Object.fromEntries(l.split(" ").map((kv) => kv.split("=", 2))))
    .filter((e) => e.group && e.ts);
}

/**
 * A start line that started a member: one with a `result=` (failed, or unknown: the create's host
 * call failed) started nothing known (agent.sh, provider/autoscale/steps.ts).
 */
const memberStarted = (e: { action?: string; result?: string }): boolean =>
  e.action === "start" && e.result === undefined;

/**
 * What each group's members waited for, in order (ms after the up started): the program's start
 * (its first custom resource done: load, then the closure serialization of every provider type),
 * the group's slots defined, their security-group ports, its load balancer, its agent created,
 * then from the agent's own log its start, each member's start and its entry in service.
 */
export function criticalPath(
  done: readonly { type: string; name: string; ms: number }[],
  agentLog: string,
  upStart: number,
  upMs: number,
  servingMs: number,
): string {
  const s = secs;
  const dyn = done.filter((d) => d.type.startsWith("pulumi-nodejs:dynamic/"));
  const last = (pred: (d: { type: string; name: string }) => boolean) => {
    const ms = dyn.filter(pred).map((d) => d.ms);
    return ms.length === 0 ? undefined : Math.max(...ms);
  };
  const kind = (d: { type: string }) => d.type.split(":").pop() ?? "";
  const events = agentEvents(agentLog);
  const rows = [
    "\nWhat the members waited for (ms after the up started; the agents' times from their decisions.log)\n",
    "| group | slots defined | their SG ports | load balancer | agent created | agent process began | group lock held | agent started (hosts asked, ms) | members started (start commands, ms) | members in service |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const agent of dyn.filter((d) => kind(d) === "AutoscaleAgent")) {
    const app = agent.name.replace(/-agent$/, "");
    const mine = (d: { name: string }) => new RegExp(`^${app}-\\d+`).test(d.name);
    const g = events.filter((e) => app.endsWith(`-${e.group}`) || app === e.group);
    // The agent's own marks on its agent-start line (agent.sh from session 10 on; "—" before).
    const rel = (es: Record<string, string>[], k: string): string => {
      const v = es.find((e) => e.event === "agent-start")?.[k];
      return v === undefined ? "—" : `${((Number(v) - upStart) / 1000).toFixed(1)} s`;
    };
    const at = (pred: (e: Record<string, string>) => boolean) =>
      g.filter(pred).map((e) => `${((Number(e.ts) - upStart) / 1000).toFixed(1)} s`);
    rows.push(
      `| ${app} | ${s(last((d) => kind(d) === "Server" && mine(d)))} | ${s(last((d) => kind(d) === "SecurityGroupPort" && mine(d)))} | ${s(last((d) => kind(d) === "LoadBalancer" && d.name.startsWith(app)))} | ${s(agent.ms)} | ${rel(g, "began_ms")} | ${rel(g, "locked_ms")} | ${at((e) => e.event === "agent-start").join(", ") || "—"} (${g.find((e) => e.event === "agent-start")?.stats_ms ?? "—"}) | ${at(memberStarted).join(", ") || "—"} (${g.find(memberStarted)?.start_ms ?? "—"}) | ${at((e) => e.action === "in-service").join(", ") || "—"} |`,
    );
  }
  // The slot chain step by step (docs/autoscale.md, "Launch changes"): when each roll step and
  // slot Server finished, and how long after the step before it (its own time, plus the engine's
  // registration of it once the step before was done).
  rows.push("\nThe slot chain (when each step finished; + the time since the step before it)\n");
  for (const agent of dyn.filter((d) => kind(d) === "AutoscaleAgent")) {
    const app = agent.name.replace(/-agent$/, "");
    const chain = dyn
      .filter(
        (d) =>
          ["AutoscaleRoll", "Server"].includes(kind(d)) &&
          new RegExp(`^${app}-\\d+(-roll-(out|in))?$`).test(d.name),
      )
      .sort((a, b) => a.ms - b.ms);
    rows.push(
      `- ${app}: ${chain.map((d, k) => `${d.name.slice(app.length + 1)} ${s(d.ms)}${k > 0 ? ` (+${((d.ms - chain[k - 1].ms) / 1000).toFixed(1)})` : ""}`).join(" → ")}`,
    );
  }
  rows.push(
    "",
    `program start (first custom resource done): ${s(Math.min(...dyn.map((d) => d.ms)))}; up returned: ${s(upMs)}; every member served through the floating IP: ${s(servingMs)}`,
  );
  return rows.join("\n");
}

/** One resource of the up: when its registration reached the engine, when its step finished. */
export interface Timed {
  urn: string;
  type: string;
  name: string;
  /** ms after the up started: registered (its inputs resolved), done (its step finished). */
  registered: number;
  done: number | undefined;
  dependencies: readonly string[];
}

/**
 * The chain of resources that gated `end`: its dependency that finished last, then that one's,
 * and so on back to one that waited for nothing (only the program's start). Each link says when
 * it became possible (registered) and when it finished.
 */
export function gatingChain(all: ReadonlyMap<string, Timed>, end: string): Timed[] {
  const chain: Timed[] = [];
  const seen = new Set<string>();
  for (let cur = all.get(end); cur !== undefined && !seen.has(cur.urn);) {
    seen.add(cur.urn);
    chain.unshift(cur);
    let last: Timed | undefined;
    for (const d of cur.dependencies) {
      const dep = all.get(d);
      if (dep?.done !== undefined && (last?.done === undefined || dep.done > last.done)) last = dep;
    }
    cur = last;
  }
  return chain;
}

/**
 * The critical path of the up, computed from the run: for each stage the time it became possible
 * (its first resource registered: the program had resolved that resource's inputs) and finished
 * (its last resource done), then, for each group's agent, the chain of dependencies that gated it,
 * and one line of what stands between the up's start and every member serving: before the first
 * member's boot, the boot (first member started until the last in service), after it.
 */
export function criticalPathStages(
  timed: readonly Timed[],
  agentLog: string,
  upStart: number,
  servingMs: number,
): string {
  const s = secs;
  const kind = (t: Timed) =>
    t.type.startsWith("pulumi-nodejs:dynamic/") ? (t.type.split(":").pop() ?? "") : "";
  const custom = timed.filter((t) => kind(t) !== "");
  const slot = (t: Timed) => /-\d+$/.test(t.name) && kind(t) === "Server";
  const stage = (label: string, pred: (t: Timed) => boolean): string | undefined => {
    const ts = custom.filter(pred);
    if (ts.length === 0) return undefined;
    const done = ts.map((t) => t.done).filter((d): d is number => d !== undefined);
    return `| ${label} | ${ts.length} | ${s(Math.min(...ts.map((t) => t.registered)))} | ${s(done.length === ts.length ? Math.max(...done) : undefined)} |`;
  };
  const events = agentEvents(agentLog).map((e) => ({
    action: e.action,
    result: e.result,
    at: Number(e.ts) - upStart,
  }));
  const started = events.filter(memberStarted).map((e) => e.at);
  const inService = events.filter((e) => e.action === "in-service").map((e) => e.at);
  const stack = timed.find((t) => t.type === "pulumi:pulumi:Stack");
  const rows = [
    "\nThe critical path (possible: the stage's first resource registered, its inputs resolved; finished: its last resource done)\n",
    "| stage | resources | possible | finished |",
    "|---|---|---|---|",
    `| program start (Stack registered, then the first kvmlab resource) | — | ${s(stack?.registered)} | ${s(custom.length > 0 ? Math.min(...custom.map((t) => t.registered)) : undefined)} |`,
    stage("keypair, flavor", (t) => ["Keypair", "Flavor"].includes(kind(t))),
    stage("image", (t) => kind(t) === "Image"),
    stage("networks", (t) => kind(t) === "Network"),
    stage("subnets", (t) => kind(t) === "Subnet"),
    stage("security groups", (t) => kind(t) === "SecurityGroup"),
    stage("router", (t) => kind(t) === "Router"),
    stage("load balancers", (t) => kind(t) === "LoadBalancer"),
    stage("slot chain: roll steps", (t) => kind(t) === "AutoscaleRoll"),
    stage("slot chain: slot Servers", slot),
    stage("other Servers (database, bastion)", (t) => kind(t) === "Server" && !slot(t)),
    stage("security-group ports", (t) => kind(t) === "SecurityGroupPort"),
    stage("floating IPs", (t) => kind(t) === "FloatingIp"),
    stage("agents", (t) => kind(t) === "AutoscaleAgent"),
    `| members: started → in service (agents' log) | ${started.length} | ${s(started.length ? Math.min(...started) : undefined)} | ${s(inService.length ? Math.max(...inService) : undefined)} |`,
    `| every member served through the floating IP | — | — | ${s(servingMs)} |`,
  ].filter((r): r is string => r !== undefined);
  const byUrn = new Map(timed.map((t) => [t.urn, t]));
  rows.push("\nWhat gated each agent (each step: the dependency that finished last; possible → finished)\n");
  for (const agent of custom.filter((t) => kind(t) === "AutoscaleAgent")) {
    rows.push(
      `- ${gatingChain(byUrn, agent.urn)
        .reverse()
        .map((t) => `${kind(t) || t.type} ${t.name} ${s(t.registered)} → ${s(t.done)}`)
        .join(" ← ")}`,
    );
  }
  const firstSlot = custom.filter(slot).sort((a, b) => a.registered - b.registered)[0];
  const firstBoot = started.length ? Math.min(...started) : undefined;
  const lastIn = inService.length ? Math.max(...inService) : undefined;
  if (firstSlot !== undefined)
    rows.push(
      `\nbefore the first slot: ${s(firstSlot.registered)} (its Server registered; done ${s(firstSlot.done)})`,
    );
  rows.push(
    `what stands between: before the first boot: ${s(firstBoot)}; boot (first member started → last in service): ${s(firstBoot !== undefined && lastIn !== undefined ? lastIn - firstBoot : undefined)}; after (last in service → every member served): ${s(lastIn !== undefined ? servingMs - lastIn : undefined)}`,
  );
  return rows.join("\n");
}

/**
 * examples/three-tier as a user's program has it: kvmlab installed in the program's node_modules
 * (what `npm pack` ships: package.json, dist without tests and maps, the templates and stacks
 * files), everything else linked to this repository's node_modules (one copy of @pulumi/pulumi,
 * no registry needed). Each resource's provider is then serialized as a require of the installed
 * module; from the source tree the repository's node_modules/kvmlab link gives the same
 * require (provider/packaged.ts, linkedModule).
 */
export function installedProgram(dir: string): string {
  const program = path.join(dir, "three-tier");
  const nm = path.join(program, "node_modules");
  fs.mkdirSync(nm, { recursive: true });
  for (const f of ["index.ts", "Pulumi.yaml", "tsconfig.json", "package.json"])
    fs.copyFileSync(path.join(PROGRAM, f), path.join(program, f));
  const kv = path.join(nm, "kvmlab");
  fs.mkdirSync(kv);
  fs.copyFileSync(path.join(REPO, "package.json"), path.join(kv, "package.json"));
  const keep = (rel: string): boolean =>
    rel === "" ||
    (rel.startsWith("dist") && !rel.startsWith(path.join("dist", "test")) && !rel.endsWith(".map")) ||
    (rel.startsWith("templates") && (!/\.[a-z]+$/.test(rel) || /\.(hbs|sh)$/.test(rel))) ||
    (rel.startsWith("stacks") && (!/\.[a-z]+$/.test(rel) || /\.(json|yaml)$/.test(rel)));
  for (const top of ["bin", "dist", "templates", "stacks"])
    fs.cpSync(path.join(REPO, top), path.join(kv, top), {
      recursive: true,
      filter: (src) => keep(path.relative(REPO, src)) || path.relative(REPO, src).startsWith("bin"),
    });
  for (const entry of fs.readdirSync(path.join(REPO, "node_modules"))) {
    if (entry === "kvmlab" || entry === ".bin" || entry.startsWith(".")) continue;
    fs.symlinkSync(path.join(REPO, "node_modules", entry), path.join(nm, entry));
  }
  return program;
}

interface UpFigures {
  creates: number;
  upMs: number;
  servingMs: number;
  destroyMs: number;
  done: { type: string; name: string; ms: number }[];
  agentLog: string;
  upStart: number;
  timed: Timed[];
}

/** up, until every member serves through the web floating IP, the agents' log, destroy. */
async function measureUp(status: SandboxStatus, programDir: string, stateDir: string): Promise<UpFigures> {
  // When each step of the up finished (ms after the up started), for the breakdown below.
  const done: { type: string; name: string; ms: number }[] = [];
  // When each resource's registration reached the engine, and what it depends on.
  const timed = new Map<string, Timed>();
  let upStart = 0;
  const run = (operation: "up" | "destroy") =>
    runEngine({
      ...(operation === "up"
        ? {
            onRegister: (e: { urn: string; type: string; dependencies: readonly string[] }) =>
              timed.set(e.urn, {
                urn: e.urn,
                type: e.type,
                name: e.urn.split("::").pop() ?? "",
                registered: Date.now() - upStart,
                done: undefined,
                dependencies: e.dependencies,
              }),
            onStep: (e: StepEvent) => {
              const ms = Date.now() - upStart;
              done.push({ type: e.type, name: e.urn.split("::").pop() ?? "", ms });
              const t = timed.get(e.urn);
              if (t !== undefined) t.done = ms;
            },
          }
        : {}),
      operation,
      programDir,
      stack: "bench",
      stateFile: path.join(stateDir, "state.json"),
      config: [{ key: "kvmlab:sandboxInstance", value: INSTANCE, secret: false }],
      env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
    });
  upStart = Date.now();
  const up = await run("up");
  const upMs = Date.now() - upStart;
  if (!up.ok) throw new Error(`up failed:\n${up.errors.join("\n")}`);
  const seen = await pathsThroughWeb(status, plain(up.outputs.webFloatingIp) as string);
  const servingMs = Date.now() - upStart;
  if (seen.web.size < 2 || seen.was.size < 2)
    throw new Error(`not every member served: ${seen.answers.join(" | ")}`);
  // The agents' own log (same clock: the sandbox's hosts are namespaces of this machine).
  const agentLog = (
    await Promise.all(
      status.hosts.map((h) =>
        sshCheck(
          status,
          h.name,
          'for f in /var/lib/kvmlab/asg/*/decisions.log; do [ -f "$f" ] || continue; g=${f%/decisions.log}; g=${g##*/}; sed "s|^|group=$g |" "$f"; done',
          { timeoutMs: 30_000 },
        ),
      ),
    )
  ).join("\n");
  const t2 = Date.now();
  const down = await run("destroy");
  const destroyMs = Date.now() - t2;
  if (!down.ok) throw new Error(`destroy failed:\n${down.errors.join("\n")}`);
  return {
    creates: up.counts.create,
    upMs,
    servingMs,
    destroyMs,
    done,
    agentLog,
    upStart,
    timed: [...timed.values()],
  };
}

function breakdown(f: UpFigures): string {
  const s = secs;
  // Where the up's time goes: when the first and the last resource of each type finished.
  // The first step of all is the program's start (transpile, load, first registration).
  const lines = [
    "\nWhen each resource type finished during `up` (first / last, after the up started)\n",
    "| type | count | first | last |",
    "|---|---|---|---|",
  ];
  const types = new Map<string, number[]>();
  for (const d of f.done) {
    const t = d.type.replace(/^pulumi-nodejs:dynamic\//, "");
    types.set(t, [...(types.get(t) ?? []), d.ms]);
  }
  for (const [t, ms] of [...types].sort((a, b) => Math.max(...a[1]) - Math.max(...b[1])))
    lines.push(`| ${t} | ${ms.length} | ${s(Math.min(...ms))} | ${s(Math.max(...ms))} |`);
  lines.push(criticalPath(f.done, f.agentLog, f.upStart, f.upMs, f.servingMs));
  lines.push(criticalPathStages(f.timed, f.agentLog, f.upStart, f.servingMs));
  return lines.join("\n");
}

async function main(): Promise<void> {
  const status = await startSandbox(INSTANCE, 2);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-bench-three-"));
  try {
    const t0 = Date.now();
    await Promise.all(status.hosts.map((_, h) => bootDirect(status, h)));
    const limitMs = Date.now() - t0;
    await Promise.all(status.hosts.map((_, h) => cleanDirect(status, h)));

    const installed = await measureUp(status, installedProgram(stateDir), stateDir);
    const source = await measureUp(status, PROGRAM, stateDir);

    const s = secs;
    console.log(
      `\n3-tier up vs guest-boot limit (${status.hosts.length} hosts, ${PER_HOST * status.hosts.length} guests, ${os.cpus().length} CPUs)\n`,
    );
    console.log(
      "| measure | kvmlab installed in the program (a user's `npm install`) | run from the source tree (examples/three-tier) |",
    );
    console.log("|---|---|---|");
    console.log(
      `| guest-boot limit: ${PER_HOST * status.hosts.length} guests defined + started with virsh, until each answers HTTP | ${s(limitMs)} | (same) |`,
    );
    console.log(
      `| \`up\` of examples/three-tier (${installed.creates} creates, incl. program start) | ${s(installed.upMs)} | ${s(source.upMs)} |`,
    );
    console.log(
      `| \`up\` until both web and both WAS members serve through the web floating IP | ${s(installed.servingMs)} | ${s(source.servingMs)} |`,
    );
    console.log(
      `| ratio serving / limit (goal ≤ 1.1) | ${(installed.servingMs / limitMs).toFixed(2)} | ${(source.servingMs / limitMs).toFixed(2)} |`,
    );
    console.log(`| destroy | ${s(installed.destroyMs)} | ${s(source.destroyMs)} |`);
    console.log("\n## kvmlab installed in the program");
    console.log(breakdown(installed));
    console.log("\n## run from the source tree");
    console.log(breakdown(source));
  } finally {
    fs.rmSync(stateDir, { recursive: true, force: true });
    await stopSandbox(INSTANCE);
  }
}

if (require.main === module)
  main().then(
    () => process.exit(0),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
