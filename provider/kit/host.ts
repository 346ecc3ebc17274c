/**
 * Hosts as the kit hands them to providers: the one Input<> shape a program passes
 * ({@link HostConnectionArgs}), its normalization into {@link HostConnection}, pinning of
 * trust-on-first-use keys recorded by earlier runs, host-key recording, and the fan-out over
 * hosts.
 *
 * Two host shapes exist in kvmlab: what a user writes (`HostSpec`, components/hosts.ts) and
 * what a provider receives (`HostConnection`, provider/host/connection.ts). `HostConnectionArgs`
 * is only the second one with Pulumi `Input`s, for resource arguments.
 */
import type * as pulumi from "@pulumi/pulumi";
import { normalizeHostConnection, type HostConnection } from "../host/connection";
import { pinFingerprint } from "../host/hostKey";
import { observedHostKey } from "../host/session";
import { isUnknown } from "./check";

/** A host as a program passes it to a resource (the private key should be a secret). */
export interface HostConnectionArgs {
  readonly name: pulumi.Input<string>;
  readonly address: pulumi.Input<string>;
  /** @default 22 */
  readonly port?: pulumi.Input<number>;
  /** @default "root" */
  readonly user?: pulumi.Input<string>;
  /** Private key text; wrap it in pulumi.secret. */
  readonly privateKey: pulumi.Input<string>;
  /** Public key line or SHA256 fingerprint of the host key. @default none: needs trustOnFirstUse */
  readonly hostKey?: pulumi.Input<string>;
  /** Accept the host key seen first and record it (outputs `hostKeys`). @default false */
  readonly trustOnFirstUse?: pulumi.Input<boolean>;
  /** Uplink device for provider networks, e.g. "eth1". @default none */
  readonly uplink?: pulumi.Input<string>;
  /** Underlay address for VXLAN. @default none */
  readonly tunnelAddress?: pulumi.Input<string>;
}

/** Normalizes a raw `hosts` input; entries that are not objects or are unknown stay as they are. */
export function normalizeHosts(raw: unknown): unknown {
  if (!Array.isArray(raw)) return raw;
  return raw.map((h) =>
    h !== null && typeof h === "object" && !isUnknown(h)
      ? normalizeHostConnection(h as Record<string, unknown>)
      : h,
  );
}

/** The host with its recorded trust-on-first-use key pinned (later runs stay pinned). */
export function pinnedHost(
  host: HostConnection,
  hostKeys: Record<string, string> | undefined,
): HostConnection {
  // Own properties only: a host named `constructor` or `__proto__` is not Object's (issue 15).
  const recorded =
    hostKeys && Object.prototype.hasOwnProperty.call(hostKeys, host.name) ? hostKeys[host.name] : undefined;
  return !host.hostKey && recorded ? { ...host, hostKey: recorded } : host;
}

/** Every host pinned to its recorded key. */
export function pinnedHosts(
  hosts: readonly HostConnection[],
  hostKeys: Record<string, string> | undefined,
): HostConnection[] {
  return hosts.map((h) => pinnedHost(h, hostKeys));
}

/**
 * The fingerprint to record for a host: its pin (configured, or recorded by an earlier run and
 * pinned by {@link pinnedHost}), else the key this process saw first, else "" (not contacted).
 */
export function hostKeyRecord(host: HostConnection): string {
  if (host.hostKey) {
    const pin = pinFingerprint(host.hostKey);
    return "fingerprint" in pin ? pin.fingerprint : "";
  }
  return observedHostKey(host);
}

/**
 * The `hostKeys` output: per host, {@link hostKeyRecord} of the pinned host, else what was
 * recorded before. A recorded key is never dropped while the host stays listed.
 */
export function recordHostKeys(
  hosts: readonly HostConnection[],
  old: Record<string, string> = {},
): Record<string, string> {
  const keys: Record<string, string> = Object.create(null) as Record<string, string>;
  const own = (k: string): string =>
    Object.prototype.hasOwnProperty.call(old, k) && typeof old[k] === "string" ? old[k] : "";
  for (const h of hosts) keys[h.name] = hostKeyRecord(pinnedHost(h, old)) || own(h.name) || "";
  return { ...keys };
}

/** Runs `fn` on every host in parallel; throws one error listing every host that failed. */
export async function onEveryHost<T>(
  hosts: readonly HostConnection[],
  what: string,
  fn: (h: HostConnection) => Promise<T>,
): Promise<T[]> {
  const settled = await Promise.allSettled(hosts.map((h) => fn(h)));
  const errors = settled.flatMap((s) =>
    s.status === "rejected" ? [s.reason instanceof Error ? s.reason.message : String(s.reason)] : [],
  );
  if (errors.length > 0) throw new Error(`${what} failed:\n - ${errors.join("\n - ")}`);
  return settled.map((s) => (s as PromiseFulfilledResult<T>).value);
}

/** The host called `name` among `hosts`, or an error naming the choices. */
export function hostNamed(hosts: readonly HostConnection[], name: string, what: string): HostConnection {
  const h = hosts.find((x) => x.name === name);
  if (!h)
    throw new Error(`host ${name} is not among the ${what}'s hosts (${hosts.map((x) => x.name).join(", ")})`);
  return h;
}
