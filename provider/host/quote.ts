/**
 * Quoting and validation of every value that reaches a remote shell.
 *
 * Commands are built only from values that passed one of the validators below, and every
 * argument is quoted with {@link shQuote}. The validators return an error text (naming the
 * field and the fix) instead of throwing, so provider `check` methods can collect them all.
 *
 * Serialization: these are plain functions with no captured state; provider closures capture
 * them by value.
 */
import { showValue } from "../../core/names";
import { isIPv4 } from "../../core/net";

/**
 * Quotes a string for a POSIX shell: the result is always one word, whatever the input.
 * Single quotes keep everything literal; an embedded `'` becomes `'\''`. NUL cannot be passed
 * through a shell at all, so it is refused.
 */
export function shQuote(value: string): string {
  if (typeof value !== "string") throw new TypeError(`shQuote: expected a string, got ${typeof value}`);
  if (value.includes("\0")) throw new Error("shQuote: a NUL byte cannot be passed to a shell");
  if (value !== "" && /^[A-Za-z0-9_@%+=:,./-]+$/.test(value)) return value;
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** Quotes every argument and joins them into one command line. */
export function shCommand(...args: (string | number)[]): string {
  return args.map((a) => shQuote(typeof a === "number" ? String(a) : a)).join(" ");
}

/** Shows a value in an error message without letting control characters through. */
export { showValue };

/** The value Pulumi sends for an input that is not known yet (during preview). */
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

/** True when `value` (or anything inside it) is Pulumi's unknown sentinel. */
export function containsUnknown(value: unknown): boolean {
  if (value === UNKNOWN) return true;
  if (Array.isArray(value)) return value.some((v) => containsUnknown(v));
  if (value !== null && typeof value === "object")
    return Object.values(value).some((v) => containsUnknown(v));
  return false;
}

/**
 * Object names (networks, subnets, hosts): 1-63 letters, digits, `-`, `_` or `.`, starting and
 * ending with a letter or digit (the same rule as templates/validate.ts). They appear in file
 * names, namespace names and external_ids, so anything wider is refused.
 */
export { checkName, checkDeviceName } from "../../core/names";

/** Dotted-quad IPv4 address. */
export { isIPv4 };

export function checkIPv4(field: string, value: unknown): string | undefined {
  return isIPv4(value)
    ? undefined
    : `${field}: expected an IPv4 address like 10.0.0.1, got ${showValue(value)}`;
}

/** Host address for SSH: an IPv4 address or a DNS name (letters, digits, `-`, `.`). */
export function checkHostAddress(field: string, value: unknown): string | undefined {
  if (isIPv4(value)) return undefined;
  if (
    typeof value === "string" &&
    /^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/.test(value)
  ) {
    return undefined;
  }
  return `${field}: expected an IPv4 address or a DNS name, got ${showValue(value)}`;
}

/** POSIX user names as OpenSSH accepts them. */
export function checkUser(field: string, value: unknown): string | undefined {
  if (typeof value !== "string" || !/^[a-z_][a-z0-9_-]{0,31}$/.test(value)) {
    return `${field}: expected a user name like "root" (lower-case letters, digits, "_" or "-"), got ${showValue(value)}`;
  }
  return undefined;
}

export function checkPort(field: string, value: unknown): string | undefined {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > 65535) {
    return `${field}: expected a TCP port 1-65535, got ${showValue(value)}`;
  }
  return undefined;
}

/** Absolute paths on a host: no `..`, no whitespace, quotes or shell metacharacters. */
export function checkRemotePath(field: string, value: unknown): string | undefined {
  if (
    typeof value !== "string" ||
    !/^\/[A-Za-z0-9_.+@,=:/-]*$/.test(value) ||
    /(^|\/)\.\.(\/|$)/.test(value)
  ) {
    return `${field}: expected an absolute path of letters, digits and "_.+@,=:/-" with no "..", got ${showValue(value)}`;
  }
  return undefined;
}

/** Collects the error texts of several checks into one list. */
export function collect(...results: (string | undefined)[]): string[] {
  return results.filter((r): r is string => typeof r === "string");
}
