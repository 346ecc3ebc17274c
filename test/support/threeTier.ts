/**
 * Checks of a running 3-tier lab on a sandbox, shared by the examples/three-tier and the lab
 * program lifecycle tests. Traffic only inside the sandbox's namespaces: requests and SSH
 * sessions start in the instance's "internet" namespace, every one bounded in time.
 */
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { sshCheck, sshExec, waitFor, type SandboxStatus } from "./sandbox";

/** A stack output's value, every secret in it unwrapped. */
export function plain(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === "object") {
    const o = v as Record<string, unknown>;
    if ("value" in o && "4dabf18193072939515e22adb298388d" in o) return plain(o.value);
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, plain(x)]));
  }
  return v;
}

/** Runs argv in the internet namespace, bounded; stdout, or undefined on failure. */
export function inInternet(
  status: SandboxStatus,
  argv: string[],
  timeoutSec = 8,
): { ok: boolean; stdout: string; stderr: string } {
  const r = spawnSync(
    "ip",
    ["netns", "exec", status.external.internetNetns, "timeout", String(timeoutSec), ...argv],
    { encoding: "utf8", timeout: (timeoutSec + 4) * 1000 },
  );
  return { ok: r.status === 0, stdout: (r.stdout ?? "").trim(), stderr: (r.stderr ?? "").trim() };
}

/** GET http://ip/ from the internet namespace: the body, or undefined. */
export function getFromInternet(status: SandboxStatus, ip: string, port = 80): string | undefined {
  const r = inInternet(status, ["busybox", "wget", "-qO-", `http://${ip}:${port}/`], 12);
  return r.ok ? r.stdout : undefined;
}

/** Whether a TCP connection from the internet namespace to ip:port opens (and what it reads). */
export function tcpFromInternet(
  status: SandboxStatus,
  ip: string,
  port: number,
): { ok: boolean; stdout: string } {
  return inInternet(status, ["busybox", "nc", "-w", "2", ip, String(port)], 4);
}

/** A private key in a temp file (0600) for the ssh client; removed by the caller. */
export function keyFile(privateKey: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-3t-key-"));
  const file = path.join(dir, "id");
  fs.writeFileSync(file, privateKey, { mode: 0o600 });
  return file;
}

const SSH_OPTS = [
  "-o",
  "BatchMode=yes",
  "-o",
  "StrictHostKeyChecking=no",
  "-o",
  "UserKnownHostsFile=/dev/null",
  "-o",
  "LogLevel=ERROR",
  "-o",
  "ConnectTimeout=6",
];

/** ssh root@target [through root@bastion] from the internet namespace; runs `command`. */
export function sshFromInternet(
  status: SandboxStatus,
  key: string,
  target: string,
  command: string,
  bastion?: string,
): { ok: boolean; stdout: string; stderr: string } {
  const jump =
    bastion === undefined
      ? []
      : ["-o", `ProxyCommand=ssh -i ${key} ${SSH_OPTS.join(" ")} -W %h:%p root@${bastion}`];
  return inInternet(status, ["ssh", "-i", key, ...SSH_OPTS, ...jump, `root@${target}`, command], 25);
}

/**
 * Requests through the web floating IP until both web and both WAS members have answered (at
 * most `max` requests, and for at most `windowMs` after the first answer: the tiers are autoscale
 * groups whose agents put each member in service once it answers its health check, so the second
 * member of a tier may join a few seconds after the first): every answer is
 * "web=<w> was=<a> db=<d>". Returns the members seen.
 */
export async function pathsThroughWeb(
  status: SandboxStatus,
  fip: string,
  max = 300,
  windowMs = 180_000,
): Promise<{ web: Set<string>; was: Set<string>; db: Set<string>; answers: string[] }> {
  const first = await waitFor(
    `the 3-tier chain answers on ${fip}`,
    async () => {
      const b = getFromInternet(status, fip);
      return b !== undefined && /^web=\S+ was=\S+ db=\S+$/.test(b) ? b : undefined;
    },
    { timeoutMs: 240_000, intervalMs: 2_000 },
  );
  const seen = { web: new Set<string>(), was: new Set<string>(), db: new Set<string>(), answers: [first] };
  const add = (b: string) => {
    const m = /^web=(\S+) was=(\S+) db=(\S+)$/.exec(b);
    assert.ok(m, `an answer shows the path it took: ${JSON.stringify(b)}`);
    seen.web.add(m[1]);
    seen.was.add(m[2]);
    seen.db.add(m[3]);
  };
  add(first);
  const deadline = Date.now() + windowMs;
  for (let i = 0; i < max && Date.now() < deadline && (seen.web.size < 2 || seen.was.size < 2); i++) {
    const b = getFromInternet(status, fip);
    if (b === undefined) continue;
    seen.answers.push(b);
    add(b);
    if (seen.web.size < 2 || seen.was.size < 2) await new Promise((r) => setTimeout(r, 500));
  }
  return seen;
}

/**
 * What kvmlab, libvirt and the kernel hold on each host (for "destroy leaves every host as
 * before"). With `betweenUps`, the files an autoscale agent writes as it works between `up`s
 * (`state/*`, `samples/*`, `status` under /var/lib/kvmlab/asg/<group>/: a decision it ignored,
 * a CPU sample) are left out, for "a no-change up changes nothing": the agent keeps working
 * while the test runs `up`, and its runtime files are its own, not the program's. Its
 * configuration, scripts, keys and owner files stay in the listing.
 */
export async function hostEvidence(
  status: SandboxStatus,
  opts: { betweenUps?: boolean } = {},
): Promise<Record<string, string>> {
  const agentRuntime = opts.betweenUps
    ? " ! -path '/var/lib/kvmlab/asg/*/state/*' ! -path '/var/lib/kvmlab/asg/*/samples/*' ! -path '/var/lib/kvmlab/asg/*/status'"
    : "";
  const out: Record<string, string> = {};
  for (const h of status.hosts)
    out[h.name] = await sshCheck(
      status,
      h.name,
      [
        // Lock files stay by design (flock targets: the host lock /var/lib/kvmlab/lock, the named
        // locks such as volumes.lock, and placement.lock from before session 8); everything else
        // kvmlab made must go.
        // An autoscale agent's transient files (`<file>.tmp` while it rewrites one, and the
        // member hosts' answers `stats.<host>.part`/`.rc` while it asks them: session 10) come and
        // go every interval; its lasting files (status, state/<member>, samples/<member>) count.
        `find /var/lib/kvmlab /etc/libvirt/qemu /run/kvmlab -type f ! -name '*.log' ! -name '*.lock' ! -name '*.tmp' ! -path '/var/lib/kvmlab/asg/*/stats.*.part' ! -path '/var/lib/kvmlab/asg/*/stats.*.rc' ! -path /var/lib/kvmlab/lock${agentRuntime} 2>/dev/null | sort`,
        "virsh -c qemu:///system list --all --name | sort",
        "ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort",
        "ip netns list | awk '{print $1}' | sort",
        "iptables-save 2>/dev/null | grep -c kvmlab || true",
        "ipset list -n 2>/dev/null | sort",
      ].join("; echo --; "),
      { timeoutMs: 30_000 },
    );
  return out;
}

/**
 * SSH logins each host's sshd accepted so far (from its log) from anywhere but the hosts
 * themselves: kvmlab's own sessions come from the machine running Pulumi; an autoscale group's
 * agent logs in from its controller host with its forced-command key every interval (its
 * `stats` call), which is the agent's work between `up`s, not the program's.
 */
export async function logins(status: SandboxStatus): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  const fromHosts = status.hosts.map((h) => `-e ' from ${h.address} '`).join(" ");
  for (const h of status.hosts)
    counts[h.name] = Number(
      (
        await sshCheck(
          status,
          h.name,
          `grep 'Accepted publickey' /var/log/kvmlab-sshd.log | grep -v -F ${fromHosts} | wc -l`,
          { timeoutMs: 30_000 },
        )
      ).trim(),
    );
  return counts;
}

/** The full check of a running 3-tier lab (the issue's "Done when", traffic inside the sandbox). */
export async function checkThreeTier(
  status: SandboxStatus,
  lab: {
    webFip: string;
    bastionFip: string;
    key: string;
    web: string[];
    was: string[];
    db: string;
    dbName: string;
    webNames: string[];
    wasNames: string[];
    /** Addresses of autoscale slots that are defined but not running: nothing answers there. */
    stopped?: string[];
  },
): Promise<void> {
  const seen = await pathsThroughWeb(status, lab.webFip);
  assert.deepEqual(
    [...seen.web].sort(),
    [...lab.webNames].sort(),
    `both web members serve: ${seen.answers.join(" | ")}`,
  );
  assert.deepEqual(
    [...seen.was].sort(),
    [...lab.wasNames].sort(),
    `both WAS members serve: ${seen.answers.join(" | ")}`,
  );
  assert.deepEqual([...seen.db], [lab.dbName], "the DB answers the WAS tier");

  // The DB answers only the WAS tier.
  const fromWas = sshFromInternet(status, lab.key, lab.was[0], `nc -w 3 ${lab.db} 3306`, lab.bastionFip);
  assert.ok(fromWas.ok, `ssh through the bastion to a WAS member: ${fromWas.stderr}`);
  assert.equal(fromWas.stdout, `db=${lab.dbName}`, "WAS → DB:3306 answers");
  const fromWeb = sshFromInternet(
    status,
    lab.key,
    lab.web[0],
    `nc -w 3 ${lab.db} 3306; echo rc=$?`,
    lab.bastionFip,
  );
  assert.ok(fromWeb.ok, `ssh through the bastion to a web member: ${fromWeb.stderr}`);
  assert.doesNotMatch(fromWeb.stdout, /db=/, "web → DB:3306 is refused");
  assert.doesNotMatch(tcpFromInternet(status, lab.db, 3306).stdout, /db=/, "internet → DB:3306 is refused");

  // SSH through the bastion reaches every tier; SSH from the internet reaches none.
  for (const ip of [...lab.web, ...lab.was, lab.db]) {
    const r = sshFromInternet(status, lab.key, ip, "cat /proc/sys/kernel/hostname", lab.bastionFip);
    assert.ok(r.ok && r.stdout !== "", `ssh -J bastion root@${ip}: ${r.stderr}`);
  }
  for (const ip of lab.stopped ?? []) {
    const r = sshFromInternet(status, lab.key, ip, "echo in", lab.bastionFip);
    assert.ok(!r.ok && r.stdout === "", `a stopped slot (${ip}) answers nothing`);
  }
  const bastion = sshFromInternet(status, lab.key, lab.bastionFip, "echo in");
  assert.equal(bastion.stdout, "in", `ssh to the bastion's floating IP: ${bastion.stderr}`);
  for (const ip of [lab.webFip, ...lab.web, ...lab.was, lab.db]) {
    const r = sshFromInternet(status, lab.key, ip, "echo in");
    assert.ok(!r.ok && r.stdout === "", `ssh root@${ip} from the internet is refused`);
  }
}

/**
 * Prints what a failed 3-tier run leaves on each host, bounded (30 s per host, output capped):
 * domains and their state, the tail of each guest's serial log, who holds kvmlab's lock files
 * (a lock held by a stray process is how last session's run stalled), the namespaces and the
 * haproxy/dnsmasq/keepalived processes. Never throws.
 */
export async function dumpDiagnostics(status: SandboxStatus, why: string): Promise<void> {
  const script = [
    "echo '## domains'; virsh -c qemu:///system list --all 2>&1 | head -20",
    "echo '## serial logs'; for f in $(find /var/lib/kvmlab -name 'serial*.log' -o -name console.log 2>/dev/null | head -12); do echo \"-- $f\"; tail -n 6 \"$f\" | cut -c1-200; done",
    // Autoscale groups: each agent's status and last decisions.
    'echo \'## autoscale\'; for d in /var/lib/kvmlab/asg/*/; do [ -f "$d/status" ] || continue; echo "-- $d"; head -c 800 "$d/status"; tail -n 8 "$d/decisions.log" 2>/dev/null | cut -c1-220; done',
    'echo \'## lock holders\'; for f in /var/lib/kvmlab/lock /var/lib/kvmlab/*.lock; do [ -e "$f" ] || continue; echo "-- $f"; fuser -v "$f" 2>&1 | grep -v \'Cannot stat\' | tail -n +2 | head -8; done',
    "echo '## namespaces'; ip netns list 2>&1 | head -20",
    "echo '## daemons'; ps -eo pid,comm,args 2>/dev/null | awk '$2 ~ /^(haproxy|dnsmasq|keepalived)$/' | cut -c1-200 | head -20",
  ].join("; ");
  console.log(`# diagnostics (${why})`);
  for (const h of status.hosts) {
    const r = await sshExec(status, h.name, script, { timeoutMs: 30_000 }).catch((e: Error) => ({
      code: -1,
      stdout: "",
      stderr: e.message,
    }));
    const text = `${r.stdout}${r.stderr ? `\n(stderr) ${r.stderr}` : ""}`.slice(0, 12_000);
    for (const line of `== ${h.name}\n${text}`.split("\n")) console.log(`# ${line}`);
  }
}

/** Wraps a test body: on failure, prints {@link dumpDiagnostics} before the failure. */
export function withDiagnostics(status: () => SandboxStatus, body: () => Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await body();
    } catch (err) {
      await dumpDiagnostics(
        status(),
        (err instanceof Error ? err.message : String(err)).split("\n")[0].slice(0, 200),
      );
      throw err;
    }
  };
}
