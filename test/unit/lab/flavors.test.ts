/**
 * Flavors in a lab definition: the schema's size limits are core/flavor.ts's, extra specs reach
 * the rendered domain XML, and what a server cannot honour is reported at the flavor's key.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { parse } from "yaml";
import { FLAVOR_LIMITS } from "../../../core/flavor";
import { renderLab } from "../../../lab/artifacts";
import { parseLab } from "../../../lab/parse";
import schema from "../../../stacks/lab.schema.json";
import { repoRoot } from "../templates/support";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Data = Record<string, any>;

function threeTierWith(edit: (d: Data) => void): string {
  const data = parse(fs.readFileSync(path.join(repoRoot(), "stacks", "three-tier.yaml"), "utf8"));
  edit(data);
  return JSON.stringify(data, null, 2);
}

test("the lab schema's flavor limits are core/flavor.ts FLAVOR_LIMITS", () => {
  const props = (schema as Data).properties.flavors.items.properties;
  for (const [size, { min, max }] of Object.entries(FLAVOR_LIMITS)) {
    assert.equal(props[size].minimum, min, `${size}.minimum`);
    assert.equal(props[size].maximum, max, `${size}.maximum`);
  }
});

test("a lab flavor's extra specs reach the rendered domain XML", () => {
  const { lab, issues } = parseLab(
    threeTierWith((d) => {
      d.flavors[0].extraSpecs = { "hw:watchdog_action": "reset", "quota:cpu_shares": "512" };
    }),
  );
  assert.deepEqual(issues, []);
  const files = renderLab(lab!).files;
  const users = lab!.servers.filter((s) => s.flavor === lab!.flavors[0].name).map((s) => s.name);
  const groups = lab!.autoscaleGroups
    .filter((g) => g.launch.flavor === lab!.flavors[0].name)
    .map((g) => `${g.name}-0`);
  const name = [...users, ...groups][0];
  assert.ok(name !== undefined, "some server uses the first flavor");
  const xml = files.get(`servers/${name}.xml`)!;
  assert.match(xml, /<watchdog model='i6300esb' action='reset'\/>/);
  assert.match(xml, /<cputune>\n\s+<shares>512<\/shares>/);
});

test("extra specs a server cannot honour, and ephemeral or swap disks on a used flavor, are issues at the key", () => {
  const { lab, issues } = parseLab(
    threeTierWith((d) => {
      d.flavors[0].extraSpecs = { "hw:cpu_policy": "dedicated" };
      d.flavors[1].swapMiB = 512;
    }),
  );
  assert.equal(lab, null);
  const byPath = new Map(issues.map((i) => [i.path, i]));
  assert.match(byPath.get('flavors[0].extraSpecs["hw:cpu_policy"]')!.message, /needs pinned host CPUs/);
  assert.match(byPath.get("flavors[1].swapMiB")!.message, /no swap disk, and servers use flavor m1\.medium/);
  assert.equal(issues.length, 2, JSON.stringify(issues));
});
