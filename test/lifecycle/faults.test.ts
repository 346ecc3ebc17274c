/**
 * Fault tests on the sandbox (issue 15, "Done when"): each runs a small kvmlab program
 * (test/fixtures/programs/faults) through the engine harness, injects one fault, converges, and
 * ends with `destroy` and the hosts compared to what they were before the test.
 *
 *   up killed (SIGKILL) mid-create, then up again   converges, nothing duplicated
 *   SSH blackout on a host during up                 (iptables DROP of its sshd for 60 s, past SSH keepalive)
 *   libvirtd killed during a create                  then restarted; up converges
 *   "reboot" between two ups                         guest powered off, dnsmasq killed, its config
 *                                                    corrupted by hand, libvirtd restarted: refresh
 *                                                    reports it, up restores it
 *   two stacks at once with colliding names          the second fails naming the first's owner;
 *                                                    the first's objects are untouched
 *   two stacks placing servers at once               no host over-committed
 *
 * The sandbox instance is "flt" (or $KVMLAB_LC_FAULT_INSTANCE) with two hosts.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawn } from "node:child_process";
import { runEngine, type RunResult } from "../harness/engine/engine";
import { dhcpPaths, ipamRecordName } from "../../core/paths";
import type { IpamRecord } from "../../core/ipam";
import { recordPath } from "../../provider/host";
import { runCommand, sshCheck, startSandbox, stopSandbox, type SandboxStatus } from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_LC_FAULT_INSTANCE ?? "flt";
const KEEP = process.env.KVMLAB_LC_KEEP === "1";
// dist/test/lifecycle → repository root → the fixture program (run from source, like the CLI).
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "test", "fixtures", "programs", "faults");
const CLI = path.resolve(__dirname, "..", "harness", "engine", "cli.js");
let status: SandboxStatus;
let stateDir = "";
const live = new Set<string>();

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-faults-"));
});

after(async () => {
  for (const stack of live) await run("destroy", stack, {}).catch(() => undefined);
  if (!KEEP) await stopSandbox(INSTANCE);
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

type Config = Record<string, string>;

function configFlags(config: Config): { key: string; value: string; secret: boolean }[] {
  return Object.entries({ sandboxInstance: INSTANCE, ...config }).map(([k, value]) => ({
    key: `faults:${k}`,
    value,
    secret: false,
  }));
}

function stateFile(stack: string): string {
  return path.join(stateDir, `${stack}.json`);
}

function run(operation: "up" | "refresh" | "destroy", stack: string, config: Config): Promise<RunResult> {
  if (operation === "up") live.add(stack);
  return runEngine({
    operation,
    programDir: PROGRAM,
    stack,
    stateFile: stateFile(stack),
    config: configFlags(config),
    env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
  }).then((r) => {
    if (operation === "destroy" && r.ok) live.delete(stack);
    return r;
  });
}

function ok(r: RunResult): RunResult {
  assert.ok(r.ok, `${r.operation} failed:\n${r.errors.join("\n")}`);
  return r;
}

function ops(r: RunResult): Record<string, string> {
  return Object.fromEntries(r.steps.map((s) => [s.urn.split("::").pop() ?? "", s.op]));
}

async function on(host: string, cmd: string): Promise<string> {
  return sshCheck(status, host, cmd, { timeoutMs: 60_000 });
}

/** Runs a command in a sandbox host's network namespace from the runner (no SSH). */
async function inNetns(host: string, args: string[]): Promise<void> {
  const r = await runCommand("ip", ["netns", "exec", `kvmlab-${INSTANCE}-${host}`, ...args], {
    timeoutMs: 15_000,
  });
  if (r.code !== 0) throw new Error(`${host}: ${args.join(" ")} failed (exit ${r.code}): ${r.stderr}`);
}

/**
 * What kvmlab and libvirt keep on each host, by name (no sizes or times: a converged re-create
 * rewrites files): kvmlab's files (lock files aside), libvirt domains and their XML, network
 * namespaces, kvmlab's devices, OVS bridges, and how many qemu and dnsmasq processes run.
 */
async function hostState(): Promise<string> {
  const parts: string[] = [];
  for (const h of status.hosts) {
    parts.push(
      `== ${h.name}\n` +
        (await on(
          h.name,
          [
            "find /var/lib/kvmlab /etc/libvirt/qemu -type f ! -name '*.lock' ! -name lock ! -name '*.log' 2>/dev/null | sort",
            "echo domains: $(virsh -c qemu:///system list --all --name | sort)",
            "echo netns: $(ip netns list | awk '{print $1}' | sort)",
            "echo links: $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -vE '^(lo|eth[0-9]+|ovs-system)$' | sort)",
            "echo bridges: $(ovs-vsctl list-br 2>/dev/null | sort)",
            // The sandbox hosts share the machine's PID namespace: count only this host's (UTS).
            'me=$(readlink /proc/self/ns/uts); for p in $(pgrep -f "^(dnsmasq|qemu-system)" || true); do [ "$(readlink /proc/$p/ns/uts 2>/dev/null)" = "$me" ] && echo "process: $(tr "\\0" " " < /proc/$p/cmdline | cut -c1-160)"; done | sort; true',
          ].join("\n"),
        )),
    );
  }
  return parts.join("\n");
}

/** Asserts the hosts are as `before`, allowing processes a few seconds to exit (bounded). */
async function assertHostsAsBefore(before: string): Promise<void> {
  let now = await hostState();
  for (let i = 0; i < 10 && now !== before; i++) {
    await new Promise((r) => setTimeout(r, 1000));
    now = await hostState();
  }
  assert.equal(now, before, "the hosts are as before");
}

/** Domain names on every host (host → names). */
async function domains(): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const h of status.hosts) {
    out[h.name] = (await on(h.name, "virsh -c qemu:///system list --all --name"))
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean)
      .sort();
  }
  return out;
}

/** Asserts each named server is defined exactly once across the hosts, and nothing else with the prefix. */
async function assertServersOnce(prefix: string, names: string[]): Promise<Record<string, string>> {
  const all = await domains();
  const where: Record<string, string> = {};
  const seen: string[] = [];
  for (const [host, list] of Object.entries(all))
    for (const d of list)
      if (d.startsWith(`${prefix}s`)) {
        seen.push(d);
        where[d] = host;
      }
  assert.deepEqual(seen.sort(), [...names].sort(), `each server defined once: ${JSON.stringify(all)}`);
  return where;
}

/** Resource names recorded in a stack's state file (what a crash left). */
function stateNames(stack: string): string[] {
  if (!fs.existsSync(stateFile(stack))) return [];
  try {
    const s = JSON.parse(fs.readFileSync(stateFile(stack), "utf8")) as {
      resources: { urn: string; type: string; id?: string }[];
    };
    return s.resources
      .filter((r) => r.id)
      .map((r) => `${r.type.split(":").pop()}/${r.urn.split("::").pop()}`);
  } catch {
    return []; // being written: read again
  }
}

async function waitState(stack: string, what: string, pred: (names: string[]) => boolean, ms = 180_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (pred(stateNames(stack))) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(
    `timed out after ${ms} ms waiting for ${what} in ${stack}'s state: ${stateNames(stack).join(", ")}`,
  );
}

/**
 * Starts this host's libvirtd unless its own (by its pid file: the sandbox hosts share the
 * machine's PID namespace, so pgrep would see the other host's) runs; waits (bounded) for it.
 */
const RESTART_LIBVIRTD =
  "if ! kill -0 $(cat /run/libvirt/libvirtd.pid 2>/dev/null || echo 0) 2>/dev/null; then rm -f /run/libvirt/libvirt-sock; libvirtd -d -p /run/libvirt/libvirtd.pid </dev/null >/dev/null 2>&1; fi; i=0; while ! virsh -c qemu:///system version >/dev/null 2>&1 && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done; virsh -c qemu:///system version >/dev/null";

const hasSubnet = (names: string[]): boolean => names.some((n) => n.startsWith("Subnet/"));

/** The host holding the subnet's IPAM record and dnsmasq (the fixture's subnet of `prefix`). */
async function dhcpHostOf(prefix: string): Promise<string> {
  const file = recordPath("ipam", ipamRecordName(`${prefix}net`, `${prefix}v4`));
  for (const h of status.hosts)
    if ((await on(h.name, `[ -e ${file} ] && echo yes || true`)).trim() === "yes") return h.name;
  throw new Error(`no host holds ${file}`);
}

/** The server allocations (ids) in a subnet's IPAM record on its DHCP host. */
async function serverAllocations(prefix: string): Promise<string[]> {
  const host = await dhcpHostOf(prefix);
  const text = await on(host, `cat ${recordPath("ipam", ipamRecordName(`${prefix}net`, `${prefix}v4`))}`);
  const record = JSON.parse(text) as IpamRecord;
  return Object.values(record.allocations)
    .map((a) => a.owner)
    .filter((o) => o.startsWith("server:"))
    .sort();
}

test(
  "up killed (SIGKILL) mid-create, then up again: converges, nothing duplicated",
  { timeout: 900_000 },
  async () => {
    const before = await hostState();
    const config = { prefix: "k", servers: "2", cidr: "10.77.1.0/24" };
    live.add("kill");
    const child = spawn(
      process.execPath,
      [
        CLI,
        "up",
        PROGRAM,
        "--stack",
        "kill",
        "--state",
        stateFile("kill"),
        ...configFlags(config).flatMap((c) => ["--config", `${c.key}=${c.value}`]),
      ],
      { stdio: "ignore", detached: true, env: { ...process.env, PULUMI_NODEJS_TRANSPILE_ONLY: "true" } },
    );
    try {
      // The servers are being created once the subnet is recorded; give them a moment on the host.
      await waitState("kill", "the subnet", hasSubnet);
      await new Promise((r) => setTimeout(r, 2500));
      assert.equal(child.exitCode, null, "the up is still running when it is killed");
    } finally {
      // The whole group: the engine, the program and the provider plugin die at once.
      if (child.pid !== undefined && child.exitCode === null) process.kill(-child.pid, "SIGKILL");
    }
    await new Promise((r) =>
      child.exitCode !== null || child.signalCode !== null ? r(null) : child.once("exit", r),
    );
    const recorded = stateNames("kill");
    assert.ok(
      !recorded.some((n) => n.startsWith("Server/ks")),
      `killed before any server finished: ${recorded}`,
    );

    const again = ok(await run("up", "kill", config));
    const where = await assertServersOnce("k", ["ks1", "ks2"]);
    const allocations = await serverAllocations("k");
    assert.equal(
      allocations.length,
      2,
      `one address per server in IPAM: ${allocations.join(" ")}\n${JSON.stringify(ops(again))}`,
    );
    const third = ok(await run("up", "kill", config));
    assert.equal(
      third.counts.create + third.counts.update + third.counts.replace,
      0,
      `converged: ${JSON.stringify(ops(third))}`,
    );
    console.log(`# kill mid-create: servers ${JSON.stringify(where)}`);

    ok(await run("destroy", "kill", config));
    await assertHostsAsBefore(before);
  },
);

test(
  "SSH blackout (60 s) on a host during up: the run fails clearly or rides it out; up again converges",
  { timeout: 900_000 },
  async () => {
    const before = await hostState();
    const config = { prefix: "b", servers: "2", cidr: "10.77.2.0/24" };
    const blackedOut = status.hosts[1].name;
    const first = run("up", "black", config);
    const drop = ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"];
    try {
      await waitState("black", "the subnet", hasSubnet);
      await inNetns(blackedOut, drop);
      await new Promise((r) => setTimeout(r, 60_000));
    } finally {
      await inNetns(blackedOut, ["iptables", "-D", ...drop.slice(2)]).catch(() => undefined);
    }
    // After the blackout the run must end (fail or succeed) within a bound: SSH keepalive gives
    // a dead connection up after about 45 s and a batch times out after 120 s.
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 300_000)));
    const settled = await Promise.race([first, hung]);
    clearTimeout(timer);
    assert.ok(settled, "the up ended within 300 s after the blackout (it hung)");
    const r1 = settled;
    if (!r1.ok) {
      const text = r1.errors.join("\n");
      assert.match(
        text,
        new RegExp(`${blackedOut}|SSH|timed out`),
        `the failure names the host or SSH: ${text}`,
      );
    }
    console.log(
      `# SSH blackout of ${blackedOut} for 60 s: first up ${r1.ok ? "succeeded" : `failed: ${r1.errors.join(" | ").slice(0, 400)}`}`,
    );
    ok(await run("up", "black", config));
    await assertServersOnce("b", ["bs1", "bs2"]);
    const third = ok(await run("up", "black", config));
    assert.equal(
      third.counts.create + third.counts.update + third.counts.replace,
      0,
      `converged: ${JSON.stringify(ops(third))}`,
    );
    ok(await run("destroy", "black", config));
    await assertHostsAsBefore(before);
  },
);

test(
  "libvirtd killed during a create, then restarted: up again converges",
  { timeout: 900_000 },
  async () => {
    const before = await hostState();
    const config = { prefix: "l", servers: "2", cidr: "10.77.3.0/24" };
    const first = run("up", "virt", config);
    let r1: RunResult;
    try {
      await waitState("virt", "the subnet", hasSubnet);
      await new Promise((r) => setTimeout(r, 1000));
      for (const h of status.hosts) await on(h.name, "kill -9 $(cat /run/libvirt/libvirtd.pid)");
      await new Promise((r) => setTimeout(r, 3000));
    } finally {
      for (const h of status.hosts) await on(h.name, RESTART_LIBVIRTD);
      r1 = await first;
    }
    console.log(
      `# libvirtd killed: first up ${r1.ok ? "succeeded" : `failed: ${r1.errors.join(" | ").slice(0, 400)}`}`,
    );
    ok(await run("up", "virt", config));
    await assertServersOnce("l", ["ls1", "ls2"]);
    const third = ok(await run("up", "virt", config));
    assert.equal(
      third.counts.create + third.counts.update + third.counts.replace,
      0,
      `converged: ${JSON.stringify(ops(third))}`,
    );
    ok(await run("destroy", "virt", config));
    await assertHostsAsBefore(before);
  },
);

test(
  "a host 'rebooted' between two ups, with a hand-corrupted dnsmasq config: refresh reports it, up restores it",
  { timeout: 900_000 },
  async () => {
    const before = await hostState();
    const config = { prefix: "r", servers: "1", cidr: "10.77.4.0/24" };
    ok(await run("up", "boot", config));
    const [server] = Object.entries(await assertServersOnce("r", ["rs1"]));
    const dhcpHost = await dhcpHostOf("r");
    const paths = dhcpPaths("rnet", "rv4");
    const conf = paths.confFile;
    const goodConf = await on(dhcpHost, `cat ${conf}`);
    // The "reboot": guests off, dnsmasq gone, libvirtd restarted; and someone edits the config.
    await on(server[1], `virsh -c qemu:///system destroy ${server[0]} >/dev/null`);
    await on(dhcpHost, `kill $(cat ${paths.pidFile}); printf 'garbage line\\nuser=root\\n' > ${conf}`);
    for (const h of status.hosts)
      await on(
        h.name,
        `p=$(cat /run/libvirt/libvirtd.pid); kill -9 $p; i=0; while kill -0 $p 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; ${RESTART_LIBVIRTD}`,
      );
    const refreshed = ok(await run("refresh", "boot", config));
    const changed = ops(refreshed);
    assert.equal(changed.rs1, "update", `refresh reports the server's change: ${JSON.stringify(changed)}`);
    assert.equal(
      changed.rv4 ?? changed["rnet-rv4"],
      "update",
      `refresh reports the subnet's change: ${JSON.stringify(changed)}`,
    );
    const up = ok(await run("up", "boot", config));
    assert.ok(up.counts.update >= 2, `up restores the server and the subnet: ${JSON.stringify(ops(up))}`);
    assert.equal((await on(server[1], `virsh -c qemu:///system domstate ${server[0]}`)).trim(), "running");
    assert.equal(await on(dhcpHost, `cat ${conf}`), goodConf, "the dnsmasq config is the rendered one again");
    await on(dhcpHost, `kill -0 $(cat ${paths.pidFile})`);
    ok(await run("destroy", "boot", config));
    await assertHostsAsBefore(before);
  },
);

test(
  "two stacks at once with colliding names: the second fails naming the first's owner, the first is untouched",
  { timeout: 900_000 },
  async () => {
    const before = await hostState();
    const config = { prefix: "c", servers: "1", cidr: "10.77.5.0/24" };
    const first = run("up", "alpha", config);
    await waitState("alpha", "the image", (n) => n.some((x) => x.startsWith("Image/")));
    const second = await run("up", "beta", config);
    const r1 = ok(await first);
    assert.ok(!second.ok, "the second stack's up fails");
    const text = second.errors.join("\n");
    assert.match(text, /faults\/alpha\//, `the error names the first stack's owner: ${text}`);
    const afterBoth = await hostState();
    // The second stack's destroy removes only what it made (nothing of the first's).
    ok(await run("destroy", "beta", config));
    assert.equal(await hostState(), afterBoth, "destroying the second stack leaves the first's objects");
    const again = ok(await run("up", "alpha", config));
    assert.equal(
      again.counts.create + again.counts.update + again.counts.replace,
      0,
      `the first stack is intact: ${JSON.stringify(ops(again))}`,
    );
    await assertServersOnce("c", ["cs1"]);
    console.log(`# collision: first up ${r1.durationMs} ms; second failed with: ${text.split("\n")[0]}`);
    ok(await run("destroy", "alpha", config));
    await assertHostsAsBefore(before);
  },
);

test("two stacks placing servers at once: no host over-committed", { timeout: 900_000 }, async () => {
  const before = await hostState();
  // 8 vCPUs each: a two-CPU sandbox host (allocation ratio 4) fits exactly one; stopped, they cost no CPU.
  const cpus = Number((await on(status.hosts[0].name, "nproc")).trim());
  const vcpus = String(cpus * 4);
  const base = { servers: "2", vcpus, power: "stopped", network: "false" };
  const [p, q] = await Promise.all([
    run("up", "pstack", { ...base, prefix: "p" }),
    run("up", "qstack", { ...base, prefix: "q" }),
  ]);
  const all = await domains();
  const placed = Object.entries(all).map(
    ([h, list]) => [h, list.filter((d) => /^[pq]s\d$/.test(d))] as const,
  );
  for (const [h, list] of placed)
    assert.ok(list.length <= 1, `${h} holds at most one ${vcpus}-vCPU server: ${list}`);
  const total = placed.reduce((n, [, list]) => n + list.length, 0);
  assert.equal(total, status.hosts.length, `every host got one: ${JSON.stringify(all)}`);
  const refused = [...p.errors, ...q.errors].filter(
    (e) => e.startsWith("creating ") && /no host fits/.test(e),
  );
  assert.equal(
    refused.length,
    4 - total,
    `the rest were refused by placement: ${[...p.errors, ...q.errors].join("\n")}`,
  );
  console.log(`# concurrent placement: ${JSON.stringify(Object.fromEntries(placed))}`);
  ok(await run("destroy", "pstack", { ...base, prefix: "p" }));
  ok(await run("destroy", "qstack", { ...base, prefix: "q" }));
  await assertHostsAsBefore(before);
});
