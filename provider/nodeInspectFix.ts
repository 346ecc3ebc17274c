/**
 * Protects every kvmlab user from nodejs/node#64011 (Node 20.20): `util.inspect(err, {colors:
 * true})` runs out of memory, or takes 15-40 s, when a stack frame's path ends in
 * `node_modules/<name>`, which @pulumi/pulumi's source maps produce. Pulumi's language host
 * formats every program error that way, so a failing `pulumi up` would hang and crash.
 *
 * Installed by importing kvmlab (index.ts) and the provider barrel (the dynamic-provider plugin
 * loads it): Errors are formatted without colors, nothing else changes. Installed once per
 * process (a global symbol), whichever copy of kvmlab comes first. The same fix the tests
 * preload (test/support/inspectFix.ts).
 */
import type * as utilTypes from "node:util";

/** Installs the fix (idempotent); returns true when this call installed it. */
export function installInspectFix(): boolean {
  const g = globalThis as unknown as Record<symbol, boolean | undefined>;
  const mark = Symbol.for("kvmlab.inspectFix.v1");
  if (g[mark]) return false;
  // The module object itself (an import namespace's properties are read-only getters).
  const util: typeof utilTypes = require("node:util");
  const original = util.inspect;
  const patched = function inspect(this: unknown, value: unknown, ...rest: unknown[]): string {
    const [opts] = rest;
    if (
      value instanceof Error &&
      opts !== null &&
      typeof opts === "object" &&
      (opts as utilTypes.InspectOptions).colors
    ) {
      rest[0] = { ...(opts as utilTypes.InspectOptions), colors: false };
    }
    return (original as (...args: unknown[]) => string).apply(this, [value, ...rest]);
  };
  Object.defineProperties(patched, Object.getOwnPropertyDescriptors(original));
  util.inspect = patched as unknown as typeof util.inspect;
  g[mark] = true;
  return true;
}

installInspectFix();
