/**
 * ThreeTierApp component: the classic 3-tier lab in one call. A web tier behind a public load
 * balancer with a floating IP, a WAS tier behind an internal load balancer, a database server, a
 * bastion with a floating IP, and security groups that allow only web←any:80/443, WAS←web:8080,
 * DB←WAS:3306 and SSH←bastion (templates/threeTier.ts).
 *
 * ```ts
 * const app = new ThreeTierApp("shop", {
 *   image, flavor, keypair: key, router, external: { network: ext, subnet: "ext-v4" },
 *   // Every slot's address: max 3, min and desired 2 (the defaults), CPU policies DEFAULT_TIER_POLICIES.
 *   web: { network: web, subnet: "web-v4", vipAddress: "10.30.1.5", members: ["10.30.1.11", "10.30.1.12", "10.30.1.13"] },
 *   was: { network: was, subnet: "was-v4", vipAddress: "10.30.2.5", members: ["10.30.2.11", "10.30.2.12", "10.30.2.13"] },
 *   db: { network: db, subnet: "db-v4", address: "10.30.3.11" },
 *   bastion: { network: mgmt, subnet: "mgmt-v4", address: "10.30.9.11" },
 *   guestRoles: true, // the sandbox guest image: each member behaves like its tier
 * });
 * export const url = app.webUrl;
 * ```
 *
 * The web and WAS tiers are Heat-style autoscale groups (components/autoscaleGroup.ts, through its
 * public API): `members` gives every slot's fixed address (the security groups' remote-group sets
 * hold every slot, known before any server exists), the group's load balancer is the tier's, and
 * its scaling agent starts `desired` slots after `up` and scales on CPU. The router must have a leg on every
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
import { AutoscaleGroup, type ScalingPolicySpec } from "./autoscaleGroup";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";
import { Image as ImageComponent } from "./image";
import type { ListenerArgs, LoadBalancer, PoolArgs } from "./loadBalancer";
import type { Network } from "./network";
import { Server, type ServerArgs, type ServerFlavorArgs, type ServerImageArgs } from "./server";

export {
  proxyJumpCommand,
  sshKeyArg,
  threeTierRules,
  tierRoleArgs,
  TIER_PORTS,
} from "../templates/threeTier";

/** One slot of a tier's autoscale group. */
export interface TierMemberArgs {
  /** Fixed address of the slot in the tier's subnet. */
  readonly address: string;
  /** Pin the slot to a host. @default the hosts round-robin (each tier starting one host further) */
  readonly host?: string;
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
  /**
   * Owning project of the tier's servers, autoscale slots included (a Project's `recordId`).
   * @default the app's.
   */
  readonly project?: pulumi.Input<string>;
  /** The tier's key. @default the app's */
  readonly keypair?: { readonly publicKeyLine: pulumi.Input<string> };
  /** Guest user cloud-init gives the key to, autoscale slots included. @default the app's */
  readonly userName?: string;
}

/**
 * A load-balanced tier: a Heat-style autoscale group (components/autoscaleGroup.ts) whose
 * load balancer is the tier's. Every slot is pre-rendered and keeps its address; the group's
 * scaling agent starts and stops slots between `up`s (CPU policies, `desired`).
 */
export interface ScaledTierArgs extends TierCommonArgs {
  /** Every slot of the group, slot order: its address, or {address, host}. Their count is `max`. */
  readonly members: readonly (string | TierMemberArgs)[];
  /** Member domains are `<groupName>-<i>`. @default `<app>-<tier>` */
  readonly groupName?: string;
  /** @default 2 (or the number of slots when fewer) */
  readonly min?: number;
  /** @default the number of slots (`members`); another value is refused */
  readonly max?: number;
  /** The size the program asks for (applied when it changes). @default min */
  readonly desired?: number;
  /** Heat's group cooldown in seconds. @default 60 */
  readonly cooldown?: number;
  /** Scaling policies on average CPU. @default DEFAULT_TIER_POLICIES (+1 above 70 %, -1 below 15 %) */
  readonly policies?: readonly ScalingPolicySpec[];
  /** Seconds between the scaling agent's evaluations. @default 10 (two agents share the controller) */
  readonly agentInterval?: number;
  /** Seconds a started member has to pass its health check. @default 300 */
  readonly bootTimeout?: number;
  /** The load balancer's VIP on the tier's subnet. */
  readonly vipAddress: string;
  /** @default `<app>-<tier>-lb` */
  readonly loadBalancerName?: string;
  /** Host of the load balancer (and of the group's scaling agent). @default the least loaded */
  readonly loadBalancerHost?: string;
  /** The listener instead of the app's default (HTTP on the tier's port). */
  readonly listener?: Omit<ListenerArgs, "defaultPool">;
  /** The members' pool instead of the app's default (ROUND_ROBIN, an HTTP /health monitor). */
  readonly pool?: Omit<PoolArgs, "members">;
  /** Port the members serve. @default 80 (web), 8080 (WAS) */
  readonly memberPort?: number;
  /** Security groups on the VIP port (Linux-bridge VIP networks only). @default none (unfiltered) */
  readonly loadBalancerSecurityGroups?: readonly SecurityGroup[];
  /** web: a fixed floating IP on the VIP. @default the lowest free one */
  readonly floatingIpAddress?: pulumi.Input<string>;
}

/**
 * The default scaling policies of a tier: Heat's usual pair of CPU alarms. Scale out by one when
 * the members average above 70 % of a vCPU over 60 s (then 120 s cooldown); scale in by one below
 * 15 % over 180 s (then 300 s). The group never goes below `min` nor above `max`.
 */
export const DEFAULT_TIER_POLICIES: readonly ScalingPolicySpec[] = [
  {
    name: "scale_out",
    adjustmentType: "change_in_capacity",
    scalingAdjustment: 1,
    cooldown: 120,
    alarm: { comparison: "gt", threshold: 70, periodSec: 60 },
  },
  {
    name: "scale_in",
    adjustmentType: "change_in_capacity",
    scalingAdjustment: -1,
    cooldown: 300,
    alarm: { comparison: "lt", threshold: 15, periodSec: 180 },
  },
];

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
  /**
   * Owning project of every server, the app's own security groups and the bastion's floating IP
   * (a Project's `recordId`), the autoscale slots included. @default the stack's
   * `kvmlab:project`, else none. A tier's load balancer (with the web floating IP) takes the
   * tier's project, else this one.
   */
  readonly project?: pulumi.Input<string>;
  /** Readiness of the servers. @default HTTP /health (web, WAS) or DHCP (DB, bastion) with guestRoles, else DHCP */
  readonly readinessTimeoutSec?: number;
  readonly hosts?: readonly HostSpec[];
  readonly hostDiscovery?: ResolveHostsOptions;
}

type Tier = "web" | "was";

export class ThreeTierApp extends pulumi.ComponentResource {
  /** Every slot of the web tier's group (slot order; only the group's current size runs). */
  public readonly web: Server[];
  /** Every slot of the WAS tier's group. */
  public readonly was: Server[];
  public readonly db: Server;
  public readonly bastion: Server;
  /** The tiers' autoscale groups (scaling agent, current size, members in service). */
  public readonly webGroup: AutoscaleGroup;
  public readonly wasGroup: AutoscaleGroup;
  public readonly webLoadBalancer: LoadBalancer;
  public readonly wasLoadBalancer: LoadBalancer;
  /** The app's own groups (those no tier replaced), by role. */
  public readonly securityGroups: Partial<Record<"bastion" | "web" | "was" | "wasLb" | "db", SecurityGroup>>;
  public readonly bastionFloatingIp: FloatingIp;
  /** `http://<web floating IP>/`. */
  public readonly webUrl: pulumi.Output<string>;
  public readonly webFloatingIp: pulumi.Output<string>;
  public readonly bastionAddress: pulumi.Output<string>;
  /** Server name → `ssh -o ProxyJump=<user>@<bastion> <user>@<address>` (the bastion: a direct ssh); every slot. */
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
    for (const t of ["web", "was"] as const) {
      const n = args[t].members.length;
      if (n === 0) fail(`${t}.members`, "give one address per slot of the tier's group (at least one)");
      if (args[t].max !== undefined && args[t].max !== n)
        fail(
          `${t}.max`,
          `the group has one slot per member address (${n} given) and max is ${args[t].max}; give ${args[t].max} addresses in ${t}.members or drop max`,
        );
    }

    const slots = (t: Tier): { name: string; address: string; host: string }[] => {
      const group = args[t].groupName ?? `${name}-${t}`;
      return args[t].members.map((m, i) => {
        const spec = typeof m === "string" ? { address: m } : m;
        return { name: `${group}-${i}`, address: spec.address, host: spec.host ?? "" };
      });
    };
    const webSlots = slots("web");
    const wasSlots = slots("was");
    const dbName = args.db.name ?? `${name}-db`;
    const bastionName = args.bastion.name ?? `${name}-bastion`;

    // Security groups: the app's own for every tier that did not bring its own. A group's set
    // holds EVERY slot's address, running or not (the addresses are the slots' own in IPAM;
    // a stopped slot has no tap and answers nothing; docs/autoscale.md "Security groups").
    const g = threeTierGroupNames(name);
    const rules = threeTierRules(g, args.sshFrom);
    const memberAddresses = {
      bastion: [args.bastion.address],
      web: webSlots.map((m) => m.address),
      was: wasSlots.map((m) => m.address),
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
          project: args.project,
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
      role: "db" | "bastion",
      serverName: string,
      tier: SingleTierArgs,
      host: pulumi.Input<string> | undefined,
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
            {
              network: tier.network,
              subnet: tier.subnet,
              fixedIp: tier.address,
              securityGroups: groupsOf(role),
            },
          ],
          kernelCmdline: cmdline(role, serverName, tier),
          host,
          readiness: readiness(role),
          project: tier.project ?? args.project,
          ...discovery,
        },
        { parent: this },
      );
    // Unpinned slots are spread over the hosts round-robin (each tier starting one host further),
    // so a tier survives the loss of a host (placement alone may put a whole tier on one host).
    const hostNames = hosts.map((h) => h.name as string);
    const spread = (offset: number, i: number): string => hostNames[(offset + i) % hostNames.length];

    this.db = server("db", dbName, args.db, args.db.host ?? spread(1, 0));
    this.bastion = server("bastion", bastionName, args.bastion, args.bastion.host ?? spread(0, 0));
    // Nothing waits for anything else: a member answers /health on its own, and a load balancer
    // marks members up when its health monitor first reaches them.
    this.wasGroup = this.tierGroup("was", name, args, wasSlots, wasPort, spread, {
      groupsOf,
      cmdline,
      readiness,
      discovery,
    });
    this.webGroup = this.tierGroup("web", name, args, webSlots, webPort, spread, {
      groupsOf,
      cmdline,
      readiness,
      discovery,
    });
    this.web = [...this.webGroup.members];
    this.was = [...this.wasGroup.members];
    this.webLoadBalancer = this.webGroup.loadBalancer!;
    this.wasLoadBalancer = this.wasGroup.loadBalancer!;

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
        project: args.bastion.project ?? args.project,
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
    const names = [bastionName, ...webSlots.map((m) => m.name), ...wasSlots.map((m) => m.name), dbName];
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

  /** The tier's AutoscaleGroup: every slot pre-rendered, its load balancer the tier's. */
  private tierGroup(
    t: Tier,
    app: string,
    args: ThreeTierAppArgs,
    slots: { name: string; address: string; host: string }[],
    port: number,
    spread: (offset: number, i: number) => string,
    k: {
      groupsOf: (t: Tier) => SecurityGroup[];
      cmdline: (role: TierRole, serverName: string, tier: TierCommonArgs) => pulumi.Input<string>;
      readiness: (role: TierRole) => ServerArgs["readiness"];
      discovery: { hosts?: readonly HostSpec[]; hostDiscovery?: ResolveHostsOptions };
    },
  ): AutoscaleGroup {
    const tier = args[t];
    const max = slots.length;
    const min = tier.min ?? Math.min(2, max);
    const groupName = tier.groupName ?? `${app}-${t}`;
    const extSub = args.external.network.subnets[args.external.subnet];
    if (t === "web" && extSub === undefined)
      throw new pulumi.ResourceError(
        `external.subnet: the external network has no subnet ${JSON.stringify(args.external.subnet)}; use one of ${Object.keys(args.external.network.subnets).join(", ")}`,
        this,
      );
    return new AutoscaleGroup(
      `${app}-${t}`,
      {
        groupName,
        launch: {
          image: tier.image ?? args.image,
          flavor: tier.flavor ?? args.flavor,
          keypair: tier.keypair ?? args.keypair,
          userData: tier.userData,
          ports: [
            {
              network: tier.network,
              subnet: tier.subnet,
              fixedIps: slots.map((s) => s.address),
              securityGroups: k.groupsOf(t),
            },
          ],
          kernelCmdline: (member) => k.cmdline(t, member, tier),
          readiness: k.readiness(t),
          ...((tier.userName ?? args.userName) ? { userName: tier.userName ?? args.userName } : {}),
          ...((tier.project ?? args.project) ? { project: tier.project ?? args.project } : {}),
        },
        min,
        max,
        desired: tier.desired ?? min,
        cooldown: tier.cooldown ?? 60,
        policies: tier.policies ?? DEFAULT_TIER_POLICIES,
        interval: tier.agentInterval ?? 10,
        bootTimeout: tier.bootTimeout,
        memberHost: (i) => slots[i].host || spread(t === "web" ? 0 : 1, i),
        loadBalancer: {
          lbName: tier.loadBalancerName ?? `${app}-${t}-lb`,
          network: tier.network,
          subnet: tier.subnet,
          vipAddress: tier.vipAddress,
          host: tier.loadBalancerHost,
          memberPort: port,
          listener: tier.listener ?? {
            name: t === "web" ? "http" : "app",
            protocol: "HTTP",
            protocolPort: t === "web" ? TIER_PORTS.web : TIER_PORTS.was,
          },
          pool: tier.pool ?? {
            name: `${t}-pool`,
            protocol: "HTTP",
            lbAlgorithm: "ROUND_ROBIN",
            // HTTP /health on both tiers: the scaling agent puts a member in service when it
            // answers this path (a TCP monitor would make the agent fetch "/").
            healthMonitor: { type: "HTTP", delay: 2, timeout: 1, maxRetries: 1, urlPath: "/health" },
          },
          ...(tier.loadBalancerSecurityGroups !== undefined
            ? { securityGroups: [...tier.loadBalancerSecurityGroups] }
            : {}),
          // The tier's load balancer (its VIP port, floating IP, VIP SG ports) is the tier's project's.
          ...((tier.project ?? args.project) ? { project: tier.project ?? args.project } : {}),
          ...(t === "web"
            ? {
                floatingIp: {
                  router: args.router,
                  external: args.external.network,
                  subnet: args.external.subnet,
                  address: tier.floatingIpAddress,
                },
              }
            : {}),
          ...k.discovery,
        },
        ...k.discovery,
      },
      { parent: this },
    );
  }
}

export type { ServerImageArgs };
