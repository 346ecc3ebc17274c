/**
 * packagedProvider: a provider exported by a module under node_modules/ (kvmlab installed as a
 * package) is handed to Pulumi as a delegate that serializes as a require of that module; so is one
 * of this repository's providers when the program's directory resolves `kvmlab` to this package
 * (the repository's own node_modules/kvmlab link); from anywhere else the provider itself,
 * serialized by value as before. The end-to-end check (a packed kvmlab in a program, its state)
 * is test/lifecycle/package.test.ts; every lifecycle test run from this repository goes through
 * the linked delegate.
 */
import { after, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { linkedModule, packagedProvider } from "../../../provider/packaged";
import { networkProvider } from "../../../provider/network";
import { autoscaleRollProvider } from "../../../provider/autoscale/roll";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-packaged-"));
after(() => fs.rmSync(root, { recursive: true, force: true }));

/** A package `fakeprov` in <root>/node_modules whose provider calls a large helper of its module. */
function installFake(): { fakeProvider: Record<string, (...a: unknown[]) => Promise<unknown>> } {
  const dir = path.join(root, "node_modules", "fakeprov");
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: "fakeprov", main: "index.js" }));
  fs.writeFileSync(
    path.join(dir, "index.js"),
    [
      '"use strict";',
      `function helper(v) { return "helper:" + v + ":" + ${JSON.stringify("x".repeat(20_000))}.length; }`,
      "exports.fakeProvider = {",
      "  async check(_olds, news) { return { inputs: news }; },",
      "  async create(inputs) { return { id: 'id-1', outs: { v: helper(inputs.v) } }; },",
      "};",
    ].join("\n"),
  );
  return require(path.join(dir, "index.js")) as ReturnType<typeof installFake>;
}

async function serialize(provider: object): Promise<string> {
  return (await pulumi.runtime.serializeFunction(() => provider, { allowSecrets: true })).text;
}

/** This repository: dist/test/unit/provider -> four folders up. */
const REPO = path.resolve(__dirname, "..", "..", "..", "..");

test("linked: where `kvmlab` resolves to this package, a provider serializes as a require of its name", async () => {
  const linked = linkedModule(networkProvider, path.join(REPO, "examples", "three-tier"));
  assert.deepEqual(linked, { spec: "kvmlab/dist/provider/network.js", key: "networkProvider" });
  assert.deepEqual(linkedModule(autoscaleRollProvider, REPO), {
    spec: "kvmlab/dist/provider/autoscale/roll.js",
    key: "autoscaleRollProvider",
  });
  // The repository's node_modules/kvmlab link is what the tests and examples run with.
  assert.ok(fs.lstatSync(path.join(REPO, "node_modules", "kvmlab")).isSymbolicLink());

  const d = packagedProvider(networkProvider) as typeof networkProvider;
  assert.notEqual(d, networkProvider, "the test runs in the repository: the linked delegate");
  const text = await serialize(d);
  assert.match(text, /spec: "kvmlab\/dist\/provider\/network\.js"/);
  assert.match(text, /key: "networkProvider"/);
  assert.match(text, /require\(spec\)/);
  assert.doesNotMatch(text, /ipam|iptables|runSteps/i, "none of the provider's own code");
  assert.ok(text.length < 5000, `${text.length} bytes`);
  const control = await serialize(networkProvider);
  assert.ok(control.length > 50_000, `control: by value it is the provider's code (${control.length} bytes)`);

  // Loaded back as the dynamic-provider plugin does (its require resolves from the program's
  // folder), it is the provider: the same check answer for the same bad inputs.
  const requireFromString = require("require-from-string") as (
    code: string,
    file: string,
  ) => { handler: () => typeof networkProvider };
  const rebuilt = requireFromString(text, path.join(REPO, "examples", "three-tier", "provider.js")).handler();
  const bad = { networkName: "Bad Name!" } as never;
  assert.deepEqual(await rebuilt.check!({} as never, bad), await networkProvider.check!({} as never, bad));

  // Run from a folder where `kvmlab` does not resolve (an install that pruned the link): the
  // error names the module, the export and the fix.
  const elsewhere = requireFromString(text, path.join(root, "provider.js")).handler();
  await assert.rejects(
    async () => elsewhere.check!({} as never, bad),
    (err: Error) =>
      /cannot load kvmlab\/dist\/provider\/network\.js: /.test(err.message) &&
      /Fix: npm install kvmlab in the program's folder/.test(err.message) &&
      /npm run prepare/.test(err.message),
  );
});

test("not linked: kvmlab not found, or another package named kvmlab: by value", () => {
  const none = fs.mkdtempSync(path.join(root, "none-"));
  assert.equal(linkedModule(networkProvider, none), undefined);
  const other = fs.mkdtempSync(path.join(root, "other-"));
  fs.mkdirSync(path.join(other, "node_modules", "kvmlab"), { recursive: true });
  fs.writeFileSync(
    path.join(other, "node_modules", "kvmlab", "package.json"),
    JSON.stringify({ name: "kvmlab", version: "0.0.1" }),
  );
  assert.equal(linkedModule(networkProvider, other), undefined);
  assert.equal(linkedModule({ check: async () => ({}) }, REPO), undefined, "not one of kvmlab's exports");
});

test("from node_modules a provider serializes as a require of its module, and still works", async () => {
  const { fakeProvider } = installFake();
  const byValue = await serialize(fakeProvider);
  assert.match(byValue, /helper:/, "control: by value the module's helper is in the text");

  const d = packagedProvider(fakeProvider);
  assert.notEqual(d, fakeProvider);
  assert.equal(packagedProvider(fakeProvider), d, "one delegate per provider (Pulumi caches by object)");
  assert.deepEqual(Object.keys(d).sort(), ["check", "create"], "only the provider's own methods");

  const text = await serialize(d);
  assert.match(text, /require\("fakeprov\/index\.js"\)/);
  assert.doesNotMatch(text, /helper/);
  assert.ok(text.length < 3000, `${text.length} bytes`);

  // Loaded back as the dynamic-provider plugin does, from the program's folder.
  const requireFromString = require("require-from-string") as (
    code: string,
    file: string,
  ) => {
    handler: () => typeof fakeProvider;
  };
  const rebuilt = requireFromString(text, path.join(root, "provider.js")).handler();
  assert.deepEqual(await rebuilt.create({ v: 7 }), { id: "id-1", outs: { v: "helper:7:20000" } });
  assert.deepEqual(await rebuilt.check({}, { v: 1 }), { inputs: { v: 1 } });

  // A later version without that export (renamed): the error names it, not a bare TypeError.
  const mod = require(path.join(root, "node_modules", "fakeprov", "index.js")) as Record<string, unknown>;
  const kept = mod.fakeProvider;
  delete mod.fakeProvider;
  try {
    await assert.rejects(
      async () => rebuilt.create({ v: 7 }),
      (err: Error) =>
        /fakeprov\/index\.js has no fakeProvider\.create \(renamed since/.test(err.message) &&
        /Fix: install the kvmlab that wrote it/.test(err.message),
    );
  } finally {
    mod.fakeProvider = kept;
  }
});
