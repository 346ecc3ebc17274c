/**
 * Property values in a preview document: secrets, unknowns, and the per-property changes
 * between an old and a new state. Pure.
 */
import type { JsonObject, JsonValue } from "./digest";

/** The key and value of Pulumi's secret wrapper (sdk/go/common/resource/sig: Key, Secret). */
export const SIG_KEY = "4dabf18193072939515e22adb298388d";
export const SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270";
/** What the CLI prints for a secret in `--json` (display/json.go massagePropertyValue). */
export const SECRET_TEXT = "[secret]";
/** The value the engine serializes for an output not known until apply (plugin.UnknownStringValue). */
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

const isObject = (v: unknown): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v);

/** True for the secret wrapper (whatever it carries: value, plaintext or ciphertext) and for "[secret]". */
export function isSecret(v: unknown): boolean {
  return v === SECRET_TEXT || (isObject(v) && v[SIG_KEY] === SECRET_SIG);
}

/** A comparable form of a secret (never printed): its plain value or ciphertext when present. */
function secretKey(v: JsonValue): string {
  if (!isObject(v)) return JSON.stringify(v);
  const inner = v.value ?? v.plaintext ?? v.ciphertext ?? null;
  return JSON.stringify(inner);
}

function equal(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  if (isSecret(a as JsonValue) && isSecret(b as JsonValue))
    return secretKey(a as JsonValue) === secretKey(b as JsonValue);
  return JSON.stringify(a) === JSON.stringify(b);
}

export interface PropertyChange {
  /** `a.b[0].c`; top-level keys as they are. */
  path: string;
  kind: "add" | "delete" | "update";
  old?: JsonValue;
  new?: JsonValue;
  /** Either side is a secret (or the key is an additional secret output): never print the values. */
  secret: boolean;
}

const keyPath = (base: string, key: string): string =>
  base === "" ? key : /^[A-Za-z_$][\w$-]*$/.test(key) ? `${base}.${key}` : `${base}[${JSON.stringify(key)}]`;

/**
 * Every leaf that differs between two property maps. Objects recurse key by key, arrays index
 * by index (elements past the shorter one are adds or deletes); a secret on either side is one
 * leaf whose values must not be shown. Keys listed in `secretKeys` (additionalSecretOutputs)
 * count as secret wherever they occur at the top level.
 */
export function propertyChanges(
  olds: JsonObject | undefined,
  news: JsonObject | undefined,
  secretKeys: readonly string[] = [],
  skip: readonly string[] = [],
): PropertyChange[] {
  const out: PropertyChange[] = [];
  const walk = (a: JsonValue | undefined, b: JsonValue | undefined, path: string, secret: boolean): void => {
    if (equal(a, b)) return;
    const sec = secret || isSecret(a as JsonValue) || isSecret(b as JsonValue);
    if (!sec && isObject(a) && isObject(b)) {
      for (const k of [...new Set([...Object.keys(a), ...Object.keys(b)])])
        walk(a[k], b[k], keyPath(path, k), false);
      return;
    }
    if (!sec && Array.isArray(a) && Array.isArray(b)) {
      for (let i = 0; i < Math.max(a.length, b.length); i++) walk(a[i], b[i], `${path}[${i}]`, false);
      return;
    }
    out.push({
      path,
      kind: a === undefined ? "add" : b === undefined ? "delete" : "update",
      ...(a === undefined ? {} : { old: a }),
      ...(b === undefined ? {} : { new: b }),
      secret: sec,
    });
  };
  const o = olds ?? {};
  const n = news ?? {};
  for (const k of [...new Set([...Object.keys(o), ...Object.keys(n)])]) {
    if (skip.includes(k)) continue;
    walk(o[k], n[k], keyPath("", k), secretKeys.includes(k));
  }
  return out;
}

/** True when the value holds a secret anywhere inside it. */
export function containsSecret(v: JsonValue | undefined): boolean {
  if (v === undefined) return false;
  if (isSecret(v)) return true;
  if (Array.isArray(v)) return v.some(containsSecret);
  if (isObject(v)) return Object.values(v).some(containsSecret);
  return false;
}

/** The value with every secret replaced by "[secret]" and unknowns by "(known after apply)". */
export function masked(v: JsonValue): JsonValue {
  if (isSecret(v)) return SECRET_TEXT;
  if (v === UNKNOWN) return "(known after apply)";
  if (Array.isArray(v)) return v.map(masked);
  if (isObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, masked(x)]));
  return v;
}

/** A short one-line display of a value (secrets masked), at most `max` characters. */
export function showValue(v: JsonValue | undefined, max = 160): string {
  if (v === undefined) return "(none)";
  if (isSecret(v)) return SECRET_TEXT;
  if (v === UNKNOWN) return "(known after apply)";
  const text = JSON.stringify(masked(v));
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** True for a string value that holds more than one line (a rendered file: shown as a line diff). */
export function isMultiline(v: JsonValue | undefined): v is string {
  return typeof v === "string" && v !== UNKNOWN && v.includes("\n");
}
