import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as path from "node:path";
import { parse } from "yaml";
import { renderLab } from "../../../stacks/artifacts";
import { loadLab } from "../../../stacks/lab";
import {
  assertValid,
  dnsmasqTest,
  expectGolden,
  haproxyCheck,
  repoRoot,
  virtXmlValidate,
} from "../templates/support";

const lab = () => loadLab(path.join(repoRoot(), "stacks", "three-tier.yaml"));

test("three-tier renders one file per object, and every file passes its real validator", () => {
  const { files } = renderLab(lab(), { domainType: "qemu" });
  const names = [...files.keys()];
  for (const server of ["bastion", "db-0", "web-0", "web-1", "was-0", "was-1"]) {
    for (const f of [
      `servers/${server}.xml`,
      `servers/${server}/meta-data`,
      `servers/${server}/user-data`,
      `servers/${server}/network-config`,
    ]) {
      assert.ok(files.has(f), `missing ${f}`);
    }
  }
  assert.ok(files.has("loadbalancers/web-lb/haproxy.cfg") && files.has("loadbalancers/was-lb/haproxy.cfg"));
  assert.deepEqual(
    names.filter((n) => n.startsWith("subnets/")),
    [
      "subnets/db-subnet/dnsmasq.conf",
      "subnets/mgmt-subnet/dnsmasq.conf",
      "subnets/was-subnet/dnsmasq.conf",
      "subnets/web-subnet/dnsmasq.conf",
    ],
    "no DHCP on the external subnet",
  );
  assert.deepEqual(names, [...names].sort(), "sorted");
  for (const [name, text] of files) {
    if (name.endsWith(".xml")) assertValid(virtXmlValidate(text), name);
    if (name.endsWith("haproxy.cfg")) assertValid(haproxyCheck(text), name);
    if (name.endsWith("dnsmasq.conf")) assertValid(dnsmasqTest(text), name);
    if (/\/(meta-data|user-data|network-config)$/.test(name)) assert.doesNotThrow(() => parse(text), name);
  }
  expectGolden("three-tier/loadbalancers/web-lb/haproxy.cfg", files.get("loadbalancers/web-lb/haproxy.cfg")!);
  expectGolden("three-tier/servers/web-0.xml", files.get("servers/web-0.xml")!);
  expectGolden("three-tier/plan.json", files.get("plan.json")!);
});

test("three-tier: allocation is deterministic and wired through every artifact", () => {
  const a = renderLab(lab());
  const b = renderLab(lab());
  assert.deepEqual([...a.files], [...b.files], "byte-identical");
  const plan = a.plan;
  const web0 = plan.servers.find((s) => s.name === "web-0")!;
  const web1 = plan.servers.find((s) => s.name === "web-1")!;
  // web-subnet pool starts at .10: DHCP port .10, VIP .11, then web-0 .12, web-1 .13.
  assert.equal(plan.dhcpPorts["web-subnet"], "10.10.1.10");
  assert.equal(plan.vips["web-lb"].ip, "10.10.1.11");
  assert.equal(web0.ports[0].ip, "10.10.1.12");
  assert.equal(web1.ports[0].ip, "10.10.1.13");
  assert.equal(plan.vips["was-lb"].ip, "10.10.2.5", "fixed VIP kept");
  assert.equal(plan.routerGateways.edge, "203.0.113.100");
  assert.equal(plan.vips["web-lb"].floatingIp, "203.0.113.101");
  assert.equal(plan.servers.find((s) => s.name === "bastion")!.floatingIp, "203.0.113.102");
  const cfg = a.files.get("loadbalancers/web-lb/haproxy.cfg")!;
  assert.match(cfg, /bind 10\.10\.1\.11:80/);
  assert.match(cfg, /server web-0 10\.10\.1\.12:80 weight 1 check/);
  assert.match(cfg, /server web-1 10\.10\.1\.13:80 weight 1 check/);
  const dhcp = a.files.get("subnets/web-subnet/dnsmasq.conf")!;
  assert.ok(dhcp.includes(`dhcp-host=${web0.ports[0].mac},10.10.1.12,web-0`));
  const xml = a.files.get("servers/web-0.xml")!;
  assert.ok(xml.includes(`<mac address='${web0.ports[0].mac}'/>`));
  assert.ok(xml.includes(`<target dev='${web0.ports[0].tap}'/>`));
  assert.match(xml, /<domain type='kvm'>/, "kvm unless asked otherwise");
  assert.match(xml, /<name>three-tier-web-0<\/name>/);
  const nc = parse(a.files.get("servers/web-0/network-config")!);
  assert.deepEqual(nc.ethernets.eth0.addresses, ["10.10.1.12/24"]);
  assert.equal(nc.ethernets.eth0.match.macaddress, web0.ports[0].mac);
  const ud = parse(a.files.get("servers/db-0/user-data")!);
  assert.equal(ud.users[0].name, "ubuntu");
  assert.match(ud.users[0].ssh_authorized_keys[0], /ops@three-tier$/);
  const notes = JSON.parse(a.files.get("plan.json")!).notes.join(" ");
  assert.match(notes, /allocated deterministically/);
  assert.equal(
    JSON.parse(a.files.get("plan.json")!).servers.find((s: { name: string }) => s.name === "web-0").host,
    "decided at apply time",
  );
});
