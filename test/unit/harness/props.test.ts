import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  annotateSecrets,
  applyIgnoreChanges,
  changedPaths,
  makeSecret,
  maskSecrets,
  pathContains,
  stripSecrets,
  UNKNOWN,
  type PropertyMap,
} from "../../harness/engine/props";

test("annotateSecrets re-marks outputs under the keys of secret inputs, recursing into objects", () => {
  const ins: PropertyMap = {
    password: makeSecret("pw"),
    conn: { key: makeSecret("k"), user: "u" },
    plain: "x",
  };
  const outs: PropertyMap = { password: "pw", conn: { key: "k", user: "u" }, plain: "x", copied: "pw" };
  annotateSecrets(outs, ins);
  assert.deepEqual(outs.password, makeSecret("pw"));
  assert.deepEqual(outs.conn, { key: makeSecret("k"), user: "u" });
  assert.equal(outs.plain, "x");
  assert.equal(outs.copied, "pw", "a secret copied under another key is NOT re-marked (pitfall 3)");
});

test("stripSecrets removes every secret wrapper; maskSecrets hides them and unknowns", () => {
  const v: PropertyMap = { a: makeSecret({ b: makeSecret("c") }), d: [makeSecret(1)], u: UNKNOWN };
  assert.deepEqual(stripSecrets(v), { a: { b: "c" }, d: [1], u: UNKNOWN });
  assert.deepEqual(maskSecrets(v), { a: "[secret]", d: ["[secret]"], u: "(unknown)" });
});

test("changedPaths lists differing leaves; pathContains matches prefixes and wildcards", () => {
  assert.deepEqual(
    changedPaths({ a: 1, b: { c: 2, d: 3 }, e: [1, 2] }, { a: 1, b: { c: 2, d: 4 }, e: [1, 3], f: true }),
    ["b.d", "e[1]", "f"],
  );
  assert.deepEqual(changedPaths({ s: makeSecret("x") }, { s: "x" }), [], "a secret compares by its value");
  assert.ok(pathContains("b", "b.d"));
  assert.ok(pathContains("e[*]", "e[1]"));
  assert.ok(!pathContains("b.d", "b"));
  assert.ok(pathContains('m["x.y"]', 'm["x.y"].z'));
});

test("applyIgnoreChanges keeps old values, drops paths the old inputs lacked, and rejects wildcards", () => {
  const olds: PropertyMap = { a: 1, n: { x: 1, y: 2 } };
  assert.deepEqual(applyIgnoreChanges({ a: 2, n: { x: 5, y: 6 }, z: 1 }, olds, ["a", "n.x", "z"]), {
    a: 1,
    n: { x: 1, y: 6 },
  });
  assert.throws(() => applyIgnoreChanges({ a: [1] }, olds, ["a[*]"]), /wildcards are not supported/);
});
