/**
 * bench:three-tier's account of the critical path (test/bench/threeTier.ts), from made-up
 * timings: the chain that gated an agent follows, at each step, the dependency that finished
 * last; the stage table and the "what stands between" line are computed from the run.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { criticalPath, criticalPathStages, gatingChain, type Timed } from "../../bench/threeTier";

const dyn = (t: string) => `pulumi-nodejs:dynamic/kvmlab:${t}`;
const res = (
  name: string,
  type: string,
  registered: number,
  done: number,
  dependencies: string[] = [],
): Timed => ({
  urn: name,
  type: dyn(type),
  name,
  registered,
  done,
  dependencies,
});

const run: Timed[] = [
  {
    urn: "stack",
    type: "pulumi:pulumi:Stack",
    name: "stack",
    registered: 1000,
    done: 1000,
    dependencies: [],
  },
  res("img", "Image", 5000, 11000),
  res("net", "Network", 5200, 8000),
  res("sub", "Subnet", 8100, 10000, ["net"]),
  res("web-0-roll-out", "AutoscaleRoll", 11100, 11500, ["img", "sub"]),
  res("web-0", "Server", 11600, 14000, ["web-0-roll-out", "sub", "img"]),
  res("lb", "LoadBalancer", 10100, 13000, ["sub"]),
  res("web-agent", "AutoscaleAgent", 14100, 16000, ["lb", "web-0", "sub"]),
];
const log = [
  "group=web ts=1018000 action=start",
  "group=web ts=1018500 action=start",
  "group=web ts=1027000 action=in-service",
  "group=web ts=1028000 action=in-service",
].join("\n");

test("the gating chain follows the dependency that finished last, back to one that waited for nothing", () => {
  const chain = gatingChain(new Map(run.map((t) => [t.urn, t])), "web-agent");
  assert.deepEqual(
    chain.map((t) => t.name),
    ["img", "web-0-roll-out", "web-0", "web-agent"],
  );
  // A dependency the run never finished (no step) does not gate.
  const unfinished = run.map((t) => (t.name === "web-0" ? { ...t, done: undefined } : t));
  assert.deepEqual(
    gatingChain(new Map(unfinished.map((t) => [t.urn, t])), "web-agent").map((t) => t.name),
    ["net", "sub", "lb", "web-agent"],
  );
});

test("the stages say when each became possible and finished; the last line splits the time around the boot", () => {
  const out = criticalPathStages(run, log, 1_000_000, 30_000);
  assert.match(out, /\| image \| 1 \| 5\.0 s \| 11\.0 s \|/);
  assert.match(out, /\| subnets \| 1 \| 8\.1 s \| 10\.0 s \|/);
  assert.match(out, /\| slot chain: slot Servers \| 1 \| 11\.6 s \| 14\.0 s \|/);
  assert.match(
    out,
    /\| program start \(Stack registered, then the first kvmlab resource\) \| — \| 1\.0 s \| 5\.0 s \|/,
  );
  assert.match(out, /\| members: started → in service \(agents' log\) \| 2 \| 18\.0 s \| 28\.0 s \|/);
  assert.match(
    out,
    /AutoscaleAgent web-agent 14\.1 s → 16\.0 s ← Server web-0 11\.6 s → 14\.0 s ← AutoscaleRoll web-0-roll-out/,
  );
  assert.match(out, /before the first slot: 11\.6 s/);
  assert.match(
    out,
    /before the first boot: 18\.0 s; boot \(first member started → last in service\): 10\.0 s; after \(last in service → every member served\): 2\.0 s/,
  );
});

test("a failed start (`action=start ... result=failed`) is not counted as a member started", () => {
  const failedFirst = [
    "group=web ts=1015000 action=start member=web-1 result=failed reason=start-command-failed",
    log,
  ].join("\n");
  const out = criticalPathStages(run, failedFirst, 1_000_000, 30_000);
  assert.match(out, /\| members: started → in service \(agents' log\) \| 2 \| 18\.0 s \| 28\.0 s \|/);
  assert.match(
    out,
    /before the first boot: 18\.0 s; boot \(first member started → last in service\): 10\.0 s/,
  );
});

test("the members-started column of the wait table counts neither a failed start nor the create's start with no known outcome", () => {
  const withNonStarts = [
    "group=web ts=1015000 event=action action=start member=web-1 host=hv2 result=unknown reason=host-call-failed state=starting cause=create",
    "group=web ts=1016000 event=action action=start member=web-1 result=failed reason=start-command-failed",
    log,
  ].join("\n");
  const done = run.map((t) => ({ type: t.type, name: t.name, ms: (t.done ?? 0) - 1000 }));
  const row = (agentLog: string): string | undefined =>
    criticalPath(done, agentLog, 1_000_000, 30_000, 32_000)
      .split("\n")
      .find((r) => r.startsWith("| web |"));
  assert.ok(row(log), "the web group's row");
  assert.match(row(log) ?? "", /\| 18\.0 s, 18\.5 s \(/, "the two starts of the log");
  assert.equal(row(withNonStarts), row(log), "the same row as without the two non-starts");
});
