/**
 * The lab program's body: applies a validated lab definition (lab/) through the components.
 * stacks/index.ts reads the definition named by stack config `lab` and calls `applyLab`; tests
 * call it under mocks to prove that what it hands the providers is what `kvmlab render` writes.
 *
 * Every address is the render's (lab/plan.ts): server ports, VIPs, router gateways and floating
 * IPs are passed as fixed addresses, so `kvmlab render` shows the applied files byte for byte.
 * Sections: identity (Identity component), images, flavors, keypairs, networks and subnets
 * (Network), routers (Router), securityGroups (SecurityGroup; members are the planned addresses
 * of the ports and VIPs that list the group), servers (Server, FloatingIp), loadBalancers
 * (LoadBalancer with floatingIp), autoscaleGroups (AutoscaleGroup: every slot pre-rendered, its
 * load balancer the one its pool names, a scaling agent on the hosts), apps (ThreeTierApp, whose
 * web and WAS tiers are the lab's autoscale groups).
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as pulumi from "@pulumi/pulumi";
import type {
  Lab,
  LabAutoscaleGroup,
  LabImage,
  LabLaunch,
  LabListener,
  LabLoadBalancer,
  LabPool,
} from "../lab/model";
import { planLab, type LabPlan, type PlannedServer } from "../lab/plan";
import { appMembers, labKernelCmdline, tierMemberPort, tierServers } from "../lab/apps";
// The package's public face, as a user's program imports it (kvmlab.Router, kvmlab.resources.Image…).
import { Flavor, FloatingIp, Keypair, Router, SecurityGroup, resources } from "../index";
import { TIER_PORTS } from "../components/threeTierApp";
import { topologyFromLab, type Topology } from "../report/graph/model";
import type { HostSpec } from "../components/hosts";
import { AutoscaleGroup, type ScalingPolicySpec } from "../components/autoscaleGroup";
import { Identity } from "../components/identity";
import { LoadBalancer, type ListenerArgs, type MemberArgs, type PoolArgs } from "../components/loadBalancer";
import { Network } from "../components/network";
import type { SandboxStatus } from "../components/sandbox";
import { Server } from "../components/server";
import { ThreeTierApp } from "../components/threeTierApp";
import { Volume } from "../components/volume";

export interface ApplyLabOptions {
  /** The hosts (kvmlab:hosts, the lab's own, or the sandbox's). */
  readonly hosts: readonly HostSpec[];
  /** The running sandbox (for `images[].sandbox`). */
  readonly sandbox?: SandboxStatus;
  /** A secret reference's value (`kvmlab:alicePassword` → the stack's secret). */
  readonly secret: (key: string) => pulumi.Output<string>;
}

export interface LabOutputs {
  readonly plan: LabPlan;
  readonly servers: Record<string, Server>;
  readonly loadBalancers: Record<string, LoadBalancer>;
  readonly apps: Record<string, ThreeTierApp>;
  /** Every autoscale group (an app's tiers included). */
  readonly groups: Record<string, AutoscaleGroup>;
  readonly routers: Record<string, Router>;
  readonly securityGroups: Record<string, SecurityGroup>;
  readonly floatingIps: Record<string, pulumi.Output<string>>;
}

function sha256File(path: string): string {
  return crypto.createHash("sha256").update(fs.readFileSync(path)).digest("hex");
}

function source(s: string, checksum: string): resources.ImageSourceArgs {
  const sha256 = checksum.replace(/^sha256:/, "");
  if (/^https?:\/\//.test(s)) return { url: s, sha256 };
  return { localPath: s.replace(/^file:\/\//, ""), sha256 };
}

function poolArgs(p: LabPool, extra: MemberArgs[], addressOf: (server: string) => string): PoolArgs {
  return {
    ...p,
    healthMonitor:
      p.healthMonitor === null
        ? null
        : {
            ...p.healthMonitor,
            httpMethod: (p.healthMonitor.httpMethod ?? undefined) as "GET" | undefined,
            urlPath: p.healthMonitor.urlPath ?? undefined,
            expectedCodes: p.healthMonitor.expectedCodes ?? undefined,
            httpVersion: p.healthMonitor.httpVersion ?? undefined,
          },
    members: [
      ...p.members.map((m) => ({
        name: m.name,
        address: m.server !== null ? addressOf(m.server) : (m.address ?? ""),
        protocolPort: m.protocolPort,
        weight: m.weight,
        backup: m.backup,
        adminStateUp: m.adminStateUp,
        monitorPort: m.monitorPort,
        monitorAddress: m.monitorAddress,
      })),
      ...extra,
    ],
  };
}

/** The lab's listeners as the LoadBalancer component takes them, with extra members per listener. */
function listenerArgs(
  lb: LabLoadBalancer,
  extra: (l: LabListener) => MemberArgs[],
  addressOf: (server: string) => string,
): ListenerArgs[] {
  return lb.listeners.map((l) => ({
    ...l,
    defaultPool: l.pool === null ? null : poolArgs(l.pool, extra(l), addressOf),
    l7Policies: l.l7Policies.map((p) => ({
      ...p,
      position: p.position ?? undefined,
      redirectPool: p.redirectPool === null ? null : poolArgs(p.redirectPool, [], addressOf),
      rules: p.rules.map((r) => ({ ...r })),
    })),
  })) as unknown as ListenerArgs[];
}

/** Seconds over which a lab policy's CPU alarm averages (the lab definition has no field for it). */
export const LAB_POLICY_PERIOD_SEC = 60;
/** Seconds between a lab group's scaling-agent evaluations (two agents share a controller on 2 cores). */
export const LAB_AGENT_INTERVAL_SEC = 10;

/** A lab group's policies as the AutoscaleGroup component takes them (Heat's change_in_capacity on CPU). */
export function labPolicies(g: LabAutoscaleGroup): ScalingPolicySpec[] {
  return g.policies.map((p) => ({
    name: p.name,
    adjustmentType: "change_in_capacity",
    scalingAdjustment: p.adjustment,
    cooldown: p.cooldownSec,
    alarm: {
      comparison: p.above !== null ? "gt" : "lt",
      threshold: p.above ?? p.below ?? 0,
      periodSec: LAB_POLICY_PERIOD_SEC,
    },
  }));
}

/** The group's load balancer's one listener and pool (lab/checks/apps.ts keeps them so). */
function groupListener(
  lb: LabLoadBalancer,
  g: LabAutoscaleGroup,
): { listener: Omit<ListenerArgs, "defaultPool">; pool: Omit<PoolArgs, "members"> } {
  const l = lb.listeners.find((x) => x.name === g.pool!.listener) ?? lb.listeners[0];
  if (l === undefined || l.pool === null)
    throw new Error(
      `loadBalancers.${lb.name}.listeners: autoscale group ${g.name}'s listener ${g.pool!.listener} needs a pool for the group's slots; give it one`,
    );
  const [full] = listenerArgs(
    { ...lb, listeners: [l] },
    () => [],
    () => "",
  );
  const { defaultPool, ...listener } = full;
  const { members: _members, ...pool } = defaultPool!;
  return { listener, pool };
}

export function applyLab(lab: Lab, opts: ApplyLabOptions): LabOutputs {
  const plan = planLab(lab);
  const members = appMembers(lab, plan);
  const hosts = [...opts.hosts];
  const discovery = { hosts };
  const { resolveHosts } = require("../components/hosts") as typeof import("../components/hosts");
  const conns = resolveHosts(hosts).hosts;
  const firstHost = hosts[0].name;

  // ---- identity
  const id = lab.identity;
  let identity: Identity | undefined;
  if (id.domains.length + id.projects.length + id.users.length + id.assignments.length > 0) {
    identity = new Identity("identity", {
      ...discovery,
      domains: id.domains.map((d) => ({
        name: d.name,
        ...(d.description ? { description: d.description } : {}),
      })),
      projects: id.projects.map((p) => ({
        name: p.name,
        domain: p.domain,
        quotas: Object.fromEntries(Object.entries(p.quotas).filter(([, v]) => v !== null)) as Record<
          string,
          number
        >,
      })),
      users: id.users.map((u) => ({
        name: u.name,
        domain: u.domain,
        ...(u.password ? { password: opts.secret(u.password.secret) } : {}),
        ...(u.sshPublicKey ? { sshPublicKeys: [u.sshPublicKey] } : {}),
      })),
      // Both ends by id (`<domain>/<name>`): a bare name means kvmlab's Default domain, which is
      // not the lab's "default" (the sandbox run failed on "user Default/bob does not exist").
      assignments: id.assignments.map((a) => ({
        user: `${id.users.find((u) => u.name === a.user)?.domain ?? "default"}/${a.user}`,
        project: `${id.projects.find((p) => p.name === a.project)?.domain ?? "default"}/${a.project}`,
        role: a.role,
      })),
    });
  }
  const projectOf = (name: string): pulumi.Input<string> | undefined => {
    const p = id.projects.find((x) => x.name === name);
    return p && identity ? identity.projectId(p.name, p.domain) : undefined;
  };
  // Objects the lab gives no project of their own (routers, security groups) belong to its
  // defaultProject, charged to it like servers and volumes. Images are the hosts' shared store
  // (the Image resource keeps no project); the Network component takes no project yet (its
  // networks and subnets are not charged). Load balancers (with their floating IPs) are the lab's.
  const labProject = projectOf(lab.defaultProject);

  // ---- images, flavors, keypairs
  const images: Record<string, resources.Image> = {};
  for (const img of lab.images) {
    let files: Partial<Record<"source" | "kernel" | "ramdisk", resources.ImageSourceArgs>>;
    if (img.sandbox) {
      const sb = opts.sandbox;
      if (sb === undefined)
        throw new Error(
          `images.${img.name}.sandbox: no kvmlab sandbox is running; start one with \`kvmlab sandbox up\` or give the image's kernel and ramdisk`,
        );
      // The sandbox's hosts see this machine's /var (where the guest image is cached) through
      // their overlay: each copies the files on the host instead of receiving them through SSH.
      files = {
        kernel: { hostPath: sb.image.kernel, sha256: sha256File(sb.image.kernel) },
        ramdisk: { hostPath: sb.image.ramdisk, sha256: sha256File(sb.image.ramdisk) },
      };
    } else if (img.format === "kernel") {
      files = {
        kernel: source(img.kernel!.source, img.kernel!.checksum),
        ...(img.ramdisk ? { ramdisk: source(img.ramdisk.source, img.ramdisk.checksum) } : {}),
      };
    } else files = { source: source(img.source!, img.checksum!) };
    images[img.name] = new resources.Image(img.name, {
      imageName: img.name,
      hosts: conns,
      ...files,
      ...(img.format === "kernel" ? {} : { diskFormat: img.format }),
      kernelCmdline:
        img.format === "kernel" ? (img.cmdline ?? opts.sandbox?.image.cmdline ?? "console=ttyS0") : undefined,
      minDiskGiB: img.minDiskGiB,
      minRamMiB: img.minRamMiB,
    });
  }
  const flavors: Record<string, Flavor> = {};
  for (const f of lab.flavors)
    flavors[f.name] = new Flavor(f.name, {
      flavorName: f.name,
      vcpus: f.vcpus,
      ramMiB: f.ramMiB,
      diskGiB: f.diskGiB,
      ephemeralGiB: f.ephemeralGiB,
      swapMiB: f.swapMiB,
      extraSpecs: { ...f.extraSpecs },
      hosts: conns,
    });
  const keys: Record<string, string> = {};
  for (const k of lab.keypairs) {
    new Keypair(k.name, { keyName: k.name, publicKey: k.publicKey });
    keys[k.name] = k.publicKey;
  }

  // ---- networks, subnets, routers
  const networks: Record<string, Network> = {};
  for (const n of lab.networks)
    networks[n.name] = new Network(n.name, {
      kind: n.kind,
      type: n.type,
      ...(n.segmentationId !== null ? { segmentationId: n.segmentationId } : {}),
      driver: n.driver,
      project: labProject,
      mtu: n.mtu ?? undefined,
      vni: n.vni ?? undefined,
      ...discovery,
      subnets: n.subnets.map((s) => ({
        name: s.name,
        cidr: s.cidr,
        gateway: s.gateway,
        allocationPool: s.pool,
        dnsServers: [...s.dns],
        enableDhcp: s.dhcp,
      })),
    });
  const networkOfSubnet = (subnet: string): Network => {
    const n = lab.networks.find((x) => x.subnets.some((s) => s.name === subnet))!;
    return networks[n.name];
  };
  const routers: Record<string, Router> = {};
  const externalOf: Record<string, { network: Network; subnet: string }> = {};
  for (const r of lab.routers) {
    const extNet = lab.networks.find((n) => n.name === r.externalNetwork);
    const leg = (subnetName: string) => {
      const net = networkOfSubnet(subnetName);
      const sub = net.subnets[subnetName];
      return {
        subnetName: sub.subnetName,
        networkName: net.networkName,
        bridge: net.bridge,
        driver: net.network.driver,
        cidr: sub.cidr,
        address: sub.gateway,
        mtu: net.network.mtu,
      };
    };
    if (extNet === undefined)
      throw new Error(
        `routers.${r.name}.externalNetwork: the lab program needs every router's external network (its gateway); set externalNetwork`,
      );
    const extSubnet = extNet.subnets[0];
    const ext = networks[extNet.name];
    routers[r.name] = new Router(r.name, {
      routerName: r.name,
      project: labProject,
      hosts: conns,
      host: firstHost,
      external: {
        ...leg(extSubnet.name),
        address: plan.routerGateways[r.name],
        gateway: ext.subnets[extSubnet.name].gateway,
        ipamHost: ext.subnets[extSubnet.name].dhcpHost,
      },
      interfaces: r.interfaces.map(leg),
    });
    for (const s of r.interfaces) externalOf[s] = { network: ext, subnet: extSubnet.name };
  }
  const routerOf = (subnet: string): Router | undefined => {
    const r = lab.routers.find((x) => x.interfaces.includes(subnet));
    return r ? routers[r.name] : undefined;
  };

  // ---- security groups: members are the planned addresses of every port and VIP listing them
  const memberAddresses = (group: string): string[] => [
    ...plan.servers
      .filter((s) => s.launch.securityGroups.includes(group))
      .flatMap((s) => s.ports.map((p) => p.ip)),
    ...lab.loadBalancers.filter((lb) => lb.securityGroups.includes(group)).map((lb) => plan.vips[lb.name].ip),
  ];
  const sgs: Record<string, SecurityGroup> = {};
  const pending = [...lab.securityGroups];
  // A group whose rules name another group is created after it (its set exists first).
  while (pending.length > 0) {
    const i = pending.findIndex((g) =>
      g.rules.every(
        (r) => r.remoteGroup === null || r.remoteGroup === g.name || sgs[r.remoteGroup] !== undefined,
      ),
    );
    const g = pending.splice(i < 0 ? 0 : i, 1)[0];
    const deps = g.rules.flatMap((r) => (r.remoteGroup && sgs[r.remoteGroup] ? [sgs[r.remoteGroup]] : []));
    sgs[g.name] = new SecurityGroup(
      g.name,
      {
        groupName: g.name,
        project: labProject,
        hosts: conns,
        rules: g.rules.map((r) => ({
          direction: r.direction,
          protocol: r.protocol,
          ...(r.ports ? { portMin: r.ports.min, portMax: r.ports.max } : {}),
          ...(r.remoteCidr ? { remoteCidr: r.remoteCidr } : {}),
          ...(r.remoteGroup ? { remoteGroup: r.remoteGroup } : {}),
        })),
        members: memberAddresses(g.name),
      },
      { dependsOn: deps },
    );
  }

  // The load balancers' own groups on their VIP ports (Octavia's vip_sg_ids). The LoadBalancer
  // component filters a VIP port on Linux-bridge networks only: on an OVS VIP network the groups
  // only hold the VIP in their sets (for remote-group rules), and the VIP port stays unfiltered.
  const vipGroups = <K extends string = "loadBalancerSecurityGroups">(
    lb: LabLoadBalancer,
    key: K = "loadBalancerSecurityGroups" as K,
  ): Partial<Record<K, SecurityGroup[]>> => {
    const net = lab.networks.find((n) => n.subnets.some((x) => x.name === lb.vipSubnet));
    if (lb.securityGroups.length === 0 || net?.driver !== "linuxbridge") return {};
    return { [key]: lb.securityGroups.map((g) => sgs[g]) } as Partial<Record<K, SecurityGroup[]>>;
  };

  // ---- servers (those of apps come from their ThreeTierApp)
  const imageOf = (l: LabLaunch): LabImage => lab.images.find((i) => i.name === l.image)!;
  const cmdlineOf = (s: PlannedServer): string | undefined => {
    const img = imageOf(s.launch);
    // Disk images too: the Server component renders the same line ("console=ttyS0" by default).
    return labKernelCmdline(
      img,
      s.name,
      members.get(s.name),
      s.launch.keypair ? keys[s.launch.keypair] : undefined,
    );
  };
  const servers: Record<string, Server> = {};
  const volumes: Record<string, Volume> = {};
  const floatingIps: Record<string, pulumi.Output<string>> = {};
  for (const s of plan.servers) {
    // An app's servers come from its ThreeTierApp, a group's slots from its AutoscaleGroup.
    if (members.has(s.name) || s.group !== null) continue;
    const l = s.launch;
    const img = imageOf(l);
    servers[s.name] = new Server(s.name, {
      image: images[l.image],
      flavor: flavors[l.flavor],
      ports: s.ports.map((p) => ({
        network: networks[p.network],
        subnet: p.subnet,
        fixedIp: p.ip,
        securityGroups: l.securityGroups.map((g) => sgs[g]),
      })),
      ...(l.keypair ? { keypair: { publicKeyLine: keys[l.keypair] } } : {}),
      userName: img.defaultUser,
      userData: { writeFiles: l.userData.writeFiles, runcmd: l.userData.runcmd },
      kernelCmdline: cmdlineOf(s),
      // Unpinned: placement decides (a port's security groups follow the placed host).
      ...(s.host !== null ? { host: s.host } : {}),
      project: projectOf(s.project),
      ...discovery,
    });
    if (s.floatingIp !== null) {
      const router = routerOf(s.ports[0].subnet)!;
      const ext = externalOf[s.ports[0].subnet];
      const extSub = ext.network.subnets[ext.subnet];
      floatingIps[s.name] = new FloatingIp(
        `${s.name}-fip`,
        {
          fipName: `${s.name}-fip`,
          project: projectOf(s.project),
          hosts: conns,
          host: router.host,
          routerName: router.routerName,
          external: {
            networkName: ext.network.networkName,
            subnetName: extSub.subnetName,
            cidr: extSub.cidr,
            ipamHost: extSub.dhcpHost,
          },
          address: s.floatingIp,
          target: {
            address: servers[s.name].ip,
            subnetName: s.ports[0].subnet,
            networkName: s.ports[0].network,
            // The FloatingIp checks the address is this stack's allocation there (issue 15).
            ipamHost: networks[s.ports[0].network].subnets[s.ports[0].subnet].dhcpHost,
          },
        },
        { dependsOn: [router, servers[s.name]] },
      ).floatingIp;
    }
  }
  const addressOf = (server: string): string =>
    plan.servers.find((s) => s.name === server)?.ports[0]?.ip ?? "";
  const slotsOf = (g: LabAutoscaleGroup) => plan.servers.filter((s) => s.group === g.name);

  // ---- apps: ThreeTierApp, its web and WAS tiers the lab's autoscale groups
  const apps: Record<string, ThreeTierApp> = {};
  const groups: Record<string, AutoscaleGroup> = {};
  const loadBalancers: Record<string, LoadBalancer> = {};
  const appLbs = new Set<string>();
  const appGroups = new Set<string>();
  for (const app of lab.apps) {
    const tierLaunch = (t: typeof app.web) => tierServers(plan, t)[0].launch;
    const common = (t: typeof app.web) => {
      const first = tierServers(plan, t)[0];
      const l = first.launch;
      return {
        network: networks[first.ports[0].network],
        subnet: first.ports[0].subnet,
        image: images[l.image],
        flavor: flavors[l.flavor],
        kernelCmdline: imageOf(l).cmdline ?? "console=ttyS0",
        userName: imageOf(l).defaultUser,
        securityGroups: l.securityGroups.map((g) => sgs[g]),
        userData: { writeFiles: l.userData.writeFiles, runcmd: l.userData.runcmd },
        project: projectOf(first.project),
        ...(l.keypair ? { keypair: { publicKeyLine: keys[l.keypair] } } : {}),
      };
    };
    const scaled = (t: typeof app.web, fallbackPort: number) => {
      const lb = lab.loadBalancers.find((x) => x.name === t.loadBalancer)!;
      appLbs.add(lb.name);
      const g = lab.autoscaleGroups.find((x) => x.name === t.autoscaleGroup)!;
      appGroups.add(g.name);
      const { listener, pool } = groupListener(lb, g);
      return {
        ...common(t),
        // Every slot, with the plan's address (the group's security-group sets hold them all).
        members: slotsOf(g).map((s) => ({ address: s.ports[0].ip, ...(s.host ? { host: s.host } : {}) })),
        groupName: g.name,
        min: g.min,
        max: g.max,
        desired: g.desired,
        policies: labPolicies(g),
        agentInterval: LAB_AGENT_INTERVAL_SEC,
        vipAddress: plan.vips[lb.name].ip,
        loadBalancerName: lb.name,
        loadBalancerHost: lb.host ?? undefined,
        listener,
        pool,
        memberPort: tierMemberPort(lab, t, fallbackPort),
        ...vipGroups(lb),
        floatingIpAddress: plan.vips[lb.name].floatingIp ?? undefined,
      };
    };
    const single = (t: typeof app.db) => {
      const s = tierServers(plan, t)[0];
      return {
        ...common(t),
        name: s.name,
        address: s.ports[0].ip,
        host: s.host ?? undefined,
        floatingIpAddress: s.floatingIp ?? undefined,
      };
    };
    const bastionSubnet = tierServers(plan, app.bastion)[0].ports[0].subnet;
    const router = routerOf(bastionSubnet);
    if (router === undefined)
      throw new Error(
        `apps.${app.name}.bastion: no router has a leg on ${bastionSubnet}; add it to a router's interfaces`,
      );
    const launch = tierLaunch(app.web);
    apps[app.name] = new ThreeTierApp(app.name, {
      image: images[launch.image],
      flavor: flavors[launch.flavor],
      router,
      external: externalOf[bastionSubnet],
      web: scaled(app.web, TIER_PORTS.web),
      was: scaled(app.was, TIER_PORTS.was),
      db: single(app.db),
      bastion: single(app.bastion),
      guestRoles: imageOf(launch).sandbox,
      userName: imageOf(launch).defaultUser,
      // The app's own objects (its bastion's floating IP); each tier passes its servers' project.
      project: labProject,
      ...discovery,
    });
    const a = apps[app.name];
    tierServers(plan, app.web).forEach((s, i) => (servers[s.name] = a.web[i]));
    tierServers(plan, app.was).forEach((s, i) => (servers[s.name] = a.was[i]));
    servers[tierServers(plan, app.db)[0].name] = a.db;
    servers[tierServers(plan, app.bastion)[0].name] = a.bastion;
    groups[app.web.autoscaleGroup!] = a.webGroup;
    groups[app.was.autoscaleGroup!] = a.wasGroup;
    loadBalancers[app.web.loadBalancer!] = a.webLoadBalancer;
    loadBalancers[app.was.loadBalancer!] = a.wasLoadBalancer;
    floatingIps[`${app.name}-web`] = a.webFloatingIp;
    floatingIps[`${app.name}-bastion`] = a.bastionAddress;
  }

  // ---- autoscale groups not in apps: an AutoscaleGroup each, its load balancer the one its
  // pool names (built by the group)
  for (const g of lab.autoscaleGroups) {
    if (appGroups.has(g.name)) continue;
    const slots = slotsOf(g);
    const l = g.launch;
    const img = imageOf(l);
    const lb = g.pool ? lab.loadBalancers.find((x) => x.name === g.pool!.loadBalancer) : undefined;
    if (lb) appLbs.add(lb.name);
    const router = lb ? routerOf(lb.vipSubnet) : undefined;
    const ext = lb ? externalOf[lb.vipSubnet] : undefined;
    groups[g.name] = new AutoscaleGroup(g.name, {
      groupName: g.name,
      launch: {
        image: images[l.image],
        flavor: flavors[l.flavor],
        ports: l.networks.map((_, k) => ({
          network: networks[slots[0].ports[k].network],
          subnet: slots[0].ports[k].subnet,
          fixedIps: slots.map((s) => s.ports[k].ip),
          securityGroups: l.securityGroups.map((x) => sgs[x]),
        })),
        ...(l.keypair ? { keypair: { publicKeyLine: keys[l.keypair] } } : {}),
        userData: { writeFiles: l.userData.writeFiles, runcmd: l.userData.runcmd },
        kernelCmdline: (member) =>
          labKernelCmdline(img, member, members.get(member), l.keypair ? keys[l.keypair] : undefined),
        userName: img.defaultUser,
        project: projectOf(slots[0].project),
      },
      min: g.min,
      max: g.max,
      desired: g.desired,
      policies: labPolicies(g),
      interval: LAB_AGENT_INTERVAL_SEC,
      ...(lb
        ? {
            loadBalancer: {
              ...groupListener(lb, g),
              lbName: lb.name,
              project: labProject,
              network: networkOfSubnet(lb.vipSubnet),
              subnet: lb.vipSubnet,
              vipAddress: plan.vips[lb.name].ip,
              host: lb.host ?? undefined,
              memberPort: g.pool!.protocolPort,
              ...(lb.floatingIp && router && ext
                ? {
                    floatingIp: {
                      router,
                      external: ext.network,
                      subnet: ext.subnet,
                      address: plan.vips[lb.name].floatingIp ?? undefined,
                    },
                  }
                : {}),
              ...vipGroups(lb, "securityGroups"),
              ...discovery,
            },
          }
        : {}),
      ...discovery,
    });
    slots.forEach((s, i) => (servers[s.name] = groups[g.name].members[i]));
    if (lb) loadBalancers[lb.name] = groups[g.name].loadBalancer!;
  }

  // ---- volumes: each on its own host or its server's, attached in the order of the server's
  // `volumes` list (each attach waits for the one before), so the guest's devices are vdb, vdc, …
  // as `kvmlab render` writes them; detached volumes live on their `host`.
  const attachedFirst = [
    ...lab.servers.flatMap((s) => s.volumes.map((n) => lab.volumes.find((v) => v.name === n)!)),
    ...lab.volumes.filter((v) => !lab.servers.some((s) => s.volumes.includes(v.name))),
  ];
  for (const v of attachedFirst) {
    const holder = lab.servers.find((s) => s.volumes.includes(v.name));
    const server = holder ? servers[holder.name] : undefined;
    if (holder && !server)
      throw new Error(
        `volumes.${v.name}: server ${holder.name} is not built by the lab program; attach the volume to a server of servers[], or leave it detached (host:)`,
      );
    const before = holder ? holder.volumes.slice(0, holder.volumes.indexOf(v.name)) : [];
    volumes[v.name] = new Volume(
      v.name,
      {
        volumeName: v.name,
        sizeGiB: v.sizeGiB,
        provisioning: v.provisioning,
        ...(v.image !== null ? { image: images[v.image].imageName } : {}),
        ...(server ? { server } : {}),
        ...(v.host !== null ? { host: v.host } : holder?.host ? { host: holder.host } : {}),
        project: projectOf(v.project),
        ...discovery,
      },
      {
        dependsOn: [...(v.image !== null ? [images[v.image]] : []), ...before.map((b) => volumes[b])],
      },
    );
  }

  // ---- load balancers not in apps
  for (const lb of lab.loadBalancers) {
    if (appLbs.has(lb.name)) continue;
    const router = routerOf(lb.vipSubnet);
    const ext = externalOf[lb.vipSubnet];
    loadBalancers[lb.name] = new LoadBalancer(lb.name, {
      project: labProject,
      network: networkOfSubnet(lb.vipSubnet),
      subnet: lb.vipSubnet,
      vipAddress: plan.vips[lb.name].ip,
      host: lb.host ?? undefined,
      listeners: listenerArgs(lb, () => [], addressOf),
      ...vipGroups(lb, "securityGroups"),
      ...(lb.floatingIp && router && ext
        ? {
            floatingIp: {
              router,
              external: ext.network,
              subnet: ext.subnet,
              address: plan.vips[lb.name].floatingIp ?? undefined,
            },
          }
        : {}),
      ...discovery,
    });
  }
  return { plan, servers, loadBalancers, apps, groups, routers, securityGroups: sgs, floatingIps };
}

/**
 * The lab's topology (report/graph, what `kvmlab graph` draws from a stack's outputs), with the
 * hosts in use and where each server runs after placement.
 */
export function labTopology(lab: Lab, hosts: readonly HostSpec[], out: LabOutputs): pulumi.Output<Topology> {
  return pulumi
    .all(Object.fromEntries(Object.entries(out.servers).map(([n, s]) => [n, s.host])))
    .apply((placed: Record<string, string>) => {
      const t = topologyFromLab({
        ...lab,
        hosts: hosts.map((h) => ({
          name: h.name,
          address: h.address,
          port: h.port ?? 22,
          user: h.user ?? "root",
          privateKey: null,
          privateKeyPath: null,
          hostKey: h.hostKey ?? "",
        })),
      });
      const pinned = new Set(t.edges.filter((e) => e.kind === "placement").map((e) => e.source));
      const extra = Object.entries(placed)
        .filter(([n, h]) => h !== "" && !pinned.has(`server:${n}`))
        .map(([n, h], i) => ({
          id: `placed${i}`,
          kind: "placement" as const,
          source: `server:${n}`,
          target: `host:${h}`,
          label: "placed",
        }));
      return { ...t, edges: [...t.edges, ...extra] };
    });
}
