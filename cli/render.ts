/**
 * `kvmlab render <lab.yaml> --out DIR`: writes every artifact of a lab definition (domain XML,
 * cloud-init seeds, haproxy.cfg, dnsmasq.conf, plan.json) to DIR, one file per object, touching
 * no host. Identical input gives byte-identical files. Nothing is written outside DIR.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs, UsageError } from "./args";
import { unreadable } from "./lab/read";

const USAGE = `usage: kvmlab render <lab.yaml> --out DIR [--stack NAME] [--project NAME] [--domain-type kvm|qemu]

Writes every artifact of a lab definition to DIR for review, touching no host:
  servers/<name>.xml, servers/<name>/{meta-data,user-data,network-config},
  loadbalancers/<name>/haproxy.cfg, subnets/<name>/{dnsmasq.conf,hosts},
  routers/<name>/{ruleset,legs}, plan.json.
Names, UUIDs, MACs and paths are the ones the lab program (stacks/) gives the providers on the
hosts, for its Pulumi project (kvmlab-lab) and the stack --stack. Addresses the lab does not
fix are allocated deterministically (see plan.json); the lab program applies the same ones.
  --out DIR          output folder: new, empty, or an earlier render's output
  --stack NAME       Pulumi stack the lab is applied as; seeds server UUIDs and MACs (default dev)
  --project NAME     Pulumi project the lab is applied as (default kvmlab-lab, the lab program's)
  --domain-type T    libvirt domain type to render (default kvm; hosts without /dev/kvm use qemu)`;

/** Lists files written by a render, so a re-render can replace exactly them. */
const MARKER = ".kvmlab-render";

/**
 * `rel` resolved inside `dir`. Refuses paths that leave `dir`, also through a symbolic link placed
 * in the output folder (which would make a write or delete land elsewhere).
 */
function inside(dir: string, rel: string): string {
  const full = path.resolve(dir, rel);
  if (!full.startsWith(dir + path.sep)) throw new Error(`refusing to write ${rel}: outside ${dir}`);
  let at = dir;
  for (const part of path.relative(dir, full).split(path.sep)) {
    at = path.join(at, part);
    const stat = fs.lstatSync(at, { throwIfNoEntry: false });
    if (stat === undefined) break; // Does not exist yet: nothing below it can be a link.
    if (stat.isSymbolicLink())
      throw new Error(
        `refusing to write ${rel}: ${path.relative(dir, at)} in ${dir} is a symbolic link; remove it or choose another --out folder`,
      );
  }
  return full;
}

function prepare(dir: string): void {
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(dir, { recursive: true });
    return;
  }
  if (!fs.statSync(dir).isDirectory()) throw new Error(`${dir} exists and is not a folder`);
  const entries = fs.readdirSync(dir);
  if (entries.length === 0) return;
  const marker = path.join(dir, MARKER);
  if (!fs.existsSync(marker)) {
    throw new Error(
      `${dir} is not empty and is not an earlier render's output; choose a new or empty folder`,
    );
  }
  for (const rel of fs.readFileSync(marker, "utf8").split("\n").filter(Boolean)) {
    fs.rmSync(inside(dir, rel), { force: true });
  }
  fs.rmSync(marker);
  // Remove folders the old render left empty.
  const prune = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) {
        prune(path.join(d, e.name));
        if (fs.readdirSync(path.join(d, e.name)).length === 0) fs.rmdirSync(path.join(d, e.name));
      }
    }
  };
  prune(dir);
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(argv, { valued: ["out", "domain-type", "stack", "project"] });
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`kvmlab render: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.help) {
    console.log(USAGE);
    return 0;
  }
  const out = parsed.options.get("out");
  const domainType = parsed.options.get("domain-type") ?? "kvm";
  if (parsed.positional.length !== 1) {
    console.error(
      `kvmlab render: expected one lab file, got ${parsed.positional.length}; give its path, e.g. kvmlab render stacks/three-tier.yaml --out DIR\n\n${USAGE}`,
    );
    return 2;
  }
  if (typeof out !== "string") {
    console.error(
      `kvmlab render: missing --out DIR; name the folder to write into, e.g. --out /tmp/${path.basename(parsed.positional[0]).replace(/\.ya?ml$/, "")}\n\n${USAGE}`,
    );
    return 2;
  }
  if (domainType !== "kvm" && domainType !== "qemu") {
    console.error(`kvmlab render: --domain-type must be kvm or qemu, got ${String(domainType)}`);
    return 2;
  }
  const stack = parsed.options.get("stack") ?? "dev";
  const { checkName } = require("../core/names") as typeof import("../core/names");
  const badStack = checkName("--stack", stack);
  if (badStack !== undefined) {
    console.error(`kvmlab render: ${badStack}`);
    return 2;
  }
  const project = parsed.options.get("project") ?? "kvmlab-lab";
  const badProject = checkName("--project", project);
  if (badProject !== undefined) {
    console.error(`kvmlab render: ${badProject}`);
    return 2;
  }
  const file = parsed.positional[0];
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    console.error(`kvmlab render: ${unreadable(file, err)}`);
    return 1;
  }
  const { parseLab, formatIssues } = require("../lab/parse") as typeof import("../lab/parse");
  const { renderLab, RENDER_NOTES } = require("../lab/artifacts") as typeof import("../lab/artifacts");
  const { lab, issues } = parseLab(text);
  if (lab === null) {
    console.error(formatIssues(file, issues));
    console.error(`\n${file}: ${issues.length} problem${issues.length === 1 ? "" : "s"}; nothing rendered`);
    return 1;
  }
  let files: Map<string, string>;
  try {
    files = renderLab(lab, { domainType, stack: stack as string, project: project as string }).files;
  } catch (err) {
    console.error(`kvmlab render: ${file}: ${(err as Error).message}`);
    return 1;
  }
  const dir = path.resolve(out);
  try {
    prepare(dir);
  } catch (err) {
    console.error(`kvmlab render: ${(err as Error).message}`);
    return 1;
  }
  try {
    for (const [rel, content] of files) {
      const target = inside(dir, rel);
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.writeFileSync(target, content);
    }
  } catch (err) {
    console.error(`kvmlab render: ${(err as Error).message}`);
    return 1;
  }
  fs.writeFileSync(path.join(dir, MARKER), [...files.keys()].join("\n") + "\n");
  console.log(`kvmlab render: wrote ${files.size} files for lab "${lab.name}" to ${dir}`);
  for (const note of RENDER_NOTES) console.log(`  note: ${note}`);
  return 0;
}
