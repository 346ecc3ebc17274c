/**
 * Lost-lock detection of the host layer against a fake SSH host (an ssh2 server on loopback
 * that answers every framed step with exit status 0 and runs nothing). The host lock
 * (withHostLock, fd 9) and a named lock (withNamedHostLock, fd 8: the volumes lock; placement
 * used one until issue 13, session 8, and the tests still name theirs "placement") are flocks held
 * by ONE remote shell: when that connection drops, the work after it must not run in a fresh,
 * unlocked shell (issue 15 and the second-reader review: the placement lock used to be lost
 * silently), and naive mode (the benchmark's baseline) must keep scripts off argv and must not
 * be selected by an environment variable.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import {
  closeHostSessions,
  hostPool,
  hostPoolStats,
  lockedRider,
  runChecked,
  runLocked,
  setHostPoolMode,
  withHostLock,
  withNamedHostLock,
  type HostConnection,
} from "../../../provider/host";
import { testHost } from "./fixtures";

interface FakeServer {
  listen(port: number, host: string, cb: () => void): void;
  address(): AddressInfo;
  close(): void;
}
interface Ssh2 {
  Server: new (cfg: { hostKeys: string[] }, onClient: (client: FakeClient) => void) => FakeServer;
  utils: { generateKeyPairSync(type: "ed25519"): { private: string; public: string } };
}
interface FakeChannel {
  write(s: string): void;
  stderr: { write(s: string): void };
  on(ev: "data", cb: (d: Buffer) => void): void;
  on(ev: "end" | "close", cb: () => void): void;
  exit(code: number): void;
  end(): void;
}
interface FakeClient {
  on(ev: string, cb: (...args: never[]) => void): void;
  end(): void;
}

const ssh2 = require("ssh2") as Ssh2;
const hostKey = ssh2.utils.generateKeyPairSync("ed25519");
const clientKey = ssh2.utils.generateKeyPairSync("ed25519");

/** What the fake host saw: exec commands (argv) and the step scripts run in its shells. */
const seen = {
  commands: [] as string[],
  scripts: [] as string[],
  stdin: [] as string[],
  /** The step scripts whose answers were written back, in order. */
  answered: [] as string[],
  sftpOpens: 0,
  sftpChannels: 0,
  sftpClosed: 0,
  /** Shell channels refused while `refuseShells` was set (sshd's MaxSessions reached). */
  refusedShells: 0,
};
/** While set, the fake host refuses every new shell channel (as sshd past MaxSessions does). */
let refuseShells = false;
/** The server side of an SFTP channel (ssh2 ships no types here). */
interface FakeSftp {
  on(ev: string, cb: (reqid: number, ...a: never[]) => void): void;
  handle(reqid: number, h: Buffer): void;
  status(reqid: number, code: number): void;
}
const SFTP_OK = 0;
/** While set, the fake's SFTP answers and records the files it received (see the "sftp" handler). */
let sftpFiles: {
  expect: number;
  opened: string[];
  bytes: Map<string, number>;
  held: (() => void)[];
  open: number;
  maxOpen: number;
} | null = null;
const clients = new Set<FakeClient>();
let server: FakeServer;
let host: HostConnection;

/** While set, a step whose script holds "hold-this-shell" is answered only once it resolves. */
let gate: Promise<void> | null = null;

/** Answers each framed step of a long-lived shell with exit status 0 (framing.ts), in order. */
function fakeShell(ch: FakeChannel): void {
  let buf = "";
  let answered = Promise.resolve();
  // A step whose script holds "kvl-test-exit-<n>" exits n; the steps after it in a stopOnError
  // batch (framing's guard) are answered "skip", as the real shell does.
  let aborted = false;
  // A held answer released after the connection dropped is not written (a test's lost batch).
  let closed = false;
  ch.on("close", () => (closed = true));
  ch.on("end", () => (closed = true));
  (ch as unknown as { on(ev: "error", cb: () => void): void }).on("error", () => undefined);
  ch.on("data", (d: Buffer) => {
    buf += d.toString("utf8");
    const re = /printf '\\n%s %s\\n' '([A-Za-z0-9_]+-\d+)' "\$__kvl_s"\n/;
    for (let m = re.exec(buf); m; m = re.exec(buf)) {
      const script = buf.slice(0, m.index);
      const tag = m[1];
      seen.scripts.push(script);
      buf = buf.slice(m.index + m[0].length);
      if (/^__kvl_abort=$/m.test(script)) aborted = false;
      const guarded = script.includes('if [ -z "$__kvl_abort" ]');
      const code = guarded && aborted ? "skip" : (/kvl-test-exit-(\d+)/.exec(script)?.[1] ?? "0");
      if (guarded && code !== "0" && code !== "skip") aborted = true;
      const wait = script.includes("hold-this-shell") ? gate : null;
      answered = answered.then(async () => {
        if (wait) await wait;
        if (closed) return;
        try {
          ch.write(`\n${tag} ${code}\n`);
          ch.stderr.write(`\n${tag}\n`);
          seen.answered.push(script);
        } catch {
          // The connection was dropped while the step was held (a test's lost batch).
        }
      });
    }
  });
}

before(async () => {
  server = new ssh2.Server({ hostKeys: [hostKey.private] }, (client) => {
    clients.add(client);
    client.on("close", () => clients.delete(client));
    client.on("error", () => undefined);
    client.on("authentication", (ctx: { accept(): void }) => ctx.accept());
    client.on("ready", () => {
      client.on("session", (accept: () => { on(ev: string, cb: (...a: never[]) => void): void }) => {
        const session = accept();
        // SFTP that never answers (a host gone silent mid-transfer): the upload must still end.
        // While `sftpFiles` is set, it answers instead and records what each channel received.
        session.on("sftp", (acceptSftp: () => FakeSftp) => {
          seen.sftpChannels += 1;
          const sftp = acceptSftp();
          const store = sftpFiles;
          (sftp as unknown as { on(ev: string, cb: () => void): void }).on("close", () => {
            seen.sftpClosed += 1;
          });
          sftp.on("OPEN", (reqid: number, filename: string) => {
            seen.sftpOpens += 1;
            if (!store) return;
            // A file the host refuses (permission denied, say): SFTP's FAILURE status.
            if (filename.includes("refused")) return void sftp.status(reqid, 4);
            const handle = Buffer.from(String(store.opened.length));
            store.opened.push(filename);
            store.open += 1;
            store.maxOpen = Math.max(store.maxOpen, store.open);
            store.bytes.set(filename, 0);
            // Held until every file of the call is open (bounded): sends one after another
            // would never get there, sends side by side all do.
            const answer = (): void => void sftp.handle(reqid, handle);
            store.held.push(answer);
            if (store.opened.length >= store.expect) store.held.splice(0).forEach((a) => a());
            else setTimeout(() => store.held.splice(0).forEach((a) => a()), 1000);
          });
          sftp.on("WRITE", (reqid: number, handle: Buffer, _offset: number, data: Buffer) => {
            const name = store?.opened[Number(handle.toString())];
            if (name !== undefined) store?.bytes.set(name, (store.bytes.get(name) ?? 0) + data.length);
            sftp.status(reqid, SFTP_OK);
          });
          for (const ev of ["FSETSTAT", "SETSTAT"])
            sftp.on(ev, (reqid: number) => sftp.status(reqid, SFTP_OK));
          sftp.on("CLOSE", (reqid: number) => {
            if (store) store.open -= 1;
            sftp.status(reqid, SFTP_OK);
          });
        });
        session.on("exec", (acceptExec: () => FakeChannel, reject: () => void, info: { command: string }) => {
          if (refuseShells && info.command.startsWith("exec bash")) {
            seen.refusedShells += 1;
            return void reject();
          }
          seen.commands.push(info.command);
          const ch = acceptExec();
          if (info.command.startsWith("exec bash")) return fakeShell(ch);
          // Naive mode: one command per exec, the script on stdin.
          let input = "";
          ch.on("data", (d: Buffer) => (input += d.toString("utf8")));
          ch.on("end", () => {
            seen.stdin.push(input);
            ch.exit(0);
            ch.end();
          });
        });
      });
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  host = testHost("fake", 1, {
    address: "127.0.0.1",
    port: server.address().port,
    privateKey: clientKey.private,
    hostKey: "",
    trustOnFirstUse: true,
  });
});

after(async () => {
  await closeHostSessions();
  server.close();
});

/** Drops every connection from the host's side and waits (bounded) until the client saw it. */
async function dropConnections(): Promise<void> {
  const n = clients.size;
  for (const c of clients) c.end();
  for (let i = 0; i < 100 && clients.size > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(n > 0 && clients.size === 0, "the fake host dropped its connections");
  await new Promise((r) => setTimeout(r, 50));
}

test("withNamedHostLock: a batch after the lock's connection dropped is refused, not run on a fresh shell", async () => {
  seen.scripts.length = 0;
  await assert.rejects(
    withNamedHostLock(host, "placement", async () => {
      await runChecked(host, [{ label: "read loads", script: "echo loads-read" }]);
      await dropConnections();
      await runChecked(host, [{ label: "claim", script: "echo claim-written" }]);
    }),
    /lock \/var\/lib\/kvmlab\/placement\.lock was lost/,
  );
  const all = seen.scripts.join("\n");
  assert.match(all, /flock -w \d+ 8/, "the lock was taken");
  assert.match(all, /loads-read/);
  assert.doesNotMatch(all, /claim-written/, "the step after the drop never reached the host");
});

test("withNamedHostLock: a drop while the work ran elsewhere fails the result", async () => {
  await assert.rejects(
    withNamedHostLock(host, "placement", async () => {
      await runChecked(host, [{ label: "read loads", script: "true" }]);
      await dropConnections();
      return "placed";
    }),
    /placement lock \/var\/lib\/kvmlab\/placement\.lock was lost while the work under it ran/,
  );
  // The pool is usable afterwards: a new lock is taken on a new connection.
  assert.equal(await withNamedHostLock(host, "placement", async () => "ok"), "ok");
});

test("withNamedHostLock: the lock is taken and released in a shell of its own, never behind another operation's slow batch on the main shell", async () => {
  let open: () => void = () => undefined;
  gate = new Promise<void>((r) => (open = r));
  seen.scripts.length = 0;
  // Another operation's slow batch holds the main shell (a define, a boot, a readiness wait).
  const slow = runChecked(host, [{ label: "slow", script: "echo hold-this-shell" }]);
  try {
    for (let i = 0; i < 100 && !seen.scripts.some((x) => x.includes("hold-this-shell")); i++)
      await new Promise((r) => setTimeout(r, 20));
    const bounded = new Promise<string>((r) => setTimeout(() => r("still waiting after 5 s"), 5000).unref());
    const placed = await Promise.race([withNamedHostLock(host, "placement", async () => "placed"), bounded]);
    // Before: the take and the release queued behind the slow batch in the main shell, and the
    // release was not awaited, so another process waited for a lock nobody was using.
    assert.equal(placed, "placed", "the lock was taken and released while the slow batch still ran");
    const all = seen.scripts.join("\n");
    assert.match(all, /flock -w \d+ 8/, "the lock was taken");
    assert.match(all, /exec 8>&-/, "the release reached the host before withNamedHostLock returned");
  } finally {
    open();
    gate = null;
    await slow;
  }
  // The main shell and the lock keep working.
  assert.equal(await withNamedHostLock(host, "placement", async () => "again"), "again");
});

test("withNamedHostLock: the lock shell is kept for the lock's next turn once its release ran (one round trip a turn, no new channel); a drop replaces it", async () => {
  assert.equal(await withNamedHostLock(host, "placement", async () => "first"), "first");
  seen.scripts.length = 0;
  const before = hostPoolStats().channelsOpened;
  const commands = seen.commands.length;
  for (const turn of ["second", "third"])
    assert.equal(await withNamedHostLock(host, "placement", async () => turn), turn);
  assert.equal(hostPoolStats().channelsOpened, before, "no channel opened for the next turns");
  assert.equal(seen.commands.length, commands, "no exec on the host");
  const steps = seen.scripts.filter((x) => /flock -w \d+ 8|exec 8>&-/.test(x));
  assert.equal(steps.length, 4, "each turn took the lock and released it");
  assert.ok(
    steps.every((x, i) => (i % 2 === 0 ? /flock -w \d+ 8/ : /exec 8>&-/).test(x)),
    "take, release, take, release: the kept shell holds nothing between turns",
  );
  // Another lock name gets a shell of its own.
  assert.equal(await withNamedHostLock(host, "volumes", async () => "v"), "v");
  assert.equal(hostPoolStats().channelsOpened, before + 1, "the volumes lock opened its own shell");
  // After a drop the kept shell is dead: the next turn opens a new one on a new connection.
  await dropConnections();
  assert.equal(await withNamedHostLock(host, "placement", async () => "after"), "after");
  assert.ok(hostPoolStats().channelsOpened >= before + 3, "a new main shell and a new lock shell");
});

test("withHostLock: a batch after the lock's connection dropped is refused", async () => {
  seen.scripts.length = 0;
  await assert.rejects(
    withHostLock(host, async () => {
      await runChecked(host, [{ label: "write", script: "echo first-write" }]);
      await dropConnections();
      await runChecked(host, [{ label: "write", script: "echo second-write" }]);
    }),
    /host lock \/var\/lib\/kvmlab\/lock was lost/,
  );
  const all = seen.scripts.join("\n");
  assert.match(all, /first-write/);
  assert.doesNotMatch(all, /second-write/);
  assert.equal(await withHostLock(host, async () => "ok"), "ok");
});

test("naive mode: not chosen by KVMLAB_SSH_MODE, and its scripts go over stdin, never argv", async () => {
  const g = globalThis as unknown as Record<symbol, unknown>;
  const key = Symbol.for("kvmlab.hostPool.v1");
  const saved = g[key];
  const env = process.env.KVMLAB_SSH_MODE;
  try {
    delete g[key];
    process.env.KVMLAB_SSH_MODE = "naive";
    assert.equal(hostPool().mode, "pooled", "the environment does not select naive mode");
  } finally {
    g[key] = saved;
    if (env === undefined) delete process.env.KVMLAB_SSH_MODE;
    else process.env.KVMLAB_SSH_MODE = env;
  }
  setHostPoolMode("naive");
  try {
    seen.commands.length = 0;
    seen.stdin.length = 0;
    await runChecked(host, [
      { label: "write a user record", script: "echo c2VjcmV0LWhhc2g= | base64 -d >/dev/null" },
    ]);
    assert.deepEqual(seen.commands, ["bash --noprofile --norc -s"], "argv carries no script");
    assert.match(seen.stdin.join(""), /c2VjcmV0LWhhc2g=/, "the script went over stdin");
  } finally {
    setHostPoolMode("pooled");
  }
});

test("an image upload whose SSH connection fails mid-transfer (keepalive timeout, socket not closed) ends instead of waiting", async () => {
  const { sendFiles } = await import("../../../provider/image");
  const fs = await import("node:fs");
  const os = await import("node:os");
  const path = await import("node:path");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-send-"));
  try {
    const local = path.join(dir, "disk.img");
    fs.writeFileSync(local, Buffer.alloc(64 * 1024));
    const opens = seen.sftpOpens;
    const upload = sendFiles(host, [
      { localPath: local, remotePath: "/var/lib/kvmlab/images/.staging/disk.img" },
    ]);
    upload.catch(() => undefined);
    for (let i = 0; i < 100 && seen.sftpOpens === opens; i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(seen.sftpOpens > opens, "the transfer reached the host");
    // What ssh2's keepalive does after a blackout: an error, then a half-close whose "close"
    // only comes when TCP gives up (modelled here by never closing).
    const { pooledSsh } = await import("../../../provider/host");
    const conn = (await pooledSsh(host)).connection as unknown as { emit(ev: string, e: Error): void };
    conn.emit("error", Object.assign(new Error("Keepalive timeout"), { level: "client-timeout" }));
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<"hung">((r) => (timer = setTimeout(() => r("hung"), 10_000)));
    const outcome = await Promise.race([
      upload.then(
        () => "sent",
        (e: Error) => e.message,
      ),
      hung,
    ]);
    clearTimeout(timer);
    assert.match(outcome, /host fake: SSH connection lost while sending .*disk\.img \(Keepalive timeout\)/);
  } finally {
    await dropConnections();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("an image's files go to a host side by side on ONE SFTP channel (sshd's MaxSessions), each one whole", async () => {
  const { sendFiles } = await import("../../../provider/image");
  const fs = await import("node:fs");
  const os = await import("node:os");
  const path = await import("node:path");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-sendall-"));
  const sizes: Record<string, number> = { kernel: 100 * 1024 + 7, ramdisk: 40 * 1024, disk: 1 };
  const files = Object.entries(sizes).map(([role, n]) => {
    const localPath = path.join(dir, role);
    fs.writeFileSync(localPath, Buffer.alloc(n, 1));
    return { localPath, remotePath: `/var/lib/kvmlab/images/.staging/${role}` };
  });
  const store = { expect: files.length, opened: [], bytes: new Map(), held: [], open: 0, maxOpen: 0 };
  sftpFiles = store;
  try {
    const channels = seen.sftpChannels;
    await sendFiles(host, files);
    assert.equal(seen.sftpChannels - channels, 1, "one SFTP channel for the three files, not one each");
    assert.deepEqual([...store.opened].sort(), files.map((f) => f.remotePath).sort());
    assert.equal(store.maxOpen, files.length, "the files were open at the same time (sent side by side)");
    for (const [role, n] of Object.entries(sizes)) {
      assert.equal(store.bytes.get(`/var/lib/kvmlab/images/.staging/${role}`), n, `${role} arrived whole`);
    }
    // The channel is ended after the call (node-ssh never ends a channel it was given; left
    // open, every image create would hold one more of sshd's MaxSessions).
    for (let i = 0; i < 100 && seen.sftpClosed < seen.sftpChannels; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.equal(seen.sftpClosed, seen.sftpChannels, "every SFTP channel was closed");

    // A file the host refuses: the error names the host and each failed file, and the
    // channel is closed all the same.
    const refused = {
      localPath: files[0].localPath,
      remotePath: "/var/lib/kvmlab/images/.staging/refused-kernel",
    };
    Object.assign(store, { expect: 2, opened: [], held: [], open: 0, maxOpen: 0 });
    await assert.rejects(sendFiles(host, [refused, files[1]]), (err: Error) => {
      assert.match(
        err.message,
        /^host fake: sending \S+kernel to \/var\/lib\/kvmlab\/images\/\.staging\/refused-kernel failed: /,
      );
      assert.doesNotMatch(err.message, /ramdisk failed/, "only the refused file is named");
      return true;
    });
    for (let i = 0; i < 100 && seen.sftpClosed < seen.sftpChannels; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.equal(seen.sftpClosed, seen.sftpChannels, "closed after a failed file too");
  } finally {
    sftpFiles = null;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("runLocked with riders: a ticket announced before the batch rides in its lock hold and round trip, after the owner's steps; the batch waits for its decision", async () => {
  await runChecked(host, [{ label: "open", script: "true" }]);
  const ticket = lockedRider(host);
  const trips = hostPoolStats().roundTrips;
  seen.scripts.length = 0;
  const claim = runLocked(host, [{ label: "claim", script: "echo kvl-test-claim" }], { riders: true });
  for (let i = 0; i < 50 && !ticket.wanted(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(ticket.wanted(), "the batch waits for the ticket announced on its host");
  assert.equal(hostPoolStats().roundTrips, trips, "nothing sent before the ticket decided");
  const rode = ticket.ride([{ label: "commit", script: "echo kvl-test-commit" }]);
  assert.deepEqual(await claim, [""], "the owner gets its own stdouts only (the fake prints nothing)");
  const out = await rode;
  assert.ok("results" in out && out.results.length === 1 && out.results[0].code === 0, JSON.stringify(out));
  assert.equal(hostPoolStats().roundTrips, trips + 1, "one round trip for the claim and the rider");
  const all = seen.scripts.join("\n");
  const [take, own, carried, unlock] = [
    /flock -w \d+ 9/,
    /kvl-test-claim/,
    /kvl-test-commit/,
    /exec 9>&-/,
  ].map((re) => all.search(re));
  assert.ok(
    take >= 0 && take < own && own < carried && carried < unlock,
    "take, owner, rider, release in order",
  );
  // The next batch carries nothing of it again.
  seen.scripts.length = 0;
  await runLocked(host, [{ label: "again", script: "true" }], { riders: true });
  assert.doesNotMatch(seen.scripts.join("\n"), /kvl-test-commit/);
});

test("runLocked with riders: when an owner's step fails, the rider is answered skipped (nothing of it ran) and the owner gets its own failure", async () => {
  const ticket = lockedRider(host);
  const claim = runLocked(host, [{ label: "claim", script: "echo kvl-test-exit-34" }], { riders: true });
  for (let i = 0; i < 50 && !ticket.wanted(); i++) await new Promise((r) => setTimeout(r, 10));
  const rode = ticket.ride([{ label: "commit", script: "true" }]);
  await assert.rejects(claim, (err: Error & { stepIndex?: number; exitStatus?: number }) => {
    assert.equal(err.stepIndex, 0);
    assert.equal(err.exitStatus, 34);
    return true;
  });
  assert.deepEqual(await rode, { skipped: true });
});

test("runLocked with riders: a rider's own failure is its own (the owner succeeds), and a withdrawn or unwanted ticket is not waited for", async () => {
  const ticket = lockedRider(host);
  const claim = runLocked(host, [{ label: "claim", script: "true" }], { riders: true });
  for (let i = 0; i < 50 && !ticket.wanted(); i++) await new Promise((r) => setTimeout(r, 10));
  const rode = ticket.ride([
    { label: "guard", script: "echo kvl-test-exit-38" },
    { label: "write", script: "true" },
  ]);
  assert.deepEqual(await claim, [""]);
  const out = await rode;
  assert.ok("results" in out, JSON.stringify(out));
  assert.deepEqual(
    out.results.map((r) => r.code),
    [38, null],
  );
  // Withdrawn: the batch goes on without waiting for it (review 11a N4: counted, not timed).
  const gone = lockedRider(host);
  gone.withdraw();
  const waits = hostPoolStats().riderWaits;
  await runLocked(host, [{ label: "claim", script: "true" }], { riders: true });
  assert.equal(hostPoolStats().riderWaits, waits, "a withdrawn ticket is not waited for");
  // No batch waits for it: ride answers skipped (the caller then takes the lock itself).
  const alone = lockedRider(host);
  assert.equal(alone.wanted(), false);
  assert.deepEqual(await alone.ride([{ label: "commit", script: "true" }]), { skipped: true });
});

test("review 11a S3(b): a rider after a rider whose step failed is answered skipped (nothing of it ran), not with the null results of its skipped steps", async () => {
  const first = lockedRider(host);
  const second = lockedRider(host);
  const claim = runLocked(host, [{ label: "claim", script: "true" }], { riders: true });
  for (let i = 0; i < 50 && !(first.wanted() && second.wanted()); i++)
    await new Promise((r) => setTimeout(r, 10));
  assert.ok(first.wanted() && second.wanted(), "the batch waits for both tickets");
  const a = first.ride([{ label: "guard", script: "echo kvl-test-exit-38" }]);
  const b = second.ride([
    { label: "guard", script: "true" },
    { label: "write", script: "true" },
  ]);
  assert.deepEqual(await claim, [""], "the owner succeeds");
  const out = await a;
  assert.ok("results" in out, JSON.stringify(out));
  assert.deepEqual(
    out.results.map((r) => r.code),
    [38],
    "the first rider's own refusal",
  );
  assert.deepEqual(await b, { skipped: true });
});

test("review 11a S1: a batch lost while a rider's step runs, after every step of its owner reported success: the owner gets its stdouts, only the rider gets the loss", async () => {
  await runChecked(host, [{ label: "open", script: "true" }]);
  const ticket = lockedRider(host);
  let open: () => void = () => undefined;
  gate = new Promise<void>((r) => (open = r));
  try {
    const claim = runLocked(host, [{ label: "claim", script: "echo kvl-test-claim" }], { riders: true });
    for (let i = 0; i < 50 && !ticket.wanted(); i++) await new Promise((r) => setTimeout(r, 10));
    seen.answered.length = 0;
    // The rider's step is answered only when the gate opens: the connection drops before.
    const rode = ticket.ride([{ label: "commit", script: "echo hold-this-shell" }]);
    // The host answered the owner's take and claim (written before the drop, so they arrive first).
    for (let i = 0; i < 250 && !seen.answered.some((x) => x.includes("kvl-test-claim")); i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.ok(
      seen.answered.some((x) => x.includes("kvl-test-claim")),
      "the claim step was answered",
    );
    await dropConnections();
    assert.deepEqual(await claim, [""], "the claim stands: its steps all reported success");
    const out = await rode;
    assert.ok("error" in out, JSON.stringify(out));
    assert.match(String(out.error), /SSH connection lost|remote shell exited/);
  } finally {
    open();
    gate = null;
  }
  // Lost before the owner's steps all reported: the owner gets the loss (unknown outcome), as
  // before riders, and so does the rider.
  const late = lockedRider(host);
  gate = new Promise<void>((r) => (open = r));
  try {
    await runChecked(host, [{ label: "open", script: "true" }]);
    seen.scripts.length = 0;
    const claim = runLocked(host, [{ label: "claim", script: "echo hold-this-shell" }], { riders: true });
    claim.catch(() => undefined); // rejected during the drop; asserted below
    for (let i = 0; i < 50 && !late.wanted(); i++) await new Promise((r) => setTimeout(r, 10));
    const rode = late.ride([{ label: "commit", script: "true" }]);
    for (let i = 0; i < 100 && !seen.scripts.some((x) => x.includes("hold-this-shell")); i++)
      await new Promise((r) => setTimeout(r, 20));
    await dropConnections();
    await assert.rejects(claim, /SSH connection lost|remote shell exited/);
    assert.ok("error" in (await rode));
  } finally {
    open();
    gate = null;
  }
});

const WEB_LOCK = "/var/lib/kvmlab/asg/web/group.lock";
const WAS_LOCK = "/var/lib/kvmlab/asg/was/group.lock";

test("review 12a S4: withNamedHostLock with a lockFile flocks THAT file (a real flock: another opener's flock -n fails while it is held), and refuses a bad lockFile", async () => {
  const { spawnSync } = require("node:child_process") as typeof import("node:child_process");
  const fs = await import("node:fs");
  const os = await import("node:os");
  const path = await import("node:path");
  seen.scripts.length = 0;
  assert.equal(await withNamedHostLock(host, "asg-group", async () => "held", 5, WEB_LOCK), "held");
  const take = seen.scripts.find((x) => /flock -w \d+ 8/.test(x));
  assert.ok(take, "the lock was taken");
  assert.ok(take.includes(`exec 8>>${WEB_LOCK}`), `the group's own lock file: ${take}`);
  assert.ok(!take.includes("asg-group.lock"), "not /var/lib/kvmlab/<name>.lock");
  // The take script, run for real on a scratch root: while its shell holds fd 8, the agent's
  // flock on the same file (another open file description) cannot be had.
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lockfile-"));
  try {
    fs.mkdirSync(path.join(root, "asg", "web"), { recursive: true });
    const step = /mkdir -p \/var\/lib\/kvmlab[^\n]*?flock -w \d+ 8/.exec(take)?.[0];
    assert.ok(step, `the take step: ${take}`);
    const body = step.split("/var/lib/kvmlab").join(root);
    const file = path.join(root, "asg", "web", "group.lock");
    const r = spawnSync("/bin/bash", ["-c", `${body}\nflock -n ${file} true && echo free || echo held`], {
      encoding: "utf8",
      timeout: 20_000,
    });
    assert.equal(r.stdout.trim().split("\n").pop(), "held", `${r.stdout}${r.stderr}`);
    const free = spawnSync("/bin/bash", ["-c", `flock -n ${file} true && echo free`], { encoding: "utf8" });
    assert.equal(free.stdout.trim(), "free", "released when the holding shell ended");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  for (const bad of [
    "/var/lib/kvmlab/asg/../../../etc/x.lock",
    "/var/lib/kvmlab/asg/web/group lock.lock",
    "/tmp/group.lock",
    "/var/lib/kvmlabx/group.lock",
  ])
    await assert.rejects(
      withNamedHostLock(host, "asg-group", async () => "ran", 5, bad),
      /invalid lock file/,
      `refused: ${bad}`,
    );
});

test("review 12a S3: two groups' locks on one controller (one name, two lock files) do not wait for each other in this process", async () => {
  let bStarted: () => void = () => undefined;
  const bIn = new Promise<void>((r) => (bStarted = r));
  const bounded = new Promise<string>((r) => setTimeout(() => r("serialized"), 5000).unref());
  const a = withNamedHostLock(
    host,
    "asg-group",
    async () => Promise.race([bIn.then(() => "both held"), bounded]),
    5,
    WEB_LOCK,
  );
  const b = withNamedHostLock(
    host,
    "asg-group",
    async () => {
      bStarted();
      return "b";
    },
    5,
    WAS_LOCK,
  );
  assert.deepEqual(await Promise.all([a, b]), ["both held", "b"]);
});

test("review 12a N1: a batch after the connection of a lockFile's lock dropped is refused, naming that file", async () => {
  await assert.rejects(
    withNamedHostLock(
      host,
      "asg-group",
      async () => {
        await dropConnections();
        await runChecked(host, [{ label: "mark", script: "echo marked" }]);
      },
      5,
      WEB_LOCK,
    ),
    /lock \/var\/lib\/kvmlab\/asg\/web\/group\.lock was lost/,
  );
});

test("review 12a NIT at 7bbbb5c: a lockFile lock's shell is not kept idle (one create per group would leave a channel never reused)", async () => {
  assert.equal(await withNamedHostLock(host, "asg-group", async () => 1, 5, WAS_LOCK), 1);
  const before = hostPoolStats().channelsOpened;
  assert.equal(await withNamedHostLock(host, "asg-group", async () => 2, 5, WAS_LOCK), 2);
  assert.equal(hostPoolStats().channelsOpened, before + 1, "a new lock shell: the last one was closed");
});

test("review 12c S1: two named locks that both fall back to the main shell (sshd refused their lock shells) take turns on its fd 8", async () => {
  await runChecked(host, [{ label: "open the main shell first", script: "true" }]);
  refuseShells = true;
  seen.scripts.length = 0;
  seen.refusedShells = 0;
  try {
    let aEntered: () => void = () => undefined;
    const aIn = new Promise<void>((r) => (aEntered = r));
    let finishA: () => void = () => undefined;
    const aGate = new Promise<void>((r) => (finishA = r));
    const a = withNamedHostLock(
      host,
      "asg-group",
      async () => {
        aEntered();
        await aGate;
        return "a";
      },
      5,
      WEB_LOCK,
    );
    await aIn;
    const takes = (file: string): number => seen.scripts.filter((x) => x.includes(`exec 8>>${file}`)).length;
    assert.equal(takes(WEB_LOCK), 1, "A's lock was taken in the main shell (its lock shell was refused)");
    const refusedBefore = seen.refusedShells;
    const b = withNamedHostLock(host, "asg-group", async () => "b", 5, WAS_LOCK);
    // B's own lock shell is refused too (bounded wait), then it would fall back to the main shell.
    for (let i = 0; i < 250 && seen.refusedShells === refusedBefore; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.ok(seen.refusedShells > refusedBefore, "B asked for a lock shell of its own and was refused");
    await new Promise((r) => setTimeout(r, 300));
    // Before: B's `exec 8>>` ran in the main shell now, closing A's descriptor (A's flock gone).
    assert.equal(takes(WAS_LOCK), 0, "B waits while A's lock lives on the main shell's fd 8");
    finishA();
    assert.deepEqual(await Promise.all([a, b]), ["a", "b"]);
    const at = (pred: (x: string) => boolean): number => seen.scripts.findIndex(pred);
    const releaseA = at((x) => x.includes("exec 8>&-"));
    assert.ok(releaseA > at((x) => x.includes(`exec 8>>${WEB_LOCK}`)), "A released");
    assert.ok(at((x) => x.includes(`exec 8>>${WAS_LOCK}`)) > releaseA, "B took its lock after A's release");
  } finally {
    refuseShells = false;
  }
});

test("review 12d N1a: a named lock taken inside another's work on the same host, both in the main shell (lock shells refused), is refused after its waitSec, naming both lock files and the fix; a lock after them is taken at once", async () => {
  await runChecked(host, [{ label: "open the main shell first", script: "true" }]);
  refuseShells = true;
  seen.scripts.length = 0;
  try {
    const takes = (file: string): number => seen.scripts.filter((x) => x.includes(`exec 8>>${file}`)).length;
    const outer = await withNamedHostLock(
      host,
      "asg-group",
      async () => {
        // Before: the inner lock waited for the main shell's fd 8, held by this very lock, for ever.
        const bounded = new Promise<string>((r) =>
          setTimeout(() => r("still waiting after 20 s"), 20_000).unref(),
        );
        return Promise.race([
          withNamedHostLock(host, "asg-group", async () => "inner ran", 1, WAS_LOCK).catch((e: unknown) => e),
          bounded,
        ]);
      },
      5,
      WEB_LOCK,
    );
    assert.ok(outer instanceof Error, `the inner lock is refused, not left waiting: ${String(outer)}`);
    assert.match(
      outer.message,
      /the asg-group lock \/var\/lib\/kvmlab\/asg\/was\/group\.lock could not be taken within 1 s: sshd refused it a shell of its own \(MaxSessions\)/,
    );
    assert.match(
      outer.message,
      /stayed held by the lock \/var\/lib\/kvmlab\/asg\/web\/group\.lock in this process/,
    );
    assert.match(outer.message, /Fix: raise MaxSessions in that host's sshd_config/);
    assert.equal(takes(WEB_LOCK), 1, "the outer lock lived in the main shell");
    assert.equal(takes(WAS_LOCK), 0, "the refused inner lock never touched fd 8");
    // The inner lock's turn, given up, does not block the turns after it.
    const bounded = new Promise<string>((r) => setTimeout(() => r("blocked"), 10_000).unref());
    const third = await Promise.race([
      withNamedHostLock(host, "asg-group", async () => "third", 2, WAS_LOCK),
      bounded,
    ]);
    assert.equal(third, "third");
    assert.equal(takes(WAS_LOCK), 1, "taken in the main shell");
  } finally {
    refuseShells = false;
  }
});

test("review 12d N1: a take in the main shell that FAILED gives back the main shell's fd 8 turn: the next lock that falls back proceeds", async () => {
  // A take held by the fake host (its lock file's path holds "hold-this-shell"), then the
  // connection drops under it: the take fails after its turn was taken.
  const HELD_LOCK = "/var/lib/kvmlab/asg/hold-this-shell/group.lock";
  await runChecked(host, [{ label: "open the main shell first", script: "true" }]);
  refuseShells = true;
  seen.scripts.length = 0;
  // Never opened: the held take's answer is never written (its channel is gone by then).
  gate = new Promise<void>(() => undefined);
  try {
    const a = withNamedHostLock(host, "asg-group", async () => "a ran", 1, HELD_LOCK).catch(
      (e: unknown) => e,
    );
    for (let i = 0; i < 500 && !seen.scripts.some((x) => x.includes(`exec 8>>${HELD_LOCK}`)); i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.ok(
      seen.scripts.some((x) => x.includes(`exec 8>>${HELD_LOCK}`)),
      "A's take reached the main shell",
    );
    gate = null;
    await dropConnections();
    const failed = await a;
    assert.ok(failed instanceof Error, `A's take failed: ${String(failed)}`);
    refuseShells = false;
    await runChecked(host, [{ label: "open the main shell first", script: "true" }]);
    refuseShells = true;
    // Before (the turn given back on success only): C waited for A's turn (and is now refused
    // after its waitSec).
    const bounded = new Promise<string>((r) => setTimeout(() => r("blocked"), 10_000).unref());
    const c = await Promise.race([
      withNamedHostLock(host, "asg-group", async () => "c", 2, WEB_LOCK).catch((e: unknown) => String(e)),
      bounded,
    ]);
    assert.equal(c, "c");
    assert.ok(
      seen.scripts.some((x) => x.includes(`exec 8>>${WEB_LOCK}`)),
      "C's lock lived in the main shell",
    );
  } finally {
    gate = null;
    refuseShells = false;
  }
});
