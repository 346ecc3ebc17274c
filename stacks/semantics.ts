/**
 * The meaning checks of a lab definition, run after (and independently of) the schema so one
 * pass reports everything: unique names, references, address plans, flavor fit, load balancer
 * consistency. Works on the raw parsed YAML and tolerates wrong shapes (the schema reports those).
 */
import {
  Cidr,
  cidrContains,
  FieldError,
  hostRange,
  intToIp,
  ipToInt,
  isIPv4,
  overlaps,
  parseCidr,
  toHaproxyView,
  type ListenerSpec,
} from "../templates";
import type { LabIssue } from "./model";
import type { Locator, PathSegment } from "./lab";

type Rec = Record<string, unknown>;
const rec = (v: unknown): Rec | null =>
  v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Rec) : null;
const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
const num = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);
const bool = (v: unknown, dflt: boolean): boolean => (typeof v === "boolean" ? v : dflt);

/** `[index, entry]` for each object entry of the list at `parent[key]`. */
function items(parent: unknown, key: string): [number, Rec][] {
  const list = rec(parent)?.[key];
  if (!Array.isArray(list)) return [];
  return list.flatMap((v, i): [number, Rec][] => (rec(v) ? [[i, v as Rec]] : []));
}

function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length][b.length];
}

interface SubnetInfo {
  path: PathSegment[];
  name: string;
  network: string;
  networkExternal: boolean;
  cidr: Cidr | null;
  gateway: number | null;
  pool: [number, number] | null;
  dhcp: boolean;
}

export function checkSemantics(data: Rec, at: Locator, schemaIssuePaths: readonly string[] = []): LabIssue[] {
  const issues: LabIssue[] = [];
  const add = (path: PathSegment[], message: string, fix: string, key?: string) =>
    issues.push(at.issue(path, message, fix, key));

  /** Registers names of one kind; duplicates are reported at the second occurrence. */
  const names = (kind: string, entries: [PathSegment[], unknown][]): Map<string, PathSegment[]> => {
    const seen = new Map<string, PathSegment[]>();
    for (const [path, value] of entries) {
      const name = str(value);
      if (name === null) continue;
      const first = seen.get(name);
      if (first !== undefined) {
        add(
          [...path, "name"],
          `duplicate ${kind} name "${name}" (first defined at ${formatPathLocal(first)})`,
          `rename one of the two ${kind}s`,
        );
      } else seen.set(name, path);
    }
    return seen;
  };
  const ref = (path: PathSegment[], value: unknown, known: ReadonlyMap<string, unknown>, kind: string) => {
    const name = str(value);
    if (name === null || known.has(name)) return;
    const close = [...known.keys()].filter((k) => distance(k, name) <= 2);
    const fix =
      close.length > 0
        ? `did you mean "${close[0]}"?`
        : known.size > 0
          ? `use one of: ${[...known.keys()].join(", ")}`
          : `define the ${kind} first or correct the name`;
    add(path, `unknown ${kind} "${name}"`, fix);
  };
  const cidrAt = (path: PathSegment[], value: unknown): Cidr | null => {
    if (typeof value !== "string") return null;
    try {
      return parseCidr(value);
    } catch (err) {
      if (err instanceof FieldError)
        add(path, err.problem, "write the network address with its prefix, e.g. 10.0.1.0/24");
      return null;
    }
  };

  // ---- names per kind ---------------------------------------------------------------------
  const hosts = names(
    "host",
    items(data, "hosts").map(([i, h]) => [["hosts", i], h.name]),
  );
  // The schema admits IPv4 addresses and DNS names alike; four numbers with dots are never a DNS
  // name (a top-level label is not all digits), so they must be a valid IPv4 address.
  for (const [i, h] of items(data, "hosts")) {
    const address = str(h.address);
    if (address !== null && /^\d+(\.\d+){3}$/.test(address) && !isIPv4(address)) {
      add(
        ["hosts", i, "address"],
        `${address} is not a valid IPv4 address`,
        "use four numbers from 0 to 255 (e.g. 10.255.0.11) or the host's DNS name",
      );
    }
  }
  const identity = rec(data.identity);
  const domains = names(
    "domain",
    items(identity, "domains").map(([i, d]) => [["identity", "domains", i], d.name]),
  );
  const projects = names(
    "project",
    items(identity, "projects").map(([i, p]) => [["identity", "projects", i], p.name]),
  );
  const users = names(
    "user",
    items(identity, "users").map(([i, u]) => [["identity", "users", i], u.name]),
  );
  const images = names(
    "image",
    items(data, "images").map(([i, x]) => [["images", i], x.name]),
  );
  const flavors = names(
    "flavor",
    items(data, "flavors").map(([i, x]) => [["flavors", i], x.name]),
  );
  const keypairs = names(
    "keypair",
    items(data, "keypairs").map(([i, x]) => [["keypairs", i], x.name]),
  );
  const networks = names(
    "network",
    items(data, "networks").map(([i, x]) => [["networks", i], x.name]),
  );
  const subnetEntries: [PathSegment[], unknown][] = [];
  for (const [i, n] of items(data, "networks"))
    for (const [j, s] of items(n, "subnets")) subnetEntries.push([["networks", i, "subnets", j], s.name]);
  const subnets = names("subnet", subnetEntries);
  names(
    "router",
    items(data, "routers").map(([i, x]) => [["routers", i], x.name]),
  );
  const groups = names(
    "security group",
    items(data, "securityGroups").map(([i, x]) => [["securityGroups", i], x.name]),
  );
  const lbs = names(
    "load balancer",
    items(data, "loadBalancers").map(([i, x]) => [["loadBalancers", i], x.name]),
  );
  const asgs = names(
    "autoscale group",
    items(data, "autoscaleGroups").map(([i, x]) => [["autoscaleGroups", i], x.name]),
  );
  names(
    "app",
    items(data, "apps").map(([i, x]) => [["apps", i], x.name]),
  );
  // Servers share one namespace with autoscale group members (<group>-0 … <group>-<max-1>).
  const serverEntries: [PathSegment[], unknown][] = items(data, "servers").map(([i, x]) => [
    ["servers", i],
    x.name,
  ]);
  for (const [i, g] of items(data, "autoscaleGroups")) {
    const max = num(g.max) ?? 0;
    const name = str(g.name);
    if (name !== null)
      for (let k = 0; k < Math.min(max, 100); k++)
        serverEntries.push([["autoscaleGroups", i], `${name}-${k}`]);
  }
  const servers = names("server", serverEntries);

  // ---- identity ----------------------------------------------------------------------------
  const projectsOrAdmin: ReadonlyMap<string, unknown> =
    projects.size > 0 ? projects : new Map([["admin", []]]);
  for (const [i, p] of items(identity, "projects"))
    ref(["identity", "projects", i, "domain"], p.domain, domains, "domain");
  for (const [i, u] of items(identity, "users"))
    ref(["identity", "users", i, "domain"], u.domain, domains, "domain");
  for (const [i, a] of items(identity, "assignments")) {
    ref(["identity", "assignments", i, "user"], a.user, users, "user");
    ref(["identity", "assignments", i, "project"], a.project, projects, "project");
  }
  if (data.defaultProject !== undefined)
    ref(["defaultProject"], data.defaultProject, projectsOrAdmin, "project");
  if (data.defaultProject === undefined && projects.size > 0 && !projects.has("admin")) {
    const needsProject = [
      ...items(data, "servers"),
      ...items(data, "loadBalancers"),
      ...items(data, "autoscaleGroups"),
    ].some(([, x]) => x.project === undefined);
    if (needsProject)
      add(
        [],
        'objects without "project" belong to "admin", which identity.projects does not define',
        `set defaultProject to one of: ${[...projects.keys()].join(", ")}`,
      );
  }

  // ---- networks and subnets ----------------------------------------------------------------
  const subnetInfo = new Map<string, SubnetInfo>();
  const fixedIps = new Map<string, Map<number, PathSegment[]>>(); // subnet → ip → path
  for (const [i, n] of items(data, "networks")) {
    const external = bool(n.external, false);
    const infos: SubnetInfo[] = [];
    if (external && n.kind === "selfservice") {
      add(
        ["networks", i, "external"],
        "an external network must be a provider network",
        "set kind: provider (with physicalInterface) or external: false",
      );
    }
    for (const [j, s] of items(n, "subnets")) {
      const path: PathSegment[] = ["networks", i, "subnets", j];
      const cidr = cidrAt([...path, "cidr"], s.cidr);
      let gateway: number | null = null;
      const inside = (p: PathSegment[], v: unknown, what: string): number | null => {
        if (!isIPv4(v) || cidr === null) return null;
        const ip = ipToInt(v);
        if (!cidrContains(cidr, ip)) {
          add(p, `${what} ${v} is outside ${cidr.text}`, `pick an address inside ${cidr.text}`);
          return null;
        }
        if (cidr.prefix < 31 && (ip === cidr.network || ip === cidr.broadcast)) {
          add(
            p,
            `${what} ${v} is the ${ip === cidr.network ? "network" : "broadcast"} address of ${cidr.text}`,
            `use one of ${intToIp(hostRange(cidr)[0])}–${intToIp(hostRange(cidr)[1])}`,
          );
          return null;
        }
        return ip;
      };
      if (s.gateway !== undefined) gateway = inside([...path, "gateway"], s.gateway, "gateway");
      const pool = rec(s.pool);
      let range: [number, number] | null = null;
      if (pool !== null) {
        const start = inside([...path, "pool", "start"], pool.start, "pool start");
        const end = inside([...path, "pool", "end"], pool.end, "pool end");
        if (start !== null && end !== null) {
          if (start > end)
            add(
              [...path, "pool", "end"],
              `pool end ${String(pool.end)} comes before start ${String(pool.start)}`,
              "swap start and end",
            );
          else range = [start, end];
        }
        if (range !== null && gateway !== null && gateway >= range[0] && gateway <= range[1]) {
          add(
            [...path, "gateway"],
            `gateway ${String(s.gateway)} lies inside the allocation pool`,
            "move the gateway out of the pool or shrink the pool",
          );
        }
      }
      const name = str(s.name);
      const info: SubnetInfo = {
        path,
        name: name ?? "",
        network: str(n.name) ?? "",
        networkExternal: external,
        cidr,
        gateway,
        pool: range,
        dhcp: bool(s.dhcp, true),
      };
      infos.push(info);
      if (name !== null && !subnetInfo.has(name)) subnetInfo.set(name, info);
      if (name !== null) fixedIps.set(name, new Map());
    }
    for (let a = 0; a < infos.length; a++)
      for (let b = a + 1; b < infos.length; b++) {
        const x = infos[a].cidr;
        const y = infos[b].cidr;
        if (x && y && overlaps(x, y))
          add(
            [...infos[b].path, "cidr"],
            `${y.text} overlaps ${x.text} of subnet ${infos[a].name} in the same network`,
            "give each subnet of a network its own range",
          );
      }
  }

  // ---- routers ----------------------------------------------------------------------------
  const routedBy = new Map<string, string>(); // subnet → router
  const routerExternal = new Map<string, string | null>();
  for (const [i, r] of items(data, "routers")) {
    const ext = str(r.externalNetwork);
    if (r.externalNetwork !== undefined) {
      ref(["routers", i, "externalNetwork"], r.externalNetwork, networks, "network");
      const netEntry = items(data, "networks").find(([, n]) => n.name === ext);
      if (netEntry && !bool(netEntry[1].external, false)) {
        add(
          ["routers", i, "externalNetwork"],
          `network "${ext}" is not external`,
          `set external: true on network ${ext} or pick an external network`,
        );
      }
    }
    routerExternal.set(str(r.name) ?? "", ext);
    const attached: SubnetInfo[] = [];
    const list = Array.isArray(r.interfaces) ? r.interfaces : [];
    list.forEach((s, j) => {
      ref(["routers", i, "interfaces", j], s, subnets, "subnet");
      const info = typeof s === "string" ? subnetInfo.get(s) : undefined;
      if (info === undefined) return;
      if (info.network === ext)
        add(
          ["routers", i, "interfaces", j],
          `subnet ${s} belongs to the router's external network`,
          "attach internal subnets only",
        );
      if (info.gateway === null)
        add(
          ["routers", i, "interfaces", j],
          `subnet ${s} has no gateway for the router to take`,
          `set gateway on subnet ${s}`,
        );
      const other = routedBy.get(s as string);
      if (other !== undefined && other !== r.name)
        add(
          ["routers", i, "interfaces", j],
          `subnet ${s} is already attached to router ${other}`,
          "attach each subnet to one router",
        );
      routedBy.set(s as string, String(r.name));
      for (const prev of attached) {
        if (prev.cidr && info.cidr && overlaps(prev.cidr, info.cidr)) {
          add(
            ["routers", i, "interfaces", j],
            `${info.cidr.text} of ${s} overlaps ${prev.cidr.text} of ${prev.name}, both on this router`,
            "use non-overlapping ranges for subnets behind one router",
          );
        }
      }
      attached.push(info);
    });
  }
  const canFloat = (subnet: string | null): boolean => {
    if (subnet === null) return true;
    const router = routedBy.get(subnet);
    return router !== undefined && (routerExternal.get(router) ?? null) !== null;
  };

  // ---- security groups --------------------------------------------------------------------
  for (const [i, g] of items(data, "securityGroups"))
    for (const [j, r] of items(g, "rules")) {
      const path: PathSegment[] = ["securityGroups", i, "rules", j];
      if (r.remoteGroup !== undefined) ref([...path, "remoteGroup"], r.remoteGroup, groups, "security group");
      const portful = r.protocol === "tcp" || r.protocol === "udp";
      if (!portful && (r.port !== undefined || r.portRange !== undefined)) {
        add(
          [...path, r.port !== undefined ? "port" : "portRange"],
          `protocol ${String(r.protocol)} has no ports`,
          "remove port/portRange or use tcp/udp",
        );
      }
      if (r.port !== undefined && r.portRange !== undefined)
        add([...path, "portRange"], "give port or portRange, not both", "remove one");
      const pr = rec(r.portRange);
      if (pr && num(pr.min) !== null && num(pr.max) !== null && (pr.min as number) > (pr.max as number)) {
        add(
          [...path, "portRange", "max"],
          `max ${String(pr.max)} is below min ${String(pr.min)}`,
          "swap min and max",
        );
      }
    }

  // ---- ports, servers, autoscale groups ----------------------------------------------------
  const demand = new Map<string, number>(); // subnet → dynamic addresses needed
  const need = (subnet: unknown, count: number) => {
    if (typeof subnet === "string") demand.set(subnet, (demand.get(subnet) ?? 0) + count);
  };
  const fixed = (path: PathSegment[], subnet: unknown, ip: unknown) => {
    if (typeof subnet !== "string" || !isIPv4(ip)) return;
    const info = subnetInfo.get(subnet);
    if (info === undefined || info.cidr === null) return;
    const value = ipToInt(ip);
    if (!cidrContains(info.cidr, value))
      return add(
        path,
        `${ip} is outside subnet ${subnet} (${info.cidr.text})`,
        `pick an address inside ${info.cidr.text}`,
      );
    if (value === info.gateway)
      return add(path, `${ip} is the gateway of subnet ${subnet}`, "pick another address");
    const [lo, hi] = hostRange(info.cidr);
    if (value < lo || value > hi)
      return add(
        path,
        `${ip} is not a host address of ${info.cidr.text}`,
        `use one of ${intToIp(lo)}–${intToIp(hi)}`,
      );
    const taken = fixedIps.get(subnet);
    const first = taken?.get(value);
    if (first !== undefined)
      return add(
        path,
        `${ip} is already used by ${formatPathLocal(first)}`,
        "give each port its own address",
      );
    taken?.set(value, path);
  };
  const checkLaunch = (path: PathSegment[], l: Rec, members: number) => {
    ref([...path, "image"], l.image, images, "image");
    ref([...path, "flavor"], l.flavor, flavors, "flavor");
    if (l.keypair !== undefined) ref([...path, "keypair"], l.keypair, keypairs, "keypair");
    (Array.isArray(l.securityGroups) ? l.securityGroups : []).forEach((g, k) =>
      ref([...path, "securityGroups", k], g, groups, "security group"),
    );
    const subnetsSeen = new Set<string>();
    for (const [k, p] of items(l, "networks")) {
      ref([...path, "networks", k, "subnet"], p.subnet, subnets, "subnet");
      if (typeof p.subnet === "string") {
        if (subnetsSeen.has(p.subnet))
          add(
            [...path, "networks", k, "subnet"],
            `a second port on subnet ${p.subnet}`,
            "use one port per subnet",
          );
        subnetsSeen.add(p.subnet);
      }
      if (p.fixedIp !== undefined) {
        if (members !== 1)
          add(
            [...path, "networks", k, "fixedIp"],
            "an autoscale group's members cannot share a fixed IP",
            "remove fixedIp",
          );
        else fixed([...path, "networks", k, "fixedIp"], p.subnet, p.fixedIp);
      } else need(p.subnet, members);
    }
    const image = items(data, "images").find(([, x]) => x.name === l.image)?.[1];
    const flavor = items(data, "flavors").find(([, x]) => x.name === l.flavor)?.[1];
    if (image && flavor) {
      const minRam = num(image.minRamMiB) ?? 0;
      const minDisk = num(image.minDiskGiB) ?? 0;
      const ram = num(flavor.ramMiB);
      const disk = num(flavor.diskGiB);
      if (ram !== null && ram < minRam)
        add(
          [...path, "flavor"],
          `flavor ${String(l.flavor)} has ${ram} MiB RAM; image ${String(l.image)} needs at least ${minRam} MiB`,
          "pick a bigger flavor or lower the image's minRamMiB",
        );
      if (disk !== null && disk !== 0 && disk < minDisk)
        add(
          [...path, "flavor"],
          `flavor ${String(l.flavor)} has a ${disk} GiB disk; image ${String(l.image)} needs at least ${minDisk} GiB`,
          "pick a flavor with a bigger disk",
        );
    }
  };
  for (const [i, s] of items(data, "servers")) {
    const path: PathSegment[] = ["servers", i];
    checkLaunch(path, s, 1);
    if (s.project !== undefined) ref([...path, "project"], s.project, projectsOrAdmin, "project");
    if (s.host !== undefined) ref([...path, "host"], s.host, hosts, "host");
    if (bool(s.floatingIp, false)) {
      const first = str(items(s, "networks")[0]?.[1].subnet);
      if (!canFloat(first))
        add(
          [...path, "floatingIp"],
          `subnet ${first} is not behind a router with an external network`,
          "attach the subnet to a router that has externalNetwork, or remove floatingIp",
        );
    }
  }
  for (const [i, g] of items(data, "autoscaleGroups")) {
    const path: PathSegment[] = ["autoscaleGroups", i];
    const [min, max, desired] = [num(g.min), num(g.max), num(g.desired)];
    if (min !== null && max !== null && min > max)
      add([...path, "max"], `max ${max} is below min ${min}`, "raise max or lower min");
    if (desired !== null && min !== null && desired < min)
      add([...path, "desired"], `desired ${desired} is below min ${min}`, "set min ≤ desired ≤ max");
    if (desired !== null && max !== null && desired > max)
      add([...path, "desired"], `desired ${desired} is above max ${max}`, "set min ≤ desired ≤ max");
    const launch = rec(g.launch);
    if (launch) checkLaunch([...path, "launch"], launch, max ?? 0);
    if (g.project !== undefined) ref([...path, "project"], g.project, projectsOrAdmin, "project");
    names(
      "policy",
      items(g, "policies").map(([k, p]) => [[...path, "policies", k], p.name]),
    );
    const pool = rec(g.pool);
    if (pool) {
      ref([...path, "pool", "loadBalancer"], pool.loadBalancer, lbs, "load balancer");
      const lb = items(data, "loadBalancers").find(([, x]) => x.name === pool.loadBalancer)?.[1];
      if (lb) {
        const listener = items(lb, "listeners").find(([, x]) => x.name === pool.listener)?.[1];
        const known = new Map(items(lb, "listeners").map(([, x]) => [String(x.name), x]));
        if (!listener)
          ref(
            [...path, "pool", "listener"],
            pool.listener,
            known,
            `listener of ${String(pool.loadBalancer)}`,
          );
        else if (!rec(listener.pool))
          add(
            [...path, "pool", "listener"],
            `listener ${String(pool.listener)} has no pool`,
            `add a pool to listener ${String(pool.listener)}`,
          );
      }
    }
  }

  // ---- load balancers ---------------------------------------------------------------------
  for (const [i, lb] of items(data, "loadBalancers")) {
    const path: PathSegment[] = ["loadBalancers", i];
    ref([...path, "vipSubnet"], lb.vipSubnet, subnets, "subnet");
    if (lb.project !== undefined) ref([...path, "project"], lb.project, projectsOrAdmin, "project");
    if (lb.host !== undefined) ref([...path, "host"], lb.host, hosts, "host");
    (Array.isArray(lb.securityGroups) ? lb.securityGroups : []).forEach((g, k) =>
      ref([...path, "securityGroups", k], g, groups, "security group"),
    );
    if (lb.vipAddress !== undefined) fixed([...path, "vipAddress"], lb.vipSubnet, lb.vipAddress);
    else need(lb.vipSubnet, 1);
    if (bool(lb.floatingIp, false) && !canFloat(str(lb.vipSubnet))) {
      add(
        [...path, "floatingIp"],
        `subnet ${String(lb.vipSubnet)} is not behind a router with an external network`,
        "attach the VIP subnet to a router that has externalNetwork, or remove floatingIp",
      );
    }
    names(
      "listener",
      items(lb, "listeners").map(([j, l]) => [[...path, "listeners", j], l.name]),
    );
    const ports = new Map<number, number>();
    for (const [j, l] of items(lb, "listeners")) {
      const lpath: PathSegment[] = [...path, "listeners", j];
      const port = num(l.protocolPort);
      if (port !== null) {
        if (ports.has(port))
          add(
            [...lpath, "protocolPort"],
            `port ${port} is already used by listeners[${ports.get(port)}]`,
            "give each listener its own port",
          );
        else ports.set(port, j);
      }
      const pool = rec(l.pool);
      for (const [k, m] of items(pool, "members"))
        if (m.server !== undefined)
          ref([...lpath, "pool", "members", k, "server"], m.server, servers, "server");
      // The HAProxy view owns protocol/persistence/monitor rules: build it for this listener
      // with placeholder addresses and report its first objection here.
      const lpathText = formatPathLocal(lpath);
      if (
        schemaIssuePaths.some(
          (p) => p === lpathText || p.startsWith(`${lpathText}.`) || p.startsWith(`${lpathText}[`),
        )
      )
        continue;
      try {
        const spec = toListenerSpec(l);
        if (spec !== null) {
          toHaproxyView({
            name: "validate",
            vipAddress: "192.0.2.1",
            statsSocket: "/run/kvmlab/validate.sock",
            listeners: [spec],
          });
        }
      } catch (err) {
        if (!(err instanceof FieldError)) throw err;
        const field = viewFieldToPath(err.field);
        if (field !== null) add([...lpath, ...field], err.problem, err.fix ?? "see docs/lab-definition.md");
      }
    }
  }

  // ---- pool capacity ----------------------------------------------------------------------
  // Floating IPs and router gateway legs come from the external network's first subnet.
  for (const [, r] of items(data, "routers")) {
    const ext = items(data, "networks").find(([, n]) => n.name === r.externalNetwork)?.[1];
    need(str(items(ext, "subnets")[0]?.[1].name), 1);
  }
  const floating = [...items(data, "servers"), ...items(data, "loadBalancers")].filter(([, x]) =>
    bool(x.floatingIp, false),
  );
  for (const [, x] of floating) {
    const subnet = str(items(x, "networks")[0]?.[1].subnet) ?? str(x.vipSubnet);
    const router = subnet === null ? undefined : routedBy.get(subnet);
    const extName = router === undefined ? null : routerExternal.get(router);
    const ext = items(data, "networks").find(([, n]) => n.name === extName)?.[1];
    need(str(items(ext, "subnets")[0]?.[1].name), 1);
  }
  for (const [name, info] of subnetInfo) {
    if (info.pool === null) continue;
    const dynamic = (demand.get(name) ?? 0) + (info.dhcp ? 1 : 0);
    const fixedInPool = [...(fixedIps.get(name)?.keys() ?? [])].filter(
      (ip) => ip >= info.pool![0] && ip <= info.pool![1],
    ).length;
    const size = info.pool[1] - info.pool[0] + 1 - fixedInPool;
    if (dynamic > size) {
      add(
        [...info.path, "pool"],
        `pool of subnet ${name} has ${size} free addresses but the lab needs up to ${dynamic} (DHCP, VIPs, ports at autoscale max, floating IPs)`,
        "widen the pool or lower the demand",
      );
    }
  }

  // ---- apps -------------------------------------------------------------------------------
  for (const [i, a] of items(data, "apps")) {
    const path: PathSegment[] = ["apps", i];
    for (const tier of ["web", "was"] as const) {
      const t = rec(a[tier]);
      if (!t) continue;
      if (t.autoscaleGroup === undefined)
        add([...path, tier], `the ${tier} tier needs an autoscaleGroup`, "add autoscaleGroup: <group name>");
      else ref([...path, tier, "autoscaleGroup"], t.autoscaleGroup, asgs, "autoscale group");
      if (t.loadBalancer === undefined)
        add(
          [...path, tier],
          `the ${tier} tier needs a loadBalancer`,
          "add loadBalancer: <load balancer name>",
        );
      else ref([...path, tier, "loadBalancer"], t.loadBalancer, lbs, "load balancer");
      const g = items(data, "autoscaleGroups").find(([, x]) => x.name === t.autoscaleGroup)?.[1];
      const poolLb = rec(g?.pool)?.loadBalancer;
      if (g && t.loadBalancer !== undefined && poolLb !== t.loadBalancer) {
        add(
          [...path, tier, "loadBalancer"],
          `autoscale group ${String(t.autoscaleGroup)} registers with ${poolLb === undefined ? "no load balancer" : String(poolLb)}, not ${String(t.loadBalancer)}`,
          `set autoscaleGroups[].pool.loadBalancer of ${String(t.autoscaleGroup)} to ${String(t.loadBalancer)}`,
        );
      }
    }
    for (const tier of ["db", "bastion"] as const) {
      const t = rec(a[tier]);
      if (!t) continue;
      if (t.server === undefined)
        add([...path, tier], `the ${tier} tier needs a server`, "add server: <server name>");
      else ref([...path, tier, "server"], t.server, servers, "server");
    }
    const web = items(data, "loadBalancers").find(([, x]) => x.name === rec(a.web)?.loadBalancer)?.[1];
    if (web && !bool(web.floatingIp, false))
      add(
        [...path, "web", "loadBalancer"],
        `the public load balancer ${String(web.name)} has no floating IP`,
        `set floatingIp: true on load balancer ${String(web.name)}`,
      );
    const bastion = items(data, "servers").find(([, x]) => x.name === rec(a.bastion)?.server)?.[1];
    if (bastion && !bool(bastion.floatingIp, false))
      add(
        [...path, "bastion", "server"],
        `the bastion ${String(bastion.name)} has no floating IP`,
        `set floatingIp: true on server ${String(bastion.name)}`,
      );
  }
  return issues;
}

function formatPathLocal(path: readonly PathSegment[]): string {
  return path.map((s, i) => (typeof s === "number" ? `[${s}]` : i === 0 ? s : `.${s}`)).join("");
}

/** Maps a HAProxy view field (`listeners[0].defaultPool.members[1].name`) to the YAML path under a listener. */
function viewFieldToPath(field: string): PathSegment[] | null {
  const tokens = [...field.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) =>
    m[2] !== undefined ? Number(m[2]) : m[1],
  );
  if (tokens[0] !== "listeners" || tokens[1] !== 0) return null;
  return tokens.slice(2).map((t) => (t === "defaultPool" ? "pool" : t));
}

/** The HAProxy view's listener spec for a raw YAML listener, members at placeholder addresses. */
function toListenerSpec(l: Rec): ListenerSpec | null {
  if (typeof l.name !== "string" || typeof l.protocol !== "string" || typeof l.protocolPort !== "number")
    return null;
  const pool = rec(l.pool);
  return {
    ...(l as unknown as ListenerSpec),
    defaultPool:
      pool === null
        ? null
        : {
            ...(pool as unknown as ListenerSpec["defaultPool"] & object),
            members: items(pool, "members").map(([k, m]) => ({
              name: str(m.server) ?? str(m.name) ?? `member-${k}`,
              address: str(m.address) ?? "192.0.2.2",
              protocolPort: num(m.protocolPort) ?? 1,
              weight: num(m.weight) ?? 1,
              backup: bool(m.backup, false),
              adminStateUp: bool(m.adminStateUp, true),
              monitorPort: num(m.monitorPort),
            })),
          },
  };
}
