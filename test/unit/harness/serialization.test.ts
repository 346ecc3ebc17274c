import { test } from "node:test";
import * as assert from "node:assert/strict";
import { assertSerializable } from "../../harness/serialization";
import { fileProvider } from "../../fixtures/programs/lib/fileResource";

test("the fixture file provider serializes, loads back and works in-process", async () => {
  const { provider, sizeBytes } = await assertSerializable(fileProvider, {
    methods: ["check", "diff", "create", "read", "update", "delete"],
  });
  assert.ok(sizeBytes > 0);
  const diff = provider.diff as (id: string, o: object, n: object) => Promise<{ replaces: string[] }>;
  assert.deepEqual((await diff("x", { dir: "/d", file: "a" }, { dir: "/d", file: "b" })).replaces, ["file"]);
});

test("fails when a provider captures a top-level module it should require lazily", async () => {
  const yaml = require("yaml") as typeof import("yaml");
  const bad = {
    async create(inputs: { text: string }) {
      return { id: "x", outs: { doc: yaml.parse(inputs.text) as unknown } };
    },
    async delete() {},
  };
  await assert.rejects(assertSerializable(bad), /captures the module "yaml" at module level/);
  const { text } = await assertSerializable(bad, { allowModules: ["yaml"] });
  assert.match(text, /require\("yaml"\)/);
});

test("fails when a provider captures a private key or a forbidden string", async () => {
  const key = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----";
  const bad = {
    async create() {
      return { id: key.slice(0, 3), outs: {} };
    },
    async delete() {},
  };
  await assert.rejects(assertSerializable(bad), /PRIVATE KEY/);
  const hostBound = {
    async create() {
      return { id: "/home/alice/lab", outs: {} };
    },
  };
  await assert.rejects(
    assertSerializable(hostBound, { forbid: ["/home/alice"] }),
    /\/home\/alice[\s\S]*no delete\(\)/,
  );
});
