/**
 * AutoscaleGroup component: Heat's OS::Heat::AutoScalingGroup + ScalingPolicy + the alarms that
 * signal them, on kvmlab (docs/autoscale.md).
 *
 * Render in the program, act on the hosts: every possible member `<group>-0 … <group>-(max-1)`
 * is a Server component (domain XML, seed, MAC, address reserved in the subnet's IPAM, host
 * pinned round-robin), so `pulumi preview` shows all of them; they are created DEFINED BUT NOT
 * STARTED (Server powerState "external"). With `loadBalancer`, the group builds a LoadBalancer
 * component whose pool holds every slot (haproxy keeps the ones not in service in `maint`). An
 * AutoscaleAgent resource runs the scaling agent on the controller host (the load balancer's
 * host), which starts and stops the pre-rendered members between `pulumi up`s.
 *
 * ```ts
 * const web = new AutoscaleGroup("web", {
 *   launch: { image, flavor, keypair: key, ports: [{ network: lan, subnet: "lan-v4" }],
 *     kernelCmdline: (member) => pulumi.interpolate`${image.kernelCmdline} lab.name=${member}` },
 *   min: 1, max: 3, desired: 1, cooldown: 60,
 *   policies: [
 *     { name: "scale_out", adjustmentType: "change_in_capacity", scalingAdjustment: 1,
 *       alarm: { comparison: "gt", threshold: 50, periodSec: 20 } },
 *     { name: "scale_in", adjustmentType: "change_in_capacity", scalingAdjustment: -1,
 *       alarm: { comparison: "lt", threshold: 15, periodSec: 20 } },
 *   ],
 *   loadBalancer: { network: lan, subnet: "lan-v4", vipAddress: "10.60.0.50", memberPort: 80,
 *     listener: { name: "http", protocol: "HTTP", protocolPort: 80 },
 *     pool: { name: "web", protocol: "HTTP", lbAlgorithm: "ROUND_ROBIN",
 *       healthMonitor: { type: "HTTP", delay: 2, timeout: 1, maxRetries: 1, urlPath: "/health" } } },
 * });
 * export const vip = web.loadBalancer!.vipAddress;
 * ```
 */
import * as pulumi from "@pulumi/pulumi";
import { checkGroupSpec, launchHash, rollOrder, type ScalingPolicySpec } from "../core/autoscale";
import { loadBalancerPaths } from "../core/paths";
import { AutoscaleAgent } from "../provider/autoscale";
import { AutoscaleRoll } from "../provider/autoscale/roll";
import { Flavor } from "../provider/flavor";
import { Image } from "../provider/image";
import type { SecurityGroup } from "../provider/securityGroup";
import type { ProjectRef } from "../provider/kit";
import type { Readiness } from "../provider/server";
import { memberNames, membersByHost, renderAgentConfig } from "../templates/autoscale";
import type { ServerUserData } from "../templates/server";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";
import { Image as ImageComponent } from "./image";
import { LoadBalancer, type ListenerArgs, type LoadBalancerArgs, type PoolArgs } from "./loadBalancer";
import type { Network } from "./network";
import { Server, type ServerFlavorArgs, type ServerImageArgs } from "./server";

export type { ScalingPolicySpec, AlarmSpec, AdjustmentType } from "../core/autoscale";

/** One NIC of every member. */
export interface AutoscalePortArgs {
  readonly network: Network;
  readonly subnet: string;
  /** Fixed addresses, one per slot (index = slot). @default the pool's next free address per slot */
  readonly fixedIps?: readonly string[];
  /** Security groups of the port (every slot gets a SecurityGroupPort; see docs/autoscale.md). */
  readonly securityGroups?: readonly SecurityGroup[];
}

/** Heat's `resource` of the group: what every member is built from. */
export interface AutoscaleLaunchArgs {
  readonly image: ImageComponent | Image | pulumi.Input<ServerImageArgs>;
  readonly flavor: Flavor | pulumi.Input<ServerFlavorArgs>;
  /** NICs; the first one's address is the member's pool address. */
  readonly ports: readonly AutoscalePortArgs[];
  readonly keypair?: { readonly publicKeyLine: pulumi.Input<string> };
  readonly userData?: ServerUserData;
  readonly cloudInit?: boolean;
  /** The kernel command line, or a function of the member name and slot. @default "console=ttyS0" */
  readonly kernelCmdline?: pulumi.Input<string> | ((member: string, index: number) => pulumi.Input<string>);
  readonly readiness?: Partial<Readiness>;
  /** Guest user cloud-init gives the key to. @default the Server component's ("kvmlab") */
  readonly userName?: string;
  /**
   * Owning project of every slot (a Project, its `recordId` or a name): carried in the slot's
   * libvirt metadata and charged to that project's quotas, like any Server.
   * @default the stack's `kvmlab:project`, else none
   */
  readonly project?: ProjectRef;
}

/** The load balancer the members join (the group creates it; every slot is a pool member). */
export type AutoscaleLoadBalancerArgs = Omit<LoadBalancerArgs, "listeners"> & {
  readonly listener: Omit<ListenerArgs, "defaultPool">;
  readonly pool: Omit<PoolArgs, "members">;
  /** The members' port. */
  readonly memberPort: number;
};

export interface AutoscaleGroupArgs {
  /** Member domains are `<groupName>-<n>`. @default the component name */
  readonly groupName?: string;
  readonly launch: AutoscaleLaunchArgs;
  readonly min: number;
  readonly max: number;
  /**
   * The size the program asks for. Applied when it CHANGES (a no-change `up` leaves the agent's
   * current size alone). @default min
   */
  readonly desired?: number;
  /** Heat's group cooldown (seconds), for policies without their own. @default 60 */
  readonly cooldown?: number;
  readonly policies?: readonly ScalingPolicySpec[];
  readonly loadBalancer?: AutoscaleLoadBalancerArgs;
  /** Host of member slot i. @default round-robin over the hosts */
  readonly memberHost?: (index: number, hostNames: readonly string[]) => string;
  /** Host the agent runs on. @default the load balancer's host, else the first host */
  readonly controllerHost?: string;
  /** Seconds between agent evaluations. @default 5 */
  readonly interval?: number;
  /** Seconds a started member has to pass its health check before it counts as FAILED. @default 300 */
  readonly bootTimeout?: number;
  /** Seconds a leaving member may keep its sessions. @default 10 */
  readonly drainTimeout?: number;
  readonly hosts?: readonly HostSpec[];
  readonly hostDiscovery?: ResolveHostsOptions;
}

export class AutoscaleGroup extends pulumi.ComponentResource {
  /** Every possible member, slot order (index i = `<group>-i`). */
  public readonly members: readonly Server[];
  public readonly agent: AutoscaleAgent;
  /** The rolling replacement's steps, in chain order: roll-out and roll-in of each slot. */
  public readonly rolls: AutoscaleRoll[];
  public readonly loadBalancer?: LoadBalancer;
  public readonly groupName: string;
  /** Current size as the agent last reported it (refresh updates it). */
  public readonly currentSize: pulumi.Output<number>;
  /** Members in service as the agent last reported them. */
  public readonly inService: pulumi.Output<string[]>;
  /** Every slot's address (slot order). */
  public readonly memberIps: pulumi.Output<string[]>;
  /** The rendered agent.conf (the preview shows it). */
  public readonly agentConfig: pulumi.Output<string>;

  constructor(name: string, args: AutoscaleGroupArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("kvmlab:autoscale:AutoscaleGroup", name, {}, opts);
    const group = args.groupName ?? name;
    const cooldown = args.cooldown ?? 60;
    const desired = args.desired ?? args.min;
    const policies = args.policies ?? [];
    try {
      checkGroupSpec({ name: group, min: args.min, max: args.max, desired, cooldown, policies });
    } catch (err) {
      throw new pulumi.ResourceError((err as Error).message, this);
    }
    if (args.launch.ports.length === 0)
      throw new pulumi.ResourceError(
        "launch.ports: a member needs at least one port (its pool address)",
        this,
      );
    const { hosts } = resolveHosts(args.hosts, args.hostDiscovery);
    const hostNames = hosts.map((h) => h.name as string);
    const slots = memberNames(group, args.max);
    // A slot's fixed address that is the VIP would be refused at that slot's create (review L7):
    // say so at preview, naming the slot and the fix.
    const lbVip = args.loadBalancer;
    const port0 = args.launch.ports[0];
    if (lbVip !== undefined && lbVip.network === port0.network && lbVip.subnet === port0.subnet) {
      const clash = slots.findIndex((_, i) => port0.fixedIps?.[i] === lbVip.vipAddress);
      if (clash >= 0)
        throw new pulumi.ResourceError(
          `launch.ports[0].fixedIps: slot ${slots[clash]}'s address ${lbVip.vipAddress} is the load balancer's vipAddress in subnet ${port0.subnet}; its create would be refused and the group could not reach max. Fix: give the slots addresses apart from the VIP (and outside the subnet's allocationPool), or lower max`,
          this,
        );
    }
    const place = args.memberHost ?? ((i: number, names: readonly string[]) => names[i % names.length]);
    const slotHost = slots.map((_, i) => {
      const h = place(i, hostNames);
      if (!hostNames.includes(h))
        throw new pulumi.ResourceError(
          `memberHost: slot ${i} -> ${JSON.stringify(h)} is not one of ${hostNames.join(", ")}`,
          this,
        );
      return h;
    });
    this.groupName = group;

    // Rolling replacement (docs/autoscale.md "Launch changes"): around every slot's Server, an
    // AutoscaleRoll "out" before it and "in" after it, both carrying the hash of the slot's launch
    // configuration, chained slot after slot (highest first: the likeliest spares), so a launch
    // change takes one member out of service at a time and never leaves fewer than `min` in it.
    const launchFor = (i: number): pulumi.Output<string> => {
      const imageArg =
        args.launch.image instanceof ImageComponent ? args.launch.image.image : args.launch.image;
      const image =
        imageArg instanceof Image
          ? pulumi.output({
              name: imageArg.imageName,
              kind: imageArg.format,
              disk: imageArg.diskPath,
              format: imageArg.diskFormat,
              kernel: imageArg.kernelPath,
              ramdisk: imageArg.ramdiskPath,
            })
          : pulumi.output(imageArg);
      const fl = args.launch.flavor;
      const flavor =
        fl instanceof Flavor
          ? pulumi.output({
              name: fl.flavorName,
              vcpus: fl.vcpus,
              ramMiB: fl.ramMiB,
              diskGiB: fl.diskGiB,
              ephemeralGiB: fl.ephemeralGiB,
              swapMiB: fl.swapMiB,
              extraSpecs: fl.extraSpecs,
            })
          : pulumi.output(fl);
      const cmd = args.launch.kernelCmdline;
      return pulumi
        .all([
          image,
          flavor,
          pulumi.all(
            args.launch.ports.map((p) =>
              pulumi.output({
                network: p.network.networkName,
                subnet: p.subnet,
                fixedIp: p.fixedIps?.[i] ?? "",
              }),
            ),
          ),
          args.launch.keypair?.publicKeyLine ?? "",
          pulumi.output(args.launch.userData ?? {}),
          args.launch.cloudInit ?? true,
          (typeof cmd === "function" ? cmd(slots[i], i) : cmd) ?? "console=ttyS0",
          pulumi.output(args.launch.readiness ?? {}),
        ])
        .apply(([img, flv, ports, key, userData, cloudInit, cmdline, readiness]) =>
          // The guest user is part of the seed (a change replaces the slot); the project is
          // not: a project change sets the domain's metadata in place, nothing to roll.
          launchHash({
            img,
            flv,
            ports,
            key,
            userData,
            cloudInit,
            cmdline,
            readiness,
            ...(args.launch.userName !== undefined ? { user: args.launch.userName } : {}),
          }),
        );
    };
    const rollTimeout = (args.bootTimeout ?? 300) + (args.drainTimeout ?? 10) + 900;
    const rollArgs = (i: number, phase: "out" | "in", hash: pulumi.Output<string>) => ({
      groupName: group,
      member: slots[i],
      phase,
      launchHash: hash,
      hosts,
      timeoutSec: rollTimeout,
    });
    const members: Server[] = [];
    this.rolls = [];
    let previous: AutoscaleRoll | undefined;
    for (const i of rollOrder(args.max)) {
      const hash = launchFor(i);
      const out = new AutoscaleRoll(`${name}-${i}-roll-out`, rollArgs(i, "out", hash), {
        parent: this,
        dependsOn: previous ? [previous] : [],
      });
      const member = this.member(name, slots[i], i, slotHost[i], args, out);
      members[i] = member;
      // afterRoll: roll-in runs after every roll-out that ran, even if the hash went back (review R1).
      const back = new AutoscaleRoll(
        `${name}-${i}-roll-in`,
        { ...rollArgs(i, "in", hash), afterRoll: out.rollId },
        {
          parent: this,
          dependsOn: [member.server],
        },
      );
      this.rolls.push(out, back);
      previous = back;
    }
    this.members = members;
    this.memberIps = pulumi.all(this.members.map((m) => m.ip));

    let pool: pulumi.Output<{
      socket: string;
      backend: string;
      namespace: string;
      healthPort: number;
      healthPath: string;
    } | null> = pulumi.output(null);
    let controller: pulumi.Input<string> = args.controllerHost ?? hostNames[0];
    const lbArgs = args.loadBalancer;
    if (lbArgs !== undefined) {
      const { listener, pool: poolArgs, memberPort, ...rest } = lbArgs;
      const lbName = rest.lbName ?? `${name}-lb`;
      // The pool's addresses: every slot's fixed address when the program gives them all, so the
      // load balancer needs nothing of the slots and is built beside them instead of after the
      // last one (issue 13: the agent, which needs both, starts sooner). Else each slot's Server
      // (its address comes from IPAM at its create).
      const fixed = slots.map((_, i) => args.launch.ports[0].fixedIps?.[i] ?? "");
      const allFixed = fixed.every((a) => a !== "");
      // The pool and the agent's health check know each slot by the address of the last up: a
      // slot whose Server is replaced must come back on it (sandbox run of the replace path).
      if (!allFixed)
        void pulumi.log.warn(
          `autoscale group ${name}: launch.ports[0].fixedIps does not give every slot an address; a launch change that replaces the slots' Servers (user data, image, ports) can bring a slot back on another address, which the pool and the agent's health check do not know, so its roll-in fails (the slot is stopped and marked FAILED). Fix: give fixedIps, one per slot (max)`,
          this,
        );
      this.loadBalancer = new LoadBalancer(
        `${name}-lb`,
        {
          ...rest,
          lbName,
          listeners: [
            {
              ...listener,
              defaultPool: {
                ...poolArgs,
                members: this.members.map((m, i) => ({
                  name: slots[i],
                  address: allFixed ? fixed[i] : m.ip,
                  protocolPort: memberPort,
                })),
              },
            },
          ],
        },
        { parent: this, dependsOn: allFixed ? [] : this.members.map((m) => m.server) },
      );
      const paths = loadBalancerPaths(lbName);
      const hm = poolArgs.healthMonitor ?? null;
      pool = pulumi.output({
        socket: paths.statsSocket,
        backend: `${poolArgs.name}:${listener.name}`,
        namespace: paths.namespace,
        healthPort: memberPort,
        healthPath: hm !== null && (hm.type === "HTTP" || hm.type === "HTTPS") ? (hm.urlPath ?? "/") : "/",
      });
      if (args.controllerHost === undefined) controller = this.loadBalancer.host;
    }

    const hostInfo = pulumi
      .output(hosts)
      .apply((hs) =>
        Object.fromEntries(
          hs.map((h) => [h.name, { address: h.address, port: h.port ?? 22, user: h.user ?? "root" }]),
        ),
      );
    this.agentConfig = pulumi
      .all([this.memberIps, pool, hostInfo, controller])
      .apply(([ips, p, info, ctl]) => {
        try {
          return renderAgentConfig({
            name: group,
            min: args.min,
            max: args.max,
            desired,
            cooldown,
            policies,
            members: slots.map((n, i) => ({
              name: n,
              ip: ips[i],
              host: slotHost[i],
              hostAddress: info[slotHost[i]].address,
              hostPort: info[slotHost[i]].port,
              hostUser: info[slotHost[i]].user,
            })),
            pool: p,
            interval: args.interval,
            bootTimeout: args.bootTimeout,
            drainTimeout: args.drainTimeout,
            controller: ctl,
          });
        } catch (err) {
          throw new pulumi.ResourceError(`autoscale group ${group}: ${(err as Error).message}`, this);
        }
      });

    this.agent = new AutoscaleAgent(
      `${name}-agent`,
      {
        groupName: group,
        hosts,
        controllerHost: controller,
        agentConfig: this.agentConfig,
        membersByHost: membersByHost(slots.map((n, i) => ({ name: n, host: slotHost[i] }))),
        desired,
        min: args.min,
        max: args.max,
      },
      {
        parent: this,
        dependsOn: [
          ...this.members.map((m) => m.server),
          // Destroy removes the agent (and the group folder) before the roll steps' marks.
          ...this.rolls,
          ...this.members.flatMap((m) => m.securityGroupPorts.filter((p) => p !== undefined)),
          ...(this.loadBalancer ? [this.loadBalancer.loadBalancer] : []),
        ],
      },
    );
    this.currentSize = this.agent.currentSize;
    this.inService = this.agent.members;
    this.registerOutputs({
      currentSize: this.currentSize,
      inService: this.inService,
      memberIps: this.memberIps,
    });
  }

  /**
   * Slot i's Server. Its kernel command line passes through the slot's roll-out step's output,
   * so the Server's registration (and its replace or redefine) waits for that step.
   */
  private member(
    name: string,
    member: string,
    i: number,
    host: string,
    args: AutoscaleGroupArgs,
    rollOut: AutoscaleRoll,
  ): Server {
    const cmd = args.launch.kernelCmdline;
    const cmdline = pulumi
      .all([rollOut.urn, (typeof cmd === "function" ? cmd(member, i) : cmd) ?? "console=ttyS0"])
      .apply(([, c]) => c);
    return new Server(
      `${name}-${i}`,
      {
        serverName: member,
        image: args.launch.image,
        flavor: args.launch.flavor,
        ports: args.launch.ports.map((p) => ({
          network: p.network,
          subnet: p.subnet,
          fixedIp: p.fixedIps?.[i],
          securityGroups: p.securityGroups,
        })),
        keypair: args.launch.keypair,
        userData: args.launch.userData,
        cloudInit: args.launch.cloudInit,
        kernelCmdline: cmdline,
        host,
        powerState: "external",
        readiness: args.launch.readiness,
        ...(args.launch.userName !== undefined ? { userName: args.launch.userName } : {}),
        ...(args.launch.project !== undefined ? { project: args.launch.project } : {}),
        hosts: args.hosts,
        hostDiscovery: args.hostDiscovery,
      },
      { parent: this },
    );
  }
}
