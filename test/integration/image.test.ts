/**
 * Image and Flavor providers against two `kvmlab sandbox` hosts, only over SSH (instance
 * "itest-image", built at the start and removed at the end). Proves: a local qcow2 upload is
 * verified and lands on both hosts; create run twice converges without sending anything; read
 * reports a file changed or removed by hand and update repairs it; a wrong checksum (local or
 * on the host) and a wrong disk format leave nothing on any host; the sandbox's test kernel
 * (a host path) + ramdisk (a local upload) register as a kernel+ramdisk image; delete refuses
 * while a server is marked as a user and otherwise leaves no file, staging folder or record;
 * a flavor's record lives on the controller only, converges, and its guarded delete spares a
 * replacement's record. Keypairs never touch hosts (see test/unit/provider/keypair.test.ts).
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  checkImageInputs,
  imageProvider,
  imageUserStep,
  type ImageInputs,
  type ImageOutputs,
} from "../../provider/image";
import {
  checkFlavorInputs,
  flavorProvider,
  type FlavorInputs,
  type FlavorOutputs,
} from "../../provider/flavor";
import { closeHostSessions, hostPoolStats, runChecked, type HostConnection } from "../../provider/host";
import { sandboxHostConnections, startSandbox, stopSandbox, type SandboxStatus } from "../support/sandbox";

const INSTANCE = "itest-image";
let hosts: HostConnection[] = [];
let status: SandboxStatus;
let dir = "";

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  hosts = sandboxHostConnections(status);
  assert.equal(hosts.length, 2);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-itest-image-"));
});

after(async () => {
  await closeHostSessions();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  if (process.env.KVMLAB_KEEP_SANDBOX !== "1") await stopSandbox(INSTANCE);
});

async function sh(host: HostConnection, script: string): Promise<string> {
  const [out] = await runChecked(host, [{ label: "test command", script }], { timeoutMs: 60_000 });
  return out;
}

function sha256(file: string): string {
  return crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

function qemuImg(...args: string[]): void {
  const r = spawnSync("qemu-img", args, { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
}

function imageInputs(raw: Record<string, unknown>): ImageInputs {
  const r = checkImageInputs({ hosts, ...raw });
  assert.deepEqual(r.failures, []);
  return r.inputs as unknown as ImageInputs;
}

/** Everything an image could leave on a host, one line per kind ("" when clean). */
async function leftovers(host: HostConnection, imageName: string): Promise<string> {
  return (
    await sh(
      host,
      [
        `[ -e /var/lib/kvmlab/images/${imageName} ] && echo "dir: $(ls -A /var/lib/kvmlab/images/${imageName} | tr '\\n' ' ')"`,
        `ls -A /var/lib/kvmlab/images/.incoming 2>/dev/null | grep -F ${imageName}. | sed 's/^/staging: /'`,
        `[ -e /var/lib/kvmlab/records/image/${imageName}.json ] && echo record`,
        "true",
      ].join("\n"),
    )
  ).trim();
}

test("a local qcow2 upload lands verified on both hosts; a second create converges without sending", async () => {
  const file = path.join(dir, "disk.qcow2");
  qemuImg("create", "-q", "-f", "qcow2", file, "16M");
  fs.appendFileSync(file, Buffer.alloc(0));
  const inputs = imageInputs({
    imageName: "it-disk",
    source: { localPath: file, sha256: sha256(file) },
    diskFormat: "qcow2",
    minDiskGiB: 1,
  });
  const { id, outs } = await imageProvider.create!(inputs);
  const o = outs as ImageOutputs;
  assert.equal(id, "it-disk");
  assert.equal(o.diskPath, "/var/lib/kvmlab/images/it-disk/disk.qcow2");
  assert.equal(o.virtualSizeBytes, 16 * 1024 * 1024);
  assert.equal(o.sizeBytes, fs.statSync(file).size);
  assert.equal(o.minDiskGiB, 1);
  assert.deepEqual(JSON.parse(JSON.stringify(o)), o);
  const stamps: string[] = [];
  for (const h of hosts) {
    const out = await sh(
      h,
      `sha256sum < ${o.diskPath} | cut -d' ' -f1; stat -c '%a %Y' ${o.diskPath}; cat /var/lib/kvmlab/records/image/it-disk.json`,
    );
    const [sum, stat] = out.split("\n");
    assert.equal(sum, o.sha256, `${h.name} holds the uploaded bytes`);
    assert.match(stat, /^644 \d+$/);
    stamps.push(stat);
    assert.match(out, /"format": "qcow2"/);
    assert.equal(await leftovers(h, "it-disk").then((l) => l.includes("staging")), false);
  }

  const before = hostPoolStats();
  const t0 = Date.now();
  const again = await imageProvider.create!(inputs);
  const ms = Date.now() - t0;
  const used = hostPoolStats();
  assert.deepEqual((again.outs as ImageOutputs).files, o.files);
  // Converged: one probe batch per host, nothing sent, no commit, no new connection.
  assert.equal(used.batches - before.batches, 2, "one round trip per host");
  assert.equal(used.connectionsOpened - before.connectionsOpened, 0);
  for (const [i, h] of hosts.entries()) {
    assert.equal((await sh(h, `stat -c '%a %Y' ${o.diskPath}`)).trim(), stamps[i]);
  }
  console.log(
    `# converging create of a present image on 2 hosts: ${ms} ms, ${used.batches - before.batches} round trips`,
  );

  // A no-change diff opens nothing.
  const beforeDiff = hostPoolStats();
  const d = await imageProvider.diff!("it-disk", o, inputs);
  assert.equal(d.changes, false);
  assert.deepEqual(hostPoolStats(), beforeDiff);
});

test("read reports a file changed or removed by hand; update repairs it; delete leaves nothing", async () => {
  const file = path.join(dir, "drift.raw");
  fs.writeFileSync(file, crypto.randomBytes(64 * 1024));
  const inputs = imageInputs({
    imageName: "it-drift",
    source: { localPath: file, sha256: sha256(file) },
    diskFormat: "raw",
  });
  const { outs } = await imageProvider.create!(inputs);
  let o = outs as ImageOutputs;
  const clean = await imageProvider.read!("it-drift", o);
  assert.equal(clean.id, "it-drift");
  assert.equal((await imageProvider.diff!("it-drift", clean.props as ImageOutputs, inputs)).changes, false);

  await sh(hosts[1], `echo tampered >> ${o.diskPath}`);
  await sh(hosts[0], `rm -f ${o.diskPath}`);
  const drifted = (await imageProvider.read!("it-drift", o)).props as ImageOutputs;
  assert.equal(drifted.realized.hv1.files.disk, "");
  assert.notEqual(drifted.realized.hv2.files.disk, o.sha256);
  assert.match(drifted.realized.hv2.files.disk ?? "", /^[0-9a-f]{64}$/);
  const d = await imageProvider.diff!("it-drift", drifted, inputs);
  assert.deepEqual([d.changes, d.replaces], [true, []]);

  o = (await imageProvider.update!("it-drift", drifted, inputs)).outs as ImageOutputs;
  for (const h of hosts)
    assert.equal((await sh(h, `sha256sum < ${o.diskPath} | cut -d' ' -f1`)).trim(), o.sha256);
  const repaired = (await imageProvider.read!("it-drift", o)).props as ImageOutputs;
  assert.equal((await imageProvider.diff!("it-drift", repaired, inputs)).changes, false);

  // A record removed by hand: the file is hashed, kept (not sent again) and the record rewritten.
  const mtimeBefore = (await sh(hosts[0], `stat -c %Y ${o.diskPath}`)).trim();
  await sh(hosts[0], "rm -f /var/lib/kvmlab/records/image/it-drift.json");
  const noRecord = (await imageProvider.read!("it-drift", o)).props as ImageOutputs;
  assert.equal(noRecord.realized.hv1.record, false);
  assert.equal(noRecord.realized.hv1.files.disk, o.sha256);
  assert.equal((await imageProvider.diff!("it-drift", noRecord, inputs)).changes, true);
  o = (await imageProvider.update!("it-drift", noRecord, inputs)).outs as ImageOutputs;
  assert.equal((await sh(hosts[0], `stat -c %Y ${o.diskPath}`)).trim(), mtimeBefore, "not sent again");
  assert.match(
    await sh(hosts[0], "cat /var/lib/kvmlab/records/image/it-drift.json"),
    new RegExp(`"stamp": "${o.sha256} `),
  );

  await imageProvider.delete!("it-drift", o);
  for (const h of hosts) assert.equal(await leftovers(h, "it-drift"), "");
  await imageProvider.delete!("it-drift", o); // idempotent
  assert.equal((await imageProvider.read!("it-drift", o)).id, "", "gone everywhere → read says gone");
});

test("hosts: an added host gets the image, a dropped one loses it; a metadata update needs no local file", async () => {
  const file = path.join(dir, "moving.raw");
  fs.writeFileSync(file, crypto.randomBytes(16 * 1024));
  const sum = sha256(file);
  const on = (names: string[], extra: Record<string, unknown> = {}): ImageInputs => {
    const r = checkImageInputs({
      imageName: "it-move",
      hosts: hosts.filter((h) => names.includes(h.name)),
      source: { localPath: file, sha256: sum },
      diskFormat: "raw",
      ...extra,
    });
    assert.deepEqual(r.failures, []);
    return r.inputs as unknown as ImageInputs;
  };
  let o = (await imageProvider.create!(on(["hv1"]))).outs as ImageOutputs;
  assert.equal(await leftovers(hosts[1], "it-move"), "");
  o = (await imageProvider.update!("it-move", o, on(["hv1", "hv2"]))).outs as ImageOutputs;
  assert.deepEqual(Object.keys(o.paths), ["hv1", "hv2"]);
  assert.equal((await sh(hosts[1], `sha256sum < ${o.diskPath} | cut -d' ' -f1`)).trim(), sum);
  o = (await imageProvider.update!("it-move", o, on(["hv2"]))).outs as ImageOutputs;
  assert.equal(await leftovers(hosts[0], "it-move"), "");
  fs.renameSync(file, `${file}.away`);
  o = (await imageProvider.update!("it-move", o, on(["hv2"], { minRamMiB: 256 }))).outs as ImageOutputs;
  assert.equal(o.minRamMiB, 256);
  assert.match(await sh(hosts[1], "cat /var/lib/kvmlab/records/image/it-move.json"), /"minRamMiB": 256/);
  await imageProvider.delete!("it-move", o);
  for (const h of hosts) assert.equal(await leftovers(h, "it-move"), "");
});

test("a wrong checksum or disk format leaves nothing on any host", async () => {
  const file = path.join(dir, "wrong.raw");
  fs.writeFileSync(file, crypto.randomBytes(32 * 1024));
  const real = sha256(file);
  const wrong = real.replace(/^./, (c) => (c === "0" ? "1" : "0"));
  // Local file: caught before anything is sent.
  const before = hostPoolStats();
  await assert.rejects(
    imageProvider.create!(
      imageInputs({ imageName: "it-bad", source: { localPath: file, sha256: wrong }, diskFormat: "raw" }),
    ),
    new RegExp(`source.sha256: checksum mismatch .*expected ${wrong}, actual ${real}`),
  );
  assert.equal(hostPoolStats().batches, before.batches);

  // Host path: verified on each host after the copy, then everything is removed again.
  await Promise.all(
    hosts.map((h) => sh(h, "mkdir -p /root/itest && head -c 4096 /dev/zero > /root/itest/zero.raw")),
  );
  const zeroSha = crypto.createHash("sha256").update(Buffer.alloc(4096)).digest("hex");
  await assert.rejects(
    imageProvider.create!(
      imageInputs({
        imageName: "it-bad",
        source: { hostPath: "/root/itest/zero.raw", sha256: wrong },
        diskFormat: "raw",
      }),
    ),
    (e: Error) =>
      /host hv1: source.sha256: checksum mismatch/.test(e.message) &&
      /host hv2: source.sha256: checksum mismatch/.test(e.message) &&
      e.message.includes(`expected ${wrong}, actual ${zeroSha}`),
  );
  for (const h of hosts) assert.equal(await leftovers(h, "it-bad"), "", `${h.name} is clean`);

  // Declared qcow2, actually raw: qemu-img says so, nothing stays.
  await assert.rejects(
    imageProvider.create!(
      imageInputs({
        imageName: "it-bad",
        source: { hostPath: "/root/itest/zero.raw", sha256: zeroSha },
        diskFormat: "qcow2",
      }),
    ),
    /diskFormat is "qcow2" but the file is "raw"/,
  );
  // A missing host path names the host and the field.
  await assert.rejects(
    imageProvider.create!(
      imageInputs({
        imageName: "it-bad",
        source: { hostPath: "/root/itest/none.raw", sha256: zeroSha },
        diskFormat: "raw",
      }),
    ),
    /source file \/root\/itest\/none.raw does not exist on host hv1; fix the disk hostPath/,
  );
  for (const h of hosts) assert.equal(await leftovers(h, "it-bad"), "", `${h.name} is clean`);
});

test("the sandbox test kernel (host path) and ramdisk (upload) register as a kernel+ramdisk image", async () => {
  const kernel = status.image.kernel;
  const ramdisk = status.image.ramdisk;
  const inputs = imageInputs({
    imageName: "it-tiny",
    kernel: { hostPath: kernel, sha256: sha256(kernel) },
    ramdisk: { localPath: ramdisk, sha256: sha256(ramdisk) },
    kernelCmdline: status.image.cmdline,
    minRamMiB: 96,
  });
  const t0 = Date.now();
  const o = (await imageProvider.create!(inputs)).outs as ImageOutputs;
  console.log(
    `# kernel (${fs.statSync(kernel).size} B, host copy) + ramdisk (${fs.statSync(ramdisk).size} B, SFTP) on 2 hosts: ${Date.now() - t0} ms`,
  );
  assert.equal(o.format, "kernel");
  assert.equal(o.kernelCmdline, status.image.cmdline);
  assert.equal(o.files.ramdisk?.sizeBytes, fs.statSync(ramdisk).size);
  for (const h of hosts) {
    const out = await sh(h, `cd /var/lib/kvmlab/images/it-tiny && sha256sum kernel ramdisk && ls -A`);
    assert.match(out, new RegExp(`${o.files.kernel?.sha256}  kernel`));
    assert.match(out, new RegExp(`${o.files.ramdisk?.sha256}  ramdisk`));
    assert.equal(o.paths[h.name].kernel, "/var/lib/kvmlab/images/it-tiny/kernel");
  }

  // A server marked as a user blocks delete, on the host that has it.
  await runChecked(hosts[1], [imageUserStep("it-tiny", "web-0", true)]);
  await assert.rejects(
    imageProvider.delete!("it-tiny", o),
    /image it-tiny is still used on host hv2 by: web-0 .*delete those servers first/,
  );
  assert.match(await sh(hosts[1], "ls /var/lib/kvmlab/images/it-tiny"), /kernel/);
  const read = (await imageProvider.read!("it-tiny", o)).props as ImageOutputs;
  assert.deepEqual(read.realized.hv2.users, ["web-0"]);
  await runChecked(hosts[1], [imageUserStep("it-tiny", "web-0", false)]);
  await imageProvider.delete!("it-tiny", o);
  for (const h of hosts) assert.equal(await leftovers(h, "it-tiny"), "");
});

test("flavor: record on the controller only, converging create, guarded delete, drift", async () => {
  const check = (raw: Record<string, unknown>): FlavorInputs => {
    const r = checkFlavorInputs({ hosts, ...raw });
    assert.deepEqual(r.failures, []);
    return r.inputs as unknown as FlavorInputs;
  };
  const rec = "/var/lib/kvmlab/records/flavor/m1.tiny.json";
  const small = check({
    flavorName: "m1.tiny",
    vcpus: 1,
    ramMiB: 128,
    extraSpecs: { "hw:cpu_policy": "shared" },
  });
  const a = (await flavorProvider.create!(small)).outs as FlavorOutputs;
  assert.equal(a.controller, "hv1");
  assert.match(await sh(hosts[0], `cat ${rec}`), new RegExp(`"flavorId": "${a.flavorId}"`));
  assert.equal((await sh(hosts[1], `[ -e ${rec} ] && echo yes || echo no`)).trim(), "no");
  const again = (await flavorProvider.create!(small)).outs as FlavorOutputs;
  assert.equal(again.flavorId, a.flavorId);
  assert.deepEqual((await flavorProvider.read!(a.flavorId, a)).props?.realized, {
    record: true,
    matches: true,
  });

  // Replacement (create before delete): the old one's delete spares the new record.
  const bigger = check({ flavorName: "m1.tiny", vcpus: 2, ramMiB: 256 });
  const b = (await flavorProvider.create!(bigger)).outs as FlavorOutputs;
  await flavorProvider.delete!(a.flavorId, a);
  assert.match(await sh(hosts[0], `cat ${rec}`), new RegExp(`"flavorId": "${b.flavorId}"`));

  // Drift: edited by hand → matches false → update rewrites it.
  await sh(hosts[0], `sed -i 's/"vcpus": 2/"vcpus": 64/' ${rec}`);
  const drifted = (await flavorProvider.read!(b.flavorId, b)).props as FlavorOutputs;
  assert.deepEqual(drifted.realized, { record: true, matches: false });
  const fixed = (await flavorProvider.update!(b.flavorId, drifted, bigger)).outs as FlavorOutputs;
  assert.deepEqual(fixed.realized, { record: true, matches: true });

  await flavorProvider.delete!(b.flavorId, b);
  await flavorProvider.delete!(b.flavorId, b);
  assert.equal((await sh(hosts[0], `[ -e ${rec} ] && echo yes || echo no`)).trim(), "no");
  assert.equal((await flavorProvider.read!(b.flavorId, b)).id, "");
});

test("cleanup: the disk image of the first test is deleted without leftovers", async () => {
  const file = path.join(dir, "disk.qcow2");
  const inputs = imageInputs({
    imageName: "it-disk",
    source: { localPath: file, sha256: sha256(file) },
    diskFormat: "qcow2",
    minDiskGiB: 1,
  });
  const o = (await imageProvider.create!(inputs)).outs as ImageOutputs;
  await imageProvider.delete!("it-disk", o);
  for (const h of hosts) {
    assert.equal(await leftovers(h, "it-disk"), "");
    assert.equal((await sh(h, "ls -A /var/lib/kvmlab/images/.incoming 2>/dev/null | wc -l")).trim(), "0");
  }
});
