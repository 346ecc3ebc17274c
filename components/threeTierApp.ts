/**
 * ThreeTierApp component: the classic 3-tier lab in one call. A web tier behind a public load
 * balancer with a floating IP, a WAS tier behind an internal load balancer, a database server, a
 * bastion with a floating IP, and security groups that allow only web←any:80/443, WAS←web:8080,
 * DB←WAS:3306 and SSH←bastion (templates/threeTier.ts).
 *
 * ```ts
 * const app = new ThreeTierApp("shop", {
 *   image, flavor, keypair: key, router, external: { network: ext, subnet: "ext-v4" },
 *   web: { network: web, subnet: "web-v4", vipAddress: "10.30.1.5", members: ["10.30.1.11", "10.30.1.12"] },
 *   was: { network: was, subnet: "was-v4", vipAddress: "10.30.2.5", members: ["10.30.2.11", "10.30.2.12"] },
 *   db: { network: db, subnet: "db-v4", address: "10.30.3.11" },
 *   bastion: { network: mgmt, subnet: "mgmt-v4", address: "10.30.9.11" },
 *   guestRoles: true, // the sandbox guest image: each member behaves like its tier
 * });
 * export const url = app.webUrl;
 * ```
 *
 * A tier is a fixed set of servers (`members`, with fixed addresses: the security groups'
 * remote-group sets are known before any server exists). The router must have a leg on every
 * tier's subnet and its gateway on `external`. `securityGroups` on a tier replaces the app's
 * own groups for that tier (the lab program passes the lab's groups that way). See docs/three-tier.md.
 */
import * as pulumi from "@pulumi/pulumi";
import { FloatingIp } from "../provider/floatingIp";
import { Flavor } from "../provider/flavor";
import { Image } from "../provider/image";
import type { Router } from "../provider/router";
import { SecurityGroup } from "../provider/securityGroup";
import {
  proxyJumpCommand,
  threeTierGroupNames,
  threeTierRules,
  tierRoleArgs,
  TIER_PORTS,
  type TierRole,
} from "../templates/threeTier";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";
import { Image as ImageComponent } from "./image";
import { LoadBalancer, type ListenerArgs } from "./loadBalancer";
import type { Network } from "./network";
import { Server, type ServerArgs, type ServerFlavorArgs, type ServerImageArgs } from "./server";

export {
  proxyJumpCommand,
  sshKeyArg,
  threeTierRules,
  tierRoleArgs,
  TIER_PORTS,
} from "../templates/threeTier";

/** One server of a tier. */
export interface TierMemberArgs {
  /** @default `<app>-<tier>-<index>` */
  readonly name?: string;
  /** Fixed address in the tier's subnet. */
  readonly address: string;
  /** Pin to a host. @default the hosts round-robin */
  readonly host?: pulumi.Input<string>;
}

interface TierCommonArgs {
  /** The network and the name of its subnet the tier's ports (and VIP) are on. */
  readonly network: Network;
  readonly subnet: string;
  /** @default the app's image */
  readonly image?: ServerArgs["image"];
  /** @default the app's flavor */
  readonly flavor?: Flavor | pulumi.Input<ServerFlavorArgs>;
  /** Kernel command line before the role options. @default the app's */
  readonly kernelCmdline?: pulumi.Input<string>;
  /** Groups of the tier's ports instead of the app's own group for the tier. */
  readonly securityGroups?: readonly SecurityGroup[];
  /** cloud-init user data of the tier's servers. @default none */
  readonly userData?: ServerArgs["userData"];
  /** Owning project of the tier's servers (a Project's `recordId`). @default the app's */
  readonly project?: pulumi.Input<string>;
  /** The tier's key. @default the app's */
  readonly keypair?: { readonly publicKeyLine: pulumi.Input<string> };
  /** Guest user cloud-init gives the key to. @default the app's */
  readonly userName?: string;
}

/** A load-balanced tier: a fixed set of servers behind a load balancer. */
export interface ScaledTierArgs extends TierCommonArgs {
  /** The servers: their addresses, or {name, address, host}. */
  readonly members: readonly (string | TierMemberArgs)[];
  /** The load balancer's VIP on the tier's subnet. */
  readonly vipAddress: string;
  /** @default `<app>-<tier>-lb` */
  readonly loadBalancerName?: string;
  /** Host of the load balancer. @default the least loaded */
  readonly loadBalancerHost?: string;
  /**
   * Listeners instead of the app's default one (HTTP on the tier's port, ROUND_ROBIN, a health
   * monitor); the members are appended to the default pool of `memberListener`.
   */
  readonly listeners?: readonly ListenerArgs[];
  /** @default the first listener */
  readonly memberListener?: string;
  /** Port the members serve. @default 80 (web), 8080 (WAS) */
  readonly memberPort?: number;
  /** @default 1 */
  readonly memberWeight?: number;
  /** web: a fixed floating IP on the VIP. @default the lowest free one */
  readonly floatingIpAddress?: pulumi.Input<string>;
}

/** A single-server tier (the database, the bastion). */
export interface SingleTierArgs extends TierCommonArgs {
  /** @default `<app>-db` / `<app>-bastion` */
  readonly name?: string;
  readonly address: string;
  readonly host?: pulumi.Input<string>;
  /** bastion: a fixed floating IP. @default the lowest free one */
  readonly floatingIpAddress?: pulumi.Input<string>;
}

export interface ThreeTierAppArgs {
  readonly image: ServerArgs["image"];
  readonly flavor: Flavor | pulumi.Input<ServerFlavorArgs>;
  /** The operators' key: on every server (cloud-init; with `guestRoles`, dropbear's root key too). */
  readonly keypair?: { readonly publicKeyLine: pulumi.Input<string> };
  /** Router with a leg on every tier's subnet and its gateway on `external`. */
  readonly router: Router;
  /** The external network and subnet the floating IPs come from. */
  readonly external: { readonly network: Network; readonly subnet: string };
  readonly web: ScaledTierArgs;
  readonly was: ScaledTierArgs;
  readonly db: SingleTierArgs;
  readonly bastion: SingleTierArgs;
  /**
   * Append each member's tier role to its kernel command line (lab.role, lab.upstream, lab.db,
   * lab.sshkey: the sandbox guest test image's options), so web answers on 80 and forwards to the
   * WAS VIP, WAS answers on 8080 and queries the DB, the DB answers on 3306 and every member
   * accepts SSH with the keypair. @default false
   */
  readonly guestRoles?: boolean;
  /** Kernel command line before the role options. @default the Image's, else "console=ttyS0" */
  readonly kernelCmdline?: pulumi.Input<string>;
  /** Where SSH to the bastion may come from. @default "0.0.0.0/0" */
  readonly sshFrom?: string;
  /** User of the printed SSH commands. @default "root" with guestRoles, else "kvmlab" */
  readonly sshUser?: string;
  /** Guest user cloud-init gives the key to. @default "kvmlab" */
  readonly userName?: string;
  /** Owning project of every server (a Project's `recordId`). @default none */
  readonly project?: pulumi.Input<string>;
  /** Readiness of the servers. @default HTTP /health (web, WAS) or DHCP (DB, bastion) with guestRoles, else DHCP */
  readonly readinessTimeoutSec?: number;
  readonly hosts?: readonly HostSpec[];
  readonly hostDiscovery?: ResolveHostsOptions;
}

type Tier = "web" | "was";

export class ThreeTierApp extends pulumi.ComponentResource {
  public readonly web: Server[];
  public readonly was: Server[];
  public readonly db: Server;
  public readonly bastion: Server;
  public readonly webLoadBalancer: LoadBalancer;
  public readonly wasLoadBalancer: LoadBalancer;
  /** The app's own groups (those no tier replaced), by role. */
  public readonly securityGroups: Partial<Record<"bastion" | "web" | "was" | "wasLb" | "db", SecurityGroup>>;
  public readonly bastionFloatingIp: FloatingIp;
  /** `http://<web floating IP>/`. */
  public readonly webUrl: pulumi.Output<string>;
  public readonly webFloatingIp: pulumi.Output<string>;
  public readonly bastionAddress: pulumi.Output<string>;
  /** Server name → `ssh -o ProxyJump=<user>@<bastion> <user>@<address>` (the bastion: a direct ssh). */
  public readonly sshCommands: pulumi.Output<Record<string, string>>;
  /** Server name → `kvmlab console <server> …` (a noVNC URL with an expiring token). */
  public readonly consoleCommands: pulumi.Output<Record<string, string>>;
  /** Server name → `vnc://<host>:<port>`. */
  public readonly consoleUrls: pulumi.Output<Record<string, string>>;

  constructor(name: string, args: ThreeTierAppArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("kvmlab:app:ThreeTierApp", name, {}, opts);
    const hosts = resolveHosts(args.hosts, args.hostDiscovery).hosts;
    // Components resolve the same hosts themselves.
    const discovery = { hosts: args.hosts, hostDiscovery: args.hostDiscovery };
    const fail = (field: string, message: string): never => {
      throw new pulumi.ResourceError(`${field}: ${message}`, this);
    };
    for (const t of ["web", "was", "db", "bastion"] as const) {
      const tier = args[t];
      if (tier.network.subnets[tier.subnet] === undefined)
        fail(
          `${t}.subnet`,
          `the network has no subnet ${JSON.stringify(tier.subnet)}; use one of ${Object.keys(tier.network.subnets).join(", ")}`,
        );
    }
    for (const t of ["web", "was"] as const)
      if (args[t].members.length === 0) fail(`${t}.members`, "give at least one member (an address)");

    const members = (t: Tier): Required<Pick<TierMemberArgs, "name" | "address">>[] =>
      args[t].members.map((m, i) => {
        const spec = typeof m === "string" ? { address: m } : m;
        return { name: spec.name ?? `${name}-${t}-${i}`, address: spec.address };
      });
    const webMembers = members("web");
    const wasMembers = members("was");
    const dbName = args.db.name ?? `${name}-db`;
    const bastionName = args.bastion.name ?? `${name}-bastion`;

    // Security groups: the app's own for every tier that did not bring its own.
    const g = threeTierGroupNames(name);
    const rules = threeTierRules(g, args.sshFrom);
    const memberAddresses = {
      bastion: [args.bastion.address],
      web: webMembers.map((m) => m.address),
      was: wasMembers.map((m) => m.address),
      wasLb: [args.was.vipAddress],
      db: [args.db.address],
    };
    const own = {
      bastion: args.bastion.securityGroups === undefined,
      web: args.web.securityGroups === undefined,
      was: args.was.securityGroups === undefined,
      db: args.db.securityGroups === undefined,
    };
    // A rule naming a group needs the group's set first.
    const order: (keyof typeof memberAddresses)[] = ["bastion", "web", "wasLb", "was", "db"];
    const groupNeeded = {
      bastion: own.bastion || own.web || own.was || own.db,
      web: own.web || own.was,
      wasLb: own.was,
      was: own.was || own.db,
      db: own.db,
    };
    this.securityGroups = {};
    const made: SecurityGroup[] = [];
    for (const key of order) {
      if (!groupNeeded[key]) continue;
      const sg = new SecurityGroup(
        `${name}-${key === "wasLb" ? "was-lb" : key}`,
        {
          groupName: g[key],
          hosts,
          rules: rules[key].map((r) => ({ ...r })),
          members: memberAddresses[key],
        },
        { parent: this, dependsOn: [...made] },
      );
      this.securityGroups[key] = sg;
      made.push(sg);
    }
    const groupsOf = (t: "web" | "was" | "db" | "bastion"): SecurityGroup[] =>
      args[t].securityGroups !== undefined ? [...args[t].securityGroups!] : [this.securityGroups[t]!];

    const imageArg = args.image;
    const baseCmdline: pulumi.Input<string> =
      args.kernelCmdline ??
      (imageArg instanceof ImageComponent
        ? imageArg.kernelCmdline
        : imageArg instanceof Image
          ? imageArg.kernelCmdline
          : "console=ttyS0");
    const wasPort = args.was.memberPort ?? TIER_PORTS.was;
    const webPort = args.web.memberPort ?? TIER_PORTS.web;
    const hints = (role: TierRole, serverName: string) => ({
      role,
      name: serverName,
      ...(role === "web" ? { upstream: `${args.was.vipAddress}:${wasPort}` } : {}),
      ...(role === "was" ? { db: `${args.db.address}:${TIER_PORTS.db}` } : {}),
    });
    const cmdline = (role: TierRole, serverName: string, tier: TierCommonArgs): pulumi.Input<string> => {
      const base = tier.kernelCmdline ?? baseCmdline;
      if (args.guestRoles !== true) return base;
      const publicKey = (tier.keypair ?? args.keypair)?.publicKeyLine ?? "";
      return pulumi.all([base, publicKey]).apply(([b, key]) => {
        try {
          return `${b}${tierRoleArgs({ ...hints(role, serverName), sshPublicKey: key })}`;
        } catch (err) {
          throw new pulumi.ResourceError(`${role}: ${(err as Error).message}`, this);
        }
      });
    };
    const timeoutSec = args.readinessTimeoutSec ?? 300;
    const readiness = (role: TierRole): ServerArgs["readiness"] =>
      args.guestRoles === true && role === "web"
        ? { kind: "http", path: "/health", port: TIER_PORTS.web, timeoutSec }
        : args.guestRoles === true && role === "was"
          ? { kind: "http", path: "/health", port: TIER_PORTS.was, timeoutSec }
          : { kind: "dhcp", timeoutSec };
    const server = (
      role: TierRole,
      serverName: string,
      tier: TierCommonArgs,
      address: string,
      host: pulumi.Input<string> | undefined,
      deps: pulumi.Resource[],
    ): Server =>
      new Server(
        serverName,
        {
          image: tier.image ?? args.image,
          flavor: tier.flavor ?? args.flavor,
          keypair: tier.keypair ?? args.keypair,
          userName: tier.userName ?? args.userName,
          userData: tier.userData,
          ports: [
            { network: tier.network, subnet: tier.subnet, fixedIp: address, securityGroups: groupsOf(role) },
          ],
          kernelCmdline: cmdline(role, serverName, tier),
          host,
          readiness: readiness(role),
          project: tier.project ?? args.project,
          ...discovery,
        },
        { parent: this, dependsOn: deps },
      );
    // Unpinned members are spread over the hosts round-robin (each tier starting one host further),
    // so a tier survives the loss of a host (placement alone may put a whole tier on one host).
    const hostNames = hosts.map((h) => h.name as string);
    const spread = (offset: number, i: number): string => hostNames[(offset + i) % hostNames.length];
    const hostOf = (t: Tier, i: number): pulumi.Input<string> | undefined => {
      const m = args[t].members[i];
      return (typeof m === "string" ? undefined : m.host) ?? spread(t === "web" ? 0 : 1, i);
    };

    this.db = server("db", dbName, args.db, args.db.address, args.db.host ?? spread(1, 0), []);
    this.bastion = server(
      "bastion",
      bastionName,
      args.bastion,
      args.bastion.address,
      args.bastion.host ?? spread(0, 0),
      [],
    );
    this.was = wasMembers.map((m, i) => server("was", m.name, args.was, m.address, hostOf("was", i), []));
    this.wasLoadBalancer = this.loadBalancer(
      "was",
      name,
      args.was,
      wasMembers,
      wasPort,
      discovery,
      undefined,
    );
    // Nothing waits for anything else: a web member answers /health on its own, and a load
    // balancer marks members up when its health monitor first reaches them.
    this.web = webMembers.map((m, i) => server("web", m.name, args.web, m.address, hostOf("web", i), []));
    this.webLoadBalancer = this.loadBalancer("web", name, args.web, webMembers, webPort, discovery, {
      router: args.router,
      external: args.external.network,
      subnet: args.external.subnet,
      address: args.web.floatingIpAddress,
    });

    const extSub = args.external.network.subnets[args.external.subnet];
    if (extSub === undefined)
      fail(
        "external.subnet",
        `the external network has no subnet ${JSON.stringify(args.external.subnet)}; use one of ${Object.keys(args.external.network.subnets).join(", ")}`,
      );
    const bastionSub = args.bastion.network.subnets[args.bastion.subnet];
    this.bastionFloatingIp = new FloatingIp(
      `${bastionName}-fip`,
      {
        fipName: `${bastionName}-fip`,
        hosts,
        host: args.router.host,
        routerName: args.router.routerName,
        external: {
          networkName: args.external.network.networkName,
          subnetName: extSub.subnetName,
          cidr: extSub.cidr,
          ipamHost: extSub.dhcpHost,
        },
        address: args.bastion.floatingIpAddress,
        target: {
          address: this.bastion.ip,
          subnetName: bastionSub.subnetName,
          networkName: args.bastion.network.networkName,
          // The FloatingIp checks the address is this stack's allocation there (issue 15).
          ipamHost: bastionSub.dhcpHost,
        },
      },
      { parent: this, dependsOn: [args.router, this.bastion] },
    );

    this.webFloatingIp = this.webLoadBalancer.floatingIp;
    this.webUrl = pulumi.interpolate`http://${this.webFloatingIp}/`;
    this.bastionAddress = this.bastionFloatingIp.floatingIp;
    const user = args.sshUser ?? (args.guestRoles === true ? "root" : (args.userName ?? "kvmlab"));
    const all = [this.bastion, ...this.web, ...this.was, this.db];
    const names = [bastionName, ...webMembers.map((m) => m.name), ...wasMembers.map((m) => m.name), dbName];
    this.sshCommands = pulumi
      .all([this.bastionAddress, ...all.map((s) => s.ip)])
      .apply(([bastion, ...ips]) =>
        Object.fromEntries(
          names.map((n, i) => [
            n,
            i === 0 ? `ssh ${user}@${bastion}` : proxyJumpCommand(user, bastion, ips[i]),
          ]),
        ),
      );
    this.consoleCommands = pulumi
      .all(all.map((s) => s.consoleCommand))
      .apply((cs) => Object.fromEntries(names.map((n, i) => [n, cs[i]])));
    this.consoleUrls = pulumi
      .all(all.map((s) => s.consoleUrl))
      .apply((cs) => Object.fromEntries(names.map((n, i) => [n, cs[i]])));
    this.registerOutputs({
      webUrl: this.webUrl,
      bastionAddress: this.bastionAddress,
      sshCommands: this.sshCommands,
      consoleUrls: this.consoleUrls,
    });
  }

  private loadBalancer(
    t: Tier,
    app: string,
    tier: ScaledTierArgs,
    members: { name: string; address: string }[],
    port: number,
    discovery: { hosts?: readonly HostSpec[]; hostDiscovery?: ResolveHostsOptions },
    floatingIp: ConstructorParameters<typeof LoadBalancer>[1]["floatingIp"],
  ): LoadBalancer {
    const memberArgs = members.map((m) => ({
      name: m.name,
      address: m.address,
      protocolPort: port,
      weight: tier.memberWeight ?? 1,
    }));
    const listeners: ListenerArgs[] =
      tier.listeners === undefined
        ? [
            {
              name: t === "web" ? "http" : "app",
              protocol: "HTTP",
              protocolPort: t === "web" ? TIER_PORTS.web : TIER_PORTS.was,
              defaultPool: {
                name: `${t}-pool`,
                protocol: "HTTP",
                lbAlgorithm: "ROUND_ROBIN",
                healthMonitor:
                  t === "web"
                    ? { type: "HTTP", delay: 2, timeout: 1, maxRetries: 1, urlPath: "/health" }
                    : { type: "TCP", delay: 2, timeout: 1, maxRetries: 1 },
                members: memberArgs,
              },
            },
          ]
        : tier.listeners.map((l) => {
            const target = tier.memberListener ?? tier.listeners![0].name;
            if (l.name !== target) return l;
            if (!l.defaultPool)
              throw new pulumi.ResourceError(
                `${t}.listeners: listener ${l.name} has no default pool for the tier's members; give it one or set memberListener`,
                this,
              );
            return {
              ...l,
              defaultPool: { ...l.defaultPool, members: [...(l.defaultPool.members ?? []), ...memberArgs] },
            };
          });
    return new LoadBalancer(
      tier.loadBalancerName ?? `${app}-${t}-lb`,
      {
        network: tier.network,
        subnet: tier.subnet,
        vipAddress: tier.vipAddress,
        host: tier.loadBalancerHost,
        listeners,
        floatingIp,
        ...discovery,
      },
      { parent: this },
    );
  }
}

export type { ServerImageArgs };
