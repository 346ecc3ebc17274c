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
      { timeoutMs: 60000 },
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
