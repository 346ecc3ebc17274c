/**
 * `kvmlab quota show <project>`: a project's usage against its limits, read from the
 * controller (the project's identity record and its reservation ledger).
 */
import { parseArgs, UsageError } from "./args";
import { commandHosts, qualified } from "./hosts";

const USAGE = `usage: kvmlab quota show <project> [--sandbox <instance> | --hosts <hosts.json>] [--json]

Prints every quota of the project (Nova's and Neutron's, -1 = unlimited) with its usage.
<project> is a name in the Default domain or <domain>/<name>. The first host is the controller.
  --sandbox <instance>  use a running kvmlab sandbox (default: $KVMLAB_SANDBOX_INSTANCE or "default")
  --hosts <file>        a JSON list of hosts {name, address, port, user, privateKeyPath, hostKey}
  --json                print {project, limits, usage, ledger} as JSON`;

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(argv, { valued: ["sandbox", "hosts"], flags: ["json"] });
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`kvmlab quota: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.help) {
    console.log(USAGE);
    return 0;
  }
  if (parsed.positional.length !== 2 || parsed.positional[0] !== "show") {
    console.error(`kvmlab quota: expected "show <project>"\n\n${USAGE}`);
    return 2;
  }
  const project = qualified(parsed.positional[1]);
  const hosts = commandHosts(parsed.options);
  const { readQuota } = require("../provider/quota") as typeof import("../provider/quota");
  const { closeHostSessions } = require("../provider/host") as typeof import("../provider/host");
  try {
    const q = await readQuota(hosts[0], project);
    if (parsed.options.has("json")) {
      console.log(JSON.stringify({ project, ...q }, null, 2));
      return 0;
    }
    const { QUOTA_NAMES } = require("../core/identity") as typeof import("../core/identity");
    const width = Math.max(...QUOTA_NAMES.map((n) => n.length));
    console.log(`project ${project} (controller ${hosts[0].name})`);
    console.log(`${"quota".padEnd(width)}  ${"usage".padStart(6)}  ${"limit".padStart(6)}`);
    for (const n of QUOTA_NAMES)
      console.log(
        `${n.padEnd(width)}  ${String(q.usage[n]).padStart(6)}  ${String(q.limits[n]).padStart(6)}`,
      );
    return 0;
  } finally {
    await closeHostSessions();
  }
}
