/**
 * Volumes (Cinder's model), the pure part: limits, where a volume's file lives on its host, the
 * device name an attachment gets, and the rules a lab definition and the provider share. Pure.
 *
 *   /var/lib/kvmlab/volumes/<volume>.qcow2   a thin volume (qcow2, allocates on write)
 *   /var/lib/kvmlab/volumes/<volume>.raw     a thick volume (raw, fully allocated with fallocate)
 *   /var/lib/kvmlab/records/volume/<volume>.json   its record (size, provisioning, attachment)
 */
import { checkName, showValue } from "./names";
import { KVMLAB_STATE_DIR } from "./paths";

/** Root of the volume store on every host. */
export const VOLUME_STORE = `${KVMLAB_STATE_DIR}/volumes`;

/** thin: qcow2, allocated as the guest writes; thick: raw, every byte allocated at create. */
export const VOLUME_PROVISIONING = ["thin", "thick"] as const;
export type VolumeProvisioning = (typeof VOLUME_PROVISIONING)[number];

/** Sizes in GiB a volume may have (Cinder counts whole GiB too). */
export const VOLUME_SIZE_GIB = { min: 1, max: 1024 } as const;

/** Device names an attached volume may get: vdb..vdz (vda is the server's boot disk). */
export const VOLUME_DEVICES: readonly string[] = "bcdefghijklmnopqrstuvwxyz".split("").map((c) => `vd${c}`);

/** The disk format of a provisioning: thin → qcow2, thick → raw. */
export function volumeFormat(p: VolumeProvisioning): "qcow2" | "raw" {
  return p === "thin" ? "qcow2" : "raw";
}

/** The volume's file on its host; throws when the name breaks the name rule. */
export function volumePath(volumeName: string, p: VolumeProvisioning): string {
  const e = checkName("volumeName", volumeName);
  if (e) throw new Error(e);
  return `${VOLUME_STORE}/${volumeName}.${volumeFormat(p)}`;
}

/** "sizeGiB" reason for a bad size, else undefined. */
export function checkVolumeSize(field: string, v: unknown): string | undefined {
  return typeof v === "number" && Number.isInteger(v) && v >= VOLUME_SIZE_GIB.min && v <= VOLUME_SIZE_GIB.max
    ? undefined
    : `${field}: expected a size in GiB, an integer ${VOLUME_SIZE_GIB.min}-${VOLUME_SIZE_GIB.max}, got ${showValue(v)}`;
}

/** Reason a size change is refused (volumes grow, never shrink), else undefined. */
export function checkVolumeGrowth(field: string, oldGiB: number, newGiB: number): string | undefined {
  return newGiB < oldGiB
    ? `${field}: a volume never shrinks (it has ${oldGiB} GiB, asked ${newGiB} GiB; shrinking would cut off what the guest wrote there): keep ${field} >= ${oldGiB}, or create a new, smaller volume and copy the data`
    : undefined;
}

/**
 * The device an attachment gets: `current` (the one it had) while free, else the first of
 * vdb..vdz the domain does not use. Deterministic for a given domain. `undefined` when all 25
 * are taken.
 */
export function chooseVolumeDevice(used: readonly string[], current = ""): string | undefined {
  if (current !== "" && VOLUME_DEVICES.includes(current) && !used.includes(current)) return current;
  return VOLUME_DEVICES.find((d) => !used.includes(d));
}

/** A libvirt disk serial for the volume (what the guest sees in /sys/block/vdX/serial): ≤ 20 characters. */
export function volumeSerial(volumeName: string): string {
  return volumeName.slice(0, 20);
}

/** Quota charge of a volume (Cinder's `volumes` and `gigabytes`). */
export function volumeUsage(sizeGiB: number): { volumes: number; gigabytes: number } {
  return { volumes: 1, gigabytes: sizeGiB };
}

export interface VolumeDiskSpec {
  /** The volume's name (the disk's serial). */
  readonly volumeName: string;
  /** Its file on the host. */
  readonly path: string;
  readonly format: "qcow2" | "raw";
  /** vdb..vdz. */
  readonly device: string;
}

/**
 * The libvirt `<disk>` element of an attached volume (what `virsh attach-device --live --config`
 * takes): a file disk in the volume's format on the virtio bus at `device`, with the volume's
 * name as its serial (the guest sees it in /sys/block/vdX/serial). Every field is validated
 * (nothing reaches the XML that could leave its attribute); throws naming the field.
 */
export function volumeDiskXml(spec: VolumeDiskSpec): string {
  const bad = checkName("volumeName", spec.volumeName);
  if (bad) throw new Error(bad);
  if (
    !/^(?:\/[A-Za-z0-9._+-]+)+$/.test(spec.path) ||
    spec.path.split("/").some((p) => p === "." || p === "..")
  )
    throw new Error(
      `path: expected an absolute path of letters, digits and ._+-, got ${showValue(spec.path)}`,
    );
  if (spec.format !== "qcow2" && spec.format !== "raw")
    throw new Error(`format: expected qcow2 or raw, got ${showValue(spec.format)}`);
  if (!VOLUME_DEVICES.includes(spec.device))
    throw new Error(`device: expected vdb..vdz, got ${showValue(spec.device)}`);
  return [
    "<disk type='file' device='disk'>",
    `  <driver name='qemu' type='${spec.format}'/>`,
    `  <source file='${spec.path}'/>`,
    `  <target dev='${spec.device}' bus='virtio'/>`,
    `  <serial>${volumeSerial(spec.volumeName)}</serial>`,
    "</disk>",
    "",
  ].join("\n");
}
