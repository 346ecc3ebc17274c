/**
 * Every artifact of a lab definition, rendered without touching a host: one file per object,
 * keyed by its path relative to the output folder. Pure and deterministic: the same lab gives
 * byte-identical files.
 *
 *   servers/<name>.xml                         libvirt domain
 *   servers/<name>/{meta-data,user-data,network-config}   NoCloud seed
 *   loadbalancers/<name>/haproxy.cfg
 *   subnets/<name>/dnsmasq.conf                (subnets with dhcp)
 *   plan.json                                  allocations this render assumed
 */
import {
  dhcpInterfaceName,
  dhcpPaths,
  domainName,
  imagePaths,
  instancePaths,
  loadBalancerPaths,
  renderCloudInit,
  renderDnsmasqConf,
  renderDomainXml,
  renderHaproxyCfg,
  serverUuid,
  toCloudInitView,
  toDnsmasqView,
  toDomainView,
  toHaproxyView,
  type MemberSpec,
} from "../templates";
import type { Lab } from "./model";
import { planLab, type LabPlan, type PlannedServer } from "./plan";

export interface RenderOptions {
  /** libvirt domain type to render; the provider detects it per host at apply time. @default "kvm" */
  readonly domainType?: "kvm" | "qemu";
}

/** What `kvmlab render` prints and writes to plan.json about values decided at apply time. */
export const RENDER_NOTES: readonly string[] = [
  "Addresses not fixed in the lab were allocated deterministically from each subnet's pool, in definition order (DHCP ports, router gateways, VIPs, server ports, autoscale members, floating IPs); `pulumi up` allocates them the same way unless the hosts already hold other allocations.",
  "Host placement of unpinned servers is decided at apply time (least-loaded host that fits); rendered files do not depend on it.",
  "VNC ports are automatic (autoport) and chosen by libvirt when the domain starts.",
  "Autoscale groups are rendered at their desired size; scaling adds or removes <group>-<i> members.",
];

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

/** Renders every artifact of `lab`. Keys are sorted; values end with a newline. */
export function renderLab(
  lab: Lab,
  options: RenderOptions = {},
): { files: Map<string, string>; plan: LabPlan } {
  const plan = at("", () => planLab(lab));
  const files: [string, string][] = [];
  const subnetOf = new Map(
    lab.networks.flatMap((n) => n.subnets.map((s) => [s.name, { subnet: s, network: n }] as const)),
  );

  for (const s of plan.servers) {
    const path = serverPath(lab, s);
    const image = lab.images.find((i) => i.name === s.launch.image);
    const flavor = lab.flavors.find((f) => f.name === s.launch.flavor);
    if (image === undefined || flavor === undefined)
      throw new RenderError(path, new Error("image or flavor missing"));
    const name = domainName(lab.name, s.name);
    const paths = instancePaths(lab.name, s.name);
    const imgPaths = imagePaths(image.name);
    const xml = at(path, () =>
      renderDomainXml(
        toDomainView({
          name,
          uuid: serverUuid(lab.name, s.project, s.name),
          type: options.domainType ?? "kvm",
          vcpus: flavor.vcpus,
          memoryMiB: flavor.ramMiB,
          boot:
            image.format === "kernel"
              ? {
                  kind: "kernel",
                  kernel: imgPaths.kernel,
                  initrd: image.ramdisk === null ? null : imgPaths.ramdisk,
                  cmdline: image.cmdline ?? "",
                }
              : { kind: "disk", disk: paths.disk, format: "qcow2" },
          seedIso: paths.seedIso,
          nics: s.ports.map((p) => ({
            bridge: p.bridge,
            driver: p.driver,
            target: p.tap,
            mac: p.mac,
            mtu: p.mtu,
          })),
          serialLog: paths.consoleLog,
          vnc: { listen: "127.0.0.1", port: "auto" },
          metadata: {
            lab: lab.name,
            project: s.project,
            server: s.name,
            image: image.name,
            flavor: flavor.name,
          },
        }),
      ),
    );
    files.push([`servers/${s.name}.xml`, xml]);
    const keypair = lab.keypairs.find((k) => k.name === s.launch.keypair);
    const seed = at(path, () =>
      renderCloudInit(
        toCloudInitView({
          instanceId: `i-${serverUuid(lab.name, s.project, s.name)}`,
          hostname: s.name,
          users: [
            { name: image.defaultUser, sshAuthorizedKeys: keypair ? [keypair.publicKey] : [], sudo: true },
          ],
          writeFiles: s.launch.userData.writeFiles,
          runcmd: s.launch.userData.runcmd,
          nics: s.ports.map((p, i) => {
            const { subnet } = subnetOf.get(p.subnet)!;
            return {
              name: `eth${i}`,
              mac: p.mac,
              address: { ip: p.ip, cidr: subnet.cidr },
              gateway: i === 0 ? subnet.gateway : null,
              dnsServers: subnet.dns,
              mtu: p.mtu,
            };
          }),
        }),
      ),
    );
    for (const [file, text] of Object.entries(seed)) files.push([`servers/${s.name}/${file}`, text]);
  }

  lab.loadBalancers.forEach((lb, i) => {
    const path = `loadBalancers[${i}]`;
    const addressOf = (server: string) => plan.servers.find((s) => s.name === server)?.ports[0]?.ip ?? "";
    const cfg = at(path, () =>
      renderHaproxyCfg(
        toHaproxyView({
          name: `${lab.name}-${lb.name}`,
          vipAddress: plan.vips[lb.name].ip,
          statsSocket: loadBalancerPaths(lab.name, lb.name).statsSocket,
          listeners: lb.listeners.map((l) => {
            const groups = lab.autoscaleGroups.filter(
              (g) => g.pool?.loadBalancer === lb.name && g.pool.listener === l.name,
            );
            const members: MemberSpec[] = [
              ...(l.pool?.members ?? []).map((m) => ({
                name: m.name,
                address: m.server !== null ? addressOf(m.server) : (m.address ?? ""),
                protocolPort: m.protocolPort,
                weight: m.weight,
                backup: m.backup,
                adminStateUp: m.adminStateUp,
                monitorPort: m.monitorPort,
              })),
              ...groups.flatMap((g) =>
                plan.servers
                  .filter((s) => s.group === g.name)
                  .map((s) => ({
                    name: s.name,
                    address: s.ports[0].ip,
                    protocolPort: g.pool!.protocolPort,
                    weight: g.pool!.weight,
                  })),
              ),
            ];
            return {
              ...l,
              connectionLimit: l.connectionLimit,
              defaultPool:
                l.pool === null
                  ? null
                  : {
                      ...l.pool,
                      healthMonitor:
                        l.pool.healthMonitor === null
                          ? null
                          : {
                              ...l.pool.healthMonitor,
                              httpMethod: (l.pool.healthMonitor.httpMethod ?? undefined) as "GET" | undefined,
                              urlPath: l.pool.healthMonitor.urlPath ?? undefined,
                              expectedCodes: l.pool.healthMonitor.expectedCodes ?? undefined,
                              httpVersion: l.pool.healthMonitor.httpVersion ?? undefined,
                            },
                      members,
                    },
            };
          }),
        }),
      ),
    );
    files.push([`loadbalancers/${lb.name}/haproxy.cfg`, cfg]);
  });

  for (const network of lab.networks) {
    for (const subnet of network.subnets) {
      if (!subnet.dhcp) continue;
      const path = `subnets.${subnet.name}`;
      const conf = at(path, () =>
        renderDnsmasqConf(
          toDnsmasqView({
            network: `${lab.name}-${network.name}`,
            subnet: subnet.name,
            interface: dhcpInterfaceName(lab.name, subnet.name),
            cidr: subnet.cidr,
            rangeStart: subnet.pool.start,
            rangeEnd: subnet.pool.end,
            gateway: subnet.gateway,
            dnsServers: subnet.dns,
            mtu: network.mtu,
            hosts: plan.servers.flatMap((s) =>
              s.ports
                .filter((p) => p.subnet === subnet.name)
                .map((p) => ({ mac: p.mac, ip: p.ip, hostname: s.name })),
            ),
            leaseFile: dhcpPaths(lab.name, subnet.name).leaseFile,
            pidFile: dhcpPaths(lab.name, subnet.name).pidFile,
          }),
        ),
      );
      files.push([`subnets/${subnet.name}/dnsmasq.conf`, conf]);
    }
  }

  const planJson = {
    lab: lab.name,
    notes: RENDER_NOTES,
    servers: plan.servers.map((s) => ({
      name: s.name,
      group: s.group,
      host: s.host ?? "decided at apply time",
      floatingIp: s.floatingIp,
      ports: s.ports.map((p) => ({
        subnet: p.subnet,
        ip: p.ip,
        allocated: !p.fixed,
        mac: p.mac,
        tap: p.tap,
        bridge: p.bridge,
      })),
    })),
    loadBalancers: lab.loadBalancers.map((lb) => ({ name: lb.name, ...plan.vips[lb.name] })),
    dhcpPorts: plan.dhcpPorts,
    routerGateways: plan.routerGateways,
  };
  files.push(["plan.json", `${JSON.stringify(planJson, null, 2)}\n`]);
  files.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return { files: new Map(files), plan };
}
