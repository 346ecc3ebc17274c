/**
 * examples/router-fip-sg through the engine harness on a sandbox instance of its own ("lc-rfs",
 * or $KVMLAB_LC_RFS_INSTANCE), with the example's real guest behind a security group that the
 * Server component wires from its port's `securityGroups`:
 *
 *   up                  from the sandbox's "internet" namespace the guest answers on its floating
 *                       IP port 80 (allowed); port 8080 (the guest listens there too) is refused;
 *                       the fixed address is not reachable from outside
 *   webPorts=[80,8080]  only the SecurityGroupPort (and its group) update, the Server is "same"
 *                       (the guest is not touched): 8080 now answers, proving the earlier refusal
 *                       was the group's
 *   webPorts unset      the rule is revoked: 8080 refused again
 *   destroy             no kvmlab chain, ipset or qrouter namespace left on any host
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { runEngine, type RunResult } from "../harness/engine/engine";
import { sshCheck, startSandbox, stopSandbox, waitFor, type SandboxStatus } from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_LC_RFS_INSTANCE ?? "lc-rfs";
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "examples", "router-fip-sg");
let status: SandboxStatus;
let stateDir = "";
let destroyed = false;

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-rfs-"));
});

after(async () => {
  if (!destroyed && stateDir) await run("destroy").catch(() => undefined);
  await stopSandbox(INSTANCE);
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

function run(operation: "up" | "destroy", webPorts?: string): Promise<RunResult> {
  return runEngine({
    operation,
    programDir: PROGRAM,
    stack: "dev",
    stateFile: path.join(stateDir, "state.json"),
    config: [
      { key: "kvmlab:sandboxInstance", value: INSTANCE, secret: false },
      ...(webPorts ? [{ key: "router-fip-sg:webPorts", value: webPorts, secret: false }] : []),
    ],
    env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
  });
}

function ok(r: RunResult): RunResult {
  assert.ok(r.ok, `${r.operation} failed:\n${r.errors.join("\n")}`);
  return r;
}

/** The step the run took for resource `name` of type `type`. */
function stepOf(r: RunResult, type: string, name: string): string {
  const s = r.steps.filter((e) => e.urn.endsWith(`${type}::${name}`));
  assert.equal(s.length, 1, `one step for ${type} ${name}: ${JSON.stringify(s.map((e) => e.op))}`);
  return s[0].op;
}

/** GET http://<ip>:<port>/ from the sandbox's internet namespace (bounded); undefined when refused. */
function fromInternet(ip: string, port: number): string | undefined {
  const r = spawnSync(
    "ip",
    [
      "netns",
      "exec",
      status.external.internetNetns,
      "timeout",
      "4",
      "busybox",
      "wget",
      "-qO-",
      `http://${ip}:${port}/`,
    ],
    { encoding: "utf8", timeout: 8_000 },
  );
  return r.status === 0 ? r.stdout.trim() : undefined;
}

function answers(ip: string, port: number): Promise<string> {
  return waitFor(`HTTP ${ip}:${port} from the internet`, async () => fromInternet(ip, port), {
    timeoutMs: 40_000,
    intervalMs: 500,
  });
}

test(
  "router-fip-sg: an allowed port passes through the floating IP, another is refused; rule changes never touch the guest",
  { timeout: 900_000 },
  async () => {
    const up = ok(await run("up"));
    const fip = up.outputs.floatingIp as string;
    const fixed = up.outputs.fixedIp as string;
    assert.equal(await answers(fip, 80), "hello from web1", "port 80 is allowed");
    assert.equal(fromInternet(fip, 8080), undefined, "port 8080 is not allowed by the group");
    assert.equal(fromInternet(fixed, 80), undefined, "the fixed address is not reachable from outside");

    const opened = ok(await run("up", "[80,8080]"));
    assert.equal(stepOf(opened, "kvmlab:SecurityGroupPort", "web1-port0"), "update");
    assert.equal(stepOf(opened, "kvmlab:Server", "web1"), "same", "the guest is not touched");
    assert.equal(
      await answers(fip, 8080),
      "hello from web1",
      "the guest listens on 8080: the refusal was the group's",
    );

    const closed = ok(await run("up"));
    assert.equal(stepOf(closed, "kvmlab:SecurityGroupPort", "web1-port0"), "update");
    assert.equal(stepOf(closed, "kvmlab:Server", "web1"), "same");
    await waitFor(
      "8080 refused again",
      async () => (fromInternet(fip, 8080) === undefined ? true : undefined),
      {
        timeoutMs: 20_000,
        intervalMs: 500,
      },
    );
    assert.equal(await answers(fip, 80), "hello from web1");

    ok(await run("destroy"));
    destroyed = true;
    for (const h of status.hosts) {
      const left = await sshCheck(
        status,
        h.name,
        "{ iptables-save; iptables-save -t raw; } 2>/dev/null | grep -c kvmlab || true; ipset list -n; ip netns list | grep -c qrouter || true",
        { timeoutMs: 30_000 },
      );
      assert.equal(
        left.trim().split(/\s+/).join(" "),
        "0 0",
        `${h.name}: nothing of kvmlab left (chains, sets, namespaces)`,
      );
    }
  },
);
