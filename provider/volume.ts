/**
 * Volume: a block device on one lab host that servers on that host attach, like a Cinder volume
 * with the LVM/local driver.
 *
 *   check   validates every field (unknowns accepted during preview); a smaller sizeGiB than the
 *           state's is refused (volumes grow, never shrink)
 *   diff    volumeName, host, provisioning, image → replace (delete first: the file is named
 *           after the volume); sizeGiB → grow; server → attach / detach / move the attachment
 *   create  claims the volume for its owner, then its file in /var/lib/kvmlab/volumes/: thin =
 *           qcow2 (allocates as the guest writes), thick = raw, every byte allocated with
 *           fallocate; blank, or a full copy of an Image's disk from the host's image store
 *           (qemu-img convert; the volume does not depend on the image afterwards); its record;
 *           then the attachment when `server` is set
 *   attach  `virsh attach-device --live --config` (only --config when the server is not running)
 *           with the rendered <disk> (templates/volume.ts) at the first free vdb..vdz (kept
 *           while it stays on that server); no reboot. The server must run on the volume's host
 *           and belong to the same stack
 *   detach  `virsh detach-device --live --config`, then waits (bounded) until libvirt no longer
 *           lists the disk (the guest acknowledges the unplug)
 *   grow    attached and running: `virsh blockresize` (the guest sees the new size at once);
 *           otherwise qemu-img resize; thick volumes are allocated again to their full size
 *   read    file, allocation and attachment as the host has them (gone = deleted)
 *   delete  refused while any domain on the host has the file attached (names the server and the
 *           fix); then file, disk XML, record and owner marker
 *
 * Files on the host: /var/lib/kvmlab/volumes/<volume>.{qcow2|raw}, <volume>.disk.xml (the last
 * attached <disk>), record /var/lib/kvmlab/records/volume/<volume>.json.
 */
import type * as pulumi from "@pulumi/pulumi";
import {
  UNKNOWN,
  checkHostList,
  recordPath,
  runChecked,
  runLocked,
  shQuote,
  withNamedHostLock,
  writeRecordStep,
  deleteRecordStep,
  type HostConnection,
  type Step,
} from "./host";
import {
  KvmlabResource,
  applyRules,
  changedKeys,
  checkedOwner,
  claimStep,
  claimedNow,
  defineResource,
  failureList,
  guardStep,
  hostNamed,
  isKnown,
  normalizeHosts,
  ownerIn,
  parseKeyValues,
  releaseOwnerStep,
  rules,
  sameStackStep,
  type Checked,
  type DiffResult,
  type HostConnectionArgs,
  type InProjectArgs,
  type OwnedObject,
} from "./kit";
import { charges } from "./quota";
import {
  VOLUME_PROVISIONING,
  VOLUME_STORE,
  checkVolumeGrowth,
  checkVolumeSize,
  chooseVolumeDevice,
  volumeFormat,
  volumePath,
  volumeDiskXml,
  volumeUsage,
  type VolumeProvisioning,
} from "../core/volume";
import { imageDir } from "../core/paths";

const VIRSH = "virsh -q -c qemu:///system";
const GIB = 1024 * 1024 * 1024;

export interface VolumeArgs extends InProjectArgs {
  /** The volume's name on its host (its file is /var/lib/kvmlab/volumes/<volumeName>.qcow2|raw). @default the resource name */
  readonly volumeName?: pulumi.Input<string>;
  /** The lab's hosts (private keys are secrets). */
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** The host the volume lives on (a server attaching it must run there). */
  readonly host: pulumi.Input<string>;
  /** Size in GiB (1-1024); a larger value grows the volume in place, a smaller one is refused. */
  readonly sizeGiB: pulumi.Input<number>;
  /** "thin" (qcow2, allocated on write) or "thick" (raw, fully allocated). @default "thin" */
  readonly provisioning?: pulumi.Input<VolumeProvisioning>;
  /** Name of an Image whose disk the volume starts as a copy of. @default "" (blank) */
  readonly image?: pulumi.Input<string>;
  /** The server (libvirt domain name on `host`) to attach to; "" detaches. @default "" */
  readonly server?: pulumi.Input<string>;
  /** @default set by the kit: "<project>/<stack>/Volume/<name>" */
  readonly owner?: pulumi.Input<string>;
}

export interface VolumeInputs {
  volumeName: string;
  hosts: HostConnection[];
  host: string;
  sizeGiB: number;
  provisioning: VolumeProvisioning;
  image: string;
  server: string;
  owner: string;
}

/** What read finds on the host. */
export interface VolumeRealized {
  present: boolean;
  /** The host the volume is on now (a live migration of its server carries it along). */
  host: string;
  /** Bytes the file occupies on the host's disk (du). */
  allocatedBytes: number;
  /** The guest-visible size. */
  virtualBytes: number;
  /** Domain the file is attached to ("" none) and at which device. */
  attachedTo: string;
  device: string;
}

export interface VolumeOutputs extends VolumeInputs {
  path: string;
  format: "qcow2" | "raw";
  /** The device the guest sees (vdb..vdz), "" while detached. */
  device: string;
  realized: VolumeRealized;
  hostKeys: Record<string, string>;
}

export const VOLUME_INPUT_KEYS = [
  "volumeName",
  "hosts",
  "host",
  "sizeGiB",
  "provisioning",
  "image",
  "server",
  "owner",
] as const;

/** Validates and fills defaults. Pure; a smaller size than `olds` has is refused. */
export function checkVolumeInputs(news: Record<string, unknown>, olds?: Record<string, unknown>): Checked {
  const out = failureList();
  const nameOrEmpty = (field: string, v: unknown) => (v === "" ? undefined : rules.name(field, v));
  const v = applyRules(
    news,
    {
      volumeName: { rule: rules.name },
      host: { rule: rules.name },
      sizeGiB: { rule: checkVolumeSize },
      provisioning: {
        rule: rules.oneOf(
          VOLUME_PROVISIONING,
          '"thin" (qcow2, allocated on write) or "thick" (raw, fully allocated)',
        ),
        default: "thin",
      },
      image: { rule: nameOrEmpty, default: "" },
      server: { rule: nameOrEmpty, default: "" },
    },
    out,
  );
  out.add("hosts", checkHostList("hosts", news.hosts));
  const hosts = normalizeHosts(news.hosts);
  if (Array.isArray(hosts) && isKnown(hosts) && isKnown(v.host) && typeof v.host === "string") {
    const names = (hosts as { name?: unknown }[]).map((h) => h.name);
    if (!names.includes(v.host))
      out.add(
        "host",
        `host: ${JSON.stringify(v.host)} is not one of hosts (${names.join(", ")}); name a listed host`,
      );
  }
  if (olds && typeof olds.sizeGiB === "number" && isKnown(v.sizeGiB) && typeof v.sizeGiB === "number")
    out.add("sizeGiB", checkVolumeGrowth("sizeGiB", olds.sizeGiB, v.sizeGiB));
  const owner = checkedOwner(news, "Volume", "volumeName", out.add);
  return {
    inputs: { ...v, hosts: hosts ?? UNKNOWN, owner },
    failures: out.failures,
  };
}

/** Changes that make a new volume (its file is named after it, its data lives on its host). */
export const VOLUME_REPLACE_KEYS = ["volumeName", "host", "provisioning", "image"] as const;

/** Pure diff: replaces, grow, attachment moves, and drift of the attachment. */
export function diffVolume(olds: VolumeOutputs, news: VolumeInputs): DiffResult {
  // A new host where the volume already is (its server migrated and carried it) is no replace.
  const movedThere = olds.realized?.host !== undefined && olds.realized.host === news.host;
  const replaces = changedKeys(olds, news, VOLUME_REPLACE_KEYS).filter((k) => !(k === "host" && movedThere));
  const updates = changedKeys(olds, news, ["sizeGiB", "server", "owner", "hosts", "host"]);
  const r = olds.realized;
  const drift =
    r !== undefined && (r.attachedTo !== olds.server || (r.present === false && replaces.length === 0));
  return {
    changes: replaces.length > 0 || updates.length > 0 || drift,
    replaces,
    stables: replaces.length === 0 ? ["path", "format"] : [],
    deleteBeforeReplace: true,
  };
}

/** The volume's host objects, for the owner guards. */
export function volumeOwned(volumeName: string): OwnedObject {
  return {
    kind: "volume",
    key: [volumeName],
    what: `volume ${volumeName}`,
    field: "volumeName",
    exists: `{ [ -e ${shQuote(volumePath(volumeName, "thin"))} ] || [ -e ${shQuote(volumePath(volumeName, "thick"))} ] || [ -e ${shQuote(recordPath("volume", volumeName))} ]; }`,
  };
}

/** The server a volume attaches to, as an owned object (for the same-stack check). */
function serverObject(serverName: string): OwnedObject {
  return { kind: "server", key: [serverName], what: `server ${serverName}`, field: "server" };
}

/** Shell lines printing "<domain> <device>" for every domain that has `path` attached. */
function holdersLines(path: string): string[] {
  return [
    `vol=${shQuote(path)}`,
    `holders=$(for d in $(${VIRSH} list --all --name); do ${VIRSH} domblklist --details "$d" 2>/dev/null | awk -v f="$vol" -v d="$d" '$4 == f { print d " " $3 }'; done)`,
  ];
}

/** Host: makes the volume's file (idempotent: an existing file of this owner's claim is kept). */
export function volumeCreateStep(
  i: Pick<VolumeInputs, "volumeName" | "sizeGiB" | "provisioning" | "image">,
): Step {
  const f = volumePath(i.volumeName, i.provisioning);
  const fmt = volumeFormat(i.provisioning);
  const bytes = i.sizeGiB * GIB;
  const lines = [
    "set -e",
    `mkdir -p ${shQuote(VOLUME_STORE)}`,
    `f=${shQuote(f)}; t="$f.kvmlab-tmp"`,
    'if [ -e "$f" ]; then echo kept; exit 0; fi',
    'rm -f "$t"',
  ];
  if (i.image !== "") {
    const dir = imageDir(i.image);
    lines.push(
      `src=""; for c in ${shQuote(`${dir}/disk.qcow2`)} ${shQuote(`${dir}/disk.raw`)}; do [ -f "$c" ] && src="$c"; done`,
      `[ -n "$src" ] || { echo ${shQuote(`image: no disk image ${i.image} in this host's image store (${dir}/disk.qcow2 or disk.raw); create the Image (a disk image, not kernel+ramdisk) on this host first, or leave image out for a blank volume`)} >&2; exit 3; }`,
      `vs=$(qemu-img info -U "$src" | sed -n 's/^virtual size: .*(\\([0-9]*\\) bytes).*/\\1/p' | head -n1)`,
      `if [ "\${vs:-0}" -gt ${bytes} ]; then echo "sizeGiB: image ${i.image} is $vs bytes, more than the ${i.sizeGiB} GiB asked; give sizeGiB >= $(( (vs + ${GIB - 1}) / ${GIB} ))" >&2; exit 3; fi`,
      `qemu-img convert -O ${fmt} "$src" "$t"`,
      `qemu-img resize -q -f ${fmt} "$t" ${bytes}`,
    );
  } else if (fmt === "qcow2") {
    lines.push(`qemu-img create -q -f qcow2 "$t" ${bytes}`);
  } else {
    lines.push(': > "$t"');
  }
  // thick: every byte allocated now (fallocate fills the holes of a converted image too).
  if (fmt === "raw") lines.push(`fallocate -l ${bytes} "$t"`);
  lines.push('chmod 0600 "$t"', 'mv -f "$t" "$f"', "echo made");
  return {
    label: `create volume ${i.volumeName} (${i.sizeGiB} GiB, ${i.provisioning})`,
    script: lines.join("\n"),
  };
}

/** Host: the volume's record. */
export function volumeRecordStep(i: VolumeInputs, device: string): Step {
  return writeRecordStep("volume", i.volumeName, {
    volumeName: i.volumeName,
    sizeGiB: i.sizeGiB,
    provisioning: i.provisioning,
    path: volumePath(i.volumeName, i.provisioning),
    image: i.image,
    server: i.server,
    device,
    owner: i.owner,
    // The identity project the kit charges (issue 14); "" = none.
    project: (i as { project?: string }).project ?? "",
  });
}

/** Host: key=value lines: present, allocated, virtual, attached (domain), device. */
export function volumeReadStep(i: Pick<VolumeInputs, "volumeName" | "provisioning">): Step {
  const f = volumePath(i.volumeName, i.provisioning);
  return {
    label: `read volume ${i.volumeName}`,
    script: [
      `f=${shQuote(f)}`,
      'if [ ! -e "$f" ]; then echo present=0; exit 0; fi',
      "echo present=1",
      'echo "allocated=$(( $(stat -c %b "$f") * $(stat -c %B "$f") ))"',
      `echo "virtual=$(qemu-img info -U "$f" | sed -n 's/^virtual size: .*(\\([0-9]*\\) bytes).*/\\1/p' | head -n1)"`,
      ...holdersLines(f),
      'set -- $holders; echo "attached=${1:-}"; echo "device=${2:-}"',
    ].join("\n"),
  };
}

export function parseVolumeRead(stdout: string): VolumeRealized {
  const kv = parseKeyValues(stdout);
  return {
    present: kv.get("present") === "1",
    host: "",
    allocatedBytes: Number(kv.get("allocated") ?? 0) || 0,
    virtualBytes: Number(kv.get("virtual") ?? 0) || 0,
    attachedTo: kv.get("attached") ?? "",
    device: kv.get("device") ?? "",
  };
}

/** Host: targets the domain uses now (one per line), after checking it exists on this host. */
export function domainTargetsStep(serverName: string, volumeName: string, hostName: string): Step {
  const s = shQuote(serverName);
  return {
    label: `list the disks of server ${serverName}`,
    script: [
      `if ! ${VIRSH} domuuid ${s} >/dev/null 2>&1; then echo ${shQuote(`server: no server ${serverName} on host ${hostName}, where volume ${volumeName} lives; a volume attaches only to a server on its own host: pin the server to ${hostName}, or give the volume that server's host (a new volume)`)} >&2; exit 3; fi`,
      `${VIRSH} domblklist --details ${s} | awk 'NF >= 3 { print $3 " " $4 }'`,
    ].join("\n"),
  };
}

/** Parses "target source" lines of domainTargetsStep. */
export function parseDomainTargets(stdout: string): { target: string; source: string }[] {
  return stdout
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((p) => p.length >= 1 && p[0] !== "")
    .map((p) => ({ target: p[0], source: p[1] ?? "" }));
}

/** `--live --config` for a running (or paused) domain, `--config` for a stopped one. */
function liveFlags(serverWord: string): string {
  return `st=$(${VIRSH} domstate ${serverWord} 2>/dev/null | head -n1); case "$st" in running|paused) flags="--live --config" ;; *) flags="--config" ;; esac`;
}

/** Host: attaches the rendered disk (refused while another domain holds the volume). */
export function volumeAttachStep(i: VolumeInputs, device: string): Step {
  const f = volumePath(i.volumeName, i.provisioning);
  const xml = `${VOLUME_STORE}/${i.volumeName}.disk.xml`;
  const disk = volumeDiskXml({
    volumeName: i.volumeName,
    path: f,
    format: volumeFormat(i.provisioning),
    device,
  });
  return {
    label: `attach volume ${i.volumeName} to server ${i.server} as ${device}`,
    script: [
      "set -e",
      ...holdersLines(f),
      "set -- $holders",
      `if [ -n "\${1:-}" ] && [ "$1" != ${shQuote(i.server)} ]; then echo "server: volume ${i.volumeName} is attached to server $1 ($2); a volume attaches to one server at a time: detach it there first (set that Volume's server to \\"\\" and run pulumi up), then attach it to ${i.server}" >&2; exit 3; fi`,
      `if [ -n "\${1:-}" ]; then echo "already=$2"; exit 0; fi`,
      `umask 077; cat > ${shQuote(xml)} <<'KVMLAB_DISK_EOF'\n${disk}KVMLAB_DISK_EOF`,
      liveFlags(shQuote(i.server)),
      `${VIRSH} attach-device ${shQuote(i.server)} ${shQuote(xml)} $flags >/dev/null`,
      `echo attached=${device}`,
    ].join("\n"),
  };
}

/** Host: detaches the volume from whatever domain holds it; waits (bounded) until it is gone. */
export function volumeDetachStep(i: Pick<VolumeInputs, "volumeName" | "provisioning">, waitSec = 30): Step {
  const f = volumePath(i.volumeName, i.provisioning);
  return {
    label: `detach volume ${i.volumeName}`,
    script: [
      "set -e",
      ...holdersLines(f),
      "set -- $holders",
      '[ -n "${1:-}" ] || { echo detached=none; exit 0; }',
      "d=$1; dev=$2",
      liveFlags('"$d"'),
      // libvirt matches the disk by its target; the live unplug needs the guest's acknowledgement.
      `${VIRSH} detach-disk "$d" "$dev" $flags >/dev/null`,
      "i=0",
      `while ${VIRSH} domblklist --details "$d" | awk -v f="$vol" '$4 == f { found=1 } END { exit !found }'; do`,
      `  i=$((i+1)); if [ $i -ge ${waitSec * 2} ]; then echo "volume ${i.volumeName}: server $d did not release $dev within ${waitSec} s (the guest did not acknowledge the unplug); it stays attached. Fix: check the guest (dmesg), or stop the server and run pulumi up again" >&2; exit 4; fi`,
      "  sleep 0.5",
      "done",
      'echo "detached=$d"',
    ].join("\n"),
  };
}

/** Host: grows the volume to sizeGiB (blockresize when attached and running, else qemu-img). */
export function volumeGrowStep(i: Pick<VolumeInputs, "volumeName" | "provisioning" | "sizeGiB">): Step {
  const f = volumePath(i.volumeName, i.provisioning);
  const fmt = volumeFormat(i.provisioning);
  const bytes = i.sizeGiB * GIB;
  return {
    label: `grow volume ${i.volumeName} to ${i.sizeGiB} GiB`,
    script: [
      "set -e",
      ...holdersLines(f),
      "set -- $holders",
      `vs=$(qemu-img info -U "$vol" | sed -n 's/^virtual size: .*(\\([0-9]*\\) bytes).*/\\1/p' | head -n1)`,
      `if [ "\${vs:-0}" -gt ${bytes} ]; then echo "sizeGiB: volume ${i.volumeName} is $vs bytes on the host, more than ${i.sizeGiB} GiB; volumes never shrink" >&2; exit 3; fi`,
      `if [ "\${vs:-0}" -lt ${bytes} ]; then`,
      `  if [ -n "\${1:-}" ] && [ "$(${VIRSH} domstate "$1" | head -n1)" = running ]; then ${VIRSH} blockresize "$1" "$2" ${bytes}B >/dev/null`,
      `  else qemu-img resize -q -f ${fmt} "$vol" ${bytes}; fi`,
      "fi",
      ...(fmt === "raw" ? [`fallocate -l ${bytes} "$vol"`] : []),
      `echo grown=${bytes}`,
    ].join("\n"),
  };
}

/** Host: refuses while attached (naming the server and the fix), else removes file, XML and record. */
export function volumeDeleteStep(i: Pick<VolumeInputs, "volumeName" | "provisioning">): Step {
  const f = volumePath(i.volumeName, i.provisioning);
  return {
    label: `delete volume ${i.volumeName}`,
    script: [
      ...holdersLines(f),
      "set -- $holders",
      `if [ -n "\${1:-}" ]; then echo "volume ${i.volumeName} is attached to server $1 as $2; a volume is never deleted while attached. Fix: detach it first (set the Volume's server to \\"\\" and run pulumi up, or delete server $1), then delete the volume" >&2; exit 5; fi`,
      `rm -f ${shQuote(f)} ${shQuote(`${f}.kvmlab-tmp`)} ${shQuote(`${VOLUME_STORE}/${i.volumeName}.disk.xml`)}`,
      deleteRecordStep("volume", i.volumeName).script,
    ].join("\n"),
  };
}

function outputsOf(i: VolumeInputs, device: string, realized: VolumeRealized): VolumeOutputs {
  return {
    ...i,
    path: volumePath(i.volumeName, i.provisioning),
    format: volumeFormat(i.provisioning),
    device,
    realized,
    hostKeys: {},
  };
}

async function readVolume(host: HostConnection, i: VolumeInputs): Promise<VolumeRealized> {
  const [out] = await runChecked(host, [volumeReadStep(i)]);
  return { ...parseVolumeRead(out), host: host.name };
}

/**
 * Where the volume is: its `host`, or another listed host a live migration of its server
 * carried it to (unreachable other hosts are skipped). Not present anywhere: `host`, absent.
 */
async function locate(i: VolumeInputs): Promise<{ host: HostConnection; realized: VolumeRealized }> {
  const home = hostNamed(i.hosts, i.host, "volume");
  const realized = await readVolume(home, i);
  if (realized.present) return { host: home, realized };
  for (const h of i.hosts) {
    if (h.name === home.name) continue;
    const there = await readVolume(h, i).catch(() => undefined);
    if (there?.present) return { host: h, realized: there };
  }
  return { host: home, realized };
}

/**
 * Attaches to i.server (same stack, on this host); returns the device. Choosing the device and
 * attaching hold the host's "volumes" lock, so two volumes attaching to one server at once never
 * pick the same free device.
 */
async function attach(host: HostConnection, i: VolumeInputs, current: string): Promise<string> {
  const owned = volumeOwned(i.volumeName);
  return withNamedHostLock(host, "volumes", async () => {
    const [, targets] = await runChecked(host, [
      sameStackStep(serverObject(i.server), i.owner, `volume ${i.volumeName}`),
      domainTargetsStep(i.server, i.volumeName, host.name),
    ]);
    const list = parseDomainTargets(targets);
    const path = volumePath(i.volumeName, i.provisioning);
    const mine = list.find((t) => t.source === path);
    const device = mine
      ? mine.target
      : chooseVolumeDevice(
          list.map((t) => t.target),
          current,
        );
    if (device === undefined)
      throw new Error(
        `server: server ${i.server} already has vdb..vdz in use; detach a volume from it first, or attach ${i.volumeName} to another server`,
      );
    await runLocked(
      host,
      [guardStep(owned, [i.owner]), volumeAttachStep(i, device), volumeRecordStep(i, device)],
      { timeoutMs: 120000 },
    );
    return device;
  });
}

const volume = defineResource<VolumeInputs, VolumeOutputs>({
  type: "Volume",
  inputKeys: [...VOLUME_INPUT_KEYS],
  outputKeys: ["path", "format", "device", "realized", "hostKeys"],
  secretOutputs: ["hosts"],
  check: (news, olds) => checkVolumeInputs(news, olds),
  diff: diffVolume,
  // Cinder's quotas: one volume and its size in gigabytes (grown first at update).
  quota: charges((i) => volumeUsage(i.sizeGiB)),

  async create(inputs) {
    const host = hostNamed(inputs.hosts, inputs.host, "volume");
    const owned = volumeOwned(inputs.volumeName);
    const [c] = await runLocked(host, [claimStep(owned, inputs.owner)]);
    const madeHere = claimedNow(c);
    try {
      await runLocked(
        host,
        [
          guardStep(owned, [inputs.owner]),
          volumeCreateStep(inputs),
          volumeRecordStep({ ...inputs, server: "" }, ""),
        ],
        { timeoutMs: 600000 },
      );
      const device = inputs.server !== "" ? await attach(host, inputs, "") : "";
      return { id: inputs.volumeName, outs: outputsOf(inputs, device, await readVolume(host, inputs)) };
    } catch (err) {
      if (madeHere)
        await runLocked(host, [
          guardStep(owned, [inputs.owner]),
          volumeDetachStep(inputs),
          volumeDeleteStep(inputs),
          releaseOwnerStep(owned, [inputs.owner]),
        ]).catch(() => undefined);
      throw err;
    }
  },

  async read(_id, props) {
    const { realized } = await locate(props);
    if (!realized.present) return undefined;
    return { ...props, realized, device: realized.device || props.device };
  },

  async update(_id, olds, news) {
    const { host, realized: now } = await locate(news);
    const owned = volumeOwned(news.volumeName);
    await runLocked(host, [guardStep(owned, [news.owner, ownerIn(olds)], true)]);
    if (!now.present)
      throw new Error(
        `volume ${news.volumeName} is gone from host ${host.name}; run "pulumi refresh" to drop it from the state, then "pulumi up" creates it again (blank)`,
      );
    let device = now.attachedTo === news.server ? now.device : "";
    // Detach first when the attachment moves or goes (data stays in the file).
    if (now.attachedTo !== "" && now.attachedTo !== news.server) {
      await runLocked(host, [guardStep(owned, [news.owner]), volumeDetachStep(news)], { timeoutMs: 120000 });
      device = "";
    }
    if (news.sizeGiB !== olds.sizeGiB || now.virtualBytes < news.sizeGiB * GIB)
      await runLocked(host, [guardStep(owned, [news.owner]), volumeGrowStep(news)], { timeoutMs: 600000 });
    if (news.server !== "" && now.attachedTo !== news.server) device = await attach(host, news, olds.device);
    await runLocked(host, [volumeRecordStep(news, device)]);
    return outputsOf(news, device, await readVolume(host, news));
  },

  async delete(_id, olds) {
    const { host } = await locate(olds);
    const o = ownerIn(olds);
    const owned = volumeOwned(olds.volumeName);
    await runLocked(host, [
      ...(o ? [guardStep(owned, [o])] : []),
      volumeDeleteStep(olds),
      ...(o ? [releaseOwnerStep(owned, [o])] : []),
    ]);
  },
});

export const volumeProvider = volume.provider;

/** A volume (`pulumi-nodejs:dynamic/kvmlab:Volume`). */
export class Volume extends KvmlabResource<VolumeInputs, VolumeOutputs> {
  declare readonly volumeName: pulumi.Output<string>;
  declare readonly host: pulumi.Output<string>;
  declare readonly sizeGiB: pulumi.Output<number>;
  declare readonly provisioning: pulumi.Output<VolumeProvisioning>;
  declare readonly image: pulumi.Output<string>;
  declare readonly server: pulumi.Output<string>;
  declare readonly path: pulumi.Output<string>;
  declare readonly format: pulumi.Output<"qcow2" | "raw">;
  /** vdb..vdz while attached, "" while detached. */
  declare readonly device: pulumi.Output<string>;
  declare readonly realized: pulumi.Output<VolumeRealized>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly owner: pulumi.Output<string>;

  constructor(name: string, args: VolumeArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(volume, name, { ...args, volumeName: args.volumeName ?? name }, opts);
  }
}
