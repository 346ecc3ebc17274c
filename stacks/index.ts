/**
 * The lab program: `pulumi up` of a lab definition. Stack config `lab` names the file (default
 * three-tier-sandbox.yaml beside this program); `kvmlab validate` rules apply first, and every
 * problem is reported with its YAML path.
 *
 *   npm run build
 *   cd stacks && pulumi stack init dev && pulumi config set lab three-tier-sandbox.yaml && pulumi up
 *   npm run engine -- up stacks --config lab=stacks/three-tier-sandbox.yaml     (the test harness)
 *
 * Hosts: stack config `kvmlab:hosts` if set; else the lab's `hosts` (private keys from their
 * secret references: `privateKey: { secret: "kvmlab:hostKey" }` reads the stack secret
 * kvmlab:hostKey); else the running `kvmlab sandbox` (instance `kvmlab:sandboxInstance`, else
 * $KVMLAB_SANDBOX_INSTANCE, else "default"). Every other secret reference reads its stack secret.
 *
 * `kvmlab render <file>` writes exactly the files this program hands the providers (same
 * addresses, UUIDs, MACs, configs): see docs/lab-definition.md and docs/three-tier.md.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { resolveHosts, type HostSpec } from "../components/hosts";
import { applyLab, labTopology } from "./program";
import { readSandboxStatus } from "../components/sandbox";
import { formatIssues, parseLab } from "../lab/parse";

const config = new pulumi.Config();
const kvmlabConfig = new pulumi.Config("kvmlab");
const labPath = config.get("lab") ?? "three-tier-sandbox.yaml";
const programDir = path.resolve(__dirname, "..", "..", "stacks");
const candidates = path.isAbsolute(labPath)
  ? [labPath]
  : [process.cwd(), programDir, path.dirname(programDir)].map((d) => path.resolve(d, labPath));
const file = candidates.find((f) => fs.existsSync(f));
if (file === undefined)
  throw new Error(
    `lab: ${labPath} not found (looked at ${candidates.join(", ")}); set stack config lab to a lab definition`,
  );
const { lab, issues } = parseLab(fs.readFileSync(file, "utf8"));
if (lab === null)
  throw new Error(`${formatIssues(file, issues)}\n${file}: ${issues.length} problem(s); nothing applied`);

/** A secret reference's value: `kvmlab:hostKey` → the stack secret kvmlab:hostKey. */
function secret(key: string): pulumi.Output<string> {
  const i = key.indexOf(":");
  return i < 0
    ? config.requireSecret(key)
    : new pulumi.Config(key.slice(0, i)).requireSecret(key.slice(i + 1));
}

const sandboxInstance =
  kvmlabConfig.get("sandboxInstance") ?? process.env.KVMLAB_SANDBOX_INSTANCE ?? "default";
let hosts: HostSpec[];
if (kvmlabConfig.get("hosts") === undefined && lab.hosts.length > 0) {
  hosts = lab.hosts.map((h) => ({
    name: h.name,
    address: h.address,
    port: h.port,
    user: h.user,
    ...(h.privateKey !== null ? { privateKey: secret(h.privateKey.secret) } : {}),
    ...(h.privateKeyPath !== null
      ? { privateKeyPath: h.privateKeyPath.replace(/^~(?=\/)/, process.env.HOME ?? "~") }
      : {}),
    hostKey: h.hostKey,
  }));
} else {
  // kvmlab:hosts, else the sandbox: what every component resolves.
  const resolved = resolveHosts(undefined, { sandboxInstance });
  const status = resolved.source === "sandbox" ? readSandboxStatus(sandboxInstance) : undefined;
  hosts = resolved.hosts.map((h, i) => ({
    name: h.name as string,
    address: h.address as string,
    port: h.port as number | undefined,
    user: h.user as string | undefined,
    privateKey: h.privateKey,
    hostKey: h.hostKey as string | undefined,
    uplink: (h.uplink as string | undefined) ?? status?.hosts[i].uplink,
    tunnelAddress: (h.tunnelAddress as string | undefined) ?? status?.hosts[i].tunnelAddress,
  }));
}
const sandbox = readSandboxStatus(sandboxInstance);
const out = applyLab(lab, { hosts, sandbox, secret });

const app = Object.values(out.apps)[0];
/** The first app's web URL (http://<web floating IP>/). */
export const webUrl = app?.webUrl ?? "";
/** The first app's bastion floating IP. */
export const bastionAddress = app?.bastionAddress ?? "";
/** Server name → an ssh command line (through the bastion with ProxyJump). */
export const sshCommands = app?.sshCommands ?? {};
/** Server name → `vnc://<host>:<port>` and `kvmlab console …` (a noVNC URL with a token). */
export const consoleUrls = pulumi.all(
  Object.fromEntries(Object.entries(out.servers).map(([n, s]) => [n, s.consoleUrl])),
);
export const consoleCommands = pulumi.all(
  Object.fromEntries(Object.entries(out.servers).map(([n, s]) => [n, s.consoleCommand])),
);
export const floatingIps = pulumi.all(out.floatingIps);
export const serverAddresses = pulumi.all(
  Object.fromEntries(Object.entries(out.servers).map(([n, s]) => [n, s.ip])),
);
/**
 * Autoscale group → its size and members in service as its agent last reported them (`refresh`
 * updates them; `kvmlab asg status <group>` asks the hosts now).
 */
export const autoscaleGroups = pulumi.all(
  Object.fromEntries(
    Object.entries(out.groups).map(([n, g]) => [
      n,
      pulumi
        .all([g.currentSize, g.inService])
        .apply(([currentSize, inService]) => ({ currentSize, inService })),
    ]),
  ),
);
export const labFile = file;
/** The topology `kvmlab graph` draws from `pulumi stack output --json` (docs/graph.md). */
export const topology = labTopology(lab, hosts, out);
