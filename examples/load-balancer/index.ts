/**
 * load-balancer: two servers behind an Octavia-style load balancer.
 *
 * A self-service network `lan` (10.60.0.0/24) spans the hosts; web1 and web2 boot the
 * sandbox's guest test image on it (each answers "hello from <name>" and /health); the load
 * balancer `web-lb` puts HAProxy in its own namespace on one host, with the VIP 10.60.0.50 on the
 * network's bridge, one HTTP listener on port 80, a ROUND_ROBIN pool with an HTTP health monitor.
 *
 * With a `kvmlab sandbox` running and no `kvmlab:hosts` set it targets the sandbox (instance
 * from `kvmlab:sandboxInstance`, else $KVMLAB_SANDBOX_INSTANCE, else "default"), with no edits.
 * The VIP is reachable from the network (a server or namespace on `lan`) and, through the
 * floating IP on the VIP, from the sandbox's external network: a router `r1` on the first host
 * has its gateway on the external network `ext` and a leg on `lan-v4` (the subnet's gateway, the
 * VIP's default route):
 *
 *   ip netns exec kvmlab-default-inet busybox wget -qO- http://$(pulumi stack output floatingIp)/
 *
 * Stack config (all optional):
 *   algorithm    ROUND_ROBIN (default), LEAST_CONNECTIONS or SOURCE_IP; a change is a reload
 *   persistence  "" (default), SOURCE_IP or HTTP_COOKIE; a change is a reload
 *   members      "web1,web2" (default): which servers are in the pool; a change drains and reloads
 *   host         pin the load balancer to this host (default: the host running the fewest)
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
const { hosts, source } = kvmlab.resolveHosts(undefined, discovery);
const sandbox = source === "sandbox" ? kvmlab.readSandboxStatus(sandboxInstance) : undefined;
if (sandbox === undefined)
  throw new Error("this example boots the sandbox's guest test image: start one with `kvmlab sandbox up`");

function fileSource(path: string): { localPath: string; sha256: string } {
  return { localPath: path, sha256: crypto.createHash("sha256").update(fs.readFileSync(path)).digest("hex") };
}

const image = new kvmlab.resources.Image("labimage", {
  hosts,
  kernel: fileSource(sandbox.image.kernel),
  ramdisk: fileSource(sandbox.image.ramdisk),
  kernelCmdline: sandbox.image.cmdline,
});
const flavor = new kvmlab.Flavor("m1-tiny", { flavorName: "m1.tiny", vcpus: 1, ramMiB: 128, hosts });
const key = new kvmlab.Keypair("operator", {});

const lan = new kvmlab.Network("lan", {
  kind: "selfservice",
  hostDiscovery: discovery,
  subnets: [{ name: "lan-v4", cidr: "10.60.0.0/24" }],
});

// The external (provider) network of the sandbox, and a router between it and lan.
const ext = new kvmlab.Network("ext", {
  kind: "provider",
  hostDiscovery: discovery,
  subnets: [
    {
      name: "ext-v4",
      cidr: sandbox.external.cidr,
      gateway: sandbox.external.gateway,
      allocationPool: sandbox.external.allocationPool,
      enableDhcp: false,
    },
  ],
});
const extSub = ext.subnets["ext-v4"];
const lanSub = lan.subnets["lan-v4"];
const router = new kvmlab.Router("r1", {
  hosts,
  host: hosts[0].name as string,
  external: {
    subnetName: extSub.subnetName,
    networkName: ext.networkName,
    bridge: ext.bridge,
    driver: ext.network.driver,
    cidr: extSub.cidr,
    address: sandbox.external.allocationPool.start,
    gateway: sandbox.external.gateway,
    mtu: ext.network.mtu,
    ipamHost: extSub.dhcpHost,
  },
  interfaces: [
    {
      subnetName: lanSub.subnetName,
      networkName: lan.networkName,
      bridge: lan.bridge,
      driver: lan.network.driver,
      cidr: lanSub.cidr,
      address: lanSub.gateway,
      mtu: lan.network.mtu,
    },
  ],
});

const servers = ["web1", "web2"].map(
  (name, i) =>
    new kvmlab.Server(name, {
      image,
      flavor,
      keypair: key,
      ports: [{ network: lan, subnet: "lan-v4", fixedIp: `10.60.0.${11 + i}` }],
      kernelCmdline: pulumi.interpolate`${image.kernelCmdline} lab.name=${name}`,
      host: hosts[i % hosts.length].name as string,
      readiness: { kind: "http", path: "/health", timeoutSec: 180 },
      hostDiscovery: discovery,
    }),
);

const algorithm = (config.get("algorithm") ?? "ROUND_ROBIN") as "ROUND_ROBIN";
const persistence = config.get("persistence") ?? "";
const wanted = (config.get("members") ?? "web1,web2").split(",").filter((m) => m !== "");
const members = servers
  .map((s, i) => ({ name: `web${i + 1}`, address: s.ip, protocolPort: 80 }))
  .filter((m) => wanted.includes(m.name));

const lb = new kvmlab.LoadBalancer("web-lb", {
  network: lan,
  subnet: "lan-v4",
  vipAddress: "10.60.0.50",
  host: config.get("host"),
  hostDiscovery: discovery,
  floatingIp: { router, external: ext, subnet: "ext-v4" },
  listeners: [
    {
      name: "http",
      protocol: "HTTP",
      protocolPort: 80,
      defaultPool: {
        name: "web",
        protocol: "HTTP",
        lbAlgorithm: algorithm,
        sessionPersistence: persistence === "" ? null : { type: persistence as "SOURCE_IP" | "HTTP_COOKIE" },
        healthMonitor: { type: "HTTP", delay: 2, timeout: 1, maxRetries: 1, urlPath: "/health" },
        members,
      },
    },
  ],
});

export const vip = lb.vipAddress;
export const floatingIp = lb.floatingIp;
export const vipPort = lb.vipPort;
export const lbHost = lb.host;
export const provisioningStatus = lb.provisioningStatus;
export const operatingStatus = lb.operatingStatus;
export const memberStatus = lb.memberStatus;
export const memberIps = servers.map((s) => s.ip);
