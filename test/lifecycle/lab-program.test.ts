/**
 * The lab program (stacks/) with stacks/three-tier-sandbox.yaml through the engine harness, on a
 * sandbox instance of its own ("lc-lab", or $KVMLAB_LC_LAB_INSTANCE). The test applies a copy of
 * the shipped file with two values of its own: the instance's external network (the file is
 * written for instance index 0) and a public key whose private half it holds. Then, as for
 * examples/three-tier (test/support/threeTier.ts): the web and WAS tiers are autoscale groups
 * (min/desired 2, max 3) whose agents start two members each; the path through web and WAS, the DB only
 * from the WAS tier, SSH only through the bastion; a no-change up changes nothing and opens at
 * most one SSH connection per host; destroy leaves every host as before.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type RunResult } from "../harness/engine/engine";
import { startSandbox, stopSandbox, type SandboxStatus } from "../support/sandbox";
import { checkThreeTier, hostEvidence, withDiagnostics, logins, plain } from "../support/threeTier";

const INSTANCE = process.env.KVMLAB_LC_LAB_INSTANCE ?? "lc-lab";
const KEEP = process.env.KVMLAB_LC_KEEP === "1";
const ROOT = path.resolve(__dirname, "..", "..", "..");
const PROGRAM = path.join(ROOT, "stacks");
let status: SandboxStatus;
let dir = "";
let destroyed = false;

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-lab-"));
});

after(async () => {
  if (!destroyed && dir && !KEEP) await run("destroy").catch(() => undefined);
  if (!KEEP) await stopSandbox(INSTANCE);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function run(operation: "preview" | "up" | "destroy"): Promise<RunResult> {
  return runEngine({
    operation,
    programDir: PROGRAM,
    stack: "lc",
    stateFile: path.join(dir, "state.json"),
    config: [
      { key: "kvmlab:sandboxInstance", value: INSTANCE, secret: false },
      { key: "kvmlab-lab:lab", value: path.join(dir, "lab.yaml"), secret: false },
    ],
  });
}

function ok(r: RunResult): RunResult {
  assert.ok(r.ok, `${r.operation} failed:\n${r.errors.join("\n")}`);
  return r;
}

test(
  "lab program + three-tier-sandbox.yaml: up, the tiers behave, no-change up, destroy",
  { timeout: 1_200_000 },
  withDiagnostics(
    () => status,
    async () => {
      const key = path.join(dir, "id");
      assert.equal(spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key]).status, 0);
      const prefix = status.external.cidr.replace(/\.0\/24$/, ".");
      const text = fs
        .readFileSync(path.join(ROOT, "stacks", "three-tier-sandbox.yaml"), "utf8")
        .replace(/172\.24\.4\./g, prefix)
        .replace(
          /publicKey: ssh-ed25519 \S+ \S+/,
          `publicKey: ${fs.readFileSync(`${key}.pub`, "utf8").trim()}`,
        );
      fs.writeFileSync(path.join(dir, "lab.yaml"), text);

      const before = await hostEvidence(status);
      const l0 = await logins(status);
      ok(await run("preview"));
      const l1 = await logins(status);
      for (const h of status.hosts)
        assert.equal(l1[h.name], l0[h.name] + 1, `${h.name}: preview opens no SSH session`);

      const t0 = Date.now();
      const up = ok(await run("up"));
      console.log(
        `# lab program: up took ${((Date.now() - t0) / 1000).toFixed(1)} s (${up.counts.create} creates)`,
      );
      const o = up.outputs as Record<string, unknown>;
      const fips = plain(o.floatingIps) as Record<string, string>;
      const addr = plain(o.serverAddresses) as Record<string, string>;
      await checkThreeTier(status, {
        webFip: fips["shop-web"],
        bastionFip: fips["shop-bastion"],
        key,
        // The groups' running members (desired 2); slot 2 of each is defined and stopped.
        web: [addr["web-0"], addr["web-1"]],
        was: [addr["was-0"], addr["was-1"]],
        stopped: [addr["web-2"], addr["was-2"]],
        db: addr["db-0"],
        dbName: "db-0",
        webNames: ["web-0", "web-1"],
        wasNames: ["was-0", "was-1"],
      });
      assert.equal(plain(o.webUrl), `http://${fips["shop-web"]}/`);
      // An SSH command line for every server, every slot of the groups included.
      assert.deepEqual(Object.keys(plain(o.sshCommands) as object).sort(), [
        "bastion",
        "db-0",
        "was-0",
        "was-1",
        "was-2",
        "web-0",
        "web-1",
        "web-2",
      ]);

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
        assert.ok(l3[h.name] - l2[h.name] <= 2, `${h.name}: a no-change up opens at most one SSH connection`);
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
