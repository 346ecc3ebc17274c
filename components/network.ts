/**
 * Network component: a kvmlab network with its subnets, the way a user thinks of a Neutron
 * network. It resolves the hosts (components/hosts.ts), renders each subnet's dnsmasq config
 * in the program (templates/) and wires one Network and one Subnet per subnet resource.
 *
 * ```ts
 * const lan = new Network("lan", {
 *   kind: "selfservice",
 *   subnets: [{ name: "lan-v4", cidr: "10.10.0.0/24", dnsServers: ["10.10.0.1"] }],
 * });
 * ```
 */
import * as pulumi from "@pulumi/pulumi";
import {
  Network as NetworkResource,
  networkDevices,
  type HostConnectionArgs,
  type NetworkDriver,
  type NetworkKind,
} from "../provider/network";
import { Subnet, dhcpPaths, subnetDefaults } from "../provider/subnet";
import { intToIp, ipToInt, renderDnsmasqConf, toDnsmasqView } from "../templates";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";

/** One subnet of a {@link Network}. */
export interface SubnetSpec {
  /** Subnet name (unique in the lab); the child resource is `${network}-${name}`. */
  readonly name: string;
  /** e.g. "10.10.0.0/24". */
  readonly cidr: string;
  /** Gateway; null for none. @default the first host address */
  readonly gateway?: string | null;
  /** @default gateway+1 .. the last host address; its first address is the DHCP port's */
  readonly allocationPool?: { readonly start: string; readonly end: string };
  /** @default [] */
  readonly dnsServers?: readonly string[];
  /** @default true */
  readonly enableDhcp?: boolean;
  /** Host that runs DHCP. @default the first host */
  readonly dhcpHost?: string;
  /** @default 86400 */
  readonly leaseTimeSec?: number;
}

export interface NetworkArgs {
  /** Name on the hosts. @default the component name */
  readonly networkName?: string;
  /** @default "selfservice" */
  readonly kind?: NetworkKind;
  /** @default "linuxbridge" */
  readonly driver?: NetworkDriver;
  /** Hosts. @default kvmlab:hosts, else the running sandbox's hosts */
  readonly hosts?: readonly HostSpec[];
  /** Options for host discovery when `hosts` is not given. */
  readonly hostDiscovery?: ResolveHostsOptions;
  /** @default derived from the name */
  readonly vni?: number;
  /** @default 1450 (selfservice) or 1500 (provider) */
  readonly mtu?: number;
  /** @default [] */
  readonly subnets?: readonly SubnetSpec[];
}

/** MTU a network gets when none is given: 1500 on a flat provider network, 1450 on a selfservice one (VXLAN takes 50 bytes). */
export function defaultMtu(kind: "provider" | "selfservice"): number {
  return kind === "provider" ? 1500 : 1450;
}

/** What the component renders for one subnet (pure; exported for tests and `kvmlab render`). */
export function planSubnet(
  networkName: string,
  spec: SubnetSpec,
  mtu: number,
): {
  gateway: string;
  allocationPool: { start: string; end: string };
  dhcpAddress: string;
  dnsmasqConf: string;
} {
  const defaults = subnetDefaults(spec.cidr, spec.gateway === null ? "" : spec.gateway);
  if (!defaults)
    throw new Error(
      `subnets[${spec.name}].cidr: expected an IPv4 network like 10.10.0.0/24 (prefix up to /29), got ${JSON.stringify(spec.cidr)}`,
    );
  const pool = spec.allocationPool
    ? { start: spec.allocationPool.start, end: spec.allocationPool.end }
    : defaults.allocationPool;
  const dhcpAddress = pool.start;
  const enable = spec.enableDhcp ?? true;
  let dnsmasqConf = "";
  if (enable) {
    const rangeStart = intToIp(ipToInt(pool.start, `subnets[${spec.name}].allocationPool.start`) + 1);
    if (ipToInt(rangeStart) > ipToInt(pool.end, `subnets[${spec.name}].allocationPool.end`)) {
      throw new Error(
        `subnets[${spec.name}].allocationPool: needs at least 2 addresses (the first is the DHCP port's); widen it`,
      );
    }
    const paths = dhcpPaths(networkName, spec.name);
    dnsmasqConf = renderDnsmasqConf(
      toDnsmasqView({
        network: networkName,
        subnet: spec.name,
        interface: paths.nsDevice,
        cidr: spec.cidr,
        rangeStart,
        rangeEnd: pool.end,
        gateway: defaults.gateway === "" ? null : defaults.gateway,
        dnsServers: spec.dnsServers ?? [],
        leaseTimeSec: spec.leaseTimeSec ?? 86400,
        mtu,
        leaseFile: paths.leaseFile,
        pidFile: paths.pidFile,
      }),
    );
  }
  return { gateway: defaults.gateway, allocationPool: pool, dhcpAddress, dnsmasqConf };
}

export class Network extends pulumi.ComponentResource {
  /** The network's name on the hosts. */
  public readonly networkName: pulumi.Output<string>;
  /** Bridge device on every host (e.g. kvlb-1a2b3c4d): what servers attach to. */
  public readonly bridge: pulumi.Output<string>;
  /** The underlying dynamic resource. */
  public readonly network: NetworkResource;
  /** Subnet resources by subnet name. */
  public readonly subnets: Record<string, Subnet>;

  constructor(name: string, args: NetworkArgs = {}, opts: pulumi.ComponentResourceOptions = {}) {
    super("kvmlab:network:Network", name, {}, opts);
    const networkName = args.networkName ?? name;
    const kind = args.kind ?? "selfservice";
    const driver = args.driver ?? "linuxbridge";
    const mtu = args.mtu ?? defaultMtu(kind);
    const hosts: HostConnectionArgs[] = resolveHosts(args.hosts, args.hostDiscovery).hosts;
    const names = new Set<string>();
    for (const s of args.subnets ?? []) {
      if (names.has(s.name))
        throw new pulumi.ResourceError(
          `subnets: the name ${JSON.stringify(s.name)} appears twice; subnet names must be unique`,
          this,
        );
      names.add(s.name);
    }

    this.network = new NetworkResource(
      name,
      { networkName, kind, driver, hosts, vni: args.vni, mtu },
      { parent: this },
    );
    this.subnets = {};
    for (const spec of args.subnets ?? []) {
      let plan: ReturnType<typeof planSubnet>;
      try {
        plan = planSubnet(networkName, spec, mtu);
      } catch (err) {
        throw new pulumi.ResourceError((err as Error).message, this);
      }
      this.subnets[spec.name] = new Subnet(
        `${name}-${spec.name}`,
        {
          subnetName: spec.name,
          // Known in the program (not the Network's outputs), so a preview of a Network update
          // does not show its subnets as replaced; dependsOn keeps the order.
          networkName,
          networkBridge: networkDevices(networkName).bridge,
          driver,
          hosts,
          cidr: spec.cidr,
          gateway: plan.gateway,
          allocationPool: plan.allocationPool,
          dnsServers: [...(spec.dnsServers ?? [])],
          enableDhcp: spec.enableDhcp ?? true,
          dhcpHost: spec.dhcpHost,
          dhcpAddress: plan.dhcpAddress,
          dnsmasqConf: plan.dnsmasqConf,
          mtu,
        },
        { parent: this, dependsOn: [this.network] },
      );
    }
    this.networkName = this.network.networkName;
    this.bridge = this.network.bridge;
    this.registerOutputs({ networkName: this.networkName, bridge: this.bridge });
  }
}
