/**
 * Identity and quotas against two `kvmlab sandbox` hosts (the first is the controller) (instance "itest-id", or
 * $KVMLAB_ITEST_ID_INSTANCE), reached only over SSH.
 *
 * Proves: domain, project (with a child), user, group and assignments land as records on the
 * controller; effective roles read back from those records (via the group, inherited to the
 * child, implied down to reader); a second resource with the same domain/name is refused; a
 * password is found nowhere on the host (files under /var/lib/kvmlab, /etc, /tmp, /run, /var/log) nor in any process's
 * arguments on this machine while the user is created and updated, and the record holds a
 * verifiable scrypt hash; changing the password is an update that writes a new hash; the 11th
 * (stopped) server of a project with the default quota fails naming `instances`, usage and
 * limit, leaving no domain, folder, record or reservation; a resize over `cores` is refused and
 * changes nothing; two processes reserving at once
 * never exceed a limit; `kvmlab quota show` prints usage against limits; delete leaves no
 * identity or quota record.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { renderServer } from "../../components/server";
import { effectiveRoles } from "../../core/identity";
import { closeHostSessions, runChecked, sftpPut, type HostConnection } from "../../provider";
import {
  checkDomainInputs,
  checkGroupInputs,
  checkProjectInputs,
  checkRoleAssignmentInputs,
  checkUserInputs,
  diffUser,
  domainProvider,
  groupProvider,
  identityModel,
  projectProvider,
  readAllIdentity,
  roleAssignmentProvider,
  userProvider,
  verifyPassword,
  type UserOutputs,
} from "../../provider/identity";
import { readQuota, releaseQuota, reserveQuota } from "../../provider/quota";
import { checkServerInputs, serverProvider, type ServerInputs } from "../../provider/server";
import {
  kvmlab,
  runCommand,
  sandboxHostConnections,
  sshCheck,
  startSandbox,
  stopSandbox,
  type SandboxStatus,
} from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_ITEST_ID_INSTANCE ?? "itest-id";
const KEEP = process.env.KVMLAB_ITEST_KEEP === "1";
const SECRET = `pw-${process.pid}-Zq8rT4uVw1`;
const SECRET2 = `pw2-${process.pid}-Lm3nB6vCx9`;
let status: SandboxStatus;
let hosts: HostConnection[] = [];
/** Everything created, newest last, deleted in reverse by after(). */
const made: { provider: { delete?: (id: string, o: never) => Promise<void> }; id: string; outs: unknown }[] =
  [];

type Prov = {
  check?: unknown;
  create?: (i: never) => Promise<{ id: string; outs?: unknown }>;
  delete?: (id: string, o: never) => Promise<void>;
};

async function create<O>(
  provider: Prov,
  check: (n: Record<string, unknown>) => { inputs: Record<string, unknown>; failures: unknown[] },
  raw: Record<string, unknown>,
): Promise<O> {
  const { inputs, failures } = check({ ...raw, hosts });
  assert.deepEqual(failures, []);
  const r = await provider.create!(inputs as never);
  made.push({ provider: provider as never, id: r.id, outs: r.outs });
  return r.outs as O;
}

/** Every argv on this machine (sandbox hosts share its PID namespace), as text. */
function allArgs(): string {
  const out: string[] = [];
  for (const pid of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      out.push(fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " "));
    } catch {
      /* gone */
    }
  }
  return out.join("\n");
}

/** Runs `fn` while sampling every process's arguments every 5 ms; returns what fn returns and whether a sample held `needle`. */
async function watchingArgs<T>(
  needle: string,
  fn: () => Promise<T>,
): Promise<{ value: T; seen: boolean; samples: number }> {
  let seen = false;
  let samples = 0;
  let done = false;
  const loop = (async () => {
    while (!done) {
      if (allArgs().includes(needle)) seen = true;
      samples++;
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  try {
    const value = await fn();
    return { value, seen, samples };
  } finally {
    done = true;
    await loop;
  }
}

async function grepHost(needle: string): Promise<string> {
  // grep -r exits 1 when nothing matches: print the matching files, or nothing.
  return sshCheck(
    status,
    hosts[0].name,
    `grep -rlF -D skip -- ${JSON.stringify(needle)} /var/lib/kvmlab /etc /tmp /run /var/log 2>/dev/null; true`,
  );
}

before(async () => {
  // Two hosts: ten 1-vCPU servers need more vCPUs than one 2-core sandbox host offers.
  status = await startSandbox(INSTANCE, 2);
  hosts = sandboxHostConnections(status);
  for (const h of hosts) {
    await runChecked(h, [{ label: "image dir", script: "mkdir -p /var/lib/kvmlab/images/idimg" }]);
    await sftpPut(h, status.image.kernel, "/var/lib/kvmlab/images/idimg/kernel");
    await sftpPut(h, status.image.ramdisk, "/var/lib/kvmlab/images/idimg/ramdisk");
  }
});

after(async () => {
  for (const m of made.reverse())
    await m.provider.delete!(m.id, m.outs as never).catch((e: unknown) =>
      console.error(`cleanup: ${String(e)}`),
    );
  await closeHostSessions();
  if (!KEEP) await stopSandbox(INSTANCE);
});

let alice: UserOutputs;

test("identity records: domain, projects, user, group, assignments; effective roles read back from the controller", async () => {
  await create(domainProvider, checkDomainInputs, { domainName: "Default" });
  await create(projectProvider, checkProjectInputs, { projectName: "demo" });
  await create(projectProvider, checkProjectInputs, { projectName: "demo-child", parent: "demo" });
  const w = await watchingArgs(SECRET, () =>
    create<UserOutputs>(userProvider, checkUserInputs, {
      userName: "alice",
      password: SECRET,
      sshPublicKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ4m alice@lab"],
    }),
  );
  alice = w.value;
  assert.equal(w.seen, false, `the password appeared in a process's arguments (${w.samples} samples)`);
  assert.ok(w.samples > 3);
  await create(userProvider, checkUserInputs, { userName: "bob" });
  await create(groupProvider, checkGroupInputs, { groupName: "ops", members: ["alice"] });
  await create(roleAssignmentProvider, checkRoleAssignmentInputs, {
    group: "ops",
    project: "demo",
    role: "member",
    inherited: true,
  });
  await create(roleAssignmentProvider, checkRoleAssignmentInputs, {
    user: "bob",
    project: "demo",
    role: "reader",
  });

  const model = identityModel(await readAllIdentity(hosts[0]));
  // Inherited: the child gets member (and reader by implication); demo itself does not.
  assert.deepEqual(effectiveRoles(model, "Default/alice", "Default/demo-child"), ["member", "reader"]);
  assert.deepEqual(effectiveRoles(model, "Default/alice", "Default/demo"), []);
  assert.deepEqual(effectiveRoles(model, "Default/bob", "Default/demo"), ["reader"]);
  assert.deepEqual(effectiveRoles(model, "Default/bob", "Default/demo-child"), []);

  // Names are unique within the domain: another owner's resource with the same name is refused;
  // the same owner adopts its record (a crash between create and the state write converges).
  const dup = checkProjectInputs({ projectName: "demo", owner: "other/stack/Project/demo", hosts });
  await assert.rejects(
    projectProvider.create!(dup.inputs as never),
    /project Default\/demo already exists on controller hv1, owned by kvmlab-direct\/-\/Project\/demo/,
  );
  // A missing reference is refused with the field and the fix.
  const orphan = checkRoleAssignmentInputs({ user: "nobody", project: "demo", role: "reader", hosts });
  await assert.rejects(
    roleAssignmentProvider.create!(orphan.inputs as never),
    /user: user Default\/nobody does not exist/,
  );
});

test("the password is only a scrypt hash on the host; a new password is an update with a new hash", async () => {
  assert.equal(await grepHost(SECRET), "", "the clear password is in a file on the host");
  const all = await readAllIdentity(hosts[0]);
  const rec = all.user.find((u) => u.id === "Default/alice") as unknown as { passwordHash: string };
  assert.ok(verifyPassword(SECRET, rec.passwordHash), "the record holds a hash of the password");
  assert.ok(!JSON.stringify(all).includes(SECRET));

  const news = checkUserInputs({
    userName: "alice",
    password: SECRET2,
    sshPublicKeys: alice.sshPublicKeys,
    hosts,
  }).inputs as never;
  const d = diffUser(alice, news);
  assert.deepEqual([d.changes, d.replaces], [true, []], "a new password is an update");
  const w = await watchingArgs(SECRET2, () => userProvider.update!(alice.recordId, alice as never, news));
  assert.equal(w.seen, false);
  const updated = w.value.outs as UserOutputs;
  assert.notEqual(updated.passwordHash, alice.passwordHash);
  const after2 = (await readAllIdentity(hosts[0])).user.find((u) => u.id === "Default/alice") as unknown as {
    passwordHash: string;
  };
  assert.ok(verifyPassword(SECRET2, after2.passwordHash));
  assert.ok(!verifyPassword(SECRET, after2.passwordHash));
  assert.equal(await grepHost(SECRET2), "");
  made.find((m) => m.id === alice.recordId)!.outs = updated;
  alice = updated;
  // read: the record still matches the (new) password.
  const r = await userProvider.read!(alice.recordId, alice as never);
  assert.equal((r.props as UserOutputs).realized.matches, true);
});

function serverInputs(name: string, project: string, vcpus = 1): ServerInputs {
  const image = {
    name: "idimg",
    kind: "kernel" as const,
    disk: "",
    format: "qcow2" as const,
    kernel: "/var/lib/kvmlab/images/idimg/kernel",
    ramdisk: "/var/lib/kvmlab/images/idimg/ramdisk",
  };
  const flavor = { name: vcpus === 1 ? "m1.tiny" : "m1.wide", vcpus, ramMiB: 128, diskGiB: 0 };
  const r = renderServer({
    serverName: name,
    uuidSeed: `itest-id/${name}`,
    lab: "itest",
    stack: "quota",
    project,
    image,
    flavor,
    ports: [],
    kernelCmdline: `${status.image.cmdline} lab.name=${name}`,
    cloudInit: false,
    publicKeys: [],
    userName: "kvmlab",
    userData: {},
    consoleListen: "0.0.0.0",
  });
  const { inputs, failures } = checkServerInputs({
    serverName: name,
    uuid: r.uuid,
    hosts,
    flavor,
    image,
    ports: [],
    domainXml: r.domainXml,
    cloudInit: r.cloudInit,
    powerState: "stopped",
    project,
  });
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

test("the 11th server of a project with the default quota fails naming instances, usage and limit; nothing is left", async () => {
  await create(projectProvider, checkProjectInputs, { projectName: "quota" });
  for (let i = 1; i <= 10; i++) {
    const r = await serverProvider.create!(serverInputs(`q${i}`, "Default/quota") as never);
    made.push({ provider: serverProvider as never, id: r.id, outs: r.outs });
  }
  const q = await readQuota(hosts[0], "Default/quota");
  assert.deepEqual([q.usage.instances, q.usage.cores, q.usage.ramMiB], [10, 10, 1280]);
  await assert.rejects(
    serverProvider.create!(serverInputs("q11", "Default/quota") as never),
    /quota exceeded for project Default\/quota: instances: usage 10 \+ requested 1 exceeds limit 10/,
  );
  for (const h of hosts) {
    const left = await sshCheck(
      status,
      h.name,
      "virsh -c qemu:///system list --all --name | grep -x q11; grep -l '<name>q11</name>' /var/lib/kvmlab/instances/*/domain.xml 2>/dev/null; ls -d /var/lib/kvmlab/instances/q11 /var/lib/kvmlab/records/server/q11.json 2>/dev/null; true",
    );
    assert.equal(left.trim(), "", `a refused server left something behind on ${h.name}`);
  }
  assert.equal((await readQuota(hosts[0], "Default/quota")).usage.instances, 10);

  const show = await kvmlab(["quota", "show", "quota", "--sandbox", INSTANCE], { timeoutMs: 60_000 });
  assert.equal(show.code, 0, show.stderr);
  assert.match(show.stdout, /^instances\s+10\s+10\s*$/m);
  assert.match(show.stdout, /^cores\s+10\s+20\s*$/m);
  assert.match(show.stdout, /^ramMiB\s+1280\s+51200\s*$/m);

  // A resize over the cores quota is refused before the host is touched; the ledger keeps q1's size.
  const q1 = made.find((x) => (x.outs as { serverName?: string }).serverName === "q1")!;
  await assert.rejects(
    serverProvider.update!(q1.id, q1.outs as never, serverInputs("q1", "Default/quota", 13) as never),
    /quota exceeded for project Default\/quota: cores: usage 9 \+ requested 13 exceeds limit 20/,
  );
  assert.equal((await readQuota(hosts[0], "Default/quota")).usage.cores, 10);
  const vcpu = await sshCheck(
    status,
    (q1.outs as { host: string }).host,
    "virsh -c qemu:///system dominfo q1 | awk '/^CPU\\(s\\)/ {print $2}'",
  );
  assert.equal(vcpu.trim(), "1", "the refused resize left the domain as it was");

  // Delete releases the reservation.
  const last = made.pop()!;
  await serverProvider.delete!(last.id, last.outs as never);
  assert.equal((await readQuota(hosts[0], "Default/quota")).usage.instances, 9);
});

test("two processes reserving at once never exceed the limit", async () => {
  await create(projectProvider, checkProjectInputs, { projectName: "race", quotas: { instances: 6 } });
  const worker = path.resolve(__dirname, "..", "support", "quotaWorker.js");
  const job = (tag: string) =>
    JSON.stringify({
      host: hosts[0],
      project: "Default/race",
      holders: [1, 2, 3, 4, 5].map((i) => `server:${tag}${i}`),
      usage: { instances: 1, cores: 1, ramMiB: 128 },
    });
  const [a, b] = await Promise.all([
    runCommand(process.execPath, [worker], { input: job("a"), timeoutMs: 120_000 }),
    runCommand(process.execPath, [worker], { input: job("b"), timeoutMs: 120_000 }),
  ]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  const ra = JSON.parse(a.stdout) as { ok: string[]; refused: string[] };
  const rb = JSON.parse(b.stdout) as { ok: string[]; refused: string[] };
  const ok = [...ra.ok, ...rb.ok].sort();
  assert.equal(ok.length, 6, `exactly the limit is granted: ${JSON.stringify({ ra, rb })}`);
  for (const m of [...ra.refused, ...rb.refused])
    assert.match(m, /instances: usage 6 \+ requested 1 exceeds limit 6/);
  const q = await readQuota(hosts[0], "Default/race");
  assert.deepEqual(Object.keys(q.ledger).sort(), ok, "the ledger holds exactly the granted reservations");
  assert.equal(q.usage.instances, 6);
  // Both processes got some: they really ran at once against one lock.
  assert.ok(ra.ok.length > 0 && rb.ok.length > 0, JSON.stringify({ ra, rb }));
  for (const h of ok) await releaseQuota(hosts[0], "Default/race", h);
  await reserveQuota(hosts[0], "Default/race", "server:again", { instances: 6 });
  await releaseQuota(hosts[0], "Default/race", "server:again");
});

test("delete removes every identity and quota record", async () => {
  for (const m of made.reverse()) await m.provider.delete!(m.id, m.outs as never);
  made.length = 0;
  const left = await sshCheck(
    status,
    hosts[0].name,
    "ls /var/lib/kvmlab/records/identity-*/ /var/lib/kvmlab/records/quota-usage/ 2>/dev/null | grep json; true",
  );
  assert.equal(left.trim(), "");
});
