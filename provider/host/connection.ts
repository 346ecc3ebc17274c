/**
 * How a provider reaches a KVM host, and the check of that shape.
 */
import { pinFingerprint } from "./hostKey";
import {
  UNKNOWN,
  checkDeviceName,
  checkHostAddress,
  checkName,
  checkPort,
  checkUser,
  collect,
  isIPv4,
  showValue,
} from "./quote";

/**
 * One KVM host as a provider receives it (resolved, plain values). The private key arrives as
 * a Pulumi secret input and must never be logged or returned in a plain output.
 */
export interface HostConnection {
  /** Host label used in records, outputs and messages, e.g. `hv1`. */
  readonly name: string;
  /** IPv4 address or DNS name of the host's sshd. */
  readonly address: string;
  readonly port: number;
  readonly user: string;
  /** OpenSSH or PEM private key text (a secret). */
  readonly privateKey: string;
  /**
   * Pinned host key: public key line or `SHA256:` fingerprint. Empty only with
   * `trustOnFirstUse`, in which case the key seen at first connection is recorded.
   */
  readonly hostKey: string;
  /** Accept and record an unknown host key (explicit opt-in). */
  readonly trustOnFirstUse: boolean;
  /** Physical device for flat (provider) networks, e.g. `eth1`. Empty when the host has none. */
  readonly uplink: string;
  /** Underlay address for VXLAN tunnels. Empty when the host takes part in no tunnels. */
  readonly tunnelAddress: string;
}

/** Checks a host entry at `field` (e.g. `hosts[0]`); returns error texts naming each field. */
export function checkHostConnection(field: string, raw: unknown): string[] {
  if (raw === UNKNOWN) return [];
  if (raw === null || typeof raw !== "object") {
    return [
      `${field}: expected a host object {name, address, port, user, privateKey, hostKey}, got ${showValue(raw)}`,
    ];
  }
  const h = raw as Record<string, unknown>;
  const known = (v: unknown): boolean => v !== UNKNOWN;
  const errors = collect(
    known(h.name) ? checkName(`${field}.name`, h.name) : undefined,
    known(h.address) ? checkHostAddress(`${field}.address`, h.address) : undefined,
    known(h.port) ? checkPort(`${field}.port`, h.port) : undefined,
    known(h.user) ? checkUser(`${field}.user`, h.user) : undefined,
  );
  if (known(h.privateKey)) {
    if (typeof h.privateKey !== "string" || !/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(h.privateKey)) {
      // Never echo the value: it is meant to be a secret.
      errors.push(
        `${field}.privateKey: expected the text of an OpenSSH or PEM private key (pass it with pulumi.secret, or set privateKeyPath in kvmlab:hosts)`,
      );
    }
  }
  if (known(h.hostKey) && known(h.trustOnFirstUse)) {
    const tofu = h.trustOnFirstUse === true;
    if (h.trustOnFirstUse !== undefined && typeof h.trustOnFirstUse !== "boolean") {
      errors.push(`${field}.trustOnFirstUse: expected true or false, got ${showValue(h.trustOnFirstUse)}`);
    }
    if (h.hostKey === undefined || h.hostKey === "") {
      if (!tofu) {
        errors.push(
          `${field}.hostKey: missing; set it to the host's public key line (ssh-keyscan -p PORT ADDRESS) or its SHA256 fingerprint, or set ${field}.trustOnFirstUse to true to record the key seen first`,
        );
      }
    } else if (typeof h.hostKey !== "string") {
      errors.push(`${field}.hostKey: expected a string, got ${showValue(h.hostKey)}`);
    } else {
      const pin = pinFingerprint(h.hostKey);
      if ("error" in pin) errors.push(`${field}.hostKey: ${pin.error}, got ${showValue(h.hostKey)}`);
    }
  }
  if (h.uplink !== undefined && h.uplink !== "" && known(h.uplink)) {
    const e = checkDeviceName(`${field}.uplink`, h.uplink);
    if (e) errors.push(e);
  }
  if (
    h.tunnelAddress !== undefined &&
    h.tunnelAddress !== "" &&
    known(h.tunnelAddress) &&
    !isIPv4(h.tunnelAddress)
  ) {
    errors.push(
      `${field}.tunnelAddress: expected the IPv4 underlay address for VXLAN, got ${showValue(h.tunnelAddress)}`,
    );
  }
  return errors;
}

/** Fills defaults so the value survives a JSON round trip (no undefined fields). */
export function normalizeHostConnection(raw: Record<string, unknown>): HostConnection {
  return {
    name: raw.name as string,
    address: raw.address as string,
    port: raw.port === undefined ? 22 : (raw.port as number),
    user: raw.user === undefined ? "root" : (raw.user as string),
    privateKey: raw.privateKey as string,
    hostKey: raw.hostKey === undefined ? "" : (raw.hostKey as string),
    trustOnFirstUse: raw.trustOnFirstUse === true,
    uplink: raw.uplink === undefined ? "" : (raw.uplink as string),
    tunnelAddress: raw.tunnelAddress === undefined ? "" : (raw.tunnelAddress as string),
  };
}

/** Checks a list of hosts (`field` e.g. `hosts`): non-empty, each valid, names unique. */
export function checkHostList(field: string, raw: unknown): string[] {
  if (raw === UNKNOWN) return [];
  if (!Array.isArray(raw) || raw.length === 0) {
    return [
      `${field}: expected a non-empty list of hosts (set kvmlab:hosts, pass hosts explicitly, or start a sandbox with "sudo npx kvmlab sandbox up")`,
    ];
  }
  const errors = raw.flatMap((h, i) => checkHostConnection(`${field}[${i}]`, h));
  const seen = new Set<string>();
  raw.forEach((h, i) => {
    const name = (h as { name?: unknown } | null)?.name;
    if (typeof name === "string" && name !== UNKNOWN) {
      if (seen.has(name))
        errors.push(
          `${field}[${i}].name: host name ${showValue(name)} appears twice; host names must be unique`,
        );
      seen.add(name);
    }
  });
  return errors;
}

/**
 * The connection part that identifies a host for diffs: everything except the key material.
 * Changing the key or pin of a host does not move any object.
 */
export function hostIdentity(h: HostConnection): string {
  return `${h.user}@${h.address}:${h.port}`;
}
