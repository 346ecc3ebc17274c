/**
 * haproxy.cfg for one load balancer, modelled on what OpenStack Octavia's amphora renders
 * (combined-listeners template): one frontend per listener, one backend per pool, members as
 * `server` lines. Inputs use Octavia's vocabulary (protocol names, lb_algorithm, session
 * persistence types, health monitor fields) in camelCase; docs/templates.md lists coverage.
 */
import { ipToInt, parseCidr } from "../core/net";
import { loadBalancerPaths } from "../core/paths";
import { renderTemplate } from "./render";
import { assertSealed, seal } from "./sealed";
import {
  checkBool,
  checkHostname,
  checkInt,
  checkName,
  checkOneOf,
  checkPath,
  checkPort,
  FieldError,
} from "./validate";

export const LISTENER_PROTOCOLS = ["TCP", "HTTP", "HTTPS", "TERMINATED_HTTPS"] as const;
export const POOL_PROTOCOLS = ["TCP", "HTTP", "HTTPS", "PROXY", "PROXYV2"] as const;
export const LB_ALGORITHMS = ["ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP"] as const;
export const PERSISTENCE_TYPES = ["SOURCE_IP", "HTTP_COOKIE", "APP_COOKIE"] as const;
export const MONITOR_TYPES = ["TCP", "HTTP", "HTTPS", "TLS-HELLO"] as const;
export const L7_ACTIONS = ["REJECT", "REDIRECT_TO_URL", "REDIRECT_TO_POOL", "REDIRECT_PREFIX"] as const;
export const L7_RULE_TYPES = ["HOST_NAME", "PATH", "FILE_TYPE", "HEADER", "COOKIE"] as const;
export const L7_COMPARE_TYPES = ["REGEX", "STARTS_WITH", "ENDS_WITH", "CONTAINS", "EQUAL_TO"] as const;
export const CLIENT_AUTH = ["NONE", "OPTIONAL", "MANDATORY"] as const;
/** Octavia's default TLS ciphers for listeners and pools (constants.CIPHERS_OWASP_SUITE_B). */
export const OCTAVIA_TLS_CIPHERS =
  "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:" +
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" +
  "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" +
  "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305";
/** Octavia's default TLS versions (1.2 and 1.3) as haproxy options. */
export const OCTAVIA_TLS_VERSIONS = "no-sslv3 no-tlsv10 no-tlsv11";
/** Octavia's default ALPN protocols for listeners and pools. */
export const OCTAVIA_ALPN = "h2,http/1.1,http/1.0";
export const HTTP_METHODS = [
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "DELETE",
  "OPTIONS",
  "PATCH",
  "CONNECT",
  "TRACE",
] as const;

export type ListenerProtocol = (typeof LISTENER_PROTOCOLS)[number];
export type PoolProtocol = (typeof POOL_PROTOCOLS)[number];
export type LbAlgorithm = (typeof LB_ALGORITHMS)[number];

/** Which pool protocols each listener protocol accepts (Octavia's compatibility matrix, minus UDP/SCTP). */
export const POOL_PROTOCOLS_FOR: Record<ListenerProtocol, readonly PoolProtocol[]> = {
  TCP: ["TCP", "HTTP", "HTTPS", "PROXY", "PROXYV2"],
  HTTP: ["HTTP", "PROXY", "PROXYV2"],
  HTTPS: ["HTTPS", "TCP", "PROXY", "PROXYV2"],
  TERMINATED_HTTPS: ["HTTP", "PROXY", "PROXYV2"],
};

export interface HealthMonitorSpec {
  /** "PING" is refused with the reason (see monitorView). */
  readonly type: (typeof MONITOR_TYPES)[number] | "PING";
  /** Seconds between checks. */
  readonly delay: number;
  /** Seconds a check may take. */
  readonly timeout: number;
  /** Successes that bring a member up (HAProxy `rise`). */
  readonly maxRetries: number;
  /** Failures that take a member down (HAProxy `fall`). @default 3 */
  readonly maxRetriesDown?: number;
  /** HTTP(S) only. @default "GET" */
  readonly httpMethod?: (typeof HTTP_METHODS)[number];
  /** HTTP(S) only. @default "/" */
  readonly urlPath?: string;
  /** HTTP(S) only: "200", "200,202" or "200-204". @default "200" */
  readonly expectedCodes?: string;
  /** HTTP(S) only: "1.0" or "1.1"; 1.1 sends a Host header from domainName. @default "1.0" */
  readonly httpVersion?: "1.0" | "1.1";
  readonly domainName?: string | null;
  /** @default true */
  readonly adminStateUp?: boolean;
}

export interface MemberSpec {
  readonly name: string;
  readonly address: string;
  readonly protocolPort: number;
  /** 0–256; 0 takes no new connections. @default 1 */
  readonly weight?: number;
  /** Used only when every non-backup member is down. @default false */
  readonly backup?: boolean;
  /** false renders the member `disabled`. @default true */
  readonly adminStateUp?: boolean;
  readonly monitorAddress?: string | null;
  readonly monitorPort?: number | null;
}

export interface PoolSpec {
  readonly name: string;
  readonly protocol: PoolProtocol;
  readonly lbAlgorithm: LbAlgorithm;
  readonly sessionPersistence?: {
    readonly type: (typeof PERSISTENCE_TYPES)[number];
    /** APP_COOKIE only. */
    readonly cookieName?: string | null;
  } | null;
  readonly healthMonitor?: HealthMonitorSpec | null;
  readonly members?: readonly MemberSpec[];
  /** Re-encrypt to members (`ssl verify none`, or verified against caCertPath). @default false */
  readonly tlsEnabled?: boolean;
  readonly caCertPath?: string | null;
  /** false leaves the pool out, as Octavia does. @default true */
  readonly adminStateUp?: boolean;
}

export interface ListenerSpec {
  readonly name: string;
  readonly protocol: ListenerProtocol;
  readonly protocolPort: number;
  /** Maximum concurrent connections; -1 or absent means unlimited. */
  readonly connectionLimit?: number | null;
  /**
   * Milliseconds. Defaults are Octavia's: 50000, 5000, 50000, 0. The first three must be
   * positive: HAProxy reads 0 as "no timeout" and warns about it.
   */
  readonly timeoutClientData?: number;
  readonly timeoutMemberConnect?: number;
  readonly timeoutMemberData?: number;
  readonly timeoutTcpInspect?: number;
  /** Only these source networks may connect. @default any */
  readonly allowedCidrs?: readonly string[];
  /** Headers added for HTTP pools. */
  readonly insertHeaders?: {
    readonly "X-Forwarded-For"?: boolean;
    readonly "X-Forwarded-Port"?: boolean;
    readonly "X-Forwarded-Proto"?: boolean;
  };
  /** PEM (certificate + key) for TERMINATED_HTTPS: the default certificate. */
  readonly certificatePath?: string | null;
  /** More PEMs for TERMINATED_HTTPS, chosen by the client's SNI (Octavia's sni_container_refs). */
  readonly sniCertificatePaths?: readonly string[];
  /** Client-certificate authentication on TERMINATED_HTTPS. @default "NONE" */
  readonly clientAuthentication?: (typeof CLIENT_AUTH)[number];
  /** CA bundle the client certificates are verified against (needed unless NONE). */
  readonly clientCaPath?: string | null;
  /** Revocation list for client certificates. */
  readonly clientCrlPath?: string | null;
  readonly defaultPool?: PoolSpec | null;
  /** Layer-7 policies (HTTP and TERMINATED_HTTPS listeners), applied in position order. */
  readonly l7Policies?: readonly L7PolicySpec[];
  /** false leaves the listener out, as Octavia does. @default true */
  readonly adminStateUp?: boolean;
}

export interface L7RuleSpec {
  readonly type: (typeof L7_RULE_TYPES)[number];
  readonly compareType: (typeof L7_COMPARE_TYPES)[number];
  /** HEADER: the header name; COOKIE: the cookie name. */
  readonly key?: string | null;
  readonly value: string;
  /** Match when the rule does NOT match. @default false */
  readonly invert?: boolean;
  /** false leaves the rule out. @default true */
  readonly adminStateUp?: boolean;
}

export interface L7PolicySpec {
  readonly name: string;
  readonly action: (typeof L7_ACTIONS)[number];
  /** Order among the listener's policies (1 first). @default list order */
  readonly position?: number;
  /** REDIRECT_TO_URL: where to. */
  readonly redirectUrl?: string | null;
  /** REDIRECT_PREFIX: the scheme://host prefix. */
  readonly redirectPrefix?: string | null;
  /** REDIRECT_TO_POOL: the pool requests go to. */
  readonly redirectPool?: PoolSpec | null;
  /** REDIRECT_TO_URL / REDIRECT_PREFIX: 301, 302, 303, 307 or 308. @default 302 */
  readonly redirectHttpCode?: number | null;
  /** All must match (AND), as in Octavia. At least one. */
  readonly rules: readonly L7RuleSpec[];
  /** false leaves the policy out. @default true */
  readonly adminStateUp?: boolean;
}

export interface HaproxySpec {
  /** Load balancer name (comment and stats). */
  readonly name: string;
  readonly vipAddress: string;
  readonly listeners: readonly ListenerSpec[];
  /** Runtime API socket (used for hitless reloads and member state). */
  readonly statsSocket: string;
  /**
   * File of `show servers state` saved before a reload; backends with a health monitor load it
   * (`load-server-state-from-file global`), so member UP/DOWN survives reloads, as in Octavia.
   * @default none
   */
  readonly serverStateFile?: string | null;
  /** Global maxconn (Octavia's global connection limit). @default 50000 */
  readonly maxconn?: number;
  /** Log target: a syslog socket path or `ip:port`. `null` turns logging off. @default "/dev/log" */
  readonly logTarget?: string | null;
  /** @default 0 (local0 for traffic, local1 for administrative messages) */
  readonly logFacility?: number;
  /** Stick-table size for SOURCE_IP and APP_COOKIE persistence. @default "10k" */
  readonly stickSize?: string;
}

type Mode = "http" | "tcp";

export interface HaproxyView {
  readonly name: string;
  readonly maxconn: number;
  readonly statsSocket: string;
  readonly serverStateFile: string | null;
  readonly log: { readonly target: string; readonly traffic: number; readonly admin: number } | null;
  readonly frontends: readonly {
    readonly name: string;
    readonly bind: string;
    /** ssl, certificates, client auth, TLS defaults ("" for plain). */
    readonly bindOptions: string;
    readonly mode: Mode;
    readonly maxconn: number | null;
    readonly allowedCidrs: string | null;
    readonly timeoutClient: number;
    readonly timeoutTcpInspect: number | null;
    readonly l7: readonly string[];
    readonly defaultBackend: string | null;
  }[];
  readonly backends: readonly {
    readonly name: string;
    readonly mode: Mode;
    readonly balance: "roundrobin" | "leastconn" | "source";
    readonly stickSourceIp: boolean;
    readonly httpCookie: boolean;
    readonly appCookie: string | null;
    readonly stickSize: string;
    readonly loadState: boolean;
    readonly monitor: {
      readonly timeout: number;
      readonly http: { readonly send: string; readonly expect: string } | null;
    } | null;
    readonly forwardFor: boolean;
    readonly forwardedPort: boolean;
    readonly forwardedProto: string | null;
    readonly fullconn: number | null;
    readonly timeoutConnect: number;
    readonly timeoutServer: number;
    readonly servers: readonly string[];
  }[];
}

const BALANCE = { ROUND_ROBIN: "roundrobin", LEAST_CONNECTIONS: "leastconn", SOURCE_IP: "source" } as const;
const URL_PATH = /^\/[A-Za-z0-9._~%/?=&+-]*$/;
const COOKIE = /^[A-Za-z0-9_-]{1,64}$/;
const STICK_SIZE = /^[1-9][0-9]{0,8}[km]?$/;

/** Octavia's expected_codes ("200", "200,202", "200-204") as an anchored status regex. */
export function expectedCodesRegex(field: string, codes: string): string {
  const single = /^[1-5][0-9]{2}$/;
  let list: string[];
  if (single.test(codes)) list = [codes];
  else if (/^[1-5][0-9]{2}(,[1-5][0-9]{2})+$/.test(codes)) list = codes.split(",");
  else if (/^[1-5][0-9]{2}-[1-5][0-9]{2}$/.test(codes)) {
    const [from, to] = codes.split("-").map(Number);
    if (from > to) throw new FieldError(field, `range ${codes} runs backwards`, `write ${to}-${from}`);
    list = Array.from({ length: to - from + 1 }, (_, i) => String(from + i));
  } else {
    throw new FieldError(
      field,
      `invalid expected codes ${JSON.stringify(codes)}`,
      'use "200", "200,202" or "200-204"',
    );
  }
  return list.length === 1 ? `^${list[0]}$` : `^(${list.join("|")})$`;
}

function monitorView(field: string, hm: HealthMonitorSpec, poolProtocol: PoolProtocol) {
  if (hm.type === "PING") {
    throw new FieldError(
      `${field}.type`,
      "PING monitors are not supported: Octavia runs /bin/ping through haproxy's external-check (a process forked per check, which needs insecure-fork-wanted), and many members drop ICMP anyway",
      "use a TCP monitor (connect check) or an HTTP monitor",
    );
  }
  const type = checkOneOf(`${field}.type`, hm.type, MONITOR_TYPES);
  const delay = checkInt(`${field}.delay`, hm.delay, 1, 86400);
  // Octavia accepts a timeout longer than the delay; haproxy then runs checks back to back.
  const timeout = checkInt(`${field}.timeout`, hm.timeout, 1, 86400);
  const rise = checkInt(`${field}.maxRetries`, hm.maxRetries, 1, 10);
  const fall = checkInt(`${field}.maxRetriesDown`, hm.maxRetriesDown ?? 3, 1, 10);
  const isHttp = type === "HTTP" || type === "HTTPS";
  if (!isHttp) {
    for (const key of ["httpMethod", "urlPath", "expectedCodes", "httpVersion", "domainName"] as const) {
      if (hm[key] !== undefined && hm[key] !== null) {
        throw new FieldError(
          `${field}.${key}`,
          `${key} applies to HTTP and HTTPS monitors only`,
          "remove it",
        );
      }
    }
  }
  if (type === "HTTP" && poolProtocol === "HTTPS") {
    throw new FieldError(
      `${field}.type`,
      "an HTTP monitor cannot check an HTTPS pool",
      "use HTTPS or TLS-HELLO",
    );
  }
  let http: { send: string; expect: string } | null = null;
  if (isHttp) {
    const method = checkOneOf(`${field}.httpMethod`, hm.httpMethod ?? "GET", HTTP_METHODS);
    const url = hm.urlPath ?? "/";
    if (typeof url !== "string" || !URL_PATH.test(url) || url.length > 2048) {
      throw new FieldError(
        `${field}.urlPath`,
        `invalid URL path ${JSON.stringify(url)}`,
        "use a path starting with '/' of letters, digits and ._~%/?=&+-",
      );
    }
    const version = checkOneOf(`${field}.httpVersion`, hm.httpVersion ?? "1.0", ["1.0", "1.1"] as const);
    let send = `meth ${method} uri ${url} ver HTTP/${version}`;
    if (hm.domainName !== undefined && hm.domainName !== null) {
      if (version !== "1.1")
        throw new FieldError(
          `${field}.domainName`,
          "a Host header needs httpVersion 1.1",
          'set httpVersion: "1.1"',
        );
      const labels = String(hm.domainName).split(".");
      labels.forEach((l, i) => checkHostname(`${field}.domainName`, l === "" && i > 0 ? "-" : l));
      send += ` hdr Host ${hm.domainName}`;
    }
    http = { send, expect: expectedCodesRegex(`${field}.expectedCodes`, hm.expectedCodes ?? "200") };
  }
  // TLS-HELLO: a plain connect check, as Octavia renders it since it dropped `option
  // ssl-hello-chk` (that sends an SSLv3 hello modern servers refuse).
  return { timeout, http, check: { ssl: type === "HTTPS", delay, fall, rise } };
}

function checkIp(field: string, value: unknown): string {
  ipToInt(value as string, field);
  return value as string;
}

type Backend = HaproxyView["backends"][number];

interface ListenerContext {
  readonly lname: string;
  readonly protocol: ListenerProtocol;
  readonly mode: Mode;
  readonly headers: NonNullable<ListenerSpec["insertHeaders"]>;
  readonly limit: number | null;
  readonly timeoutConnect: number;
  readonly timeoutServer: number;
  readonly stickSize: string;
  readonly stateFile: string | null;
  readonly poolNames: Set<string>;
}

/** One pool as a backend `<pool>:<listener>`; throws FieldError naming the field. */
function poolBackend(p: string, pool: PoolSpec, c: ListenerContext): Backend {
  const pname = checkName(`${p}.name`, pool.name);
  if (c.poolNames.has(pname))
    throw new FieldError(`${p}.name`, `duplicate pool ${pname}`, "name each pool once");
  c.poolNames.add(pname);
  const pproto = checkOneOf(`${p}.protocol`, pool.protocol, POOL_PROTOCOLS);
  if (!POOL_PROTOCOLS_FOR[c.protocol].includes(pproto)) {
    throw new FieldError(
      `${p}.protocol`,
      `listener protocol ${c.protocol} cannot use pool protocol ${pproto}`,
      `use one of ${POOL_PROTOCOLS_FOR[c.protocol].join(", ")}`,
    );
  }
  const bmode: Mode =
    pproto === "HTTP" ? "http" : pproto === "PROXY" || pproto === "PROXYV2" ? c.mode : "tcp";
  const algorithm = checkOneOf(`${p}.lbAlgorithm`, pool.lbAlgorithm, LB_ALGORITHMS);
  const sp = pool.sessionPersistence ?? null;
  const spType = sp === null ? null : checkOneOf(`${p}.sessionPersistence.type`, sp.type, PERSISTENCE_TYPES);
  let appCookie: string | null = null;
  if (spType === "APP_COOKIE") {
    const cookie = sp?.cookieName;
    if (typeof cookie !== "string" || !COOKIE.test(cookie)) {
      throw new FieldError(
        `${p}.sessionPersistence.cookieName`,
        `invalid cookie name ${JSON.stringify(cookie)}`,
        "use 1-64 letters, digits, '_' or '-'",
      );
    }
    appCookie = cookie;
  } else if (sp !== null && sp.cookieName !== undefined && sp.cookieName !== null) {
    throw new FieldError(
      `${p}.sessionPersistence.cookieName`,
      "cookieName applies to APP_COOKIE only",
      "remove it",
    );
  }
  if (spType === "APP_COOKIE" && bmode !== "http") {
    throw new FieldError(
      `${p}.sessionPersistence.type`,
      `${spType} persistence needs an HTTP pool`,
      "use SOURCE_IP persistence or an HTTP pool",
    );
  }
  // HTTP_COOKIE on a TCP-mode pool (e.g. HTTPS passthrough): Octavia accepts it and haproxy
  // ignores the cookie there; kvmlab accepts it too and renders no cookie lines (no warning).
  const httpCookie = spType === "HTTP_COOKIE" && bmode === "http";
  const hm = pool.healthMonitor ?? null;
  const mon = hm !== null && (hm.adminStateUp ?? true) ? monitorView(`${p}.healthMonitor`, hm, pproto) : null;
  const tls = checkBool(`${p}.tlsEnabled`, pool.tlsEnabled ?? false);
  const ca =
    pool.caCertPath === undefined || pool.caCertPath === null
      ? null
      : checkPath(`${p}.caCertPath`, pool.caCertPath);
  if (ca !== null && !tls)
    throw new FieldError(
      `${p}.caCertPath`,
      "caCertPath needs tlsEnabled: true",
      "set tlsEnabled or remove caCertPath",
    );
  const memberNames = new Set<string>();
  const servers = (pool.members ?? []).map((m, k) => {
    const mf = `${p}.members[${k}]`;
    const mname = checkName(`${mf}.name`, m.name);
    if (memberNames.has(mname))
      throw new FieldError(`${mf}.name`, `duplicate member ${mname}`, "name each member once");
    memberNames.add(mname);
    const parts = [
      `server ${mname} ${checkIp(`${mf}.address`, m.address)}:${checkPort(`${mf}.protocolPort`, m.protocolPort)}`,
    ];
    parts.push(`weight ${checkInt(`${mf}.weight`, m.weight ?? 1, 0, 256)}`);
    if (mon !== null) {
      parts.push(
        `check${mon.check.ssl ? " check-ssl verify none" : ""}${tls ? ` check-alpn ${OCTAVIA_ALPN}` : ""} inter ${mon.check.delay}s fall ${mon.check.fall} rise ${mon.check.rise}`,
      );
      if (m.monitorAddress !== undefined && m.monitorAddress !== null)
        parts.push(`addr ${checkIp(`${mf}.monitorAddress`, m.monitorAddress)}`);
      if (m.monitorPort !== undefined && m.monitorPort !== null)
        parts.push(`port ${checkPort(`${mf}.monitorPort`, m.monitorPort)}`);
    } else if (m.monitorAddress !== undefined && m.monitorAddress !== null) {
      checkIp(`${mf}.monitorAddress`, m.monitorAddress);
    }
    if (httpCookie) parts.push(`cookie ${mname}`);
    if (pproto === "PROXY") parts.push("send-proxy");
    if (pproto === "PROXYV2") parts.push("send-proxy-v2");
    if (checkBool(`${mf}.backup`, m.backup ?? false)) parts.push("backup");
    if (!checkBool(`${mf}.adminStateUp`, m.adminStateUp ?? true)) parts.push("disabled");
    if (tls)
      parts.push(
        `${ca === null ? "ssl verify none" : `ssl ca-file ${ca} verify required`} sni ssl_fc_sni ciphers ${OCTAVIA_TLS_CIPHERS} ${OCTAVIA_TLS_VERSIONS} alpn ${OCTAVIA_ALPN}`,
      );
    return parts.join(" ");
  });
  const proto =
    c.headers["X-Forwarded-Proto"] === true ? (c.protocol === "TERMINATED_HTTPS" ? "https" : "http") : null;
  return {
    name: `${pname}:${c.lname}`,
    mode: bmode,
    balance: BALANCE[algorithm],
    stickSourceIp: spType === "SOURCE_IP",
    httpCookie,
    appCookie,
    stickSize: c.stickSize,
    loadState: mon !== null && c.stateFile !== null,
    monitor: mon === null ? null : { timeout: mon.timeout, http: mon.http },
    forwardFor: bmode === "http" && c.headers["X-Forwarded-For"] === true,
    forwardedPort: bmode === "http" && c.headers["X-Forwarded-Port"] === true,
    forwardedProto: bmode === "http" ? proto : null,
    fullconn: c.limit,
    timeoutConnect: c.timeoutConnect,
    timeoutServer: c.timeoutServer,
    servers,
  };
}

const L7_MATCH: Record<(typeof L7_COMPARE_TYPES)[number], string> = {
  REGEX: "-m reg",
  STARTS_WITH: "-m beg",
  ENDS_WITH: "-m end",
  CONTAINS: "-m sub",
  EQUAL_TO: "-m str",
};
/** An ACL value: no blanks, quotes, '#' or backslash escapes beyond regex use; 1-255 chars. */
const L7_VALUE = /^[A-Za-z0-9._~%/:?=&+*^$()[\]|{},@!;-]{1,255}$/;
const L7_KEY = /^[A-Za-z0-9_-]{1,64}$/;
const REDIRECT_URL = /^https?:\/\/[A-Za-z0-9.-]+(:[0-9]{1,5})?(\/[A-Za-z0-9._~%/?=&+-]*)?$/;
const REDIRECT_CODES = [301, 302, 303, 307, 308];

/** A listener's L7 policies as frontend lines (ACLs, then actions in position order). */
function l7Lines(
  f: string,
  policies: readonly L7PolicySpec[],
  c: ListenerContext,
  backends: Backend[],
): string[] {
  if (policies.length > 0 && c.mode !== "http") {
    throw new FieldError(
      `${f}.l7Policies`,
      `a ${c.protocol} listener cannot apply L7 policies`,
      "use an HTTP or TERMINATED_HTTPS listener",
    );
  }
  const names = new Set<string>();
  const ordered = policies
    .map((pol, i) => ({ pol, i, at: `${f}.l7Policies[${i}]` }))
    .filter(({ pol, at }) => checkBool(`${at}.adminStateUp`, pol.adminStateUp ?? true))
    .sort((a, b) => (a.pol.position ?? a.i + 1) - (b.pol.position ?? b.i + 1) || a.i - b.i);
  const lines: string[] = [];
  // haproxy runs every http-request rule before any use_backend: written in that order (Octavia
  // writes them interleaved and haproxy warns, with the same effect).
  const switches: string[] = [];
  for (const { pol, at } of ordered) {
    const name = checkName(`${at}.name`, pol.name);
    if (names.has(name))
      throw new FieldError(`${at}.name`, `duplicate L7 policy ${name}`, "name each policy once");
    names.add(name);
    if (pol.position !== undefined) checkInt(`${at}.position`, pol.position, 1, 2147483647);
    const action = checkOneOf(`${at}.action`, pol.action, L7_ACTIONS);
    const rules = (pol.rules ?? []).filter((r, j) =>
      checkBool(`${at}.rules[${j}].adminStateUp`, r.adminStateUp ?? true),
    );
    if (rules.length === 0)
      throw new FieldError(
        `${at}.rules`,
        "a policy needs at least one enabled rule",
        "add a rule (e.g. PATH STARTS_WITH /)",
      );
    const acls: string[] = [];
    rules.forEach((r, j) => {
      const rf = `${at}.rules[${j}]`;
      const type = checkOneOf(`${rf}.type`, r.type, L7_RULE_TYPES);
      const cmp = checkOneOf(`${rf}.compareType`, r.compareType, L7_COMPARE_TYPES);
      if (typeof r.value !== "string" || !L7_VALUE.test(r.value))
        throw new FieldError(
          `${rf}.value`,
          `invalid value ${JSON.stringify(r.value)}`,
          "use 1-255 characters without blanks, quotes, '#' or backslashes",
        );
      const needsKey = type === "HEADER" || type === "COOKIE";
      if (needsKey && (typeof r.key !== "string" || !L7_KEY.test(r.key)))
        throw new FieldError(
          `${rf}.key`,
          `a ${type} rule needs a key (the ${type === "HEADER" ? "header" : "cookie"} name)`,
          "use 1-64 letters, digits, '_' or '-'",
        );
      if (!needsKey && r.key !== undefined && r.key !== null)
        throw new FieldError(`${rf}.key`, `key applies to HEADER and COOKIE rules only`, "remove it");
      if (type === "FILE_TYPE" && cmp !== "EQUAL_TO" && cmp !== "REGEX")
        throw new FieldError(
          `${rf}.compareType`,
          "a FILE_TYPE rule compares with EQUAL_TO or REGEX",
          "use one of them",
        );
      const acl = `${name}-${j}`;
      const fetch =
        type === "HOST_NAME"
          ? "req.hdr(host) -i"
          : type === "PATH"
            ? "path"
            : type === "FILE_TYPE"
              ? "path_end"
              : type === "HEADER"
                ? `req.hdr(${r.key})`
                : `req.cook(${r.key})`;
      // Octavia: FILE_TYPE with EQUAL_TO is plain path_end (haproxy/haproxy#2567).
      const match = type === "FILE_TYPE" && cmp === "EQUAL_TO" ? "" : ` ${L7_MATCH[cmp]}`;
      lines.push(`acl ${acl} ${fetch}${match} ${r.value}`);
      acls.push(`${checkBool(`${rf}.invert`, r.invert ?? false) ? "!" : ""}${acl}`);
    });
    const cond = `if ${acls.join(" ")}`;
    const code = (): string => {
      const v = pol.redirectHttpCode ?? 302;
      if (!REDIRECT_CODES.includes(v as number))
        throw new FieldError(
          `${at}.redirectHttpCode`,
          `invalid code ${JSON.stringify(v)}`,
          "use 301, 302, 303, 307 or 308",
        );
      return ` code ${v}`;
    };
    const only = (
      key: "redirectUrl" | "redirectPrefix" | "redirectPool",
      wanted: (typeof L7_ACTIONS)[number],
    ) => {
      if (action !== wanted && pol[key] !== undefined && pol[key] !== null)
        throw new FieldError(`${at}.${key}`, `${key} applies to ${wanted} only`, "remove it");
    };
    only("redirectUrl", "REDIRECT_TO_URL");
    only("redirectPrefix", "REDIRECT_PREFIX");
    only("redirectPool", "REDIRECT_TO_POOL");
    if (action === "REJECT") lines.push(`http-request deny ${cond}`);
    else if (action === "REDIRECT_TO_URL" || action === "REDIRECT_PREFIX") {
      const key = action === "REDIRECT_TO_URL" ? "redirectUrl" : "redirectPrefix";
      const target = pol[key];
      if (typeof target !== "string" || !REDIRECT_URL.test(target))
        throw new FieldError(
          `${at}.${key}`,
          `invalid URL ${JSON.stringify(target)}`,
          "use http(s)://host[:port][/path]",
        );
      // `http-request redirect` keeps the position order among deny and redirects (a plain
      // `redirect` would run before every `http-request` rule, and haproxy warns).
      lines.push(
        `http-request redirect ${action === "REDIRECT_TO_URL" ? "location" : "prefix"} ${target}${code()} ${cond}`,
      );
    } else {
      const pool = pol.redirectPool;
      if (pool === undefined || pool === null)
        throw new FieldError(`${at}.redirectPool`, "REDIRECT_TO_POOL needs a pool", "set redirectPool");
      if (checkBool(`${at}.redirectPool.adminStateUp`, pool.adminStateUp ?? true)) {
        const b = poolBackend(`${at}.redirectPool`, pool, c);
        backends.push(b);
        switches.push(`use_backend ${b.name} ${cond}`);
      }
    }
  }
  return [...lines, ...switches];
}

/** Validates `spec` (Octavia terms) and returns the view {@link renderHaproxyCfg} accepts. */
export function toHaproxyView(spec: HaproxySpec): HaproxyView {
  const name = checkName("name", spec.name);
  const vip = checkIp("vipAddress", spec.vipAddress);
  const stickSize = spec.stickSize ?? "10k";
  if (!STICK_SIZE.test(stickSize))
    throw new FieldError("stickSize", `invalid size ${JSON.stringify(stickSize)}`, 'use a count like "10k"');
  let log: HaproxyView["log"] = null;
  const target = spec.logTarget === undefined ? "/dev/log" : spec.logTarget;
  if (target !== null) {
    const facility = checkInt("logFacility", spec.logFacility ?? 0, 0, 6);
    const isAddr = /^[0-9.]+:\d+$/.test(target);
    if (isAddr) {
      const [ip, port] = target.split(":");
      checkIp("logTarget", ip);
      checkPort("logTarget", Number(port));
    } else checkPath("logTarget", target);
    log = { target, traffic: facility, admin: facility + 1 };
  }
  const stateFile =
    spec.serverStateFile === undefined || spec.serverStateFile === null
      ? null
      : checkPath("serverStateFile", spec.serverStateFile);
  const listenerNames = new Set<string>();
  const ports = new Set<number>();
  const poolNames = new Set<string>();
  const frontends: HaproxyView["frontends"][number][] = [];
  const backends: Backend[] = [];
  (spec.listeners ?? []).forEach((l, i) => {
    const f = `listeners[${i}]`;
    const lname = checkName(`${f}.name`, l.name);
    if (listenerNames.has(lname))
      throw new FieldError(`${f}.name`, `duplicate listener ${lname}`, "name each listener once");
    listenerNames.add(lname);
    const protocol = checkOneOf(`${f}.protocol`, l.protocol, LISTENER_PROTOCOLS);
    const port = checkPort(`${f}.protocolPort`, l.protocolPort);
    if (ports.has(port))
      throw new FieldError(
        `${f}.protocolPort`,
        `port ${port} is already used by another listener`,
        "pick another port",
      );
    ports.add(port);
    if (!checkBool(`${f}.adminStateUp`, l.adminStateUp ?? true)) return;
    const mode: Mode = protocol === "HTTP" || protocol === "TERMINATED_HTTPS" ? "http" : "tcp";
    const tlsOnly = ["certificatePath", "sniCertificatePaths", "clientCaPath", "clientCrlPath"] as const;
    let bindOptions = "";
    if (protocol === "TERMINATED_HTTPS") {
      if (l.certificatePath === undefined || l.certificatePath === null) {
        throw new FieldError(
          `${f}.certificatePath`,
          "TERMINATED_HTTPS needs a certificate",
          "set certificatePath to a PEM with certificate and key",
        );
      }
      const crts = [
        checkPath(`${f}.certificatePath`, l.certificatePath),
        ...(l.sniCertificatePaths ?? []).map((c, j) => checkPath(`${f}.sniCertificatePaths[${j}]`, c)),
      ];
      const auth = checkOneOf(`${f}.clientAuthentication`, l.clientAuthentication ?? "NONE", CLIENT_AUTH);
      const ca =
        l.clientCaPath === undefined || l.clientCaPath === null
          ? null
          : checkPath(`${f}.clientCaPath`, l.clientCaPath);
      const crl =
        l.clientCrlPath === undefined || l.clientCrlPath === null
          ? null
          : checkPath(`${f}.clientCrlPath`, l.clientCrlPath);
      if (auth !== "NONE" && ca === null)
        throw new FieldError(
          `${f}.clientCaPath`,
          `clientAuthentication ${auth} needs the client CA`,
          "set clientCaPath to a PEM CA bundle",
        );
      if (crl !== null && ca === null)
        throw new FieldError(
          `${f}.clientCrlPath`,
          "a revocation list needs clientCaPath",
          "set clientCaPath or remove clientCrlPath",
        );
      const client =
        auth === "NONE"
          ? ""
          : ` ca-file ${ca} verify ${auth === "MANDATORY" ? "required" : "optional"}${crl !== null ? ` crl-file ${crl}` : ""}`;
      bindOptions = `ssl ${crts.map((c) => `crt ${c}`).join(" ")}${client} ciphers ${OCTAVIA_TLS_CIPHERS} ${OCTAVIA_TLS_VERSIONS} alpn ${OCTAVIA_ALPN}`;
    } else {
      for (const key of tlsOnly) {
        const v = l[key];
        if (v !== undefined && v !== null && !(Array.isArray(v) && v.length === 0))
          throw new FieldError(
            `${f}.${key}`,
            `a ${protocol} listener does not terminate TLS`,
            `remove ${key} or use TERMINATED_HTTPS`,
          );
      }
      if (l.clientAuthentication !== undefined && l.clientAuthentication !== "NONE")
        throw new FieldError(
          `${f}.clientAuthentication`,
          `a ${protocol} listener does not terminate TLS`,
          "remove it or use TERMINATED_HTTPS",
        );
    }
    const limit =
      l.connectionLimit === undefined || l.connectionLimit === null || l.connectionLimit === -1
        ? null
        : checkInt(`${f}.connectionLimit`, l.connectionLimit, 1, 1000000);
    const cidrs = (l.allowedCidrs ?? []).map((c, j) => parseCidr(c, `${f}.allowedCidrs[${j}]`).text);
    const headers = l.insertHeaders ?? {};
    for (const key of Object.keys(headers)) {
      checkOneOf(`${f}.insertHeaders`, key, [
        "X-Forwarded-For",
        "X-Forwarded-Port",
        "X-Forwarded-Proto",
      ] as const);
      checkBool(`${f}.insertHeaders.${key}`, headers[key as keyof typeof headers]);
    }
    if (mode !== "http" && Object.values(headers).some(Boolean)) {
      throw new FieldError(
        `${f}.insertHeaders`,
        `a ${protocol} listener cannot insert HTTP headers`,
        "use HTTP or TERMINATED_HTTPS, or remove insertHeaders",
      );
    }
    const inspect = checkInt(`${f}.timeoutTcpInspect`, l.timeoutTcpInspect ?? 0, 0, 86400000);
    const ctx: ListenerContext = {
      lname,
      protocol,
      mode,
      headers,
      limit,
      timeoutConnect: checkInt(`${f}.timeoutMemberConnect`, l.timeoutMemberConnect ?? 5000, 1, 86400000),
      timeoutServer: checkInt(`${f}.timeoutMemberData`, l.timeoutMemberData ?? 50000, 1, 86400000),
      stickSize,
      stateFile,
      poolNames,
    };
    let defaultBackend: string | null = null;
    const pool = l.defaultPool ?? null;
    if (pool !== null && checkBool(`${f}.defaultPool.adminStateUp`, pool.adminStateUp ?? true)) {
      const b = poolBackend(`${f}.defaultPool`, pool, ctx);
      backends.push(b);
      defaultBackend = b.name;
    }
    const l7 = l7Lines(f, l.l7Policies ?? [], ctx, backends);
    frontends.push({
      name: lname,
      bind: `${vip}:${port}`,
      bindOptions,
      mode,
      maxconn: limit,
      allowedCidrs: cidrs.length > 0 ? cidrs.join(" ") : null,
      timeoutClient: checkInt(`${f}.timeoutClientData`, l.timeoutClientData ?? 50000, 1, 86400000),
      timeoutTcpInspect: inspect > 0 ? inspect : null,
      l7,
      defaultBackend,
    });
  });
  return seal({
    name,
    maxconn: checkInt("maxconn", spec.maxconn ?? 50000, 1, 10000000),
    statsSocket: checkPath("statsSocket", spec.statsSocket),
    serverStateFile: stateFile,
    log,
    frontends,
    backends,
  });
}

/** haproxy.cfg text; validate on the host with `haproxy -c -f FILE` before swapping it in. */
export function renderHaproxyCfg(view: HaproxyView): string {
  assertSealed(view, "toHaproxyView");
  return renderTemplate("haproxy/haproxy.cfg", view);
}

/**
 * Global maxconn of a load balancer unless the program sets one. Octavia uses 50000 with
 * LimitNOFILE=2600000; haproxy needs about 2.5 open files per connection and refuses to start
 * when the host's hard limit is lower (the sandbox hosts allow 20000), so kvmlab defaults lower.
 */
export const LB_DEFAULT_MAXCONN = 5000;

/** The haproxy.cfg a load balancer runs (pure; what the component passes to the resource). */
export function loadBalancerConfig(
  lbName: string,
  vipAddress: string,
  listeners: readonly ListenerSpec[],
  opts: Pick<HaproxySpec, "maxconn" | "logTarget"> = {},
): string {
  const paths = loadBalancerPaths(lbName);
  return renderHaproxyCfg(
    toHaproxyView({
      name: lbName,
      vipAddress,
      listeners,
      statsSocket: paths.statsSocket,
      serverStateFile: paths.stateFile,
      maxconn: opts.maxconn ?? LB_DEFAULT_MAXCONN,
      logTarget: opts.logTarget === undefined ? null : opts.logTarget,
    }),
  );
}
