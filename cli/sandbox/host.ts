/**
 * Building the sandbox on this machine: the fabric namespace with its three bridges, the runner's
 * legs, the "internet" namespace, and the hosts (network + mount + UTS namespaces with private
 * /etc, /var, /root overlays, a private /run and /tmp, and their own daemons).
 *
 * Every value reaching `ip` or a script comes from the plan (validated instance name, computed
 * addresses); scripts take them as positional parameters, never interpolated.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { DAEMON_ENV, SandboxError, run } from "./exec";
import type { HostPlan, SandboxPlan } from "./plan";

export const HOST_DAEMONS = ["virtlogd", "libvirtd", "ovsdb-server", "ovs-vswitchd", "sshd"] as const;

async function ipBatch(netns: string | undefined, lines: string[]): Promise<void> {
  const args = netns === undefined ? ["-batch", "-"] : ["-n", netns, "-batch", "-"];
  await run("ip", args, { input: lines.join("\n") + "\n" });
}

/** The fabric namespace ("the physical switches": bridges mgmt, ext, tun) and the runner's legs. */
export async function buildFabric(plan: SandboxPlan): Promise<void> {
  const f = plan.fabricNetns;
  await run("ip", ["netns", "add", f]);
  await ipBatch(f, [
    "link set lo up",
    "link add mgmt type bridge",
    "link add ext type bridge",
    "link add tun type bridge",
    "link set tun mtu 9000",
    "link set mgmt up",
    "link set ext up",
    "link set tun up",
  ]);
  const r = plan.rootLinks;
  const rf = plan.runnerFabricLinks;
  await ipBatch(undefined, [
    `link add ${r.mgmt} type veth peer name ${rf.mgmt} netns ${f}`,
    `link add ${r.ext} type veth peer name ${rf.ext} netns ${f}`,
    `addr add ${plan.mgmt.runnerAddress}/24 dev ${r.mgmt}`,
    `addr add ${plan.external.runnerAddress}/24 dev ${r.ext}`,
    `link set ${r.mgmt} up`,
    `link set ${r.ext} up`,
  ]);
  await ipBatch(f, [`link set ${rf.mgmt} master mgmt up`, `link set ${rf.ext} master ext up`]);
}

const INTERNET_CGI = `#!/bin/sh
# The client address as the internet sees it (after any SNAT), as plain IPv4.
a=\${REMOTE_ADDR#[}
a=\${a%]}
# CRLF line ends: strict HTTP clients (Node's parser) refuse bare LF in headers.
printf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' "\${a#::ffff:}"
`;

/** The "internet": a namespace on the external fabric at the gateway address, serving HTTP on :80. */
export async function buildInternet(plan: SandboxPlan): Promise<number> {
  const i = plan.internetNetns;
  await run("ip", ["netns", "add", i]);
  await ipBatch(plan.fabricNetns, [
    `link add ${plan.internetFabricLink} type veth peer name eth0 netns ${i}`,
    `link set ${plan.internetFabricLink} master ext up`,
  ]);
  await ipBatch(i, ["link set lo up", `addr add ${plan.external.gateway}/24 dev eth0`, "link set eth0 up"]);
  const www = path.join(plan.internetDir, "www");
  fs.mkdirSync(path.join(www, "cgi-bin"), { recursive: true });
  fs.writeFileSync(path.join(www, "index.html"), "hello from the internet\n");
  fs.writeFileSync(path.join(www, "health"), "ok\n");
  fs.writeFileSync(path.join(www, "cgi-bin", "ip"), INTERNET_CGI, { mode: 0o755 });
  // nsenter, not `ip netns exec`: the latter makes a mount namespace whose copies of other
  // instances' namespace files would keep those alive after their `down`.
  const child = spawn(
    "nsenter",
    [`--net=/run/netns/${i}`, "--", "/bin/busybox", "httpd", "-f", "-p", "80", "-h", www],
    {
      detached: true,
      stdio: "ignore",
      env: DAEMON_ENV,
    },
  );
  child.unref();
  if (child.pid === undefined) throw new SandboxError("could not start the internet namespace's HTTP server");
  return child.pid;
}

function write(file: string, text: string, mode = 0o644): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text, { mode });
  fs.chmodSync(file, mode);
}

/** The text of an /etc/passwd-style file with an entry for `name` added (with a free id) if missing. */
function withAccount(file: string, name: string, entry: (id: number) => string): string {
  const text = fs.readFileSync(file, "utf8");
  const lines = text.split("\n").filter((l) => l !== "");
  if (lines.some((l) => l.startsWith(`${name}:`))) return text;
  const used = new Set(lines.map((l) => Number(l.split(":")[2])));
  let id = 64055;
  while (used.has(id)) id++;
  return [...lines, entry(id)].join("\n") + "\n";
}

export interface HostFiles {
  authorizedKey: string;
  labPrivateKey: string;
  knownHosts: string;
  capsCacheDir: string;
}

/** Files the host sees in its private /etc, /var and /root (written into the overlay upper dirs). */
export function prepareHostDirs(plan: SandboxPlan, host: HostPlan, files: HostFiles): void {
  const up = (p: string) => path.join(host.dir, "upper", p);
  for (const d of ["etc", "var", "root"]) {
    fs.mkdirSync(path.join(host.dir, "upper", d), { recursive: true });
    fs.mkdirSync(path.join(host.dir, "work", d), { recursive: true });
  }
  fs.mkdirSync(path.join(host.dir, "tmp"), { recursive: true });
  fs.chmodSync(path.join(host.dir, "tmp"), 0o1777);
  const hostsLines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"];
  for (const h of plan.hosts) hostsLines.push(`${h.mgmtAddress} ${h.name}`);
  // libvirtd resolves its built-in QEMU user before reading qemu.conf, so the account must exist
  // even though qemu.conf makes QEMU run as root (libvirt-daemon-system would create it).
  write(
    up("etc/passwd"),
    withAccount(
      "/etc/passwd",
      "libvirt-qemu",
      (id) => `libvirt-qemu:x:${id}:${id}:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin`,
    ),
  );
  write(
    up("etc/group"),
    withAccount("/etc/group", "libvirt-qemu", (id) => `libvirt-qemu:x:${id}:`),
  );
  write(up("etc/hostname"), `${host.name}\n`);
  write(up("etc/hosts"), hostsLines.join("\n") + "\n");
  write(up("etc/machine-id"), host.hostUuid.replace(/-/g, "") + "\n", 0o444);
  write(
    up("etc/libvirt/libvirtd.conf"),
    [
      "# kvmlab sandbox host: no SMBIOS here, so the host UUID is set; no polkit, so root-only sockets.",
      `host_uuid = "${host.hostUuid}"`,
      'auth_unix_ro = "none"',
      'auth_unix_rw = "none"',
      'unix_sock_rw_perms = "0700"',
      'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
      "",
    ].join("\n"),
  );
  write(
    up("etc/libvirt/qemu.conf"),
    [
      "# kvmlab sandbox host: QEMU runs as root without SELinux/AppArmor labels or cgroups.",
      'user = "root"',
      'group = "root"',
      "dynamic_ownership = 0",
      "remember_owner = 0",
      'security_driver = "none"',
      "cgroup_controllers = [ ]",
      "",
    ].join("\n"),
  );
  write(
    up("etc/ssh/kvmlab_sshd_config"),
    [
      "# kvmlab sandbox host: key-only root login on the management address.",
      "Port 22",
      `ListenAddress ${host.mgmtAddress}`,
      "HostKey /etc/ssh/kvmlab_host_ed25519_key",
      "PidFile /run/sshd.pid",
      "AuthorizedKeysFile /etc/ssh/lab_authorized_keys",
      "PermitRootLogin prohibit-password",
      "PubkeyAuthentication yes",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      "UseDNS no",
      "MaxStartups 64:30:128",
      "MaxSessions 64",
      "AcceptEnv LANG LC_*",
      "Subsystem sftp /usr/lib/openssh/sftp-server",
      "",
    ].join("\n"),
  );
  write(up("etc/ssh/kvmlab_host_ed25519_key"), fs.readFileSync(host.hostKeyPath, "utf8"), 0o600);
  write(up("etc/ssh/kvmlab_host_ed25519_key.pub"), fs.readFileSync(`${host.hostKeyPath}.pub`, "utf8"));
  write(up("etc/ssh/lab_authorized_keys"), files.authorizedKey);
  // Hosts reach each other by name with the lab key (live migration over qemu+ssh).
  write(up("root/.ssh/id_ed25519"), files.labPrivateKey, 0o600);
  write(up("root/.ssh/known_hosts"), files.knownHosts);
  fs.chmodSync(up("root/.ssh"), 0o700);
  const caps = up("var/cache/libvirt/qemu/capabilities");
  fs.mkdirSync(caps, { recursive: true });
  if (fs.existsSync(files.capsCacheDir)) {
    for (const f of fs.readdirSync(files.capsCacheDir)) {
      if (f.endsWith(".xml")) fs.copyFileSync(path.join(files.capsCacheDir, f), path.join(caps, f));
    }
  }
}

/** Runs inside the host's new mount + UTS namespaces (and its network namespace): $1 name, $2 host dir. */
const HOST_START_SCRIPT = `set -eu
name=$1
dir=$2
hostname "$name"
umount -l /sys
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
for d in etc var root; do
  mount -t overlay "kvmlab-$d" -o "lowerdir=/$d,upperdir=$dir/upper/$d,workdir=$dir/work/$d" "/$d"
done
mount --bind "$dir/tmp" /tmp
# Detach everything under /run first: copies of other namespaces' files would keep them alive.
for m in $(awk '$2 ~ "^/run/" { print $2 }' /proc/self/mounts | sort -r); do umount -l "$m"; done
if mountpoint -q /run; then umount -l /run; fi
mount -t tmpfs -o mode=0755,nosuid,nodev kvmlab-run /run
mkdir -p /run/libvirt /run/openvswitch /run/sshd /run/netns /run/lock \\
  /var/log/libvirt /var/log/openvswitch /etc/openvswitch
chmod 0755 /run/sshd
# Start from empty libvirt and kvmlab state even if this machine has its own (the overlays'
# lower layers are the machine's /etc and /var): hosts must only show what was made on them.
rm -f /etc/libvirt/qemu/*.xml /etc/libvirt/qemu/autostart/*.xml \\
  /etc/libvirt/qemu/networks/*.xml /etc/libvirt/qemu/networks/autostart/*.xml \\
  /etc/libvirt/storage/*.xml /etc/libvirt/storage/autostart/*.xml
rm -rf /var/lib/kvmlab

virtlogd -d -p /run/libvirt/virtlogd.pid </dev/null >/dev/null 2>&1
libvirtd -d -p /run/libvirt/libvirtd.pid </dev/null >/dev/null 2>&1
rm -f /etc/openvswitch/conf.db /etc/openvswitch/.conf.db.~lock~
ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server /etc/openvswitch/conf.db --remote=punix:/run/openvswitch/db.sock \\
  --pidfile=/run/openvswitch/ovsdb-server.pid --detach --no-chdir \\
  --log-file=/var/log/openvswitch/ovsdb-server.log </dev/null >/dev/null 2>&1
ovs-vsctl --no-wait init
# The userspace datapath loses TCP checksums without this, and it must be set before vswitchd starts.
ovs-vsctl --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true \\
  "external_ids:system-id=$name" "external_ids:hostname=$name"
ovs-vswitchd unix:/run/openvswitch/db.sock --pidfile=/run/openvswitch/ovs-vswitchd.pid --detach \\
  --no-chdir --log-file=/var/log/openvswitch/ovs-vswitchd.log </dev/null >/dev/null 2>&1
/usr/sbin/sshd -f /etc/ssh/kvmlab_sshd_config -E /var/log/kvmlab-sshd.log </dev/null >/dev/null 2>&1

wait_for() {
  i=0
  while ! test "$1" "$2"; do
    i=$((i + 1))
    if [ "$i" -gt 150 ]; then
      echo "$3 did not start within 15 s; its log ($4):" >&2
      tail -n 5 "$4" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.1
  done
}
wait_for -S /run/libvirt/libvirt-sock libvirtd /var/log/libvirt/libvirtd.log
wait_for -s /run/libvirt/virtlogd.pid virtlogd /var/log/libvirt/virtlogd.log
wait_for -s /run/sshd.pid sshd /var/log/kvmlab-sshd.log
echo "pid virtlogd $(cat /run/libvirt/virtlogd.pid)"
echo "pid libvirtd $(cat /run/libvirt/libvirtd.pid)"
echo "pid ovsdb-server $(cat /run/openvswitch/ovsdb-server.pid)"
echo "pid ovs-vswitchd $(cat /run/openvswitch/ovs-vswitchd.pid)"
echo "pid sshd $(cat /run/sshd.pid)"
`;

/** Creates the host's network namespace and NICs (eth0 mgmt, eth1 external, eth2 tunnel). */
export async function buildHostNetwork(plan: SandboxPlan, host: HostPlan): Promise<void> {
  const h = host.netns;
  await run("ip", ["netns", "add", h]);
  const l = host.fabricLinks;
  await ipBatch(plan.fabricNetns, [
    `link add ${l.mgmt} type veth peer name eth0 netns ${h}`,
    `link add ${l.ext} type veth peer name eth1 netns ${h}`,
    `link add ${l.tun} mtu 9000 type veth peer name eth2 mtu 9000 netns ${h}`,
    `link set ${l.mgmt} master mgmt up`,
    `link set ${l.ext} master ext up`,
    `link set ${l.tun} master tun up`,
  ]);
  await ipBatch(h, [
    "link set lo up",
    `addr add ${host.mgmtAddress}/24 dev eth0`,
    "link set eth0 up",
    "link set eth1 up",
    `addr add ${host.tunnelAddress}/24 dev eth2`,
    "link set eth2 up",
  ]);
}

/** Enters the host's namespaces to run a command (after `startHost` bound them). */
export function hostCommand(host: HostPlan, cmd: string[]): [string, string[]] {
  return [
    "nsenter",
    [`--net=/run/netns/${host.netns}`, `--mount=${host.mntNsFile}`, `--uts=${host.utsNsFile}`, "--", ...cmd],
  ];
}

/** Creates the host's mount and UTS namespaces, mounts its private folders, starts its daemons. */
export async function startHost(host: HostPlan): Promise<Record<string, number>> {
  for (const f of [host.mntNsFile, host.utsNsFile]) fs.writeFileSync(f, "");
  const res = await run(
    "unshare",
    [
      `--mount=${host.mntNsFile}`,
      `--uts=${host.utsNsFile}`,
      "--propagation",
      "private",
      "--",
      "nsenter",
      `--net=/run/netns/${host.netns}`,
      "--",
      "/bin/sh",
      "-c",
      HOST_START_SCRIPT,
      "kvmlab-host",
      host.name,
      host.dir,
    ],
    { timeoutMs: 60_000 },
  );
  const pids: Record<string, number> = {};
  for (const line of res.stdout.split("\n")) {
    const m = /^pid (\S+) (\d+)$/.exec(line.trim());
    if (m) pids[m[1]] = Number(m[2]);
  }
  for (const d of HOST_DAEMONS) {
    if (pids[d] === undefined) throw new SandboxError(`${host.name}: ${d} did not report a PID`);
  }
  return pids;
}

/**
 * Makes libvirtd probe its QEMU binaries now (about 4 s each under TCG, once: the result is cached
 * for later hosts and runs, so `virsh capabilities` answers at once) and reports whether guests
 * can use KVM.
 */
export async function probeQemu(host: HostPlan): Promise<boolean> {
  const [cmd, args] = hostCommand(host, ["virsh", "-q", "-c", "qemu:///system", "capabilities"]);
  const caps = await run(cmd, args, { timeoutMs: 180_000 });
  // libvirt reports KVM whenever /dev/kvm opens, but without the CPU's virtualisation flags guests
  // stall (seen on Firecracker VMs): require both.
  const flags = fs.readFileSync("/proc/cpuinfo", "utf8");
  return /<domain type=['"]kvm['"]/.test(caps.stdout) && /^flags\s*:.*\b(vmx|svm)\b/m.test(flags);
}

/** Copies libvirt's QEMU capability cache out of a host into the sandbox cache. */
export function saveCapsCache(host: HostPlan, capsCacheDir: string): number {
  const src = path.join(host.dir, "upper", "var", "cache", "libvirt", "qemu", "capabilities");
  if (!fs.existsSync(src)) return 0;
  fs.mkdirSync(capsCacheDir, { recursive: true });
  let n = 0;
  for (const f of fs.readdirSync(src)) {
    if (!f.endsWith(".xml")) continue;
    const tmp = path.join(capsCacheDir, `.${f}.${process.pid}`);
    fs.copyFileSync(path.join(src, f), tmp);
    fs.renameSync(tmp, path.join(capsCacheDir, f));
    n++;
  }
  return n;
}

/** Waits (bounded) until the host's sshd answers with its banner on the management address. */
export function waitForSsh(address: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const attempt = (): Promise<boolean> =>
    new Promise((resolve) => {
      const sock = net.connect({ host: address, port: 22 });
      const done = (ok: boolean) => {
        sock.destroy();
        resolve(ok);
      };
      sock.setTimeout(1_000, () => done(false));
      sock.once("data", (b: Buffer) => done(b.toString("latin1").startsWith("SSH-")));
      sock.once("error", () => done(false));
    });
  return (async () => {
    while (Date.now() < deadline) {
      if (await attempt()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new SandboxError(`sshd at ${address}:22 did not answer within ${timeoutMs / 1000} s`);
  })();
}

/** Creates an ed25519 key pair at `file` (and `file.pub`) unless it exists; the private key is 0600. */
export async function ensureKey(file: string, comment: string): Promise<void> {
  if (fs.existsSync(file) && fs.existsSync(`${file}.pub`)) {
    fs.chmodSync(file, 0o600);
    return;
  }
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.rmSync(file, { force: true });
  fs.rmSync(`${file}.pub`, { force: true });
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file]);
  fs.chmodSync(file, 0o600);
}
