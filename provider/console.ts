/**
 * The console proxy, as Nova's novncproxy: websockify from Debian serving Debian's noVNC on the
 * controller (hosts[0]), with a token plugin that maps a token to one server's VNC endpoint on
 * its host's management address until the token expires.
 *
 *   ConsoleProxy      resource: the plugin file, the token folder (0700) and the websockify
 *                     daemon listening on `listenAddress:port` (default: the controller's
 *                     management address, 6080); delete stops it and removes every token.
 *                     ONE per controller, like Nova's novncproxy: it is owned (issue 15's
 *                     marker `owners/console-proxy/proxy`), so a second stack's ConsoleProxy on
 *                     the same controller is refused naming the first, and no stack's update or
 *                     delete touches another's proxy, folder or tokens
 *   issueConsoleToken a token for (server, user): only when the user's effective roles on the
 *                     server's project include `reader` (core/identity.ts); the token record
 *                     holds the server, its VNC host:port and the expiry; returns the noVNC URL
 *
 * A token is `<server>.<random>`: the plugin refuses a token whose record names another server,
 * an expired token (and removes it), and anything not shaped like a token. Records are named by
 * the token's sha256, so listing the folder shows no usable token.
 */
import type * as pulumi from "@pulumi/pulumi";
import { consolePaths } from "../core/paths";
import { effectiveRoles, identityId } from "../core/identity";
import {
  checkHostAddress,
  checkHostList,
  parseRecord,
  readRecordStep,
  runChecked,
  runSteps,
  shQuote,
  showValue,
  uploadStep,
  type HostConnection,
  type Step,
} from "./host";
import { identityModel, readAllIdentity } from "./identity/records";
import {
  applyRules,
  changedKeys,
  defineResource,
  failureList,
  KvmlabResource,
  normalizeHosts,
  rules,
  checkedOwner,
  claimedNow,
  claimStep,
  guardStep,
  ownerIn,
  releaseOwnerStep,
  type DiffResult,
  type HostConnectionArgs,
  type OwnedObject,
  type InProjectArgs,
} from "./kit";

/** websockify's token plugin (Python, loaded by websockify from the console folder). */
export const TOKEN_PLUGIN = `# kvmlab console tokens for websockify (written by kvmlab; do not edit)
import hashlib, json, os, re, time
from websockify.token_plugins import BasePlugin

TOKEN_RE = re.compile(r'^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})\\.([A-Za-z0-9_-]{32,64})$')

class ExpiringTokens(BasePlugin):
    def lookup(self, token):
        m = TOKEN_RE.match(token or '')
        if not m:
            return None
        path = os.path.join(self.source, hashlib.sha256(token.encode()).hexdigest() + '.json')
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            return None
        if rec.get('expires', 0) < time.time():
            try:
                os.unlink(path)
            except OSError:
                pass
            return None
        if rec.get('server') != m.group(1):
            return None
        return [rec['host'], str(rec['port'])]
`;

export interface ConsoleProxyInputs {
  /** Address websockify listens on; "" = the controller's management address. */
  listenAddress: string;
  port: number;
  /** Where Debian's novnc package puts noVNC. */
  webDir: string;
  hosts: HostConnection[];
  /** Owner (kit/owner.ts): the one stack whose proxy this controller runs. */
  owner: string;
}

/** The proxy as an owned object: one per controller. */
const proxyOwned: OwnedObject = {
  kind: "console-proxy",
  key: ["proxy"],
  what: "the console proxy",
  field: "controller (hosts[0]); one proxy serves every stack on a controller, so use the existing one",
  exists: `[ -d ${shQuote(consolePaths().dir)} ]`,
};

export interface ConsoleProxyOutputs extends ConsoleProxyInputs {
  controller: string;
  /** `http://<address>:<port>/` */
  baseUrl: string;
  hostKeys: Record<string, string>;
  realized: { running: boolean };
}

export function checkConsoleProxyInputs(news: Record<string, unknown>) {
  const out = failureList();
  const v = applyRules(
    news,
    {
      listenAddress: { rule: (f, x) => (x === "" ? undefined : checkHostAddress(f, x)), default: "" },
      port: { rule: rules.int(1024, 65535, "the TCP port of the proxy"), default: 6080 },
      webDir: {
        rule: rules.expect(
          (x) => typeof x === "string" && /^\/[A-Za-z0-9_./-]*$/.test(x),
          "an absolute path",
        ),
        default: "/usr/share/novnc",
      },
    },
    out,
  );
  out.add("hosts", checkHostList("hosts", news.hosts));
  const owner = checkedOwner({ ...news, name: "console" }, "ConsoleProxy", "name", out.add);
  return { inputs: { ...v, hosts: normalizeHosts(news.hosts), owner }, failures: out.failures };
}

function listenOf(i: ConsoleProxyInputs): string {
  return i.listenAddress !== "" ? i.listenAddress : i.hosts[0].address;
}

/** Steps that install the plugin and (re)start websockify; prints nothing. */
export function proxyStartSteps(i: ConsoleProxyInputs): Step[] {
  const p = consolePaths();
  const listen = `${listenOf(i)}:${i.port}`;
  return [
    {
      label: "console proxy prerequisites",
      script: `command -v websockify >/dev/null && [ -f ${shQuote(`${i.webDir}/vnc_lite.html`)} ] || { echo "websockify or noVNC missing on the controller: apt-get install -y websockify novnc" >&2; exit 30; }; mkdir -p ${shQuote(p.tokens)} && chmod 0700 ${shQuote(p.dir)} ${shQuote(p.tokens)}`,
    },
    uploadStep(p.plugin, TOKEN_PLUGIN, { mode: "0644" }),
    {
      label: `start websockify on ${listen}`,
      script: [
        proxyStopScript(),
        `cd ${shQuote(p.dir)}`,
        `PYTHONPATH=${shQuote(p.dir)} setsid websockify --web ${shQuote(i.webDir)} --token-plugin kvmlab_console_tokens.ExpiringTokens --token-source ${shQuote(p.tokens)} ${shQuote(listen)} </dev/null >${shQuote(p.log)} 2>&1 &`,
        `echo $! > ${shQuote(p.pidFile)}`,
        // Bounded wait until it listens.
        `for i in $(seq 1 100); do ss -Hltn "sport = :${i.port}" | grep -q . && exit 0; sleep 0.1; done`,
        `echo "websockify did not start listening on ${listen}: $(tail -5 ${shQuote(p.log)})" >&2; exit 1`,
      ].join("\n"),
    },
  ];
}

/** Stops the websockify kvmlab started (pid file + its command line), nothing else. */
function proxyStopScript(): string {
  const p = consolePaths();
  return `if [ -f ${shQuote(p.pidFile)} ]; then pid=$(cat ${shQuote(p.pidFile)}); if tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q -- ${shQuote(`--token-source ${p.tokens}`)}; then kill $pid; for i in $(seq 1 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; fi; rm -f ${shQuote(p.pidFile)}; fi`;
}

/** Stops websockify and removes the plugin, every token and the log. */
export function proxyDeleteStep(): Step {
  return {
    label: "stop the console proxy",
    script: `${proxyStopScript()}; rm -rf ${shQuote(consolePaths().dir)}`,
  };
}

function proxyReadStep(): Step {
  const p = consolePaths();
  return {
    label: "read the console proxy",
    script: `pid=$(cat ${shQuote(p.pidFile)} 2>/dev/null); if [ -n "$pid" ] && tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q -- ${shQuote(`--token-source ${p.tokens}`)}; then echo running=yes; else echo running=no; fi`,
  };
}

function outputsFor(i: ConsoleProxyInputs, running: boolean): ConsoleProxyOutputs {
  return {
    ...i,
    controller: i.hosts[0].name,
    baseUrl: `http://${listenOf(i)}:${i.port}/`,
    hostKeys: {},
    realized: { running },
  };
}

export function diffConsoleProxy(olds: ConsoleProxyOutputs, news: ConsoleProxyInputs): DiffResult {
  const changed = changedKeys(olds, news, ["listenAddress", "port", "webDir", "hosts", "owner"]);
  return { changes: changed.length > 0 || !olds.realized?.running, replaces: [], deleteBeforeReplace: false };
}

const consoleProxy = defineResource<ConsoleProxyInputs, ConsoleProxyOutputs>({
  type: "ConsoleProxy",
  inputKeys: ["listenAddress", "port", "webDir", "hosts", "owner"],
  outputKeys: ["controller", "baseUrl", "hostKeys", "realized"],
  secretOutputs: ["hosts"],
  check: (news) => checkConsoleProxyInputs(news),
  diff: diffConsoleProxy,
  async create(inputs) {
    const ctl = inputs.hosts[0];
    // One proxy per controller: another stack's proxy (or an unmarked folder) is refused.
    const [c] = await runChecked(ctl, [claimStep(proxyOwned, inputs.owner)]);
    try {
      await runChecked(ctl, [guardStep(proxyOwned, [inputs.owner]), ...proxyStartSteps(inputs)]);
    } catch (e) {
      if (claimedNow(c))
        await runChecked(ctl, [
          guardStep(proxyOwned, [inputs.owner]),
          proxyDeleteStep(),
          releaseOwnerStep(proxyOwned, [inputs.owner]),
        ]).catch(() => undefined);
      throw e;
    }
    return { id: `console-${ctl.name}`, outs: outputsFor(inputs, true) };
  },
  async read(_id, props) {
    const [out] = await runChecked(props.hosts[0], [proxyReadStep()]);
    return { ...props, realized: { running: out.includes("running=yes") } };
  },
  async update(_id, olds, news) {
    const o = ownerIn(olds);
    const guard = (owners: string[]): Step[] => (owners[0] ? [guardStep(proxyOwned, owners, true)] : []);
    if (olds.hosts[0].name !== news.hosts[0].name) {
      await runChecked(news.hosts[0], [claimStep(proxyOwned, news.owner)]);
      await runChecked(olds.hosts[0], [
        ...guard([o]),
        proxyDeleteStep(),
        ...(o ? [releaseOwnerStep(proxyOwned, [o])] : []),
      ]);
    }
    await runChecked(news.hosts[0], [
      ...guard([news.owner, o].filter((x) => x !== "")),
      ...proxyStartSteps(news),
    ]);
    return outputsFor(news, true);
  },
  async delete(_id, olds) {
    const o = ownerIn(olds);
    // Another stack's proxy on this controller is refused before anything is stopped or removed.
    await runChecked(olds.hosts[0], [
      ...(o ? [guardStep(proxyOwned, [o])] : []),
      proxyDeleteStep(),
      ...(o ? [releaseOwnerStep(proxyOwned, [o])] : []),
    ]);
  },
});
export const consoleProxyProvider = consoleProxy.provider;

export interface ConsoleProxyArgs extends InProjectArgs {
  /** @default "" (the controller's management address) */
  readonly listenAddress?: pulumi.Input<string>;
  /** @default 6080 (Nova's novncproxy port) */
  readonly port?: pulumi.Input<number>;
  /** @default "/usr/share/novnc" */
  readonly webDir?: pulumi.Input<string>;
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** Owner (kit/owner.ts). @default filled by the base class */
  readonly owner?: pulumi.Input<string>;
}

/** The noVNC console proxy on the controller (`pulumi-nodejs:dynamic/kvmlab:ConsoleProxy`). */
export class ConsoleProxy extends KvmlabResource<ConsoleProxyInputs, ConsoleProxyOutputs> {
  declare readonly baseUrl: pulumi.Output<string>;
  declare readonly controller: pulumi.Output<string>;
  constructor(name: string, args: ConsoleProxyArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(consoleProxy, name, { ...args }, opts);
  }
}

/** The noVNC URL for a token (the page connects back to the proxy with `?token=`). */
export function consoleUrl(baseUrl: string, token: string): string {
  return `${baseUrl}vnc_lite.html?path=${encodeURIComponent(`websockify?token=${token}`)}`;
}

/** Default token lifetime: Nova's `[consoleauth] token_ttl`, 600 s. */
export const CONSOLE_TOKEN_TTL_SEC = 600;

/** Longest token lifetime kvmlab issues: one hour (a console URL is a credential). */
export const CONSOLE_TOKEN_TTL_MAX_SEC = 3600;

/** The reason a token lifetime is refused, or undefined (an integer 1..{@link CONSOLE_TOKEN_TTL_MAX_SEC}). */
export function checkTtlSec(v: unknown): string | undefined {
  return typeof v === "number" && Number.isInteger(v) && v >= 1 && v <= CONSOLE_TOKEN_TTL_MAX_SEC
    ? undefined
    : `ttlSec: expected an integer 1-${CONSOLE_TOKEN_TTL_MAX_SEC} (seconds; default ${CONSOLE_TOKEN_TTL_SEC}), got ${showValue(v)}`;
}

/**
 * Issues a console token for `server` to `user` (`<domain>/<name>`), valid `ttlSec` seconds.
 * Refuses when the server is not found on any host, has no project, or the user holds no role
 * implying `reader` on it. Returns the URL, the token and its expiry (Unix seconds).
 */
export async function issueConsoleToken(
  hosts: HostConnection[],
  server: string,
  user: string,
  ttlSec: number = CONSOLE_TOKEN_TTL_SEC,
): Promise<{ url: string; token: string; expires: number; host: string; vncPort: number }> {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const ttlProblem = checkTtlSec(ttlSec);
  if (ttlProblem) throw new Error(ttlProblem);
  const controller = hosts[0];
  // The server's record and VNC display, from every host in one batch each.
  const found = await Promise.all(
    hosts.map(async (h) => {
      const r = await runSteps(h, [
        readRecordStep("server", server),
        {
          label: "vnc display",
          script: `virsh -c qemu:///system vncdisplay ${shQuote(server)} 2>/dev/null; true`,
        },
      ]);
      const rec = parseRecord<{ project?: string }>(r[0].stdout, `server/${server}`);
      return rec ? { host: h, project: rec.project ?? "", display: r[1].stdout.trim() } : undefined;
    }),
  );
  const at = found.find((f) => f !== undefined);
  if (!at) throw new Error(`server ${server} is not on any host (${hosts.map((h) => h.name).join(", ")})`);
  if (at.project === "")
    throw new Error(`server ${server} belongs to no project; console access is granted per project`);
  const model = identityModel(await readAllIdentity(controller));
  const roles = effectiveRoles(model, user, at.project);
  if (!roles.includes("reader"))
    throw new Error(
      `user ${user} has no role on project ${at.project} (needs at least reader); assign one with a RoleAssignment`,
    );
  const m = /:(\d+)$/.exec(at.display);
  if (!m) throw new Error(`server ${server} has no VNC display on host ${at.host.name} (is it running?)`);
  const vncPort = 5900 + Number(m[1]);
  const [proxy] = await runChecked(controller, [proxyReadStep()]);
  if (!proxy.includes("running=yes"))
    throw new Error(`no console proxy runs on controller ${controller.name}; create a ConsoleProxy resource`);
  const [cmd] = await runChecked(controller, [
    {
      label: "console proxy address",
      script: `tr '\\0' ' ' < /proc/$(cat ${shQuote(consolePaths().pidFile)})/cmdline`,
    },
  ]);
  const listen = cmd.trim().split(" ").pop() ?? "";
  const token = `${server}.${crypto.randomBytes(24).toString("base64url")}`;
  const expires = Math.floor(Date.now() / 1000) + ttlSec;
  const name = crypto.createHash("sha256").update(token).digest("hex");
  await runChecked(controller, [
    uploadStep(
      `${consolePaths().tokens}/${name}.json`,
      JSON.stringify({ server, host: at.host.address, port: vncPort, project: at.project, user, expires }),
      { mode: "0600" },
    ),
  ]);
  return { url: consoleUrl(`http://${listen}/`, token), token, expires, host: at.host.name, vncPort };
}

/** `name` → `Default/name`; `<domain>/<name>` unchanged. */
export function userRef(user: string): string {
  return user.includes("/") ? user : identityId("Default", user);
}
