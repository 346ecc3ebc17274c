/**
 * Lifecycle scenarios for the engine harness (test/harness/engine), on the `files` fixture
 * program: real cmd/run, real dynamic-provider plugin, real files in a temporary folder.
 * These prove the program + SDK + provider work against the harness's PORT of the engine's
 * step rules; they do not exercise the Go engine itself (docs/engine-harness.md).
 */
import { describe, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import { FixtureStack, maxOverlap, ops, type Spec } from "../harness/engine/fixture";
import { formatStep } from "../harness/engine/cli";

function okRun(r: { ok: boolean; errors: string[] }): void {
  assert.ok(r.ok, `run failed: ${r.errors.join("; ")}`);
}

// Scenarios are independent (own temporary folder, state file and processes); two at a time keep
// both cores busy while one run waits on process start-up.
describe("engine harness lifecycle", { concurrency: 2 }, () => {
  test("create, no-op, preview with unknowns, update: calls only what changed", async () => {
    const s = new FixtureStack("basic");
    try {
      const spec: Spec = {
        components: ["grp"],
        files: [
          { name: "a", parent: "grp" },
          { name: "b", contentFrom: "a", parent: "grp" },
          { name: "c", dependsOn: ["grp"] },
        ],
      };
      const r1 = await s.run("up", spec);
      okRun(r1);
      assert.deepEqual(r1.counts, { create: 4, same: 0, update: 0, replace: 0, delete: 0 });
      assert.deepEqual(ops(s.newJournal()).sort(), ["create a.txt", "create b.txt", "create c.txt"]);
      assert.equal(s.read("b.txt"), `${s.dir}/a.txt`, "b's content is a's path output");
      // Child URNs carry the parent's type chain (the Stack is left out).
      assert.ok(
        r1.steps.some((e) =>
          e.urn.endsWith("::kvmlab-test:index:Group$pulumi-nodejs:dynamic/kvmlab-test:File::a"),
        ),
      );
      assert.deepEqual(r1.outputs.paths, { a: `${s.dir}/a.txt`, b: `${s.dir}/b.txt`, c: `${s.dir}/c.txt` });

      const r2 = await s.run("up", spec);
      okRun(r2);
      assert.deepEqual(r2.counts, { create: 0, same: 4, update: 0, replace: 0, delete: 0 });
      assert.deepEqual(s.newJournal(), [], "a no-op run makes no Create/Update/Delete call");

      const before = s.stateText();
      const changed: Spec = {
        ...spec,
        files: [{ ...spec.files[0], content: "A2" }, spec.files[1], spec.files[2]],
      };
      const p = await s.run("preview", changed);
      okRun(p);
      assert.deepEqual(s.newJournal(), [], "preview calls no Create/Update/Delete");
      assert.equal(s.stateText(), before, "preview leaves the state file alone");
      const a = p.steps.find((e) => e.urn.endsWith("::a"))!;
      assert.equal(a.op, "update");
      assert.deepEqual(
        a.changes.map((c) => [c.path, c.old, c.new]),
        [["content", "a", "A2"]],
      );
      // a's `path` is an output that is not an input, so it is unknown during preview, and b sees the unknown.
      const b = p.steps.find((e) => e.urn.endsWith("::b"))!;
      assert.equal(b.op, "update");
      assert.equal(b.changes[0].new, "04da6b54-80e4-46f7-96ec-b56ff0331ba9");
      assert.match(formatStep(b), /content: ".*a\.txt" => \(unknown\)/);

      const r3 = await s.run("up", changed);
      okRun(r3);
      assert.deepEqual(
        ops(s.newJournal()),
        ["update a.txt"],
        "b's content (a's path) did not change, so b is Same",
      );
      assert.equal(s.read("a.txt"), "A2");
    } finally {
      s.cleanup();
    }
  });

  test("replace, create-before-delete: the new resource is created first, the old one deleted after the program", async () => {
    const s = new FixtureStack("cbd");
    try {
      await s.run("up", { files: [{ name: "a" }, { name: "b", contentFrom: "a" }] }).then(okRun);
      s.newJournal();
      const r = await s.run("up", {
        files: [
          { name: "a", file: "a2.txt" },
          { name: "b", contentFrom: "a" },
        ],
      });
      okRun(r);
      assert.deepEqual(r.counts, { create: 0, same: 0, update: 1, replace: 1, delete: 0 });
      assert.deepEqual(ops(s.newJournal()), ["create a2.txt", "update b.txt", "delete a.txt"]);
      assert.equal(s.read("b.txt"), `${s.dir}/a2.txt`);
      assert.ok(!s.exists("a.txt"));
      assert.deepEqual(s.stateNames(), ["files-dev", "a", "b"]);

      // When the program fails after a replace, the original is kept (marked for deletion) and
      // deleted by the next successful run.
      const failed = await s.run("up", {
        files: [
          { name: "a", file: "a3.txt" },
          { name: "b", contentFrom: "a" },
        ],
        throwAfter: ["b"],
      });
      assert.equal(failed.ok, false);
      assert.deepEqual(ops(s.newJournal()), ["create a3.txt", "update b.txt"]);
      assert.deepEqual(s.stateNames().sort(), ["a", "a (delete)", "b", "files-dev"]);
      assert.ok(s.exists("a2.txt"));
      const retried = await s.run("up", {
        files: [
          { name: "a", file: "a3.txt" },
          { name: "b", contentFrom: "a" },
        ],
      });
      okRun(retried);
      assert.deepEqual(ops(s.newJournal()), ["delete a2.txt"]);
      assert.ok(!s.exists("a2.txt"));
      assert.deepEqual(s.stateNames(), ["files-dev", "a", "b"]);
    } finally {
      s.cleanup();
    }
  });

  test("replace, delete-before-replace (provider and option): dependents that must be replaced are deleted first", async () => {
    const s = new FixtureStack("dbr");
    try {
      const spec = (aFile: string, dbr: boolean, opt?: boolean): Spec => ({
        files: [
          { name: "a", file: aFile, dbr, deleteBeforeReplace: opt },
          // b's file name comes from a's: replacing a forces b to be replaced too.
          { name: "b", fileFrom: "a" },
          // c's content comes from a's path: it changes but only needs an update.
          { name: "c", contentFrom: "a" },
          // d only dependsOn a: no property of d can change, so d stays.
          { name: "d", dependsOn: ["a"] },
        ],
      });
      await s.run("up", spec("a.txt", true)).then(okRun);
      s.newJournal();

      const r = await s.run("up", spec("a2.txt", true));
      okRun(r);
      assert.deepEqual(ops(s.newJournal()), [
        "delete a.txt.copy",
        "delete a.txt",
        "create a2.txt",
        "create a2.txt.copy",
        "update c.txt",
      ]);
      const byName = Object.fromEntries(r.steps.map((e) => [e.urn.split("::").pop(), e]));
      assert.equal(byName.a.op, "replace");
      assert.equal(byName.a.deleteBeforeReplace, true);
      assert.equal(byName.b.op, "replace");
      assert.equal(byName.c.op, "update");
      assert.equal(byName.d.op, "same");

      // The deleteBeforeReplace resource option overrides a provider that does not ask for it.
      const r2 = await s.run("up", spec("a3.txt", false, true));
      okRun(r2);
      assert.deepEqual(ops(s.newJournal()), [
        "delete a2.txt.copy",
        "delete a2.txt",
        "create a3.txt",
        "create a3.txt.copy",
        "update c.txt",
      ]);
      assert.deepEqual(s.stateNames().sort(), ["a", "b", "c", "d", "files-dev"]);
    } finally {
      s.cleanup();
    }
  });

  test("dropped resources are deleted after the program, dependents first; retainOnDelete, ignoreChanges, replaceOnChanges", async () => {
    const s = new FixtureStack("drop");
    try {
      await s
        .run("up", {
          components: ["grp"],
          files: [
            { name: "a" },
            { name: "b", contentFrom: "a", parent: "grp" },
            { name: "c", dependsOn: ["b"] },
            { name: "keep", retainOnDelete: true },
            { name: "i", ignoreChanges: ["content"] },
            // Without diff(), the engine diffs inputs itself and replaceOnChanges applies (rules 3, 4).
            { name: "l", file: "l1.txt", legacy: true, replaceOnChanges: ["content"] },
          ],
        })
        .then(okRun);
      s.newJournal();
      const r = await s.run("up", {
        files: [
          { name: "a" },
          { name: "i", content: "ignored", ignoreChanges: ["content"] },
          { name: "l", file: "l1.txt", content: "new", legacy: true, replaceOnChanges: ["content"] },
        ],
      });
      okRun(r);
      const j = ops(s.newJournal());
      assert.deepEqual(
        j.filter((o) => !o.includes(" l1.txt")),
        ["delete c.txt", "delete b.txt"],
        "c depends on b: c goes first; keep is retained",
      );
      assert.deepEqual(
        j.filter((o) => o.includes(" l1.txt")),
        ["create l1.txt", "delete l1.txt"],
      );
      const order = r.steps.filter((e) => e.op === "delete").map((e) => e.urn.split("::").pop());
      assert.ok(order.indexOf("b") < order.indexOf("grp"), `child before parent: ${order.join(", ")}`);
      assert.ok(s.exists("keep.txt"), "retainOnDelete leaves the file");
      const byName = Object.fromEntries(
        r.steps.filter((e) => e.op !== "delete").map((e) => [e.urn.split("::").pop(), e]),
      );
      assert.equal(byName.i.op, "same", "an ignored change is no change");
      assert.equal(s.read("i.txt"), "i");
      assert.equal(byName.l.op, "replace");
      assert.deepEqual(byName.l.replaceKeys, ["content"]);
      assert.deepEqual(r.counts, { create: 0, same: 2, update: 0, replace: 1, delete: 4 });
      assert.deepEqual(s.stateNames().sort(), ["a", "files-dev", "i", "l"]);
    } finally {
      s.cleanup();
    }
  });

  test("a failing program saves what really happened and deletes nothing, and fails fast", async () => {
    const s = new FixtureStack("fail");
    try {
      await s.run("up", { files: [{ name: "a" }, { name: "b" }] }).then(okRun);
      s.newJournal();
      const logs: string[] = [];
      const r = await s.run(
        "up",
        { files: [{ name: "a", content: "A2" }, { name: "c" }], throwAfter: ["c"] },
        { logs },
      );
      assert.equal(r.ok, false);
      assert.ok(logs.join("\n").includes("failed on purpose (throwAfter)"), logs.join("\n"));
      console.log(`failing program run took ${r.durationMs} ms`);
      assert.ok(r.durationMs < 60_000, `a failing program must not hang (took ${r.durationMs} ms)`);
      assert.deepEqual(ops(s.newJournal()).sort(), ["create c.txt", "update a.txt"]);
      assert.ok(s.exists("b.txt"), "b was not deleted");
      assert.deepEqual(s.stateNames().sort(), ["a", "b", "c", "files-dev"]);
      assert.match(s.stateText(), /"content": "A2"/);

      // A failing provider Check (bad file name) names the property and fails fast too.
      const r2 = await s.run(
        "up",
        { files: [{ name: "a", file: "x/y" }, { name: "b" }, { name: "c" }] },
        { logs },
      );
      assert.equal(r2.ok, false);
      console.log(`failing check run took ${r2.durationMs} ms`);
      assert.ok(r2.durationMs < 60_000);
      assert.ok(
        r2.errors.some((e) => /file: "x\/y" must be a plain name/.test(e)),
        r2.errors.join("\n"),
      );
      assert.deepEqual(s.newJournal(), []);
    } finally {
      s.cleanup();
    }
  });

  test("a failed create leaves earlier work in state; a partial create (init failure) is recorded and updated next run", async () => {
    const s = new FixtureStack("failcreate");
    try {
      const r = await s.run("up", {
        files: [
          { name: "a" },
          { name: "b", fail: "create", dependsOn: ["a"] },
          { name: "c", fail: "init", dependsOn: ["a"] },
        ],
      });
      assert.equal(r.ok, false);
      assert.ok(
        r.errors.some((e) => e.includes('failed on purpose (fail: "create")')),
        r.errors.join("\n"),
      );
      assert.ok(
        r.errors.some((e) => e.includes('failed to initialize (fail: "init")')),
        r.errors.join("\n"),
      );
      assert.deepEqual(
        s.stateNames().sort(),
        ["a", "c", "files-dev"],
        "b was never made; c was made, with init errors",
      );
      assert.match(s.stateText(), /"initErrors": \[\s*"initialization failed on purpose"/);
      s.newJournal();
      const r2 = await s.run("up", {
        files: [
          { name: "a" },
          { name: "b", dependsOn: ["a"] },
          { name: "c", fail: "init", dependsOn: ["a"] },
        ],
      });
      okRun(r2);
      assert.deepEqual(r2.counts, { create: 1, same: 1, update: 1, replace: 0, delete: 0 });
      assert.deepEqual(
        ops(s.newJournal()).sort(),
        ["create b.txt", "update c.txt"],
        "init errors force an update",
      );
      assert.doesNotMatch(s.stateText(), /initErrors/);
    } finally {
      s.cleanup();
    }
  });

  test("secrets are encrypted at rest, masked in outputs, and survive a reload", async () => {
    const s = new FixtureStack("secret");
    try {
      const spec: Spec = { files: [{ name: "s", secretExtra: true, additionalSecretOutputs: ["size"] }] };
      const r = await s.run("up", spec, { secrets: { token: "hunter2-secret" } });
      okRun(r);
      const text = s.stateText();
      assert.ok(!text.includes("hunter2-secret"), "the secret is not in the state file in clear text");
      assert.match(text, /"ciphertext"/);
      const mode = fs.statSync(`${s.stateFile}.key`).mode & 0o777;
      assert.equal(mode, 0o600, "the key file is private");
      const state = JSON.parse(text) as { resources: { urn: string; outputs: Record<string, unknown> }[] };
      const res = state.resources.find((x) => x.urn.endsWith("::s"))!;
      assert.ok(
        JSON.stringify(res.outputs.extra).includes("ciphertext"),
        "an output under a secret input's key is secret",
      );
      assert.ok(
        JSON.stringify(res.outputs.size).includes("ciphertext"),
        "additionalSecretOutputs are secret",
      );
      assert.equal(s.read("s.txt"), "s");

      const r2 = await s.run("up", spec, { secrets: { token: "hunter2-secret" } });
      okRun(r2);
      assert.deepEqual(r2.counts, { create: 0, same: 1, update: 0, replace: 0, delete: 0 });
      assert.deepEqual(
        s.newJournal().map((e) => e.op),
        ["create"],
      );
      const { jsonResult } = await import("../harness/engine/cli");
      assert.deepEqual((jsonResult(r2).outputs as { sizes: unknown }).sizes, { s: "[secret]" });
    } finally {
      s.cleanup();
    }
  });

  test("refresh: a resource deleted out of band leaves the state, changed outputs are updated", async () => {
    const s = new FixtureStack("refresh");
    try {
      const spec: Spec = { files: [{ name: "a" }, { name: "b" }, { name: "c" }] };
      await s.run("up", spec).then(okRun);
      s.newJournal();
      fs.rmSync(`${s.dir}/a.txt`);
      fs.writeFileSync(`${s.dir}/b.txt`, "edited by hand");
      const r = await s.run("refresh", spec);
      okRun(r);
      const byName = Object.fromEntries(r.steps.map((e) => [e.urn.split("::").pop(), e.op]));
      assert.deepEqual(byName, { a: "delete", b: "update", c: "same" });
      assert.deepEqual(s.stateNames().sort(), ["b", "c", "files-dev"]);
      assert.match(s.stateText(), /edited by hand/);
      // The next up recreates a and puts b's content back.
      const r2 = await s.run("up", spec);
      okRun(r2);
      assert.deepEqual(ops(s.newJournal()).sort(), ["create a.txt", "update b.txt"]);
      assert.equal(s.read("b.txt"), "b");
    } finally {
      s.cleanup();
    }
  });

  test("parallel creates and deletes, --parallel 1, protect, and destroy in reverse dependency order", async () => {
    const s = new FixtureStack("destroy");
    try {
      const files = (content: string, protect: boolean): Spec["files"] => [
        { name: "a", sleepMs: 300 },
        { name: "b", contentFrom: "a", sleepMs: 300 },
        { name: "c", contentFrom: "b", sleepMs: 300 },
        { name: "x", content, sleepMs: 300 },
        { name: "y", content, sleepMs: 300 },
        { name: "p", content, protect },
      ];
      await s.run("up", { files: files("v1", true) }, { parallel: 8 }).then(okRun);
      const created = s.newJournal();
      assert.ok(maxOverlap(created) >= 2, `independent creates overlapped (max ${maxOverlap(created)})`);

      const blocked = await s.run("destroy", { files: [] });
      assert.equal(blocked.ok, false);
      assert.ok(
        blocked.errors.some((e) => /protected/.test(e) && e.includes("::p")),
        blocked.errors.join("\n"),
      );
      assert.deepEqual(s.newJournal(), [], "nothing is deleted when a protected resource is in the way");

      await s.run("up", { files: files("v2", false) }, { parallel: 1 }).then(okRun);
      const serial = s.newJournal();
      assert.deepEqual(ops(serial).sort(), ["update p.txt", "update x.txt", "update y.txt"]);
      assert.equal(maxOverlap(serial), 1, "--parallel 1 runs one update at a time");

      const r = await s.run("destroy", { files: [] }, { parallel: 8 });
      okRun(r);
      const j = s.newJournal().filter((e) => e.op === "delete");
      const order = ops(j);
      assert.ok(order.indexOf("delete c.txt") < order.indexOf("delete b.txt"));
      assert.ok(order.indexOf("delete b.txt") < order.indexOf("delete a.txt"));
      assert.ok(maxOverlap(j) >= 2, `independent deletes overlapped (max ${maxOverlap(j)})`);
      assert.deepEqual(s.stateNames(), []);
      assert.equal(r.counts.delete, 6);
    } finally {
      s.cleanup();
    }
  });

  test("a Same step keeps the old outputs, so Delete runs the provider code that created the resource", async () => {
    const s = new FixtureStack("oldcode");
    try {
      await s.run("up", { files: [{ name: "t", tag: "v1" }, { name: "u" }] }).then(okRun);
      s.newJournal();
      // New provider code (v2), same inputs: diff() says no change, so the step is Same.
      const r = await s.run("up", { files: [{ name: "t", tag: "v2" }, { name: "u" }] });
      okRun(r);
      assert.deepEqual(r.counts, { create: 0, same: 2, update: 0, replace: 0, delete: 0 });
      assert.deepEqual(s.newJournal(), []);
      const state = JSON.parse(s.stateText()) as {
        resources: { urn: string; inputs: { __provider: string }; outputs: { __provider: string } }[];
      };
      const t = state.resources.find((x) => x.urn.endsWith("::t"))!;
      assert.notEqual(
        t.inputs.__provider,
        t.outputs.__provider,
        "inputs carry the new code, outputs the old",
      );
      assert.match(t.outputs.__provider, /v1/);
      const gone = await s.run("up", { files: [{ name: "u" }] });
      okRun(gone);
      assert.deepEqual(
        ops(s.newJournal()),
        ["delete@v1 t.txt"],
        "the delete ran the v1 code from the outputs",
      );
    } finally {
      s.cleanup();
    }
  });

  test("unsupported features fail with an error naming the feature", async () => {
    const s = new FixtureStack("unsupported");
    try {
      const r = await s.run("up", {
        files: [
          { name: "a", aliases: ["urn:pulumi:dev::files::pulumi-nodejs:dynamic/kvmlab-test:File::old"] },
        ],
      });
      assert.equal(r.ok, false);
      assert.ok(
        r.errors.some((e) => /aliases is not supported by the kvmlab engine harness/.test(e)),
        r.errors.join("\n"),
      );
      assert.deepEqual(s.journal(), []);
    } finally {
      s.cleanup();
    }
  });
});
