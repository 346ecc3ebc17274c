/**
 * Keypair provider without hosts: import validation (types, options, newlines, weak RSA), the
 * generated ed25519 pair checked by OpenSSH's own ssh-keygen and by ssh2's parser, fingerprints,
 * diff (every change replaces), JSON round trip, secrecy of the private key, serialization.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import {
  Keypair,
  diffKeypair,
  generateEd25519,
  keypairProvider,
  parsePublicKey,
  type KeypairInputs,
  type KeypairOutputs,
} from "../../../provider/keypair";
import { UNKNOWN, hostPoolStats } from "../../../provider/host";
import { assertSerializable } from "../../harness/serialization";

function sshKeygen(
  args: string[],
  input?: string,
): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("ssh-keygen", args, { encoding: "utf8", input });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A real key of `type` made by ssh-keygen in a temporary folder. */
function keygen(type: string, bits?: number): { pub: string; fingerprint: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-kp-"));
  try {
    const f = path.join(dir, "k");
    const r = sshKeygen([
      "-q",
      "-t",
      type,
      ...(bits ? ["-b", String(bits)] : []),
      "-N",
      "",
      "-C",
      "me@lab",
      "-f",
      f,
    ]);
    assert.equal(r.status, 0, r.stderr);
    const fp = sshKeygen(["-l", "-E", "sha256", "-f", `${f}.pub`]).stdout.split(" ")[1];
    return { pub: fs.readFileSync(`${f}.pub`, "utf8"), fingerprint: fp };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function check(
  news: Record<string, unknown>,
): Promise<{ inputs: KeypairInputs; failures: { property: string; reason: string }[] }> {
  const r = await keypairProvider.check!({} as KeypairInputs, news as unknown as KeypairInputs);
  return {
    inputs: r.inputs as KeypairInputs,
    failures: (r.failures ?? []) as { property: string; reason: string }[],
  };
}

test("imports ed25519, rsa and ecdsa keys made by ssh-keygen, with OpenSSH's fingerprint", async () => {
  for (const [type, bits] of [["ed25519"], ["rsa", 2048], ["ecdsa", 256], ["ecdsa", 521]] as [
    string,
    number?,
  ][]) {
    const k = keygen(type, bits);
    const { inputs, failures } = await check({ keyName: "me", publicKey: k.pub });
    assert.deepEqual(failures, [], `${type}`);
    const { outs } = await keypairProvider.create!(inputs);
    const o = outs as KeypairOutputs;
    assert.equal(o.origin, "imported");
    assert.equal(o.fingerprint, k.fingerprint, `${type} fingerprint`);
    assert.equal(o.publicKeyLine, k.pub.trim());
    assert.equal(o.privateKey, "");
    assert.equal(o.bits, bits ?? 256);
  }
});

test("fails when an imported key has options, a second line, a wrong type or too few RSA bits", async () => {
  const ed = keygen("ed25519").pub.trim();
  const cases: [string, RegExp][] = [
    [`command="/bin/sh" ${ed}`, /publicKey: authorized_keys options .* are not allowed/],
    [`${ed}\n${ed}`, /publicKey: expected exactly one line/],
    [`ssh-dss AAAAB3NzaC1kc3MAAACBAP`, /key type "ssh-dss" is not supported; use ssh-ed25519/],
    [ed.replace("ssh-ed25519", "ssh-rsa"), /not a ssh-rsa key/],
    ["ssh-ed25519 not*base64", /not base64/],
    [`${ed} evil\u0007`, /control characters/],
    [keygen("rsa", 1024).pub, /RSA keys need at least 2048 bits, this one has 1024/],
    ["", /./], // "" means generate: no failure, checked below
  ];
  for (const [publicKey, want] of cases.slice(0, -1)) {
    const { failures } = await check({ keyName: "k", publicKey });
    assert.equal(failures.length, 1, publicKey);
    assert.equal(failures[0].property, "publicKey");
    assert.match(failures[0].reason, want);
  }
  assert.deepEqual((await check({ keyName: "k", publicKey: "" })).failures, []);
});

test("fails on a bad keyName or comment, naming the field; accepts unknowns during preview", async () => {
  const bad = await check({ keyName: "a b;rm", comment: "has space" });
  assert.deepEqual(
    bad.failures.map((f) => f.property),
    ["keyName", "comment"],
  );
  assert.match(bad.failures[0].reason, /^keyName: expected a name/);
  const ed = keygen("ed25519").pub;
  const both = await check({ keyName: "k", publicKey: ed, comment: "x" });
  assert.match(both.failures[0].reason, /comment: only for generated keys/);
  const preview = await check({ keyName: UNKNOWN, publicKey: UNKNOWN, comment: UNKNOWN });
  assert.deepEqual(preview.failures, []);
  const gen = await check({ keyName: "k" });
  assert.deepEqual(gen.inputs, { keyName: "k", publicKey: "", comment: "kvmlab-k" });
});

test("a generated ed25519 pair is read back by ssh-keygen and ssh2, and the fingerprints agree", async () => {
  const { inputs } = await check({ keyName: "gen" });
  const { id, outs } = await keypairProvider.create!(inputs);
  const o = outs as KeypairOutputs;
  assert.equal(id, "gen");
  assert.equal(o.origin, "generated");
  assert.match(
    o.privateKey,
    /^-----BEGIN OPENSSH PRIVATE KEY-----\n[\s\S]+\n-----END OPENSSH PRIVATE KEY-----\n$/,
  );
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-kp-"));
  try {
    const f = path.join(dir, "id");
    fs.writeFileSync(f, o.privateKey, { mode: 0o600 });
    const y = sshKeygen(["-y", "-f", f]);
    assert.equal(y.status, 0, y.stderr);
    assert.equal(
      y.stdout.trim().split(" ").slice(0, 2).join(" "),
      o.publicKeyLine.split(" ").slice(0, 2).join(" "),
    );
    const l = sshKeygen(["-l", "-E", "sha256", "-f", f]);
    assert.equal(l.stdout.split(" ")[1], o.fingerprint);
    assert.match(l.stdout, /kvmlab-gen \(ED25519\)/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const ssh2 = require("ssh2") as { utils: { parseKey(k: string): { type: string } | Error } };
  const parsed = ssh2.utils.parseKey(o.privateKey);
  assert.ok(!(parsed instanceof Error), String(parsed));
  assert.equal((parsed as { type: string }).type, "ssh-ed25519");
  // Two generations differ; outputs survive a JSON round trip.
  assert.notEqual(generateEd25519("x").privateKey, generateEd25519("x").privateKey);
  assert.deepEqual(JSON.parse(JSON.stringify(o)), o);
});

test("diff: no change is no change (no host touched); every input change replaces", () => {
  const before = hostPoolStats();
  const olds: KeypairOutputs = {
    keyName: "k",
    publicKey: "",
    comment: "kvmlab-k",
    origin: "generated",
    keyType: "ssh-ed25519",
    publicKeyLine: "ssh-ed25519 AAAA",
    fingerprint: "SHA256:x",
    bits: 256,
    privateKey: "secret",
  };
  const same = diffKeypair(olds, { keyName: "k", publicKey: "", comment: "kvmlab-k" });
  assert.equal(same.changes, false);
  assert.deepEqual(same.replaces, []);
  assert.deepEqual(diffKeypair(olds, { keyName: "k2", publicKey: "", comment: "kvmlab-k" }).replaces, [
    "keyName",
  ]);
  assert.deepEqual(diffKeypair(olds, { keyName: "k", publicKey: UNKNOWN, comment: "kvmlab-k" }).replaces, [
    "publicKey",
  ]);
  assert.deepEqual(hostPoolStats(), before);
});

test("the error for a bad key never echoes the key material, and privateKey is a secret output", async () => {
  const { failures } = await check({ keyName: "k", publicKey: "ssh-ed25519 QUFBQUFBQUFBQUFBQQ==" });
  assert.doesNotMatch(failures[0].reason, /QUFBQUFB/);
  // The class asks the engine to keep privateKey secret: look at the registration it sends.
  await pulumi.runtime.setMocks({ newResource: (a) => ({ id: a.name, state: a.inputs }), call: () => ({}) });
  const monitor = pulumi.runtime.getMonitor() as unknown as {
    registerResource(
      req: { getType(): string; getAdditionalsecretoutputsList(): string[] },
      cb: unknown,
    ): unknown;
  };
  const original = monitor.registerResource.bind(monitor);
  const seen = new Promise<string[]>((resolve) => {
    monitor.registerResource = (req, cb) => {
      if (req.getType() === "pulumi-nodejs:dynamic/kvmlab:Keypair")
        resolve(req.getAdditionalsecretoutputsList());
      return original(req, cb);
    };
  });
  const kp = new Keypair("k");
  assert.deepEqual(await seen, ["privateKey"]);
  assert.ok(kp.privateKey);
});

test("the keypair provider is serialization-safe (no handlebars, yaml or captured modules)", async () => {
  const { provider } = await assertSerializable(keypairProvider, {
    methods: ["check", "diff", "create", "read", "update", "delete"],
    forbid: [/handlebars/, /require\("yaml"\)/, /node-ssh/],
  });
  const create = provider.create as (i: KeypairInputs) => Promise<{ outs: KeypairOutputs }>;
  const { outs } = await create({ keyName: "s", publicKey: "", comment: "c" });
  assert.equal(outs.keyType, "ssh-ed25519");
});

test("parsePublicKey keeps the comment and rejects a mislabelled ecdsa curve", () => {
  const k = keygen("ecdsa", 384).pub.trim();
  const p = parsePublicKey("publicKey", k);
  assert.ok(!("error" in p));
  if (!("error" in p)) assert.equal(p.comment, "me@lab");
  const wrong = parsePublicKey("publicKey", k.replace("nistp384", "nistp256"));
  assert.ok("error" in wrong);
});
