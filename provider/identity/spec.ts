/**
 * What the six identity resources share: one spec shape on the provider kit, for an object kept
 * as one record on the controller (hosts[0]).
 *
 *   check   the resource's rules + hosts
 *   diff    replace keys (the record's id derives from them) / update keys / drift
 *   create  a new uid, then under the controller's host lock: refuse a same-id record of
 *           another owner (issue 15's owner string; the same owner adopts it, so a crash between
 *           create and the state write converges), verify references (domain, parent, members,
 *           role…), write the record with `owner` and `uid`
 *   read    the record; gone when absent or owned by another resource; `realized.matches`
 *   update  rewrite (same uid); on a new controller: write there, drop the old one
 *   delete  drop the record while it carries this uid (idempotent; a create-before-delete
 *           replacement of the same id has a new uid, so the old resource's delete keeps it)
 */
import { canonicalJson, changedKeys, checkedOwner, type DiffResult, type ResourceSpec } from "../kit";
import type { HostConnection } from "../host";
import {
  dropIdentityRecord,
  putIdentityRecord,
  readIdentityRecord,
  readAllIdentity,
  newUid,
  type IdentityKind,
  type IdentityRecordBase,
} from "./records";

export interface IdentityHostState {
  record: boolean;
  matches: boolean;
}

/** Outputs every identity resource adds to its inputs. */
export interface IdentityOutputs {
  /** The record's id: `<domain>/<name>` (a domain or a global role: its name). */
  recordId: string;
  /** Owner token written into the record. */
  uid: string;
  /** Name of the controller host (hosts[0]). */
  controller: string;
  hostKeys: Record<string, string>;
  realized: IdentityHostState;
}

export interface IdentitySpecConfig<
  I extends { hosts: HostConnection[]; owner: string },
  O extends I & IdentityOutputs,
> {
  type: string;
  /** The input naming the object (for the default owner of raw provider calls). */
  nameKey: keyof I & string;
  kind: IdentityKind;
  inputKeys: readonly (keyof I & string)[];
  /** Extra output keys besides the common ones. */
  extraOutputKeys?: readonly string[];
  secretOutputs: readonly string[];
  replaceKeys: readonly (keyof I & string)[];
  updateKeys: readonly (keyof I & string)[];
  check(news: Record<string, unknown>): {
    inputs: Record<string, unknown>;
    failures: { property: string; reason: string }[];
  };
  idOf(i: I): string;
  /** Extra outputs computed before the record (e.g. a password hash); `olds` on update. */
  extras?(i: I, olds: O | undefined): Partial<O>;
  recordOf(i: I, uid: string, extras: Partial<O>): IdentityRecordBase;
  needs?: readonly IdentityKind[];
  verify?(i: I, all: Partial<Record<IdentityKind, IdentityRecordBase[]>>): string[];
  /** Kinds read before delete and the problems that keep it (e.g. child projects). */
  deleteNeeds?: readonly IdentityKind[];
  deleteVerify?(o: O, all: Partial<Record<IdentityKind, IdentityRecordBase[]>>): string[];
  /** Whether the record read from the host matches these outputs. @default canonical equality */
  matches?(o: O, have: IdentityRecordBase): boolean;
}

/** Builds the resource spec of an identity record resource. */
export function identitySpec<
  I extends { hosts: HostConnection[]; owner: string },
  O extends I & IdentityOutputs,
>(c: IdentitySpecConfig<I, O>): ResourceSpec<I, O> {
  const controllerOf = (hosts: HostConnection[]): HostConnection => hosts[0];
  const write = async (i: I, uid: string, olds: O | undefined): Promise<O> => {
    const extras = c.extras ? c.extras(i, olds) : {};
    // The record carries the owner (issue 15): another owner's record of the same id is refused.
    const record = { ...c.recordOf(i, uid, extras), owner: i.owner };
    const host = controllerOf(i.hosts);
    await putIdentityRecord(host, record, c.needs ?? [], (all) => (c.verify ? c.verify(i, all) : []));
    return {
      ...i,
      ...extras,
      recordId: c.idOf(i),
      uid,
      controller: host.name,
      hostKeys: {},
      realized: { record: true, matches: true },
    } as O;
  };
  return {
    type: c.type,
    inputKeys: [...c.inputKeys, "owner" as keyof I & string],
    outputKeys: ["recordId", "uid", "controller", "hostKeys", "realized", ...(c.extraOutputKeys ?? [])],
    secretOutputs: c.secretOutputs,
    check: (news) => {
      const r = c.check(news);
      const failures = [...r.failures];
      const owner = checkedOwner(news, c.type, c.nameKey, (property, reason) => {
        if (reason) failures.push({ property, reason });
      });
      return { inputs: { ...r.inputs, owner }, failures };
    },
    diff(olds: O, news: I): DiffResult {
      const prev: I = olds;
      const replaces = changedKeys(prev, news, c.replaceKeys);
      const changes =
        replaces.length > 0 ||
        changedKeys(prev, news, [...c.updateKeys, "hosts" as keyof I & string]).length > 0 ||
        !olds.realized?.record ||
        !olds.realized?.matches;
      return { changes, replaces, deleteBeforeReplace: false };
    },
    async create(inputs) {
      const outs = await write(inputs, newUid(), undefined);
      return { id: outs.recordId, outs };
    },
    async read(_id, props) {
      const have = await readIdentityRecord(controllerOf(props.hosts), c.kind, props.recordId);
      if (!have || have.uid !== props.uid) return undefined;
      const matches = c.matches
        ? c.matches(props, have)
        : canonicalJson(have) ===
          canonicalJson({ ...c.recordOf(props, props.uid, props), owner: props.owner });
      return { ...props, realized: { record: true, matches } };
    },
    async update(_id, olds, news) {
      const outs = await write(news, olds.uid, olds);
      const oldHost = controllerOf(olds.hosts);
      if (oldHost.name !== outs.controller)
        await dropIdentityRecord(oldHost, c.kind, olds.recordId, olds.uid);
      return outs;
    },
    async delete(_id, olds) {
      const host = controllerOf(olds.hosts);
      if (c.deleteNeeds && c.deleteVerify) {
        const verify = c.deleteVerify;
        const all = await readAllIdentity(host);
        const problems = verify(olds, all as unknown as Partial<Record<IdentityKind, IdentityRecordBase[]>>);
        if (problems.length > 0) throw new Error(`${c.kind} ${olds.recordId}: ${problems.join("; ")}`);
      }
      await dropIdentityRecord(host, c.kind, olds.recordId, olds.uid);
    },
  };
}
