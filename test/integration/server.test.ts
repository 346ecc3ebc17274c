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
  httpGet,
  sandboxHostConnections,
  sshCheck,
  startSandbox,
  stopSandbox,
  waitFor,
  type SandboxStatus,
} from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_ITEST_SERVER_INSTANCE ?? "itest-srv";
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
    kernelCmdline: over.cmdline ?? `${status.image.cmdline} lab.name=${name}`,
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

  // Live migration to the other host.
  const moved = await serverInputs("itsrv1", { ramMiB: 192, host: other, olds: bigger });
  assert.match(moved.changePlan, new RegExp(`live-migrate to host ${other}`));
  outs = (await serverProvider.update!(inputs.uuid, outs, moved)).outs as typeof outs;
  assert.equal(outs.host, other);
  assert.ok(
    outs.lastMigrationMs > 0 && outs.lastMigrationMs < 120_000,
    `migration took ${outs.lastMigrationMs} ms`,
  );
  assert.match(await onHost(other, "virsh -c qemu:///system domstate itsrv1"), /running/);
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
