/**
 * Flavor: a server size, like a Nova flavor: vCPUs, RAM, root disk, ephemeral disk, swap and
 * extra specs.
 *
 * Where it lives: one record, /var/lib/kvmlab/records/flavor/<name>.json, on the CONTROLLER,
 * which is the first host of `hosts` (Nova keeps flavors in its API database on the
 * controller, not on computes). Servers take vcpus/ramMiB from this resource's outputs in the
 * program; the record is the host-side truth for attribution and for `kvmlab` tools.
 *
 * Identity: `flavorId` is a UUID derived from the name and the sizes, so creating the same
 * flavor twice writes the same record (converges), and a replacement (new sizes) has a new id.
 * Delete removes the record only when it still carries this resource's id, so Pulumi's
 * create-before-delete replacement never deletes the new record.
 *
 *   check   validates every field (unknowns accepted during preview), fills defaults
 *   diff    pure (no SSH): flavorName, vcpus, ramMiB, diskGiB, ephemeralGiB, swapMiB replace
 *           (flavors are immutable, as in Nova: resizing is a server operation);
 *           extraSpecs, description and hosts update; a record that drifted updates
 *   create  one batch under the host lock on the controller: write the record, read it back
 *   read    one batch: the record (gone → the resource is gone; changed → `realized.matches`)
 *   update  rewrite the record (on a new controller: write there, remove from the old one)
 *   delete  remove the record if it still carries this flavorId (idempotent)
 */
import type * as pulumi from "@pulumi/pulumi";
import { checkExtraSpecs as coreCheckExtraSpecs, FLAVOR_LIMITS } from "../core/flavor";
import {
  checkHostList,
  recordPath,
  runLocked,
  runSteps,
  shQuote,
  showValue,
  writeRecordStep,
  readRecordStep,
  parseRecord,
  type HostConnection,
  type Step,
} from "./host";
import {
  failureList,
  KvmlabResource,
  applyRules,
  changedKeys,
  checkedOwner,
  claimStep,
  defineResource,
  guardStep,
  ownerIn,
  ownerProject,
  releaseOwnerStep,
  type OwnedObject,
  isUnknown,
  normalizeHosts,
  rules,
  type Checked,
  type DiffResult,
  type HostConnectionArgs,
  type InProjectArgs,
} from "./kit";

export interface FlavorArgs extends InProjectArgs {
  /** Flavor name (servers refer to it). @default the resource name */
  readonly flavorName?: pulumi.Input<string>;
  /** Virtual CPUs, 1-255 (the Server's limit). */
  readonly vcpus: pulumi.Input<number>;
  /** RAM in MiB, 128-1048576 (smaller guests do not boot the test image; the Server refuses them). */
  readonly ramMiB: pulumi.Input<number>;
  /** Root disk in GiB; 0 means "the image's virtual size" (as in Nova). @default 0 */
  readonly diskGiB?: pulumi.Input<number>;
  /** Ephemeral (second) disk in GiB. @default 0 (none) */
  readonly ephemeralGiB?: pulumi.Input<number>;
  /** Swap disk in MiB. @default 0 (none) */
  readonly swapMiB?: pulumi.Input<number>;
  /** Nova-style extra specs (see {@link EXTRA_SPEC_RULES}); keys are validated. @default {} */
  readonly extraSpecs?: pulumi.Input<Record<string, pulumi.Input<string>>>;
  /** Free text. @default "" */
  readonly description?: pulumi.Input<string>;
  /** Hosts of the cloud; the first is the controller that keeps the record. */
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** Owner of the record on the controller. @default set by the kit */
  readonly owner?: pulumi.Input<string>;
}

export interface FlavorInputs {
  flavorName: string;
  vcpus: number;
  ramMiB: number;
  diskGiB: number;
  ephemeralGiB: number;
  swapMiB: number;
  extraSpecs: Record<string, string>;
  description: string;
  hosts: HostConnection[];
  /** Owner of the record on the controller (kit/owner.ts). */
  owner: string;
}

/** What the controller has. */
export interface FlavorHostState {
  record: boolean;
  /** The record equals what these outputs describe (same id, sizes, specs, description). */
  matches: boolean;
}

export interface FlavorOutputs extends FlavorInputs {
  /** UUID derived from the name and the sizes. */
  flavorId: string;
  /** Name of the host that keeps the record (hosts[0]). */
  controller: string;
  hostKeys: Record<string, string>;
  realized: FlavorHostState;
}

/** The record written on the controller. */
export interface FlavorRecord {
  kind: "flavor";
  name: string;
  flavorId: string;
  vcpus: number;
  ramMiB: number;
  diskGiB: number;
  ephemeralGiB: number;
  swapMiB: number;
  extraSpecs: Record<string, string>;
  description: string;
  /** The identity project `<domain>/<name>` of its owner (issue 14); absent when it has none. */
  project?: string;
}

/** Extra spec keys kvmlab accepts (one definition: core/flavor.ts). */
export { EXTRA_SPEC_RULES } from "../core/flavor";

/** Checks extra specs; returns error texts naming `extraSpecs.<key>`. Pure. */
export function checkExtraSpecs(raw: unknown, vcpus: unknown): string[] {
  return coreCheckExtraSpecs(raw, vcpus, isUnknown);
}

/** Validates and normalizes raw inputs. Pure. */
export function checkFlavorInputs(news: Record<string, unknown>): Checked {
  const out = failureList();
  const L = FLAVOR_LIMITS; // one set of limits, shared with the Server (core/flavor.ts)
  const v = applyRules(
    news,
    {
      flavorName: { rule: rules.name },
      vcpus: { rule: rules.int(L.vcpus.min, L.vcpus.max, "the number of virtual CPUs") },
      ramMiB: { rule: rules.int(L.ramMiB.min, L.ramMiB.max, "RAM in MiB") },
      diskGiB: {
        rule: rules.int(L.diskGiB.min, L.diskGiB.max, "the root disk in GiB (0: the image's size)"),
        default: 0,
      },
      ephemeralGiB: {
        rule: rules.int(L.ephemeralGiB.min, L.ephemeralGiB.max, "the ephemeral disk in GiB (0: none)"),
        default: 0,
      },
      swapMiB: { rule: rules.int(L.swapMiB.min, L.swapMiB.max, "swap in MiB (0: none)"), default: 0 },
    },
    out,
  );
  const extraSpecs = news.extraSpecs ?? {};
  out.add("extraSpecs", checkExtraSpecs(extraSpecs, news.vcpus));
  const { description } = applyRules(news, { description: { rule: rules.line(255), default: "" } }, out);
  out.add("hosts", checkHostList("hosts", news.hosts));
  return {
    inputs: {
      ...v,
      extraSpecs,
      description,
      hosts: normalizeHosts(news.hosts),
      owner: checkedOwner(news, "Flavor", "flavorName", out.add),
    },
    failures: out.failures,
  };
}

/** Fields whose change makes a new flavor (Nova flavors are immutable). */
export const FLAVOR_REPLACE_KEYS = [
  "flavorName",
  "vcpus",
  "ramMiB",
  "diskGiB",
  "ephemeralGiB",
  "swapMiB",
] as const;

/** Deterministic flavor id: a UUID-shaped digest of the name and sizes. */
export function flavorId(i: Pick<FlavorInputs, (typeof FLAVOR_REPLACE_KEYS)[number]>): string {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const h = crypto
    .createHash("sha256")
    .update(JSON.stringify([i.flavorName, i.vcpus, i.ramMiB, i.diskGiB, i.ephemeralGiB, i.swapMiB]))
    .digest("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${((Number.parseInt(h[16], 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** The record for these inputs. */
export function flavorRecord(i: FlavorInputs): FlavorRecord {
  return {
    kind: "flavor",
    name: i.flavorName,
    flavorId: flavorId(i),
    vcpus: i.vcpus,
    ramMiB: i.ramMiB,
    diskGiB: i.diskGiB,
    ephemeralGiB: i.ephemeralGiB,
    swapMiB: i.swapMiB,
    extraSpecs: sortedSpecs(i.extraSpecs),
    description: i.description,
    ...projectField(i.owner),
  };
}

/** `{ project }` from an owner's `project=` segment, `{}` without one (records stay as before). */
function projectField(owner: string | undefined): { project?: string } {
  const project = ownerProject(owner ?? "");
  return project === "" ? {} : { project };
}

function sortedSpecs(specs: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(specs).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Compares a record read from the host with the one these inputs describe. */
export function flavorState(inputs: FlavorInputs, recordText: string): FlavorHostState {
  const have = parseRecord<FlavorRecord>(recordText, `flavor/${inputs.flavorName}`);
  if (!have) return { record: false, matches: false };
  const want = flavorRecord(inputs);
  const norm = (r: FlavorRecord): string =>
    JSON.stringify({ ...r, extraSpecs: sortedSpecs(r.extraSpecs ?? {}) });
  return { record: true, matches: norm(have) === norm(want) };
}

/** Property-level diff; pure (never connects). */
export function diffFlavor(olds: FlavorOutputs, news: FlavorInputs): DiffResult {
  const replaces = changedKeys(olds, news, FLAVOR_REPLACE_KEYS);
  const changed =
    replaces.length > 0 ||
    changedKeys(olds, news, ["extraSpecs", "description", "hosts"]).length > 0 ||
    // Drift found by refresh: the record is gone or differs.
    !olds.realized?.record ||
    !olds.realized?.matches;
  return {
    changes: changed,
    replaces,
    stables: replaces.length === 0 ? ["flavorId", ...FLAVOR_REPLACE_KEYS] : [],
    deleteBeforeReplace: false,
  };
}

/** Step that removes the record only when it carries `id` (a replacement may own it now). */
export function flavorDeleteStep(flavorName: string, id: string): Step {
  if (!/^[0-9a-f-]{36}$/.test(id)) throw new Error(`flavorDeleteStep: invalid flavorId ${showValue(id)}`);
  const p = shQuote(recordPath("flavor", flavorName));
  return {
    label: `delete record flavor/${flavorName}`,
    script: `if [ -f ${p} ] && grep -q '"flavorId": "${id}"' ${p}; then rm -f ${p}; fi`,
  };
}

function controllerOf(hosts: HostConnection[]): HostConnection {
  return hosts[0];
}

function outputsFor(inputs: FlavorInputs, realized: FlavorHostState): FlavorOutputs {
  return {
    ...inputs,
    extraSpecs: sortedSpecs(inputs.extraSpecs),
    flavorId: flavorId(inputs),
    controller: controllerOf(inputs.hosts).name,
    hostKeys: {},
    realized,
  };
}

/** The flavor's record on the controller, for the owner guards. */
export function flavorOwned(flavorName: string): OwnedObject {
  return {
    kind: "flavor",
    key: [flavorName],
    what: `flavor ${flavorName}`,
    field: "flavorName",
    exists: `[ -e ${shQuote(recordPath("flavor", flavorName))} ]`,
  };
}

/**
 * Writes the record on the controller and reads it back (one batch under the host lock). The
 * first step claims the flavor (create) or refuses another owner's (update: `owners`).
 */
async function writeOn(
  host: HostConnection,
  inputs: FlavorInputs,
  owners: readonly string[] | "claim",
): Promise<FlavorHostState> {
  const owned = flavorOwned(inputs.flavorName);
  const outs = await runLocked(host, [
    owners === "claim" ? claimStep(owned, inputs.owner) : guardStep(owned, owners, true),
    writeRecordStep("flavor", inputs.flavorName, flavorRecord(inputs)),
    readRecordStep("flavor", inputs.flavorName),
  ]);
  return flavorState(inputs, outs[2]);
}

/** Deletes the record; refuses another owner's flavor first (state from before owners: no guard). */
function guardedDelete(flavorName: string, flavorId: string, owner: string): Step[] {
  const owned = flavorOwned(flavorName);
  return owner
    ? [guardStep(owned, [owner]), flavorDeleteStep(flavorName, flavorId), releaseOwnerStep(owned, [owner])]
    : [flavorDeleteStep(flavorName, flavorId)];
}

const flavor = defineResource<FlavorInputs, FlavorOutputs>({
  type: "Flavor",
  inputKeys: [...FLAVOR_REPLACE_KEYS, "extraSpecs", "description", "hosts", "owner"],
  outputKeys: ["flavorId", "controller", "hostKeys", "realized"],
  secretOutputs: ["hosts"],
  check: (news) => checkFlavorInputs(news),
  diff: diffFlavor,

  async create(inputs) {
    const realized = await writeOn(controllerOf(inputs.hosts), inputs, "claim");
    return { id: flavorId(inputs), outs: outputsFor(inputs, realized) };
  },

  async read(_id, props) {
    const host = controllerOf(props.hosts);
    const [r] = await runSteps(host, [readRecordStep("flavor", props.flavorName)]);
    if (r.code !== 0)
      throw new Error(`host ${host.name}: reading flavor ${props.flavorName} failed: ${r.stderr.trim()}`);
    const realized = flavorState(props, r.stdout);
    return realized.record ? { ...props, realized } : undefined;
  },

  async update(_id, olds, news) {
    const oldController = controllerOf(olds.hosts);
    const moved = oldController.name !== controllerOf(news.hosts).name;
    const realized = await writeOn(
      controllerOf(news.hosts),
      news,
      moved ? "claim" : [news.owner, ownerIn(olds)],
    );
    if (moved) await runLocked(oldController, guardedDelete(olds.flavorName, olds.flavorId, ownerIn(olds)));
    return outputsFor(news, realized);
  },

  async delete(_id, olds) {
    await runLocked(controllerOf(olds.hosts), guardedDelete(olds.flavorName, olds.flavorId, ownerIn(olds)));
  },
});

export const flavorProvider = flavor.provider;

/**
 * A server size (`pulumi-nodejs:dynamic/kvmlab:Flavor`).
 *
 * ```ts
 * const small = new Flavor("m1.small", { vcpus: 1, ramMiB: 2048, diskGiB: 20, hosts });
 * ```
 */
export class Flavor extends KvmlabResource<FlavorInputs, FlavorOutputs> {
  declare readonly flavorName: pulumi.Output<string>;
  declare readonly flavorId: pulumi.Output<string>;
  declare readonly vcpus: pulumi.Output<number>;
  declare readonly ramMiB: pulumi.Output<number>;
  declare readonly diskGiB: pulumi.Output<number>;
  declare readonly ephemeralGiB: pulumi.Output<number>;
  declare readonly swapMiB: pulumi.Output<number>;
  declare readonly extraSpecs: pulumi.Output<Record<string, string>>;
  declare readonly description: pulumi.Output<string>;
  declare readonly controller: pulumi.Output<string>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<FlavorHostState>;
  declare readonly hosts: pulumi.Output<HostConnection[]>;

  constructor(name: string, args: FlavorArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(flavor, name, { ...args, flavorName: args.flavorName ?? name }, opts);
  }
}
