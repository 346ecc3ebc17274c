/**
 * Provider benchmark: the same provider work done through kvmlab's host layer (one pooled SSH
 * connection and one framed shell per host, batched steps) and the naive way (a new SSH
 * connection per remote command, as @pulumi/command's remote.Command does), on two hosts of a
 * `kvmlab sandbox` instance of its own ("bench", built first and removed at the end).
 *
 *   npm run build && node dist/test/bench/providers.js [--k 5] [--instance bench] [--keep]
 *
 * Prints, per scenario and phase (create, no-change diff, refresh, delete): wall time, SSH
 * connections opened, remote steps run and round trips (batches), for both modes, and the
 * naive/kvmlab time ratio. Figures, not assertions — except that a no-change diff must open no
 * connection, which is checked.
 *
 * Scenarios are entries of SCENARIOS: add one (e.g. images) by giving it a name and the
 * create/diff/read/delete of one object `i`.
 */
import {
  closeHostSessions,
  checkNetworkInputs,
  hostPoolStats,
  networkProvider,
  resetHostPoolStats,
  runSteps,
  setHostPoolMode,
  type HostConnection,
  type HostPoolStats,
  type NetworkInputs,
  type NetworkOutputs,
} from "../../provider";
import { sandboxHostConnections, startSandbox, stopSandbox } from "../support/sandbox";

/** One object kind to benchmark: operations on object number `i`. */
export interface BenchScenario<O = unknown> {
  readonly name: string;
  create(i: number): Promise<O>;
  /** Diff against unchanged inputs; must open no connection. */
  diff(i: number, outs: O): Promise<void>;
  read(i: number, outs: O): Promise<void>;
  delete(i: number, outs: O): Promise<void>;
}

/** Scenario factories, given the sandbox hosts. Extension point: add images, flavors… here. */
export const SCENARIOS: Record<string, (hosts: HostConnection[]) => BenchScenario<never>> = {
  "network/linuxbridge": (hosts) => networkScenario(hosts, "linuxbridge") as BenchScenario<never>,
  "network/openvswitch": (hosts) => networkScenario(hosts, "openvswitch") as BenchScenario<never>,
};

function networkScenario(
  hosts: HostConnection[],
  driver: "linuxbridge" | "openvswitch",
): BenchScenario<NetworkOutputs> {
  const inputsFor = (i: number): NetworkInputs => {
    const { inputs, failures } = checkNetworkInputs({
      networkName: `bench-${driver.slice(0, 3)}-${i}`,
      kind: "selfservice",
      driver,
      hosts,
    });
    if (failures.length > 0) throw new Error(failures.map((f) => f.reason).join("; "));
    return inputs as unknown as NetworkInputs;
  };
  return {
    name: `selfservice networks (${driver})`,
    async create(i) {
      return (await networkProvider.create!(inputsFor(i))).outs as NetworkOutputs;
    },
    async diff(i, outs) {
      const d = await networkProvider.diff!(outs.networkName, outs, inputsFor(i));
      if (d.changes) throw new Error(`no-change diff of ${outs.networkName} reports changes`);
    },
    async read(_i, outs) {
      await networkProvider.read!(outs.networkName, outs);
    },
    async delete(_i, outs) {
      await networkProvider.delete!(outs.networkName, outs);
    },
  };
}

interface PhaseResult {
  ms: number;
  stats: HostPoolStats;
}

async function measure(fn: () => Promise<void>): Promise<PhaseResult> {
  const before = hostPoolStats();
  const t0 = process.hrtime.bigint();
  await fn();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const after = hostPoolStats();
  const stats = { ...after };
  for (const k of Object.keys(stats) as (keyof HostPoolStats)[]) stats[k] = after[k] - before[k];
  return { ms, stats };
}

type Phase = "create" | "diff" | "refresh" | "delete";

async function runScenario(
  scenario: BenchScenario<never>,
  k: number,
  mode: "pooled" | "naive",
): Promise<Record<Phase, PhaseResult>> {
  await closeHostSessions();
  resetHostPoolStats();
  setHostPoolMode(mode);
  const outs: unknown[] = [];
  try {
    const create = await measure(async () => {
      for (let i = 0; i < k; i++) outs.push(await scenario.create(i));
    });
    const diff = await measure(async () => {
      for (let i = 0; i < k; i++) await scenario.diff(i, outs[i] as never);
    });
    if (diff.stats.connectionsOpened !== 0)
      throw new Error(`a no-change diff opened ${diff.stats.connectionsOpened} connection(s)`);
    const refresh = await measure(async () => {
      for (let i = 0; i < k; i++) await scenario.read(i, outs[i] as never);
    });
    const del = await measure(async () => {
      for (let i = 0; i < k; i++) await scenario.delete(i, outs[i] as never);
    });
    return { create, diff, refresh, delete: del };
  } finally {
    setHostPoolMode("pooled");
    await closeHostSessions();
  }
}

/** Latency of one trivial remote step, sequentially, in each mode. */
async function stepLatency(host: HostConnection, n: number, mode: "pooled" | "naive"): Promise<number> {
  await closeHostSessions();
  setHostPoolMode(mode);
  try {
    await runSteps(host, [{ script: "true" }]);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) await runSteps(host, [{ script: "true" }]);
    return Number(process.hrtime.bigint() - t0) / 1e6 / n;
  } finally {
    setHostPoolMode("pooled");
    await closeHostSessions();
  }
}

function arg(argv: string[], name: string, dflt: string): string {
  const at = argv.indexOf(name);
  return at >= 0 && at + 1 < argv.length ? argv[at + 1] : dflt;
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

async function main(argv: string[]): Promise<number> {
  const k = Number(arg(argv, "--k", "5"));
  const instance = arg(argv, "--instance", "bench");
  const keep = argv.includes("--keep");
  console.log(
    `kvmlab provider benchmark: K=${k} objects per scenario on 2 hosts of sandbox instance "${instance}"`,
  );
  const status = await startSandbox(instance, 2);
  try {
    const hosts = sandboxHostConnections(status).slice(0, 2);

    const pooledStep = await stepLatency(hosts[0], 50, "pooled");
    const naiveStep = await stepLatency(hosts[0], 20, "naive");
    console.log(
      `\none trivial remote step (sequential): kvmlab ${pooledStep.toFixed(1)} ms, new connection per step ${naiveStep.toFixed(1)} ms (x${(naiveStep / pooledStep).toFixed(0)})\n`,
    );

    const header = `${pad("scenario / phase", 30)} ${pad("kvmlab ms", 10, true)} ${pad("conns", 6, true)} ${pad("steps", 6, true)} ${pad("trips", 6, true)} | ${pad("naive ms", 10, true)} ${pad("conns", 6, true)} | ${pad("naive/kvmlab", 12, true)}`;
    console.log(header);
    console.log("-".repeat(header.length));
    for (const [name, make] of Object.entries(SCENARIOS)) {
      const scenario = make(hosts);
      const pooled = await runScenario(scenario, k, "pooled");
      const naive = await runScenario(scenario, k, "naive");
      for (const phase of Object.keys(pooled) as Phase[]) {
        const p = pooled[phase];
        const n = naive[phase];
        const ratio = p.ms >= 20 ? `x${(n.ms / p.ms).toFixed(1)}` : "-";
        console.log(
          `${pad(`${name} ${phase}`, 30)} ${pad(p.ms.toFixed(0), 10, true)} ${pad(String(p.stats.connectionsOpened), 6, true)} ${pad(String(p.stats.steps), 6, true)} ${pad(String(p.stats.batches), 6, true)} | ${pad(n.ms.toFixed(0), 10, true)} ${pad(String(n.stats.connectionsOpened), 6, true)} | ${pad(ratio, 12, true)}`,
        );
      }
    }
    console.log(
      "\nconns = SSH connections opened; steps = remote commands; trips = round trips (batches); diff = a no-change diff,\nwhich opened no connection in either mode. Objects are handled one after another; each touches both hosts in parallel.",
    );
    return 0;
  } finally {
    await closeHostSessions();
    if (!keep) await stopSandbox(instance);
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      console.error(err instanceof Error ? err.message : err);
      process.exitCode = 1;
    },
  );
}
