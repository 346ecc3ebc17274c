/**
 * The document `pulumi preview --json` prints (pulumi/pulumi sdk/pkg/display/json.go
 * PreviewDigest, with each state an apitype.ResourceV3), and a parser that checks the parts
 * the report relies on and names the field when something is off. Pure: no I/O.
 *
 * What the real CLI puts there (research/openstack-semantics.md §6.3):
 *   - secrets in oldState/newState are the string "[secret]" (display/json.go MassageSecrets);
 *     other producers (a state export, the engine harness's own state) use the signature
 *     wrapper {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", …};
 *   - detailedDiff is null for dynamic resources, and diffReasons may be empty for them: the
 *     report derives changed properties from oldState/newState itself;
 *   - create-replacement / delete-replaced steps appear beside "replace" when shown.
 */

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/** apitype.ResourceV3, the fields the report reads (others are kept but ignored). */
export interface ResourceV3 {
  urn: string;
  type: string;
  custom?: boolean;
  id?: string;
  parent?: string;
  inputs?: JsonObject;
  outputs?: JsonObject;
  protect?: boolean;
  additionalSecretOutputs?: string[];
  [key: string]: unknown;
}

export interface PreviewStep {
  op: string;
  urn: string;
  provider?: string;
  oldState?: ResourceV3;
  newState?: ResourceV3;
  diffReasons?: string[];
  replaceReasons?: string[];
  detailedDiff?: Record<string, { kind: string; inputDiff: boolean }> | null;
}

export interface PreviewDiagnostic {
  urn?: string;
  prefix?: string;
  message?: string;
  severity?: string;
}

export interface PreviewDigest {
  config?: Record<string, string>;
  steps?: PreviewStep[];
  diagnostics?: PreviewDiagnostic[];
  /** Nanoseconds (Go time.Duration). */
  duration?: number;
  changeSummary?: Record<string, number>;
  maybeCorrupt?: boolean;
}

/** Thrown when the input is not a preview document; the message says what to do. */
export class PreviewInputError extends Error {}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

function expectStrings(v: unknown, where: string): void {
  if (v === undefined || v === null) return;
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string"))
    throw new PreviewInputError(`${where}: expected a list of property names`);
}

function checkState(v: unknown, where: string): void {
  if (v === undefined || v === null) return;
  if (!isObject(v)) throw new PreviewInputError(`${where}: expected an object (a resource state)`);
  if (typeof v.urn !== "string") throw new PreviewInputError(`${where}.urn: expected a string`);
  if (typeof v.type !== "string") throw new PreviewInputError(`${where}.type: expected a string`);
  for (const k of ["inputs", "outputs"]) {
    if (v[k] !== undefined && v[k] !== null && !isObject(v[k]))
      throw new PreviewInputError(`${where}.${k}: expected an object`);
  }
  expectStrings(v.additionalSecretOutputs, `${where}.additionalSecretOutputs`);
}

/**
 * Parses and checks `pulumi preview --json` output. Throws PreviewInputError naming the field
 * that does not fit, or saying which other output it was given instead.
 */
export function parsePreviewDigest(text: string): PreviewDigest {
  const trimmed = text.trim();
  if (trimmed === "")
    throw new PreviewInputError(
      "the input is empty: pulumi preview printed nothing on stdout (did it fail before the preview? run it with --json and check its stderr)",
    );
  let doc: unknown;
  try {
    doc = JSON.parse(trimmed);
  } catch (err) {
    const lines = trimmed.split("\n");
    if (lines.length > 1 && lines.every((l) => l.trim() === "" || /^\{.*\}$/.test(l.trim())))
      throw new PreviewInputError(
        "the input is a stream of engine events (one JSON object per line), not the preview document: run `pulumi preview --json` without PULUMI_ENABLE_STREAMING_JSON_PREVIEW",
      );
    if (!trimmed.startsWith("{"))
      throw new PreviewInputError(
        "the input is not JSON: give the output of `pulumi preview --json` (not --diff or the text display)",
      );
    throw new PreviewInputError(`the input is not valid JSON (${(err as Error).message})`);
  }
  if (!isObject(doc))
    throw new PreviewInputError(
      "expected a JSON object with steps[] (the output of `pulumi preview --json`)",
    );
  if (doc.steps !== undefined && doc.steps !== null && !Array.isArray(doc.steps))
    throw new PreviewInputError("steps: expected a list of steps");
  if (doc.steps === undefined && doc.changeSummary === undefined && doc.diagnostics === undefined)
    throw new PreviewInputError(
      "no steps, changeSummary or diagnostics: this is not `pulumi preview --json` output (a stack export or `pulumi stack output --json` has neither)",
    );
  const steps = (doc.steps ?? []) as unknown[];
  steps.forEach((s, i) => {
    const at = `steps[${i}]`;
    if (!isObject(s)) throw new PreviewInputError(`${at}: expected an object`);
    if (typeof s.op !== "string") throw new PreviewInputError(`${at}.op: expected a string`);
    if (typeof s.urn !== "string") throw new PreviewInputError(`${at}.urn: expected a string`);
    checkState(s.oldState, `${at}.oldState`);
    checkState(s.newState, `${at}.newState`);
    expectStrings(s.diffReasons, `${at}.diffReasons`);
    expectStrings(s.replaceReasons, `${at}.replaceReasons`);
  });
  if (doc.diagnostics !== undefined && doc.diagnostics !== null && !Array.isArray(doc.diagnostics))
    throw new PreviewInputError("diagnostics: expected a list");
  if (doc.changeSummary !== undefined && doc.changeSummary !== null) {
    if (!isObject(doc.changeSummary) || Object.values(doc.changeSummary).some((n) => typeof n !== "number"))
      throw new PreviewInputError("changeSummary: expected an object of counts per operation");
  }
  return doc as PreviewDigest;
}

/** `urn:pulumi:<stack>::<project>::<type chain>::<name>` split into its parts. */
export function splitUrn(urn: string): { stack: string; project: string; type: string; name: string } {
  const parts = urn.split("::");
  const stack = parts[0]?.startsWith("urn:pulumi:") ? parts[0].slice("urn:pulumi:".length) : "";
  const chain = parts[2] ?? "";
  return {
    stack,
    project: parts[1] ?? "",
    type: chain.split("$").pop() ?? chain,
    name: parts.slice(3).join("::"),
  };
}
