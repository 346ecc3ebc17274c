/**
 * A subnet's plan: its gateway, allocation pool, DHCP port address and dnsmasq config, and the
 * MTU a network gets by default. Pure; the Network component (apply) and `kvmlab render` both
 * call {@link planSubnet}.
 */
import { intToIp, ipToInt, subnetDefaults } from "../core/net";
import { dhcpPaths } from "../core/paths";
import { renderDnsmasqConf, toDnsmasqView } from "./dnsmasq";

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
