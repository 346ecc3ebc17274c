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
import * as pulumi from "@pulumi/pulumi";
import { checkExtraSpecs as coreCheckExtraSpecs, FLAVOR_LIMITS } from "../core/flavor";
import { packagedProvider } from "./packaged";
import {
  UNKNOWN,
  checkHostList,
  checkName,
  containsUnknown,
  normalizeHostConnection,
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
import { hostKeyRecord, pinnedHost, type HostConnectionArgs } from "./network";

export interface FlavorArgs {
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
}

type Failure = { property: string; reason: string };

/** Extra spec keys kvmlab accepts (one definition: core/flavor.ts). */
export { EXTRA_SPEC_RULES } from "../core/flavor";

/** Checks extra specs; returns error texts naming `extraSpecs.<key>`. Pure. */
export function checkExtraSpecs(raw: unknown, vcpus: unknown): string[] {
  return coreCheckExtraSpecs(raw, vcpus, (v) => v === UNKNOWN);
}

function checkInt(field: string, v: unknown, min: number, max: number, what: string): string | undefined {
  if (v === UNKNOWN) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    return `${field}: expected ${what}, an integer ${min}-${max}, got ${showValue(v)}`;
  }
  return undefined;
}

/** Validates and normalizes raw inputs. Pure. */
export function checkFlavorInputs(news: Record<string, unknown>): {
  inputs: Record<string, unknown>;
  failures: Failure[];
} {
  const failures: Failure[] = [];
  const add = (property: string, e: string | undefined): void => {
    if (e) failures.push({ property, reason: e });
  };
  const L = FLAVOR_LIMITS; // one set of limits, shared with the Server (core/flavor.ts)
  if (news.flavorName !== UNKNOWN) add("flavorName", checkName("flavorName", news.flavorName));
  add("vcpus", checkInt("vcpus", news.vcpus, L.vcpus.min, L.vcpus.max, "the number of virtual CPUs"));
  add("ramMiB", checkInt("ramMiB", news.ramMiB, L.ramMiB.min, L.ramMiB.max, "RAM in MiB"));
  const diskGiB = news.diskGiB ?? 0;
  add(
    "diskGiB",
    checkInt("diskGiB", diskGiB, L.diskGiB.min, L.diskGiB.max, "the root disk in GiB (0: the image's size)"),
  );
  const ephemeralGiB = news.ephemeralGiB ?? 0;
  add(
    "ephemeralGiB",
    checkInt(
      "ephemeralGiB",
      ephemeralGiB,
      L.ephemeralGiB.min,
      L.ephemeralGiB.max,
      "the ephemeral disk in GiB (0: none)",
    ),
  );
  const swapMiB = news.swapMiB ?? 0;
  add("swapMiB", checkInt("swapMiB", swapMiB, L.swapMiB.min, L.swapMiB.max, "swap in MiB (0: none)"));
  const extraSpecs = news.extraSpecs ?? {};
  for (const e of checkExtraSpecs(extraSpecs, news.vcpus)) add("extraSpecs", e);
  const description = news.description ?? "";
  if (
    description !== UNKNOWN &&
    (typeof description !== "string" ||
      description.length > 255 ||
      [...description].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f))
  ) {
    add(
      "description",
      `description: expected one line of at most 255 characters, got ${showValue(description)}`,
    );
  }
  for (const e of checkHostList("hosts", news.hosts)) add("hosts", e);
  const hosts = Array.isArray(news.hosts)
    ? news.hosts.map((h) =>
        h !== null && typeof h === "object" && !containsUnknown(h)
          ? normalizeHostConnection(h as Record<string, unknown>)
          : h,
      )
    : news.hosts;
  return {
    inputs: {
      flavorName: news.flavorName,
      vcpus: news.vcpus,
      ramMiB: news.ramMiB,
      diskGiB,
      ephemeralGiB,
      swapMiB,
      extraSpecs,
      description,
      hosts,
    },
    failures,
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
  };
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
export function diffFlavor(
  olds: FlavorOutputs,
  news: FlavorInputs,
): { changes: boolean; replaces: string[]; stables: string[]; deleteBeforeReplace: boolean } {
  const unknown = (v: unknown): boolean => containsUnknown(v);
  const replaces = FLAVOR_REPLACE_KEYS.filter((k) => unknown(news[k]) || olds[k] !== news[k]);
  const changed =
    replaces.length > 0 ||
    unknown(news.extraSpecs) ||
    JSON.stringify(sortedSpecs(olds.extraSpecs)) !== JSON.stringify(sortedSpecs(news.extraSpecs)) ||
    unknown(news.description) ||
    olds.description !== news.description ||
    unknown(news.hosts) ||
    JSON.stringify(olds.hosts) !== JSON.stringify(news.hosts) ||
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
  const hostKeys: Record<string, string> = {};
  for (const h of inputs.hosts) hostKeys[h.name] = hostKeyRecord(h);
  return {
    ...flavorInputsOf(inputs),
    extraSpecs: sortedSpecs(inputs.extraSpecs),
    flavorId: flavorId(inputs),
    controller: controllerOf(inputs.hosts).name,
    hostKeys,
    realized,
  };
}

function flavorInputsOf(o: FlavorInputs): FlavorInputs {
  return {
    flavorName: o.flavorName,
    vcpus: o.vcpus,
    ramMiB: o.ramMiB,
    diskGiB: o.diskGiB,
    ephemeralGiB: o.ephemeralGiB,
    swapMiB: o.swapMiB,
    extraSpecs: o.extraSpecs,
    description: o.description,
    hosts: o.hosts,
  };
}

/** Writes the record on the controller and reads it back (one batch under the host lock). */
async function writeOn(host: HostConnection, inputs: FlavorInputs): Promise<FlavorHostState> {
  const outs = await runLocked(host, [
    writeRecordStep("flavor", inputs.flavorName, flavorRecord(inputs)),
    readRecordStep("flavor", inputs.flavorName),
  ]);
  return flavorState(inputs, outs[1]);
}

export const flavorProvider: pulumi.dynamic.ResourceProvider<FlavorInputs, FlavorOutputs> = {
  async check(_olds, news) {
    const { inputs, failures } = checkFlavorInputs(news as unknown as Record<string, unknown>);
    return { inputs: inputs as unknown as FlavorInputs, failures };
  },

  async diff(_id, olds, news) {
    return diffFlavor(olds, news);
  },

  async create(inputs) {
    const realized = await writeOn(controllerOf(inputs.hosts), inputs);
    return { id: flavorId(inputs), outs: outputsFor(inputs, realized) };
  },

  async read(id, props) {
    if (!props) return { id, props };
    const host = pinnedHost(controllerOf(props.hosts), props.hostKeys);
    const [r] = await runSteps(host, [readRecordStep("flavor", props.flavorName)]);
    if (r.code !== 0)
      throw new Error(`host ${host.name}: reading flavor ${props.flavorName} failed: ${r.stderr.trim()}`);
    const realized = flavorState(props, r.stdout);
    if (!realized.record) return { id: "", props: {} as FlavorOutputs };
    return { id, props: { ...props, realized } };
  },

  async update(_id, olds, news) {
    const hosts = news.hosts.map((h) => pinnedHost(h, olds.hostKeys));
    const realized = await writeOn(controllerOf(hosts), { ...news, hosts });
    const oldController = pinnedHost(controllerOf(olds.hosts), olds.hostKeys);
    if (oldController.name !== controllerOf(hosts).name) {
      await runLocked(oldController, [flavorDeleteStep(olds.flavorName, olds.flavorId)]);
    }
    return { outs: outputsFor(news, realized) };
  },

  async delete(_id, olds) {
    const host = pinnedHost(controllerOf(olds.hosts), olds.hostKeys);
    await runLocked(host, [flavorDeleteStep(olds.flavorName, olds.flavorId)]);
  },
};

/**
 * A server size (`pulumi-nodejs:dynamic/kvmlab:Flavor`).
 *
 * ```ts
 * const small = new Flavor("m1.small", { vcpus: 1, ramMiB: 2048, diskGiB: 20, hosts });
 * ```
 */
export class Flavor extends pulumi.dynamic.Resource {
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
    super(
      packagedProvider(flavorProvider),
      name,
      {
        flavorName: args.flavorName ?? name,
        vcpus: args.vcpus,
        ramMiB: args.ramMiB,
        diskGiB: args.diskGiB,
        ephemeralGiB: args.ephemeralGiB,
        swapMiB: args.swapMiB,
        extraSpecs: args.extraSpecs,
        description: args.description,
        hosts: args.hosts,
        flavorId: undefined,
        controller: undefined,
        hostKeys: undefined,
        realized: undefined,
      },
      pulumi.mergeOptions(opts, { additionalSecretOutputs: ["hosts"] }),
      "kvmlab",
      "Flavor",
    );
  }
}
