/**
 * Names and paths kvmlab gives to things on a host, derived purely from lab-level names so the
 * renderer (stacks/components) and the providers agree without talking to each other.
 * Interface names are a 3-character role prefix + 11 hex characters of a hash (Neutron style).
 */
import { deterministicIfName, deterministicMac, deterministicUuid } from "./validate";

/** Root of kvmlab's state on every host. */
export const KVMLAB_STATE_DIR = "/var/lib/kvmlab";
export const KVMLAB_RUN_DIR = "/run/kvmlab";

/** libvirt domain name of a server: `<lab>-<server>`. */
export const domainName = (lab: string, server: string): string => `${lab}-${server}`;
/** Stable domain UUID of a server. */
export const serverUuid = (lab: string, project: string, server: string): string =>
  deterministicUuid(`${lab}/${project}/${server}`);
/** Bridge of a network on every host (`brq…`, both drivers). */
export const bridgeName = (lab: string, network: string): string =>
  deterministicIfName("brq", `${lab}/${network}`);
/** Tap device of a server's port (`tap…`). */
export const tapName = (lab: string, server: string, port: number): string =>
  deterministicIfName("tap", `${lab}/${server}/${port}`);
/** MAC of a server's port (fa:16:3e:…). */
export const portMac = (lab: string, server: string, port: number): string =>
  deterministicMac(`${lab}/${server}/${port}`);
/** Interface dnsmasq serves inside the `qdhcp-<lab>-<network>` namespace (`ns-…`). */
export const dhcpInterfaceName = (lab: string, subnet: string): string =>
  deterministicIfName("ns-", `${lab}/${subnet}`);
/** Network namespace of a network's DHCP server. */
export const dhcpNamespace = (lab: string, network: string): string => `qdhcp-${lab}-${network}`;

/** Per-server files on its host. */
export function instancePaths(lab: string, server: string) {
  const dir = `${KVMLAB_STATE_DIR}/instances/${domainName(lab, server)}`;
  return { dir, disk: `${dir}/disk.qcow2`, seedIso: `${dir}/seed.iso`, consoleLog: `${dir}/console.log` };
}

/** Where an image's files live in a host's image store. */
export function imagePaths(image: string) {
  const dir = `${KVMLAB_STATE_DIR}/images/${image}`;
  return { dir, disk: `${dir}/disk`, kernel: `${dir}/kernel`, ramdisk: `${dir}/ramdisk` };
}

/** dnsmasq lease and pid files of a subnet. */
export function dhcpPaths(lab: string, subnet: string) {
  return {
    leaseFile: `${KVMLAB_STATE_DIR}/dhcp/${lab}-${subnet}.leases`,
    pidFile: `${KVMLAB_RUN_DIR}/dhcp/${lab}-${subnet}.pid`,
    confFile: `${KVMLAB_STATE_DIR}/dhcp/${lab}-${subnet}.conf`,
  };
}

/** A load balancer's HAProxy files. */
export function loadBalancerPaths(lab: string, lb: string) {
  const dir = `${KVMLAB_STATE_DIR}/lb/${lab}-${lb}`;
  return {
    dir,
    config: `${dir}/haproxy.cfg`,
    statsSocket: `${dir}/haproxy.sock`,
    pidFile: `${dir}/haproxy.pid`,
  };
}
