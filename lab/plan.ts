/**
 * The deterministic address plan of a lab, for rendering without hosts. Values that a real
 * `pulumi up` decides at apply time (host placement, VNC ports) stay open; addresses that are
 * not fixed in the lab are allocated here from each subnet's pool, in definition order:
 *
 *   1. gateways, and one DHCP port per subnet with dhcp: the first address of its pool, as the
 *      Network component gives it (templates/subnet.ts `planSubnet`);
 *   2. every fixedIp / vipAddress (one equal to a DHCP port's address is an error: apply
 *      would refuse it);
 *   3. router gateway legs on their external network;
 *   4. load balancer VIPs, in order;
 *   5. server ports, in order (servers, then every slot of each autoscale group `<group>-0…max-1`:
 *      the AutoscaleGroup component pre-renders every slot, running or not);
 *   6. floating IPs: load balancers, then servers, in order.
 */
import { cidrContains, intToIp, ipToInt, parseCidr } from "../core/net";
import { defaultTypeMtu } from "../core/network";
import { networkDevices } from "../core/paths";
import { defaultMtu, planSubnet } from "../templates/subnet";
import type { Lab, LabLaunch, LabNetwork, LabSubnet } from "./model";

/**
 * MTU a lab network gets on the hosts: its `mtu`, else the Network component's default
 * (1500 for provider networks, 1450 for selfservice ones, which lose 50 bytes to VXLAN).
 */
export function networkMtu(network: LabNetwork): number {
  return network.mtu ?? (network.type ? defaultTypeMtu(network.type) : defaultMtu(network.kind));
}

/** What the Network component renders for a lab subnet (dnsmasq.conf, DHCP port address). */
export function subnetPlan(network: LabNetwork, subnet: LabSubnet): ReturnType<typeof planSubnet> {
  return planSubnet(
    network.name,
    {
      name: subnet.name,
      cidr: subnet.cidr,
      gateway: subnet.gateway,
      allocationPool: subnet.pool,
      dnsServers: subnet.dns,
      enableDhcp: subnet.dhcp,
    },
    networkMtu(network),
  );
}

export interface PlannedPort {
  readonly subnet: string;
  readonly network: string;
  readonly ip: string;
  /** True when the lab fixed the address; false when this plan allocated it. */
  readonly fixed: boolean;
  /** The network's bridge on every host (core/paths.ts `networkDevices`). */
  readonly bridge: string;
  readonly driver: LabNetwork["driver"];
  readonly mtu: number;
}

export interface PlannedServer {
  readonly name: string;
  readonly project: string;
  /** Autoscale group the server belongs to, or null. */
  readonly group: string | null;
  /** Pinned host, or null: placement is decided at apply time. */
  readonly host: string | null;
  readonly launch: LabLaunch;
  readonly ports: readonly PlannedPort[];
  readonly floatingIp: string | null;
}

export interface LabPlan {
  readonly servers: readonly PlannedServer[];
  readonly dhcpPorts: Readonly<Record<string, string>>;
  readonly routerGateways: Readonly<Record<string, string>>;
  readonly vips: Readonly<
    Record<
      string,
      {
        readonly subnet: string;
        readonly ip: string;
        readonly fixed: boolean;
        readonly floatingIp: string | null;
        /** ACTIVE_STANDBY: each amphora's own address on the VIP subnet ([] for SINGLE). */
        readonly vrrpAddresses: readonly string[];
      }
    >
  >;
}

/** Thrown when a lab cannot be planned (pool exhausted); names the YAML path. */
export class PlanError extends Error {
  constructor(
    readonly path: string,
    /** The message without the path. */
    readonly detail: string,
  ) {
    super(`${path}: ${detail}`);
  }
}

class Allocator {
  private readonly used = new Set<number>();
  private readonly range: [number, number];
  constructor(readonly subnet: LabSubnet) {
    parseCidr(subnet.cidr);
    this.range = [ipToInt(subnet.pool.start), ipToInt(subnet.pool.end)];
    if (subnet.gateway !== null) this.used.add(ipToInt(subnet.gateway));
  }
  reserve(ip: string): void {
    this.used.add(ipToInt(ip));
  }
  has(ip: string): boolean {
    return this.used.has(ipToInt(ip));
  }
  next(path: string): string {
    for (let ip = this.range[0]; ip <= this.range[1]; ip++) {
      if (!this.used.has(ip)) {
        this.used.add(ip);
        return intToIp(ip);
      }
    }
    throw new PlanError(path, `allocation pool of subnet ${this.subnet.name} is exhausted`);
  }
}

function subnetPlanAt(lab: Lab, network: LabNetwork, subnet: LabSubnet): ReturnType<typeof planSubnet> {
  try {
    return subnetPlan(network, subnet);
  } catch (err) {
    const n = lab.networks.indexOf(network);
    throw new PlanError(`networks[${n}].subnets[${network.subnets.indexOf(subnet)}]`, (err as Error).message);
  }
}

export function planLab(lab: Lab): LabPlan {
  const subnets = new Map<string, { subnet: LabSubnet; network: LabNetwork; pool: Allocator }>();
  for (const network of lab.networks)
    for (const subnet of network.subnets)
      subnets.set(subnet.name, { subnet, network, pool: new Allocator(subnet) });
  const get = (name: string) => {
    const s = subnets.get(name);
    if (s === undefined) throw new PlanError("subnet", `unknown subnet ${name}`);
    return s;
  };

  // 1. DHCP ports: the pool's first address, as the Subnet reserves it before any server exists.
  const dhcpPorts: Record<string, string> = {};
  for (const { subnet, network, pool } of subnets.values()) {
    if (!subnet.dhcp) continue;
    const ip = subnetPlanAt(lab, network, subnet).dhcpAddress;
    pool.reserve(ip);
    dhcpPorts[subnet.name] = ip;
  }
  // 2. fixed addresses
  const reserveFixed = (subnet: string, ip: string, path: string) => {
    if (dhcpPorts[subnet] === ip)
      throw new PlanError(
        path,
        `${ip} is the DHCP port's address of subnet ${subnet} (the first address of its pool); pick another address or start the pool elsewhere`,
      );
    get(subnet).pool.reserve(ip);
  };
  lab.servers.forEach((s, i) =>
    s.networks.forEach((p, j) => {
      if (p.fixedIp !== null) reserveFixed(p.subnet, p.fixedIp, `servers[${i}].networks[${j}].fixedIp`);
    }),
  );
  lab.loadBalancers.forEach((lb, i) => {
    if (lb.vipAddress !== null) reserveFixed(lb.vipSubnet, lb.vipAddress, `loadBalancers[${i}].vipAddress`);
  });

  // 3. router gateway legs
  const externalSubnet = (network: string | null) =>
    network === null ? null : (lab.networks.find((n) => n.name === network)?.subnets[0]?.name ?? null);
  const routerGateways: Record<string, string> = {};
  for (const r of lab.routers) {
    const ext = externalSubnet(r.externalNetwork);
    if (ext !== null) routerGateways[r.name] = get(ext).pool.next(`routers.${r.name}`);
  }
  const floatingSubnet = (subnet: string) => {
    const router = lab.routers.find((r) => r.interfaces.includes(subnet));
    return externalSubnet(router?.externalNetwork ?? null);
  };

  // 4. VIPs
  const vips: Record<
    string,
    { subnet: string; ip: string; fixed: boolean; floatingIp: string | null; vrrpAddresses: string[] }
  > = {};
  for (const lb of lab.loadBalancers) {
    const pool = get(lb.vipSubnet).pool;
    const ip = lb.vipAddress ?? pool.next(`loadBalancers.${lb.name}.vipAddress`);
    const vrrpAddresses =
      lb.topology === "ACTIVE_STANDBY"
        ? [0, 1].map((a) => pool.next(`loadBalancers.${lb.name}.vrrpAddresses[${a}]`))
        : [];
    vips[lb.name] = {
      subnet: lb.vipSubnet,
      ip,
      fixed: lb.vipAddress !== null,
      floatingIp: null,
      vrrpAddresses,
    };
  }

  // 5. ports
  const portsFor = (server: string, launch: LabLaunch): PlannedPort[] =>
    launch.networks.map((p, i) => {
      const { subnet, network, pool } = get(p.subnet);
      const ip = p.fixedIp ?? pool.next(`servers.${server}.networks[${i}]`);
      if (!cidrContains(parseCidr(subnet.cidr), ip))
        throw new PlanError(`servers.${server}`, `${ip} outside ${subnet.cidr}`);
      return {
        subnet: subnet.name,
        network: network.name,
        ip,
        fixed: p.fixedIp !== null,
        bridge: networkDevices(network.name).bridge,
        driver: network.driver,
        mtu: networkMtu(network),
      };
    });
  const servers: {
    name: string;
    project: string;
    group: string | null;
    host: string | null;
    launch: LabLaunch;
    ports: PlannedPort[];
    floatingIp: string | null;
    wantsFloating: boolean;
  }[] = [];
  for (const s of lab.servers) {
    servers.push({
      name: s.name,
      project: s.project,
      group: null,
      host: s.host,
      launch: s,
      ports: portsFor(s.name, s),
      floatingIp: null,
      wantsFloating: s.floatingIp,
    });
  }
  for (const g of lab.autoscaleGroups) {
    for (let i = 0; i < g.max; i++) {
      const name = `${g.name}-${i}`;
      servers.push({
        name,
        project: g.project,
        group: g.name,
        host: null,
        launch: g.launch,
        ports: portsFor(name, g.launch),
        floatingIp: null,
        wantsFloating: false,
      });
    }
  }

  // 6. floating IPs
  for (const lb of lab.loadBalancers) {
    if (!lb.floatingIp) continue;
    const ext = floatingSubnet(lb.vipSubnet);
    if (ext !== null) vips[lb.name].floatingIp = get(ext).pool.next(`loadBalancers.${lb.name}.floatingIp`);
  }
  for (const s of servers) {
    if (!s.wantsFloating || s.ports.length === 0) continue;
    const ext = floatingSubnet(s.ports[0].subnet);
    if (ext !== null) s.floatingIp = get(ext).pool.next(`servers.${s.name}.floatingIp`);
  }
  return {
    servers: servers.map(({ wantsFloating: _w, ...s }) => s),
    dhcpPorts,
    routerGateways,
    vips,
  };
}
