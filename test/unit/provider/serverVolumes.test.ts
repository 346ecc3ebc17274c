/**
 * A server redefine keeps its attached volumes (issue 16). The rendered domain XML lists no
 * volume (Volume resources attach them later with `virsh attach-device --config`), so a cold
 * resize used to define the domain without them: they dropped from the persistent definition and
 * the guest came back without its disks.
 *
 * Pure parts (the listing's parser, the XML with the volumes' <disk>s, checked by
 * virt-xml-validate) and the provider's update and create against a fake host whose steps are
 * answered by label and logged.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { serverProvider, checkServerInputs, ownerOf, type HostConnection } from "../../../provider";
import type { ServerInputs, ServerOutputs } from "../../../provider/server";
import { keptVolumesStep, parseKeptVolumes, withVolumeDisks } from "../../../provider/server/volumes";
import { serverRaw, testHost } from "./fixtures";
import { fakeHost, serverOutputsOn, uploadedXml } from "./fakeHost";
import { virtXmlValidate } from "../templates/support";

const STORE = "/var/lib/kvmlab/volumes";
// The owners raw provider calls get (the fixtures' servers have no owner input): one stack.
const VOL_OWNER = ownerOf({ pulumiProject: "kvmlab-direct", stack: "-", type: "Volume", name: "pgdata" });
const WEB1_OWNER = ownerOf({ pulumiProject: "kvmlab-direct", stack: "-", type: "Server", name: "web1" });

function inputs(
  hosts: HostConnection[],
  over: Record<string, unknown> = {},
  olds?: ServerInputs,
): ServerInputs {
  const { inputs: i, failures } = checkServerInputs(
    { ...serverRaw(hosts, over), host: "hv1" },
    olds as unknown as Record<string, unknown>,
  );
  assert.deepEqual(failures, []);
  return i as unknown as ServerInputs;
}

test("the listing step reads the persistent definition, and only of this server's UUID", () => {
  const s = keptVolumesStep("web1", "0e8f0000-0000-4000-8000-000000000001").script;
  assert.ok(!s.includes("/etc/libvirt"), "a redefine always asks libvirt");
  assert.ok(
    keptVolumesStep("web1", "0e8f0000-0000-4000-8000-000000000001", { quick: true }).script.startsWith(
      "[ -e /etc/libvirt/qemu/web1.xml ] || exit 0\n",
    ),
    "a create with no definition file makes no virsh call",
  );
  assert.match(s, /domuuid web1/);
  assert.match(s, /\[ "\$u" = 0e8f0000-0000-4000-8000-000000000001 \] \|\| exit 0/);
  assert.match(s, /domblklist --inactive --details web1/, "the persistent definition, not the live one");
  assert.match(s, /\/\^\\\/var\\\/lib\\\/kvmlab\\\/volumes\\\/\//, "only files in the volume store");
  assert.ok(
    s.includes(`o=$(head -n1 /var/lib/kvmlab/owners/volume/"$v.owner"`) &&
      s.includes(`/var/lib/kvmlab/records/volume/"$v.json"`),
    "each volume's owner marker and the server its record names (review L4)",
  );
});

test("parseKeptVolumes: kvmlab volumes only; anything else in the store is refused naming the fix", () => {
  assert.deepEqual(parseKeptVolumes("web1", ""), []);
  assert.deepEqual(parseKeptVolumes("web1", "defined\n"), []);
  assert.deepEqual(
    parseKeptVolumes(
      "web1",
      `defined\nvdc ${STORE}/logs.raw ${VOL_OWNER} web1\nvdb ${STORE}/pgdata.qcow2 - web1\n`,
      WEB1_OWNER,
    ),
    [
      { volumeName: "logs", target: "vdc", path: `${STORE}/logs.raw`, format: "raw" },
      { volumeName: "pgdata", target: "vdb", path: `${STORE}/pgdata.qcow2`, format: "qcow2" },
    ],
  );
  for (const bad of [
    `vdb ${STORE}/x.img`, // not a volume's format
    `vdb ${STORE}/sub/x.qcow2`, // not a file of the store itself
    `vdb ${STORE}/../../../etc/shadow.raw`,
    `vdb ${STORE}/-x.qcow2`, // breaks the name rule
    `sdb ${STORE}/data.qcow2`, // not vdb..vdz
    `vda ${STORE}/data.qcow2`,
    `vdb ${STORE}/a b.qcow2`,
  ])
    assert.throws(
      () => parseKeptVolumes("web1", `${bad} - web1\n`),
      /server web1: its definition has the disk .* that kvmlab did not attach.*Fix: detach it by hand \(virsh detach-disk web1/,
      bad,
    );
});

test("parseKeptVolumes: a volume whose record names another server (or none), or of another stack, is refused naming the fix (review L4)", () => {
  for (const [line, re] of [
    [
      `vdb ${STORE}/pgdata.qcow2 ${VOL_OWNER} db1`,
      /volume pgdata at vdb, but the record of volume pgdata names server db1/,
    ],
    [`vdb ${STORE}/pgdata.qcow2 - -`, /volume pgdata at vdb, but no record of volume pgdata names a server/],
    [`vdb ${STORE}/pgdata.qcow2`, /no record of volume pgdata names a server/],
    [
      `vdb ${STORE}/pgdata.qcow2 ${ownerOf({ pulumiProject: "lab", stack: "prod", type: "Volume", name: "pgdata" })} web1`,
      /volume pgdata at vdb, which belongs to lab\/prod\/Volume\/pgdata, another stack than kvmlab-direct\/-; kvmlab never carries another stack's volume/,
    ],
  ] as const)
    assert.throws(
      () => parseKeptVolumes("web1", `defined\n${line}\n`, WEB1_OWNER),
      (e: Error) =>
        re.test(e.message) &&
        /Fix: detach it by hand \(virsh detach-disk web1 vdb --config\)/.test(e.message),
      line,
    );
  // A server from before owners (no owner) still checks the record.
  assert.throws(() => parseKeptVolumes("web1", `vdb ${STORE}/pgdata.qcow2 - db1\n`), /names server db1/);
});

test("withVolumeDisks: the volumes' <disk>s after the last disk, in target order, once; a clash is refused", () => {
  const hv1 = testHost("hv1", 1);
  const xml = inputs([hv1]).domainXml.qemu; // kernel image: the seed ISO is its one disk
  const vols = parseKeptVolumes("web1", `vdc ${STORE}/logs.raw - web1\nvdb ${STORE}/pgdata.qcow2 - web1\n`);
  const out = withVolumeDisks("web1", xml, vols);
  const disks = [...out.matchAll(/<disk\b[\s\S]*?<\/disk>/g)].map((d) => d[0]);
  assert.deepEqual(
    disks.map((d) => /<target dev='([^']+)'/.exec(d)![1]),
    ["sda", "vdb", "vdc"],
    "the seed first, then the volumes by target",
  );
  assert.match(
    disks[1],
    /<driver name='qemu' type='qcow2'\/>\s*<source file='\/var\/lib\/kvmlab\/volumes\/pgdata\.qcow2'\/>/,
  );
  assert.match(disks[1], /<serial>pgdata<\/serial>/, "the serial the guest sees, as attach gives it");
  assert.match(disks[2], /<driver name='qemu' type='raw'\/>/);
  const cut = xml.lastIndexOf("</disk>") + "</disk>".length;
  assert.ok(out.startsWith(xml.slice(0, cut)) && out.endsWith(xml.slice(cut)), "nothing else changes");
  for (const x of [out, withVolumeDisks("web1", inputs([hv1]).domainXml.kvm, vols)]) {
    const v = virtXmlValidate(x);
    assert.ok(v.ok, v.output);
  }
  assert.equal(withVolumeDisks("web1", xml, []), xml, "no volume: the XML as it is");
  assert.equal(withVolumeDisks("web1", out, vols), out, "a volume the XML lists is not added twice");
  assert.throws(
    () =>
      withVolumeDisks("web1", xml, [
        { volumeName: "root", target: "sda", path: `${STORE}/root.qcow2`, format: "qcow2" },
      ]),
    /volume root is attached as sda, but the new domain XML uses sda for \/var\/lib\/kvmlab\/instances\/[^ ]+\/seed\.iso.*Fix: detach volume root/,
  );
});

test("a cold resize keeps the attached volumes in the definition it writes (listed before the stop and again under the volumes lock)", async () => {
  const hv1 = testHost("hv1", 1);
  const olds: ServerOutputs = serverOutputsOn(inputs([hv1]), hv1);
  const news = inputs([hv1], { ramMiB: 192 }, olds);
  assert.match(news.changePlan ?? "", /cold resize/);
  let state = "running";
  const fake = fakeHost((label) => {
    if (/^shut down domain web1/.test(label)) state = "shut off";
    if (/^start domain web1/.test(label)) state = "running";
    if (/^read domain web1/.test(label)) return `defined=yes\nstate=${state}\ntype=qemu\n`;
    if (/^list the volumes in the definition of web1/.test(label))
      return `defined\nvdb ${STORE}/pgdata.qcow2 ${VOL_OWNER} web1\nvdc ${STORE}/logs.raw - web1\n`;
    return "";
  });
  try {
    await (serverProvider as unknown as Required<typeof serverProvider>).update(olds.uuid, olds, news);
    const labels = fake.log.map((l) => l.label);
    const at = (re: RegExp) => labels.findIndex((l) => re.test(l));
    const lists = labels.flatMap((l, i) => (/^list the volumes in the definition/.test(l) ? [i] : []));
    assert.equal(lists.length, 2, labels.join(" | "));
    assert.ok(lists[0] < at(/^shut down domain web1/), "listed before the stop (a refusal keeps it running)");
    const lock = at(/^volumes lock taken/);
    const unlock = at(/^volumes lock released/);
    const define = at(/^define domain web1/);
    assert.ok(
      lock < lists[1] && lists[1] < define && define < unlock,
      "listed and defined under the volumes lock",
    );
    const xml = uploadedXml(fake);
    assert.match(xml, /<memory unit='MiB'>192<\/memory>/, "the new flavor");
    assert.match(
      xml,
      /<source file='\/var\/lib\/kvmlab\/volumes\/pgdata\.qcow2'\/>\s*<target dev='vdb' bus='virtio'\/>/,
    );
    assert.match(
      xml,
      /<source file='\/var\/lib\/kvmlab\/volumes\/logs\.raw'\/>\s*<target dev='vdc' bus='virtio'\/>/,
    );
    assert.ok(at(/^start domain web1/) > define, "started again with them");
    assert.ok(
      !labels.some((l) => /attach|detach|record volume\/|claim volume|owner marker/.test(l)),
      `no volume's record, marker or attachment touched: ${labels.join(" | ")}`,
    );
  } finally {
    fake.restore();
  }
});

test("a create run again over the domain it defined before keeps the volumes attached since", async () => {
  const hv1 = testHost("hv1", 1);
  const i = inputs([hv1]);
  const ipam = {
    subnet: "lan-v4",
    cidr: "10.10.0.0/24",
    gateway: "10.10.0.1",
    pool: { start: "10.10.0.2", end: "10.10.0.254" },
    allocations: {},
  };
  const fake = fakeHost((label) => {
    if (/^read host capacity/.test(label)) return "memtotal=4194304\nmemavailable=4000000\ncpus=2\n";
    if (/^read record ipam\//.test(label)) return JSON.stringify(ipam);
    if (/^read domain web1/.test(label)) return "defined=yes\nstate=running\ntype=qemu\n";
    if (/^list the volumes in the definition of web1/.test(label))
      return `defined\nvdb ${STORE}/pgdata.qcow2 ${VOL_OWNER} web1\n`;
    return "";
  });
  try {
    await (serverProvider as unknown as Required<typeof serverProvider>).create(i);
    const labels = fake.log.map((l) => l.label);
    const lists = labels.flatMap((l, i) => (l === "list the volumes in the definition of web1" ? [i] : []));
    const define = labels.indexOf("define domain web1");
    assert.equal(lists.length, 2, labels.join(" | "));
    // Read again and defined under the volumes lock, as a cold resize (review L4).
    assert.ok(
      labels.indexOf("volumes lock taken") < lists[1] &&
        lists[1] < define &&
        define < labels.indexOf("volumes lock released"),
      labels.join(" | "),
    );
    assert.match(
      uploadedXml(fake),
      /<source file='\/var\/lib\/kvmlab\/volumes\/pgdata\.qcow2'\/>\s*<target dev='vdb'/,
    );
  } finally {
    fake.restore();
  }
});
