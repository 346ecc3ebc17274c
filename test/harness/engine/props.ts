/**
 * Property values as they travel between the program, the harness and the dynamic provider:
 * plain JSON plus the SDK's "special signature" objects (secrets, unknowns during preview).
 *
 * The constants mirror @pulumi/pulumi/runtime/rpc.ts (pinned SDK 3.248.0); they are copied
 * here so the harness process does not load the whole SDK.
 */

/** The string the SDK sends for a value that is unknown during preview. */
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";
export const SIG_KEY = "4dabf18193072939515e22adb298388d";
export const SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270";
const RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e";
const OUTPUT_VALUE_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4";
const ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17";
const ARCHIVE_SIG = "0def7320c3a5731c473e5ecbe6d01bc7";

export type Value = null | boolean | number | string | Value[] | { [key: string]: Value };
export type PropertyMap = Record<string, Value>;

export function isPlainObject(v: unknown): v is Record<string, Value> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function isSecret(v: unknown): v is { [SIG_KEY]: string; value: Value } {
  return isPlainObject(v) && v[SIG_KEY] === SECRET_SIG;
}

export function makeSecret(v: Value): Value {
  return isSecret(v) ? v : { [SIG_KEY]: SECRET_SIG, value: v };
}

/** True when the value holds a secret anywhere inside it. */
export function containsSecrets(v: unknown): boolean {
  if (isSecret(v)) return true;
  if (Array.isArray(v)) return v.some(containsSecrets);
  if (isPlainObject(v)) return Object.values(v).some(containsSecrets);
  return false;
}

export function containsUnknowns(v: unknown): boolean {
  if (v === UNKNOWN) return true;
  if (Array.isArray(v)) return v.some(containsUnknowns);
  if (isPlainObject(v)) return Object.values(v).some(containsUnknowns);
  return false;
}

/**
 * Replaces every secret by its plain value.
 * Mirrors pkg/resource/plugin/provider_plugin.go (removeSecrets / MarshalOptions KeepSecrets=false):
 * the dynamic provider answers Configure with acceptSecrets=false, so the engine strips secrets
 * from every request it sends to it.
 */
export function stripSecrets(v: Value): Value {
  if (isSecret(v)) return stripSecrets(v.value);
  if (Array.isArray(v)) return v.map(stripSecrets);
  if (isPlainObject(v)) {
    const out: PropertyMap = {};
    for (const [k, x] of Object.entries(v)) out[k] = stripSecrets(x);
    return out;
  }
  return v;
}

export function stripSecretsMap(m: PropertyMap): PropertyMap {
  return stripSecrets(m) as PropertyMap;
}

/**
 * Re-marks outputs as secret where the inputs under the same key held a secret.
 * Mirrors pkg/resource/plugin/provider_plugin.go annotateSecrets: top-level keys, recursing
 * only where both sides are objects. Mutates and returns `outs`.
 */
export function annotateSecrets(outs: PropertyMap, ins: PropertyMap): PropertyMap {
  for (const [key, inValue] of Object.entries(ins)) {
    if (!(key in outs)) continue;
    const outValue = outs[key];
    if (isPlainObject(outValue) && !isSecret(outValue) && isPlainObject(inValue) && !isSecret(inValue)) {
      annotateSecrets(outValue, inValue);
    } else if (!isSecret(outValue) && containsSecrets(inValue)) {
      outs[key] = makeSecret(outValue);
    }
  }
  return outs;
}

/** Marks the named top-level outputs secret (the additionalSecretOutputs resource option). */
export function markAdditionalSecrets(outs: PropertyMap, keys: string[]): PropertyMap {
  for (const k of keys) if (k in outs) outs[k] = makeSecret(outs[k]);
  return outs;
}

/** Structural equality of two property values (secrets compare by their plain value, as the legacy diff does). */
export function deepEqual(a: Value | undefined, b: Value | undefined): boolean {
  if (isSecret(a)) a = a.value;
  if (isSecret(b)) b = b.value;
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  }
  if (isPlainObject(a) && isPlainObject(b)) {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => k in b && deepEqual(a[k], b[k]));
  }
  return false;
}

/**
 * Paths (`a.b[0].c`) of every leaf that differs between two property maps.
 * Stands in for resource.PropertyMap.Diff + NewDetailedDiffFromObjectDiff in the legacy diff of
 * pkg/resource/deploy/step_generator.go diffResource.
 */
export function changedPaths(olds: PropertyMap, news: PropertyMap): string[] {
  const out: string[] = [];
  const walk = (a: Value | undefined, b: Value | undefined, path: string): void => {
    if (isSecret(a)) a = a.value;
    if (isSecret(b)) b = b.value;
    if (deepEqual(a, b)) return;
    if (isPlainObject(a) && isPlainObject(b)) {
      for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
        walk(a[k], b[k], path === "" ? k : `${path}.${k}`);
      }
    } else if (Array.isArray(a) && Array.isArray(b) && a.length === b.length) {
      a.forEach((x, i) => walk(x, b[i], `${path}[${i}]`));
    } else {
      out.push(path);
    }
  };
  for (const k of new Set([...Object.keys(olds), ...Object.keys(news)])) walk(olds[k], news[k], k);
  return out;
}

/** Splits a property path (`a.b[0]["c.d"]`) into its segments. */
export function parsePath(path: string): string[] {
  const segs: string[] = [];
  const re = /([^.[\]]+)|\[(\d+|\*)\]|\["([^"]*)"\]/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(path)) !== null) segs.push(m[1] ?? m[2] ?? m[3]);
  return segs;
}

/** True when `outer` equals `inner` or is a prefix of it; `*` matches any segment (resource.PropertyPath.Contains). */
export function pathContains(outer: string, inner: string): boolean {
  const o = parsePath(outer);
  const i = parsePath(inner);
  if (o.length > i.length) return false;
  return o.every((seg, n) => seg === "*" || seg === i[n]);
}

/**
 * Copies the old value of each ignored path into the new inputs.
 * Mirrors pkg/resource/deploy/step_generator.go processIgnoreChanges (top-level and nested
 * object paths; a path missing from the old inputs is removed from the new ones).
 */
export function applyIgnoreChanges(news: PropertyMap, olds: PropertyMap, ignore: string[]): PropertyMap {
  const result = structuredClone(news);
  for (const p of ignore) {
    const segs = parsePath(p);
    if (segs.includes("*"))
      throw new Error(`ignoreChanges path "${p}": wildcards are not supported by the engine harness`);
    let src: Value | undefined = olds;
    for (const s of segs) src = isPlainObject(src) ? src[s] : Array.isArray(src) ? src[Number(s)] : undefined;
    let dst: Value = result;
    for (const s of segs.slice(0, -1)) {
      if (!isPlainObject(dst) || !isPlainObject(dst[s])) {
        dst = null;
        break;
      }
      dst = dst[s];
    }
    if (!isPlainObject(dst)) continue;
    const last = segs[segs.length - 1];
    if (src === undefined) delete dst[last];
    else dst[last] = structuredClone(src);
  }
  return result;
}

/** Rejects value kinds the harness does not handle (assets, archives, resource references, output values). */
export function assertSupportedValue(v: Value, where: string): void {
  if (isPlainObject(v)) {
    const sig = v[SIG_KEY];
    if (sig === ASSET_SIG || sig === ARCHIVE_SIG)
      throw new Error(`${where}: assets and archives are not supported by the engine harness`);
    if (sig === RESOURCE_SIG)
      throw new Error(`${where}: resource references are not supported by the engine harness`);
    if (sig === OUTPUT_VALUE_SIG)
      throw new Error(`${where}: output values are not supported by the engine harness`);
    for (const [k, x] of Object.entries(v)) assertSupportedValue(x, `${where}.${k}`);
  } else if (Array.isArray(v)) {
    v.forEach((x, i) => assertSupportedValue(x, `${where}[${i}]`));
  }
}

/** Display form of a value: secrets masked, long strings shortened. */
export function show(v: Value | undefined): string {
  if (v === undefined) return "(none)";
  const masked = maskSecrets(v);
  if (typeof masked === "string" && masked !== v) return masked;
  const text = JSON.stringify(masked);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** Replaces every secret by the text "[secret]" (for display and --json output). */
export function maskSecrets(v: Value): Value {
  if (isSecret(v)) return "[secret]";
  if (v === UNKNOWN) return "(unknown)";
  if (Array.isArray(v)) return v.map(maskSecrets);
  if (isPlainObject(v)) {
    const out: PropertyMap = {};
    for (const [k, x] of Object.entries(v)) out[k] = maskSecrets(x);
    return out;
  }
  return v;
}
