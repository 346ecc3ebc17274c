/**
 * Where kvmlab keeps things on a host: one definition of every path and device name that more
 * than one layer needs (the providers write them, the templates and `kvmlab render` name them).
 * Pure.
 *
 *   /var/lib/kvmlab/lock                                  the host lock
 *   /var/lib/kvmlab/records/<kind>/<name>.json            a record (objects with no native store)
 *   /var/lib/kvmlab/images/<name>/disk.qcow2 | disk.raw  a disk image
 *   /var/lib/kvmlab/images/<name>/kernel, ramdisk         a kernel+ramdisk image (AKI/ARI)
 *   /var/lib/kvmlab/instances/<server uuid>/…             a server's overlay, seed, console log
 *                                                         (a server made before issue 15: <server name>)
 *   /var/lib/kvmlab/dhcp/<network>/<subnet>/…             a subnet's dnsmasq files
 *   /var/lib/kvmlab/records/ipam/<ipamRecordName>.json    a subnet's IPAM (keyed by network + subnet)
 *   /var/lib/kvmlab/owners/<kind>/<key…>.owner            an object's owner (provider/kit/owner.ts)
 *   /var/lib/kvmlab/lb/<lb>/…                             a load balancer's HAProxy files
 *   /var/lib/kvmlab/migrate/<server>/                     a live migration's one-off key
 */
import { checkName, deviceName, shortId } from "./names";

/** Root of everything kvmlab keeps on a host. */
export const KVMLAB_STATE_DIR = "/var/lib/kvmlab";

/** The host lock every kvmlab run takes (flock) around read-modify-write sequences. */
export const HOST_LOCK = `${KVMLAB_STATE_DIR}/lock`;

/** The folder of one kind of records; throws when kind breaks the name rule. */
export function recordDir(kind: string): string {
  const e = checkName("record kind", kind);
  if (e) throw new Error(e);
  return `${KVMLAB_STATE_DIR}/records/${kind}`;
}

/** A record's path; throws when kind or name breaks the name rule. */
export function recordPath(kind: string, name: string): string {
  const e = checkName("record kind", kind) ?? checkName("record name", name);
  if (e) throw new Error(e);
  return `${recordDir(kind)}/${name}.json`;
}

/** Folder on a live migration's source holding the one-off key and known_hosts. */
export function migrationDir(serverName: string): string {
  return `${KVMLAB_STATE_DIR}/migrate/${serverName}`;
}

/** Root of the image store on every host. */
export const IMAGE_STORE = `${KVMLAB_STATE_DIR}/images`;

export type ImageRole = "disk" | "kernel" | "ramdisk";
export type DiskFormat = "qcow2" | "raw";

/** Where an image's files live on every host; throws when the name breaks the name rule. */
export function imageDir(imageName: string): string {
  const e = checkName("record name", imageName);
  if (e) throw new Error(e);
  return `${IMAGE_STORE}/${imageName}`;
}

/** File name of an image's file in its store folder: `disk.qcow2`, `disk.raw`, `kernel`, `ramdisk`. */
export function imageFileName(role: ImageRole, format: DiskFormat = "qcow2"): string {
  return role === "disk" ? `disk.${format}` : role;
}

/**
 * Paths of an image's files in every host's image store, as a Server takes them: a disk image
 * (`kind` "disk", with its format) or a kernel+ramdisk image. The same names the Image provider
 * writes.
 */
export function imageStorePaths(
  name: string,
  kind: "disk" | "kernel",
  format: DiskFormat = "qcow2",
): { disk: string; format: DiskFormat; kernel: string; ramdisk: string } {
  const dir = imageDir(name);
  return kind === "disk"
    ? { disk: `${dir}/${imageFileName("disk", format)}`, format, kernel: "", ramdisk: "" }
    : { disk: "", format: "qcow2", kernel: `${dir}/kernel`, ramdisk: `${dir}/ramdisk` };
}

/** Device names of a network on every host. */
export function networkDevices(networkName: string): {
  shortId: string;
  bridge: string;
  vxlan: string;
  vxlanPort: string;
} {
  return {
    shortId: shortId(networkName),
    bridge: deviceName("b", networkName),
    vxlan: deviceName("x", networkName),
    vxlanPort: deviceName("i", networkName),
  };
}

/** Where a subnet's DHCP service lives on its host. */
export interface DhcpPaths {
  namespace: string;
  dir: string;
  confFile: string;
  pidFile: string;
  leaseFile: string;
  hostsFile: string;
  /** veth end in the network's bridge (root namespace). */
  hostDevice: string;
  /** veth end inside the qdhcp namespace; dnsmasq binds to it. */
  nsDevice: string;
}

/**
 * A subnet's DHCP files and devices, keyed by its FULL identity (network and subnet): two
 * networks may each have a subnet `v4` (issue 15: keyed by the subnet alone they overwrote
 * each other's folder, pid file and veth).
 */
export function dhcpPaths(networkName: string, subnetName: string): DhcpPaths {
  const dir = `${KVMLAB_STATE_DIR}/dhcp/${networkName}/${subnetName}`;
  return {
    namespace: `qdhcp-${networkName}`,
    dir,
    confFile: `${dir}/dnsmasq.conf`,
    pidFile: `${dir}/dnsmasq.pid`,
    leaseFile: `${dir}/dnsmasq.leases`,
    hostsFile: `${dir}/hosts`,
    hostDevice: deviceName("d", `${networkName}/${subnetName}`),
    nsDevice: deviceName("n", `${networkName}/${subnetName}`),
  };
}

/**
 * The record name of a subnet's IPAM: 40 hex digits of sha256("<network>/<subnet>") (a record
 * name is one name; joining two names with any name character would be ambiguous). The record
 * itself carries both names.
 */
export function ipamRecordName(networkName: string, subnetName: string): string {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  return crypto.createHash("sha256").update(`${networkName}/${subnetName}`).digest("hex").slice(0, 40);
}

/** Root of the servers' instance folders on a host. */
export const INSTANCE_STORE = `${KVMLAB_STATE_DIR}/instances`;

/**
 * Files of a server on its host, in the instance folder named by `instanceKey`: the server's
 * UUID (issue 15: keyed by its full identity, never a bare name). A server created before keeps
 * the folder of its name, which its domain XML names (see instanceKeyInXml).
 */
export function serverPaths(instanceKey: string): {
  dir: string;
  disk: string;
  seedDir: string;
  seedIso: string;
  serialLog: string;
  domainXml: string;
} {
  const dir = `${INSTANCE_STORE}/${instanceKey}`;
  return {
    dir,
    disk: `${dir}/disk.qcow2`,
    seedDir: `${dir}/seed`,
    seedIso: `${dir}/seed.iso`,
    serialLog: `${dir}/console.log`,
    domainXml: `${dir}/domain.xml`,
  };
}

/**
 * The instance folder key a rendered domain XML names: the folder of its serial log
 * (`<log file='/var/lib/kvmlab/instances/<key>/console.log'`), undefined when it names none.
 */
export function instanceKeyInXml(xml: string): string | undefined {
  return /<log file='\/var\/lib\/kvmlab\/instances\/([^/']+)\/console\.log'/.exec(xml)?.[1];
}

/**
 * IPAM owner id of a server's port. The Server provider passes the server's UUID (issue 15:
 * by name, a refused duplicate released the existing server's address, and same-named servers
 * got the same one); `kvmlab render` shows names.
 */
export function portOwner(serverIdentity: string, index: number): string {
  return `server:${serverIdentity}:${index}`;
}

/** Where a load balancer's HAProxy lives on its host (Octavia's amphora, one per load balancer). */
export interface LoadBalancerPaths {
  dir: string;
  /** The config haproxy runs. */
  config: string;
  /** A new config is written here and checked with `haproxy -c` before it replaces `config`. */
  newConfig: string;
  /** A config haproxy refused is kept here (Octavia: haproxy.cfg.new-failed) for debugging. */
  failedConfig: string;
  /** Runtime API of the worker (stats, server state, member drain). */
  statsSocket: string;
  /** Master CLI of the master-worker process (reload). */
  masterSocket: string;
  pidFile: string;
  /** `show servers state` saved before a reload, loaded after it (member health survives). */
  stateFile: string;
  /** Network namespace holding the VIP and haproxy. */
  namespace: string;
  /** VIP veth end in the network's bridge (root namespace). */
  hostDevice: string;
  /** VIP veth end inside the namespace; holds the VIP address. */
  nsDevice: string;
  /** The VIP port's MAC: Neutron's fa:16:3e prefix + 3 bytes of the name's hash (stable). */
  vipMac: string;
  /** ACTIVE_STANDBY: keepalived's config, the one being checked, its three PID files (no systemd). */
  keepalivedConfig: string;
  keepalivedNewConfig: string;
  keepalivedPid: string;
  vrrpPid: string;
  checkerPid: string;
  /** The vrrp_script (exit 0 while this amphora's haproxy runs) and the notify script. */
  checkScript: string;
  notifyScript: string;
  /** The VRRP state keepalived's notify script last wrote (MASTER, BACKUP, FAULT, STOP). */
  vrrpStateFile: string;
}

/**
 * A load balancer's files and devices, named by the load balancer alone like every other object
 * on the hosts (joining a lab and an object name with "-" is ambiguous: lab `a-b` + `c` = lab `a` + `b-c`).
 */
export function loadBalancerPaths(lb: string): LoadBalancerPaths {
  const dir = `${KVMLAB_STATE_DIR}/lb/${lb}`;
  const id = shortId(lb);
  return {
    dir,
    config: `${dir}/haproxy.cfg`,
    newConfig: `${dir}/haproxy.cfg.new`,
    failedConfig: `${dir}/haproxy.cfg.failed`,
    statsSocket: `${dir}/haproxy.sock`,
    masterSocket: `${dir}/master.sock`,
    pidFile: `${dir}/haproxy.pid`,
    stateFile: `${dir}/servers-state`,
    namespace: `qlbaas-${id}`,
    hostDevice: deviceName("v", lb),
    nsDevice: deviceName("w", lb),
    vipMac: `fa:16:3e:${id.slice(0, 2)}:${id.slice(2, 4)}:${id.slice(4, 6)}`,
    keepalivedConfig: `${dir}/keepalived.conf`,
    keepalivedNewConfig: `${dir}/keepalived.conf.new`,
    keepalivedPid: `${dir}/keepalived.pid`,
    vrrpPid: `${dir}/vrrp.pid`,
    checkerPid: `${dir}/checker.pid`,
    checkScript: `${dir}/check.sh`,
    notifyScript: `${dir}/notify.sh`,
    vrrpStateFile: `${dir}/vrrp-state`,
  };
}

/**
 * The port MAC of amphora `index` of an ACTIVE_STANDBY load balancer: amphora 0 keeps the
 * SINGLE VIP port's MAC, amphora 1 another stable fa:16:3e MAC (both sit on one L2 segment).
 */
export function amphoraMac(lb: string, index: number): string {
  if (index === 0) return loadBalancerPaths(lb).vipMac;
  const id = shortId(`${lb}/amphora${index}`);
  return `fa:16:3e:${id.slice(0, 2)}:${id.slice(2, 4)}:${id.slice(4, 6)}`;
}

/** 8 hex digits of a name's sha256 (as every device name uses). */
export function shortIdOf(name: string): string {
  return shortId(name);
}

/** VRRP virtual_router_id (1-255) of a load balancer: from its name's hash (Octavia: vrrp_id). */
export function vrrpRouterId(lb: string): number {
  return (parseInt(shortId(`vrrp/${lb}`), 16) % 255) + 1;
}

/**
 * The console proxy on the controller (websockify + noVNC, as Nova's novncproxy): its token
 * plugin, the folder of token records (one file per token, named by the token's sha256, so the
 * folder never shows a usable token), its pid file and log.
 */
export function consolePaths() {
  const dir = `${KVMLAB_STATE_DIR}/console`;
  return {
    dir,
    plugin: `${dir}/kvmlab_console_tokens.py`,
    tokens: `${dir}/tokens`,
    pidFile: `${dir}/websockify.pid`,
    log: `${dir}/websockify.log`,
  };
}
