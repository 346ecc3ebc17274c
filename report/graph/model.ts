/**
 * The topology a lab builds, as a graph: hosts, networks (by type), routers with their legs,
 * servers with their addresses, floating IPs and security groups on each port, load balancers
 * with their VIP and members. Made from a lab definition (with the deterministic address plan
 * of lab/plan.ts) or read back from a stack output. Pure: no I/O, no layout.
 */
import type { Lab } from "../../lab/model";
import { planLab } from "../../lab/plan";

export type NodeKind = "host" | "network" | "router" | "server" | "loadbalancer";
export type EdgeKind = "uplink" | "gateway" | "interface" | "port" | "vip" | "member" | "placement";

export interface TopoNode {
  /** Unique in the graph: `<kind>:<name>`. */
  readonly id: string;
  readonly kind: NodeKind;
  /** The object's name in the lab. */
  readonly label: string;
  /** Further lines under the name (type, CIDRs, flavor, floating IP…). */
  readonly lines: readonly string[];
  /** Style variant: the network type (`provider`, `selfservice`, `external`), the server's group. */
  readonly variant?: string;
}

export interface TopoEdge {
  readonly id: string;
  readonly kind: EdgeKind;
  readonly source: string;
  readonly target: string;
  /** Addresses, device and security groups on the link. */
  readonly label?: string;
}

export interface Topology {
  readonly name: string;
  readonly nodes: readonly TopoNode[];
  readonly edges: readonly TopoEdge[];
}

/** Thrown when a topology document (a stack output) does not fit; names the field. */
export class TopologyError extends Error {}

const id = (kind: NodeKind, name: string): string => `${kind}:${name}`;

/** The topology of a validated lab, with addresses from its deterministic plan. */
export function topologyFromLab(lab: Lab): Topology {
  const plan = planLab(lab);
  const nodes: TopoNode[] = [];
  const edges: TopoEdge[] = [];
  const edge = (kind: EdgeKind, source: string, target: string, label?: string): void => {
    edges.push({ id: `e${edges.length}`, kind, source, target, ...(label ? { label } : {}) });
  };
  const networkOf = new Map<string, string>();
  for (const n of lab.networks) for (const s of n.subnets) networkOf.set(s.name, n.name);

  for (const h of lab.hosts)
    nodes.push({ id: id("host", h.name), kind: "host", label: h.name, lines: [`${h.user}@${h.address}`] });

  for (const n of lab.networks) {
    const type =
      n.kind === "provider"
        ? `provider (flat) · ${n.physicalInterface ?? "uplink"}`
        : `selfservice · VXLAN${n.vni !== null ? ` ${n.vni}` : ""}`;
    nodes.push({
      id: id("network", n.name),
      kind: "network",
      label: n.name,
      lines: [
        `${type} · ${n.driver}${n.external ? " · external" : ""}`,
        ...n.subnets.map((s) => `${s.name} ${s.cidr}`),
      ],
      variant: n.external ? "external" : n.kind,
    });
    if (n.kind === "provider")
      for (const h of lab.hosts)
        edge("uplink", id("host", h.name), id("network", n.name), n.physicalInterface ?? undefined);
  }

  for (const r of lab.routers) {
    nodes.push({
      id: id("router", r.name),
      kind: "router",
      label: r.name,
      lines: [`qrouter-${r.name}`, r.externalNetwork ? "SNAT to the external network" : "internal only"],
    });
    if (r.externalNetwork !== null) {
      const ip = plan.routerGateways[r.name];
      edge("gateway", id("router", r.name), id("network", r.externalNetwork), `qg ${ip ?? ""}`.trim());
    }
    for (const sub of r.interfaces) {
      const net = networkOf.get(sub);
      if (net === undefined) continue;
      const gw = lab.networks.flatMap((n) => n.subnets).find((s) => s.name === sub)?.gateway;
      edge("interface", id("router", r.name), id("network", net), `qr ${gw ?? sub}`);
    }
  }

  for (const s of plan.servers) {
    const lines = [`${s.launch.flavor} · ${s.launch.image}`];
    if (s.group) lines.push(`autoscale group ${s.group}`);
    if (s.floatingIp) lines.push(`floating IP ${s.floatingIp}`);
    nodes.push({
      id: id("server", s.name),
      kind: "server",
      label: s.name,
      lines,
      ...(s.group ? { variant: "member" } : {}),
    });
    for (const p of s.ports) {
      const sgs = s.launch.securityGroups.length > 0 ? ` [${s.launch.securityGroups.join(", ")}]` : "";
      edge("port", id("server", s.name), id("network", p.network), `${p.ip}${sgs}`);
    }
    if (s.host !== null) edge("placement", id("server", s.name), id("host", s.host), "pinned");
  }

  for (const lb of lab.loadBalancers) {
    const vip = plan.vips[lb.name];
    const listeners = lb.listeners.map(
      (l) => `${l.protocol}:${l.protocolPort}${l.pool ? ` → ${l.pool.name} (${l.pool.lbAlgorithm})` : ""}`,
    );
    const lines = [...listeners, ...(vip?.floatingIp ? [`floating IP ${vip.floatingIp}`] : [])];
    nodes.push({ id: id("loadbalancer", lb.name), kind: "loadbalancer", label: lb.name, lines });
    const net = networkOf.get(lb.vipSubnet);
    if (net !== undefined) {
      const sgs = lb.securityGroups.length > 0 ? ` [${lb.securityGroups.join(", ")}]` : "";
      edge("vip", id("loadbalancer", lb.name), id("network", net), `VIP ${vip?.ip ?? ""}${sgs}`);
    }
    for (const l of lb.listeners) {
      for (const m of l.pool?.members ?? []) {
        const target = m.server !== null ? id("server", m.server) : undefined;
        if (target) edge("member", id("loadbalancer", lb.name), target, `:${m.protocolPort}`);
      }
    }
    for (const g of lab.autoscaleGroups) {
      if (g.pool?.loadBalancer !== lb.name) continue;
      // Every slot is a pool member (the ones not running are in maint), as the plan renders them.
      for (let i = 0; i < g.max; i++)
        edge(
          "member",
          id("loadbalancer", lb.name),
          id("server", `${g.name}-${i}`),
          `:${g.pool.protocolPort}`,
        );
    }
  }
  return { name: lab.name, nodes, edges };
}

const KINDS: readonly NodeKind[] = ["host", "network", "router", "server", "loadbalancer"];
const EDGE_KINDS: readonly EdgeKind[] = [
  "uplink",
  "gateway",
  "interface",
  "port",
  "vip",
  "member",
  "placement",
];

/**
 * A topology from a stack's outputs (`pulumi stack output --json`): its `topology` output, or a
 * topology document itself. Throws TopologyError naming the field that does not fit.
 */
export function topologyFromOutputs(doc: unknown): Topology {
  const isObj = (v: unknown): v is Record<string, unknown> =>
    typeof v === "object" && v !== null && !Array.isArray(v);
  if (!isObj(doc))
    throw new TopologyError("expected a JSON object (the output of `pulumi stack output --json`)");
  const t = "topology" in doc ? doc.topology : doc;
  const at = "topology" in doc ? "topology" : "(document)";
  if (t === "[secret]")
    throw new TopologyError(
      `${at}: the output is a secret; run \`pulumi stack output --json --show-secrets\` or make it plain`,
    );
  if (!isObj(t) || !Array.isArray(t.nodes) || !Array.isArray(t.edges))
    throw new TopologyError(
      `${at}: expected {name, nodes[], edges[]}: export the lab's topology from the program (export const topology = topologyFromLab(lab)) and pass \`pulumi stack output --json\``,
    );
  const ids = new Set<string>();
  t.nodes.forEach((n, i) => {
    const p = `${at}.nodes[${i}]`;
    if (!isObj(n) || typeof n.id !== "string" || typeof n.label !== "string")
      throw new TopologyError(`${p}: expected {id, kind, label, lines}`);
    if (!KINDS.includes(n.kind as NodeKind))
      throw new TopologyError(`${p}.kind: expected one of ${KINDS.join(", ")}`);
    if (n.lines !== undefined && (!Array.isArray(n.lines) || n.lines.some((l) => typeof l !== "string")))
      throw new TopologyError(`${p}.lines: expected a list of strings`);
    if (ids.has(n.id)) throw new TopologyError(`${p}.id: "${n.id}" is used twice`);
    ids.add(n.id);
  });
  t.edges.forEach((e, i) => {
    const p = `${at}.edges[${i}]`;
    if (!isObj(e) || typeof e.source !== "string" || typeof e.target !== "string")
      throw new TopologyError(`${p}: expected {kind, source, target, label}`);
    if (!EDGE_KINDS.includes(e.kind as EdgeKind))
      throw new TopologyError(`${p}.kind: expected one of ${EDGE_KINDS.join(", ")}`);
    for (const end of ["source", "target"] as const)
      if (!ids.has(e[end] as string)) throw new TopologyError(`${p}.${end}: no node "${String(e[end])}"`);
  });
  return {
    name: typeof t.name === "string" ? t.name : "stack",
    nodes: (t.nodes as Record<string, unknown>[]).map((n) => ({
      id: n.id as string,
      kind: n.kind as NodeKind,
      label: n.label as string,
      lines: (n.lines as string[] | undefined) ?? [],
      ...(typeof n.variant === "string" ? { variant: n.variant } : {}),
    })),
    edges: (t.edges as Record<string, unknown>[]).map((e, i) => ({
      id: typeof e.id === "string" ? e.id : `e${i}`,
      kind: e.kind as EdgeKind,
      source: e.source as string,
      target: e.target as string,
      ...(typeof e.label === "string" ? { label: e.label } : {}),
    })),
  };
}
