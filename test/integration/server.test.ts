/**
 * Server provider against two `kvmlab sandbox` hosts (instance "itest-srv", or
 * $KVMLAB_ITEST_SERVER_INSTANCE), reached only over SSH. One guest at a time.
 *
 * Proves: placement picks a host and keeps it; the guest boots from the sandbox kernel+ramdisk
 * with a NoCloud seed, gets its reserved address by DHCP and answers HTTP from the runner;
 * stop/start; cold resize keeps UUID, MAC and IP and shows the new memory in dominfo; live
 * migration moves it (still answering, gone from the old host, migration key revoked); the
 * image's `.users` marker follows the server (set on create and on the migration's destination,
 * gone from the source and after delete); delete leaves no domain, file, record or reservation
 * and is idempotent; a guest that never gets ready fails create with its serial log in the
 * error and leaves nothing behind; a change of kvmlab's metadata alone (older state, new owner,
 * a hand edit refresh found) is set in place with the same QEMU process; files live in the folder
 * of the server's UUID, and a server created before that (in the folder of its name) keeps its
 * folder: today's rendering is no change for it, a cold resize stays there, delete removes it.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { planSubnet } from "../../components/network";
import { renderServer } from "../../components/server";
import {
  closeHostSessions,
  dhcpPaths,
  ipamRecordName,
  recordPath,
  networkProvider,
  runChecked,
  sftpPut,
  subnetProvider,
  runLocked,
  type HostConnection,
  type NetworkOutputs,
  type SubnetOutputs,
} from "../../provider";
import {
  checkServerInputs,
  serverPaths,
  serverProvider,
  type ServerInputs,
  type ServerOutputs,
} from "../../provider/server";
import {
  migrationTlsAddresses,
  migrationTlsStep,
  parseCaCertificate,
  trustPeerStep,
} from "../../provider/server/migrate";
import {
  httpGet,
  runCommand,
  sandboxHostConnections,
  sshCheck,
  sshExec,
  testGuestXml,
  startSandbox,
  stopSandbox,
  waitFor,
  type SandboxStatus,
} from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_ITEST_SERVER_INSTANCE ?? "itest-srv";
/**
 * A marker only this run knows, in every test guest's kernel command line and so in its RAM
 * (eight times over, so a capture that misses a frame still sees it in a plaintext stream).
 */
const MARK = `kvlmark${crypto.randomBytes(8).toString("hex")}`;
const MARKS = `lab.mark=${Array.from({ length: 8 }, () => MARK).join(",")}`;
const KEEP = process.env.KVMLAB_ITEST_KEEP === "1";
let status: SandboxStatus;
let hosts: HostConnection[] = [];
let network: NetworkOutputs | undefined;
let subnet: SubnetOutputs | undefined;

function ext(offset: number): string {
  const [a, b, c] = status.external.cidr.split("/")[0].split(".");
  return `${a}.${b}.${c}.${offset}`;
}

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  hosts = sandboxHostConnections(status);
  // The image store as the Image resource fills it: kernel and ramdisk on every host.
  for (const h of hosts) {
    await runChecked(h, [{ label: "image dir", script: "mkdir -p /var/lib/kvmlab/images/labimg" }]);
    await sftpPut(h, status.image.kernel, "/var/lib/kvmlab/images/labimg/kernel");
    await sftpPut(h, status.image.ramdisk, "/var/lib/kvmlab/images/labimg/ramdisk");
  }
  const net = await networkProvider.check!(
    {} as never,
    { networkName: "srvnet", kind: "provider", driver: "linuxbridge", hosts } as never,
  );
  assert.deepEqual(net.failures ?? [], []);
  network = (await networkProvider.create!(net.inputs as never)).outs as NetworkOutputs;
  const plan = planSubnet(
    "srvnet",
    {
      name: "srvnet-v4",
      cidr: status.external.cidr,
      gateway: status.external.gateway,
      allocationPool: { start: ext(20), end: ext(40) },
    },
    1500,
  );
  const sub = await subnetProvider.check!(
    {} as never,
    {
      subnetName: "srvnet-v4",
      networkName: "srvnet",
      networkBridge: network.bridge,
      driver: "linuxbridge",
      hosts,
      cidr: status.external.cidr,
      gateway: plan.gateway,
      allocationPool: plan.allocationPool,
      dhcpAddress: plan.dhcpAddress,
      dnsmasqConf: plan.dnsmasqConf,
    } as never,
  );
  assert.deepEqual(sub.failures ?? [], []);
  subnet = (await subnetProvider.create!(sub.inputs as never)).outs as SubnetOutputs;
});

after(async () => {
  for (const h of hosts)
    await runChecked(h, [{ label: "image dir", script: "rm -rf /var/lib/kvmlab/images/labimg" }]).catch(
      () => undefined,
    );
  if (subnet) await subnetProvider.delete!(subnet.subnetName, subnet).catch(() => undefined);
  if (network) await networkProvider.delete!(network.networkName, network).catch(() => undefined);
  await closeHostSessions();
  if (!KEEP) await stopSandbox(INSTANCE);
});

/** Server inputs as the component would build them. */
async function serverInputs(
  name: string,
  over: {
    ramMiB?: number;
    host?: string;
    powerState?: "running" | "stopped";
    timeoutSec?: number;
    cmdline?: string;
    olds?: ServerInputs;
    uuidSeed?: string;
  } = {},
): Promise<ServerInputs> {
  const image = {
    name: "labimg",
    kind: "kernel" as const,
    disk: "",
    format: "qcow2" as const,
    kernel: "/var/lib/kvmlab/images/labimg/kernel",
    ramdisk: "/var/lib/kvmlab/images/labimg/ramdisk",
  };
  const flavor = {
    name: over.ramMiB === 192 ? "m1.small" : "m1.tiny",
    vcpus: 1,
    ramMiB: over.ramMiB ?? 128,
    diskGiB: 0,
  };
  const r = renderServer({
    serverName: name,
    uuidSeed: over.uuidSeed ?? `itest/${name}`,
    lab: "itest",
    stack: "srv",
    project: "",
    image,
    flavor,
    ports: [
      {
        networkName: "srvnet",
        subnetName: "srvnet-v4",
        bridge: network!.bridge,
        driver: "linuxbridge",
        mtu: 1500,
      },
    ],
    kernelCmdline: over.cmdline ?? `${status.image.cmdline} lab.name=${name} ${MARKS}`,
    cloudInit: true,
    publicKeys: [],
    userName: "kvmlab",
    userData: {},
    consoleListen: "0.0.0.0",
  });
  const raw = {
    serverName: name,
    uuid: r.uuid,
    hosts,
    host: over.host ?? "",
    flavor,
    image,
    ports: [
      {
        networkName: "srvnet",
        subnetName: "srvnet-v4",
        dhcpHost: subnet!.dhcpHost,
        dhcp: true,
        bridge: network!.bridge,
        driver: "linuxbridge",
        mac: r.macs[0],
        tap: r.taps[0],
        fixedIp: "",
      },
    ],
    domainXml: r.domainXml,
    cloudInit: r.cloudInit,
    powerState: over.powerState ?? "running",
    readiness: { kind: "http", path: "/health", timeoutSec: over.timeoutSec ?? 90 },
  };
  const { inputs, failures } = checkServerInputs(
    raw as unknown as Record<string, unknown>,
    over.olds as unknown as Record<string, unknown>,
  );
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

async function onHost(host: string, cmd: string): Promise<string> {
  return sshCheck(status, host, cmd);
}

/** Whether the image store marks `server` as a user of labimg on `host`. */
/** The subnet's IPAM record (keyed by network + subnet, issue 15). */
const IPAM_RECORD = recordPath("ipam", ipamRecordName("srvnet", "srvnet-v4"));

async function marked(host: string, server: string): Promise<boolean> {
  const out = await onHost(
    host,
    `test -f /var/lib/kvmlab/images/labimg/.users/${server} && echo yes || echo no`,
  );
  return out.trim() === "yes";
}

async function answers(ip: string): Promise<string> {
  return waitFor(`HTTP at ${ip}`, async () => (await httpGet(status, ip, "/"))?.body, {
    timeoutMs: 20_000,
    intervalMs: 300,
  });
}

let captured: Capture = { frames: 0, bytes: 0, hits: 0, tls: 0 };

test("create places and boots a guest; stop/start, cold resize, live migration; delete leaves nothing", async () => {
  const inputs = await serverInputs("itsrv1");
  const created = await serverProvider.create!(inputs);
  let outs = created.outs as ServerOutputs & { lastMigrationMs: number };
  assert.equal(created.id, inputs.uuid);
  assert.ok(["hv1", "hv2"].includes(outs.host), `placed on ${outs.host}`);
  assert.equal(outs.actualPowerState, "running");
  assert.match(
    outs.ips[0],
    /^\d+\.\d+\.\d+\.(2[1-9]|3\d|40)$/,
    "the address comes from the pool (after the DHCP port)",
  );
  assert.equal(outs.macs[0], inputs.ports[0].mac);
  assert.match(outs.consoleUrl, new RegExp(`^vnc://${outs.hostAddress.replace(/\./g, "\\.")}:59\\d\\d$`));
  assert.equal((await answers(outs.ips[0])).trim(), "hello from itsrv1");
  const first = outs.host;
  const other = first === "hv1" ? "hv2" : "hv1";
  assert.equal(outs.instanceDir, `/var/lib/kvmlab/instances/${inputs.uuid}`, "the folder of its UUID");
  assert.match(
    await onHost(
      first,
      `test -f ${outs.instanceDir}/seed.iso && cat /var/lib/kvmlab/records/server/itsrv1.json`,
    ),
    /"ramMiB": 128/,
  );
  assert.ok(await marked(first, "itsrv1"), "create marks the image as used on the server's host");
  assert.ok(!(await marked(other, "itsrv1")));
  assert.match(
    await onHost(subnet!.dhcpHost, `cat ${dhcpPaths("srvnet", "srvnet-v4").hostsFile}`),
    new RegExp(`${inputs.ports[0].mac},${outs.ips[0].replace(/\./g, "\\.")}`),
  );

  // A second create of the same inputs converges on the same domain and address.
  const again = (await serverProvider.create!(inputs)).outs as ServerOutputs;
  assert.equal(again.host, first);
  assert.deepEqual(again.ips, outs.ips);

  // Stop, then start.
  const stoppedIn = await serverInputs("itsrv1", { powerState: "stopped", olds: inputs });
  assert.match(stoppedIn.changePlan, /^stop/);
  outs = (await serverProvider.update!(inputs.uuid, outs, stoppedIn)).outs as typeof outs;
  assert.equal(outs.actualPowerState, "stopped");
  assert.match(await onHost(first, "virsh -c qemu:///system domstate itsrv1"), /shut off/);
  outs = (await serverProvider.update!(inputs.uuid, outs, inputs)).outs as typeof outs;
  assert.equal(outs.actualPowerState, "running");

  // Cold resize to 192 MiB: same UUID, MAC and IP; dominfo shows the new memory.
  const bigger = await serverInputs("itsrv1", { ramMiB: 192, olds: inputs });
  assert.match(bigger.changePlan, /cold resize m1\.tiny .* -> m1\.small/);
  assert.equal(
    serverProvider.diff ? (await serverProvider.diff(inputs.uuid, outs, bigger)).replaces?.length : -1,
    0,
  );
  outs = (await serverProvider.update!(inputs.uuid, outs, bigger)).outs as typeof outs;
  assert.equal(outs.uuid, inputs.uuid);
  assert.equal(outs.host, first);
  assert.equal(outs.macs[0], inputs.ports[0].mac);
  assert.match(await onHost(first, "virsh -c qemu:///system dominfo itsrv1"), /Max memory:\s+196608 KiB/);
  assert.equal((await answers(outs.ips[0])).trim(), "hello from itsrv1");

  // Live migration to the other host, its tunnel NIC captured meanwhile: the guest's RAM
  // (with the run's marker) crosses it only encrypted.
  const moved = await serverInputs("itsrv1", { ramMiB: 192, host: other, olds: bigger });
  assert.match(moved.changePlan, new RegExp(`live-migrate to host ${other}`));

  // First onto a full destination (review 8 P2): a record of another server there takes every
  // vCPU (nproc x 4), so the migration is refused before anything of itsrv1 is written there,
  // and the guest keeps running on its host.
  const fill = "/var/lib/kvmlab/records/server/itsfill.json";
  const cpus = Number((await onHost(other, "nproc")).trim());
  const filler = { name: "itsfill", uuid: crypto.randomUUID(), flavor: "fill", vcpus: cpus * 4, ramMiB: 1 };
  await onHost(
    other,
    `mkdir -p /var/lib/kvmlab/records/server && echo ${Buffer.from(`${JSON.stringify(filler, null, 2)}\n`).toString("base64")} | base64 -d > ${fill}`,
  );
  try {
    await assert.rejects(
      serverProvider.update!(inputs.uuid, outs, moved),
      new RegExp(
        `host: server itsrv1 \\(flavor m1\\.small: 1 vCPU, 192 MiB\\) does not fit host ${other} beside its other servers: \\d+ MiB RAM and 0 vCPUs free; it was not migrated and keeps running on ${first}\\. Fix: pin another host`,
      ),
    );
  } finally {
    await onHost(other, `rm -f ${fill}`);
  }
  assert.match(await onHost(first, "virsh -c qemu:///system domstate itsrv1"), /running/);
  assert.equal(
    (
      await onHost(
        other,
        `ls /var/lib/kvmlab/instances/ /var/lib/kvmlab/records/server/ /var/lib/kvmlab/owners/server/ 2>/dev/null | grep -c -e itsrv1 -e ${inputs.uuid} || true`,
      )
    ).trim(),
    "0",
    "nothing of itsrv1 on the full destination: no folder, no reservation, no owner marker",
  );
  assert.equal((await answers(outs.ips[0])).trim(), "hello from itsrv1");
  const wire = await startCapture(other);
  try {
    outs = (await serverProvider.update!(inputs.uuid, outs, moved)).outs as typeof outs;
  } finally {
    captured = await wire.stop();
  }
  process.stdout.write(`# kvmlab's migration on ${other}'s tunnel NIC: ${JSON.stringify(captured)}\n`);
  assert.ok(captured.bytes > 1_000_000, `the capture saw the migration stream: ${JSON.stringify(captured)}`);
  assert.equal(captured.hits, 0, "the run's marker (in guest RAM) never crosses the tunnel in plaintext");
  assert.ok(captured.tls > 0, `the stream is TLS (handshake records seen): ${JSON.stringify(captured)}`);
  assert.equal(outs.host, other);
  assert.ok(
    outs.lastMigrationMs > 0 && outs.lastMigrationMs < 120_000,
    `migration took ${outs.lastMigrationMs} ms`,
  );
  assert.match(await onHost(other, "virsh -c qemu:///system domstate itsrv1"), /running/);
  // The reservation written before the move became the normal record (no reservation field).
  const rec = JSON.parse(await onHost(other, "cat /var/lib/kvmlab/records/server/itsrv1.json")) as Record<
    string,
    unknown
  >;
  assert.equal(rec.uuid, inputs.uuid);
  assert.equal(rec.ramMiB, 192);
  assert.equal(rec.reservation, undefined, "the normal record replaced the reservation");
  assert.equal(
    (await onHost(first, "virsh -c qemu:///system list --all --name | grep -c itsrv1 || true")).trim(),
    "0",
  );
  assert.equal(
    (
      await onHost(
        first,
        `ls /var/lib/kvmlab/instances/ /var/lib/kvmlab/records/server/ 2>/dev/null | grep -c -e itsrv1 -e ${inputs.uuid} || true`,
      )
    ).trim(),
    "0",
  );
  assert.equal(
    (
      await onHost(
        other,
        "grep -c kvmlab-migrate /root/.ssh/authorized_keys /etc/ssh/lab_authorized_keys 2>/dev/null | awk -F: '{s+=$2} END {print s+0}'",
      )
    ).trim(),
    "0",
    "the migration key is revoked",
  );
  assert.equal((await onHost(first, "ls /var/lib/kvmlab/migrate 2>/dev/null | wc -l")).trim(), "0");
  assert.ok(await marked(other, "itsrv1"), "the destination marks the image as used");
  assert.ok(!(await marked(first, "itsrv1")), "the source's marker is gone");
  assert.equal((await answers(outs.ips[0])).trim(), "hello from itsrv1");
  process.stdout.write(`# live migration ${first} -> ${other}: ${outs.lastMigrationMs} ms\n`);

  // Refresh sees it where it is.
  const read = await serverProvider.read!(inputs.uuid, outs);
  assert.equal((read.props as ServerOutputs).actualPowerState, "running");

  await serverProvider.delete!(inputs.uuid, outs);
  await serverProvider.delete!(inputs.uuid, outs);
  for (const h of ["hv1", "hv2"]) {
    assert.equal(
      (await onHost(h, "virsh -c qemu:///system list --all --name | grep -c itsrv1 || true")).trim(),
      "0",
    );
    assert.equal(
      (
        await onHost(
          h,
          `ls /var/lib/kvmlab/instances/ /var/lib/kvmlab/records/server/ 2>/dev/null | grep -c -e itsrv1 -e ${inputs.uuid} || true`,
        )
      ).trim(),
      "0",
    );
    assert.ok(!(await marked(h, "itsrv1")), `no image marker left on ${h}`);
  }
  assert.doesNotMatch(
    await onHost(subnet!.dhcpHost, `cat ${IPAM_RECORD}`),
    new RegExp(`server:${inputs.uuid}`),
  );
  const gone = await serverProvider.read!(inputs.uuid, outs);
  assert.equal(gone.id, "");
});

test("a guest that never answers fails create with its serial log, and leaves nothing", async () => {
  // lab.ip on an address nobody routes to: the guest boots but the probe never reaches it.
  const inputs = await serverInputs("itsrv2", {
    timeoutSec: 15,
    host: "hv2",
    cmdline: `${status.image.cmdline} lab.name=itsrv2 lab.ip=10.99.99.9/24`,
  });
  await assert.rejects(serverProvider.create!(inputs), (err: Error) => {
    assert.match(err.message, /itsrv2 on host hv2 did not become ready/);
    assert.match(err.message, /serial console/);
    return true;
  });
  assert.equal(
    (await onHost("hv2", "virsh -c qemu:///system list --all --name | grep -c itsrv2 || true")).trim(),
    "0",
  );
  assert.equal(
    (
      await onHost(
        "hv2",
        `ls /var/lib/kvmlab/instances/ /var/lib/kvmlab/records/server/ 2>/dev/null | grep -c -e itsrv2 -e ${inputs.uuid} || true`,
      )
    ).trim(),
    "0",
  );
  assert.ok(!(await marked("hv2", "itsrv2")), "the failed create's image marker is gone");
  assert.doesNotMatch(
    await onHost(subnet!.dhcpHost, `cat ${IPAM_RECORD}`),
    new RegExp(`server:${inputs.uuid}`),
  );
});

test("a name another server uses on the host is refused, and that server's files are left alone", async () => {
  const mine = await serverInputs("itsrv3", { host: "hv1", powerState: "stopped" });
  const outs = (await serverProvider.create!(mine)).outs as ServerOutputs;
  assert.equal(outs.actualPowerState, "stopped");
  const other = await serverInputs("itsrv3", {
    host: "hv1",
    powerState: "stopped",
    uuidSeed: "another-stack/itsrv3",
  });
  assert.notEqual(other.uuid, mine.uuid);
  await assert.rejects(
    serverProvider.create!(other),
    /another server is recorded under the name itsrv3 on this host/,
  );
  assert.match(await onHost("hv1", "cat /var/lib/kvmlab/records/server/itsrv3.json"), new RegExp(mine.uuid));
  assert.match(await onHost("hv1", "virsh -c qemu:///system domuuid itsrv3"), new RegExp(mine.uuid));
  assert.equal((await onHost("hv1", `test -f ${outs.instanceDir}/domain.xml && echo kept`)).trim(), "kept");
  // Deleting with the other UUID (e.g. an old state) touches nothing either.
  await serverProvider.delete!(other.uuid, { ...outs, uuid: other.uuid });
  assert.match(await onHost("hv1", "virsh -c qemu:///system domuuid itsrv3"), new RegExp(mine.uuid));
  assert.ok(await marked("hv1", "itsrv3"), "the other server's image marker is left alone");
  await serverProvider.delete!(mine.uuid, outs);
  assert.ok(!(await marked("hv1", "itsrv3")));
  assert.equal(
    (await onHost("hv1", "virsh -c qemu:///system list --all --name | grep -cx itsrv3 || true")).trim(),
    "0",
  );
});

test("kvmlab metadata alone (older state, new owner, a hand edit found by refresh) is set in place: same QEMU process, no reboot", async () => {
  const NS = "https://kvmlab.dev/xmlns/domain/1.0";
  const news = await serverInputs("itsrv4", { host: "hv1" });
  // A state from before issue 14: <kvmlab:project> held the stack, no stack or owner element.
  const older = (x: string): string =>
    x
      .replace(/\n\s*<kvmlab:stack>[^<]*<\/kvmlab:stack>/, "")
      .replace("<kvmlab:project></kvmlab:project>", "<kvmlab:project>srv</kvmlab:project>");
  const oldInputs = {
    ...news,
    domainXml: { kvm: older(news.domainXml.kvm), qemu: older(news.domainXml.qemu) },
  };
  let outs = (await serverProvider.create!(oldInputs)).outs as ServerOutputs;
  const pid = async (): Promise<string> =>
    (
      await onHost(
        "hv1",
        "cat /run/libvirt/qemu/itsrv4.pid 2>/dev/null || cat /var/run/libvirt/qemu/itsrv4.pid",
      )
    ).trim();
  const meta = async (flags = ""): Promise<string> =>
    onHost("hv1", `virsh -q -c qemu:///system metadata itsrv4 ${NS} ${flags}`);
  try {
    const pid0 = await pid();
    assert.match(pid0, /^\d+$/);
    assert.match(await meta(), /<(kvmlab:)?project>srv<\/(kvmlab:)?project>/);
    const bootLines = async (): Promise<number> =>
      Number(
        (await onHost("hv1", `grep -c 'Linux version' ${serverPaths(news.uuid).serialLog} || true`)).trim(),
      );
    const boots0 = await bootLines();

    // 1. The first up with this kvmlab: metadata only, set live and in the config.
    const plan = (news as unknown as { changePlan: string }).changePlan;
    assert.equal(plan, "create");
    const d1 = await serverProvider.diff!(outs.uuid, outs, news);
    assert.equal(d1.changes, true);
    const t1 = Date.now();
    outs = (await serverProvider.update!(outs.uuid, outs, news)).outs as ServerOutputs;
    const setMs = Date.now() - t1;
    assert.equal(await pid(), pid0, "the guest's QEMU process is the same one (no stop, no define)");
    for (const flags of ["--live", "--config"]) {
      const m = await meta(flags);
      assert.match(m, /<(kvmlab:)?stack>srv<\/(kvmlab:)?stack>/, `${flags}: ${m}`);
      assert.match(m, /<(kvmlab:)?project\/>|<(kvmlab:)?project><\/(kvmlab:)?project>/, `${flags}: ${m}`);
      assert.match(
        m,
        /<(kvmlab:)?owner>kvmlab-direct\/-\/Server\/itsrv4<\/(kvmlab:)?owner>/,
        `${flags}: ${m}`,
      );
    }
    assert.match(
      await onHost("hv1", `cat ${serverPaths(news.uuid).domainXml}`),
      /<kvmlab:owner>kvmlab-direct\/-\/Server\/itsrv4<\/kvmlab:owner>/,
    );
    console.log(`# metadata-only update (older state): ${setMs} ms, QEMU pid ${pid0} kept`);

    // 2. No change: nothing to do.
    assert.equal((await serverProvider.diff!(outs.uuid, outs, news)).changes, false);

    // 3. A new owner (a renamed stack): the owner element follows, still in place.
    const owner2 = "itest/srv2/Server/itsrv4";
    const news2 = { ...news, owner: owner2 };
    assert.equal((await serverProvider.diff!(outs.uuid, outs, news2)).changes, true);
    outs = (await serverProvider.update!(outs.uuid, outs, news2)).outs as ServerOutputs;
    assert.equal(await pid(), pid0);
    assert.match(await meta("--live"), /<(kvmlab:)?owner>itest\/srv2\/Server\/itsrv4<\/(kvmlab:)?owner>/);
    assert.match(
      await onHost("hv1", "cat /var/lib/kvmlab/records/server/itsrv4.json"),
      /"owner": "itest\/srv2\/Server\/itsrv4"/,
    );

    // 4. Edited by hand on the host: refresh reports it, the next up sets it back in place.
    await onHost(
      "hv1",
      `virsh -q -c qemu:///system metadata itsrv4 --uri ${NS} --key kvmlab --set '<instance><lab>itest</lab><project>Default/evil</project></instance>' --live --config`,
    );
    const read = await serverProvider.read!(outs.uuid, outs);
    const drift = (read.props as ServerOutputs).metadataDrift ?? "";
    assert.match(drift, /project: host "Default\/evil", expected ""/);
    assert.match(drift, /owner: host \(none\), expected "itest\/srv2\/Server\/itsrv4"/);
    const refreshed = read.props as ServerOutputs;
    assert.equal((await serverProvider.diff!(outs.uuid, refreshed, news2)).changes, true);
    outs = (await serverProvider.update!(outs.uuid, refreshed, news2)).outs as ServerOutputs;
    assert.equal(outs.metadataDrift, "");
    assert.equal(((await serverProvider.read!(outs.uuid, outs)).props as ServerOutputs).metadataDrift, "");
    assert.equal(await pid(), pid0, "still the same QEMU process");
    assert.equal(await bootLines(), boots0, "the guest did not boot again");
  } finally {
    await serverProvider.delete!(outs.uuid, outs);
  }
});

test("a server created before instance folders were keyed by UUID keeps the folder of its name", async () => {
  const rendered = await serverInputs("itsrv5", { host: "hv1" });
  const uuidDir = serverPaths(rendered.uuid).dir;
  const nameDir = "/var/lib/kvmlab/instances/itsrv5";
  // What the code before issue 15 created: the same XML with the folder of the name (create
  // takes checked inputs as they are; today's check would refuse that folder for a new server).
  const toName = (x: string): string => x.split(`${uuidDir}/`).join(`${nameDir}/`);
  const oldInputs: ServerInputs = {
    ...rendered,
    domainXml: { kvm: toName(rendered.domainXml.kvm), qemu: toName(rendered.domainXml.qemu) },
  };
  let outs = (await serverProvider.create!(oldInputs)).outs as ServerOutputs;
  try {
    assert.equal(outs.instanceDir, nameDir);
    assert.match(await onHost("hv1", `ls ${nameDir}`), /console\.log[\s\S]*domain\.xml[\s\S]*seed\.iso/);
    assert.equal((await answers(outs.ips[0])).trim(), "hello from itsrv5");

    // Today's program renders the UUID's folder; check maps it onto the server's: no change, and
    // refresh finds nothing to change either.
    const today = await serverInputs("itsrv5", { host: "hv1", olds: oldInputs });
    assert.deepEqual(today.domainXml, oldInputs.domainXml);
    assert.equal((await serverProvider.diff!(outs.uuid, outs, today)).changes, false);
    const read = (await serverProvider.read!(outs.uuid, outs)).props as ServerOutputs;
    assert.equal((await serverProvider.diff!(outs.uuid, read, today)).changes, false);

    // A cold resize redefines it from its own folder (its disk, seed and serial log stay).
    const bigger = await serverInputs("itsrv5", { host: "hv1", ramMiB: 192, olds: oldInputs });
    assert.match(bigger.changePlan, /^cold resize/);
    outs = (await serverProvider.update!(outs.uuid, read, bigger)).outs as ServerOutputs;
    assert.equal(outs.instanceDir, nameDir);
    assert.match(
      await onHost("hv1", "virsh -c qemu:///system dumpxml --inactive itsrv5"),
      /<log file='\/var\/lib\/kvmlab\/instances\/itsrv5\/console\.log'/,
    );
    assert.equal((await onHost("hv1", `test -e ${uuidDir} && echo made || echo none`)).trim(), "none");
    assert.equal((await answers(outs.ips[0])).trim(), "hello from itsrv5");
  } finally {
    await serverProvider.delete!(outs.uuid, outs);
  }
  assert.equal(
    (
      await onHost(
        "hv1",
        `ls /var/lib/kvmlab/instances/ /var/lib/kvmlab/records/server/ 2>/dev/null | grep -c -e itsrv5 -e ${rendered.uuid} || true`,
      )
    ).trim(),
    "0",
    "delete removes the folder of its name",
  );
});

/** What a capture on a host's tunnel NIC saw of QEMU's migration ports (49152–49215). */
interface Capture {
  /** TCP segments with payload, and their payload bytes. */
  frames: number;
  bytes: number;
  /** Times the run's marker appeared in a payload (or across two consecutive ones). */
  hits: number;
  /** Payloads that start with a TLS handshake record (0x16 0x03). */
  tls: number;
  /**
   * Payloads holding QEMU's plain migration stream header: the magic "QEVM" and the stream
   * version 3, eight bytes (the four of the magic alone turn up in about one run in fifty by
   * chance in 80 MB of TLS ciphertext: session 9's CI saw one).
   */
  qevm?: number;
}

/**
 * A bounded packet capture (perl, AF_PACKET: Debian's perl-base, no tcpdump needed) on the NIC
 * holding `host`'s tunnel address, inside that sandbox host's own network namespace. It stops
 * when told, after 150 s, or after 2 GiB.
 */
const SNIFF = String.raw`
use strict; use Socket;
my ($if, $mark, $secs, $stop, $ready) = @ARGV;
open(my $fh, "<", "/sys/class/net/$if/ifindex") or die "no interface $if\n"; my $idx = <$fh>; chomp $idx;
socket(my $s, 17, 3, 0x0300) or die "packet socket: $!\n";
bind($s, pack("S n i S C C a8", 17, 0x0003, $idx, 0, 0, 0, "")) or die "bind: $!\n";
setsockopt($s, SOL_SOCKET, 33, pack("i", 64 << 20));
open(my $r, ">", $ready); close($r);
my ($frames, $bytes, $hits, $tls, $qevm) = (0, 0, 0, 0, 0); my %tail;
my $end = time + $secs; my $m = length($mark);
my $rin = ""; vec($rin, fileno($s), 1) = 1;
while (time < $end && !-e $stop && $bytes < (2 << 30)) {
  next unless select(my $rout = $rin, undef, undef, 0.2) > 0;
  my $buf; defined(recv($s, $buf, 262144, 0)) or next;
  next unless length($buf) > 54 && substr($buf, 12, 2) eq "\x08\x00" && ord(substr($buf, 23, 1)) == 6;
  my $ihl = (ord(substr($buf, 14, 1)) & 15) * 4;
  my ($sp, $dp) = unpack("n n", substr($buf, 14 + $ihl, 4));
  next unless ($sp >= 49152 && $sp <= 49215) || ($dp >= 49152 && $dp <= 49215);
  my $pl = substr($buf, 14 + $ihl + (ord(substr($buf, 14 + $ihl + 12, 1)) >> 4) * 4);
  next if length($pl) == 0;
  $frames++; $bytes += length($pl);
  $tls++ if substr($pl, 0, 2) eq "\x16\x03";
  $qevm++ if index($pl, "QEVM\x00\x00\x00\x03") >= 0;
  my $w = ($tail{"$sp:$dp"} // "") . $pl; my $p = 0;
  while (($p = index($w, $mark, $p)) >= 0) { $hits++; $p += $m; }
  $tail{"$sp:$dp"} = substr($w, -($m - 1));
}
print "{\"frames\":$frames,\"bytes\":$bytes,\"hits\":$hits,\"tls\":$tls,\"qevm\":$qevm}\n";
`;

async function startCapture(host: string): Promise<{ stop: () => Promise<Capture> }> {
  const h = hosts.find((x) => x.name === host)!;
  const tun = h.tunnelAddress || h.address;
  const id = crypto.randomBytes(4).toString("hex");
  const stop = `/tmp/kvl-sniff-${id}.stop`;
  const ready = `/tmp/kvl-sniff-${id}.ready`;
  const cmd = `i=$(ip -o -4 addr show to ${tun} | awk '{print $2; exit}'); [ -n "$i" ] || { echo "no NIC holds ${tun}" >&2; exit 2; }; exec timeout 170 perl - "$i" ${MARK} 150 ${stop} ${ready}`;
  const run = sshExec(status, host, cmd, { input: SNIFF, timeoutMs: 180_000 });
  await waitFor(
    `the capture on ${host} to start`,
    async () => (await sshExec(status, host, `test -e ${ready}`)).code === 0 || undefined,
    { timeoutMs: 20_000, intervalMs: 200 },
  );
  return {
    stop: async () => {
      await onHost(host, `touch ${stop}`);
      const r = await run;
      await onHost(host, `rm -f ${stop} ${ready}`);
      assert.equal(r.code, 0, `capture on ${host}: ${r.stderr}`);
      return JSON.parse(r.stdout.trim()) as Capture;
    },
  };
}

test("QEMU's plain stream carries guest RAM and disk in plaintext; with kvmlab's --tls neither (and the time of each)", async () => {
  // A guest of the test's own (libvirt directly, not the provider): 192 MiB and a 16 MiB disk
  // whose first 4 MiB repeat the run's marker, migrated hv1 -> hv2 on QEMU's plain stream (what
  // kvmlab did before) and back hv2 -> hv1 with --tls and the certificates kvmlab makes, both
  // copying the disk over NBD. The tunnel NIC of each destination is captured meanwhile.
  const [src, dst] = ["hv1", "hv2"];
  const cas: string[] = [];
  for (const h of hosts) {
    const [out] = await runLocked(h, [migrationTlsStep(h.name, migrationTlsAddresses(h))]);
    cas.push(parseCaCertificate(out));
  }
  await runLocked(hosts[0], [trustPeerStep(hosts[1].name, cas[1])]);
  await runLocked(hosts[1], [trustPeerStep(hosts[0].name, cas[0])]);

  const name = "itmig1";
  const dir = "/var/lib/kvmlab-itest";
  const disk = `${dir}/${name}.qcow2`;
  await onHost(
    src,
    `set -e; mkdir -p ${dir}; yes ${MARK} | head -c 4194304 > ${dir}/raw; truncate -s 16M ${dir}/raw; qemu-img convert -f raw -O qcow2 ${dir}/raw ${disk}; rm -f ${dir}/raw`,
  );
  await onHost(dst, `set -e; mkdir -p ${dir}; qemu-img create -q -f qcow2 ${disk} 16M`);
  const xml = testGuestXml(status, {
    name,
    uuid: "6b1f0c2e-3d4a-4e5f-8a9b-0c1d2e3f4a5b",
    bridge: network!.bridge,
    memoryMiB: 192,
    extraCmdline: MARKS,
    disks: [disk],
  });
  const def = await sshExec(
    status,
    src,
    `cat > ${dir}/${name}.xml && virsh -q -c qemu:///system define ${dir}/${name}.xml && virsh -q -c qemu:///system start ${name}`,
    { input: xml },
  );
  assert.equal(def.code, 0, def.stderr);
  // libvirt URIs from the runner (client-driven migration): the sandbox's key and known_hosts.
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-mig-"));
  const uri = (host: string): string => {
    const sh = status.hosts.find((x) => x.name === host)!;
    const kh = path.join(tmp, `${host}.known_hosts`);
    const lines = fs
      .readFileSync(sh.knownHostsPath, "utf8")
      .split("\n")
      .filter((l) => l.trim() !== "")
      .flatMap((l) => {
        const [, ...rest] = l.split(" ");
        return [`${sh.address} ${rest.join(" ")}`, `[${sh.address}]:${sh.port} ${rest.join(" ")}`];
      });
    fs.writeFileSync(kh, lines.join("\n") + "\n");
    return `qemu+libssh://${sh.user}@${sh.address}:${sh.port}/system?keyfile=${sh.privateKeyPath}&known_hosts=${kh}&sshauth=privkey`;
  };
  const migrate = async (from: string, to: string, tls: boolean): Promise<{ ms: number; wire: Capture }> => {
    const t = hosts.find((x) => x.name === to)!;
    const args = [
      "-q",
      "-c",
      uri(from),
      "migrate",
      "--live",
      "--persistent",
      "--undefinesource",
      "--copy-storage-all",
      ...(tls ? ["--tls"] : []),
      "--migrateuri",
      `tcp://${t.tunnelAddress}`,
      "--listen-address",
      t.tunnelAddress,
      name,
      uri(to),
    ];
    const wire = await startCapture(to);
    const r = await runCommand("virsh", args, { timeoutMs: 240_000 }).catch((e: Error) => e);
    const got = await wire.stop();
    if (r instanceof Error) throw r;
    assert.equal(r.code, 0, `virsh migrate ${from} -> ${to}: ${r.stderr}`);
    return { ms: r.ms, wire: got };
  };
  try {
    const plain = await migrate(src, dst, false);
    assert.match(await onHost(dst, `virsh -c qemu:///system domstate ${name}`), /running/);
    const tls = await migrate(dst, src, true);
    assert.match(await onHost(src, `virsh -c qemu:///system domstate ${name}`), /running/);
    process.stdout.write(
      `# migration of a 192 MiB guest + 16 MiB disk (NBD), same run: plain TCP ${plain.ms} ms ${JSON.stringify(plain.wire)}; TLS ${tls.ms} ms ${JSON.stringify(tls.wire)}\n` +
        `# kvmlab's own migration (192 MiB, no disk) on its destination's tunnel NIC: ${JSON.stringify(captured)}\n`,
    );
    // The capture sees plaintext when there is some: the marker (RAM and disk) and QEMU's magic.
    assert.ok(plain.wire.hits > 0, `the plain stream shows the marker: ${JSON.stringify(plain.wire)}`);
    assert.ok((plain.wire.qevm ?? 0) > 0, "the plain stream is QEMU's own");
    // With --tls: as many bytes cross, none of them the marker or QEMU's magic.
    assert.ok(tls.wire.bytes > plain.wire.bytes / 2, `TLS carried the guest: ${JSON.stringify(tls.wire)}`);
    assert.equal(tls.wire.hits, 0, "no marker in the TLS stream (RAM or NBD disk copy)");
    assert.equal(tls.wire.qevm, 0, "no plain QEMU stream");
    assert.ok(tls.wire.tls >= 2, "TLS handshake records (client and server hello) on the wire");
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
    for (const h of [src, dst])
      await sshExec(
        status,
        h,
        `virsh -q -c qemu:///system destroy ${name} >/dev/null 2>&1; virsh -q -c qemu:///system undefine ${name} >/dev/null 2>&1; rm -rf ${dir} /var/log/kvmlab-${name}.console`,
      ).catch(() => undefined);
  }
});
