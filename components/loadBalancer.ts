/**
 * LoadBalancer component: an Octavia-style load balancer in Octavia's terms (listeners, pools,
 * members, health monitors). It renders haproxy.cfg in the program (templates/haproxy.ts, so
 * the preview shows the config change line by line) and wires one LoadBalancer resource, whose
 * VIP port sits on the VIP subnet's bridge.
 *
 * ```ts
 * const lb = new LoadBalancer("web", {
 *   network: lan, subnet: "lan-v4", vipAddress: "10.10.0.50",
 *   listeners: [{ name: "http", protocol: "HTTP", protocolPort: 80,
 *     defaultPool: { name: "web", protocol: "HTTP", lbAlgorithm: "ROUND_ROBIN",
 *       healthMonitor: { type: "HTTP", delay: 2, timeout: 1, maxRetries: 1, urlPath: "/health" },
 *       members: [{ name: "web1", address: web1.ip, protocolPort: 80 }] } }],
 * });
 * ```
 *
 * With `topology: "ACTIVE_STANDBY"` it runs two amphorae on two hosts of the network (`host` and
 * `standbyHost`, least loaded by default, never the same); keepalived.conf for each is rendered
 * here too (templates/keepalived.ts: amphora 0 MASTER, 1 BACKUP, unicast VRRP between
 * `vrrpAddresses`), so the preview shows it; the VIP moves to the BACKUP when the MASTER's
 * keepalived or haproxy stops. Changing the topology replaces the load balancer (as in Octavia).
 *
 * With `floatingIp: { router, external: ext, subnet: "ext-v4" }` it also creates a FloatingIp on
 * the router whose target is the VIP (the router must have a leg on the VIP subnet, so the VIP's
 * default route, the subnet gateway, is the router): the VIP then answers from the external network.
 *
 * With `securityGroups: [web]` each amphora's VIP port gets a SecurityGroupPort (Octavia's VIP
 * security groups, `vip_sg_ids`): the groups' rules filter what reaches the VIP on the bridge, with
 * Neutron's default deny ingress, statefulness and anti-spoofing. An ACTIVE_STANDBY amphora's port
 * holds its VRRP address and may also send from the VIP (an allowed address pair, as Octavia sets
 * on its amphora ports), and admits anything from the peer amphora's VRRP address so VRRP and
 * failover keep working. Linux-bridge VIP networks only (see docs/load-balancers.md).
 */
import * as pulumi from "@pulumi/pulumi";
import { amphoraMac, loadBalancerPaths } from "../core/paths";
import type { SecurityGroupRule } from "../core/securityGroup";
import type { ProjectRef } from "../provider/kit";
import { FloatingIp } from "../provider/floatingIp";
import { SecurityGroupPort, type SecurityGroup } from "../provider/securityGroup";
import { LoadBalancer as LoadBalancerResource } from "../provider/loadBalancer";
import type { Router } from "../provider/router";
import { loadBalancerConfig, type ListenerSpec, type MemberSpec, type PoolSpec } from "../templates/haproxy";
import type { LoadBalancerTopology } from "../provider/loadBalancer";
import { keepalivedPair } from "../templates/keepalived";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";
import type { Network } from "./network";

export { LB_DEFAULT_MAXCONN, loadBalancerConfig } from "../templates/haproxy";

/** A member whose address may be a program output (e.g. `server.ip`). */
export type MemberArgs = Omit<MemberSpec, "address"> & { readonly address: pulumi.Input<string> };
export type PoolArgs = Omit<PoolSpec, "members"> & { readonly members?: readonly MemberArgs[] };
export type ListenerArgs = Omit<ListenerSpec, "defaultPool"> & { readonly defaultPool?: PoolArgs | null };

export interface LoadBalancerArgs {
  /**
   * The identity project of the load balancer, its floating IP and VIP security-group ports: in
   * their owners and on the OVS VIP port (issue 14). @default the stack's `kvmlab:project`, else none
   */
  readonly project?: ProjectRef;
  /** Name on the hosts. @default the component name */
  readonly lbName?: string;
  /** The VIP network and the name of its subnet holding the VIP. */
  readonly network: Network;
  readonly subnet: string;
  /** The VIP (reserved in the subnet's IPAM). */
  readonly vipAddress: string;
  readonly listeners: readonly ListenerArgs[];
  /** Host to run on. @default the host of the network running the fewest load balancers */
  readonly host?: string;
  /** Seconds a removed member may keep its sessions. @default 10 */
  readonly drainTimeout?: number;
  /** Global maxconn. @default 5000 (Octavia: 50000; see loadBalancerConfig) */
  readonly maxconn?: number;
  /** @default null (no logging: the hosts have no syslog in the sandbox) */
  readonly logTarget?: string | null;
  /** Hosts. @default kvmlab:hosts, else the running sandbox's hosts */
  readonly hosts?: readonly HostSpec[];
  readonly hostDiscovery?: ResolveHostsOptions;
  /**
   * A floating IP on the VIP (Octavia: a Neutron floating IP on the VIP port). The router must
   * have a leg on the VIP subnet (its gateway address) and a gateway on `external`.
   * @default none: the VIP is reachable only from its network
   */
  readonly floatingIp?: LoadBalancerFloatingIpArgs;
  /** Octavia's topology. @default "SINGLE" */
  readonly topology?: LoadBalancerTopology;
  /** ACTIVE_STANDBY: host of the BACKUP amphora. @default the least-loaded other host */
  readonly standbyHost?: string;
  /**
   * ACTIVE_STANDBY: the amphorae's own addresses on the VIP subnet (reserved in its IPAM).
   * @default the two addresses after the VIP
   */
  readonly vrrpAddresses?: readonly [string, string];
  /**
   * Security groups on the VIP port (Octavia's `vip_sg_ids`): default deny ingress, so give a
   * rule for every listener port. Linux-bridge VIP networks only.
   * @default none: the VIP port is unfiltered, as an Octavia VIP without `vip_sg_ids` is open on
   * its listener ports
   */
  readonly securityGroups?: readonly SecurityGroup[];
}

export interface LoadBalancerFloatingIpArgs {
  readonly router: Router;
  /** The external network and the name of its subnet the floating IP comes from. */
  readonly external: Network;
  readonly subnet: string;
  /** A fixed floating address. @default the lowest free address of the subnet's pool */
  readonly address?: pulumi.Input<string>;
}

export class LoadBalancer extends pulumi.ComponentResource {
  public readonly loadBalancer: LoadBalancerResource;
  public readonly vipAddress: pulumi.Output<string>;
  /** The VIP port (address, subnet, bridge, device, MAC, host): what a floating IP or security group targets. */
  public readonly vipPort: LoadBalancerResource["vipPort"];
  public readonly provisioningStatus: pulumi.Output<string>;
  public readonly operatingStatus: pulumi.Output<string>;
  public readonly memberStatus: pulumi.Output<Record<string, string>>;
  public readonly haproxyCfg: pulumi.Output<string>;
  public readonly host: pulumi.Output<string>;
  /** The FloatingIp resource when `floatingIp` was given. */
  public readonly floatingIpResource?: FloatingIp;
  /** The floating IP on the VIP; "" without `floatingIp`. */
  public readonly floatingIp: pulumi.Output<string>;
  /** ACTIVE_STANDBY: host, role, VRRP state, VIP holder of each amphora ([] for SINGLE). */
  public readonly amphorae: LoadBalancerResource["amphorae"];
  /** The SecurityGroupPort of each amphora's VIP port when `securityGroups` was given ([] else). */
  public readonly securityGroupPorts: readonly SecurityGroupPort[];

  constructor(name: string, args: LoadBalancerArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("kvmlab:loadbalancer:LoadBalancer", name, {}, opts);
    const lbName = args.lbName ?? name;
    const subnet = args.network.subnets[args.subnet];
    if (subnet === undefined)
      throw new pulumi.ResourceError(
        `subnet: the network has no subnet ${JSON.stringify(args.subnet)}; use one of ${Object.keys(args.network.subnets).join(", ")}`,
        this,
      );
    const hosts = resolveHosts(args.hosts, args.hostDiscovery).hosts;
    const listeners = pulumi.output(args.listeners as ListenerArgs[]) as unknown as pulumi.Output<
      ListenerSpec[]
    >;
    const cfg = listeners.apply((ls) => {
      try {
        return loadBalancerConfig(lbName, args.vipAddress, ls, {
          maxconn: args.maxconn,
          logTarget: args.logTarget,
        });
      } catch (err) {
        throw new pulumi.ResourceError(`listeners: ${(err as Error).message}`, this);
      }
    });
    const topology = args.topology ?? "SINGLE";
    const ha =
      topology === "ACTIVE_STANDBY"
        ? pulumi.output(subnet.cidr).apply((cidr) => {
            try {
              return keepalivedPair(lbName, args.vipAddress, cidr, args.vrrpAddresses);
            } catch (err) {
              throw new pulumi.ResourceError(`vrrpAddresses: ${(err as Error).message}`, this);
            }
          })
        : undefined;
    this.loadBalancer = new LoadBalancerResource(
      name,
      {
        lbName,
        hosts,
        lbHost: args.host ?? "",
        networkName: args.network.networkName,
        networkBridge: args.network.bridge,
        driver: args.network.network.driver,
        subnetName: subnet.subnetName,
        cidr: subnet.cidr,
        gateway: subnet.gateway,
        subnetHost: subnet.dhcpHost,
        vipAddress: args.vipAddress,
        haproxyCfg: cfg,
        drainTimeout: args.drainTimeout,
        mtu: args.network.network.mtu,
        topology,
        standbyHost: args.standbyHost,
        vrrpAddresses: ha?.apply((h) => h.vrrpAddresses),
        keepalivedConfs: ha?.apply((h) => h.keepalivedConfs),
        project: args.project,
      },
      { parent: this, dependsOn: [subnet] },
    );
    this.vipAddress = this.loadBalancer.vipAddress;
    this.vipPort = this.loadBalancer.vipPort;
    this.provisioningStatus = this.loadBalancer.provisioningStatus;
    this.operatingStatus = this.loadBalancer.operatingStatus;
    this.memberStatus = this.loadBalancer.memberStatus;
    this.haproxyCfg = this.loadBalancer.haproxyCfg;
    this.host = this.loadBalancer.host;
    this.amphorae = this.loadBalancer.amphorae;
    const fip = args.floatingIp;
    if (fip !== undefined) {
      const extSub = fip.external.subnets[fip.subnet];
      if (extSub === undefined)
        throw new pulumi.ResourceError(
          `floatingIp.subnet: the external network has no subnet ${JSON.stringify(fip.subnet)}; use one of ${Object.keys(fip.external.subnets).join(", ")}`,
          this,
        );
      this.floatingIpResource = new FloatingIp(
        `${name}-fip`,
        {
          fipName: `${lbName}-fip`,
          project: args.project,
          hosts,
          host: fip.router.host,
          routerName: fip.router.routerName,
          external: {
            networkName: fip.external.networkName,
            subnetName: extSub.subnetName,
            cidr: extSub.cidr,
            ipamHost: extSub.dhcpHost,
          },
          address: fip.address,
          target: {
            address: this.vipPort.address,
            subnetName: this.vipPort.subnet,
            networkName: this.vipPort.network,
            ipamHost: subnet.dhcpHost,
          },
        },
        { parent: this, dependsOn: [fip.router, this.loadBalancer] },
      );
      this.floatingIp = this.floatingIpResource.floatingIp;
    } else this.floatingIp = pulumi.output("");
    this.securityGroupPorts = this.vipSecurityGroups(
      name,
      lbName,
      args,
      hosts,
      ha?.apply((h) => h.vrrpAddresses),
    );
    this.registerOutputs({
      vipAddress: this.vipAddress,
      floatingIp: this.floatingIp,
      provisioningStatus: this.provisioningStatus,
      operatingStatus: this.operatingStatus,
      memberStatus: this.memberStatus,
    });
  }

  /**
   * One SecurityGroupPort per amphora, on the host-side device of its VIP veth (a bridge port
   * like a guest's tap, so the same physdev rules filter it).
   */
  private vipSecurityGroups(
    name: string,
    lbName: string,
    args: LoadBalancerArgs,
    hosts: ReturnType<typeof resolveHosts>["hosts"],
    vrrpAddresses: pulumi.Output<readonly string[]> | undefined,
  ): SecurityGroupPort[] {
    const groups = args.securityGroups ?? [];
    if (groups.length === 0) return [];
    const driver = args.network.network.driver.apply((d) => {
      if (d !== "linuxbridge")
        throw new pulumi.ResourceError(
          `securityGroups: the VIP network's driver is ${d}; security groups on a load balancer's VIP port need a linuxbridge network (on OVS the hybrid bridge would have to exist before the VIP port is plugged). Put the VIP on a linuxbridge network or drop securityGroups`,
          this,
        );
      return d;
    });
    const base = groups.map((g) => ({ groupName: g.groupName, rules: g.rules }));
    const device = loadBalancerPaths(lbName).hostDevice;
    const port = (
      i: number,
      host: pulumi.Input<string>,
      ip: pulumi.Input<string>,
      pairs: pulumi.Input<string[]>,
      extra: pulumi.Input<{ groupName: string; rules: SecurityGroupRule[] }>[],
    ): SecurityGroupPort =>
      new SecurityGroupPort(
        vrrpAddresses === undefined ? `${name}-vip` : `${name}-vip${i}`,
        {
          portName: vrrpAddresses === undefined ? `${lbName}-vip` : `${lbName}-vip${i}`,
          hosts,
          host,
          tap: device,
          mac: amphoraMac(lbName, i),
          ip,
          allowedAddresses: pairs,
          driver,
          networkBridge: args.network.bridge,
          groups: [...base, ...extra],
          project: args.project,
        },
        { parent: this, dependsOn: [this.loadBalancer, ...groups] },
      );
    if (vrrpAddresses === undefined) return [port(0, this.loadBalancer.host, args.vipAddress, [], [])];
    return [0, 1].map((i) =>
      port(
        i,
        this.loadBalancer.amphorae.apply((a) => a[i]?.host ?? ""),
        vrrpAddresses.apply((v) => v[i]),
        [args.vipAddress],
        [
          vrrpAddresses.apply((v) => ({
            groupName: `${lbName}-vrrp`,
            rules: [
              {
                direction: "ingress" as const,
                protocol: "any" as const,
                portMin: 0,
                portMax: 0,
                remoteCidr: `${v[1 - i]}/32`,
                remoteGroup: "",
                ethertype: "IPv4" as const,
              },
            ],
          })),
        ],
      ),
    );
  }
}
