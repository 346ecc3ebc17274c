/**
 * `kvmlab sandbox` end to end on this machine, with its own instances ("itest-sandbox",
 * "itest-rollback"), so it can run while other tests or a user's own sandbox are up.
 *
 * Proves: bad input is refused before anything is built; a failed `up` leaves nothing behind;
 * `up` gives hosts that answer SSH with strict host-key checking against the published
 * known_hosts; the hosts are independent (hostname, libvirt, OVS, namespaces); a domain defined
 * over SSH from the guest test image answers HTTP from the runner and powers off on ACPI
 * shutdown; a second `up` changes nothing; `down` leaves no namespace, process, link or mount.
 * Does not prove anything about the provider layer (other integration tests do that).
 * All traffic goes to the sandbox's own addresses; every wait is bounded.
 */
import { after, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { main } from "../../cli/sandbox";
import { MAX_HOSTS, MAX_INDEX, planSandbox } from "../../cli/sandbox/plan";
import { readSandboxStatus, sandboxStatusPath } from "../../cli/sandbox/status";
import {
  httpGet,
  kvmlab,
  runCommand,
  sshCheck,
  sshExec,
  startSandbox,
  stopSandbox,
  testGuestXml,
  waitFor,
  type SandboxStatus,
} from "../support/sandbox";

const INSTANCE = "itest-sandbox";
const ROLLBACK_INSTANCE = "itest-rollback";
const notRoot = typeof process.getuid === "function" && process.getuid() !== 0;
const skip = notRoot ? "needs root (the sandbox creates namespaces and mounts)" : false;

let status: SandboxStatus | undefined;
const timings: Record<string, number> = {};

after(async () => {
  if (notRoot) return;
  if (process.env.KVMLAB_KEEP_SANDBOX === "1") return;
  await stopSandbox(INSTANCE);
  await stopSandbox(ROLLBACK_INSTANCE);
  if (Object.keys(timings).length > 0) console.log(`sandbox timings (ms): ${JSON.stringify(timings)}`);
});

async function captureMain(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = console.log;
  const error = console.error;
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  try {
    const code = await main(argv);
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

/** What of an instance exists on this machine: namespaces, root links, mounts, runtime folder. */
async function leftovers(instance: string, index: number | undefined): Promise<string[]> {
  const found: string[] = [];
  const netns = await runCommand("ip", ["netns", "list"]);
  for (const line of netns.stdout.split("\n")) {
    if (line.startsWith(`kvmlab-${instance}-`)) found.push(`netns ${line.split(" ")[0]}`);
  }
  if (index !== undefined) {
    const links = await runCommand("ip", ["-o", "link", "show"]);
    for (const l of [`kvlab${index}-mgmt`, `kvlab${index}-ext`]) {
      if (links.stdout.includes(` ${l}@`) || links.stdout.includes(` ${l}:`)) found.push(`link ${l}`);
    }
  }
  const runDir = path.dirname(sandboxStatusPath(instance));
  for (const line of fs.readFileSync("/proc/mounts", "utf8").split("\n")) {
    const target = line.split(" ")[1];
    if (target !== undefined && (target === runDir || target.startsWith(`${runDir}/`)))
      found.push(`mount ${target}`);
  }
  if (fs.existsSync(runDir)) found.push(`folder ${runDir}`);
  return found;
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

test("bad input is refused with the field and the fix, before anything is built", async () => {
  const zero = await captureMain(["up", "--hosts", "0", "--instance", "itest-never"]);
  assert.equal(zero.code, 2);
  assert.match(zero.err, /invalid --hosts 0: give a whole number from 1 to 16/);
  const word = await captureMain(["up", "--hosts", "two"]);
  assert.equal(word.code, 2);
  assert.match(word.err, /invalid --hosts "two"/);
  const inject = await captureMain(["up", "--instance", "a;rm -rf /"]);
  assert.equal(inject.code, 2);
  assert.match(inject.err, /invalid sandbox instance name "a;rm -rf \/": use 1-24 lower-case letters/);
  const noAction = await captureMain(["--instance", "x"]);
  assert.equal(noAction.code, 2);
  assert.match(noAction.err, /give an action: up, status or down/);
  assert.throws(() => sandboxStatusPath("../etc"), /invalid sandbox instance name/);
  assert.equal(fs.existsSync(path.dirname(sandboxStatusPath("itest-never"))), false);
});

test("every index gives link names of at most 15 characters and ranges no other index uses", () => {
  const seen = new Set<string>();
  for (let i = 0; i <= MAX_INDEX; i++) {
    const p = planSandbox("a-24-character-instance0".slice(0, 24), i, MAX_HOSTS);
    const links = [
      p.rootLinks.mgmt,
      p.rootLinks.ext,
      p.internetFabricLink,
      ...p.hosts.flatMap((h) => Object.values(h.fabricLinks)),
    ];
    for (const l of links) assert.ok(l.length <= 15, `${l} fits IFNAMSIZ`);
    for (const key of [p.rootLinks.mgmt, p.rootLinks.ext, p.mgmt.cidr, p.tunnel.cidr, p.external.cidr]) {
      assert.equal(seen.has(key), false, `${key} is unique to index ${i}`);
      seen.add(key);
    }
    assert.equal(new Set(p.hosts.map((h) => h.mgmtAddress)).size, MAX_HOSTS);
    assert.equal(new Set(p.hosts.map((h) => h.hostUuid)).size, MAX_HOSTS);
  }
  const p = planSandbox("default", 3, 2);
  assert.deepEqual(
    [
      p.mgmt.runnerAddress,
      p.hosts[1].mgmtAddress,
      p.hosts[1].tunnelAddress,
      p.external.gateway,
      p.external.runnerAddress,
    ],
    ["10.255.3.1", "10.255.3.12", "10.254.3.12", "172.24.7.1", "172.24.7.254"],
  );
  assert.equal(planSandbox("default", 3, 2).hosts[0].hostUuid, p.hosts[0].hostUuid, "host UUIDs are stable");
  assert.throws(() => planSandbox("default", MAX_INDEX + 1, 2), /out of range/);
});

test("not root: up and down stop at once with one line naming the command to run", async () => {
  const getuid = process.getuid;
  process.getuid = () => 1000;
  try {
    const upRes = await captureMain(["up", "--instance", "itest-never", "--hosts", "3"]);
    assert.equal(upRes.code, 1);
    assert.equal(
      upRes.err,
      "kvmlab sandbox: must run as root (it creates network namespaces, mounts and daemons); run: sudo npx kvmlab sandbox up --instance itest-never --hosts 3",
    );
    const downRes = await captureMain(["down", "--instance", "itest-never"]);
    assert.equal(downRes.code, 1);
    assert.equal(
      downRes.err,
      "kvmlab sandbox: must run as root; run: sudo npx kvmlab sandbox down --instance itest-never",
    );
  } finally {
    process.getuid = getuid;
  }
  assert.equal(fs.existsSync(path.dirname(sandboxStatusPath("itest-never"))), false, "nothing was built");
});

test("status of an instance that is not up exits 1 and says how to start it", async () => {
  const r = await captureMain(["status", "--instance", "itest-never"]);
  assert.equal(r.code, 1);
  assert.match(
    r.err,
    /instance "itest-never" is not up; start it with: kvmlab sandbox up --instance itest-never/,
  );
  assert.equal(readSandboxStatus("itest-never"), undefined);
});

test("a failed up rolls back: no namespace, link, mount, process or folder is left", { skip }, async () => {
  await stopSandbox(ROLLBACK_INSTANCE);
  const r = await kvmlab(["sandbox", "up", "--instance", ROLLBACK_INSTANCE], {
    env: { ...process.env, KVMLAB_SANDBOX_FAIL_AT: "hv2: daemons" },
  });
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /failing after step "hv2: daemons"/);
  assert.match(
    r.stdout,
    /hv1: daemons: virtlogd \d+, libvirtd \d+/,
    "hv1 was fully built before the failure",
  );
  assert.match(r.stdout, /rolled back: nothing of instance "itest-rollback" is left/);
  const index = /this machine kvlab(\d+)-mgmt/.exec(r.stdout)?.[1];
  assert.ok(index !== undefined, `fabric step names the runner links: ${r.stdout}`);
  const pids = [...r.stdout.matchAll(/(?:virtlogd|libvirtd|ovsdb-server|ovs-vswitchd|sshd) (\d+)/g)].map(
    (m) => Number(m[1]),
  );
  assert.ok(pids.length >= 10, `both hosts reported daemon PIDs: ${pids.join(",")}`);
  assert.deepEqual(
    pids.filter((p) => alive(p)),
    [],
    "no daemon of the failed instance survives",
  );
  assert.deepEqual(await leftovers(ROLLBACK_INSTANCE, Number(index)), []);
});

test("up builds hosts and publishes their status", { skip }, async () => {
  await stopSandbox(INSTANCE);
  const t0 = Date.now();
  status = await startSandbox(INSTANCE, 2);
  timings.up = Date.now() - t0;
  assert.equal(status.instance, INSTANCE);
  assert.deepEqual(
    status.hosts.map((h) => h.name),
    ["hv1", "hv2"],
  );
  for (const h of status.hosts) {
    assert.equal(h.port, 22);
    assert.equal(h.user, "root");
    assert.equal(h.uplink, "eth1");
    assert.match(h.address, /^10\.255\.\d+\.1[12]$/);
    assert.match(h.tunnelAddress, /^10\.254\.\d+\.1[12]$/);
    assert.match(h.hostKey, /^ssh-ed25519 AAAA\S+$/);
    assert.equal(fs.statSync(h.privateKeyPath).mode & 0o777, 0o600, "private key is 0600");
    assert.ok(fs.readFileSync(h.knownHostsPath, "utf8").includes(`${h.address} ${h.hostKey}`));
  }
  assert.match(status.external.cidr, /^172\.24\.\d+\.0\/24$/);
  assert.ok(fs.statSync(status.image.kernel).size > 10 * 1024 * 1024, "vmlinux is an uncompressed kernel");
  assert.ok(fs.statSync(status.image.ramdisk).size > 100 * 1024);
  assert.deepEqual(readSandboxStatus(INSTANCE), status, "status.json is what up printed");
  // The shape issue 2 publishes (more keys are allowed): every required key, with its type.
  const str = (v: unknown, what: string) =>
    assert.ok(typeof v === "string" && v !== "", `${what} is a string`);
  for (const h of status.hosts) {
    for (const k of [
      "name",
      "address",
      "user",
      "privateKeyPath",
      "knownHostsPath",
      "uplink",
      "tunnelAddress",
    ])
      str((h as unknown as Record<string, unknown>)[k], `hosts[].${k}`);
    assert.equal(typeof h.port, "number");
  }
  for (const k of ["cidr", "gateway", "runnerAddress"] as const) str(status.external[k], `external.${k}`);
  for (const k of ["kernel", "ramdisk"] as const) str(status.image[k], `image.${k}`);

  const json = await kvmlab(["sandbox", "status", "--json", "--instance", INSTANCE]);
  assert.equal(json.code, 0, json.stderr);
  assert.deepEqual(JSON.parse(json.stdout), status);
  const human = await kvmlab(["sandbox", "status", "--instance", INSTANCE]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, new RegExp(`sandbox "${INSTANCE}" is up: 2 hosts`));
  assert.match(human.stdout, /hv2\s+10\.255\.\d+\.12:22/);
});

test(
  "every host answers SSH with strict host-key checking against the published known_hosts",
  { skip },
  async () => {
    assert.ok(status);
    const machineIds = new Set<string>();
    for (const h of status.hosts) {
      const out = await sshCheck(status, h.name, "hostname; virsh -q hostname; cat /etc/machine-id");
      const [hostname, virshHostname, machineId] = out.trim().split("\n");
      assert.equal(hostname, h.name);
      assert.equal(virshHostname, h.name);
      machineIds.add(machineId);
    }
    assert.equal(machineIds.size, status.hosts.length, "every host has its own machine-id");

    // The same connection with a known_hosts that has another key must be refused.
    const wrong = path.join(path.dirname(sandboxStatusPath(INSTANCE)), "itest-wrong-known-hosts");
    fs.writeFileSync(wrong, `${status.hosts[0].address} ${status.hosts[1].hostKey}\n`);
    const bad = { ...status, hosts: status.hosts.map((h) => ({ ...h, knownHostsPath: wrong })) };
    const refused = await sshExec(bad, "hv1", "true", { timeoutMs: 20_000 });
    fs.rmSync(wrong);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /host key|HOST IDENTIFICATION/i);
  },
);

test("hosts are independent: own libvirt, OVS database, namespaces and host UUID", { skip }, async () => {
  assert.ok(status);
  await sshCheck(
    status,
    "hv1",
    "ovs-vsctl add-br br-itest -- set bridge br-itest datapath_type=netdev && ip netns add itest-ns",
  );
  const hv1 = await sshCheck(
    status,
    "hv1",
    "ovs-vsctl list-br; ip netns list; virsh -q capabilities | grep -m1 '<uuid>'",
  );
  const hv2 = await sshCheck(
    status,
    "hv2",
    "ovs-vsctl list-br; ip netns list; virsh -q capabilities | grep -m1 '<uuid>'",
  );
  assert.match(hv1, /^br-itest$/m);
  assert.match(hv1, /^itest-ns/m);
  assert.doesNotMatch(hv2, /br-itest|itest-ns/);
  const uuid = (s: string) => /<uuid>([^<]+)<\/uuid>/.exec(s)?.[1];
  assert.ok(uuid(hv1) && uuid(hv2));
  assert.notEqual(uuid(hv1), uuid(hv2));
  await sshCheck(status, "hv1", "ovs-vsctl del-br br-itest && ip netns delete itest-ns");
});

let guestPid = 0;

test("a domain defined over SSH from the test image answers HTTP from the runner", { skip }, async () => {
  assert.ok(status);
  const ip = status.external.allocationPool.start;
  const xml = testGuestXml(status, {
    name: "itest-web",
    uuid: "0b7e5d2c-6a8f-4e31-9c47-5f2d1e0a9b13",
    bridge: "br-ex",
    ipCidr: `${ip}/24`,
    gateway: status.external.gateway,
    probeUrl: `http://${status.external.gateway}/`,
  });
  await sshCheck(
    status,
    "hv1",
    "ip link add br-ex type bridge && ip link set eth1 master br-ex && ip link set br-ex up",
  );
  const t0 = Date.now();
  await sshCheck(status, "hv1", "virsh -q define /dev/stdin && virsh -q start itest-web", { input: xml });
  const health = await waitFor(
    "the guest's /health over the external network",
    async () => {
      const r = await httpGet(status!, ip, "/health", 1_000);
      return r?.status === 200 ? r : undefined;
    },
    { timeoutMs: 120_000, intervalMs: 200 },
  );
  timings.guestDefineStartToHttp = Date.now() - t0;
  assert.equal(health.body.trim(), "ok");
  const hello = await httpGet(status, ip, "/");
  assert.equal(hello?.body.trim(), "hello from itest-web");

  const serial = await sshCheck(status, "hv1", "cat /var/log/kvmlab-itest-web.console");
  assert.match(serial, new RegExp(`LAB-READY name=itest-web ip=${ip.replace(/\./g, "\\.")} mac=52:54:00:`));
  // The guest sees the runner's own address on the external network (no NAT in between) …
  const seen = await httpGet(status, ip, "/cgi-bin/ip");
  assert.equal(seen?.body.trim(), status.external.runnerAddress);
  // … and reaches the "internet" namespace at the gateway address, as does the runner.
  const internet = await httpGet(status, status.external.gateway, "/");
  assert.equal(internet?.body.trim(), "hello from the internet");
  await waitFor(
    "the guest's probe of the internet namespace",
    async () => {
      const log = await sshCheck(status!, "hv1", "cat /var/log/kvmlab-itest-web.console");
      return log.includes("PROBE-OK hello from the internet") ? true : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 500 },
  );
  const lists = await Promise.all(
    status.hosts.map((h) => sshCheck(status!, h.name, "virsh -q list --all --name")),
  );
  assert.match(lists[0], /^itest-web$/m);
  assert.doesNotMatch(lists[1], /itest-web/, "hv2 does not see hv1's domain");
  const qemuPid = Number((await sshCheck(status, "hv1", "cat /run/libvirt/qemu/itest-web.pid")).trim());
  const rss = fs.readFileSync(`/proc/${qemuPid}/status`, "utf8").match(/^VmRSS:\s+(\d+) kB/m)?.[1];
  timings.guestQemuRssKiB = Number(rss);

  // ACPI shutdown powers the guest off.
  const t1 = Date.now();
  await sshCheck(status, "hv1", "virsh -q shutdown itest-web");
  await waitFor(
    "the guest to power off after virsh shutdown",
    async () => {
      const r = await sshExec(status!, "hv1", "virsh -q domstate itest-web");
      return r.stdout.trim() === "shut off" ? true : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 300 },
  );
  timings.acpiShutdown = Date.now() - t1;
  assert.equal(alive(qemuPid), false);

  // Leave one running for `down` to remove.
  await sshCheck(status, "hv1", "virsh -q start itest-web");
  guestPid = Number((await sshCheck(status, "hv1", "cat /run/libvirt/qemu/itest-web.pid")).trim());
  assert.ok(alive(guestPid));
});

/** CPU time (ns) a domain on hv1 has used so far, from libvirt. */
async function cpuTimeNs(domain: string): Promise<number> {
  const out = await sshCheck(status!, "hv1", `virsh -q domstats --cpu-total ${domain}`);
  const m = /cpu\.time=(\d+)/.exec(out);
  assert.ok(m, `domstats of ${domain} has cpu.time: ${out}`);
  return Number(m[1]);
}

test(
  "guest roles: web → WAS → database, CPU burn, SSH with the key only (and through a bastion), disks",
  { skip },
  async () => {
    assert.ok(status);
    const st = status;
    // Addresses after the first guest's, on the external network br-ex (built by the test above).
    const pool = st.external.allocationPool.start.split(".").map(Number);
    const addr = (k: number) => [...pool.slice(0, 3), pool[3] + k].join(".");
    const [dbIp, wasIp, webIp, bastionIp] = [addr(1), addr(2), addr(3), addr(4)];
    // Disk images on hv1 (its /tmp is private).
    await sshCheck(
      st,
      "hv1",
      "rm -rf /tmp/itest-guest && mkdir -m 700 /tmp/itest-guest && cd /tmp/itest-guest && " +
        "qemu-img create -q -f qcow2 vda.qcow2 64M && qemu-img create -q -f qcow2 vdb.qcow2 32M",
    );
    // A key for the guests and another they must refuse, on this machine; SSH and raw TCP run
    // inside the sandbox's "internet" namespace (on the external network, like the guests).
    const keys = fs.mkdtempSync(path.join(os.tmpdir(), "itest-guest-"));
    for (const k of ["key", "other"]) {
      const r = await runCommand("ssh-keygen", [
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "itest",
        "-f",
        path.join(keys, k),
      ]);
      assert.equal(r.code, 0, r.stderr);
    }
    const pub = fs.readFileSync(path.join(keys, "key.pub"), "utf8").trim();
    const inet = (cmd: string, timeoutMs = 90_000) =>
      runCommand("ip", ["netns", "exec", st.external.internetNetns, "sh", "-c", cmd], { timeoutMs });
    const guests = [
      {
        name: "itest-gdb",
        ip: dbIp,
        role: "db",
        disks: ["/tmp/itest-guest/vda.qcow2", "/tmp/itest-guest/vdb.qcow2"],
      },
      { name: "itest-gwas", ip: wasIp, role: "was", db: `${dbIp}:3306` },
      { name: "itest-gweb", ip: webIp, role: "web", upstream: `${wasIp}:8080`, sshPublicKey: pub },
      // Two malformed values the guest must ignore (with a log line) and still boot.
      {
        name: "itest-gbastion",
        ip: bastionIp,
        role: "bastion",
        sshPublicKey: pub,
        extraCmdline: "lab.upstream=300.1.1.1:80 lab.db=1.2.3.4:99999",
      },
    ] as const;
    for (const [i, g] of guests.entries()) {
      const xml = testGuestXml(st, {
        ...g,
        uuid: `0b7e5d2c-6a8f-4e31-9c47-5f2d1e0a9c2${i}`,
        bridge: "br-ex",
        ipCidr: `${g.ip}/24`,
        gateway: st.external.gateway,
        disks: "disks" in g ? [...g.disks] : undefined,
      });
      await sshCheck(st, "hv1", `virsh -q define /dev/stdin && virsh -q start ${g.name}`, { input: xml });
    }
    const t0 = Date.now();
    for (const g of guests) {
      await waitFor(
        `${g.name}'s /health`,
        async () => ((await httpGet(st, g.ip, "/health", 1_000))?.status === 200 ? true : undefined),
        { timeoutMs: 180_000, intervalMs: 300 },
      );
    }
    timings.roleGuestsToHttp = Date.now() - t0;
    // httpd answers before dropbear is up: LAB-READY comes after the SSH server (and LAB-SSH).
    for (const g of guests) {
      await waitFor(
        `LAB-READY on ${g.name}'s console`,
        async () => {
          const log = await sshCheck(st, "hv1", `cat /var/log/kvmlab-${g.name}.console`);
          return log.includes(`LAB-READY name=${g.name} `) ? true : undefined;
        },
        { timeoutMs: 120_000, intervalMs: 500 },
      );
    }

    // The chain: the web fetches the WAS, the WAS reads the database's line.
    const chain = await httpGet(st, webIp, "/", 15_000);
    assert.equal(chain?.status, 200, chain?.body);
    assert.equal(chain?.body.trim(), "web=itest-gweb was=itest-gwas db=itest-gdb");
    const was = await httpGet(st, wasIp, "/", 15_000, 8080);
    assert.equal(was?.body.trim(), "was=itest-gwas db=itest-gdb");
    // The other port of a role guest stays the plain test guest.
    assert.equal((await httpGet(st, webIp, "/", 2_000, 8080))?.body.trim(), "hello from itest-gweb");
    assert.equal((await httpGet(st, wasIp, "/"))?.body.trim(), "hello from itest-gwas");
    const dbLine = await inet(`timeout 10 socat -T5 - TCP:${dbIp}:3306 </dev/null`);
    assert.equal(dbLine.stdout.trim(), "db=itest-gdb", dbLine.stderr);

    // Malformed values: ignored with a log line, the guest still comes up.
    const bastionLog = await sshCheck(st, "hv1", "cat /var/log/kvmlab-itest-gbastion.console");
    assert.match(bastionLog, /lab: ignoring malformed lab\.upstream/);
    assert.match(bastionLog, /lab: ignoring malformed lab\.db/);
    assert.match(bastionLog, /LAB-READY name=itest-gbastion/);

    // Burn: the web's CPU time rises well above its idle rate, and stops rising after ?stop.
    const sample = async (ms: number) => {
      const a = await cpuTimeNs("itest-gweb");
      const t = Date.now();
      await new Promise((r) => setTimeout(r, ms));
      return ((await cpuTimeNs("itest-gweb")) - a) / 1e6 / (Date.now() - t);
    };
    const idle = await sample(3_000);
    const burn = await httpGet(st, webIp, "/cgi-bin/burn?seconds=30", 5_000);
    assert.equal(burn?.body.trim(), "burning 30");
    const burning = await sample(3_000);
    assert.equal((await httpGet(st, webIp, "/cgi-bin/burn?stop", 5_000))?.body.trim(), "stopped");
    const after = await sample(3_000);
    timings.burnCpuShareIdle = Math.round(idle * 1000);
    timings.burnCpuShareBurning = Math.round(burning * 1000);
    timings.burnCpuShareStopped = Math.round(after * 1000);
    assert.ok(burning > 0.3 && burning > 2 * idle, `burning uses CPU: idle ${idle}, burning ${burning}`);
    assert.ok(after < burning / 2, `?stop stops it: burning ${burning}, after ${after}`);
    assert.equal((await httpGet(st, webIp, "/cgi-bin/burn?seconds=601", 5_000))?.status, 400);

    // SSH: host keys pinned from the guests' LAB-SSH lines.
    const hostKeys: string[] = [];
    for (const g of [guests[2], guests[3]]) {
      const log = await sshCheck(st, "hv1", `cat /var/log/kvmlab-${g.name}.console`);
      const key = /LAB-SSH port=22 hostkey=(ssh-ed25519 \S+)/.exec(log)?.[1];
      assert.ok(key, `${g.name} logged its SSH host key`);
      hostKeys.push(`${g.ip} ${key}`);
    }
    fs.writeFileSync(path.join(keys, "known_hosts"), hostKeys.join("\n") + "\n");
    const opts = (key: string) =>
      `-F /dev/null -i ${keys}/${key} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes ` +
      `-o UserKnownHostsFile=${keys}/known_hosts -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=20`;
    const direct = await inet(`timeout 60 ssh ${opts("key")} root@${webIp} 'hostname; id -u'`);
    assert.equal(direct.stdout.trim(), "itest-gweb\n0", direct.stderr);
    const jumped = await inet(
      `timeout 90 ssh ${opts("key")} -o ProxyCommand='ssh ${opts("key")} -W %h:%p root@${bastionIp}' root@${webIp} hostname`,
    );
    assert.equal(
      jumped.stdout.trim(),
      "itest-gweb",
      `the bastion forwards TCP to the web's SSH: ${jumped.stderr}`,
    );
    const refused = await inet(`timeout 60 ssh ${opts("other")} root@${webIp} true`);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /Permission denied \(publickey\)/);
    const noKey = await inet(`timeout 20 socat -T5 - TCP:${dbIp}:22 </dev/null`);
    assert.notEqual(noKey.code, 0, "a guest without lab.sshkey runs no SSH server");
    assert.match(noKey.stderr, /refused/i);
    fs.rmSync(keys, { recursive: true, force: true });

    // Disks: both attached disks listed; a token written to vdb reads back.
    const disks = await httpGet(st, dbIp, "/cgi-bin/disks", 5_000);
    assert.match(disks?.body ?? "", /^vda 131072$/m);
    assert.match(disks?.body ?? "", /^vdb 65536$/m);
    const write = await httpGet(st, dbIp, "/cgi-bin/disk?dev=vdb&op=write&data=itest42", 10_000);
    assert.equal(write?.body.trim(), "wrote itest42");
    assert.equal((await httpGet(st, dbIp, "/cgi-bin/disk?dev=vdb&op=read", 10_000))?.body.trim(), "itest42");
    const onDisk = await sshCheck(st, "hv1", "qemu-io -r -U -c 'read -v 0 8' /tmp/itest-guest/vdb.qcow2");
    assert.match(onDisk, /69 74 65 73 74 34 32 0a/, "the token is in the disk image itself");
    assert.equal((await httpGet(st, dbIp, "/cgi-bin/disk?dev=..%2Fvda&op=read", 5_000))?.status, 400);

    // Without its database the WAS (and so the web) answers 502 with the error.
    await sshCheck(st, "hv1", "virsh -q destroy itest-gdb");
    const broken = await httpGet(st, webIp, "/", 30_000);
    assert.equal(broken?.status, 502);
    assert.match(broken?.body ?? "", /web=itest-gweb: upstream http:\/\/[\d.]+:8080\/ failed/);
    for (const g of guests)
      await sshCheck(st, "hv1", `virsh -q destroy ${g.name} 2>/dev/null; virsh -q undefine ${g.name}`);
  },
);

test("a second up changes nothing and says so", { skip }, async () => {
  assert.ok(status);
  const before = fs.readFileSync(sandboxStatusPath(INSTANCE), "utf8");
  const r = await kvmlab(["sandbox", "up", "--instance", INSTANCE]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /instance "itest-sandbox" is already up \(2 hosts\); nothing changed/);
  assert.equal(fs.readFileSync(sandboxStatusPath(INSTANCE), "utf8"), before);
  const moreHosts = await kvmlab(["sandbox", "up", "--instance", INSTANCE, "--hosts", "3"]);
  assert.equal(moreHosts.code, 1);
  assert.match(moreHosts.stderr, /already up with 2 hosts, not 3; to change it run: kvmlab sandbox down/);
  for (const h of status.hosts)
    for (const pid of Object.values(h.daemons)) assert.ok(alive(pid), `pid ${pid} still runs`);
});

test("down leaves no namespace, process, link or mount behind, and is safe twice", { skip }, async () => {
  assert.ok(status);
  const state = JSON.parse(
    fs.readFileSync(path.join(path.dirname(sandboxStatusPath(INSTANCE)), "state.json"), "utf8"),
  );
  const pids = [
    ...status.hosts.flatMap((h) => Object.values(h.daemons)),
    ...(Object.values(state.pids) as number[]),
    ...(guestPid > 0 ? [guestPid] : []),
  ];
  assert.ok(pids.every(alive), "everything runs before down");
  const t0 = Date.now();
  const r = await kvmlab(["sandbox", "down", "--instance", INSTANCE], { timeoutMs: 120_000 });
  timings.down = Date.now() - t0;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /is down; everything removed/);
  assert.deepEqual(pids.filter(alive), [], "no process of the instance survives");
  assert.deepEqual(await leftovers(INSTANCE, status.index), []);
  assert.equal(readSandboxStatus(INSTANCE), undefined);

  const again = await kvmlab(["sandbox", "down", "--instance", INSTANCE]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /is not up; nothing to do/);
  const st = await kvmlab(["sandbox", "status", "--instance", INSTANCE]);
  assert.equal(st.code, 1);
});
