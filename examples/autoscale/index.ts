/**
 * autoscale: a Heat-style autoscale group behind an Octavia-style load balancer, scaled on CPU
 * by its agent between `pulumi up`s (docs/autoscale.md).
 *
 * A self-service network `lan` (10.61.0.0/24) spans the hosts. The group `web` has min 1, max 3:
 * every slot web-0, web-1, web-2 is rendered here (domain XML, seed, MAC, address), defined on
 * its host but started only when the agent scales out. The load balancer `web-lb` (VIP
 * 10.61.0.50, floating IP on the sandbox's external network through router `r1`) has every slot
 * in its pool; the agent keeps the ones not in service in `maint`.
 *
 * Policies (Heat's OS::Heat::ScalingPolicy with an Aodh-style CPU alarm):
 *   scale_out  +1 member when the members' average CPU is above `outThreshold` % over `periodSec`
 *   scale_in   -1 member when it is below `inThreshold` % over `periodSec` (oldest member first)
 *
 * With a `kvmlab sandbox` running and no `kvmlab:hosts` set it targets the sandbox, with no edits:
 *
 *   pulumi up
 *   ip netns exec kvmlab-default-inet busybox wget -qO- http://$(pulumi stack output floatingIp)/
 *   kvmlab asg status web
 *   kvmlab asg signal web scale_out          # Heat's signal URL, by hand
 *
 * Stack config (all optional): desired (1), min (1), max (3, at most 40: one fixed address per
 * slot from 10.61.0.10, below the VIP; lan-v4's dynamic pool is .100-.250), cooldown (60 s), periodSec (60 s),
 * outThreshold (50 %), inThreshold (15 %), interval (5 s: the agent's evaluation period), launchTag
 * ("": set it to roll a new kernel command line through the group, one member at a time: each
 * slot's Server is updated in place), launchUserData ("": set it to roll new user data through
 * the group: a new seed, so each slot's Server is replaced, still one member at a time).
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

// lan-v4's address plan: slots at .10 (SLOT_FIRST) up, below the VIP (.50); the dynamic pool above.
const SLOT_FIRST = 10;
const VIP_HOST = 50;
const LAN_POOL = { start: 100, end: 250 };
const MAX_SLOTS = VIP_HOST - SLOT_FIRST;
function lanAddress(host: number): string {
  return `10.61.0.${host}`;
}

const lan = new kvmlab.Network("lan", {
  kind: "selfservice",
  hostDiscovery: discovery,
  // Dynamic addresses (the DHCP port, an extra server) come from .100-.250 only: the slots'
  // fixed addresses (.10 up) and the VIP (.50) sit outside the pool, so nothing takes them first.
  subnets: [
    {
      name: "lan-v4",
      cidr: "10.61.0.0/24",
      allocationPool: { start: lanAddress(LAN_POOL.start), end: lanAddress(LAN_POOL.end) },
    },
  ],
});
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

const num = (k: string, d: number): number => config.getNumber(k) ?? d;
const periodSec = num("periodSec", 60);
const launchTag = config.get("launchTag") ?? "";
if (!/^[A-Za-z0-9._-]{0,32}$/.test(launchTag))
  throw new Error(
    `autoscale:launchTag: expected up to 32 letters, digits, '.', '_' or '-', got ${JSON.stringify(launchTag)}`,
  );
const launchUserData = config.get("launchUserData") ?? "";
if (!/^[A-Za-z0-9._-]{0,32}$/.test(launchUserData))
  throw new Error(
    `autoscale:launchUserData: expected up to 32 letters, digits, '.', '_' or '-', got ${JSON.stringify(launchUserData)}`,
  );
const max = num("max", 3);
// Each slot has a fixed address from .10 up, which must stay below the VIP (.50).
if (!Number.isInteger(max) || max < 1 || max > MAX_SLOTS)
  throw new Error(
    `autoscale:max: expected a whole number from 1 to ${MAX_SLOTS} (one fixed address per slot, ${lanAddress(SLOT_FIRST)}-${lanAddress(VIP_HOST - 1)}, below the VIP ${lanAddress(VIP_HOST)}), got ${max}`,
  );
const group = new kvmlab.AutoscaleGroup("web", {
  launch: {
    image,
    flavor,
    keypair: key,
    // A fixed address per slot (10.61.0.10, .11, …, outside lan-v4's pool): a slot whose Server is replaced (a launch
    // change of user data, image or ports) comes back on the address the agent's health check
    // and the load balancer's pool know (docs/autoscale.md "Launch changes").
    ports: [
      {
        network: lan,
        subnet: "lan-v4",
        fixedIps: Array.from({ length: max }, (_, i) => lanAddress(SLOT_FIRST + i)),
      },
    ],
    // launchTag: a launch change (a new kernel command line for every slot) that the group
    // rolls out one member at a time (docs/autoscale.md "Launch changes").
    // launchUserData: a launch change that replaces every slot's Server (new user data, a new
    // seed; the guest test image ignores it), rolled the same way.
    ...(launchUserData ? { userData: { runcmd: [["echo", `launch=${launchUserData}`]] } } : {}),
    kernelCmdline: (member) =>
      pulumi.interpolate`${image.kernelCmdline} lab.name=${member}${launchTag ? ` lab.rev=${launchTag}` : ""}`,
  },
  min: num("min", 1),
  max,
  desired: num("desired", num("min", 1)),
  cooldown: num("cooldown", 60),
  interval: num("interval", 5),
  policies: [
    {
      name: "scale_out",
      adjustmentType: "change_in_capacity",
      scalingAdjustment: 1,
      alarm: { comparison: "gt", threshold: num("outThreshold", 50), periodSec },
    },
    {
      name: "scale_in",
      adjustmentType: "change_in_capacity",
      scalingAdjustment: -1,
      alarm: { comparison: "lt", threshold: num("inThreshold", 15), periodSec },
    },
  ],
  loadBalancer: {
    network: lan,
    subnet: "lan-v4",
    vipAddress: lanAddress(VIP_HOST),
    memberPort: 80,
    hostDiscovery: discovery,
    floatingIp: { router, external: ext, subnet: "ext-v4" },
    listener: { name: "http", protocol: "HTTP", protocolPort: 80 },
    pool: {
      name: "web",
      protocol: "HTTP",
      lbAlgorithm: "ROUND_ROBIN",
      healthMonitor: { type: "HTTP", delay: 2, timeout: 1, maxRetries: 1, urlPath: "/health" },
    },
  },
  hostDiscovery: discovery,
});

const lb = group.loadBalancer as kvmlab.LoadBalancer;
export const vip = lb.vipAddress;
export const floatingIp = lb.floatingIp;
export const lbHost = lb.host;
export const memberIps = group.memberIps;
export const memberHosts = group.members.map((m) => m.host);
export const currentSize = group.currentSize;
export const inService = group.inService;
export const agentHost = group.agent.controllerHost;
