/**
 * The public face (index.ts): `import * as kvmlab from "kvmlab"` has one meaning per name
 * (components unqualified, raw dynamic resources under `resources`), and loading it reaches no
 * module of the command line (cli/), not even to find a running sandbox.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import * as kvmlab from "../../index";

const DIST = path.resolve(__dirname, "..", "..");

test("components at the top level, the dynamic resources of the same names under resources", () => {
  for (const name of ["Network", "Image", "Server"] as const) {
    assert.ok(kvmlab[name].prototype instanceof pulumi.ComponentResource, `kvmlab.${name} is the component`);
    assert.ok(
      kvmlab.resources[name].prototype instanceof pulumi.dynamic.Resource,
      `kvmlab.resources.${name} is the dynamic resource`,
    );
  }
  assert.equal(kvmlab.Flavor, kvmlab.resources.Flavor);
  assert.equal(kvmlab.Keypair, kvmlab.resources.Keypair);
  assert.equal(typeof kvmlab.resolveHosts, "function");
  assert.equal(kvmlab.readSandboxStatus, kvmlab.sandbox.readSandboxStatus);
  assert.equal(typeof kvmlab.resources.networkProvider.create, "function");
  const undefinedExports = Object.entries(kvmlab)
    .filter(([, v]) => v === undefined)
    .map(([k]) => k);
  assert.deepEqual(undefinedExports, []);
});

test("loading kvmlab and discovering sandbox hosts loads nothing from cli/", () => {
  // No kvmlab:hosts and no such sandbox: resolveHosts reads the sandbox status, then fails.
  assert.throws(
    () => kvmlab.resolveHosts(undefined, { sandboxInstance: "unit-no-such-sandbox" }),
    /no KVM hosts/,
  );
  const loaded = Object.keys(require.cache)
    .filter((f) => f.startsWith(DIST + path.sep))
    .map((f) => path.relative(DIST, f));
  assert.ok(loaded.includes("index.js"));
  assert.deepEqual(
    loaded.filter((f) => f.startsWith(`cli${path.sep}`)),
    [],
  );
});
