/**
 * `npm run engine -- <preview|up|refresh|destroy> <programDir> [--stack NAME] [--config k=v]…
 *  [--secret k=v]… [--state FILE] [--parallel N] [--json]`
 *
 * Test infrastructure: runs a Pulumi program without the Pulumi CLI (see docs/engine-harness.md).
 * `preview --json` prints the document `pulumi preview --json` prints (previewJson.ts), which
 * `kvmlab preview-report` reads; the other operations print the harness's own summary object.
 */
import { inspectFixPath } from "./sdk";
import { runEngine, type Operation, type RunResult, type StepEvent } from "./engine";
import { maskSecrets, show, type PropertyMap } from "./props";
import type { ConfigFlag } from "./project";
import { previewDigest } from "./previewJson";

const USAGE =
  "usage: npm run engine -- <preview|up|refresh|destroy> <programDir> [--stack NAME] [--config k=v]... [--secret k=v]... [--state FILE] [--parallel N] [--json]";

export interface CliArgs {
  operation: Operation;
  programDir: string;
  stack?: string;
  stateFile?: string;
  parallel?: number;
  json: boolean;
  config: ConfigFlag[];
}

/** Parses the command line; throws an Error whose message says what is wrong. */
export function parseArgs(argv: string[]): CliArgs {
  const positional: string[] = [];
  const out: Partial<CliArgs> & { config: ConfigFlag[]; json: boolean } = { config: [], json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] =
      a.startsWith("--") && a.includes("=") && !a.startsWith("--config") && !a.startsWith("--secret")
        ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)]
        : [a, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case "--stack":
        out.stack = value();
        break;
      case "--state":
        out.stateFile = value();
        break;
      case "--parallel": {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 1) throw new Error(`--parallel must be a positive integer`);
        out.parallel = n;
        break;
      }
      case "--json":
        out.json = true;
        break;
      case "--config":
      case "--secret":
      case "-c": {
        const kv = argv[++i];
        const eq = kv?.indexOf("=") ?? -1;
        if (kv === undefined || eq <= 0)
          throw new Error(`${flag} expects KEY=VALUE, got ${kv === undefined ? "nothing" : `"${kv}"`}`);
        out.config.push({ key: kv.slice(0, eq), value: kv.slice(eq + 1), secret: flag === "--secret" });
        break;
      }
      default:
        if (a.startsWith("--config=") || a.startsWith("--secret=")) {
          const kv = a.slice(a.indexOf("=") + 1);
          const eq = kv.indexOf("=");
          if (eq <= 0) throw new Error(`${a}: expected KEY=VALUE`);
          out.config.push({
            key: kv.slice(0, eq),
            value: kv.slice(eq + 1),
            secret: a.startsWith("--secret"),
          });
        } else if (a.startsWith("-")) {
          throw new Error(`unknown option ${a}`);
        } else positional.push(a);
    }
  }
  const [op, dir, ...rest] = positional;
  if (!["preview", "up", "refresh", "destroy"].includes(op ?? ""))
    throw new Error(op ? `unknown command "${op}"` : "missing command");
  if (!dir) throw new Error("missing programDir");
  if (rest.length > 0) throw new Error(`unexpected argument "${rest[0]}"`);
  return { ...out, operation: op as Operation, programDir: dir };
}

const SYMBOL: Record<string, string> = { create: "+", same: " ", update: "~", replace: "+-", delete: "-" };

/** One line per step, plus changed properties (secrets masked) for updates and replaces. */
export function formatStep(e: StepEvent): string {
  const verb = e.planned
    ? { create: "create", same: "same", update: "update", replace: "replace", delete: "delete" }[e.op]
    : { create: "created", same: "same", update: "updated", replace: "replaced", delete: "deleted" }[e.op];
  const name = e.urn.split("::").slice(-1)[0];
  let line = `${SYMBOL[e.op].padEnd(2)} ${verb.padEnd(8)} ${e.type} ${name}${e.replaced ? " (the replaced original)" : ""}${e.note ? ` (${e.note})` : ""}`;
  if (e.op === "replace")
    line += ` (${e.deleteBeforeReplace ? "delete-before-replace" : "create-before-delete"}${e.replaceKeys?.length ? `; because of ${e.replaceKeys.join(", ")}` : ""})`;
  const lines = [line];
  for (const c of e.changes) {
    if (c.path === "__provider") lines.push(`      __provider: (provider code changed)`);
    else lines.push(`      ${c.path}: ${show(c.old)} => ${show(c.new)}`);
  }
  return lines.join("\n");
}

export function summary(r: RunResult): string {
  const c = r.counts;
  const verb =
    r.operation === "preview"
      ? ["to create", "to update", "to replace", "to delete", "unchanged"]
      : ["created", "updated", "replaced", "deleted", "unchanged"];
  return `Resources: ${c.create} ${verb[0]}, ${c.update} ${verb[1]}, ${c.replace} ${verb[2]}, ${c.delete} ${verb[3]}, ${c.same} ${verb[4]} — ${r.ok ? "ok" : "FAILED"} in ${(r.durationMs / 1000).toFixed(1)}s`;
}

export function jsonResult(r: RunResult): Record<string, unknown> {
  return {
    ok: r.ok,
    operation: r.operation,
    steps: r.counts,
    outputs: maskSecrets(r.outputs) as PropertyMap,
    errors: r.errors,
    durationMs: r.durationMs,
    stateFile: r.stateFile,
    resources: r.steps.map((s) => ({ op: s.op, urn: s.urn })),
  };
}

export async function main(argv: string[]): Promise<number> {
  let args: CliArgs;
  try {
    args = parseArgs(argv);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  // With --json, stdout carries exactly one JSON object; everything else goes to stderr.
  const out = args.json
    ? (s: string) => process.stderr.write(`${s}\n`)
    : (s: string) => process.stdout.write(`${s}\n`);
  const result = await runEngine({
    operation: args.operation,
    programDir: args.programDir,
    stack: args.stack,
    stateFile: args.stateFile,
    parallel: args.parallel,
    config: args.config,
    onStep: args.json ? undefined : (e) => out(formatStep(e)),
    onLog: (l) => out(l),
  });
  if (args.json && args.operation === "preview") {
    // The shape of `pulumi preview --json` (4-space indent, as the CLI's json.MarshalIndent).
    process.stdout.write(`${JSON.stringify(previewDigest(result), null, 4)}\n`);
  } else if (args.json) {
    process.stdout.write(`${JSON.stringify(jsonResult(result))}\n`);
  } else {
    const outputs = Object.entries(result.outputs);
    if (outputs.length > 0) {
      out("Outputs:");
      for (const [k, v] of outputs) out(`    ${k}: ${show(v)}`);
    }
    out(summary(result));
  }
  return result.ok ? 0 : 1;
}

if (require.main === module) {
  // The Node 20.20 error-formatting fix, for the harness's own process too (pitfall 1).
  require(inspectFixPath());
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: Error) => {
      console.error(e.stack ?? e.message);
      process.exitCode = 1;
    },
  );
}
