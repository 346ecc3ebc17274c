/**
 * Names kvmlab gives to objects on hosts, and the rules a name must follow. Pure.
 *
 * Object names (servers, networks, subnets, images, records…): 1-63 letters, digits, "-", "_"
 * or ".", starting and ending with a letter or digit. Linux device names are limited to 15
 * characters, so devices carry a short deterministic id derived from the object's name (the
 * first 8 hex digits of its sha256) behind a `kvl` prefix; records map the id back to the name,
 * and create refuses an id already used by another name.
 */

/** A value as it appears in an error message: JSON, shortened to 80 characters. */
export function showValue(value: unknown): string {
  const text = JSON.stringify(value);
  if (text === undefined) return String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** The object-name rule as a regular expression. */
export const NAME_RE = /^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;

/** Object names: 1-63 of `[A-Za-z0-9_.-]`, starting and ending with a letter or digit. */
export function checkName(field: string, value: unknown): string | undefined {
  if (typeof value !== "string" || !NAME_RE.test(value)) {
    return `${field}: expected a name of 1-63 letters, digits, "-", "_" or "." starting and ending with a letter or digit, got ${showValue(value)}; rename it`;
  }
  return undefined;
}

/** The device-name rule: 1-15 characters (IFNAMSIZ - 1), a letter or digit first, then `[A-Za-z0-9_.-]`. */
export const DEVICE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

/** Linux network device names: 1-15 characters, no `/`, space, `:` or quotes. */
export function checkDeviceName(field: string, value: unknown): string | undefined {
  if (typeof value !== "string" || !DEVICE_NAME_RE.test(value)) {
    return `${field}: expected a network device name (letters, digits, "_", "." or "-", at most 15 characters), got ${showValue(value)}`;
  }
  return undefined;
}

/** 8 hex digits derived from a name (stable across runs and hosts). */
export function shortId(name: string): string {
  // Required here, not at the top: providers that use this are serialized into state.
  const crypto: typeof import("node:crypto") = require("node:crypto");
  return crypto.createHash("sha256").update(name).digest("hex").slice(0, 8);
}

/**
 * Roles of a device name: b bridge, x vxlan, d DHCP veth (host side), n DHCP veth (namespace
 * side), v load-balancer VIP veth (host side), w VIP veth (namespace side), t router legs,
 * u a VLAN network's patch port on the uplink's trunk bridge, p that trunk bridge, g a GRE
 * tunnel port, e a GRE network's tunnel bridge (userspace datapath; a letter of its own: OVS
 * bridge and port names share one name space), i the OVS internal port that carries a VXLAN
 * device's traffic into an OVS userspace-datapath bridge.
 */
export type DeviceRole = "b" | "x" | "d" | "n" | "v" | "w" | "t" | "u" | "p" | "g" | "e" | "i";

/** A device name: `kvl` + a one-letter role + `-` + shortId, e.g. `kvlb-1a2b3c4d` (13 chars). */
export function deviceName(role: DeviceRole, name: string): string {
  return `kvl${role}-${shortId(name)}`;
}
