/**
 * Bookkeeping on the sandbox machine: the per-instance lock, index reservations (so concurrent
 * instances get distinct names and address ranges) and the instance's state file.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { SandboxError, run } from "./exec";
import { MAX_INDEX } from "./plan";
import { pidAlive } from "../../components/sandbox";
import { SANDBOX_RUN_ROOT } from "./status";

export interface SandboxState {
  instance: string;
  index: number;
  hostCount: number;
  /** "building" while `up` runs (or after it died half-way); "up" once everything answered. */
  phase: "building" | "up";
  /** PIDs the sandbox started itself outside the hosts' daemons (the internet HTTP server). */
  pids: Record<string, number>;
  startedAt: string;
}

const LOCK_DIR = path.join(SANDBOX_RUN_ROOT, ".locks");
const INDEX_DIR = path.join(SANDBOX_RUN_ROOT, ".index");

export { pidAlive };

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Runs `fn` holding the instance lock (an exclusively created file holding our PID; a lock left
 * by a dead process is taken over). Waits at most `waitMs` for another command to finish.
 */
export async function withInstanceLock<T>(
  instance: string,
  fn: () => Promise<T>,
  waitMs = 180_000,
): Promise<T> {
  fs.mkdirSync(LOCK_DIR, { recursive: true, mode: 0o755 });
  const lock = path.join(LOCK_DIR, `${instance}.lock`);
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      fs.writeFileSync(lock, `${process.pid}\n`, { flag: "wx" });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const holder = Number.parseInt(fs.readFileSync(lock, "utf8").trim(), 10);
      if (!Number.isInteger(holder) || !pidAlive(holder)) {
        fs.rmSync(lock, { force: true });
        continue;
      }
      if (Date.now() > deadline) {
        throw new SandboxError(
          `another kvmlab sandbox command (pid ${holder}) is working on instance "${instance}"; wait for it or stop it`,
        );
      }
      await sleep(200);
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lock, { force: true });
  }
}

/** Reads an instance's state file, if any. */
export function readState(statePath: string): SandboxState | undefined {
  try {
    return JSON.parse(fs.readFileSync(statePath, "utf8")) as SandboxState;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** Writes a JSON file atomically (temp file + rename), with the given mode. */
export function writeJsonAtomic(file: string, value: unknown, mode = 0o644): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(value, null, 2) + "\n", { mode });
  fs.renameSync(tmp, file);
}

/** Subnets already routed on this machine (so an index whose ranges collide is skipped). */
async function usedPrefixes(): Promise<string> {
  const res = await run("ip", ["-4", "route", "show", "table", "all"], { allowFailure: true });
  return res.stdout;
}

function collides(routes: string, index: number): boolean {
  const prefixes = [`10.255.${index}.`, `10.254.${index}.`, `172.24.${4 + index}.`];
  return routes.split("\n").some((line) => prefixes.some((p) => line.includes(p)));
}

/** The index this instance holds, reserving the lowest free one if it has none. */
export async function reserveIndex(instance: string): Promise<number> {
  fs.mkdirSync(INDEX_DIR, { recursive: true, mode: 0o755 });
  const held = findIndex(instance);
  if (held !== undefined) return held;
  const routes = await usedPrefixes();
  for (let i = 0; i <= MAX_INDEX; i++) {
    const slot = path.join(INDEX_DIR, String(i));
    try {
      fs.writeFileSync(slot, `${instance}\n`, { flag: "wx" });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const owner = fs.readFileSync(slot, "utf8").trim();
      // A reservation whose instance has no runtime folder any more is stale.
      if (owner !== "" && !fs.existsSync(path.join(SANDBOX_RUN_ROOT, owner))) {
        fs.rmSync(slot, { force: true });
        i--;
      }
      continue;
    }
    if (collides(routes, i)) {
      // Something else on this machine already uses these ranges.
      fs.rmSync(slot, { force: true });
      continue;
    }
    return i;
  }
  throw new SandboxError(
    `no free sandbox index (0..${MAX_INDEX}): too many instances are up; list them with: ls ${SANDBOX_RUN_ROOT}`,
  );
}

export function findIndex(instance: string): number | undefined {
  if (!fs.existsSync(INDEX_DIR)) return undefined;
  for (const slot of fs.readdirSync(INDEX_DIR)) {
    if (!/^\d+$/.test(slot)) continue;
    try {
      if (fs.readFileSync(path.join(INDEX_DIR, slot), "utf8").trim() === instance) return Number(slot);
    } catch {
      // Released meanwhile.
    }
  }
  return undefined;
}

export function releaseIndex(instance: string): void {
  const i = findIndex(instance);
  if (i !== undefined) fs.rmSync(path.join(INDEX_DIR, String(i)), { force: true });
}
