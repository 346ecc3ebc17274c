/**
 * `kvmlab graph <lab.yaml | outputs.json> --out FILE.svg|FILE.html`: draws the topology of a lab
 * definition, or of a stack from its outputs, as SVG or as a self-contained HTML page
 * (report/graph). Exit 0 on success, 1 when the input is unreadable or invalid, 2 on usage.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs, UsageError } from "./args";
import { unreadable } from "./lab/read";

const USAGE = `usage: kvmlab graph <lab.yaml | outputs.json> --out FILE.svg|FILE.html

Draws the topology: KVM hosts, networks by type, routers and their legs, servers with their
addresses, floating IPs and security groups, load balancers with their VIP and members.
  <lab.yaml>        a lab definition (addresses from its deterministic plan, as kvmlab render)
  <outputs.json>    \`pulumi stack output --json\` of a stack that exports \`topology\`
  --out FILE        .svg for the picture alone, .html for a self-contained page`;

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(argv, { valued: ["out"] });
    if (parsed.help) {
      console.log(USAGE);
      return 0;
    }
    if (parsed.positional.length !== 1)
      throw new UsageError("expected one input: a lab YAML file or a stack's outputs JSON");
    const out = parsed.options.get("out");
    if (typeof out !== "string") throw new UsageError("--out FILE.svg or --out FILE.html is required");
    if (!/\.(svg|html?)$/i.test(out))
      throw new UsageError(`--out ${out}: the name must end in .svg or .html`);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`kvmlab graph: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  const file = parsed.positional[0];
  const out = parsed.options.get("out") as string;
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    console.error(`kvmlab graph: ${unreadable(file, err)}`);
    return 1;
  }
  const graph = require("../report/graph") as typeof import("../report/graph");
  let topology: import("../report/graph").Topology;
  if (/\.json$/i.test(file)) {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (err) {
      console.error(`kvmlab graph: ${file}: not valid JSON (${(err as Error).message})`);
      return 1;
    }
    try {
      topology = graph.topologyFromOutputs(doc);
    } catch (err) {
      if (!(err instanceof graph.TopologyError)) throw err;
      console.error(`kvmlab graph: ${file}: ${err.message}`);
      return 1;
    }
  } else {
    const { parseLab, formatIssues } = require("../lab/parse") as typeof import("../lab/parse");
    const { lab, issues } = parseLab(text);
    if (lab === null) {
      console.error(formatIssues(file, issues));
      console.error(
        `\nkvmlab graph: ${file} is not a valid lab (${issues.length} problem(s)); fix it first (kvmlab validate ${file})`,
      );
      return 1;
    }
    topology = graph.topologyFromLab(lab);
  }
  const layout = await graph.layoutTopology(topology);
  const html = /\.html?$/i.test(out);
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
  fs.writeFileSync(out, html ? graph.renderHtml(layout) : graph.renderSvg(layout, { standalone: true }));
  console.error(
    `kvmlab graph: wrote ${out}: ${topology.nodes.length} objects, ${topology.edges.length} links (${layout.width}×${layout.height} px)`,
  );
  return 0;
}
