/**
 * Volume component: a Cinder-style volume on one host of the lab, optionally attached to a
 * server on that host. It resolves the hosts (components/hosts.ts) and wires one provider
 * Volume; attaching, detaching, moving the attachment and growing are updates (no reboot).
 *
 * ```ts
 * const data = new Volume("data", { sizeGiB: 2, provisioning: "thick", server: db });
 * const scratch = new Volume("scratch", { host: "hv1", sizeGiB: 1 }); // detached
 * ```
 *
 * `host` defaults to the server's host. Give it explicitly when the attachment may move later:
 * a volume's host is where its data lives, and a new host is a new (empty) volume.
 */
import * as pulumi from "@pulumi/pulumi";
import { Volume as VolumeResource, type VolumeArgs as VolumeResourceArgs } from "../provider/volume";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";
import type { Image } from "./image";
import type { Server } from "./server";

export interface VolumeArgs extends Omit<VolumeResourceArgs, "hosts" | "host" | "image" | "server"> {
  /** Host the volume lives on. @default the server's host (required without a server) */
  readonly host?: pulumi.Input<string>;
  /** An Image component (or image name) whose disk the volume starts as a copy of. @default blank */
  readonly image?: Image | pulumi.Input<string>;
  /** The Server component (or server name) to attach to. @default detached */
  readonly server?: Server | pulumi.Input<string>;
  /** @default every host (kvmlab:hosts, else the running sandbox) */
  readonly hosts?: readonly HostSpec[];
  readonly hostDiscovery?: ResolveHostsOptions;
}

function isServer(v: unknown): v is Server {
  return typeof v === "object" && v !== null && "server" in v && "host" in v && "uuid" in v;
}

function isImage(v: unknown): v is Image {
  return typeof v === "object" && v !== null && "image" in v && "imageName" in v;
}

export class Volume extends pulumi.ComponentResource {
  /** The dynamic resource (for dependsOn and its other outputs). */
  public readonly volume: VolumeResource;
  /** The host the volume lives on. */
  public readonly host: pulumi.Output<string>;
  /** The device the guest sees (vdb..vdz), "" while detached. */
  public readonly device: pulumi.Output<string>;
  /** The volume's file on its host. */
  public readonly path: pulumi.Output<string>;

  constructor(name: string, args: VolumeArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("kvmlab:storage:Volume", name, {}, opts);
    const { hosts: specs, hostDiscovery, host, image, server, ...rest } = args;
    const hosts = resolveHosts(specs, hostDiscovery).hosts;
    const serverName = isServer(server) ? server.server.serverName : (server ?? "");
    const place = host ?? (isServer(server) ? server.host : undefined);
    if (place === undefined)
      throw new pulumi.ResourceError(
        `volume ${name}: host: a volume without a server needs host (the host it lives on); give host, or server`,
        this,
      );
    this.volume = new VolumeResource(
      name,
      {
        ...rest,
        hosts,
        host: place,
        image: isImage(image) ? image.imageName : (image ?? ""),
        server: serverName,
      },
      {
        parent: this,
        dependsOn: [...(isServer(server) ? [server.server] : []), ...(isImage(image) ? [image.image] : [])],
      },
    );
    this.host = this.volume.host;
    this.device = this.volume.device;
    this.path = this.volume.path;
    this.registerOutputs({ host: this.host, device: this.device, path: this.path });
  }
}
