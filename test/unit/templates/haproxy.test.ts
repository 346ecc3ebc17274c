import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import {
  expectedCodesRegex,
  HaproxySpec,
  ListenerSpec,
  renderHaproxyCfg,
  toHaproxyView,
} from "../../../templates";
import { assertFieldError, assertValid, expectGolden, haproxyCheck, INJECTIONS, tempDir } from "./support";

const members = [
  { name: "web-0", address: "10.10.1.5", protocolPort: 8080, weight: 10 },
  { name: "web-1", address: "10.10.1.6", protocolPort: 8080, weight: 5, monitorPort: 8081 },
  { name: "web-2", address: "10.10.1.7", protocolPort: 8080, adminStateUp: false },
  { name: "sorry", address: "10.10.1.8", protocolPort: 8080, backup: true },
];

const httpListener: ListenerSpec = {
  name: "http",
  protocol: "HTTP",
  protocolPort: 80,
  connectionLimit: 5000,
  timeoutClientData: 30000,
  timeoutMemberConnect: 3000,
  timeoutMemberData: 40000,
  allowedCidrs: ["0.0.0.0/0"],
  insertHeaders: { "X-Forwarded-For": true, "X-Forwarded-Port": true, "X-Forwarded-Proto": true },
  defaultPool: {
    name: "web",
    protocol: "HTTP",
    lbAlgorithm: "ROUND_ROBIN",
    sessionPersistence: { type: "HTTP_COOKIE" },
    healthMonitor: {
      type: "HTTP",
      delay: 5,
      timeout: 3,
      maxRetries: 2,
      maxRetriesDown: 4,
      httpMethod: "HEAD",
      urlPath: "/healthz?full=1",
      expectedCodes: "200-204",
      httpVersion: "1.1",
      domainName: "web.lab.example",
    },
    members,
  },
};

const base: HaproxySpec = {
  name: "web-lb",
  vipAddress: "203.0.113.10",
  statsSocket: "/var/lib/kvmlab/lb/web-lb/haproxy.sock",
  maxconn: 20000,
  listeners: [httpListener],
};

function selfSignedPem(dir: string): string {
  const pem = path.join(dir, "lb.pem");
  const r = spawnSync(
    "sh",
    [
      "-c",
      `openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=lb.test -keyout "$1.key" -out "$1.crt" 2>/dev/null && cat "$1.crt" "$1.key" > "$1"`,
      "sh",
      pem,
    ],
    { encoding: "utf8", timeout: 60_000 },
  );
  assert.equal(r.status, 0, `openssl failed: ${r.stderr}`);
  return pem;
}

test("haproxy: HTTP listener with cookie persistence, HTTP monitor, headers, CIDRs and member states", () => {
  const cfg = renderHaproxyCfg(toHaproxyView(base));
  expectGolden("haproxy/http-cookie-monitor.cfg", cfg);
  assertValid(haproxyCheck(cfg), "haproxy.cfg");
  const lines = cfg.split("\n").map((l) => l.trim());
  for (const want of [
    "stats socket /var/lib/kvmlab/lb/web-lb/haproxy.sock mode 0660 level admin expose-fd listeners",
    "maxconn 20000",
    "frontend http",
    "maxconn 5000",
    "bind 203.0.113.10:80",
    "mode http",
    "acl allowed-cidrs src 0.0.0.0/0",
    "tcp-request connection reject unless allowed-cidrs",
    "default_backend web:http",
    "timeout client 30000",
    "backend web:http",
    "balance roundrobin",
    "cookie SRV insert indirect nocache",
    "timeout check 3s",
    "option httpchk",
    "http-check send meth HEAD uri /healthz?full=1 ver HTTP/1.1 hdr Host web.lab.example",
    "http-check expect rstatus ^(200|201|202|203|204)$",
    "option forwardfor",
    "http-request set-header X-Forwarded-Port %[dst_port]",
    "http-request set-header X-Forwarded-Proto http",
    "fullconn 5000",
    "timeout connect 3000",
    "timeout server 40000",
    "server web-0 10.10.1.5:8080 weight 10 check inter 5s fall 4 rise 2 cookie web-0",
    "server web-1 10.10.1.6:8080 weight 5 check inter 5s fall 4 rise 2 port 8081 cookie web-1",
    "server web-2 10.10.1.7:8080 weight 1 check inter 5s fall 4 rise 2 cookie web-2 disabled",
    "server sorry 10.10.1.8:8080 weight 1 check inter 5s fall 4 rise 2 cookie sorry backup",
  ]) {
    assert.ok(lines.includes(want), `missing line: ${want}`);
  }
});

test("haproxy: TCP listener with SOURCE_IP persistence and a TCP monitor; logging off", () => {
  const cfg = renderHaproxyCfg(
    toHaproxyView({
      ...base,
      name: "db-lb",
      vipAddress: "10.10.2.100",
      logTarget: null,
      listeners: [
        {
          name: "mysql",
          protocol: "TCP",
          protocolPort: 3306,
          timeoutTcpInspect: 2000,
          defaultPool: {
            name: "db",
            protocol: "TCP",
            lbAlgorithm: "LEAST_CONNECTIONS",
            sessionPersistence: { type: "SOURCE_IP" },
            healthMonitor: { type: "TCP", delay: 10, timeout: 5, maxRetries: 3 },
            members: [{ name: "db-0", address: "10.10.3.5", protocolPort: 3306 }],
          },
        },
      ],
    }),
  );
  expectGolden("haproxy/tcp-source-ip.cfg", cfg);
  assertValid(haproxyCheck(cfg), "haproxy.cfg");
  assert.match(cfg, /^ {4}no log$/m);
  assert.doesNotMatch(cfg, /^\s+log /m);
  assert.match(cfg, /^ {4}mode tcp$/m);
  assert.match(cfg, /^ {4}balance leastconn$/m);
  assert.match(cfg, /^ {4}stick-table type ip size 10k\n {4}stick on src$/m);
  assert.match(cfg, /^ {4}tcp-request inspect-delay 2000$/m);
  assert.doesNotMatch(cfg, /httpchk|forwardfor|maxconn 50000\n[\s\S]*frontend[\s\S]*maxconn/);
  assert.match(cfg, /server db-0 10\.10\.3\.5:3306 weight 1 check inter 10s fall 3 rise 3$/m);
});

test("haproxy: TERMINATED_HTTPS with a certificate and APP_COOKIE persistence passes haproxy -c", () => {
  const { dir, cleanup } = tempDir();
  try {
    const listener = (certificatePath: string): ListenerSpec => ({
      name: "https",
      protocol: "TERMINATED_HTTPS",
      protocolPort: 443,
      certificatePath,
      insertHeaders: { "X-Forwarded-For": true, "X-Forwarded-Proto": true },
      defaultPool: {
        name: "web-tls",
        protocol: "HTTP",
        lbAlgorithm: "ROUND_ROBIN",
        sessionPersistence: { type: "APP_COOKIE", cookieName: "JSESSIONID" },
        members: members.slice(0, 2),
      },
    });
    const golden = renderHaproxyCfg(
      toHaproxyView({ ...base, listeners: [listener("/var/lib/kvmlab/lb/web-lb/tls.pem")] }),
    );
    expectGolden("haproxy/terminated-https-app-cookie.cfg", golden);
    // Octavia's TLS defaults: its cipher suite, TLS 1.2 and 1.3 only, ALPN h2 and HTTP/1.x.
    assert.match(
      golden,
      /^ {4}bind 203\.0\.113\.10:443 ssl crt \/var\/lib\/kvmlab\/lb\/web-lb\/tls\.pem ciphers TLS_AES_128_GCM_SHA256:\S+ no-sslv3 no-tlsv10 no-tlsv11 alpn h2,http\/1\.1,http\/1\.0$/m,
    );
    assert.match(
      golden,
      /stick-table type string len 64 size 10k\n {4}stick store-response res\.cook\(JSESSIONID\)\n {4}stick match req\.cook\(JSESSIONID\)/,
    );
    assert.match(golden, /http-request set-header X-Forwarded-Proto https/);
    assert.doesNotMatch(golden, / check /, "no monitor, no check");
    const withRealCert = renderHaproxyCfg(
      toHaproxyView({ ...base, listeners: [listener(selfSignedPem(dir))] }),
    );
    assertValid(haproxyCheck(withRealCert), "haproxy.cfg (TERMINATED_HTTPS)");
  } finally {
    cleanup();
  }
});

test("haproxy: HTTPS passthrough with TLS-HELLO, PROXY pool, disabled listener left out", () => {
  const cfg = renderHaproxyCfg(
    toHaproxyView({
      ...base,
      logTarget: "127.0.0.1:514",
      logFacility: 2,
      listeners: [
        {
          name: "tls",
          protocol: "HTTPS",
          protocolPort: 443,
          defaultPool: {
            name: "tls-pass",
            protocol: "HTTPS",
            lbAlgorithm: "SOURCE_IP",
            healthMonitor: { type: "TLS-HELLO", delay: 5, timeout: 5, maxRetries: 3 },
            members: [{ name: "web-0", address: "10.10.1.5", protocolPort: 443 }],
          },
        },
        {
          name: "proxied",
          protocol: "TCP",
          protocolPort: 8443,
          defaultPool: {
            name: "pp",
            protocol: "PROXYV2",
            lbAlgorithm: "ROUND_ROBIN",
            healthMonitor: { type: "HTTPS", delay: 5, timeout: 2, maxRetries: 1, urlPath: "/" },
            members: [{ name: "web-0", address: "10.10.1.5", protocolPort: 443 }],
            tlsEnabled: true,
          },
        },
        { ...httpListener, name: "off", protocolPort: 81, adminStateUp: false },
      ],
    }),
  );
  expectGolden("haproxy/https-passthrough-proxy.cfg", cfg);
  assertValid(haproxyCheck(cfg), "haproxy.cfg");
  assert.match(cfg, /log 127\.0\.0\.1:514 local2\n {4}log 127\.0\.0\.1:514 local3 notice/);
  assert.match(cfg, /backend tls-pass:tls\n {4}mode tcp\n {4}balance source/);
  // TLS-HELLO is a connect check, as in Octavia (ssl-hello-chk sends an SSLv3 hello).
  assert.doesNotMatch(cfg, /ssl-hello-chk/);
  assert.match(cfg, /server web-0 10\.10\.1\.5:443 weight 1 check inter 5s fall 3 rise 3$/m);
  // A re-encrypting pool gets Octavia's TLS defaults and checks with ALPN.
  assert.match(
    cfg,
    /server web-0 10\.10\.1\.5:443 weight 1 check check-ssl verify none check-alpn h2,http\/1\.1,http\/1\.0 inter 5s fall 3 rise 1 send-proxy-v2 ssl verify none sni ssl_fc_sni ciphers TLS_AES_128_GCM_SHA256:\S+ no-sslv3 no-tlsv10 no-tlsv11 alpn h2,http\/1\.1,http\/1\.0$/m,
  );
  assert.doesNotMatch(cfg, /frontend off|:81\b/);
});

test("haproxy: deterministic for the same input", () => {
  assert.equal(renderHaproxyCfg(toHaproxyView(base)), renderHaproxyCfg(toHaproxyView(base)));
});

test("haproxy: expected codes follow Octavia's forms", () => {
  assert.equal(expectedCodesRegex("c", "200"), "^200$");
  assert.equal(expectedCodesRegex("c", "200,302"), "^(200|302)$");
  assert.equal(expectedCodesRegex("c", "200-202"), "^(200|201|202)$");
  for (const bad of ["20", "200;", "200-", "abc", "200 201", "202-200"])
    assertFieldError(() => expectedCodesRegex("c", bad), "c");
});

test("haproxy: fails on incompatible protocols and bad options, naming the field", () => {
  const pool = httpListener.defaultPool!;
  const l0 = "listeners[0]";
  assertFieldError(
    () =>
      toHaproxyView({ ...base, listeners: [{ ...httpListener, defaultPool: { ...pool, protocol: "TCP" } }] }),
    `${l0}.defaultPool.protocol`,
    /listener protocol HTTP cannot use pool protocol TCP/,
  );
  assertFieldError(
    () => toHaproxyView({ ...base, listeners: [{ ...httpListener, protocol: "TERMINATED_HTTPS" }] }),
    `${l0}.certificatePath`,
  );
  assertFieldError(
    () =>
      toHaproxyView({
        ...base,
        listeners: [
          {
            ...httpListener,
            protocol: "TCP",
            defaultPool: { ...pool, protocol: "TCP", sessionPersistence: null, healthMonitor: null },
          },
        ],
      }),
    `${l0}.insertHeaders`,
  );
  assertFieldError(
    () => toHaproxyView({ ...base, listeners: [httpListener, { ...httpListener, name: "again" }] }),
    "listeners[1].protocolPort",
  );
  // Octavia accepts a monitor timeout longer than its delay; so does kvmlab.
  assert.match(
    renderHaproxyCfg(
      toHaproxyView({
        ...base,
        listeners: [
          {
            ...httpListener,
            defaultPool: { ...pool, healthMonitor: { ...pool.healthMonitor!, timeout: 9 } },
          },
        ],
      }),
    ),
    /timeout check 9s/,
  );
  // PING is refused, and the refusal says why.
  assertFieldError(
    () =>
      toHaproxyView({
        ...base,
        listeners: [
          {
            ...httpListener,
            defaultPool: { ...pool, healthMonitor: { type: "PING", delay: 5, timeout: 3, maxRetries: 2 } },
          },
        ],
      }),
    `${l0}.defaultPool.healthMonitor.type`,
    /external-check/,
  );
  assertFieldError(
    () =>
      toHaproxyView({
        ...base,
        listeners: [{ ...httpListener, defaultPool: { ...pool, lbAlgorithm: "RANDOM" as "ROUND_ROBIN" } }],
      }),
    `${l0}.defaultPool.lbAlgorithm`,
  );
  assertFieldError(
    () =>
      toHaproxyView({
        ...base,
        listeners: [
          { ...httpListener, defaultPool: { ...pool, sessionPersistence: { type: "APP_COOKIE" } } },
        ],
      }),
    `${l0}.defaultPool.sessionPersistence.cookieName`,
  );
  assertFieldError(
    () =>
      toHaproxyView({
        ...base,
        listeners: [{ ...httpListener, defaultPool: { ...pool, members: [members[0], members[0]] } }],
      }),
    `${l0}.defaultPool.members[1].name`,
  );
  assertFieldError(
    () =>
      toHaproxyView({
        ...base,
        listeners: [{ ...httpListener, defaultPool: { ...pool, members: [{ ...members[0], weight: 257 }] } }],
      }),
    `${l0}.defaultPool.members[0].weight`,
  );
});

test("haproxy: zero timeouts are refused (HAProxy would wait forever); a listener without pool is valid", () => {
  assertFieldError(
    () => toHaproxyView({ ...base, listeners: [{ ...httpListener, timeoutClientData: 0 }] }),
    "listeners[0].timeoutClientData",
  );
  assertFieldError(
    () => toHaproxyView({ ...base, listeners: [{ ...httpListener, timeoutMemberData: 0 }] }),
    "listeners[0].timeoutMemberData",
  );
  const cfg = renderHaproxyCfg(
    toHaproxyView({
      ...base,
      listeners: [
        { name: "empty", protocol: "TCP", protocolPort: 9000 },
        { ...httpListener, defaultPool: { ...httpListener.defaultPool!, adminStateUp: false } },
      ],
    }),
  );
  assertValid(haproxyCheck(cfg), "haproxy.cfg without backends");
  assert.doesNotMatch(cfg, /default_backend|^backend/m);
});

test("haproxy: fails on injection attempts, naming the field", () => {
  const pool = httpListener.defaultPool!;
  const hm = pool.healthMonitor!;
  for (const bad of INJECTIONS) {
    assertFieldError(() => toHaproxyView({ ...base, name: bad }), "name");
    assertFieldError(
      () => toHaproxyView({ ...base, listeners: [{ ...httpListener, name: bad }] }),
      "listeners[0].name",
    );
    assertFieldError(
      () => toHaproxyView({ ...base, listeners: [{ ...httpListener, defaultPool: { ...pool, name: bad } }] }),
      "listeners[0].defaultPool.name",
    );
    assertFieldError(
      () =>
        toHaproxyView({
          ...base,
          listeners: [{ ...httpListener, defaultPool: { ...pool, members: [{ ...members[0], name: bad }] } }],
        }),
      "listeners[0].defaultPool.members[0].name",
    );
    assertFieldError(
      () =>
        toHaproxyView({
          ...base,
          listeners: [
            { ...httpListener, defaultPool: { ...pool, members: [{ ...members[0], address: bad }] } },
          ],
        }),
      "listeners[0].defaultPool.members[0].address",
    );
  }
  for (const bad of ["/a b", "/a\nb", "/a'b", "/a;b", "/a$b", "/a`b", "/a#b", "a", "/a\\b"]) {
    assertFieldError(
      () =>
        toHaproxyView({
          ...base,
          listeners: [{ ...httpListener, defaultPool: { ...pool, healthMonitor: { ...hm, urlPath: bad } } }],
        }),
      "listeners[0].defaultPool.healthMonitor.urlPath",
    );
  }
  assertFieldError(
    () =>
      toHaproxyView({
        ...base,
        listeners: [
          { ...httpListener, defaultPool: { ...pool, healthMonitor: { ...hm, domainName: "a b" } } },
        ],
      }),
    "listeners[0].defaultPool.healthMonitor.domainName",
  );
  assertFieldError(
    () =>
      toHaproxyView({
        ...base,
        listeners: [
          {
            ...httpListener,
            defaultPool: { ...pool, sessionPersistence: { type: "APP_COOKIE", cookieName: "a)\nglobal" } },
          },
        ],
      }),
    "listeners[0].defaultPool.sessionPersistence.cookieName",
  );
  assertFieldError(() => toHaproxyView({ ...base, statsSocket: "/run/a sock" }), "statsSocket");
  assertFieldError(() => toHaproxyView({ ...base, logTarget: "/dev/log local0\nglobal" }), "logTarget");
});

/** Octavia features the lab could not express before: L7, SNI, client certs, monitor address. */
function l7Listener(dir: string): ListenerSpec {
  return {
    name: "https",
    protocol: "TERMINATED_HTTPS",
    protocolPort: 443,
    certificatePath: `${dir}/default.pem`,
    sniCertificatePaths: [`${dir}/api.pem`],
    clientAuthentication: "OPTIONAL",
    clientCaPath: `${dir}/default.pem`,
    defaultPool: {
      name: "web",
      protocol: "HTTP",
      lbAlgorithm: "ROUND_ROBIN",
      healthMonitor: { type: "HTTP", delay: 2, timeout: 5, maxRetries: 1, urlPath: "/health" },
      members: [
        {
          name: "web-0",
          address: "10.10.1.5",
          protocolPort: 80,
          monitorAddress: "10.10.9.5",
          monitorPort: 8081,
        },
      ],
    },
    l7Policies: [
      {
        name: "to-api",
        action: "REDIRECT_TO_POOL",
        position: 2,
        rules: [
          { type: "PATH", compareType: "STARTS_WITH", value: "/api" },
          { type: "HEADER", compareType: "EQUAL_TO", key: "X-Debug", value: "1", invert: true },
        ],
        redirectPool: {
          name: "api",
          protocol: "HTTP",
          lbAlgorithm: "LEAST_CONNECTIONS",
          members: [{ name: "api-0", address: "10.10.1.9", protocolPort: 8080 }],
        },
      },
      {
        name: "block-admin",
        action: "REJECT",
        position: 1,
        rules: [{ type: "PATH", compareType: "REGEX", value: "^/admin(/.*)?$" }],
      },
      {
        name: "old-host",
        action: "REDIRECT_TO_URL",
        position: 3,
        redirectUrl: "https://www.example.org/",
        redirectHttpCode: 301,
        rules: [{ type: "HOST_NAME", compareType: "ENDS_WITH", value: ".example.com" }],
      },
      {
        name: "beta",
        action: "REDIRECT_PREFIX",
        position: 4,
        redirectPrefix: "https://beta.example.org",
        rules: [
          { type: "COOKIE", compareType: "CONTAINS", key: "channel", value: "beta" },
          { type: "FILE_TYPE", compareType: "EQUAL_TO", value: ".png" },
        ],
      },
    ],
  };
}

test("haproxy: L7 policies and rules, SNI certificates, client-certificate auth and member monitor address pass haproxy -c", () => {
  const { dir, cleanup } = tempDir();
  try {
    const spec = (d: string): HaproxySpec => ({ ...base, listeners: [l7Listener(d)] });
    const golden = renderHaproxyCfg(toHaproxyView(spec("/var/lib/kvmlab/lb/web-lb")));
    expectGolden("haproxy/l7-sni-client-auth.cfg", golden);
    const lines = golden.split("\n").map((l) => l.trim());
    for (const want of [
      "acl block-admin-0 path -m reg ^/admin(/.*)?$",
      "http-request deny if block-admin-0",
      "acl to-api-0 path -m beg /api",
      "acl to-api-1 req.hdr(X-Debug) -m str 1",
      "use_backend api:https if to-api-0 !to-api-1",
      "acl old-host-0 req.hdr(host) -i -m end .example.com",
      "http-request redirect location https://www.example.org/ code 301 if old-host-0",
      "acl beta-0 req.cook(channel) -m sub beta",
      "acl beta-1 path_end .png",
      "http-request redirect prefix https://beta.example.org code 302 if beta-0 beta-1",
      "default_backend web:https",
      "backend api:https",
      "balance leastconn",
      "server web-0 10.10.1.5:80 weight 1 check inter 2s fall 3 rise 1 addr 10.10.9.5 port 8081",
      "timeout check 5s",
    ])
      assert.ok(lines.includes(want), `missing line: ${want}`);
    // Policies in position order, before the default backend.
    assert.ok(golden.indexOf("http-request deny") < golden.indexOf("use_backend api:https"));
    assert.ok(golden.indexOf("prefix https://beta") < golden.indexOf("default_backend"));
    assert.match(
      golden,
      /bind 203\.0\.113\.10:443 ssl crt \/var\/lib\/kvmlab\/lb\/web-lb\/default\.pem crt \/var\/lib\/kvmlab\/lb\/web-lb\/api\.pem ca-file \/var\/lib\/kvmlab\/lb\/web-lb\/default\.pem verify optional ciphers /,
    );
    // With real certificates haproxy accepts it.
    const pem = selfSignedPem(dir);
    spawnSync("cp", [pem, `${dir}/default.pem`]);
    spawnSync("cp", [pem, `${dir}/api.pem`]);
    assertValid(
      haproxyCheck(renderHaproxyCfg(toHaproxyView(spec(dir)))),
      "haproxy.cfg (L7, SNI, client auth)",
    );
    // MANDATORY with a revocation list.
    const mandatory = renderHaproxyCfg(
      toHaproxyView({
        ...base,
        listeners: [{ ...l7Listener("/x"), clientAuthentication: "MANDATORY", clientCrlPath: "/x/crl.pem" }],
      }),
    );
    assert.match(mandatory, /ca-file \/x\/default\.pem verify required crl-file \/x\/crl\.pem ciphers/);
  } finally {
    cleanup();
  }
});

test("haproxy: HTTP_COOKIE on an HTTPS pool is accepted as Octavia accepts it (inert in TCP mode)", () => {
  const cfg = renderHaproxyCfg(
    toHaproxyView({
      ...base,
      listeners: [
        {
          name: "tls",
          protocol: "HTTPS",
          protocolPort: 443,
          defaultPool: {
            name: "tls-pass",
            protocol: "HTTPS",
            lbAlgorithm: "ROUND_ROBIN",
            sessionPersistence: { type: "HTTP_COOKIE" },
            members: [{ name: "web-0", address: "10.10.1.5", protocolPort: 443 }],
          },
        },
      ],
    }),
  );
  assertValid(haproxyCheck(cfg), "haproxy.cfg");
  assert.doesNotMatch(cfg, /cookie/);
});

test("haproxy: L7 and TLS options are refused where they cannot apply, naming the field", () => {
  const l = l7Listener("/x");
  const l0 = "listeners[0]";
  const pol = l.l7Policies![0];
  const view = (over: Partial<ListenerSpec>) => () =>
    toHaproxyView({ ...base, listeners: [{ ...l, ...over }] });
  assertFieldError(
    () =>
      toHaproxyView({
        ...base,
        listeners: [
          { ...httpListener, protocol: "TCP", insertHeaders: {}, defaultPool: null, l7Policies: [pol] },
        ],
      }),
    `${l0}.l7Policies`,
  );
  assertFieldError(view({ l7Policies: [{ ...pol, rules: [] }] }), `${l0}.l7Policies[0].rules`);
  assertFieldError(
    view({ l7Policies: [{ ...pol, rules: [{ type: "PATH", compareType: "EQUAL_TO", value: "/a b" }] }] }),
    `${l0}.l7Policies[0].rules[0].value`,
  );
  assertFieldError(
    view({ l7Policies: [{ ...pol, rules: [{ type: "HEADER", compareType: "EQUAL_TO", value: "1" }] }] }),
    `${l0}.l7Policies[0].rules[0].key`,
  );
  assertFieldError(
    view({
      l7Policies: [{ ...pol, action: "REDIRECT_TO_URL", redirectPool: null, redirectUrl: "javascript:x" }],
    }),
    `${l0}.l7Policies[0].redirectUrl`,
  );
  assertFieldError(
    view({ l7Policies: [{ ...pol, redirectPool: null }] }),
    `${l0}.l7Policies[0].redirectPool`,
  );
  assertFieldError(view({ clientCaPath: null }), `${l0}.clientCaPath`);
  assertFieldError(
    () => toHaproxyView({ ...base, listeners: [{ ...httpListener, sniCertificatePaths: ["/x/a.pem"] }] }),
    `${l0}.sniCertificatePaths`,
  );
  // What could break a haproxy line (blanks, quotes, comments, escapes, empty); ';' and '$(…)'
  // mean nothing unquoted to haproxy, and a REGEX value needs '$' and parentheses.
  for (const bad of INJECTIONS.filter((v) => /[\s'"#\\<>`]|^$/.test(v)))
    assertFieldError(
      view({ l7Policies: [{ ...pol, rules: [{ type: "PATH", compareType: "EQUAL_TO", value: bad }] }] }),
      `${l0}.l7Policies[0].rules[0].value`,
    );
});
