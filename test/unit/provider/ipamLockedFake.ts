/**
 * runLocked for the fake hosts of the IPAM and placement unit tests (review 11a S3): the real
 * lockedBatch, so the host's in-process mutex, the wait for rider tickets (lockedRider), the
 * riders' slices and outcomes and the caller's result are the production code, over the fake's
 * runSteps: one step at a time, stopOnError as the remote shell runs a batch (a step after a
 * failure is answered with code null, the lock's release still runs). The lock's take and
 * release are logged as "host lock taken" / "host lock released" (not answered by the fake).
 * The fake's restore() puts the real runLocked back.
 */
import type { BatchSend, HostConnection, LockedRunOptions, Step, StepResult } from "../../../provider";
import type { Fake } from "./fakeHost";

export interface LockedFakeOptions {
  /** Runs before a batch is sent (its riders already joined), with its steps' labels. */
  before?: (labels: readonly string[]) => Promise<void> | void;
  /**
   * The batch is lost (as a dropped shell loses it) when it reaches a step this returns true
   * for: that step does not run, the results before it arrive with the loss.
   */
  loseAt?: (label: string) => boolean;
}

/** Replaces runLocked (after fakeHost(), whose runSteps it uses) by lockedBatch over the fake. */
export function lockedOverFake(fake: Fake, opts: LockedFakeOptions = {}): void {
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const lockedBatch = session.lockedBatch as (
    h: HostConnection,
    steps: readonly Step[],
    o: LockedRunOptions,
    waitSec: number,
    send: BatchSend,
  ) => Promise<string[]>;
  const runSteps = session.runSteps as (h: HostConnection, steps: readonly Step[]) => Promise<StepResult[]>;
  const ok: StepResult = { code: 0, stdout: "", stderr: "" };
  session.runLocked = (h: HostConnection, steps: readonly Step[], o: LockedRunOptions = {}, waitSec = 120) =>
    lockedBatch(h, steps, o, waitSec, async (all) => {
      await opts.before?.(all.map((s) => s.label ?? ""));
      const results: StepResult[] = [];
      let failed = false;
      for (const s of all) {
        const label = s.label ?? "";
        if (opts.loseAt?.(label))
          return { results, lost: new Error(`host ${h.name}: SSH connection lost (closed)`) };
        if (failed && !s.always) {
          results.push({ code: null, stdout: "", stderr: "" });
          continue;
        }
        let r: StepResult;
        if (/^take the host lock /.test(label)) {
          fake.log.push({ host: h.name, label: "host lock taken", script: "" });
          r = ok;
        } else if (label === "release the host lock") {
          fake.log.push({ host: h.name, label: "host lock released", script: "" });
          r = ok;
        } else r = (await runSteps(h, [s]))[0];
        results.push(r);
        if (r.code !== 0) failed = true;
      }
      return { results };
    });
}
