/**
 * Helpers for tests that need `kvmlab sandbox` hosts: start and stop an instance through the real
 * command line (`node bin/kvmlab.js`), run commands on a host with the system `ssh` binary and
 * strict host-key checking, fetch over HTTP from the runner, and wait with a bound.
 *
 * Every network call here goes only to addresses of the sandbox instance the caller started
 * (checked: see `assertSandboxAddress`), never anywhere else.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import * as path from "node:path";
import type { SandboxStatus } from "../../cli/sandbox/status";
import type { HostConnection } from "../../provider/host";

export type { SandboxStatus } from "../../cli/sandbox/status";

/** The compiled command line (this file runs from dist/test/support/). */
export const KVMLAB_CLI = path.resolve(__dirname, "..", "..", "..", "bin", "kvmlab.js");

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall-clock milliseconds the command took. */
  ms: number;
}

/** Runs a command with a time limit (SIGKILL when it is reached, then the promise rejects). */
export function runCommand(
  cmd: string,
  args: readonly string[],
  opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<CommandResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      const result = {
        code: code ?? 128,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        ms: Date.now() - t0,
      };
      if (timedOut) reject(new Error(`${cmd} ${args.join(" ")} did not finish within ${timeoutMs} ms`));
      else resolve(result);
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(opts.input ?? "");
  });
}

/** `kvmlab <args>` through the compiled command line. */
export function kvmlab(
  args: readonly string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<CommandResult> {
  return runCommand(process.execPath, [KVMLAB_CLI, ...args], {
    timeoutMs: opts.timeoutMs ?? 600_000,
    env: opts.env,
  });
}

/**
 * Brings up (or finds already up) sandbox `instance` with `hosts` hosts and returns its status.
 * A cold cache downloads the Debian kernel package, hence the generous default limit.
 */
export async function startSandbox(
  instance: string,
  hosts = 2,
  opts: { timeoutMs?: number } = {},
): Promise<SandboxStatus> {
  const r = await kvmlab(["sandbox", "up", "--instance", instance, "--hosts", String(hosts), "--json"], opts);
  if (r.code !== 0) {
    throw new Error(`kvmlab sandbox up --instance ${instance} failed (exit ${r.code}): ${r.stderr.trim()}`);
  }
  return JSON.parse(r.stdout) as SandboxStatus;
}

/** Removes sandbox `instance` (nothing to do if it is not up). */
/**
 * The instance's hosts as the providers take them: private keys read from their files, host
 * keys pinned (no trust on first use). Programs get the same hosts through components/hosts.ts,
 * which makes the keys Pulumi secrets; tests call the providers directly and need plain text.
 */
export function sandboxHostConnections(status: Pick<SandboxStatus, "hosts">): HostConnection[] {
  return status.hosts.map((h) => ({
    name: h.name,
    address: h.address,
    port: h.port,
    user: h.user,
    privateKey: fs.readFileSync(h.privateKeyPath, "utf8"),
    hostKey: h.hostKey,
    trustOnFirstUse: false,
    uplink: h.uplink,
    tunnelAddress: h.tunnelAddress,
  }));
}

export async function stopSandbox(instance: string, opts: { timeoutMs?: number } = {}): Promise<void> {
  const r = await kvmlab(["sandbox", "down", "--instance", instance], {
    timeoutMs: opts.timeoutMs ?? 120_000,
  });
  if (r.code !== 0) {
    throw new Error(`kvmlab sandbox down --instance ${instance} failed (exit ${r.code}): ${r.stderr.trim()}`);
  }
}

function ipToInt(ip: string): number {
  const parts = ip.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new Error(`not an IPv4 address: ${JSON.stringify(ip)}`);
  }
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split("/");
  const mask = Number(bits) === 0 ? 0 : (0xffffffff << (32 - Number(bits))) >>> 0;
  return (ipToInt(ip) & mask) === (ipToInt(base) & mask);
}

/** Throws unless `ip` is on the instance's management or external network. */
export function assertSandboxAddress(status: SandboxStatus, ip: string): void {
  if (!inCidr(ip, status.management.cidr) && !inCidr(ip, status.external.cidr)) {
    throw new Error(
      `${ip} is not an address of sandbox instance ${status.instance} (${status.management.cidr}, ${status.external.cidr}); tests only talk to their own sandbox`,
    );
  }
}

/** The ssh options that pin the host key from the instance's published known_hosts. */
export function sshArgs(status: SandboxStatus, hostName: string): string[] {
  const host = status.hosts.find((h) => h.name === hostName);
  if (host === undefined) {
    throw new Error(
      `no host ${hostName} in sandbox ${status.instance} (has ${status.hosts.map((h) => h.name).join(", ")})`,
    );
  }
  assertSandboxAddress(status, host.address);
  return [
    "-F",
    "/dev/null",
    "-i",
    host.privateKeyPath,
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    `UserKnownHostsFile=${host.knownHostsPath}`,
    "-o",
    "GlobalKnownHostsFile=/dev/null",
    "-o",
    "ConnectTimeout=10",
    "-o",
    "LogLevel=ERROR",
    "-p",
    String(host.port),
    `${host.user}@${host.address}`,
  ];
}

/**
 * Runs `command` (a shell command line on the host) on sandbox host `hostName` over SSH with
 * strict host-key checking. Resolves with the exit code and output; rejects only on a timeout.
 */
export function sshExec(
  status: SandboxStatus,
  hostName: string,
  command: string,
  opts: { input?: string; timeoutMs?: number } = {},
): Promise<CommandResult> {
  return runCommand("ssh", [...sshArgs(status, hostName), command], {
    input: opts.input,
    timeoutMs: opts.timeoutMs ?? 60_000,
  });
}

/** Like `sshExec`, but throws (with the host's stderr) unless the command exits 0; returns stdout. */
export async function sshCheck(
  status: SandboxStatus,
  hostName: string,
  command: string,
  opts: { input?: string; timeoutMs?: number } = {},
): Promise<string> {
  const r = await sshExec(status, hostName, command, opts);
  if (r.code !== 0) throw new Error(`${hostName}: "${command}" failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** One HTTP GET from the runner to an address of the sandbox; undefined when nothing answers. */
export function httpGet(
  status: SandboxStatus,
  ip: string,
  urlPath = "/",
  timeoutMs = 2_000,
  port = 80,
): Promise<{ status: number; body: string } | undefined> {
  assertSandboxAddress(status, ip);
  return new Promise((resolve) => {
    // `timeout` below only bounds idle time; this bounds the whole request (connect to last byte).
    const overall = setTimeout(() => req.destroy(), timeoutMs);
    const done = (v: { status: number; body: string } | undefined) => {
      clearTimeout(overall);
      resolve(v);
    };
    const req = http.get({ host: ip, port, path: urlPath, timeout: timeoutMs, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (b: Buffer) => chunks.push(b));
      res.on("end", () =>
        done({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }),
      );
      res.on("error", () => done(undefined));
      res.on("aborted", () => done(undefined));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => done(undefined));
  });
}

/** Polls `probe` until it returns a value other than undefined, for at most `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  opts: { timeoutMs: number; intervalMs?: number },
): Promise<T> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() >= deadline) throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 250));
  }
}

export interface TestGuest {
  /** Domain name and lab.name (letters, digits, dashes). */
  name: string;
  /** Fixed UUID, so a re-define of the same name replaces instead of failing. */
  uuid: string;
  /** Bridge on the host the NIC joins (e.g. a bridge holding the host's uplink). */
  bridge: string;
  /** Static address with prefix (e.g. 172.24.4.100/24); DHCP when omitted. */
  ipCidr?: string;
  gateway?: string;
  /** URL the guest fetches every 2 s, logging "PROBE-OK <body>" on its console. */
  probeUrl?: string;
  memoryMiB?: number;
  /** lab.role (guest-contract.md): web, was, db or bastion. */
  role?: "web" | "was" | "db" | "bastion";
  /** lab.upstream: the web's upstream, IP:PORT. */
  upstream?: string;
  /** lab.db: the WAS's database, IP:PORT. */
  db?: string;
  /** lab.sshkey: an OpenSSH public key line ("ssh-ed25519 AAAA… comment"); dropbear admits it. */
  sshPublicKey?: string;
  /** More kernel command line words, as they are (e.g. a malformed value the guest must ignore). */
  extraCmdline?: string;
  /** Disk image files on the host (qcow2), attached as vda, vdb, … in this order. */
  disks?: string[];
  /** The bridge is an Open vSwitch bridge (libvirt adds the tap as an OVS port). */
  ovs?: boolean;
  /** NIC MTU (virtio passes it to the guest), e.g. the network's. */
  mtu?: number;
}

/**
 * Minimal libvirt domain XML booting the sandbox's guest test image (direct kernel boot,
 * serial console to /var/log/kvmlab-<name>.console on the host). Rejects unsafe values.
 */
export function testGuestXml(status: SandboxStatus, g: TestGuest): string {
  const check = (field: string, value: string, re: RegExp) => {
    if (!re.test(value)) throw new Error(`testGuestXml: invalid ${field} ${JSON.stringify(value)}`);
  };
  check("name", g.name, /^[a-z][a-z0-9-]{0,30}$/);
  check("uuid", g.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  check("bridge", g.bridge, /^[A-Za-z0-9_.-]{1,15}$/);
  if (g.ipCidr !== undefined) check("ipCidr", g.ipCidr, /^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/);
  if (g.gateway !== undefined) check("gateway", g.gateway, /^\d{1,3}(\.\d{1,3}){3}$/);
  if (g.probeUrl !== undefined) {
    check("probeUrl", g.probeUrl, /^http:\/\/\d{1,3}(\.\d{1,3}){3}(:\d{1,5})?(\/[A-Za-z0-9._/-]*)?$/);
    // The guest fetches it: like every test request, it must stay inside this sandbox.
    assertSandboxAddress(status, new URL(g.probeUrl).hostname);
  }
  if (
    g.memoryMiB !== undefined &&
    !(Number.isInteger(g.memoryMiB) && g.memoryMiB >= 96 && g.memoryMiB <= 4096)
  )
    throw new Error(`testGuestXml: invalid memoryMiB ${g.memoryMiB}: give a whole number from 96 to 4096`);
  for (const p of [status.image.kernel, status.image.ramdisk]) check("image path", p, /^\/[A-Za-z0-9_./-]+$/);
  check("image cmdline", status.image.cmdline, /^[A-Za-z0-9=_.,: -]*$/);
  if (g.role !== undefined) check("role", g.role, /^(web|was|db|bastion)$/);
  for (const [field, v] of [
    ["upstream", g.upstream],
    ["db", g.db],
  ] as const) {
    if (v === undefined) continue;
    check(field, v, /^\d{1,3}(\.\d{1,3}){3}:\d{1,5}$/);
    assertSandboxAddress(status, v.split(":")[0]);
  }
  let sshKey: string | undefined;
  if (g.sshPublicKey !== undefined) {
    const [type, b64] = g.sshPublicKey.trim().split(/\s+/);
    check("sshPublicKey", `${type} ${b64}`, /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/]+=*$/);
    sshKey = `${type}:${b64}`;
  }
  if (g.extraCmdline !== undefined) check("extraCmdline", g.extraCmdline, /^[A-Za-z0-9=_.,:;/+ -]*$/);
  const disks = g.disks ?? [];
  for (const d of disks) check("disk path", d, /^\/[A-Za-z0-9_./-]+$/);
  if (disks.length > 26) throw new Error("testGuestXml: at most 26 disks");
  if (g.mtu !== undefined && !(Number.isInteger(g.mtu) && g.mtu >= 576 && g.mtu <= 9000))
    throw new Error(`testGuestXml: invalid mtu ${g.mtu}: give a whole number from 576 to 9000`);
  const net =
    (g.ipCidr !== undefined ? ` lab.ip=${g.ipCidr}` : "") +
    (g.gateway !== undefined ? ` lab.gw=${g.gateway}` : "") +
    (g.probeUrl !== undefined ? ` lab.probe=${g.probeUrl}` : "") +
    (g.role !== undefined ? ` lab.role=${g.role}` : "") +
    (g.upstream !== undefined ? ` lab.upstream=${g.upstream}` : "") +
    (g.db !== undefined ? ` lab.db=${g.db}` : "") +
    (sshKey !== undefined ? ` lab.sshkey=${sshKey}` : "") +
    (g.extraCmdline !== undefined ? ` ${g.extraCmdline}` : "");
  const diskXml = disks
    .map(
      (d, i) => `
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${d}'/>
      <target dev='vd${String.fromCharCode(97 + i)}' bus='virtio'/>
    </disk>`,
    )
    .join("");
  return `<domain type='${status.kvm ? "kvm" : "qemu"}'>
  <name>${g.name}</name>
  <uuid>${g.uuid}</uuid>
  <memory unit='MiB'>${g.memoryMiB ?? 128}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${status.image.kernel}</kernel>
    <initrd>${status.image.ramdisk}</initrd>
    <cmdline>${status.image.cmdline} lab.name=${g.name}${net}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>${diskXml}
    <interface type='bridge'>
      <source bridge='${g.bridge}'/>${g.ovs === true ? "\n      <virtualport type='openvswitch'/>" : ""}${g.mtu !== undefined ? `\n      <mtu size='${g.mtu}'/>` : ""}
      <model type='virtio'/>
      <rom bar='off'/>
    </interface>
    <serial type='file'>
      <source path='/var/log/kvmlab-${g.name}.console'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
`;
}
