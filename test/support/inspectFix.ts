/**
 * Works around nodejs/node#64011 on Node 20.20: `util.inspect(err, { colors: true })` can take
 * 15-40 s or exhaust the heap when a stack frame's path ends in `node_modules/<name>`, which
 * @pulumi/pulumi's source maps produce. Formatting errors without colors avoids the slow path.
 * Loaded with `node --require` by the test runner and the engine harness; see
 * ../shared/research/pulumi-engineless.md, pitfall 1.
 */
import type * as utilTypes from "node:util";

// The module object itself (not an import namespace, whose properties are read-only getters).
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
