/**
 * `kvmlab sandbox up|status|down`: N local "KVM hosts" in Linux namespaces, each with its own
 * libvirtd, Open vSwitch and sshd, on three shared fabrics (management, external, tunnel), plus an
 * "internet" namespace and a guest test image. See docs/sandbox.md.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs, UsageError } from "../args";
import { SandboxError, run } from "./exec";
import {
  HOST_DAEMONS,
  buildFabric,
  buildHostNetwork,
  buildInternet,
  ensureKey,
  prepareHostDirs,
  probeQemu,
  saveCapsCache,
  startHost,
  waitForSsh,
} from "./host";
import { ensureGuestImage } from "./image";
import { MAX_HOSTS, SandboxPlan, checkHostCount, planSandbox } from "./plan";
import { preflight } from "./preflight";
import {
  SandboxState,
  findIndex,
  pidAlive,
  readState,
  reserveIndex,
  withInstanceLock,
  writeJsonAtomic,
} from "./state";
import {
  SANDBOX_RUN_ROOT,
  SandboxHost,
  SandboxStatus,
  checkInstanceName,
  defaultInstance,
  readSandboxStatus,
} from "./status";
import { teardown } from "./teardown";

export { readSandboxStatus, sandboxStatusPath } from "./status";
export type { SandboxHost, SandboxStatus } from "./status";

const USAGE = `usage: kvmlab sandbox <up|status|down> [options]

  up       build the hosts hv1..hvN (idempotent: a second "up" changes nothing)
  status   show the hosts, addresses and image; exits 1 when the sandbox is not up
  down     remove everything "up" made (safe to run twice)

options:
  --instance NAME   sandbox instance (default: $KVMLAB_SANDBOX_INSTANCE or "default");
                    instances have their own namespaces, links and address ranges
  --hosts N         number of hosts for "up" (default 2, at most ${MAX_HOSTS})
  --json            machine-readable output only (status: the published status.json)

See docs/sandbox.md.`;

interface Options {
  action: "up" | "status" | "down";
  instance: string;
  hosts: number;
  hostsGiven: boolean;
  json: boolean;
}

function parseOptions(argv: string[]): Options | "help" {
  const parsed = parseArgs(argv, {
    valued: ["instance", "hosts"],
    flags: ["json"],
    words: ["up", "status", "down"],
  });
  if (parsed.help) return "help";
  const [action, second] = parsed.positional as Options["action"][];
  if (second !== undefined) throw new UsageError(`give one action, not "${action}" and "${second}"`);
  if (action === undefined) throw new UsageError("give an action: up, status or down");
  const instance = (parsed.options.get("instance") as string | undefined) ?? defaultInstance();
  const hostsText = parsed.options.get("hosts") as string | undefined;
  if (hostsText !== undefined && !/^\d+$/.test(hostsText))
    throw new UsageError(
      `invalid --hosts ${JSON.stringify(hostsText)}: give a whole number from 1 to ${MAX_HOSTS}`,
    );
  const hosts = hostsText === undefined ? 2 : Number(hostsText);
  try {
    checkInstanceName(instance);
    checkHostCount(hosts);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  return { action, instance, hosts, hostsGiven: hostsText !== undefined, json: parsed.options.has("json") };
}

export async function main(argv: string[]): Promise<number> {
  let opts: Options | "help";
  try {
    opts = parseOptions(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`kvmlab sandbox: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    throw err;
  }
  if (opts === "help") {
    console.log(USAGE);
    return 0;
  }
  try {
    switch (opts.action) {
      case "up":
        return await up(opts);
      case "status":
        return status(opts);
      case "down":
        return await down(opts);
    }
  } catch (err) {
    if (err instanceof SandboxError) {
      console.error(`kvmlab sandbox: ${err.message}`);
      return 1;
    }
    throw err;
  }
}

/**
 * The command to run again as root. It names the instance explicitly: sudo drops
 * $KVMLAB_SANDBOX_INSTANCE, so the same command under sudo would act on "default".
 */
function sudoLine(opts: Options): string {
  const args = [`sudo npx kvmlab sandbox ${opts.action}`];
  if (opts.instance !== "default") args.push(`--instance ${opts.instance}`);
  if (opts.hostsGiven) args.push(`--hosts ${opts.hosts}`);
  if (opts.json) args.push("--json");
  return args.join(" ");
}

function runDirOf(instance: string): string {
  return path.join(SANDBOX_RUN_ROOT, instance);
}

function secs(since: number): string {
  return `${((Date.now() - since) / 1000).toFixed(2)} s`;
}

/** Problems with a published instance: missing namespaces or daemons that no longer run. */
function healthProblems(st: SandboxStatus, state: SandboxState | undefined): string[] {
  const problems: string[] = [];
  for (const h of st.hosts) {
    if (!fs.existsSync(path.join("/run/netns", h.netns)))
      problems.push(`${h.name}: namespace ${h.netns} is gone`);
    for (const [daemon, pid] of Object.entries(h.daemons)) {
      if (!pidAlive(pid)) problems.push(`${h.name}: ${daemon} (pid ${pid}) is not running`);
    }
  }
  for (const [what, pid] of Object.entries(state?.pids ?? {})) {
    if (!pidAlive(pid)) problems.push(`${what} (pid ${pid}) is not running`);
  }
  return problems;
}

async function up(opts: Options): Promise<number> {
  const t0 = Date.now();
  const say = (line: string) => {
    if (!opts.json) console.log(`kvmlab sandbox: ${line}`);
  };
  await preflight(sudoLine(opts));
  return withInstanceLock(opts.instance, async () => {
    const runDir = runDirOf(opts.instance);
    const statePath = path.join(runDir, "state.json");
    const existing = readState(statePath);
    const published = readSandboxStatus(opts.instance);
    if (existing?.phase === "up" && published !== undefined) {
      const problems = healthProblems(published, existing);
      if (problems.length > 0) {
        throw new SandboxError(
          `instance "${opts.instance}" is up but broken (${problems.join("; ")}); rebuild it with: kvmlab sandbox down --instance ${opts.instance} && kvmlab sandbox up --instance ${opts.instance}`,
        );
      }
      if (opts.hostsGiven && published.hosts.length !== opts.hosts) {
        throw new SandboxError(
          `instance "${opts.instance}" is already up with ${published.hosts.length} hosts, not ${opts.hosts}; to change it run: kvmlab sandbox down --instance ${opts.instance}, then up again`,
        );
      }
      if (opts.json) console.log(JSON.stringify(published, null, 2));
      else
        say(`instance "${opts.instance}" is already up (${published.hosts.length} hosts); nothing changed`);
      return 0;
    }
    if (existing !== undefined || fs.existsSync(runDir)) {
      // Left half-built by an `up` that was killed, or its daemons are gone (e.g. after a reboot
      // with a persistent /run): remove it before building again.
      const index = existing?.index ?? findIndex(opts.instance);
      const t = Date.now();
      const problems = await teardown(
        planSandbox(opts.instance, index ?? 0, existing?.hostCount ?? MAX_HOSTS),
        index !== undefined,
      );
      if (problems.length > 0)
        throw new SandboxError(`could not clean up a half-built instance: ${problems.join("; ")}`);
      say(`removed a stale or half-built instance "${opts.instance}" (${secs(t)})`);
    }

    fs.mkdirSync(runDir, { recursive: true, mode: 0o755 });
    const index = await reserveIndex(opts.instance);
    const plan = planSandbox(opts.instance, index, opts.hosts);
    const state: SandboxState = {
      instance: plan.instance,
      index,
      hostCount: opts.hosts,
      phase: "building",
      pids: {},
      startedAt: new Date().toISOString(),
    };
    writeJsonAtomic(plan.statePath, state);

    let interrupted: NodeJS.Signals | undefined;
    const onSignal = (sig: NodeJS.Signals) => {
      interrupted = sig;
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    try {
      const st = await build(plan, state, say, () => interrupted);
      writeJsonAtomic(plan.statusPath, st);
      state.phase = "up";
      writeJsonAtomic(plan.statePath, state);
      if (opts.json) console.log(JSON.stringify(st, null, 2));
      else {
        say(`instance "${plan.instance}" is up: ${plan.hosts.length} hosts in ${secs(t0)}`);
        printStatus(st, []);
      }
      return 0;
    } catch (err) {
      if (process.env.KVMLAB_SANDBOX_KEEP_FAILED === "1") {
        say(
          `left the half-built instance for inspection (KVMLAB_SANDBOX_KEEP_FAILED=1); remove it with: kvmlab sandbox down --instance ${plan.instance}`,
        );
        throw err;
      }
      const t = Date.now();
      const problems = await teardown(plan, true);
      say(
        problems.length === 0
          ? `rolled back: nothing of instance "${plan.instance}" is left (${secs(t)})`
          : `rollback incomplete: ${problems.join("; ")}`,
      );
      throw err;
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  });
}

async function build(
  plan: SandboxPlan,
  state: SandboxState,
  say: (line: string) => void,
  interrupted: () => NodeJS.Signals | undefined,
): Promise<SandboxStatus> {
  const failAt = process.env.KVMLAB_SANDBOX_FAIL_AT;
  const step = async <T>(label: string, fn: () => Promise<T> | T, detail?: (v: T) => string): Promise<T> => {
    const sig = interrupted();
    if (sig !== undefined) throw new SandboxError(`interrupted by ${sig}`);
    const t = Date.now();
    const v = await fn();
    say(`${label}${detail ? `: ${detail(v)}` : ""} (${secs(t)})`);
    // Fault injection for the rollback test: fail right after the named step.
    if (failAt === label) throw new SandboxError(`failing after step "${label}" (KVMLAB_SANDBOX_FAIL_AT)`);
    return v;
  };

  const image = await step(
    "guest image",
    () => ensureGuestImage(plan.cacheDir, say),
    (img) => `${img.built ? "built" : "cached"}, linux ${img.kernelVersion}`,
  );
  await step(
    "keys",
    async () => {
      await ensureKey(plan.privateKeyPath, `kvmlab-sandbox-${plan.instance}`);
      for (const h of plan.hosts) await ensureKey(h.hostKeyPath, `${h.name}.kvmlab-sandbox-${plan.instance}`);
    },
    () => `lab key ${plan.privateKeyPath}, a host key per host`,
  );
  const pub = (file: string) =>
    fs.readFileSync(`${file}.pub`, "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
  const hostKeys = new Map(plan.hosts.map((h) => [h.name, pub(h.hostKeyPath)]));
  const knownHosts =
    plan.hosts.map((h) => `${h.name},${h.mgmtAddress} ${hostKeys.get(h.name)}`).join("\n") + "\n";

  await step(
    "fabric",
    async () => {
      // A private mount for the namespace files (bind mounts of mount namespaces must not propagate).
      fs.mkdirSync(plan.nsDir, { recursive: true });
      await run("mount", ["--bind", plan.nsDir, plan.nsDir]);
      await run("mount", ["--make-private", plan.nsDir]);
      fs.mkdirSync(plan.logDir, { recursive: true });
      await buildFabric(plan);
    },
    () =>
      `bridges mgmt, ext, tun in ${plan.fabricNetns}; this machine ${plan.rootLinks.mgmt} ${plan.mgmt.runnerAddress}, ${plan.rootLinks.ext} ${plan.external.runnerAddress}`,
  );
  state.pids["internet httpd"] = await step(
    "internet",
    () => buildInternet(plan),
    () => `${plan.internetNetns} at ${plan.external.gateway}, HTTP on port 80`,
  );
  writeJsonAtomic(plan.statePath, state);

  const capsCacheDir = path.join(plan.cacheDir, "qemu-caps");
  const capsWereCached =
    fs.existsSync(capsCacheDir) && fs.readdirSync(capsCacheDir).some((f) => f.endsWith(".xml"));
  const files = {
    authorizedKey: fs.readFileSync(`${plan.privateKeyPath}.pub`, "utf8"),
    labPrivateKey: fs.readFileSync(plan.privateKeyPath, "utf8"),
    knownHosts,
    capsCacheDir,
  };
  const daemons = new Map<string, Record<string, number>>();
  let kvm = false;
  for (const [n, h] of plan.hosts.entries()) {
    await step(`${h.name}: network`, () => buildHostNetwork(plan, h));
    prepareHostDirs(plan, h, files);
    const pids = await step(
      `${h.name}: daemons`,
      () => startHost(h),
      (p) => HOST_DAEMONS.map((d) => `${d} ${p[d]}`).join(", "),
    );
    daemons.set(h.name, pids);
    if (n === 0) {
      kvm = await step(
        `${h.name}: QEMU capabilities`,
        async () => {
          const k = await probeQemu(h);
          if (!capsWereCached) saveCapsCache(h, capsCacheDir);
          return k;
        },
        (k) =>
          `${capsWereCached ? "cached" : "probed and cached"}, ${k ? "KVM available" : "no KVM: guests use TCG (type='qemu')"}`,
      );
    }
  }
  await step(
    "ssh",
    async () => {
      await Promise.all(plan.hosts.map((h) => waitForSsh(h.mgmtAddress)));
    },
    () => `every host answers on port 22`,
  );

  fs.writeFileSync(plan.knownHostsPath, knownHosts, { mode: 0o644 });
  const hosts: SandboxHost[] = plan.hosts.map((h) => ({
    name: h.name,
    address: h.mgmtAddress,
    port: 22,
    user: "root",
    privateKeyPath: plan.privateKeyPath,
    knownHostsPath: plan.knownHostsPath,
    hostKey: hostKeys.get(h.name)!,
    uplink: "eth1",
    tunnelInterface: "eth2",
    tunnelAddress: h.tunnelAddress,
    daemons: daemons.get(h.name)!,
    netns: h.netns,
  }));
  return {
    instance: plan.instance,
    index: plan.index,
    hosts,
    management: {
      cidr: plan.mgmt.cidr,
      runnerAddress: plan.mgmt.runnerAddress,
      runnerInterface: plan.rootLinks.mgmt,
    },
    tunnel: { cidr: plan.tunnel.cidr },
    external: {
      cidr: plan.external.cidr,
      gateway: plan.external.gateway,
      runnerAddress: plan.external.runnerAddress,
      runnerInterface: plan.rootLinks.ext,
      allocationPool: { start: plan.external.poolStart, end: plan.external.poolEnd },
      internetNetns: plan.internetNetns,
    },
    fabricNetns: plan.fabricNetns,
    image: {
      kernel: image.kernel,
      kernelCompressed: image.kernelCompressed,
      ramdisk: image.ramdisk,
      kernelVersion: image.kernelVersion,
      cmdline: image.cmdline,
    },
    kvm,
    createdAt: new Date().toISOString(),
  };
}

function printStatus(st: SandboxStatus, problems: string[]): void {
  const rows = [
    ["HOST", "ADDRESS", "TUNNEL", "UPLINK", "DAEMONS"],
    ...st.hosts.map((h) => [
      h.name,
      `${h.address}:${h.port}`,
      `${h.tunnelInterface} ${h.tunnelAddress}`,
      h.uplink,
      problems.some((p) => p.startsWith(`${h.name}:`)) ? "PROBLEM" : "running",
    ]),
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) console.log(`  ${r.map((cell, c) => cell.padEnd(widths[c])).join("  ")}`.trimEnd());
  const h1 = st.hosts[0];
  console.log("");
  console.log(`  management  ${st.management.cidr}, this machine ${st.management.runnerAddress}`);
  console.log(
    `  external    ${st.external.cidr}, gateway ${st.external.gateway} (the "internet" namespace), ` +
      `this machine ${st.external.runnerAddress}, free for labs ${st.external.allocationPool.start}-${st.external.allocationPool.end.split(".").pop()}`,
  );
  console.log(`  tunnel      ${st.tunnel.cidr} (MTU 9000)`);
  console.log(`  image       kernel ${st.image.kernel}`);
  console.log(`              ramdisk ${st.image.ramdisk}`);
  console.log(`  guests      ${st.kvm ? "KVM available" : "no KVM: use <domain type='qemu'> (TCG)"}`);
  if (h1 !== undefined) {
    console.log(
      `  ssh         ssh -i ${h1.privateKeyPath} -o UserKnownHostsFile=${h1.knownHostsPath} -o StrictHostKeyChecking=yes ${h1.user}@${h1.address}`,
    );
  }
  for (const p of problems) console.log(`  problem     ${p}`);
}

function status(opts: Options): number {
  const st = readSandboxStatus(opts.instance);
  const state = readState(path.join(runDirOf(opts.instance), "state.json"));
  if (st === undefined || state?.phase !== "up") {
    if (opts.json) console.log(JSON.stringify({ instance: opts.instance, up: false }));
    else
      console.error(
        `kvmlab sandbox: instance "${opts.instance}" is not up; start it with: kvmlab sandbox up --instance ${opts.instance}`,
      );
    return 1;
  }
  const problems = healthProblems(st, state);
  if (opts.json) {
    if (problems.length > 0)
      console.error(`kvmlab sandbox: instance "${opts.instance}" is broken: ${problems.join("; ")}`);
    console.log(JSON.stringify(st, null, 2));
  } else {
    console.log(
      `sandbox "${st.instance}" is ${problems.length === 0 ? "up" : "BROKEN"}: ${st.hosts.length} hosts (index ${st.index}, since ${st.createdAt})`,
    );
    printStatus(st, problems);
  }
  return problems.length === 0 ? 0 : 1;
}

async function down(opts: Options): Promise<number> {
  const t0 = Date.now();
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    throw new SandboxError(`must run as root; run: ${sudoLine(opts)}`);
  }
  return withInstanceLock(opts.instance, async () => {
    const runDir = runDirOf(opts.instance);
    const state = readState(path.join(runDir, "state.json"));
    const index = state?.index ?? findIndex(opts.instance);
    const leftovers = fs.existsSync("/run/netns")
      ? fs.readdirSync("/run/netns").filter((n) => n.startsWith(`kvmlab-${opts.instance}-`))
      : [];
    if (state === undefined && index === undefined && !fs.existsSync(runDir) && leftovers.length === 0) {
      if (opts.json) console.log(JSON.stringify({ instance: opts.instance, wasUp: false }));
      else console.log(`kvmlab sandbox: instance "${opts.instance}" is not up; nothing to do`);
      return 0;
    }
    const plan = planSandbox(opts.instance, index ?? 0, state?.hostCount ?? MAX_HOSTS);
    const problems = await teardown(plan, index !== undefined);
    if (problems.length > 0) throw new SandboxError(`down left something behind: ${problems.join("; ")}`);
    if (opts.json)
      console.log(
        JSON.stringify({ instance: opts.instance, wasUp: true, seconds: (Date.now() - t0) / 1000 }),
      );
    else console.log(`kvmlab sandbox: instance "${opts.instance}" is down; everything removed (${secs(t0)})`);
    return 0;
  });
}
