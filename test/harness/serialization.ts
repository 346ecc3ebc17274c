/**
 * Closure-serialization check for dynamic providers: serializes a provider exactly as
 * pulumi.dynamic.Resource does (`serializeFunction(() => provider, { allowSecrets: true })`),
 * loads the text back the way the dynamic-provider plugin does (require-from-string, then
 * `.handler()`), and fails when the text captures something it must not.
 *
 * Run it against compiled code (dist/), never a test runner's transformed source.
 *
 *   await assertSerializable(domainProvider, { forbid: [/handlebars/, /ssh2/] });
 */
import * as pulumi from "@pulumi/pulumi";

/** Text no serialized provider may contain: private keys. */
export const DEFAULT_FORBIDDEN: readonly RegExp[] = [/-----BEGIN [A-Z ]*PRIVATE KEY-----/];

/**
 * A module captured from the provider's surroundings shows up in the serialized text as a
 * top-level `const x = require("mod");` line; a require() inside a method body stays indented
 * inside its function.
 */
const CAPTURED_MODULE = /^(?:const|let|var) [\w$]+ = require\("([^"]+)"\);$/gm;

export interface SerializableOptions {
  /** Patterns the serialized text must not match (added to {@link DEFAULT_FORBIDDEN}). */
  forbid?: (RegExp | string)[];
  /** Methods the deserialized provider must have. @default ["create", "delete"] */
  methods?: string[];
  /** Modules the provider may capture at module level (by default none: require() them inside methods). */
  allowModules?: string[];
  /** Fail when the closure captured a secret Output. @default true */
  rejectSecrets?: boolean;
  /** Upper bound for the serialized text, in bytes. @default 512 KiB */
  maxBytes?: number;
}

export interface SerializedProvider {
  /** The module text that goes into state as `__provider`. */
  text: string;
  sizeBytes: number;
  /** The provider object rebuilt from the text, as the plugin rebuilds it. */
  provider: Record<string, unknown>;
}

/** Throws an Error naming every problem found; returns the serialized text and the rebuilt provider. */
export async function assertSerializable(
  provider: object,
  opts: SerializableOptions = {},
): Promise<SerializedProvider> {
  const sf = await pulumi.runtime.serializeFunction(() => provider, { allowSecrets: true });
  const text = sf.text;
  const sizeBytes = Buffer.byteLength(text);
  const problems: string[] = [];
  if ((opts.rejectSecrets ?? true) && sf.containsSecrets)
    problems.push("it captures a secret Output (pass secrets as inputs or read them in configure())");
  for (const p of [...DEFAULT_FORBIDDEN, ...(opts.forbid ?? [])]) {
    const re = typeof p === "string" ? new RegExp(p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")) : p;
    const m = re.exec(text);
    if (m)
      problems.push(
        `its text matches ${String(re)} ("${m[0].slice(0, 60)}"): require() it inside the method instead of capturing it`,
      );
  }
  for (const m of text.matchAll(CAPTURED_MODULE)) {
    if (!(opts.allowModules ?? []).includes(m[1]))
      problems.push(
        `it captures the module "${m[1]}" at module level: require() it inside the method that uses it`,
      );
  }
  const max = opts.maxBytes ?? 512 * 1024;
  if (sizeBytes > max)
    problems.push(
      `its text is ${sizeBytes} bytes, over the ${max}-byte budget (something large is captured)`,
    );
  let rebuilt: Record<string, unknown> = {};
  try {
    const requireFromString = require("require-from-string") as (
      code: string,
      filename?: string,
    ) => { handler: () => Record<string, unknown> };
    rebuilt = requireFromString(text, "serialized-provider.js").handler();
  } catch (e) {
    problems.push(`its text does not load back: ${(e as Error).message}`);
  }
  for (const m of opts.methods ?? ["create", "delete"]) {
    if (typeof rebuilt[m] !== "function") problems.push(`the rebuilt provider has no ${m}()`);
  }
  if (problems.length > 0)
    throw new Error(`provider is not serialization-safe:\n  - ${problems.join("\n  - ")}`);
  return { text, sizeBytes, provider: rebuilt };
}
