/**
 * A subnet's address allocations as kept on its DHCP host (records/ipam/<subnet>.json), and the
 * dnsmasq dhcp-hostsfile they become. Pure; the IPAM in provider/ipam.ts writes both, and
 * `kvmlab render` shows the same file.
 */

/** One subnet's allocations. Keys of `allocations` are dotted-quad addresses. */
export interface IpamRecord {
  subnet: string;
  cidr: string;
  gateway: string;
  pool: { start: string; end: string };
  allocations: Record<string, { owner: string; mac: string }>;
}

/** dnsmasq dhcp-hostsfile text: one `mac,ip` line per allocation with a MAC, sorted. */
export function hostsFileText(record: IpamRecord): string {
  return Object.entries(record.allocations)
    .filter(([, a]) => a.mac !== "")
    .map(([ip, a]) => `${a.mac},${ip}\n`)
    .sort()
    .join("");
}
