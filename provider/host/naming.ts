/**
 * Names kvmlab gives to objects on hosts. Linux device names are limited to 15 characters, so
 * devices carry a short deterministic id derived from the object's name (the first 8 hex
 * digits of its sha256) behind a `kvl` prefix; records map the id back to the name, and
 * create refuses an id already used by another name.
 */

/** 8 hex digits derived from a name (stable across runs and hosts). */
export function shortId(name: string): string {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  return crypto.createHash("sha256").update(name).digest("hex").slice(0, 8);
}

/**
 * A device name: `kvl` + a one-letter role + `-` + shortId, e.g. `kvlb-1a2b3c4d` (13 chars).
 * Roles: b bridge, x vxlan, d DHCP veth (host side), n DHCP veth (namespace side).
 */
export function deviceName(role: "b" | "x" | "d" | "n" | "t" | "u", name: string): string {
  return `kvl${role}-${shortId(name)}`;
}
