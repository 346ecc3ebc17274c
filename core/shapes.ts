/**
 * Shapes more than one layer shares: what a Server is given for its image and flavor (the
 * templates render the domain XML from them, the Server provider checks and records them). Pure.
 */
import type { DiskFormat } from "./paths";

export type ImageKind = "disk" | "kernel";

/** The flavor's sizes as the server uses them. */
export interface ServerFlavor {
  name: string;
  vcpus: number;
  ramMiB: number;
  /** Root disk size; 0 keeps the image's size. Ignored for kernel images without a disk. */
  diskGiB: number;
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
