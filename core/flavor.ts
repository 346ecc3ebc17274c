/**
 * Flavors: the one set of size limits (the Flavor resource, the Server, the domain XML view and
 * the lab schema all use these), the extra spec keys kvmlab knows, and what each extra spec
 * becomes in a server's domain XML. Pure.
 *
 * Extra specs the domain XML expresses (Nova's meaning, libvirt's element):
 *
 *   hw:cpu_sockets / hw:cpu_cores / hw:cpu_threads   <cpu><topology sockets cores threads/>
 *   hw:watchdog_action  none|pause|poweroff|reset    <watchdog model='i6300esb' action=…/>
 *                       disabled                     no watchdog (Nova's default)
 *   hw_rng:allowed      true|false                   <rng model='virtio'> present | absent
 *   hw:boot_menu        true|false                   <os><bootmenu enable='yes|no'/>
 *   quota:cpu_shares|period|quota                    <cputune><shares|period|quota>
 *   quota:disk_{read,write,total}_{bytes,iops}_sec   <iotune> on the root disk
 *   quota:vif_{inbound,outbound}_{average,peak,burst}  <bandwidth> on every NIC
 *   hw:cpu_policy=shared, hw:mem_page_size=small|any, hw:numa_nodes=1   what a kvmlab guest is
 *                                                    anyway (floating vCPUs, 4 KiB pages, one node)
 *   kvmlab:<name>       free text                    <kvmlab:spec key=…> in the domain's metadata
 *
 * Everything else (hw:cpu_policy=dedicated, huge pages, several NUMA nodes, trait:*) is refused
 * with an error naming the key: kvmlab never drops an extra spec silently.
 */
import { FieldError } from "./errors";
import { showValue } from "./names";

/** Size limits of a flavor, inclusive. */
export const FLAVOR_LIMITS = {
  vcpus: { min: 1, max: 255 },
  /** Below 128 MiB the guests kvmlab boots do not start. */
  ramMiB: { min: 128, max: 1048576 },
  diskGiB: { min: 0, max: 65536 },
  ephemeralGiB: { min: 0, max: 65536 },
  swapMiB: { min: 0, max: 1048576 },
} as const;

export type FlavorSize = keyof typeof FLAVOR_LIMITS;

/** True when `value` is an integer within the limits of `size`. */
export function withinFlavorLimits(size: FlavorSize, value: unknown): value is number {
  const { min, max } = FLAVOR_LIMITS[size];
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
}

const POSITIVE_INT = /^[1-9][0-9]{0,9}$/;
const NON_NEGATIVE_INT = /^(0|[1-9][0-9]{0,11})$/;
const BOOL = /^(true|false)$/;

/**
 * Extra spec keys kvmlab accepts, with the values each allows. The `hw:`, `hw_rng:`, `quota:`
 * and `trait:` keys mean what they mean in Nova; `kvmlab:<name>` keys are free-form notes.
 * Whether a server can honour one is {@link flavorDomainSettings}'s decision.
 */
export const EXTRA_SPEC_RULES: readonly { key: RegExp; value: RegExp; allowed: string }[] = [
  { key: /^hw:cpu_(sockets|cores|threads)$/, value: POSITIVE_INT, allowed: "a positive integer" },
  { key: /^hw:cpu_policy$/, value: /^(shared|dedicated)$/, allowed: '"shared" or "dedicated"' },
  {
    key: /^hw:mem_page_size$/,
    value: /^(small|large|any|[1-9][0-9]*(KB|MB|GB)?)$/,
    allowed: '"small", "large", "any" or a size like "2MB"',
  },
  { key: /^hw:numa_nodes$/, value: POSITIVE_INT, allowed: "a positive integer" },
  {
    key: /^hw:watchdog_action$/,
    value: /^(disabled|none|pause|poweroff|reset)$/,
    allowed: '"disabled", "none", "pause", "poweroff" or "reset"',
  },
  { key: /^hw:boot_menu$/, value: BOOL, allowed: '"true" or "false"' },
  { key: /^hw_rng:allowed$/, value: BOOL, allowed: '"true" or "false"' },
  { key: /^quota:cpu_(shares|period|quota)$/, value: NON_NEGATIVE_INT, allowed: "a non-negative integer" },
  {
    key: /^quota:disk_(read|write|total)_(bytes|iops)_sec$/,
    value: NON_NEGATIVE_INT,
    allowed: "a non-negative integer",
  },
  {
    key: /^quota:vif_(inbound|outbound)_(average|peak|burst)$/,
    value: NON_NEGATIVE_INT,
    allowed: "a non-negative integer (KiB/s or KiB)",
  },
  {
    key: /^trait:[A-Z][A-Z0-9_]{0,254}$/,
    value: /^(required|forbidden)$/,
    allowed: '"required" or "forbidden"',
  },
  { key: /^kvmlab:[a-z0-9][a-z0-9_.-]{0,62}$/, value: /^[\x20-\x7e]{0,255}$/, allowed: "printable text" },
];

/**
 * Checks extra specs' keys and values; returns error texts naming `extraSpecs.<key>`. Values for
 * which `isUnknown` is true (not known yet during a preview) are skipped.
 */
export function checkExtraSpecs(
  raw: unknown,
  vcpus: unknown,
  isUnknown: (v: unknown) => boolean = () => false,
): string[] {
  if (isUnknown(raw)) return [];
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    return [`extraSpecs: expected a map of string keys to string values, got ${showValue(raw)}`];
  }
  const errors: string[] = [];
  for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
    if (isUnknown(value)) continue;
    const rule = EXTRA_SPEC_RULES.find((r) => r.key.test(key));
    if (!rule) {
      errors.push(
        `extraSpecs.${showValue(key)}: unknown key; use a Nova key kvmlab knows (hw:cpu_sockets|cores|threads|policy, hw:mem_page_size, hw:numa_nodes, hw:watchdog_action, hw:boot_menu, hw_rng:allowed, quota:cpu_*, quota:disk_*_sec, quota:vif_*, trait:NAME) or a free-form "kvmlab:<name>" key`,
      );
      continue;
    }
    if (typeof value !== "string" || !rule.value.test(value)) {
      errors.push(`extraSpecs.${key}: expected ${rule.allowed} as a string, got ${showValue(value)}`);
      continue;
    }
    if (
      /^hw:(cpu_(sockets|cores|threads)|numa_nodes)$/.test(key) &&
      typeof vcpus === "number" &&
      Number(value) > vcpus
    ) {
      errors.push(`extraSpecs.${key}: ${value} is more than the flavor's ${vcpus} vcpus; lower it`);
    }
  }
  const specs = raw as Record<string, unknown>;
  const topo = ["hw:cpu_sockets", "hw:cpu_cores", "hw:cpu_threads"].map((k) => specs[k]);
  if (
    topo.every((v) => typeof v === "string" && POSITIVE_INT.test(v)) &&
    typeof vcpus === "number" &&
    topo.reduce((p: number, v) => p * Number(v), 1) !== vcpus
  ) {
    errors.push(
      `extraSpecs: hw:cpu_sockets × hw:cpu_cores × hw:cpu_threads = ${topo.join(" × ")} must equal vcpus (${vcpus}); fix one of them`,
    );
  }
  return errors;
}

export type WatchdogAction = "none" | "pause" | "poweroff" | "reset";
export type IoTuneKey = `${"read" | "write" | "total"}_${"bytes" | "iops"}_sec`;
export interface BandwidthLimit {
  /** KiB/s. */
  readonly average: number;
  /** KiB/s. */
  readonly peak: number | null;
  /** KiB. */
  readonly burst: number | null;
}

/** What a flavor's extra specs put into a domain. `null`/empty: the domain's default. */
export interface FlavorDomainSettings {
  readonly topology: { readonly sockets: number; readonly cores: number; readonly threads: number } | null;
  readonly watchdog: WatchdogAction | null;
  /** The virtio RNG device (kvmlab's default: present). */
  readonly rng: boolean;
  readonly bootMenu: boolean | null;
  readonly cputune: {
    readonly shares: number | null;
    readonly period: number | null;
    readonly quota: number | null;
  } | null;
  readonly iotune: Readonly<Partial<Record<IoTuneKey, number>>> | null;
  readonly bandwidth: {
    readonly inbound: BandwidthLimit | null;
    readonly outbound: BandwidthLimit | null;
  } | null;
  /** `kvmlab:<name>` notes, sorted by key. */
  readonly notes: readonly { readonly key: string; readonly value: string }[];
}

/** libvirt's accepted ranges for the cputune values. */
const CPUTUNE_RANGES = {
  shares: [2, 262144],
  period: [1000, 1000000],
  quota: [1000, 17592186044415],
} as const;

/**
 * What a flavor's extra specs become in the domain XML (see the table at the top of this file).
 * Throws a {@link FieldError} naming `<field>.<key>` for an extra spec kvmlab cannot express, or
 * an invalid one, so no extra spec is ever dropped silently.
 */
export function flavorDomainSettings(
  extraSpecs: Readonly<Record<string, string>>,
  vcpus: number,
  field = "flavor.extraSpecs",
): FlavorDomainSettings {
  const invalid = checkExtraSpecs(extraSpecs, vcpus);
  if (invalid.length > 0) {
    const [first] = invalid;
    const colon = first.indexOf(": ");
    throw new FieldError(
      `${field}${first.slice("extraSpecs".length, colon)}`,
      first.slice(colon + 2),
      "fix the flavor's extra specs",
    );
  }
  const keys = Object.keys(extraSpecs).sort();
  const refuse = (key: string, why: string, fix: string): never => {
    throw new FieldError(`${field}.${key}`, why, fix);
  };
  const int = (key: string): number | null =>
    extraSpecs[key] === undefined ? null : Number(extraSpecs[key]);
  const positive = (key: string): number | null => {
    const v = int(key);
    if (v === 0) refuse(key, "0 sets no limit", "remove the key, or give a positive value");
    return v;
  };
  for (const key of keys) {
    const value = extraSpecs[key];
    if (key === "hw:cpu_policy" && value !== "shared")
      refuse(
        key,
        `"${value}" needs pinned host CPUs, which kvmlab does not manage`,
        'use "shared" (vCPUs float over the host CPUs) or remove the key',
      );
    if (key === "hw:mem_page_size" && value !== "small" && value !== "any")
      refuse(
        key,
        `"${value}" needs huge pages reserved on the hosts, which kvmlab does not manage`,
        'use "small" or "any" (4 KiB pages) or remove the key',
      );
    if (key === "hw:numa_nodes" && value !== "1")
      refuse(
        key,
        `${value} NUMA nodes are not expressed by kvmlab's domains (one node)`,
        'use "1" or remove the key',
      );
    if (key.startsWith("trait:"))
      refuse(key, "kvmlab's placement has no traits", "remove the key (pin the server with host instead)");
  }
  const topoKeys = ["hw:cpu_sockets", "hw:cpu_cores", "hw:cpu_threads"] as const;
  const given = topoKeys.filter((k) => extraSpecs[k] !== undefined);
  let topology: FlavorDomainSettings["topology"] = null;
  if (given.length > 0) {
    // Like Nova: missing values are derived so that sockets × cores × threads = vcpus.
    const [s, c, t] = topoKeys.map((k) => int(k));
    const known = (s ?? 1) * (c ?? 1) * (t ?? 1);
    const missing = topoKeys.filter((k) => extraSpecs[k] === undefined);
    if (vcpus % known !== 0)
      refuse(
        given[0],
        `${given.map((k) => `${k}=${extraSpecs[k]}`).join(", ")} does not divide the flavor's ${vcpus} vcpus`,
        "make sockets × cores × threads equal vcpus",
      );
    const rest = vcpus / known;
    if (missing.length === 0 && rest !== 1)
      refuse(
        given[0],
        `sockets × cores × threads = ${known}, not the flavor's ${vcpus} vcpus`,
        "make them equal",
      );
    // The first missing value takes the rest (sockets first, as Nova prefers sockets).
    const fill = (k: (typeof topoKeys)[number], v: number | null): number =>
      v ?? (k === missing[0] ? rest : 1);
    topology = { sockets: fill(topoKeys[0], s), cores: fill(topoKeys[1], c), threads: fill(topoKeys[2], t) };
  }
  const wd = extraSpecs["hw:watchdog_action"];
  const watchdog: WatchdogAction | null =
    wd === undefined || wd === "disabled" ? null : (wd as WatchdogAction);
  const rng = extraSpecs["hw_rng:allowed"] !== "false";
  const bootMenu = extraSpecs["hw:boot_menu"] === undefined ? null : extraSpecs["hw:boot_menu"] === "true";

  let cputune: FlavorDomainSettings["cputune"] = null;
  if (keys.some((k) => k.startsWith("quota:cpu_"))) {
    const value = (name: keyof typeof CPUTUNE_RANGES): number | null => {
      const key = `quota:cpu_${name}`;
      const v = int(key);
      const [min, max] = CPUTUNE_RANGES[name];
      if (v !== null && (v < min || v > max))
        refuse(key, `${v} is outside libvirt's range ${min}-${max}`, `give a value from ${min} to ${max}`);
      return v;
    };
    cputune = { shares: value("shares"), period: value("period"), quota: value("quota") };
  }

  let iotune: Partial<Record<IoTuneKey, number>> | null = null;
  for (const key of keys) {
    const m = /^quota:disk_((read|write|total)_(bytes|iops)_sec)$/.exec(key);
    if (!m) continue;
    iotune ??= {};
    iotune[m[1] as IoTuneKey] = positive(key) as number;
  }
  if (iotune !== null)
    for (const unit of ["bytes", "iops"] as const) {
      const total = iotune[`total_${unit}_sec`];
      const rw = (["read", "write"] as const).find((d) => iotune![`${d}_${unit}_sec`] !== undefined);
      if (total !== undefined && rw !== undefined)
        refuse(
          `quota:disk_total_${unit}_sec`,
          `libvirt cannot limit total and ${rw} ${unit} at once`,
          `keep quota:disk_total_${unit}_sec or the read/write ones, not both`,
        );
    }

  let bandwidth: FlavorDomainSettings["bandwidth"] = null;
  if (keys.some((k) => k.startsWith("quota:vif_"))) {
    const limit = (dir: "inbound" | "outbound"): BandwidthLimit | null => {
      const [average, peak, burst] = (["average", "peak", "burst"] as const).map((p) =>
        positive(`quota:vif_${dir}_${p}`),
      );
      if (average === null) {
        if (peak !== null || burst !== null)
          refuse(
            `quota:vif_${dir}_${peak !== null ? "peak" : "burst"}`,
            `libvirt needs an average rate with a peak or burst`,
            `add quota:vif_${dir}_average`,
          );
        return null;
      }
      return { average, peak, burst };
    };
    bandwidth = { inbound: limit("inbound"), outbound: limit("outbound") };
  }

  const notes = keys.filter((k) => k.startsWith("kvmlab:")).map((key) => ({ key, value: extraSpecs[key] }));
  return { topology, watchdog, rng, bootMenu, cputune, iotune, bandwidth, notes };
}

/** A flavor's ephemeral disk and swap: kvmlab servers have neither yet, so a flavor with them is refused. */
export function checkNoEphemeralOrSwap(
  flavor: { readonly ephemeralGiB?: number; readonly swapMiB?: number },
  field = "flavor",
): FieldError | undefined {
  if ((flavor.ephemeralGiB ?? 0) !== 0)
    return new FieldError(
      `${field}.ephemeralGiB`,
      `${flavor.ephemeralGiB} GiB: kvmlab servers have no ephemeral disk`,
      "use a flavor with ephemeralGiB 0 (grow the root disk with diskGiB instead)",
    );
  if ((flavor.swapMiB ?? 0) !== 0)
    return new FieldError(
      `${field}.swapMiB`,
      `${flavor.swapMiB} MiB: kvmlab servers have no swap disk`,
      "use a flavor with swapMiB 0 (make swap inside the guest, e.g. a swap file from cloud-init)",
    );
  return undefined;
}
