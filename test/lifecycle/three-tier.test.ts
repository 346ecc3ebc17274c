/**
 * examples/three-tier through the engine harness on a sandbox instance of its own ("lc-three",
 * or $KVMLAB_LC_THREE_INSTANCE), six real guests (2 web, 2 WAS, DB, bastion) with their tier roles;
 * web and WAS are autoscale groups (min/desired 2, max 3: slot 2 of each is defined, stopped):
 *
 *   preview            of a fresh stack: no SSH login on any host
 *   up                 from the internet namespace, requests to the web floating IP show both web
 *                      and both WAS members serving and the DB answering; WAS → DB answers, web →
 *                      DB and internet → DB are refused; SSH through the bastion reaches every
 *                      tier; SSH to any tier from the internet is refused
 *   up (no change)     every resource "same", at most one SSH login per host, nothing on any host
 *                      changed (records, instances, domains, devices, namespaces, rules)
 *   destroy            every host as it was before up
 *
 * Prints the up time (for the benchmark, see test/bench/threeTier.ts).
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type RunResult } from "../harness/engine/engine";
import { startSandbox, stopSandbox, type SandboxStatus } from "../support/sandbox";
import { checkThreeTier, hostEvidence, withDiagnostics, keyFile, logins, plain } from "../support/threeTier";

const INSTANCE = process.env.KVMLAB_LC_THREE_INSTANCE ?? "lc-three";
const KEEP = process.env.KVMLAB_LC_KEEP === "1";
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "examples", "three-tier");
let status: SandboxStatus;
let stateDir = "";
let destroyed = false;

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-three-"));
});

after(async () => {
  if (!destroyed && stateDir && !KEEP) await run("destroy").catch(() => undefined);
  if (!KEEP) await stopSandbox(INSTANCE);
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

function run(operation: "preview" | "up" | "destroy"): Promise<RunResult> {
  return runEngine({
    operation,
    programDir: PROGRAM,
    stack: "dev",
    stateFile: path.join(stateDir, "state.json"),
    config: [{ key: "kvmlab:sandboxInstance", value: INSTANCE, secret: false }],
    env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
  });
}

function ok(r: RunResult): RunResult {
  assert.ok(r.ok, `${r.operation} failed:\n${r.errors.join("\n")}`);
  return r;
}

test(
  "three-tier example: up from a clean sandbox, the tiers behave, no-change up, destroy",
  { timeout: 1_200_000 },
  withDiagnostics(
    () => status,
    async () => {
      const before = await hostEvidence(status);
      const l0 = await logins(status);
      ok(await run("preview"));
      const l1 = await logins(status);
      for (const h of status.hosts)
        assert.equal(
          l1[h.name],
          l0[h.name] + 1,
          `${h.name}: preview opens no SSH session (only this check's own)`,
        );

      const t0 = Date.now();
      const up = ok(await run("up"));
      console.log(
        `# three-tier example: up took ${((Date.now() - t0) / 1000).toFixed(1)} s (${up.counts.create} creates)`,
      );
      const o = up.outputs as Record<string, unknown>;
      // Every slot of each group (max 3); the first two run (desired 2).
      const addresses = plain(o.addresses) as { web: string[]; was: string[]; db: string; bastion: string };
      assert.equal(addresses.web.length, 3);
      assert.equal(addresses.was.length, 3);
      const key = keyFile(plain(o.sshPrivateKey) as string);
      const ssh = plain(o.sshCommands) as Record<string, string>;
      assert.equal(ssh.db, `ssh -o ProxyJump=root@${plain(o.bastionAddress)} root@${addresses.db}`);
      assert.equal(
        ssh["web-2"],
        `ssh -o ProxyJump=root@${plain(o.bastionAddress)} root@${addresses.web[2]}`,
        "an SSH command line for every slot",
      );
      try {
        await checkThreeTier(status, {
          webFip: plain(o.webFloatingIp) as string,
          bastionFip: plain(o.bastionAddress) as string,
          key,
          web: addresses.web.slice(0, 2),
          was: addresses.was.slice(0, 2),
          stopped: [addresses.web[2], addresses.was[2]],
          db: addresses.db,
          dbName: "db",
          webNames: ["web-0", "web-1"],
          wasNames: ["was-0", "was-1"],
        });
      } finally {
        fs.rmSync(path.dirname(key), { recursive: true, force: true });
      }

      const steady = await hostEvidence(status, { betweenUps: true });
      const l2 = await logins(status);
      const again = ok(await run("up"));
      const l3 = await logins(status);
      assert.deepEqual(
        again.steps.filter((s) => s.op !== "same").map((s) => `${s.op} ${s.urn}`),
        [],
        "a no-change up changes nothing",
      );
      for (const h of status.hosts)
        assert.ok(
          l3[h.name] - l2[h.name] <= 2,
          `${h.name}: a no-change up opens at most one SSH connection (${l3[h.name] - l2[h.name] - 1})`,
        );
      assert.deepEqual(
        await hostEvidence(status, { betweenUps: true }),
        steady,
        "a no-change up runs no mutating command",
      );

      ok(await run("destroy"));
      destroyed = true;
      assert.deepEqual(await hostEvidence(status), before, "destroy leaves every host as it was");
    },
  ),
);
