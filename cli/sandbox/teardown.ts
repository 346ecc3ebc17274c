/**
 * Removing an instance: every step finds what exists and removes it, so teardown serves both
 * `down` and the rollback of a failed `up`, and is safe to run twice.
 *
 * Order: processes first (every process in a host's UTS namespace — daemons, guests' QEMU, and
 * whatever was started over SSH, even inside nested network namespaces — plus every process in
 * the sandbox's network namespaces), then the namespace files, network namespaces, root links,
 * mounts and files.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "./exec";
import type { SandboxPlan } from "./plan";
import { pidAlive, releaseIndex } from "./state";

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The namespace inode behind a bind-mounted namespace file (`/run/netns/X`, …), if it is one. */
function nsInode(file: string): number | undefined {
  try {
    const st = fs.statSync(file);
    // Only a file on nsfs names a namespace; a plain placeholder file must never match a process.
    return st.dev === fs.statSync("/proc/self/ns/uts").dev ? st.ino : undefined;
  } catch {
    return undefined;
  }
}

/** PIDs whose namespace of `kind` is one of `inodes`. */
export function pidsInNamespaces(kind: "uts" | "net" | "mnt", inodes: ReadonlySet<number>): number[] {
  if (inodes.size === 0) return [];
  const found: number[] = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    try {
      const link = fs.readlinkSync(`/proc/${entry}/ns/${kind}`);
      const m = /\[(\d+)\]/.exec(link);
      if (m && inodes.has(Number(m[1]))) found.push(pid);
    } catch {
      // The process ended meanwhile.
    }
  }
  return found;
}

async function waitGone(pids: number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let left = pids.filter(pidAlive);
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(50);
    left = left.filter(pidAlive);
  }
  return left;
}

/** SIGTERM, a bounded wait (zombies count as gone), then SIGKILL and another bounded wait. */
export async function stopProcesses(pids: number[], termWaitMs = 5_000): Promise<number[]> {
  const signal = (sig: NodeJS.Signals, list: number[]) => {
    for (const pid of list) {
      try {
        process.kill(pid, sig);
      } catch {
        // Already gone.
      }
    }
  };
  signal("SIGTERM", pids);
  let left = await waitGone(pids, termWaitMs);
  if (left.length > 0) {
    signal("SIGKILL", left);
    left = await waitGone(left, 3_000);
  }
  return left;
}

function mountsUnder(dir: string): string[] {
  const text = fs.readFileSync("/proc/self/mounts", "utf8");
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  return text
    .split("\n")
    .map((l) => l.split(" ")[1])
    .filter((m): m is string => m !== undefined && (m === dir || m.startsWith(prefix)))
    .map((m) => m.replace(/\\040/g, " "))
    .sort((a, b) => b.length - a.length);
}

async function netnsExists(name: string): Promise<boolean> {
  return fs.existsSync(path.join("/run/netns", name));
}

/**
 * Removes everything of the instance described by `plan`. Returns problems it could not fix
 * (processes that would not die, mounts that would not go); an empty list means clean.
 */
export async function teardown(plan: SandboxPlan, indexKnown = true): Promise<string[]> {
  const problems: string[] = [];
  const utsInodes = new Set<number>();
  const netInodes = new Set<number>();
  for (const h of plan.hosts) {
    const uts = nsInode(h.utsNsFile);
    if (uts !== undefined) utsInodes.add(uts);
  }
  for (const name of [plan.fabricNetns, plan.internetNetns, ...plan.hosts.map((h) => h.netns)]) {
    const ino = nsInode(path.join("/run/netns", name));
    if (ino !== undefined) netInodes.add(ino);
  }
  // Processes are found by namespace membership only, never by a remembered PID that might have
  // been reused by an unrelated process since.
  const pids = new Set<number>([
    ...pidsInNamespaces("uts", utsInodes),
    ...pidsInNamespaces("net", netInodes),
  ]);
  if (pids.size > 0) {
    const left = await stopProcesses([...pids]);
    if (left.length > 0) problems.push(`processes still running: ${left.join(", ")}`);
  }

  // Namespace files of the hosts' mount and UTS namespaces (and the private bind holding them).
  for (const m of mountsUnder(plan.nsDir)) {
    const res = await run("umount", [m], { allowFailure: true });
    if (res.code !== 0) await run("umount", ["-l", m], { allowFailure: true });
  }

  for (const name of [...plan.hosts.map((h) => h.netns), plan.internetNetns, plan.fabricNetns]) {
    if (await netnsExists(name)) {
      const res = await run("ip", ["netns", "delete", name], { allowFailure: true });
      if (res.code !== 0) problems.push(`ip netns delete ${name}: ${res.stderr.trim()}`);
    }
  }
  // The runner's legs go with the fabric namespace (veth peers); delete any that outlived it.
  // Only when the index is known: otherwise the names might be another instance's.
  for (const link of indexKnown ? [plan.rootLinks.mgmt, plan.rootLinks.ext] : []) {
    if (fs.existsSync(`/sys/class/net/${link}`)) {
      await run("ip", ["link", "delete", link], { allowFailure: true });
    }
  }
  for (const m of mountsUnder(plan.runDir)) {
    const res = await run("umount", [m], { allowFailure: true });
    if (res.code !== 0) await run("umount", ["-l", m], { allowFailure: true });
  }
  const stillMounted = mountsUnder(plan.runDir);
  if (stillMounted.length > 0) {
    problems.push(`still mounted: ${stillMounted.join(", ")}`);
  } else {
    fs.rmSync(plan.runDir, { recursive: true, force: true });
    releaseIndex(plan.instance);
  }
  return problems;
}
