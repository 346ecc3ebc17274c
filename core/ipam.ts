/**
 * A subnet's address allocations as kept on its DHCP host (records/ipam/<subnet>.json), and the
 * dnsmasq dhcp-hostsfile they become. Pure; the IPAM in provider/ipam.ts writes both, and
 * `kvmlab render` shows the same file.
 */

/** One subnet's allocations. Keys of `allocations` are dotted-quad addresses. */
export interface IpamRecord {
  subnet: string;
  /** The subnet's network (records from before issue 15 lack it). */
  network?: string;
  /** The Subnet resource's owner (provider/kit/owner.ts). */
  owner?: string;
  cidr: string;
  gateway: string;
  pool: { start: string; end: string };
  /** `owner` is the allocation's id (e.g. server:<uuid>:0); `holder` the resource owner that made it. */
  allocations: Record<string, { owner: string; mac: string; holder?: string }>;
}

/** dnsmasq dhcp-hostsfile text: one `mac,ip` line per allocation with a MAC, sorted. */
export function hostsFileText(record: IpamRecord): string {
  return Object.entries(record.allocations)
    .filter(([, a]) => a.mac !== "")
    .map(([ip, a]) => `${a.mac},${ip}\n`)
    .sort()
    .join("");
}
