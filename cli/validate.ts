/**
 * `kvmlab validate <lab.yaml>`: checks a lab definition (schema, meaning, renderability) and
 * prints every problem with its location and a fix. Exit 0 when valid, 1 when not, 2 on usage.
 */
import * as fs from "node:fs";
import { parseArgs, UsageError } from "./args";
import { unreadable } from "./lab/read";

const USAGE = `usage: kvmlab validate <lab.yaml> [--json]

Checks a lab definition and reports every problem at once: file:line:column, YAML path,
what is wrong and how to fix it. Exit status 0 when the lab is valid, 1 when it is not.
  --json   print the problems as a JSON array instead`;

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(argv, { flags: ["json"] });
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`kvmlab validate: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.help) {
    console.log(USAGE);
    return 0;
  }
  if (parsed.positional.length !== 1) {
    console.error(`kvmlab validate: expected one lab file\n\n${USAGE}`);
    return 2;
  }
  const file = parsed.positional[0];
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    console.error(`kvmlab validate: ${unreadable(file, err)}`);
    return 1;
  }
  const { parseLab, formatIssues } = require("../lab/parse") as typeof import("../lab/parse");
  const { lab, issues } = parseLab(text);
  if (parsed.options.has("json")) {
    console.log(
      JSON.stringify(
        issues.map((i) => ({ file, ...i })),
        null,
        2,
      ),
    );
    return lab === null ? 1 : 0;
  }
  if (lab === null) {
    console.error(formatIssues(file, issues));
    console.error(`\n${file}: ${issues.length} problem${issues.length === 1 ? "" : "s"}`);
    return 1;
  }
  const members = lab.autoscaleGroups.reduce((n, g) => n + g.desired, 0);
  console.log(
    `${file}: valid lab "${lab.name}": ${lab.hosts.length} hosts, ${lab.networks.length} networks, ` +
      `${lab.servers.length} servers + ${members} autoscale members, ${lab.loadBalancers.length} load balancers`,
  );
  return 0;
}
