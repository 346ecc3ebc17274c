import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeSecret } from "../../harness/engine/props";
import { PASSPHRASE_ENV, StateStore, type ResourceState } from "../../harness/engine/state";

const res = (secret: string): ResourceState => ({
  urn: "urn:pulumi:dev::p::pulumi-nodejs:dynamic:Resource::r",
  type: "pulumi-nodejs:dynamic:Resource",
  custom: true,
  id: "r1",
  inputs: { pw: makeSecret(secret), n: 1 },
  outputs: { pw: makeSecret(secret), nested: { deep: makeSecret([secret]) } },
  dependencies: [],
  propertyDependencies: {},
});

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-state-"));
}

test("secrets are encrypted with a key file beside the state, and round-trip", () => {
  const dir = tmp();
  try {
    const store = new StateStore(path.join(dir, "dev.json"));
    store.save({ project: "p", stack: "dev", resources: [res("s3cret-value")] });
    const text = fs.readFileSync(store.file, "utf8");
    assert.ok(!text.includes("s3cret-value"));
    assert.equal(fs.statSync(store.keyFile).mode & 0o777, 0o600);
    assert.equal(fs.statSync(store.file).mode & 0o777, 0o600);
    assert.deepEqual(store.load("p", "dev").resources[0], res("s3cret-value"));
    assert.throws(() => store.load("p", "prod"), /holds project "p" stack "dev"/);
    fs.writeFileSync(store.keyFile, "00".repeat(32));
    assert.throws(() => store.load("p", "dev"), /secrets key does not match/);
    fs.rmSync(store.keyFile);
    assert.throws(() => store.load("p", "dev"), /key file .* is missing/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("with KVMLAB_ENGINE_PASSPHRASE the key is derived from it and no key file is written", () => {
  const dir = tmp();
  const saved = process.env[PASSPHRASE_ENV];
  try {
    process.env[PASSPHRASE_ENV] = "correct horse";
    const store = new StateStore(path.join(dir, "dev.json"));
    store.save({ project: "p", stack: "dev", resources: [res("pp-secret")] });
    assert.ok(!fs.existsSync(store.keyFile));
    assert.ok(!fs.readFileSync(store.file, "utf8").includes("pp-secret"));
    assert.deepEqual(store.load("p", "dev").resources[0], res("pp-secret"));
    process.env[PASSPHRASE_ENV] = "wrong";
    assert.throws(() => store.load("p", "dev"), /does not match \(wrong KVMLAB_ENGINE_PASSPHRASE\)/);
    delete process.env[PASSPHRASE_ENV];
    assert.throws(() => store.load("p", "dev"), /set KVMLAB_ENGINE_PASSPHRASE/);
  } finally {
    if (saved === undefined) delete process.env[PASSPHRASE_ENV];
    else process.env[PASSPHRASE_ENV] = saved;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a state without secrets needs no key", () => {
  const dir = tmp();
  try {
    const store = new StateStore(path.join(dir, "dev.json"));
    store.save({ project: "p", stack: "dev", resources: [] });
    assert.ok(!fs.existsSync(store.keyFile));
    assert.deepEqual(store.load("p", "dev").resources, []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
