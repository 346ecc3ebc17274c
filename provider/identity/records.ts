/**
 * Identity records on the controller (hosts[0]): one JSON file per object under
 * /var/lib/kvmlab/records/identity-<kind>/id-<digest of the id>.json (core/identity.ts names them).
 *
 * Every record carries `owner` (issue 15's owner string of the resource that wrote it) and `uid`
 * (a random token of that resource instance): a resource of another owner (another stack,
 * another program) that would write the same domain/name is refused, which is how names stay
 * unique within their domain; the same owner adopts its record; delete removes a record only
 * while it still carries the deleting resource's uid. Read-modify-write runs under the host lock, which is a
 * flock on the controller and so holds across processes.
 *
 * Host layer only: no Pulumi. Secrets never reach a record: the User resource writes only the
 * scrypt hash of a password (provider/identity/password.ts), inside the step script that
 * travels on the SSH channel's stdin.
 */
import { identityRecordName, type IdentityModel, BOOTSTRAP_ROLES } from "../../core/identity";
import { recordDir } from "../../core/paths";
import {
  parseRecord,
  readRecordStep,
  recordPath,
  runChecked,
  shQuote,
  withHostLock,
  writeRecordStep,
  type HostConnection,
  type Step,
} from "../host";

/** Record kinds of identity objects. */
export const IDENTITY_KINDS = ["domain", "project", "user", "group", "role", "assignment"] as const;
export type IdentityKind = (typeof IDENTITY_KINDS)[number];

/** The record folder kind of an identity kind. */
export function identityRecordKind(kind: IdentityKind): string {
  return `identity-${kind}`;
}

/** What every identity record has. */
export interface IdentityRecordBase {
  kind: IdentityKind;
  /** `<domain>/<name>` (a domain: its name; a global role: its name). */
  id: string;
  /** Random token of the resource instance that wrote this record (delete guard). */
  uid: string;
  /** The owner string of that resource (issue 15: `<project>/<stack>/<Type>/<name>`). */
  owner?: string;
}

/** A fresh owner token. */
export function newUid(): string {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  return crypto.randomUUID();
}

/** Step printing every record of a kind, one JSON document per line. */
export function listRecordsStep(kind: IdentityKind): Step {
  const dir = shQuote(recordDir(identityRecordKind(kind)));
  return {
    label: `list identity ${kind} records`,
    script: `for f in ${dir}/*.json; do [ -f "$f" ] && { tr -d '\\n' < "$f"; echo; }; done; true`,
  };
}

/** Parses a list step's output. */
export function parseRecordList<T>(stdout: string): T[] {
  return stdout
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as T);
}

/** Step removing a record only while it carries `uid`. */
export function deleteOwnedRecordStep(kind: IdentityKind, id: string, uid: string): Step {
  if (!/^[0-9a-f-]{36}$/.test(uid))
    throw new Error(`deleteOwnedRecordStep: invalid uid ${JSON.stringify(uid)}`);
  const p = shQuote(recordPath(identityRecordKind(kind), identityRecordName(id)));
  return {
    label: `delete identity record ${kind}/${id}`,
    script: `if [ -f ${p} ] && grep -q '"uid": "${uid}"' ${p}; then rm -f ${p}; fi`,
  };
}

/** Reads one record (undefined when absent). */
export async function readIdentityRecord<T extends IdentityRecordBase>(
  host: HostConnection,
  kind: IdentityKind,
  id: string,
): Promise<T | undefined> {
  const [out] = await runChecked(host, [readRecordStep(identityRecordKind(kind), identityRecordName(id))]);
  return parseRecord<T>(out, `${kind}/${id}`);
}

/**
 * Writes `record` under the host lock after `verify` (given every record of the kinds in
 * `needs`) found no problem; refuses when a record of the same id belongs to another resource.
 */
export async function putIdentityRecord<T extends IdentityRecordBase>(
  host: HostConnection,
  record: T,
  needs: readonly IdentityKind[] = [],
  verify: (all: Partial<Record<IdentityKind, IdentityRecordBase[]>>) => string[] = () => [],
): Promise<void> {
  await withHostLock(host, async () => {
    const rk = identityRecordKind(record.kind);
    const name = identityRecordName(record.id);
    const outs = await runChecked(host, [readRecordStep(rk, name), ...needs.map((k) => listRecordsStep(k))]);
    const have = parseRecord<IdentityRecordBase>(outs[0], `${record.kind}/${record.id}`);
    if (have && have.uid !== record.uid && (have.owner === undefined || have.owner !== record.owner))
      throw new Error(
        `${record.kind} ${record.id} already exists on controller ${host.name}, owned by ${have.owner ?? "another resource"}; names are unique within their domain: pick another name, or remove it from the stack that owns it`,
      );
    const all: Partial<Record<IdentityKind, IdentityRecordBase[]>> = {};
    needs.forEach((k, i) => (all[k] = parseRecordList<IdentityRecordBase>(outs[i + 1])));
    const problems = verify(all);
    if (problems.length > 0) throw new Error(`${record.kind} ${record.id}: ${problems.join("; ")}`);
    await runChecked(host, [writeRecordStep(rk, name, record)]);
  });
}

/** Removes a record this resource owns (idempotent). */
export async function dropIdentityRecord(
  host: HostConnection,
  kind: IdentityKind,
  id: string,
  uid: string,
): Promise<void> {
  await withHostLock(host, () => runChecked(host, [deleteOwnedRecordStep(kind, id, uid)]));
}

/** Records as the model of core/identity.ts needs them. */
export interface IdentityRecords {
  domain: (IdentityRecordBase & { name: string; enabled: boolean })[];
  project: (IdentityRecordBase & {
    name: string;
    domain: string;
    parent: string;
    quotas: Record<string, number>;
  })[];
  user: (IdentityRecordBase & { name: string; domain: string; enabled: boolean })[];
  group: (IdentityRecordBase & { name: string; domain: string; members: string[] })[];
  role: (IdentityRecordBase & { name: string; implies: string[] })[];
  assignment: (IdentityRecordBase & {
    actor: { kind: "user" | "group"; id: string };
    target: { kind: "project" | "domain"; id: string };
    role: string;
    inherited: boolean;
  })[];
}

/** Reads every identity record from the controller in one round trip. */
export async function readAllIdentity(host: HostConnection): Promise<IdentityRecords> {
  const outs = await runChecked(
    host,
    IDENTITY_KINDS.map((k) => listRecordsStep(k)),
  );
  const r: Record<string, unknown[]> = {};
  IDENTITY_KINDS.forEach((k, i) => (r[k] = parseRecordList(outs[i])));
  return r as unknown as IdentityRecords;
}

/**
 * The model effectiveRoles() takes. Bootstrap roles with no record of their own keep their
 * implied chain (admin → manager → member → reader), as after `keystone-manage bootstrap`.
 * Disabled users and users of disabled domains hold no roles.
 */
export function identityModel(r: IdentityRecords): IdentityModel {
  const roles = r.role.map((x) => ({ id: x.id, implies: x.implies }));
  for (const b of BOOTSTRAP_ROLES)
    if (!roles.some((x) => x.id === b.name)) roles.push({ id: b.name, implies: b.implies });
  const disabledDomains = new Set(r.domain.filter((d) => !d.enabled).map((d) => d.id));
  const active = new Set(r.user.filter((u) => u.enabled && !disabledDomains.has(u.domain)).map((u) => u.id));
  return {
    projects: r.project.map((p) => ({ id: p.id, domain: p.domain, parent: p.parent })),
    groups: r.group.map((g) => ({ id: g.id, members: g.members.filter((m) => active.has(m)) })),
    roles,
    assignments: r.assignment
      .filter((a) => a.actor.kind === "group" || active.has(a.actor.id))
      .map((a) => ({ actor: a.actor, target: a.target, role: a.role, inherited: a.inherited })),
  };
}
