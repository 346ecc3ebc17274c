/**
 * Files and records on a host, as step scripts (pure builders) plus thin runners.
 *
 * Uploads travel inside the step as base64 in a quoted here-document, land in a temporary file
 * next to the target, are checked against their sha256, get mode and owner, and are renamed
 * over the target: a reader never sees half a file. When the target already has the same
 * sha256, mode and owner, nothing is written ("unchanged").
 *
 * Records: `/var/lib/kvmlab/records/<kind>/<name>.json`, one JSON file per object for things
 * with no native store (network name mappings, IP allocations…). Written like uploads, read
 * with `cat`. Callers hold the host lock around read-modify-write sequences.
 */
import type { HostConnection } from "./connection";
import type { Step } from "./framing";
import { recordPath } from "../../core/paths";
import { checkRemotePath, shQuote } from "./quote";
import { pooledSsh, runChecked } from "./session";

/** Root of everything kvmlab keeps on a host, and record paths (one definition: core/paths.ts). */
export { KVMLAB_STATE_DIR, recordPath } from "../../core/paths";

export interface UploadOptions {
  /** Octal mode string. @default "0644" */
  readonly mode?: string;
  /** `user:group`. @default "root:root" */
  readonly owner?: string;
}

/** Step that writes `content` to `path` atomically; prints `changed` or `unchanged`. */
export function uploadStep(path: string, content: string | Buffer, opts: UploadOptions = {}): Step {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const pathError = checkRemotePath("path", path);
  if (pathError) throw new Error(`uploadStep: ${pathError}`);
  const mode = opts.mode ?? "0644";
  if (!/^0?[0-7]{3,4}$/.test(mode))
    throw new Error(`uploadStep: mode: expected an octal mode like "0644", got ${JSON.stringify(mode)}`);
  const owner = opts.owner ?? "root:root";
  if (!/^[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*$/.test(owner)) {
    throw new Error(`uploadStep: owner: expected "user:group", got ${JSON.stringify(owner)}`);
  }
  const data = typeof content === "string" ? Buffer.from(content, "utf8") : content;
  const sha = crypto.createHash("sha256").update(data).digest("hex");
  const b64 = data.toString("base64").replace(/.{1,76}/g, "$&\n");
  const eof = `KVL_EOF_${crypto.randomBytes(8).toString("hex")}`;
  const p = shQuote(path);
  const statWant = `${Number.parseInt(mode, 8).toString(8)}:${owner}`;
  return {
    label: `upload ${path}`,
    script: [
      "set -e",
      `p=${p}`,
      `mkdir -p "$(dirname "$p")"`,
      `if [ -f "$p" ] && [ "$(sha256sum < "$p" | cut -d' ' -f1)" = ${sha} ] && [ "$(stat -c %a:%U:%G "$p")" = ${shQuote(statWant)} ]; then echo unchanged; exit 0; fi`,
      `t=$(mktemp "$p.kvmlab-tmp.XXXXXX")`,
      `trap 'rm -f "$t"' EXIT`,
      `base64 -d > "$t" <<'${eof}'`,
      `${b64}${eof}`,
      `[ "$(sha256sum < "$t" | cut -d' ' -f1)" = ${sha} ] || { echo "checksum mismatch after upload of $p" >&2; exit 1; }`,
      `chmod ${mode} "$t"`,
      `chown ${owner} "$t"`,
      `mv -f "$t" "$p"`,
      "trap - EXIT",
      "echo changed",
    ].join("\n"),
  };
}

/** Uploads one file; returns true when the host's copy changed. */
export async function uploadFile(
  host: HostConnection,
  path: string,
  content: string | Buffer,
  opts: UploadOptions = {},
): Promise<boolean> {
  const [out] = await runChecked(host, [uploadStep(path, content, opts)]);
  return out.trim() === "changed";
}

/** Step that writes a record atomically. */
export function writeRecordStep(kind: string, name: string, value: unknown): Step {
  return {
    ...uploadStep(recordPath(kind, name), `${JSON.stringify(value, null, 2)}\n`, { mode: "0600" }),
    label: `write record ${kind}/${name}`,
  };
}

/** Step that prints a record, or nothing when it does not exist. */
export function readRecordStep(kind: string, name: string): Step {
  const p = shQuote(recordPath(kind, name));
  return { label: `read record ${kind}/${name}`, script: `if [ -f ${p} ]; then cat ${p}; fi` };
}

/** Step that removes a record (idempotent). */
export function deleteRecordStep(kind: string, name: string): Step {
  return { label: `delete record ${kind}/${name}`, script: `rm -f ${shQuote(recordPath(kind, name))}` };
}

/** Parses a record step's stdout: undefined for "no record". */
export function parseRecord<T>(stdout: string, what: string): T | undefined {
  if (stdout.trim() === "") return undefined;
  try {
    return JSON.parse(stdout) as T;
  } catch {
    throw new Error(`record ${what} on the host is not valid JSON; inspect or remove it by hand`);
  }
}

/** Reads a record from a host. */
export async function readRecord<T>(
  host: HostConnection,
  kind: string,
  name: string,
): Promise<T | undefined> {
  const [out] = await runChecked(host, [readRecordStep(kind, name)]);
  return parseRecord<T>(out, `${kind}/${name}`);
}

/** Writes a record to a host (the caller holds the host lock when it read first). */
export async function writeRecord(
  host: HostConnection,
  kind: string,
  name: string,
  value: unknown,
): Promise<void> {
  await runChecked(host, [writeRecordStep(kind, name, value)]);
}

/**
 * Uploads a large local file over SFTP on the pooled connection to `remotePath` (used for
 * images). The caller verifies the checksum and renames; this only transfers.
 */
export async function sftpPut(host: HostConnection, localPath: string, remotePath: string): Promise<void> {
  const e = checkRemotePath("remotePath", remotePath);
  if (e) throw new Error(e);
  const ssh = await pooledSsh(host);
  await ssh.putFile(localPath, remotePath);
}
