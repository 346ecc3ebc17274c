/**
 * single-server: one kvmlab server, the "hello world" of the lab.
 *
 * With a `kvmlab sandbox` running and no `kvmlab:hosts` set, it targets the sandbox (instance
 * from `kvmlab:sandboxInstance`, else $KVMLAB_SANDBOX_INSTANCE, else "default"): the sandbox's
 * guest test image, its external network and its hosts. With `kvmlab:hosts` set it targets
 * those hosts, and the image and network come from the config keys below.
 *
 * It imports kvmlab as a package (`import * as kvmlab from "kvmlab"`): in this repository
 * `npm ci` links node_modules/kvmlab to the repository itself; elsewhere `npm install` in this
 * folder installs it (package.json, docs/package.md).
 *
 * Stack config (all optional):
 *   flavor            m1.tiny (1 vCPU, 128 MiB, the default) or m1.small (1 vCPU, 192 MiB);
 *                     changing it resizes the server (cold: stop, redefine, start)
 *   host              pin the server to this host; changing it live-migrates the server
 *   imageKernel, imageRamdisk          kernel and initramfs files (default: the sandbox's)
 *   externalCidr, externalGateway      the provider network (default: the sandbox's external one)
 *   poolStart, poolEnd                 addresses servers get (default: 20 from the sandbox's free range)
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as pulumi from "@pulumi/pulumi";
import * as kvmlab from "kvmlab";

const config = new pulumi.Config();
const kvmlabConfig = new pulumi.Config("kvmlab");
const sandboxInstance =
  kvmlabConfig.get("sandboxInstance") ?? process.env.KVMLAB_SANDBOX_INSTANCE ?? "default";
const discovery = { sandboxInstance };
const { source, hosts } = kvmlab.resolveHosts(undefined, discovery);
const sandbox: kvmlab.SandboxStatus | undefined =
  source === "sandbox" ? kvmlab.readSandboxStatus(sandboxInstance) : undefined;

function setting(key: string, fromSandbox: (s: kvmlab.SandboxStatus) => string): string {
  const v = config.get(key) ?? (sandbox ? fromSandbox(sandbox) : undefined);
  if (v === undefined)
    throw new Error(
      `set stack config ${key} (pulumi config set ${key} …): it has no default outside the sandbox`,
    );
  return v;
}

/** The nth address after `ip`. */
function plus(ip: string, n: number): string {
  const v = ip.split(".").reduce((a, o) => a * 256 + Number(o), 0) + n;
  return [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join(".");
}

function fileSource(path: string): { localPath: string; sha256: string } {
  return { localPath: path, sha256: crypto.createHash("sha256").update(fs.readFileSync(path)).digest("hex") };
}

const kernelPath = setting("imageKernel", (s) => s.image.kernel);
const ramdiskPath = setting("imageRamdisk", (s) => s.image.ramdisk);
const cidr = setting("externalCidr", (s) => s.external.cidr);
const gateway = setting("externalGateway", (s) => s.external.gateway);
const poolStart = setting("poolStart", (s) => s.external.allocationPool.start);
const poolEnd = setting("poolEnd", (s) => plus(s.external.allocationPool.start, 19));

// The raw Image resource (kvmlab.Image is the component that resolves hosts itself).
const image = new kvmlab.resources.Image("labimage", {
  hosts,
  kernel: fileSource(kernelPath),
  ramdisk: fileSource(ramdiskPath),
  kernelCmdline: sandbox?.image.cmdline ?? "console=ttyS0 quiet panic=-1",
});

const flavors = {
  "m1.tiny": new kvmlab.Flavor("m1-tiny", { flavorName: "m1.tiny", vcpus: 1, ramMiB: 128, hosts }),
  "m1.small": new kvmlab.Flavor("m1-small", { flavorName: "m1.small", vcpus: 1, ramMiB: 192, hosts }),
};
const flavorName = config.get("flavor") ?? "m1.tiny";
if (!(flavorName in flavors))
  throw new Error(
    `flavor: expected one of ${Object.keys(flavors).join(", ")}, got ${JSON.stringify(flavorName)}`,
  );

const key = new kvmlab.Keypair("operator", {});

const ext = new kvmlab.Network("ext", {
  kind: "provider",
  hostDiscovery: discovery,
  subnets: [{ name: "ext-v4", cidr, gateway, allocationPool: { start: poolStart, end: poolEnd } }],
});

const web = new kvmlab.Server("web1", {
  image,
  flavor: flavors[flavorName as keyof typeof flavors],
  keypair: key,
  ports: [{ network: ext, subnet: "ext-v4" }],
  // The sandbox guest takes its name from the kernel command line; DHCP gives the address.
  kernelCmdline: pulumi.interpolate`${image.kernelCmdline} lab.name=web1`,
  host: config.get("host"),
  readiness: { kind: "http", path: "/health", timeoutSec: 180 },
  hostDiscovery: discovery,
});

export const serverIp = web.ip;
export const serverHost = web.host;
export const consoleUrl = web.consoleUrl;
export const serverUuid = web.uuid;
export const hostSource = source;
