/**
 * Capability probe: what a host can do, in one remote step, cached per host per process.
 *
 * KVM counts as usable only when /dev/kvm exists, the CPU shows its virtualisation flags (vmx or
 * svm) AND libvirt reports a `kvm` domain type (`virsh domcapabilities --virttype kvm` succeeds);
 * otherwise guests run under TCG (`<domain type='qemu'>`). /dev/kvm alone is not enough: in nested
 * or emulated setups it opens and libvirt offers kvm, but guests abort at start. Tools missing for the features a resource needs become one error
 * listing the Debian packages to install.
 */
import type { HostConnection } from "./connection";
import { hostCache, runChecked } from "./session";
import { parseKeyValues } from "../kit/kv";
import { shQuote } from "./quote";
import { NETWORK_TYPES, defaultTypeMtu, type NetworkType } from "../../core/network";

/** What the probe found. Versions are "" when the tool is missing. */
export interface HostCapabilities {
  readonly kvm: boolean;
  readonly libvirtVersion: string;
  readonly qemuVersion: string;
  readonly ovsVersion: string;
  /** The openvswitch kernel module is loaded (else OVS bridges need datapath_type=netdev). */
  readonly ovsKernelDatapath: boolean;
  readonly dnsmasq: boolean;
  readonly haproxy: boolean;
  readonly iptables: boolean;
  readonly nft: boolean;
  readonly iproute2: boolean;
  readonly flock: boolean;
}

/** Features a resource can require, each mapped to what it needs on the host. */
export type HostFeature =
  "linuxbridge" | "openvswitch" | "vxlan" | "dhcp" | "libvirt" | "haproxy" | "firewall";

const PROBE_SCRIPT = [
  'v() { command -v "$1" >/dev/null 2>&1; }',
  'echo "iproute2=$(v ip && echo yes || echo no)"',
  'echo "flock=$(v flock && echo yes || echo no)"',
  'echo "dnsmasq=$(v dnsmasq && echo yes || echo no)"',
  'echo "haproxy=$(v haproxy && echo yes || echo no)"',
  'echo "iptables=$(v iptables && echo yes || echo no)"',
  'echo "nft=$(v nft && echo yes || echo no)"',
  'if v ovs-vsctl && ovs-vsctl --timeout=5 show >/dev/null 2>&1; then echo "ovs=$(ovs-vsctl --version | head -n1 | awk \'{print $NF}\')"; else echo "ovs="; fi',
  "if [ -d /sys/module/openvswitch ]; then echo ovskmod=yes; else echo ovskmod=no; fi",
  // In a shell variable, not a file: a predictable /tmp name written as root can be a symlink
  // planted by any local user (issue 15).
  "if v virsh && vv=$(virsh -c qemu:///system version 2>/dev/null); then",
  "  echo \"libvirt=$(printf '%s\\n' \"$vv\" | awk '/Using library/ {print $NF}')\"",
  "  echo \"qemu=$(printf '%s\\n' \"$vv\" | awk '/Running hypervisor/ {print $NF}')\"",
  "  if [ -c /dev/kvm ] && grep -qE '^flags[[:space:]]*:.*\\b(vmx|svm)\\b' /proc/cpuinfo && virsh -c qemu:///system domcapabilities --virttype kvm >/dev/null 2>&1; then echo kvm=yes; else echo kvm=no; fi",
  // virsh is there but libvirtd does not answer (stopped, crashed, restarting): not a missing package.
  "else if v virsh; then echo libvirtd=down; fi; echo libvirt=; echo qemu=; echo kvm=no; fi",
].join("\n");

/** The probe's step script (exposed for tests). */
export function probeScript(withLibvirt: boolean): string {
  return withLibvirt
    ? PROBE_SCRIPT
    : PROBE_SCRIPT.split("\nif v virsh")[0] + "\necho libvirt=; echo qemu=; echo kvm=no";
}

/** Parses the probe's `key=value` lines. */
export function parseProbe(stdout: string): HostCapabilities {
  const kv = parseKeyValues(stdout);
  const yes = (k: string): boolean => kv.get(k) === "yes";
  return {
    kvm: yes("kvm"),
    libvirtVersion: kv.get("libvirt") ?? "",
    qemuVersion: kv.get("qemu") ?? "",
    ovsVersion: kv.get("ovs") ?? "",
    ovsKernelDatapath: yes("ovskmod"),
    dnsmasq: yes("dnsmasq"),
    haproxy: yes("haproxy"),
    iptables: yes("iptables"),
    nft: yes("nft"),
    iproute2: yes("iproute2"),
    flock: yes("flock"),
  };
}

/** Debian packages missing for the given features, or [] when the host has everything. */
export function missingPackages(caps: HostCapabilities, features: readonly HostFeature[]): string[] {
  const need = new Set<string>();
  if (!caps.iproute2) need.add("iproute2");
  if (!caps.flock) need.add("util-linux");
  for (const f of features) {
    if (f === "openvswitch" && !caps.ovsVersion) need.add("openvswitch-switch");
    if (f === "dhcp" && !caps.dnsmasq) need.add("dnsmasq-base");
    if (f === "haproxy" && !caps.haproxy) need.add("haproxy");
    if (f === "firewall" && !caps.iptables && !caps.nft) need.add("iptables");
    if (f === "libvirt" && !caps.libvirtVersion) {
      need.add("libvirt-daemon-system");
      need.add("qemu-system-x86");
    }
  }
  return [...need].sort();
}

/** Probes a host once per process (libvirt only when asked: its first probe is slow). */
export function probeHost(host: HostConnection, withLibvirt = false): Promise<HostCapabilities> {
  return hostCache(host, withLibvirt ? "caps+libvirt" : "caps", async () => {
    const [out] = await runChecked(
      host,
      [{ label: "probe host capabilities", script: probeScript(withLibvirt) }],
      // A worker shell: the probe needs no lock, and its first libvirt probe is slow; in the main
      // shell it held up the placement and IPAM round trips queued behind it (issue 13).
      { timeoutMs: 60000, lane: "worker" },
    );
    // Thrown, so not cached: the next operation probes again once libvirtd is back.
    if (withLibvirt && parseKeyValues(out).get("libvirtd") === "down")
      throw new Error(
        `host ${host.name} (${host.address}): libvirtd does not answer (virsh is installed, but "virsh -c qemu:///system version" failed): ` +
          "start it (systemctl start libvirtd; its log is /var/log/libvirt/libvirtd.log) and run again",
      );
    return parseProbe(out);
  });
}

/** Probes and throws one clear error when the host lacks something the features need. */
export async function requireFeatures(
  host: HostConnection,
  features: readonly HostFeature[],
): Promise<HostCapabilities> {
  const caps = await probeHost(host, features.includes("libvirt"));
  const missing = missingPackages(caps, features);
  if (missing.length > 0) {
    throw new Error(
      `host ${host.name} (${host.address}) lacks what ${features.join(", ")} need: ` +
        `install it with: apt-get install -y ${missing.join(" ")}` +
        (features.includes("openvswitch") && missing.includes("openvswitch-switch")
          ? " (and make sure ovsdb-server and ovs-vswitchd run)"
          : ""),
    );
  }
  return caps;
}

/** What a host offers the network types (probed separately: it needs the host's tunnel address). */
export interface NetworkTypeCapabilities {
  /** 802.1Q devices: the 8021q module is loaded or loadable. */
  readonly vlan8021q: boolean;
  /** Kernel VXLAN devices can be made. */
  readonly vxlanKernel: boolean;
  /** Open vSwitch answers. */
  readonly ovs: boolean;
  /**
   * Open vSwitch's kernel datapath is there (the openvswitch module is loaded): kvmlab's OVS
   * bridges use it (datapath_type system) instead of the userspace (netdev) datapath.
   */
  readonly ovsKernelDatapath: boolean;
  /**
   * The host's tunnel address lies on an OVS bridge: what the userspace datapath's native
   * tunnels (GRE) need to route and send their packets.
   */
  readonly tunnelOnOvsBridge: boolean;
  /** The device holding the tunnel address ("" when none has it or none was asked). */
  readonly tunnelDevice: string;
  /** The underlay MTU: that device's, or on an OVS bridge the smallest of its and its ports' (0 when unknown). */
  readonly tunnelMtu: number;
  /** The tunnel address's prefix length on that device, as `ip -o -4 addr` shows it (0 when unknown). */
  readonly tunnelPrefix: number;
  readonly ethtool: boolean;
}

/** Probe script for network types; `tunnelAddress` is a checked IPv4 address or "". */
export function networkTypesProbeScript(tunnelAddress = ""): string {
  return [
    'v() { command -v "$1" >/dev/null 2>&1; }',
    `ta=${shQuote(tunnelAddress)}`,
    "if [ -d /proc/net/vlan ] || { v modinfo && modinfo 8021q >/dev/null 2>&1; }; then echo vlan=yes; else echo vlan=no; fi",
    "if [ -d /sys/module/vxlan ] || { v modinfo && modinfo vxlan >/dev/null 2>&1; }; then echo vxlan=yes; else echo vxlan=no; fi",
    "if v ovs-vsctl && ovs-vsctl --timeout=5 show >/dev/null 2>&1; then echo ovs=yes; else echo ovs=no; fi",
    'echo "ethtool=$(v ethtool && echo yes || echo no)"',
    "if [ -d /sys/module/openvswitch ]; then echo ovskernel=yes; else echo ovskernel=no; fi",
    'd=""; l=""; if [ -n "$ta" ]; then l=$(ip -o -4 addr show | awk -v a="$ta" \'{split($4, p, "/"); if (p[1] == a) print $2 " " p[2]}\' | head -n1); fi',
    'd=${l%% *}; echo "tundev=$d"',
    'if [ -n "$d" ] && v ovs-vsctl && ovs-vsctl br-exists "$d" 2>/dev/null; then echo tunovs=yes; else echo tunovs=no; fi',
    // The underlay MTU: the device's, or on an OVS bridge the smallest of it and its ports' (the NIC).
    'if [ -n "$d" ]; then echo "tunprefix=${l#* }"; m=$(cat "/sys/class/net/$d/mtu" 2>/dev/null || echo 0)',
    '  if v ovs-vsctl && ovs-vsctl br-exists "$d" 2>/dev/null; then for p in $(ovs-vsctl list-ports "$d"); do q=$(cat "/sys/class/net/$p/mtu" 2>/dev/null || echo 0); [ "$q" -gt 0 ] && [ "$q" -lt "$m" ] && m=$q; done; fi',
    '  echo "tunmtu=$m"; fi',
  ].join("\n");
}

export function parseNetworkTypesProbe(stdout: string): NetworkTypeCapabilities {
  const kv = parseKeyValues(stdout);
  const yes = (k: string): boolean => kv.get(k) === "yes";
  return {
    vlan8021q: yes("vlan"),
    vxlanKernel: yes("vxlan"),
    ovs: yes("ovs"),
    ovsKernelDatapath: yes("ovskernel"),
    tunnelOnOvsBridge: yes("tunovs"),
    tunnelDevice: kv.get("tundev") ?? "",
    tunnelMtu: Number(kv.get("tunmtu") ?? 0) || 0,
    tunnelPrefix: Number(kv.get("tunprefix") ?? 0) || 0,
    ethtool: yes("ethtool"),
  };
}

/**
 * Why a host cannot carry a network type with a driver, naming the fix; undefined when it can.
 * Pure (from the probe's findings).
 */
export function networkTypeRefusal(
  caps: NetworkTypeCapabilities,
  driver: "linuxbridge" | "openvswitch",
  type: NetworkType,
  /** The network spans hosts (a one-host gre network makes no tunnel port). */
  tunnels = true,
  /** The host's tunnel address (named in the userspace datapath's GRE refusal). */
  tunnelAddress = "",
): string | undefined {
  const ovs = driver === "openvswitch";
  if (ovs && !caps.ovs)
    return "Open vSwitch does not answer: install openvswitch-switch and start ovsdb-server and ovs-vswitchd";
  if (type === "vlan" && !ovs && !caps.vlan8021q)
    return "a vlan network on the Linux bridge driver needs 802.1Q devices (the 8021q kernel module), which this host lacks: load it (modprobe 8021q) or use driver openvswitch, whose userspace datapath tags VLANs itself";
  if (type === "vxlan" && !caps.vxlanKernel)
    return "a vxlan network needs kernel VXLAN devices (the vxlan module), which this host lacks: load it (modprobe vxlan)";
  if (type === "vxlan" && ovs && !caps.ethtool)
    return "a vxlan network on Open vSwitch turns offloads off on its VXLAN port with ethtool, which this host lacks: apt-get install -y ethtool";
  if (type === "gre" && !ovs)
    return "a gre network needs driver openvswitch (OVS GRE tunnel ports); the Linux bridge driver has no GRE here";
  // The userspace (netdev) datapath: kvmlab joins the network's bridge to a tunnel bridge with
  // a veth pair whose ends have checksum offload off (ethtool), and OVS's native GRE sends from
  // the tunnel address only when that address lies on an OVS bridge holding the underlay NIC.
  if (type === "gre" && tunnels && !caps.ovsKernelDatapath && !caps.ethtool)
    return "a gre network on Open vSwitch's userspace datapath turns checksum offload off on its tunnel link with ethtool, which this host lacks: apt-get install -y ethtool (or load the openvswitch kernel module: modprobe openvswitch)";
  if (type === "gre" && tunnels && !caps.ovsKernelDatapath && !caps.tunnelOnOvsBridge) {
    const dev = caps.tunnelDevice || "eth2";
    const at = tunnelAddress || "<tunnel address>";
    const cidr = `${at}/${caps.tunnelPrefix || "<prefix>"}`;
    return (
      `a gre network uses OVS native GRE tunnels, which Open vSwitch's userspace (netdev) datapath (no openvswitch kernel module here) sends only from an address on an OVS bridge; ` +
      `the tunnel address ${at} is ${caps.tunnelDevice ? `on ${caps.tunnelDevice}, not an OVS bridge` : "on no device"}: ` +
      `move it onto a bridge holding the underlay NIC (ovs-vsctl add-br br-phy -- set bridge br-phy datapath_type=netdev -- add-port br-phy ${dev}; ` +
      `ip addr del ${cidr} dev ${dev}; ip addr add ${cidr} dev br-phy; ip link set br-phy up; underlay MTU at least the network's MTU + 42), ` +
      `load the openvswitch kernel module (modprobe openvswitch), or use type vxlan`
    );
  }
  return undefined;
}

/** Bytes a tunnel type adds to each frame on the underlay (outer IPv4 + UDP/GRE + inner Ethernet). */
export const TUNNEL_OVERHEAD: Partial<Record<NetworkType, number>> = { vxlan: 50, gre: 42 };

/**
 * Why a network's MTU does not fit its hosts' underlay (review V3): the tunnel device's MTU must
 * hold the network's MTU plus the type's overhead. Refused only where oversized frames are lost
 * without notice: OVS's native GRE on the userspace datapath (no openvswitch kernel module). The
 * kernel's tunnels (VXLAN on both drivers, GRE on OVS's kernel datapath) fragment the outer
 * packet instead, so a network that works today, for example the default 1450 on a cloud VM's
 * 1450 underlay, is not refused (review 7b, N2). Undefined when it fits, when the type has no
 * tunnel there, the network spans one host, or the probe found no tunnel device. Pure.
 */
export function underlayMtuRefusal(
  caps: NetworkTypeCapabilities,
  type: NetworkType,
  mtu: number,
  tunnels = true,
  driver: "linuxbridge" | "openvswitch" = "openvswitch",
): string | undefined {
  const overhead = TUNNEL_OVERHEAD[type];
  const silentDrops = type === "gre" && driver === "openvswitch" && !caps.ovsKernelDatapath;
  if (
    overhead === undefined ||
    !silentDrops ||
    !tunnels ||
    caps.tunnelMtu <= 0 ||
    mtu + overhead <= caps.tunnelMtu
  )
    return undefined;
  const dev = caps.tunnelDevice;
  const dflt = defaultTypeMtu(type);
  const leave = dflt + overhead <= caps.tunnelMtu ? ` (or leave it out: the default is ${dflt})` : "";
  return (
    `mtu: a ${type} network's mtu ${mtu} plus its ${overhead}-byte tunnel overhead is ${mtu + overhead}, more than the underlay MTU ${caps.tunnelMtu} of ${dev} (the device holding the tunnel address); ` +
    `full-size frames would not cross. Fix: set mtu to at most ${caps.tunnelMtu - overhead}${leave}, or raise the MTU of ${dev} and the NICs under it to at least ${mtu + overhead} (ip link set dev ${dev} mtu ${mtu + overhead})`
  );
}

/** Probes a host's network-type support once per process. */
export function probeNetworkTypes(host: HostConnection): Promise<NetworkTypeCapabilities> {
  return hostCache(host, "net-types", async () => {
    const [out] = await runChecked(
      host,
      [{ label: "probe network types", script: networkTypesProbeScript(host.tunnelAddress ?? "") }],
      { timeoutMs: 60000 },
    );
    return parseNetworkTypesProbe(out);
  });
}

/** The network types a host can carry with a driver (for reports and tests). */
export async function hostNetworkTypes(
  host: HostConnection,
  driver: "linuxbridge" | "openvswitch",
): Promise<NetworkType[]> {
  const caps = await probeNetworkTypes(host);
  return NETWORK_TYPES.filter(
    (t) => networkTypeRefusal(caps, driver, t, true, host.tunnelAddress ?? "") === undefined,
  );
}

/**
 * Probes and throws one clear error (host, type, fix) when the host cannot carry the type (call
 * requireFeatures for the driver's packages first).
 */
export async function requireNetworkType(
  host: HostConnection,
  driver: "linuxbridge" | "openvswitch",
  type: NetworkType,
  tunnels = true,
  /** The network's MTU: refused when it plus the tunnel overhead exceeds the underlay's. */
  mtu = 0,
): Promise<void> {
  const caps = await probeNetworkTypes(host);
  const why =
    networkTypeRefusal(caps, driver, type, tunnels, host.tunnelAddress ?? "") ??
    underlayMtuRefusal(caps, type, mtu, tunnels, driver);
  if (why) throw new Error(`host ${host.name} (${host.address}) cannot carry this ${type} network: ${why}`);
}
