/**
 * Password hashing: scrypt with a random 16-byte salt (N=2^15, r=8, p=1, 32-byte key), encoded
 * as `scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>`. Only this text ever leaves the provider
 * process; the clear password stays in Pulumi's state as a secret input and nowhere else.
 */

const N = 32768;
const R = 8;
const P = 1;
const KEYLEN = 32;

/** Hashes a password with a fresh salt. */
export function hashPassword(password: string): string {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const salt = crypto.randomBytes(16);
  const key = crypto.scryptSync(password, salt, KEYLEN, { N, r: R, p: P, maxmem: 64 * 1024 * 1024 });
  return `scrypt$${N}$${R}$${P}$${salt.toString("base64")}$${key.toString("base64")}`;
}

/** True when `password` matches `encoded` (constant-time compare); false for any other form. */
export function verifyPassword(password: string, encoded: string): boolean {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const m = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(encoded);
  if (!m) return false;
  const [n, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (n > 1 << 20 || r > 32 || p > 16) return false;
  const want = Buffer.from(m[5], "base64");
  const got = crypto.scryptSync(password, Buffer.from(m[4], "base64"), want.length, {
    N: n,
    r,
    p,
    maxmem: 256 * 1024 * 1024,
  });
  return got.length === want.length && crypto.timingSafeEqual(got, want);
}
