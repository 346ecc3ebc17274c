/**
 * The one way the sandbox tests plug a test namespace (a stand-in guest, client or member) into a
 * kvmlab bridge on a sandbox host. Seven tests each had their own copy of these lines, and three
 * set the MTU on the host end only: the namespace's eth0 stayed at 1500, so after any loss TCP's
 * full-size retransmissions were dropped by the host end (a veth drops every non-GSO frame larger
 * than the receiving end's MTU), which was issue 16's OVS VXLAN "stall". Here both ends always get
 * the network's MTU.
 */

export interface NamespacePlug {
  /** The namespace to create (it must not exist). */
  ns: string;
  /** The veth's host end; eth0 is its peer inside `ns`. */
  dev: string;
  bridge: string;
  /** An OVS port (`--may-exist`) rather than a Linux bridge port. */
  ovs: boolean;
  /** The network's MTU, set on both veth ends. */
  mtu: number;
  /** eth0's address with its prefix length ("10.79.1.30/24"); none when null. */
  cidr: string | null;
  /** eth0's MAC address (a port's, for tests of port security). */
  mac?: string;
  /** Offloads off on both ends: OVS netdev bridges need complete checksums (docs/providers.md). */
  txOff?: boolean;
  /** A default route inside the namespace. */
  gateway?: string;
}

/**
 * The commands (one per element, in order; the caller joins them and decides on `set -e`) that
 * create `ns` and plug it into `bridge` as {@link NamespacePlug} says.
 */
export function plugLines(p: NamespacePlug): string[] {
  const inNs = (cmd: string): string => `ip netns exec ${p.ns} ${cmd}`;
  return [
    `ip netns add ${p.ns}`,
    `ip link add ${p.dev} mtu ${p.mtu} type veth peer name eth0 mtu ${p.mtu} netns ${p.ns}`,
    p.ovs ? `ovs-vsctl --may-exist add-port ${p.bridge} ${p.dev}` : `ip link set ${p.dev} master ${p.bridge}`,
    ...(p.txOff ? [`ethtool -K ${p.dev} tx off >/dev/null`, inNs("ethtool -K eth0 tx off >/dev/null")] : []),
    `ip link set ${p.dev} up`,
    ...(p.mac ? [inNs(`ip link set eth0 address ${p.mac}`)] : []),
    inNs("ip link set lo up"),
    inNs("ip link set eth0 up"),
    ...(p.cidr ? [inNs(`ip addr add ${p.cidr} dev eth0`)] : []),
    ...(p.gateway ? [inNs(`ip route add default via ${p.gateway}`)] : []),
  ];
}

/**
 * {@link plugLines} for a namespace at `ip`/24 on a network's bridge (its outputs' `bridge` and
 * `mtu`), host end `<last 6 characters of ns>h`: the load balancer tests' members and clients.
 */
export function plugOnNetwork(
  ns: string,
  ip: string,
  net: { bridge: string; mtu: number },
  opts: { ovs?: boolean; txOff?: boolean } = {},
): string[] {
  return plugLines({
    ns,
    dev: `${ns.slice(-6)}h`,
    bridge: net.bridge,
    ovs: opts.ovs ?? false,
    mtu: net.mtu,
    cidr: `${ip}/24`,
    txOff: opts.txOff,
  });
}
