/**
 * Paths kvmlab gives to things on a host that no provider owns yet. Names and paths of servers,
 * networks and subnets come from provider/ (provider/network.ts `networkDevices`,
 * provider/ipam.ts `dhcpPaths`, provider/server/model.ts `serverPaths`) and components/server.ts
 * `renderServer`; `kvmlab render` uses those same functions.
 */

/** Root of kvmlab's state on every host. */
export const KVMLAB_STATE_DIR = "/var/lib/kvmlab";

/**
 * A load balancer's HAProxy files, named by the load balancer alone like every other object on
 * the hosts (joining a lab and an object name with "-" is ambiguous: lab `a-b` + `c` = lab `a` + `b-c`).
 */
export function loadBalancerPaths(lb: string) {
  const dir = `${KVMLAB_STATE_DIR}/lb/${lb}`;
  return {
    dir,
    config: `${dir}/haproxy.cfg`,
    statsSocket: `${dir}/haproxy.sock`,
    pidFile: `${dir}/haproxy.pid`,
  };
}
