/**
 * One call that drives a Pulumi program through preview → up → no-op up → change → up → destroy
 * with the engine harness, failing with the run's errors at the first step that goes wrong.
 * Meant for lifecycle tests of example programs (examples/<name>).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type Operation, type RunResult, type StepOp } from "./engine";
import type { ConfigFlag } from "./project";

export interface LifecycleOptions {
  stack?: string;
  /** Config for every run (`--config` / `--secret`). */
  config?: ConfigFlag[];
  /** Config added for the "change" run (later keys win); the change must produce at least one step. */
  change: ConfigFlag[];
  /** State file; default a fresh temporary folder, removed afterwards. */
  stateFile?: string;
  parallel?: number;
  env?: Record<string, string>;
  onLog?: (line: string) => void;
  /** Kill a program that runs longer than this. @default 600000 */
  programTimeoutMs?: number;
}

export interface LifecycleResult {
  preview: RunResult;
  up: RunResult;
  noop: RunResult;
  change: RunResult;
  destroy: RunResult;
}

const CHANGING: StepOp[] = ["create", "update", "replace", "delete"];
const changed = (r: RunResult): number => CHANGING.reduce((n, op) => n + r.counts[op], 0);

/** Throws an Error naming the phase and the run's errors when a phase does not do what it must. */
export async function runLifecycle(programDir: string, opts: LifecycleOptions): Promise<LifecycleResult> {
  const tmp = opts.stateFile ? undefined : fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lifecycle-"));
  const stateFile = opts.stateFile ?? path.join(tmp!, "state.json");
  const run = async (phase: string, operation: Operation, config: ConfigFlag[]): Promise<RunResult> => {
    const r = await runEngine({
      operation,
      programDir,
      stack: opts.stack,
      stateFile,
      config,
      parallel: opts.parallel,
      env: opts.env,
      onLog: opts.onLog,
      programTimeoutMs: opts.programTimeoutMs ?? 600_000,
    });
    if (!r.ok) throw new Error(`${programDir}: ${phase} failed:\n  ${r.errors.join("\n  ")}`);
    return r;
  };
  const base = opts.config ?? [];
  try {
    const preview = await run("preview", "preview", base);
    const up = await run("up", "up", base);
    if (up.counts.create === 0) throw new Error(`${programDir}: the first up created nothing`);
    const noop = await run("no-op up", "up", base);
    if (changed(noop) > 0) {
      const what = noop.steps.filter((s) => s.op !== "same").map((s) => `${s.op} ${s.urn}`);
      throw new Error(`${programDir}: an up without changes is not a no-op:\n  ${what.join("\n  ")}`);
    }
    const change = await run("change", "up", [...base, ...opts.change]);
    if (changed(change) === 0)
      throw new Error(
        `${programDir}: the change (${opts.change.map((c) => c.key).join(", ")}) changed nothing`,
      );
    const destroy = await run("destroy", "destroy", base);
    const left = (JSON.parse(fs.readFileSync(stateFile, "utf8")) as { resources: unknown[] }).resources
      .length;
    if (left > 0) throw new Error(`${programDir}: destroy left ${left} resource(s) in ${stateFile}`);
    return { preview, up, noop, change, destroy };
  } finally {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  }
}
