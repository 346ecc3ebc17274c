/**
 * Checks made before `kvmlab sandbox up` touches anything: each failure is one line naming the
 * cause and the fix.
 */
import * as fs from "node:fs";
import { SandboxError, run } from "./exec";

/** Debian packages the sandbox runs (keep in sync with .ci/run and docs/sandbox.md). */
export const REQUIRED_PACKAGES = [
  "iproute2",
  "util-linux",
  "mount",
  "libvirt-daemon",
  "libvirt-daemon-driver-qemu",
  "libvirt-clients",
  "qemu-system-x86",
  "openvswitch-switch",
  "openssh-server",
  "openssh-client",
  "busybox-static",
  "dropbear-bin",
  "xz-utils",
  "zstd",
  // live migration over TLS makes its certificates with openssl on the hosts
  "openssl",
] as const;

export function installLine(packages: readonly string[]): string {
  return `apt-get install -y --no-install-recommends ${packages.join(" ")}`;
}

/**
 * Everything `up` needs from the machine; throws a SandboxError naming the first problem.
 * `rerun` is the command line to suggest when not root.
 */
export async function preflight(rerun = "sudo npx kvmlab sandbox up"): Promise<void> {
  if (process.platform !== "linux") {
    throw new SandboxError("needs Linux (network namespaces, libvirt, Open vSwitch)");
  }
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    throw new SandboxError(
      `must run as root (it creates network namespaces, mounts and daemons); run: ${rerun}`,
    );
  }
  if (!fs.existsSync("/usr/bin/dpkg-query")) {
    throw new SandboxError("needs a Debian-based machine (dpkg-query not found)");
  }
  const missing = await missingPackages(REQUIRED_PACKAGES);
  if (missing.length > 0) {
    throw new SandboxError(
      `missing Debian package${missing.length > 1 ? "s" : ""} ${missing.join(", ")}; install with: ${installLine(missing)}`,
    );
  }
  if (!fs.existsSync("/dev/net/tun")) {
    throw new SandboxError(
      "/dev/net/tun is missing (QEMU needs it for guest NICs); load the module with: modprobe tun (in a container, pass --device /dev/net/tun)",
    );
  }
  const filesystems = fs.readFileSync("/proc/filesystems", "utf8");
  if (!/\boverlay\b/.test(filesystems)) {
    throw new SandboxError(
      "the kernel has no overlay filesystem (hosts need private /etc and /var); load it with: modprobe overlay",
    );
  }
  if (process.arch !== "x64") {
    throw new SandboxError(`builds amd64 guests and needs an x86-64 machine (this is ${process.arch})`);
  }
}

export async function missingPackages(packages: readonly string[]): Promise<string[]> {
  const res = await run("dpkg-query", ["-W", "-f", "${Package} ${db:Status-Status}\n", ...packages], {
    allowFailure: true,
  });
  const installed = new Set(
    res.stdout
      .split("\n")
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f[1] === "installed")
      .map((f) => f[0]),
  );
  return packages.filter((p) => !installed.has(p));
}
