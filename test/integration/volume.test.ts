/**
 * Volume provider against two `kvmlab sandbox` hosts (instance "itest-vol", or
 * $KVMLAB_ITEST_VOLUME_INSTANCE), reached only over SSH, with real (TCG) guests of the sandbox
 * image, whose /cgi-bin/disks lists the guest's block devices and /cgi-bin/disk writes and reads
 * a token at the start of vdb..vdz.
 *
 * Proves: a thin volume takes almost no space on the host until written, a thick one its full
 * size (both printed); attaching to a running guest is an update and the disk appears in the
 * guest at the device the output names; a token written survives growing in place (the guest
 * sees the new size), detach, re-attach to another server, a cold resize of that server (issue
 * 16: its volumes stay in the persistent definition and in the guest, at the same devices), and
 * a live migration of that server
 * to the other host (the volume's file moves along; the Volume finds it there and its new host
 * is no replace); delete refuses while attached
 * (naming the server and the fix); hostile inputs are refused by check with the field named and
 * no host command; delete leaves no volume file, disk XML, record or owner marker.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { planSubnet } from "../../components/network";
import { renderServer } from "../../components/server";
import {
  closeHostSessions,
  hostPoolStats,
  networkProvider,
  runChecked,
  sftpPut,
  subnetProvider,
  volumeProvider,
  type HostConnection,
  type NetworkOutputs,
  type SubnetOutputs,
  type VolumeInputs,
  type VolumeOutputs,
} from "../../provider";
import {
  checkServerInputs,
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

const INSTANCE = process.env.KVMLAB_ITEST_VOLUME_INSTANCE ?? "itest-vol";
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
    // A small blank disk image: each guest gets its root disk (an overlay) at vda, so the
    // volumes it attaches are vdb, vdc, … in the guest too (Linux names virtio disks in order).
    await runChecked(h, [
      {
        label: "root disk image",
        script: "qemu-img create -q -f qcow2 /var/lib/kvmlab/images/labimg/disk.qcow2 64M",
      },
    ]);
  }
  const net = await networkProvider.check!(
    {} as never,
    { networkName: "volnet", kind: "provider", driver: "linuxbridge", hosts } as never,
  );
  assert.deepEqual(net.failures ?? [], []);
  network = (await networkProvider.create!(net.inputs as never)).outs as NetworkOutputs;
  const plan = planSubnet(
    "volnet",
    {
      name: "volnet-v4",
      cidr: status.external.cidr,
      gateway: status.external.gateway,
      allocationPool: { start: ext(20), end: ext(40) },
    },
    1500,
  );
  const sub = await subnetProvider.check!(
    {} as never,
    {
      subnetName: "volnet-v4",
      networkName: "volnet",
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
    disk: "/var/lib/kvmlab/images/labimg/disk.qcow2",
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
    stack: "vol",
    project: "",
    image,
    flavor,
    ports: [
      {
        networkName: "volnet",
        subnetName: "volnet-v4",
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
        networkName: "volnet",
        subnetName: "volnet-v4",
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

async function volumeCheck(raw: Record<string, unknown>, olds?: VolumeOutputs) {
  return volumeProvider.check!((olds ?? {}) as never, { hosts, ...raw } as never);
}

async function volumeIn(raw: Record<string, unknown>, olds?: VolumeOutputs): Promise<VolumeInputs> {
  const r = await volumeCheck(raw, olds);
  assert.deepEqual(r.failures ?? [], [], JSON.stringify(r.failures));
  return r.inputs as unknown as VolumeInputs;
}

async function update(olds: VolumeOutputs, news: VolumeInputs): Promise<VolumeOutputs> {
  return (await volumeProvider.update!(olds.volumeName, olds, news)).outs as VolumeOutputs;
}

/**
 * The guest's block devices ("vdb 2097152" lines; vda is the root disk), asked until `want`
 * holds (bounded). `want` as a RegExp must match; as
 * `{ not: RegExp }` must not match an answer.
 */
async function disksOf(ip: string, want: RegExp | { not: RegExp }): Promise<string> {
  let last: string | undefined;
  const holds = (body: string) => (want instanceof RegExp ? want.test(body) : !want.not.test(body));
  try {
    return await waitFor(
      `disks of ${ip} ${want instanceof RegExp ? `matching ${want}` : `without ${want.not}`}`,
      async () => {
        last = (await httpGet(status, ip, "/cgi-bin/disks", 5_000))?.body;
        return last !== undefined && holds(last) ? last : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; last answer:\n${last ?? "(none)"}`, { cause: err });
  }
}

const GIB_SECTORS = 2097152;
const servers: { uuid: string; inputs: ServerInputs; outs: ServerOutputs }[] = [];
const volumes = new Map<string, VolumeOutputs>();

after(async () => {
  for (const v of volumes.values()) {
    await volumeProvider.update!(v.volumeName, v, { ...v, server: "" }).catch(() => undefined);
    await volumeProvider.delete!(v.volumeName, v).catch(() => undefined);
  }
  for (const s of servers) await serverProvider.delete!(s.uuid, s.outs).catch(() => undefined);
});

test("thin and thick volumes: space, attach to a running guest, grow, detach, re-attach elsewhere, refusals, delete", async () => {
  // Two running guests on hv1.
  for (const name of ["itvol1", "itvol2"]) {
    const inputs = await serverInputs(name, { host: "hv1" });
    const outs = (await serverProvider.create!(inputs)).outs as ServerOutputs;
    servers.push({ uuid: inputs.uuid, inputs, outs });
    assert.equal(outs.actualPowerState, "running");
  }
  const [s1, s2] = servers.map((s) => s.outs);
  assert.match(await disksOf(s1.ips[0], /^vda 131072$/m), /^vda /m, "the root disk");
  await disksOf(s1.ips[0], { not: /^vd[b-z] /m }); // no volume before attaching

  // Thin and thick, 1 GiB each, detached.
  const thinIn = await volumeIn({ volumeName: "itv-thin", host: "hv1", sizeGiB: 1 });
  assert.equal(thinIn.provisioning, "thin");
  let thin = (await volumeProvider.create!(thinIn)).outs as VolumeOutputs;
  volumes.set("thin", thin);
  const thickIn = await volumeIn({ volumeName: "itv-thick", host: "hv1", sizeGiB: 1, provisioning: "thick" });
  let thick = (await volumeProvider.create!(thickIn)).outs as VolumeOutputs;
  volumes.set("thick", thick);
  console.log(
    `1 GiB volumes on the host: thin (qcow2) ${thin.realized.allocatedBytes} bytes allocated, thick (raw) ${thick.realized.allocatedBytes} bytes allocated`,
  );
  assert.equal(thin.format, "qcow2");
  assert.equal(thick.format, "raw");
  assert.equal(thin.realized.virtualBytes, 1073741824);
  assert.equal(thick.realized.virtualBytes, 1073741824);
  assert.ok(
    thin.realized.allocatedBytes < 2 * 1048576,
    `thin allocates almost nothing: ${thin.realized.allocatedBytes}`,
  );
  assert.ok(
    thick.realized.allocatedBytes >= 1073741824,
    `thick is fully allocated: ${thick.realized.allocatedBytes}`,
  );
  assert.equal(thin.device, "");

  // Attach the thin volume to the running itvol1: an update, no reboot.
  const bootedAt = await onHost("hv1", "virsh -c qemu:///system domid itvol1");
  const thinOn1 = await volumeIn({ ...thinIn, server: "itvol1" }, thin);
  assert.deepEqual((await volumeProvider.diff!("itv-thin", thin, thinOn1)).replaces ?? [], []);
  thin = await update(thin, thinOn1);
  volumes.set("thin", thin);
  assert.equal(thin.device, "vdb");
  assert.equal(thin.realized.attachedTo, "itvol1");
  assert.match(await disksOf(s1.ips[0], /^vdb /m), new RegExp(`^vdb ${GIB_SECTORS}$`, "m"));
  const write = await httpGet(status, s1.ips[0], "/cgi-bin/disk?dev=vdb&op=write&data=voltoken7", 10_000);
  assert.equal(write?.body.trim(), "wrote voltoken7");
  assert.equal(
    (await onHost("hv1", "virsh -c qemu:///system domid itvol1")).trim(),
    bootedAt.trim(),
    "the guest was not restarted",
  );
  const written = (await volumeProvider.read!("itv-thin", thin)).props as VolumeOutputs;
  console.log(
    `thin volume after the guest wrote one sector: ${written.realized.allocatedBytes} bytes allocated`,
  );
  assert.ok(written.realized.allocatedBytes > thin.realized.allocatedBytes, "writing allocates");

  // Grow in place while attached: the guest sees 2 GiB at once; shrinking is refused at check.
  const grown = await volumeIn({ ...thinOn1, sizeGiB: 2 }, thin);
  thin = await update(thin, grown);
  volumes.set("thin", thin);
  assert.equal(thin.realized.virtualBytes, 2 * 1073741824);
  assert.match(await disksOf(s1.ips[0], new RegExp(`^vdb ${2 * GIB_SECTORS}$`, "m")), /vdb/);
  const shrink = await volumeCheck({ ...grown, sizeGiB: 1 }, thin);
  assert.ok(
    (shrink.failures ?? []).some((f) => f.property === "sizeGiB" && /never shrinks/.test(f.reason)),
    JSON.stringify(shrink.failures),
  );

  // Delete refuses while attached, naming the server and the fix; nothing is removed.
  await assert.rejects(
    volumeProvider.delete!("itv-thin", thin),
    /attached to server itvol1 as vdb.*detach it first/s,
  );
  assert.match(await onHost("hv1", "ls /var/lib/kvmlab/volumes/"), /itv-thin\.qcow2/);

  // The thick volume goes to itvol2 (vdb there); then the thin one moves to itvol2 too: detached
  // from itvol1 (gone in that guest), attached at vdc, the token still there.
  thick = await update(thick, await volumeIn({ ...thickIn, server: "itvol2" }, thick));
  volumes.set("thick", thick);
  assert.equal(thick.device, "vdb");
  const thinOn2 = await volumeIn({ ...grown, server: "itvol2" }, thin);
  thin = await update(thin, thinOn2);
  volumes.set("thin", thin);
  assert.equal(thin.device, "vdc");
  assert.equal(thin.realized.attachedTo, "itvol2");
  await disksOf(s1.ips[0], { not: /^vdb /m }); // detached from itvol1
  assert.match(await disksOf(s2.ips[0], /^vdc /m), new RegExp(`^vdc ${2 * GIB_SECTORS}$`, "m"));
  assert.equal(
    (await httpGet(status, s2.ips[0], "/cgi-bin/disk?dev=vdc&op=read", 10_000))?.body.trim(),
    "voltoken7",
    "the data survives detach and re-attach to another server",
  );

  // A cold resize of itvol2 (issue 16): the domain is defined again from the new XML, which
  // lists no volume. Both volumes stay attached: in the persistent definition, and in the guest
  // after it boots again, at the same devices, with the token; the Volumes see no drift.
  const resizeIn = await serverInputs("itvol2", { host: "hv1", ramMiB: 192, olds: servers[1].inputs });
  assert.match(resizeIn.changePlan, /^cold resize m1\.tiny .* -> m1\.small /);
  const idBefore = (await onHost("hv1", "virsh -c qemu:///system domid itvol2")).trim();
  const resizedAt = Date.now();
  servers[1].outs = (await serverProvider.update!(servers[1].uuid, servers[1].outs, resizeIn))
    .outs as ServerOutputs;
  servers[1].inputs = resizeIn;
  console.log(`cold resize of itvol2 with two volumes attached: ${Date.now() - resizedAt} ms`);
  assert.notEqual(
    (await onHost("hv1", "virsh -c qemu:///system domid itvol2")).trim(),
    idBefore,
    "the guest was restarted (a cold resize)",
  );
  const inactive = await onHost("hv1", "virsh -c qemu:///system dumpxml --inactive itvol2");
  assert.match(inactive, /<memory unit='KiB'>196608<\/memory>/, "the new flavor is defined");
  const definedDisks = inactive.match(/<disk\b[\s\S]*?<\/disk>/g) ?? [];
  for (const [dev, file] of [
    ["vdb", "itv-thick.raw"],
    ["vdc", "itv-thin.qcow2"],
  ]) {
    const d = definedDisks.find((x) => x.includes(`<source file='/var/lib/kvmlab/volumes/${file}'/>`));
    assert.ok(d, `dumpxml --inactive lists ${file}:\n${inactive}`);
    assert.match(d, new RegExp(`<target dev='${dev}' bus='virtio'/>`), `${file} stays at ${dev}`);
  }
  const afterResize = await disksOf(s2.ips[0], /^vdc /m);
  assert.match(afterResize, new RegExp(`^vdb ${GIB_SECTORS}$`, "m"), "the thick volume at vdb");
  assert.match(afterResize, new RegExp(`^vdc ${2 * GIB_SECTORS}$`, "m"), "the thin volume at vdc");
  assert.equal(
    (await httpGet(status, s2.ips[0], "/cgi-bin/disk?dev=vdc&op=read", 10_000))?.body.trim(),
    "voltoken7",
    "the data survives the cold resize",
  );
  for (const [v, news] of [
    [thin, thinOn2],
    [thick, await volumeIn({ ...thickIn, server: "itvol2" }, thick)],
  ] as const) {
    const seen = (await volumeProvider.read!(v.volumeName, v)).props as VolumeOutputs;
    assert.equal(seen.realized.attachedTo, "itvol2");
    assert.equal(seen.realized.device, v.device);
    assert.equal((await volumeProvider.diff!(v.volumeName, seen, news)).changes, false, "no drift");
  }

  // From an image: a full copy of labimg's disk, at the size asked.
  const fromImageIn = await volumeIn({ volumeName: "itv-img", host: "hv1", sizeGiB: 1, image: "labimg" });
  const fromImage = (await volumeProvider.create!(fromImageIn)).outs as VolumeOutputs;
  volumes.set("img", fromImage);
  assert.equal(fromImage.realized.virtualBytes, 1073741824);
  assert.match(
    await onHost("hv1", "qemu-img info -U /var/lib/kvmlab/volumes/itv-img.qcow2"),
    /file format: qcow2/,
  );
  assert.doesNotMatch(
    await onHost("hv1", "qemu-img info -U /var/lib/kvmlab/volumes/itv-img.qcow2"),
    /backing file/,
    "a copy, not an overlay of the image",
  );
  await volumeProvider.delete!("itv-img", fromImage);
  volumes.delete("img");

  // Hostile inputs: refused by check, the field named, no host command.
  const before = hostPoolStats().steps;
  for (const [field, value] of [
    ["volumeName", "../etc"],
    ["volumeName", "a;reboot"],
    ["sizeGiB", 0],
    ["sizeGiB", -1],
    ["sizeGiB", 1.5],
    ["sizeGiB", 100000],
    ["sizeGiB", "1; rm -rf /"],
    ["provisioning", "thin;id"],
    ["image", "$(id)"],
    ["server", "x' || reboot"],
    ["host", "hv9"],
  ] as const) {
    const r = await volumeCheck({ volumeName: "itv-bad", host: "hv1", sizeGiB: 1, [field]: value });
    assert.ok(
      (r.failures ?? []).some((f) => f.property === field),
      `${field}=${JSON.stringify(value)}: ${JSON.stringify(r.failures)}`,
    );
  }
  assert.equal(hostPoolStats().steps, before, "check ran no host command");

  // Live migration of itvol2 to hv2 carries its attached volume (the thick one is detached
  // first, to keep the copy small): the guest still reads the token at vdc on hv2, the volume's
  // file moved (gone from hv1), the Volume finds it there, and its new host is no replace.
  thick = await update(thick, { ...(thick as VolumeInputs), server: "" });
  volumes.set("thick", thick);
  const moveIn = await serverInputs("itvol2", { host: "hv2", ramMiB: 192, olds: servers[1].inputs });
  assert.match(moveIn.changePlan, /live-migrate to host hv2/);
  const migratedAt = Date.now();
  servers[1].outs = (await serverProvider.update!(servers[1].uuid, servers[1].outs, moveIn))
    .outs as ServerOutputs;
  servers[1].inputs = moveIn;
  console.log(`live migration of itvol2 with a 2 GiB thin volume attached: ${Date.now() - migratedAt} ms`);
  assert.equal(servers[1].outs.host, "hv2");
  assert.match(
    await onHost("hv2", "virsh -c qemu:///system domblklist itvol2"),
    /vdc\s+\/var\/lib\/kvmlab\/volumes\/itv-thin\.qcow2/,
  );
  assert.equal(
    (await httpGet(status, s2.ips[0], "/cgi-bin/disk?dev=vdc&op=read", 10_000))?.body.trim(),
    "voltoken7",
    "the data survives the live migration",
  );
  assert.equal(
    (
      await onHost(
        "hv1",
        "ls /var/lib/kvmlab/volumes/ /var/lib/kvmlab/records/volume/ | grep -c itv-thin || true",
      )
    ).trim(),
    "0",
    "the volume left hv1",
  );
  thin = (await volumeProvider.read!("itv-thin", thin)).props as VolumeOutputs;
  assert.equal(thin.realized.host, "hv2");
  assert.equal(thin.realized.attachedTo, "itvol2");
  const onHv2 = await volumeIn({ ...thinOn2, host: "hv2" }, thin);
  assert.deepEqual((await volumeProvider.diff!("itv-thin", thin, onHv2)).replaces ?? [], []);
  thin = await update(thin, onHv2);
  volumes.set("thin", thin);
  assert.equal(thin.device, "vdc");

  // Detach both and delete: nothing left.
  for (const key of ["thin", "thick"]) {
    let v = volumes.get(key)!;
    v = await update(v, { ...(v as VolumeInputs), server: "" });
    assert.equal(v.device, "");
    assert.equal(v.realized.attachedTo, "");
    await volumeProvider.delete!(v.volumeName, v);
    volumes.delete(key);
    await volumeProvider.delete!(v.volumeName, v); // idempotent
  }
  await disksOf(s2.ips[0], { not: /^vd[b-z] /m });
  for (const h of ["hv1", "hv2"])
    assert.equal(
      (
        await onHost(
          h,
          "ls /var/lib/kvmlab/volumes/ /var/lib/kvmlab/records/volume/ /var/lib/kvmlab/owners/volume/ 2>/dev/null | grep -c itv- || true",
        )
      ).trim(),
      "0",
      "no volume file, disk XML, record or owner marker left",
    );
});
