/**
 * three-tier: the classic 3-tier lab through the ThreeTierApp component.
 *
 *   internet ─▶ floating IP ─▶ web LB :80 ─▶ web-0, web-1 ─▶ WAS LB :8080 ─▶ was-0, was-1 ─▶ db :3306
 *   operators ─SSH─▶ bastion (floating IP) ─SSH─▶ every tier
 *
 * The web and WAS tiers are Heat-style autoscale groups (min 2, desired 2, max 3; CPU policies:
 * +1 above 70 % over 60 s, -1 below 15 % over 180 s): every slot web-0…web-2 is pre-rendered, the
 * group's scaling agent on the load balancer's host starts the first two and scales between
 * `up`s (`kvmlab asg status web`).
 *
 * Four self-service Linux-bridge networks (web, was, db, mgmt; VXLAN across the hosts) behind a
 * router on the first host whose gateway is on the sandbox's external network. Security groups
 * allow only web←any:80/443, WAS←web:8080, DB←WAS:3306 and SSH←bastion. The servers boot the
 * sandbox's guest test image with their tier role on the kernel command line (`guestRoles`):
 * web answers on 80 and forwards to the WAS VIP, WAS answers on 8080 and queries the DB, the DB
 * answers on 3306, every server accepts SSH as root with the generated keypair. A request through
 * the web floating IP returns the path it took: "web=<member> was=<member> db=<db>".
 *
 * With a `kvmlab sandbox` running and no `kvmlab:hosts` set it targets the sandbox (instance
 * from `kvmlab:sandboxInstance`, else $KVMLAB_SANDBOX_INSTANCE, else "default"), with no edits:
 *
 *   kvmlab sandbox up && pulumi stack init dev && pulumi up
 *   ip netns exec kvmlab-default-inet busybox wget -qO- $(pulumi stack output webUrl)
 *   pulumi stack output sshPrivateKey --show-secrets > key && chmod 600 key
 *   ip netns exec kvmlab-default-inet $(pulumi stack output sshCommands | jq -r '."db"') -i key
 *
 * Stack config (all optional): webMax / wasMax (slots, 1..4, default 3), webDesired / wasDesired
 * (default 2, at most max; also the groups' min), sshFrom (CIDR allowed to SSH to the bastion,
 * default anywhere). See docs/three-tier.md.
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

// The sandbox's hosts see this machine's /var through their overlay, so the guest image's files
// are already on every host: each host copies them into its image store (`hostPath`) instead of
// receiving the 66 MB kernel through SSH (issue 13: the image gates every slot of the up).
function hostFile(path: string): { hostPath: string; sha256: string } {
  return { hostPath: path, sha256: crypto.createHash("sha256").update(fs.readFileSync(path)).digest("hex") };
}

const image = new kvmlab.resources.Image("labimage", {
  hosts,
  kernel: hostFile(sandbox.image.kernel),
  ramdisk: hostFile(sandbox.image.ramdisk),
  kernelCmdline: sandbox.image.cmdline,
});
const flavor = new kvmlab.Flavor("m1-tiny", { flavorName: "m1.tiny", vcpus: 1, ramMiB: 128, hosts });
// A generated ed25519 pair: the servers accept its public half, the private half is a secret output.
const key = new kvmlab.Keypair("ops", {});

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
const tierNet = (name: string, third: number) =>
  new kvmlab.Network(name, {
    kind: "selfservice",
    driver: "linuxbridge",
    hostDiscovery: discovery,
    subnets: [{ name: `${name}-v4`, cidr: `10.30.${third}.0/24` }],
  });
const nets = {
  web: tierNet("web", 1),
  was: tierNet("was", 2),
  db: tierNet("db", 3),
  mgmt: tierNet("mgmt", 9),
};

const extSub = ext.subnets["ext-v4"];
const router = new kvmlab.Router("edge", {
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
  interfaces: Object.values(nets).map((n) => {
    const sub = Object.values(n.subnets)[0];
    return {
      subnetName: sub.subnetName,
      networkName: n.networkName,
      bridge: n.bridge,
      driver: n.network.driver,
      cidr: sub.cidr,
      address: sub.gateway,
      mtu: n.network.mtu,
    };
  }),
});

const count = (key: string, fallback: number, max = 4): number => {
  const n = config.getNumber(key) ?? fallback;
  if (!Number.isInteger(n) || n < 1 || n > max) throw new Error(`${key}: expected 1..${max}, got ${n}`);
  return n;
};
// Every slot of a tier's group: its fixed address, and its host (round-robin).
const slots = (third: number, n: number) =>
  Array.from({ length: n }, (_, i) => ({
    address: `10.30.${third}.${11 + i}`,
    host: hosts[i % hosts.length].name as string,
  }));
const scaling = (tier: "web" | "was") => {
  const max = count(`${tier}Max`, 3);
  const desired = count(`${tier}Desired`, Math.min(2, max), max);
  return { members: slots(tier === "web" ? 1 : 2, max), groupName: tier, min: desired, desired };
};

const app = new kvmlab.ThreeTierApp("shop", {
  image,
  flavor,
  keypair: key,
  router,
  external: { network: ext, subnet: "ext-v4" },
  web: {
    network: nets.web,
    subnet: "web-v4",
    vipAddress: "10.30.1.5",
    ...scaling("web"),
  },
  was: {
    network: nets.was,
    subnet: "was-v4",
    vipAddress: "10.30.2.5",
    ...scaling("was"),
  },
  db: { network: nets.db, subnet: "db-v4", name: "db", address: "10.30.3.11" },
  bastion: { network: nets.mgmt, subnet: "mgmt-v4", name: "bastion", address: "10.30.9.11" },
  guestRoles: true,
  sshFrom: config.get("sshFrom"),
  hostDiscovery: discovery,
});

export const webUrl = app.webUrl;
export const webFloatingIp = app.webFloatingIp;
export const bastionAddress = app.bastionAddress;
export const sshCommands = app.sshCommands;
export const consoleUrls = app.consoleUrls;
export const consoleCommands = app.consoleCommands;
export const sshPrivateKey = key.privateKey;
/** The groups' sizes and members in service, as their agents last reported them (refresh). */
export const groups = {
  web: { currentSize: app.webGroup.currentSize, inService: app.webGroup.inService },
  was: { currentSize: app.wasGroup.currentSize, inService: app.wasGroup.inService },
};
export const addresses = {
  web: app.web.map((s) => s.ip),
  was: app.was.map((s) => s.ip),
  db: app.db.ip,
  bastion: app.bastion.ip,
  webVip: app.webLoadBalancer.vipAddress,
  wasVip: app.wasLoadBalancer.vipAddress,
};
