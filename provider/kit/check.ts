/**
 * Field checks shared by every provider: the one `Failure` type, the collector, the single
 * definition of "unknown during preview", and a rules table for the plain fields.
 *
 * Pure: no Pulumi, no SSH. Providers call these from their exported `check*` functions.
 */
import { UNKNOWN, checkName, showValue } from "../host/quote";

/** One refused input, as Pulumi's check reports it: the property and a reason naming the fix. */
export interface Failure {
  property: string;
  reason: string;
}

/** What a provider's pure check returns. */
export interface Checked {
  inputs: Record<string, unknown>;
  failures: Failure[];
}

/**
 * THE definition of "unknown during preview", used by every check and diff: a value is unknown
 * when it is the preview sentinel or contains it anywhere (in a list, in an object, at any
 * depth). Such a value is neither validated nor compared: it is accepted by check and counts as
 * a change in diff.
 */
export function isUnknown(value: unknown): boolean {
  if (value === UNKNOWN) return true;
  if (Array.isArray(value)) return value.some((v) => isUnknown(v));
  if (value !== null && typeof value === "object") return Object.values(value).some((v) => isUnknown(v));
  return false;
}

/** Not {@link isUnknown}: the value can be checked and compared. */
export function isKnown(value: unknown): boolean {
  return !isUnknown(value);
}

/** Collects failures; `add` ignores undefined/empty reasons so checks can pass results straight in. */
export interface FailureList {
  readonly failures: Failure[];
  add(property: string, ...reasons: (string | undefined | readonly (string | undefined)[])[]): void;
}

/**
 * A new {@link FailureList}. (A factory, not a class: Pulumi's closure serializer does not
 * carry class field initializers.)
 */
export function failureList(): FailureList {
  const failures: Failure[] = [];
  return {
    failures,
    add(property, ...reasons) {
      for (const r of reasons.flat()) if (r) failures.push({ property, reason: r });
    },
  };
}

/** A check of one known value at `field`; returns the reason or undefined. */
export type FieldRule = (field: string, value: unknown) => string | undefined;

/** Field name → rule. A field's default (when the input leaves it out) is filled before the rule runs. */
export type RuleTable = Record<string, { rule: FieldRule; default?: unknown }>;

/**
 * Applies a rules table to `news`: fills defaults, skips unknown values, reports every refused
 * field. Returns the values with defaults filled (only the table's fields).
 */
export function applyRules(
  news: Record<string, unknown>,
  table: RuleTable,
  out: FailureList,
): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const [field, { rule, default: dflt }] of Object.entries(table)) {
    const v = news[field] === undefined ? dflt : news[field];
    values[field] = v;
    if (isKnown(v)) out.add(field, rule(field, v));
  }
  return values;
}

/** Rules used by several providers. */
export const rules = {
  /** A kvmlab object name (see checkName). */
  name: ((field, v) => checkName(field, v)) as FieldRule,
  /** One of the listed strings (`expected` overrides the generated list in the message). */
  oneOf(values: readonly string[], expected = values.map((x) => JSON.stringify(x)).join(" or ")): FieldRule {
    return (field, v) =>
      typeof v === "string" && values.includes(v)
        ? undefined
        : `${field}: expected ${expected}, got ${showValue(v)}`;
  },
  /** An integer min..max; `what` says what it counts, `note` follows the range. */
  int(min: number, max: number, what = "", note = ""): FieldRule {
    return (field, v) =>
      typeof v === "number" && Number.isInteger(v) && v >= min && v <= max
        ? undefined
        : `${field}: expected ${what ? `${what}, ` : ""}an integer ${min}-${max}${note}, got ${showValue(v)}`;
  },
  /** A rule with its own message: `test` passes, else `${field}: expected ${expected}, got …`. */
  expect(test: (v: unknown) => boolean, expected: string): FieldRule {
    return (field, v) => (test(v) ? undefined : `${field}: expected ${expected}, got ${showValue(v)}`);
  },
  bool: ((field, v) =>
    typeof v === "boolean"
      ? undefined
      : `${field}: expected true or false, got ${showValue(v)}`) as FieldRule,
  /** One line of printable text, at most `max` characters. */
  line(max: number): FieldRule {
    return (field, v) =>
      typeof v === "string" &&
      v.length <= max &&
      ![...v].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f)
        ? undefined
        : `${field}: expected one line of at most ${max} characters, got ${showValue(v)}`;
  },
};
