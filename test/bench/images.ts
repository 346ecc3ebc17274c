/**
 * Image (and flavor) benchmark: K images created, created again (converging), diffed,
 * refreshed and deleted on two hosts of a `kvmlab sandbox` instance of its own ("bench-img",
 * built first and removed at the end), through kvmlab's host layer (one pooled SSH connection
 * and shell per host, batched steps, SFTP on the pooled connection) and the naive way (a new
 * SSH connection per remote command and per upload, as @pulumi/command's remote.Command does).
 *
 *   npm run build && node dist/test/bench/images.js [--k 3] [--mib 4] [--instance bench-img] [--keep]
 *
 * Figures, not assertions — except that a no-change diff must open no connection and run no
 * remote command (checked). The scenarios follow providers.ts's
 * BenchScenario shape, so they can join its SCENARIOS table (see imageScenarios).
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  checkFlavorInputs,
  flavorProvider,
  type FlavorInputs,
  type FlavorOutputs,
} from "../../provider/flavor";
import {
  closeHostSessions,
  hostPoolStats,
  resetHostPoolStats,
  setHostPoolMode,
  type HostConnection,
  type HostPoolStats,
} from "../../provider/host";
import { checkImageInputs, imageProvider, type ImageInputs, type ImageOutputs } from "../../provider/image";
import { sandboxHostConnections, startSandbox, stopSandbox } from "../support/sandbox";
import type { BenchScenario } from "./providers";

/** A scenario with the extra "converge" phase (create again with the same inputs). */
export interface ConvergingScenario<O> extends BenchScenario<O> {
  converge(i: number, outs: O): Promise<void>;
}

function mustCheck<T>(r: { inputs: Record<string, unknown>; failures: { reason: string }[] }): T {
  if (r.failures.length > 0) throw new Error(r.failures.map((f) => f.reason).join("; "));
  return r.inputs as unknown as T;
}

/**
 * Image scenarios on `hosts`: "local" uploads K local raw files of `mib` MiB over SFTP;
 * "hostpath" copies a file that is already on each host (`hostFile`, made by the caller).
 */
export function imageScenarios(
  hosts: HostConnection[],
  local: { path: string; sha256: string }[],
  hostFile: { path: string; sha256: string },
): Record<string, ConvergingScenario<ImageOutputs>> {
  const make = (kind: "local" | "hostpath"): ConvergingScenario<ImageOutputs> => {
    const inputsFor = (i: number): ImageInputs =>
      mustCheck<ImageInputs>(
        checkImageInputs({
          imageName: `bench-${kind}-${i}`,
          hosts,
          diskFormat: "raw",
          source:
            kind === "local"
              ? { localPath: local[i].path, sha256: local[i].sha256 }
              : { hostPath: hostFile.path, sha256: hostFile.sha256 },
        }),
      );
    return {
      name: `images (${kind === "local" ? "SFTP upload" : "host copy"})`,
      async create(i) {
        return (await imageProvider.create!(inputsFor(i))).outs as ImageOutputs;
      },
      async converge(i) {
        await imageProvider.create!(inputsFor(i));
      },
      async diff(i, outs) {
        const d = await imageProvider.diff!(outs.imageName, outs, inputsFor(i));
        if (d.changes) throw new Error(`no-change diff of image ${outs.imageName} reports changes`);
      },
      async read(_i, outs) {
        const r = await imageProvider.read!(outs.imageName, outs);
        if (r.id === "") throw new Error(`image ${outs.imageName} reads as gone`);
      },
      async delete(_i, outs) {
        await imageProvider.delete!(outs.imageName, outs);
      },
    };
  };
  return { "image/local": make("local"), "image/hostpath": make("hostpath") };
}

/** Flavor records on the controller. */
export function flavorScenario(hosts: HostConnection[]): ConvergingScenario<FlavorOutputs> {
  const inputsFor = (i: number): FlavorInputs =>
    mustCheck<FlavorInputs>(
      checkFlavorInputs({ flavorName: `bench.f${i}`, vcpus: 1, ramMiB: 128 + i, hosts }),
    );
  return {
    name: "flavors",
    async create(i) {
      return (await flavorProvider.create!(inputsFor(i))).outs as FlavorOutputs;
    },
    async converge(i) {
      await flavorProvider.create!(inputsFor(i));
    },
    async diff(i, outs) {
      const d = await flavorProvider.diff!(outs.flavorId, outs, inputsFor(i));
      if (d.changes) throw new Error(`no-change diff of flavor ${outs.flavorName} reports changes`);
    },
    async read(_i, outs) {
      await flavorProvider.read!(outs.flavorId, outs);
    },
    async delete(_i, outs) {
      await flavorProvider.delete!(outs.flavorId, outs);
    },
  };
}

type Phase = "create" | "converge" | "diff" | "refresh" | "delete";
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
  for (const key of Object.keys(stats) as (keyof HostPoolStats)[]) stats[key] = after[key] - before[key];
  return { ms, stats };
}

async function runScenario<O>(
  s: ConvergingScenario<O>,
  k: number,
  mode: "pooled" | "naive",
): Promise<Record<Phase, PhaseResult>> {
  await closeHostSessions();
  resetHostPoolStats();
  setHostPoolMode(mode);
  const outs: O[] = [];
  try {
    const create = await measure(async () => {
      for (let i = 0; i < k; i++) outs.push(await s.create(i));
    });
    const converge = await measure(async () => {
      for (let i = 0; i < k; i++) await s.converge(i, outs[i]);
    });
    const diff = await measure(async () => {
      for (let i = 0; i < k; i++) await s.diff(i, outs[i]);
    });
    if (diff.stats.connectionsOpened !== 0 || diff.stats.steps !== 0)
      throw new Error(`a no-change diff opened ${diff.stats.connectionsOpened} connection(s)`);
    const refresh = await measure(async () => {
      for (let i = 0; i < k; i++) await s.read(i, outs[i]);
    });
    const del = await measure(async () => {
      for (let i = 0; i < k; i++) await s.delete(i, outs.shift() as O);
    });
    return { create, converge, diff, refresh, delete: del };
  } finally {
    // Leave nothing behind even when a phase failed.
    for (let i = 0; i < outs.length; i++) await s.delete(i, outs[i]).catch(() => undefined);
    setHostPoolMode("pooled");
    await closeHostSessions();
  }
}

function arg(argv: string[], name: string, dflt: string): string {
  const at = argv.indexOf(name);
  return at >= 0 && at + 1 < argv.length ? argv[at + 1] : dflt;
}

const pad = (s: string, n: number, right = false): string => (right ? s.padStart(n) : s.padEnd(n));

async function main(argv: string[]): Promise<number> {
  const k = Number(arg(argv, "--k", "3"));
  const mib = Number(arg(argv, "--mib", "4"));
  const instance = arg(argv, "--instance", "bench-img");
  const keep = argv.includes("--keep");
  console.log(
    `kvmlab image benchmark: K=${k} images of ${mib} MiB per scenario on 2 hosts of sandbox "${instance}"`,
  );
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-bench-img-"));
  const status = await startSandbox(instance, 2);
  try {
    const hosts = sandboxHostConnections(status).slice(0, 2);
    const local = Array.from({ length: k }, (_, i) => {
      const data = crypto.randomBytes(mib * 1024 * 1024);
      const p = path.join(dir, `img-${i}.raw`);
      fs.writeFileSync(p, data);
      return { path: p, sha256: crypto.createHash("sha256").update(data).digest("hex") };
    });
    // The same bytes as local[0], placed on each host once (setup, not measured).
    const hostFile = { path: "/var/tmp/kvmlab-bench-img.raw", sha256: local[0].sha256 };
    const { sftpPut } = await import("../../provider/host");
    await Promise.all(hosts.map((h) => sftpPut(h, local[0].path, hostFile.path)));
    await closeHostSessions();

    const scenarios: Record<string, ConvergingScenario<never>> = {
      ...(imageScenarios(hosts, local, hostFile) as Record<string, ConvergingScenario<never>>),
      flavor: flavorScenario(hosts) as ConvergingScenario<never>,
    };
    const header = `${pad("scenario / phase", 26)} ${pad("kvmlab ms", 10, true)} ${pad("conns", 6, true)} ${pad("steps", 6, true)} ${pad("trips", 6, true)} | ${pad("naive ms", 10, true)} ${pad("conns", 6, true)} | ${pad("naive/kvmlab", 12, true)}`;
    console.log(header);
    console.log("-".repeat(header.length));
    for (const [name, s] of Object.entries(scenarios)) {
      const pooled = await runScenario(s, k, "pooled");
      const naive = await runScenario(s, k, "naive");
      for (const phase of Object.keys(pooled) as Phase[]) {
        const p = pooled[phase];
        const n = naive[phase];
        const ratio = p.ms >= 5 ? `x${(n.ms / p.ms).toFixed(1)}` : "-";
        console.log(
          `${pad(`${name} ${phase}`, 26)} ${pad(p.ms.toFixed(0), 10, true)} ${pad(String(p.stats.connectionsOpened), 6, true)} ${pad(String(p.stats.steps), 6, true)} ${pad(String(p.stats.batches), 6, true)} | ${pad(n.ms.toFixed(0), 10, true)} ${pad(String(n.stats.connectionsOpened), 6, true)} | ${pad(ratio, 12, true)}`,
        );
      }
    }
    console.log(
      "\nconns = SSH connections opened (naive: one per remote command and per SFTP upload); steps = remote commands;\n" +
        "trips = round trips (batches); converge = create again with the same inputs (nothing sent); diff = a no-change\n" +
        "diff, which opened no connection in either mode. Images one after another; each touches both hosts in parallel.",
    );
    await Promise.all(
      hosts.map((h) =>
        import("../../provider/host").then((m) => m.runChecked(h, [{ script: `rm -f ${hostFile.path}` }])),
      ),
    );
    return 0;
  } finally {
    await closeHostSessions();
    fs.rmSync(dir, { recursive: true, force: true });
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
