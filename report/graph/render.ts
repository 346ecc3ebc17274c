/**
 * Lays a topology out with ELK (elkjs, the Eclipse Layout Kernel's layered algorithm) and draws
 * it as a standalone SVG, or as a self-contained HTML page (inline SVG and CSS, no external
 * URL, no script). Pure: strings in, strings out (the layout is asynchronous, nothing else).
 */
import type { ElkExtendedEdge, ElkNode } from "elkjs/lib/elk-api";
import type { TopoEdge, TopoNode, Topology } from "./model";

const NAME_PX = 8.4; // per character of a 13px bold name (generous, so text never overflows its box)
const LINE_PX = 7.2; // per character of an 11.5px detail line
const LABEL_PX = 6.6; // per character of an 11px edge label

export interface PlacedNode extends TopoNode {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface PlacedEdge extends TopoEdge {
  points: { x: number; y: number }[];
  labelBox?: { x: number; y: number; width: number; height: number };
}

export interface Layout {
  name: string;
  width: number;
  height: number;
  nodes: PlacedNode[];
  edges: PlacedEdge[];
}

function nodeSize(n: TopoNode): { width: number; height: number } {
  const w = Math.max(n.label.length * NAME_PX, ...n.lines.map((l) => l.length * LINE_PX), 60) + 28;
  return { width: Math.ceil(w), height: 30 + 16 * n.lines.length };
}

/** Edge direction for layering: load balancers above servers above networks above hosts. */
function oriented(e: TopoEdge): { source: string; target: string } {
  return e.kind === "uplink"
    ? { source: e.target, target: e.source }
    : { source: e.source, target: e.target };
}

/** Positions every node and routes every edge with ELK's layered algorithm. */
export async function layoutTopology(t: Topology): Promise<Layout> {
  const ELK = (require("elkjs/lib/elk.bundled.js") as { default: typeof import("elkjs/lib/elk-api").default })
    .default;
  const elk = new ELK();
  const graph: ElkNode = {
    id: "root",
    layoutOptions: {
      "elk.algorithm": "layered",
      "elk.direction": "DOWN",
      "elk.edgeRouting": "ORTHOGONAL",
      "elk.spacing.nodeNode": "36",
      "elk.layered.spacing.nodeNodeBetweenLayers": "70",
      "elk.spacing.edgeLabel": "4",
      "elk.edgeLabels.inline": "false",
      "elk.layered.nodePlacement.strategy": "NETWORK_SIMPLEX",
      "elk.padding": "[top=56,left=24,bottom=24,right=24]",
    },
    children: t.nodes.map((n) => ({ id: n.id, ...nodeSize(n) })),
    edges: t.edges.map((e): ElkExtendedEdge => {
      const o = oriented(e);
      return {
        id: e.id,
        sources: [o.source],
        targets: [o.target],
        ...(e.label
          ? {
              labels: [
                {
                  id: `${e.id}-label`,
                  text: e.label,
                  width: Math.ceil(e.label.length * LABEL_PX) + 8,
                  height: 16,
                },
              ],
            }
          : {}),
      };
    }),
  };
  const out = await elk.layout(graph);
  const byId = new Map(t.nodes.map((n) => [n.id, n]));
  const nodes: PlacedNode[] = (out.children ?? []).map((c) => ({
    ...(byId.get(c.id) as TopoNode),
    x: c.x ?? 0,
    y: c.y ?? 0,
    width: c.width ?? 0,
    height: c.height ?? 0,
  }));
  const edgeById = new Map(t.edges.map((e) => [e.id, e]));
  const edges: PlacedEdge[] = (out.edges ?? []).map((e) => {
    const s = e.sections?.[0];
    const points = s ? [s.startPoint, ...(s.bendPoints ?? []), s.endPoint] : [];
    const l = e.labels?.[0];
    return {
      ...(edgeById.get(e.id) as TopoEdge),
      points,
      ...(l ? { labelBox: { x: l.x ?? 0, y: l.y ?? 0, width: l.width ?? 0, height: l.height ?? 0 } } : {}),
    };
  });
  return { name: t.name, width: Math.ceil(out.width ?? 0), height: Math.ceil(out.height ?? 0), nodes, edges };
}

const esc = (s: string): string =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const r1 = (n: number): string => String(Math.round(n * 10) / 10);

const KIND_TITLE: Record<string, string> = {
  host: "KVM host",
  network: "network",
  router: "router",
  server: "server",
  loadbalancer: "load balancer",
};

export const STYLE = `
.topology { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
.topology .title { font-size: 18px; font-weight: bold; fill: #1f2328; }
.topology .subtitle { font-size: 11.5px; fill: #57606a; }
.topology .node rect { stroke-width: 1.5; rx: 6; ry: 6; }
.topology .node .name { font-size: 13px; font-weight: bold; fill: #1f2328; }
.topology .node .line { font-size: 11.5px; fill: #3d444d; }
.topology .kind-host rect { fill: #eaeef2; stroke: #57606a; }
.topology .kind-network rect { fill: #ddf4ff; stroke: #0969da; }
.topology .kind-network.variant-provider rect { fill: #fff1e5; stroke: #bc4c00; }
.topology .kind-network.variant-external rect { fill: #ffebe9; stroke: #cf222e; }
.topology .kind-router rect { fill: #dafbe1; stroke: #1a7f37; }
.topology .kind-server rect { fill: #ffffff; stroke: #6e7781; }
.topology .kind-server.variant-member rect { fill: #fbefff; stroke: #8250df; }
.topology .kind-loadbalancer rect { fill: #fff8c5; stroke: #9a6700; }
.topology .edge path { fill: none; stroke: #8c959f; stroke-width: 1.4; }
.topology .edge.kind-uplink path { stroke: #bc4c00; stroke-width: 2.5; }
.topology .edge.kind-gateway path { stroke: #cf222e; stroke-width: 2; }
.topology .edge.kind-interface path { stroke: #1a7f37; stroke-width: 2; }
.topology .edge.kind-member path { stroke: #9a6700; stroke-dasharray: 5 3; }
.topology .edge.kind-placement path { stroke: #57606a; stroke-dasharray: 2 3; }
.topology .edge .label-bg { fill: #ffffff; fill-opacity: 0.92; }
.topology .edge text { font-size: 11px; fill: #1f2328; }
`;

/** The laid-out topology as an SVG element (with its own styles). */
export function renderSvg(l: Layout, opts: { standalone?: boolean } = {}): string {
  const out: string[] = [];
  const counts = new Map<string, number>();
  for (const n of l.nodes) counts.set(n.kind, (counts.get(n.kind) ?? 0) + 1);
  const summary = [...counts].map(([k, n]) => `${n} ${KIND_TITLE[k]}${n > 1 ? "s" : ""}`).join(", ");
  const width = Math.max(l.width, 420);
  out.push(
    `${opts.standalone ? '<?xml version="1.0" encoding="UTF-8"?>\n' : ""}<svg xmlns="http://www.w3.org/2000/svg" class="topology" viewBox="0 0 ${width} ${l.height}" width="${width}" height="${l.height}" role="img" aria-label="${esc(`topology of ${l.name}: ${summary}`)}">`,
    `<style>${STYLE}</style>`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text class="title" x="24" y="28">${esc(l.name)}</text>`,
    `<text class="subtitle" x="24" y="44">${esc(summary)}</text>`,
    `<g class="edges">`,
  );
  for (const e of l.edges) {
    if (e.points.length === 0) continue;
    const d = e.points.map((p, i) => `${i === 0 ? "M" : "L"}${r1(p.x)} ${r1(p.y)}`).join(" ");
    out.push(
      `<g class="edge kind-${e.kind}" data-kind="${e.kind}" data-source="${esc(e.source)}" data-target="${esc(e.target)}">`,
    );
    out.push(`<path d="${d}"/>`);
    if (e.label && e.labelBox) {
      const b = e.labelBox;
      out.push(
        `<rect class="label-bg" x="${r1(b.x)}" y="${r1(b.y)}" width="${r1(b.width)}" height="${r1(b.height)}"/>`,
        `<text x="${r1(b.x + 4)}" y="${r1(b.y + 12)}">${esc(e.label)}</text>`,
      );
    }
    out.push(`</g>`);
  }
  out.push(`</g>`, `<g class="nodes">`);
  for (const n of l.nodes) {
    out.push(
      `<g class="node kind-${n.kind}${n.variant ? ` variant-${n.variant}` : ""}" data-id="${esc(n.id)}" data-kind="${n.kind}" transform="translate(${r1(n.x)},${r1(n.y)})">`,
      `<title>${esc(`${KIND_TITLE[n.kind]} ${n.label}`)}</title>`,
      `<rect width="${r1(n.width)}" height="${r1(n.height)}"/>`,
      `<text class="name" x="12" y="19">${esc(n.label)}</text>`,
      ...n.lines.map((line, i) => `<text class="line" x="12" y="${35 + 16 * i}">${esc(line)}</text>`),
      `</g>`,
    );
  }
  out.push(`</g>`, `</svg>`);
  return `${out.join("\n")}\n`;
}

/** A self-contained HTML page around the SVG: inline styles only, no script, no external URL. */
export function renderHtml(l: Layout): string {
  const legend = [
    ["kind-host", "KVM host"],
    ["kind-network variant-provider", "provider (flat) network"],
    ["kind-network variant-external", "external network"],
    ["kind-network", "selfservice network (VXLAN)"],
    ["kind-router", "router"],
    ["kind-server", "server"],
    ["kind-server variant-member", "autoscale group member"],
    ["kind-loadbalancer", "load balancer"],
  ]
    .map(
      ([cls, text]) =>
        `<li><svg class="topology" width="14" height="14"><g class="node ${cls}"><rect width="12" height="12" x="1" y="1"/></g></svg> ${esc(text)}</li>`,
    )
    .join("\n");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(`${l.name} — kvmlab topology`)}</title>
<style>
body { margin: 16px; font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #1f2328; background: #f6f8fa; }
main { overflow: auto; background: #ffffff; border: 1px solid #d0d7de; border-radius: 6px; }
ul.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 14px; font-size: 12px; }
ul.legend li { display: flex; align-items: center; gap: 5px; }
p.note { font-size: 12px; color: #57606a; }
ul.legend .topology .node rect { rx: 2px; ry: 2px; }
</style>
</head>
<body>
<ul class="legend">
${legend}
</ul>
<main>
${renderSvg(l)}</main>
<p class="note">Edges: port (address [security groups]), VIP, router legs (qr = interface, qg = gateway), load-balancer members (dashed), pinned placement (dotted), host uplinks. Drawn by <code>kvmlab graph</code>.</p>
</body>
</html>
`;
}
