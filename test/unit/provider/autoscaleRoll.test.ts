/**
 * The rolling replacement's AutoscaleRoll resource (provider/autoscale/roll.ts) and its pure
 * parts (core/autoscale.ts launchHash, rollOrder): the hash changes exactly with the slot's
 * launch configuration; slots roll highest first; the diff rolls only on a new hash (a no-change
 * up and a hosts-only change run nothing); create and read open no SSH connection; update finds
 * the controller by this stack's owner marker and runs roll-out/roll-in there after the owner
 * check; delete clears a leftover mark; the provider survives closure serialization.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  autoscaleRollProvider,
  checkAutoscaleRollInputs,
  clearRollStep,
  diffAutoscaleRoll,
  findControllerStep,
  groupOwnedStep,
  pickController,
  rollCommandStep,
  rollRuns,
  UNKNOWN,
  type AutoscaleRollInputs,
  type AutoscaleRollOutputs,
  type HostConnection,
  type Step,
} from "../../../provider";
import { launchHash, rollOrder } from "../../../core/autoscale";
import { assertSerializable } from "../../harness/serialization";
import { testHost } from "./fixtures";

const HOSTS: HostConnection[] = [testHost("hv1", 1), testHost("hv2", 2)];
const OWNER = "proj/dev/AutoscaleRoll/web-0-roll-out";
const H1 = launchHash({ cmdline: "console=ttyS0 lab.name=web-0", img: { name: "cirros" } });

function raw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    groupName: "web",
    member: "web-0",
    phase: "out",
    launchHash: H1,
    hosts: HOSTS,
    timeoutSec: 1210,
    owner: OWNER,
    ...over,
  };
}
function outs(over: Record<string, unknown> = {}): AutoscaleRollOutputs {
  const { inputs, failures } = checkAutoscaleRollInputs(raw(over));
  assert.deepEqual(failures, []);
  return { ...(inputs as unknown as AutoscaleRollInputs), rolledOn: "", rolled: "", rollId: "" };
}

test("launchHash is the same for the same launch configuration in any key order and changes with any of it", () => {
  const a = launchHash({ img: { name: "x", disk: "/d" }, cmdline: "c", ports: [{ network: "lan" }] });
  const b = launchHash({ cmdline: "c", ports: [{ network: "lan" }], img: { disk: "/d", name: "x" } });
  assert.equal(a, b);
  assert.match(a, /^[0-9a-f]{64}$/);
  assert.notEqual(
    a,
    launchHash({ img: { name: "x", disk: "/d" }, cmdline: "c2", ports: [{ network: "lan" }] }),
  );
  assert.notEqual(
    a,
    launchHash({ img: { name: "x", disk: "/d" }, cmdline: "c", ports: [{ network: "lan2" }] }),
  );
  assert.notEqual(a, launchHash({ img: { name: "x", disk: "/d" }, cmdline: "c", ports: [] }));
});

test("slots roll highest first (the likeliest spares before the members in service)", () => {
  assert.deepEqual(rollOrder(3), [2, 1, 0]);
  assert.deepEqual(rollOrder(1), [0]);
});

test("AutoscaleRoll check names the field and the fix", () => {
  assert.deepEqual(checkAutoscaleRollInputs(raw()).failures, []);
  const bad = (over: Record<string, unknown>, field: string): void => {
    const f = checkAutoscaleRollInputs(raw(over)).failures;
    assert.ok(
      f.some((x) => x.property === field),
      `${JSON.stringify(over)}: a failure on ${field} (${JSON.stringify(f)})`,
    );
  };
  bad({ member: "db-0" }, "member");
  bad({ member: "web-x" }, "member");
  bad({ phase: "sideways" }, "phase");
  bad({ launchHash: "abc" }, "launchHash");
  bad({ timeoutSec: 5 }, "timeoutSec");
  bad({ groupName: "Web" }, "groupName");
});

test("AutoscaleRoll diff: a new launch hash is an update (never a replace); the same hash is no change", () => {
  const olds = outs();
  const same = diffAutoscaleRoll(olds, checkAutoscaleRollInputs(raw()).inputs as never);
  assert.equal(same.changes, false, "a no-change up runs nothing");
  const H2 = launchHash({ cmdline: "console=ttyS0 lab.name=web-0 lab.rev=r2", img: { name: "cirros" } });
  const d = diffAutoscaleRoll(olds, checkAutoscaleRollInputs(raw({ launchHash: H2 })).inputs as never);
  assert.equal(d.changes, true);
  assert.deepEqual(d.replaces, []);
  for (const k of ["member", "phase"]) {
    const r = diffAutoscaleRoll(
      olds,
      checkAutoscaleRollInputs(raw({ [k]: k === "phase" ? "in" : "web-1" })).inputs as never,
    );
    assert.deepEqual(r.replaces, [k]);
  }
});

test("pickController: this stack's agent, none, or a refusal when two hosts hold it", () => {
  assert.deepEqual(
    pickController("web", [
      { host: "hv1", answer: "none" },
      { host: "hv2", answer: "mine" },
    ]),
    { host: "hv2", note: "" },
  );
  const other = pickController("web", [{ host: "hv1", answer: "other alien/prod/AutoscaleAgent/web-agent" }]);
  assert.equal(other.host, undefined);
  assert.match(other.note, /alien\/prod/);
  assert.throws(
    () =>
      pickController("web", [
        { host: "hv1", answer: "mine" },
        { host: "hv2", answer: "mine" },
      ]),
    /hv1 and hv2 both hold/,
  );
});

test("roll step texts: the owner check compares the marker with this stack, the command is quoted", () => {
  const g = groupOwnedStep("web", OWNER);
  assert.match(g.script, /owners\/asg\/web\.owner/);
  assert.match(g.script, /case "\$cur" in '?proj\/dev'?\/\*\) exit 0/);
  assert.match(g.script, /exit 73/);
  assert.throws(() => groupOwnedStep("web", "kvmlab-direct/-/AutoscaleRoll/x"), /raw provider call/);
  const cmd = rollCommandStep("web", "web-2", "out", 1210).script;
  assert.match(
    cmd,
    /^timeout -k 10 1180 \/bin\/sh \/var\/lib\/kvmlab\/asg\/web\/roll\.sh \/var\/lib\/kvmlab\/asg\/web roll-out web-2$/m,
  );
  assert.throws(() => rollCommandStep("web", "web-2;id", "in", 1210), /invalid/);
  assert.match(findControllerStep("web", OWNER).script, /agent\.conf/);
  assert.match(clearRollStep("web", "web-1").script, /flock -w 60 7/);
});

test("roll.sh runs under timeout(1) that ends (KILL included) before the client's bound of the step, and says so", () => {
  const { spawnSync } = require("node:child_process") as typeof import("node:child_process");
  for (const sec of [60, 1210, 7200]) {
    const m = /^timeout -k (\d+) (\d+) /m.exec(rollCommandStep("web", "web-0", "in", sec).script);
    assert.ok(m, "the roll command runs under timeout(1)");
    assert.ok(Number(m[1]) + Number(m[2]) < sec, `${sec}: TERM + KILL grace end before the client gives up`);
  }
  assert.throws(() => rollCommandStep("web", "web-0", "in", 40), /no time on the host/);
  // The wrapper's own shell: timeout's 124 is passed on with the message naming the fix.
  const script = rollCommandStep("web", "web-0", "out", 1210).script.replace(/^timeout [^\n]*/, "(exit 124)");
  const r = spawnSync("/bin/sh", ["-c", script], { encoding: "utf8" });
  assert.equal(r.status, 124);
  assert.match(r.stderr, /roll-out of web-0 did not finish within 1180 s/);
  assert.match(r.stderr, /Fix: /);
});

test("review R1: roll-in runs after every roll-out that ran, even when the launch hash went back (a reverted change after a failed Server update)", async () => {
  const H0 = H1;
  const HX = launchHash({ cmdline: "console=ttyS0 lab.name=web-0 lab.rev=bad", img: { name: "missing" } });
  const fake = fakeRun((host, s) =>
    /look for/.test(s.label ?? "") ? (host === "hv1" ? "mine" : "none") : "ok",
  );
  try {
    const outIn = checkAutoscaleRollInputs(raw()).inputs as unknown as AutoscaleRollInputs;
    const out0 = (await autoscaleRollProvider.create!(outIn)).outs as AutoscaleRollOutputs;
    assert.equal(out0.rollId, "");
    const inIn = checkAutoscaleRollInputs(raw({ phase: "in", afterRoll: out0.rollId })).inputs as never;
    const in0 = (await autoscaleRollProvider.create!(inIn)).outs as AutoscaleRollOutputs;
    // up 1: the launch changes to HX; roll-out runs (fresh id), then the Server update fails:
    // roll-in never runs, its state keeps H0 and the old afterRoll.
    const out1 = (await autoscaleRollProvider.update!("web-0/out", out0, { ...outIn, launchHash: HX }))
      .outs as AutoscaleRollOutputs;
    assert.match(out1.rollId, /^[0-9a-f]{32}$/);
    // up 2: the launch is reverted to H0. roll-out runs again (already out) with another fresh id.
    fake.calls.length = 0;
    const out2 = (await autoscaleRollProvider.update!("web-0/out", out1, { ...outIn, launchHash: H0 }))
      .outs as AutoscaleRollOutputs;
    assert.match(out2.rollId, /^[0-9a-f]{32}$/);
    assert.notEqual(out2.rollId, out1.rollId, "every roll-out run has its own id");
    // roll-in's hash is the same as its state's, its afterRoll is new: it updates and rolls in.
    const inNews = checkAutoscaleRollInputs(raw({ phase: "in", launchHash: H0, afterRoll: out2.rollId }))
      .inputs as unknown as AutoscaleRollInputs;
    assert.equal(diffAutoscaleRoll(in0, inNews).changes, true, "roll-in shows as an update");
    assert.equal(rollRuns(in0, inNews), true);
    fake.calls.length = 0;
    await autoscaleRollProvider.update!("web-0/in", in0, inNews);
    assert.deepEqual(fake.calls.slice(-1), ["hv1: roll-in web-0 of group web"], "the slot comes back");
    // Preview: roll-out's new id is unknown, so roll-in shows an update; check accepts it.
    const prev = checkAutoscaleRollInputs(raw({ phase: "in", afterRoll: UNKNOWN }));
    assert.deepEqual(prev.failures, []);
    assert.equal(diffAutoscaleRoll(in0, prev.inputs as never).changes, true);
    // A no-change up: roll-out has no diff (its rollId stays), so roll-in has none either.
    const inDone = { ...in0, afterRoll: out2.rollId };
    assert.equal(diffAutoscaleRoll(out2, outIn).changes, false);
    assert.equal(diffAutoscaleRoll(inDone, inNews).changes, false);
    // A hosts-only update of roll-out keeps its id and runs nothing.
    fake.calls.length = 0;
    const out3 = (await autoscaleRollProvider.update!("web-0/out", out2, { ...outIn, timeoutSec: 900 }))
      .outs as AutoscaleRollOutputs;
    assert.equal(out3.rollId, out2.rollId);
    assert.deepEqual(fake.calls, []);
    // A state from before afterRoll existed (no field) is the same as "": no spurious update.
    const legacy = { ...in0 } as Partial<AutoscaleRollOutputs>;
    delete legacy.afterRoll;
    assert.equal(diffAutoscaleRoll(legacy as AutoscaleRollOutputs, inIn).changes, false);
    assert.equal(rollRuns(legacy as AutoscaleRollOutputs, inIn), false);
    // afterRoll is validated (it is never run, but the state stays honest).
    assert.ok(
      checkAutoscaleRollInputs(raw({ afterRoll: "x;id" })).failures.some((f) => f.property === "afterRoll"),
    );
  } finally {
    fake.restore();
  }
});

/** Replaces the host layer's runChecked for one test; records every call. */
function fakeRun(answer: (host: string, s: Step) => string): { calls: string[]; restore: () => void } {
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const saved = session.runChecked;
  const calls: string[] = [];
  session.runChecked = async (h: HostConnection, steps: readonly Step[]) =>
    steps.map((s) => {
      calls.push(`${h.name}: ${s.label ?? ""}`);
      return answer(h.name, s);
    });
  return { calls, restore: () => void (session.runChecked = saved) };
}

test("AutoscaleRoll create and read open no connection; update rolls on the controller only when the hash changed; delete clears the mark", async () => {
  const fake = fakeRun((host, s) =>
    /look for/.test(s.label ?? "") ? (host === "hv2" ? "mine" : "none") : "ok",
  );
  try {
    const inputs = checkAutoscaleRollInputs(raw()).inputs as unknown as AutoscaleRollInputs;
    const created = await autoscaleRollProvider.create!(inputs);
    await autoscaleRollProvider.read!(created.id, created.outs);
    assert.deepEqual(fake.calls, [], "create and read run nothing on any host");
    // hosts-only change: an update that runs nothing
    await autoscaleRollProvider.update!(created.id, created.outs!, { ...inputs, timeoutSec: 600 });
    assert.deepEqual(fake.calls, []);
    const H2 = launchHash({ cmdline: "new" });
    const rolled = await autoscaleRollProvider.update!(created.id, created.outs!, {
      ...inputs,
      launchHash: H2,
    });
    assert.deepEqual(fake.calls, [
      "hv1: look for group web's agent",
      "hv2: look for group web's agent",
      "hv2: check that autoscale group web is this stack's",
      "hv2: upload /var/lib/kvmlab/asg/web/roll.sh",
      "hv2: roll-out web-0 of group web",
    ]);
    assert.equal((rolled.outs as AutoscaleRollOutputs).rolledOn, "hv2");
    fake.calls.length = 0;
    await autoscaleRollProvider.delete!(created.id, created.outs!);
    assert.deepEqual(fake.calls, [], "a roll-out step's delete runs nothing");
    await autoscaleRollProvider.delete!(created.id, { ...created.outs, phase: "in" } as never);
    assert.deepEqual(fake.calls.slice(-2), [
      "hv2: check that autoscale group web is this stack's",
      "hv2: clear the rolling mark of web-0",
    ]);
  } finally {
    fake.restore();
  }
});

test("AutoscaleRoll update with no agent of this stack anywhere rolls nothing and says why", async () => {
  const fake = fakeRun(() => "none");
  try {
    const inputs = checkAutoscaleRollInputs(raw()).inputs as unknown as AutoscaleRollInputs;
    const r = await autoscaleRollProvider.update!("web-0/out", outs(), {
      ...inputs,
      launchHash: launchHash("x"),
    });
    assert.match((r.outs as AutoscaleRollOutputs).rolled, /nothing to roll: no agent on any host/);
    assert.equal(fake.calls.filter((c) => /roll-out/.test(c)).length, 0);
  } finally {
    fake.restore();
  }
});

test("the AutoscaleRoll provider survives closure serialization", async () => {
  await assertSerializable(autoscaleRollProvider, {
    methods: ["check", "diff", "create", "read", "update", "delete"],
    forbid: [/handlebars/],
  });
});

test("revoking the agent key: the file sshd reads and the recorded one; neither known is a clear refusal, never a guess", () => {
  const { revocationFiles } = require("../../../provider") as typeof import("../../../provider");
  assert.deepEqual(revocationFiles("hv1", "root", "web", "/etc/ssh/lab_authorized_keys", undefined), [
    "/etc/ssh/lab_authorized_keys",
  ]);
  assert.deepEqual(
    revocationFiles("hv1", "root", "web", "/etc/ssh/lab_authorized_keys", "/root/.ssh/authorized_keys"),
    ["/etc/ssh/lab_authorized_keys", "/root/.ssh/authorized_keys"],
    "sshd's file changed since setup: the line is removed from both",
  );
  assert.deepEqual(revocationFiles("hv1", "root", "web", "", "/etc/ssh/lab_authorized_keys"), [
    "/etc/ssh/lab_authorized_keys",
  ]);
  assert.throws(
    () => revocationFiles("hv2", "root", "web", "", undefined),
    (e: Error) =>
      /hv2/.test(e.message) &&
      /sshd -T/.test(e.message) &&
      /kvmlab-asg:web/.test(e.message) &&
      /Fix: /.test(e.message) &&
      !/\/root\/\.ssh\/authorized_keys/.test(e.message),
  );
});
