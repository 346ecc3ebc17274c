/**
 * Processes a test started, found by the process tree (Linux /proc), never by name: a test that
 * kills a process outright (SIGKILL) orphans that process's children, which then outlive the
 * test (re-parented, so no longer below anything the test holds). Read the tree before the kill
 * and stop what it held afterwards.
 */
import * as fs from "node:fs";
import type { ChildProcess } from "node:child_process";

/** A process found below another: its PID and its start time (guards against a reused PID). */
export interface TreeProcess {
  pid: number;
  start: string;
  cmdline: string;
}

/** The start time of `pid` (field 22 of /proc/<pid>/stat), or undefined when it is gone. */
export function startTime(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** Every process below `pid` (children of each of its threads, recursively), depth first. */
export function descendants(pid: number): TreeProcess[] {
  const out: TreeProcess[] = [];
  const walk = (p: number, depth: number): void => {
    if (depth > 20) return;
    let tasks: string[];
    try {
      tasks = fs.readdirSync(`/proc/${p}/task`);
    } catch {
      return;
    }
    for (const t of tasks) {
      let kids: string;
      try {
        kids = fs.readFileSync(`/proc/${p}/task/${t}/children`, "utf8");
      } catch {
        continue;
      }
      for (const k of kids.trim().split(/\s+/).filter(Boolean).map(Number)) {
        const start = startTime(k);
        if (start === undefined) continue;
        let cmdline = "";
        try {
          cmdline = fs.readFileSync(`/proc/${k}/cmdline`, "utf8").split("\0").join(" ").trim();
        } catch {
          // gone meanwhile: still listed, stopProcesses skips it
        }
        out.push({ pid: k, start, cmdline });
        walk(k, depth + 1);
      }
    }
  };
  walk(pid, 0);
  return out;
}

/** Whether `p` still runs (same PID and start time; a zombie counts as gone). */
export function running(p: TreeProcess): boolean {
  if (startTime(p.pid) !== p.start) return false;
  try {
    const stat = fs.readFileSync(`/proc/${p.pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/**
 * Stops `procs` by PID: SIGTERM, a bounded wait (`graceMs`), then SIGKILL for what still runs.
 * Resolves with the ones still running after that (normally none).
 */
export async function stopProcesses(procs: readonly TreeProcess[], graceMs = 5_000): Promise<TreeProcess[]> {
  const signal = (sig: NodeJS.Signals): void => {
    for (const p of procs)
      if (running(p))
        try {
          process.kill(p.pid, sig);
        } catch {
          // exited meanwhile
        }
  };
  const wait = async (ms: number): Promise<void> => {
    const deadline = Date.now() + ms;
    while (procs.some(running) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  };
  signal("SIGTERM");
  await wait(graceMs);
  signal("SIGKILL");
  await wait(2_000);
  return procs.filter(running);
}

/**
 * Runs `fn` with a child process the test spawned, and stops the processes that child orphans
 * whether `fn` succeeds or throws: `killChild` (for `fn` to call where the test kills the child)
 * reads the child's tree, SIGKILLs the child and resolves with what the kill orphaned; when `fn`
 * did not call it (it threw first, or did not need to), it runs after `fn`. Then each orphan is
 * stopped by PID (stopProcesses: start time checked). `fn`'s own error is the one thrown (an orphan
 * left running is added to its message); after a success, an orphan left running is an error.
 */
export async function withOrphansStopped<T>(
  child: ChildProcess,
  fn: (killChild: () => Promise<TreeProcess[]>) => Promise<T>,
): Promise<T> {
  let orphans: TreeProcess[] | undefined;
  const killChild = async (): Promise<TreeProcess[]> => {
    // A child that already exited (and was reaped) may have its PID reused by a process the test
    // never started: nothing is walked then (its own children, if any, are no longer below it).
    const exited = child.exitCode !== null || child.signalCode !== null;
    if (orphans === undefined) orphans = child.pid === undefined || exited ? [] : descendants(child.pid);
    if (!exited) {
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await gone;
    }
    return orphans;
  };
  const stop = async (): Promise<string> => {
    const left = await stopProcesses(await killChild());
    return left.length === 0 ? "" : `the child's orphans still run (by PID): ${JSON.stringify(left)}`;
  };
  let result: T;
  try {
    result = await fn(killChild);
  } catch (e) {
    const left = await stop();
    if (left && e instanceof Error) e.message = `${e.message}\n(also: ${left})`;
    throw e;
  }
  const left = await stop();
  if (left) throw new Error(left);
  return result;
}
