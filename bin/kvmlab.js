#!/usr/bin/env node
"use strict";
// Thin launcher: the command line is compiled to dist/ by "npm ci" (the prepare script).
let cli;
try {
  cli = require("../dist/cli/index.js");
} catch (err) {
  if (err && err.code === "MODULE_NOT_FOUND" && String(err.message).includes("dist/cli/index.js")) {
    console.error('kvmlab: not built yet; run "npm ci" (or "npm run build") in the kvmlab folder first');
    process.exit(1);
  }
  throw err;
}
cli.main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`kvmlab: ${err && err.message ? err.message : String(err)}`);
    process.exit(1);
  },
);
