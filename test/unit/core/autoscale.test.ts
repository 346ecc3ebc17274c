/**
 * Heat's autoscaling rules (core/autoscale.ts), checked against values worked out from Heat's
 * scalingutil.py by hand, exhaustively over a grid, and against the agent's sh implementation
 * (templates/autoscale/agent.sh in library mode): both must give the same answers.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import {
  alarmHolds,
  averageCpuPercent,
  checkGroupSpec,
  cooldownAfter,
  currentSize,
  decisionSize,
  scaleInChoice,
  decideSignal,
  membersToStart,
  membersToStop,
  newCapacity,
  type AdjustmentType,
  type MemberState,
} from "../../../core/autoscale";
import { templatesDir } from "../../../templates/render";
import { assertFieldError } from "../templates/support";

const AGENT = path.join(templatesDir(), "autoscale", "agent.sh");

/** Runs a sh snippet with the agent's functions loaded; returns stdout lines. */
function sh(snippet: string, stdin = ""): string[] {
  const r = spawnSync("sh", ["-c", `ASG_LIB=1; . ${JSON.stringify(AGENT)}; ${snippet}`], {
    input: stdin,
    encoding: "utf8",
    timeout: 60000,
  });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split("\n").filter((l) => l !== "");
}

/** Heat's calculate_new_capacity transcribed literally (floats, math.ceil/floor) as the oracle. */
function heatOracle(
  current: number,
  adj: number,
  type: AdjustmentType,
  step: number,
  min: number,
  max: number,
): number {
  let n: number;
  if (type === "change_in_capacity") n = current + adj;
  else if (type === "exact_capacity") n = adj;
  else {
    const delta = (current * adj) / 100.0;
    let rounded: number;
    if (Math.abs(delta) < 1.0) rounded = delta > 0.0 ? Math.ceil(delta) : Math.floor(delta);
    else rounded = delta > 0.0 ? Math.floor(delta) : Math.ceil(delta);
    if (step && step > Math.abs(rounded)) rounded = rounded > 0 ? step : -step;
    n = current + rounded;
  }
  if (n > max) return max;
  if (n < min) return min;
  return n;
}

test("capacity math matches Heat's worked examples", () => {
  // change_in_capacity adds, then clamps
  assert.equal(newCapacity(1, 1, "change_in_capacity", 0, 1, 3), 2);
  assert.equal(newCapacity(3, 1, "change_in_capacity", 0, 1, 3), 3);
  assert.equal(newCapacity(1, -1, "change_in_capacity", 0, 1, 3), 1);
  assert.equal(newCapacity(2, 2, "change_in_capacity", 0, 1, 3), 3);
  // exact sets, then clamps
  assert.equal(newCapacity(1, 5, "exact_capacity", 0, 1, 3), 3);
  assert.equal(newCapacity(3, 0, "exact_capacity", 0, 1, 3), 1);
  // percent: a fraction below one rounds AWAY from zero
  assert.equal(newCapacity(1, 10, "percent_change_in_capacity", 0, 0, 10), 2); // 0.1 -> +1
  assert.equal(newCapacity(3, -10, "percent_change_in_capacity", 0, 0, 10), 2); // -0.3 -> -1
  // percent: one or more truncates TOWARD zero
  assert.equal(newCapacity(3, 50, "percent_change_in_capacity", 0, 0, 10), 4); // 1.5 -> +1
  assert.equal(newCapacity(5, -50, "percent_change_in_capacity", 0, 0, 10), 3); // -2.5 -> -2
  assert.equal(newCapacity(4, 100, "percent_change_in_capacity", 0, 0, 10), 8);
  // min_adjustment_step raises a smaller change to the step
  assert.equal(newCapacity(4, 25, "percent_change_in_capacity", 2, 0, 10), 6); // 1 -> 2
  assert.equal(newCapacity(4, -25, "percent_change_in_capacity", 2, 0, 10), 2); // -1 -> -2
  assert.equal(newCapacity(8, 50, "percent_change_in_capacity", 2, 0, 20), 12); // 4 >= 2: kept
  // Heat's quirk kept: a zero change with a step goes DOWN by the step
  assert.equal(newCapacity(0, 50, "percent_change_in_capacity", 2, 0, 10), 0); // 0 -> -2, clamped
  assert.equal(newCapacity(3, 0, "percent_change_in_capacity", 1, 0, 10), 2);
});

test("capacity math equals Heat's transcribed code over an exhaustive grid", () => {
  let cases = 0;
  for (const type of ["change_in_capacity", "exact_capacity", "percent_change_in_capacity"] as const)
    for (let current = 0; current <= 12; current++)
      for (let adj = -150; adj <= 150; adj += type === "percent_change_in_capacity" ? 1 : 7)
        for (const step of type === "percent_change_in_capacity" ? [0, 1, 2, 5] : [0])
          for (const [min, max] of [
            [0, 12],
            [1, 3],
            [2, 8],
          ]) {
            assert.equal(
              newCapacity(current, adj, type, step, min, max),
              heatOracle(current, adj, type, step, min, max),
              `${type} current=${current} adj=${adj} step=${step} [${min},${max}]`,
            );
            cases++;
          }
  assert.ok(cases > 10000);
});

test("the agent's sh capacity math equals the TypeScript one on every case of a grid", () => {
  const cases: [number, number, AdjustmentType, number, number, number][] = [];
  for (const type of ["change_in_capacity", "exact_capacity", "percent_change_in_capacity"] as const)
    for (let current = 0; current <= 10; current++)
      for (let adj = -120; adj <= 120; adj += type === "percent_change_in_capacity" ? 3 : 13)
        for (const step of type === "percent_change_in_capacity" ? [0, 2] : [0])
          for (const [min, max] of [
            [0, 10],
            [1, 3],
          ])
            cases.push([current, adj, type, step, min, max]);
  const input = cases.map((c) => c.join(" ")).join("\n");
  const out = sh(
    'while read -r c a t s lo hi; do asg_new_capacity "$c" "$a" "$t" "$s" "$lo" "$hi"; done',
    `${input}\n`,
  );
  assert.equal(out.length, cases.length);
  cases.forEach((c, i) => assert.equal(Number(out[i]), newCapacity(...c), `sh vs ts: ${c.join(" ")}`));
});

test("signals: refused during scaling, inside the cooldown, and without a change", () => {
  const p = { adjustmentType: "change_in_capacity" as const, scalingAdjustment: 1 };
  assert.deepEqual(decideSignal(100, { cooldownEnd: 0 }, true, 1, p, 1, 3), {
    outcome: "scaling in progress",
    next: 1,
  });
  assert.deepEqual(decideSignal(100, { cooldownEnd: 101 }, false, 1, p, 1, 3), {
    outcome: "in cooldown",
    next: 1,
  });
  assert.deepEqual(decideSignal(101, { cooldownEnd: 101 }, false, 1, p, 1, 3), { outcome: "", next: 2 });
  assert.deepEqual(decideSignal(200, { cooldownEnd: 0 }, false, 3, p, 1, 3), {
    outcome: "no change",
    next: 3,
  });
});

test("cooldown: set after a size change, keeps a later end, none after no change", () => {
  assert.equal(cooldownAfter(100, 30, 0, true), 130);
  assert.equal(cooldownAfter(100, 30, 500, true), 500);
  assert.equal(cooldownAfter(100, 30, 90, false), 90);
  assert.equal(cooldownAfter(100, 0, 0, true), 100);
});

function table(ms: MemberState[]): string {
  return ms.map((m) => `${m.name} ${m.state} ${m.startedAt} ${m.index}`).join("\n") + "\n";
}

test("scale-in order: failed first, then oldest, then name; scale-out takes the lowest free slots", () => {
  const ms: MemberState[] = [
    { name: "web-0", index: 0, state: "running", startedAt: 300 },
    { name: "web-1", index: 1, state: "running", startedAt: 100 },
    { name: "web-2", index: 2, state: "stopped", startedAt: 0 },
    { name: "web-3", index: 3, state: "failed", startedAt: 400 },
    { name: "web-4", index: 4, state: "running", startedAt: 100 },
    { name: "web-5", index: 5, state: "stopped", startedAt: 0 },
  ];
  assert.deepEqual(membersToStop(ms, 1), ["web-3"]);
  assert.deepEqual(membersToStop(ms, 3), ["web-3", "web-1", "web-4"]);
  assert.deepEqual(membersToStop(ms, 10), ["web-3", "web-1", "web-4", "web-0"]);
  assert.deepEqual(membersToStart(ms, 1), ["web-2"]);
  assert.deepEqual(membersToStart(ms, 5), ["web-2", "web-5"]);
  assert.equal(currentSize(ms), 3);
});

test("review 10c: a scale-in chooses only members whose host answered (the rest wait for it); `starting` slots count toward the decision size, not toward the in-service size", () => {
  const ms: MemberState[] = [
    { name: "web-0", index: 0, state: "running", startedAt: 100, hostAnswered: false },
    { name: "web-1", index: 1, state: "running", startedAt: 100, hostAnswered: false },
    { name: "web-2", index: 2, state: "running", startedAt: 300 },
    { name: "web-3", index: 3, state: "starting", startedAt: 0, hostAnswered: false },
    { name: "web-4", index: 4, state: "stopped", startedAt: 0 },
  ];
  assert.deepEqual(membersToStop(ms, 2), ["web-0", "web-1"], "Heat's order alone would take the silent ones");
  assert.deepEqual(
    scaleInChoice(ms, 2),
    { stop: ["web-2"], waiting: ["web-0", "web-1", "web-3"] },
    "the slot still starting on the silent host is counted, so it is named among those waiting",
  );
  assert.deepEqual(scaleInChoice(ms, 1), { stop: ["web-2"], waiting: [] });
  assert.deepEqual(scaleInChoice(ms.slice(0, 2), 1), { stop: [], waiting: ["web-0", "web-1"] });
  assert.equal(currentSize(ms), 3);
  assert.equal(decisionSize(ms), 4, "the slot still starting on a silent host is counted");
  assert.deepEqual(membersToStart(ms, 2), ["web-4"], "a starting slot is never started again");
});

test("the agent's sh member order equals the TypeScript one on random groups", () => {
  let seed = 7;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  const states = ["running", "stopped", "failed", "starting"] as const;
  for (let round = 0; round < 60; round++) {
    const size = 1 + rnd(8);
    const ms: MemberState[] = Array.from({ length: size }, (_, i) => {
      const state = states[rnd(4)];
      return {
        name: `g-${i}`,
        index: i,
        state,
        startedAt: state === "stopped" || state === "starting" ? 0 : 1000 + rnd(5),
      };
    });
    // Slot 10+ would sort by name "g-10" < "g-2"; indexes keep scale-out numeric.
    const k = rnd(size + 1);
    assert.deepEqual(sh(`asg_to_stop ${k}`, table(ms)), membersToStop(ms, k), `stop ${k} of ${table(ms)}`);
    assert.deepEqual(sh(`asg_to_start ${k}`, table(ms)), membersToStart(ms, k), `start ${k} of ${table(ms)}`);
  }
});

test("alarm comparisons in sh and TypeScript agree", () => {
  const rows: string[] = [];
  const want: boolean[] = [];
  for (const cmp of ["gt", "ge", "lt", "le"] as const)
    for (const v of [0, 49, 50, 51, 100])
      for (const t of [0, 50, 100]) {
        rows.push(`${cmp} ${v} ${t}`);
        want.push(alarmHolds(cmp, v, t));
      }
  const out = sh(
    'while read -r c v t; do if asg_alarm_holds "$c" "$v" "$t"; then echo yes; else echo no; fi; done',
    `${rows.join("\n")}\n`,
  );
  assert.deepEqual(
    out,
    want.map((w) => (w ? "yes" : "no")),
  );
});

test("average CPU is percent of one vCPU per member, integer", () => {
  // 1 s of CPU in 2 s of wall time = 50 %; 2 s in 2 s = 100 %
  assert.equal(
    averageCpuPercent([
      { t0Ms: 0, cpu0Ns: 0, t1Ms: 2000, cpu1Ns: 1e9 },
      { t0Ms: 0, cpu0Ns: 5e9, t1Ms: 2000, cpu1Ns: 7e9 },
    ]),
    75,
  );
  assert.equal(averageCpuPercent([{ t0Ms: 0, cpu0Ns: 0, t1Ms: 3000, cpu1Ns: 1e9 }]), 33);
  assert.equal(averageCpuPercent([]), null);
  assert.equal(averageCpuPercent([{ t0Ms: 5, cpu0Ns: 0, t1Ms: 5, cpu1Ns: 1 }]), null);
});

test("group specs: every refusal names its field", () => {
  const ok = { name: "web", min: 1, max: 3, desired: 1, cooldown: 60, policies: [] };
  assert.doesNotThrow(() => checkGroupSpec(ok));
  assertFieldError(() => checkGroupSpec({ ...ok, name: "Web" }), "groupName");
  assertFieldError(() => checkGroupSpec({ ...ok, max: 0 }), "max");
  assertFieldError(() => checkGroupSpec({ ...ok, max: 33 }), "max");
  assertFieldError(() => checkGroupSpec({ ...ok, min: 4 }), "min");
  assertFieldError(() => checkGroupSpec({ ...ok, desired: 4 }), "desired");
  assertFieldError(() => checkGroupSpec({ ...ok, cooldown: -1 }), "cooldown");
  const pol = { name: "up", adjustmentType: "change_in_capacity" as const, scalingAdjustment: 1 };
  assertFieldError(() => checkGroupSpec({ ...ok, policies: [pol, pol] }), "policies[1].name");
  assertFieldError(
    () => checkGroupSpec({ ...ok, policies: [{ ...pol, minAdjustmentStep: 1 }] }),
    "policies[0].minAdjustmentStep",
  );
  assertFieldError(
    () => checkGroupSpec({ ...ok, policies: [{ ...pol, adjustmentType: "bogus" as never }] }),
    "policies[0].adjustmentType",
  );
  assertFieldError(
    () =>
      checkGroupSpec({
        ...ok,
        policies: [{ ...pol, alarm: { comparison: "gt", threshold: 50, periodSec: 1 } }],
      }),
    "policies[0].alarm.periodSec",
  );
  assertFieldError(
    () =>
      checkGroupSpec({
        ...ok,
        policies: [{ ...pol, alarm: { comparison: "eq" as never, threshold: 50, periodSec: 20 } }],
      }),
    "policies[0].alarm.comparison",
  );
});
