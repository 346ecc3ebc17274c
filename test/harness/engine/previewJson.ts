/**
 * The document `npm run engine -- preview --json` prints: the shape of `pulumi preview --json`
 * (pulumi/pulumi sdk/pkg/display/json.go PreviewDigest; states as apitype.ResourceV3), so that
 * `kvmlab preview-report` is tested end to end on the harness. Built from a finished RunResult.
 *
 * Follows the CLI where the harness can:
 *   - secrets become the string "[secret]" (display/json.go MassageSecrets), config values too;
 *   - preview unknowns stay the engine's unknown sentinel string;
 *   - detailedDiff is null (dynamic providers return none);
 *   - the root Stack step is included; changeSummary counts every step by op, the Stack too;
 *   - a replace is shown as its three steps, in the engine's order: create-replacement,
 *     replace, delete-replaced (create-before-delete) or delete-replaced, replace,
 *     create-replacement (delete-before-replace), as the CLI does with --show-replacement-steps;
 *   - a planned new state has no outputs (the CLI serializes it before the step runs);
 *   - duration in nanoseconds.
 * Differs: diffReasons are the top-level keys whose inputs changed (the real engine may leave them
 * empty for a dynamic provider's DIFF_SOME); the real document has `created`/`modified` times.
 */
import type { Diagnostic, RunResult, StepEvent } from "./engine";
import { maskSecrets, parsePath, type PropertyMap } from "./props";
import type { ResourceState } from "./state";

type Json = Record<string, unknown>;

/** display/json.go MassageSecrets: a secret anywhere becomes "[secret]". Unknowns keep the sentinel. */
function massage(m: PropertyMap): PropertyMap {
  return Object.fromEntries(
    Object.entries(m).map(([k, v]) => {
      const masked = maskSecrets(v);
      return [k, restoreUnknowns(v, masked)];
    }),
  ) as PropertyMap;
}

/** maskSecrets turns unknowns into "(unknown)" for display; the JSON keeps the engine's sentinel. */
function restoreUnknowns(orig: unknown, masked: unknown): unknown {
  if (masked === "(unknown)" && orig !== "(unknown)") return orig;
  if (Array.isArray(masked) && Array.isArray(orig)) return masked.map((x, i) => restoreUnknowns(orig[i], x));
  if (masked && typeof masked === "object" && orig && typeof orig === "object" && !Array.isArray(masked))
    return Object.fromEntries(
      Object.entries(masked).map(([k, x]) => [k, restoreUnknowns((orig as Json)[k], x)]),
    );
  return masked;
}

/** apitype.ResourceV3 as stack.SerializeResource writes it (omitempty fields left out). */
function resourceV3(r: ResourceState, withOutputs: boolean): Json {
  const out: Json = { urn: r.urn, custom: r.custom };
  if (r.delete) out.delete = true;
  if (r.id) out.id = r.id;
  out.type = r.type;
  if (Object.keys(r.inputs).length > 0) out.inputs = massage(r.inputs);
  if (withOutputs && Object.keys(r.outputs).length > 0) out.outputs = massage(r.outputs);
  if (r.parent) out.parent = r.parent;
  if (r.protect) out.protect = true;
  if (r.dependencies.length > 0) out.dependencies = r.dependencies;
  if (r.initErrors?.length) out.initErrors = r.initErrors;
  if (r.provider) out.provider = r.provider;
  if (Object.keys(r.propertyDependencies).length > 0) out.propertyDependencies = r.propertyDependencies;
  if (r.additionalSecretOutputs?.length) out.additionalSecretOutputs = r.additionalSecretOutputs;
  if (r.retainOnDelete) out.retainOnDelete = true;
  if (r.ignoreChanges?.length) out.ignoreChanges = r.ignoreChanges;
  if (r.replaceOnChanges?.length) out.replaceOnChanges = r.replaceOnChanges;
  return out;
}

function previewStep(op: string, e: StepEvent, planned: boolean): Json {
  const step: Json = { op, urn: e.urn };
  const state = e.new ?? e.old;
  if (state?.provider) step.provider = state.provider;
  const withOld = op !== "create";
  const withNew = op !== "delete" && op !== "delete-replaced";
  if (withOld && e.old) step.oldState = resourceV3(e.old, true);
  if (withNew && e.new) step.newState = resourceV3(e.new, !planned);
  const keys = [...new Set(e.changes.map((c) => parsePath(c.path)[0]))];
  if ((op === "update" || op === "replace" || op === "create-replacement") && keys.length > 0)
    step.diffReasons = keys;
  if ((op === "replace" || op === "create-replacement") && e.replaceKeys?.length)
    step.replaceReasons = e.replaceKeys;
  step.detailedDiff = null;
  return step;
}

function diagnostic(d: Diagnostic): Json {
  return {
    ...(d.urn ? { urn: d.urn } : {}),
    message: d.message.endsWith("\n") ? d.message : `${d.message}\n`,
    severity: d.severity,
  };
}

/** The `pulumi preview --json` document of a harness run. */
export function previewDigest(r: RunResult): Json {
  const steps: Json[] = [];
  const summary: Record<string, number> = {};
  for (const e of r.steps) {
    const op = e.op === "delete" && e.replaced ? "delete-replaced" : e.op;
    if (op !== "delete-replaced") summary[op] = (summary[op] ?? 0) + 1;
    if (e.op === "replace") {
      const parts = e.deleteBeforeReplace
        ? ["delete-replaced", "replace", "create-replacement"]
        : ["create-replacement", "replace", "delete-replaced"];
      for (const p of parts) steps.push(previewStep(p, e, e.planned));
    } else steps.push(previewStep(op, e, e.planned));
  }
  const digest: Json = {};
  if (Object.keys(r.config).length > 0) digest.config = r.config;
  if (steps.length > 0) digest.steps = steps;
  const diags = r.diagnostics.filter((d) => d.message.trim() !== "");
  if (diags.length > 0) digest.diagnostics = diags.map(diagnostic);
  digest.duration = r.durationMs * 1_000_000;
  if (Object.keys(summary).length > 0) digest.changeSummary = summary;
  return digest;
}
