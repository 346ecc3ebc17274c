/**
 * IPv4 and CIDR arithmetic: the one copy shared by the templates, the lab language, the
 * components and the providers' address management. Addresses are unsigned 32-bit integers.
 * Pure.
 */
import { FieldError } from "./errors";

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** A parsed IPv4 network: `network` and `broadcast` as integers, `prefix` 0–32. */
export interface Cidr {
  readonly text: string;
  readonly network: number;
  readonly prefix: number;
  readonly broadcast: number;
}

/** True when `value` is a dotted-quad IPv4 address without leading zeros. */
export function isIPv4(value: unknown): value is string {
  return typeof value === "string" && IPV4.test(value);
}

/** Dotted quad → unsigned integer. Throws a {@link FieldError} naming `field` on bad input. */
export function ipToInt(ip: string, field = "address"): number {
  if (!isIPv4(ip)) {
    throw new FieldError(field, `expected an IPv4 address like 10.0.0.5, got ${JSON.stringify(ip)}`);
  }
  return ip.split(".").reduce((acc, part) => acc * 256 + Number(part), 0);
}

/** Dotted quad → unsigned integer, or NaN when it is not one (for checks that collect errors). */
export function ipv4ToInt(ip: string): number {
  return isIPv4(ip) ? ipToInt(ip) : Number.NaN;
}

/** Unsigned integer → dotted quad. */
export function intToIp(value: number): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`not an IPv4 address integer: ${value}`);
  }
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

/** Netmask for a prefix length, e.g. 24 → 255.255.255.0. */
export function prefixToNetmask(prefix: number): string {
  return intToIp(prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0);
}

/**
 * Parses `a.b.c.d/n`. The address must be the network address itself (10.0.0.0/24, not
 * 10.0.0.1/24), so a typo in the prefix is caught rather than silently masked.
 */
export function parseCidr(text: string, field = "cidr"): Cidr {
  const match = typeof text === "string" ? /^([0-9.]+)\/(\d{1,2})$/.exec(text) : null;
  if (match === null || !isIPv4(match[1]) || Number(match[2]) > 32) {
    throw new FieldError(field, `expected an IPv4 CIDR like 10.0.0.0/24, got ${JSON.stringify(text)}`);
  }
  const prefix = Number(match[2]);
  const address = ipToInt(match[1], field);
  const size = 2 ** (32 - prefix);
  const network = address - (address % size);
  if (network !== address) {
    throw new FieldError(
      field,
      `${text} has host bits set; the network address for /${prefix} is ${intToIp(network)}/${prefix}`,
    );
  }
  return { text, network, prefix, broadcast: network + size - 1 };
}

/** Like {@link parseCidr}, but undefined instead of an error (for checks that collect errors). */
export function tryParseCidr(text: string): Cidr | undefined {
  try {
    return parseCidr(text);
  } catch {
    return undefined;
  }
}

/** True when `ip` lies inside `cidr` (network and broadcast addresses included). */
export function cidrContains(cidr: Cidr, ip: string | number): boolean {
  const value = typeof ip === "number" ? ip : ipToInt(ip);
  return value >= cidr.network && value <= cidr.broadcast;
}

/** True when the two networks share at least one address. */
export function overlaps(a: Cidr, b: Cidr): boolean {
  return a.network <= b.broadcast && b.network <= a.broadcast;
}

/**
 * Usable host addresses of a network as integers `[first, last]`: network and broadcast
 * excluded, except for /31 and /32 where every address is usable.
 */
export function hostRange(cidr: Cidr): [number, number] {
  if (cidr.prefix >= 31) return [cidr.network, cidr.broadcast];
  return [cidr.network + 1, cidr.broadcast - 1];
}

/**
 * A subnet's defaults: gateway (the first host address unless given; "" for none), allocation
 * pool (after the gateway to the last host address) and the DHCP port's address (the pool's
 * first). Undefined when `cidr` is not a network of prefix /29 or shorter.
 */
export function subnetDefaults(
  cidr: string,
  gateway?: string,
): { gateway: string; allocationPool: { start: string; end: string }; dhcpAddress: string } | undefined {
  const c = tryParseCidr(cidr);
  if (!c || c.prefix > 29) return undefined;
  const gw = gateway ?? intToIp(c.network + 1);
  const gwN = gw === "" ? c.network : ipv4ToInt(gw);
  const start = gwN + 1 < c.broadcast ? gwN + 1 : c.network + 1;
  return {
    gateway: gw,
    allocationPool: { start: intToIp(start), end: intToIp(c.broadcast - 1) },
    dhcpAddress: intToIp(start),
  };
}
