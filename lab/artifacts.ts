/**
 * Every artifact of a lab definition, rendered without touching a host: one file per object,
 * keyed by its path relative to the output folder. The files are what the components would
 * hand the providers: servers through templates/server.ts `renderServer` and subnets through
 * templates/subnet.ts `planSubnet` (the functions the Server and Network components call), the
 * dhcp-hostsfile through core/ipam.ts `hostsFileText` (what the IPAM writes), device names and
 * paths from core/paths.ts (what the providers use); none is re-derived here. Pure and
 * deterministic: the same lab gives byte-identical files.
 *
 *   servers/<name>.xml                         libvirt domain
 *   servers/<name>/{meta-data,user-data,network-config}   NoCloud seed
 *   loadbalancers/<name>/haproxy.cfg
 *   loadbalancers/<name>/keepalived-{0,1}.conf  (ACTIVE_STANDBY: amphora 0 MASTER, 1 BACKUP)
 *   subnets/<name>/{dnsmasq.conf,hosts}        (subnets with dhcp; hosts = dhcp-hostsfile)
 *   routers/<name>/ruleset                     the router's iptables-restore input (core/router.ts)
 *   routers/<name>/legs                        one line per leg: device address/prefix bridge
 *   volumes/<name>.xml                         an attached volume's <disk> (device from its server's list)
 *   plan.json                                  allocations this render assumed
 */
import { hostsFileText, type IpamRecord } from "../core/ipam";
import { parseCidr } from "../core/net";
import { renderRouterRuleset, routerInterfaceNames, routerNames } from "../core/router";
import { VOLUME_DEVICES, volumeDiskXml, volumeFormat, volumePath } from "../core/volume";
import { checkName } from "../core/names";
import { dhcpPaths, imageStorePaths, networkDevices, portOwner, serverPaths } from "../core/paths";
import { loadBalancerConfig, type ListenerSpec, type MemberSpec, type PoolSpec } from "../templates/haproxy";
import { keepalivedPair } from "../templates/keepalived";
import { renderServer, serverUuidSeed } from "../templates/server";
import { appMembers, labKernelCmdline } from "./apps";
import type { Lab, LabMember, LabPool } from "./model";
import { planLab, subnetPlan, type LabPlan, type PlannedServer } from "./plan";

/** The stack `kvmlab render` assumes when none is given. */
export const DEFAULT_STACK = "dev";

/** The Pulumi project of the lab program (stacks/Pulumi.yaml `name`): what `kvmlab render` assumes. */
export const LAB_PROGRAM_PROJECT = "kvmlab-lab";

export interface RenderOptions {
  /** libvirt domain type to render; the provider detects it per host at apply time. @default "kvm" */
  readonly domainType?: "kvm" | "qemu";
  /**
   * Pulumi stack the lab is applied as (the Pulumi project is the lab's name). A server's UUID,
   * MACs and tap names are seeded from `<lab>/<stack>/<server>`, as components/server.ts seeds
   * them from `<project>/<stack>/<server>`. @default "dev"
   */
  readonly stack?: string;
  /**
   * Pulumi project the lab is applied as. A server's UUID, MACs and tap names are seeded from
   * `<project>/<stack>/<server>`, and its domain metadata names the project, as
   * components/server.ts does. @default "kvmlab-lab" (the lab program, stacks/Pulumi.yaml)
   */
  readonly project?: string;
}

/** What one server's render gave (templates/server.ts `renderServer`). */
export interface RenderedServer {
  readonly uuid: string;
  readonly uuidSeed: string;
  readonly macs: readonly string[];
  readonly taps: readonly string[];
}

/** What `kvmlab render` prints and writes to plan.json about values decided at apply time. */
export const RENDER_NOTES: readonly string[] = [
  "Names on the hosts are the lab's own object names (domain <server>, bridge kvlb-<id> of <network>, namespace qdhcp-<network>), exactly as the components and providers derive them; two labs or stacks that share hosts need distinct object names (the Server provider refuses a domain name another server holds).",
  "Servers' UUIDs, MACs and tap names are seeded from <project>/<stack>/<server>: the Pulumi project is the lab program's (kvmlab-lab, stacks/Pulumi.yaml; --project to change), the stack is --stack (default dev).",
  "Guests get every address by DHCP: fixed and allocated addresses reach dnsmasq through subnets/<name>/hosts (dhcp-hostsfile).",
  "Addresses not fixed in the lab were allocated deterministically from each subnet's pool, in definition order (router gateways, VIPs, server ports, autoscale members, floating IPs) after each DHCP port took its pool's first address; the lab program (stacks/) applies exactly these addresses.",
  "Host placement of unpinned servers is decided at apply time (least-loaded host that fits); rendered files do not depend on it.",
  "The domain type is detected per host at apply time (kvm where usable, else qemu); the files show --domain-type (default kvm).",
  "VNC ports are automatic (autoport) and chosen by libvirt when the domain starts.",
  "Autoscale groups are rendered with every slot <group>-0 … <group>-(max-1), as the AutoscaleGroup component pre-renders them: the slots up to the group's current size run, the others stay defined and stopped; the group's scaling agent starts and stops them (every slot is in its load balancer's pool and its security groups' sets).",
  "Servers of apps booting a sandbox image (images[].sandbox) get their tier role on the kernel command line (lab.name, lab.role, lab.upstream, lab.db, lab.sshkey), as the ThreeTierApp component gives it.",
];

/** Added to the notes of a lab with volumes. */
export const VOLUME_RENDER_NOTE =
  "An attached volume's device follows its server's volumes list (vdb, vdc, …); at apply time each attach takes the first free vdb..vdz of the running server, which is the same for a server that has only its boot disk and attaches in list order.";

export class RenderError extends Error {
  constructor(
    readonly path: string,
    readonly reason: Error,
  ) {
    super(`${path}: ${reason.message}`);
  }
}

function at<T>(path: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new RenderError(path, err instanceof Error ? err : new Error(String(err)));
  }
}

function serverPath(lab: Lab, s: PlannedServer): string {
  if (s.group === null) return `servers[${lab.servers.findIndex((x) => x.name === s.name)}]`;
  return `autoscaleGroups[${lab.autoscaleGroups.findIndex((g) => g.name === s.group)}]`;
}

/**
 * The identity project (`<domain>/<name>`) the lab program gives a server of lab project `name`:
 * the identity section's project of that name, or "" (none) when the section has none (the stack's
 * `kvmlab:project` config, which the program would fall back to, is not known here).
 */
export function identityProjectOf(lab: Lab, name: string): string {
  const p = lab.identity.projects.find((x) => x.name === name);
  return p ? `${p.domain}/${p.name}` : "";
}

/** Renders every artifact of `lab`. Keys are sorted; values end with a newline. */
export function renderLab(
  lab: Lab,
  options: RenderOptions = {},
): { files: Map<string, string>; plan: LabPlan; servers: ReadonlyMap<string, RenderedServer> } {
  const stack = options.stack ?? DEFAULT_STACK;
  const project = options.project ?? LAB_PROGRAM_PROJECT;
  at("stack", () => {
    const problem = checkName("stack", stack);
    if (problem !== undefined) throw new Error(problem);
  });
  at("project", () => {
    const problem = checkName("project", project);
    if (problem !== undefined) throw new Error(problem);
  });
  const plan = planLab(lab); // PlanError names its own path.
  const members = appMembers(lab, plan);
  const files: [string, string][] = [];

  const rendered = new Map<string, RenderedServer>();
  for (const s of plan.servers) {
    const path = serverPath(lab, s);
    const image = lab.images.find((i) => i.name === s.launch.image);
    const flavor = lab.flavors.find((f) => f.name === s.launch.flavor);
    if (image === undefined || flavor === undefined)
      throw new RenderError(path, new Error("image or flavor missing"));
    const keypair = lab.keypairs.find((k) => k.name === s.launch.keypair);
    const kind = image.format === "kernel" ? "kernel" : "disk";
    // The lab program's Server component: named by the lab's server name, in project <project>.
    const uuidSeed = serverUuidSeed(project, stack, s.name);
    const r = at(path, () =>
      renderServer({
        serverName: s.name,
        uuidSeed,
        lab: project,
        stack,
        // The lab program's Server gets the identity project's recordId when the lab's
        // identity section has the server's project, else none (issue 14).
        project: identityProjectOf(lab, s.project),
        image: {
          name: image.name,
          kind,
          ...imageStorePaths(image.name, kind, image.format === "raw" ? "raw" : "qcow2"),
          // A sandbox image always has its initramfs.
          ...(kind === "kernel" && image.ramdisk === null && !image.sandbox ? { ramdisk: "" } : {}),
        },
        // The whole flavor, as the Server component passes it.
        flavor: {
          name: flavor.name,
          vcpus: flavor.vcpus,
          ramMiB: flavor.ramMiB,
          diskGiB: flavor.diskGiB,
          ephemeralGiB: flavor.ephemeralGiB,
          swapMiB: flavor.swapMiB,
          extraSpecs: { ...flavor.extraSpecs },
        },
        ports: s.ports.map((p) => ({
          networkName: p.network,
          subnetName: p.subnet,
          bridge: p.bridge,
          driver: p.driver,
          mtu: p.mtu,
        })),
        kernelCmdline: labKernelCmdline(image, s.name, members.get(s.name), keypair?.publicKey),
        cloudInit: true,
        publicKeys: keypair ? [keypair.publicKey] : [],
        // An autoscale slot: the AutoscaleGroup component's Server default (its launch spec has
        // no user name yet); a server: the image's user.
        userName: image.defaultUser,
        userData: { writeFiles: s.launch.userData.writeFiles, runcmd: s.launch.userData.runcmd },
        consoleListen: "127.0.0.1",
      }),
    );
    rendered.set(s.name, { uuid: r.uuid, uuidSeed, macs: r.macs, taps: r.taps });
    files.push([`servers/${s.name}.xml`, r.domainXml[options.domainType ?? "kvm"]]);
    files.push([`servers/${s.name}/meta-data`, r.cloudInit.metaData]);
    files.push([`servers/${s.name}/user-data`, r.cloudInit.userData]);
    files.push([`servers/${s.name}/network-config`, r.cloudInit.networkConfig]);
  }

  // Volumes: each attached one's <disk> at the device its server's list gives it (vdb, vdc, …).
  const volumePlan = lab.volumes.map((v) => {
    const server = lab.servers.find((s) => s.volumes.includes(v.name)) ?? null;
    const device = server ? (VOLUME_DEVICES[server.volumes.indexOf(v.name)] ?? null) : null;
    const path = at(`volumes.${v.name}`, () => volumePath(v.name, v.provisioning));
    if (server && device)
      files.push([
        `volumes/${v.name}.xml`,
        at(`volumes.${v.name}`, () =>
          volumeDiskXml({ volumeName: v.name, path, format: volumeFormat(v.provisioning), device }),
        ),
      ]);
    return {
      name: v.name,
      host: v.host ?? server?.host ?? "decided at apply time",
      sizeGiB: v.sizeGiB,
      provisioning: v.provisioning,
      path,
      image: v.image,
      server: server?.name ?? null,
      device,
    };
  });

  lab.loadBalancers.forEach((lb, i) => {
    const path = `loadBalancers[${i}]`;
    const addressOf = (server: string) => plan.servers.find((s) => s.name === server)?.ports[0]?.ip ?? "";
    const member = (m: LabMember): MemberSpec => ({
      name: m.name,
      address: m.server !== null ? addressOf(m.server) : (m.address ?? ""),
      protocolPort: m.protocolPort,
      weight: m.weight,
      backup: m.backup,
      adminStateUp: m.adminStateUp,
      monitorPort: m.monitorPort,
      monitorAddress: m.monitorAddress,
    });
    const poolSpec = (p: LabPool, extra: MemberSpec[] = []): PoolSpec => ({
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
      members: [...p.members.map(member), ...extra],
    });
    const cfg = at(path, () =>
      // What the LoadBalancer component applies (same function, same defaults).
      loadBalancerConfig(
        lb.name,
        plan.vips[lb.name].ip,
        lb.listeners.map((l): ListenerSpec => {
          const groups = lab.autoscaleGroups.filter(
            (g) => g.pool?.loadBalancer === lb.name && g.pool.listener === l.name,
          );
          const groupMembers: MemberSpec[] = groups.flatMap((g) =>
            plan.servers
              .filter((s) => s.group === g.name)
              // What the AutoscaleGroup component hands its load balancer: every slot.
              .map((s) => ({
                name: s.name,
                address: s.ports[0].ip,
                protocolPort: g.pool!.protocolPort,
              })),
          );
          return {
            ...l,
            defaultPool: l.pool === null ? null : poolSpec(l.pool, groupMembers),
            l7Policies: l.l7Policies.map((p) => ({
              ...p,
              position: p.position ?? undefined,
              redirectPool: p.redirectPool === null ? null : poolSpec(p.redirectPool),
              rules: p.rules.map((r) => ({ ...r })),
            })),
          };
        }),
      ),
    );
    files.push([`loadbalancers/${lb.name}/haproxy.cfg`, cfg]);
    if (lb.topology === "ACTIVE_STANDBY") {
      // What the LoadBalancer component renders for its two amphorae (same function).
      const vip = plan.vips[lb.name];
      const cidr = lab.networks.flatMap((n) => n.subnets).find((x) => x.name === vip.subnet)?.cidr ?? "";
      const pair = at(path, () => keepalivedPair(lb.name, vip.ip, cidr, vip.vrrpAddresses));
      pair.keepalivedConfs.forEach((conf, a) =>
        files.push([`loadbalancers/${lb.name}/keepalived-${a}.conf`, conf]),
      );
    }
  });

  for (const network of lab.networks) {
    for (const subnet of network.subnets) {
      if (!subnet.dhcp) continue;
      const path = `networks[${lab.networks.indexOf(network)}].subnets[${network.subnets.indexOf(subnet)}]`;
      // What the Network component hands its Subnet: dnsmasq.conf, and the IPAM record whose
      // MAC-carrying allocations become dnsmasq's dhcp-hostsfile.
      const conf = at(path, () => subnetPlan(network, subnet).dnsmasqConf);
      files.push([`subnets/${subnet.name}/dnsmasq.conf`, conf]);
      const allocations: IpamRecord["allocations"] = {
        [plan.dhcpPorts[subnet.name]]: { owner: "dhcp", mac: "" },
      };
      for (const s of plan.servers)
        s.ports.forEach((p, i) => {
          if (p.subnet === subnet.name)
            allocations[p.ip] = { owner: portOwner(s.name, i), mac: rendered.get(s.name)!.macs[i] };
        });
      const record: IpamRecord = {
        subnet: subnet.name,
        cidr: subnet.cidr,
        gateway: subnet.gateway ?? "",
        pool: subnet.pool,
        allocations,
      };
      files.push([`subnets/${subnet.name}/hosts`, hostsFileText(record)]);
    }
  }

  for (const r of lab.routers) {
    // What the lab program hands its Router: the gateway the plan gave it, a leg per subnet on
    // the subnet's gateway; the Router's check renders the ruleset with this same function.
    const path = `routers[${lab.routers.indexOf(r)}]`;
    const names = routerNames(r.name);
    const gateway = plan.routerGateways[r.name];
    if (gateway !== undefined)
      files.push([
        `routers/${r.name}/ruleset`,
        at(path, () =>
          renderRouterRuleset({
            routerName: r.name,
            gatewayDevice: names.gatewayDevice,
            gatewayAddress: gateway,
            enableSnat: true,
            randomFully: true,
          }),
        ),
      ]);
    const legs: string[] = [];
    const ext = lab.networks.find((n) => n.name === r.externalNetwork);
    if (ext !== undefined && gateway !== undefined)
      legs.push(
        `${names.gatewayDevice} ${gateway}/${parseCidr(ext.subnets[0].cidr).prefix} ${networkDevices(ext.name).bridge}`,
      );
    for (const subnetName of r.interfaces) {
      const net = lab.networks.find((n) => n.subnets.some((x) => x.name === subnetName))!;
      const sub = net.subnets.find((x) => x.name === subnetName)!;
      const gw = subnetPlan(net, sub).gateway;
      legs.push(
        `${routerInterfaceNames(r.name, subnetName).device} ${gw}/${parseCidr(sub.cidr).prefix} ${networkDevices(net.name).bridge}`,
      );
    }
    files.push([`routers/${r.name}/legs`, `${legs.join("\n")}\n`]);
  }

  const planJson = {
    lab: lab.name,
    project,
    notes: volumePlan.length > 0 ? [...RENDER_NOTES, VOLUME_RENDER_NOTE] : RENDER_NOTES,
    stack,
    networks: lab.networks.map((n) => {
      const { shortId, bridge, vxlan } = networkDevices(n.name);
      return { name: n.name, shortId, bridge, ...(n.kind === "selfservice" ? { vxlan } : {}) };
    }),
    subnets: lab.networks.flatMap((n) =>
      n.subnets.filter((s) => s.dhcp).map((s) => ({ name: s.name, ...dhcpPaths(n.name, s.name) })),
    ),
    servers: plan.servers.map((s) => {
      const r = rendered.get(s.name)!;
      return {
        name: s.name,
        group: s.group,
        host: s.host ?? "decided at apply time",
        uuid: r.uuid,
        uuidSeed: r.uuidSeed,
        instanceDir: serverPaths(r.uuid).dir,
        floatingIp: s.floatingIp,
        ports: s.ports.map((p, i) => ({
          subnet: p.subnet,
          ip: p.ip,
          allocated: !p.fixed,
          mac: r.macs[i],
          tap: r.taps[i],
          bridge: p.bridge,
        })),
      };
    }),
    ...(volumePlan.length > 0 ? { volumes: volumePlan } : {}),
    loadBalancers: lab.loadBalancers.map((lb) => {
      // vrrpAddresses only for ACTIVE_STANDBY: SINGLE entries read as before.
      const { vrrpAddresses, ...vip } = plan.vips[lb.name];
      return { name: lb.name, ...vip, ...(vrrpAddresses.length > 0 ? { vrrpAddresses } : {}) };
    }),
    dhcpPorts: plan.dhcpPorts,
    routerGateways: plan.routerGateways,
  };
  files.push(["plan.json", `${JSON.stringify(planJson, null, 2)}\n`]);
  files.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return { files: new Map(files), plan, servers: rendered };
}
