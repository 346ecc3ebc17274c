/**
 * The image store on a host, as pure step builders and parsers (no I/O here).
 *
 * Layout on every host:
 *
 *   /var/lib/kvmlab/images/<name>/disk.qcow2 | disk.raw     a disk image
 *   /var/lib/kvmlab/images/<name>/kernel, ramdisk            a kernel+ramdisk image (AKI/ARI)
 *   /var/lib/kvmlab/images/<name>/.users/<server>            markers of servers using it
 *   /var/lib/kvmlab/images/.incoming/<name>.<token>/<role>   staging of one transfer (removed
 *                                                            on success and on failure)
 *   /var/lib/kvmlab/records/image/<name>.json                the record
 *
 * Files reach the store only by `mv` from the staging folder after their sha256 (and, for
 * disks, their format) was verified, so a store file is always complete and verified.
 *
 * A "stamp" (`<sha256> <size> <mtime>`) per file in the record lets a probe trust a file
 * without reading it: when size and mtime still match, the sha256 is the recorded one;
 * otherwise the probe hashes the file (drift shows as a different sha256).
 */
import type { Step } from "../host";
import { recordPath, shQuote } from "../host";
import { IMAGE_STORE, imageDir } from "../../core/paths";

/** The image store, its folders and roles (one definition: core/paths.ts). */
export { IMAGE_STORE, imageDir, imageFileName, type ImageRole } from "../../core/paths";
import type { ImageRole } from "../../core/paths";
export const IMAGE_ROLES: readonly ImageRole[] = ["disk", "kernel", "ramdisk"];

/** File names a store folder may hold (anything else there is not kvmlab's). */
const STORE_FILES = ["disk.qcow2", "disk.raw", "kernel", "ramdisk"];

/** One file of an image as the commit needs it. */
export interface ImageFilePlan {
  role: ImageRole;
  /** File name in the store folder (disk.qcow2, disk.raw, kernel, ramdisk). */
  fileName: string;
  sha256: string;
}

/** The staging folder of one transfer. */
export function stagingDir(imageName: string, token: string): string {
  if (!/^[0-9a-f]{8,32}$/.test(token)) throw new Error(`stagingDir: invalid token ${JSON.stringify(token)}`);
  recordPath("image", imageName);
  return `${IMAGE_STORE}/.incoming/${imageName}.${token}`;
}

/** What a probe found for one file. */
export interface FileProbe {
  role: ImageRole;
  /** ok: stamp matched; hashed: no valid stamp but the content matches; differs; missing. */
  status: "ok" | "hashed" | "differs" | "missing";
  sizeBytes: number;
  mtime: number;
  /** sha256 of the file on the host ("" when missing). */
  sha256: string;
}

/**
 * Step that reports each file: `<role> <status> <size> <mtime> <sha256|->` per line. Hashes a
 * file only when the record's stamp does not vouch for it.
 */
export function probeStep(imageName: string, files: readonly ImageFilePlan[], hostName: string): Step {
  const dir = imageDir(imageName);
  const lines = [`d=${shQuote(dir)}; rec=${shQuote(recordPath("image", imageName))}`];
  for (const f of files) {
    lines.push(
      `f="$d/${f.fileName}"; want=${shQuote(f.sha256)}`,
      'if [ -f "$f" ]; then',
      `  st=$(stat -c '%s %Y' "$f")`,
      '  if [ -f "$rec" ] && grep -qF "\\"stamp\\": \\"$want $st\\"" "$rec"; then echo "' +
        f.role +
        ' ok $st $want"',
      "  else h=$(sha256sum < \"$f\" | cut -d' ' -f1)",
      '    if [ "$h" = "$want" ]; then echo "' +
        f.role +
        ' hashed $st $h"; else echo "' +
        f.role +
        ' differs $st $h"; fi',
      "  fi",
      `else echo "${f.role} missing 0 0 -"; fi`,
    );
  }
  return { label: `check image ${imageName} files on ${hostName}`, script: lines.join("\n") };
}

/** Parses {@link probeStep}'s output. */
export function parseFileProbe(stdout: string): FileProbe[] {
  const out: FileProbe[] = [];
  for (const line of stdout.split("\n")) {
    const m = /^(disk|kernel|ramdisk) (ok|hashed|differs|missing) (\d+) (\d+) ([0-9a-f]{64}|-)$/.exec(
      line.trim(),
    );
    if (!m) continue;
    out.push({
      role: m[1] as ImageRole,
      status: m[2] as FileProbe["status"],
      sizeBytes: Number(m[3]),
      mtime: Number(m[4]),
      sha256: m[5] === "-" ? "" : m[5],
    });
  }
  return out;
}

/** Who uses an image on a host: `.users` markers and libvirt domains that name its folder. */
export interface ImageUsers {
  markers: string[];
  domains: string[];
}

/** Step that prints `users <names…>` and `domains <names…>`. */
export function usersStep(imageName: string, hostName: string): Step {
  const dir = imageDir(imageName);
  return {
    label: `find users of image ${imageName} on ${hostName}`,
    script: [
      `d=${shQuote(dir)}`,
      'u=""; if [ -d "$d/.users" ]; then u=$(ls -A "$d/.users" | sort | tr \'\\n\' \' \'); fi',
      "dom=$(grep -lF \"$d/\" /etc/libvirt/qemu/*.xml /run/libvirt/qemu/*.xml 2>/dev/null | sed 's#.*/##; s#\\.xml$##' | sort -u | tr '\\n' ' ')",
      'echo "users $u"',
      'echo "domains $dom"',
    ].join("\n"),
  };
}

export function parseUsers(stdout: string): ImageUsers {
  const pick = (key: string): string[] => {
    const line = stdout.split("\n").find((l) => l.startsWith(`${key} `) || l === key) ?? "";
    return line
      .slice(key.length)
      .split(/\s+/)
      .filter((w) => w !== "");
  };
  return { markers: pick("users"), domains: pick("domains") };
}

/** Step that marks (or unmarks) `user` as a user of the image; for the Server provider. */
export function imageUserStep(imageName: string, user: string, use: boolean): Step {
  const dir = imageDir(imageName);
  recordPath("image-user", user);
  const marker = shQuote(`${dir}/.users/${user}`);
  return use
    ? {
        label: `mark image ${imageName} as used by ${user}`,
        script: `[ -d ${shQuote(dir)} ] || { echo "image ${imageName} is not on this host" >&2; exit 1; }\nmkdir -p ${shQuote(`${dir}/.users`)} && : > ${marker}`,
      }
    : { label: `unmark image ${imageName} as used by ${user}`, script: `rm -f ${marker}` };
}

/** One file to bring into the staging folder on the host itself (copy or download). */
export interface HostFetch {
  role: ImageRole;
  hostPath: string;
  url: string;
}

/**
 * Step that creates the staging folder and copies host paths / downloads URLs into it. On
 * failure it removes the staging folder itself.
 */
export function stageStep(
  imageName: string,
  token: string,
  fetches: readonly HostFetch[],
  hostName: string,
): Step {
  const s = stagingDir(imageName, token);
  const lines = ["set -e", `s=${shQuote(s)}`, "trap '[ $? -eq 0 ] || rm -rf \"$s\"' EXIT", 'mkdir -p "$s"'];
  for (const f of fetches) {
    if (f.hostPath) {
      const p = shQuote(f.hostPath);
      lines.push(
        `[ -f ${p} ] || { echo "source file ${f.hostPath} does not exist on host ${hostName}; fix the ${f.role} hostPath" >&2; exit 1; }`,
        `cp --reflink=auto -- ${p} "$s/${f.role}"`,
      );
    } else {
      lines.push(
        `command -v curl >/dev/null 2>&1 || { echo "curl is not installed on host ${hostName}; install it (apt-get install curl) or use a localPath source" >&2; exit 1; }`,
        `curl -fsSL --proto '=http,https' --max-time 3600 -o "$s/${f.role}" -- ${shQuote(f.url)}`,
      );
    }
  }
  return { label: `stage image ${imageName} files on ${hostName}`, script: lines.join("\n") };
}

/** Step that prints `<role> <sha256> <size>` for every staged file. */
export function hashStagedStep(
  imageName: string,
  token: string,
  roles: readonly ImageRole[],
  hostName: string,
): Step {
  const s = stagingDir(imageName, token);
  return {
    label: `verify staged image ${imageName} files on ${hostName}`,
    script: [
      "set -e",
      `s=${shQuote(s)}`,
      ...roles.map((r) => `echo "${r} $(sha256sum < "$s/${r}" | cut -d' ' -f1) $(stat -c %s "$s/${r}")"`),
    ].join("\n"),
  };
}

export function parseStagedHashes(stdout: string): Map<ImageRole, { sha256: string; sizeBytes: number }> {
  const out = new Map<ImageRole, { sha256: string; sizeBytes: number }>();
  for (const line of stdout.split("\n")) {
    const m = /^(disk|kernel|ramdisk) ([0-9a-f]{64}) (\d+)$/.exec(line.trim());
    if (m) out.set(m[1] as ImageRole, { sha256: m[2], sizeBytes: Number(m[3]) });
  }
  return out;
}

/** Step that prints `qemu-img info --output=json` of a disk file. */
export function diskInfoStep(path: string, hostName: string): Step {
  return {
    label: `inspect disk image ${path} on ${hostName} (qemu-img info)`,
    script: `qemu-img info -U --output=json -- ${shQuote(path)}`,
  };
}

/** The facts of qemu-img info kvmlab uses; an error text when the image is not acceptable. */
export function checkDiskInfo(
  stdout: string,
  wantFormat: "qcow2" | "raw",
  what: string,
): { virtualSizeBytes: number } | { error: string } {
  let info: Record<string, unknown>;
  try {
    info = JSON.parse(stdout) as Record<string, unknown>;
  } catch {
    return { error: `${what}: qemu-img info printed no JSON; is it a disk image?` };
  }
  const format = info.format;
  if (format !== wantFormat) {
    return {
      error: `${what}: diskFormat is "${wantFormat}" but the file is ${JSON.stringify(format)} (qemu-img info); set diskFormat to ${JSON.stringify(format)} or convert it (qemu-img convert -O ${wantFormat})`,
    };
  }
  if (typeof info["backing-filename"] === "string") {
    return {
      error: `${what}: the qcow2 image has a backing file (${JSON.stringify(info["backing-filename"])}); images must stand alone: flatten it with qemu-img convert -O qcow2`,
    };
  }
  const size = info["virtual-size"];
  return { virtualSizeBytes: typeof size === "number" ? size : 0 };
}

/**
 * Step that moves verified staged files into the store (mode 0644, mtime set to `mtime` so the
 * record's stamps hold), removes the staging folder and store files this image no longer has.
 */
export function commitStep(
  imageName: string,
  token: string,
  staged: readonly ImageFilePlan[],
  keep: readonly string[],
  mtime: number,
  hostName: string,
): Step {
  const dir = imageDir(imageName);
  const lines = ["set -e", `d=${shQuote(dir)}`, 'mkdir -p "$d"'];
  if (staged.length > 0) lines.push(`s=${shQuote(stagingDir(imageName, token))}`);
  for (const f of staged) {
    lines.push(
      `chmod 0644 "$s/${f.role}"`,
      `touch -m -d @${Math.floor(mtime)} "$s/${f.role}"`,
      `mv -f "$s/${f.role}" "$d/${f.fileName}"`,
    );
  }
  if (staged.length > 0) lines.push('rm -rf "$s"');
  for (const name of STORE_FILES.filter((n) => !keep.includes(n))) lines.push(`rm -f "$d/${name}"`);
  return { label: `store image ${imageName} on ${hostName}`, script: lines.join("\n") };
}

/** Step that removes a staging folder (idempotent). */
export function cleanupStagingStep(imageName: string, token: string): Step {
  return {
    label: `remove staged files of image ${imageName}`,
    script: `rm -rf ${shQuote(stagingDir(imageName, token))}`,
  };
}

/**
 * Step that removes an image from a host: refuses (exit 16, naming them) while servers use it;
 * otherwise removes the folder, any staging leftovers and the record. Idempotent.
 */
export function removeImageStep(imageName: string, hostName: string): Step {
  const dir = imageDir(imageName);
  return {
    label: `delete image ${imageName} on ${hostName}`,
    script: [
      `d=${shQuote(dir)}`,
      'u=""; if [ -d "$d/.users" ]; then u=$(ls -A "$d/.users" | tr \'\\n\' \' \'); fi',
      "dom=$(grep -lF \"$d/\" /etc/libvirt/qemu/*.xml /run/libvirt/qemu/*.xml 2>/dev/null | sed 's#.*/##; s#\\.xml$##' | sort -u | tr '\\n' ' ')",
      `if [ -n "$u$dom" ]; then echo "image ${imageName} is still used on host ${hostName} by: $u$dom; delete those servers first" >&2; exit 16; fi`,
      'rm -rf "$d"',
      `rm -rf ${shQuote(`${IMAGE_STORE}/.incoming`)}/${shQuote(imageName)}.*`,
      `rm -f ${shQuote(recordPath("image", imageName))}`,
    ].join("\n"),
  };
}
