/**
 * The host layer against a real sshd that this test starts on 127.0.0.1 (a throwaway key and
 * host key in a temporary folder; stopped by PID at the end). Proves pooling, framing,
 * reconnects, timeouts, host-key pinning, the host lock and atomic uploads over a real SSH
 * connection; does not prove anything about sandbox hosts (see network.test.ts).
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import {
  closeHostSessions,
  hostPoolStats,
  observedHostKey,
  pinFingerprint,
  probeHost,
  resetHostPoolStats,
  runChecked,
  runSteps,
  shQuote,
  uploadFile,
  withHostLock,
  type HostConnection,
} from "../../provider/host";

let dir = "";
let sshdPid = 0;
let host: HostConnection;
let hostPub = "";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`sshd did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`);
}

/** Starts this test's sshd on `port` with the config in `dir` (PID kept for the end). */
async function startSshd(port: number): Promise<void> {
  const child = spawn(
    "/usr/sbin/sshd",
    ["-D", "-f", path.join(dir, "sshd_config"), "-E", path.join(dir, "log")],
    { stdio: "ignore" },
  );
  sshdPid = child.pid ?? 0;
  await waitForPort(port, 5000);
}

/** Stops this test's sshd (by its PID) and waits until the port is free. */
async function stopSshd(port: number): Promise<void> {
  if (!sshdPid) return;
  process.kill(sshdPid, "SIGTERM");
  sshdPid = 0;
  const until = Date.now() + 5000;
  while (Date.now() < until) {
    const open = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (!open) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`sshd still listens on 127.0.0.1:${port} after SIGTERM`);
}

/** Restarts this test's sshd with another host key file (same port, same client key). */
async function swapHostKey(keyFile: string): Promise<void> {
  const conf = path.join(dir, "sshd_config");
  fs.writeFileSync(conf, fs.readFileSync(conf, "utf8").replace(/^HostKey .*$/m, `HostKey ${keyFile}`));
  await stopSshd(host.port);
  await startSshd(host.port);
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-sshd-"));
  for (const k of ["client", "host"]) {
    const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, k)]);
    assert.equal(r.status, 0, String(r.stderr));
  }
  fs.copyFileSync(path.join(dir, "client.pub"), path.join(dir, "authorized_keys"));
  const port = await freePort();
  fs.writeFileSync(
    path.join(dir, "sshd_config"),
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${dir}/host`,
      `AuthorizedKeysFile ${dir}/authorized_keys`,
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      "PermitRootLogin prohibit-password",
      `PidFile ${dir}/sshd.pid`,
      "StrictModes no",
      "",
    ].join("\n"),
  );
  fs.mkdirSync("/run/sshd", { recursive: true });
  await startSshd(port);
  hostPub = fs.readFileSync(path.join(dir, "host.pub"), "utf8").trim();
  host = {
    name: "local",
    address: "127.0.0.1",
    port,
    user: os.userInfo().username,
    privateKey: fs.readFileSync(path.join(dir, "client"), "utf8"),
    hostKey: hostPub,
    trustOnFirstUse: false,
    uplink: "",
    tunnelAddress: "",
  };
});

after(async () => {
  await closeHostSessions();
  if (sshdPid) process.kill(sshdPid, "SIGTERM");
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test("a batch keeps exit status, stdout and stderr of every step apart", async () => {
  const results = await runSteps(host, [
    { script: "echo out; echo err >&2; exit 3" },
    { script: "printf 'no newline'" },
    { script: "printf 'two\\n\\n'; printf 'e1\\ne2' >&2" },
    { script: "cd /; exit 0" },
    { script: "pwd" },
    { script: "head -c 200000 /dev/zero | tr '\\0' x" },
  ]);
  assert.deepEqual(results.slice(0, 5), [
    { code: 3, stdout: "out\n", stderr: "err\n" },
    { code: 0, stdout: "no newline", stderr: "" },
    { code: 0, stdout: "two\n\n", stderr: "e1\ne2" },
    { code: 0, stdout: "", stderr: "" },
    { code: 0, stdout: `${results[4].stdout.trim()}\n`, stderr: "" },
  ]);
  assert.equal(results[5].stdout, "x".repeat(200000));
});

test("stopOnError skips the rest of the batch on the host, and runChecked names host and step", async () => {
  const results = await runSteps(
    host,
    [{ script: "echo a" }, { script: "false" }, { script: "echo never > /dev/stderr" }],
    { stopOnError: true },
  );
  assert.deepEqual(
    results.map((r) => r.code),
    [0, 1, null],
  );
  await assert.rejects(
    runChecked(host, [{ label: "make the thing", script: "echo boom >&2; exit 7" }]),
    /host local \(.*@127\.0\.0\.1:\d+\): step "make the thing" failed with exit status 7:\nboom/,
  );
});

test("every step reuses one connection and one shell; per-step overhead is measured", async () => {
  await closeHostSessions();
  resetHostPoolStats();
  await runSteps(host, [{ script: "true" }]);
  const n = 200;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await runSteps(host, [{ script: "true" }]);
  const perStepMs = Number(process.hrtime.bigint() - t0) / 1e6 / n;
  const t1 = process.hrtime.bigint();
  await runSteps(
    host,
    Array.from({ length: n }, () => ({ script: "true" })),
  );
  const batchedMs = Number(process.hrtime.bigint() - t1) / 1e6 / n;
  const stats = hostPoolStats();
  console.log(
    `# sequential round trip per step: ${perStepMs.toFixed(2)} ms; batched: ${batchedMs.toFixed(2)} ms/step`,
  );
  assert.equal(stats.connectionsOpened, 1);
  assert.equal(stats.channelsOpened, 1);
  assert.equal(stats.steps, 2 * n + 1);
  // Batching is one round trip for the whole batch (counted, not timed: a timed comparison
  // failed on a loaded 2-core machine). The per-step figures above are printed, not asserted.
  assert.equal(stats.roundTrips, n + 2, "one round trip per batch: n + 1 single steps, then one batch of n");
});

test("concurrent batches on one host are serialized through the one shell", async () => {
  const outs = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      runChecked(host, [{ script: `echo ${i}` }, { script: `echo ${i}b` }]),
    ),
  );
  outs.forEach((o, i) => assert.deepEqual(o, [`${i}\n`, `${i}b\n`]));
});

test("worker shells: a slow step there holds up neither the main shell nor the other workers", async () => {
  await closeHostSessions();
  resetHostPoolStats();
  // Worker shells open only once the main shell is open.
  await runChecked(host, [{ script: "true" }]);
  const flag = path.join(dir, `worker-flag-${process.pid}`);
  fs.rmSync(flag, { force: true });
  const order: string[] = [];
  // Worker A waits (bounded: 15 s) for a file that only worker B creates: if the two batches
  // shared one shell, B would run after A and A would fail.
  const a = runChecked(
    host,
    [
      {
        label: "wait for the flag",
        script: `i=0; while [ ! -e ${shQuote(flag)} ]; do i=$((i + 1)); [ $i -lt 300 ] || exit 9; sleep 0.05; done; echo a`,
      },
    ],
    { lane: "worker" },
  ).then((o) => (order.push("worker a"), o));
  // The main shell answers while worker A is still waiting.
  const [main] = await runChecked(host, [{ script: "echo main" }]);
  order.push("main");
  assert.equal(main, "main\n");
  const [b] = await runChecked(host, [{ script: `touch ${shQuote(flag)}; echo b` }], { lane: "worker" });
  order.push("worker b");
  assert.equal(b, "b\n");
  assert.deepEqual(await a, ["a\n"]);
  // Worker A finished only after worker B made the flag (its own answer may arrive first).
  assert.equal(order[0], "main", `the main shell answered while worker A waited: ${order.join(", ")}`);
  const stats = hostPoolStats();
  assert.equal(stats.connectionsOpened, 1, "workers are channels of the one connection");
  assert.equal(stats.channelsOpened, 3, "the main shell and two worker shells");
  // An idle worker is reused rather than a new channel opened.
  await runChecked(host, [{ script: "true" }], { lane: "worker" });
  assert.equal(hostPoolStats().channelsOpened, 3);
  fs.rmSync(flag, { force: true });
});

test("a host that refuses worker channels (sshd MaxSessions) runs worker batches in the main shell", async () => {
  await closeHostSessions();
  const conf = path.join(dir, "sshd_config");
  const original = fs.readFileSync(conf, "utf8");
  fs.writeFileSync(conf, `${original}MaxSessions 1\n`);
  await stopSshd(host.port);
  await startSshd(host.port);
  try {
    resetHostPoolStats();
    await runChecked(host, [{ script: "true" }]);
    const outs = await Promise.all(
      [1, 2, 3].map((i) => runChecked(host, [{ script: `echo w${i}` }], { lane: "worker" })),
    );
    assert.deepEqual(outs, [["w1\n"], ["w2\n"], ["w3\n"]]);
    assert.equal(hostPoolStats().channelsOpened, 1, "only the main shell: the host allows one session");
    // Once refused, the session stops asking for worker channels.
    await runChecked(host, [{ script: "true" }], { lane: "worker" });
    assert.equal(hostPoolStats().channelsOpened, 1);
  } finally {
    await closeHostSessions();
    fs.writeFileSync(conf, original);
    await stopSshd(host.port);
    await startSshd(host.port);
  }
});

test("a dropped connection is replaced on the next call", async () => {
  await runChecked(host, [{ script: "true" }]);
  const before = hostPoolStats();
  // Kill the sshd process that serves this connection (the parent of the shell).
  await assert.rejects(
    runSteps(host, [{ script: "kill -9 $PPID" }], { timeoutMs: 10000 }),
    /connection lost|shell exited/,
  );
  const [out] = await runChecked(host, [{ script: "echo back" }]);
  assert.equal(out, "back\n");
  const afterStats = hostPoolStats();
  assert.equal(afterStats.connectionsOpened, before.connectionsOpened + 1);
});

test("a step over its time limit fails, and the next step gets a fresh shell on the same connection", async () => {
  await runChecked(host, [{ script: "true" }]);
  const before = hostPoolStats();
  await assert.rejects(
    runSteps(host, [{ label: "slow", script: "sleep 5" }], { timeoutMs: 300 }),
    /step "slow" timed out after 300 ms/,
  );
  const [out] = await runChecked(host, [{ script: "echo fine" }]);
  assert.equal(out, "fine\n");
  const afterStats = hostPoolStats();
  assert.equal(afterStats.connectionsOpened, before.connectionsOpened);
  assert.equal(afterStats.channelsOpened, before.channelsOpened + 1);
});

test("fails hard on a host key mismatch, showing both fingerprints", async () => {
  const other = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, "other")]);
  assert.equal(other.status, 0);
  const wrongPub = fs.readFileSync(path.join(dir, "other.pub"), "utf8").trim();
  const want = pinFingerprint(wrongPub) as { fingerprint: string };
  const real = pinFingerprint(hostPub) as { fingerprint: string };
  await assert.rejects(runSteps({ ...host, hostKey: wrongPub }, [{ script: "true" }]), (err: Error) => {
    assert.match(err.message, /HOST KEY MISMATCH/);
    assert.ok(err.message.includes(want.fingerprint), err.message);
    assert.ok(err.message.includes(real.fingerprint), err.message);
    return true;
  });
  // A SHA256 pin works like the key line.
  const [out] = await runChecked({ ...host, hostKey: real.fingerprint }, [{ script: "echo pinned" }]);
  assert.equal(out, "pinned\n");
});

test("trust on first use connects only when asked, and records the key it saw", async () => {
  await assert.rejects(runSteps({ ...host, hostKey: "" }, [{ script: "true" }]), /no hostKey pinned/);
  const tofu = { ...host, hostKey: "", trustOnFirstUse: true };
  await runChecked(tofu, [{ script: "true" }]);
  assert.equal(observedHostKey(tofu), (pinFingerprint(hostPub) as { fingerprint: string }).fingerprint);
});

test("a trust-on-first-use reconnect in the same run is pinned to the key seen first; a changed key is refused with both fingerprints", async () => {
  const tofu = { ...host, hostKey: "", trustOnFirstUse: true };
  await runChecked(tofu, [{ script: "true" }]);
  const first = observedHostKey(tofu);
  assert.equal(first, (pinFingerprint(hostPub) as { fingerprint: string }).fingerprint);
  // A reconnect to the same key is fine (pinned, not re-trusted).
  await closeHostSessions();
  const [again] = await runChecked(tofu, [{ script: "echo same" }]);
  assert.equal(again, "same\n");
  // The host now presents another key (an impostor, or a reinstall nobody announced).
  const swapped = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, "swapped")]);
  assert.equal(swapped.status, 0, String(swapped.stderr));
  const swappedFp = (
    pinFingerprint(fs.readFileSync(path.join(dir, "swapped.pub"), "utf8")) as { fingerprint: string }
  ).fingerprint;
  await swapHostKey(path.join(dir, "swapped"));
  try {
    await closeHostSessions();
    await assert.rejects(runSteps(tofu, [{ script: "touch ran-on-impostor" }]), (err: Error) => {
      assert.match(err.message, /HOST KEY CHANGED/);
      assert.ok(err.message.includes(first), err.message);
      assert.ok(err.message.includes(swappedFp), err.message);
      return true;
    });
    assert.equal(observedHostKey(tofu), first, "the key seen first stays the pin");
  } finally {
    await swapHostKey(path.join(dir, "host"));
    await closeHostSessions();
  }
  const [back] = await runChecked(tofu, [{ script: "echo back" }]);
  assert.equal(back, "back\n");
});

test("the host lock serializes holders in the process and holds flock on the host", async () => {
  const order: string[] = [];
  const hold = (tag: string): Promise<void> =>
    withHostLock(host, async () => {
      order.push(`${tag}+`);
      // Another process (a plain ssh-less flock here) cannot take the lock meanwhile.
      const r = spawnSync("flock", ["-n", "/var/lib/kvmlab/lock", "true"]);
      assert.notEqual(r.status, 0, "flock should be held by the session's shell");
      await new Promise((r2) => setTimeout(r2, 30));
      order.push(`${tag}-`);
    });
  await Promise.all([hold("a"), hold("b"), hold("c")]);
  assert.deepEqual(order, ["a+", "a-", "b+", "b-", "c+", "c-"]);
  await runChecked(host, [{ script: "true" }]); // the queued unlock has run
  const free = spawnSync("flock", ["-n", "/var/lib/kvmlab/lock", "true"]);
  assert.equal(free.status, 0, "the lock is released after the holder finishes");
});

test("uploads are atomic, sha256-aware and set mode and owner", async () => {
  const target = path.join(dir, "up", "file.conf");
  const content = "line 'one'\n$HOME `x` \\n\n";
  assert.equal(await uploadFile(host, target, content, { mode: "0640" }), true);
  assert.equal(fs.readFileSync(target, "utf8"), content);
  assert.equal((fs.statSync(target).mode & 0o777).toString(8), "640");
  assert.equal(await uploadFile(host, target, content, { mode: "0640" }), false);
  assert.equal(await uploadFile(host, target, content, { mode: "0600" }), true);
  assert.deepEqual(
    fs.readdirSync(path.dirname(target)).filter((f) => f.includes("kvmlab-tmp")),
    [],
  );
});

test("quoted values arrive verbatim: injection attempts stay data", async () => {
  const evil = [
    "a; touch /tmp/kvl-pwned",
    "$(touch /tmp/kvl-pwned)",
    "`touch /tmp/kvl-pwned`",
    "x' ; touch /tmp/kvl-pwned; '",
    "line\nbreak",
    "",
  ];
  const outs = await runChecked(
    host,
    evil.map((v) => ({ script: `printf '%s' ${shQuote(v)}` })),
  );
  assert.deepEqual(outs, evil);
  assert.equal(fs.existsSync("/tmp/kvl-pwned"), false);
});

test("the capability probe reports tools on the host (this machine) and is cached", async () => {
  const caps = await probeHost(host);
  assert.equal(caps.iproute2, true);
  assert.equal(caps.flock, true);
  const again = await probeHost(host);
  assert.equal(again, caps);
});

test("providers of different types, each deserialized from its own text, share one connection", async () => {
  const pulumi: typeof import("@pulumi/pulumi") = require("@pulumi/pulumi");
  const requireFromString = require("require-from-string") as (code: string) => {
    handler: () => Record<string, unknown>;
  };
  const { networkProvider, subnetProvider, dhcpPaths, networkDevices } =
    require("../../provider") as typeof import("../../provider");
  const load = async (p: object): Promise<Record<string, (...a: unknown[]) => Promise<{ id?: string }>>> =>
    requireFromString(
      (await pulumi.runtime.serializeFunction(() => p, { allowSecrets: true })).text,
    ).handler() as never;
  const net = await load(networkProvider);
  const sub = await load(subnetProvider);
  await closeHostSessions();
  resetHostPoolStats();
  // Reads are read-only; on this machine nothing exists, so both report "gone".
  const name = "kvl-itest-nothing";
  const netRead = await net.read(name, {
    networkName: name,
    kind: "selfservice",
    driver: "linuxbridge",
    hosts: [host],
    vni: 4242,
    mtu: 1450,
    hostKeys: {},
  });
  const paths = dhcpPaths(name, `${name}-s`);
  const subRead = await sub.read(`${name}-s`, {
    subnetName: `${name}-s`,
    networkName: name,
    networkBridge: networkDevices(name).bridge,
    driver: "linuxbridge",
    hosts: [host],
    dhcpHost: host.name,
    hostKeys: {},
    nsDevice: paths.nsDevice,
  });
  assert.equal(netRead.id, "");
  assert.equal(subRead.id, "");
  const stats = hostPoolStats();
  assert.equal(stats.connectionsOpened, 1);
  assert.equal(stats.channelsOpened, 1);
});
