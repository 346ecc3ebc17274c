/**
 * dnsmasq configuration for DHCP on one subnet, run inside the network's `qdhcp-<network>`
 * namespace and bound to one interface there (Neutron's DHCP agent layout). DNS is off
 * (`port=0`) unless a port is given.
 */
import { cidrContains, ipToInt, parseCidr, prefixToNetmask } from "../core/net";
import { renderTemplate } from "./render";
import { assertSealed, seal } from "./sealed";
import { checkHostname, checkIfName, checkInt, checkMac, checkName, checkPath, FieldError } from "./validate";

/** What the caller knows about a subnet's DHCP service. */
export interface DnsmasqSpec {
  /** Network name; the namespace is `qdhcp-<network>`. */
  readonly network: string;
  /** Subnet name; used as the dnsmasq tag. */
  readonly subnet: string;
  /** Interface inside the namespace that carries the subnet (≤ 15 characters). */
  readonly interface: string;
  readonly cidr: string;
  /** First and last address handed out dynamically; both inside `cidr`. */
  readonly rangeStart: string;
  readonly rangeEnd: string;
  /** Default gateway (DHCP option 3); `null` sends no router. */
  readonly gateway: string | null;
  /** DNS servers (DHCP option 6), in order. @default [] */
  readonly dnsServers?: readonly string[];
  /** Lease time in seconds (dnsmasq minimum 120). @default 86400 */
  readonly leaseTimeSec?: number;
  /** Interface MTU to announce (DHCP option 26), e.g. 1450 on VXLAN networks. @default none */
  readonly mtu?: number | null;
  /** Fixed MAC → IP (and host name) entries. @default [] */
  readonly hosts?: readonly {
    readonly mac: string;
    readonly ip: string;
    readonly hostname?: string | null;
  }[];
  /** Lease and PID file paths chosen by the caller (the DHCP provider). */
  readonly leaseFile: string;
  readonly pidFile: string;
  /** DNS port; 0 (the default) turns dnsmasq's DNS service off. */
  readonly dnsPort?: number;
}

export interface DnsmasqView {
  readonly network: string;
  readonly subnet: string;
  readonly namespace: string;
  readonly interface: string;
  readonly cidr: string;
  readonly rangeStart: string;
  readonly rangeEnd: string;
  readonly netmask: string;
  readonly leaseTimeSec: number;
  readonly gateway: string | null;
  readonly dnsServers: readonly string[];
  readonly mtu: number | null;
  readonly hosts: readonly { readonly mac: string; readonly ip: string; readonly hostname: string | null }[];
  readonly leaseFile: string;
  readonly pidFile: string;
  readonly dnsPort: number;
}

/** Validates `spec` and returns the view {@link renderDnsmasqConf} accepts. */
export function toDnsmasqView(spec: DnsmasqSpec): DnsmasqView {
  const network = checkName("network", spec.network);
  const subnet = checkName("subnet", spec.subnet);
  const cidr = parseCidr(spec.cidr, "cidr");
  const inside = (field: string, ip: unknown): string => {
    const value = ipToInt(ip as string, field);
    if (!cidrContains(cidr, value)) {
      throw new FieldError(
        field,
        `${String(ip)} is outside ${cidr.text}`,
        `pick an address inside ${cidr.text}`,
      );
    }
    return ip as string;
  };
  const rangeStart = inside("rangeStart", spec.rangeStart);
  const rangeEnd = inside("rangeEnd", spec.rangeEnd);
  if (ipToInt(rangeStart) > ipToInt(rangeEnd)) {
    throw new FieldError("rangeEnd", `${rangeEnd} comes before rangeStart ${rangeStart}`, "swap them");
  }
  const gateway = spec.gateway === null ? null : inside("gateway", spec.gateway);
  const macs = new Set<string>();
  const hosts = (spec.hosts ?? []).map((h, i) => {
    const mac = checkMac(`hosts[${i}].mac`, h.mac);
    if (macs.has(mac))
      throw new FieldError(`hosts[${i}].mac`, `duplicate MAC ${mac}`, "give each port its own MAC");
    macs.add(mac);
    return {
      mac,
      ip: inside(`hosts[${i}].ip`, h.ip),
      hostname:
        h.hostname === undefined || h.hostname === null
          ? null
          : checkHostname(`hosts[${i}].hostname`, h.hostname),
    };
  });
  return seal({
    network,
    subnet,
    namespace: `qdhcp-${network}`,
    interface: checkIfName("interface", spec.interface),
    cidr: cidr.text,
    rangeStart,
    rangeEnd,
    netmask: prefixToNetmask(cidr.prefix),
    leaseTimeSec: checkInt("leaseTimeSec", spec.leaseTimeSec ?? 86400, 120, 31536000),
    gateway,
    dnsServers: (spec.dnsServers ?? []).map((ip, i) => (ipToInt(ip, `dnsServers[${i}]`), ip)),
    mtu: spec.mtu === undefined || spec.mtu === null ? null : checkInt("mtu", spec.mtu, 576, 9216),
    hosts,
    leaseFile: checkPath("leaseFile", spec.leaseFile),
    pidFile: checkPath("pidFile", spec.pidFile),
    dnsPort: checkInt("dnsPort", spec.dnsPort ?? 0, 0, 65535),
  });
}

/** dnsmasq.conf text for one subnet; pass it with `--conf-file=FILE` and nothing else. */
export function renderDnsmasqConf(view: DnsmasqView): string {
  assertSealed(view, "toDnsmasqView");
  return renderTemplate("dnsmasq/dnsmasq.conf", view);
}
