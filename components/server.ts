/**
 * Server component: one guest the way a user thinks of a Nova server. It resolves the hosts,
 * renders the domain XML (for both domain types: the provider picks the one the chosen host
 * runs, kvm where usable, else qemu) and the NoCloud seed files in the program, and wires one
 * Server dynamic resource, which places, builds, resizes, migrates and powers it.
 *
 * ```ts
 * const web = new Server("web1", {
 *   image: { name: "cirros", kind: "disk", ...imageStorePaths("cirros", "disk", "qcow2") },
 *   flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128, diskGiB: 1 },
 *   ports: [{ network: lan, subnet: "lan-v4" }],
 *   keypair: key,
 * });
 * export const ip = web.ip;
 * ```
 */
import * as pulumi from "@pulumi/pulumi";
import {
  Server as ServerResource,
  type PowerState,
  type Readiness,
  type ServerFlavor,
  type ServerImage,
  type ServerPort,
} from "../provider/server";
import { renderServer, serverUuidSeed, type ServerUserData } from "../templates/server";
import { deterministicIfName } from "../templates/validate";
import { domainBridgeOf } from "../provider/server/hybrid";
import { Flavor } from "../provider/flavor";
import { SecurityGroupPort, type SecurityGroup } from "../provider/securityGroup";
import { Image } from "../provider/image";
import { Image as ImageComponent } from "./image";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";
import type { Network } from "./network";
import { resolveProject, type ProjectRef } from "../provider/kit";
import { MANAGEMENT_LISTEN } from "../core/vncListen";

// The pure pieces a program may want beside the component (defined in core/ and templates/).
export { imageStorePaths } from "../core/paths";
export {
  renderServer,
  serverUuidSeed,
  type ServerRenderInput,
  type ServerUserData,
} from "../templates/server";

/** One NIC of a {@link Server}. */
export interface ServerPortArgs {
  /** The network component the NIC joins. */
  readonly network: Network;
  /** Name of the network's subnet the address comes from. */
  readonly subnet: string;
  /** Fixed address in the subnet (served by DHCP to this port). @default the pool's next free address */
  readonly fixedIp?: string;
  /**
   * Security groups of the port (Neutron's default deny ingress, stateful, anti-spoofing): the
   * component creates a SecurityGroupPort `<server>-<index>` wired to the server's host, tap, MAC
   * and address. Changing the groups or a group's rules updates only that port's rules; the
   * guest is never rebooted. On an OVS network, giving the key (even `[]`) puts the port in
   * Neutron's hybrid layout: the tap joins a per-port Linux bridge qbr<id> linked to OVS
   * (docs/networking.md). That is plumbing the guest boots with, so adding the key to an OVS
   * port later replaces the server; changing the list afterwards (to `[]` too) does not.
   * @default none (the port is unfiltered)
   */
  readonly securityGroups?: readonly SecurityGroup[];
}

/** An image by its files in the hosts' image store. */
export interface ServerImageArgs {
  readonly name: pulumi.Input<string>;
  readonly kind: pulumi.Input<"disk" | "kernel">;
  readonly disk?: pulumi.Input<string>;
  readonly format?: pulumi.Input<"qcow2" | "raw">;
  readonly kernel?: pulumi.Input<string>;
  readonly ramdisk?: pulumi.Input<string>;
}

/** A flavor: its sizes and extra specs (the same fields as the Flavor resource). */
export interface ServerFlavorArgs {
  readonly name: pulumi.Input<string>;
  readonly vcpus: pulumi.Input<number>;
  readonly ramMiB: pulumi.Input<number>;
  readonly diskGiB?: pulumi.Input<number>;
  /** Servers have no ephemeral disk: anything but 0 is refused. @default 0 */
  readonly ephemeralGiB?: pulumi.Input<number>;
  /** Servers have no swap disk: anything but 0 is refused. @default 0 */
  readonly swapMiB?: pulumi.Input<number>;
  /** Nova extra specs: mapped into the domain XML, or refused naming the key (core/flavor.ts). @default {} */
  readonly extraSpecs?: pulumi.Input<Record<string, pulumi.Input<string>>>;
}

export interface ServerArgs {
  /** Name of the domain on the host. @default the component name */
  readonly serverName?: string;
  /** Image in the hosts' image store: an Image component or resource, or its paths ({@link imageStorePaths}). */
  readonly image: ImageComponent | Image | pulumi.Input<ServerImageArgs>;
  /** The whole flavor (sizes and extra specs): a Flavor resource or a literal; changing it is a cold resize. */
  readonly flavor: Flavor | pulumi.Input<ServerFlavorArgs>;
  /** NICs, in guest order (eth0, eth1…). @default none */
  readonly ports?: readonly ServerPortArgs[];
  /** Public key for the guest user (a Keypair's `publicKeyLine`). @default none */
  readonly keypair?: { readonly publicKeyLine: pulumi.Input<string> };
  /** Guest user that gets the key. @default "kvmlab" */
  readonly userName?: string;
  /** cloud-init user data; a change replaces the server. @default none */
  readonly userData?: ServerUserData;
  /** Build a NoCloud seed ISO. @default true */
  readonly cloudInit?: boolean;
  /** Kernel command line for kernel images. @default "console=ttyS0" */
  readonly kernelCmdline?: pulumi.Input<string>;
  /** Pin to a host; changing it later live-migrates the server. @default placement decides once */
  readonly host?: pulumi.Input<string>;
  /** Restrict placement to the hosts of this zone (see `availabilityZones`). @default any host */
  readonly availabilityZone?: string;
  /** Zones: name → host names. @default none */
  readonly availabilityZones?: Readonly<Record<string, readonly string[]>>;
  /** @default "running" */
  readonly powerState?: pulumi.Input<PowerState>;
  /** When the server counts as up. @default DHCP lease of the first port (none without ports) */
  readonly readiness?: Partial<Readiness>;
  /**
   * Address the VNC console listens on. "management": the management address of the host
   * placement picks (filled in by the provider; a migration moves it), what a ConsoleProxy
   * needs. @default "management" with `consoleProxy`, else "127.0.0.1": the console has no
   * password, so by default it is reachable only on the host itself (through SSH). "0.0.0.0"
   * opens it to every network the host is on.
   */
  readonly consoleListen?: string;
  /**
   * The ConsoleProxy that serves this server's console: the console then listens on the placed
   * host's management address (never on loopback or another network). @default none
   */
  readonly consoleProxy?: pulumi.Resource;
  /** Owning project (a Project, its `recordId` or a name): its quotas are enforced at create and resize. @default the stack's `kvmlab:project`, else none */
  readonly project?: ProjectRef;
  /** User the `consoleCommand` output names (the stack's current user). @default "admin" */
  readonly consoleUser?: string;
  /** Hosts. @default kvmlab:hosts, else the running sandbox's hosts */
  readonly hosts?: readonly HostSpec[];
  readonly hostDiscovery?: ResolveHostsOptions;
}

/** Hosts allowed by the zone (pure). */
export function hostsInZone(
  hostNames: readonly string[],
  zone: string | undefined,
  zones: Readonly<Record<string, readonly string[]>> | undefined,
): string[] {
  if (zone === undefined) return [...hostNames];
  const members = zones?.[zone];
  if (!members)
    throw new Error(
      `availabilityZone: zone ${JSON.stringify(zone)} is not defined; define it in availabilityZones (zone name → host names)`,
    );
  const inZone = hostNames.filter((h) => members.includes(h));
  if (inZone.length === 0)
    throw new Error(
      `availabilityZone: zone ${JSON.stringify(zone)} has none of the hosts ${hostNames.join(", ")}; fix availabilityZones`,
    );
  return inZone;
}

export class Server extends pulumi.ComponentResource {
  /** The dynamic resource (for dependsOn). */
  public readonly server: ServerResource;
  /** Address of the first port. */
  public readonly ip: pulumi.Output<string>;
  public readonly ips: pulumi.Output<string[]>;
  /** Host the server runs on. */
  public readonly host: pulumi.Output<string>;
  /** `vnc://<host address>:<port>` of the VNC console. */
  public readonly consoleUrl: pulumi.Output<string>;
  /** `kvmlab console <server> --user <consoleUser>`: prints a noVNC URL with an expiring token. */
  public readonly consoleCommand: pulumi.Output<string>;
  public readonly uuid: pulumi.Output<string>;
  public readonly serialLog: pulumi.Output<string>;
  /** The SecurityGroupPort of each port that has security groups (undefined for the others). */
  public readonly securityGroupPorts: readonly (SecurityGroupPort | undefined)[];

  constructor(name: string, args: ServerArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("kvmlab:compute:Server", name, {}, opts);
    const serverName = args.serverName ?? name;
    const hosts = resolveHosts(args.hosts, args.hostDiscovery).hosts;
    let pin = args.host;
    if (args.availabilityZone !== undefined) {
      // A zone narrows placement to its hosts; until placement takes a candidate list, a zone
      // must name exactly one of the hosts (or the server must be pinned inside it).
      let allowed: string[];
      try {
        allowed = hostsInZone(
          hosts.map((h) => h.name as string),
          args.availabilityZone,
          args.availabilityZones,
        );
      } catch (err) {
        throw new pulumi.ResourceError((err as Error).message, this);
      }
      if (pin === undefined && allowed.length === 1) pin = allowed[0];
      else if (pin === undefined) {
        throw new pulumi.ResourceError(
          `availabilityZone: zone ${args.availabilityZone} has several hosts (${allowed.join(", ")}); pin one of them with host`,
          this,
        );
      }
    }
    const ports = args.ports ?? [];
    for (const [i, p] of ports.entries()) {
      if (!p.network.subnets[p.subnet]) {
        throw new pulumi.ResourceError(
          `ports[${i}].subnet: the network has no subnet ${JSON.stringify(p.subnet)}; use one of ${Object.keys(p.network.subnets).join(", ")}`,
          this,
        );
      }
    }
    const project = pulumi.getProject();
    const stack = pulumi.getStack();
    const uuidSeed = serverUuidSeed(project, stack, serverName);
    const portInfo = pulumi.all(
      ports.map((p) => {
        const subnet = p.network.subnets[p.subnet];
        return pulumi.all([
          p.network.networkName,
          subnet.subnetName,
          p.network.bridge,
          p.network.network.driver,
          p.network.network.mtu,
          subnet.dhcpHost,
          subnet.enableDhcp,
        ]);
      }),
    );
    // The Image component wraps the resource; both give the paths the resource resolved.
    const imageArg = args.image instanceof ImageComponent ? args.image.image : args.image;
    const image: pulumi.Input<ServerImageArgs> =
      imageArg instanceof Image
        ? {
            name: imageArg.imageName,
            kind: imageArg.format.apply((f) => (f === "kernel" ? ("kernel" as const) : ("disk" as const))),
            disk: imageArg.diskPath,
            format: imageArg.diskFormat.apply((f) => (f === "raw" ? ("raw" as const) : ("qcow2" as const))),
            kernel: imageArg.kernelPath,
            ramdisk: imageArg.ramdiskPath,
          }
        : (imageArg as pulumi.Input<ServerImageArgs>);
    const flavor: pulumi.Input<ServerFlavorArgs> =
      args.flavor instanceof Flavor
        ? {
            name: args.flavor.flavorName,
            vcpus: args.flavor.vcpus,
            ramMiB: args.flavor.ramMiB,
            diskGiB: args.flavor.diskGiB,
            ephemeralGiB: args.flavor.ephemeralGiB,
            swapMiB: args.flavor.swapMiB,
            extraSpecs: args.flavor.extraSpecs,
          }
        : (args.flavor as pulumi.Input<ServerFlavorArgs>);
    // OVS ports with a securityGroups key use Neutron's hybrid layout (server/hybrid.ts); the
    // qbr name comes from the tap, which renderServer derives from the same seed.
    const hybridAt = (i: number, driver: string): boolean =>
      driver === "openvswitch" && ports[i].securityGroups !== undefined;
    const qbrAt = (i: number, bridge: string): string =>
      domainBridgeOf({ bridge, tap: deterministicIfName("tap", `${uuidSeed}/port${i}`), hybrid: true });
    // The identity project (the argument or the stack's kvmlab:project), resolved once: the XML's
    // metadata and the Server resource's `project` input are the same value.
    const projectRef = resolveProject(args.project);
    const rendered = pulumi
      .all([
        image,
        flavor,
        portInfo,
        args.kernelCmdline ?? "console=ttyS0",
        args.keypair?.publicKeyLine ?? "",
        projectRef,
      ])
      .apply(([image, flavor, pinfo, cmdline, publicKey, identityProject]) => {
        const img: ServerImage = {
          name: image.name,
          kind: image.kind,
          disk: image.disk ?? "",
          format: image.format ?? "qcow2",
          kernel: image.kernel ?? "",
          ramdisk: image.ramdisk ?? "",
        };
        const fl: ServerFlavor = {
          name: flavor.name,
          vcpus: flavor.vcpus,
          ramMiB: flavor.ramMiB,
          diskGiB: flavor.diskGiB ?? 0,
          ephemeralGiB: flavor.ephemeralGiB ?? 0,
          swapMiB: flavor.swapMiB ?? 0,
          extraSpecs: { ...(flavor.extraSpecs ?? {}) },
        };
        let r: ReturnType<typeof renderServer>;
        try {
          r = renderServer({
            serverName,
            uuidSeed,
            lab: safeName(project),
            stack: safeName(stack),
            // The identity project as the Server resource gets it (issue 14); the provider
            // adds the owner to the metadata.
            project: identityProject,
            image: img,
            flavor: fl,
            // A hybrid port's tap joins its qbr bridge (a plain Linux bridge in the XML).
            ports: pinfo.map(([networkName, subnetName, bridge, driver, mtu], i) =>
              hybridAt(i, driver)
                ? { networkName, subnetName, bridge: qbrAt(i, bridge), driver: "linuxbridge" as const, mtu }
                : { networkName, subnetName, bridge, driver, mtu },
            ),
            kernelCmdline: cmdline,
            cloudInit: args.cloudInit ?? true,
            publicKeys: publicKey ? [publicKey] : [],
            userName: args.userName ?? "kvmlab",
            userData: args.userData ?? {},
            consoleListen: args.consoleListen ?? (args.consoleProxy ? MANAGEMENT_LISTEN : "127.0.0.1"),
          });
        } catch (err) {
          throw new pulumi.ResourceError(`server ${serverName}: ${(err as Error).message}`, this);
        }
        const serverPorts: ServerPort[] = pinfo.map(
          ([networkName, subnetName, bridge, driver, , dhcpHost, dhcp], i) => ({
            networkName,
            subnetName,
            dhcpHost,
            dhcp,
            bridge,
            driver,
            mac: r.macs[i],
            tap: r.taps[i],
            fixedIp: ports[i].fixedIp ?? "",
            ...(hybridAt(i, driver) ? { hybrid: true } : {}),
          }),
        );
        // The qbr the XML names must be the one the provider plumbs (named from the rendered tap).
        for (const [i, [, , bridge, driver]] of pinfo.entries())
          if (
            hybridAt(i, driver) &&
            qbrAt(i, bridge) !== domainBridgeOf({ bridge, tap: r.taps[i], hybrid: true })
          )
            throw new pulumi.ResourceError(
              `server ${serverName}: ports[${i}]: the rendered tap ${r.taps[i]} is not the one its qbr bridge was named after (templates/server.ts changed how taps are named)`,
              this,
            );
        return { ...r, image: img, flavor: fl, ports: serverPorts };
      });

    this.server = new ServerResource(
      name,
      {
        serverName,
        uuid: rendered.uuid,
        hosts,
        host: pin ?? "",
        flavor: rendered.flavor,
        image: rendered.image,
        ports: rendered.ports,
        domainXml: rendered.domainXml,
        cloudInit: rendered.cloudInit,
        powerState: args.powerState ?? "running",
        readiness: { kind: ports.length > 0 ? "dhcp" : "none", ...(args.readiness ?? {}) },
        project: projectRef,
      },
      { parent: this },
    );
    this.ips = this.server.ips;
    this.ip = this.server.ips.apply((ips) => ips[0] ?? "");
    this.host = this.server.host;
    this.consoleUrl = this.server.consoleUrl;
    this.consoleCommand = this.server.serverName.apply(
      (n) => `kvmlab console ${n} --user ${args.consoleUser ?? "admin"}`,
    );
    this.uuid = this.server.uuid;
    this.serialLog = this.server.serialLog;
    // Security groups: one SecurityGroupPort per port with groups, fed by the Server's outputs (so
    // it is applied on the host the server landed on, after the guest has its tap: on OVS, in the
    // qbr bridge the Server made). The groups are not Server inputs: changing them never touches
    // (or reboots) the guest.
    // An unpinned server's host is "" until placement: during preview it is unknown (the port's
    // check would refuse "" as no host), at up the host the Server was placed on.
    const placedHost = this.server.host.apply((h) =>
      h === "" && pulumi.runtime.isDryRun() ? (pulumi.unknown as unknown as string) : h,
    );
    this.securityGroupPorts = ports.map((p, i) => {
      const groups = p.securityGroups;
      if (!groups || groups.length === 0) return undefined;
      const portName = `${serverName}-${i}`;
      const serverPort = this.server.ports.apply((sp) => sp[i]);
      return new SecurityGroupPort(
        `${name}-port${i}`,
        {
          portName,
          hosts,
          host: placedHost,
          tap: serverPort.apply((sp) => sp.tap),
          mac: serverPort.apply((sp) => sp.mac),
          ip: this.server.ips.apply((ips) => ips[i] ?? ""),
          driver: p.network.network.driver,
          networkBridge: p.network.bridge,
          groups: groups.map((g) => ({ groupName: g.groupName, rules: g.rules })),
        },
        { parent: this },
      );
    });
    this.registerOutputs({
      ip: this.ip,
      ips: this.ips,
      host: this.host,
      consoleUrl: this.consoleUrl,
      consoleCommand: this.consoleCommand,
      uuid: this.uuid,
    });
  }
}

/** Project and stack names as metadata names (letters, digits, "_.-"). */
function safeName(s: string): string {
  const cleaned = s.replace(/[^A-Za-z0-9_.-]/g, "-").replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, "");
  return cleaned === "" ? "default" : cleaned.slice(0, 63);
}
