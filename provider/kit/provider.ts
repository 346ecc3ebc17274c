/**
 * The one way to define a kvmlab resource provider.
 *
 * A resource supplies a {@link ResourceSpec}: its type name, input and output keys, secret
 * outputs, the pure check and diff, and create/read/update/delete that do host work only. The
 * kit supplies, once for every resource:
 *   - the casts between Pulumi's untyped values and the resource's types
 *   - `inputsOf`: only the input keys reach create and update (outputs carry more)
 *   - trust-on-first-use pinning: every method gets `hosts` pinned to the keys recorded in the
 *     state (`hostKeys`), and the outputs record every host's key again (never dropping one)
 *   - the read envelope: `read` returning `undefined` means "gone" (Pulumi's empty id)
 *
 * Serialization: Pulumi serializes the returned provider object into each resource's state. It
 * captures the spec (plain functions and key lists) and the host layer by value; nothing here
 * requires a module at load time or captures a secret. Define one provider per type, at module
 * level.
 */
import type * as pulumi from "@pulumi/pulumi";
import type { HostConnection } from "../host/connection";
import { isUnknown, type Checked } from "./check";
import { pinnedHosts, recordHostKeys } from "./host";
import { ownerIn } from "./owner";
import {
  chargeMoves,
  chargeOf,
  checkProjectRef,
  controllerHost,
  sameCharge,
  type Charge,
  type QuotaSpec,
} from "./quota";

/** What a pure diff returns (Pulumi's DiffResult without the optional fields kvmlab never sets). */
export interface DiffResult {
  changes: boolean;
  replaces: string[];
  stables?: string[];
  deleteBeforeReplace: boolean;
}

/** Inputs of a resource that reaches hosts. */
export interface HostedInputs {
  hosts: HostConnection[];
}

/** Outputs of a resource that reaches hosts: the kit fills `hostKeys`. */
export interface HostedOutputs extends HostedInputs {
  hostKeys: Record<string, string>;
}

/** What a resource supplies to the kit. */
export interface ResourceSpec<I extends object, O extends I> {
  /** Pulumi type name under `kvmlab`, e.g. "Network" → `pulumi-nodejs:dynamic/kvmlab:Network`. */
  readonly type: string;
  /** Every input key (what create and update receive; the rest of the outputs is dropped). */
  readonly inputKeys: readonly (keyof I & string)[];
  /** Output keys that are not inputs (the resource class declares them). */
  readonly outputKeys: readonly string[];
  /** Outputs Pulumi stores as secrets (e.g. `hosts`: it carries private keys). */
  readonly secretOutputs: readonly string[];
  /** Pure check: validates, fills defaults; never connects. */
  check(news: Record<string, unknown>, olds: Record<string, unknown> | undefined): Checked;
  /** Pure diff; never connects. */
  diff(olds: O, news: I): DiffResult;
  /** Host work. Hosts arrive pinned; return the id and outputs (`hostKeys` is filled by the kit). */
  create(inputs: I): Promise<{ id: string; outs: O }>;
  /** Host work: the outputs as the hosts have them now, or undefined when the object is gone. */
  read(id: string, props: O): Promise<O | undefined>;
  /** Host work. `olds` and `news` arrive with pinned hosts. */
  update(id: string, olds: O, news: I): Promise<O>;
  /** Host work; idempotent. */
  delete(id: string, olds: O): Promise<void>;
  /**
   * What the resource charges its project's quotas (issue 14; see kit/quota.ts). Declaring it
   * adds the input `project` and the output `quotaController`; the kit reserves before create,
   * moves or resizes the charge at update and releases it at delete, under the controller's lock.
   */
  readonly quota?: QuotaSpec<I>;
}

/** A defined resource: its spec and the provider object Pulumi serializes. */
export interface ResourceKind<I extends object, O extends I> {
  readonly spec: ResourceSpec<I, O>;
  readonly provider: pulumi.dynamic.ResourceProvider<I, O>;
}

/** Only the listed keys of `o`, in that order (outputs carry more than the inputs). */
export function inputsOf<I extends object>(o: I, keys: readonly (keyof I & string)[]): I {
  const out: Record<string, unknown> = {};
  for (const k of keys)
    if ((o as Record<string, unknown>)[k] !== undefined) out[k] = (o as Record<string, unknown>)[k];
  return out as I;
}

/**
 * Keys whose new value is unknown or differs from the old one (canonical JSON: object key order
 * does not matter). The diff core of every provider.
 */
export function changedKeys<T extends object, K extends keyof T & string>(
  olds: T,
  news: Partial<T>,
  keys: readonly K[],
): K[] {
  return keys.filter((k) => !sameValue(olds[k], news[k]));
}

/** True when `b` is known and equal to `a` (canonical JSON). */
export function sameValue(a: unknown, b: unknown): boolean {
  return !isUnknown(b) && canonicalJson(a) === canonicalJson(b);
}

/** JSON with object keys sorted (so key order never reads as a change). */
export function canonicalJson(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x !== null && typeof x === "object" && !Array.isArray(x)
      ? Object.fromEntries(
          Object.entries(x as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
        )
      : x,
  );
}

/**
 * create and update never see a preview: a value that is (or holds) the preview sentinel there
 * was written literally, and check let it through unvalidated (issue 15). Refused, naming the
 * fields, before any host command.
 */
function refuseSentinel(type: string, inputs: object): void {
  const fields = Object.entries(inputs)
    .filter(([, v]) => isUnknown(v))
    .map(([k]) => k);
  if (fields.length > 0)
    throw new Error(
      `${type}: ${fields.join(", ")}: the value contains Pulumi's preview placeholder 04da6b54-80e4-46f7-96ec-b56ff0331ba9 written literally; it is never a real value, remove it`,
    );
}

function isHosted(o: object | undefined): o is HostedInputs {
  return o !== undefined && Array.isArray((o as { hosts?: unknown }).hosts);
}

/** Pins a value's hosts to the keys recorded in `hostKeys`. */
function pinned<T extends object>(o: T, hostKeys: Record<string, string> | undefined): T {
  return isHosted(o) ? { ...o, hosts: pinnedHosts(o.hosts, hostKeys) } : o;
}

/**
 * Outputs as stored: the hosts as the program passed them (so a recorded key never reads as
 * an input change) and `hostKeys` recorded from the pinned hosts, keeping earlier records.
 */
function recorded<O extends object>(
  outs: O,
  given: object,
  pinnedFrom: object,
  old?: Record<string, string>,
): O {
  if (!isHosted(given) || !isHosted(pinnedFrom)) return outs;
  return { ...outs, hosts: given.hosts, hostKeys: recordHostKeys(pinnedFrom.hosts, old) };
}

/** Builds the resource's provider from its spec. Call once per type, at module level. */
export function defineResource<I extends object, O extends I>(spec: ResourceSpec<I, O>): ResourceKind<I, O> {
  const keysOf = (o: object): Record<string, string> | undefined =>
    (o as { hostKeys?: Record<string, string> }).hostKeys;
  const quota = spec.quota;
  // A quota'd resource takes `project` whether or not it lists it.
  const inputKeys: readonly (keyof I & string)[] =
    quota && !(spec.inputKeys as readonly string[]).includes("project")
      ? [...spec.inputKeys, "project" as keyof I & string]
      : spec.inputKeys;
  /** The controller name recorded in a state ("" for a state from before it was recorded). */
  const controllerIn = (o: object): string => {
    const c = (o as { quotaController?: unknown }).quotaController;
    return typeof c === "string" ? c : "";
  };
  const hostsIn = (o: object): HostConnection[] => (o as { hosts?: HostConnection[] }).hosts ?? [];
  // The ledger code comes with the declaration (provider/quota.ts `charges`), so the kit itself
  // never captures the SSH layer: a provider without hosts (Keypair) stays free of it.
  const reserve = async (hosts: HostConnection[], c: Charge): Promise<void> =>
    quota?.ledger.reserve(controllerHost(hosts, c.controller), c.project, c.holder, c.usage);
  const release = async (hosts: HostConnection[], c: Charge, extra: string[] = []): Promise<void> =>
    quota?.ledger.release(controllerHost(hosts, c.controller), c.project, [c.holder, ...extra]);
  const withController = <T extends object>(outs: T, c: Charge | undefined, fallback: string): T =>
    quota ? { ...outs, quotaController: c ? c.controller : fallback } : outs;
  const provider: pulumi.dynamic.ResourceProvider<I, O> = {
    async check(olds, news) {
      const { inputs, failures } = spec.check(
        news as unknown as Record<string, unknown>,
        olds as unknown as Record<string, unknown> | undefined,
      );
      if (quota) {
        const project = (news as unknown as { project?: unknown }).project ?? "";
        const reason = checkProjectRef(project);
        if (reason && !failures.some((f) => f.property === "project"))
          failures.push({ property: "project", reason });
        inputs.project = project;
      }
      return { inputs: inputs as unknown as I, failures };
    },
    async diff(_id, olds, news) {
      const d = spec.diff(olds, news);
      // A new owner (state from before owners, a renamed stack) is an update: the guards accept
      // the old and the new owner and the markers move to the new one.
      if ((spec.inputKeys as readonly string[]).includes("owner") && !sameValue(ownerIn(olds), ownerIn(news)))
        return { ...d, changes: true };
      // A new project moves the charge: an update.
      const proj = (o: object): unknown => (o as { project?: unknown }).project ?? "";
      if (quota && !sameValue(proj(olds), proj(news))) return { ...d, changes: true };
      return d;
    },
    async create(raw) {
      const inputs = inputsOf(raw, inputKeys);
      refuseSentinel(spec.type, inputs);
      // Quota first, on the controller (hosts[0]), under its lock: a refusal leaves nothing.
      const charge = quota ? chargeOf(quota, inputs, hostsIn(inputs)[0]?.name ?? "") : undefined;
      if (charge) await reserve(hostsIn(inputs), charge);
      try {
        const { id, outs } = await spec.create(inputs);
        return { id, outs: withController(recorded(outs, inputs, inputs), charge, "") };
      } catch (e) {
        if (charge) await release(hostsIn(inputs), charge).catch(() => undefined);
        throw e;
      }
    },
    async read(id, props) {
      if (!props) return { id, props };
      const old = keysOf(props);
      const now = await spec.read(id, pinned(props, old));
      if (now === undefined) return { id: "", props: {} as O };
      const kept = quota ? { ...now, quotaController: controllerIn(props) } : now;
      return { id, props: recorded(kept, props, pinned(props, old), old) };
    },
    async update(id, olds, raw) {
      const news = inputsOf(raw, inputKeys);
      refuseSentinel(spec.type, news);
      const old = keysOf(olds);
      const pinnedNews = pinned(news, old);
      const pinnedOlds = pinned(olds, old);
      // The charge stays on the controller the state records (the first host when it has none).
      const ctl = quota ? controllerIn(olds) || (hostsIn(pinnedOlds)[0]?.name ?? "") : "";
      const before = quota ? chargeOf(quota, pinnedOlds, ctl) : undefined;
      const after = quota
        ? chargeOf(quota, pinnedNews, before ? ctl : (hostsIn(pinnedNews)[0]?.name ?? ""))
        : undefined;
      const both = [...hostsIn(pinnedNews), ...hostsIn(pinnedOlds)];
      const changed = !sameCharge(before, after);
      // Reserve the new charge first (a growth past a limit is refused before anything changes).
      if (changed && after) await reserve(both, after);
      let outs: O;
      try {
        outs = await spec.update(id, pinnedOlds, pinnedNews);
      } catch (e) {
        if (changed && after) {
          // Put the ledger back as it was: drop a moved charge, restore a resized one.
          if (chargeMoves(before, after)) await release(both, after).catch(() => undefined);
          else if (before) await reserve(both, before).catch(() => undefined);
        }
        throw e;
      }
      if (changed && before && chargeMoves(before, after))
        await release(both, before, quota?.legacyHolders?.(pinnedOlds) ?? []);
      return { outs: withController(recorded(outs, news, pinnedNews, old), after, "") };
    },
    async delete(id, olds) {
      const p = pinned(olds, keysOf(olds));
      await spec.delete(id, p);
      const charge = quota ? chargeOf(quota, p, controllerIn(olds)) : undefined;
      if (quota && charge) await release(hostsIn(p), charge, quota.legacyHolders?.(p) ?? []);
    },
  };
  return { spec: { ...spec, inputKeys }, provider };
}
