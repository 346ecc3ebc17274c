/**
 * Ownership of host objects (issue 15). Names on hosts are one namespace shared by every stack
 * and project that uses the same hosts; the owner says whose an object is, so no operation
 * adopts, changes or deletes an object another owner holds.
 *
 * The owner is derived in the PROGRAM (a dynamic provider never sees the resource's URN):
 * {@link KvmlabResource} sets the `owner` input to
 *
 *     <pulumi project>/<stack>/<Type>/<resource name>[/project=<identity project>]
 *
 * with every segment encoded by {@link ownerSegment} (letters, digits, `_.-` kept; anything else
 * as `%XX`), so the string is safe inside shell quotes, XML text, JSON and OVS external_ids.
 *
 * On the host the owner is kept in ONE place that every guard reads, a marker file per object:
 *
 *     /var/lib/kvmlab/owners/<kind>/<key>        (mode 0600, the owner string and a newline)
 *
 * and, for people and tools, also in the object's native store where it has one (records carry
 * `owner` and `project`, OVS objects `external_ids:kvmlab-owner` and `kvmlab-project`
 * ({@link ovsOwnerIds}), a libvirt domain its `<kvmlab:owner>` and `<kvmlab:project>` metadata,
 * core/domainMetadata.ts). The marker stays what every guard reads.
 *
 * Guards (steps: pure builders, exit status {@link OWNER_REFUSED} with a message naming the
 * owner and the fix):
 *   claimStep    create: makes the marker atomically (written to a temporary file, then hard-linked
 *                into place, which fails when the marker exists: no-clobber, and never an empty
 *                marker after a crash); same owner → "adopted" (a crash
 *                between create and the state write still converges); another owner → refused;
 *                no marker but the object exists (made outside kvmlab or by another owner
 *                before markers) → refused. Prints `claimed` or `adopted`.
 *   guardStep    update/delete/read-modify-write: refuses when the marker names another owner;
 *                with `adoptUnmarked` (update of a resource whose state predates owners) writes
 *                the marker when there is none (the same no-clobber write as claimStep).
 * An EMPTY marker (left by a crash of a kvmlab from before the atomic write) names no owner:
 * every guard refuses it with the fix (check the object is yours, write your owner into it).
 *   releaseOwnerStep  delete: removes the marker only while it is this owner's.
 * Put the guard FIRST in the batch run with stopOnError (runChecked/runLocked): a refusal skips
 * every later (destructive) step.
 *
 * Pure; the step scripts quote every value.
 */
import { KVMLAB_STATE_DIR } from "../../core/paths";
import { UNKNOWN, shQuote, showValue } from "../host/quote";
import type { Step } from "../host/framing";

/** Exit status of a refused ownership guard. */
export const OWNER_REFUSED = 73;

/** The owner string: encoded segments joined by "/", at most 400 characters. */
export const OWNER_RE = /^[A-Za-z0-9_%-][A-Za-z0-9_.%-]*(\/[A-Za-z0-9_%-][A-Za-z0-9_.%=-]*){3,5}$/;

/** What an owner is made of. `project` is the identity project (issue: identity/quotas). */
export interface OwnerParts {
  /** `pulumi.getProject()` */
  readonly pulumiProject: string;
  /** `pulumi.getStack()` */
  readonly stack: string;
  /** The kvmlab resource type, e.g. "Network". */
  readonly type: string;
  /** The Pulumi resource name. */
  readonly name: string;
  /** The identity project that owns the object, once identity lands. @default none */
  readonly project?: string;
}

/**
 * One owner segment: letters, digits and `_.-` stay (a leading "." excepted), every other UTF-8
 * byte becomes `%XX`.
 */
export function ownerSegment(s: string): string {
  let out = "";
  for (const b of Buffer.from(s, "utf8")) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9_.-]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  // A leading dot is encoded too: no segment reads as "." or ".." (path-like owners).
  if (out.startsWith(".")) out = `%2E${out.slice(1)}`;
  return out === "" ? "%00" : out;
}

/** THE owner string of a resource (see the module comment). */
export function ownerOf(parts: OwnerParts): string {
  const segs = [parts.pulumiProject, parts.stack, parts.type, parts.name].map(ownerSegment);
  if (parts.project !== undefined && parts.project !== "")
    segs.push(`project=${ownerSegment(parts.project)}`);
  return segs.join("/");
}

/** The owner a raw provider call gets when its input has none (programs always pass one). */
export function defaultOwner(type: string, name: string): string {
  return ownerOf({ pulumiProject: "kvmlab-direct", stack: "-", type, name });
}

/** A check rule for the `owner` input. */
export function checkOwnerString(field: string, v: unknown): string | undefined {
  return typeof v === "string" && v.length <= 400 && OWNER_RE.test(v)
    ? undefined
    : `${field}: expected "<pulumi project>/<stack>/<Type>/<name>" as kvmlab's resource classes set it (ownerOf), got ${showValue(v)}`;
}

/**
 * The `owner` input as check fills it: the program's value checked, or {@link defaultOwner} of
 * the resource's name when the input has none (raw provider calls). Unknown values pass.
 */
export function checkedOwner(
  news: Record<string, unknown>,
  type: string,
  nameField: string,
  add: (property: string, reason: string | undefined) => void,
): unknown {
  const v = news.owner;
  if (v === undefined) {
    const n = news[nameField];
    return typeof n === "string" ? defaultOwner(type, n) : n;
  }
  if (!isUnknownValue(v)) add("owner", checkOwnerString("owner", v));
  return v;
}

/**
 * The identity project an owner string carries in its `project=` segment (decoded), "" for none:
 * what a resource without a `project` input puts in its OVS objects' `kvmlab-project`.
 */
export function ownerProject(owner: string): string {
  const seg = owner.split("/").find((s) => s.startsWith("project="));
  if (seg === undefined) return "";
  try {
    return decodeURIComponent(seg.slice("project=".length));
  } catch {
    return "";
  }
}

/** The owner recorded in inputs or outputs ("" when the state predates owners). */
export function ownerIn(o: object): string {
  const v = (o as { owner?: unknown }).owner;
  return typeof v === "string" ? v : "";
}

function isUnknownValue(v: unknown): boolean {
  return v === UNKNOWN;
}

/** A marker key segment: the object-name rule's characters. */
const KEY_SEGMENT = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Where an object's owner marker lives; `key` may have several segments (e.g. network, subnet). */
export function ownerMarkerPath(kind: string, ...key: string[]): string {
  for (const k of [kind, ...key])
    if (!KEY_SEGMENT.test(k)) throw new Error(`owner marker: ${showValue(k)} is not a name segment`);
  if (key.length === 0) throw new Error("owner marker: a key is needed");
  return `${KVMLAB_STATE_DIR}/owners/${kind}/${key.join("/")}.owner`;
}

/** What a guard is about, for messages. */
export interface OwnedObject {
  /** Marker kind, e.g. "network". */
  readonly kind: string;
  /** Marker key segments (the object's FULL identity, e.g. [network, subnet]). */
  readonly key: readonly string[];
  /** For messages, e.g. `network lan`. */
  readonly what: string;
  /** The input to change to avoid the clash, e.g. `networkName`. */
  readonly field: string;
  /** A shell test that succeeds when the object exists on the host (claimStep refuses an unmarked one). */
  readonly exists?: string;
}

function refusal(o: OwnedObject, me: string, theirs: string): string {
  return (
    `${o.what} on this host belongs to ${theirs}, not to ${me}; kvmlab never adopts, changes or deletes another owner's object. ` +
    `Fix: give this resource another ${o.field}, or remove the object from the stack that owns it (${theirs})`
  );
}

/** The refusal as one shell word, with the marker's owner read from `$cur` on the host. */
function refusalWord(o: OwnedObject, me: string): string {
  const at = "\u0000CUR\u0000";
  return refusal(o, me, at)
    .split(at)
    .map((part) => shQuote(part))
    .join('"$cur"');
}

/**
 * Shell lines writing `ownerWord` into marker "$f" without clobbering; success when this call
 * made it. The write runs in a subshell of its own (a write killed half-way leaves its
 * temporary file to this step's rm), a leftover temporary file is removed first only when there
 * is one: three processes (the subshell, ln, rm). Claims run under the host lock on every
 * create (issue 13): this was four.
 */
function markerWrite(ownerWord: string): string {
  return `t="$f.new.$$"; if [ -e "$t" ] || [ -L "$t" ]; then rm -f "$t"; fi; if ( umask 077; printf '%s\\n' ${ownerWord} > "$t" ) && ln "$t" "$f" 2>/dev/null; then rm -f "$t"; true; else rm -f "$t"; false; fi`;
}

/** Shell text making the marker's folder (only when missing) and keeping the markers' root 0700. */
const MARKER_DIR = '{ [ -d "${f%/*}" ] || mkdir -p "${f%/*}"; } && chmod 0700 /var/lib/kvmlab/owners';

/** Shell lines refusing an empty marker "$f" ($cur empty) with the fix. */
function emptyMarkerRefusal(o: OwnedObject, me: string): string {
  return `if [ -z "$cur" ]; then echo ${shQuote(`${o.what}: its owner marker is empty (a kvmlab run crashed while writing it); kvmlab cannot tell whose the object is and changes nothing. Fix: check that the object is ${me}'s, then write that owner into the marker (printf '%s\\n' '${me}' > `)}"$f"${shQuote(") and run again; or remove the object and the marker by hand")} >&2; exit ${OWNER_REFUSED}; fi`;
}

function checkOwnerArg(owner: string): void {
  const e = checkOwnerString("owner", owner);
  if (e) throw new Error(`owner guard: ${e}`);
}

/**
 * Step for create: claim the object for `owner` (see the module comment). Prints `claimed` when
 * this call made the marker (so a failed create may remove what it made) or `adopted` when the
 * marker was already this owner's.
 */
export function claimStep(o: OwnedObject, owner: string): Step {
  return { label: `claim ${o.what} for ${owner}`, script: claimScript(o, owner, true) };
}

/**
 * The refusals of {@link claimStep} without its write: passes (prints `free` or `mine`) when a
 * claim for `owner` would succeed, refuses the same way when it would not. Put it before the
 * claims of a batch whose later claim could be refused, so that a refusal comes before any
 * marker was written and a failed create leaves none behind (same lock, so no race).
 */
export function claimableStep(o: OwnedObject, owner: string): Step {
  return { label: `check that ${o.what} can be claimed for ${owner}`, script: claimScript(o, owner, false) };
}

/** claimStep's script; without `write`, the same refusals and no marker written. */
function claimScript(o: OwnedObject, owner: string, write: boolean): string {
  checkOwnerArg(owner);
  const f = ownerMarkerPath(o.kind, ...o.key);
  return [
    `f=${shQuote(f)}; me=${shQuote(owner)}`,
    write ? MARKER_DIR : ":",
    'if [ ! -e "$f" ]; then',
    o.exists
      ? `  if ${o.exists}; then echo ${shQuote(`${o.what} already exists on this host with no kvmlab owner (made by hand, or by another stack before owners were recorded); kvmlab does not adopt it. Fix: give this resource another ${o.field}, or remove the object by hand`)} >&2; exit ${OWNER_REFUSED}; fi`
      : "  :",
    write ? `  if ${markerWrite('"$me"')}; then echo claimed; exit 0; fi` : "  echo free; exit 0",
    "fi",
    'cur=; { IFS= read -r cur < "$f"; } 2>/dev/null || :',
    `if [ "$cur" = "$me" ]; then echo ${write ? "adopted" : "mine"}; exit 0; fi`,
    emptyMarkerRefusal(o, owner),
    `echo ${refusalWord(o, owner)} >&2`,
    `exit ${OWNER_REFUSED}`,
  ].join("\n");
}

/**
 * Step for update and delete: refuses when the marker names an owner other than `owners`
 * (the new and the old owner of an update, the new one first). A marker naming an accepted older
 * owner is moved to the first (prints `moved`), so the state's owner and the host's agree again.
 * With `adoptUnmarked`, writes the first owner into a missing marker (state from before owners
 * were recorded). Prints `mine`, `moved` or `unmarked`.
 */
export function guardStep(o: OwnedObject, owners: readonly string[], adoptUnmarked = false): Step {
  const mine = owners.filter((x) => x !== "");
  mine.forEach(checkOwnerArg);
  if (mine.length === 0) throw new Error(`owner guard of ${o.what}: no owner given`);
  const f = ownerMarkerPath(o.kind, ...o.key);
  const others = mine
    .slice(1)
    .filter((x) => x !== mine[0])
    .map((x) => shQuote(x))
    .join("|");
  return {
    label: `check the owner of ${o.what}`,
    script: [
      `f=${shQuote(f)}`,
      'if [ ! -e "$f" ]; then',
      adoptUnmarked
        ? `  ${MARKER_DIR} && if ${markerWrite(shQuote(mine[0]))}; then echo unmarked; exit 0; fi`
        : "  echo unmarked; exit 0",
      "fi",
      'cur=; { IFS= read -r cur < "$f"; } 2>/dev/null || :',
      `case "$cur" in ${shQuote(mine[0])}) echo mine; exit 0 ;; esac`,
      // An accepted older owner (an update after a renamed stack or a new project): the marker
      // moves to the new owner, atomically, so the next delete (guarded by the new owner) passes.
      ...(others.length > 0
        ? [
            `case "$cur" in ${others}) t="$f.new.$$"; rm -f "$t"; ( umask 077; printf '%s\\n' ${shQuote(mine[0])} > "$t" ) && mv -f "$t" "$f" && { echo moved; exit 0; }; rm -f "$t"; echo ${shQuote(`${o.what}: could not move its owner marker to ${mine[0]}`)} >&2; exit 1 ;; esac`,
          ]
        : []),
      emptyMarkerRefusal(o, mine[mine.length - 1]),
      `echo ${refusalWord(o, mine[mine.length - 1])} >&2`,
      `exit ${OWNER_REFUSED}`,
    ].join("\n"),
  };
}

/** The `<pulumi project>/<stack>` part of an owner string (its first two segments). */
export function ownerStack(owner: string): string {
  return owner.split("/").slice(0, 2).join("/");
}

/**
 * Step for a resource that builds on ANOTHER resource's host object (a FloatingIp on a Router):
 * refuses when that object's marker names an owner of another stack, naming it and the fix.
 * An unmarked object passes (state from before owners; the object may not exist yet, and the
 * steps after this one fail on that). `user` names the caller, e.g. "floating IP fip1".
 */
export function sameStackStep(o: OwnedObject, owner: string, user: string): Step {
  checkOwnerArg(owner);
  const f = ownerMarkerPath(o.kind, ...o.key);
  const stack = ownerStack(owner);
  const at = "\u0000CUR\u0000";
  const refused =
    `${user} uses ${o.what}, which belongs to ${at}, another stack than ${stack}; kvmlab never builds on another stack's object. Fix: point ${o.field} at a ${o.kind} of this stack, or define ${user} in the stack that owns it (${at})`
      .split(at)
      .map((part) => shQuote(part))
      .join('"$cur"');
  return {
    label: `check that ${o.what} is this stack's`,
    script: [
      `f=${shQuote(f)}`,
      'if [ ! -e "$f" ]; then echo unmarked; exit 0; fi',
      'cur=; { IFS= read -r cur < "$f"; } 2>/dev/null || :',
      `case "$cur" in ${shQuote(stack)}/*) echo mine; exit 0 ;; esac`,
      emptyMarkerRefusal(o, stack),
      `echo ${refused} >&2`,
      `exit ${OWNER_REFUSED}`,
    ].join("\n"),
  };
}

/** Step for delete (after the object is gone): removes the marker while it is `owner`'s. */
export function releaseOwnerStep(o: OwnedObject, owners: readonly string[]): Step {
  const mine = owners.filter((x) => x !== "");
  mine.forEach(checkOwnerArg);
  const f = ownerMarkerPath(o.kind, ...o.key);
  const cases = mine.length > 0 ? mine.map((x) => shQuote(x)).join("|") : "''";
  return {
    label: `release the owner marker of ${o.what}`,
    script: `f=${shQuote(f)}; if [ -e "$f" ]; then case "$(head -n1 "$f")" in ${cases}) rm -f "$f" ;; esac; fi; true`,
  };
}

/** True when a claim step's stdout says this call made the marker. */
export function claimedNow(stdout: string): boolean {
  return stdout.trim().split("\n").pop() === "claimed";
}

/** An identity project reference as external_ids and records carry it: `<domain>/<name>` or "". */
const OVS_PROJECT_RE =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\/[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/;

/**
 * The `external_ids` an OVS object kvmlab makes carries (issue 14): its owner
 * (`kvmlab-owner`) and, when it has one, its identity project (`kvmlab-project`), as arguments of
 * an ovs-vsctl `set` (values JSON-quoted for ovs-vsctl, then shell-quoted). "" when there is no
 * owner (a state from before owners). Throws on a value that is not an owner or a project.
 */
export function ovsOwnerIds(owner: string, project = ""): string {
  if (owner === "") return "";
  if (owner.length > 400 || !OWNER_RE.test(owner))
    throw new Error(`external_ids: ${showValue(owner)} is not an owner string`);
  if (!OVS_PROJECT_RE.test(project))
    throw new Error(`external_ids: ${showValue(project)} is not a project "<domain>/<name>"`);
  const ids = [`external_ids:kvmlab-owner=${shQuote(JSON.stringify(owner))}`];
  if (project !== "") ids.push(`external_ids:kvmlab-project=${shQuote(JSON.stringify(project))}`);
  return ids.join(" ");
}

/**
 * Shell lines that refuse (exit {@link OWNER_REFUSED}) to go on when the OVS `table` record named
 * by the shell word `name` (a quoted variable such as `"$hd"`, or a validated device name)
 * carries a `kvmlab-owner` other than `owners` in its external_ids. A record without one (made
 * before owners, or not there at all) passes: the object's owner marker guards it. Put them
 * right before the `del-port`/`del-br` they protect. With no owner (a state from before owners,
 * review O2) only a record without a `kvmlab-owner` passes: such a state never labelled one.
 */
export function ovsOwnerGuardLines(
  table: "port" | "bridge" | "interface",
  name: string,
  owners: readonly string[],
  what: string,
  fix: string,
): string[] {
  return ovsOwnerCheckLines(table, name, owners, `${what} belongs to `, "it was not removed", fix);
}

/**
 * The same check for an apply path (review O2), before a `set … external_ids:kvmlab-owner=…`
 * relabels the record: another owner's port or bridge is refused (exit {@link OWNER_REFUSED},
 * naming the record, its owner and the fix), never taken over, even when the object's owner
 * marker was adopted (lost, or a state from before owners). A record without a `kvmlab-owner`
 * (being made now, or made before owners) passes. `owners`: the new owner and, in an update, the
 * state's.
 */
export function ovsRelabelGuardLines(
  table: "port" | "bridge" | "interface",
  name: string,
  owners: readonly string[],
  what: string,
  fix: string,
  alsoVars: readonly string[] = [],
): string[] {
  return ovsOwnerCheckLines(
    table,
    name,
    owners,
    `${what}: OVS ${table} `,
    "it was not changed",
    fix,
    name,
    alsoVars,
  );
}

function ovsOwnerCheckLines(
  table: "port" | "bridge" | "interface",
  name: string,
  owners: readonly string[],
  lead: string,
  outcome: string,
  fix: string,
  shownName?: string,
  alsoVars: readonly string[] = [],
): string[] {
  const mine = owners.filter((o) => o !== "");
  // Owners known only on the host (a quoted shell variable, "" when none): also allowed.
  for (const v of alsoVars)
    if (!/^"\$[a-z_][a-z0-9_]*"$/.test(v))
      throw new Error(`ovsOwnerGuardLines: ${showValue(v)} is not a quoted shell variable`);
  for (const o of mine)
    if (!OWNER_RE.test(o)) throw new Error(`ovsOwnerGuardLines: ${showValue(o)} is not an owner string`);
  if (!/^(?:"\$[a-z_][a-z0-9_]*"|[A-Za-z0-9_.-]{1,15})$/.test(name))
    throw new Error(
      `ovsOwnerGuardLines: ${showValue(name)} is neither a quoted shell variable nor a device name`,
    );
  const allowed = ['""', ...mine.map((o) => shQuote(o)), ...alsoVars].join("|");
  const me = mine.length > 0 ? mine[0] : "this state, which records no owner (made before owners)";
  const shown = shownName === undefined ? "" : `${name}${shQuote(" belongs to ")}`;
  return [
    `o=$(ovs-vsctl --if-exists get ${table} ${name} external_ids:kvmlab-owner 2>/dev/null | tr -d '"' || true)`,
    `case "$o" in ${allowed}) ;; *) echo ${shQuote(lead)}${shown}"$o"${shQuote(`, not to ${me}; ${outcome}. Fix: ${fix}`)} >&2; exit ${OWNER_REFUSED} ;; esac`,
  ];
}
