/**
 * AutoscaleAgent provider (pure parts): check refusals name their field, the diff keeps Pulumi's
 * semantics (a no-change up is no change, only the PROGRAM's desired size is compared, a dead
 * agent found by refresh is a change), the step texts (quoting, the forced-command line), the
 * agent.conf renderer refuses what could break out of its quotes, and the provider survives
 * closure serialization.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  AUTOSCALE_SCRIPTS_SHA256,
  autoscaleAgentProvider,
  authorizeAgentStep,
  checkAutoscaleAgentInputs,
  desiredRequestStep,
  diffAutoscaleAgent,
  knownHostsContent,
  parseAgentState,
  signalStep,
  startAgentStep,
  type AutoscaleAgentInputs,
  type AutoscaleAgentOutputs,
  type HostConnection,
} from "../../../provider";
import { forcedCommandLine } from "../../../core/autoscale";
import { UNKNOWN } from "../../../provider/host/quote";
import { loadBalancerPaths } from "../../../core/paths";
import {
  agentScript,
  memberNames,
  memberScript,
  membersByHost,
  renderAgentConfig,
} from "../../../templates/autoscale";
import { assertSerializable } from "../../harness/serialization";
import { assertFieldError } from "../templates/support";
import { testHost } from "./fixtures";

const HOSTS: HostConnection[] = [testHost("hv1", 1), testHost("hv2", 2)];
const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv6k0Zq2Yy0w5VQ0m2Zs0vZ0w5VQ0m2Zs0vZ0w5VQ0m kvmlab-asg:web";

function conf(over: Record<string, unknown> = {}): string {
  return renderAgentConfig({
    name: "web",
    min: 1,
    max: 3,
    desired: 1,
    cooldown: 30,
    policies: [
      {
        name: "scale_out",
        adjustmentType: "change_in_capacity",
        scalingAdjustment: 1,
        alarm: { comparison: "gt", threshold: 50, periodSec: 20 },
      },
      {
        name: "scale_in",
        adjustmentType: "change_in_capacity",
        scalingAdjustment: -1,
        cooldown: 60,
        alarm: { comparison: "lt", threshold: 15, periodSec: 20 },
      },
    ],
    members: memberNames("web", 3).map((name, i) => ({
      name,
      ip: `10.61.0.${10 + i}`,
      host: i % 2 === 0 ? "hv1" : "hv2",
      hostAddress: `10.255.0.1${(i % 2) + 1}`,
      hostPort: 22,
      hostUser: "root",
    })),
    pool: {
      socket: "/var/lib/kvmlab/lb/web-lb/haproxy.sock",
      backend: "web:http",
      namespace: loadBalancerPaths("web-lb").namespace,
      healthPort: 80,
      healthPath: "/health",
    },
    ...over,
  } as never);
}

function raw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    groupName: "web",
    hosts: HOSTS,
    controllerHost: "hv1",
    agentConfig: conf(),
    membersByHost: { hv1: ["web-0", "web-2"], hv2: ["web-1"] },
    desired: 1,
    min: 1,
    max: 3,
    ...over,
  };
}

function outputs(inputs: Record<string, unknown>, running = true): AutoscaleAgentOutputs {
  return {
    ...(inputs as unknown as AutoscaleAgentInputs),
    agentPublicKey: KEY,
    desiredGeneration: 1,
    agentPid: 42,
    currentSize: 3,
    members: ["web-0", "web-1", "web-2"],
    hostKeys: {},
    scriptsSha256: AUTOSCALE_SCRIPTS_SHA256,
    realized: { agentRunning: running, currentSize: 3, members: [], slots: {}, cooldownEnd: 0 },
  };
}

test("agent.conf: every value is plain; the policies, members and pool are all there", () => {
  const c = conf();
  assert.match(c, /^GROUP='web'$/m);
  assert.match(c, /^POLICY_1_COOLDOWN=60$/m, "a policy's own cooldown");
  assert.match(c, /^POLICY_0_COOLDOWN=30$/m, "the group's cooldown for a policy without one");
  assert.match(c, /^MEMBER_2_HOST='hv1'$/m);
  assert.match(c, /^MEMBER_HOST_INDEXES='0 1'$/m, "one member per host to ask for stats");
  assert.match(c, /^LB_BACKEND='web:http'$/m);
  assert.match(c, /^KEEP=7$/m);
  // Sourcing it in sh gives back exactly these values.
  const { spawnSync } = require("node:child_process") as typeof import("node:child_process");
  const r = spawnSync(
    "sh",
    ["-c", 'eval "$(cat)"; echo "$GROUP $MAX $MEMBER_1_IP $HEALTH_PATH $POLICY_0_CMP"'],
    { input: c, encoding: "utf8" },
  );
  assert.equal(r.stdout.trim(), "web 3 10.61.0.11 /health gt");
});

test("agent.conf refuses values that could break out of their quotes, naming the field", () => {
  const members = (over: Record<string, unknown>) =>
    memberNames("web", 3).map((name, i) => ({
      name,
      ip: `10.61.0.${10 + i}`,
      host: "hv1",
      hostAddress: "10.0.0.1",
      hostPort: 22,
      hostUser: "root",
      ...over,
    }));
  assertFieldError(() => conf({ members: members({ host: "hv1'; rm -rf /; '" }) }), "members[0].host");
  assertFieldError(() => conf({ members: members({ ip: "10.0.0.1 x" }) }), "members[0].ip");
  assertFieldError(() => conf({ members: members({ hostUser: "root;id" }) }), "members[0].hostUser");
  assertFieldError(() => conf({ members: members({}).slice(0, 2) }), "members");
  assertFieldError(
    () =>
      conf({
        pool: { socket: "/x'y", backend: "web:http", namespace: "n", healthPort: 80, healthPath: "/" },
      }),
    "pool.socket",
  );
  assertFieldError(
    () =>
      conf({
        pool: { socket: "/x", backend: "web:http", namespace: "n", healthPort: 80, healthPath: "/$(id)" },
      }),
    "pool.healthPath",
  );
  assertFieldError(() => conf({ interval: 0 }), "interval");
});

test("check: defaults pass; every refusal names its field", async () => {
  assert.deepEqual(checkAutoscaleAgentInputs(raw()).failures, []);
  assert.deepEqual(checkAutoscaleAgentInputs(raw({ agentConfig: conf({ controller: "hv1" }) })).failures, []);
  const bad: [Record<string, unknown>, string][] = [
    [{ groupName: "Web" }, "groupName"],
    [{ controllerHost: "hv9" }, "controllerHost"],
    [{ desired: 4 }, "desired"],
    [{ min: 4 }, "min"],
    [{ membersByHost: { hv9: ["web-0"] } }, "membersByHost"],
    [{ membersByHost: { hv1: ["web 0"] } }, "membersByHost"],
    // Only this group's slots, below max, each once (a raw resource must not reach other domains).
    [{ membersByHost: { hv1: ["other-vm"] } }, "membersByHost"],
    [{ membersByHost: { hv1: ["web-3"] } }, "membersByHost"],
    [{ membersByHost: { hv1: ["web-0"], hv2: ["web-0"] } }, "membersByHost"],
    [{ membersByHost: { hv1: ["web-01"] } }, "membersByHost"],
    // agent.conf is sourced as root: re-parsed against the allow-list and the inputs.
    [{ agentConfig: `${conf()}id\n` }, "agentConfig"],
    [{ agentConfig: `${conf()}PATH='/tmp'\n` }, "agentConfig"],
    // CONTROLLER (review 9b G5): a host name, and the resource's controllerHost.
    [{ agentConfig: conf({ controller: "hv2" }) }, "agentConfig"],
    [{ agentConfig: `${conf()}CONTROLLER='hv1;id'\n` }, "agentConfig"],
    [{ agentConfig: conf().replace(/LB_NS='[^']*'/, "LB_NS='$(id)'") }, "agentConfig"],
    // Values that pass the quoting but not their key's rule (the renderer's rules).
    [{ agentConfig: conf().replace("MEMBER_0_USER='root'", "MEMBER_0_USER='-F/tmp/x'") }, "agentConfig"],
    [{ agentConfig: conf().replace("MEMBER_0_IP='10.61.0.10'", "MEMBER_0_IP='10.61.0'") }, "agentConfig"],
    [{ agentConfig: conf().replace("INTERVAL=5", "INTERVAL=0") }, "agentConfig"],
    [{ agentConfig: conf().replace("HEALTH_PATH='/health'", "HEALTH_PATH='health'") }, "agentConfig"],
    [{ agentConfig: conf().replace("POLICY_0_CMP='gt'", "POLICY_0_CMP='xx'") }, "agentConfig"],
    [
      { agentConfig: conf().replace("MEMBER_1_ADDR='10.255.0.12'", "MEMBER_1_ADDR='10.9.9.9'") },
      "agentConfig",
    ],
    [{ agentConfig: conf().replace("NPOLICIES=2", "NPOLICIES=1") }, "agentConfig"],
    [{ agentConfig: conf().replace(/LB_NS='[^']*'/, "LB_NS='qlbaas-1234'") }, "agentConfig"],
    [{ agentConfig: conf().replace("MEMBER_1_NAME='web-1'", "MEMBER_1_NAME='db-0'") }, "agentConfig"],
    [{ agentConfig: `${conf()}MIN=1\n` }, "agentConfig"],
    [{ max: 2, membersByHost: { hv1: ["web-0"], hv2: ["web-1"] } }, "agentConfig"],
    [{ agentConfig: conf().replace(/LB_SOCKET='[^']*'/, "LB_SOCKET='/run/other.sock'") }, "agentConfig"],
  ];
  for (const [over, field] of bad) {
    const f = checkAutoscaleAgentInputs(raw(over)).failures;
    assert.ok(
      f.some((x) => x.property === field),
      `${JSON.stringify(over)} refused on ${field}: ${JSON.stringify(f)}`,
    );
  }
});

test("diff: no change is no change; desired compares the program's values only; a dead agent is a change", () => {
  const i = checkAutoscaleAgentInputs(raw()).inputs;
  const olds = outputs(i);
  // The agent scaled to 3 by itself: the program still says 1 and so did the last up.
  assert.equal(diffAutoscaleAgent(olds, i as never).changes, false);
  const more = checkAutoscaleAgentInputs(raw({ desired: 2 })).inputs;
  const d = diffAutoscaleAgent(olds, more as never);
  assert.equal(d.changes, true);
  assert.deepEqual(d.replaces, []);
  assert.equal(
    diffAutoscaleAgent(outputs(i, false), i as never).changes,
    true,
    "refresh found the agent dead",
  );
  const moved = checkAutoscaleAgentInputs(raw({ controllerHost: "hv2" })).inputs;
  assert.deepEqual(diffAutoscaleAgent(olds, moved as never).replaces, ["controllerHost"]);
  const conf2 = checkAutoscaleAgentInputs(raw({ agentConfig: conf({ cooldown: 99 }) })).inputs;
  assert.equal(diffAutoscaleAgent(olds, conf2 as never).changes, true);
  // The scripts are the provider's own; a state written with other scripts is an update.
  assert.equal(olds.scriptsSha256, AUTOSCALE_SCRIPTS_SHA256);
  assert.equal(diffAutoscaleAgent({ ...olds, scriptsSha256: "0".repeat(64) }, i as never).changes, true);
  assert.equal(Object.keys(i).includes("agentScript"), false, "no script is an input");
});

test("steps: the forced-command line, desired requests, signals and the agent start are quoted and bounded", () => {
  const line = forcedCommandLine("web", KEY, "10.255.0.11");
  assert.equal(
    line,
    `from="10.255.0.11",restrict,command="/bin/sh /var/lib/kvmlab/asg/web/member.sh" ssh-ed25519 ${KEY.split(" ")[1]} kvmlab-asg:web`,
  );
  assert.throws(() => forcedCommandLine("web", "ssh-rsa AAAA", "10.0.0.1"), /unexpected agent key line/);
  assert.throws(
    () => forcedCommandLine("web", 'ssh-ed25519 AAAA" x', "10.0.0.1"),
    /unexpected agent key line/,
  );
  assert.throws(() => forcedCommandLine("web", KEY, '10.0.0.1",command="id'), /invalid controller address/);
  const auth = authorizeAgentStep("/root/.ssh/authorized_keys", "web", KEY, "10.255.0.11").script;
  assert.match(auth, /\$NF != tag/, "an older line of the group is replaced");
  assert.match(desiredRequestStep("web", 2, 3).script, /echo 2 3 > /);
  assert.throws(() => desiredRequestStep("web", 0, 3));
  assert.throws(() => signalStep("web", "up; id"), /invalid policy name/);
  const start = startAgentStep("web", true).script;
  assert.match(start, /setsid \/bin\/sh "\$d\/agent.sh" "\$d" <\/dev\/null/);
  assert.match(start, /systemd-run --quiet --unit=kvmlab-asg-web --property=Restart=always/);
  assert.throws(() => startAgentStep("Web; id", false), /invalid group name/);
  assert.equal(
    knownHostsContent([
      { address: "10.0.0.1", port: 22, keys: ["ssh-ed25519 AAAA", "bad key line!"] },
      { address: "10.0.0.2", port: 2222, keys: ["ssh-ed25519 BBBB"] },
    ]),
    "10.0.0.1 ssh-ed25519 AAAA\n[10.0.0.2]:2222 ssh-ed25519 BBBB\n",
  );
  assert.deepEqual(
    membersByHost([
      { name: "web-0", host: "hv1" },
      { name: "web-1", host: "hv2" },
      { name: "web-2", host: "hv1" },
    ]),
    {
      hv1: ["web-0", "web-2"],
      hv2: ["web-1"],
    },
  );
});

test("the agent's status file parses into size, members and slots", () => {
  const s = parseAgentState(
    [
      "present=yes",
      "running=no",
      "agentpid=",
      "status.size=2",
      "status.cooldown_end=1700000000",
      "status.avg_cpu=37",
      "status.min=1",
      "status.max=3",
      "status.member=web-0 running 100",
      "status.member=web-1 stopped 0",
      "status.member=web-2 running 200",
      "log=ts=1 event=decision",
    ].join("\n"),
  );
  assert.equal(s.present, true);
  assert.equal(s.running, false);
  assert.equal(s.size, 2);
  assert.deepEqual(s.members, ["web-0", "web-2"]);
  assert.deepEqual(s.slots, { "web-0": "running", "web-1": "stopped", "web-2": "running" });
  assert.equal(s.cooldownEnd, 1700000000);
  assert.deepEqual([s.min, s.max], [1, 3], "the bounds (asg status prints them)");
  assert.deepEqual(s.log, ["ts=1 event=decision"]);
});

test("the provider survives closure serialization", async () => {
  const { provider } = await assertSerializable(autoscaleAgentProvider, {
    methods: ["check", "diff", "create", "read", "update", "delete"],
    forbid: [/handlebars/],
  });
  const check = provider.check as (o: object, n: object) => Promise<{ failures: { property: string }[] }>;
  const r = await check({}, raw({ desired: 9 }));
  assert.ok(r.failures.some((f) => f.property === "desired"));
});

test('Server powerState "external": accepted, never started or stopped by an update, its power state is not drift', () => {
  const { checkServerInputs, diffServer, planUpdate } =
    require("../../../provider") as typeof import("../../../provider");
  const { serverRaw } = require("./fixtures") as typeof import("./fixtures");
  const r = checkServerInputs({ ...serverRaw(HOSTS), powerState: "external" });
  assert.deepEqual(r.failures, []);
  const inputs = r.inputs as never as import("../../../provider").ServerInputs;
  for (const actual of ["running", "stopped"]) {
    const olds = { ...inputs, actualPowerState: actual, domainType: "qemu" } as never;
    assert.equal(diffServer(olds, inputs).changes, false, `an agent-${actual} member is no drift`);
    assert.equal(planUpdate(olds, inputs).power, "", "an update never powers it");
  }
  const plain = checkServerInputs({ ...serverRaw(HOSTS), powerState: "stopped" })
    .inputs as never as import("../../../provider").ServerInputs;
  const drifted = { ...plain, actualPowerState: "running", domainType: "qemu" } as never;
  assert.equal(diffServer(drifted, plain).changes, true, "a stopped server found running still drifts");
});

const STACK_OWNER = "proj/dev/AutoscaleAgent/web-agent";

/** Replaces the host session with a recorder: every batch of steps, per host, answered by label. */
function recordHosts(
  fail?: RegExp,
  opts: { answers?: [RegExp, string][]; codes?: [RegExp, number][]; failOnce?: RegExp; hang?: RegExp } = {},
): {
  batches: { host: string; steps: { label: string; script: string }[]; lane?: string }[];
  restore: () => void;
} {
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const saved = { ...session };
  // lane: the RunOptions lane of a runSteps/runChecked batch ("main" when none), "locked" for runLocked.
  const batches: { host: string; steps: { label: string; script: string }[]; lane?: string }[] = [];
  const answers: [RegExp, string][] = [
    ...(opts.answers ?? []),
    [/^mark /, "fresh=yes"],
    [/^prepare the agent folder/, KEY],
    [/^read the destination/, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost\nakf=/root/.ssh/authorized_keys"],
    [/^read group web/, "present=yes\nrunning=yes\nagentpid=42\nstatus.size=1"],
    [/^claim /, "claimed"],
  ];
  let failOnce = opts.failOnce;
  const run = (h: HostConnection, steps: readonly { label?: string; script: string }[], lane = "main") => {
    batches.push({
      host: h.name,
      steps: steps.map((s) => ({ label: s.label ?? "", script: s.script })),
      lane,
    });
    const bad = fail && steps.find((s) => fail.test(s.label ?? ""));
    if (bad) throw new Error(`${h.name}: step "${bad.label}" failed`);
    // The first batch with a step matching `failOnce` fails; later ones pass.
    const once = failOnce && steps.find((s) => failOnce?.test(s.label ?? ""));
    if (once) {
      failOnce = undefined;
      throw new Error(`${h.name}: step "${once.label}" failed`);
    }
    return steps.map((s) => answers.find(([re]) => re.test(s.label ?? ""))?.[1] ?? "");
  };
  session.runSteps = async (
    h: HostConnection,
    steps: readonly { label?: string; script: string }[],
    runOpts?: { lane?: string },
  ) => {
    // A batch that never runs (queued behind the host's other batches, a connect that hangs).
    if (opts.hang && steps.some((s) => opts.hang?.test(s.label ?? ""))) {
      batches.push({
        host: h.name,
        steps: steps.map((s) => ({ label: s.label ?? "", script: s.script })),
        lane: runOpts?.lane ?? "main",
      });
      return new Promise<never>(() => undefined);
    }
    const out = run(h, steps, runOpts?.lane).map((stdout, k) => ({
      code: opts.codes?.find(([re]) => re.test(steps[k].label ?? ""))?.[1] ?? 0,
      stdout,
      stderr: "",
    }));
    return out;
  };
  // The named lock: recorded as a pseudo-step when taken and when released.
  session.withNamedHostLock = async (
    h: HostConnection,
    name: string,
    fn: () => Promise<unknown>,
    _wait?: number,
    file?: string,
  ) => {
    batches.push({ host: h.name, steps: [{ label: `lock ${name} ${file ?? ""}`, script: "" }] });
    try {
      return await fn();
    } finally {
      batches.push({ host: h.name, steps: [{ label: `unlock ${name}`, script: "" }] });
    }
  };
  session.runChecked = async (
    h: HostConnection,
    steps: readonly { label?: string; script: string }[],
    o?: { lane?: string },
  ) => run(h, steps, o?.lane);
  session.runLocked = async (h: HostConnection, steps: readonly { label?: string; script: string }[]) =>
    run(h, steps, "locked");
  return { batches, restore: () => Object.assign(session, saved) };
}

test("create: each member server is checked to be this stack's before the forced command lands; the key line has from=; the scripts installed are the package's", async () => {
  const rec = recordHosts();
  try {
    const direct = checkAutoscaleAgentInputs(raw()).inputs;
    await assert.rejects(autoscaleAgentProvider.create!(direct as never), /never for a raw provider call/);
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER }))
      .inputs as unknown as AutoscaleAgentInputs;
    await autoscaleAgentProvider.create!(i as never);
    const labels = (h: string) => rec.batches.filter((b) => b.host === h).flatMap((b) => b.steps);
    for (const [h, names] of Object.entries(i.membersByHost)) {
      const steps = labels(h);
      const auth = steps.findIndex((s) => s.label.startsWith("authorize group web"));
      assert.ok(auth > 0, `${h}: the key is authorized`);
      assert.match(steps[auth].script, /from="10\.255\.0\.1[0-9]*",restrict,command=/);
      assert.ok(steps[auth].script.includes(`from="${HOSTS[0].address}"`), "from= the controller (hv1)");
      for (const n of names) {
        const check = steps.findIndex((s) => s.label === `check that server ${n} is this stack's`);
        assert.ok(check >= 0 && check < auth, `${h}: ${n}'s owner is checked before the key lands`);
      }
      const up = steps.find((s) => s.label.endsWith("/member.sh"));
      const b64 = Buffer.from(memberScript(), "utf8").toString("base64").slice(0, 60);
      assert.ok(up?.script.includes(b64), `${h}: the package's member.sh is installed`);
    }
    const lbCheck = labels("hv1").findIndex(
      (s) => s.label === "check that load balancer web-lb is this stack's",
    );
    assert.ok(lbCheck >= 0, "the load balancer the agent drives is checked to be this stack's");
    assert.ok(
      lbCheck < labels("hv1").findIndex((s) => s.label.endsWith("/agent.sh")),
      "before the agent lands",
    );
    const agentUp = labels("hv1").find((s) => s.label.endsWith("/agent.sh"));
    assert.ok(agentUp?.script.includes(Buffer.from(agentScript(), "utf8").toString("base64").slice(0, 60)));
  } finally {
    rec.restore();
  }
});

test("update: a host new to the group is claimed (not adopted); a host it left loses the key and its owner marker", async () => {
  const rec = recordHosts();
  try {
    const hosts = [...HOSTS, testHost("hv3", 3)];
    const olds = outputs(checkAutoscaleAgentInputs(raw({ hosts, owner: STACK_OWNER })).inputs);
    const news = checkAutoscaleAgentInputs(
      raw({ hosts, owner: STACK_OWNER, membersByHost: { hv1: ["web-0", "web-2"], hv3: ["web-1"] } }),
    ).inputs;
    await autoscaleAgentProvider.update!("web", olds as never, news as never);
    const on = (h: string) =>
      rec.batches.filter((b) => b.host === h).flatMap((b) => b.steps.map((s) => s.label));
    assert.ok(on("hv3").includes(`claim autoscale group web for ${(news as { owner: string }).owner}`));
    assert.ok(on("hv2").some((l) => l.startsWith("remove group web's agent key")));
    assert.ok(on("hv2").includes("release the owner marker of autoscale group web"));
    assert.ok(!on("hv1").some((l) => l.startsWith("release the owner marker")), "the controller keeps it");
  } finally {
    rec.restore();
  }
});

test("update: a failed update releases the hosts it claimed, and only those", async () => {
  // The agent's (re)start on the controller fails after hv3 was claimed and wired.
  const rec = recordHosts(/^(re)?start group web's agent/);
  try {
    const hosts = [...HOSTS, testHost("hv3", 3)];
    const olds = outputs(checkAutoscaleAgentInputs(raw({ hosts, owner: STACK_OWNER })).inputs);
    const news = checkAutoscaleAgentInputs(
      raw({
        hosts,
        owner: STACK_OWNER,
        membersByHost: { hv1: ["web-0"], hv2: ["web-2"], hv3: ["web-1"] },
      }),
    ).inputs;
    await assert.rejects(
      autoscaleAgentProvider.update!("web", olds as never, news as never),
      /hv1: step "restart group web's agent" failed|hv1: step "start group web's agent" failed/,
    );
    const on = (h: string) =>
      rec.batches.filter((b) => b.host === h).flatMap((b) => b.steps.map((s) => s.label));
    const claim = on("hv3").indexOf(`claim autoscale group web for ${STACK_OWNER}`);
    assert.ok(claim >= 0, "hv3 was claimed");
    const release = on("hv3").lastIndexOf("release the owner marker of autoscale group web");
    assert.ok(release > claim, `hv3 is released after the failure: ${on("hv3").join(" | ")}`);
    assert.ok(
      on("hv3")
        .slice(claim)
        .some((l) => l.startsWith("remove group web's agent key")),
      "and loses the key line this update put there",
    );
    for (const h of ["hv1", "hv2"]) {
      assert.ok(
        !on(h).some((l) => l.startsWith("release the owner marker")),
        `${h} (held before) keeps its marker`,
      );
      assert.ok(!on(h).some((l) => l.startsWith("remove group web's agent key")), `${h} keeps its key`);
    }
    assert.ok(
      !on("hv1").some((l) => l.startsWith("stop group web's agent")),
      "the agent on hv1 is not stopped by the cleanup",
    );
  } finally {
    rec.restore();
  }
});

test("review 10b P5: an error on several hosts at once names every host's error; one host's error is thrown as it was", async () => {
  const { firstError } = await import("../../../provider/autoscale");
  const hosts = [testHost("hv1", 1), testHost("hv2", 2), testHost("hv3", 3)];
  const refused = new Error("hv1 is owned by another stack (exit 73)");
  const settled: PromiseSettledResult<number>[] = [
    { status: "rejected", reason: refused },
    { status: "fulfilled", value: 2 },
    { status: "rejected", reason: new Error("ssh: connect to host 10.255.0.13: Connection refused") },
  ];
  assert.throws(
    () => firstError(settled, hosts),
    (e: Error) =>
      e.message.startsWith(refused.message) &&
      e.message.includes(" - hv1: hv1 is owned by another stack (exit 73)") &&
      e.message.includes(" - hv3: ssh: connect to host 10.255.0.13: Connection refused") &&
      !e.message.includes("hv2:") &&
      e.cause === refused,
  );
  assert.throws(
    () => firstError([settled[0], settled[1]], hosts),
    (e) => e === refused,
  );
  assert.deepEqual(
    firstError(
      [
        { status: "fulfilled", value: 1 },
        { status: "fulfilled", value: 2 },
      ],
      hosts,
    ),
    [1, 2],
  );
});

/** Every step label in the order recorded, each prefixed with its host ("hv1: …"). */
function timeline(rec: ReturnType<typeof recordHosts>): string[] {
  return rec.batches.flatMap((b) => b.steps.map((s) => `${b.host}: ${s.label}`));
}

function stepScript(rec: ReturnType<typeof recordHosts>, label: RegExp): string {
  const s = rec.batches.flatMap((b) => b.steps).find((x) => label.test(x.label));
  assert.ok(s, `a step ${label}`);
  return s.script;
}

test("session 12: a fresh group's create marks its first members starting under the group lock, then starts them on their hosts through the member command, then starts the agent", async () => {
  const rec = recordHosts();
  try {
    // desired 2 of min 1..max 3: web-0 (hv1) and web-1 (hv2), the lowest slots.
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
    await autoscaleAgentProvider.create!(i as never);
    const t = timeline(rec);
    const lock = t.indexOf("hv1: lock asg-group /var/lib/kvmlab/asg/web/group.lock");
    const mark = t.findIndex((l) => l.startsWith("hv1: mark web-0, web-1 of group web starting"));
    const s0 = t.indexOf("hv1: start member web-0 of group web");
    const s1 = t.indexOf("hv2: start member web-1 of group web");
    const done = t.indexOf("hv1: record the first start of group web");
    const unlock = t.indexOf("hv1: unlock asg-group");
    const agentStart = t.indexOf("hv1: start group web's agent");
    assert.ok(
      lock >= 0 &&
        lock < mark &&
        mark < s0 &&
        mark < s1 &&
        s0 < done &&
        s1 < done &&
        done < unlock &&
        unlock < agentStart,
      `lock, mark, starts, record, unlock, then the agent: ${t.join(" | ")}`,
    );
    assert.ok(!t.some((l) => l.includes("member web-2")), "only clamp(desired, min, max) members start");
    assert.ok(
      t.indexOf("hv1: check that load balancer web-lb is this stack's") < mark &&
        t.indexOf("hv2: check that server web-1 is this stack's") < s1,
      "the pool and the member servers are checked to be this stack's before anything starts",
    );
    const markScript = stepScript(rec, /^mark /);
    assert.match(markScript, /ls -A state/, "only a group whose state/ is empty is marked");
    assert.ok(
      markScript.includes("printf 'starting 0\\n' > state/web-0.tmp && mv -f state/web-0.tmp state/web-0"),
    );
    assert.ok(
      markScript.includes("'set server web:http/web-1 state maint'"),
      "maint in the pool, as start_members",
    );
    assert.equal(
      stepScript(rec, /^start member web-1/),
      "env -u SSH_ORIGINAL_COMMAND /bin/sh /var/lib/kvmlab/asg/web/member.sh start web-1",
    );
    const record = stepScript(rec, /^record the first start/);
    assert.match(record, /event=action action=start member=web-0 host=hv1 start_ms=\d+ cause=create/);
    assert.match(record, /event=action action=start member=web-1 host=hv2 start_ms=\d+ cause=create/);
    assert.doesNotMatch(record, /stopped 0/, "nothing goes back to stopped when every start worked");
  } finally {
    rec.restore();
  }
});

test("session 13 (issue 13): the create's steps that take no host lock (the member hosts' checks, the members' stats and starts, the agent's read) run in a worker shell; those that take the host lock run locked in the main shell", async () => {
  const rec = recordHosts();
  try {
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
    await autoscaleAgentProvider.create!(i as never);
    const laneOf = (re: RegExp): string[] =>
      rec.batches
        .filter((b) => b.steps.some((s) => re.test(s.label)))
        .map((b) => `${b.host}:${b.lane ?? "?"}`);
    assert.deepEqual(laneOf(/^start member /).sort(), ["hv1:worker", "hv2:worker"], "the members' starts");
    assert.deepEqual(laneOf(/^read the members of group web/).sort(), ["hv1:worker", "hv2:worker"], "stats");
    assert.deepEqual(laneOf(/^read the destination/).sort(), ["hv1:worker", "hv2:worker"], "member checks");
    assert.deepEqual(laneOf(/^read group web's agent/), ["hv1:worker"], "the agent's state");
    for (const re of [
      /^claim /,
      /^authorize group web/,
      /^prepare the agent folder/,
      /^start group web's agent/,
    ])
      assert.ok(
        laneOf(re).length > 0 && laneOf(re).every((l) => l.endsWith(":locked")),
        `${String(re)} runs under the host lock: ${laneOf(re).join(" ")}`,
      );
  } finally {
    rec.restore();
  }
});

test("session 12: a create start whose member command fails sets that member back to stopped and logs which and why; one whose host call failed, and the others, stay starting", async () => {
  // web-1's host call fails outright; web-0's member command refuses (exit 64).
  const rec = recordHosts(/^start member web-1/, { codes: [[/^start member web-0/, 64]] });
  try {
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 3 })).inputs;
    await autoscaleAgentProvider.create!(i as never);
    const record = stepScript(rec, /^record the first start/);
    assert.ok(
      record.includes(
        "printf 'stopped 0\\n' > state/web-0.tmp && mv -f state/web-0.tmp state/web-0 && rm -f state/web-0.create",
      ),
    );
    assert.ok(
      !record.includes("> state/web-1.tmp"),
      "review 12a S2: web-1's host call failed, its start may have run: it stays starting (dead_starts checks it)",
    );
    assert.ok(!record.includes("> state/web-2.tmp"), "web-2 started: it stays starting");
    assert.match(
      record,
      /action=start member=web-0 host=hv1 result=failed reason=start-command-failed rc=64 state=stopped cause=create/,
    );
    assert.match(
      record,
      /action=start member=web-1 host=hv2 result=unknown reason=host-call-failed state=starting cause=create/,
    );
    assert.match(record, /action=start member=web-2 host=hv1 start_ms=\d+ cause=create/);
    assert.ok(
      timeline(rec).includes("hv1: start group web's agent"),
      "the agent starts (it starts another in their place)",
    );
  } finally {
    rec.restore();
  }
});

test("session 12: an adopted group folder, or one whose state/ holds anything, starts nothing at create (the agent decides)", async () => {
  for (const [what, opts] of [
    ["adopted", { answers: [[/^claim /, "adopted"]] as [RegExp, string][] }],
    ["not fresh", { answers: [[/^mark /, "fresh=no"]] as [RegExp, string][] }],
  ] as const) {
    const rec = recordHosts(undefined, opts);
    try {
      const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
      await autoscaleAgentProvider.create!(i as never);
      const t = timeline(rec);
      assert.ok(
        !t.some((l) => / member web-\d of group web$/.test(l)),
        `${what}: no member started: ${t.join(" | ")}`,
      );
      assert.ok(!t.some((l) => l.includes("record the first start")), `${what}: nothing recorded`);
      assert.equal(
        t.some((l) => l.includes(": mark ")),
        what === "not fresh",
        `${what}: marked only when claimed`,
      );
      assert.ok(t.includes("hv1: start group web's agent"));
    } finally {
      rec.restore();
    }
  }
});

test("session 12: a create that fails after starting members powers them off again before its cleanup removes the member command", async () => {
  const rec = recordHosts(/^start group web's agent/);
  try {
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
    await assert.rejects(autoscaleAgentProvider.create!(i as never), /start group web's agent/);
    const t = timeline(rec);
    for (const [h, m] of [
      ["hv1", "web-0"],
      ["hv2", "web-1"],
    ]) {
      const stop = t.indexOf(`${h}: stop member ${m} of group web`);
      const strip = t.findIndex((l) => l.startsWith(`${h}: remove group web's agent key`));
      assert.ok(
        stop > t.indexOf(`${h === "hv1" ? "hv1" : "hv2"}: start member ${m} of group web`),
        `${m} is powered off`,
      );
      assert.ok(strip > stop, `${h}: before the member command is removed: ${t.join(" | ")}`);
    }
    assert.ok(!t.includes("hv1: stop member web-2 of group web"), "only what the create started");
  } finally {
    rec.restore();
  }
});

test("review 12a M1: a fresh folder whose members already run (a replaced agent) marks, starts and powers off nothing; a member host that does not answer neither", async () => {
  for (const [what, record] of [
    [
      "web-0 running",
      () =>
        recordHosts(/^start group web's agent/, {
          answers: [[/^read the members of group web/, "web-0 running 123\nweb-2 shut-off 0"]],
        }),
    ],
    [
      "web-1 paused",
      () =>
        recordHosts(/^start group web's agent/, {
          answers: [[/^read the members of group web/, "web-1 paused 5"]],
        }),
    ],
    ["host silent", () => recordHosts(/^(start group web's agent|read the members of group web)/)],
  ] as const) {
    const rec = record();
    try {
      const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
      await assert.rejects(autoscaleAgentProvider.create!(i as never), /start group web's agent/);
      const t = timeline(rec);
      assert.ok(
        t.includes("hv1: read the members of group web on this host") &&
          t.includes("hv2: read the members of group web on this host"),
        `${what}: every member host asked: ${t.join(" | ")}`,
      );
      assert.ok(
        t.indexOf("hv1: read the members of group web on this host") >
          t.indexOf("hv1: lock asg-group /var/lib/kvmlab/asg/web/group.lock"),
        `${what}: asked under the group lock`,
      );
      assert.ok(!t.some((l) => l.includes(": mark ")), `${what}: nothing marked: ${t.join(" | ")}`);
      assert.ok(
        !t.some((l) => /: (start|stop) member /.test(l)),
        `${what}: nothing started or stopped: ${t.join(" | ")}`,
      );
      assert.ok(!t.some((l) => l.includes("record the first start")), `${what}: nothing recorded`);
    } finally {
      rec.restore();
    }
  }
});

test("review 12a S1: a create that fails after its agent started stops the agent BEFORE it powers off the members it started", async () => {
  const rec = recordHosts(/^read group web/);
  try {
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
    await assert.rejects(autoscaleAgentProvider.create!(i as never), /read group web/);
    const t = timeline(rec);
    const agentUp = t.indexOf("hv1: start group web's agent");
    const agentDown = t.indexOf("hv1: stop group web's agent");
    assert.ok(agentUp >= 0 && agentDown > agentUp, `the agent started, then stopped: ${t.join(" | ")}`);
    for (const [h, m] of [
      ["hv1", "web-0"],
      ["hv2", "web-1"],
    ]) {
      const stop = t.indexOf(`${h}: stop member ${m} of group web`);
      assert.ok(stop > agentDown, `${m} is powered off after the agent stopped: ${t.join(" | ")}`);
    }
  } finally {
    rec.restore();
  }
});

test("review 12c N1: a failed create whose agent stop fails says so (the agent may have started members in their place), the original error first", async () => {
  const rec = recordHosts(/^(read group web|stop group web's agent)/);
  try {
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
    const err = await autoscaleAgentProvider.create!(i as never).then(
      () => assert.fail("the create must fail"),
      (e: unknown) => e as Error,
    );
    assert.match(err.message, /^[^;]*read group web/, "the original error first");
    // The teardown's own agent stop failed too (the same step): the folder may be left, so the
    // advice points at it (review 12d N5), and the teardown's failure is named.
    assert.match(
      err.message,
      /the group's agent could not be stopped before the members' power-off \(.*stop group web's agent.*\), and the cleanup failed on hv1 too, so the agent may still run and its folder may be left: see `kvmlab asg status web --controller hv1`, and virsh list on hv1, hv2/,
    );
    assert.match(
      err.message,
      /the cleanup could not remove everything this create made \(autoscale group web: cleanup failed on hv1: .*stop group web's agent/,
    );
    assert.match((err.cause as Error).message, /read group web/);
  } finally {
    rec.restore();
  }
});

test("review 12a S6: a failed create's power-offs that fail are named in the thrown error (the original error kept as cause), and the teardown still runs", async () => {
  // The agent start fails; web-0's power-off answers 1, web-1's host call fails outright.
  const rec = recordHosts(/^(start group web's agent|stop member web-1)/, {
    codes: [[/^stop member web-0/, 1]],
  });
  try {
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
    const err = await autoscaleAgentProvider.create!(i as never).then(
      () => assert.fail("the create must fail"),
      (e: unknown) => e as Error,
    );
    assert.match(err.message, /start group web's agent/, "the original error first");
    assert.match(err.message, /left running: web-0 \(hv1: exit 1\); web-1 \(hv2: [^)]*stop member web-1/);
    assert.match((err.cause as Error).message, /start group web's agent/);
    const t = timeline(rec);
    assert.ok(
      t.includes("hv2: remove group web's agent key and member command from this host"),
      `the teardown ran: ${t.join(" | ")}`,
    );
  } finally {
    rec.restore();
  }
});

test("review 12d N5: a failed create whose first agent stop fails but whose teardown works says the folder is gone (no `kvmlab asg status`), and which slots to look for where", async () => {
  // readAgent fails after the agent started; the catch's agent stop fails once, the teardown's
  // own stop (and the rest of it) works: the group folder, decisions.log with it, is removed.
  const rec = recordHosts(/^read group web/, { failOnce: /^stop group web's agent/ });
  try {
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
    const err = await autoscaleAgentProvider.create!(i as never).then(
      () => assert.fail("the create must fail"),
      (e: unknown) => e as Error,
    );
    const t = timeline(rec);
    assert.ok(
      t.includes("hv1: remove group web's agent files"),
      `the teardown removed the folder: ${t.join(" | ")}`,
    );
    assert.match(err.message, /^[^;]*read group web/, "the original error first");
    assert.match(
      err.message,
      /the group's agent could not be stopped before the members' power-off \(.*stop group web's agent.*\); the cleanup stopped it afterwards and removed the group's folder on hv1 \(its decisions\.log with it\)/,
    );
    assert.match(
      err.message,
      /any of web-0, web-1, web-2 running now on hv1, hv2 \(virsh list\) was started by this create or its agent/,
    );
    assert.doesNotMatch(err.message, /kvmlab asg status/, "the folder it would read is gone");
    assert.doesNotMatch(err.message, /the cleanup could not remove/, "the teardown worked");
  } finally {
    rec.restore();
  }
});

test("review 12d N5: a failed create's teardown that fails is named (it was swallowed), after the original error, kept as the cause", async () => {
  // The agent start fails; the teardown cannot remove the group's folder on the controller.
  const rec = recordHosts(/^(start group web's agent|remove group web's agent files)/);
  try {
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
    const err = await autoscaleAgentProvider.create!(i as never).then(
      () => assert.fail("the create must fail"),
      (e: unknown) => e as Error,
    );
    assert.match(err.message, /^[^;]*start group web's agent/, "the original error first");
    assert.match(
      err.message,
      /the cleanup could not remove everything this create made \(autoscale group web: cleanup failed on hv1: .*remove group web's agent files.*\); what is left stays marked as this stack's: run up again/,
    );
    assert.doesNotMatch(err.message, /agent could not be stopped/, "the agent stop worked");
    assert.match((err.cause as Error).message, /start group web's agent/);
  } finally {
    rec.restore();
  }
});

test("review 12d N5: a failed update's cleanup that fails is named, after the original error", async () => {
  const rec = recordHosts(/^((re)?start group web's agent|release the owner marker)/);
  try {
    const hosts = [...HOSTS, testHost("hv3", 3)];
    const olds = outputs(checkAutoscaleAgentInputs(raw({ hosts, owner: STACK_OWNER })).inputs);
    const news = checkAutoscaleAgentInputs(
      raw({ hosts, owner: STACK_OWNER, membersByHost: { hv1: ["web-0"], hv2: ["web-2"], hv3: ["web-1"] } }),
    ).inputs;
    const err = await autoscaleAgentProvider.update!("web", olds as never, news as never).then(
      () => assert.fail("the update must fail"),
      (e: unknown) => e as Error,
    );
    assert.match(err.message, /^[^;]*start group web's agent/, "the original error first");
    assert.match(
      err.message,
      /the cleanup could not give back every host this update claimed \(autoscale group web: cleanup failed on hv3: .*release the owner marker/,
    );
    assert.match((err.cause as Error).message, /start group web's agent/);
  } finally {
    rec.restore();
  }
});

test("review 12c N2: a fresh group's create that starts nothing because members run, or a member host is silent, logs why in decisions.log (under the group lock, in the agent's format)", async () => {
  for (const [what, opts, line] of [
    [
      "web-0 running",
      {
        answers: [[/^read the members of group web/, "web-0 running 123\nweb-2 shut-off 0\nweb-9 running 1"]],
      },
      "event=create-starts result=skipped reason=members-live members=web-0 note=the-agent-decides cause=create",
    ],
    [
      "web-1 paused",
      { answers: [[/^read the members of group web/, "web-1 paused 5"]] },
      "event=create-starts result=skipped reason=members-live members=web-1 note=the-agent-decides cause=create",
    ],
    [
      "the member hosts answer 69 (libvirtd down)",
      { codes: [[/^read the members of group web/, 69]] },
      "event=create-starts result=skipped reason=host-silent silent_hosts=hv1,hv2 note=the-agent-decides cause=create",
    ],
  ] as [string, Parameters<typeof recordHosts>[1], string][]) {
    const rec = recordHosts(undefined, opts);
    try {
      const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
      await autoscaleAgentProvider.create!(i as never);
      const t = timeline(rec);
      const logAt = t.findIndex((l) => l.startsWith("hv1: log that group web's create starts no member"));
      assert.ok(
        logAt > t.indexOf("hv1: lock asg-group /var/lib/kvmlab/asg/web/group.lock") &&
          logAt < t.indexOf("hv1: unlock asg-group"),
        `${what}: logged under the group lock: ${t.join(" | ")}`,
      );
      const script = stepScript(rec, /^log that group web's create starts no member/);
      assert.ok(script.includes(`echo "ts=$(date +%s%3N) ${line}" >> decisions.log`), `${what}: ${script}`);
      assert.ok(script.startsWith("cd /var/lib/kvmlab/asg/web && "), "in the group's folder");
      assert.ok(!t.some((l) => /: (start|stop) member /.test(l)), `${what}: nothing started`);
    } finally {
      rec.restore();
    }
  }
  // A fresh group whose members are all off logs no such line.
  const rec = recordHosts();
  try {
    await autoscaleAgentProvider.create!(
      checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs as never,
    );
    assert.ok(!timeline(rec).some((l) => l.includes("starts no member")));
  } finally {
    rec.restore();
  }
});

test("review 12c N2: the create's stats question is bounded from the moment it is asked (a host whose batch never even runs counts as silent after 30 s), and runs in a worker shell", async () => {
  const { mock } = await import("node:test");
  const { MEMBER_STATS_BOUND_MS } = await import("../../../provider/autoscale");
  assert.equal(MEMBER_STATS_BOUND_MS, 30_000);
  // Both member hosts' batches are stuck before they run (queued, a connect that hangs): the old
  // per-batch timeout never started, so the create waited, holding the group lock.
  const rec = recordHosts(undefined, { hang: /^read the members of group web/ });
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const i = checkAutoscaleAgentInputs(raw({ owner: STACK_OWNER, desired: 2 })).inputs;
    let settled = false;
    const created = autoscaleAgentProvider.create!(i as never).finally(() => (settled = true));
    const spin = async (n: number, until: () => boolean): Promise<void> => {
      for (let k = 0; k < n && !until(); k++) await new Promise((r) => setImmediate(r));
    };
    const asked = (): number =>
      timeline(rec).filter((l) => l.endsWith("read the members of group web on this host")).length;
    await spin(2000, () => asked() === 2);
    assert.equal(asked(), 2, "both member hosts asked");
    for (const b of rec.batches.filter((x) => x.steps.some((s) => s.label.startsWith("read the members"))))
      assert.equal(
        b.lane,
        "worker",
        `${b.host}: asked in a worker shell, not behind the main shell's batches`,
      );
    mock.timers.tick(MEMBER_STATS_BOUND_MS - 1);
    await spin(200, () => settled);
    assert.equal(settled, false, "still waiting just before the bound");
    mock.timers.tick(1);
    await spin(2000, () => settled);
    assert.equal(settled, true, "the create went on at the bound");
    await created;
    const t = timeline(rec);
    assert.ok(
      !t.some((l) => /: (start|stop) member |: mark /.test(l)),
      `nothing marked or started: ${t.join(" | ")}`,
    );
    assert.ok(
      stepScript(rec, /^log that group web's create starts no member/).includes(
        "reason=host-silent silent_hosts=hv1,hv2",
      ),
    );
    assert.ok(t.includes("hv1: start group web's agent"), "the agent decides");
  } finally {
    mock.timers.reset();
    rec.restore();
  }
});

test("review 12a N3: check refuses membersByHost that is not agent.conf's slots on agent.conf's hosts (the create picks from one, the agent from the other), naming both lists", () => {
  // conf(): web-0 and web-2 on hv1, web-1 on hv2.
  assert.deepEqual(checkAutoscaleAgentInputs(raw()).failures, [], "the same slots on the same hosts");
  for (const [what, membersByHost, listed] of [
    ["a slot left out", { hv1: ["web-0", "web-2"] }, "web-0@hv1, web-2@hv1"],
    ["a slot on another host", { hv1: ["web-0", "web-1", "web-2"] }, "web-0@hv1, web-1@hv1, web-2@hv1"],
    ["two slots swapped", { hv1: ["web-1", "web-2"], hv2: ["web-0"] }, "web-0@hv2, web-1@hv1, web-2@hv1"],
  ] as const) {
    const f = checkAutoscaleAgentInputs(raw({ membersByHost })).failures.filter(
      (x) => x.property === "membersByHost",
    );
    assert.equal(f.length, 1, `${what}: ${JSON.stringify(f)}`);
    assert.ok(
      f[0].reason.includes(
        `agent.conf's slots (MEMBER_<i>_NAME on MEMBER_<i>_HOST) are web-0@hv1, web-1@hv2, web-2@hv1, membersByHost lists ${listed}`,
      ),
      `${what}: both lists named: ${f[0].reason}`,
    );
    assert.match(f[0].reason, /render both from the same slots/);
  }
  // Unknown lists (preview) are not judged.
  const unknown = checkAutoscaleAgentInputs(
    raw({ membersByHost: { hv1: ["web-0", "web-2"], hv2: UNKNOWN } }),
  );
  assert.ok(!unknown.failures.some((x) => /agent\.conf's slots/.test(x.reason)));
});
