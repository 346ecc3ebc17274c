/**
 * Lab definitions: parse a YAML file, check it against stacks/lab.schema.json, then check its
 * meaning (references resolve, networks are consistent, flavors fit images, names are unique),
 * and report every problem at once with its YAML path, line and a fix.
 *
 *   parseLab(text, file)  pure: { lab, issues }
 *   loadLab(file)         reads the file; throws LabError listing every issue
 */
import * as fs from "node:fs";
import Ajv, { ErrorObject } from "ajv";
import { LineCounter, parseDocument } from "yaml";
import schema from "../stacks/lab.schema.json";
import { RenderError, renderLab } from "./artifacts";
import { checkSemantics } from "./checks";
import { formatIssues, Locator, parsePath, type PathSegment } from "./locate";
import type { Lab, LabIssue } from "./model";
import { normalizeLab } from "./normalize";
import { PlanError } from "./plan";

export type { Lab, LabIssue } from "./model";
export { formatIssues, formatPath, Locator, parsePath, type PathSegment } from "./locate";

/** Thrown by {@link loadLab}: the message lists every issue, `issues` holds them. */
export class LabError extends Error {
  constructor(
    readonly file: string,
    readonly issues: readonly LabIssue[],
  ) {
    super(`Invalid lab definition (${file}): ${issues.length} problem(s)\n${formatIssues(file, issues)}`);
    this.name = "LabError";
  }
}

let validator: ReturnType<Ajv["compile"]> | undefined;
function schemaValidator(): ReturnType<Ajv["compile"]> {
  if (validator === undefined) {
    const ajv = new Ajv({ allErrors: true, verbose: true, strict: true, strictRequired: false });
    validator = ajv.compile(schema);
  }
  return validator;
}

function pointerToPath(pointer: string): PathSegment[] {
  if (pointer === "") return [];
  return pointer
    .slice(1)
    .split("/")
    .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"))
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s));
}

function describeValue(value: unknown): string {
  const text = JSON.stringify(value);
  return text === undefined ? String(value) : text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Turns ajv's errors into issues: branch noise of oneOf/if is folded into one message. */
function schemaIssues(errors: readonly ErrorObject[], at: Locator): LabIssue[] {
  const issues: LabIssue[] = [];
  const oneOfFailed = errors.filter((e) => e.keyword === "oneOf").map((e) => e.schemaPath);
  for (const e of errors) {
    if (e.keyword === "if") continue;
    if (oneOfFailed.some((p) => e.schemaPath.startsWith(`${p}/`))) continue;
    const path = pointerToPath(e.instancePath);
    const parent = e.parentSchema as
      { description?: string; properties?: Record<string, unknown> } | undefined;
    switch (e.keyword) {
      case "required": {
        const prop = (e.params as { missingProperty: string }).missingProperty;
        issues.push(at.issue(path, `missing required field "${prop}"`, `add ${prop}`));
        break;
      }
      case "additionalProperties": {
        const prop = (e.params as { additionalProperty: string }).additionalProperty;
        const allowed = Object.keys(parent?.properties ?? {});
        issues.push(
          at.issue(
            path,
            `unknown field "${prop}"`,
            `remove it or correct its spelling; allowed here: ${allowed.join(", ")}`,
            prop,
          ),
        );
        break;
      }
      case "oneOf": {
        const alternatives = (e.schema as { required?: string[] }[])
          .map((s) => s.required?.join("+"))
          .filter((s): s is string => s !== undefined);
        // Say whether none or several alternatives were given: the fixes are opposite.
        const given =
          e.data !== null && typeof e.data === "object"
            ? alternatives.filter((a) => a.split("+").every((k) => k in (e.data as object)))
            : [];
        issues.push(
          alternatives.length > 0
            ? given.length === 0
              ? at.issue(
                  path,
                  `missing one of: ${alternatives.join(", ")}`,
                  `add ${alternatives.join(" or ")}`,
                )
              : at.issue(
                  path,
                  `give exactly one of: ${alternatives.join(", ")} (found ${given.join(" and ")})`,
                  `keep one of ${given.join(" or ")} and remove the others`,
                )
            : at.issue(
                path,
                `invalid value ${describeValue(e.data)}`,
                parent?.description ?? "see docs/lab-definition.md",
              ),
        );
        break;
      }
      case "not": {
        const forbidden = (e.schema as { required?: string[]; const?: unknown }).required;
        issues.push(
          forbidden !== undefined
            ? at.issue(
                path,
                `"${forbidden.join(", ")}" is not allowed here`,
                `remove ${forbidden.join(", ")}`,
                forbidden[0],
              )
            : at.issue(
                path,
                `value ${describeValue(e.data)} is not allowed`,
                parent?.description ?? "see docs/lab-definition.md",
              ),
        );
        break;
      }
      case "enum":
        issues.push(
          at.issue(
            path,
            `invalid value ${describeValue(e.data)}`,
            `use one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(", ")}`,
          ),
        );
        break;
      case "type": {
        const type = (e.params as { type: string }).type;
        const fix =
          path.length === 0
            ? "the file must be a YAML mapping that starts with `name: <lab name>`"
            : `write ${type === "object" ? "a mapping" : type === "array" ? "a list" : `a ${type}`}${parent?.description ? ` (${parent.description})` : ""}`;
        issues.push(at.issue(path, `expected ${type}, got ${describeValue(e.data)}`, fix));
        break;
      }
      case "pattern":
      case "minLength":
      case "maxLength":
        issues.push(
          at.issue(
            path,
            `invalid value ${describeValue(e.data)}`,
            parent?.description ?? "see docs/lab-definition.md",
          ),
        );
        break;
      case "minimum":
      case "maximum": {
        const limit = (e.params as { limit: number }).limit;
        const range = `${parent && "minimum" in parent ? String(parent.minimum) : "…"} to ${parent && "maximum" in parent ? String(parent.maximum) : "…"}`;
        issues.push(
          at.issue(
            path,
            `${describeValue(e.data)} is ${e.keyword === "minimum" ? "below the minimum" : "above the maximum"} ${limit}`,
            `use a value from ${range}`,
          ),
        );
        break;
      }
      case "minItems":
      case "maxItems": {
        const limit = (e.params as { limit: number }).limit;
        issues.push(
          at.issue(
            path,
            e.keyword === "minItems"
              ? `needs at least ${limit} entr${limit === 1 ? "y" : "ies"}`
              : `allows at most ${limit} entries`,
            parent?.description ?? "see docs/lab-definition.md",
          ),
        );
        break;
      }
      case "uniqueItems": {
        const { i, j } = e.params as { i: number; j: number };
        issues.push(
          at.issue(
            path,
            `lists ${describeValue((e.data as unknown[])[i])} twice (entries ${j} and ${i})`,
            "remove the duplicate",
          ),
        );
        break;
      }
      default:
        issues.push(
          at.issue(
            path,
            `${describeValue(e.data)} ${e.message ?? "is invalid"}`,
            parent?.description ?? "see docs/lab-definition.md",
          ),
        );
    }
  }
  return issues;
}

/** Code-unit order: unlike localeCompare, the same on every machine whatever its locale. */
const compare = (x: string, y: string): number => (x < y ? -1 : x > y ? 1 : 0);

function byPosition(a: LabIssue, b: LabIssue): number {
  return a.line - b.line || a.column - b.column || compare(a.path, b.path) || compare(a.message, b.message);
}

/**
 * Parses and validates a lab definition. `lab` is null when there is any issue; `issues`
 * lists every problem found, sorted by position.
 */
export function parseLab(text: string): { lab: Lab | null; issues: LabIssue[] } {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return {
      lab: null,
      issues: doc.errors.map((err) => {
        const { line, col } = lineCounter.linePos(err.pos[0]);
        return {
          path: "",
          line,
          column: col,
          message: `YAML syntax: ${err.message.split("\n")[0]}`,
          fix: "correct the YAML syntax at this line",
        };
      }),
    };
  }
  const at = new Locator(doc, lineCounter);
  const data: unknown = doc.toJS();
  const validate = schemaValidator();
  const issues: LabIssue[] = [];
  if (!validate(data)) issues.push(...schemaIssues(validate.errors ?? [], at));
  if (data !== null && typeof data === "object" && !Array.isArray(data)) {
    const schemaPaths = issues.map((i) => i.path);
    issues.push(...checkSemantics(data as Record<string, unknown>, at, schemaPaths));
  }
  const unique = new Map<string, LabIssue>();
  for (const i of issues) unique.set(`${i.path}\u0000${i.message}`, i);
  const sorted = [...unique.values()].sort(byPosition);
  if (sorted.length > 0) return { lab: null, issues: sorted };
  const lab = normalizeLab(data as Record<string, unknown>);
  // Last check: every artifact must render (the views own a few rules, e.g. name lengths).
  try {
    renderLab(lab);
  } catch (err) {
    if (!(err instanceof RenderError) && !(err instanceof PlanError)) throw err;
    const where = parsePath(err.path);
    const message = err instanceof RenderError ? err.reason.message : err.detail;
    return {
      lab: null,
      issues: [
        at.issue(
          where,
          `cannot render: ${message}`,
          "see the message; docs/templates.md lists each template's rules",
        ),
      ],
    };
  }
  return { lab, issues: [] };
}

/** Reads and validates a lab definition file; throws {@link LabError} listing every problem. */
export function loadLab(file: string): Lab {
  const { lab, issues } = parseLab(fs.readFileSync(file, "utf8"));
  if (lab === null) throw new LabError(file, issues);
  return lab;
}
