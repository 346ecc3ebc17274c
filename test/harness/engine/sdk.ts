/** Locating the program's copy of @pulumi/pulumi and preparing child-process environments. */
import * as fs from "node:fs";
import * as path from "node:path";

/**
 * Resolves a module of @pulumi/pulumi from the program's folder, as the language host's
 * locateModule does, so the program and the runtime share one SDK copy (pitfall 8).
 */
export function sdkModule(programDir: string, sub: string): string {
  let pkg: string;
  try {
    pkg = require.resolve("@pulumi/pulumi/package.json", { paths: [programDir] });
  } catch {
    throw new Error(
      `${programDir}: cannot resolve @pulumi/pulumi from the program's folder; install it (npm install @pulumi/pulumi)`,
    );
  }
  return path.join(path.dirname(pkg), sub);
}

/**
 * The Node 20.20 error-formatting fix (test/support/inspectFix.ts, pitfall 1), resolved relative
 * to the harness's compiled location (dist/test/harness/engine → dist/test/support).
 */
export function inspectFixPath(): string {
  const p = path.resolve(__dirname, "..", "..", "support", "inspectFix.js");
  if (!fs.existsSync(p)) throw new Error(`${p} is missing: run "npm run build" first`);
  return p;
}

/**
 * The environment for the program and provider processes: the harness's own, minus every
 * inherited setting that cmd/run or the language host sets (the SDK reads all of its settings
 * from the environment, pitfall 8), plus `extra`. User knobs such as PULUMI_NODEJS_TRANSPILE_ONLY
 * pass through, as they do under the CLI.
 */
const SCRUBBED =
  /^PULUMI_(NODEJS_(ORGANIZATION|PROJECT|ROOT_DIRECTORY|STACK|DRY_RUN|PARALLEL|MONITOR|ENGINE|SYNC|TYPESCRIPT)|CONFIG|CONFIG_SECRET_KEYS)$/;

export function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (SCRUBBED.test(k) || k === "KVMLAB_ENGINE_PASSPHRASE") continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}
