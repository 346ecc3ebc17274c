/**
 * Quotas on the kit (issue 14): a resource declares what it charges its project, the kit does the
 * rest, once for every resource.
 *
 *   spec.quota = charges((i) => ({ networks: 1 }))     (charges: provider/quota.ts)
 *
 * With that declaration the resource gains the input `project` (a Project's recordId
 * `<domain>/<name>`, "" = none; the base class fills it from the program's `project` argument or
 * the stack's default project, see resource.ts) and the kit
 *   - check:  validates `project`
 *   - diff:   a new project is an update (the charge moves), never a replacement
 *   - create: reserves the usage BEFORE the resource's create, under the controller's host lock
 *             (a refusal names the quota, the usage and the limit and leaves nothing); a failed
 *             create releases it again
 *   - update: reserves the new usage first when it grows or the project/owner changes (refused →
 *             nothing changes), releases the old charge after the update succeeded, restores
 *             it when the update failed
 *   - delete: releases after the resource's delete succeeded
 * The ledger's holder is the resource's owner (issue 15's owner string: unique per stack and
 * resource). The ledger lives on the controller the create charged (hosts[0] then); its name is
 * recorded in the state as `quotaController` and every later release or move goes THERE, found
 * by name among the pinned hosts, whatever order the hosts have by then.
 *
 * Pure parts here (plan, checks); the ledger itself is provider/quota.ts.
 */
import type { Usage } from "../../core/identity";
import { isKnown } from "./check";
import type { HostConnection } from "../host/connection";
import { showValue } from "../host/quote";

/** The ledger on the controller (provider/quota.ts). */
export interface QuotaLedger {
  reserve(host: HostConnection, project: string, holder: string, usage: Usage): Promise<void>;
  release(host: HostConnection, project: string, holders: readonly string[]): Promise<void>;
}

/**
 * What a resource declares to be charged against its project's quotas. Made with
 * provider/quota.ts `charges(usage)`, which supplies the ledger.
 */
export interface QuotaSpec<I> {
  /** The usage this resource holds (pure, from its inputs). */
  usage(i: I): Usage;
  readonly ledger: QuotaLedger;
  /** Ledger holders earlier versions used for this resource (released at delete too). */
  legacyHolders?(o: I): string[];
}

/** A project reference: `<domain>/<project>`, both object names. */
export const PROJECT_REF_RE =
  /^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\/[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;

/** The domain a bare project name belongs to (Keystone's default domain). */
export const DEFAULT_PROJECT_DOMAIN = "Default";

/** `name` → `Default/name`; a `<domain>/<name>` and "" stay. Pure (the program normalizes with it). */
export function projectRefOf(s: string): string {
  return s === "" || s.includes("/") ? s : `${DEFAULT_PROJECT_DOMAIN}/${s}`;
}

/** The reason `project` is refused, or undefined. */
export function checkProjectRef(v: unknown): string | undefined {
  if (!isKnown(v) || v === "" || v === undefined) return undefined;
  return typeof v === "string" && PROJECT_REF_RE.test(v)
    ? undefined
    : `project: expected "<domain>/<project>" (a Project's recordId), a project name, or "", got ${showValue(v)}`;
}

/** One charge: this holder holds this usage in this project, on this controller. */
export interface Charge {
  project: string;
  holder: string;
  usage: Usage;
  /** Name of the controller host keeping the ledger. */
  controller: string;
}

/** The charge a resource's inputs/outputs stand for (undefined: no project, nothing charged). */
export function chargeOf<I>(q: QuotaSpec<I>, i: I, controller: string): Charge | undefined {
  const o = i as unknown as { project?: unknown; owner?: unknown };
  const project = typeof o.project === "string" ? o.project : "";
  if (project === "") return undefined;
  return { project, holder: typeof o.owner === "string" ? o.owner : "", usage: q.usage(i), controller };
}

/** True when two charges are the same ledger entry (so an update need not touch the ledger). */
export function sameCharge(a: Charge | undefined, b: Charge | undefined): boolean {
  if (!a || !b) return a === b;
  if (chargeMoves(a, b)) return false;
  const keys = new Set([...Object.keys(a.usage), ...Object.keys(b.usage)]) as Set<keyof Usage>;
  return [...keys].every((k) => (a.usage[k] ?? 0) === (b.usage[k] ?? 0));
}

/** True when `b` moves the charge to another entry (project, holder or controller). */
export function chargeMoves(a: Charge | undefined, b: Charge | undefined): boolean {
  if (!a || !b) return a !== b;
  return a.project !== b.project || a.holder !== b.holder || a.controller !== b.controller;
}

/**
 * The controller host keeping a charge's ledger: the host of that name among `hosts` (pinned to
 * its recorded key), or an error naming the fix. A state from before `quotaController` was
 * recorded uses hosts[0].
 */
export function controllerHost(hosts: readonly HostConnection[], name: string): HostConnection {
  if (name === "") {
    const h = hosts[0];
    if (!h) throw new Error("hosts: empty; the quota ledger is on the controller, hosts[0]");
    return h;
  }
  const h = hosts.find((x) => x.name === name);
  if (!h)
    throw new Error(
      `hosts: the quota ledger of this resource is on controller ${name} (recorded in the state), which is no longer in hosts; keep ${name} in hosts (any position) until the resource is deleted`,
    );
  return h;
}
