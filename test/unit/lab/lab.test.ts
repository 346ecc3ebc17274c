import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { parse } from "yaml";
import { formatIssues, LabError, loadLab, parseLab } from "../../../lab/parse";
import { repoRoot } from "../templates/support";

// Edits reach into arbitrary YAML structure; a loose type keeps the cases short.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Data = Record<string, any>;

const threeTier = () => path.join(repoRoot(), "stacks", "three-tier.yaml");
const threeTierText = () => fs.readFileSync(threeTier(), "utf8");

/** three-tier.yaml with one edit applied to its parsed data, serialized back. */
function edited(edit: (d: Data) => void): string {
  const data = parse(threeTierText());
  edit(data);
  return JSON.stringify(data, null, 2); // JSON is YAML; lines stay meaningful
}

test("three-tier.yaml validates into the lab the issue describes", () => {
  const lab = loadLab(threeTier());
  assert.equal(lab.name, "three-tier");
  assert.equal(lab.hosts.length, 2);
  assert.deepEqual(lab.hosts[0].privateKey, { secret: "kvmlab:hostKey" });
  const web = lab.autoscaleGroups.find((g) => g.name === "web")!;
  assert.ok(web.min >= 2 && web.max <= 4);
  assert.deepEqual(web.pool, { loadBalancer: "web-lb", listener: "http", protocolPort: 80, weight: 1 });
  const webLb = lab.loadBalancers.find((l) => l.name === "web-lb")!;
  assert.equal(webLb.floatingIp, true);
  const wasLb = lab.loadBalancers.find((l) => l.name === "was-lb")!;
  assert.equal(wasLb.floatingIp, false, "the WAS load balancer is internal");
  assert.equal(lab.servers.find((s) => s.name === "bastion")!.floatingIp, true);
  assert.equal(lab.servers.filter((s) => s.name.startsWith("db")).length, 1);
  // Security groups: web←any:80/443, WAS←web:8080, DB←WAS:3306, SSH←bastion only.
  const rules = (g: string) => lab.securityGroups.find((x) => x.name === g)!.rules;
  assert.deepEqual(
    rules("web")
      .filter((r) => r.remoteCidr === "0.0.0.0/0")
      .map((r) => r.ports?.min),
    [80, 443],
  );
  assert.ok(rules("was").some((r) => r.ports?.min === 8080 && r.remoteGroup === "web"));
  assert.ok(rules("db").some((r) => r.ports?.min === 3306 && r.remoteGroup === "was"));
  for (const g of ["web", "was", "db"]) {
    const ssh = rules(g).filter((r) => r.ports?.min === 22);
    assert.deepEqual(
      ssh.map((r) => r.remoteGroup),
      ["bastion"],
      `SSH into ${g} only from the bastion`,
    );
  }
  // … and nothing else: every inbound rule of the tiers, exactly (a wider range or an extra
  // source would pass the checks above).
  const inbound = (g: string) =>
    rules(g)
      .filter((r) => r.direction === "ingress")
      .map((r) => `${r.protocol} ${r.ports?.min}-${r.ports?.max} <- ${r.remoteCidr ?? r.remoteGroup}`)
      .sort();
  assert.deepEqual(inbound("web"), [
    "tcp 22-22 <- bastion",
    "tcp 443-443 <- 0.0.0.0/0",
    "tcp 80-80 <- 0.0.0.0/0",
  ]);
  assert.deepEqual(inbound("was"), [
    "tcp 22-22 <- bastion",
    "tcp 8080-8080 <- was-lb",
    "tcp 8080-8080 <- web",
  ]);
  assert.deepEqual(inbound("db"), ["tcp 22-22 <- bastion", "tcp 3306-3306 <- was"]);
  assert.equal(lab.apps[0].kind, "threeTier");
  assert.equal(lab.servers[0].project, "shop", "defaultProject applies");
});

test("three-tier.yaml names its schema for editors", () => {
  assert.match(threeTierText(), /^# yaml-language-server: \$schema=\.\/lab\.schema\.json$/m);
});

const BROKEN = `name: broken lab
hosts:
  - name: hv1
    address: 10.255.0.11
    hostKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJC9ivjyiIwVQaIynSL3v4u50/EB1w8amEowk2dv/zt
images:
  - name: img
    format: qcow2
    source: /images/img.qcow2
    checksum: sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881
    minRamMiB: 2048
flavors:
  - { name: tiny, vcpus: 1, ramMiB: 512, diskGiB: 1 }
  - { name: tiny, vcpus: 1, ramMiB: 512, diskGiB: 1 }
networks:
  - name: net
    kind: selfservice
    subnets:
      - name: a
        cidr: 10.0.0.0/24
        gateway: 10.0.1.1
        pool: { start: 10.0.0.200, end: 10.0.0.10 }
      - name: b
        cidr: 10.0.0.128/25
        pool: { start: 10.0.0.130, end: 10.0.0.140 }
servers:
  - name: s1
    image: img
    flavor: tiny
    networks: [{ subnet: c }]
    colour: blue
  - name: "bad;name"
    image: imgg
    flavor: tiny
    networks: [{ subnet: a, fixedIp: 10.9.9.9 }]
loadBalancers:
  - name: lb
    vipSubnet: a
    listeners:
      - name: l
        protocol: HTTP
        protocolPort: 80
        pool: { name: p, protocol: TCP, lbAlgorithm: ROUND_ROBIN }
`;

test("a broken lab reports every problem at once, each with path, line and fix", () => {
  const { lab, issues } = parseLab(BROKEN);
  assert.equal(lab, null);
  const got = issues.map((i) => `${i.line} ${i.path}`);
  assert.deepEqual(got, [
    "1 name",
    "3 hosts[0]",
    "14 flavors[1].name",
    "21 networks[0].subnets[0].gateway",
    "22 networks[0].subnets[0].pool.end",
    "24 networks[0].subnets[1].cidr",
    "29 servers[0].flavor",
    "30 servers[0].networks[0].subnet",
    "31 servers[0].colour",
    "32 servers[1].name",
    "33 servers[1].image",
    "35 servers[1].networks[0].fixedIp",
    "43 loadBalancers[0].listeners[0].pool.protocol",
  ]);
  const by = (p: string) => issues.find((i) => i.path === p)!;
  assert.match(by("hosts[0]").message, /missing one of: privateKey, privateKeyPath/);
  assert.equal(by("hosts[0]").fix, "add privateKey or privateKeyPath");
  assert.match(by("flavors[1].name").message, /duplicate flavor name "tiny"/);
  assert.match(by("networks[0].subnets[1].cidr").message, /overlaps 10\.0\.0\.0\/24/);
  assert.match(by("servers[0].flavor").message, /needs at least 2048 MiB/);
  assert.equal(by("servers[0].networks[0].subnet").fix, 'did you mean "a"?');
  assert.match(by("servers[0].colour").fix, /allowed here: name, project, image/);
  assert.equal(by("servers[0].colour").column, 5, "points at the unknown key itself");
  assert.match(by("loadBalancers[0].listeners[0].pool.protocol").message, /cannot use pool protocol TCP/);
  for (const i of issues)
    assert.ok(i.fix.length > 0 && i.line > 0 && i.column > 0, `incomplete issue ${JSON.stringify(i)}`);
});

test("a host with both privateKey and privateKeyPath is told to keep one, not to add one", () => {
  const { lab, issues } = parseLab(
    threeTierText().replace(
      '    privateKey: { secret: "kvmlab:hostKey" }\n',
      '    privateKey: { secret: "kvmlab:hostKey" }\n    privateKeyPath: /root/.ssh/id_ed25519\n',
    ),
  );
  assert.equal(lab, null);
  assert.deepEqual(
    issues.map((i) => [i.path, i.message, i.fix]),
    [
      [
        "hosts[0]",
        "give exactly one of: privateKey, privateKeyPath (found privateKey and privateKeyPath)",
        "keep one of privateKey or privateKeyPath and remove the others",
      ],
    ],
  );
});

test("a host address of four numbers must be a valid IPv4 address; DNS names still pass", () => {
  const text = threeTierText();
  const bad = parseLab(text.replace("address: 10.255.0.11", "address: 10.255.0.300"));
  assert.equal(bad.lab, null);
  assert.deepEqual(
    bad.issues.map((i) => [i.path, i.message]),
    [["hosts[0].address", "10.255.0.300 is not a valid IPv4 address"]],
  );
  assert.ok(bad.issues[0].line > 0 && /DNS name/.test(bad.issues[0].fix));
  const named = parseLab(text.replace("address: 10.255.0.11", "address: hv1.lab.example"));
  assert.deepEqual(named.issues, []);
});

test("loadLab throws a LabError whose message lists every issue", (t) => {
  const dir = fs.mkdtempSync(path.join(require("node:os").tmpdir(), "kvmlab-lab-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, "broken.yaml");
  fs.writeFileSync(file, BROKEN);
  assert.throws(
    () => loadLab(file),
    (err: unknown) => {
      assert.ok(err instanceof LabError);
      assert.equal(err.issues.length, 13);
      assert.match(err.message, /broken\.yaml:43:36 {2}loadBalancers\[0\]\.listeners\[0\]\.pool\.protocol/);
      return true;
    },
  );
});

test("YAML syntax errors and duplicate keys are reported with their line", () => {
  const { issues } = parseLab("name: x\nhosts:\n  - name: a\n    name: b\n");
  assert.equal(issues.length, 1);
  assert.equal(issues[0].line, 4);
  assert.match(issues[0].message, /YAML syntax/);
  const bad = parseLab("name: x\nservers: [\n");
  assert.ok(bad.issues.length >= 1 && bad.lab === null);
});

test("meaning checks: routers, floating IPs, pools, autoscale sizes, apps", () => {
  const cases: [string, (d: Data) => void, RegExp][] = [
    ["routers[0].externalNetwork", (d) => (d.networks[0].external = false), /is not external/],
    [
      "networks[0].external",
      (d) => (d.networks[0].kind = "selfservice"),
      /external network must be a provider network/,
    ],
    [
      "routers[0].interfaces[1]",
      (d) => (d.networks[2].subnets[0].cidr = "10.10.1.0/24"),
      /overlaps 10\.10\.1\.0\/24 of web-subnet, both on this router/,
    ],
    [
      "networks[1].subnets[0].gateway",
      (d) => (d.networks[1].subnets[0].gateway = "10.10.1.20"),
      /inside the allocation pool/,
    ],
    [
      "networks[1].subnets[0].pool",
      (d) => (d.networks[1].subnets[0].pool = { start: "10.10.1.10", end: "10.10.1.13" }),
      /needs up to 6/,
    ],
    ["autoscaleGroups[0].desired", (d) => (d.autoscaleGroups[0].desired = 5), /above max 4/],
    [
      "autoscaleGroups[0].pool.listener",
      (d) => (d.autoscaleGroups[0].pool.listener = "htp"),
      /did you mean "http"/,
    ],
    [
      "servers[0].floatingIp",
      (d) => (d.routers[0].interfaces = ["web-subnet", "was-subnet", "db-subnet"]),
      /not behind a router/,
    ],
    [
      "servers[1].networks[0].fixedIp",
      (d) => (d.servers[1].networks = [{ subnet: "mgmt-subnet", fixedIp: "10.10.9.5" }]),
      /already used by servers\[0\]/,
    ],
    [
      "servers[0].networks[0].fixedIp",
      (d) => (d.servers[0].networks[0].fixedIp = "10.10.9.1"),
      /is the gateway/,
    ],
    [
      "apps[0].bastion.server",
      (d) => (d.servers[0].floatingIp = false),
      /bastion bastion has no floating IP/,
    ],
    [
      "apps[0].web.loadBalancer",
      (d) => (d.apps[0].web.loadBalancer = "was-lb"),
      /registers with web-lb, not was-lb/,
    ],
    ["autoscaleGroups[0].name", (d) => (d.servers[1].name = "web-3"), /duplicate server name "web-3"/],
    [
      "securityGroups[2].rules[2].remoteGroup",
      (d) => (d.securityGroups[2].rules[2].remoteGroup = "bastoin"),
      /unknown security group/,
    ],
    ["servers[1].flavor", (d) => (d.flavors[2].diskGiB = 2), /needs at least 3 GiB/],
    [
      "identity.assignments[1].user",
      (d) => (d.identity.assignments[1].user = "carol"),
      /unknown user "carol"/,
    ],
  ];
  for (const [where, edit, message] of cases) {
    const { issues } = parseLab(edited(edit));
    const hit = issues.find((i) => i.path === where);
    assert.ok(hit, `expected an issue at ${where}, got:\n${formatIssues("lab", issues)}`);
    assert.match(`${hit.message} ${hit.fix}`, message);
  }
});

test("injection attempts in names are rejected by the schema with the field named", () => {
  for (const bad of ["web\nx", "web'", "web<x>", "web]]>", "web;x", "web$x", "web`x`", "web x"]) {
    const { issues } = parseLab(edited((d) => (d.servers[1].name = bad)));
    assert.ok(
      issues.some((i) => i.path === "servers[1].name"),
      `${JSON.stringify(bad)} accepted`,
    );
    const lb = parseLab(edited((d) => (d.loadBalancers[0].listeners[0].pool.name = bad)));
    assert.ok(
      lb.issues.some((i) => i.path === "loadBalancers[0].listeners[0].pool.name"),
      `${JSON.stringify(bad)} accepted as pool name`,
    );
  }
  const longIf = parseLab(edited((d) => (d.networks[0].physicalInterface = "eth0123456789abcd")));
  assert.ok(longIf.issues.some((i) => i.path === "networks[0].physicalInterface"));
  const urlPath = parseLab(
    edited((d) => (d.loadBalancers[0].listeners[0].pool.healthMonitor.urlPath = "/h\n  server x")),
  );
  assert.ok(
    urlPath.issues.some((i) => i.path === "loadBalancers[0].listeners[0].pool.healthMonitor.urlPath"),
  );
});
