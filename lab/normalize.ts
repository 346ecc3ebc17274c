/**
 * Raw (schema- and meaning-checked) lab data → the typed {@link Lab} model, with every
 * default from stacks/lab.schema.json applied. Only called once validation found no issue.
 */
import type {
  Lab,
  LabAutoscaleGroup,
  LabHealthMonitor,
  LabLaunch,
  LabListener,
  LabLoadBalancer,
  LabL7Policy,
  LabL7Rule,
  LabPool,
  LabRule,
  LabTier,
  SecretRef,
} from "./model";

// Validated input: field access through this loose type is safe by construction.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Raw = any;

const list = (v: Raw): Raw[] => (Array.isArray(v) ? v : []);
const opt = <T>(v: T | undefined): T | null => (v === undefined ? null : v);
const secret = (v: Raw): SecretRef | null => (v === undefined ? null : { secret: String(v.secret) });

function launch(l: Raw): LabLaunch {
  return {
    image: l.image,
    flavor: l.flavor,
    networks: list(l.networks).map((p: Raw) => ({ subnet: p.subnet, fixedIp: opt(p.fixedIp) })),
    keypair: opt(l.keypair),
    securityGroups: list(l.securityGroups),
    userData: {
      writeFiles: list(l.userData?.writeFiles).map((f: Raw) => ({
        path: f.path,
        content: f.content,
        permissions: f.permissions ?? "0644",
        owner: f.owner ?? "root:root",
      })),
      runcmd: list(l.userData?.runcmd),
    },
  };
}

function monitor(m: Raw): LabHealthMonitor | null {
  if (m === undefined) return null;
  const http = m.type === "HTTP" || m.type === "HTTPS";
  return {
    type: m.type,
    delay: m.delay,
    timeout: m.timeout,
    maxRetries: m.maxRetries,
    maxRetriesDown: m.maxRetriesDown ?? 3,
    httpMethod: http ? (m.httpMethod ?? "GET") : null,
    urlPath: http ? (m.urlPath ?? "/") : null,
    expectedCodes: http ? (m.expectedCodes ?? "200") : null,
    httpVersion: http ? (m.httpVersion ?? "1.0") : null,
    domainName: opt(m.domainName),
    adminStateUp: m.adminStateUp ?? true,
  };
}

function pool(p: Raw): LabPool | null {
  if (p === undefined) return null;
  return {
    name: p.name,
    protocol: p.protocol,
    lbAlgorithm: p.lbAlgorithm ?? "ROUND_ROBIN",
    sessionPersistence:
      p.sessionPersistence === undefined
        ? null
        : { type: p.sessionPersistence.type, cookieName: opt(p.sessionPersistence.cookieName) },
    healthMonitor: monitor(p.healthMonitor),
    members: list(p.members).map((m: Raw) => ({
      server: opt(m.server),
      name: m.server ?? m.name,
      address: opt(m.address),
      protocolPort: m.protocolPort,
      weight: m.weight ?? 1,
      backup: m.backup ?? false,
      adminStateUp: m.adminStateUp ?? true,
      monitorPort: opt(m.monitorPort),
      monitorAddress: opt(m.monitorAddress),
    })),
    tlsEnabled: p.tlsEnabled ?? false,
    adminStateUp: p.adminStateUp ?? true,
  };
}

function listener(l: Raw): LabListener {
  const h = l.insertHeaders ?? {};
  return {
    name: l.name,
    protocol: l.protocol,
    protocolPort: l.protocolPort,
    connectionLimit: l.connectionLimit ?? -1,
    timeoutClientData: l.timeoutClientData ?? 50000,
    timeoutMemberConnect: l.timeoutMemberConnect ?? 5000,
    timeoutMemberData: l.timeoutMemberData ?? 50000,
    timeoutTcpInspect: l.timeoutTcpInspect ?? 0,
    allowedCidrs: list(l.allowedCidrs),
    insertHeaders: {
      "X-Forwarded-For": h["X-Forwarded-For"] ?? false,
      "X-Forwarded-Port": h["X-Forwarded-Port"] ?? false,
      "X-Forwarded-Proto": h["X-Forwarded-Proto"] ?? false,
    },
    certificatePath: opt(l.certificatePath),
    sniCertificatePaths: list(l.sniCertificatePaths),
    clientAuthentication: l.clientAuthentication ?? "NONE",
    clientCaPath: opt(l.clientCaPath),
    clientCrlPath: opt(l.clientCrlPath),
    pool: pool(l.pool),
    l7Policies: list(l.l7Policies).map((p: Raw): LabL7Policy => ({
      name: p.name,
      action: p.action,
      position: opt(p.position),
      redirectUrl: opt(p.redirectUrl),
      redirectPrefix: opt(p.redirectPrefix),
      redirectPool: pool(p.redirectPool),
      redirectHttpCode: opt(p.redirectHttpCode),
      rules: list(p.rules).map((r: Raw): LabL7Rule => ({
        type: r.type,
        compareType: r.compareType,
        key: opt(r.key),
        value: r.value,
        invert: r.invert ?? false,
        adminStateUp: r.adminStateUp ?? true,
      })),
      adminStateUp: p.adminStateUp ?? true,
    })),
    adminStateUp: l.adminStateUp ?? true,
  };
}

function rule(r: Raw): LabRule {
  const portful = r.protocol === "tcp" || r.protocol === "udp";
  return {
    direction: r.direction ?? "ingress",
    protocol: r.protocol,
    ports: !portful
      ? null
      : r.port !== undefined
        ? { min: r.port, max: r.port }
        : r.portRange !== undefined
          ? { min: r.portRange.min, max: r.portRange.max }
          : null,
    remoteCidr: opt(r.remoteCidr),
    remoteGroup: opt(r.remoteGroup),
    description: opt(r.description),
  };
}

const tier = (t: Raw): LabTier => ({
  autoscaleGroup: opt(t?.autoscaleGroup),
  server: opt(t?.server),
  loadBalancer: opt(t?.loadBalancer),
});

export function normalizeLab(d: Raw): Lab {
  const defaultProject: string = d.defaultProject ?? "admin";
  const id = d.identity ?? {};
  return {
    name: d.name,
    defaultProject,
    hosts: list(d.hosts).map((h: Raw) => ({
      name: h.name,
      address: h.address,
      port: h.port ?? 22,
      user: h.user ?? "root",
      privateKey: secret(h.privateKey),
      privateKeyPath: opt(h.privateKeyPath),
      hostKey: h.hostKey,
    })),
    identity: {
      domains: list(id.domains).map((x: Raw) => ({ name: x.name, description: opt(x.description) })),
      projects: list(id.projects).map((x: Raw) => ({
        name: x.name,
        domain: x.domain,
        quotas: {
          instances: opt(x.quotas?.instances),
          vcpus: opt(x.quotas?.vcpus),
          ramMiB: opt(x.quotas?.ramMiB),
        },
      })),
      users: list(id.users).map((x: Raw) => ({
        name: x.name,
        domain: x.domain,
        password: secret(x.password),
        sshPublicKey: opt(x.sshPublicKey),
      })),
      assignments: list(id.assignments).map((x: Raw) => ({ user: x.user, project: x.project, role: x.role })),
    },
    images: list(d.images).map((x: Raw) => ({
      name: x.name,
      format: x.format,
      source: opt(x.source),
      checksum: opt(x.checksum),
      kernel: opt(x.kernel),
      ramdisk: opt(x.ramdisk),
      cmdline: opt(x.cmdline),
      minDiskGiB: x.minDiskGiB ?? 0,
      minRamMiB: x.minRamMiB ?? 0,
      defaultUser: x.defaultUser ?? "kvmlab",
    })),
    flavors: list(d.flavors).map((x: Raw) => ({
      name: x.name,
      vcpus: x.vcpus,
      ramMiB: x.ramMiB,
      diskGiB: x.diskGiB,
      ephemeralGiB: x.ephemeralGiB ?? 0,
      swapMiB: x.swapMiB ?? 0,
      extraSpecs: { ...(x.extraSpecs ?? {}) },
    })),
    keypairs: list(d.keypairs).map((x: Raw) => ({ name: x.name, publicKey: x.publicKey })),
    networks: list(d.networks).map((n: Raw) => ({
      name: n.name,
      kind: n.kind,
      driver: n.driver ?? "linuxbridge",
      external: n.external ?? false,
      physicalInterface: opt(n.physicalInterface),
      vni: opt(n.vni),
      mtu: opt(n.mtu),
      subnets: list(n.subnets).map((s: Raw) => ({
        name: s.name,
        network: n.name,
        cidr: s.cidr,
        gateway: opt(s.gateway),
        pool: { start: s.pool.start, end: s.pool.end },
        dhcp: s.dhcp ?? true,
        dns: list(s.dns),
      })),
    })),
    routers: list(d.routers).map((r: Raw) => ({
      name: r.name,
      externalNetwork: opt(r.externalNetwork),
      interfaces: list(r.interfaces),
    })),
    securityGroups: list(d.securityGroups).map((g: Raw) => ({
      name: g.name,
      description: opt(g.description),
      rules: list(g.rules).map(rule),
    })),
    servers: list(d.servers).map((s: Raw) => ({
      name: s.name,
      project: s.project ?? defaultProject,
      host: opt(s.host),
      floatingIp: s.floatingIp ?? false,
      ...launch(s),
    })),
    loadBalancers: list(d.loadBalancers).map((lb: Raw): LabLoadBalancer => ({
      name: lb.name,
      project: lb.project ?? defaultProject,
      vipSubnet: lb.vipSubnet,
      vipAddress: opt(lb.vipAddress),
      floatingIp: lb.floatingIp ?? false,
      securityGroups: list(lb.securityGroups),
      host: opt(lb.host),
      topology: lb.topology ?? "SINGLE",
      standbyHost: opt(lb.standbyHost),
      listeners: list(lb.listeners).map(listener),
    })),
    autoscaleGroups: list(d.autoscaleGroups).map((g: Raw): LabAutoscaleGroup => ({
      name: g.name,
      project: g.project ?? defaultProject,
      launch: launch(g.launch),
      min: g.min,
      max: g.max,
      desired: g.desired,
      policies: list(g.policies).map((p: Raw) => ({
        name: p.name,
        metric: p.metric ?? "cpu",
        above: opt(p.above),
        below: opt(p.below),
        adjustment: p.adjustment,
        cooldownSec: p.cooldownSec ?? 300,
      })),
      pool:
        g.pool === undefined
          ? null
          : {
              loadBalancer: g.pool.loadBalancer,
              listener: g.pool.listener,
              protocolPort: g.pool.protocolPort,
              weight: g.pool.weight ?? 1,
            },
    })),
    apps: list(d.apps).map((a: Raw) => ({
      name: a.name,
      kind: a.kind,
      web: tier(a.web),
      was: tier(a.was),
      db: tier(a.db),
      bastion: tier(a.bastion),
    })),
  };
}
