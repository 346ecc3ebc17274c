/**
 * The libvirt `<disk>` element of an attached volume (what `virsh attach-device --live --config`
 * takes): a file disk in the volume's format on the virtio bus, at the device the attachment
 * chose (vdb..vdz), with the volume's name as its serial (the guest sees it in
 * /sys/block/vdX/serial), and the same `<disk>` inside a minimal domain for virt-xml-validate.
 *
 * Pure: no I/O. The element is built in core/volume.ts (the provider may not import templates/);
 * every field is validated there; errors name the field.
 */
import { volumeDiskXml, type VolumeDiskSpec } from "../core/volume";

export type { VolumeDiskSpec };

/** The `<disk>` element (no XML declaration), validated (core/volume.ts builds it for the provider too). */
export function renderVolumeDisk(spec: VolumeDiskSpec): string {
  return volumeDiskXml(spec);
}

/** A minimal domain holding `disk`, for virt-xml-validate (it validates whole documents). */
export function domainWithDisk(disk: string): string {
  const indented = disk
    .trimEnd()
    .split("\n")
    .map((l) => `    ${l}`)
    .join("\n");
  return [
    "<domain type='qemu'>",
    "  <name>volume-check</name>",
    "  <memory unit='MiB'>128</memory>",
    "  <os><type arch='x86_64'>hvm</type></os>",
    "  <devices>",
    indented,
    "  </devices>",
    "</domain>",
    "",
  ].join("\n");
}
