import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  checkIfName,
  checkMac,
  checkName,
  checkPasswordHash,
  checkPath,
  checkSshPublicKey,
  checkText,
  deterministicIfName,
  deterministicMac,
  deterministicUuid,
  FieldError,
  MAC_PATTERN,
  UUID_PATTERN,
} from "../../../templates";
import { assertFieldError, INJECTIONS } from "./support";

test("checkName rejects every injection attempt and names the field", () => {
  assert.equal(checkName("servers[0].name", "web-0.a_b"), "web-0.a_b");
  for (const bad of INJECTIONS) assertFieldError(() => checkName("servers[0].name", bad), "servers[0].name");
  assertFieldError(() => checkName("x", "a".repeat(64)), "x");
});

test("checkIfName enforces 15 characters and a safe charset", () => {
  assert.equal(checkIfName("nic", "tap0123456789ab"), "tap0123456789ab");
  assertFieldError(
    () => checkIfName("nic", "tap0123456789abc"),
    "nic",
    /16 characters; Linux allows at most 15/,
  );
  for (const bad of [...INJECTIONS, "eth0:1", "a/b", ".", ".."])
    assertFieldError(() => checkIfName("nic", bad), "nic");
});

test("checkMac accepts only lowercase fa:16:3e MACs", () => {
  assert.equal(checkMac("mac", "fa:16:3e:0a:bc:01"), "fa:16:3e:0a:bc:01");
  for (const bad of ["FA:16:3E:0A:BC:01", "52:54:00:00:00:01", "fa:16:3e:0a:bc", "fa:16:3e:0a:bc:01\n"]) {
    assertFieldError(() => checkMac("mac", bad), "mac");
  }
});

test("checkPath refuses relative paths, '..', spaces and quotes", () => {
  assert.equal(checkPath("p", "/var/lib/kvmlab/a.qcow2"), "/var/lib/kvmlab/a.qcow2");
  for (const bad of ["var/lib", "/var/../etc", "/a b", "/a'b", "/a\nb", "/a;b", "/a$b", "/", "/a//b"]) {
    assertFieldError(() => checkPath("p", bad), "p");
  }
});

test("checkText allows newlines only when multiline", () => {
  assert.equal(checkText("t", "a\nb\tc", { multiline: true }), "a\nb\tc");
  assertFieldError(() => checkText("t", "a\nb"), "t");
  assertFieldError(() => checkText("t", "a\u0000b", { multiline: true }), "t");
  assertFieldError(() => checkText("t", "a\rb", { multiline: true }), "t");
});

test("passwords must be hashes, never clear text", () => {
  assert.ok(checkPasswordHash("pw", "$6$saltsalt$abcdefghijklmnopqrstuvwxyz0123456789./ABCDEFG"));
  assertFieldError(() => checkPasswordHash("pw", "hunter2"), "pw", /clear-text passwords are not accepted/);
});

test("SSH public keys are one safe line", () => {
  assert.ok(checkSshPublicKey("k", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0 user@host"));
  assertFieldError(() => checkSshPublicKey("k", "ssh-ed25519 AAAA user@host\nssh-rsa AAAA evil"), "k");
  assertFieldError(() => checkSshPublicKey("k", "ssh-ed25519 AAAA $(id)"), "k");
});

test("deterministicUuid, deterministicMac and deterministicIfName are stable and well-formed", () => {
  assert.equal(deterministicUuid("lab/p/web-0"), deterministicUuid("lab/p/web-0"));
  assert.notEqual(deterministicUuid("lab/p/web-0"), deterministicUuid("lab/p/web-1"));
  assert.match(deterministicUuid("x"), UUID_PATTERN);
  assert.equal(deterministicUuid("x")[14], "5", "version 5");
  assert.match(deterministicMac("lab/web-0/0"), MAC_PATTERN);
  assert.equal(deterministicMac("a"), deterministicMac("a"));
  assert.notEqual(deterministicMac("a"), deterministicMac("b"));
  const tap = deterministicIfName("tap", "port-1");
  assert.equal(tap.length, 14);
  assert.equal(checkIfName("t", tap), tap);
});

test("FieldError carries field, problem and fix", () => {
  const err = new FieldError("a.b", "is wrong", "make it right");
  assert.equal(err.message, "a.b: is wrong; make it right");
  assert.equal(err.field, "a.b");
});
