/**
 * Running local commands for the sandbox: argument vectors only (no shell unless a script is
 * passed explicitly with its values as positional parameters), a time limit on every call, and
 * errors that carry the command's own message.
 */
import { spawn } from "node:child_process";

/** An error meant for a person: one line saying what failed and how to fix it. */
export class SandboxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SandboxError";
  }
}

export interface RunOptions {
  /** Written to the command's stdin. */
  input?: string | Buffer;
  /** Milliseconds before the command is killed (SIGKILL) and the call fails. Default 60 s. */
  timeoutMs?: number;
  /** Do not throw on a non-zero exit; the caller inspects `code`. */
  allowFailure?: boolean;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A fixed, minimal environment for commands that start daemons (nothing of the caller's leaks in). */
export const DAEMON_ENV: NodeJS.ProcessEnv = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  HOME: "/root",
  LANG: "C.UTF-8",
};

function describe(cmd: string, args: readonly string[]): string {
  const shown = [cmd, ...args].map((a) => (a.includes("\n") ? "<script>" : a)).join(" ");
  return shown.length > 160 ? `${shown.slice(0, 157)}...` : shown;
}

export function run(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: options.cwd,
      env: options.env ?? DAEMON_ENV,
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new SandboxError(`cannot run ${cmd}: ${e.message}`));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const result = {
        code: code ?? 128,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      };
      if (timedOut) {
        reject(new SandboxError(`${describe(cmd, args)} did not finish within ${timeoutMs / 1000} s`));
      } else if (result.code !== 0 && !options.allowFailure) {
        const detail = (result.stderr.trim() || result.stdout.trim()).split("\n").slice(-3).join(" / ");
        reject(
          new SandboxError(
            `${describe(cmd, args)} failed (${signal ?? `exit ${result.code}`})${detail ? `: ${detail}` : ""}`,
          ),
        );
      } else {
        resolve(result);
      }
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(options.input ?? "");
  });
}

/** Runs a POSIX shell script with its values as positional parameters ($1, $2, …), never interpolated. */
export function runScript(
  script: string,
  params: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  return run("/bin/sh", ["-c", script, "kvmlab-sandbox", ...params], options);
}
