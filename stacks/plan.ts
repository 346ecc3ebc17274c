/**
 * The deterministic address plan of a lab, for rendering without hosts. Values that a real
 * `pulumi up` decides at apply time (host placement, VNC ports) stay open; addresses that are
 * not fixed in the lab are allocated here from each subnet's pool, in definition order:
 *
 *   1. gateways and every fixedIp / vipAddress are reserved first;
 *   2. one DHCP port per subnet with dhcp (Neutron's DHCP port);
 *   3. router gateway legs on their external network;
 *   4. load balancer VIPs, in order;
 *   5. server ports, in order (servers, then autoscale group members `<group>-0…desired-1`);
 *   6. floating IPs: load balancers, then servers, in order.
 */
import { bridgeName, cidrContains, intToIp, ipToInt, parseCidr, portMac, tapName } from "../templates";
import type { Lab, LabLaunch, LabNetwork, LabSubnet } from "./model";

export interface PlannedPort {
  readonly subnet: string;
  readonly network: string;
  readonly ip: string;
  /** True when the lab fixed the address; false when this plan allocated it. */
  readonly fixed: boolean;
  readonly mac: string;
  readonly tap: string;
  readonly bridge: string;
  readonly driver: LabNetwork["driver"];
  readonly mtu: number | null;
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
      }
    >
  >;
}

/** Thrown when a lab cannot be planned (pool exhausted); names the YAML path. */
export class PlanError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
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

  // 1. reservations
  for (const s of lab.servers)
    for (const p of s.networks) if (p.fixedIp !== null) get(p.subnet).pool.reserve(p.fixedIp);
  for (const lb of lab.loadBalancers)
    if (lb.vipAddress !== null) get(lb.vipSubnet).pool.reserve(lb.vipAddress);

  // 2. DHCP ports
  const dhcpPorts: Record<string, string> = {};
  for (const { subnet, pool } of subnets.values())
    if (subnet.dhcp) dhcpPorts[subnet.name] = pool.next(`subnet ${subnet.name} (DHCP port)`);

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
  const vips: Record<string, { subnet: string; ip: string; fixed: boolean; floatingIp: string | null }> = {};
  for (const lb of lab.loadBalancers) {
    const ip = lb.vipAddress ?? get(lb.vipSubnet).pool.next(`loadBalancers.${lb.name}.vipAddress`);
    vips[lb.name] = { subnet: lb.vipSubnet, ip, fixed: lb.vipAddress !== null, floatingIp: null };
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
        mac: portMac(lab.name, server, i),
        tap: tapName(lab.name, server, i),
        bridge: bridgeName(lab.name, network.name),
        driver: network.driver,
        mtu: network.mtu,
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
    for (let i = 0; i < g.desired; i++) {
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
