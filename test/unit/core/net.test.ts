import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  cidrContains,
  hostRange,
  intToIp,
  ipToInt,
  overlaps,
  parseCidr,
  prefixToNetmask,
} from "../../../core/net";
import { assertFieldError } from "../templates/support";

test("ipToInt and intToIp round-trip", () => {
  for (const ip of ["0.0.0.0", "10.0.0.1", "192.168.255.254", "255.255.255.255"]) {
    assert.equal(intToIp(ipToInt(ip)), ip);
  }
  assert.equal(ipToInt("10.0.0.1"), 167772161);
});

test("fails when an address is malformed, naming the field", () => {
  for (const bad of ["10.0.0", "10.0.0.256", "010.0.0.1", "10.0.0.1 ", "10.0.0.1\n", "a.b.c.d"]) {
    assertFieldError(() => ipToInt(bad, "subnets[0].gateway"), "subnets[0].gateway");
  }
});

test("parseCidr computes network, broadcast and netmask, and rejects host bits", () => {
  const c = parseCidr("10.1.2.0/24");
  assert.equal(intToIp(c.network), "10.1.2.0");
  assert.equal(intToIp(c.broadcast), "10.1.2.255");
  assert.equal(prefixToNetmask(24), "255.255.255.0");
  assert.equal(prefixToNetmask(0), "0.0.0.0");
  assert.equal(prefixToNetmask(32), "255.255.255.255");
  assertFieldError(
    () => parseCidr("10.1.2.1/24", "cidr"),
    "cidr",
    /network address for \/24 is 10\.1\.2\.0\/24/,
  );
  assertFieldError(() => parseCidr("10.1.2.0/33", "cidr"), "cidr");
  assertFieldError(() => parseCidr("10.1.2.0", "cidr"), "cidr");
});

test("cidrContains, overlaps and hostRange", () => {
  const a = parseCidr("10.0.0.0/16");
  const b = parseCidr("10.0.5.0/24");
  const c = parseCidr("10.1.0.0/24");
  assert.ok(cidrContains(a, "10.0.255.255"));
  assert.ok(!cidrContains(b, "10.0.6.1"));
  assert.ok(overlaps(a, b) && overlaps(b, a));
  assert.ok(!overlaps(a, c));
  assert.deepEqual(hostRange(b).map(intToIp), ["10.0.5.1", "10.0.5.254"]);
  assert.deepEqual(hostRange(parseCidr("10.0.0.4/31")).map(intToIp), ["10.0.0.4", "10.0.0.5"]);
});
