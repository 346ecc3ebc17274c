/**
 * Live migration over TLS (issue 15): the migrate command line asks libvirt for TLS, and the
 * host steps that make each host's migration certificates, run here against a temporary root
 * with the real openssl: what they make, with which modes, what they print (never a key), that
 * a second run changes nothing, that a new address remakes the server certificate, that a
 * folder of someone else's certificates is refused untouched, and that a peer's CA joins QEMU's
 * trust list (a leaf certificate does not).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import {
  MIGRATION_TLS_DIR,
  migrateStep,
  migrationTlsAddresses,
  migrationTlsStep,
  parseCaCertificate,
  trustPeerStep,
} from "../../../provider/server/migrate";
import { testHost } from "./fixtures";

function run(script: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("bash", ["-c", script], { encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function openssl(args: string[]): string {
  const r = spawnSync("openssl", args, { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

/** A temporary host root: its own /etc/libvirt/qemu.conf (optional lines) and nothing else. */
function hostRoot(qemuConf: string[] = []): string {
  const r = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-mtls-"));
  if (qemuConf.length > 0) {
    fs.mkdirSync(path.join(r, "etc/libvirt"), { recursive: true });
    fs.writeFileSync(path.join(r, "etc/libvirt/qemu.conf"), qemuConf.join("\n") + "\n");
  }
  return r;
}

/** A PEM certificate's sha256 fingerprint as trustPeerStep names its file (64 lowercase hex). */
function fingerprint(pem: string): string {
  const r = spawnSync("openssl", ["x509", "-noout", "-fingerprint", "-sha256"], {
    input: pem,
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.replace(/.*=/, "").replace(/[:\s]/g, "").toLowerCase();
}

/** CA certificates in the order the trust list holds peers (their files' names, sorted). */
const byFingerprint = (pems: string[]): string =>
  pems
    .map((p) => [fingerprint(p), p] as const)
    .sort((x, y) => (x[0] < y[0] ? -1 : 1))
    .map((x) => x[1])
    .join("");

const mode = (f: string): string => (fs.statSync(f).mode & 0o777).toString(8);

test("the migrate command asks libvirt for TLS on the tunnel address (memory and disks)", () => {
  const dst = testHost("hv2", 2);
  for (const s of [
    migrateStep("web1", dst, false, 120).script,
    migrateStep("web1", dst, true, 240, undefined, ["vda", "vdb"]).script,
  ]) {
    assert.match(s, /virsh -q -c qemu:\/\/\/system migrate --live --persistent --undefinesource --tls /);
    assert.match(s, new RegExp(`--migrateuri tcp://${dst.tunnelAddress.replace(/\./g, "\\.")} `));
    assert.match(s, new RegExp(`--listen-address ${dst.tunnelAddress.replace(/\./g, "\\.")} `));
  }
  assert.deepEqual(migrationTlsAddresses(dst), [dst.tunnelAddress, dst.address]);
  assert.deepEqual(migrationTlsAddresses({ ...dst, tunnelAddress: "" }), [dst.address]);
});

test("a host's migration certificates: made once, root-only keys, never printed, renewed for a new address", () => {
  const root = hostRoot(['user = "root"', 'group = "root"']);
  try {
    const step = migrationTlsStep("hv1", ["10.254.0.11", "10.255.0.11"], { root });
    assert.doesNotMatch(step.script, /PRIVATE KEY/);
    const r1 = run(step.script);
    assert.equal(r1.status, 0, r1.stderr);
    // It prints the CA certificate and nothing else (no key, no openssl chatter).
    const ca = parseCaCertificate(r1.stdout);
    assert.ok(ca !== "", r1.stdout);
    assert.equal(r1.stdout.trim(), ca.trim());
    assert.doesNotMatch(r1.stdout + r1.stderr, /PRIVATE KEY/);

    const d = path.join(root, "etc/pki/qemu");
    const k = path.join(root, MIGRATION_TLS_DIR);
    assert.equal(mode(k), "700");
    assert.equal(mode(path.join(k, "ca-key.pem")), "600");
    for (const n of ["server", "client"]) {
      assert.equal(mode(path.join(d, `${n}-key.pem`)), "600", `${n} key: root only (QEMU runs as root)`);
      assert.equal(mode(path.join(d, `${n}-cert.pem`)), "644");
      assert.match(fs.readFileSync(path.join(d, `${n}-key.pem`), "utf8"), /BEGIN PRIVATE KEY/);
      assert.match(
        openssl(["verify", "-CAfile", path.join(k, "ca-cert.pem"), path.join(d, `${n}-cert.pem`)]),
        /OK/,
      );
    }
    assert.ok(!fs.existsSync(path.join(d, "ca-key.pem")), "the CA key is not in QEMU's folder");
    const server = openssl(["x509", "-in", path.join(d, "server-cert.pem"), "-noout", "-text"]);
    assert.match(server, /IP Address:10\.254\.0\.11, IP Address:10\.255\.0\.11/);
    assert.match(server, /TLS Web Server Authentication/);
    assert.match(server, /CA:FALSE/);
    assert.match(
      openssl(["x509", "-in", path.join(d, "client-cert.pem"), "-noout", "-text"]),
      /TLS Web Client Authentication/,
    );
    assert.equal(fs.readFileSync(path.join(d, "ca-cert.pem"), "utf8"), ca, "QEMU trusts the host's own CA");

    // A second run changes nothing.
    const before = fs.readdirSync(d).map((f) => [f, fs.readFileSync(path.join(d, f), "utf8")]);
    const r2 = run(step.script);
    assert.equal(r2.status, 0, r2.stderr);
    assert.equal(r2.stdout, r1.stdout);
    assert.deepEqual(
      fs.readdirSync(d).map((f) => [f, fs.readFileSync(path.join(d, f), "utf8")]),
      before,
    );

    // Another tunnel address: a new server certificate (and key) naming it AND the addresses
    // it named (another stack may reach the host by them), from a new CA constrained to them all.
    const key1 = fs.readFileSync(path.join(d, "server-key.pem"), "utf8");
    const r3 = run(migrationTlsStep("hv1", ["10.254.9.11", "10.255.0.11"], { root }).script);
    assert.equal(r3.status, 0, r3.stderr);
    const ca3 = parseCaCertificate(r3.stdout);
    assert.notEqual(ca3, ca);
    assert.match(
      openssl(["x509", "-in", path.join(k, "ca-cert.pem"), "-noout", "-ext", "nameConstraints"]),
      /critical\n\s+Permitted:\n\s+IP:10\.254\.0\.11\/255\.255\.255\.255\n\s+IP:10\.255\.0\.11\/255\.255\.255\.255\n\s+IP:10\.254\.9\.11\/255\.255\.255\.255\n/,
    );
    for (const n of ["server", "client"])
      openssl(["verify", "-CAfile", path.join(d, "ca-cert.pem"), path.join(d, `${n}-cert.pem`)]);
    assert.match(
      openssl(["x509", "-in", path.join(d, "server-cert.pem"), "-noout", "-ext", "subjectAltName"]),
      /IP Address:10\.254\.0\.11, IP Address:10\.255\.0\.11, IP Address:10\.254\.9\.11\n/,
    );
    assert.notEqual(fs.readFileSync(path.join(d, "server-key.pem"), "utf8"), key1);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("the certificate folder qemu.conf names is used; a key group QEMU runs as may read the keys", () => {
  const group = spawnSync("getent", ["group", "daemon"], { encoding: "utf8" }).status === 0 ? "daemon" : "";
  const root = hostRoot([
    'migrate_tls_x509_cert_dir = "/etc/pki/kvmlab-migrate"',
    group ? `group = "${group}"` : 'group = "root"',
  ]);
  try {
    const r = run(migrationTlsStep("hv1", ["10.254.0.11"], { root }).script);
    assert.equal(r.status, 0, r.stderr);
    const d = path.join(root, "etc/pki/kvmlab-migrate");
    assert.ok(fs.existsSync(path.join(d, "server-cert.pem")));
    assert.ok(!fs.existsSync(path.join(root, "etc/pki/qemu")));
    // A QEMU that is not root enters the folder (libvirt's documented layout), under umask 077.
    assert.equal(mode(d), "755");
    assert.equal(mode(path.join(root, "etc/pki")), "755");
    if (group) {
      const st = fs.statSync(path.join(d, "server-key.pem"));
      assert.equal(mode(path.join(d, "server-key.pem")), "640");
      assert.equal(st.uid, 0);
      const gid = Number(spawnSync("getent", ["group", group], { encoding: "utf8" }).stdout.split(":")[2]);
      assert.equal(st.gid, gid);
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("someone else's certificates are refused untouched; encrypted-key settings are refused", () => {
  const root = hostRoot(['group = "root"']);
  try {
    const d = path.join(root, "etc/pki/qemu");
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, "server-cert.pem"), "the admin's own\n");
    const r = run(migrationTlsStep("hv1", ["10.254.0.11"], { root }).script);
    assert.equal(r.status, 42, r.stderr);
    assert.match(r.stderr, /server-cert\.pem exists and kvmlab did not make it/);
    assert.deepEqual(fs.readdirSync(d), ["server-cert.pem"]);
    assert.equal(fs.readFileSync(path.join(d, "server-cert.pem"), "utf8"), "the admin's own\n");
    assert.ok(!fs.existsSync(path.join(root, MIGRATION_TLS_DIR, "ca-key.pem")), "no CA made");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  const root2 = hostRoot(['migrate_tls_x509_secret_uuid = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"']);
  try {
    const r = run(migrationTlsStep("hv1", ["10.254.0.11"], { root: root2 }).script);
    assert.equal(r.status, 41, r.stderr);
    assert.match(r.stderr, /migrate_tls_x509_secret_uuid/);
  } finally {
    fs.rmSync(root2, { recursive: true, force: true });
  }
  assert.throws(() => migrationTlsStep("hv1;reboot", ["10.254.0.11"]), /invalid host name/);
  assert.throws(() => migrationTlsStep("hv1", ["10.0.0.1 -x"]), /neither an IPv4 address nor a DNS name/);
  assert.throws(() => migrationTlsStep("hv1", []), /at least one address/);
});

test("a peer's CA joins QEMU's trust list (beside the peer's older one); a leaf certificate does not", () => {
  const a = hostRoot(['group = "root"']);
  const b = hostRoot(['group = "root"']);
  try {
    const caA = parseCaCertificate(run(migrationTlsStep("hv1", ["10.254.0.11"], { root: a }).script).stdout);
    const caB = parseCaCertificate(run(migrationTlsStep("hv2", ["10.254.0.12"], { root: b }).script).stdout);
    assert.ok(caA && caB && caA !== caB);
    for (let i = 0; i < 2; i++) {
      const r = run(trustPeerStep("hv2", caB, { root: a }).script);
      assert.equal(r.status, 0, r.stderr);
    }
    const bundle = path.join(a, "etc/pki/qemu/ca-cert.pem");
    assert.equal(fs.readFileSync(bundle, "utf8"), caA + caB, "own CA, then the peer's, once");
    // hv1's client certificate now verifies against hv2's trust list once hv2 trusts hv1, and
    // hv2's server certificate against hv1's.
    assert.equal(run(trustPeerStep("hv1", caA, { root: b }).script).status, 0);
    openssl(["verify", "-CAfile", bundle, path.join(b, "etc/pki/qemu/server-cert.pem")]);
    openssl([
      "verify",
      "-CAfile",
      path.join(b, "etc/pki/qemu/ca-cert.pem"),
      path.join(a, "etc/pki/qemu/client-cert.pem"),
    ]);
    // hv2 makes a new CA: hv1 trusts it too (peer CAs are added, keyed by fingerprint).
    fs.rmSync(path.join(b, MIGRATION_TLS_DIR, "ca-key.pem"));
    const caB2 = parseCaCertificate(run(migrationTlsStep("hv2", ["10.254.0.12"], { root: b }).script).stdout);
    assert.notEqual(caB2, caB);
    assert.equal(run(trustPeerStep("hv2", caB2, { root: a }).script).status, 0);
    assert.equal(fs.readFileSync(bundle, "utf8"), caA + byFingerprint([caB, caB2]));
    // A leaf (not a CA) is refused on the host; text that is not one certificate before.
    const leaf = fs.readFileSync(path.join(b, "etc/pki/qemu/server-cert.pem"), "utf8");
    const r = run(trustPeerStep("hv3", leaf, { root: a }).script);
    assert.equal(r.status, 44, r.stderr);
    assert.equal(fs.readFileSync(bundle, "utf8"), caA + byFingerprint([caB, caB2]));
    assert.throws(() => trustPeerStep("hv3", "not a certificate"), /did not give one PEM CA certificate/);
    assert.throws(() => trustPeerStep("hv3", caA + caB), /did not give one PEM CA certificate/);
    assert.throws(() => trustPeerStep("../hv3", caA), /invalid peer host name/);
  } finally {
    fs.rmSync(a, { recursive: true, force: true });
    fs.rmSync(b, { recursive: true, force: true });
  }
});

test("stacks that name or address hosts differently keep each other's trust and addresses (M2)", () => {
  const h1 = hostRoot(['group = "root"']);
  const x2 = hostRoot(['group = "root"']); // stack X's "kvm2"
  const y2 = hostRoot(['group = "root"']); // stack Y's "kvm2", another machine
  try {
    const ca1 = parseCaCertificate(
      run(migrationTlsStep("kvm1", ["10.254.0.11"], { root: h1 }).script).stdout,
    );
    const caX = parseCaCertificate(
      run(migrationTlsStep("kvm2", ["10.254.0.12"], { root: x2 }).script).stdout,
    );
    const caY = parseCaCertificate(
      run(migrationTlsStep("kvm2", ["10.254.7.12"], { root: y2 }).script).stdout,
    );
    // An older kvmlab kept one peer CA as peers/<name>.pem: still trusted, never duplicated.
    const legacy = path.join(h1, MIGRATION_TLS_DIR, "peers", "kvm2.pem");
    fs.writeFileSync(legacy, caX);
    // X prepares, then Y prepares under the same peer name: kvm1 trusts both machines.
    assert.equal(run(trustPeerStep("kvm2", caX, { root: h1 }).script).status, 0);
    const r = run(trustPeerStep("kvm2", caY, { root: h1 }).script);
    assert.equal(r.status, 0, r.stderr);
    const peers = fs.readdirSync(path.join(h1, MIGRATION_TLS_DIR, "peers")).sort();
    assert.deepEqual(peers, [`${fingerprint(caX)}.pem`, `${fingerprint(caY)}.pem`, "kvm2.pem"].sort());
    assert.equal(fs.readFileSync(legacy, "utf8"), caX, "the older file is left as it was");
    const bundle = path.join(h1, "etc/pki/qemu/ca-cert.pem");
    assert.equal(fs.readFileSync(bundle, "utf8"), ca1 + byFingerprint([caX, caY]), "each CA once");
    for (const peer of [x2, y2])
      openssl(["verify", "-CAfile", bundle, path.join(peer, "etc/pki/qemu/server-cert.pem")]);

    // X reaches kvm1 by 10.254.0.11, Y by kvm1.lab and another tunnel address: the server
    // certificate names all of them, and X's next prepare changes nothing.
    const d = path.join(h1, "etc/pki/qemu");
    const ry = run(migrationTlsStep("kvm1", ["10.254.9.11", "kvm1.lab"], { root: h1 }).script);
    assert.equal(ry.status, 0, ry.stderr);
    const sanText = openssl([
      "x509",
      "-in",
      path.join(d, "server-cert.pem"),
      "-noout",
      "-ext",
      "subjectAltName",
    ]);
    assert.match(sanText, /IP Address:10\.254\.0\.11, IP Address:10\.254\.9\.11, DNS:kvm1\.lab\n/);
    const files = (): string[][] =>
      fs.readdirSync(d).map((f) => [f, fs.readFileSync(path.join(d, f), "utf8")]);
    const before = files();
    for (const addrs of [["10.254.0.11"], ["kvm1.lab", "10.254.9.11"]]) {
      const again = run(migrationTlsStep("kvm1", addrs, { root: h1 }).script);
      assert.equal(again.status, 0, again.stderr);
      assert.deepEqual(files(), before, `${addrs.join(",")}: nothing remade`);
    }
  } finally {
    for (const r of [h1, x2, y2]) fs.rmSync(r, { recursive: true, force: true });
  }
});

test("a qemu.conf that turns off the destination's client check is refused, naming the setting (L1)", () => {
  for (const [conf, setting] of [
    [["migrate_tls_x509_verify = 0"], "migrate_tls_x509_verify"],
    [["default_tls_x509_verify = 0"], "default_tls_x509_verify"],
    [["  default_tls_x509_verify=0 # off", "#migrate_tls_x509_verify = 1"], "default_tls_x509_verify"],
    [["migrate_tls_x509_verify = 1", "migrate_tls_x509_verify = 0"], "migrate_tls_x509_verify"],
  ] as const) {
    const root = hostRoot(['group = "root"', ...conf]);
    try {
      const r = run(migrationTlsStep("hv1", ["10.254.0.11"], { root }).script);
      assert.equal(r.status, 41, `${conf.join("; ")}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`qemu\\.conf sets ${setting} = 0`));
      assert.match(r.stderr, /set migrate_tls_x509_verify = 1 in qemu\.conf/);
      assert.ok(!fs.existsSync(path.join(root, MIGRATION_TLS_DIR)), "nothing made");
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  }
  // The migration setting wins over the default; 1 (or nothing) is libvirt's checking default.
  for (const conf of [
    ["default_tls_x509_verify = 0", "migrate_tls_x509_verify = 1"],
    ["default_tls_x509_verify = 1"],
  ]) {
    const root = hostRoot(['group = "root"', ...conf]);
    try {
      const r = run(migrationTlsStep("hv1", ["10.254.0.11"], { root }).script);
      assert.equal(r.status, 0, `${conf.join("; ")}: ${r.stderr}`);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  }
});

test("a remade key and certificate are put in place together: no command leaves a pair that does not match (L3)", () => {
  const root = hostRoot(['group = "root"']);
  const shim = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-mtls-shim-"));
  try {
    const d = path.join(root, "etc/pki/qemu");
    assert.equal(run(migrationTlsStep("hv1", ["10.254.0.11"], { root }).script).status, 0);
    // Every mv the step runs is followed by a look at QEMU's folder, as a QEMU loading its
    // credentials right then would see it: each key must match its certificate.
    const log = path.join(shim, "log");
    const realMv = spawnSync("bash", ["-c", "command -v mv"], { encoding: "utf8" }).stdout.trim();
    fs.writeFileSync(
      path.join(shim, "mv"),
      [
        "#!/bin/bash",
        `${realMv} "$@" || exit $?`,
        `d=${JSON.stringify(d)}`,
        "for n in server client; do",
        '  a=$(openssl pkey -in "$d/$n-key.pem" -pubout 2>/dev/null); b=$(openssl x509 -in "$d/$n-cert.pem" -noout -pubkey 2>/dev/null)',
        `  [ "$a" = "$b" ] || echo "$n: mismatch after mv $*" >> ${JSON.stringify(log)}`,
        "done",
        `echo "mv $*" >> ${JSON.stringify(log)}`,
      ].join("\n") + "\n",
      { mode: 0o755 },
    );
    const key1 = fs.readFileSync(path.join(d, "server-key.pem"), "utf8");
    // A new address remakes both certificates.
    const r = spawnSync("bash", ["-c", migrationTlsStep("hv1", ["10.254.9.11"], { root }).script], {
      encoding: "utf8",
      env: { ...process.env, PATH: `${shim}:${process.env.PATH ?? ""}` },
    });
    assert.equal(r.status, 0, r.stderr);
    assert.notEqual(fs.readFileSync(path.join(d, "server-key.pem"), "utf8"), key1, "remade");
    const lines = fs.readFileSync(log, "utf8");
    assert.doesNotMatch(lines, /mismatch/, lines);
    assert.match(lines, /mv .*server-key\.pem.*\n/, "the shim saw the swap");
    assert.deepEqual(
      fs.readdirSync(d).filter((f) => f.startsWith(".")),
      [],
      "no staging folder or temporary file left",
    );
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
    fs.rmSync(shim, { recursive: true, force: true });
  }
});

test("QEMU's group comes from qemu.conf, never a guess; its folder is 0755 (L2)", () => {
  for (const [conf, why] of [
    [[], /qemu\.conf does not set group .*set group = "<QEMU's group>" in qemu\.conf/],
    [['#group = "root"', 'user = "root"'], /qemu\.conf does not set group/],
    [
      ['group = "kvl-no-such-group"'],
      /qemu\.conf sets group = "kvl-no-such-group", which is not a group on this host/,
    ],
  ] as const) {
    const root = hostRoot([...conf]);
    try {
      const r = run(migrationTlsStep("hv1", ["10.254.0.11"], { root }).script);
      assert.equal(r.status, 41, `${conf.join("; ")}: ${r.stderr}`);
      assert.match(r.stderr, why);
      assert.ok(!fs.existsSync(path.join(root, MIGRATION_TLS_DIR)), "nothing made");
      assert.ok(!fs.existsSync(path.join(root, "etc/pki")), "nothing made");
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  }
  // A numeric group is taken as it is; a folder the first TLS version made 0700 is opened up.
  const root = hostRoot(['group = "+0"']);
  try {
    const d = path.join(root, "etc/pki/qemu");
    assert.equal(run(migrationTlsStep("hv1", ["10.254.0.11"], { root }).script).status, 0);
    assert.equal(mode(path.join(d, "server-key.pem")), "600", "group 0 is root");
    fs.chmodSync(d, 0o700);
    const r = run(migrationTlsStep("hv1", ["10.254.0.11"], { root }).script);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(mode(d), "755");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("each host CA may sign only for its host's addresses; an unconstrained CA is remade and not trusted (M1)", () => {
  const a = hostRoot(['group = "root"']);
  const b = hostRoot(['group = "root"']);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-mtls-m1-"));
  try {
    const caA = parseCaCertificate(run(migrationTlsStep("hv1", ["10.254.0.11"], { root: a }).script).stdout);
    const rb = run(migrationTlsStep("hv2", ["10.254.0.12", "hv2.lab"], { root: b }).script);
    assert.equal(rb.status, 0, rb.stderr);
    const caB = parseCaCertificate(rb.stdout);
    const kb = path.join(b, MIGRATION_TLS_DIR);
    assert.match(
      openssl(["x509", "-in", path.join(kb, "ca-cert.pem"), "-noout", "-ext", "nameConstraints"]),
      /Name Constraints: critical\n\s+Permitted:\n\s+IP:10\.254\.0\.12\/255\.255\.255\.255\n\s+DNS:hv2\.lab\n/,
    );
    assert.equal(run(trustPeerStep("hv2", caB, { root: a }).script).status, 0);
    const bundleA = path.join(a, "etc/pki/qemu/ca-cert.pem");
    openssl(["verify", "-CAfile", bundleA, path.join(b, "etc/pki/qemu/server-cert.pem")]);

    // hv2's root signs a server certificate for hv1's address with hv2's CA: hv1 (trusting
    // hv2's CA) refuses it, as QEMU on hv1 would when hv2 pretends to be another destination.
    const leaf = (ca: string, caKey: string, ip: string, name: string): string => {
      const ext = path.join(tmp, `${name}.ext`);
      fs.writeFileSync(
        ext,
        `basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:${ip}\n`,
      );
      openssl([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        path.join(tmp, `${name}.key`),
        "-subj",
        "/CN=x",
        "-out",
        path.join(tmp, `${name}.csr`),
      ]);
      openssl([
        "x509",
        "-req",
        "-in",
        path.join(tmp, `${name}.csr`),
        "-CA",
        ca,
        "-CAkey",
        caKey,
        "-set_serial",
        "7",
        "-days",
        "2",
        "-extfile",
        ext,
        "-out",
        path.join(tmp, `${name}.pem`),
      ]);
      return path.join(tmp, `${name}.pem`);
    };
    const forged = leaf(path.join(kb, "ca-cert.pem"), path.join(kb, "ca-key.pem"), "10.254.0.11", "forged");
    const v = spawnSync("openssl", ["verify", "-CAfile", bundleA, forged], { encoding: "utf8" });
    assert.notEqual(v.status, 0, v.stdout);
    assert.match(v.stdout + v.stderr, /permitted subtree violation/);
    // The same CA's certificate for its own address verifies (the refusal is the constraint).
    openssl([
      "verify",
      "-CAfile",
      bundleA,
      leaf(path.join(kb, "ca-cert.pem"), path.join(kb, "ca-key.pem"), "10.254.0.12", "own"),
    ]);

    // A CA without constraints (as the first TLS version made them): a peer refuses it, a
    // peers/<name>.pem of one stays on disk but out of the trust list, and its own host remakes it.
    const oldKey = path.join(tmp, "old-ca.key");
    const oldCa = path.join(tmp, "old-ca.pem");
    openssl([
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      oldKey,
      "-out",
      oldCa,
      "-days",
      "3650",
      "-subj",
      "/O=kvmlab/CN=kvmlab migration CA hv2",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    const oldPem = fs.readFileSync(oldCa, "utf8");
    const refused = run(trustPeerStep("hv2", oldPem, { root: a }).script);
    assert.equal(refused.status, 44, refused.stderr);
    assert.match(refused.stderr, /has no name constraints/);
    const legacy = path.join(a, MIGRATION_TLS_DIR, "peers", "hv3.pem");
    fs.writeFileSync(legacy, oldPem);
    assert.equal(run(trustPeerStep("hv2", caB, { root: a }).script).status, 0);
    assert.equal(fs.readFileSync(bundleA, "utf8"), caA + caB, "the unconstrained CA is not trusted");
    assert.equal(fs.readFileSync(legacy, "utf8"), oldPem, "and not deleted");

    fs.copyFileSync(oldKey, path.join(kb, "ca-key.pem"));
    fs.copyFileSync(oldCa, path.join(kb, "ca-cert.pem"));
    const r2 = run(migrationTlsStep("hv2", ["10.254.0.12"], { root: b }).script);
    assert.equal(r2.status, 0, r2.stderr);
    const caB2 = parseCaCertificate(r2.stdout);
    assert.notEqual(caB2, oldPem);
    assert.match(
      openssl(["x509", "-in", path.join(kb, "ca-cert.pem"), "-noout", "-ext", "nameConstraints"]),
      /IP:10\.254\.0\.12\/255\.255\.255\.255\n\s+DNS:hv2\.lab\n/,
      "remade for every address the host had",
    );
    for (const n of ["server", "client"])
      openssl([
        "verify",
        "-CAfile",
        path.join(kb, "ca-cert.pem"),
        path.join(b, "etc/pki/qemu", `${n}-cert.pem`),
      ]);
  } finally {
    for (const r of [a, b, tmp]) fs.rmSync(r, { recursive: true, force: true });
  }
});
