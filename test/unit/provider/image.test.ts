/**
 * Image provider without hosts: check (every field, disk vs kernel images, injection attempts
 * refused), the pure diff (content replaces, locations/metadata/hosts update, drift updates),
 * the step scripts' quoting, probe/users/hash parsing, disk format checks against real
 * `qemu-img info` output of local files, records and serialization. Says nothing about hosts
 * (see test/integration/image.test.ts).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  checkDiskInfo,
  checkImageInputs,
  commitStep,
  diffImage,
  imageFiles,
  imageHostState,
  imageOutputs,
  imageProvider,
  imageRecord,
  imageUserStep,
  parseFileProbe,
  parseStagedHashes,
  parseUsers,
  probeStep,
  removeImageStep,
  stageStep,
  stagingDir,
  type ImageInputs,
  type ImageOutputs,
} from "../../../provider/image";
import { UNKNOWN, hostPoolStats, type HostConnection } from "../../../provider/host";
import { assertSerializable } from "../../harness/serialization";
import { testHost } from "./fixtures";

const SHA_A = "a".repeat(64);
const SHA_B = "b".repeat(64);
const SHA_C = "c".repeat(64);

function host(name: string, n: number): HostConnection {
  return testHost(name, n, { uplink: "", tunnelAddress: "" });
}
const HOSTS = [host("hv1", 1), host("hv2", 2)];

function check(news: Record<string, unknown>): {
  inputs: ImageInputs;
  failures: { property: string; reason: string }[];
} {
  const r = checkImageInputs({ imageName: "cirros", hosts: HOSTS, ...news });
  return { inputs: r.inputs as unknown as ImageInputs, failures: r.failures };
}

function disk(over: Record<string, unknown> = {}): ImageInputs {
  const r = check({
    source: { localPath: "/srv/cirros.qcow2", sha256: SHA_A },
    diskFormat: "qcow2",
    ...over,
  });
  assert.deepEqual(r.failures, []);
  return r.inputs;
}

function kernel(over: Record<string, unknown> = {}): ImageInputs {
  const r = check({
    imageName: "tiny",
    kernel: { hostPath: "/boot/vmlinuz", sha256: SHA_B },
    ramdisk: { localPath: "/srv/initrd.gz", sha256: SHA_C },
    kernelCmdline: "console=ttyS0 quiet",
    ...over,
  });
  assert.deepEqual(r.failures, []);
  return r.inputs;
}

function outputsOf(i: ImageInputs): ImageOutputs {
  const realized: ImageOutputs["realized"] = {};
  const files: Record<string, string> = {};
  for (const f of imageFiles(i)) files[f.plan.role] = f.plan.sha256;
  for (const h of i.hosts) realized[h.name] = { record: true, files, users: [] };
  return imageOutputs(i, realized, { disk: 100, kernel: 10, ramdisk: 5 }, 1048576);
}

test("check normalizes a disk image and a kernel+ramdisk image", () => {
  const d = disk({ source: { localPath: "/srv/c.qcow2", sha256: SHA_A.toUpperCase() } });
  assert.deepEqual(d.source, { localPath: "/srv/c.qcow2", hostPath: "", url: "", sha256: SHA_A });
  assert.equal(d.kernelCmdline, "");
  assert.equal(d.minDiskGiB, 0);
  assert.equal("kernel" in d, false);
  const k = kernel();
  assert.equal(k.diskFormat, "");
  assert.deepEqual(
    imageFiles(k).map((f) => f.plan),
    [
      { role: "kernel", fileName: "kernel", sha256: SHA_B },
      { role: "ramdisk", fileName: "ramdisk", sha256: SHA_C },
    ],
  );
  assert.deepEqual(
    imageFiles(d).map((f) => f.plan.fileName),
    ["disk.qcow2"],
  );
});

test("fails on each bad field, naming it and the fix", () => {
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [
      { source: { localPath: "/x", sha256: "abc" }, diskFormat: "qcow2" },
      "source",
      /source.sha256: expected the file's sha256 as 64 hex digits/,
    ],
    [
      { source: { localPath: "/x", hostPath: "/y", sha256: SHA_A }, diskFormat: "raw" },
      "source",
      /exactly one of localPath .* got localPath and hostPath/,
    ],
    [{ source: { sha256: SHA_A }, diskFormat: "raw" }, "source", /got none/],
    [
      { source: { localPath: "rel/x", sha256: SHA_A }, diskFormat: "raw" },
      "source",
      /source.localPath: expected an absolute path/,
    ],
    [
      { source: { localPath: "/x", sha256: SHA_A }, diskFormat: "vmdk" },
      "diskFormat",
      /expected "qcow2" or "raw"/,
    ],
    [{ source: { localPath: "/x", sha256: SHA_A } }, "diskFormat", /expected "qcow2" or "raw"/],
    [{}, "source", /source: missing; give source .* or kernel/],
    [
      {
        source: { localPath: "/x", sha256: SHA_A },
        diskFormat: "raw",
        kernel: { localPath: "/k", sha256: SHA_B },
      },
      "kernel",
      /not both; make two images/,
    ],
    [
      { source: { localPath: "/x", sha256: SHA_A }, diskFormat: "raw", kernelCmdline: "quiet" },
      "kernelCmdline",
      /only for kernel images/,
    ],
    [{ kernel: { localPath: "/k", sha256: SHA_B }, diskFormat: "raw" }, "diskFormat", /only for disk images/],
    [
      { kernel: { localPath: "/k", sha256: SHA_B }, kernelCmdline: "a\nb" },
      "kernelCmdline",
      /one line of at most 1024 printable/,
    ],
    [
      { kernel: { localPath: "/k", sha256: SHA_B }, minRamMiB: -1 },
      "minRamMiB",
      /minRamMiB: expected an integer 0-1048576/,
    ],
    [
      {
        ramdisk: { localPath: "/r", sha256: SHA_B },
        source: { localPath: "/x", sha256: SHA_A },
        diskFormat: "raw",
      },
      "ramdisk",
      /only with kernel/,
    ],
    [
      { imageName: "bad name", kernel: { localPath: "/k", sha256: SHA_B } },
      "imageName",
      /^imageName: expected a name/,
    ],
    [{ hosts: [], kernel: { localPath: "/k", sha256: SHA_B } }, "hosts", /non-empty list of hosts/],
  ];
  for (const [news, property, reason] of cases) {
    const { failures } = check(news);
    assert.equal(failures.length, 1, `${JSON.stringify(news)}: ${JSON.stringify(failures)}`);
    assert.equal(failures[0].property, property);
    assert.match(failures[0].reason, reason);
  }
});

test("injection attempts are refused in check, before anything runs", () => {
  const attempts: [Record<string, unknown>, string][] = [
    [{ imageName: "x$(reboot)" }, "imageName"],
    [{ imageName: "../../etc" }, "imageName"],
    [{ kernel: { hostPath: "/boot/vmlinuz; rm -rf /", sha256: SHA_B } }, "kernel"],
    [{ kernel: { hostPath: "/boot/../etc/shadow", sha256: SHA_B } }, "kernel"],
    [{ kernel: { url: "http://h/x' -o /etc/passwd '", sha256: SHA_B } }, "kernel"],
    [{ kernel: { url: "file:///etc/shadow", sha256: SHA_B } }, "kernel"],
    [{ kernel: { localPath: "/tmp/a\nb", sha256: SHA_B } }, "kernel"],
  ];
  for (const [news, property] of attempts) {
    const { failures } = check({ kernel: { hostPath: "/boot/vmlinuz", sha256: SHA_B }, ...news });
    assert.ok(
      failures.some((f) => f.property === property),
      `${JSON.stringify(news)} was accepted`,
    );
  }
  assert.throws(() => stagingDir("x", "not-hex"), /invalid token/);
  assert.throws(() => imageUserStep("cirros", "web;0", true), /record name: expected a name/);
});

test("unknowns are accepted during preview", () => {
  const { failures } = checkImageInputs({
    imageName: UNKNOWN,
    hosts: UNKNOWN,
    source: { localPath: UNKNOWN, sha256: UNKNOWN },
    diskFormat: UNKNOWN,
    minDiskGiB: UNKNOWN,
  });
  assert.deepEqual(failures, []);
  assert.deepEqual(
    checkImageInputs({ imageName: "k", hosts: HOSTS, kernel: UNKNOWN, kernelCmdline: UNKNOWN }).failures,
    [],
  );
});

test("diff is pure: no change opens nothing; content, format and name replace (delete first)", () => {
  const before = hostPoolStats();
  const olds = outputsOf(disk());
  assert.deepEqual(diffImage(olds, disk()), {
    changes: false,
    replaces: [],
    stables: ["storeDir", "diskPath", "kernelPath", "ramdiskPath", "sha256", "format"],
    deleteBeforeReplace: true,
  });
  assert.deepEqual(
    diffImage(olds, disk({ source: { localPath: "/srv/cirros.qcow2", sha256: SHA_B } })).replaces,
    ["source"],
  );
  assert.deepEqual(diffImage(olds, disk({ diskFormat: "raw" })).replaces, ["diskFormat"]);
  assert.deepEqual(diffImage(olds, disk({ imageName: "cirros2" })).replaces, ["imageName"]);
  const k = outputsOf(kernel());
  assert.deepEqual(diffImage(k, kernel({ ramdisk: undefined })).replaces, ["ramdisk"]);
  assert.deepEqual(diffImage(k, { ...kernel(), kernel: { ...kernel().kernel!, sha256: UNKNOWN } }).replaces, [
    "kernel",
  ]);
  assert.deepEqual(hostPoolStats(), before);
});

test("diff: a new location with the same sha256, metadata and hosts are updates", () => {
  const olds = outputsOf(disk());
  for (const news of [
    disk({ source: { hostPath: "/srv/images/cirros.qcow2", sha256: SHA_A } }),
    disk({ minDiskGiB: 1, minRamMiB: 128 }),
    disk({ hosts: [HOSTS[0]] }),
  ]) {
    const d = diffImage(olds, news);
    assert.equal(d.changes, true);
    assert.deepEqual(d.replaces, []);
  }
  const k = outputsOf(kernel());
  const d = diffImage(k, kernel({ kernelCmdline: "console=ttyS0" }));
  assert.deepEqual([d.changes, d.replaces], [true, []]);
});

test("diff: drift found by refresh (file changed or gone, record gone) is an update", () => {
  const olds = outputsOf(disk());
  const changed = {
    ...olds,
    realized: { ...olds.realized, hv2: { record: true, files: { disk: SHA_B }, users: [] } },
  };
  assert.deepEqual([diffImage(changed, disk()).changes, diffImage(changed, disk()).replaces], [true, []]);
  const gone = {
    ...olds,
    realized: { ...olds.realized, hv1: { record: false, files: { disk: SHA_A }, users: [] } },
  };
  assert.equal(diffImage(gone, disk()).changes, true);
});

test("outputs: per-host paths, sha256, sizes, format; they survive a JSON round trip", () => {
  const o = outputsOf(disk({ minDiskGiB: 1 }));
  assert.equal(o.storeDir, "/var/lib/kvmlab/images/cirros");
  assert.equal(o.diskPath, "/var/lib/kvmlab/images/cirros/disk.qcow2");
  assert.deepEqual(o.paths.hv2, {
    disk: "/var/lib/kvmlab/images/cirros/disk.qcow2",
    kernel: "",
    ramdisk: "",
  });
  assert.equal(o.sha256, SHA_A);
  assert.equal(o.format, "qcow2");
  assert.equal(o.virtualSizeBytes, 1048576);
  assert.equal(o.minDiskGiB, 1);
  assert.deepEqual(JSON.parse(JSON.stringify(o)), o);
  const k = outputsOf(kernel());
  assert.equal(k.format, "kernel");
  assert.equal(k.kernelPath, "/var/lib/kvmlab/images/tiny/kernel");
  assert.equal(k.ramdiskPath, "/var/lib/kvmlab/images/tiny/ramdisk");
  assert.equal(k.sha256, SHA_B);
  assert.deepEqual(JSON.parse(JSON.stringify(k)), k);
});

test("records carry stamps and where each file came from (no directory of the runner)", () => {
  const r = imageRecord(
    kernel(),
    { kernel: { sizeBytes: 10, mtime: 1700000000 }, ramdisk: { sizeBytes: 5, mtime: 1700000001 } },
    0,
  );
  assert.equal(r.files.kernel?.stamp, `${SHA_B} 10 1700000000`);
  assert.deepEqual(r.origins, { kernel: "/boot/vmlinuz", ramdisk: "local:initrd.gz" });
  assert.equal(r.format, "kernel");
  // The probe greps for exactly this text in the record file.
  assert.ok(JSON.stringify(r, null, 2).includes(`"stamp": "${SHA_B} 10 1700000000"`));
});

test("parsers: probe, users, staged hashes; host state from them", () => {
  const probe = parseFileProbe(
    [`disk ok 100 1700000000 ${SHA_A}`, `kernel differs 7 1 ${SHA_B}`, "ramdisk missing 0 0 -", "noise"].join(
      "\n",
    ),
  );
  assert.deepEqual(
    probe.map((p) => [p.role, p.status, p.sha256]),
    [
      ["disk", "ok", SHA_A],
      ["kernel", "differs", SHA_B],
      ["ramdisk", "missing", ""],
    ],
  );
  const users = parseUsers("users web-0 web-1 \ndomains db-0 \n");
  assert.deepEqual(users, { markers: ["web-0", "web-1"], domains: ["db-0"] });
  assert.deepEqual(parseUsers("users \ndomains \n"), { markers: [], domains: [] });
  assert.deepEqual(imageHostState(probe, "{}", users), {
    record: true,
    files: { disk: SHA_A, kernel: SHA_B, ramdisk: "" },
    users: ["web-0", "web-1", "domain:db-0"],
  });
  assert.deepEqual(parseStagedHashes(`disk ${SHA_C} 42\n`).get("disk"), { sha256: SHA_C, sizeBytes: 42 });
});

test("checkDiskInfo against real qemu-img info output: format mismatch and backing files are errors", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-img-"));
  try {
    const q = path.join(dir, "a.qcow2");
    const o = path.join(dir, "over.qcow2");
    const raw = path.join(dir, "a.raw");
    for (const args of [
      ["create", "-q", "-f", "qcow2", q, "2M"],
      ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", q, o],
      ["create", "-q", "-f", "raw", raw, "1M"],
    ]) {
      const r = spawnSync("qemu-img", args, { encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
    }
    const info = (f: string): string =>
      spawnSync("qemu-img", ["info", "--output=json", f], { encoding: "utf8" }).stdout;
    assert.deepEqual(checkDiskInfo(info(q), "qcow2", "src"), { virtualSizeBytes: 2097152 });
    assert.deepEqual(checkDiskInfo(info(raw), "raw", "src"), { virtualSizeBytes: 1048576 });
    const wrong = checkDiskInfo(info(q), "raw", "src");
    assert.ok("error" in wrong && /diskFormat is "raw" but the file is "qcow2"/.test(wrong.error));
    const backed = checkDiskInfo(info(o), "qcow2", "src");
    assert.ok("error" in backed && /has a backing file/.test(backed.error));
    assert.ok("error" in checkDiskInfo("not json", "raw", "src"));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("step scripts quote every value and clean up after themselves", () => {
  const probe = probeStep("cirros", [{ role: "disk", fileName: "disk.qcow2", sha256: SHA_A }], "hv1");
  assert.match(
    probe.script,
    /d=\/var\/lib\/kvmlab\/images\/cirros; rec=\/var\/lib\/kvmlab\/records\/image\/cirros.json/,
  );
  const stage = stageStep(
    "tiny",
    "0123456789abcdef",
    [{ role: "kernel", hostPath: "/boot/vm linuz", url: "" }],
    "hv1",
  );
  assert.match(stage.script, /cp --reflink=auto -- '\/boot\/vm linuz' "\$s\/kernel"/);
  assert.match(stage.script, /trap '\[ \$\? -eq 0 \] \|\| rm -rf "\$s"' EXIT/);
  const dl = stageStep(
    "tiny",
    "0123456789abcdef",
    [{ role: "kernel", hostPath: "", url: "http://10.0.0.1/k?a=1&b=2" }],
    "hv1",
  );
  assert.match(dl.script, /-- 'http:\/\/10.0.0.1\/k\?a=1&b=2'/);
  const commit = commitStep(
    "tiny",
    "0123456789abcdef",
    [{ role: "kernel", fileName: "kernel", sha256: SHA_B }],
    ["kernel"],
    1700000000.7,
    "hv1",
  );
  assert.match(commit.script, /touch -m -d @1700000000 "\$s\/kernel"\nmv -f "\$s\/kernel" "\$d\/kernel"/);
  assert.match(commit.script, /rm -rf "\$s"/);
  assert.match(commit.script, /rm -f "\$d\/disk.qcow2"/);
  assert.doesNotMatch(commit.script, /rm -f "\$d\/kernel"/);
  const rm = removeImageStep("tiny", "hv1");
  assert.match(rm.script, /exit 16/);
  assert.match(rm.script, /rm -rf \/var\/lib\/kvmlab\/images\/.incoming\/tiny\.\*/);
  assert.match(rm.script, /rm -f \/var\/lib\/kvmlab\/records\/image\/tiny.json/);
});

test("the image provider is serialization-safe and checks after loading back", async () => {
  const { provider, text } = await assertSerializable(imageProvider, {
    methods: ["check", "diff", "create", "read", "update", "delete"],
    forbid: [/handlebars/, /require\("yaml"\)/],
  });
  assert.doesNotMatch(text, /^const \w+ = require\("(node-ssh|node:fs|fs)"\);$/m);
  const chk = provider.check as (o: object, n: object) => Promise<{ failures: { property: string }[] }>;
  const r = await chk({}, { imageName: "x", hosts: HOSTS, kernel: { hostPath: "/k;x", sha256: SHA_A } });
  assert.deepEqual(
    r.failures.map((f) => f.property),
    ["kernel"],
  );
});

test("create fails on a local checksum mismatch before touching any host, naming both values", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-img-"));
  try {
    const f = path.join(dir, "k");
    fs.writeFileSync(f, "kernel bytes");
    const before = hostPoolStats();
    const inputs = kernel({ kernel: { localPath: f, sha256: SHA_B }, ramdisk: undefined });
    await assert.rejects(
      imageProvider.create!(inputs),
      (e: Error) =>
        e.message.includes(`expected ${SHA_B}, actual `) &&
        /nothing was sent to any host/.test(e.message) &&
        /^kernel.sha256: checksum mismatch/.test(e.message),
    );
    await assert.rejects(
      imageProvider.create!(
        kernel({ kernel: { localPath: path.join(dir, "nope"), sha256: SHA_B }, ramdisk: undefined }),
      ),
      /kernel.localPath: .* does not exist on the machine running Pulumi/,
    );
    assert.equal(hostPoolStats().connectionsOpened, before.connectionsOpened);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("the record carries the identity project of its owner (issue 14), and none without one", () => {
  const stored = { kernel: { sizeBytes: 10, mtime: 1 }, ramdisk: { sizeBytes: 5, mtime: 2 } };
  const r = imageRecord(kernel({ owner: "lab/dev/Image/tiny/project=Default%2Fdemo" }), stored, 0);
  assert.equal(r.project, "Default/demo");
  assert.ok(!("project" in imageRecord(kernel({ owner: "lab/dev/Image/tiny" }), stored, 0)));
});
