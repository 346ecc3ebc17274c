/**
 * libvirt domain XML for one server: vCPUs and memory from its flavor, a qcow2 overlay disk or
 * direct kernel boot, an optional NoCloud seed CD-ROM, one virtio NIC per port on a Linux or
 * OVS bridge (explicit tap name, fa:16:3e MAC), serial console logged to a file, VNC, and
 * `<metadata>` in the kvmlab namespace so every domain on a host is attributable. A flavor's
 * extra specs arrive as {@link FlavorDomainSettings} (core/flavor.ts decides what each becomes):
 * CPU topology, watchdog, RNG, boot menu, cputune, the root disk's iotune, NICs' bandwidth and
 * kvmlab:* notes in the metadata.
 */
import { FLAVOR_LIMITS, type FlavorDomainSettings, type IoTuneKey } from "../core/flavor";
import { DOMAIN_OWNER_RE, KVMLAB_DOMAIN_XMLNS, PROJECT_REF_RE } from "../core/domainMetadata";
import { ipToInt } from "../core/net";
import { MANAGEMENT_ADDRESS_PLACEHOLDER, MANAGEMENT_LISTEN } from "../core/vncListen";
import { renderTemplate } from "./render";
import { assertSealed, seal } from "./sealed";
import {
  checkIfName,
  checkInt,
  checkMac,
  checkName,
  checkOneOf,
  checkPath,
  checkText,
  checkUuid,
  deterministicUuid,
  FieldError,
} from "./validate";

export { KVMLAB_DOMAIN_XMLNS };

export type DomainBoot =
  | { readonly kind: "disk"; readonly disk: string; readonly format?: "qcow2" | "raw" }
  | {
      readonly kind: "kernel";
      readonly kernel: string;
      readonly initrd?: string | null;
      readonly cmdline?: string;
      /** Optional root disk next to the kernel. */
      readonly disk?: string | null;
      readonly format?: "qcow2" | "raw";
    };

export interface DomainNicSpec {
  /** Bridge the tap joins. */
  readonly bridge: string;
  /** `linuxbridge` → plain bridge; `openvswitch` → `<virtualport type='openvswitch'>`. */
  readonly driver: "linuxbridge" | "openvswitch";
  /** Explicit tap device name (≤ 15 characters, e.g. from deterministicIfName("tap", port)). */
  readonly target: string;
  readonly mac: string;
  /** OVS `external_ids:iface-id` (Neutron's port id); OVS only. @default none */
  readonly interfaceId?: string | null;
  readonly mtu?: number | null;
}

export interface DomainSpec {
  /** libvirt domain name. */
  readonly name: string;
  /** Explicit UUID; otherwise derived from `uuidSeed` (default `lab/project/server`). */
  readonly uuid?: string;
  readonly uuidSeed?: string;
  /** `kvm` where the host has /dev/kvm, else `qemu` (TCG); the provider detects it. */
  readonly type: "kvm" | "qemu";
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly boot: DomainBoot;
  /** NoCloud seed ISO, attached read-only as a CD-ROM. @default none */
  readonly seedIso?: string | null;
  readonly nics: readonly DomainNicSpec[];
  /** File the serial console is logged to (the console stays reachable as a pty). */
  readonly serialLog: string;
  /**
   * VNC: listen address and a fixed port, or "auto". `null` turns graphics off. The listen
   * address {@link MANAGEMENT_LISTEN} ("management") renders a placeholder the provider fills
   * with the management address of the host placement chose ({@link fillManagementListen}).
   * @default 127.0.0.1, auto
   */
  readonly vnc?: { readonly listen: string; readonly port: number | "auto" } | null;
  /**
   * Attribution written to `<metadata>` (core/domainMetadata.ts): `lab` the Pulumi project,
   * `stack` the stack, `project` the identity project (`<domain>/<name>`, "" for none), `owner`
   * the owner string (the Server provider fills it; "" leaves the element out).
   */
  readonly metadata: {
    readonly lab: string;
    readonly stack: string;
    readonly project: string;
    readonly owner?: string;
    readonly server: string;
    readonly image: string;
    readonly flavor: string;
  };
  /** TCG translation-block cache (MiB), only for `type: "qemu"`. @default none */
  readonly tbCacheMiB?: number | null;
  /** What the flavor's extra specs add (core/flavor.ts `flavorDomainSettings`). @default none */
  readonly flavorSettings?: FlavorDomainSettings | null;
}

/** Order of `<iotune>` children (libvirt's). */
const IOTUNE_KEYS: readonly IoTuneKey[] = [
  "total_bytes_sec",
  "read_bytes_sec",
  "write_bytes_sec",
  "total_iops_sec",
  "read_iops_sec",
  "write_iops_sec",
];

export interface DomainView {
  readonly name: string;
  readonly uuid: string;
  readonly type: "kvm" | "qemu";
  readonly kvm: boolean;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly kernel: {
    readonly path: string;
    readonly initrd: string | null;
    readonly cmdline: string | null;
  } | null;
  readonly disk: { readonly path: string; readonly format: "qcow2" | "raw" } | null;
  readonly seedIso: string | null;
  readonly nics: readonly {
    readonly bridge: string;
    readonly ovs: boolean;
    readonly target: string;
    readonly mac: string;
    readonly interfaceId: string | null;
    readonly mtu: number | null;
  }[];
  readonly serialLog: string;
  readonly vnc: { readonly listen: string; readonly autoport: boolean; readonly port: number } | null;
  readonly metadata: {
    readonly xmlns: string;
    readonly lab: string;
    readonly stack: string;
    readonly project: string;
    readonly owner: string;
    readonly server: string;
    readonly image: string;
    readonly flavor: string;
  };
  readonly tbCacheMiB: number | null;
  readonly topology: { readonly sockets: number; readonly cores: number; readonly threads: number } | null;
  readonly bootMenu: { readonly enable: "yes" | "no" } | null;
  readonly cputune: readonly { readonly name: string; readonly value: number }[] | null;
  readonly iotune: readonly { readonly name: string; readonly value: number }[] | null;
  readonly bandwidth: {
    readonly inbound: {
      readonly average: number;
      readonly peak: number | null;
      readonly burst: number | null;
    } | null;
    readonly outbound: {
      readonly average: number;
      readonly peak: number | null;
      readonly burst: number | null;
    } | null;
  } | null;
  readonly watchdog: string | null;
  readonly rng: boolean;
  readonly notes: readonly { readonly key: string; readonly value: string }[];
}

/** Validates `spec` and returns the view {@link renderDomainXml} accepts. */
export function toDomainView(spec: DomainSpec): DomainView {
  const name = checkName("name", spec.name);
  const type = checkOneOf("type", spec.type, ["kvm", "qemu"] as const);
  const metadata = {
    xmlns: KVMLAB_DOMAIN_XMLNS,
    lab: checkName("metadata.lab", spec.metadata?.lab),
    stack: checkName("metadata.stack", spec.metadata?.stack),
    project: checkProjectRef("metadata.project", spec.metadata?.project),
    owner: checkOwner("metadata.owner", spec.metadata?.owner ?? ""),
    server: checkName("metadata.server", spec.metadata?.server),
    image: checkName("metadata.image", spec.metadata?.image),
    flavor: checkName("metadata.flavor", spec.metadata?.flavor),
  };
  const uuid =
    spec.uuid !== undefined
      ? checkUuid("uuid", spec.uuid)
      : deterministicUuid(
          spec.uuidSeed !== undefined
            ? checkText("uuidSeed", spec.uuidSeed)
            : `${metadata.lab}/${metadata.stack}/${metadata.server}`,
        );
  const boot = spec.boot;
  const format = (field: string, f: unknown) => checkOneOf(field, f ?? "qcow2", ["qcow2", "raw"] as const);
  let kernel: DomainView["kernel"] = null;
  let disk: DomainView["disk"] = null;
  if (boot?.kind === "disk") {
    disk = { path: checkPath("boot.disk", boot.disk), format: format("boot.format", boot.format) };
  } else if (boot?.kind === "kernel") {
    kernel = {
      path: checkPath("boot.kernel", boot.kernel),
      initrd:
        boot.initrd === undefined || boot.initrd === null ? null : checkPath("boot.initrd", boot.initrd),
      cmdline:
        boot.cmdline === undefined || boot.cmdline === ""
          ? null
          : checkText("boot.cmdline", boot.cmdline, { max: 2048 }),
    };
    if (boot.disk !== undefined && boot.disk !== null) {
      disk = { path: checkPath("boot.disk", boot.disk), format: format("boot.format", boot.format) };
    }
  } else {
    throw new FieldError(
      "boot.kind",
      `expected "disk" or "kernel", got ${JSON.stringify((boot as { kind?: unknown })?.kind)}`,
    );
  }
  const targets = new Set<string>();
  const macs = new Set<string>();
  const nics = (spec.nics ?? []).map((n, i) => {
    const target = checkIfName(`nics[${i}].target`, n.target);
    if (!target.startsWith("tap")) {
      throw new FieldError(
        `nics[${i}].target`,
        `tap name ${JSON.stringify(target)} must start with "tap"`,
        'use deterministicIfName("tap", portId)',
      );
    }
    if (targets.has(target))
      throw new FieldError(`nics[${i}].target`, `duplicate tap ${target}`, "give each port its own tap");
    targets.add(target);
    const mac = checkMac(`nics[${i}].mac`, n.mac);
    if (macs.has(mac))
      throw new FieldError(`nics[${i}].mac`, `duplicate MAC ${mac}`, "give each port its own MAC");
    macs.add(mac);
    const driver = checkOneOf(`nics[${i}].driver`, n.driver, ["linuxbridge", "openvswitch"] as const);
    const interfaceId =
      n.interfaceId === undefined || n.interfaceId === null
        ? null
        : checkUuid(`nics[${i}].interfaceId`, n.interfaceId);
    if (interfaceId !== null && driver !== "openvswitch") {
      throw new FieldError(
        `nics[${i}].interfaceId`,
        "interfaceId applies to openvswitch ports only",
        "remove it or use driver openvswitch",
      );
    }
    return {
      bridge: checkIfName(`nics[${i}].bridge`, n.bridge),
      ovs: driver === "openvswitch",
      target,
      mac,
      interfaceId,
      mtu: n.mtu === undefined || n.mtu === null ? null : checkInt(`nics[${i}].mtu`, n.mtu, 576, 9216),
    };
  });
  const vncSpec = spec.vnc === undefined ? { listen: "127.0.0.1", port: "auto" as const } : spec.vnc;
  let vnc: DomainView["vnc"] = null;
  if (vncSpec !== null) {
    const listen = vncSpec.listen === MANAGEMENT_LISTEN ? MANAGEMENT_ADDRESS_PLACEHOLDER : vncSpec.listen;
    if (listen !== MANAGEMENT_ADDRESS_PLACEHOLDER) ipToInt(listen, "vnc.listen");
    vnc =
      vncSpec.port === "auto"
        ? { listen, autoport: true, port: -1 }
        : { listen, autoport: false, port: checkInt("vnc.port", vncSpec.port, 5900, 65535) };
  }
  const tbCacheMiB =
    spec.tbCacheMiB === undefined || spec.tbCacheMiB === null
      ? null
      : checkInt("tbCacheMiB", spec.tbCacheMiB, 1, 65536);
  if (tbCacheMiB !== null && type !== "qemu") {
    throw new FieldError(
      "tbCacheMiB",
      "the translation-block cache exists only under TCG (type qemu)",
      "remove tbCacheMiB or use type qemu",
    );
  }
  return seal({
    name,
    uuid,
    type,
    kvm: type === "kvm",
    vcpus: checkInt("vcpus", spec.vcpus, FLAVOR_LIMITS.vcpus.min, FLAVOR_LIMITS.vcpus.max),
    memoryMiB: checkInt("memoryMiB", spec.memoryMiB, FLAVOR_LIMITS.ramMiB.min, FLAVOR_LIMITS.ramMiB.max),
    kernel,
    disk,
    seedIso: spec.seedIso === undefined || spec.seedIso === null ? null : checkPath("seedIso", spec.seedIso),
    nics,
    serialLog: checkPath("serialLog", spec.serialLog),
    vnc,
    metadata,
    tbCacheMiB,
    ...flavorView(spec.flavorSettings ?? null, vcpus(spec.vcpus), disk !== null),
  });
}

/** An identity project reference (`<domain>/<name>`) or "" (none). */
function checkProjectRef(field: string, v: unknown): string {
  if (v === "" || (typeof v === "string" && PROJECT_REF_RE.test(v))) return v;
  throw new FieldError(
    field,
    `expected "<domain>/<project>" (a Project's recordId) or "" for none, got ${JSON.stringify(v)}`,
    "pass the project as resolveProject gives it (provider/kit/resource.ts)",
  );
}

/** An owner string (provider/kit/owner.ts ownerOf) or "" (none). */
function checkOwner(field: string, v: unknown): string {
  if (v === "" || (typeof v === "string" && v.length <= 400 && DOMAIN_OWNER_RE.test(v))) return v;
  throw new FieldError(
    field,
    `expected an owner string "<pulumi project>/<stack>/<Type>/<name>[/project=<p>]", got ${JSON.stringify(v)}`,
    "leave it out: the Server provider fills it from its owner input",
  );
}

const vcpus = (v: number): number => checkInt("vcpus", v, FLAVOR_LIMITS.vcpus.min, FLAVOR_LIMITS.vcpus.max);

/** The view's part for a flavor's extra specs; the numbers are checked again here. */
function flavorView(
  f: FlavorDomainSettings | null,
  vcpuCount: number,
  hasDisk: boolean,
): Pick<
  DomainView,
  "topology" | "bootMenu" | "cputune" | "iotune" | "bandwidth" | "watchdog" | "rng" | "notes"
> {
  if (f === null)
    return {
      topology: null,
      bootMenu: null,
      cputune: null,
      iotune: null,
      bandwidth: null,
      watchdog: null,
      rng: true,
      notes: [],
    };
  const big = 2 ** 53 - 1;
  let topology: DomainView["topology"] = null;
  if (f.topology !== null) {
    const t = {
      sockets: checkInt("flavorSettings.topology.sockets", f.topology.sockets, 1, 255),
      cores: checkInt("flavorSettings.topology.cores", f.topology.cores, 1, 255),
      threads: checkInt("flavorSettings.topology.threads", f.topology.threads, 1, 255),
    };
    if (t.sockets * t.cores * t.threads !== vcpuCount)
      throw new FieldError(
        "flavorSettings.topology",
        `sockets × cores × threads = ${t.sockets * t.cores * t.threads}, not the ${vcpuCount} vcpus`,
        "make them equal",
      );
    topology = t;
  }
  const entries = (
    field: string,
    o: Readonly<Record<string, number | null | undefined>> | null,
    order: readonly string[],
  ): { name: string; value: number }[] | null => {
    if (o === null) return null;
    const list = order
      .filter((k) => o[k] !== null && o[k] !== undefined)
      .map((name) => ({ name, value: checkInt(`${field}.${name}`, o[name], 0, big) }));
    return list.length > 0 ? list : null;
  };
  if (f.iotune !== null && !hasDisk)
    throw new FieldError(
      "flavorSettings.iotune",
      "the domain has no disk to limit (a kernel image without a root disk)",
      "use a flavor without quota:disk_* for this server",
    );
  const limit = (field: string, l: NonNullable<FlavorDomainSettings["bandwidth"]>["inbound"]) =>
    l === null
      ? null
      : {
          average: checkInt(`${field}.average`, l.average, 1, big),
          peak: l.peak === null ? null : checkInt(`${field}.peak`, l.peak, 1, big),
          burst: l.burst === null ? null : checkInt(`${field}.burst`, l.burst, 1, big),
        };
  return {
    topology,
    bootMenu: f.bootMenu === null ? null : { enable: f.bootMenu ? "yes" : "no" },
    cputune: entries("flavorSettings.cputune", f.cputune, ["shares", "period", "quota"]),
    iotune: entries("flavorSettings.iotune", f.iotune, IOTUNE_KEYS),
    bandwidth:
      f.bandwidth === null
        ? null
        : {
            inbound: limit("flavorSettings.bandwidth.inbound", f.bandwidth.inbound),
            outbound: limit("flavorSettings.bandwidth.outbound", f.bandwidth.outbound),
          },
    watchdog:
      f.watchdog === null
        ? null
        : checkOneOf("flavorSettings.watchdog", f.watchdog, ["none", "pause", "poweroff", "reset"] as const),
    rng: f.rng,
    notes: f.notes.map((n, i) => {
      if (!/^kvmlab:[a-z0-9][a-z0-9_.-]{0,62}$/.test(n.key))
        throw new FieldError(
          `flavorSettings.notes[${i}].key`,
          `${JSON.stringify(n.key)} is not a kvmlab:<name> key`,
          "use kvmlab:<name>",
        );
      return { key: n.key, value: checkText(`flavorSettings.notes[${i}].value`, n.value, { max: 255 }) };
    }),
  };
}

/** The domain's XML, ready for `virsh define`. */
export function renderDomainXml(view: DomainView): string {
  assertSealed(view, "toDomainView");
  return renderTemplate("libvirt/domain.xml", view);
}

export { MANAGEMENT_ADDRESS_PLACEHOLDER, MANAGEMENT_LISTEN, fillManagementListen } from "../core/vncListen";
