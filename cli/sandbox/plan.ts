/**
 * Pure planning: every name, address and path of a sandbox instance, derived from its name, its
 * index (0..15) and the number of hosts. Nothing here touches the machine.
 *
 * Address plan of instance index i:
 *   management  10.255.i.0/24     runner .1, hvN .(10+N)
 *   tunnel      10.254.i.0/24     hvN .(10+N) (MTU 9000), the runner has no leg here
 *   external    172.24.(4+i).0/24 "internet" namespace .1 (the gateway), runner .254,
 *                                 free for labs: .100-.199
 */
import { createHash } from "node:crypto";
import * as path from "node:path";
import { SANDBOX_RUN_ROOT, checkInstanceName, sandboxCacheRoot } from "./status";

export const MAX_INDEX = 15;
export const MAX_HOSTS = 16;

export interface HostPlan {
  name: string;
  /** Network namespace name on the sandbox machine. */
  netns: string;
  mgmtAddress: string;
  tunnelAddress: string;
  /** Link names inside the fabric namespace (private to it, so short names are safe). */
  fabricLinks: { mgmt: string; ext: string; tun: string };
  /** Per-host folder: overlay upper/work dirs and the private /tmp. */
  dir: string;
  /** Bind-mounted namespace files that keep the host's mount and UTS namespaces alive. */
  mntNsFile: string;
  utsNsFile: string;
  /** Cached stable SSH host key (private; `.pub` beside it). */
  hostKeyPath: string;
  /** Deterministic libvirt host UUID (no SMBIOS here, so libvirtd.conf sets it). */
  hostUuid: string;
}

export interface SandboxPlan {
  instance: string;
  index: number;
  runDir: string;
  nsDir: string;
  statusPath: string;
  statePath: string;
  knownHostsPath: string;
  logDir: string;
  cacheDir: string;
  instanceCacheDir: string;
  privateKeyPath: string;
  fabricNetns: string;
  internetNetns: string;
  internetDir: string;
  /** Runner-side links in the root network namespace (at most 15 characters). */
  rootLinks: { mgmt: string; ext: string };
  /** Their peers inside the fabric namespace. */
  runnerFabricLinks: { mgmt: string; ext: string };
  internetFabricLink: string;
  mgmt: { cidr: string; prefix: string; runnerAddress: string };
  tunnel: { cidr: string; prefix: string };
  external: {
    cidr: string;
    prefix: string;
    gateway: string;
    runnerAddress: string;
    poolStart: string;
    poolEnd: string;
  };
  hosts: HostPlan[];
}

export function checkHostCount(value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > MAX_HOSTS) {
    throw new Error(`invalid --hosts ${JSON.stringify(value)}: give a whole number from 1 to ${MAX_HOSTS}`);
  }
  return value;
}

export function checkIndex(value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > MAX_INDEX) {
    throw new Error(`sandbox index ${value} is out of range 0..${MAX_INDEX}`);
  }
  return value;
}

/** A UUID (version-4 layout) derived from a seed, so a host keeps its UUID across `up`s. */
export function deterministicUuid(seed: string): string {
  const h = createHash("sha256").update(seed).digest();
  h[6] = (h[6] & 0x0f) | 0x40;
  h[8] = (h[8] & 0x3f) | 0x80;
  const hex = h.subarray(0, 16).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

export function planSandbox(instance: string, index: number, hostCount: number): SandboxPlan {
  checkInstanceName(instance);
  checkIndex(index);
  checkHostCount(hostCount);
  const runDir = path.join(SANDBOX_RUN_ROOT, instance);
  const nsDir = path.join(runDir, "ns");
  const cacheDir = sandboxCacheRoot();
  const instanceCacheDir = path.join(cacheDir, "instances", instance);
  const mgmtPrefix = `10.255.${index}`;
  const tunPrefix = `10.254.${index}`;
  const extPrefix = `172.24.${4 + index}`;
  const hosts: HostPlan[] = [];
  for (let n = 1; n <= hostCount; n++) {
    const name = `hv${n}`;
    hosts.push({
      name,
      netns: `kvmlab-${instance}-${name}`,
      mgmtAddress: `${mgmtPrefix}.${10 + n}`,
      tunnelAddress: `${tunPrefix}.${10 + n}`,
      fabricLinks: { mgmt: `${name}-m`, ext: `${name}-x`, tun: `${name}-t` },
      dir: path.join(runDir, "hosts", name),
      mntNsFile: path.join(nsDir, `${name}.mnt`),
      utsNsFile: path.join(nsDir, `${name}.uts`),
      hostKeyPath: path.join(instanceCacheDir, "hostkeys", `${name}_ed25519`),
      hostUuid: deterministicUuid(`kvmlab-sandbox/${instance}/${name}`),
    });
  }
  return {
    instance,
    index,
    runDir,
    nsDir,
    statusPath: path.join(runDir, "status.json"),
    statePath: path.join(runDir, "state.json"),
    knownHostsPath: path.join(runDir, "known_hosts"),
    logDir: path.join(runDir, "log"),
    cacheDir,
    instanceCacheDir,
    privateKeyPath: path.join(instanceCacheDir, "id_ed25519"),
    fabricNetns: `kvmlab-${instance}-fabric`,
    internetNetns: `kvmlab-${instance}-inet`,
    internetDir: path.join(runDir, "internet"),
    rootLinks: { mgmt: `kvlab${index}-mgmt`, ext: `kvlab${index}-ext` },
    runnerFabricLinks: { mgmt: "runner-m", ext: "runner-x" },
    internetFabricLink: "inet-x",
    mgmt: { cidr: `${mgmtPrefix}.0/24`, prefix: mgmtPrefix, runnerAddress: `${mgmtPrefix}.1` },
    tunnel: { cidr: `${tunPrefix}.0/24`, prefix: tunPrefix },
    external: {
      cidr: `${extPrefix}.0/24`,
      prefix: extPrefix,
      gateway: `${extPrefix}.1`,
      runnerAddress: `${extPrefix}.254`,
      poolStart: `${extPrefix}.100`,
      poolEnd: `${extPrefix}.199`,
    },
    hosts,
  };
}
