/**
 * Generates docs/lab-definition.md from stacks/lab.schema.json, so the reference cannot drift
 * from what the loader accepts (test/unit/lab/labDocs.test.ts compares the two).
 *
 *   node dist/lab/docs.js > docs/lab-definition.md   (formatted with the repo's Prettier settings)
 */
import schema from "../stacks/lab.schema.json";
import { RENDER_NOTES } from "./artifacts";

interface Schema {
  $ref?: string;
  type?: string;
  description?: string;
  enum?: unknown[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  pattern?: string;
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  oneOf?: Schema[];
  allOf?: Schema[];
  minItems?: number;
  maxItems?: number;
}

const root = schema as unknown as Schema & { definitions: Record<string, Schema> };
const OBJECT_DEFS = Object.entries(root.definitions)
  .filter(([, d]) => d.type === "object")
  .map(([n]) => n);

const refName = (s: Schema): string | null => (s.$ref ? s.$ref.replace("#/definitions/", "") : null);
const resolve = (s: Schema): Schema => {
  const name = refName(s);
  return name === null
    ? s
    : { ...root.definitions[name], description: s.description ?? root.definitions[name].description };
};
const anchor = (title: string) =>
  title
    .toLowerCase()
    .replace(/[^a-z0-9 -]/g, "")
    .replace(/ /g, "-");
const cell = (text: string) => text.replace(/\|/g, "\\|").replace(/\n/g, " ");

function typeText(s: Schema): string {
  const name = refName(s);
  if (name !== null && OBJECT_DEFS.includes(name)) return `[${name}](#${anchor(`type ${name}`)})`;
  const r = resolve(s);
  if (r.enum) return r.enum.map((v) => `\`${String(v)}\``).join(" \\| ");
  if (r.oneOf && !r.type) return r.oneOf.map(typeText).join(" or ");
  if (r.type === "array") return `list of ${r.items ? typeText(r.items) : "values"}`;
  if (name !== null) return `${r.type} (${name})`;
  let t = r.type ?? "value";
  if (r.minimum !== undefined || r.maximum !== undefined) t += ` ${r.minimum ?? ""}–${r.maximum ?? ""}`;
  return t;
}

/** The field table of an object schema, and the sections of the inline objects it contains. */
function table(s: Schema, path: string): { lines: string[]; nested: string[] } {
  const lines = ["| field | type | required | default | description |", "|---|---|---|---|---|"];
  const nested: string[] = [];
  for (const [key, raw] of Object.entries(s.properties ?? {})) {
    if (key === "$schema") continue;
    const r = resolve(raw);
    const required = s.required?.includes(key) ? "yes" : "";
    const dflt = r.default === undefined ? "" : `\`${JSON.stringify(r.default)}\``;
    let type = typeText(raw);
    const inner = r.type === "array" ? r.items : raw;
    if (inner !== undefined && refName(inner) === null && resolve(inner).type === "object") {
      const sub = `${path}${path ? "." : ""}${key}${r.type === "array" ? "[]" : ""}`;
      type = r.type === "array" ? `list of [objects](#${anchor(sub)})` : `[object](#${anchor(sub)})`;
      nested.push(...section(sub, resolve(inner)));
    }
    lines.push(`| \`${key}\` | ${type} | ${required} | ${dflt} | ${cell(r.description ?? "")} |`);
  }
  const req = (s.oneOf ?? []).map((a) => a.required?.map((x) => `\`${x}\``).join(" + ")).filter(Boolean);
  if (req.length > 0) lines.push("", `Give exactly one of ${req.join(", ")}.`);
  return { lines, nested };
}

function section(title: string, s: Schema): string[] {
  const { lines, nested } = table(s, title);
  return [`### ${title}`, "", s.description ?? "", "", ...lines, "", ...nested];
}

export function renderLabReference(): string {
  const top = table(root, "");
  const out: string[] = [
    "# Lab definition reference",
    "",
    "<!-- Generated from stacks/lab.schema.json by lab/docs.ts; do not edit by hand.",
    "     Regenerate: npm run build && node dist/lab/docs.js > docs/lab-definition.md -->",
    "",
    "A lab definition is one YAML file describing an OpenStack-shaped lab: hosts, identity, images,",
    "flavors, keypairs, networks, routers, security groups, servers, volumes, load balancers, autoscale groups and",
    "apps. Every section is optional except `name`; objects refer to each other by name. Start the file",
    "with `# yaml-language-server: $schema=./lab.schema.json` for completion and checks in editors.",
    "See `stacks/three-tier.yaml` for a complete example.",
    "",
    "## Checking and rendering",
    "",
    "`kvmlab validate lab.yaml` checks the schema, then the meaning, and reports every problem at once:",
    "",
    "```",
    'lab.yaml:30:26  servers[0].networks[0].subnet: unknown subnet "c"',
    '    fix: did you mean "a"?',
    "```",
    "",
    "Meaning checks: names are unique per kind (subnets across all networks; servers together with",
    "autoscale members `<group>-<i>`); every reference resolves; a host address of four numbers is a",
    "valid IPv4 address; CIDRs are network addresses; gateways,",
    "pools, fixed IPs and VIPs lie inside their subnet (not on the network, broadcast or gateway address)",
    "and are not used twice; the gateway lies outside the pool; subnets of one network, and subnets behind",
    "one router, do not overlap; a router's external network is `external: true` (a provider network);",
    "floating IPs need a router with an external network; a flavor fits its image's `minRamMiB` and",
    "`minDiskGiB`; `min ≤ desired ≤ max`; each pool has room for DHCP, VIPs, ports at autoscale maximum and",
    "floating IPs; listener and pool protocols are compatible (Octavia's rules); a three-tier app's public",
    "load balancer and bastion have floating IPs; an autoscale group's load balancer has one listener",
    "(the group's), whose pool lists no members of its own and which has no L7 policies, is no other",
    "group's, and the group's pool `weight` is 1. Finally every artifact is rendered once, so a lab that",
    "validates also renders.",
    "",
    "`kvmlab render lab.yaml --out DIR [--stack NAME]` writes every artifact for review, touching no",
    "host (see docs/templates.md). The files are what the lab program (`stacks/`, below) hands the",
    "hosts: they are made by the same functions the components and providers use (`renderServer`,",
    "`planSubnet`, `networkDevices`, `dhcpPaths`, `serverPaths`, `loadBalancerConfig`,",
    "`renderRouterRuleset`), for its Pulumi project `kvmlab-lab` (`--project` to change) and the stack",
    "`--stack` (default `dev`); `plan.json` lists the bridge, namespace, DHCP paths, UUID, MACs and tap",
    "names, `routers/<name>/{ruleset,legs}` each router's iptables-restore input and legs.",
    "Its notes (also in `plan.json`), including the placeholders for values decided at apply time:",
    "",
    ...RENDER_NOTES.map((n) => `- ${n}`),
    "",
    "## Applying a lab: the lab program",
    "",
    "`stacks/` holds a Pulumi program (Pulumi.yaml, index.ts) that applies any valid lab definition",
    "through the components: stack config `lab` names the file (default `three-tier-sandbox.yaml`).",
    "Hosts come from stack config `kvmlab:hosts`, else the lab's `hosts` (private keys from their",
    "secret references), else the running `kvmlab sandbox`; every secret reference reads its stack",
    "secret. Every address is the plan's (the same as `kvmlab render`'s): server ports, VIPs, router",
    "gateways and floating IPs are applied as fixed addresses. Autoscale groups go through the",
    "AutoscaleGroup component (docs/autoscale.md): every slot `<group>-0 … <group>-(max-1)` is a",
    "server defined on its host, the group's scaling agent runs the first `desired` and scales",
    "between `up`s on the group's CPU policies (an `above`/`below` threshold averaged over 60 s,",
    "`adjustment`, `cooldownSec`; the agent evaluates every 10 s); a group's `pool` names its load",
    "balancer, which the group builds with that one listener and every slot in its pool. `apps`",
    "entries go through the ThreeTierApp component (docs/three-tier.md), whose web and WAS tiers are",
    "their autoscale groups. A load balancer's `securityGroups` filter its VIP port on Linux-bridge",
    "VIP networks (on OVS they only put the VIP in the groups' sets). The `identity` section goes",
    "through the Identity component (docs/identity.md): its domains, its projects with their quotas",
    "(each server, volume and server floating IP charges its `project`; routers and security",
    "groups, load balancers and their floating IPs, networks and subnets the lab's",
    "`defaultProject`), users and role assignments (user and project by id in",
    "their own domain: the lab's `default` domain is not kvmlab's `Default`). Unpinned servers are",
    "placed at apply time; autoscale slots are spread over the hosts round-robin. `volumes` go through the",
    "Volume component (docs/volumes.md), each on its `host` or its server's, attached in the order",
    "of the server's `volumes` list so the guest's devices are the rendered ones (vdb, vdc, …).",
    "",
    "```sh",
    "npm run build && kvmlab sandbox up",
    "npm run engine -- up stacks --config lab=stacks/three-tier-sandbox.yaml   # or: cd stacks && pulumi up",
    "```",
    "",
    'Secrets never appear in a lab file: `privateKey: { secret: "kvmlab:hostKey" }` names a Pulumi',
    "config secret (`pulumi config set --secret kvmlab:hostKey < key`), or `privateKeyPath` names a key",
    "file read at run time.",
    "",
    "## Top level",
    "",
    root.description ?? "",
    "",
    ...top.lines,
    "",
    "## Sections",
    "",
    ...top.nested,
    "## Shared types",
    "",
  ];
  for (const name of OBJECT_DEFS) out.push(...section(`type ${name}`, root.definitions[name]));
  return (
    out
      .join("\n")
      .replace(/\n{3,}/g, "\n\n")
      .trimEnd() + "\n"
  );
}

/** The reference as committed: formatted by Prettier (a dev dependency) with the repo settings. */
export async function formattedLabReference(): Promise<string> {
  const prettier = require("prettier") as typeof import("prettier");
  const options = (await prettier.resolveConfig(__filename)) ?? {};
  return prettier.format(renderLabReference(), { ...options, parser: "markdown" });
}

if (require.main === module) {
  formattedLabReference().then(
    (text) => process.stdout.write(text),
    (err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
