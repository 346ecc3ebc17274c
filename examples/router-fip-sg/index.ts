/**
 * router-fip-sg: a self-service network (VXLAN across the hosts) behind a router on the first
 * host, one web server on it reachable from the external network only through its floating IP,
 * and a security group that admits tcp/80 from anywhere and tcp/22 from the "bastion" group
 * (everything else inbound is dropped; egress is open, Neutron's default). The group reaches the
 * server through its port's `securityGroups`; `router-fip-sg:webPorts` (a JSON list, default [80])
 * lists the ports it admits from anywhere, and changing it updates the rules without touching the
 * guest.
 *
 * With a `kvmlab sandbox` running and no `kvmlab:hosts` set it targets the sandbox (instance from
 * `kvmlab:sandboxInstance`, else $KVMLAB_SANDBOX_INSTANCE, else "default"): its guest image, its
 * external network (the "internet" namespace is the gateway) and its hosts. No edits needed:
 *
 *   kvmlab sandbox up && pulumi stack init dev && pulumi up
 *   ip netns exec kvmlab-default-inet busybox wget -qO- http://$(pulumi stack output floatingIp)/
 *
 * Layout on the hosts and every deviation from Neutron: docs/networking.md.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as pulumi from "@pulumi/pulumi";
import * as kvmlab from "kvmlab";

const kvmlabConfig = new pulumi.Config("kvmlab");
const sandboxInstance =
  kvmlabConfig.get("sandboxInstance") ?? process.env.KVMLAB_SANDBOX_INSTANCE ?? "default";
const discovery = { sandboxInstance };
const { hosts } = kvmlab.resolveHosts(undefined, discovery);
const sandbox = kvmlab.readSandboxStatus(sandboxInstance);
if (!sandbox)
  throw new Error(`no kvmlab sandbox "${sandboxInstance}" is running; start one with: kvmlab sandbox up`);
const firstHost = hosts[0].name as string;
const webPorts = new pulumi.Config().getObject<number[]>("webPorts") ?? [80];

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

// The external (provider) network: routers' gateways and floating IPs come from its pool.
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
const lan = new kvmlab.Network("lan", {
  kind: "selfservice",
  hostDiscovery: discovery,
  subnets: [{ name: "lan-v4", cidr: "10.20.1.0/24" }],
});

const extSub = ext.subnets["ext-v4"];
const lanSub = lan.subnets["lan-v4"];
const router = new kvmlab.Router("r1", {
  hosts,
  host: firstHost,
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

const bastion = new kvmlab.SecurityGroup("bastion", { hosts, members: [] });
const webGroup = new kvmlab.SecurityGroup(
  "web",
  {
    hosts,
    rules: [
      ...webPorts.map((port) => ({ direction: "ingress" as const, protocol: "tcp" as const, port })),
      { direction: "ingress", protocol: "tcp", port: 22, remoteGroup: "bastion" },
    ],
  },
  // The remote-group rule matches bastion's member set: the set exists first.
  { dependsOn: [bastion] },
);

const web = new kvmlab.Server("web1", {
  image,
  flavor,
  ports: [{ network: lan, subnet: "lan-v4", securityGroups: [webGroup] }],
  kernelCmdline: pulumi.interpolate`${image.kernelCmdline} lab.name=web1`,
  readiness: { kind: "dhcp" },
  hostDiscovery: discovery,
});

const fip = new kvmlab.FloatingIp(
  "web1-fip",
  {
    hosts,
    host: router.host,
    routerName: router.routerName,
    external: {
      networkName: ext.networkName,
      subnetName: extSub.subnetName,
      cidr: extSub.cidr,
      ipamHost: extSub.dhcpHost,
    },
    target: {
      address: web.ip,
      subnetName: lanSub.subnetName,
      networkName: lan.networkName,
      ipamHost: lanSub.dhcpHost,
    },
  },
  { dependsOn: [router] },
);

export const floatingIp = fip.floatingIp;
export const fixedIp = web.ip;
export const routerNamespace = router.namespace;
export const ruleset = router.ruleset;
