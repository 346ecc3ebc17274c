/**
 * Which KVM hosts a program uses, resolved in the PROGRAM (never inside a provider closure):
 *
 *   1. hosts passed explicitly to {@link resolveHosts};
 *   2. else stack config `kvmlab:hosts`: a list of
 *      {name, address, port?, user?, privateKey? (secret) | privateKeyPath?, hostKey?,
 *       trustOnFirstUse?, uplink?, tunnelAddress?};
 *   3. else a running local `kvmlab sandbox` (its status.json), with a log line saying so;
 *   4. else an error saying how to start a sandbox or set `kvmlab:hosts`.
 *
 * Private keys read from `privateKeyPath` become Pulumi secrets here, so they reach providers
 * only as secret inputs.
 */
import * as fs from "node:fs";
import * as pulumi from "@pulumi/pulumi";
import type { HostConnectionArgs } from "../provider/network";
import { readSandboxStatus, type SandboxHost } from "./sandbox";

/** A host as written in `kvmlab:hosts` or passed to resolveHosts. */
export interface HostSpec {
  readonly name: string;
  readonly address: string;
  /** @default 22 */
  readonly port?: number;
  /** @default "root" */
  readonly user?: string;
  /** Private key text (make it a secret: `pulumi config set --secret`). */
  readonly privateKey?: pulumi.Input<string>;
  /** Path of the private key file on the machine running the program. */
  readonly privateKeyPath?: string;
  /** Host key: public key line or SHA256 fingerprint. */
  readonly hostKey?: string;
  /** Accept and record the key seen first instead of a pin. @default false */
  readonly trustOnFirstUse?: boolean;
  /** Uplink NIC for provider (flat) networks. */
  readonly uplink?: string;
  /** VXLAN underlay address. */
  readonly tunnelAddress?: string;
}

/** Where hosts came from, for messages and tests. */
export type HostSource = "explicit" | "config" | "sandbox";

/** The part of a sandbox host this module reads (the contract is components/sandbox.ts). */
type SandboxHostLike = Pick<SandboxHost, "name" | "address" | "port" | "user" | "privateKeyPath"> &
  Partial<Pick<SandboxHost, "knownHostsPath" | "hostKey" | "uplink" | "tunnelAddress">>;

export interface ResolveHostsOptions {
  /** Stack config to read `kvmlab:hosts` from. @default new pulumi.Config("kvmlab") */
  readonly config?: pulumi.Config;
  /** Sandbox instance to fall back to. @default $KVMLAB_SANDBOX_INSTANCE or "default" */
  readonly sandboxInstance?: string;
  /** Reads a sandbox status (tests inject one). @default readSandboxStatus (components/sandbox.ts) */
  readonly readSandbox?: (instance?: string) => { instance?: string; hosts: SandboxHostLike[] } | undefined;
  /** Where the "using sandbox hosts" note goes. @default pulumi.log.info */
  readonly log?: (message: string) => void;
}

/** Finds a host's key line in a known_hosts file (`[addr]:port` or `addr` entries). */
export function hostKeyFromKnownHosts(text: string, address: string, port: number): string | undefined {
  const names = port === 22 ? [address, `[${address}]:22`] : [`[${address}]:${port}`];
  for (const line of text.split("\n")) {
    const words = line.trim().split(/\s+/);
    if (words.length < 3 || words[0].startsWith("#")) continue;
    if (words[0].split(",").some((n) => names.includes(n))) return `${words[1]} ${words[2]}`;
  }
  return undefined;
}

function fromSpec(spec: HostSpec, field: string): HostConnectionArgs {
  let privateKey: pulumi.Input<string>;
  if (spec.privateKey !== undefined) privateKey = pulumi.secret(spec.privateKey);
  else if (spec.privateKeyPath !== undefined) {
    try {
      privateKey = pulumi.secret(fs.readFileSync(spec.privateKeyPath, "utf8"));
    } catch (err) {
      throw new Error(
        `${field}.privateKeyPath: cannot read ${spec.privateKeyPath} (${(err as Error).message}); fix the path or set privateKey`,
        { cause: err },
      );
    }
  } else {
    throw new Error(`${field}: set privateKey (a secret) or privateKeyPath`);
  }
  return {
    name: spec.name,
    address: spec.address,
    port: spec.port ?? 22,
    user: spec.user ?? "root",
    privateKey,
    hostKey: spec.hostKey ?? "",
    trustOnFirstUse: spec.trustOnFirstUse ?? false,
    uplink: spec.uplink ?? "",
    tunnelAddress: spec.tunnelAddress ?? "",
  };
}

/**
 * The hosts to use, with where they came from. Throws (naming the fix) when there are none.
 */
export function resolveHosts(
  explicit?: readonly HostSpec[],
  opts: ResolveHostsOptions = {},
): { source: HostSource; hosts: HostConnectionArgs[] } {
  if (explicit !== undefined) {
    if (explicit.length === 0)
      throw new Error(
        "hosts: an explicit host list is empty; pass at least one host or leave it out to use kvmlab:hosts",
      );
    return { source: "explicit", hosts: explicit.map((h, i) => fromSpec(h, `hosts[${i}]`)) };
  }
  const config = opts.config ?? new pulumi.Config("kvmlab");
  const configured = config.getObject<HostSpec[]>("hosts");
  if (configured !== undefined) {
    if (!Array.isArray(configured) || configured.length === 0)
      throw new Error(
        "kvmlab:hosts: expected a non-empty list of hosts {name, address, port, user, privateKeyPath, hostKey}",
      );
    return { source: "config", hosts: configured.map((h, i) => fromSpec(h, `kvmlab:hosts[${i}]`)) };
  }
  const instance = opts.sandboxInstance;
  const status = (opts.readSandbox ?? readSandboxStatus)(instance);
  if (status && status.hosts.length > 0) {
    const hosts = status.hosts.map((h, i) => {
      let hostKey = h.hostKey;
      if (!hostKey && h.knownHostsPath) {
        try {
          hostKey = hostKeyFromKnownHosts(fs.readFileSync(h.knownHostsPath, "utf8"), h.address, h.port);
        } catch {
          hostKey = undefined;
        }
      }
      return fromSpec({ ...h, hostKey }, `sandbox host ${i}`);
    });
    (opts.log ?? ((m: string) => void pulumi.log.info(m)))(
      `using kvmlab sandbox hosts ${status.hosts.map((h) => `${h.name} (${h.address}:${h.port})`).join(", ")} from instance ${status.instance ?? instance ?? "default"}; set kvmlab:hosts to use other hosts`,
    );
    return { source: "sandbox", hosts };
  }
  throw new Error(
    "no KVM hosts: set stack config kvmlab:hosts (a list of {name, address, port, user, privateKeyPath, hostKey}), " +
      'pass hosts explicitly, or start a local sandbox with "sudo npx kvmlab sandbox up"',
  );
}
