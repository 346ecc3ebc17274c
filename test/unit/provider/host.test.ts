/**
 * Pure parts of the host layer: quoting, validation, framing, host-key pins, names.
 * Shell behaviour of the quoting is checked against a real local bash; no SSH here.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  UNKNOWN,
  checkDeviceName,
  checkHostConnection,
  checkHostList,
  checkName,
  checkRemotePath,
  containsUnknown,
  createFrameParser,
  deviceName,
  frameBatch,
  missingPackages,
  parseProbe,
  pinFingerprint,
  shCommand,
  shQuote,
  shortId,
  uploadStep,
} from "../../../provider/host";

const ED25519_PUB =
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@example";

function bash(script: string): { status: number | null; stdout: string } {
  const r = spawnSync("bash", ["--noprofile", "--norc", "-c", script], { encoding: "utf8" });
  return { status: r.status, stdout: r.stdout };
}

test("shQuote keeps every hostile value one literal word in bash", () => {
  const values = [
    "plain",
    "",
    "with space",
    "a;b",
    "$(id)",
    "`id`",
    "it's",
    "''",
    "\\",
    "new\nline",
    "tab\tx",
    "*",
    "~root",
    "-n",
    "ünïcødé",
    "a'b'c\"d",
    "$HOME${HOME}",
    "!event",
  ];
  for (const v of values) {
    const r = bash(`printf '%s|' ${shQuote(v)}`);
    assert.equal(r.stdout, `${v}|`, `value ${JSON.stringify(v)} quoted as ${shQuote(v)}`);
  }
  assert.equal(bash(`set -- ${shCommand("a b", "c;d", 3)}; echo $#`).stdout, "3\n");
});

test("fails when shQuote gets a NUL byte or a non-string", () => {
  assert.throws(() => shQuote("a\0b"), /NUL/);
  assert.throws(() => shQuote(5 as unknown as string), /expected a string/);
});

test("name and device checks refuse injection characters and name the field", () => {
  assert.equal(checkName("name", "net-1"), undefined);
  assert.equal(checkName("name", "Net_1.a"), undefined);
  for (const bad of ["a b", "a;b", "-x", "x\n", "$x", "a`b`", "a/b", "", "x".repeat(64), "a-", ".a", 5]) {
    const e = checkName("network.name", bad);
    assert.ok(e?.startsWith("network.name: expected a name"), String(e));
  }
  assert.equal(checkDeviceName("uplink", "eth1"), undefined);
  for (const bad of ["eth 1", "x".repeat(16), "a;b", "a/b", "", "$(x)"]) {
    assert.match(
      String(checkDeviceName("hosts[0].uplink", bad)),
      /^hosts\[0\]\.uplink: expected a network device name/,
    );
  }
  assert.equal(checkRemotePath("p", "/var/lib/kvmlab/x.json"), undefined);
  for (const bad of ["relative", "/a/../b", "/a b", "/a;b", "/a$b", "/a\nb"])
    assert.ok(checkRemotePath("p", bad));
});

test("host connections are checked field by field, secrets are never echoed, unknowns pass", () => {
  const good = {
    name: "hv1",
    address: "10.255.0.11",
    port: 22,
    user: "root",
    privateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n",
    hostKey: ED25519_PUB,
  };
  assert.deepEqual(checkHostConnection("hosts[0]", good), []);
  const errors = checkHostConnection("hosts[1]", {
    ...good,
    name: "hv;1",
    address: "a b",
    port: 0,
    user: "r$",
    privateKey: "hunter2",
    hostKey: "nonsense",
  });
  assert.equal(errors.length, 6, errors.join("\n"));
  for (const f of ["name", "address", "port", "user", "privateKey", "hostKey"]) {
    assert.ok(
      errors.some((e) => e.startsWith(`hosts[1].${f}:`)),
      `${f} in ${errors.join("\n")}`,
    );
  }
  assert.ok(!errors.join("\n").includes("hunter2"), "the private key must not be echoed");
  assert.match(
    checkHostConnection("h", { ...good, hostKey: "" }).join(),
    /h\.hostKey: missing; .*trustOnFirstUse/,
  );
  assert.deepEqual(checkHostConnection("h", { ...good, hostKey: "", trustOnFirstUse: true }), []);
  assert.deepEqual(checkHostConnection("h", { ...good, address: UNKNOWN, privateKey: UNKNOWN }), []);
  assert.deepEqual(checkHostList("hosts", UNKNOWN), []);
  assert.match(checkHostList("hosts", []).join(), /non-empty.*kvmlab sandbox up/);
  assert.match(
    checkHostList("hosts", [good, good]).join(),
    /hosts\[1\]\.name: host name "hv1" appears twice/,
  );
  assert.equal(containsUnknown({ a: [1, { b: UNKNOWN }] }), true);
  assert.equal(containsUnknown({ a: [1, { b: "x" }] }), false);
});

test("host-key pins: key lines and SHA256 fingerprints give the same fingerprint", () => {
  const fromLine = pinFingerprint(ED25519_PUB);
  assert.ok("fingerprint" in fromLine);
  const fp = (fromLine as { fingerprint: string }).fingerprint;
  assert.match(fp, /^SHA256:[A-Za-z0-9+/]{43}$/);
  const r = spawnSync("ssh-keygen", ["-lf", "-"], { input: `${ED25519_PUB}\n`, encoding: "utf8" });
  if (r.status === 0) assert.ok(r.stdout.includes(fp), `ssh-keygen says ${r.stdout}`);
  assert.deepEqual(pinFingerprint(fp), { fingerprint: fp });
  assert.deepEqual(pinFingerprint(`[10.0.0.1]:22 ${ED25519_PUB}`), { fingerprint: fp });
  assert.ok("error" in pinFingerprint("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ"));
  assert.ok("error" in pinFingerprint("SHA256:short"));
});

test("framing: results come back per step however the streams are chunked", () => {
  const marker = "KVL_0123abcd";
  const text = frameBatch(marker, 5, [{ script: "x" }, { script: "y", inShell: true }], true);
  assert.match(text, /\( x\n\) <\/dev\/null 9>&-; __kvl_s=\$\?/);
  assert.match(text, /\{ y\n\} <\/dev\/null; __kvl_s=\$\?/);
  assert.match(text, /'KVL_0123abcd-5'/);
  assert.match(text, /'KVL_0123abcd-6'/);
  const stdout = `hello\n${marker}-5 0\n\n${marker}-6 skip\nleftover`;
  const stderr = `warn\n${marker}-5\n\n${marker}-6\n`;
  const p = createFrameParser(marker, 5);
  // Feed one character at a time, interleaving the streams.
  for (let i = 0; i < Math.max(stdout.length, stderr.length); i++) {
    if (i < stdout.length) p.push("stdout", stdout[i]);
    if (i < stderr.length) p.push("stderr", stderr[i]);
  }
  assert.deepEqual(p.take(), [
    { seq: 5, result: { code: 0, stdout: "hello", stderr: "warn" } },
    { seq: 6, result: { code: null, stdout: "", stderr: "" } },
  ]);
  assert.equal(p.nextSeq, 7);
  assert.deepEqual(p.pending(), { stdout: "leftover", stderr: "" });
  assert.throws(() => frameBatch("bad marker", 0, [], false), /invalid marker/);
});

test("framing runs in a real bash: a step's exit or cd does not end the shell", () => {
  const marker = "KVL_feed";
  const text = frameBatch(
    marker,
    0,
    [
      { script: "cd /tmp; exit 4" },
      { script: "pwd; echo e >&2" },
      { script: "false" },
      { script: "echo skipped" },
    ],
    true,
  );
  const r = spawnSync("bash", ["--noprofile", "--norc", "-s"], { input: text, encoding: "utf8" });
  const p = createFrameParser(marker, 0);
  p.push("stdout", r.stdout);
  p.push("stderr", r.stderr);
  const got = p.take().map((x) => x.result);
  // stopOnError: the first failure skips all later steps.
  assert.deepEqual(
    got.map((x) => x.code),
    [4, null, null, null],
  );
  const q = createFrameParser(marker, 0);
  const r2 = spawnSync("bash", ["--noprofile", "--norc", "-s"], {
    input: frameBatch(marker, 0, [{ script: "cd /tmp; exit 4" }, { script: "pwd; echo e >&2" }], false),
    encoding: "utf8",
    cwd: "/",
  });
  q.push("stdout", r2.stdout);
  q.push("stderr", r2.stderr);
  assert.deepEqual(
    q.take().map((x) => x.result),
    [
      { code: 4, stdout: "", stderr: "" },
      { code: 0, stdout: "/\n", stderr: "e\n" },
    ],
  );
});

test("upload steps write atomically and skip identical content (run by a local bash)", () => {
  const fs: typeof import("node:fs") = require("node:fs");
  const os: typeof import("node:os") = require("node:os");
  const path: typeof import("node:path") = require("node:path");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-up-"));
  try {
    const target = path.join(dir, "sub", "f.txt");
    const step = uploadStep(target, "a 'b' $c\n", { mode: "0600" });
    assert.equal(bash(step.script).stdout, "changed\n");
    assert.equal(fs.readFileSync(target, "utf8"), "a 'b' $c\n");
    assert.equal(bash(step.script).stdout, "unchanged\n");
    assert.throws(() => uploadStep("/a b", "x"), /path: expected an absolute path/);
    assert.throws(() => uploadStep("/x", "x", { mode: "777; rm" }), /mode/);
    assert.throws(() => uploadStep("/x", "x", { owner: "root;x" }), /owner/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("device names are short, deterministic and distinct per name", () => {
  assert.equal(shortId("net1"), shortId("net1"));
  assert.notEqual(shortId("net1"), shortId("net2"));
  const name = deviceName("b", "a-very-long-network-name-that-goes-on");
  assert.match(name, /^kvlb-[0-9a-f]{8}$/);
  assert.ok(name.length <= 15);
});

test("the probe parser and the missing-package list", () => {
  const caps = parseProbe(
    "iproute2=yes\nflock=yes\ndnsmasq=no\nhaproxy=yes\niptables=yes\nnft=no\novs=\novskmod=no\nlibvirt=9.0.0\nqemu=7.2.0\nkvm=no\n",
  );
  assert.equal(caps.kvm, false);
  assert.equal(caps.libvirtVersion, "9.0.0");
  assert.deepEqual(missingPackages(caps, ["openvswitch", "dhcp", "linuxbridge"]), [
    "dnsmasq-base",
    "openvswitch-switch",
  ]);
  assert.deepEqual(missingPackages(caps, ["linuxbridge", "haproxy"]), []);
});

test("libvirtd stopped (virsh installed): the probe says so instead of asking to install packages, and is not cached", async () => {
  const fs = require("node:fs") as typeof import("node:fs");
  const os = require("node:os") as typeof import("node:os");
  const path = require("node:path") as typeof import("node:path");
  const { probeScript } = require("../../../provider/host/probe") as { probeScript: (l: boolean) => string };
  // The script itself, with a virsh that cannot reach its daemon first on PATH.
  const bin = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-probe-"));
  try {
    fs.writeFileSync(
      path.join(bin, "virsh"),
      "#!/bin/sh\necho 'error: failed to connect to the hypervisor' >&2\nexit 1\n",
      {
        mode: 0o755,
      },
    );
    const r = spawnSync("bash", ["--noprofile", "--norc", "-c", probeScript(true)], {
      encoding: "utf8",
      env: { PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}` },
    });
    assert.match(r.stdout, /^libvirtd=down$/m);
    assert.match(r.stdout, /^libvirt=$/m);
  } finally {
    fs.rmSync(bin, { recursive: true, force: true });
  }
  // requireFeatures on a host answering so: the error names libvirtd; a second call probes again.
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const probe = require("../../../provider/host/probe") as {
    requireFeatures: (h: unknown, f: string[]) => Promise<unknown>;
  };
  const saved = session.runChecked;
  let probes = 0;
  session.runChecked = async () => {
    probes += 1;
    return ["iproute2=yes\nflock=yes\nlibvirtd=down\nlibvirt=\nqemu=\nkvm=no"];
  };
  try {
    const h = { name: "hv9", address: "10.255.0.99", port: 22 };
    for (let i = 0; i < 2; i++)
      await assert.rejects(
        probe.requireFeatures(h, ["libvirt"]),
        /host hv9 \(10\.255\.0\.99\): libvirtd does not answer .*start it \(systemctl start libvirtd/,
      );
    assert.equal(probes, 2, "a daemon that was down is probed again, not remembered");
  } finally {
    session.runChecked = saved;
  }
});
