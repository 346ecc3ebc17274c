/**
 * Volume without hosts: check (defaults, refusals naming the field, never shrink), diff
 * (replace vs update, attachment drift), the device choice, the rendered <disk> (golden file and
 * virt-xml-validate), the step text (quoting, thin vs thick, refusal while attached) and the
 * provider's serialization.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { UNKNOWN } from "../../../provider/host";
import {
  checkVolumeInputs,
  diffVolume,
  volumeAttachStep,
  volumeCreateStep,
  volumeDeleteStep,
  volumeDetachStep,
  volumeGrowStep,
  parseDomainTargets,
  parseVolumeRead,
  volumeProvider,
  type VolumeInputs,
  type VolumeOutputs,
} from "../../../provider/volume";
import { chooseVolumeDevice, volumePath, volumeUsage, VOLUME_DEVICES } from "../../../core/volume";
import { domainWithDisk, renderVolumeDisk } from "../../../templates/volume";
import { migrateStep } from "../../../provider/server/migrate";
import {
  dropVolumesStep,
  migrateDisks,
  parseAttachedVolumes,
  prepareVolumesStep,
} from "../../../provider/server/volumes";
import { assertSerializable } from "../../harness/serialization";
import { assertValid, expectGolden, virtXmlValidate } from "../templates/support";
import { testHost } from "./fixtures";

const hosts = [testHost("hv1", 1), testHost("hv2", 2)];

function raw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return { volumeName: "data", hosts, host: "hv1", sizeGiB: 2, ...over };
}

function inputs(over: Record<string, unknown> = {}): VolumeInputs {
  const r = checkVolumeInputs(raw(over));
  assert.deepEqual(r.failures, []);
  return r.inputs as unknown as VolumeInputs;
}

function outputs(i: VolumeInputs, over: Partial<VolumeOutputs> = {}): VolumeOutputs {
  return {
    ...i,
    path: volumePath(i.volumeName, i.provisioning),
    format: i.provisioning === "thin" ? "qcow2" : "raw",
    device: i.server ? "vdb" : "",
    realized: {
      present: true,
      host: i.host,
      allocatedBytes: 0,
      virtualBytes: i.sizeGiB * 1073741824,
      attachedTo: i.server,
      device: i.server ? "vdb" : "",
    },
    hostKeys: {},
    ...over,
  };
}

test("check fills defaults: thin, blank, detached, an owner", () => {
  const i = inputs();
  assert.equal(i.provisioning, "thin");
  assert.equal(i.image, "");
  assert.equal(i.server, "");
  assert.match(i.owner, /\/Volume\/data$/);
});

test("check refuses hostile names, sizes and ids, naming the field", () => {
  const cases: [string, unknown][] = [
    ["volumeName", "../etc/passwd"],
    ["volumeName", "a b"],
    ["volumeName", "x;reboot"],
    ["volumeName", ""],
    ["sizeGiB", 0],
    ["sizeGiB", -5],
    ["sizeGiB", 2.5],
    ["sizeGiB", 4096],
    ["sizeGiB", "1"],
    ["sizeGiB", Number.NaN],
    ["provisioning", "thick; rm -rf /"],
    ["image", "$(id)"],
    ["image", "../x"],
    ["server", "web1' || true"],
    ["server", "a\nb"],
    ["host", "hv9"],
    ["host", "hv1;id"],
  ];
  for (const [field, value] of cases) {
    const r = checkVolumeInputs(raw({ [field]: value }));
    assert.ok(
      r.failures.some((f) => f.property === field && f.reason.includes(field)),
      `${field}=${JSON.stringify(value)} → ${JSON.stringify(r.failures)}`,
    );
  }
});

test("a smaller size than the state's is refused at check: volumes never shrink", () => {
  const r = checkVolumeInputs(raw({ sizeGiB: 1 }), { sizeGiB: 2 });
  assert.equal(r.failures.length, 1);
  assert.equal(r.failures[0].property, "sizeGiB");
  assert.match(r.failures[0].reason, /never shrinks .*has 2 GiB, asked 1 GiB/);
  assert.deepEqual(checkVolumeInputs(raw({ sizeGiB: 3 }), { sizeGiB: 2 }).failures, []);
});

test("unknown values pass check during preview", () => {
  const r = checkVolumeInputs(raw({ sizeGiB: UNKNOWN, server: UNKNOWN, host: UNKNOWN }));
  assert.deepEqual(r.failures, []);
});

test("diff: name, host, provisioning, image replace; size and server update; attachment drift is a change", () => {
  const i = inputs({ server: "web1" });
  const o = outputs(i);
  assert.deepEqual(diffVolume(o, i), {
    changes: false,
    replaces: [],
    stables: ["path", "format"],
    deleteBeforeReplace: true,
  });
  for (const k of ["volumeName", "host", "provisioning", "image"] as const) {
    const v = { volumeName: "other", host: "hv2", provisioning: "thick", image: "cirros" }[k];
    assert.deepEqual(diffVolume(o, { ...i, [k]: v }).replaces, [k], k);
  }
  for (const [k, v] of [
    ["sizeGiB", 3],
    ["server", "web2"],
    ["server", ""],
  ] as const) {
    const d = diffVolume(o, { ...i, [k]: v });
    assert.ok(d.changes && d.replaces.length === 0, `${k}=${v}`);
  }
  const drifted = outputs(i, { realized: { ...o.realized, attachedTo: "", device: "" } });
  // Its server's live migration carried it to hv2: the new host is no replace (data stays).
  const carried = outputs(i, { realized: { ...o.realized, host: "hv2" } });
  assert.deepEqual(diffVolume(carried, { ...i, host: "hv2" }).replaces, []);
  assert.equal(diffVolume(carried, { ...i, host: "hv2" }).changes, true);
  assert.equal(diffVolume(drifted, i).changes, true, "detached by hand: up attaches again");
});

test("device choice: the current one while free, else the first free of vdb..vdz", () => {
  assert.equal(chooseVolumeDevice(["vda"]), "vdb");
  assert.equal(chooseVolumeDevice(["vda", "vdb", "sda"]), "vdc");
  assert.equal(chooseVolumeDevice(["vda", "vdb"], "vdd"), "vdd");
  assert.equal(chooseVolumeDevice(["vda", "vdd"], "vdd"), "vdb");
  assert.equal(chooseVolumeDevice(["vda", ...VOLUME_DEVICES]), undefined);
  assert.equal(VOLUME_DEVICES.length, 25);
  assert.ok(!VOLUME_DEVICES.includes("vda"));
});

test("the attached volume's <disk>: golden file, valid for libvirt, hostile values refused", () => {
  const thin = renderVolumeDisk({
    volumeName: "data",
    path: volumePath("data", "thin"),
    format: "qcow2",
    device: "vdb",
  });
  const thick = renderVolumeDisk({
    volumeName: "a-very-long-volume-name-for-serials",
    path: volumePath("a-very-long-volume-name-for-serials", "thick"),
    format: "raw",
    device: "vdz",
  });
  expectGolden("libvirt/volume-thin-vdb.xml", thin);
  expectGolden("libvirt/volume-thick-vdz.xml", thick);
  assert.match(thick, /<serial>a-very-long-volume-n<\/serial>/, "a serial holds at most 20 characters");
  for (const d of [thin, thick]) assertValid(virtXmlValidate(domainWithDisk(d)), "volume disk");
  assert.throws(
    () => renderVolumeDisk({ volumeName: "data", path: "/x'/><evil", format: "qcow2", device: "vdb" }),
    /path:/,
  );
  assert.throws(
    () => renderVolumeDisk({ volumeName: "data", path: "/a/b", format: "qcow2", device: "vda" }),
    /device:/,
  );
  assert.throws(
    () => renderVolumeDisk({ volumeName: "<x>", path: "/a/b", format: "qcow2", device: "vdb" }),
    /volumeName/,
  );
});

test("create step: thin is a qcow2, thick a fully allocated raw file (fallocate), from an image a full copy", () => {
  const thin = volumeCreateStep(inputs()).script;
  assert.match(thin, /qemu-img create -q -f qcow2 "\$t" 2147483648/);
  assert.doesNotMatch(thin, /fallocate/);
  const thick = volumeCreateStep(inputs({ provisioning: "thick" })).script;
  assert.match(thick, /fallocate -l 2147483648 "\$t"/);
  assert.match(thick, /f='?\/var\/lib\/kvmlab\/volumes\/data\.raw'?;/);
  const fromImage = volumeCreateStep(inputs({ image: "cirros", provisioning: "thick" })).script;
  assert.match(fromImage, /qemu-img convert -O raw "\$src" "\$t"/);
  assert.match(fromImage, /images\/cirros\/disk\.qcow2/);
  assert.match(fromImage, /give sizeGiB >=/);
  assert.match(fromImage, /fallocate -l 2147483648/);
});

test("attach, detach, grow and delete steps: live when running, refusals name the server and the fix", () => {
  const i = inputs({ server: "web1" });
  const attach = volumeAttachStep(i, "vdc").script;
  assert.match(attach, /attach-device '?web1'? '?\/var\/lib\/kvmlab\/volumes\/data\.disk\.xml'? \$flags/);
  assert.match(attach, /flags="--live --config"/);
  assert.match(attach, /<target dev='vdc' bus='virtio'\/>/);
  assert.match(attach, /attaches to one server at a time: detach it there first/);
  const detach = volumeDetachStep(i).script;
  assert.match(detach, /detach-disk "\$d" "\$dev" \$flags/);
  assert.match(detach, /did not release \$dev within 30 s/);
  const grow = volumeGrowStep({ ...i, sizeGiB: 3 }).script;
  assert.match(grow, /blockresize "\$1" "\$2" 3221225472B/);
  assert.match(grow, /qemu-img resize -q -f qcow2 "\$vol" 3221225472/);
  const del = volumeDeleteStep(i).script;
  assert.match(del, /never deleted while attached\. Fix: detach it first/);
  assert.ok(del.indexOf("exit 5") < del.indexOf("rm -f"), "the refusal comes before any removal");
});

test("read and domblklist parsers", () => {
  assert.deepEqual(
    parseVolumeRead("present=1\nallocated=4096\nvirtual=1073741824\nattached=web1\ndevice=vdb\n"),
    {
      present: true,
      host: "",
      allocatedBytes: 4096,
      virtualBytes: 1073741824,
      attachedTo: "web1",
      device: "vdb",
    },
  );
  assert.equal(parseVolumeRead("present=0\n").present, false);
  assert.deepEqual(
    parseDomainTargets("vda /var/lib/kvmlab/instances/w/disk.qcow2\nsda /x/seed.iso\nvdb -\n"),
    [
      { target: "vda", source: "/var/lib/kvmlab/instances/w/disk.qcow2" },
      { target: "sda", source: "/x/seed.iso" },
      { target: "vdb", source: "-" },
    ],
  );
});

test("quota: one volume and its gigabytes", () => {
  assert.deepEqual(volumeUsage(5), { volumes: 1, gigabytes: 5 });
});

test("the Volume provider serializes without templates or captured modules", async () => {
  await assertSerializable(volumeProvider, {
    forbid: [/handlebars/i, /require\("yaml"\)/, /\.hbs\b/, /templates\//],
    methods: ["check", "diff", "create", "read", "update", "delete"],
    maxBytes: 256 * 1024,
  });
});

test("live migration carries attached volumes: listed on the source, prepared on the destination, copied with --migrate-disks", () => {
  const record = JSON.stringify({ volumeName: "data", sizeGiB: 1 });
  const line = [
    "vdb",
    "/var/lib/kvmlab/volumes/data.qcow2",
    "qcow2",
    "1073741824",
    "p/s/Volume/data",
    Buffer.from(record).toString("base64"),
  ].join("\t");
  const vols = parseAttachedVolumes(`${line}\n`);
  assert.deepEqual(vols, [
    {
      volumeName: "data",
      target: "vdb",
      path: "/var/lib/kvmlab/volumes/data.qcow2",
      format: "qcow2",
      virtualBytes: 1073741824,
      owner: "p/s/Volume/data",
      record,
    },
  ]);
  for (const bad of [
    line.replace("vdb", "vda"),
    line.replace("/var/lib/kvmlab/volumes/data.qcow2", "/etc/passwd"),
    line.replace("data.qcow2", "../x.qcow2"),
    line.replace("\tqcow2\t", "\tvmdk\t"),
    line.replace("1073741824", "1e9"),
  ])
    assert.throws(() => parseAttachedVolumes(bad), /unexpected attached volume line/);
  const prep = prepareVolumesStep(vols).script;
  assert.ok(
    prep.indexOf("already exists on the destination") < prep.indexOf("qemu-img create"),
    "check before make",
  );
  assert.match(prep, /qemu-img create -q -f qcow2 '?\/var\/lib\/kvmlab\/volumes\/data\.qcow2'? 1073741824/);
  assert.match(
    dropVolumesStep(vols, "source").script,
    /rm -f .*data\.qcow2.*records\/volume\/data\.json.*owners\/volume\/data\.owner/,
  );
  assert.deepEqual(migrateDisks(false, vols), ["vdb"]);
  assert.deepEqual(migrateDisks(true, vols), ["vda", "vdb"]);
  assert.deepEqual(migrateDisks(true, []), []);
  const dest = testHost("hv2", 2);
  const withVols = migrateStep("web1", dest, false, 240, undefined, ["vdb"]).script;
  assert.match(withVols, /--copy-storage-inc --migrate-disks '?vdb'?/);
  const plain = migrateStep("web1", dest, false, 240).script;
  assert.doesNotMatch(plain, /copy-storage|migrate-disks/, "no volumes: the migration is as before");
});
