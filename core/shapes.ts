/**
 * Shapes more than one layer shares: what a Server is given for its image and flavor (the
 * templates render the domain XML from them, the Server provider checks and records them). Pure.
 */
import type { DiskFormat } from "./paths";

export type ImageKind = "disk" | "kernel";

/**
 * The whole flavor as a server is given it (the Flavor resource's fields; limits in
 * core/flavor.ts). The Server provider keeps it in a canonical form that leaves out zero
 * ephemeral/swap and empty extra specs, so state written before these fields existed compares
 * equal.
 */
export interface ServerFlavor {
  name: string;
  vcpus: number;
  ramMiB: number;
  /** Root disk size; 0 keeps the image's size. Ignored for kernel images without a disk. */
  diskGiB: number;
  /** Ephemeral disk; kvmlab servers have none, so anything but 0 is refused. @default 0 */
  ephemeralGiB?: number;
  /** Swap disk; kvmlab servers have none, so anything but 0 is refused. @default 0 */
  swapMiB?: number;
  /** Nova extra specs; core/flavor.ts `flavorDomainSettings` maps them into the domain XML or refuses them. @default {} */
  extraSpecs?: Record<string, string>;
}

/** Where the image's files are in every host's image store. */
export interface ServerImage {
  name: string;
  kind: ImageKind;
  /** Disk image (qcow2/raw) the overlay is based on; "" for kernel images. */
  disk: string;
  format: DiskFormat;
  /** Kernel and ramdisk for direct kernel boot; "" for disk images. */
  kernel: string;
  ramdisk: string;
}
