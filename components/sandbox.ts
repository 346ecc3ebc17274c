/**
 * The sandbox status contract: where a running `kvmlab sandbox` publishes itself, and the shape of
 * what it publishes (`status.json`, also `kvmlab sandbox status --json`).
 *
 * The sandbox command (cli/sandbox/) writes it; programs (resolveHosts, the examples), tests and
 * benchmarks read it. It lives here, beside the components, so that nothing a program imports
 * reaches up into cli/. It imports nothing but `node:fs` and `node:path` and never runs a command.
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** Root of every sandbox instance's runtime state. */
export const SANDBOX_RUN_ROOT = "/run/kvmlab/sandbox";

/** Default root of the sandbox cache (kernel package, guest image, keys, QEMU capability cache). */
export const SANDBOX_CACHE_ROOT = "/var/cache/kvmlab/sandbox";

/** The cache root: `$KVMLAB_SANDBOX_CACHE_DIR` (absolute path, e.g. a CI cache) or the default. */
export function sandboxCacheRoot(): string {
  const fromEnv = process.env.KVMLAB_SANDBOX_CACHE_DIR;
  if (fromEnv === undefined || fromEnv === "") return SANDBOX_CACHE_ROOT;
  if (!/^\/[A-Za-z0-9_./-]+$/.test(fromEnv) || fromEnv.split("/").includes("..")) {
    throw new Error(
      `invalid KVMLAB_SANDBOX_CACHE_DIR ${JSON.stringify(fromEnv)}: give an absolute path of letters, digits, _ . - and /`,
    );
  }
  return fromEnv;
}

/** The instance used when none is given: `$KVMLAB_SANDBOX_INSTANCE`, else `"default"`. */
export function defaultInstance(): string {
  const fromEnv = process.env.KVMLAB_SANDBOX_INSTANCE;
  return fromEnv !== undefined && fromEnv !== "" ? fromEnv : "default";
}

/** One sandbox host as the provider layer needs it to connect over SSH. */
export interface SandboxHost {
  /** Host name (`hv1`…); also its hostname and `virsh hostname`. */
  name: string;
  /** Management address, reachable from the machine that runs the sandbox. */
  address: string;
  port: number;
  user: string;
  /** ed25519 private key (mode 0600) accepted by every host of this instance. */
  privateKeyPath: string;
  /** known_hosts with every host's key; use it with StrictHostKeyChecking=yes. */
  knownHostsPath: string;
  /** The public host key line (`ssh-ed25519 AAAA…`), for pinning. */
  hostKey: string;
  /** NIC on the external (provider) fabric, no address: put it in a bridge. */
  uplink: string;
  /** NIC on the tunnel underlay fabric (MTU 9000) and its address, for VXLAN. */
  tunnelInterface: string;
  tunnelAddress: string;
  /** PIDs of the host's daemons (virtlogd, libvirtd, ovsdb-server, ovs-vswitchd, sshd). */
  daemons: Record<string, number>;
  /** Network namespace of the host on the sandbox machine (for debugging with `ip netns exec`). */
  netns: string;
}

/** What `kvmlab sandbox status --json` prints and `status.json` holds. */
export interface SandboxStatus {
  instance: string;
  /** Small number (0..15) this instance's names and address ranges derive from. */
  index: number;
  hosts: SandboxHost[];
  /** The runner's leg on the management network: its interface in this machine's root namespace. */
  management: { cidr: string; runnerAddress: string; runnerInterface: string };
  tunnel: { cidr: string };
  external: {
    cidr: string;
    /** Address of the "internet" namespace: the upstream router of the external network. */
    gateway: string;
    /** The runner's own leg on the external network (so tests can reach addresses on it). */
    runnerAddress: string;
    runnerInterface: string;
    /** A range of the external network nothing in the sandbox uses (for floating IPs, VIPs). */
    allocationPool: { start: string; end: string };
    /** Network namespace of the "internet" (serves HTTP on port 80 at the gateway address). */
    internetNetns: string;
  };
  /** Namespaces of this instance on this machine: the fabric ("the switches"), then the hosts'. */
  fabricNetns: string;
  image: {
    /** Uncompressed ELF kernel (PVH boot, the fastest under TCG). */
    kernel: string;
    /** The same kernel as the distribution's bzImage. */
    kernelCompressed: string;
    /** gzip'd busybox initramfs. */
    ramdisk: string;
    kernelVersion: string;
    /** Kernel command line the image expects, without the `lab.*` options. */
    cmdline: string;
  };
  /** Whether guests can use KVM (`type='kvm'`); otherwise use `type='qemu'` (TCG). */
  kvm: boolean;
  createdAt: string;
}

/** Instance names: lower-case letters, digits and inner dashes, at most 24 characters. */
export const INSTANCE_PATTERN = /^[a-z][a-z0-9-]{0,22}[a-z0-9]$|^[a-z]$/;

/** Throws unless `instance` is a valid instance name; the message names the fix. */
export function checkInstanceName(instance: string): string {
  if (!INSTANCE_PATTERN.test(instance)) {
    throw new Error(
      `invalid sandbox instance name ${JSON.stringify(instance)}: use 1-24 lower-case letters, digits ` +
        `and inner dashes, starting with a letter (e.g. "default", "itest-sandbox")`,
    );
  }
  return instance;
}

/** Where the status of `instance` is published. */
export function sandboxStatusPath(instance: string = defaultInstance()): string {
  return path.join(SANDBOX_RUN_ROOT, checkInstanceName(instance), "status.json");
}

/** Whether process `pid` runs (a zombie or dead process does not: its parent reaps it later). */
export function pidAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    // State is the field after the parenthesised command name.
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/**
 * The published status of `instance`, or undefined if it is not up. A status whose hosts' sshd
 * processes are all gone (left behind by a reboot, say) counts as not up. Whether every daemon
 * still runs is what `kvmlab sandbox status` checks.
 */
export function readSandboxStatus(instance: string = defaultInstance()): SandboxStatus | undefined {
  let text: string;
  try {
    text = fs.readFileSync(sandboxStatusPath(instance), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  const status = JSON.parse(text) as SandboxStatus;
  const sshd = status.hosts.map((h) => h.daemons?.sshd).filter((p): p is number => typeof p === "number");
  if (sshd.length > 0 && !sshd.some(pidAlive)) return undefined;
  return status;
}
