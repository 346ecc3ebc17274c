/**
 * Keystone's identity model as kvmlab keeps it, and quota arithmetic. Pure: no I/O, no Pulumi.
 *
 *   effectiveRoles(model, user, project)   direct + via groups + inherited + implied (Keystone's
 *                                          `GET /v3/role_assignments?effective`)
 *   projectDepth / checkProjectTree        parent/child hierarchy, depth ≤ MAX_PROJECT_DEPTH
 *   DEFAULT_QUOTAS, quotaViolations,       Nova's and Neutron's defaults, -1 = unlimited;
 *   applyReservation                       a reservation ledger per project (usage = sum of entries)
 *
 * Ids: a domain is its name; a project, user, group or domain-specific role is
 * `<domain>/<name>` (names are unique within their domain, as in Keystone); a global role is its
 * name. `identityId` builds them; record names on hosts come from `identityRecordName` (a digest).
 */

/** Keystone's `[DEFAULT] max_project_tree_depth`. */
export const MAX_PROJECT_DEPTH = 5;

/** The domain `keystone-manage bootstrap` creates. */
export const DEFAULT_DOMAIN = "Default";

/** Bootstrap roles and their implied chain (admin → manager → member → reader). */
export const BOOTSTRAP_ROLES: readonly { name: string; implies: string[] }[] = [
  { name: "admin", implies: ["manager"] },
  { name: "manager", implies: ["member"] },
  { name: "member", implies: ["reader"] },
  { name: "reader", implies: [] },
  { name: "service", implies: [] },
];

/** A role no role may imply (Keystone's `[assignment] prohibited_implied_role`). */
export const PROHIBITED_IMPLIED_ROLES: readonly string[] = ["admin"];

export interface IdentityProject {
  /** `<domain>/<name>` */
  id: string;
  domain: string;
  /** Parent project id, or "" for a top-level project (its parent is the domain). */
  parent: string;
}

export interface IdentityGroup {
  /** `<domain>/<name>` */
  id: string;
  /** User ids. */
  members: string[];
}

export interface IdentityRole {
  id: string;
  implies: string[];
}

export interface IdentityAssignment {
  /** `user` or `group` id. */
  actor: { kind: "user" | "group"; id: string };
  /** A project id or a domain name. */
  target: { kind: "project" | "domain"; id: string };
  role: string;
  /**
   * Keystone's OS-INHERIT: on a domain, applies to every project of the domain (not to the
   * domain itself); on a project, to every project below it (not to the project itself).
   */
  inherited: boolean;
}

export interface IdentityModel {
  projects: IdentityProject[];
  groups: IdentityGroup[];
  roles: IdentityRole[];
  assignments: IdentityAssignment[];
}

/** `<domain>/<name>`: the id of a domain-owned object. */
export function identityId(domain: string, name: string): string {
  return `${domain}/${name}`;
}

/**
 * A record name for an id. Domain plus object name can be 127 characters and record names are
 * object names (at most 63, no `/`), so the record is named by a digest of the id: `id-` + 24 hex
 * digits of its sha256. The record itself carries the id and the names.
 */
export function identityRecordName(id: string): string {
  // Required here, not at the top: providers that use this are serialized into state.
  const crypto: typeof import("node:crypto") = require("node:crypto");
  return `id-${crypto.createHash("sha256").update(id).digest("hex").slice(0, 24)}`;
}

/** The projects from `project` up to its top-level ancestor (the project first). */
export function projectAncestry(projects: readonly IdentityProject[], project: string): string[] {
  const byId = new Map(projects.map((p) => [p.id, p]));
  const chain: string[] = [];
  let cur = byId.get(project);
  while (cur && !chain.includes(cur.id)) {
    chain.push(cur.id);
    cur = cur.parent ? byId.get(cur.parent) : undefined;
  }
  return chain;
}

/** Depth of a project: 1 for a top-level project. */
export function projectDepth(projects: readonly IdentityProject[], project: string): number {
  return projectAncestry(projects, project).length;
}

/**
 * Problems of a new project placed under `parent` (""): the parent exists, is in the same
 * domain, and the depth stays ≤ MAX_PROJECT_DEPTH. Returns reasons naming `parent`.
 */
export function checkProjectPlacement(
  projects: readonly IdentityProject[],
  domain: string,
  parent: string,
): string[] {
  if (parent === "") return [];
  const p = projects.find((x) => x.id === parent);
  if (!p) return [`parent: project ${parent} does not exist on the controller; create it first`];
  if (p.domain !== domain)
    return [
      `parent: project ${parent} is in domain ${p.domain}, not ${domain}; a hierarchy stays in one domain`,
    ];
  const depth = projectDepth(projects, parent) + 1;
  return depth > MAX_PROJECT_DEPTH
    ? [
        `parent: the project would be at depth ${depth}, deeper than ${MAX_PROJECT_DEPTH} (Keystone's max_project_tree_depth); attach it higher`,
      ]
    : [];
}

/** A role and every role it implies, transitively (cycles are cut). */
export function expandImplied(roles: readonly IdentityRole[], names: Iterable<string>): Set<string> {
  const byId = new Map(roles.map((r) => [r.id, r]));
  const out = new Set<string>();
  const todo = [...names];
  while (todo.length > 0) {
    const r = todo.pop() as string;
    if (out.has(r)) continue;
    out.add(r);
    for (const i of byId.get(r)?.implies ?? []) todo.push(i);
  }
  return out;
}

/**
 * The roles `user` holds on `project`, as Keystone puts them into a project-scoped token:
 * assignments to the user or to any group the user is in, made on the project itself (not
 * inherited), inherited from any ancestor project, or inherited from the project's domain;
 * then every implied role. Sorted.
 */
export function effectiveRoles(model: IdentityModel, user: string, project: string): string[] {
  const p = model.projects.find((x) => x.id === project);
  if (!p) return [];
  const actors = new Set<string>([`user:${user}`]);
  for (const g of model.groups) if (g.members.includes(user)) actors.add(`group:${g.id}`);
  const ancestors = projectAncestry(model.projects, project).slice(1);
  const direct: string[] = [];
  for (const a of model.assignments) {
    if (!actors.has(`${a.actor.kind}:${a.actor.id}`)) continue;
    const t = a.target;
    const applies =
      (t.kind === "project" && t.id === project && !a.inherited) ||
      (t.kind === "project" && a.inherited && ancestors.includes(t.id)) ||
      (t.kind === "domain" && a.inherited && t.id === p.domain);
    if (applies) direct.push(a.role);
  }
  return [...expandImplied(model.roles, direct)].sort();
}

/** Checks an implied-role list: no self, no prohibited role. Returns reasons naming `implies`. */
export function checkImplies(role: string, implies: readonly string[]): string[] {
  const out: string[] = [];
  for (const i of implies) {
    if (i === role) out.push(`implies: role ${role} cannot imply itself`);
    if (PROHIBITED_IMPLIED_ROLES.includes(i))
      out.push(`implies: ${i} may not be implied by another role (Keystone's prohibited_implied_role)`);
  }
  return out;
}

// ---- quotas -----------------------------------------------------------------------------------

/** Quota names: Nova's compute quotas, Neutron's network quotas and Cinder's volume quotas. */
export const QUOTA_NAMES = [
  "instances",
  "cores",
  "ramMiB",
  "floatingIps",
  "networks",
  "subnets",
  "ports",
  "routers",
  "securityGroups",
  "securityGroupRules",
  "volumes",
  "gigabytes",
] as const;
export type QuotaName = (typeof QUOTA_NAMES)[number];
export type Quotas = Record<QuotaName, number>;
export type Usage = Partial<Record<QuotaName, number>>;

/** Nova's `[quota]`, Neutron's `[quotas]` and Cinder's (`quota_volumes`, `quota_gigabytes`) defaults; -1 means unlimited. */
export const DEFAULT_QUOTAS: Quotas = {
  instances: 10,
  cores: 20,
  ramMiB: 51200,
  floatingIps: 50,
  networks: 100,
  subnets: 100,
  ports: 500,
  routers: 10,
  securityGroups: 10,
  securityGroupRules: 100,
  volumes: 10,
  gigabytes: 1000,
};

/** Defaults with `overrides` applied. */
export function quotasWith(overrides: Partial<Quotas> = {}): Quotas {
  return { ...DEFAULT_QUOTAS, ...overrides };
}

/** Problems of a quota override map, naming `quotas.<name>`. */
export function checkQuotas(raw: unknown): string[] {
  if (raw === undefined) return [];
  if (raw === null || typeof raw !== "object" || Array.isArray(raw))
    return [`quotas: expected an object of quota name to limit, got ${JSON.stringify(raw)}`];
  const out: string[] = [];
  for (const [k, v] of Object.entries(raw)) {
    if (!(QUOTA_NAMES as readonly string[]).includes(k))
      out.push(`quotas.${k}: unknown quota; expected one of ${QUOTA_NAMES.join(", ")}`);
    else if (typeof v !== "number" || !Number.isInteger(v) || v < -1 || v > 2147483647)
      out.push(`quotas.${k}: expected -1 (unlimited) or an integer 0-2147483647, got ${JSON.stringify(v)}`);
  }
  return out;
}

/** A project's reservations: holder (e.g. `server:<name>`) → what it uses. */
export type Ledger = Record<string, Usage>;

/** Usage = the sum of every holder's entry. */
export function ledgerUsage(ledger: Ledger): Quotas {
  const total = Object.fromEntries(QUOTA_NAMES.map((q) => [q, 0])) as Quotas;
  for (const entry of Object.values(ledger)) for (const q of QUOTA_NAMES) total[q] += entry[q] ?? 0;
  return total;
}

export interface QuotaViolation {
  quota: QuotaName;
  usage: number;
  requested: number;
  limit: number;
}

/** The quotas `usage + requested` would exceed (a limit of -1 is never exceeded). */
export function quotaViolations(limits: Quotas, usage: Quotas, requested: Usage): QuotaViolation[] {
  const out: QuotaViolation[] = [];
  for (const q of QUOTA_NAMES) {
    const want = requested[q] ?? 0;
    if (want <= 0 || limits[q] === -1) continue;
    if (usage[q] + want > limits[q])
      out.push({ quota: q, usage: usage[q], requested: want, limit: limits[q] });
  }
  return out;
}

/** The error text of violations, naming each quota, its usage and its limit. */
export function quotaError(project: string, violations: readonly QuotaViolation[]): string {
  const parts = violations.map(
    (v) => `${v.quota}: usage ${v.usage} + requested ${v.requested} exceeds limit ${v.limit}`,
  );
  return `quota exceeded for project ${project}: ${parts.join("; ")}; free resources or raise the project's quotas`;
}

/**
 * Sets `holder`'s entry to `want` (replacing what it held, so a resize counts only the
 * difference) and returns the new ledger, or the violations when the new usage would exceed a
 * limit. Shrinking is always allowed. Pure.
 */
export function applyReservation(
  ledger: Ledger,
  limits: Quotas,
  holder: string,
  want: Usage,
): { ledger: Ledger; violations: QuotaViolation[] } {
  const rest: Ledger = { ...ledger };
  const held = rest[holder] ?? {};
  delete rest[holder];
  const base = ledgerUsage(rest);
  const extra: Usage = {};
  for (const q of QUOTA_NAMES) {
    const grow = (want[q] ?? 0) - (held[q] ?? 0);
    if (grow > 0) extra[q] = want[q] ?? 0;
  }
  const violations = quotaViolations(limits, base, extra);
  if (violations.length > 0) return { ledger, violations };
  return { ledger: { ...rest, [holder]: want }, violations: [] };
}

/** A server's usage: one instance, its vCPUs, its RAM and one port per NIC. */
export function serverUsage(vcpus: number, ramMiB: number, ports: number): Usage {
  return { instances: 1, cores: vcpus, ramMiB, ports };
}
