/**
 * `kvmlab console <server> --user <name>`: prints a noVNC URL with a token for the server's
 * console, valid for --ttl seconds (default 600, Nova's token_ttl; at most 3600), issued only when the user
 * holds at least `reader` on the server's project. The proxy is the ConsoleProxy on the
 * controller (the first host).
 */
import { parseArgs, UsageError } from "./args";
import { commandHosts } from "./hosts";

const USAGE = `usage: kvmlab console <server> --user <name> [--ttl <seconds>] [--sandbox <instance> | --hosts <hosts.json>] [--json]

Prints a URL that opens the server's console in a browser (noVNC through the proxy on the
controller). The token in it expires after --ttl seconds (default 600, at most 3600) and is issued only when
--user (a name in the Default domain, or <domain>/<name>) has at least the reader role on the
server's project.
  --sandbox <instance>  use a running kvmlab sandbox (default: $KVMLAB_SANDBOX_INSTANCE or "default")
  --hosts <file>        a JSON list of hosts {name, address, port, user, privateKeyPath, hostKey}
  --json                print {url, expires, host, vncPort} as JSON`;

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(argv, { valued: ["user", "ttl", "sandbox", "hosts"], flags: ["json"] });
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`kvmlab console: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.help) {
    console.log(USAGE);
    return 0;
  }
  const user = parsed.options.get("user");
  const ttl = Number(parsed.options.get("ttl") ?? 600);
  if (
    parsed.positional.length !== 1 ||
    typeof user !== "string" ||
    !Number.isInteger(ttl) ||
    ttl < 1 ||
    ttl > 3600
  ) {
    console.error(
      `kvmlab console: expected one server, --user <name> and an optional --ttl of 1-3600 seconds\n\n${USAGE}`,
    );
    return 2;
  }
  const hosts = commandHosts(parsed.options);
  const { issueConsoleToken, userRef } =
    require("../provider/console") as typeof import("../provider/console");
  const { closeHostSessions } = require("../provider/host") as typeof import("../provider/host");
  try {
    const r = await issueConsoleToken(hosts, parsed.positional[0], userRef(user), ttl);
    if (parsed.options.has("json"))
      console.log(JSON.stringify({ url: r.url, expires: r.expires, host: r.host, vncPort: r.vncPort }));
    else console.log(r.url);
    return 0;
  } catch (err) {
    console.error(`kvmlab console: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  } finally {
    await closeHostSessions();
  }
}
