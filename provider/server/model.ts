/**
 * Server model: the provider's input and output shapes, their check, the diff (which change is
 * an update and which a replacement) and placement. Pure: no I/O, nothing captured but other
 * functions, so the serialized provider stays small.
 */
import { checkDeviceName, checkHostList, checkName, isIPv4, showValue, type HostConnection } from "../host";
import {
  checkExtraSpecs,
  checkNoEphemeralOrSwap,
  FLAVOR_LIMITS,
  flavorDomainSettings,
  withinFlavorLimits,
} from "../../core/flavor";
import { instanceKeyInXml, serverPaths } from "../../core/paths";
import { metadataBlockOf, parseDomainMetadata, sameApartFromMetadata } from "../../core/domainMetadata";
import { domainBridgeOf } from "./hybrid";
import {
  canonicalJson,
  failureList,
  checkedOwner,
  checkDomainXmlSafety,
  checkStorePath,
  inputsOf,
  isKnown,
  normalizeHosts,
  type Checked,
  type Failure,
} from "../kit";

export { canonicalJson } from "../kit";

/**
 * "external": defined at create, never started or stopped by Pulumi (an autoscale group's agent
 * powers it; docs/autoscale.md); its power state is not drift.
 */
export type PowerState = "running" | "stopped" | "external";
export type { ImageKind } from "../../core/shapes";
export type ReadinessKind = "none" | "dhcp" | "http" | "serial";

/** The flavor and image shapes a server is given (one definition: core/shapes.ts). */
export type { ServerFlavor, ServerImage } from "../../core/shapes";
import type { ServerFlavor, ServerImage } from "../../core/shapes";

/** One NIC of the server. */
export interface ServerPort {
  networkName: string;
  subnetName: string;
  /** Host that runs the subnet's DHCP and keeps its IPAM record. */
  dhcpHost: string;
  /** Whether the subnet has DHCP (a qdhcp namespace to probe from). */
  dhcp: boolean;
  bridge: string;
  driver: "linuxbridge" | "openvswitch";
  mac: string;
  tap: string;
  /** Requested address; "" lets IPAM choose from the pool. */
  fixedIp: string;
  /**
   * OVS ports only: Neutron's hybrid layout (the tap in a per-port Linux bridge qbr<id>, linked
   * to OVS by qvb<id>/qvo<id>: server/hybrid.ts), so security groups can filter it. The domain
   * XML must name qbr<id> as the port's bridge. @default false (absent)
   */
  hybrid?: boolean;
}

/** When create/start count as done. */
export interface Readiness {
  /**
   * none: the domain runs; dhcp: the first port's MAC holds a DHCP lease; http: the guest
   * answers `GET http://IP:port/path` with 2xx from the subnet's qdhcp namespace; serial: the
   * serial log contains `pattern`.
   */
  kind: ReadinessKind;
  path: string;
  port: number;
  pattern: string;
  timeoutSec: number;
}

/** Inputs as the provider sees them after check (resolved, plain). */
export interface ServerInputs {
  serverName: string;
  uuid: string;
  hosts: HostConnection[];
  /** Pinned host name; "" lets placement choose at create (kept afterwards). */
  host: string;
  flavor: ServerFlavor;
  image: ServerImage;
  ports: ServerPort[];
  /** The rendered domain XML for each domain type; the provider picks the host's. */
  domainXml: { kvm: string; qemu: string };
  /** NoCloud seed files; all "" for no seed ISO. */
  cloudInit: { metaData: string; userData: string; networkConfig: string };
  powerState: PowerState;
  readiness: Readiness;
  /** What an update will do, computed by check so preview shows it. */
  changePlan: string;
  /** Owner of the domain, instance folder, record and addresses (kit/owner.ts). */
  owner: string;
  /** Owning project `<domain>/<name>` whose quotas (on the controller, hosts[0]) it counts against; "" = none. */
  project: string;
}

/** A port after create: the address IPAM gave it. */
export interface ServerAddress {
  networkName: string;
  subnetName: string;
  ip: string;
  mac: string;
  tap: string;
}

export interface ServerOutputs extends ServerInputs {
  /** Overrides the input: the host the server runs on (placed or pinned). */
  host: string;
  hostAddress: string;
  domainType: "kvm" | "qemu";
  addresses: ServerAddress[];
  ips: string[];
  macs: string[];
  vncPort: number;
  consoleUrl: string;
  serialLog: string;
  instanceDir: string;
  /** Power state found on the host (refresh shows drift here). */
  actualPowerState: string;
  /**
   * What differs between the kvmlab metadata of the domain on the host and the state's XML
   * ("" = none; refresh fills it, the next up sets the metadata again without a restart).
   */
  metadataDrift?: string;
  /** SHA256 fingerprint per host name (pins, or keys recorded on first use). */
  hostKeys: Record<string, string>;
}

/** Files of a server on its host and its ports' IPAM owner ids (one definition: core/paths.ts). */
export { serverPaths, portOwner, instanceKeyInXml } from "../../core/paths";

/**
 * The server's files on its host (issue 15): the folder of its UUID; a server created before
 * keeps the folder of its name, which its domain XML names (check keeps that XML for it, see
 * instanceKeyFor). Never any other folder.
 */
export function instancePaths(
  i: Pick<ServerInputs, "serverName" | "uuid"> & { domainXml?: Partial<ServerInputs["domainXml"]> },
): ReturnType<typeof serverPaths> {
  const xml = i.domainXml?.qemu ?? i.domainXml?.kvm;
  const legacy = typeof xml === "string" && instanceKeyInXml(xml) === i.serverName;
  return serverPaths(legacy ? i.serverName : i.uuid);
}

/**
 * The instance folder key check expects in the XML (pure): the server's UUID, or, for a server
 * whose state's XML names the folder of its NAME (created before issue 15) and that this change
 * updates in place (same name, UUID, image, cloud-init and ports), that name, so an existing
 * server is neither moved nor redefined. A replace builds the new server in its UUID's folder.
 * Undefined while the UUID is unknown (preview).
 */
export function instanceKeyFor(
  olds: Record<string, unknown> | undefined,
  news: Record<string, unknown>,
): string | undefined {
  if (typeof news.uuid !== "string" || !known(news.uuid)) return undefined;
  const name = news.serverName;
  const ox = (olds?.domainXml ?? {}) as Record<string, unknown>;
  const oldXml = typeof ox.qemu === "string" ? ox.qemu : ox.kvm;
  const inPlace =
    olds !== undefined &&
    typeof name === "string" &&
    olds.serverName === name &&
    olds.uuid === news.uuid &&
    typeof oldXml === "string" &&
    instanceKeyInXml(oldXml) === name &&
    (["image", "cloudInit", "ports"] as const).every(
      (k) => !known(news[k]) || canonicalJson(olds[k]) === canonicalJson(news[k]),
    );
  return inPlace ? (name as string) : news.uuid;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MAC_RE = /^fa:16:3e(:[0-9a-f]{2}){3}$/;

/** The kit's one rule for preview unknowns (see provider/kit/check.ts). */
const known = isKnown;

function isInt(v: unknown, min: number, max: number): boolean {
  return typeof v === "number" && Number.isInteger(v) && v >= min && v <= max;
}

/** Defaults for optional fields, applied by check. */
export const READINESS_DEFAULT: Readiness = {
  kind: "none",
  path: "/",
  port: 80,
  pattern: "",
  timeoutSec: 120,
};

/**
 * Validates and normalizes raw inputs (pure). Unknown values (preview) are accepted as they
 * are; everything known is checked, every problem reported with its field and the fix.
 */
/** A project reference: `<domain>/<project>`, both object names. */
const PROJECT_REF_RE =
  /^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\/[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;

export function checkServerInputs(news: Record<string, unknown>, olds?: Record<string, unknown>): Checked {
  const found = failureList();
  const failures: Failure[] = found.failures;
  const fail = (property: string, reason: string | undefined): void => found.add(property, reason);
  const out: Record<string, unknown> = { ...news };
  const name = news.serverName;
  if (known(name)) fail("serverName", checkName("serverName", name));
  if (known(news.uuid) && (typeof news.uuid !== "string" || !UUID_RE.test(news.uuid))) {
    fail("uuid", `uuid: expected a lower-case UUID like 0e8f…-…, got ${showValue(news.uuid)}`);
  }

  for (const e of checkHostList("hosts", news.hosts)) fail("hosts", e);
  const hosts = normalizeHosts(news.hosts);
  out.hosts = hosts;
  const hostNames =
    Array.isArray(hosts) && known(hosts) ? (hosts as HostConnection[]).map((h) => h.name) : undefined;

  out.project = news.project ?? "";
  if (
    known(out.project) &&
    out.project !== "" &&
    (typeof out.project !== "string" || !PROJECT_REF_RE.test(out.project))
  )
    fail(
      "project",
      `project: expected "<domain>/<project>" (a Project's recordId) or "", got ${showValue(out.project)}`,
    );

  out.host = news.host ?? "";
  if (known(out.host) && out.host !== "") {
    if (typeof out.host !== "string") fail("host", `host: expected a host name, got ${showValue(out.host)}`);
    else if (hostNames && !hostNames.includes(out.host)) {
      fail(
        "host",
        `host: ${showValue(out.host)} is not one of the hosts (${hostNames.join(", ")}); pin one of them or leave host unset`,
      );
    }
  }

  const flavor = news.flavor as Record<string, unknown> | undefined;
  if (known(flavor)) {
    if (flavor === null || typeof flavor !== "object") {
      fail(
        "flavor",
        `flavor: expected {name, vcpus, ramMiB, diskGiB, ephemeralGiB, swapMiB, extraSpecs}, got ${showValue(flavor)}`,
      );
    } else {
      // One set of limits (core/flavor.ts), the same the Flavor resource checks.
      const L = FLAVOR_LIMITS;
      fail(
        "flavor",
        flavor.name === undefined ? "flavor.name: missing" : checkName("flavor.name", flavor.name),
      );
      if (!withinFlavorLimits("vcpus", flavor.vcpus))
        fail(
          "flavor",
          `flavor.vcpus: expected an integer ${L.vcpus.min}-${L.vcpus.max}, got ${showValue(flavor.vcpus)}`,
        );
      if (!withinFlavorLimits("ramMiB", flavor.ramMiB)) {
        fail(
          "flavor",
          `flavor.ramMiB: expected an integer of at least ${L.ramMiB.min} (smaller guests do not boot) and at most ${L.ramMiB.max}, got ${showValue(flavor.ramMiB)}`,
        );
      }
      const disk = flavor.diskGiB ?? 0;
      if (!withinFlavorLimits("diskGiB", disk))
        fail(
          "flavor",
          `flavor.diskGiB: expected an integer ${L.diskGiB.min}-${L.diskGiB.max}, got ${showValue(disk)}`,
        );
      const sizes = { ephemeralGiB: flavor.ephemeralGiB ?? 0, swapMiB: flavor.swapMiB ?? 0 };
      for (const k of ["ephemeralGiB", "swapMiB"] as const)
        if (known(sizes[k]) && !withinFlavorLimits(k, sizes[k]))
          fail(
            "flavor",
            `flavor.${k}: expected an integer ${L[k].min}-${L[k].max}, got ${showValue(sizes[k])}`,
          );
        else if (known(sizes[k]))
          fail("flavor", checkNoEphemeralOrSwap({ [k]: sizes[k] as number })?.message);
      const specs = flavor.extraSpecs ?? {};
      const specErrors = checkExtraSpecs(specs, flavor.vcpus, (v) => !known(v)).map((e) => `flavor.${e}`);
      for (const e of specErrors) fail("flavor", e);
      if (specErrors.length === 0 && known(specs) && typeof flavor.vcpus === "number") {
        try {
          flavorDomainSettings(specs as Record<string, string>, flavor.vcpus, "flavor.extraSpecs");
        } catch (err) {
          fail("flavor", (err as Error).message);
        }
      }
      // Canonical form: zero ephemeral/swap and empty extra specs are left out, so state written
      // before the Server took the whole flavor compares equal (no resize on upgrade).
      out.flavor = {
        name: flavor.name,
        vcpus: flavor.vcpus,
        ramMiB: flavor.ramMiB,
        diskGiB: disk,
        ...(sizes.ephemeralGiB !== 0 ? { ephemeralGiB: sizes.ephemeralGiB } : {}),
        ...(sizes.swapMiB !== 0 ? { swapMiB: sizes.swapMiB } : {}),
        ...(specs !== null && typeof specs === "object" && Object.keys(specs).length > 0
          ? { extraSpecs: specs }
          : {}),
      };
      // The XML the guest runs must have the flavor's vCPUs and RAM: placement and the host
      // record count the flavor.
      const xml = news.domainXml as Record<string, unknown> | undefined;
      if (known(xml) && xml !== null && typeof xml === "object")
        for (const type of ["kvm", "qemu"] as const)
          fail("flavor", checkXmlMatchesFlavor(type, xml[type], flavor.vcpus, flavor.ramMiB));
    }
  }

  const image = news.image as Record<string, unknown> | undefined;
  if (known(image)) {
    if (image === null || typeof image !== "object") {
      fail("image", `image: expected {name, kind, disk, format, kernel, ramdisk}, got ${showValue(image)}`);
    } else {
      fail("image", image.name === undefined ? "image.name: missing" : checkName("image.name", image.name));
      const kind = image.kind;
      if (kind !== "disk" && kind !== "kernel")
        fail("image", `image.kind: expected "disk" or "kernel", got ${showValue(kind)}`);
      const format = image.format ?? "qcow2";
      if (format !== "qcow2" && format !== "raw")
        fail("image", `image.format: expected "qcow2" or "raw", got ${showValue(format)}`);
      const norm = {
        name: image.name,
        kind,
        disk: image.disk ?? "",
        format,
        kernel: image.kernel ?? "",
        ramdisk: image.ramdisk ?? "",
      };
      for (const f of ["disk", "kernel", "ramdisk"] as const) {
        // Canonical and in the image store: `…/cirros/./disk.qcow2` or `//` would slip past the
        // image-in-use guard, and a path elsewhere would hand any host file to the guest.
        if (norm[f] !== "") fail("image", checkStorePath(`image.${f}`, norm[f]));
      }
      if (kind === "disk" && norm.disk === "")
        fail("image", "image.disk: a disk image needs the path of its disk in the host image store");
      if (kind === "kernel" && norm.kernel === "")
        fail("image", "image.kernel: a kernel image needs the path of its kernel in the host image store");
      out.image = norm;
    }
  }

  const ports = news.ports ?? [];
  out.ports = ports;
  if (known(ports)) {
    if (!Array.isArray(ports)) fail("ports", `ports: expected a list of ports, got ${showValue(ports)}`);
    else {
      const macs = new Set<string>();
      const taps = new Set<string>();
      out.ports = ports.map((raw, i) => {
        const p = (raw ?? {}) as Record<string, unknown>;
        const f = `ports[${i}]`;
        fail("ports", checkName(`${f}.networkName`, p.networkName));
        fail("ports", checkName(`${f}.subnetName`, p.subnetName));
        fail("ports", checkName(`${f}.dhcpHost`, p.dhcpHost));
        if (hostNames && typeof p.dhcpHost === "string" && !hostNames.includes(p.dhcpHost)) {
          fail(
            "ports",
            `${f}.dhcpHost: the subnet's DHCP host ${showValue(p.dhcpHost)} is not one of the server's hosts (${hostNames.join(", ")}); give the server the network's hosts`,
          );
        }
        fail("ports", checkDeviceName(`${f}.bridge`, p.bridge));
        if (p.driver !== "linuxbridge" && p.driver !== "openvswitch") {
          fail("ports", `${f}.driver: expected "linuxbridge" or "openvswitch", got ${showValue(p.driver)}`);
        }
        if (typeof p.mac !== "string" || !MAC_RE.test(p.mac)) {
          fail("ports", `${f}.mac: expected a lower-case MAC in fa:16:3e:xx:xx:xx, got ${showValue(p.mac)}`);
        } else if (macs.has(p.mac))
          fail("ports", `${f}.mac: ${p.mac} is used by another port; give each port its own MAC`);
        else macs.add(p.mac);
        const tapError = checkDeviceName(`${f}.tap`, p.tap);
        if (tapError || typeof p.tap !== "string" || !p.tap.startsWith("tap")) {
          fail(
            "ports",
            tapError ?? `${f}.tap: expected a tap device name starting with "tap", got ${showValue(p.tap)}`,
          );
        } else if (taps.has(p.tap)) fail("ports", `${f}.tap: ${p.tap} is used by another port`);
        else taps.add(p.tap);
        const fixedIp = p.fixedIp ?? "";
        if (fixedIp !== "" && !isIPv4(fixedIp))
          fail("ports", `${f}.fixedIp: expected an IPv4 address or "", got ${showValue(fixedIp)}`);
        const dhcp = p.dhcp ?? true;
        if (typeof dhcp !== "boolean")
          fail("ports", `${f}.dhcp: expected true or false, got ${showValue(dhcp)}`);
        if (p.hybrid !== undefined && typeof p.hybrid !== "boolean")
          fail("ports", `${f}.hybrid: expected true or false, got ${showValue(p.hybrid)}`);
        if (p.hybrid === true && p.driver !== "openvswitch")
          fail(
            "ports",
            `${f}.hybrid: the hybrid layout is for openvswitch ports; drop hybrid on a ${String(p.driver)} port`,
          );
        // Absent unless true, so states from before the field do not diff.
        const { hybrid, ...rest } = p;
        return { ...rest, fixedIp, dhcp, ...(hybrid === true ? { hybrid } : {}) };
      });
    }
  }

  const xml = news.domainXml as Record<string, unknown> | undefined;
  if (known(xml)) {
    if (
      xml === null ||
      typeof xml !== "object" ||
      typeof xml.kvm !== "string" ||
      typeof xml.qemu !== "string"
    ) {
      fail(
        "domainXml",
        `domainXml: expected {kvm, qemu}: the domain XML rendered for each domain type (components/server.ts renders both)`,
      );
    } else {
      // Issue 15: the folder of the UUID; a server created before keeps its name's (the rendered
      // XML names the UUID's folder, mapped here onto the one the server has).
      const key = instanceKeyFor(olds, out);
      if (key !== undefined && key !== out.uuid) {
        const from = `${serverPaths(out.uuid as string).dir}/`;
        const to = `${serverPaths(key).dir}/`;
        out.domainXml = {
          ...xml,
          kvm: (xml.kvm as string).split(from).join(to),
          qemu: (xml.qemu as string).split(from).join(to),
        };
      }
      const mapped = out.domainXml as Record<string, string>;
      for (const type of ["kvm", "qemu"] as const) {
        const e =
          checkDomainXml(type, mapped[type], out, key) ??
          checkXmlMetadata(type, mapped[type], news.project ?? "");
        if (e) fail("domainXml", e);
      }
    }
  }

  const ci = (news.cloudInit ?? { metaData: "", userData: "", networkConfig: "" }) as Record<string, unknown>;
  out.cloudInit = ci;
  if (known(ci)) {
    if (
      ci === null ||
      typeof ci !== "object" ||
      ["metaData", "userData", "networkConfig"].some((k) => typeof ci[k] !== "string")
    ) {
      fail(
        "cloudInit",
        'cloudInit: expected {metaData, userData, networkConfig} strings (all "" for no seed ISO)',
      );
    } else {
      const size =
        (ci.metaData as string).length + (ci.userData as string).length + (ci.networkConfig as string).length;
      if (size > 1024 * 1024)
        fail(
          "cloudInit",
          `cloudInit: ${size} bytes is more than the 1 MiB a seed ISO here may carry; move large files into the image`,
        );
      if ((ci.metaData as string) === "" && (ci.userData as string) !== "")
        fail("cloudInit", "cloudInit.metaData: user-data needs meta-data (instance-id) in the seed");
      // YAML line breaks JavaScript and templates do not treat as such: U+0085, U+2028, U+2029
      // end a line in YAML 1.1 parsers and let a value break out of its block (issue 15).
      for (const k of ["metaData", "userData", "networkConfig"] as const) {
        const bad = /[\u0085\u2028\u2029]/.exec(ci[k] as string);
        if (bad)
          fail(
            "cloudInit",
            `cloudInit.${k}: contains U+${bad[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")} (a YAML line break that can break out of a block); remove it from writeFiles and userData`,
          );
      }
    }
  }

  out.powerState = news.powerState ?? "running";
  if (
    known(out.powerState) &&
    out.powerState !== "running" &&
    out.powerState !== "stopped" &&
    out.powerState !== "external"
  ) {
    fail(
      "powerState",
      `powerState: expected "running", "stopped" or "external", got ${showValue(out.powerState)}`,
    );
  }

  const r = { ...READINESS_DEFAULT, ...((news.readiness as object | undefined) ?? {}) } as Record<
    string,
    unknown
  >;
  out.readiness = r;
  if (known(r)) {
    if (!["none", "dhcp", "http", "serial"].includes(r.kind as string)) {
      fail(
        "readiness",
        `readiness.kind: expected "none", "dhcp", "http" or "serial", got ${showValue(r.kind)}`,
      );
    }
    if (typeof r.path !== "string" || !/^\/[A-Za-z0-9._~/-]{0,200}$/.test(r.path)) {
      fail(
        "readiness",
        `readiness.path: expected a URL path like /health (letters, digits, "._~/-"), got ${showValue(r.path)}`,
      );
    }
    if (!isInt(r.port, 1, 65535))
      fail("readiness", `readiness.port: expected a TCP port, got ${showValue(r.port)}`);
    if (
      typeof r.pattern !== "string" ||
      !/^[A-Za-z0-9 _.:=-]{0,64}$/.test(r.pattern) ||
      (r.kind === "serial" && r.pattern === "")
    ) {
      fail(
        "readiness",
        `readiness.pattern: expected up to 64 letters, digits, spaces or "_.:=-" (required for kind serial), got ${showValue(r.pattern)}`,
      );
    }
    if (!isInt(r.timeoutSec, 1, 1800))
      fail("readiness", `readiness.timeoutSec: expected an integer 1-1800, got ${showValue(r.timeoutSec)}`);
    if ((r.kind === "dhcp" || r.kind === "http") && Array.isArray(out.ports) && out.ports.length === 0) {
      fail("readiness", `readiness.kind: ${String(r.kind)} needs at least one port; use "serial" or "none"`);
    }
  }
  out.changePlan = planText(olds, out);
  out.owner = checkedOwner(news, "Server", "serverName", fail);
  return { inputs: out, failures };
}

/**
 * The XML's `<vcpu>` and `<memory>` against the flavor's vcpus and ramMiB (pure); an error naming
 * both values, or undefined when they agree (or are not known yet).
 */
export function checkXmlMatchesFlavor(
  type: "kvm" | "qemu",
  xml: unknown,
  vcpus: unknown,
  ramMiB: unknown,
): string | undefined {
  if (typeof xml !== "string" || !known(xml)) return undefined;
  const where = `domainXml.${type}`;
  const fix = "render the XML from the same flavor (components/server.ts does)";
  const vcpu = /<vcpu\b[^>]*>(\d+)<\/vcpu>/.exec(xml)?.[1];
  if (typeof vcpus === "number" && Number(vcpu) !== vcpus)
    return `${where}: <vcpu> is ${vcpu ?? "missing"} but flavor.vcpus is ${vcpus}; ${fix}`;
  const mem = /<memory unit='MiB'>(\d+)<\/memory>/.exec(xml)?.[1];
  if (typeof ramMiB === "number" && Number(mem) !== ramMiB)
    return `${where}: <memory> is ${mem === undefined ? "missing (or not in MiB)" : `${mem} MiB`} but flavor.ramMiB is ${ramMiB}; ${fix}`;
  return undefined;
}

/**
 * The XML's kvmlab metadata against the server's identity project (issue 14): a `<kvmlab:project>`
 * other than the `project` input is refused, and so is an owner in the XML (the provider fills
 * it from the `owner` input). XML without kvmlab metadata passes.
 */
export function checkXmlMetadata(type: "kvm" | "qemu", xml: string, project: unknown): string | undefined {
  const block = metadataBlockOf(xml);
  if (block === "") return undefined;
  const where = `domainXml.${type}`;
  const m = parseDomainMetadata(block);
  if (typeof project === "string" && known(project) && m.project !== undefined && m.project !== project)
    return `${where}: <kvmlab:project> is ${JSON.stringify(m.project)} but the project input is ${JSON.stringify(project)}; render the XML with the server's project (components/server.ts does)`;
  if (m.owner !== undefined)
    return `${where}: <kvmlab:owner> must not be rendered; the provider fills it from the owner input`;
  return undefined;
}

/**
 * Checks that a rendered domain XML belongs to this server (pure). `instanceKey` is the folder
 * its files must be in (instanceKeyFor: the UUID, or an existing server's name); undefined while
 * unknown (preview).
 */
export function checkDomainXml(
  type: "kvm" | "qemu",
  xml: string,
  inputs: Record<string, unknown>,
  instanceKey: string | undefined,
): string | undefined {
  const where = `domainXml.${type}`;
  if (!xml.startsWith(`<domain type='${type}'>`))
    return `${where}: expected XML rendered with type '${type}' (starts with <domain type='${type}'>)`;
  if (/<!(DOCTYPE|ENTITY)/i.test(xml)) return `${where}: DOCTYPE/ENTITY declarations are not allowed`;
  const need: [string, string][] = [];
  if (typeof inputs.serverName === "string" && known(inputs.serverName)) {
    need.push([`<name>${inputs.serverName}</name>`, "the domain name must be serverName"]);
  }
  if (instanceKey !== undefined) {
    const paths = serverPaths(instanceKey);
    need.push([
      `<log file='${paths.serialLog}'`,
      `the serial log must be ${paths.serialLog} (serverPaths of the server's UUID)`,
    ]);
  }
  if (typeof inputs.uuid === "string" && known(inputs.uuid))
    need.push([`<uuid>${inputs.uuid}</uuid>`, "the domain UUID must be the uuid input"]);
  if (Array.isArray(inputs.ports) && known(inputs.ports)) {
    for (const p of inputs.ports as ServerPort[]) {
      if (typeof p.mac === "string") need.push([`<mac address='${p.mac}'/>`, `port MAC ${p.mac} is missing`]);
      if (typeof p.tap === "string") need.push([`<target dev='${p.tap}'/>`, `port tap ${p.tap} is missing`]);
    }
  }
  for (const [text, why] of need) {
    if (!xml.includes(text))
      return `${where}: ${why}; render the XML from the same inputs (components/server.ts)`;
  }
  if (instanceKey !== undefined && known(inputs.image) && known(inputs.ports)) {
    const image = (inputs.image ?? {}) as Partial<ServerImage>;
    const ports = Array.isArray(inputs.ports) ? (inputs.ports as Partial<ServerPort>[]) : [];
    return checkDomainXmlSafety(where, xml, {
      instanceDir: serverPaths(instanceKey).dir,
      imageFiles: [image.disk, image.kernel, image.ramdisk].filter(
        (f): f is string => typeof f === "string" && f !== "",
      ),
      bridges: ports
        .map((p) =>
          p.hybrid === true && typeof p.tap === "string" ? domainBridgeOf(p as ServerPort) : p.bridge,
        )
        .filter((b): b is string => typeof b === "string"),
    });
  }
  return undefined;
}

/** One line saying what applying `news` over `olds` (old inputs) does; shown by preview. */
export function planText(olds: Record<string, unknown> | undefined, news: Record<string, unknown>): string {
  if (!olds || Object.keys(olds).length === 0 || olds.serverName === undefined) return "create";
  const same = (k: string): boolean => known(news[k]) && canonicalJson(olds[k]) === canonicalJson(news[k]);
  const replace = ["serverName", "uuid", "image", "cloudInit", "ports"].filter((k) => !same(k));
  if (replace.length > 0)
    return `replace (${replace.join(", ")} changed: a new server is built; its disk is not kept)`;
  const parts: string[] = [];
  const host = news.host;
  if (known(host) && host !== "" && host !== olds.host)
    parts.push(`live-migrate to host ${String(host)} (virsh migrate --live; the guest keeps running)`);
  const of = olds.flavor as ServerFlavor | undefined;
  const nf = news.flavor as ServerFlavor | undefined;
  if (!same("flavor") && of && nf && known(nf)) {
    parts.push(
      `cold resize ${of.name} (${of.vcpus} vCPU, ${of.ramMiB} MiB) -> ${nf.name} (${nf.vcpus} vCPU, ${nf.ramMiB} MiB): stop, redefine, start; UUID, MACs and IPs kept`,
    );
  } else if (!same("domainXml")) {
    const ox = olds.domainXml as Record<string, string> | undefined;
    const nx = news.domainXml as Record<string, string>;
    const metaOnly =
      ox !== undefined &&
      nx !== null &&
      typeof nx === "object" &&
      (["kvm", "qemu"] as const).every(
        (t) => typeof ox[t] === "string" && typeof nx[t] === "string" && sameApartFromMetadata(ox[t], nx[t]),
      );
    parts.push(
      metaOnly
        ? "set the domain's kvmlab metadata (virsh metadata --live --config; the guest keeps running)"
        : "redefine the domain (stop, define, start)",
    );
  }
  if (!same("powerState"))
    parts.push(
      news.powerState === "stopped"
        ? "stop (ACPI shutdown, then power off after the timeout)"
        : news.powerState === "external"
          ? "leave powering to its agent"
          : "start",
    );
  return parts.length > 0 ? parts.join("; ") : "none";
}

/** Keys whose change rebuilds the server. */
export const SERVER_REPLACE_KEYS = ["serverName", "uuid", "image", "cloudInit", "ports"] as const;

/** What an update has to do (pure). */
export interface ServerUpdatePlan {
  migrateTo: string;
  redefine: boolean;
  /** Only kvmlab's metadata changes (project, owner, stack…): set in place, no restart. */
  metadata: boolean;
  resizeDisk: boolean;
  power: PowerState | "";
}

export function planUpdate(olds: ServerOutputs, news: ServerInputs): ServerUpdatePlan {
  const type = olds.domainType;
  const redefine = !sameApartFromMetadata(olds.domainXml[type], news.domainXml[type]);
  return {
    migrateTo: news.host !== "" && news.host !== olds.host ? news.host : "",
    redefine,
    metadata:
      !redefine &&
      (olds.domainXml[type] !== news.domainXml[type] ||
        (olds.owner ?? "") !== news.owner ||
        (olds.project ?? "") !== news.project ||
        (olds.metadataDrift ?? "") !== ""),
    resizeDisk: news.image.kind === "disk" && news.flavor.diskGiB > olds.flavor.diskGiB,
    power:
      news.powerState === "external" ||
      (olds.actualPowerState === news.powerState && olds.powerState === news.powerState)
        ? ""
        : news.powerState,
  };
}

/** Property-level diff (pure; never connects). */
export function diffServer(
  olds: ServerOutputs,
  news: ServerInputs,
): { changes: boolean; replaces: string[]; stables: string[]; deleteBeforeReplace: boolean } {
  const same = (a: unknown, b: unknown): boolean => known(b) && canonicalJson(a) === canonicalJson(b);
  const replaces: string[] = SERVER_REPLACE_KEYS.filter((k) => !same(olds[k], news[k]));
  const hostMove = !known(news.host) || (news.host !== "" && news.host !== olds.host);
  const updates = (["flavor", "domainXml", "powerState", "hosts", "readiness", "project"] as const).filter(
    (k) => !same(k === "project" ? (olds.project ?? "") : olds[k], news[k]),
  );
  const drift =
    olds.powerState !== "external" &&
    olds.actualPowerState !== undefined &&
    olds.actualPowerState !== olds.powerState;
  // refresh found the domain's kvmlab metadata changed on the host: an update sets it again.
  const metaDrift = (olds.metadataDrift ?? "") !== "";
  const changes = replaces.length > 0 || hostMove || updates.length > 0 || drift || metaDrift;
  return {
    changes,
    replaces,
    stables: replaces.length === 0 ? ["serverName", "uuid", "macs", "ips", "addresses"] : [],
    // The domain name and the instance folder are the server's own on the host.
    deleteBeforeReplace: true,
  };
}

/** A host's capacity and what kvmlab has placed there (read by the stats step). */
export interface HostLoad {
  host: string;
  memTotalMiB: number;
  memAvailableMiB: number;
  cpus: number;
  allocatedRamMiB: number;
  allocatedVcpus: number;
  servers: number;
  /** UUIDs of the servers recorded on the host. */
  serverUuids: string[];
  /**
   * What each record read counts (uuid, ramMiB, vcpus; the placement guard compares them under
   * the host's lock before a claim, see serverCapacityText). Absent: no record was read.
   */
  capacity?: ServerCapacity[];
}

/**
 * What a server record counts for placement, as the host's awk reads it (the stats step and the
 * placement guard run the same program, CAPACITY_AWK in steps.ts): its UUID, RAM (MiB) and
 * vCPUs, each the text of its top-level line ("-" when there is none, counted as 0).
 */
export interface ServerCapacity {
  uuid: string;
  ramMiB: string;
  vcpus: string;
}

/**
 * The placement guard's view of a host's server records (pure): one line "<uuid> <ramMiB>
 * <vcpus>" per record, the records of the UUIDs in `skip` (the ones this placement turn claims
 * on the host) left out ("-", a record without a UUID, never is: as in CAPACITY_AWK), sorted bytewise, joined by newlines, no trailing newline.
 * recordsUnchangedStep computes the same lines on the host with the same awk program as the
 * stats step, and refuses on a line this text lacks; only these three fields count, so a
 * record rewritten with its addresses (the define batch) changes nothing.
 */
export function serverCapacityText(records: readonly ServerCapacity[], skip: readonly string[] = []): string {
  return records
    .filter((r) => r.uuid === "-" || !skip.includes(r.uuid))
    .map((r) => `${r.uuid} ${r.ramMiB} ${r.vcpus}`)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
    .join("\n");
}

/** Placement policy: like Nova's RAM and CPU allocation ratios and reserved host memory. */
export const PLACEMENT = {
  ramAllocationRatio: 1.0,
  cpuAllocationRatio: 4.0,
  reservedHostMemoryMiB: 512,
} as const;

/** Free RAM (MiB) and vCPUs a host offers to new servers. */
export function freeCapacity(l: HostLoad): { ramMiB: number; vcpus: number } {
  return {
    ramMiB:
      Math.floor((l.memTotalMiB - PLACEMENT.reservedHostMemoryMiB) * PLACEMENT.ramAllocationRatio) -
      l.allocatedRamMiB,
    vcpus: Math.floor(l.cpus * PLACEMENT.cpuAllocationRatio) - l.allocatedVcpus,
  };
}

/**
 * Chooses a host (pure): filter the hosts that fit the flavor, then take the one with the most
 * free RAM (ties: most free vCPUs, then the order of `loads`). Returns an error text naming
 * every host and why it does not fit when none does.
 */
export function chooseHost(
  loads: readonly HostLoad[],
  flavor: Pick<ServerFlavor, "vcpus" | "ramMiB">,
): { host: string } | { error: string } {
  const why: string[] = [];
  let best: { load: HostLoad; free: { ramMiB: number; vcpus: number }; i: number } | undefined;
  loads.forEach((load, i) => {
    const free = freeCapacity(load);
    if (free.ramMiB < flavor.ramMiB)
      why.push(`${load.host}: ${free.ramMiB} MiB RAM free, needs ${flavor.ramMiB}`);
    else if (free.vcpus < flavor.vcpus)
      why.push(`${load.host}: ${free.vcpus} vCPUs free, needs ${flavor.vcpus}`);
    else if (load.memAvailableMiB < flavor.ramMiB)
      why.push(`${load.host}: only ${load.memAvailableMiB} MiB of memory available right now`);
    else if (
      !best ||
      free.ramMiB > best.free.ramMiB ||
      (free.ramMiB === best.free.ramMiB && free.vcpus > best.free.vcpus)
    ) {
      best = { load, free, i };
    }
  });
  if (!best)
    return {
      error: `no host fits the flavor (${flavor.vcpus} vCPU, ${flavor.ramMiB} MiB): ${why.join("; ")}; add a host, free capacity or pick a smaller flavor`,
    };
  return { host: best.load.host };
}

/**
 * Counts a server just placed on a load (pure; a new object): one placement turn places several
 * servers from one reading of the hosts, each seeing the ones placed before it.
 */
export function withPlaced(
  load: HostLoad,
  server: { uuid: string; flavor: Pick<ServerFlavor, "vcpus" | "ramMiB"> },
): HostLoad {
  return {
    ...load,
    allocatedRamMiB: load.allocatedRamMiB + server.flavor.ramMiB,
    allocatedVcpus: load.allocatedVcpus + server.flavor.vcpus,
    servers: load.servers + 1,
    serverUuids: [...load.serverUuids, server.uuid],
    capacity: [
      ...(load.capacity ?? []),
      { uuid: server.uuid, ramMiB: String(server.flavor.ramMiB), vcpus: String(server.flavor.vcpus) },
    ],
  };
}

/** Parses the stats step's output into a HostLoad (pure). */
export function parseHostLoad(host: string, stdout: string): HostLoad {
  const kv = new Map<string, string>();
  const capacity: ServerCapacity[] = [];
  let inCapacity = false;
  for (const line of stdout.split("\n")) {
    if (line === "--capacity--") {
      inCapacity = true;
      continue;
    }
    if (inCapacity) {
      // "<uuid> <ramMiB> <vcpus>" as the host's awk printed it (no UUID: "-").
      const f = line.split(" ");
      if (f.length === 3) capacity.push({ uuid: f[0], ramMiB: f[1], vcpus: f[2] });
    } else {
      const at = line.indexOf("=");
      if (at > 0) kv.set(line.slice(0, at), line.slice(at + 1).trim());
    }
  }
  const count = (v: string) => (/^[0-9]+$/.test(v) ? Number(v) : 0);
  return {
    host,
    memTotalMiB: Math.floor(Number(kv.get("memtotal") ?? 0) / 1024),
    memAvailableMiB: Math.floor(Number(kv.get("memavailable") ?? 0) / 1024),
    cpus: Number(kv.get("cpus") ?? 0),
    allocatedRamMiB: capacity.reduce((n, c) => n + count(c.ramMiB), 0),
    allocatedVcpus: capacity.reduce((n, c) => n + count(c.vcpus), 0),
    servers: capacity.length,
    serverUuids: capacity.map((c) => c.uuid).filter((u) => u !== "-" && u !== ""),
    capacity,
  };
}

/** Only the input fields of outputs (pure). */
/** Every input key of the Server (what create and update receive). */
export const SERVER_INPUT_KEYS = [
  "serverName",
  "uuid",
  "hosts",
  "host",
  "flavor",
  "image",
  "ports",
  "domainXml",
  "cloudInit",
  "powerState",
  "readiness",
  "changePlan",
  "owner",
  "project",
] as const;

/** Only the input fields (outputs carry more). */
export function serverInputsOf(o: ServerInputs): ServerInputs {
  return inputsOf(o, SERVER_INPUT_KEYS);
}
