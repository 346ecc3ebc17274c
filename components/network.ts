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
import { defaultTypeMtu, kindOfType, typeOfKind, type NetworkType } from "../core/network";
import { networkDevices } from "../core/paths";
import {
  Network as NetworkResource,
  type HostConnectionArgs,
  type NetworkDriver,
  type NetworkKind,
} from "../provider/network";
import type { InProjectArgs } from "../provider/kit";
import { Subnet } from "../provider/subnet";
import { defaultMtu, planSubnet, type SubnetSpec } from "../templates/subnet";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";

// The pure pieces a program may want beside the component (defined in templates/).
export { defaultMtu, planSubnet, type SubnetSpec } from "../templates/subnet";

export interface NetworkArgs extends InProjectArgs {
  /** Name on the hosts. @default the component name */
  readonly networkName?: string;
  /** @default "selfservice" (or the kind of `type`) */
  readonly kind?: NetworkKind;
  /** ML2 type: flat, vlan, vxlan, gre or local. @default from kind (provider: flat, selfservice: vxlan) */
  readonly type?: NetworkType;
  /** VLAN id (vlan, required), VNI (vxlan) or GRE key (gre). @default derived from the name */
  readonly segmentationId?: number;
  /** @default "linuxbridge" */
  readonly driver?: NetworkDriver;
  /** Hosts. @default kvmlab:hosts, else the running sandbox's hosts */
  readonly hosts?: readonly HostSpec[];
  /** Options for host discovery when `hosts` is not given. */
  readonly hostDiscovery?: ResolveHostsOptions;
  /** @default derived from the name */
  readonly vni?: number;
  /** @default 1450 (vxlan), 1458 (gre), 1500 (flat, vlan, local) */
  readonly mtu?: number;
  /** @default [] */
  readonly subnets?: readonly SubnetSpec[];
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
    const type = args.type ?? typeOfKind(args.kind ?? "selfservice");
    const kind = args.kind ?? kindOfType(type);
    const driver = args.driver ?? "linuxbridge";
    const mtu = args.mtu ?? (args.type ? defaultTypeMtu(type) : defaultMtu(kind));
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
      {
        networkName,
        kind,
        type,
        segmentationId: args.segmentationId,
        driver,
        hosts,
        vni: args.vni,
        mtu,
        ...(args.project !== undefined ? { project: args.project } : {}),
      },
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
          ...(args.project !== undefined ? { project: args.project } : {}),
        },
        { parent: this, dependsOn: [this.network] },
      );
    }
    this.networkName = this.network.networkName;
    this.bridge = this.network.bridge;
    this.registerOutputs({ networkName: this.networkName, bridge: this.bridge });
  }
}
