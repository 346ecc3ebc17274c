/**
 * Attached volumes in a live migration (pure step builders, issue 16). Hosts share no storage, so
 * a server's volumes move with it, like its disk:
 *
 *   source       lists the domain's disks whose file is in the volume store (target, file,
 *                format, virtual size)
 *   destination  gets an empty file of the same format and size for each (thick: allocated), and
 *                the volume's record and owner marker (refused when a volume of that name is there)
 *   source       `virsh migrate … --copy-storage-inc --migrate-disks <vda,>vdb,…` copies them
 *   source       after success: the volume's file, disk XML, record and marker go (the
 *                destination holds the only copy, attached to the running guest)
 *   destination  after a failure that left the guest on the source: what was prepared goes
 */
import { recordPath, shQuote, type Step } from "../host";
import { ownerMarkerPath, ownerStack } from "../kit/owner";
import { VOLUME_DEVICES, VOLUME_STORE, volumeDiskXml } from "../../core/volume";
import { checkName } from "../../core/names";
import { VIRSH } from "./steps";

/** A volume attached to the migrating domain, as the source has it. */
export interface MigratingVolume {
  volumeName: string;
  target: string;
  path: string;
  format: "qcow2" | "raw";
  virtualBytes: number;
  /** The volume's record and owner marker on the source ("" when missing). */
  record: string;
  owner: string;
}

/** The folders of the volumes' owner markers and records (`<dir>/<volume>.owner|.json`). */
const VOLUME_MARKERS = ownerMarkerPath("volume", "X").replace(/X\.owner$/, "");
const VOLUME_RECORDS = recordPath("volume", "X").replace(/X\.json$/, "");

/**
 * Shell: the head of a loop over the domain's disks in the volume store, `$t` the target and
 * `$f` the file; `inactive` reads the persistent definition instead of the running one.
 */
function storeDisksLoop(serverName: string, inactive: boolean): string[] {
  return [
    `${VIRSH} domblklist${inactive ? " --inactive" : ""} --details ${shQuote(serverName)} | awk '$4 ~ /^${VOLUME_STORE.replace(/\//g, "\\/")}\\// { print $3, $4 }' |`,
    "while read -r t f; do",
  ];
}

/** Source: one line per attached volume: `target<TAB>path<TAB>format<TAB>bytes<TAB>owner<TAB>record(base64)`. */
export function attachedVolumesStep(serverName: string): Step {
  return {
    label: `list the volumes attached to ${serverName}`,
    script: [
      ...storeDisksLoop(serverName, false),
      "  n=${f##*/}; n=${n%.*}",
      `  fmt=$(qemu-img info -U "$f" | sed -n 's/^file format: //p' | head -n1)`,
      `  vs=$(qemu-img info -U "$f" | sed -n 's/^virtual size: .*(\\([0-9]*\\) bytes).*/\\1/p' | head -n1)`,
      `  o=$(head -n1 ${shQuote(VOLUME_MARKERS)}"$n.owner" 2>/dev/null || true)`,
      `  r=$(base64 -w0 ${shQuote(VOLUME_RECORDS)}"$n.json" 2>/dev/null || true)`,
      '  printf \'%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n\' "$t" "$f" "$fmt" "$vs" "$o" "$r"',
      "done",
    ].join("\n"),
  };
}

/** Parses attachedVolumesStep; throws on a line that is not a kvmlab volume. */
export function parseAttachedVolumes(stdout: string): MigratingVolume[] {
  return stdout
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => {
      const [target, path, format, bytes, owner = "", record64 = ""] = l.split("\t");
      const base = path.slice(VOLUME_STORE.length + 1);
      const volumeName = base.replace(/\.(qcow2|raw)$/, "");
      if (
        !/^vd[b-z]$/.test(target) ||
        !path.startsWith(`${VOLUME_STORE}/`) ||
        checkName("volumeName", volumeName) !== undefined ||
        (format !== "qcow2" && format !== "raw") ||
        !/^\d+$/.test(bytes) ||
        base !== `${volumeName}.${format}`
      )
        throw new Error(`unexpected attached volume line from the source: ${JSON.stringify(l)}`);
      return {
        volumeName,
        target,
        path,
        format,
        virtualBytes: Number(bytes),
        owner,
        record: Buffer.from(record64, "base64").toString("utf8"),
      };
    });
}

/** Destination: empty files of the same format and size, record and owner marker; refuses a name in use. */
export function prepareVolumesStep(vols: readonly MigratingVolume[]): Step {
  // Every name is checked before anything is made: a refusal leaves the destination as it was.
  const lines = ["set -e", `mkdir -p ${shQuote(VOLUME_STORE)}`];
  for (const v of vols)
    lines.push(
      `if [ -e ${shQuote(v.path)} ] || [ -e ${shQuote(recordPath("volume", v.volumeName))} ]; then echo ${shQuote(`volume ${v.volumeName} already exists on the destination; a server carries its volumes along, and another volume holds that name there. Fix: detach ${v.volumeName} (or delete the other volume) and migrate again`)} >&2; exit 3; fi`,
    );
  for (const v of vols) {
    const f = shQuote(v.path);
    lines.push(
      `qemu-img create -q -f ${v.format} ${f} ${v.virtualBytes}`,
      ...(v.format === "raw" ? [`fallocate -l ${v.virtualBytes} ${f}`] : []),
      `chmod 0600 ${f}`,
      `mkdir -p "$(dirname ${shQuote(recordPath("volume", v.volumeName))})" "$(dirname ${shQuote(ownerMarkerPath("volume", v.volumeName))})"`,
      ...(v.record
        ? [`printf '%s' ${shQuote(v.record)} > ${shQuote(recordPath("volume", v.volumeName))}`]
        : []),
      ...(v.owner
        ? [
            `( umask 077; printf '%s\\n' ${shQuote(v.owner)} > ${shQuote(ownerMarkerPath("volume", v.volumeName))} )`,
          ]
        : []),
    );
  }
  return { label: `prepare ${vols.length} volume(s) on the destination`, script: lines.join("\n") };
}

/** Removes the volumes' files, disk XML, record and marker (source after success, destination after failure). */
export function dropVolumesStep(vols: readonly MigratingVolume[], where: string): Step {
  const files = vols.flatMap((v) => [
    v.path,
    `${VOLUME_STORE}/${v.volumeName}.disk.xml`,
    recordPath("volume", v.volumeName),
    ownerMarkerPath("volume", v.volumeName),
  ]);
  return {
    label: `remove the moved volumes' files on the ${where}`,
    script: files.length > 0 ? `rm -f ${files.map((f) => shQuote(f)).join(" ")}` : "true",
  };
}

/** The `--migrate-disks` list: the server's own disk (when it has one) and every volume's target. */
export function migrateDisks(hasRootDisk: boolean, vols: readonly MigratingVolume[]): string[] {
  return vols.length === 0 ? [] : [...(hasRootDisk ? ["vda"] : []), ...vols.map((v) => v.target)];
}

/**
 * A volume in a server's persistent definition (issue 16: a redefine keeps it). Only what
 * `virsh attach-device --config` of the Volume provider put there: a file in the volume store
 * named after the volume, at one of vdb..vdz.
 */
export interface KeptVolume {
  volumeName: string;
  target: string;
  path: string;
  format: "qcow2" | "raw";
}

/**
 * Host: a line `defined` when the domain is this server's (its UUID; nothing at all when there is
 * no such domain), then `target path owner server` for every disk of its PERSISTENT definition
 * whose file is in the volume store: the volume's owner marker and the server its record names
 * ("-" when missing; review L4: the file name alone does not make a disk this server's volume).
 * Read before a redefine, which would otherwise drop them (the rendered XML does not list the
 * volumes the Volume resources attached). `quick` (a create, where there is usually no domain
 * yet): no virsh call at all while libvirt keeps no definition file of that name.
 */
export function keptVolumesStep(serverName: string, uuid: string, opts: { quick?: boolean } = {}): Step {
  const n = shQuote(serverName);
  return {
    label: `list the volumes in the definition of ${serverName}`,
    script: [
      ...(opts.quick ? [`[ -e ${shQuote(`/etc/libvirt/qemu/${serverName}.xml`)} ] || exit 0`] : []),
      `u=$(${VIRSH} domuuid ${n} 2>/dev/null || true)`,
      `[ "$u" = ${shQuote(uuid)} ] || exit 0`,
      "echo defined",
      ...storeDisksLoop(serverName, true),
      "  v=${f##*/}; v=${v%.*}",
      `  o=$(head -n1 ${shQuote(VOLUME_MARKERS)}"$v.owner" 2>/dev/null || true)`,
      `  s=$(sed -n 's/^ *"server": *"\\([^"]*\\)".*/\\1/p' ${shQuote(VOLUME_RECORDS)}"$v.json" 2>/dev/null | head -n1)`,
      '  printf \'%s %s %s %s\\n\' "$t" "$f" "${o:--}" "${s:--}"',
      "done",
    ].join("\n"),
  };
}

/** Whether a keptVolumesStep listing found the server's domain defined (a create run again). */
export function keptListingHasDomain(stdout: string): boolean {
  return stdout.split("\n").some((l) => l.trim() === "defined");
}

/**
 * Parses keptVolumesStep (pure). A volume-store file that is not a kvmlab volume (not
 * `<name>.qcow2|raw` with a valid name, or at a target outside vdb..vdz) is refused naming the
 * disk and the fix: a redefine must neither drop it nor carry something kvmlab did not attach.
 * So is a volume whose record does not name this server (a stale `<disk>` left in the
 * definition, the name now another volume's), or whose owner marker is of another stack than
 * `owner`'s (review L4; no marker: a volume from before owners, its record decides).
 */
export function parseKeptVolumes(serverName: string, stdout: string, owner = ""): KeptVolume[] {
  return stdout
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && l !== "defined")
    .map((l) => {
      const [target = "", path = "", volOwner = "", recServer = "", ...rest] = l.split(/\s+/);
      const m = /^([^/]+)\.(qcow2|raw)$/.exec(path.slice(VOLUME_STORE.length + 1));
      const volumeName = m?.[1] ?? "";
      if (
        rest.length > 0 ||
        !path.startsWith(`${VOLUME_STORE}/`) ||
        !m ||
        checkName("volumeName", volumeName) !== undefined ||
        !VOLUME_DEVICES.includes(target)
      )
        throw new Error(
          `server ${serverName}: its definition has the disk ${JSON.stringify(l)} in the volume store that kvmlab did not attach (a Volume attaches <name>.qcow2|raw at vdb..vdz); a redefine would drop it. Fix: detach it by hand (virsh detach-disk ${serverName} <target> --config) and run pulumi up again`,
        );
      const detach = `Fix: detach it by hand (virsh detach-disk ${serverName} ${target} --config), then attach the volume through its Volume resource (server: "${serverName}") and run pulumi up again`;
      if (recServer !== serverName)
        throw new Error(
          `server ${serverName}: its definition has volume ${volumeName} at ${target}, but ${recServer === "-" || recServer === "" ? `no record of volume ${volumeName} names a server` : `the record of volume ${volumeName} names server ${recServer}`}; kvmlab keeps only the volumes attached to this server. ${detach}`,
        );
      if (owner !== "" && volOwner !== "-" && ownerStack(volOwner) !== ownerStack(owner))
        throw new Error(
          `server ${serverName}: its definition has volume ${volumeName} at ${target}, which belongs to ${volOwner}, another stack than ${ownerStack(owner)}; kvmlab never carries another stack's volume. ${detach}`,
        );
      return { volumeName, target, path, format: m[2] as "qcow2" | "raw" };
    });
}

/**
 * The XML to define with the attached volumes kept (pure): each volume's `<disk>` (the same
 * element the Volume provider attaches, core/volume.ts) after the XML's last disk, in target
 * order, so a guest that enumerates virtio disks in bus order names them as before. A volume
 * whose file the XML already lists is not added twice; a target the XML uses for another file
 * is refused naming both.
 */
export function withVolumeDisks(serverName: string, xml: string, vols: readonly KeptVolume[]): string {
  const used = new Map<string, string>();
  for (const d of xml.matchAll(/<disk\b[\s\S]*?<\/disk>/g)) {
    const file = /<source file='([^']*)'/.exec(d[0])?.[1] ?? "";
    const dev = /<target dev='([^']*)'/.exec(d[0])?.[1];
    if (dev !== undefined) used.set(dev, file);
  }
  const files = new Set(used.values());
  const add = [...vols]
    .filter((v) => !files.has(v.path))
    .sort((a, b) => VOLUME_DEVICES.indexOf(a.target) - VOLUME_DEVICES.indexOf(b.target));
  for (const v of add) {
    const other = used.get(v.target);
    if (other !== undefined)
      throw new Error(
        `server ${serverName}: volume ${v.volumeName} is attached as ${v.target}, but the new domain XML uses ${v.target} for ${other || "another device"}; a redefine would drop the volume. Fix: detach volume ${v.volumeName} (set its server to "") before this change, then attach it again`,
      );
    used.set(v.target, v.path);
  }
  if (add.length === 0) return xml;
  const disks = add
    .map((v) =>
      volumeDiskXml({ volumeName: v.volumeName, path: v.path, format: v.format, device: v.target })
        .trimEnd()
        .split("\n")
        .map((line) => `    ${line}`)
        .join("\n"),
    )
    .join("\n");
  const last = xml.lastIndexOf("</disk>");
  const devices = xml.indexOf("<devices>");
  if (last < 0 && devices < 0)
    throw new Error(`server ${serverName}: the domain XML has no <devices> to keep its volumes in`);
  const at = last >= 0 ? last + "</disk>".length : devices + "<devices>".length;
  return `${xml.slice(0, at)}\n${disks}${xml.slice(at)}`;
}
