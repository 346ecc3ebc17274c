/**
 * Framing for the long-lived remote shell (`bash --noprofile --norc -s` on one exec channel).
 *
 * Each step is written to the shell's stdin as
 *
 *     ( <script>
 *     ) </dev/null 8>&- 9>&- ; __kvl_s=$?
 *     printf '\n%s %s\n' '<marker>-<seq>' "$__kvl_s"
 *     printf '\n%s\n' '<marker>-<seq>' >&2
 *
 * so the step runs in a subshell (an `exit` or `cd` cannot disturb the shell), reads nothing
 * from the command stream, does not inherit the lock descriptors (a daemon it starts would hold
 * the flock past its release), and its exit status, stdout
 * and stderr come back apart. The marker holds 128 random bits per session, so a step cannot
 * forge it. A batch with `stopOnError` skips the remaining steps after the first failure in
 * the shell itself, without a round trip.
 *
 * Pure: no I/O. The session (session.ts) writes {@link frameBatch}'s text and feeds what comes
 * back into {@link createFrameParser}.
 */

/** One remote step. */
export interface Step {
  /** Shell text, run by bash in a subshell with stdin from /dev/null. */
  readonly script: string;
  /** Short description for errors and logs (never contains secrets). */
  readonly label?: string;
  /**
   * Run in the shell itself rather than a subshell, so its effects (an open lock descriptor)
   * stay. Used only by the host lock.
   */
  readonly inShell?: boolean;
  /** Run even after an earlier step failed in a `stopOnError` batch (e.g. an unlock). */
  readonly always?: boolean;
}

/** What a step did. `code` is null when the step was skipped after an earlier failure. */
export interface StepResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Shell text for a batch of steps numbered from `firstSeq`. */
export function frameBatch(
  marker: string,
  firstSeq: number,
  steps: readonly Step[],
  stopOnError: boolean,
): string {
  if (!/^[A-Za-z0-9_]+$/.test(marker))
    throw new Error(`frameBatch: invalid marker ${JSON.stringify(marker)}`);
  const parts: string[] = ["__kvl_abort="];
  steps.forEach((step, i) => {
    const tag = `${marker}-${firstSeq + i}`;
    const body = step.script.endsWith("\n") ? step.script : `${step.script}\n`;
    const run = step.inShell
      ? `{ ${body}} </dev/null; __kvl_s=$?`
      : `( ${body}) </dev/null 8>&- 9>&-; __kvl_s=$?`;
    const guarded =
      stopOnError && step.always
        ? run
        : stopOnError
          ? `if [ -z "$__kvl_abort" ]; then ${run}; [ "$__kvl_s" -eq 0 ] || __kvl_abort=1; else __kvl_s=skip; fi`
          : run;
    parts.push(guarded, `printf '\\n%s %s\\n' '${tag}' "$__kvl_s"`, `printf '\\n%s\\n' '${tag}' >&2`);
  });
  return `${parts.join("\n")}\n`;
}

/** Incremental parser for the shell's stdout and stderr. */
export interface FrameParser {
  /** Feeds decoded text from one stream. */
  push(stream: "stdout" | "stderr", text: string): void;
  /** Results completed so far, in sequence order; each is returned once. */
  take(): { seq: number; result: StepResult }[];
  /** Sequence number of the next result expected. */
  readonly nextSeq: number;
  /** Text received for the step in progress (for error messages on timeout or drop). */
  pending(): { stdout: string; stderr: string };
}

export function createFrameParser(marker: string, firstSeq = 0): FrameParser {
  let stdout = "";
  let stderr = "";
  let seq = firstSeq;
  const done: { seq: number; result: StepResult }[] = [];

  function advance(): void {
    for (;;) {
      const tag = `${marker}-${seq}`;
      const outRe = new RegExp(`\\n${tag} (\\d+|skip)\\n`);
      const outMatch = outRe.exec(stdout);
      if (!outMatch) return;
      const errNeedle = `\n${tag}\n`;
      const errAt = stderr.indexOf(errNeedle);
      if (errAt < 0) return;
      const code = outMatch[1] === "skip" ? null : Number(outMatch[1]);
      done.push({
        seq,
        result: { code, stdout: stdout.slice(0, outMatch.index), stderr: stderr.slice(0, errAt) },
      });
      stdout = stdout.slice(outMatch.index + outMatch[0].length);
      stderr = stderr.slice(errAt + errNeedle.length);
      seq += 1;
    }
  }

  return {
    push(stream, text) {
      if (stream === "stdout") stdout += text;
      else stderr += text;
      advance();
    },
    take() {
      return done.splice(0, done.length);
    },
    get nextSeq() {
      return seq;
    },
    pending() {
      return { stdout, stderr };
    },
  };
}
