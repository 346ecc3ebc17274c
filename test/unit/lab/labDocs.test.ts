import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import Ajv from "ajv";
import schema from "../../../stacks/lab.schema.json";
import { formattedLabReference } from "../../../lab/docs";
import { repoRoot } from "../templates/support";

test("lab.schema.json is a valid draft-07 JSON Schema", () => {
  const ajv = new Ajv({ strict: true, strictRequired: false });
  assert.equal(ajv.validateSchema(schema), true, JSON.stringify(ajv.errors));
  assert.equal(schema.$schema, "http://json-schema.org/draft-07/schema#");
});

test("docs/lab-definition.md is generated from the schema (UPDATE_GOLDEN=1 regenerates it)", async () => {
  const file = path.join(repoRoot(), "docs", "lab-definition.md");
  const expected = await formattedLabReference();
  if (process.env.UPDATE_GOLDEN === "1") fs.writeFileSync(file, expected);
  assert.equal(
    fs.readFileSync(file, "utf8"),
    expected,
    "docs/lab-definition.md is stale: run with UPDATE_GOLDEN=1",
  );
  for (const section of Object.keys(schema.properties).filter((k) => k !== "$schema")) {
    assert.ok(expected.includes(`\`${section}\``), `section ${section} documented`);
  }
  for (const def of Object.keys(schema.definitions)) {
    const d = (schema.definitions as Record<string, { type?: string }>)[def];
    if (d.type === "object") assert.ok(expected.includes(`### type ${def}`), `type ${def} documented`);
  }
});
