/**
 * Two full `up`s at once against one project near its limit (issue 14): two engine-harness
 * processes (`node dist/test/harness/engine/cli.js up`, each with its own program and its own
 * dynamic-provider process) run test/fixtures/programs/quota as stacks "a" and "b" on one
 * sandbox host ("lc-quota", or $KVMLAB_LC_QUOTA_INSTANCE). Each stack asks for 3 servers and
 * names the project once, in `kvmlab:project` (no resource passes `project`); the project allows
 * 3 instances.
 *
 *   while both run     the project's ledger on the controller and the defined domains, sampled
 *                      every 250 ms, never count more than 3 instances
 *   after              at most 3 servers exist and the ledger holds exactly their owners (each
 *                      `…/Server/<name>/project=Default%2Frace`); the run(s) refused report
 *                      `instances: usage 3 + requested 1 exceeds limit 3`; a refused server left
 *                      no domain, folder or record
 *   destroy both       no server left, the ledger record is gone
 *
 * The harness ports the Go engine's step rules; it is not the Pulumi engine
 * (docs/engine-harness.md).
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { identityRecordName } from "../../core/identity";
import { closeHostSessions, type HostConnection } from "../../provider";
import {
  checkDomainInputs,
  checkProjectInputs,
  domainProvider,
  projectProvider,
} from "../../provider/identity";
import {
  sandboxHostConnections,
  sshCheck,
  startSandbox,
  stopSandbox,
  type SandboxStatus,
} from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_LC_QUOTA_INSTANCE ?? "lc-quota";
const KEEP = process.env.KVMLAB_LC_KEEP === "1";
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "test", "fixtures", "programs", "quota");
const CLI = path.resolve(__dirname, "..", "harness", "engine", "cli.js");
const LIMIT = 3;
const PER_STACK = 3;
const LEDGER = `/var/lib/kvmlab/records/quota-usage/${identityRecordName("Default/race")}.json`;
let status: SandboxStatus;
let hosts: HostConnection[] = [];
let stateDir = "";
const made: { provider: { delete?: (id: string, o: never) => Promise<void> }; id: string; outs: unknown }[] =
  [];
const upped = new Set<string>();

interface CliRun {
  code: number | null;
  json: { ok: boolean; errors: string[]; outputs: Record<string, unknown> } | undefined;
  stderr: string;
}

/** One engine-harness process; bounded by `timeoutMs` (killed by its own PID then). */
function engine(operation: "up" | "destroy", stack: string, timeoutMs = 420_000): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [
        CLI,
        operation,
        PROGRAM,
        "--stack",
        stack,
        "--state",
        path.join(stateDir, `${stack}.json`),
        "--config",
        `quota:sandboxInstance=${INSTANCE}`,
        "--config",
        `quota:servers=${PER_STACK}`,
        "--config",
        "kvmlab:project=race",
        "--json",
      ],
      { env: { ...process.env, PULUMI_NODEJS_TRANSPILE_ONLY: "true" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGTERM"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      let json: CliRun["json"];
      try {
        json = JSON.parse(stdout.trim().split("\n").pop() ?? "") as CliRun["json"];
      } catch {
        json = undefined;
      }
      resolve({ code, json, stderr });
    });
  });
}

before(async () => {
  status = await startSandbox(INSTANCE, 1);
  hosts = sandboxHostConnections(status);
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-quota-"));
  for (const [provider, check, raw] of [
    [domainProvider, checkDomainInputs, { domainName: "Default" }],
    [projectProvider, checkProjectInputs, { projectName: "race", quotas: { instances: LIMIT } }],
  ] as const) {
    const { inputs, failures } = check({ ...raw, hosts });
    assert.deepEqual(failures, []);
    const r = await provider.create!(inputs as never);
    made.push({ provider: provider as never, id: r.id, outs: r.outs });
  }
});

after(async () => {
  for (const s of upped) await engine("destroy", s).catch(() => undefined);
  for (const m of made.reverse()) await m.provider.delete!(m.id, m.outs as never).catch(() => undefined);
  await closeHostSessions();
  if (!KEEP) await stopSandbox(INSTANCE);
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

/** Instances in the ledger and the stacks' domains (a-s1…, b-s1…) defined on the host, read in one SSH call. */
async function sample(): Promise<{ ledger: number; domains: number; holders: string[] }> {
  const out = await sshCheck(
    status,
    hosts[0].name,
    `cat ${LEDGER} 2>/dev/null || echo '{}'; echo; echo "domains=$(virsh -c qemu:///system list --all --name | grep -cE '^[ab]-s[0-9]+$')"`,
  );
  const [json, doms] = out.trim().split(/\n(?=domains=)/);
  const rec = JSON.parse(json) as { ledger?: Record<string, { instances?: number }> };
  const ledger = rec.ledger ?? {};
  return {
    ledger: Object.values(ledger).reduce((n, e) => n + (e.instances ?? 0), 0),
    domains: Number(/domains=(\d+)/.exec(doms ?? "")?.[1] ?? "NaN"),
    holders: Object.keys(ledger).sort(),
  };
}

test(
  "two ups at once against a project near its limit never exceed it; the refused server names the quota",
  { timeout: 900_000 },
  async () => {
    upped.add("a");
    upped.add("b");
    let running = true;
    const seen: { ledger: number; domains: number }[] = [];
    const sampler = (async () => {
      // Bounded: at most 2400 samples (10 minutes at 250 ms).
      for (let i = 0; i < 2400 && running; i++) {
        seen.push(await sample().catch(() => ({ ledger: 0, domains: 0 })));
        await new Promise((r) => setTimeout(r, 250));
      }
    })();
    const [a, b] = await Promise.all([engine("up", "a"), engine("up", "b")]);
    running = false;
    await sampler;
    const runs = { a, b };
    for (const [s, r] of Object.entries(runs))
      assert.ok(r.json, `stack ${s}: no JSON result\n${r.stderr.slice(-3000)}`);
    const maxLedger = Math.max(...seen.map((x) => x.ledger));
    const maxDomains = Math.max(...seen.map((x) => x.domains));
    console.log(
      `# ${seen.length} samples: ledger max ${maxLedger} instances, domains max ${maxDomains}; a ${a.json!.ok ? "ok" : "refused"}, b ${b.json!.ok ? "ok" : "refused"}`,
    );
    for (const [s, r] of Object.entries(runs))
      console.log(
        `# stack ${s} errors:\n${r.json!.errors.map((e) => `#   ${e.split("\n").join("\n#   ")}`).join("\n")}`,
      );
    assert.ok(seen.length > 0);
    assert.ok(maxLedger <= LIMIT, `the ledger counted ${maxLedger} instances at one point`);
    assert.ok(maxDomains <= LIMIT, `${maxDomains} domains were defined at one point`);
    // 6 asked, 3 allowed: at least one run is refused, and every refusal names the quota.
    const errors = [...a.json!.errors, ...b.json!.errors];
    assert.ok(!(a.json!.ok && b.json!.ok), "both ups succeeded: the limit was not enforced");
    assert.ok(
      errors.some((e) =>
        /quota exceeded for project Default\/race: instances: usage 3 \+ requested 1 exceeds limit 3/.test(e),
      ),
      errors.join("\n"),
    );
    // The limit was reached and every granted create succeeded: exactly LIMIT servers exist (no
    // create waits behind another's slow batch: placement takes no cross-process lock since
    // issue 13, session 8), one ledger entry per server.
    assert.equal(maxLedger, LIMIT, "the ledger reached the limit");
    const end = await sample();
    assert.equal(end.domains, LIMIT, `${end.domains} servers exist, ${LIMIT} were granted`);
    assert.equal(end.ledger, end.domains, "one instance charged per server that exists");
    assert.equal(end.holders.length, end.domains);
    for (const h of end.holders)
      assert.match(h, /^quota\/[ab]\/Server\/[ab]-s[1-3]\/project=Default%2Frace$/);
    // A refused server left nothing: one instance folder (keyed by the server's UUID, so every
    // folder on this lab's host counts) and one record per defined domain.
    const left = await sshCheck(
      status,
      hosts[0].name,
      "ls /var/lib/kvmlab/instances 2>/dev/null | grep -c . ; ls /var/lib/kvmlab/records/server 2>/dev/null | grep -cE '^[ab]-s'; grep -ho '<name>[^<]*</name>' /var/lib/kvmlab/instances/*/domain.xml 2>/dev/null | tr '\\n' ' '",
    );
    const [folders, records, names] = left.trim().split("\n");
    assert.deepEqual([folders, records], [String(end.domains), String(end.domains)], `folders of: ${names}`);
  },
);

test("destroying both stacks releases every charge and leaves no server", { timeout: 600_000 }, async () => {
  const [a, b] = await Promise.all([engine("destroy", "a"), engine("destroy", "b")]);
  for (const [s, r] of Object.entries({ a, b }))
    assert.ok(r.json?.ok, `destroy ${s}: ${r.json?.errors.join("\n") ?? r.stderr.slice(-3000)}`);
  upped.clear();
  const end = await sample();
  assert.deepEqual(end, { ledger: 0, domains: 0, holders: [] });
  const rec = await sshCheck(status, hosts[0].name, `test -e ${LEDGER} && echo present || echo gone`);
  assert.equal(rec.trim(), "gone");
});
