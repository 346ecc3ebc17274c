/**
 * Lab definitions with network types (issue 16): `type` and `segmentationId` read into the lab,
 * a file without them keeps its kind's type, and mismatches are refused naming the field.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { parse } from "yaml";
import { parseLab } from "../../../lab/parse";
import { repoRoot } from "../templates/support";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Data = Record<string, any>;

function withNetworks(edit: (networks: Data[]) => void): string {
  const data = parse(fs.readFileSync(path.join(repoRoot(), "stacks", "three-tier.yaml"), "utf8")) as Data;
  edit(data.networks as Data[]);
  return JSON.stringify(data, null, 2);
}

test("type and segmentationId read into the lab; a kind alone keeps its type", () => {
  const plain = parseLab(withNetworks(() => undefined));
  assert.deepEqual(plain.issues, []);
  for (const n of plain.lab!.networks) assert.equal(n.type, n.kind === "provider" ? "flat" : "vxlan");
  const typed = parseLab(
    withNetworks((ns) => {
      const self = ns.find((n) => n.kind === "selfservice")!;
      self.type = "gre";
      self.driver = "openvswitch";
      self.segmentationId = 77;
    }),
  );
  assert.deepEqual(typed.issues, []);
  const gre = typed.lab!.networks.find((n) => n.type === "gre")!;
  assert.equal(gre.segmentationId, 77);
});

test("mismatched types, missing or hostile ids are refused naming the field", () => {
  const cases: [(n: Data) => void, RegExp][] = [
    [
      (n) => ((n.type = "vlan"), (n.segmentationId = 5)),
      /networks\[\d\]\.type.*does not go with kind selfservice/,
    ],
    [(n) => ((n.type = "gre"), (n.driver = "linuxbridge")), /networks\[\d\]\.driver.*needs Open vSwitch/],
    [
      (n) => ((n.type = "vxlan"), (n.segmentationId = 5), (n.vni = 6)),
      /networks\[\d\]\.segmentationId.*differ/,
    ],
    [(n) => (n.segmentationId = "5; reboot"), /networks\[\d\]\.segmentationId/],
    [(n) => (n.type = "vlan;id"), /networks\[\d\]\.type/],
  ];
  for (const [edit, want] of cases) {
    const { issues } = parseLab(withNetworks((ns) => edit(ns.find((n) => n.kind === "selfservice")!)));
    const text = issues.map((i) => `${i.path}: ${i.message}`).join("\n");
    assert.match(text, want);
  }
});
