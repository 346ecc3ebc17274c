/**
 * Preload for counting what a command loads: `node --require dist/test/support/moduleLog.js …`
 * with KVMLAB_MODULE_LOG=<file> writes every module file in require.cache to <file> (a JSON
 * array) when the process exits. Test support only.
 */
import * as fs from "node:fs";

const out = process.env.KVMLAB_MODULE_LOG;
if (out !== undefined && out !== "") {
  process.on("exit", () => {
    fs.writeFileSync(out, JSON.stringify(Object.keys(require.cache)));
  });
}
