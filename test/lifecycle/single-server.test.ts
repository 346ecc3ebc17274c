/**
 * examples/single-server through the engine harness (real cmd/run, real dynamic-provider
 * plugin, the example's own index.ts through ts-node exactly as the Pulumi CLI runs it) on a
 * sandbox instance of its own ("lc-single", or $KVMLAB_LC_SINGLE_INSTANCE):
 *
 *   preview            plans creates and touches no host (sshd logs no login)
 *   up                 the guest answers HTTP at serverIp from the runner
 *   up (no change)     every resource "same", no SSH login on any host (sshd log), and no
 *                      host-side change (kvmlab records, instance folders, libvirt domain XML:
 *                      names, sizes and mtimes)
 *   flavor=m1.small    update in place: same UUID and IP, 196608 KiB in virsh dominfo
 *   host=<other>       live migration: still answers, gone from the old host
 *   destroy            no domain, disk, bridge, qdhcp namespace (so no dnsmasq), image or
 *                      record on any host
 *
 * The harness ports the Go engine's step rules; it is not the Pulumi engine
 * (docs/engine-harness.md).
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type RunResult } from "../harness/engine/engine";
import { dhcpPaths } from "../../core/paths";
import {
  httpGet,
  sshCheck,
  startSandbox,
  stopSandbox,
  waitFor,
  type SandboxStatus,
} from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_LC_SINGLE_INSTANCE ?? "lc-single";
const KEEP = process.env.KVMLAB_LC_KEEP === "1";
// dist/test/lifecycle → repository root → examples/single-server (run from source, like the CLI).
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "examples", "single-server");
let status: SandboxStatus;
let stateDir = "";
let destroyed = false;

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-single-"));
});

after(async () => {
  if (!destroyed && stateDir) await run("destroy").catch(() => undefined);
  if (!KEEP) await stopSandbox(INSTANCE);
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

function run(
  operation: "preview" | "up" | "destroy",
  config: Record<string, string> = {},
): Promise<RunResult> {
  return runEngine({
    operation,
    programDir: PROGRAM,
    stack: "lc",
    stateFile: path.join(stateDir, "state.json"),
    config: [
      { key: "kvmlab:sandboxInstance", value: INSTANCE, secret: false },
      ...Object.entries(config).map(([key, value]) => ({ key, value, secret: false })),
    ],
    // Type checking is the build's job (npm run build, tsc -p examples/single-server).
    env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
  });
}

function ok(r: RunResult): RunResult {
  assert.ok(r.ok, `${r.operation} failed:\n${r.errors.join("\n")}`);
  return r;
}

function out(r: RunResult, key: string): string {
  const v = r.outputs[key];
  assert.equal(typeof v, "string", `output ${key} is ${JSON.stringify(v)}`);
  return v as string;
}

async function on(host: string, cmd: string): Promise<string> {
  return sshCheck(status, host, cmd, { timeoutMs: 30_000 });
}

/** SSH logins each host's sshd accepted so far (from its log). */
async function logins(): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const h of status.hosts) {
    counts[h.name] = Number(
      (await on(h.name, "grep -c 'Accepted publickey' /var/log/kvmlab-sshd.log || true")).trim(),
    );
  }
  return counts;
}

/** What kvmlab and libvirt keep on each host: paths, sizes, mtimes (taken over SSH, which itself logs one login). */
async function hostEvidence(): Promise<string> {
  const parts: string[] = [];
  for (const h of status.hosts) {
    parts.push(
      `${h.name}\n` +
        (await on(
          h.name,
          "find /var/lib/kvmlab/records /var/lib/kvmlab/instances /var/lib/kvmlab/dhcp /etc/libvirt/qemu -type f ! -name '*.log' ! -name '*.leases' -printf '%p %s %T@\\n' 2>/dev/null | sort; virsh -c qemu:///system list --all --uuid | sort",
        )),
    );
  }
  return parts.join("\n");
}

async function answers(ip: string): Promise<string> {
  return waitFor(`HTTP from ${ip}`, async () => (await httpGet(status, ip, "/"))?.body, {
    timeoutMs: 30_000,
    intervalMs: 300,
  });
}

test(
  "single-server: preview, up, no-change up, resize, live migration, destroy",
  { timeout: 900_000 },
  async () => {
    const loginsBefore = await logins();
    const p = ok(await run("preview"));
    assert.equal(p.counts.create, 9, `preview plans every resource: ${JSON.stringify(p.counts)}`);
    assert.deepEqual(
      await logins(),
      { ...Object.fromEntries(Object.entries(loginsBefore).map(([k, v]) => [k, v + 1])) },
      "preview opens no SSH session on any host (only this check's own login)",
    );

    const up = ok(await run("up"));
    assert.equal(up.counts.create, 9);
    const ip = out(up, "serverIp");
    const host1 = out(up, "serverHost");
    const uuid = out(up, "serverUuid");
    assert.match(out(up, "consoleUrl"), /^vnc:\/\/10\.\d+\.\d+\.\d+:59\d\d$/);
    assert.equal((await answers(ip)).trim(), "hello from web1");

    // No change: same everywhere, no SSH login at all, nothing touched on any host.
    const evidence = await hostEvidence();
    const loginsSteady = await logins();
    const same = ok(await run("up"));
    assert.deepEqual(same.counts, { create: 0, same: up.counts.create, update: 0, replace: 0, delete: 0 });
    const loginsAfter = await logins();
    for (const h of status.hosts) {
      assert.equal(
        loginsAfter[h.name],
        loginsSteady[h.name] + 1,
        `${h.name}: a no-change up logs in to no host (only this check's own login)`,
      );
    }
    const evidenceAfter = await hostEvidence();
    assert.equal(evidenceAfter, evidence, "a no-change up changes nothing on any host");

    // Resize: an update, same UUID and address, new memory.
    const small = ok(await run("up", { flavor: "m1.small" }));
    const serverStep = small.steps.find((s) => s.urn.endsWith("::web1") && s.type.endsWith("kvmlab:Server"));
    assert.equal(serverStep?.op, "update");
    assert.ok(
      serverStep?.changes.some(
        (c) => c.path === "changePlan" && /cold resize m1\.tiny .* -> m1\.small/.test(String(c.new)),
      ),
      "the plan is visible in the step's changes",
    );
    assert.equal(out(small, "serverUuid"), uuid);
    assert.equal(out(small, "serverIp"), ip);
    assert.equal(out(small, "serverHost"), host1);
    assert.match(await on(host1, "virsh -c qemu:///system dominfo web1"), /Max memory:\s+196608 KiB/);
    assert.equal((await answers(ip)).trim(), "hello from web1");

    // Live migration to the other host.
    const host2 = status.hosts.map((h) => h.name).find((n) => n !== host1) as string;
    const t0 = Date.now();
    const moved = ok(await run("up", { flavor: "m1.small", host: host2 }));
    const migrationUpMs = Date.now() - t0;
    assert.equal(
      moved.steps.find((s) => s.urn.endsWith("::web1") && s.type.endsWith("kvmlab:Server"))?.op,
      "update",
    );
    assert.equal(out(moved, "serverHost"), host2);
    assert.equal(out(moved, "serverIp"), ip);
    assert.match(await on(host2, "virsh -c qemu:///system domstate web1"), /running/);
    assert.equal(
      (await on(host1, "virsh -c qemu:///system list --all --name | grep -cx web1 || true")).trim(),
      "0",
    );
    assert.equal((await answers(ip)).trim(), "hello from web1");
    const state = JSON.parse(fs.readFileSync(path.join(stateDir, "state.json"), "utf8")) as {
      resources?: { type: string; outputs: Record<string, unknown> }[];
    };
    const migratedMs = state.resources?.find((r) => r.type.endsWith("kvmlab:Server"))?.outputs
      .lastMigrationMs;
    process.stdout.write(
      `# live migration ${host1} -> ${host2}: ${String(migratedMs)} ms (whole up: ${migrationUpMs} ms)\n`,
    );

    // The subnet's dnsmasq (on the first host, its DHCP host) must be gone after destroy.
    const dhcpHost = status.hosts[0].name;
    // Keyed by network + subnet (issue 15): network "ext", subnet "ext-v4".
    const dnsmasqPid = (await on(dhcpHost, `cat ${dhcpPaths("ext", "ext-v4").pidFile}`)).trim();
    assert.match(dnsmasqPid, /^\d+$/);
    const gone = ok(await run("destroy"));
    destroyed = true;
    assert.equal(gone.counts.delete, up.counts.create);
    for (const h of status.hosts) {
      const left = await on(
        h.name,
        [
          "virsh -c qemu:///system list --all --name | grep -v '^$' || true",
          "ls /var/lib/kvmlab/instances /var/lib/kvmlab/images /var/lib/kvmlab/dhcp 2>/dev/null | grep -v ':$' | grep -v '^$' || true",
          "find /var/lib/kvmlab/records -type f 2>/dev/null || true",
          "ip -o link show type bridge | grep -o 'kvlb-[0-9a-f]*' || true",
          "ip netns list | grep qdhcp || true",
        ].join("; "),
      );
      assert.equal(left.trim(), "", `${h.name} has leftovers:\n${left}`);
    }
    const alive = await on(
      dhcpHost,
      `p=${dnsmasqPid}; if [ -r /proc/$p/stat ] && [ "$(awk '{print $3}' /proc/$p/stat)" != Z ] && grep -q dnsmasq /proc/$p/comm; then echo alive; fi`,
    );
    assert.equal(alive.trim(), "", `dnsmasq ${dnsmasqPid} still runs after destroy`);
  },
);
