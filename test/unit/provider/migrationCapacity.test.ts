/**
 * A live migration's destination capacity (review 8 P2) and the fit checks' MemAvailable rule
 * (review 8b Q8): the host's scripts (migrationFitsStep, reservationStep, dropReservationStep,
 * resizeFitsStep) RUN with bash over sample record folders, a fake /proc/meminfo, nproc and
 * virsh; the provider's update runs over a fake host for the order of the migration's steps
 * (the fit check before anything is written, the reservation removed after a failure) and for
 * the metadata-only branch's fit check (review 8b Q5).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { checkServerInputs, ownerOf, serverProvider, type StepResult } from "../../../provider";
import {
  parseHostLoad,
  PLACEMENT,
  serverCapacityText,
  type ServerInputs,
  type ServerOutputs,
} from "../../../provider/server";
import {
  dropReservationStep,
  MIGRATION_REFUSED_EXIT,
  migrationFitsStep,
  RECORDS_CHANGED_EXIT,
  recordsUnchangedStep,
  RESERVATION_FIELD,
  reservationStep,
  resizeFitsStep,
  RESIZE_REFUSED_EXIT,
  statsStep,
  type FitPolicy,
} from "../../../provider/server/steps";
import { serverRaw, testHost } from "./fixtures";
import { fakeHost, serverOutputsOn } from "./fakeHost";

const U1 = "11111111-1111-5111-8111-111111111111";
const U2 = "22222222-2222-5222-8222-222222222222";
const U3 = "33333333-3333-5333-8333-333333333333";

interface Sample {
  root: string;
  put(name: string, uuid: string, ramMiB: number, vcpus: number, extra?: Record<string, unknown>): void;
  /** The host: MemTotal and MemAvailable in MiB (MemAvailable absent when undefined), CPUs. */
  host(memTotalMiB: number, memAvailableMiB: number | undefined, cpus: number): void;
  /** A fake virsh: `domuuid` prints `uuid` (fails when ""), `dommemstat` an rss (fails without). */
  virshDomuuid(uuid: string, rssKiB?: number): void;
  run(script: string): { code: number | null; stdout: string; stderr: string };
  file(name: string): string;
}

function sample(fn: (s: Sample) => void): void {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-migcap-"));
  const dir = path.join(root, "records", "server");
  const bin = path.join(root, "bin");
  fs.mkdirSync(dir, { recursive: true });
  fs.mkdirSync(bin);
  const s: Sample = {
    root,
    put(name, uuid, ramMiB, vcpus, extra = {}) {
      const value = {
        name,
        uuid,
        flavor: "m1.x",
        vcpus,
        ramMiB,
        image: "cirros",
        ports: [],
        owner: `lab/a/Server/${name}`,
        project: "",
        ...extra,
      };
      fs.writeFileSync(path.join(dir, `${name}.json`), `${JSON.stringify(value, null, 2)}\n`);
    },
    host(mem, avail, cpus) {
      fs.writeFileSync(
        path.join(root, "meminfo"),
        `MemTotal:       ${mem * 1024} kB\nMemFree:        1 kB\n${avail === undefined ? "" : `MemAvailable:   ${avail * 1024} kB\n`}`,
      );
      fs.writeFileSync(path.join(bin, "nproc"), `#!/bin/sh\necho ${cpus}\n`, { mode: 0o755 });
    },
    virshDomuuid(uuid, rssKiB) {
      const lines = [
        "#!/bin/sh",
        `for a in "$@"; do case "$a" in`,
        `  domuuid) ${uuid ? `echo ${uuid}; exit 0` : "exit 1"} ;;`,
        `  dommemstat) ${rssKiB === undefined ? "exit 1" : `printf 'actual 1\\nrss ${rssKiB}\\n'; exit 0`} ;;`,
        "esac; done",
        "exit 1",
      ];
      fs.writeFileSync(path.join(bin, "virsh"), `${lines.join("\n")}\n`, { mode: 0o755 });
    },
    run(script) {
      const text = script
        .split("/var/lib/kvmlab")
        .join(root)
        .split("/proc/meminfo")
        .join(path.join(root, "meminfo"));
      const r = spawnSync("bash", ["--noprofile", "--norc", "-c", text], {
        encoding: "utf8",
        env: { PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}` },
      });
      return { code: r.status, stdout: r.stdout, stderr: r.stderr };
    },
    file(name) {
      const p = path.join(dir, `${name}.json`);
      return fs.existsSync(p) ? fs.readFileSync(p, "utf8") : "";
    },
  };
  s.host(2048, 2048, 1);
  s.virshDomuuid("");
  try {
    fn(s);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

const me = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
const hv1 = testHost("hv1", 1);
const hv2 = testHost("hv2", 2);

function web1(ramMiB = 512, hosts = [hv1, hv2]): ServerInputs {
  const { inputs, failures } = checkServerInputs({
    ...serverRaw(hosts, { ramMiB }),
    powerState: "external",
    owner: me,
  });
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

const fits = (uuid: string, ramMiB: number, vcpus: number) =>
  migrationFitsStep(
    { uuid, serverName: "web1", flavor: { name: "m1.x", ramMiB, vcpus, diskGiB: 0 } },
    "hv2",
    "hv1",
    PLACEMENT,
  );

test("the migration's fit check (migrationFitsStep): placement's rules on the destination, refused naming host, the free capacity, the source and the fix", () => {
  sample((s) => {
    // 2048 MiB, 1 CPU: 1536 MiB and 4 vCPUs for servers; db1 holds 1024 MiB and 2 vCPUs.
    s.put("db1", U2, 1024, 2);
    const ok = s.run(fits(U1, 512, 2).script);
    assert.equal(ok.code, 0, ok.stderr);
    const ram = s.run(fits(U1, 513, 1).script);
    assert.equal(ram.code, MIGRATION_REFUSED_EXIT);
    assert.equal(
      ram.stderr.trim(),
      "host: server web1 (flavor m1.x: 1 vCPU, 513 MiB) does not fit host hv2 beside its other servers: 512 MiB RAM and 2 vCPUs free; it was not migrated and keeps running on hv1. Fix: pin another host (host), free capacity on hv2, or give the server a smaller flavor first",
    );
    assert.equal(s.run(fits(U1, 256, 3).script).code, MIGRATION_REFUSED_EXIT, "vCPUs count too");
    // The server's own line (a reservation an earlier, killed attempt left) is not counted twice.
    s.put("web1", U1, 512, 2, { [RESERVATION_FIELD]: "live migration from hv1" });
    assert.equal(s.run(fits(U1, 512, 2).script).code, 0);
    // Another server's reservation counts like its record.
    s.put("app1", U3, 256, 1, { [RESERVATION_FIELD]: "live migration from hv3" });
    assert.equal(s.run(fits(U1, 512, 2).script).code, MIGRATION_REFUSED_EXIT);
    assert.equal(s.run(fits(U1, 256, 1).script).code, 0);
  });
});

test("the fit checks refuse when MemAvailable is below the flavor's RAM, as placement does (review 8b Q8); a host without MemAvailable reads 0", () => {
  sample((s) => {
    s.host(2048, 300, 1);
    const mig = s.run(fits(U1, 512, 1).script);
    assert.equal(mig.code, MIGRATION_REFUSED_EXIT);
    assert.match(
      mig.stderr,
      /^host: server web1 .* does not fit host hv2: only 300 MiB of memory available right now; it was not migrated/,
    );
    const resize = (ramMiB: number) =>
      s.run(
        resizeFitsStep(
          { uuid: U1, serverName: "web1", flavor: { name: "m1.x", ramMiB, vcpus: 1, diskGiB: 0 } },
          "hv1",
          PLACEMENT,
        ).script,
      );
    const r = resize(512);
    assert.equal(
      r.code,
      RESIZE_REFUSED_EXIT,
      "the records leave 1536 MiB free, but only 300 MiB are available",
    );
    assert.match(
      r.stderr,
      /^flavor: m1\.x \(1 vCPU, 512 MiB\) does not fit host hv1: only 300 MiB of memory available right now for server web1; pick a smaller flavor/,
    );
    assert.equal(resize(300).code, 0, "300 MiB fit");
    // The memory the running guest holds (QEMU's rss) is freed by its stop: it counts as available.
    s.virshDomuuid("", 256 * 1024);
    assert.equal(resize(556).code, 0, "300 + 256 MiB");
    const held = resize(557);
    assert.equal(held.code, RESIZE_REFUSED_EXIT);
    assert.match(
      held.stderr,
      /only 556 MiB of memory available right now \(with the 256 MiB the guest holds now\) for server web1/,
    );
    assert.equal(
      s.run(fits(U1, 512, 1).script).code,
      MIGRATION_REFUSED_EXIT,
      "a migration's destination gets no such credit",
    );
    s.virshDomuuid("");
    s.host(2048, undefined, 1);
    assert.equal(resize(1).code, RESIZE_REFUSED_EXIT, "no MemAvailable line: 0, as parseHostLoad reads it");
    assert.equal(s.run(fits(U1, 1, 1).script).code, MIGRATION_REFUSED_EXIT);
  });
});

test("the fit checks take only whole numbers and positive ratios into their script", () => {
  const policy: FitPolicy = { ...PLACEMENT, ramAllocationRatio: 0 };
  assert.throws(
    () =>
      migrationFitsStep(
        { uuid: U1, serverName: "web1", flavor: { name: "m", ramMiB: 1, vcpus: 1, diskGiB: 0 } },
        "hv2",
        "hv1",
        policy,
      ),
    /ratio 0/,
  );
  assert.throws(() => fits(U1, 1.5, 1), /1\.5 is not a whole number/);
});

test("the reservation (reservationStep) is the server's record plus its marker: the stats step counts it and the placement guard sees it", () => {
  sample((s) => {
    const i = web1(512);
    s.put("db1", U2, 256, 1);
    const before = parseHostLoad("hv2", s.run(statsStep().script).stdout);
    const w = s.run(reservationStep(i, [], "hv1").script);
    assert.equal(w.code, 0, w.stderr);
    assert.equal(w.stdout.trim(), "reserved");
    const rec = JSON.parse(s.file("web1")) as Record<string, unknown>;
    assert.equal(rec.uuid, i.uuid);
    assert.equal(rec.ramMiB, 512);
    assert.equal(rec.owner, me);
    assert.equal(rec[RESERVATION_FIELD], "live migration from hv1");
    assert.equal(fs.statSync(path.join(s.root, "records", "server", "web1.json")).mode & 0o777, 0o600);
    assert.deepEqual(
      fs.readdirSync(path.join(s.root, "records", "server")).sort(),
      ["db1.json", "web1.json"],
      "no temporary file left",
    );
    const after = parseHostLoad("hv2", s.run(statsStep().script).stdout);
    assert.equal(after.allocatedRamMiB, before.allocatedRamMiB + 512, "placement counts the reservation");
    assert.ok(after.serverUuids.includes(i.uuid));
    // A placement that read hv2 before the reservation is refused by its guard and reads again.
    const g = s.run(recordsUnchangedStep(serverCapacityText(before.capacity ?? []), []).script);
    assert.equal(g.code, RECORDS_CHANGED_EXIT, g.stderr);
    assert.equal(s.run(recordsUnchangedStep(serverCapacityText(after.capacity ?? []), []).script).code, 0);
    // Idempotent: a second attempt rewrites it.
    assert.equal(s.run(reservationStep(i, [], "hv1").script).stdout.trim(), "reserved");
  });
});

test("the reservation never overwrites another server's record nor this server's normal record", () => {
  sample((s) => {
    const i = web1(512);
    s.put("web1", U2, 256, 1);
    const theirs = s.file("web1");
    const r = s.run(reservationStep(i, [], "hv1").script);
    assert.equal(r.code, 34);
    assert.match(r.stderr, /another server is recorded under the name web1 on this host/);
    assert.equal(s.file("web1"), theirs);
    s.put("web1", i.uuid, 512, 1);
    const normal = s.file("web1");
    const k = s.run(reservationStep(i, [], "hv1").script);
    assert.equal(k.code, 0, k.stderr);
    assert.equal(k.stdout.trim(), "kept");
    assert.equal(s.file("web1"), normal);
  });
});

test("dropReservationStep removes only this server's reservation, and keeps it while a domain of its UUID is defined", () => {
  sample((s) => {
    const i = web1(512);
    assert.equal(s.run(reservationStep(i, [], "hv1").script).code, 0);
    // Another server's reservation under the name: not ours.
    const other = { serverName: "web1", uuid: U2 };
    assert.equal(s.run(dropReservationStep(other).script).code, 0);
    assert.notEqual(s.file("web1"), "");
    // A domain of this UUID is defined here: the guest may run here, kept.
    s.virshDomuuid(i.uuid);
    const kept = s.run(dropReservationStep(i).script);
    assert.equal(kept.code, 0);
    assert.match(kept.stderr, /its reservation is kept/);
    assert.notEqual(s.file("web1"), "");
    s.virshDomuuid("");
    const gone = s.run(dropReservationStep(i).script);
    assert.equal(gone.code, 0, gone.stderr);
    assert.equal(gone.stdout.trim(), "removed");
    assert.equal(s.file("web1"), "");
    assert.equal(s.run(dropReservationStep(i).script).code, 0, "idempotent");
    // This server's normal record (the guest runs here) is never removed.
    s.put("web1", i.uuid, 512, 1);
    assert.equal(s.run(dropReservationStep(i).script).code, 0);
    assert.notEqual(s.file("web1"), "");
  });
});

// ---- the provider's migration over a fake host ----

const provider = serverProvider as unknown as {
  update(id: string, olds: ServerOutputs, news: ServerInputs): Promise<unknown>;
};

const CA = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

/** A fake pair hv1 (source, runs web1) and hv2; `fail(label, host)` gives a step's failure. */
function migrationHosts(fail: (label: string, host: string) => StepResult | undefined) {
  let moved = false;
  return fakeHost((label, _script, host): string | StepResult => {
    const f = fail(label, host);
    if (f) return f;
    if (/^migration TLS certificates on /.test(label)) return CA;
    if (/^read domain web1$/.test(label)) {
      const runs = (host === "hv1") !== moved;
      return runs ? "defined=yes\nstate=running\ntype=qemu\n" : "defined=no\n";
    }
    // The destination's sshd: a host key whose fingerprint is the fixtures' pin (sha256 of "").
    if (/^read the destination's sshd/.test(label)) return "ssh-ed25519 A\nakf=/root/.ssh/authorized_keys\n";
    if (/^generate a one-off migration key/.test(label))
      return "ssh-ed25519 AAAAC3Nz kvmlab-migrate-web1-x\n";
    if (/^live-migrate web1 to hv2$/.test(label)) moved = true;
    return "";
  });
}

function migration(): { olds: ServerOutputs; news: ServerInputs } {
  const i = web1(512);
  return { olds: serverOutputsOn({ ...i, host: "hv1" }, hv1), news: { ...i, host: "hv2" } };
}

const on = (fake: { log: { host: string; label: string }[] }, host: string) =>
  fake.log.filter((l) => l.host === host).map((l) => l.label);

test("a migration onto a destination that does not fit is refused before anything is written there; the guest keeps running on the source", async () => {
  const { olds, news } = migration();
  const fake = migrationHosts((label) =>
    /^check that server web1 fits host hv2$/.test(label)
      ? {
          code: MIGRATION_REFUSED_EXIT,
          stdout: "",
          stderr:
            "host: server web1 (flavor m1.tiny: 1 vCPU, 512 MiB) does not fit host hv2 beside its other servers: 100 MiB RAM and 3 vCPUs free; it was not migrated and keeps running on hv1. Fix: pin another host (host)",
        }
      : undefined,
  );
  try {
    await assert.rejects(
      provider.update(olds.uuid, olds, news),
      /host: server web1 .*does not fit host hv2.*keeps running on hv1/s,
    );
    const dst = on(fake, "hv2");
    const at = dst.indexOf("check that server web1 fits host hv2");
    assert.ok(at >= 0, dst.join(" | "));
    assert.ok(
      dst
        .slice(0, at)
        .every((l) => /^(migration TLS|trust the migration CA|check that .* can be claimed)/.test(l)),
      `only checks before the fit check: ${dst.join(" | ")}`,
    );
    assert.deepEqual(dst.slice(at + 1), [], "nothing claimed, reserved or prepared on hv2");
    const src = on(fake, "hv1");
    assert.ok(!src.some((l) => /^(live-migrate|delete server|generate a one-off)/.test(l)), src.join(" | "));
  } finally {
    fake.restore();
  }
});

test("the reservation is written in the fit check's batch, after the claims, and replaced by the normal record once the guest runs on the destination", async () => {
  const { olds, news } = migration();
  const fake = migrationHosts(() => undefined);
  try {
    await provider.update(olds.uuid, olds, news);
    const dst = on(fake, "hv2");
    const fit = dst.indexOf("check that server web1 fits host hv2");
    const reserve = dst.indexOf("reserve capacity for server web1");
    assert.ok(fit >= 0 && reserve > fit, dst.join(" | "));
    assert.ok(
      dst.slice(fit, reserve).some((l) => /^claim server web1/.test(l)),
      "claimed before the reservation",
    );
    const all = fake.log.map((l) => `${l.host}: ${l.label}`);
    const migrate = all.indexOf("hv1: live-migrate web1 to hv2");
    assert.ok(
      all.indexOf("hv2: reserve capacity for server web1") < migrate,
      "reserved before virsh migrate",
    );
    const record = all.indexOf("hv2: write record server/web1", migrate);
    assert.ok(record > migrate, `the normal record after the move: ${all.join(" | ")}`);
    assert.ok(all.indexOf("hv1: delete server web1") > record, "the source's record goes only after");
    assert.ok(!all.includes("hv2: remove the capacity reservation of server web1"));
  } finally {
    fake.restore();
  }
});

test("a migration that fails with the guest on the source removes the reservation (owner-guarded); a removal that fails is named in the error", async () => {
  const { olds, news } = migration();
  let dropFails = false;
  const fake = migrationHosts((label) => {
    if (/^live-migrate web1 to hv2$/.test(label))
      return { code: 1, stdout: "", stderr: "error: operation failed: migration out of memory" };
    if (dropFails && /^remove the capacity reservation of server web1$/.test(label))
      return { code: 1, stdout: "", stderr: "rm: cannot remove: Read-only file system" };
    return undefined;
  });
  try {
    await assert.rejects(provider.update(olds.uuid, olds, news), (e: Error) => {
      assert.match(e.message, /migration out of memory/);
      assert.doesNotMatch(e.message, /reservation/);
      return true;
    });
    const dst = on(fake, "hv2");
    const drop = dst.lastIndexOf("remove the capacity reservation of server web1");
    assert.ok(drop > 0, dst.join(" | "));
    assert.match(dst[drop - 1], /^check the owner of server web1/, "owner-guarded");
    fake.log.length = 0;
    dropFails = true;
    await assert.rejects(
      provider.update(olds.uuid, olds, news),
      /migration out of memory[\s\S]*its capacity reservation on hv2 could not be removed .*it counts 512 MiB there/,
    );
  } finally {
    fake.restore();
  }
});

test("a failure preparing the destination after the reservation removes it; a refusal before it (another owner's name) writes nothing to remove", async () => {
  const { olds, news } = migration();
  let failAt: RegExp = /^check host for server web1$/;
  const fake = migrationHosts((label, host) =>
    host === "hv2" && failAt.test(label)
      ? { code: 30, stdout: "", stderr: "missing on this host: qemu-img" }
      : undefined,
  );
  try {
    await assert.rejects(provider.update(olds.uuid, olds, news), /missing on this host: qemu-img/);
    assert.ok(
      on(fake, "hv2").includes("remove the capacity reservation of server web1"),
      on(fake, "hv2").join(" | "),
    );
    fake.log.length = 0;
    failAt = /^check that server web1 can be claimed/;
    await assert.rejects(provider.update(olds.uuid, olds, news));
    assert.ok(
      !on(fake, "hv2").some((l) => /^(reserve|remove the capacity reservation)/.test(l)),
      on(fake, "hv2").join(" | "),
    );
  } finally {
    fake.restore();
  }
});

test("update's metadata-only branch checks a grown flavor before it writes the record (review 8b Q5); a refusal sets no metadata", async () => {
  const i = web1(128, [hv1]);
  const olds = serverOutputsOn(
    { ...i, owner: ownerOf({ pulumiProject: "lab", stack: "old", type: "Server", name: "web1" }) },
    hv1,
  );
  // A raw provider call: the flavor grows, the XML does not (same domainXml), the owner changed.
  const news: ServerInputs = { ...i, flavor: { ...i.flavor, ramMiB: 4096 } };
  const fake = fakeHost((label): string | StepResult => {
    if (/^check that flavor m1\.tiny fits host hv1 for server web1$/.test(label))
      return {
        code: RESIZE_REFUSED_EXIT,
        stdout: "",
        stderr: "flavor: m1.tiny (1 vCPU, 4096 MiB) does not fit host hv1 beside its other servers",
      };
    if (/^read domain web1$/.test(label)) return `defined=yes\nstate=running\ntype=qemu\nuuid=${i.uuid}\n`;
    return "";
  });
  try {
    await assert.rejects(provider.update(olds.uuid, olds, news), /flavor: m1\.tiny .*does not fit host hv1/);
    const labels = fake.log.map((l) => l.label);
    assert.ok(labels.includes("check that flavor m1.tiny fits host hv1 for server web1"), labels.join(" | "));
    assert.ok(!labels.some((l) => /^(set kvmlab metadata|write record|upload )/.test(l)), labels.join(" | "));
    // Without growth the branch runs as before, no check.
    fake.log.length = 0;
    await provider.update(olds.uuid, olds, i);
    const plain = fake.log.map((l) => l.label);
    assert.ok(plain.includes("write record server/web1"), plain.join(" | "));
    assert.ok(!plain.some((l) => /^check that flavor/.test(l)));
  } finally {
    fake.restore();
  }
});
