/**
 * Lab definitions with volumes (issue 16): `volumes[]` and a server's `volumes` read into the lab,
 * render writes each attached volume's <disk> (valid for libvirt) and lists every volume in
 * plan.json; wrong references, double attachments, host mismatches and hostile values are
 * refused naming the path.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { parse } from "yaml";
import { renderLab } from "../../../lab/artifacts";
import { parseLab } from "../../../lab/parse";
import { domainWithDisk } from "../../../templates/volume";
import { assertValid, repoRoot, virtXmlValidate } from "../templates/support";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Data = Record<string, any>;

function withVolumes(edit: (data: Data) => void): string {
  const data = parse(fs.readFileSync(path.join(repoRoot(), "stacks", "three-tier.yaml"), "utf8")) as Data;
  data.volumes = [
    { name: "pgdata", sizeGiB: 20, provisioning: "thick" },
    { name: "backup", sizeGiB: 50, host: "hv1" },
    { name: "seeded", sizeGiB: 10, image: "ubuntu-22.04" },
  ];
  const bastion = (data.servers as Data[]).find((s) => s.name === "bastion")!;
  bastion.volumes = ["pgdata", "seeded"];
  edit(data);
  return JSON.stringify(data, null, 2);
}

test("volumes read into the lab with defaults; render writes attached disks and the plan lists them all", () => {
  const { lab, issues } = parseLab(withVolumes(() => undefined));
  assert.deepEqual(issues, []);
  assert.deepEqual(
    lab!.volumes.map((v) => [v.name, v.sizeGiB, v.provisioning, v.image, v.host]),
    [
      ["pgdata", 20, "thick", null, null],
      ["backup", 50, "thin", null, "hv1"],
      ["seeded", 10, "thin", "ubuntu-22.04", null],
    ],
  );
  assert.deepEqual(lab!.servers.find((s) => s.name === "bastion")!.volumes, ["pgdata", "seeded"]);
  const { files } = renderLab(lab!);
  const pg = files.get("volumes/pgdata.xml")!;
  assert.match(pg, /<source file='\/var\/lib\/kvmlab\/volumes\/pgdata\.raw'\/>/);
  assert.match(pg, /<target dev='vdb' bus='virtio'\/>/);
  assert.match(files.get("volumes/seeded.xml")!, /type='qcow2'[\s\S]*dev='vdc'/);
  assert.equal(files.has("volumes/backup.xml"), false, "a detached volume has no disk element");
  for (const x of [pg, files.get("volumes/seeded.xml")!])
    assertValid(virtXmlValidate(domainWithDisk(x)), "disk");
  const plan = JSON.parse(files.get("plan.json")!) as Data;
  assert.deepEqual(
    (plan.volumes as Data[]).map((v) => [v.name, v.host, v.server, v.device]),
    [
      ["pgdata", "hv1", "bastion", "vdb"],
      ["backup", "hv1", null, null],
      ["seeded", "hv1", "bastion", "vdc"],
    ],
  );
  assert.match((plan.notes as string[]).join("\n"), /volume's device follows its server's volumes list/);
});

test("a lab without volumes renders as before (no volumes in plan.json, no extra note)", () => {
  const { lab } = parseLab(withVolumes((d) => (delete d.volumes, delete d.servers[0].volumes)));
  const plan = JSON.parse(renderLab(lab!).files.get("plan.json")!) as Data;
  assert.equal(plan.volumes, undefined);
  assert.doesNotMatch((plan.notes as string[]).join("\n"), /volume/);
});

test("bad volume definitions are refused naming the path", () => {
  const bastion = (d: Data) => (d.servers as Data[]).find((s) => s.name === "bastion")!;
  const cases: [(d: Data) => void, RegExp][] = [
    [(d) => (bastion(d).volumes = ["nope"]), /servers\[\d+\]\.volumes\[0\].*unknown volume "nope"/],
    [(d) => (bastion(d).volumes = ["pgdata", "pgdata"]), /servers\[\d+\]\.volumes\[1\].*listed twice/],
    [
      (d) => ((d.servers as Data[])[1].volumes = ["pgdata"]),
      /servers\[1\]\.volumes\[0\].*already attached to server bastion/,
    ],
    [(d) => (d.volumes[0].host = "hv2"), /volumes\[0\].*lives on host hv2, server bastion on host hv1/],
    [(d) => (d.volumes[0].sizeGiB = 0), /volumes\[0\]\.sizeGiB/],
    [(d) => (d.volumes[0].sizeGiB = "20; rm -rf /"), /volumes\[0\]\.sizeGiB/],
    [(d) => (d.volumes[0].provisioning = "fat"), /volumes\[0\]\.provisioning/],
    [(d) => (d.volumes[0].name = "../etc"), /volumes\[0\]\.name/],
    [(d) => (d.volumes[2].image = "nope"), /volumes\[2\]\.image.*unknown image/],
    [(d) => delete d.volumes[1].host, /volumes\[1\]\.host.*no host and no server lists it/],
  ];
  for (const [edit, want] of cases) {
    const { issues } = parseLab(withVolumes(edit));
    const text = issues.map((i) => `${i.path}: ${i.message}`).join("\n");
    assert.match(text, want);
  }
});
