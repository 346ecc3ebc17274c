/**
 * Validation shared by every view builder: each check either returns the value (narrowed)
 * or throws a {@link FieldError} that names the field, shows the value and says how to fix it.
 * Values are rejected, never rewritten: a name that would need escaping is a mistake to report.
 */
import { createHash } from "node:crypto";
import { FieldError } from "../core/errors";
import { NAME_RE } from "../core/names";

/** An input problem tied to one field (`servers[2].nics[0].mac`, `listeners[0].port` …). */
export { FieldError };

const show = (value: unknown): string => (typeof value === "string" ? JSON.stringify(value) : String(value));

/** Object names: 1–63 of letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit. */
export const NAME_PATTERN = NAME_RE;
/** RFC 1123 host name label (guest host names). */
export const HOSTNAME_PATTERN = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
/**
 * Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no `/`, `:`, space or control character.
 * Wider than core/names.ts `checkDeviceName` (kvmlab's own host devices): a guest may call its
 * NICs anything Linux accepts.
 */
export const IFNAME_PATTERN = /^[A-Za-z0-9_.-]{1,15}$/;
/** OpenStack's MAC prefix; kvmlab generates every guest MAC inside it. */
export const MAC_PATTERN = /^fa:16:3e(?::[0-9a-f]{2}){3}$/;
export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** Absolute paths built from a conservative character set (no spaces, quotes or `..`). */
export const PATH_PATTERN = /^(?:\/[A-Za-z0-9._+-]+)+$/;

export function checkName(field: string, value: unknown): string {
  if (typeof value !== "string" || !NAME_PATTERN.test(value)) {
    throw new FieldError(
      field,
      `invalid name ${show(value)}`,
      "use 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
    );
  }
  return value;
}

export function checkHostname(field: string, value: unknown): string {
  if (typeof value !== "string" || !HOSTNAME_PATTERN.test(value)) {
    throw new FieldError(
      field,
      `invalid host name ${show(value)}`,
      "use 1-63 letters, digits or '-', starting and ending with a letter or digit",
    );
  }
  return value;
}

export function checkIfName(field: string, value: unknown): string {
  if (typeof value !== "string" || !IFNAME_PATTERN.test(value) || value === "." || value === "..") {
    const tooLong = typeof value === "string" && value.length > 15;
    throw new FieldError(
      field,
      tooLong
        ? `interface name ${show(value)} is ${value.length} characters; Linux allows at most 15`
        : `invalid interface name ${show(value)}`,
      "use at most 15 letters, digits, '-', '_' or '.'",
    );
  }
  return value;
}

export function checkMac(field: string, value: unknown): string {
  if (typeof value !== "string" || !MAC_PATTERN.test(value)) {
    throw new FieldError(
      field,
      `invalid MAC ${show(value)}`,
      "use a lowercase MAC in the fa:16:3e:xx:xx:xx range (see deterministicMac)",
    );
  }
  return value;
}

export function checkUuid(field: string, value: unknown): string {
  if (typeof value !== "string" || !UUID_PATTERN.test(value)) {
    throw new FieldError(
      field,
      `invalid UUID ${show(value)}`,
      "use a lowercase UUID like 123e4567-e89b-42d3-a456-426614174000 (see deterministicUuid)",
    );
  }
  return value;
}

export function checkPath(field: string, value: unknown): string {
  if (
    typeof value !== "string" ||
    !PATH_PATTERN.test(value) ||
    value.split("/").some((part) => part === "." || part === "..") ||
    value.length > 1024
  ) {
    throw new FieldError(
      field,
      `invalid path ${show(value)}`,
      "use an absolute path of letters, digits, '.', '_', '+', '-' and '/', without '..' or spaces",
    );
  }
  return value;
}

export function checkInt(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new FieldError(field, `expected an integer from ${min} to ${max}, got ${show(value)}`);
  }
  return value;
}

export function checkPort(field: string, value: unknown): number {
  return checkInt(field, value, 1, 65535);
}

export function checkOneOf<T extends string>(field: string, value: unknown, allowed: readonly T[]): T {
  if (typeof value !== "string" || !(allowed as readonly string[]).includes(value)) {
    throw new FieldError(field, `expected one of ${allowed.join(", ")}, got ${show(value)}`);
  }
  return value as T;
}

export function checkBool(field: string, value: unknown): boolean {
  if (typeof value !== "boolean") throw new FieldError(field, `expected true or false, got ${show(value)}`);
  return value;
}

/**
 * Free text that ends up inside a quoted scalar (YAML) or a comment: no control characters
 * except, when `multiline`, newline and tab.
 */
export function checkText(
  field: string,
  value: unknown,
  opts: { multiline?: boolean; max?: number } = {},
): string {
  const max = opts.max ?? 65536;
  // eslint-disable-next-line no-control-regex
  const bad = opts.multiline ? /[\u0000-\u0008\u000b-\u001f\u007f]/ : /[\u0000-\u001f\u007f]/;
  if (typeof value !== "string" || bad.test(value) || value.length > max) {
    throw new FieldError(
      field,
      typeof value === "string" && value.length > max
        ? `text is ${value.length} characters; at most ${max} allowed`
        : `invalid text ${show(value)}`,
      opts.multiline
        ? "remove control characters other than newline and tab"
        : "use a single line without control characters",
    );
  }
  return value;
}

const SSH_KEY =
  /^(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}(?: [A-Za-z0-9@._+-]{1,128})?$/;

export function checkSshPublicKey(field: string, value: unknown): string {
  if (typeof value !== "string" || !SSH_KEY.test(value)) {
    throw new FieldError(
      field,
      `invalid SSH public key ${typeof value === "string" ? JSON.stringify(value.slice(0, 40)) : show(value)}`,
      "paste one line of an OpenSSH public key: '<type> <base64> [comment]', comment of letters, digits, '@._+-'",
    );
  }
  return value;
}

const CRYPT_HASH = /^\$(?:1|2[abxy]|5|6|y|gy|7)\$[./A-Za-z0-9$=,]{8,}$/;

/** A crypt(3) password hash (`$6$…`, `$y$…`). Clear-text passwords are refused. */
export function checkPasswordHash(field: string, value: unknown): string {
  if (typeof value !== "string" || !CRYPT_HASH.test(value)) {
    throw new FieldError(
      field,
      "expected a crypt(3) password hash such as $6$salt$hash; clear-text passwords are not accepted",
      "generate one with `openssl passwd -6` or `mkpasswd -m sha-512`",
    );
  }
  return value;
}

/** kvmlab's UUIDv5 namespace: a fixed value chosen once; changing it would change every domain UUID. */
const KVMLAB_NAMESPACE = "1b7c3c55-2f0a-5c70-9b4b-7f3c1f7f5a10";

/**
 * A stable RFC 4122 version-5 UUID for `seed` (e.g. "lab/project/server"): the same seed
 * always gives the same domain UUID, so re-rendering never changes a domain's identity.
 */
export function deterministicUuid(seed: string): string {
  const ns = Buffer.from(KVMLAB_NAMESPACE.replace(/-/g, ""), "hex");
  const hash = createHash("sha1").update(ns).update(seed, "utf8").digest();
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A stable MAC in fa:16:3e:xx:xx:xx for `seed` (e.g. "lab/server/port0"). */
export function deterministicMac(seed: string): string {
  const hash = createHash("sha256").update(`mac:${seed}`, "utf8").digest();
  return `fa:16:3e:${[hash[0], hash[1], hash[2]].map((b) => b.toString(16).padStart(2, "0")).join(":")}`;
}

/** `prefix` + 11 hex characters of a hash of `seed`: 14 characters, always a valid ifname. */
export function deterministicIfName(
  prefix: "tap" | "brq" | "ns-" | "qr-" | "qg-" | "vx-",
  seed: string,
): string {
  return prefix + createHash("sha256").update(`if:${seed}`, "utf8").digest("hex").slice(0, 11);
}
