/**
 * Image: a Glance-style image in the image store of every host that needs it.
 *
 *   disk image            `source` + `diskFormat` "qcow2" | "raw" (checked with qemu-img info
 *                         on the host; a mismatch or a qcow2 backing file is an error)
 *   kernel+ramdisk image  `kernel` (+ optional `ramdisk`, `kernelCmdline`): Glance's AKI/ARI
 *                         pair for direct kernel boot
 *
 * A source is a local file on the machine running Pulumi (`localPath`, sent over SFTP on the
 * pooled connection), a file on the host (`hostPath`, copied there) or an http(s) URL the host
 * downloads (`url`; needs curl on the host). Its `sha256` is required: it is the image's
 * identity and is verified on every host; a mismatch is an error that shows both values and
 * leaves nothing behind (the staging folder is removed; a failed create removes the image
 * from every host). A local file is hashed before anything is sent.
 *
 * Layout and probing: see image/steps.ts. Hosts that already hold a file with the right
 * sha256 get nothing sent (a create run twice converges; a no-op create is one round trip).
 *
 *   check   validates every field (unknowns accepted during preview), fills defaults
 *   diff    pure (no SSH): imageName, diskFormat, a file's sha256, adding/removing a file →
 *           replace (delete first: the store paths are the name's); source locations,
 *           kernelCmdline, minDiskGiB, minRamMiB, hosts and drift → update
 *   create  per host in parallel: probe, stage + verify what is missing, commit under the
 *           host lock (mv into the store, record)
 *   read    one batch per host: files (sha256 via the record's stamps, hashing on doubt),
 *           record, users; nothing left anywhere → gone
 *   update  converge on every listed host; remove from hosts no longer listed
 *   delete  per host: refuses while a server uses the image (`.users` markers or a libvirt
 *           domain naming its folder); else removes folder, staging leftovers and record
 */
import * as pulumi from "@pulumi/pulumi";
import {
  checkHostList,
  hostPool,
  parseRecord,
  pooledSsh,
  readRecordStep,
  recordPath,
  runChecked,
  runLocked,
  runSteps,
  shQuote,
  showValue,
  writeRecordStep,
  type Step,
  type HostConnection,
} from "./host";
import {
  KvmlabResource,
  applyRules,
  changedKeys,
  checkedOwner,
  checkHostSourcePath,
  claimStep,
  claimedNow,
  defineResource,
  failureList,
  guardStep,
  ownerIn,
  ownerProject,
  releaseOwnerStep,
  type OwnedObject,
  isKnown,
  isUnknown,
  normalizeHosts,
  onEveryHost,
  rules,
  type Checked,
  type DiffResult,
  type HostConnectionArgs,
  type InProjectArgs,
} from "./kit";
import {
  checkDiskInfo,
  cleanupStagingStep,
  commitStep,
  diskInfoStep,
  hashStagedStep,
  imageDir,
  imageFileName,
  parseFileProbe,
  parseStagedHashes,
  parseUsers,
  probeStep,
  removeImageStep,
  stageStep,
  stagingDir,
  usersStep,
  type FileProbe,
  type ImageFilePlan,
  type ImageRole,
  type ImageUsers,
} from "./image/steps";

export * from "./image/steps";

/** Where one file of an image comes from. Give exactly one of localPath, hostPath, url. */
export interface ImageSourceArgs {
  /** File on the machine running Pulumi (relative paths resolve against the program's folder). */
  readonly localPath?: pulumi.Input<string>;
  /** File on each host (absolute path). */
  readonly hostPath?: pulumi.Input<string>;
  /** http(s) URL each host downloads (needs curl and network access on the host). */
  readonly url?: pulumi.Input<string>;
  /** Expected sha256 (64 hex digits), e.g. from `sha256sum`. */
  readonly sha256: pulumi.Input<string>;
}

export interface ImageArgs extends InProjectArgs {
  /** Name in the store and records. @default the resource name */
  readonly imageName?: pulumi.Input<string>;
  /** Hosts that need the image. @default (in components) every host */
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** Disk image file (with diskFormat). */
  readonly source?: pulumi.Input<ImageSourceArgs>;
  /** "qcow2" or "raw"; only with `source`. */
  readonly diskFormat?: pulumi.Input<"qcow2" | "raw">;
  /** Kernel for direct kernel boot (instead of `source`). */
  readonly kernel?: pulumi.Input<ImageSourceArgs>;
  /** Initial ramdisk for `kernel`. @default none */
  readonly ramdisk?: pulumi.Input<ImageSourceArgs>;
  /** Default kernel command line servers start from. @default "" */
  readonly kernelCmdline?: pulumi.Input<string>;
  /** Smallest root disk a server needs (Glance min_disk). @default 0 */
  readonly minDiskGiB?: pulumi.Input<number>;
  /** Smallest RAM a server needs (Glance min_ram). @default 0 */
  readonly minRamMiB?: pulumi.Input<number>;
  /** Owner of the store folder and record on every host. @default set by the kit */
  readonly owner?: pulumi.Input<string>;
}

/** A source after check: unused locations are "". */
export interface ImageSource {
  localPath: string;
  hostPath: string;
  url: string;
  sha256: string;
}

export interface ImageInputs {
  imageName: string;
  hosts: HostConnection[];
  /** "" for kernel images. */
  diskFormat: "qcow2" | "raw" | "";
  source?: ImageSource;
  kernel?: ImageSource;
  ramdisk?: ImageSource;
  kernelCmdline: string;
  minDiskGiB: number;
  minRamMiB: number;
  /** Owner of the store folder and record on every host (kit/owner.ts). */
  owner: string;
}

/** One stored file. */
export interface ImageFile {
  fileName: string;
  sha256: string;
  sizeBytes: number;
}

/** What one host has. */
export interface ImageHostState {
  record: boolean;
  /** Per role: sha256 of the file on the host ("" when missing). */
  files: Partial<Record<ImageRole, string>>;
  /** Servers marked as users and libvirt domains naming the image folder. */
  users: string[];
}

export interface ImageOutputs extends ImageInputs {
  /** "qcow2", "raw" or "kernel". */
  format: "qcow2" | "raw" | "kernel";
  /** /var/lib/kvmlab/images/<name> on every host. */
  storeDir: string;
  /** Paths ("" when the image has no such file); the same on every host. */
  diskPath: string;
  kernelPath: string;
  ramdiskPath: string;
  /** Per host name: the paths of its copy. */
  paths: Record<string, { disk: string; kernel: string; ramdisk: string }>;
  /** sha256 and size of the disk (or of the kernel for kernel images). */
  sha256: string;
  sizeBytes: number;
  /** Virtual size of a disk image (qemu-img info); 0 for kernel images. */
  virtualSizeBytes: number;
  files: Partial<Record<ImageRole, ImageFile>>;
  hostKeys: Record<string, string>;
  realized: Record<string, ImageHostState>;
}

/** The record on each host. */
export interface ImageRecord {
  kind: "image";
  name: string;
  format: "qcow2" | "raw" | "kernel";
  files: Partial<Record<ImageRole, ImageFile & { stamp: string }>>;
  virtualSizeBytes: number;
  kernelCmdline: string;
  minDiskGiB: number;
  minRamMiB: number;
  /** Where each file came from ("local:<file name>", a host path or a URL). */
  origins: Partial<Record<ImageRole, string>>;
  /** The identity project `<domain>/<name>` of its owner (issue 14); absent when it has none. */
  project?: string;
}

const SOURCE_ROLES: readonly { role: ImageRole; key: "source" | "kernel" | "ramdisk" }[] = [
  { role: "disk", key: "source" },
  { role: "kernel", key: "kernel" },
  { role: "ramdisk", key: "ramdisk" },
];

function hasControl(s: string): boolean {
  return [...s].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);
}

/** Checks one source at `field`; returns errors and the normalized source. */
function checkSource(field: string, raw: unknown): { errors: string[]; source: unknown } {
  if (isUnknown(raw)) return { errors: [], source: raw };
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    return {
      errors: [`${field}: expected {localPath | hostPath | url, sha256}, got ${showValue(raw)}`],
      source: raw,
    };
  }
  const s = raw as Record<string, unknown>;
  const errors: string[] = [];
  const given = (["localPath", "hostPath", "url"] as const).filter((k) => s[k] !== undefined && s[k] !== "");
  if (given.length !== 1) {
    errors.push(
      `${field}: give exactly one of localPath (a file here), hostPath (a file on the hosts) or url, got ${given.length === 0 ? "none" : given.join(" and ")}`,
    );
  }
  const lp = s.localPath;
  if (lp !== undefined && lp !== "") {
    if (typeof lp !== "string" || !lp.startsWith("/") || hasControl(lp) || lp.includes("\0")) {
      errors.push(
        `${field}.localPath: expected an absolute path on the machine running Pulumi, got ${showValue(lp)}`,
      );
    }
  }
  const hp = s.hostPath;
  if (hp !== undefined && hp !== "") {
    // Canonical, and never a pseudo file, kvmlab's own state or a secret (issue 15).
    const e = checkHostSourcePath(`${field}.hostPath`, hp);
    if (e) errors.push(e);
  }
  const url = s.url;
  if (url !== undefined && url !== "") {
    if (
      typeof url !== "string" ||
      url.length > 2048 ||
      !/^https?:\/\/[A-Za-z0-9.-]+(:[0-9]{1,5})?(\/[A-Za-z0-9._~%/+=,@:!-]*)?(\?[A-Za-z0-9._~%/+=,@:&!-]*)?$/.test(
        url,
      )
    ) {
      errors.push(
        `${field}.url: expected an http:// or https:// URL of letters, digits and "._~%/+=,@:&!-?", got ${showValue(url)}`,
      );
    }
  }
  let sha = s.sha256;
  {
    if (typeof sha === "string" && /^[0-9a-fA-F]{64}$/.test(sha)) sha = sha.toLowerCase();
    else
      errors.push(
        `${field}.sha256: expected the file's sha256 as 64 hex digits (run sha256sum on it), got ${showValue(sha)}`,
      );
  }
  const str = (v: unknown): unknown => (v === undefined ? "" : v);
  return {
    errors,
    source: { localPath: str(s.localPath), hostPath: str(s.hostPath), url: str(s.url), sha256: sha },
  };
}

/** Validates and normalizes raw inputs. Pure. */
export function checkImageInputs(news: Record<string, unknown>): Checked {
  const found = failureList();
  const add = (property: string, errors: (string | undefined)[]): void => found.add(property, errors);
  applyRules(news, { imageName: { rule: rules.name } }, found);
  add("hosts", checkHostList("hosts", news.hosts));
  const hosts = normalizeHosts(news.hosts);
  const out: Record<string, unknown> = { imageName: news.imageName, hosts };
  for (const { key } of SOURCE_ROLES) {
    if (news[key] === undefined || news[key] === null) continue;
    const { errors, source } = checkSource(key, news[key]);
    add(key, errors);
    out[key] = source;
  }
  const isDisk = out.source !== undefined;
  const isKernel = out.kernel !== undefined;
  if (isDisk === isKernel) {
    add(isDisk ? "kernel" : "source", [
      isDisk
        ? "kernel: an image is either a disk (source + diskFormat) or a kernel (+ ramdisk), not both; make two images"
        : "source: missing; give source (a qcow2/raw disk, with diskFormat) or kernel (+ ramdisk) for direct kernel boot",
    ]);
  }
  if (out.ramdisk !== undefined && !isKernel) {
    add("ramdisk", ["ramdisk: only with kernel (a kernel+ramdisk image); remove it or add kernel"]);
  }
  const diskFormat = news.diskFormat === undefined || news.diskFormat === null ? "" : news.diskFormat;
  if (isKnown(diskFormat)) {
    if (isDisk && diskFormat !== "qcow2" && diskFormat !== "raw") {
      add("diskFormat", [
        `diskFormat: expected "qcow2" or "raw" for a disk image, got ${showValue(news.diskFormat)}`,
      ]);
    } else if (!isDisk && diskFormat !== "") {
      add("diskFormat", ["diskFormat: only for disk images (source); a kernel image has none, remove it"]);
    }
  }
  const kernelCmdline = news.kernelCmdline ?? "";
  if (isKnown(kernelCmdline)) {
    if (typeof kernelCmdline !== "string" || kernelCmdline.length > 1024 || hasControl(kernelCmdline)) {
      add("kernelCmdline", [
        `kernelCmdline: expected one line of at most 1024 printable characters, got ${showValue(kernelCmdline)}`,
      ]);
    } else if (kernelCmdline !== "" && !isKernel) {
      add("kernelCmdline", ["kernelCmdline: only for kernel images; remove it or add kernel"]);
    }
  }
  const { minDiskGiB, minRamMiB } = applyRules(
    news,
    {
      minDiskGiB: { rule: rules.int(0, 65536), default: 0 },
      minRamMiB: { rule: rules.int(0, 1048576), default: 0 },
    },
    found,
  );
  return {
    inputs: {
      ...out,
      diskFormat,
      kernelCmdline,
      minDiskGiB,
      minRamMiB,
      owner: checkedOwner(news, "Image", "imageName", (p, r) => found.add(p, r)),
    },
    failures: found.failures,
  };
}

/** The files an image has, in role order. */
export function imageFiles(i: Pick<ImageInputs, "diskFormat" | "source" | "kernel" | "ramdisk">): {
  plan: ImageFilePlan;
  source: ImageSource;
}[] {
  const out: { plan: ImageFilePlan; source: ImageSource }[] = [];
  for (const { role, key } of SOURCE_ROLES) {
    const source = i[key];
    if (!source) continue;
    const fileName = imageFileName(role, i.diskFormat === "raw" ? "raw" : "qcow2");
    out.push({ plan: { role, fileName, sha256: source.sha256 }, source });
  }
  return out;
}

/** Property-level diff; pure (never connects). */
export function diffImage(olds: ImageOutputs, news: ImageInputs): DiffResult {
  const replaces: string[] = changedKeys(olds, news, ["imageName", "diskFormat"]);
  for (const { key } of SOURCE_ROLES) {
    const o = olds[key];
    const n = news[key];
    if (!o && !n) continue;
    // Content identity is the sha256; where it comes from is an update.
    if (!o || !n || isUnknown(n) || o.sha256 !== n.sha256) replaces.push(key);
  }
  let changes = replaces.length > 0;
  const updatable = [
    "kernelCmdline",
    "minDiskGiB",
    "minRamMiB",
    "hosts",
    "source",
    "kernel",
    "ramdisk",
  ] as const;
  if (!changes) changes = changedKeys(olds, news, updatable).length > 0;
  if (!changes) {
    // Drift found by refresh: a host lacks the record or a file, or holds another sha256.
    const files = imageFiles(news);
    changes = news.hosts.some((h) => {
      const have = olds.realized?.[h.name];
      return !have || !have.record || files.some((f) => have.files[f.plan.role] !== f.plan.sha256);
    });
  }
  return {
    changes,
    replaces,
    stables:
      replaces.length === 0 ? ["storeDir", "diskPath", "kernelPath", "ramdiskPath", "sha256", "format"] : [],
    deleteBeforeReplace: true,
  };
}

/** The record for these inputs and the files' sizes/stamps. */
export function imageRecord(
  inputs: ImageInputs,
  stored: Partial<Record<ImageRole, { sizeBytes: number; mtime: number }>>,
  virtualSizeBytes: number,
): ImageRecord {
  const files: ImageRecord["files"] = {};
  const origins: ImageRecord["origins"] = {};
  for (const { plan, source } of imageFiles(inputs)) {
    const st = stored[plan.role] ?? { sizeBytes: 0, mtime: 0 };
    files[plan.role] = {
      fileName: plan.fileName,
      sha256: plan.sha256,
      sizeBytes: st.sizeBytes,
      stamp: `${plan.sha256} ${st.sizeBytes} ${st.mtime}`,
    };
    origins[plan.role] = source.localPath
      ? `local:${source.localPath.slice(source.localPath.lastIndexOf("/") + 1)}`
      : source.hostPath || source.url;
  }
  return {
    kind: "image",
    name: inputs.imageName,
    format: inputs.diskFormat === "" ? "kernel" : inputs.diskFormat,
    files,
    virtualSizeBytes,
    kernelCmdline: inputs.kernelCmdline,
    minDiskGiB: inputs.minDiskGiB,
    minRamMiB: inputs.minRamMiB,
    origins,
    ...(ownerProject(inputs.owner ?? "") !== "" ? { project: ownerProject(inputs.owner ?? "") } : {}),
  };
}

/** Host state from a probe, the record text and the users. */
export function imageHostState(probes: FileProbe[], recordText: string, users: ImageUsers): ImageHostState {
  const files: ImageHostState["files"] = {};
  for (const p of probes) files[p.role] = p.sha256;
  return {
    record: recordText.trim() !== "",
    files,
    users: [...users.markers, ...users.domains.map((d) => `domain:${d}`)],
  };
}

/**
 * Time limit for batches that read or copy whole image files (hashing, cp, curl): large images
 * take minutes, not the host layer's default two.
 */
const LONG = { timeoutMs: 3_600_000 };
/**
 * The same, in a worker shell of the host's connection (RunOptions.lane): the steps that need no
 * lock (claim and probe, staging, hashing the staged files) no longer queue in the main shell
 * behind the other resources' batches, nor hold it up while they hash (issue 13: the image was
 * on the 3-tier up's critical path).
 */
const LONG_WORKER = { ...LONG, lane: "worker" } as const;

/** sha256 of a local file, streamed. */
async function sha256OfLocalFile(localPath: string): Promise<string> {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const fs: typeof import("node:fs") = require("node:fs");
  const hash = crypto.createHash("sha256");
  await new Promise<void>((resolve, reject) => {
    fs.createReadStream(localPath)
      .on("data", (chunk) => hash.update(chunk))
      .on("end", () => resolve())
      .on("error", reject);
  });
  return hash.digest("hex");
}

/** Checks one local source: it exists, is a file and matches its sha256. */
async function verifyLocalSource(role: ImageRole, source: ImageSource, sha256: string): Promise<void> {
  const fs: typeof import("node:fs") = require("node:fs");
  const field = role === "disk" ? "source" : role;
  let st: import("node:fs").Stats;
  try {
    st = fs.statSync(source.localPath);
  } catch {
    throw new Error(
      `${field}.localPath: ${source.localPath} does not exist on the machine running Pulumi; fix the path`,
    );
  }
  if (!st.isFile()) throw new Error(`${field}.localPath: ${source.localPath} is not a regular file`);
  const actual = await sha256OfLocalFile(source.localPath);
  if (actual !== sha256) {
    throw new Error(
      `${field}.sha256: checksum mismatch for ${source.localPath}: expected ${sha256}, actual ${actual}; ` +
        "fix sha256 or the file (nothing was sent to any host)",
    );
  }
}

/**
 * Local files this call has verified (localPath → its check), so a file sent to several hosts
 * is read and hashed once per call, not once per host (the hosts re-hash what they received).
 */
type Verified = Map<string, Promise<void>>;

function verifyOnce(verified: Verified, role: ImageRole, source: ImageSource, sha256: string): Promise<void> {
  const key = `${source.localPath}\u0000${sha256}`;
  let check = verified.get(key);
  if (check === undefined) {
    check = verifyLocalSource(role, source, sha256);
    verified.set(key, check);
  }
  return check;
}

/** Checks every local source before any host is touched (create). */
async function verifyLocalSources(inputs: ImageInputs, verified: Verified): Promise<void> {
  await Promise.all(
    imageFiles(inputs)
      .filter(({ source }) => source.localPath)
      .map(({ plan, source }) => verifyOnce(verified, plan.role, source, plan.sha256)),
  );
}

/**
 * Sends local files over SFTP on the pooled connection (a fresh one in naive mode): ONE SFTP
 * channel for the whole call, the files side by side on it (ssh2 runs concurrent transfers on
 * one channel). A channel per file would count against sshd's MaxSessions (10 by default) on top
 * of the main shell, the worker shells and the lock shells, and a refused SFTP channel is not
 * retried: the create would fail on a stock sshd. Every transfer settles before an error is
 * thrown (one naming every file that failed), so the caller's cleanup never runs beside a
 * transfer, unless the connection is lost (then nothing more reaches the host anyway).
 */
export async function sendFiles(
  host: HostConnection,
  files: readonly { localPath: string; remotePath: string }[],
): Promise<void> {
  if (files.length === 0) return;
  const ssh = await pooledSsh(host);
  // A connection lost during the transfer must fail the upload. After an SSH blackout ssh2's
  // keepalive reports an error and half-closes, but the socket's "close" (which ends the SFTP
  // channel) waits for TCP to give up, many minutes later: the upload waited that long (the
  // blackout fault test, issue 15). So any of error/end/close ends it.
  const conn = ssh.connection as unknown as {
    on(ev: string, cb: (e?: Error) => void): void;
    removeListener(ev: string, cb: (e?: Error) => void): void;
  } | null;
  const what = files.map((f) => `${f.localPath} to ${f.remotePath}`).join(", ");
  let onGone: (e?: Error) => void = () => undefined;
  let gone: Error | undefined;
  const lost = new Promise<never>((_, reject) => {
    onGone = (e?: Error) => {
      gone ??= new Error(
        `host ${host.name}: SSH connection lost while sending ${what}${e?.message ? ` (${e.message})` : ""}`,
      );
      reject(gone);
    };
  });
  lost.catch(() => undefined);
  for (const ev of ["error", "end", "close"]) conn?.on(ev, onGone);
  let sftp: Awaited<ReturnType<typeof ssh.requestSFTP>> | undefined;
  try {
    const request = ssh.requestSFTP();
    try {
      sftp = await Promise.race([request, lost]);
    } catch (err) {
      // A channel that arrives after the connection was reported lost is ended, not leaked.
      request.then(
        (late) => late.end(),
        () => undefined,
      );
      if (err === gone) throw err;
      throw new Error(
        `host ${host.name}: opening an SFTP channel to send ${what} failed: ${(err as Error).message}`,
        { cause: err },
      );
    }
    const channel = sftp;
    const sent = Promise.allSettled(files.map((f) => ssh.putFile(f.localPath, f.remotePath, channel)));
    const settled = await Promise.race([sent, lost]);
    // Every file that failed, each with its host, source and destination (review 11c).
    const failed = settled.flatMap((r, i) =>
      r.status === "rejected" ? [{ file: files[i], reason: r.reason as Error }] : [],
    );
    if (failed.length > 0)
      throw new Error(
        failed
          .map(
            ({ file, reason }) =>
              `host ${host.name}: sending ${file.localPath} to ${file.remotePath} failed: ${reason?.message ?? String(reason)}`,
          )
          .join("; "),
        { cause: failed[0].reason },
      );
  } finally {
    for (const ev of ["error", "end", "close"]) conn?.removeListener(ev, onGone);
    sftp?.end();
    if (hostPool().mode === "naive") ssh.dispose();
  }
}

/**
 * Makes one host hold the image (converging): probe, then stage + verify + commit what is
 * missing. Leaves no staging folder behind, whatever fails.
 */
async function ensureOnHost(
  inputs: ImageInputs,
  host: HostConnection,
  ownerStep: Step,
  onOwner: (stdout: string) => void,
  verified: Verified,
): Promise<ImageHostState & { virtualSizeBytes: number; sizes: Partial<Record<ImageRole, number>> }> {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const files = imageFiles(inputs);
  const plans = files.map((f) => f.plan);
  const dir = imageDir(inputs.imageName);
  // The owner step first (claim at create, guard at update), in the same round trip as the probe.
  const [ownerOut, recText, probeOut] = await runChecked(
    host,
    [ownerStep, readRecordStep("image", inputs.imageName), probeStep(inputs.imageName, plans, host.name)],
    LONG_WORKER,
  );
  onOwner(ownerOut);
  const existing = parseRecord<ImageRecord>(recText, `image/${inputs.imageName}`);
  const probes = new Map(parseFileProbe(probeOut).map((p) => [p.role, p]));
  const missing = files.filter((f) => {
    const p = probes.get(f.plan.role);
    return !p || (p.status !== "ok" && p.status !== "hashed");
  });
  const token = crypto.randomBytes(8).toString("hex");
  const staging = stagingDir(inputs.imageName, token);
  const stored: Partial<Record<ImageRole, { sizeBytes: number; mtime: number }>> = {};
  for (const [role, p] of probes) if (p.status === "ok" || p.status === "hashed") stored[role] = p;
  const mtime = Math.floor(Date.now() / 1000);
  let virtualSizeBytes = existing?.virtualSizeBytes ?? 0;
  const disk = files.find((f) => f.plan.role === "disk");
  const diskStaged = disk !== undefined && missing.includes(disk);
  const needInfo = disk !== undefined && (diskStaged || !existing || existing.format !== inputs.diskFormat);
  try {
    if (missing.length > 0) {
      const onHost = missing.filter((f) => !f.source.localPath);
      await runChecked(
        host,
        [
          stageStep(
            inputs.imageName,
            token,
            onHost.map((f) => ({ role: f.plan.role, hostPath: f.source.hostPath, url: f.source.url })),
            host.name,
          ),
        ],
        LONG_WORKER,
      );
      // Checked before sending (once per call: an update may need a file create did not), then
      // sent side by side on ONE SFTP channel of the host's connection (sendFiles).
      const local = missing.filter((m) => m.source.localPath);
      await Promise.all(local.map((f) => verifyOnce(verified, f.plan.role, f.source, f.plan.sha256)));
      // Every send settles before an error is thrown, so the cleanup below never runs beside one.
      await sendFiles(
        host,
        local.map((f) => ({ localPath: f.source.localPath, remotePath: `${staging}/${f.plan.role}` })),
      );
    }
    const steps = [];
    if (missing.length > 0)
      steps.push(
        hashStagedStep(
          inputs.imageName,
          token,
          missing.map((m) => m.plan.role),
          host.name,
        ),
      );
    if (needInfo && disk) {
      steps.push(diskInfoStep(diskStaged ? `${staging}/disk` : `${dir}/${disk.plan.fileName}`, host.name));
    }
    const outs = steps.length > 0 ? await runChecked(host, steps, LONG_WORKER) : [];
    if (missing.length > 0) {
      const hashes = parseStagedHashes(outs[0]);
      for (const f of missing) {
        const got = hashes.get(f.plan.role);
        const field = f.plan.role === "disk" ? "source" : f.plan.role;
        const from = f.source.localPath || f.source.hostPath || f.source.url;
        if (!got || got.sha256 !== f.plan.sha256) {
          throw new Error(
            `host ${host.name}: ${field}.sha256: checksum mismatch for ${from}: expected ${f.plan.sha256}, actual ${got?.sha256 ?? "(none)"}; ` +
              "fix sha256 or the source (nothing was kept)",
          );
        }
        stored[f.plan.role] = { sizeBytes: got.sizeBytes, mtime };
      }
    }
    if (needInfo && disk) {
      const info = checkDiskInfo(
        outs[outs.length - 1],
        inputs.diskFormat as "qcow2" | "raw",
        `host ${host.name}: source`,
      );
      if ("error" in info) throw new Error(info.error);
      virtualSizeBytes = info.virtualSizeBytes;
    }
    const record = imageRecord(inputs, stored, virtualSizeBytes);
    const keep = plans.map((p) => p.fileName);
    const upToDate =
      missing.length === 0 &&
      existing !== undefined &&
      JSON.stringify(existing) === JSON.stringify(record) &&
      [...probes.values()].every((p) => p.status === "ok");
    if (!upToDate) {
      await runLocked(host, [
        commitStep(
          inputs.imageName,
          token,
          missing.map((m) => m.plan),
          keep,
          mtime,
          host.name,
        ),
        writeRecordStep("image", inputs.imageName, record),
      ]);
    }
    const sizes: Partial<Record<ImageRole, number>> = {};
    const shas: Partial<Record<ImageRole, string>> = {};
    for (const p of plans) {
      sizes[p.role] = stored[p.role]?.sizeBytes ?? 0;
      shas[p.role] = p.sha256;
    }
    return { record: true, files: shas, users: [], virtualSizeBytes, sizes };
  } catch (err) {
    if (missing.length > 0)
      await runSteps(host, [cleanupStagingStep(inputs.imageName, token)]).catch(() => undefined);
    throw err;
  }
}

/** Reads one host's state (one batch). */
async function readHost(props: ImageInputs, host: HostConnection): Promise<ImageHostState> {
  const plans = imageFiles(props).map((f) => f.plan);
  const [rec, probe, users] = await runChecked(
    host,
    [
      readRecordStep("image", props.imageName),
      probeStep(props.imageName, plans, host.name),
      usersStep(props.imageName, host.name),
    ],
    LONG,
  );
  return imageHostState(parseFileProbe(probe), rec, parseUsers(users));
}

/** The image's objects on a host (store folder and record), for the owner guards. */
export function imageOwned(imageName: string): OwnedObject {
  return {
    kind: "image",
    key: [imageName],
    what: `image ${imageName}`,
    field: "imageName",
    exists: `{ [ -e ${shQuote(imageDir(imageName))} ] || [ -e ${shQuote(recordPath("image", imageName))} ]; }`,
  };
}

/**
 * Removes the image from a host; the first step refuses another owner's image (state from
 * before owners, owner "", is not guarded).
 */
async function removeFromHost(imageName: string, host: HostConnection, owner: string): Promise<void> {
  const owned = imageOwned(imageName);
  await runLocked(host, [
    ...(owner ? [guardStep(owned, [owner])] : []),
    removeImageStep(imageName, host.name),
    ...(owner ? [releaseOwnerStep(owned, [owner])] : []),
  ]);
}

/** Outputs from the inputs and what each host holds. */
export function imageOutputs(
  inputs: ImageInputs,
  realized: Record<string, ImageHostState>,
  sizes: Partial<Record<ImageRole, number>>,
  virtualSizeBytes: number,
): ImageOutputs {
  const dir = imageDir(inputs.imageName);
  const files: ImageOutputs["files"] = {};
  const path: Record<ImageRole, string> = { disk: "", kernel: "", ramdisk: "" };
  for (const { plan } of imageFiles(inputs)) {
    files[plan.role] = { fileName: plan.fileName, sha256: plan.sha256, sizeBytes: sizes[plan.role] ?? 0 };
    path[plan.role] = `${dir}/${plan.fileName}`;
  }
  const main = files.disk ?? files.kernel;
  const paths: ImageOutputs["paths"] = {};
  for (const h of inputs.hosts) paths[h.name] = { ...path };
  return {
    ...inputs,
    format: inputs.diskFormat === "" ? "kernel" : inputs.diskFormat,
    storeDir: dir,
    diskPath: path.disk,
    kernelPath: path.kernel,
    ramdiskPath: path.ramdisk,
    paths,
    sha256: main?.sha256 ?? "",
    sizeBytes: main?.sizeBytes ?? 0,
    virtualSizeBytes,
    files,
    hostKeys: {},
    realized,
  };
}

/** Converges every host; returns outputs. */
/**
 * Converges every host. The first step on each host claims the image (`made` given: create;
 * the hosts where this call made the claim are added) or refuses another owner's (`owners`).
 */
async function converge(
  inputs: ImageInputs,
  what: string,
  guard: { made: HostConnection[] } | { owners: readonly string[]; newHosts: ReadonlySet<string> },
  verified: Verified = new Map(),
): Promise<ImageOutputs> {
  const realized: Record<string, ImageHostState> = {};
  let sizes: Partial<Record<ImageRole, number>> = {};
  let virtualSizeBytes = 0;
  await onEveryHost(inputs.hosts, what, async (h) => {
    const owned = imageOwned(inputs.imageName);
    const r = await ensureOnHost(
      inputs,
      h,
      // A host new to the image (an update that adds it) is a create there: claim it, so an
      // unmarked image already on that host is refused rather than adopted (as Network does).
      "made" in guard || guard.newHosts.has(h.name)
        ? claimStep(owned, inputs.owner)
        : guardStep(owned, guard.owners, true),
      (out) => {
        if ("made" in guard && claimedNow(out)) guard.made.push(h);
      },
      verified,
    );
    realized[h.name] = { record: r.record, files: r.files, users: r.users };
    sizes = r.sizes;
    virtualSizeBytes = r.virtualSizeBytes;
  });
  return imageOutputs(inputs, realized, sizes, virtualSizeBytes);
}

const image = defineResource<ImageInputs, ImageOutputs>({
  type: "Image",
  inputKeys: [
    "imageName",
    "hosts",
    "source",
    "diskFormat",
    "kernel",
    "ramdisk",
    "kernelCmdline",
    "minDiskGiB",
    "minRamMiB",
    "owner",
  ],
  outputKeys: [
    "format",
    "storeDir",
    "diskPath",
    "kernelPath",
    "ramdiskPath",
    "paths",
    "sha256",
    "sizeBytes",
    "virtualSizeBytes",
    "files",
    "hostKeys",
    "realized",
  ],
  secretOutputs: ["hosts"],
  check: (news) => checkImageInputs(news),
  diff: diffImage,

  async create(inputs) {
    const verified: Verified = new Map();
    await verifyLocalSources(inputs, verified);
    const made: HostConnection[] = [];
    try {
      const outs = await converge(inputs, `create image ${inputs.imageName}`, { made }, verified);
      return { id: inputs.imageName, outs };
    } catch (err) {
      // Remove what this call made (hosts where it made the claim), never another owner's image.
      await Promise.allSettled(made.map((h) => removeFromHost(inputs.imageName, h, inputs.owner)));
      throw err;
    }
  },

  async read(_id, props) {
    const realized: Record<string, ImageHostState> = {};
    await onEveryHost(props.hosts, `read image ${props.imageName}`, async (h) => {
      realized[h.name] = await readHost(props, h);
    });
    const anything = Object.values(realized).some(
      (s) => s.record || Object.values(s.files).some((f) => f !== ""),
    );
    return anything ? { ...props, realized } : undefined;
  },

  async update(_id, olds, news) {
    const keep = new Set(news.hosts.map((h) => h.name));
    const gone = olds.hosts.filter((h) => !keep.has(h.name));
    await onEveryHost(gone, `remove image ${olds.imageName} from hosts no longer listed`, (h) =>
      removeFromHost(olds.imageName, h, ownerIn(olds)),
    );
    // Local files are checked only when a host needs them (a file deleted locally after
    // create does not block a metadata update).
    const had = new Set(olds.hosts.map((h) => h.name));
    return converge(news, `update image ${news.imageName}`, {
      owners: [news.owner, ownerIn(olds)],
      newHosts: new Set(news.hosts.filter((h) => !had.has(h.name)).map((h) => h.name)),
    });
  },

  async delete(_id, olds) {
    await onEveryHost(olds.hosts, `delete image ${olds.imageName}`, (h) =>
      removeFromHost(olds.imageName, h, ownerIn(olds)),
    );
  },
});

export const imageProvider = image.provider;

/** Resolves a relative localPath against the program's folder (in the program, not the provider). */
function resolveLocal(
  src: pulumi.Input<ImageSourceArgs> | undefined,
): pulumi.Input<ImageSourceArgs> | undefined {
  if (src === undefined) return undefined;
  return pulumi.output(src).apply((s) => {
    const nodePath: typeof import("node:path") = require("node:path");
    if (typeof s.localPath === "string" && s.localPath !== "" && !nodePath.isAbsolute(s.localPath)) {
      return { ...s, localPath: nodePath.resolve(s.localPath) };
    }
    return s;
  }) as pulumi.Input<ImageSourceArgs>;
}

/**
 * A Glance-style image in the store of every listed host (`pulumi-nodejs:dynamic/kvmlab:Image`).
 * The hosts output is secret as a whole: it carries the private keys delete needs.
 *
 * ```ts
 * const cirros = new Image("cirros", {
 *   hosts,
 *   source: { localPath: "images/cirros.qcow2", sha256: "…" },
 *   diskFormat: "qcow2",
 * });
 * const tiny = new Image("tiny", { hosts, kernel: { hostPath: "/boot/vmlinuz", sha256: "…" },
 *   ramdisk: { hostPath: "/boot/initrd.img", sha256: "…" }, kernelCmdline: "console=ttyS0" });
 * ```
 */
export class Image extends KvmlabResource<ImageInputs, ImageOutputs> {
  declare readonly imageName: pulumi.Output<string>;
  declare readonly format: pulumi.Output<"qcow2" | "raw" | "kernel">;
  declare readonly diskFormat: pulumi.Output<"qcow2" | "raw" | "">;
  declare readonly storeDir: pulumi.Output<string>;
  declare readonly diskPath: pulumi.Output<string>;
  declare readonly kernelPath: pulumi.Output<string>;
  declare readonly ramdiskPath: pulumi.Output<string>;
  declare readonly paths: pulumi.Output<Record<string, { disk: string; kernel: string; ramdisk: string }>>;
  declare readonly sha256: pulumi.Output<string>;
  declare readonly sizeBytes: pulumi.Output<number>;
  declare readonly virtualSizeBytes: pulumi.Output<number>;
  declare readonly files: pulumi.Output<Partial<Record<ImageRole, ImageFile>>>;
  declare readonly kernelCmdline: pulumi.Output<string>;
  declare readonly minDiskGiB: pulumi.Output<number>;
  declare readonly minRamMiB: pulumi.Output<number>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly realized: pulumi.Output<Record<string, ImageHostState>>;
  declare readonly hosts: pulumi.Output<HostConnection[]>;

  constructor(name: string, args: ImageArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(
      image,
      name,
      {
        ...args,
        imageName: args.imageName ?? name,
        source: resolveLocal(args.source),
        kernel: resolveLocal(args.kernel),
        ramdisk: resolveLocal(args.ramdisk),
      },
      opts,
    );
  }
}
