/**
 * Inputs shared by the provider unit tests: a fake private key (never a real one), a pin, host
 * connections, and a Server input rendered by the real Server component.
 */
import { loadBalancerConfig } from "../../../components/loadBalancer";
import { renderServer } from "../../../components/server";
import type { HostConnection } from "../../../provider";

export const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
export const PIN = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";

/** Host `name` at 10.255.0.1<n>, pinned to PIN, with an uplink and a tunnel address. */
export function testHost(name: string, n: number, over: Partial<HostConnection> = {}): HostConnection {
  return {
    name,
    address: `10.255.0.1${n}`,
    port: 22,
    user: "root",
    privateKey: KEY,
    hostKey: PIN,
    trustOnFirstUse: false,
    uplink: "eth1",
    tunnelAddress: `10.254.0.1${n}`,
    ...over,
  };
}

/** Raw Server inputs for web1 (kernel image, one port on lan/lan-v4), rendered like the component does. */
export function serverRaw(
  hosts: HostConnection[],
  over: Record<string, unknown> = {},
): Record<string, unknown> {
  const image = {
    name: "cirros",
    kind: "kernel" as const,
    disk: "",
    format: "qcow2" as const,
    kernel: "/var/lib/kvmlab/images/cirros/kernel",
    ramdisk: "/var/lib/kvmlab/images/cirros/ramdisk",
  };
  const flavor = { name: "m1.tiny", vcpus: 1, ramMiB: (over.ramMiB as number) ?? 128, diskGiB: 0 };
  const r = renderServer({
    serverName: "web1",
    uuidSeed: "lab/dev/web1",
    lab: "lab",
    stack: "dev",
    project: "",
    image,
    flavor,
    ports: [
      { networkName: "lan", subnetName: "lan-v4", bridge: "kvlb-1a2b3c4d", driver: "linuxbridge", mtu: 1500 },
    ],
    kernelCmdline: "console=ttyS0 lab.name=web1",
    cloudInit: true,
    publicKeys: [],
    userName: "kvmlab",
    userData: {},
    consoleListen: "0.0.0.0",
  });
  return {
    serverName: "web1",
    uuid: r.uuid,
    hosts,
    flavor,
    image,
    ports: [
      {
        networkName: "lan",
        subnetName: "lan-v4",
        dhcpHost: hosts[0].name,
        dhcp: true,
        bridge: "kvlb-1a2b3c4d",
        driver: "linuxbridge",
        mac: r.macs[0],
        tap: r.taps[0],
      },
    ],
    domainXml: r.domainXml,
    cloudInit: r.cloudInit,
    ...over,
  };
}

/** Raw LoadBalancer inputs: VIP 10.10.0.50 on lan/lan-v4, one HTTP listener, two members (rendered like the component does). */
export function loadBalancerRaw(
  hosts: HostConnection[],
  over: Record<string, unknown> = {},
  members = ["web1", "web2"],
): Record<string, unknown> {
  return {
    lbName: "web-lb",
    hosts,
    networkName: "lan",
    networkBridge: "kvlb-1a2b3c4d",
    driver: "linuxbridge",
    subnetName: "lan-v4",
    cidr: "10.10.0.0/24",
    gateway: "10.10.0.1",
    subnetHost: hosts[0].name,
    vipAddress: "10.10.0.50",
    haproxyCfg: loadBalancerConfig("web-lb", "10.10.0.50", [
      {
        name: "http",
        protocol: "HTTP",
        protocolPort: 80,
        defaultPool: {
          name: "web",
          protocol: "HTTP",
          lbAlgorithm: "ROUND_ROBIN",
          healthMonitor: { type: "HTTP", delay: 1, timeout: 1, maxRetries: 1, urlPath: "/health" },
          members: members.map((m, i) => ({ name: m, address: `10.10.0.${11 + i}`, protocolPort: 80 })),
        },
      },
    ]),
    ...over,
  };
}

/** A disk image in the image store, as the disk-image Server tests use it. */
export const DISK_IMAGE = {
  name: "cirros",
  kind: "disk" as const,
  disk: "/var/lib/kvmlab/images/cirros/disk.qcow2",
  format: "qcow2" as const,
  kernel: "",
  ramdisk: "",
};

/**
 * Raw Server inputs of a disk-image server with no ports, pinned to `host`, rendered like the
 * component does for `stack` (its UUID derived from `uuidSeed`, by default `lab/<stack>/<name>`).
 */
export function diskServerRaw(
  host: HostConnection,
  o: { stack: string; serverName?: string; uuidSeed?: string; ramMiB?: number; image?: typeof DISK_IMAGE },
): Record<string, unknown> {
  const serverName = o.serverName ?? "web1";
  const image = o.image ?? DISK_IMAGE;
  const flavor = { name: "m1.tiny", vcpus: 1, ramMiB: o.ramMiB ?? 128, diskGiB: 1 };
  const r = renderServer({
    serverName,
    uuidSeed: o.uuidSeed ?? `lab/${o.stack}/${serverName}`,
    lab: "lab",
    stack: o.stack,
    project: "",
    image,
    flavor,
    ports: [],
    kernelCmdline: "",
    cloudInit: true,
    publicKeys: [],
    userName: "kvmlab",
    userData: {},
    consoleListen: "0.0.0.0",
  });
  return {
    serverName,
    uuid: r.uuid,
    hosts: [host],
    host: host.name,
    flavor,
    image,
    ports: [],
    domainXml: r.domainXml,
    cloudInit: r.cloudInit,
  };
}
