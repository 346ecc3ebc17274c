/**
 * What the servers of a lab's `apps` are: each member's tier role and the addresses it talks to,
 * from the lab and its address plan. `kvmlab render` appends them to a sandbox-image server's
 * kernel command line exactly as the ThreeTierApp component does (templates/threeTier.ts
 * `tierRoleArgs`), so the rendered domain XML is the applied one. Pure.
 */
import { TIER_PORTS, tierRoleArgs, type TierRole } from "../templates/threeTier";
import type { Lab, LabApp, LabImage } from "./model";
import type { LabPlan, PlannedServer } from "./plan";

export interface AppMember {
  readonly app: string;
  readonly role: TierRole;
  /** web: the WAS VIP and member port. */
  readonly upstream?: string;
  /** was: the database and its port. */
  readonly db?: string;
}

/** Servers of a tier, in plan order: an autoscale group's members or the one server. */
export function tierServers(plan: LabPlan, tier: LabApp["web"]): PlannedServer[] {
  if (tier.autoscaleGroup !== null) return plan.servers.filter((s) => s.group === tier.autoscaleGroup);
  return plan.servers.filter((s) => s.name === tier.server);
}

/** The port a load-balanced tier's members serve (its group's pool port), else the tier's default. */
export function tierMemberPort(lab: Lab, tier: LabApp["web"], fallback: number): number {
  const g = lab.autoscaleGroups.find((x) => x.name === tier.autoscaleGroup);
  return g?.pool?.protocolPort ?? fallback;
}

/** Server name → its role in an app. */
export function appMembers(lab: Lab, plan: LabPlan): Map<string, AppMember> {
  const out = new Map<string, AppMember>();
  for (const app of lab.apps) {
    const wasVip = app.was.loadBalancer !== null ? plan.vips[app.was.loadBalancer]?.ip : undefined;
    const wasPort = tierMemberPort(lab, app.was, TIER_PORTS.was);
    const db = tierServers(plan, app.db)[0]?.ports[0]?.ip;
    for (const role of ["web", "was", "db", "bastion"] as const)
      for (const s of tierServers(plan, app[role]))
        out.set(s.name, {
          app: app.name,
          role,
          ...(role === "web" && wasVip !== undefined ? { upstream: `${wasVip}:${wasPort}` } : {}),
          ...(role === "was" && db !== undefined ? { db: `${db}:${TIER_PORTS.db}` } : {}),
        });
  }
  return out;
}

/** The kernel command line a server of the lab boots with (kernel images). */
export function labKernelCmdline(
  image: LabImage,
  server: string,
  member: AppMember | undefined,
  publicKey: string | undefined,
): string {
  const base = image.cmdline ?? "console=ttyS0";
  if (!image.sandbox || member === undefined) return base;
  return `${base}${tierRoleArgs({ role: member.role, name: server, upstream: member.upstream, db: member.db, sshPublicKey: publicKey })}`;
}
