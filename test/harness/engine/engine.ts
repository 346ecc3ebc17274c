/**
 * The harness's deployment engine: runs a Pulumi program through the real `cmd/run`, turns each
 * registration into a step (create, same, update, replace) against the real dynamic-provider
 * plugin, deletes what the program no longer registers, and keeps state in a JSON file.
 *
 * TEST INFRASTRUCTURE, NOT THE PULUMI ENGINE. The step rules below are a hand port of the Go
 * engine (pulumi/pulumi pkg/resource/deploy and pkg/resource/plugin); each carries a comment
 * naming the function it mirrors. docs/engine-harness.md lists the known differences.
 */
import { spawn } from "node:child_process";
import * as path from "node:path";
import * as readline from "node:readline";
import { MonitorServer, type Registration, type RegistrationResult } from "./monitor";
import { configEnv, loadProject, type ConfigFlag, type Project } from "./project";
import {
  annotateSecrets,
  applyIgnoreChanges,
  assertSupportedValue,
  changedPaths,
  deepEqual,
  isSecret,
  markAdditionalSecrets,
  parsePath,
  pathContains,
  UNKNOWN,
  type PropertyMap,
  type Value,
} from "./props";
import { DynamicProvider, InitFailedError } from "./provider";
import { childEnv, inspectFixPath, sdkModule } from "./sdk";
import { StateStore, type ResourceState } from "./state";

export type Operation = "preview" | "up" | "refresh" | "destroy";
export type StepOp = "create" | "same" | "update" | "replace" | "delete";

export interface PropertyChange {
  path: string;
  old: Value | undefined;
  new: Value | undefined;
}

export interface StepEvent {
  op: StepOp;
  urn: string;
  type: string;
  /** Property changes for update and replace (values unmasked; the display masks secrets). */
  changes: PropertyChange[];
  /** Keys that forced a replacement. */
  replaceKeys?: string[];
  deleteBeforeReplace?: boolean;
  /** Extra words for the display (e.g. what a refresh step means). */
  note?: string;
  /** A delete that completes an earlier create-before-delete replace (not counted as a delete). */
  replaced?: boolean;
  /** True when the step was only planned (preview). */
  planned: boolean;
  /** The resource's state before the step (update, replace, same, delete). */
  old?: ResourceState;
  /** Its state after the step (create, update, replace, same); during preview, outputs are the checked inputs. */
  new?: ResourceState;
}

/** A warning or error the program or the engine reported (the CLI's diagnostics). */
export interface Diagnostic {
  urn?: string;
  message: string;
  severity: "error" | "warning" | "info";
}

export interface RunOptions {
  operation: Operation;
  programDir: string;
  stack?: string;
  /** State file; default `<programDir>/.kvmlab-state/<stack>.json`. */
  stateFile?: string;
  config?: ConfigFlag[];
  /** Maximum number of concurrent resource operations (the CLI's --parallel). */
  parallel?: number;
  /** Kill the program (and fail the run) when it takes longer than this; default no limit. */
  programTimeoutMs?: number;
  /** Extra environment for the program and provider processes. */
  env?: Record<string, string>;
  onStep?: (e: StepEvent) => void;
  /**
   * A resource's registration reached the engine (the program resolved its inputs), with the
   * URNs it depends on; for measurements (bench:three-tier's critical path), before any step.
   */
  onRegister?: (e: { urn: string; type: string; dependencies: readonly string[] }) => void;
  /** Program and provider output, engine log messages. */
  onLog?: (line: string) => void;
}

export interface RunResult {
  ok: boolean;
  operation: Operation;
  errors: string[];
  steps: StepEvent[];
  counts: Record<StepOp, number>;
  /** Stack outputs (secrets still wrapped; mask them for display). */
  outputs: PropertyMap;
  /** Program log messages (info and up) and run errors, in order. */
  diagnostics: Diagnostic[];
  /** The stack's config as the program saw it, secret values replaced by "[secret]". */
  config: Record<string, string>;
  programExitCode?: number;
  durationMs: number;
  stateFile: string;
}

const STACK_TYPE = "pulumi:pulumi:Stack";
/** The default provider reference the engine records for dynamic resources (rule 9). */
const providerRef = (stack: string, project: string): string =>
  `urn:pulumi:${stack}::${project}::pulumi:providers:pulumi-nodejs::default::00000000-0000-0000-0000-000000000000`;

class CheckFailedError extends Error {}

/** A counting semaphore bounding concurrent steps (the engine's step executor workers). */
class Semaphore {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async run<T>(f: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((r) => this.waiting.push(r));
    try {
      return await f();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

function emptyCounts(): Record<StepOp, number> {
  return { create: 0, same: 0, update: 0, replace: 0, delete: 0 };
}

/** Every URN a resource depends on: parent, dependsOn and property dependencies (pkg/resource/state.go GetAllDependencies). */
function allDeps(r: ResourceState, includeParent: boolean): string[] {
  const out = [...r.dependencies, ...Object.values(r.propertyDependencies).flat()];
  if (includeParent && r.parent) out.push(r.parent);
  return out;
}

export class Deployment {
  private readonly project: Project;
  private readonly stack: string;
  private readonly store: StateStore;
  private readonly sem: Semaphore;
  private readonly parallel: number;
  private readonly result: RunResult;
  private provider?: Promise<DynamicProvider>;
  private monitor?: MonitorServer;
  private readonly started = Date.now();

  /** State before the run (snapshot order is topological). */
  private oldList: ResourceState[] = [];
  private olds = new Map<string, ResourceState>();
  /** Replaced resources waiting for their delete (create-before-delete), from this or earlier runs. */
  private pendingDeletes: ResourceState[] = [];
  /** Resources registered in this run, in registration order. */
  private news = new Map<string, ResourceState>();
  private seen = new Set<string>();
  /** Old resources already deleted during this run by a delete-before-replace. */
  private deletedEarly = new Set<string>();
  private earlyOld = new Map<string, ResourceState>();
  private inflight = new Set<Promise<unknown>>();
  private rootUrn = "";

  constructor(private readonly opts: RunOptions) {
    this.stack = opts.stack ?? "dev";
    this.project = loadProject(opts.programDir, this.stack, opts.config ?? []);
    const file = opts.stateFile ?? path.join(this.project.rootDir, ".kvmlab-state", `${this.stack}.json`);
    this.store = new StateStore(path.resolve(file));
    this.parallel = Math.max(1, opts.parallel ?? 16);
    this.sem = new Semaphore(this.parallel);
    this.result = {
      ok: false,
      operation: opts.operation,
      errors: [],
      steps: [],
      counts: emptyCounts(),
      outputs: {},
      diagnostics: [],
      config: {},
      durationMs: 0,
      stateFile: this.store.file,
    };
    for (const [k, v] of this.project.config) this.result.config[k] = v.secret ? "[secret]" : v.value;
  }

  private log(line: string): void {
    this.opts.onLog?.(line);
  }

  private error(message: string): void {
    this.result.errors.push(message);
    this.result.diagnostics.push({ message, severity: "error" });
    this.log(`error: ${message}`);
  }

  private step(e: Omit<StepEvent, "planned">): void {
    const ev: StepEvent = { ...e, planned: this.opts.operation === "preview" };
    this.result.steps.push(ev);
    if ((e.urn !== this.rootUrn || e.type !== STACK_TYPE) && !e.replaced) this.result.counts[e.op]++;
    // As the Pulumi CLI does: the state is saved after every step, so a run killed half-way
    // leaves a record of everything it created, updated or deleted (issue 15).
    if (this.opts.operation === "up") this.saveUpdateState();
    this.opts.onStep?.(ev);
  }

  private getProvider(): Promise<DynamicProvider> {
    if (!this.provider) {
      const cfg: Record<string, string> = {};
      for (const [k, v] of this.project.config) cfg[k] = v.value;
      this.provider = DynamicProvider.start({
        programDir: this.project.programDir,
        project: this.project.name,
        stack: this.stack,
        engineAddress: this.monitor?.address ?? "127.0.0.1:0",
        config: cfg,
        env: this.opts.env ?? {},
        onLog: (l) => this.log(`[provider] ${l}`),
      });
    }
    return this.provider;
  }

  async run(): Promise<RunResult> {
    try {
      const snap = this.store.load(this.project.name, this.stack);
      this.oldList = snap.resources;
      for (const r of snap.resources) {
        if (r.delete) this.pendingDeletes.push(r);
        else this.olds.set(r.urn, r);
      }
      switch (this.opts.operation) {
        case "preview":
        case "up":
          await this.update();
          break;
        case "refresh":
          await this.refresh();
          break;
        case "destroy":
          await this.destroy();
          break;
      }
    } catch (e) {
      this.error((e as Error).message);
    } finally {
      this.monitor?.stop();
      if (this.provider)
        await this.provider.then(
          (p) => p.close(),
          () => undefined,
        );
    }
    this.result.ok = this.result.errors.length === 0;
    this.result.durationMs = Date.now() - this.started;
    return this.result;
  }

  // ---- preview / up -------------------------------------------------------------------------

  private async update(): Promise<void> {
    const preview = this.opts.operation === "preview";
    this.monitor = new MonitorServer({
      register: (r) =>
        this.track(
          this.register(r).catch((e: Error) => {
            this.error(e.message);
            throw e;
          }),
        ),
      registerOutputs: (urn, outs) => {
        const r = this.news.get(urn);
        if (r) r.outputs = outs;
        if (urn === this.rootUrn) this.result.outputs = outs;
      },
      log: (sev, msg, urn) => {
        if (sev === "debug") return;
        this.log(`${sev}${urn ? ` (${urn})` : ""}: ${msg}`);
        if (sev === "error" || sev === "warning" || sev === "info")
          this.result.diagnostics.push({ ...(urn ? { urn } : {}), message: msg, severity: sev });
        if (sev === "error") this.result.errors.push(msg);
      },
    });
    const address = await this.monitor.start();
    // Start the plugin now, so its start (~0.5 s) overlaps the program's instead of following the
    // first registration (the engine starts it lazily; only the timing differs).
    this.getProvider().catch(() => undefined);

    const code = await this.runProgram(address, preview);
    this.result.programExitCode = code;
    // Steps still running when the program died are real: wait for them and record them.
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
    if (code !== 0) {
      this.error(
        `the program exited with code ${code}${code === 32 ? " (its error is reported above)" : ""}`,
      );
    }
    // A failed program deletes nothing (pitfall 9): only a complete registration set says what is gone.
    // Mirrors pkg/resource/deploy/deployment_executor.go: deletes are generated only after the program succeeded.
    try {
      if (this.result.errors.length === 0) {
        const gone = this.oldList.filter(
          (r) => !r.delete && !this.news.has(r.urn) && !this.deletedEarly.has(r.urn),
        );
        await this.deleteAll([...gone, ...this.pendingDeletes], preview);
      }
    } finally {
      if (!preview) this.saveUpdateState();
    }
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    const done = (): void => {
      this.inflight.delete(p);
    };
    p.then(done, done);
    return p;
  }

  /** Spawns the program through cmd/run with the argv and environment of pulumi-language-nodejs (constructArguments). */
  private runProgram(address: string, preview: boolean): Promise<number> {
    const p = this.project;
    const args = [
      ...p.nodeargs,
      "--require",
      inspectFixPath(),
      sdkModule(p.programDir, "cmd/run"),
      "--monitor",
      address,
      "--engine",
      address,
      "--organization",
      "organization",
      "--project",
      p.name,
      "--root-directory",
      p.rootDir,
      "--stack",
      this.stack,
      "--pwd",
      p.programDir,
      ...(preview ? ["--dry-run"] : []),
      "--parallel",
      String(this.parallel),
      p.entry,
    ];
    const env = childEnv({
      ...(this.opts.env ?? {}),
      ...configEnv(p),
      ...(p.typescript ? { PULUMI_NODEJS_TYPESCRIPT: "true" } : {}),
    });
    const child = spawn(process.execPath, args, {
      cwd: p.programDir,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    readline.createInterface({ input: child.stdout }).on("line", (l) => this.log(l));
    readline.createInterface({ input: child.stderr }).on("line", (l) => this.log(l));
    const limit = this.opts.programTimeoutMs;
    const timer =
      limit === undefined
        ? undefined
        : setTimeout(() => {
            this.error(`the program did not finish within ${limit} ms; killed it (pid ${child.pid})`);
            child.kill("SIGKILL");
          }, limit);
    return new Promise((resolve, reject) => {
      child.once("error", reject);
      child.once("close", (code, signal) => {
        clearTimeout(timer);
        resolve(code ?? (signal ? 128 : 1));
      });
    });
  }

  /** URN format of pkg/resource/urn.go NewURN: the parent's type chain, minus the root Stack (rule 10). */
  private makeUrn(type: string, name: string, parent: string): string {
    let chain = type;
    if (parent !== "") {
      const parentState = this.news.get(parent);
      if (!parentState) throw new Error(`${type} "${name}": parent ${parent} is not registered`);
      if (parentState.type !== STACK_TYPE) {
        const qualified = parent.split("::")[2];
        chain = `${qualified}$${type}`;
      }
    }
    return `urn:pulumi:${this.stack}::${this.project.name}::${chain}::${name}`;
  }

  private async register(reg: Registration): Promise<RegistrationResult> {
    const label = `${reg.type} "${reg.name}"`;
    if (reg.unsupported.length > 0) {
      throw new Error(
        `${label}: ${reg.unsupported.join(", ")} ${reg.unsupported.length === 1 ? "is" : "are"} not supported by the kvmlab engine harness`,
      );
    }
    if (reg.type.startsWith("pulumi:providers:")) {
      throw new Error(
        `${label}: provider resources (${reg.type}) are not supported by the kvmlab engine harness`,
      );
    }
    if (reg.custom && !reg.type.startsWith("pulumi-nodejs:dynamic")) {
      throw new Error(
        `${label}: resources of package "${reg.type.split(":")[0]}" are not supported by the kvmlab engine harness (only dynamic resources, pulumi-nodejs:dynamic*)`,
      );
    }
    const urn = this.makeUrn(reg.type, reg.name, reg.parent);
    // pkg/resource/deploy/step_generator.go generateURN: a URN may be registered once per run.
    if (this.seen.has(urn)) throw new Error(`duplicate resource URN ${urn}; choose a unique name`);
    this.seen.add(urn);
    this.opts.onRegister?.({ urn, type: reg.type, dependencies: reg.dependencies });
    assertSupportedValue(reg.inputs, label);
    if (reg.type === STACK_TYPE && reg.parent === "") this.rootUrn = urn;

    const base: ResourceState = {
      urn,
      type: reg.type,
      custom: reg.custom,
      parent: reg.parent || undefined,
      inputs: reg.inputs,
      outputs: {},
      dependencies: reg.dependencies,
      propertyDependencies: reg.propertyDependencies,
      protect: reg.protect || undefined,
      retainOnDelete: reg.retainOnDelete || undefined,
      deleteBeforeReplace: reg.deleteBeforeReplace,
      ignoreChanges: reg.ignoreChanges.length > 0 ? reg.ignoreChanges : undefined,
      replaceOnChanges: reg.replaceOnChanges.length > 0 ? reg.replaceOnChanges : undefined,
      additionalSecretOutputs:
        reg.additionalSecretOutputs.length > 0 ? reg.additionalSecretOutputs : undefined,
    };
    const old = this.deletedEarly.has(urn) ? undefined : this.olds.get(urn);

    if (!reg.custom) {
      // Components have no provider (step_generator.go diff, prov == nil): changed inputs make an
      // Update that calls nothing; their outputs come from RegisterResourceOutputs.
      this.news.set(urn, { ...base, outputs: old?.outputs ?? {} });
      const changes = old ? this.changes(old.inputs, reg.inputs) : [];
      this.step({
        op: old
          ? changes.length > 0
            ? "update"
            : "same"
          : this.deletedEarly.has(urn)
            ? "replace"
            : "create",
        urn,
        type: reg.type,
        changes,
        old,
        new: this.news.get(urn),
      });
      return { urn, id: "", outputs: {} };
    }
    return this.sem.run(() => this.customStep(reg, base, old));
  }

  private async customStep(
    reg: Registration,
    base: ResourceState,
    old: ResourceState | undefined,
  ): Promise<RegistrationResult> {
    const preview = this.opts.operation === "preview";
    const urn = base.urn;
    const prov = await this.getProvider();
    base.provider = providerRef(this.stack, this.project.name);
    const ignore = reg.ignoreChanges;

    // Rule 1 — pkg/resource/deploy/step_generator.go generateResourceSteps: ignoreChanges takes the
    // old inputs' values first, then Check runs with olds = the old inputs.
    const goal = old ? applyIgnoreChanges(reg.inputs, old.inputs, ignore) : reg.inputs;
    const checked = await this.check(urn, old ? old.inputs : {}, goal);

    if (!old) {
      const replaced = this.deletedEarly.has(urn);
      return this.createStep(
        base,
        checked,
        replaced ? "replace" : "create",
        [],
        undefined,
        undefined,
        this.earlyOld.get(urn),
      );
    }

    const d = await this.diff(old, checked, ignore, reg.replaceOnChanges);
    let changes = this.changes(old.inputs, checked);
    if (changes.length === 0 && d.changes) {
      // The inputs did not change but the provider wants an update (e.g. after a refresh): show
      // how the new inputs differ from the recorded outputs.
      const recorded = Object.fromEntries(
        Object.keys(checked)
          .filter((k) => k in old.outputs)
          .map((k) => [k, old.outputs[k]]),
      );
      changes = this.changes(recorded, checked);
    }
    if (d.replaceKeys.length > 0) {
      // pkg/resource/deploy/step_generator.go continueStepsFromDiff: a protected resource cannot be replaced.
      if (old.protect)
        throw new Error(
          `unable to replace resource ${urn}: it is protected; remove the protect option first (and run up), then change it`,
        );
      // Rule 5 — on replace, Check runs again with no old inputs (continueStepsFromDiff).
      const rechecked = await this.check(urn, {}, reg.inputs);
      // The deleteBeforeReplace option overrides the provider's answer.
      const dbr = reg.deleteBeforeReplace ?? d.deleteBeforeReplace;
      if (dbr) {
        await this.deleteBeforeReplace(old, preview);
        return this.createStep(base, rechecked, "replace", changes, d.replaceKeys, true, old);
      }
      const res = await this.createStep(base, rechecked, "replace", changes, d.replaceKeys, false, old);
      // Create-before-delete: the old resource stays in state, marked for deletion after the program succeeds.
      if (!preview) this.pendingDeletes.push({ ...old, delete: true });
      return res;
    }
    if (d.changes) {
      if (preview) {
        // Rule 6 — the dynamic provider does not support preview: the checked inputs stand in for outputs.
        this.news.set(urn, { ...base, id: old.id, inputs: checked, outputs: checked });
        this.step({ op: "update", urn, type: base.type, changes, old, new: this.news.get(urn) });
        return { urn, id: old.id ?? "", outputs: checked };
      }
      let outs: PropertyMap;
      try {
        outs = await prov.update(urn, old.id ?? "", old.outputs, checked, old.inputs, ignore);
      } catch (e) {
        if (e instanceof InitFailedError) {
          this.news.set(urn, {
            ...base,
            id: old.id,
            inputs: checked,
            outputs: this.secure(e.properties, checked, base.additionalSecretOutputs),
            initErrors: e.reasons,
          });
        }
        throw new Error(`updating ${urn} failed: ${(e as Error).message}`, { cause: e });
      }
      outs = this.secure(outs, checked, base.additionalSecretOutputs);
      this.news.set(urn, { ...base, id: old.id, inputs: checked, outputs: outs });
      this.step({ op: "update", urn, type: base.type, changes, old, new: this.news.get(urn) });
      return { urn, id: old.id ?? "", outputs: outs };
    }
    // Rule 7 — a Same step records the new inputs but keeps the old outputs (step.go SameStep).
    this.news.set(urn, { ...base, id: old.id, inputs: checked, outputs: old.outputs });
    this.step({ op: "same", urn, type: base.type, changes: [], old, new: this.news.get(urn) });
    return { urn, id: old.id ?? "", outputs: old.outputs };
  }

  /** Check, with failures turned into one error naming each property (step_generator.go issueCheckFailures). */
  private async check(urn: string, olds: PropertyMap, news: PropertyMap): Promise<PropertyMap> {
    const prov = await this.getProvider();
    const r = await prov.check(urn, olds, news);
    if (r.failures.length > 0) {
      throw new CheckFailedError(
        `${urn}: check failed: ${r.failures.map((f) => (f.property ? `${f.property}: ${f.reason}` : f.reason)).join("; ")}`,
      );
    }
    // Rule 2 — provider_plugin.go Check: results get annotateSecrets(outs, ins).
    return annotateSecrets(r.inputs, news);
  }

  /**
   * Diff against the provider, then the engine's own fallbacks.
   * Rule 3 — step_generator.go diffResource: DIFF_UNKNOWN means the engine compares old and new
   * inputs itself (including __provider). Rule 4 — applyReplaceOnChanges turns changed paths
   * matching replaceOnChanges into replace keys; the dynamic provider reports no changed keys,
   * so this only happens on the legacy path.
   */
  private async diff(
    old: ResourceState,
    news: PropertyMap,
    ignore: string[],
    replaceOnChanges: string[],
  ): Promise<{ changes: boolean; replaceKeys: string[]; deleteBeforeReplace: boolean }> {
    const prov = await this.getProvider();
    const d = await prov.diff(old.urn, old.id ?? "", old.inputs, old.outputs, news, ignore);
    let changes = d.changes === "some";
    const replaceKeys = [...d.replaces];
    let changedKeys: string[] = [];
    if (d.changes === "unknown") {
      const paths = changedPaths(old.inputs, applyIgnoreChanges(news, old.inputs, ignore));
      changes = paths.length > 0;
      changedKeys = paths;
    }
    // step_generator.go: a resource with init errors from an earlier run is always updated.
    if ((old.initErrors?.length ?? 0) > 0) changes = true;
    if (changes) {
      for (const p of replaceOnChanges) {
        for (const c of changedKeys) {
          const top = parsePath(c)[0];
          if (pathContains(p, c) && !replaceKeys.includes(top)) replaceKeys.push(top);
        }
      }
    }
    return {
      changes: changes || replaceKeys.length > 0,
      replaceKeys,
      deleteBeforeReplace: d.deleteBeforeReplace,
    };
  }

  private changes(olds: PropertyMap, news: PropertyMap): PropertyChange[] {
    const get = (m: PropertyMap, p: string): Value | undefined => {
      let v: Value | undefined = m;
      for (const s of parsePath(p)) {
        if (isSecret(v)) v = v.value;
        v = v !== null && typeof v === "object" ? (v as Record<string, Value>)[s] : undefined;
      }
      return v;
    };
    return changedPaths(olds, news).map((p) => ({ path: p, old: get(olds, p), new: get(news, p) }));
  }

  /** Outputs as the engine records them: secrets re-marked from the inputs (rule 2) and additionalSecretOutputs. */
  private secure(
    outs: PropertyMap,
    inputs: PropertyMap,
    additionalSecretOutputs: string[] | undefined,
  ): PropertyMap {
    return markAdditionalSecrets(annotateSecrets(outs, inputs), additionalSecretOutputs ?? []);
  }

  private async createStep(
    base: ResourceState,
    inputs: PropertyMap,
    op: "create" | "replace",
    changes: PropertyChange[],
    replaceKeys?: string[],
    dbr?: boolean,
    old?: ResourceState,
  ): Promise<RegistrationResult> {
    const urn = base.urn;
    const extra = op === "replace" ? { replaceKeys, deleteBeforeReplace: dbr } : {};
    if (this.opts.operation === "preview") {
      // Rule 6: no Create during preview; the checked inputs (unknowns included) are the outputs.
      this.news.set(urn, { ...base, inputs, outputs: inputs });
      this.step({ op, urn, type: base.type, changes, ...extra, old, new: this.news.get(urn) });
      return { urn, id: "", outputs: inputs };
    }
    const prov = await this.getProvider();
    let created: { id: string; outputs: PropertyMap };
    try {
      created = await prov.create(urn, inputs);
    } catch (e) {
      if (e instanceof InitFailedError) {
        // pkg/resource/deploy/step.go CreateStep.Apply: a partially created resource is recorded with its init errors.
        this.news.set(urn, {
          ...base,
          id: e.id,
          inputs,
          outputs: this.secure(e.properties, inputs, base.additionalSecretOutputs),
          initErrors: e.reasons,
        });
      }
      throw new Error(`creating ${urn} failed: ${(e as Error).message}`, { cause: e });
    }
    if (!created.id) throw new Error(`creating ${urn}: the provider returned an empty id`);
    const outputs = this.secure(created.outputs, inputs, base.additionalSecretOutputs);
    this.news.set(urn, { ...base, id: created.id, inputs, outputs });
    this.step({ op, urn, type: base.type, changes, ...extra, old, new: this.news.get(urn) });
    return { urn, id: created.id, outputs };
  }

  /**
   * Deletes `old` (and every dependent that the change would also force to be replaced) before
   * its replacement is created. Mirrors step_generator.go calculateDependentReplacements: the
   * dependents of `old` in the old snapshot, minus resources already registered in this run,
   * whose property dependencies on the replace set become unknown and whose Diff then asks for
   * a replacement.
   */
  private async deleteBeforeReplace(old: ResourceState, preview: boolean): Promise<void> {
    const prov = await this.getProvider();
    const replaceSet = new Set([old.urn]);
    const dependentSet = new Set([old.urn]);
    const toReplace: ResourceState[] = [];
    const start = this.oldList.indexOf(old);
    for (const cand of this.oldList.slice(start + 1)) {
      if (cand.delete || this.news.has(cand.urn) || this.deletedEarly.has(cand.urn)) continue;
      // graph/dependency_graph.go DependingOn(includeChildren=false): dependencies and property dependencies.
      if (!allDeps(cand, false).some((u) => dependentSet.has(u))) continue;
      dependentSet.add(cand.urn);
      if (!cand.custom) continue;
      let touched = false;
      const inputsForDiff: PropertyMap = {};
      for (const [k, v] of Object.entries(cand.inputs)) {
        const hit = (cand.propertyDependencies[k] ?? []).some((u) => replaceSet.has(u));
        inputsForDiff[k] = hit ? UNKNOWN : v;
        touched ||= hit;
      }
      if (!touched) continue;
      const d = await prov.diff(
        cand.urn,
        cand.id ?? "",
        cand.inputs,
        cand.outputs,
        inputsForDiff,
        cand.ignoreChanges ?? [],
      );
      let replace = d.replaces.length > 0;
      if (!replace && d.changes === "unknown" && cand.replaceOnChanges) {
        const paths = changedPaths(cand.inputs, inputsForDiff);
        replace = cand.replaceOnChanges.some((p) => paths.some((c) => pathContains(p, c)));
      }
      if (replace) {
        if (cand.protect)
          throw new Error(
            `unable to replace resource ${cand.urn} (a dependent of ${old.urn}): it is protected`,
          );
        toReplace.push(cand);
        replaceSet.add(cand.urn);
      }
    }
    // Dependents first, in reverse snapshot order, then the resource itself.
    for (const r of [...toReplace.reverse(), old]) {
      if (!preview && !r.retainOnDelete) {
        await prov.delete(r.urn, r.id ?? "", r.outputs, r.inputs);
      }
      this.deletedEarly.add(r.urn);
      this.earlyOld.set(r.urn, r);
      this.olds.delete(r.urn);
      if (r !== old) this.log(`${r.urn}: deleted before the replacement of ${old.urn}`);
    }
  }

  private saveUpdateState(): void {
    const resources: ResourceState[] = [...this.news.values()];
    // Old resources neither registered nor deleted stay: after a failed program no deletes were
    // generated at all, and a failed delete leaves its resource in place.
    for (const r of this.oldList) {
      if (!r.delete && !this.news.has(r.urn) && !this.deletedEarly.has(r.urn) && !this.deleted.has(r))
        resources.push(r);
    }
    // Replaced resources still waiting for their delete stay, marked delete: true (pitfall 9).
    resources.push(...this.pendingDeletes.filter((r) => !this.deleted.has(r)));
    this.store.save({ project: this.project.name, stack: this.stack, resources });
  }

  // ---- deletes --------------------------------------------------------------------------------

  /**
   * Deletes resources, dependents first, independent ones in parallel.
   * Mirrors step_generator.go GenerateDeletes + ScheduleDeletes: reverse dependency order over
   * parents, dependsOn and property dependencies; a resource waits for every resource in the
   * set that depends on it. Protected resources fail the run before anything is deleted;
   * retainOnDelete drops the resource from state without calling Delete.
   */
  private async deleteAll(targets: ResourceState[], preview: boolean): Promise<void> {
    if (targets.length === 0) return;
    const protectedOnes = targets.filter((r) => r.protect && !r.delete);
    if (protectedOnes.length > 0) {
      throw new Error(
        `unable to delete ${protectedOnes.map((r) => r.urn).join(", ")}: protected; remove the protect option and run up first`,
      );
    }
    const dependents = new Map<ResourceState, ResourceState[]>();
    for (const r of targets) dependents.set(r, []);
    for (const r of targets) {
      for (const u of allDeps(r, true)) {
        for (const s of targets) if (s !== r && s.urn === u && !s.delete) dependents.get(s)!.push(r);
      }
      // A replaced (old) resource is deleted after anything else in the set that still names its URN.
      if (r.delete)
        for (const s of targets) if (s !== r && allDeps(s, true).includes(r.urn)) dependents.get(r)!.push(s);
    }
    const done = new Map<ResourceState, Promise<boolean>>();
    const remove = (r: ResourceState): Promise<boolean> => {
      let p = done.get(r);
      if (p) return p;
      p = (async () => {
        const before = await Promise.all(dependents.get(r)!.map(remove));
        if (before.some((ok) => !ok)) return false;
        try {
          if (!preview && r.custom && !r.retainOnDelete) {
            const prov = await this.getProvider();
            // Rule (pitfall 5): Delete gets the OLD outputs, whose __provider is the code that created them.
            await this.sem.run(() => prov.delete(r.urn, r.id ?? "", r.outputs, r.inputs));
          }
        } catch (e) {
          this.error(`deleting ${r.urn} failed: ${(e as Error).message}`);
          return false;
        }
        this.deleted.add(r);
        if (r.urn !== this.rootUrn || r.type !== STACK_TYPE)
          this.step({ op: "delete", urn: r.urn, type: r.type, changes: [], replaced: r.delete, old: r });
        return true;
      })();
      done.set(r, p);
      return p;
    };
    await Promise.all(targets.map(remove));
    this.pendingDeletes = this.pendingDeletes.filter((r) => !this.deleted.has(r));
  }

  private deleted = new Set<ResourceState>();

  // ---- refresh and destroy --------------------------------------------------------------------

  /**
   * Refresh: Read every custom resource. Mirrors step.go RefreshStep.Apply: an empty id means the
   * resource is gone and leaves the state; otherwise the read outputs (secrets re-marked from the
   * old outputs) replace the old ones, and inputs too when the provider returned them.
   */
  private async refresh(): Promise<void> {
    const out: ResourceState[] = [];
    const results = await Promise.all(
      this.oldList.map(async (r): Promise<ResourceState | undefined> => {
        if (!r.custom) return r;
        let got: { id: string; outputs: PropertyMap; inputs?: PropertyMap };
        try {
          const prov = await this.getProvider();
          got = await this.sem.run(() => prov.read(r.urn, r.id ?? "", r.outputs, r.inputs));
        } catch (e) {
          this.error(`reading ${r.urn} failed: ${(e as Error).message}`);
          return r;
        }
        if (!got.id) {
          this.step({
            op: "delete",
            urn: r.urn,
            type: r.type,
            changes: [],
            note: "gone; removed from state",
            old: r,
          });
          return undefined;
        }
        const outputs = markAdditionalSecrets(
          annotateSecrets(got.outputs, r.outputs),
          r.additionalSecretOutputs ?? [],
        );
        const inputs = got.inputs ? annotateSecrets(got.inputs, r.inputs) : r.inputs;
        const changed = !deepEqual(outputs, r.outputs) || !deepEqual(inputs, r.inputs);
        const next: ResourceState = { ...r, id: got.id, outputs, inputs };
        this.step({
          op: changed ? "update" : "same",
          urn: r.urn,
          type: r.type,
          changes: changed ? this.changes(r.outputs, outputs) : [],
          note: changed ? "outputs read from the host differ" : undefined,
          old: r,
          new: next,
        });
        return next;
      }),
    );
    for (const r of results) if (r) out.push(r);
    this.store.save({ project: this.project.name, stack: this.stack, resources: out });
  }

  /** Destroy: delete everything in state without running the program (rule 8). */
  private async destroy(): Promise<void> {
    this.rootUrn = this.oldList.find((r) => r.type === STACK_TYPE && !r.parent)?.urn ?? "";
    try {
      await this.deleteAll(this.oldList, false);
    } finally {
      this.store.save({
        project: this.project.name,
        stack: this.stack,
        resources: this.oldList.filter((r) => !this.deleted.has(r)),
      });
    }
  }
}

/** Runs one operation and returns its result; never throws for deployment failures. */
export async function runEngine(opts: RunOptions): Promise<RunResult> {
  let d: Deployment;
  try {
    d = new Deployment(opts);
  } catch (e) {
    return {
      ok: false,
      operation: opts.operation,
      errors: [(e as Error).message],
      steps: [],
      counts: emptyCounts(),
      outputs: {},
      diagnostics: [{ message: (e as Error).message, severity: "error" }],
      config: {},
      durationMs: 0,
      stateFile: opts.stateFile ?? "",
    };
  }
  return d.run();
}
