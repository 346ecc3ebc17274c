import { test } from "node:test";
import * as assert from "node:assert/strict";
import { main } from "../../cli";

test("kvmlab with an unknown command exits 2 and lists the commands", async () => {
  const errors: string[] = [];
  const original = console.error;
  console.error = (msg: string) => errors.push(msg);
  try {
    assert.equal(await main(["frobnicate"]), 2);
  } finally {
    console.error = original;
  }
  assert.match(errors.join("\n"), /unknown command "frobnicate"/);
  assert.match(errors.join("\n"), /sandbox/);
});
