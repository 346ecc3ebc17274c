/**
 * The pure pieces of a 3-tier app (web, WAS, DB, bastion) that the ThreeTierApp component, the
 * lab program and `kvmlab render` share, so the three give byte-identical kernel command lines
 * and the same security-group rules:
 *
 * - `tierRoleArgs`: the sandbox guest test image's `lab.*` kernel options for a tier member
 *   (the guest image contract: lab.name, lab.role, lab.upstream, lab.db, lab.sshkey);
 * - `threeTierRules`: the canonical groups: web←any:80/443, WAS←web:8080 (and ←the WAS load
 *   balancer's VIP, which is the source of proxied traffic and health checks), DB←WAS:3306,
 *   SSH←bastion on every tier, the bastion←`sshFrom`:22.
 *
 * No Pulumi, no I/O.
 */
import type { SecurityGroupRule } from "../core/securityGroup";

export type TierRole = "web" | "was" | "db" | "bastion";

/** The port each tier serves. */
export const TIER_PORTS = { web: 80, was: 8080, db: 3306, ssh: 22 } as const;

export interface TierRoleHints {
  readonly role: TierRole;
  /** The guest's name (what it answers with). */
  readonly name: string;
  /** web: the WAS VIP `IP:PORT` it forwards to. */
  readonly upstream?: string;
  /** was: the database `IP:PORT` it queries; db: ignored. */
  readonly db?: string;
  /** An OpenSSH public key line: the guest runs dropbear with it as root's key. */
  readonly sshPublicKey?: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const ADDRESS_PORT = /^(\d{1,3}\.){3}\d{1,3}:\d{1,5}$/;

/** `ssh-ed25519 AAAA… comment` → `ssh-ed25519:AAAA…` (the form `lab.sshkey=` takes). */
export function sshKeyArg(publicKeyLine: string): string {
  const [type, blob] = publicKeyLine.trim().split(/\s+/);
  if (
    !/^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521))$/.test(type ?? "") ||
    !/^[A-Za-z0-9+/]+=*$/.test(blob ?? "")
  )
    throw new Error(
      `sshPublicKey: expected an OpenSSH public key line ("ssh-ed25519 AAAA… comment"), got ${JSON.stringify(publicKeyLine.slice(0, 40))}`,
    );
  return `${type}:${blob}`;
}

/**
 * The `lab.*` kernel options of one tier member, starting with a space (append them to the
 * image's command line). Throws naming the field for a value the guest would refuse.
 */
export function tierRoleArgs(h: TierRoleHints): string {
  if (!NAME.test(h.name))
    throw new Error(`name: ${JSON.stringify(h.name)} is not a guest name (letters, digits, _.-)`);
  const out = [`lab.name=${h.name}`, `lab.role=${h.role}`];
  if (h.role === "web") {
    if (h.upstream === undefined || !ADDRESS_PORT.test(h.upstream))
      throw new Error(
        `upstream: the web tier needs the WAS VIP as IP:PORT, got ${JSON.stringify(h.upstream)}`,
      );
    out.push(`lab.upstream=${h.upstream}`);
  }
  if (h.role === "was") {
    if (h.db === undefined || !ADDRESS_PORT.test(h.db))
      throw new Error(`db: the WAS tier needs the database as IP:PORT, got ${JSON.stringify(h.db)}`);
    out.push(`lab.db=${h.db}`);
  }
  if (h.sshPublicKey !== undefined && h.sshPublicKey !== "")
    out.push(`lab.sshkey=${sshKeyArg(h.sshPublicKey)}`);
  return ` ${out.join(" ")}`;
}

/** Group names of an app's canonical security groups. */
export interface ThreeTierGroupNames {
  readonly bastion: string;
  readonly web: string;
  readonly was: string;
  /** Holds the WAS load balancer's VIP (no rules of its own: the VIP port is not filtered). */
  readonly wasLb: string;
  readonly db: string;
}

export function threeTierGroupNames(app: string): ThreeTierGroupNames {
  return {
    bastion: `${app}-bastion`,
    web: `${app}-web`,
    was: `${app}-was`,
    wasLb: `${app}-was-lb`,
    db: `${app}-db`,
  };
}

const tcp = (port: number, remote: { remoteCidr?: string; remoteGroup?: string }): SecurityGroupRule => ({
  direction: "ingress",
  protocol: "tcp",
  portMin: port,
  portMax: port,
  remoteCidr: remote.remoteCidr ?? "",
  remoteGroup: remote.remoteGroup ?? "",
  ethertype: "IPv4",
});

/** The canonical ingress rules of each group (egress stays Neutron's default: open). */
export function threeTierRules(
  g: ThreeTierGroupNames,
  sshFrom = "0.0.0.0/0",
): Record<keyof ThreeTierGroupNames, SecurityGroupRule[]> {
  const ssh = tcp(TIER_PORTS.ssh, { remoteGroup: g.bastion });
  return {
    bastion: [tcp(TIER_PORTS.ssh, { remoteCidr: sshFrom })],
    web: [tcp(80, { remoteCidr: "0.0.0.0/0" }), tcp(443, { remoteCidr: "0.0.0.0/0" }), ssh],
    was: [tcp(TIER_PORTS.was, { remoteGroup: g.web }), tcp(TIER_PORTS.was, { remoteGroup: g.wasLb }), ssh],
    wasLb: [],
    db: [tcp(TIER_PORTS.db, { remoteGroup: g.was }), ssh],
  };
}

/** `ssh -J <user>@<bastion> <user>@<address>`: how an operator reaches a tier member. */
export function proxyJumpCommand(user: string, bastion: string, address: string): string {
  return `ssh -o ProxyJump=${user}@${bastion} ${user}@${address}`;
}
