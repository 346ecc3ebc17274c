/**
 * Image component: a Glance-style image on every host of the lab unless told otherwise. It
 * resolves the hosts (components/hosts.ts: explicit, `kvmlab:hosts`, or the running sandbox)
 * and wires one provider Image, so a program does not have to pass hosts around.
 *
 * ```ts
 * const cirros = new Image("cirros", {
 *   source: { localPath: "images/cirros-0.6.2-x86_64-disk.img", sha256: "…" },
 *   diskFormat: "qcow2",
 * });
 * const tiny = new Image("tiny", {
 *   kernel: { hostPath: "/boot/vmlinuz", sha256: "…" },
 *   ramdisk: { localPath: "initrd.gz", sha256: "…" },
 *   kernelCmdline: "console=ttyS0",
 * });
 * ```
 */
import * as pulumi from "@pulumi/pulumi";
import { Image as ImageResource, type ImageArgs as ImageResourceArgs } from "../provider/image";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";

export interface ImageArgs extends Omit<ImageResourceArgs, "hosts"> {
  /** Hosts that need the image. @default every host (kvmlab:hosts, else the running sandbox) */
  readonly hosts?: readonly HostSpec[];
  /** Names of the hosts (among the resolved ones) that need it. @default all of them */
  readonly onHosts?: readonly string[];
  /** Options for host discovery when `hosts` is not given. */
  readonly hostDiscovery?: ResolveHostsOptions;
}

export class Image extends pulumi.ComponentResource {
  /** Name in the image store. */
  public readonly imageName: pulumi.Output<string>;
  /** "qcow2", "raw" or "kernel". */
  public readonly format: pulumi.Output<"qcow2" | "raw" | "kernel">;
  /** Disk path on every host ("" for kernel images). */
  public readonly diskPath: pulumi.Output<string>;
  public readonly kernelPath: pulumi.Output<string>;
  public readonly ramdiskPath: pulumi.Output<string>;
  public readonly kernelCmdline: pulumi.Output<string>;
  public readonly sha256: pulumi.Output<string>;
  /** The underlying dynamic resource (for dependsOn and its other outputs). */
  public readonly image: ImageResource;

  constructor(name: string, args: ImageArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("kvmlab:image:Image", name, {}, opts);
    const { hosts: specs, onHosts, hostDiscovery, ...rest } = args;
    let hosts = resolveHosts(specs, hostDiscovery).hosts;
    if (onHosts !== undefined) {
      const known = new Set(hosts.map((h) => h.name as string));
      const unknown = onHosts.filter((n) => !known.has(n));
      if (unknown.length > 0 || onHosts.length === 0) {
        throw new pulumi.ResourceError(
          `onHosts: ${onHosts.length === 0 ? "is empty" : `${JSON.stringify(unknown)} not among the hosts`}; use names from ${JSON.stringify([...known])} or leave onHosts out for all hosts`,
          this,
        );
      }
      hosts = hosts.filter((h) => onHosts.includes(h.name as string));
    }
    this.image = new ImageResource(name, { ...rest, hosts }, { parent: this });
    this.imageName = this.image.imageName;
    this.format = this.image.format;
    this.diskPath = this.image.diskPath;
    this.kernelPath = this.image.kernelPath;
    this.ramdiskPath = this.image.ramdiskPath;
    this.kernelCmdline = this.image.kernelCmdline;
    this.sha256 = this.image.sha256;
    this.registerOutputs({
      imageName: this.imageName,
      format: this.format,
      diskPath: this.diskPath,
      kernelPath: this.kernelPath,
      ramdiskPath: this.ramdiskPath,
      sha256: this.sha256,
    });
  }
}
