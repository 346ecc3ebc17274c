/**
 * The guest test image: a Debian kernel and a busybox initramfs, built offline from Debian
 * packages and cached in /var/cache/kvmlab/sandbox/image/<kernel version>-<content hash>/:
 *
 *   vmlinux    uncompressed ELF kernel (PVH direct boot: the fastest under TCG)
 *   vmlinuz    the distribution's bzImage (for boot loaders that want it)
 *   initrd.gz  busybox + /init and CGI scripts (cli/sandbox/guestInit.ts) + virtio/e1000/ACPI
 *              button modules + dropbear and dropbearkey with their shared libraries
 *
 * The kernel comes from `apt-get download linux-image-<version>-amd64`, the package the running
 * Debian release's `linux-image-amd64` depends on; busybox from the installed busybox-static;
 * dropbear from the installed dropbear-bin (its libraries found with ldd). The guest makes its SSH
 * host key at boot, so no two guests share one.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import * as zlib from "node:zlib";
import { SandboxError, run, runScript } from "./exec";
import {
  GUEST_BINARIES,
  GUEST_CMDLINE,
  GUEST_FILES,
  GUEST_INIT,
  GUEST_MODULES,
  UDHCPC_SCRIPT,
} from "./guestInit";
import { SANDBOX_RUN_ROOT } from "./status";

export interface GuestImage {
  kernel: string;
  kernelCompressed: string;
  ramdisk: string;
  kernelVersion: string;
  cmdline: string;
  /** True when this call built the image; false when it came from the cache. */
  built: boolean;
}

const BUSYBOX = "/bin/busybox";
const LIKELY_DEPENDENCIES = [
  "virtio",
  "virtio_ring",
  "virtio_pci_modern_dev",
  "virtio_pci_legacy_dev",
  "failover",
  "net_failover",
];
const KERNEL_PACKAGE_PATTERN = /^linux-image-(\d+\.\d+\.\d+-\d+-amd64)$/;

/** The kernel package the running release's linux-image-amd64 points at, from the local apt lists. */
export async function currentKernelPackage(): Promise<string | undefined> {
  const res = await run("apt-cache", ["depends", "--no-recommends", "--no-suggests", "linux-image-amd64"], {
    allowFailure: true,
    timeoutMs: 30_000,
  });
  for (const line of res.stdout.split("\n")) {
    const m = /^\s*Depends:\s*(linux-image-\S+)\s*$/.exec(line);
    if (m && KERNEL_PACKAGE_PATTERN.test(m[1])) return m[1];
  }
  return undefined;
}

/** Changes whenever apt's package lists change (apt-cache takes seconds here: no pkgcache.bin). */
function aptListsKey(): string {
  const dir = "/var/lib/apt/lists";
  if (!fs.existsSync(dir)) return "none";
  let newest = 0;
  let count = 0;
  for (const f of fs.readdirSync(dir)) {
    if (!f.endsWith("Packages") && !f.endsWith("Release")) continue;
    newest = Math.max(newest, fs.statSync(path.join(dir, f)).mtimeMs);
    count++;
  }
  return `${count}:${newest}`;
}

/** `currentKernelPackage`, remembered in the cache until apt's lists change. */
async function cachedKernelPackage(cacheRoot: string): Promise<string | undefined> {
  const file = path.join(cacheRoot, "kernel-package.json");
  const key = aptListsKey();
  try {
    const saved = JSON.parse(fs.readFileSync(file, "utf8")) as { key: string; pkg: string };
    if (saved.key === key && KERNEL_PACKAGE_PATTERN.test(saved.pkg)) return saved.pkg;
  } catch {
    // No usable record: ask apt.
  }
  const pkg = await currentKernelPackage();
  if (pkg !== undefined) {
    fs.mkdirSync(cacheRoot, { recursive: true });
    fs.writeFileSync(file, JSON.stringify({ key, pkg }) + "\n");
  }
  return pkg;
}

/** A file copied from this machine into the initramfs: its path there and its contents. */
interface HostFile {
  /** Path inside the initramfs, without the leading slash. */
  name: string;
  data: Buffer;
}

/**
 * GUEST_BINARIES and every shared library they load (from ldd), each at the path ldd names
 * (symbolic links followed: the initramfs gets the file's contents under the linked name).
 */
export async function guestBinaryFiles(binaries: readonly string[] = GUEST_BINARIES): Promise<HostFile[]> {
  const paths = new Set<string>();
  for (const bin of binaries) {
    if (!fs.existsSync(bin)) {
      throw new SandboxError(
        `${bin} is missing (the guest image runs dropbear for SSH); install with: apt-get install -y --no-install-recommends dropbear-bin`,
      );
    }
    paths.add(bin);
    const res = await run("ldd", [bin], { allowFailure: true, timeoutMs: 30_000 });
    if (res.code !== 0)
      throw new SandboxError(`ldd ${bin} failed: ${res.stderr.trim() || `exit ${res.code}`}`);
    for (const line of res.stdout.split("\n")) {
      if (/not found/.test(line))
        throw new SandboxError(`${bin} needs a library this machine lacks: ${line.trim()}`);
      const m = /(?:=>\s*|^\s*)(\/\S+)\s+\(0x/.exec(line);
      if (m) paths.add(m[1]);
    }
  }
  return [...paths].sort().map((p) => ({ name: p.slice(1), data: fs.readFileSync(fs.realpathSync(p)) }));
}

/** A hash of everything that goes into the initramfs besides the kernel, so edits rebuild it. */
function contentHash(binaries: readonly HostFile[]): string {
  const h = createHash("sha256");
  h.update(GUEST_INIT).update(UDHCPC_SCRIPT).update(GUEST_MODULES.join(","));
  for (const f of GUEST_FILES) h.update(`${f.path}:${f.mode}:${f.text}`);
  h.update(fs.readFileSync(BUSYBOX));
  for (const f of binaries) h.update(f.name).update(f.data);
  return h.digest("hex").slice(0, 12);
}

function imagePaths(dir: string): Pick<GuestImage, "kernel" | "kernelCompressed" | "ramdisk"> {
  return {
    kernel: path.join(dir, "vmlinux"),
    kernelCompressed: path.join(dir, "vmlinuz"),
    ramdisk: path.join(dir, "initrd.gz"),
  };
}

/** Returns the cached image or builds it. `progress` gets one line per slow step. */
export async function ensureGuestImage(
  cacheRoot: string,
  progress: (line: string) => void,
): Promise<GuestImage> {
  const imageRoot = path.join(cacheRoot, "image");
  const debDir = path.join(cacheRoot, "debs");
  const binaries = await guestBinaryFiles();
  const hash = contentHash(binaries);
  let pkg = await cachedKernelPackage(cacheRoot);
  if (pkg === undefined) {
    // Offline or no apt lists: fall back to a kernel package downloaded earlier.
    const cached = fs.existsSync(debDir)
      ? fs
          .readdirSync(debDir)
          .map((f) => /^(linux-image-\d+\.\d+\.\d+-\d+-amd64)_.*\.deb$/.exec(f)?.[1])
          .filter((p): p is string => p !== undefined)
          .sort()
      : [];
    pkg = cached.pop();
    if (pkg === undefined) {
      throw new SandboxError(
        "cannot find the Debian kernel package for the guest image (apt-cache knows no linux-image-amd64); run: apt-get update",
      );
    }
  }
  const kernelVersion = KERNEL_PACKAGE_PATTERN.exec(pkg)![1];
  const dir = path.join(imageRoot, `${kernelVersion}-${hash}`);
  const paths = imagePaths(dir);
  const result = { ...paths, kernelVersion, cmdline: GUEST_CMDLINE };
  if (fs.existsSync(path.join(dir, "manifest.json"))) return { ...result, built: false };

  fs.mkdirSync(imageRoot, { recursive: true });
  fs.mkdirSync(debDir, { recursive: true });
  const deb = await ensureKernelDeb(debDir, pkg, progress);
  const work = fs.mkdtempSync(path.join(imageRoot, `.build-${process.pid}-`));
  try {
    let t = Date.now();
    const tree = path.join(work, "deb");
    fs.mkdirSync(tree);
    await extractFromDeb(deb, tree, [
      "./boot/vmlinuz-*",
      "*/modules.builtin",
      // The wanted modules and their usual dependencies in one pass (each extra pass costs seconds).
      ...[...GUEST_MODULES, ...LIKELY_DEPENDENCIES].map((m) => `*/${m}.ko*`),
    ]);
    const modulesDir = path.join(tree, "lib", "modules", kernelVersion);
    const vmlinuzSrc = path.join(tree, "boot", `vmlinuz-${kernelVersion}`);
    if (!fs.existsSync(vmlinuzSrc) || !fs.existsSync(modulesDir)) {
      throw new SandboxError(
        `${path.basename(deb)} has no vmlinuz-${kernelVersion} or modules; delete it and retry`,
      );
    }
    const modules = await collectModules(deb, tree, modulesDir);
    progress(`guest image: extracted kernel ${kernelVersion} and ${modules.length} modules (${secs(t)})`);

    t = Date.now();
    const out = path.join(work, "image");
    fs.mkdirSync(out);
    const outPaths = imagePaths(out);
    fs.copyFileSync(vmlinuzSrc, outPaths.kernelCompressed);
    fs.writeFileSync(outPaths.kernel, await decompressKernel(fs.readFileSync(vmlinuzSrc)));
    fs.writeFileSync(outPaths.ramdisk, buildInitramfs(modules, binaries));
    fs.writeFileSync(
      path.join(out, "manifest.json"),
      JSON.stringify(
        { kernelPackage: pkg, kernelVersion, modules: modules.map((m) => m.name), hash },
        null,
        2,
      ) + "\n",
    );
    progress(`guest image: built vmlinux and initrd.gz (${secs(t)})`);
    try {
      fs.renameSync(out, dir);
    } catch (err) {
      // Another `up` (other instance) built the same image at the same time: keep theirs.
      if (!fs.existsSync(path.join(dir, "manifest.json"))) throw err;
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  pruneImages(imageRoot, dir);
  return { ...result, built: true };
}

/** Removes images other than `keep` that no running instance's status names. */
function pruneImages(imageRoot: string, keep: string): void {
  const runRoot = SANDBOX_RUN_ROOT;
  const inUse = new Set<string>([path.basename(keep)]);
  if (fs.existsSync(runRoot)) {
    for (const inst of fs.readdirSync(runRoot)) {
      try {
        const text = fs.readFileSync(path.join(runRoot, inst, "status.json"), "utf8");
        const kernel = (JSON.parse(text) as { image?: { kernel?: string } }).image?.kernel;
        if (kernel !== undefined) inUse.add(path.basename(path.dirname(kernel)));
      } catch {
        // Not an instance, or not up.
      }
    }
  }
  for (const d of fs.readdirSync(imageRoot)) {
    const full = path.join(imageRoot, d);
    // An hour's grace: an `up` running right now may have picked that image without publishing it yet.
    if (d.startsWith(".") || inUse.has(d) || Date.now() - fs.statSync(full).mtimeMs < 3_600_000) continue;
    fs.rmSync(full, { recursive: true, force: true });
  }
}

async function ensureKernelDeb(
  debDir: string,
  pkg: string,
  progress: (line: string) => void,
): Promise<string> {
  const find = () => fs.readdirSync(debDir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith(".deb"));
  const existing = find();
  if (existing !== undefined) return path.join(debDir, existing);
  const t = Date.now();
  const tmp = fs.mkdtempSync(path.join(debDir, `.download-${process.pid}-`));
  try {
    const res = await run("apt-get", ["download", "-q", pkg], {
      cwd: tmp,
      timeoutMs: 600_000,
      allowFailure: true,
    });
    const got = fs.readdirSync(tmp).find((f) => f.endsWith(".deb"));
    if (res.code !== 0 || got === undefined) {
      const why = res.stderr.split("\n").find((l) => l.startsWith("E:")) ?? `exit ${res.code}`;
      throw new SandboxError(
        `apt-get download ${pkg} failed (${why.trim()}); check the Debian mirror in /etc/apt/sources.list and run: apt-get update`,
      );
    }
    fs.renameSync(path.join(tmp, got), path.join(debDir, got));
    progress(`guest image: downloaded ${got} (${secs(t)})`);
    return path.join(debDir, got);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Extracts members matching the patterns; patterns that match nothing are not an error here. */
async function extractFromDeb(deb: string, dest: string, patterns: readonly string[]): Promise<void> {
  await runScript(
    'deb=$1; dest=$2; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dest" --wildcards "$@" 2>/dev/null; exit 0',
    [deb, dest, ...patterns],
    { timeoutMs: 300_000 },
  );
}

interface GuestModule {
  name: string;
  /** Uncompressed .ko contents. */
  data: Buffer;
}

function moduleName(file: string): string {
  return path
    .basename(file)
    .replace(/\.ko(\.(xz|zst|gz))?$/, "")
    .replace(/-/g, "_");
}

function listModuleFiles(dir: string): Map<string, string> {
  const found = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const full = path.join(d, e.name);
      if (e.isDirectory()) walk(full);
      else if (/\.ko(\.(xz|zst|gz))?$/.test(e.name)) found.set(moduleName(e.name), full);
    }
  };
  walk(dir);
  return found;
}

async function readModule(file: string): Promise<Buffer> {
  if (file.endsWith(".ko")) return fs.readFileSync(file);
  if (file.endsWith(".gz")) return zlib.gunzipSync(fs.readFileSync(file));
  const tool = file.endsWith(".xz") ? ["xz", "-dc"] : ["zstd", "-dcq"];
  const res = await runBinary(tool[0], [...tool.slice(1), file]);
  return res;
}

/** `depends=` from a module's .modinfo section. */
export function moduleDepends(ko: Buffer): string[] {
  const marker = Buffer.from("\0depends=");
  const at = ko.indexOf(marker);
  if (at < 0) return [];
  const start = at + marker.length;
  const end = ko.indexOf(0, start);
  const value = ko.subarray(start, end < 0 ? undefined : end).toString("latin1");
  return value
    .split(",")
    .map((s) => s.trim().replace(/-/g, "_"))
    .filter((s) => s !== "");
}

/** The wanted modules plus their dependencies, dependencies first; built-in ones are skipped. */
async function collectModules(deb: string, tree: string, modulesDir: string): Promise<GuestModule[]> {
  const builtinPath = path.join(modulesDir, "modules.builtin");
  const builtin = new Set(
    fs.existsSync(builtinPath)
      ? fs.readFileSync(builtinPath, "utf8").split("\n").filter(Boolean).map(moduleName)
      : [],
  );
  const ordered: GuestModule[] = [];
  const visiting = new Set<string>();
  const done = new Set<string>();
  let files = listModuleFiles(modulesDir);
  const visit = async (name: string): Promise<void> => {
    if (done.has(name) || builtin.has(name)) return;
    if (visiting.has(name)) throw new SandboxError(`module dependency cycle at ${name}`);
    visiting.add(name);
    let file = files.get(name);
    if (file === undefined) {
      await extractFromDeb(deb, tree, [`*/${name}.ko*`, `*/${name.replace(/_/g, "-")}.ko*`]);
      files = listModuleFiles(modulesDir);
      file = files.get(name);
      if (file === undefined)
        throw new SandboxError(`the kernel package has no module ${name} (needed by the guest image)`);
    }
    const data = await readModule(file);
    for (const dep of moduleDepends(data)) await visit(dep);
    visiting.delete(name);
    done.add(name);
    ordered.push({ name, data });
  };
  for (const m of GUEST_MODULES) await visit(m);
  return ordered;
}

function runBinary(cmd: string, args: readonly string[], input?: Buffer): Promise<Buffer> {
  const { spawn } = require("node:child_process") as typeof import("node:child_process");
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.resume();
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new SandboxError(`cannot run ${cmd}: ${e.message}`));
    });
    child.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(out));
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(input ?? Buffer.alloc(0));
  });
}

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/** The ELF vmlinux inside a bzImage: find the compressed payload by its magic and decompress it. */
export async function decompressKernel(bzImage: Buffer): Promise<Buffer> {
  const formats: { magic: Buffer; cmd: string; args: string[] }[] = [
    { magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), cmd: "xz", args: ["-dc", "--single-stream"] },
    { magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), cmd: "zstd", args: ["-dcq"] },
    { magic: Buffer.from([0x1f, 0x8b, 0x08]), cmd: "gzip", args: ["-dc"] },
  ];
  for (const f of formats) {
    let at = bzImage.indexOf(f.magic);
    for (let tries = 0; at >= 0 && tries < 4; tries++) {
      const out = await runBinary(f.cmd, f.args, bzImage.subarray(at));
      if (out.length > 1024 * 1024 && out.subarray(0, 4).equals(ELF_MAGIC)) return out;
      at = bzImage.indexOf(f.magic, at + 1);
    }
  }
  throw new SandboxError("could not find an uncompressed ELF kernel inside vmlinuz (unknown compression)");
}

interface CpioEntry {
  name: string;
  mode: number;
  data?: Buffer;
  rdev?: [number, number];
}

/** A gzip'd initramfs in the "newc" cpio format, with fixed owners and times (reproducible). */
function buildInitramfs(modules: GuestModule[], binaries: readonly HostFile[]): Buffer {
  const DIR = 0o040755;
  const FILE = 0o100644;
  const EXEC = 0o100755;
  const entries: CpioEntry[] = [];
  for (const d of [
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "proc",
    "sys",
    "dev",
    "etc",
    "lib",
    "lib/modules",
    "tmp",
    "run",
    "root",
    "var",
    "www",
  ]) {
    entries.push({ name: d, mode: DIR });
  }
  const dirs = new Set(entries.map((e) => e.name));
  /** Adds the parent folders of `name` that are not in the archive yet (parents first). */
  const parents = (name: string) => {
    const parts = name.split("/").slice(0, -1);
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join("/");
      if (!dirs.has(d)) {
        dirs.add(d);
        entries.push({ name: d, mode: DIR });
      }
    }
  };
  entries.push({ name: "dev/console", mode: 0o020600, rdev: [5, 1] });
  entries.push({ name: "bin/busybox", mode: EXEC, data: fs.readFileSync(BUSYBOX) });
  entries.push({ name: "init", mode: EXEC, data: Buffer.from(GUEST_INIT) });
  entries.push({ name: "etc/udhcpc.script", mode: EXEC, data: Buffer.from(UDHCPC_SCRIPT) });
  entries.push({
    name: "etc/modules-order",
    mode: FILE,
    data: Buffer.from(modules.map((m) => m.name).join("\n") + "\n"),
  });
  entries.push({ name: "etc/hostname", mode: FILE, data: Buffer.from("lab\n") });
  for (const m of modules) entries.push({ name: `lib/modules/${m.name}.ko`, mode: FILE, data: m.data });
  for (const f of GUEST_FILES) {
    parents(f.path);
    entries.push({ name: f.path, mode: 0o100000 | f.mode, data: Buffer.from(f.text) });
  }
  for (const f of binaries) {
    parents(f.name);
    entries.push({ name: f.name, mode: EXEC, data: f.data });
  }
  return zlib.gzipSync(cpioNewc(entries), { level: 9 });
}

function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const hex = (n: number) => n.toString(16).padStart(8, "0");
  let ino = 1;
  const add = (e: CpioEntry) => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(e.name + "\0");
    const header =
      "070701" +
      [
        ino++,
        e.mode,
        0,
        0,
        e.mode & 0o040000 ? 2 : 1,
        0,
        data.length,
        0,
        0,
        e.rdev?.[0] ?? 0,
        e.rdev?.[1] ?? 0,
        name.length,
        0,
      ]
        .map(hex)
        .join("");
    parts.push(Buffer.from(header, "latin1"), name, pad4(110 + name.length), data, pad4(data.length));
  };
  for (const e of entries) add(e);
  add({ name: "TRAILER!!!", mode: 0 });
  return Buffer.concat(parts);
}

function secs(since: number): string {
  return `${((Date.now() - since) / 1000).toFixed(1)} s`;
}
