/**
 * The per-process SSH pool: one connection and one long-lived remote shell per host, shared by
 * every resource of every type in the process.
 *
 * Why globalThis: Pulumi serializes each dynamic provider's closure separately, so every
 * provider gets its own copy of these functions and of any module-level value they capture.
 * The pool therefore lives on `globalThis` under a versioned symbol; the first caller creates
 * it, all others find it. Nothing in it is serialized.
 *
 * Transport: `node-ssh` (ssh2), required lazily. Steps go through `bash --noprofile --norc -s`
 * on one exec channel, framed as in framing.ts; a batch of steps is one write and one wait.
 * Host keys are checked in ssh2's `hostVerifier` against the pin (see hostKey.ts).
 *
 * The mode "naive" (benchmark only) opens a new connection for every step, as
 * `@pulumi/command`'s remote.Command does, and keeps no shell; it is what kvmlab is measured
 * against. Host locks are then in-process only, so it is set only by the benchmark's own call to
 * setHostPoolMode: no environment variable selects it (a user's KVMLAB_SSH_MODE=naive once
 * silently dropped every cross-process lock). Scripts go over the channel's stdin, never argv.
 */
import type { NodeSSH } from "node-ssh";
import type { HostConnection } from "./connection";
import type { Step, StepResult } from "./framing";
import { createFrameParser, frameBatch } from "./framing";
import { fingerprintOfKeyBlob, pinFingerprint } from "./hostKey";

/** Counters of what the pool did in this process. */
export interface HostPoolStats {
  connectionsOpened: number;
  channelsOpened: number;
  batches: number;
  steps: number;
  /** Batches written to a remote shell (pooled) or commands executed (naive): one per round trip. */
  roundTrips: number;
  reconnects: number;
  /** Rider tickets a locked batch waited for (runLocked with `riders`, lockedRider). */
  riderWaits: number;
  /** Of those, the ones still undecided after RIDER_WAIT_MS (the batch went on without them). */
  riderWaitsTimedOut: number;
}

export interface RunOptions {
  /** Skip the rest of the batch after the first step that exits non-zero. @default false */
  readonly stopOnError?: boolean;
  /** Time limit for the whole batch. @default 120000 */
  readonly timeoutMs?: number;
  /**
   * "worker": run in one of the host's worker shells (more exec channels on the same
   * connection, opened on demand, at most {@link MAX_WORKER_SHELLS}) instead of the main shell,
   * so a slow step (virsh define/start, a readiness probe) does not hold up the quick steps of
   * other operations queued behind it in the main shell. Worker shells never hold a lock: use
   * it only for steps that need none (not inside withHostLock's fn, not with runLocked).
   * @default "main"
   */
  readonly lane?: "main" | "worker";
}

/** Worker shells per host connection (sshd's MaxSessions is 10 by default; an image create or update's sends use one SFTP channel per host, image.ts sendFiles). */
export const MAX_WORKER_SHELLS = 6;

/** The parts of an ssh2 exec channel the shell uses (ssh2 ships no types here). */
interface ShellChannel {
  write(text: string): boolean;
  on(event: "data", fn: (chunk: Buffer) => void): unknown;
  on(event: "close", fn: () => void): unknown;
  stderr: { on(event: "data", fn: (chunk: Buffer) => void): unknown };
  close(): void;
  end(): void;
  signal?(name: string): void;
}

/** The parts of the ssh2 client the pool uses. */
interface SshClient {
  on(event: "close" | "end", fn: () => void): unknown;
  on(event: "error", fn: (err: Error) => void): unknown;
  exec(command: string, cb: (err: Error | undefined, channel: ShellChannel) => void): unknown;
  setNoDelay?(noDelay: boolean): unknown;
  _sock?: { ref(): void; unref(): void };
}

/** Mutable state of one host's session; lives only in the pool. */
interface HostSession {
  readonly key: string;
  readonly label: string;
  ssh: NodeSSH;
  channel: ShellChannel | null;
  parser: import("./framing").FrameParser | null;
  marker: string;
  nextSeq: number;
  tail: Promise<unknown>;
  busy: number;
  current: {
    want: number;
    got: StepResult[];
    resolve: (r: StepResult[]) => void;
    reject: (e: Error) => void;
  } | null;
  dead: boolean;
  fingerprint: string;
  /** Worker shells on the same connection (same shape; their `workers` stay empty). */
  workers?: HostSession[];
  /** Batches queued or running on this shell (for picking the least busy worker). */
  queued?: number;
  /** Fewer worker shells than MAX_WORKER_SHELLS, after the host refused a channel. */
  workerLimit?: number;
  /** Shells holding a named lock (withNamedHostLock), each carrying nothing else. */
  lockShells?: HostSession[];
  /**
   * Per lock file: a lock shell whose last release ran (fd 8 closed), kept open for the next
   * turn of that lock (not for a given lockFile), so a turn costs one round trip instead of a new channel and bash.
   */
  idleLocks?: Map<string, HostSession>;
}

interface HostPool {
  mode: "pooled" | "naive";
  sessions: Map<string, Promise<HostSession>>;
  locks: Map<string, Promise<void>>;
  cache: Map<string, unknown>;
  observedKeys: Map<string, string>;
  /** Connections handed out by pooledSsh in naive mode; closed by closeHostSessions. */
  loose: NodeSSH[];
  /** Per session key: the session whose shell holds the host lock (withHostLock). */
  held: Map<string, HostSession>;
  /** Per session key and lock file: the session whose shell holds a named lock (withNamedHostLock). */
  heldNamed?: Map<string, Map<string, HostSession>>;
  stats: HostPoolStats;
  connectTimeoutMs: number;
}

/**
 * The process-wide pool (created on first use). Code serialized by another kvmlab version may
 * have created it: fields added later are read with `??=` defaults.
 */
export function hostPool(): HostPool {
  const g = globalThis as unknown as Record<symbol, HostPool | undefined>;
  const key = Symbol.for("kvmlab.hostPool.v1");
  let pool = g[key];
  if (!pool) {
    pool = {
      // Never from the environment: naive mode holds no cross-process lock (benchmark only).
      mode: "pooled",
      sessions: new Map(),
      locks: new Map(),
      cache: new Map(),
      observedKeys: new Map(),
      loose: [],
      held: new Map(),
      stats: {
        connectionsOpened: 0,
        channelsOpened: 0,
        batches: 0,
        steps: 0,
        roundTrips: 0,
        reconnects: 0,
        riderWaits: 0,
        riderWaitsTimedOut: 0,
      },
      connectTimeoutMs: 15000,
    };
    g[key] = pool;
  }
  return pool;
}

/** A copy of the pool's counters. */
export function hostPoolStats(): HostPoolStats {
  const s = hostPool().stats;
  // A pool made by code serialized by an older kvmlab version lacks the later counters.
  return { ...s, riderWaits: s.riderWaits ?? 0, riderWaitsTimedOut: s.riderWaitsTimedOut ?? 0 };
}

/** Sets the transport mode (`naive` is for the benchmark) and resets nothing else. */
export function setHostPoolMode(mode: "pooled" | "naive"): void {
  hostPool().mode = mode;
}

/** Resets the counters (benchmark and tests). */
export function resetHostPoolStats(): void {
  const s = hostPool().stats;
  s.connectionsOpened = 0;
  s.channelsOpened = 0;
  s.batches = 0;
  s.roundTrips = 0;
  s.steps = 0;
  s.reconnects = 0;
  s.riderWaits = 0;
  s.riderWaitsTimedOut = 0;
}

/** Pool key: where and as whom, which key, which pin. Key material enters only as a hash. */
export function sessionKey(host: HostConnection): string {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const keyHash = crypto.createHash("sha256").update(host.privateKey).digest("hex").slice(0, 16);
  return `${host.user}@${host.address}:${host.port}#${keyHash}#${host.hostKey || "tofu"}`;
}

function hostLabel(host: HostConnection): string {
  return `host ${host.name} (${host.user}@${host.address}:${host.port})`;
}

/**
 * A remote step that failed, as fields a caller compares (which step of its batch, its label,
 * its exit status) instead of parsing the message, which stays the text users read. A plain
 * Error with these fields (remoteStepError makes it), not a subclass: provider code is
 * serialized by value into the state (from the source tree), where a class extending Error
 * loses its message (lifecycle/faults showed "dynamic provider create failed: undefined").
 */
export type RemoteStepError = Error & {
  /** The host's name. */
  readonly host: string;
  /** The failed step's label ("remote command" when it has none). */
  readonly label: string;
  /** Its exit status; null when it was skipped. */
  readonly exitStatus: number | null;
  /**
   * Its index in the steps the caller passed (runChecked's, runLocked's without the lock's own
   * steps, withHostLock's `first`); -1 for a step the caller did not pass (the lock's take).
   */
  readonly stepIndex: number;
};

/** Whether `err` is a remote step's failure with its fields (remoteStepError). */
export function isRemoteStepError(err: unknown): err is RemoteStepError {
  const e = err as Partial<RemoteStepError> | null;
  return (
    err instanceof Error &&
    typeof e?.stepIndex === "number" &&
    typeof e.label === "string" &&
    (typeof e.exitStatus === "number" || e.exitStatus === null)
  );
}

/**
 * An error from a remote step: which host, which step, exit status and the end of stderr.
 * `stepIndex`: the step's index in the caller's batch (-1: a step the caller did not pass).
 */
export function remoteStepError(
  host: HostConnection,
  step: Step,
  result: StepResult,
  stepIndex = -1,
): RemoteStepError {
  const tail = result.stderr.trim().split("\n").slice(-15).join("\n");
  const status = result.code === null ? "was skipped" : `failed with exit status ${result.code}`;
  const label = step.label ?? "remote command";
  return Object.assign(
    new Error(`${hostLabel(host)}: step "${label}" ${status}${tail ? `:\n${tail}` : ""}`),
    {
      host: host.name,
      label,
      exitStatus: result.code,
      stepIndex,
    },
  );
}

/**
 * The step of `steps` a runChecked/runLocked/withHostLock error names as failed, with its exit
 * status: its index (-1 when the error is no step's failure: a timeout, a lost shell, the lock's
 * take) and status (null then).
 */
export function failedStep(err: unknown): { index: number; exitStatus: number | null } {
  return isRemoteStepError(err)
    ? { index: err.stepIndex, exitStatus: err.exitStatus }
    : { index: -1, exitStatus: null };
}

/** Where a host is, as the pool remembers the key it saw there first. */
function observedKeyOf(host: HostConnection): string {
  return `${host.user}@${host.address}:${host.port}`;
}

/**
 * Opens one authenticated connection, verifying the host key against the pin. Without a pin
 * (trust on first use) the key this process saw first at that address is the pin: a reconnect
 * within the same run that meets another key is refused with both fingerprints.
 */
async function connectHost(host: HostConnection): Promise<{ ssh: NodeSSH; fingerprint: string }> {
  const pool = hostPool();
  const { NodeSSH }: typeof import("node-ssh") = require("node-ssh");
  let expected = "";
  let firstSeen = false;
  if (host.hostKey) {
    const pin = pinFingerprint(host.hostKey);
    if ("error" in pin) throw new Error(`${hostLabel(host)}: hostKey: ${pin.error}`);
    expected = pin.fingerprint;
  } else if (!host.trustOnFirstUse) {
    throw new Error(
      `${hostLabel(host)}: no hostKey pinned; set hostKey (ssh-keyscan output or SHA256 fingerprint) or trustOnFirstUse: true`,
    );
  } else {
    expected = pool.observedKeys.get(observedKeyOf(host)) ?? "";
    firstSeen = expected !== "";
  }
  let seen = "";
  const ssh = new NodeSSH();
  pool.stats.connectionsOpened += 1;
  try {
    await ssh.connect({
      host: host.address,
      port: host.port,
      username: host.user,
      privateKey: host.privateKey,
      readyTimeout: pool.connectTimeoutMs,
      keepaliveInterval: 15000,
      keepaliveCountMax: 3,
      tryKeyboard: false,
      hostVerifier: (key: Buffer) => {
        seen = fingerprintOfKeyBlob(key);
        return expected === "" || seen === expected;
      },
    });
  } catch (err) {
    ssh.dispose();
    if (expected && seen && seen !== expected) {
      throw new Error(
        firstSeen
          ? `${hostLabel(host)}: HOST KEY CHANGED: the host presented ${seen} but ${expected} was seen first in this run (trust on first use pins it). ` +
              "Do not connect unless the host was reinstalled on purpose; then set hostKey to the new key."
          : `${hostLabel(host)}: HOST KEY MISMATCH: the host presented ${seen} but ${expected} is pinned. ` +
              "If the host was reinstalled on purpose, update hostKey; otherwise do not connect.",
        { cause: err },
      );
    }
    const message = err instanceof Error ? err.message : String(err);
    throw new Error(`${hostLabel(host)}: SSH connection failed: ${message}`, { cause: err });
  }
  // The first key seen at this address pins every later connection of the run.
  if (!pool.observedKeys.has(observedKeyOf(host))) pool.observedKeys.set(observedKeyOf(host), seen);
  // No Nagle on our side: ssh2 writes one SSH packet in more than one socket write, so with
  // Nagle each batch's second write waited for the host's delayed ACK (~40 ms on Linux) and
  // every sequential round trip through the shell cost ~45 ms instead of ~1 ms (measured
  // against a local sshd; host-session.test.ts prints it).
  (ssh.connection as unknown as SshClient | null)?.setNoDelay?.(true);
  return { ssh, fingerprint: seen };
}

/**
 * The SHA256 fingerprint the host presented when this process connected to it, or "" if it has
 * not connected yet. Trust-on-first-use resources record this as an output.
 */
export function observedHostKey(host: HostConnection): string {
  return hostPool().observedKeys.get(observedKeyOf(host)) ?? "";
}

/** Sets the socket's hold on the event loop: held while a batch runs, released when idle. */
function holdSocket(session: HostSession, hold: boolean): void {
  const sock = (session.ssh.connection as unknown as SshClient | null)?._sock;
  if (sock && typeof sock.ref === "function") {
    if (hold) sock.ref();
    else sock.unref();
  }
}

/** The pooled session for a host: connected, not yet with a shell. Reconnects after a drop. */
async function getSession(host: HostConnection): Promise<HostSession> {
  const pool = hostPool();
  const key = sessionKey(host);
  const existing = pool.sessions.get(key);
  if (existing) {
    const s = await existing.catch(() => null);
    if (s && !s.dead) return s;
    if (pool.sessions.get(key) === existing) pool.sessions.delete(key);
    if (s) pool.stats.reconnects += 1;
  }
  const made = (async (): Promise<HostSession> => {
    const { ssh, fingerprint } = await connectHost(host);
    const session: HostSession = {
      key,
      label: hostLabel(host),
      ssh,
      channel: null,
      parser: null,
      marker: "",
      nextSeq: 0,
      tail: Promise.resolve(),
      busy: 0,
      current: null,
      dead: false,
      fingerprint,
    };
    const conn = ssh.connection as unknown as SshClient;
    const onGone = (why: string): void => {
      for (const s of [session, ...(session.workers ?? []), ...(session.lockShells ?? [])]) {
        s.dead = true;
        s.channel = null;
        failCurrent(s, new Error(`${session.label}: SSH connection lost (${why})`));
      }
    };
    conn.on("close", () => onGone("closed"));
    conn.on("end", () => onGone("ended"));
    conn.on("error", (e: Error) => onGone(e.message));
    holdSocket(session, false);
    return session;
  })();
  pool.sessions.set(key, made);
  made.catch(() => {
    if (pool.sessions.get(key) === made) pool.sessions.delete(key);
  });
  return made;
}

function failCurrent(session: HostSession, err: Error): void {
  const current = session.current;
  session.current = null;
  if (current) current.reject(err);
}

/** Opens the session's remote shell (one exec channel running bash reading stdin). */
async function openShell(session: HostSession): Promise<void> {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const { StringDecoder }: typeof import("node:string_decoder") = require("node:string_decoder");
  const pool = hostPool();
  const channel = await new Promise<ShellChannel>((resolve, reject) => {
    (session.ssh.connection as unknown as SshClient).exec("exec bash --noprofile --norc -s", (err, ch) =>
      err ? reject(new Error(`${session.label}: cannot open a remote shell: ${err.message}`)) : resolve(ch),
    );
  });
  pool.stats.channelsOpened += 1;
  session.marker = `KVL_${crypto.randomBytes(16).toString("hex")}`;
  const parser = createFrameParser(session.marker, session.nextSeq);
  session.parser = parser;
  session.channel = channel;
  const out = new StringDecoder("utf8");
  const err = new StringDecoder("utf8");
  const deliver = (): void => {
    const current = session.current;
    if (!current) return;
    for (const { result } of parser.take()) current.got.push(result);
    if (current.got.length >= current.want) {
      session.current = null;
      current.resolve(current.got);
    }
  };
  channel.on("data", (chunk: Buffer) => {
    parser.push("stdout", out.write(chunk));
    deliver();
  });
  channel.stderr.on("data", (chunk: Buffer) => {
    parser.push("stderr", err.write(chunk));
    deliver();
  });
  channel.on("close", () => {
    if (session.channel === channel) {
      session.channel = null;
      session.parser = null;
    }
    failCurrent(session, new Error(`${session.label}: the remote shell exited unexpectedly`));
  });
}

/** Runs one batch in the session's shell; callers serialize batches through `session.tail`. */
async function runInShell(
  session: HostSession,
  steps: readonly Step[],
  opts: RunOptions,
): Promise<StepResult[]> {
  if (!session.channel) await openShell(session);
  const channel = session.channel as ShellChannel | null;
  if (!channel) throw new Error(`${session.label}: the remote shell is not open`);
  const firstSeq = session.nextSeq;
  session.nextSeq += steps.length;
  const text = frameBatch(session.marker, firstSeq, steps, opts.stopOnError === true);
  const timeoutMs = opts.timeoutMs ?? 120000;
  return new Promise<StepResult[]>((resolve, reject) => {
    const timer = setTimeout(() => {
      const done = session.current?.got.length ?? 0;
      const step = steps[Math.min(done, steps.length - 1)];
      failCurrent(
        session,
        new Error(
          `${session.label}: step "${step.label ?? "remote command"}" timed out after ${timeoutMs} ms`,
        ),
      );
      // The shell may still be running the step: drop it; the next batch opens a new one.
      session.channel = null;
      session.parser = null;
      try {
        channel.signal?.("KILL");
      } catch {
        // Not every server honours signals; closing the channel is enough.
      }
      channel.close();
    }, timeoutMs);
    const got: StepResult[] = [];
    session.current = {
      want: steps.length,
      got,
      resolve: (r) => {
        clearTimeout(timer);
        resolve(r);
      },
      reject: (e) => {
        clearTimeout(timer);
        // The batch was written: the results that arrived before it was lost go with the error
        // (arrivedResults), so runLocked can tell an owner whose steps all reported from one
        // whose steps may not have run (review 11a S1).
        reject(withArrived(e, got.slice()));
      },
    };
    hostPool().stats.roundTrips += 1;
    channel.write(text);
  });
}

/** A lost batch's error's property holding the results that arrived (hidden: stdouts may be secret). */
const ARRIVED = "kvmlabArrivedResults";

/**
 * `err` (made for this batch alone by failCurrent's callers) with the results that arrived before
 * the batch was lost, as a property that is not enumerable, so logging the error never prints the
 * steps' output.
 */
function withArrived(err: Error, arrived: readonly StepResult[]): Error {
  Object.defineProperty(err, ARRIVED, { value: arrived, enumerable: false, configurable: true });
  return err;
}

/**
 * The results that arrived before a batch of runSteps was lost (a timeout, a lost shell or
 * connection): one per step that reported, in order. Undefined when the error carries none (it
 * came before the batch was written, or from the naive transport).
 */
export function arrivedResults(err: unknown): readonly StepResult[] | undefined {
  const v = err instanceof Error ? (err as unknown as Record<string, unknown>)[ARRIVED] : undefined;
  return Array.isArray(v) ? (v as StepResult[]) : undefined;
}

/**
 * A worker shell of `session` for one batch: an idle one, else a new one while there are fewer
 * than the limit, else the least busy; undefined when the host allows none (then the batch runs
 * in the main shell). Its channel opens on first use (runInShell).
 */
function pickWorker(session: HostSession): HostSession | undefined {
  const workers = (session.workers ??= []);
  const live = workers.filter((w) => !w.dead);
  const idle = live.find((w) => (w.queued ?? 0) === 0);
  if (idle) return idle;
  if (live.length < Math.min(MAX_WORKER_SHELLS, session.workerLimit ?? MAX_WORKER_SHELLS)) {
    const w: HostSession = {
      key: `${session.key}#worker${workers.length}`,
      label: session.label,
      ssh: session.ssh,
      channel: null,
      parser: null,
      marker: "",
      nextSeq: 0,
      tail: Promise.resolve(),
      busy: 0,
      current: null,
      dead: session.dead,
      fingerprint: session.fingerprint,
      queued: 0,
    };
    workers.push(w);
    return w;
  }
  if (live.length === 0) return undefined;
  return live.reduce((a, b) => ((b.queued ?? 0) < (a.queued ?? 0) ? b : a));
}

/** Runs one batch in a worker shell of the host's session (see RunOptions.lane). */
/**
 * Queues a batch on one shell of `session`'s connection (the main shell or a worker channel):
 * it runs after the shell's earlier batches, keeps the socket referenced while it runs, and
 * becomes the shell's new tail.
 */
function enqueue(
  session: HostSession,
  shell: HostSession,
  steps: readonly Step[],
  opts: RunOptions,
): Promise<StepResult[]> {
  const run = shell.tail.then(async () => {
    if (shell.dead) throw new Error(`${session.label}: SSH connection lost`);
    session.busy += 1;
    holdSocket(session, true);
    try {
      return await runInShell(shell, steps, opts);
    } finally {
      session.busy -= 1;
      if (session.busy === 0 && !session.dead) holdSocket(session, false);
    }
  });
  shell.tail = run.catch(() => undefined);
  return run;
}

async function runInWorker(
  host: HostConnection,
  steps: readonly Step[],
  opts: RunOptions,
): Promise<StepResult[]> {
  const session = await getSession(host);
  // The main shell opens first, so a host with few sessions per connection never gives its
  // last one to a worker; until then worker batches run in the main shell.
  const worker = session.channel ? pickWorker(session) : undefined;
  if (!worker) return runSteps(host, steps, { ...opts, lane: "main" });
  worker.queued = (worker.queued ?? 0) + 1;
  const run = enqueue(session, worker, steps, opts);
  try {
    return await run;
  } catch (err) {
    // A host whose sshd allows fewer sessions per connection (MaxSessions) refuses the extra
    // channel: this worker is unusable, the batch (which never started) runs in the main shell.
    if (worker.nextSeq === 0 && err instanceof Error && /cannot open a remote shell/.test(err.message)) {
      worker.dead = true;
      session.workerLimit = (session.workers ?? []).filter((w) => !w.dead).length;
      return runSteps(host, steps, { ...opts, lane: "main" });
    }
    throw err;
  } finally {
    worker.queued = (worker.queued ?? 1) - 1;
  }
}

/** Naive transport (benchmark baseline): a new connection and exec per step. */
async function runNaive(
  host: HostConnection,
  steps: readonly Step[],
  opts: RunOptions,
): Promise<StepResult[]> {
  const results: StepResult[] = [];
  let abort = false;
  for (const step of steps) {
    if (step.inShell) {
      results.push({ code: 0, stdout: "", stderr: "" });
      continue;
    }
    if (abort) {
      results.push({ code: null, stdout: "", stderr: "" });
      continue;
    }
    const { ssh } = await connectHost(host);
    try {
      hostPool().stats.channelsOpened += 1;
      hostPool().stats.roundTrips += 1;
      // The script goes over stdin (it may carry secrets: process arguments are world-readable
      // on the host); one compound command, read whole by bash before it runs, stdin /dev/null.
      const body = step.script.endsWith("\n") ? step.script : `${step.script}\n`;
      const r = await ssh.execCommand("bash --noprofile --norc -s", {
        stdin: `( ${body}) </dev/null\n`,
        noTrim: true,
      });
      const result = { code: typeof r.code === "number" ? r.code : 255, stdout: r.stdout, stderr: r.stderr };
      results.push(result);
      if (opts.stopOnError && result.code !== 0) abort = true;
    } finally {
      ssh.dispose();
    }
  }
  return results;
}

/**
 * Runs a batch of steps on a host in one round trip and returns every step's result (it does
 * not throw for a non-zero exit status; see {@link runChecked}). Throws when the host cannot
 * be reached, the host key does not match, the shell dies or the batch times out.
 */
export async function runSteps(
  host: HostConnection,
  steps: readonly Step[],
  opts: RunOptions = {},
): Promise<StepResult[]> {
  const pool = hostPool();
  if (steps.length === 0) return [];
  pool.stats.batches += 1;
  pool.stats.steps += steps.length;
  if (pool.mode === "naive") return runNaive(host, steps, opts);
  if (opts.lane === "worker") return runInWorker(host, steps, opts);
  for (let attempt = 0; ; attempt++) {
    const session = await getSession(host);
    // The flock of withHostLock lives in one shell: a batch on any other session (after a
    // reconnect) would run unlocked. Refuse it (issue 15: a reconnect dropped the lock silently).
    const holders: [string, HostSession][] = [];
    const held = (pool.held ??= new Map()).get(session.key);
    if (held) holders.push(["/var/lib/kvmlab/lock", held]);
    for (const [file, s] of pool.heldNamed?.get(session.key) ?? []) holders.push([file, s]);
    for (const [file, h] of holders) {
      if (h !== session || h.dead || (!session.channel && session.nextSeq > 0))
        throw new Error(
          `${session.label}: the SSH session holding the ${file === "/var/lib/kvmlab/lock" ? "host lock" : "lock"} ${file} was lost; the steps after it were not run (they would have run unlocked). Run the operation again`,
        );
    }
    const run = enqueue(session, session, steps, opts);
    try {
      return await run;
    } catch (err) {
      // A connection that died while idle in the pool is replaced once; a failure during the
      // batch is reported, because the steps may have run.
      if (attempt === 0 && session.dead && session.nextSeq === 0) continue;
      throw err;
    }
  }
}

/** Runs steps with stopOnError and throws on the first failure; returns the stdouts. */
export async function runChecked(
  host: HostConnection,
  steps: readonly Step[],
  opts: RunOptions = {},
): Promise<string[]> {
  const results = await runSteps(host, steps, { ...opts, stopOnError: true });
  results.forEach((r, i) => {
    if (r.code !== 0) throw remoteStepError(host, steps[i], r, i);
  });
  return results.map((r) => r.stdout);
}

/**
 * Runs `fn` holding the host lock: an in-process mutex per host, plus `flock` on
 * /var/lib/kvmlab/lock held by the session's shell, so other processes (another `pulumi up`)
 * wait too. Steps of other, unlocked operations keep flowing through the shell meanwhile.
 *
 * `first` runs in the round trip that takes the lock, right after the flock (so under it), and
 * `fn` gets their stdouts: a read-then-write under the lock (IPAM) costs one round trip less.
 * A failing `first` step throws like runChecked (the lock is released).
 */
export async function withHostLock<T>(
  host: HostConnection,
  fn: (first: string[]) => Promise<T>,
  waitSec = 120,
  first: readonly Step[] = [],
): Promise<T> {
  const release = await takeProcessLock(host);
  const pool = hostPool();
  let remote = false;
  let key = "";
  try {
    // The session the lock step runs on: if the connection drops after the flock and a later
    // getSession opens a fresh shell, that shell holds no lock and must not be registered.
    const before = pool.mode === "pooled" ? await getSession(host) : undefined;
    const take = takeLockStep("take the host lock /var/lib/kvmlab/lock", waitSec);
    const [locked, ...rest] = await runSteps(host, [take, ...first], { stopOnError: true });
    if (locked.code !== 0) throw remoteStepError(host, take, locked);
    remote = true;
    if (before) {
      const session = await getSession(host);
      if (session !== before || session.dead) {
        remote = false;
        throw new Error(
          `${session.label}: the SSH session that took the host lock /var/lib/kvmlab/lock was lost before its work began; nothing was run under it. Run the operation again`,
        );
      }
      key = session.key;
      (pool.held ??= new Map()).set(key, session);
    }
    rest.forEach((r, i) => {
      if (r.code !== 0) throw remoteStepError(host, first[i], r, i);
    });
    return await fn(rest.map((r) => r.stdout));
  } finally {
    const lost = key !== "" && pool.held.get(key)?.dead === true;
    if (key) pool.held.delete(key);
    // Queue the unlock without waiting: the next locker's steps come after it in the shell.
    if (remote && !lost) void runSteps(host, [RELEASE_LOCK_STEP]).catch(() => undefined);
    release();
  }
}

/**
 * Runs `fn` holding a NAMED lock of a host, /var/lib/kvmlab/<name>.lock (0600), across
 * processes: an in-process mutex per host and lock file, plus `flock` on fd 8 held by a lock shell
 * of its own (the session's main shell when sshd refuses one more channel: such locks then take
 * turns in this process, since they share that shell's fd 8, and that turn counts in `waitSec`:
 * a second named lock taken inside `fn` on the same host, both in the main shell, would wait for
 * itself, and is refused after `waitSec` with an error naming both lock files). Independent of the host lock (fd 9), so `fn` may use
 * runLocked/withHostLock on the same host. Used for volumes (two runs never claim one volume
 * name at once). `lockFile` names another
 * file under /var/lib/kvmlab (an autoscale group's `group.lock`, the flock its agent takes: the
 * AutoscaleAgent create starts a fresh group's first members under it). The in-process mutex,
 * the lock shell and the holder record are per lock file, so two groups' locks never wait on
 * each other in this process.
 *
 * Like the host lock, the flock lives in one shell: the session it ran on is registered as a
 * holder, a batch on that host in any other session (after a reconnect) is refused, and when
 * the session was lost by the time `fn` returns, the result is refused too (what `fn` did on
 * other hosts may have raced another run).
 */
export async function withNamedHostLock<T>(
  host: HostConnection,
  name: string,
  fn: () => Promise<T>,
  waitSec = 300,
  lockFile?: string,
): Promise<T> {
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(name))
    throw new Error(`withNamedHostLock: invalid lock name ${JSON.stringify(name)}`);
  // Another lock file than /var/lib/kvmlab/<name>.lock (an autoscale group's group.lock, the
  // agent's own flock): under /var/lib/kvmlab, plain path characters only, no `..`.
  if (
    lockFile !== undefined &&
    (!/^\/var\/lib\/kvmlab\/[A-Za-z0-9_/.-]+\.lock$/.test(lockFile) || lockFile.includes(".."))
  )
    throw new Error(`withNamedHostLock: invalid lock file ${JSON.stringify(lockFile)}`);
  const file = lockFile ?? `/var/lib/kvmlab/${name}.lock`;
  // The in-process mutex, the lock shell and the holder record are per lock FILE (review 12a
  // S3: two autoscale groups on one controller share the name "asg-group", not the file).
  const release = await takeProcessLock(host, file);
  const pool = hostPool();
  const takeFor = (sec: number): Step => ({
    label: `take the ${name} lock ${file} (another kvmlab run may hold it)`,
    inShell: true,
    script: `mkdir -p /var/lib/kvmlab && ( umask 077; : >> ${file} ) && chmod 0600 ${file} && exec 8>>${file} && flock -w ${Math.max(1, Math.floor(sec))} 8`,
  });
  const take = takeFor(waitSec);
  const takeOpts: RunOptions = { stopOnError: true, timeoutMs: (waitSec + 30) * 1000 };
  let remote = false;
  let key = "";
  let main: HostSession | undefined;
  // The shell whose fd 8 holds the flock: a lock shell of its own (below), else the main shell.
  let holder: HostSession | undefined;
  let holderChannel: ShellChannel | null = null;
  // Held while this lock lives in the MAIN shell (the fallback below): every named lock uses fd 8,
  // so a second lock taken there would close the first one's descriptor (and release its flock),
  // and the first's release would close the second's (review 12c S1). Such locks take turns.
  let releaseMainFd8: (() => void) | undefined;
  const lost = (): boolean =>
    holder !== undefined && (holder.dead || holder.channel !== holderChannel || main?.dead === true);
  try {
    if (pool.mode === "pooled") {
      main = await getSession(host);
      // The main shell opens first (as for workers), so a host allowing few sessions per
      // connection keeps its main shell.
      if (!main.channel) await runChecked(host, [{ label: "open the remote shell", script: "true" }]);
      // The flock lives in a shell that carries nothing else: its release never queues behind
      // another operation's slow batch, and no step's child (a daemon started on the host) can
      // inherit the lock's descriptor and keep it held after the release (the 3-tier sandbox run
      // of the last session: three creates on hv1 waited 300 s for a placement lock nobody used).
      const own = lockShell(main, file);
      try {
        const [r] = await enqueue(main, own, [take], takeOpts);
        if (r.code !== 0) throw remoteStepError(host, take, r);
        holder = own;
      } catch (err) {
        closeLockShell(main, own);
        // sshd's MaxSessions refused one more channel: take the lock in the main shell.
        if (!(own.nextSeq === 0 && err instanceof Error && /cannot open a remote shell/.test(err.message)))
          throw err;
        // The turn of the main shell's fd 8 counts in waitSec (review 12d N1a): a named lock
        // taken inside another's fn on this host, both in the main shell, would wait for itself.
        const t0 = Date.now();
        releaseMainFd8 = await mainFd8Turn(host, waitSec * 1000);
        if (releaseMainFd8 === undefined)
          throw new Error(
            `${main.label}: the ${name} lock ${file} could not be taken within ${waitSec} s: sshd refused it a shell of its own (MaxSessions), and the main shell's descriptor 8, which such locks then share, stayed held by ${mainFd8Holders(pool, main)} in this process (a named lock taken inside another named lock's work on the same host waits for itself there). Fix: raise MaxSessions in that host's sshd_config (each named lock then gets a shell of its own), or take the two locks one after the other`,
            { cause: err },
          );
        const left = waitSec - (Date.now() - t0) / 1000;
        await runChecked(host, [takeFor(left)], takeOpts);
        holder = main;
      }
      holderChannel = holder.channel;
    } else {
      await runChecked(host, [take], takeOpts);
    }
    remote = true;
    if (main) {
      const session = await getSession(host);
      if (session !== main || lost()) {
        remote = false;
        throw new Error(
          `${session.label}: the SSH session that took the ${name} lock ${file} was lost before its work began; nothing was run under it. Run the operation again`,
        );
      }
      key = main.key;
      namedHolders(pool, key).set(file, main);
    }
    const result = await fn();
    if (main && lost()) {
      remote = false;
      throw new Error(
        `${main.label}: the SSH session holding the ${name} lock ${file} was lost while the work under it ran; another kvmlab run may have taken the lock meanwhile. Run the operation again`,
      );
    }
    return result;
  } finally {
    if (key) namedHolders(pool, key).delete(file);
    const unlock: Step = {
      label: `release the ${name} lock`,
      inShell: true,
      always: true,
      script: "exec 8>&-",
    };
    // Awaited and bounded: the next taker (this process or another) finds the lock free.
    let released = false;
    if (remote && !lost()) {
      if (main && holder) {
        const r = await enqueue(main, holder, [unlock], { timeoutMs: 15000 }).catch(() => undefined);
        released = r?.[0]?.code === 0 && !lost();
      } else if (!main) await runSteps(host, [unlock], { timeoutMs: 15000 }).catch(() => undefined);
    }
    if (main && holder && holder !== main) {
      // A lock shell whose release ran holds nothing: kept for this lock's next turn (issue 13:
      // opening one cost about 200 ms per placement turn on a busy host). Otherwise closing it
      // ends its bash, which closes fd 8 whatever happened above.
      // Not for a lockFile lock (an autoscale group's, taken once per create): its idle channel
      // would never be reused and would count against sshd's MaxSessions.
      if (released && lockFile === undefined) (main.idleLocks ??= new Map()).set(file, holder);
      else closeLockShell(main, holder);
    }
    releaseMainFd8?.();
    release();
  }
}

/**
 * The in-process turn of fd 8 in a host's main shell, for named locks that could not get a lock
 * shell of their own (not a file path, so it never equals a lock file's key). A caller must not
 * take another named lock on the same host inside `fn` while its lock lives in the main shell:
 * that one's wait for the turn ends after its waitSec with an error (mainFd8Turn).
 */
const MAIN_SHELL_FD8 = "main-shell-fd8";

/**
 * The turn of fd 8 in the host's main shell, waited for at most `waitMs`: its release, or
 * undefined when the wait ran out. A turn that comes after that is given back at once, so the
 * queue behind it moves on.
 */
async function mainFd8Turn(host: HostConnection, waitMs: number): Promise<(() => void) | undefined> {
  const turn = takeProcessLock(host, MAIN_SHELL_FD8);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<undefined>((r) => {
    timer = setTimeout(() => r(undefined), Math.max(0, waitMs));
  });
  const got = await Promise.race([turn, late]);
  clearTimeout(timer);
  if (got === undefined) void turn.then((release) => release());
  return got;
}

/** The named locks of this process held in `main`'s shell (on its fd 8), for an error message. */
function mainFd8Holders(pool: HostPool, main: HostSession): string {
  const files = [...namedHolders(pool, main.key)].filter(([, s]) => s === main).map(([f]) => f);
  return files.length > 0 ? `the lock ${files.join(", ")}` : "another named lock being taken";
}

/**
 * A shell of its own on `session`'s connection for a named lock: the one kept from the lock's
 * last turn when it is still open, else a new one (opened on first use).
 */
function lockShell(session: HostSession, file: string): HostSession {
  const idle = session.idleLocks?.get(file);
  if (idle) {
    session.idleLocks?.delete(file);
    if (!idle.dead && idle.channel && !session.dead) return idle;
    closeLockShell(session, idle);
  }
  const shell: HostSession = {
    key: `${session.key}#lock-${file}`,
    label: session.label,
    ssh: session.ssh,
    channel: null,
    parser: null,
    marker: "",
    nextSeq: 0,
    tail: Promise.resolve(),
    busy: 0,
    current: null,
    dead: session.dead,
    fingerprint: session.fingerprint,
  };
  (session.lockShells ??= []).push(shell);
  return shell;
}

/** Ends a lock shell's channel (its bash exits, closing the lock descriptor) and forgets it. */
function closeLockShell(session: HostSession, shell: HostSession): void {
  session.lockShells = (session.lockShells ?? []).filter((s) => s !== shell);
  const channel = shell.channel;
  shell.dead = true;
  shell.channel = null;
  try {
    channel?.end();
  } catch {
    // already closed
  }
}

/** Per session key: the sessions whose shells hold a named lock (withNamedHostLock), by lock file. */
function namedHolders(pool: HostPool, key: string): Map<string, HostSession> {
  const all = (pool.heldNamed ??= new Map());
  let m = all.get(key);
  if (!m) {
    m = new Map();
    all.set(key, m);
  }
  return m;
}

/**
 * Resolves when the host's in-process mutex, as queued now, is free (every holder and waiter of
 * this moment done; takes nothing, runs nothing on the host). The IPAM turn waits here before it
 * plans (issue 13, session 10): the allocations that arrive while a placement claim batch holds
 * the DHCP host's lock join its commit instead of waiting for the next turn. Another caller may
 * take the mutex first after it resolves; the caller's runLocked then waits as it would have.
 * A turn whose commit rides in a claim batch (lockedRider: the batch waits for it) skips this
 * wait and the lock take of its own: it commits inside that batch's hold (session 11).
 */
export async function hostLockFree(host: HostConnection): Promise<void> {
  await (hostPool().locks.get(`${host.address}:${host.port}`) ?? Promise.resolve());
}

/** Waits for the host's in-process mutex (one holder per host in this process); returns its release. */
async function takeProcessLock(host: HostConnection, name = ""): Promise<() => void> {
  const pool = hostPool();
  const id = `${host.address}:${host.port}${name ? `#${name}` : ""}`;
  const before = pool.locks.get(id) ?? Promise.resolve();
  let release: () => void = () => undefined;
  const mine = new Promise<void>((r) => (release = r));
  const chained = before.then(() => mine);
  pool.locks.set(id, chained);
  await before;
  return () => {
    release();
    if (pool.locks.get(id) === chained) pool.locks.delete(id);
  };
}

/** The shell step that takes flock on /var/lib/kvmlab/lock (held by the session's shell). */
export function takeLockStep(label: string, waitSec: number): Step {
  return {
    label,
    inShell: true,
    // The lock file is root's alone (0600): a world-openable lock lets any local user block
    // every run (issue 15). Made in a subshell so the shell's umask stays as it is.
    // The folder and the file are made only when missing (a lock taken on every create's
    // placement and IPAM turn, issue 13: two processes, chmod and flock, instead of four).
    script: `{ [ -d /var/lib/kvmlab ] || mkdir -p /var/lib/kvmlab; } && { [ -e /var/lib/kvmlab/lock ] || ( umask 077; : >> /var/lib/kvmlab/lock ); } && chmod 0600 /var/lib/kvmlab/lock && exec 9>>/var/lib/kvmlab/lock && flock -w ${Math.max(1, Math.floor(waitSec))} 9`,
  };
}

const RELEASE_LOCK_STEP: Step = {
  label: "release the host lock",
  inShell: true,
  always: true,
  script: "exec 9>&-",
};

/**
 * The pooled node-ssh connection of a host, for SFTP transfers (images). Counts as the same
 * connection as the shell; opens it if needed.
 */
export async function pooledSsh(host: HostConnection): Promise<NodeSSH> {
  if (hostPool().mode === "naive") {
    const { ssh } = await connectHost(host);
    (hostPool().loose ??= []).push(ssh);
    return ssh;
  }
  return (await getSession(host)).ssh;
}

/**
 * Runs a batch under the host lock in ONE round trip: the in-process mutex is held while the
 * batch runs, and the batch itself takes flock first and releases it last (even after a
 * failure). Throws at the first failing step, like {@link runChecked}; returns the stdouts of
 * `steps` (without the lock steps).
 *
 * With `riders`, the steps of the tickets announced on this host (lockedRider) ride after
 * `steps`, in the same lock hold and round trip; the batch first waits (bounded) for those
 * tickets to decide. Their outcomes go to their tickets, never to this caller, and a rider never
 * changes this caller's outcome: when the batch is lost (a lost shell, a timeout) after every
 * step of the caller reported success, the caller gets its stdouts and only the riders whose
 * steps had not all reported get the loss (review 11a S1).
 */
export async function runLocked(
  host: HostConnection,
  steps: readonly Step[],
  opts: LockedRunOptions = {},
  waitSec = 120,
): Promise<string[]> {
  return lockedBatch(host, steps, opts, waitSec, async (all, runOpts) => {
    try {
      return { results: await runSteps(host, all, runOpts) };
    } catch (err) {
      // The results that arrived before the loss (none when it came before the batch was sent).
      return { results: arrivedResults(err) ?? [], lost: err };
    }
  });
}

/** runLocked's options: runSteps' and `riders` (carry the tickets announced on the host). */
export type LockedRunOptions = RunOptions & { readonly riders?: boolean };

/**
 * How lockedBatch sends its batch: every step's result; or, when the batch was lost, `lost` (the
 * error) and the results that arrived before it, in order (possibly none).
 */
export type BatchSend = (
  all: readonly Step[],
  opts: RunOptions,
) => Promise<{ readonly results: readonly StepResult[]; readonly lost?: unknown }>;

/**
 * runLocked's work over a given transport: runLocked passes runSteps; unit tests' fake hosts pass
 * their own, so they run this same code (the in-process mutex, the wait for riders, the riders'
 * slices and outcomes, the caller's result).
 */
export async function lockedBatch(
  host: HostConnection,
  steps: readonly Step[],
  opts: LockedRunOptions,
  waitSec: number,
  send: BatchSend,
): Promise<string[]> {
  const release = await takeProcessLock(host);
  let riders: RiderSlot[] = [];
  const settleRiders = (o: (k: number) => RiderOutcome) => {
    riders.forEach((r, k) => r.settle?.(o(k)));
    riders = [];
  };
  try {
    const { riders: takes, ...runOpts } = opts;
    if (takes) riders = await takeRiders(host);
    const carried = riders.flatMap((r) => r.steps ?? []);
    const all: Step[] = [
      takeLockStep("take the host lock /var/lib/kvmlab/lock (another kvmlab run may hold it)", waitSec),
      ...steps,
      ...carried,
      RELEASE_LOCK_STEP,
    ];
    // The caller's steps in `all`: the lock's take and `steps`.
    const own = 1 + steps.length;
    let sent: { readonly results: readonly StepResult[]; readonly lost?: unknown };
    try {
      sent = await send(all, { ...runOpts, stopOnError: true });
    } catch (err) {
      sent = { results: [], lost: err };
    }
    const { results } = sent;
    const lost = "lost" in sent;
    // Lost before every step of the caller reported success: its outcome is unknown (its steps
    // may have run), and so is every rider's. As before riders, the caller gets the loss.
    if (
      lost &&
      (riders.length === 0 || results.length < own || results.slice(0, own).some((r) => r.code !== 0))
    ) {
      settleRiders(() => ({ error: sent.lost }));
      throw sent.lost;
    }
    const ownFailed = results.slice(0, own).some((r) => r.code !== 0);
    // Each rider's own slice: skipped (nothing of it ran) when a step before it failed, the
    // caller's or an earlier rider's (stopOnError answers every later step with code null); the
    // loss when the batch was lost before all of its results arrived; else its results.
    let at = own;
    const outcomes = riders.map((r): RiderOutcome => {
      const n = (r.steps ?? []).length;
      const slice = results.slice(at, at + n);
      at += n;
      if (slice.length < n)
        return {
          error: lost
            ? sent.lost
            : new Error(`${hostLabel(host)}: a locked batch answered fewer steps than it sent`),
        };
      return ownFailed || slice.every((x) => x.code === null) ? { skipped: true } : { results: slice };
    });
    settleRiders((k) => outcomes[k]);
    for (let i = 0; i < own; i++) {
      // The caller's index: `all` begins with the lock's take (-1 there).
      if (results[i].code !== 0) throw remoteStepError(host, all[i], results[i], i - 1);
    }
    return results.slice(1, own).map((r) => r.stdout);
  } finally {
    // Never left waiting (an error before the batch was sent: nothing of theirs ran).
    settleRiders(() => ({ skipped: true }));
    release();
  }
}

/**
 * What became of steps that rode in another operation's locked batch (lockedRider):
 * - `results`: one per step, as runSteps gives them (a step skipped after a failure has code
 *   null); the rider's own steps decide its outcome (a guard's refusal is its own).
 * - `skipped`: nothing of them ran: the batch did not take them, or a step before them failed
 *   (the lock's take, a step of the batch's owner, an earlier rider's step).
 * - `error`: the batch was lost (a timeout, a lost shell or connection) before all of their
 *   results arrived: they may have run, in part. Also given when the loss came before the batch
 *   was sent at all (a connection that could not be made: nothing ran); a rider cannot tell the
 *   two apart and must treat both as unknown (the IPAM turn then undoes its commit under the
 *   lock, which costs one lock hold and a rewrite when nothing was written; review 11a N2).
 */
export type RiderOutcome =
  { readonly results: readonly StepResult[] } | { readonly error: unknown } | { readonly skipped: true };

/**
 * A ticket for steps that may ride in the next locked batch on a host that takes riders
 * (runLocked with `riders`), announced before the caller knows its steps (issue 13, session 11:
 * the IPAM turn announces before it reads the record, so a placement claim batch on the DHCP
 * host waits for its plan and carries its commit: one lock hold and round trip instead of two).
 */
export interface RiderTicket {
  /** Whether a locked batch waits for this ticket's decision (then `ride` joins that batch). */
  wanted(): boolean;
  /** Rides in the batch waiting for it (call only when wanted()); resolves when it ran. */
  ride(steps: readonly Step[]): Promise<RiderOutcome>;
  /** No steps to carry (idempotent; a batch waiting for it goes on without it). */
  withdraw(): void;
}

interface RiderSlot {
  waitedOn: boolean;
  decided: boolean;
  steps?: readonly Step[];
  onDecided: Array<() => void>;
  settle?: (o: RiderOutcome) => void;
}

/** Per host (address:port): the rider tickets announced and not yet decided or carried. */
function riderSlots(host: HostConnection): Set<RiderSlot> {
  const pool = hostPool() as HostPool & { riders?: Map<string, Set<RiderSlot>> };
  const all = (pool.riders ??= new Map());
  const id = `${host.address}:${host.port}`;
  let set = all.get(id);
  if (!set) {
    set = new Set();
    all.set(id, set);
  }
  return set;
}

/**
 * Announces steps that may ride in the host's next locked batch that takes riders. The holder
 * must call `ride` or `withdraw` soon (a waiting batch goes on without an undecided ticket after
 * RIDER_WAIT_MS). The ridden steps run under that batch's flock, after its owner's steps, and
 * only when every one of those succeeded (stopOnError), so a rider never changes its owner's
 * outcome and is never run without the lock; a rider must refuse on its own (a guard step first)
 * when what it planned on changed.
 */
export function lockedRider(host: HostConnection): RiderTicket {
  const slots = riderSlots(host);
  const slot: RiderSlot = { waitedOn: false, decided: false, onDecided: [] };
  slots.add(slot);
  const decide = () => {
    if (slot.decided) return;
    slot.decided = true;
    for (const f of slot.onDecided.splice(0)) f();
  };
  return {
    wanted: () => slot.waitedOn && !slot.decided,
    ride: (steps) =>
      new Promise<RiderOutcome>((resolve) => {
        if (!slot.waitedOn || slot.decided) {
          slots.delete(slot);
          resolve({ skipped: true });
          return;
        }
        slot.steps = steps;
        slot.settle = resolve;
        decide();
      }),
    withdraw: () => {
      slots.delete(slot);
      decide();
    },
  };
}

/** How long a locked batch that takes riders waits for the tickets announced on its host. */
export const RIDER_WAIT_MS = 5000;

/**
 * For lockedBatch with `riders`: waits (bounded by RIDER_WAIT_MS) until every ticket announced on
 * the host has decided, and takes those that ride (removed from the host's set); the caller runs
 * their `steps` and must `settle` each. A ticket still undecided after the wait is left: its
 * ride() answers `skipped`. Counted in hostPoolStats (riderWaits, riderWaitsTimedOut).
 */
async function takeRiders(host: HostConnection): Promise<RiderSlot[]> {
  const slots = riderSlots(host);
  const open = [...slots].filter((s) => !s.decided);
  if (open.length > 0) {
    for (const s of open) s.waitedOn = true;
    const stats = hostPool().stats;
    stats.riderWaits = (stats.riderWaits ?? 0) + open.length;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(open.map((s) => new Promise<void>((r) => (s.decided ? r() : s.onDecided.push(r))))),
      new Promise<void>((r) => (timer = setTimeout(r, RIDER_WAIT_MS))),
    ]);
    clearTimeout(timer);
    const late = open.filter((s) => !s.decided);
    stats.riderWaitsTimedOut = (stats.riderWaitsTimedOut ?? 0) + late.length;
    for (const s of late) s.waitedOn = false;
  }
  const taken = [...slots].filter((s) => s.decided && s.steps !== undefined && s.settle !== undefined);
  for (const s of taken) slots.delete(s);
  return taken;
}

/** Closes every pooled connection (tests, benchmark, end of a CLI run). */
export async function closeHostSessions(): Promise<void> {
  const pool = hostPool();
  const sessions = [...pool.sessions.values()];
  pool.sessions.clear();
  for (const p of sessions) {
    const s = await p.catch(() => null);
    if (!s) continue;
    await s.tail.catch(() => undefined);
    await Promise.all((s.workers ?? []).map((w) => w.tail.catch(() => undefined)));
    for (const shell of [s, ...(s.workers ?? []), ...(s.lockShells ?? [])]) {
      shell.dead = true;
      try {
        shell.channel?.end();
      } catch {
        // already closed
      }
    }
    s.ssh.dispose();
  }
  for (const ssh of (pool.loose ??= []).splice(0)) ssh.dispose();
  pool.cache.clear();
}

/** Per-process cache for host facts (capabilities), keyed by host and topic. */
export function hostCache<T>(host: HostConnection, topic: string, make: () => Promise<T>): Promise<T> {
  const pool = hostPool();
  const key = `${host.address}:${host.port}:${topic}`;
  let hit = pool.cache.get(key) as Promise<T> | undefined;
  if (!hit) {
    hit = make();
    pool.cache.set(key, hit);
    hit.catch(() => pool.cache.delete(key));
  }
  return hit;
}
