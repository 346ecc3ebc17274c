/**
 * The lab definition expresses what Octavia users rely on: L7 policies and rules, member monitor
 * address, SNI certificates and client-certificate auth; a PING monitor is refused with the
 * reason; the rendered haproxy.cfg carries them.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { parse } from "yaml";
import { parseLab } from "../../../lab/parse";
import { renderLab } from "../../../lab/artifacts";
import { repoRoot } from "../templates/support";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Data = Record<string, any>;

function edited(edit: (d: Data) => void): string {
  const data = parse(fs.readFileSync(path.join(repoRoot(), "stacks", "three-tier.yaml"), "utf8")) as Data;
  edit(data);
  return JSON.stringify(data, null, 2);
}

test("lab: L7 policies, monitor address, SNI and client auth validate and reach haproxy.cfg", () => {
  const r = parseLab(
    edited((d) => {
      // A load balancer of its own: an autoscale group's (web-lb) has only the group's slots
      // and no L7 policies (lab/checks/apps.ts).
      d.loadBalancers.push({ ...structuredClone(d.loadBalancers[0]), name: "l7-lb", floatingIp: false });
      const l = d.loadBalancers[2].listeners[0];
      l.pool.members = [
        { name: "static", address: "10.10.1.200", protocolPort: 80, monitorAddress: "10.10.1.201" },
      ];
      l.l7Policies = [
        {
          name: "no-admin",
          action: "REJECT",
          rules: [{ type: "PATH", compareType: "STARTS_WITH", value: "/admin" }],
        },
        {
          name: "api",
          action: "REDIRECT_TO_POOL",
          rules: [{ type: "HEADER", compareType: "EQUAL_TO", key: "X-Api", value: "1" }],
          redirectPool: {
            name: "api-pool",
            protocol: "HTTP",
            members: [{ name: "api0", address: "10.10.1.210", protocolPort: 8080 }],
          },
        },
      ];
    }),
  );
  assert.deepEqual(r.issues, []);
  const lab = r.lab!;
  const l = lab.loadBalancers[2].listeners[0];
  assert.equal(l.l7Policies.length, 2);
  assert.equal(l.pool!.members[0].monitorAddress, "10.10.1.201");
  const cfg = renderLab(lab).files.get(`loadbalancers/${lab.loadBalancers[2].name}/haproxy.cfg`)!;
  assert.match(cfg, /http-request deny if no-admin-0/);
  assert.match(cfg, /use_backend api-pool:http if api-0/);
  assert.match(cfg, /server static 10\.10\.1\.200:80 .* addr 10\.10\.1\.201/);
});

test("lab: an autoscale group's load balancer has only the group's listener, pool members and no L7 policies", () => {
  const r = parseLab(
    edited((d) => {
      const l = d.loadBalancers[0].listeners[0];
      l.pool.members = [{ name: "static", address: "10.10.1.200", protocolPort: 80 }];
      l.l7Policies = [
        {
          name: "no-admin",
          action: "REJECT",
          rules: [{ type: "PATH", compareType: "STARTS_WITH", value: "/a" }],
        },
      ];
      d.loadBalancers[1].listeners.push({ ...structuredClone(d.loadBalancers[1].listeners[0]), name: "b" });
      d.autoscaleGroups[1].pool.weight = 2;
    }),
  );
  const paths = r.issues.map((i) => i.path);
  for (const p of [
    "loadBalancers[0].listeners[0].pool.members",
    "loadBalancers[0].listeners[0].l7Policies",
    "loadBalancers[1].listeners",
    "autoscaleGroups[1].pool.weight",
  ])
    assert.ok(paths.includes(p), `${p} refused: ${JSON.stringify(r.issues)}`);
  assert.match(
    r.issues.find((i) => i.path === "loadBalancers[1].listeners")!.fix,
    /load balancer of their own/,
  );
});

test("lab: a PING monitor is refused with the reason; TLS options on a plain listener name their field", () => {
  const ping = parseLab(edited((d) => (d.loadBalancers[0].listeners[0].pool.healthMonitor.type = "PING")));
  const issue = ping.issues.find((i) => i.path === "loadBalancers[0].listeners[0].pool.healthMonitor.type");
  assert.ok(issue, JSON.stringify(ping.issues));
  assert.match(issue.message, /external-check/);
  const sni = parseLab(edited((d) => (d.loadBalancers[0].listeners[0].sniCertificatePaths = ["/etc/x.pem"])));
  assert.ok(
    sni.issues.some((i) => i.path === "loadBalancers[0].listeners[0].sniCertificatePaths"),
    JSON.stringify(sni.issues),
  );
  const rule = parseLab(
    edited(
      (d) =>
        (d.loadBalancers[0].listeners[0].l7Policies = [
          { name: "x", action: "REJECT", rules: [{ type: "HEADER", compareType: "EQUAL_TO", value: "1" }] },
        ]),
    ),
  );
  assert.ok(
    rule.issues.some((i) => i.path === "loadBalancers[0].listeners[0].l7Policies[0].rules[0].key"),
    JSON.stringify(rule.issues),
  );
});
