/**
 * Safety checks of inputs that carry whole configurations or host paths (issue 15): they are
 * parsed against an allow-list, and every refusal names the field, the refused directive or
 * element, and the fix. Pure.
 */
import { checkRemotePath, showValue } from "../host/quote";

/** Store of images on every host (core/paths.ts IMAGE_STORE; repeated here to stay pure and small). */
const IMAGE_STORE = "/var/lib/kvmlab/images/";

/**
 * A canonical absolute path: checkRemotePath, and no `//`, `/./`, trailing `/` or `/.` (two
 * spellings of one file would pass a prefix or equality guard with one and not the other).
 */
export function checkCanonicalPath(field: string, v: unknown): string | undefined {
  const e = checkRemotePath(field, v);
  if (e) return e;
  const p = v as string;
  if (p.includes("//") || /(^|\/)\.(\/|$)/.test(p) || (p.length > 1 && p.endsWith("/")))
    return `${field}: expected a canonical path (no "//", "/./" or trailing "/"), got ${showValue(p)}; write it as ${showValue(canonical(p))}`;
  return undefined;
}

function canonical(p: string): string {
  const parts = p.split("/").filter((s) => s !== "" && s !== ".");
  return `/${parts.join("/")}`;
}

/** A file in the hosts' image store (a Server's image paths): canonical and inside the store. */
export function checkStorePath(field: string, v: unknown): string | undefined {
  const e = checkCanonicalPath(field, v);
  if (e) return e;
  return (v as string).startsWith(IMAGE_STORE)
    ? undefined
    : `${field}: expected a file in the image store ${IMAGE_STORE} (an Image resource puts it there), got ${showValue(v)}`;
}

/** Host folders an Image's hostPath may never read from (pseudo files, kvmlab's own state, secrets). */
const FORBIDDEN_SOURCES = ["/proc/", "/sys/", "/dev/", "/run/", "/var/lib/kvmlab/", "/etc/", "/root/.ssh/"];

/** An Image source's hostPath: canonical, and not under a forbidden folder. */
export function checkHostSourcePath(field: string, v: unknown): string | undefined {
  const e = checkCanonicalPath(field, v);
  if (e) return e;
  const p = v as string;
  const bad = FORBIDDEN_SOURCES.find((d) => p.startsWith(d) || `${p}/` === d);
  return bad
    ? `${field}: ${p} is under ${bad}, which an image may not be read from; copy the file to a folder of its own (e.g. /srv/images) first`
    : undefined;
}

/**
 * dnsmasq directives a subnet's config may hold: exactly what the dnsmasq template renders. The
 * value rule: `fixed` must equal the given value, `word` is letters, digits and `_.:,=-` only.
 */
export function checkDnsmasqConf(
  conf: string,
  fixed: { interface: string; pidFile: string; leaseFile: string },
): string | undefined {
  const rules: Record<string, "none" | "word" | { equals: string }> = {
    port: "word",
    interface: { equals: fixed.interface },
    "except-interface": { equals: "lo" },
    "bind-interfaces": "none",
    "no-resolv": "none",
    "no-hosts": "none",
    "dhcp-authoritative": "none",
    "dhcp-leasefile": { equals: fixed.leaseFile },
    "pid-file": { equals: fixed.pidFile },
    "dhcp-range": "word",
    "dhcp-option": "word",
    "dhcp-option-force": "word",
    "dhcp-host": "word",
  };
  const fix = "render it with renderDnsmasqConf (kvmlab's dnsmasq template); kvmlab runs dnsmasq as root";
  const lines = conf.split("\n");
  const seen = new Set<string>();
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const at = line.indexOf("=");
    const key = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? undefined : line.slice(at + 1);
    const rule = rules[key];
    const where = `dnsmasqConf: line ${i + 1}`;
    if (rule === undefined)
      return `${where}: directive ${showValue(key)} is not allowed (allowed: ${Object.keys(rules).join(", ")}); ${fix}`;
    if (rule === "none" && value !== undefined)
      return `${where}: directive ${showValue(key)} takes no value; ${fix}`;
    if (rule === "word" && (value === undefined || !/^[A-Za-z0-9_.:,=-]{1,200}$/.test(value)))
      return `${where}: directive ${showValue(key)} has the value ${showValue(value ?? "")}; expected letters, digits and "_.:,=-" only; ${fix}`;
    if (typeof rule === "object" && value !== rule.equals)
      return `${where}: directive ${showValue(key)} must be ${showValue(rule.equals)} for this subnet, got ${showValue(value ?? "")}; ${fix}`;
    seen.add(key);
  }
  for (const k of ["interface", "pid-file", "dhcp-leasefile"])
    if (!seen.has(k))
      return `dnsmasqConf: expected a config rendered for this subnet (a line "${k}=${k === "interface" ? fixed.interface : k === "pid-file" ? fixed.pidFile : fixed.leaseFile}"); ${fix}`;
  return undefined;
}

/**
 * The safety of a rendered domain XML (beyond "rendered for this server"): only file disks in
 * the instance folder or the image store, only bridge interfaces on the server's ports'
 * bridges, no host devices, scripts, QEMU arguments or host files elsewhere.
 */
export function checkDomainXmlSafety(
  where: string,
  xml: string,
  allowed: { instanceDir: string; imageFiles: readonly string[]; bridges: readonly string[] },
): string | undefined {
  const fix = "render the XML with components/server.ts (renderServer)";
  const forbidden: [RegExp, string][] = [
    [
      /<disk\b[^>]*\btype\s*=\s*['"](?!file['"])/,
      "a disk that is not a file (host block devices, network disks)",
    ],
    [/<source\b[^>]*\b(dev|dir|protocol|socket|path)\s*=/, "a host device, folder, socket or network source"],
    [
      /<interface\b[^>]*\btype\s*=\s*['"](?!bridge['"])/,
      "an interface that is not a bridge port (ethernet, direct, user…)",
    ],
    [/<script\b/, "an interface <script> (run as root on the host)"],
    [
      /<(hostdev|filesystem|redirdev|smartcard|shmem|channel|parallel|tpm|iommu)\b/,
      "a host device or host filesystem",
    ],
    [/<(serial|console)\b[^>]*\btype\s*=\s*['"](?!pty['"])/, "a serial or console that is not a pty"],
    [/qemu:|xmlns:qemu/, "raw QEMU arguments"],
    [/<(loader|nvram)\b/, "a firmware loader or NVRAM file"],
    [/<!(DOCTYPE|ENTITY)/i, "DOCTYPE/ENTITY declarations"],
    [/<\?/, "processing instructions"],
  ];
  for (const [re, what] of forbidden)
    if (re.test(xml)) return `${where}: refused: ${what} (${showValue(re.exec(xml)?.[0] ?? "")}); ${fix}`;
  const dir = `${allowed.instanceDir}/`;
  for (const m of xml.matchAll(/\bfile\s*=\s*['"]([^'"]*)['"]/g)) {
    const p = m[1];
    if (
      checkCanonicalPath("file", p) !== undefined ||
      (!p.startsWith(dir) && !allowed.imageFiles.includes(p))
    )
      return `${where}: refused: the host file ${showValue(p)} (only the server's instance folder ${dir} and its image's files); ${fix}`;
  }
  for (const m of xml.matchAll(/<(kernel|initrd|dtb)>([^<]*)</g)) {
    if (!allowed.imageFiles.includes(m[2]))
      return `${where}: refused: <${m[1]}> ${showValue(m[2])} is not a file of the server's image; ${fix}`;
  }
  for (const m of xml.matchAll(/<source\b[^>]*\b(bridge|network)\s*=\s*['"]([^'"]*)['"]/g)) {
    if (m[1] !== "bridge" || !allowed.bridges.includes(m[2]))
      return `${where}: refused: the ${m[1]} ${showValue(m[2])} is not the bridge of one of the server's ports' networks (${allowed.bridges.join(", ") || "none"}); ${fix}`;
  }
  for (const m of xml.matchAll(/<backend\b[^>]*>([^<]*)</g)) {
    if (m[1] !== "/dev/urandom" && m[1] !== "/dev/random")
      return `${where}: refused: the RNG backend ${showValue(m[1])}; ${fix}`;
  }
  return undefined;
}
