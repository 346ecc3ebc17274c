import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as path from "node:path";
import { parse } from "yaml";
import { loadBalancerPaths } from "../../../core/paths";
import { renderLab } from "../../../lab/artifacts";
import { loadLab, parseLab } from "../../../lab/parse";
import {
  assertValid,
  dnsmasqTest,
  expectGolden,
  haproxyCheck,
  keepalivedCheck,
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
    ["db-subnet", "mgmt-subnet", "was-subnet", "web-subnet"].flatMap((s) => [
      `subnets/${s}/dnsmasq.conf`,
      `subnets/${s}/hosts`,
    ]),
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
  const web0mac = a.servers.get("web-0")!.macs[0];
  const hosts = a.files.get("subnets/web-subnet/hosts")!;
  assert.ok(hosts.split("\n").includes(`${web0mac},10.10.1.12`), hosts);
  const xml = a.files.get("servers/web-0.xml")!;
  assert.ok(xml.includes(`<mac address='${web0mac}'/>`));
  assert.ok(xml.includes(`<target dev='${a.servers.get("web-0")!.taps[0]}'/>`));
  assert.match(xml, /<domain type='kvm'>/, "kvm unless asked otherwise");
  assert.match(xml, /<name>web-0<\/name>/);
  const nc = parse(a.files.get("servers/web-0/network-config")!);
  assert.equal(nc.ethernets.eth0.dhcp4, true, "addresses come by DHCP, as apply does");
  assert.equal(nc.ethernets.eth0.match.macaddress, web0mac);
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

const KERNEL_LAB = `
name: tiny
hosts:
  - name: hv1
    address: 10.255.0.11
    privateKeyPath: ~/.ssh/kvmlab
    hostKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJC9ivjyiIwVQaIynSL3v4u50/EB1w8amEowk2dv/zt
images:
  - name: busybox
    format: kernel
    kernel: { source: /var/cache/kvmlab/vmlinux, checksum: "sha256:${"a".repeat(64)}" }
    ramdisk: { source: /var/cache/kvmlab/initramfs.cpio.gz, checksum: "sha256:${"b".repeat(64)}" }
    cmdline: console=ttyS0 lab.name=vm
flavors:
  - { name: m1.nano, vcpus: 1, ramMiB: 128, diskGiB: 0 }
networks:
  - name: lan
    kind: provider
    physicalInterface: eth1
    subnets:
      - { name: lan-subnet, cidr: 192.168.50.0/24, gateway: 192.168.50.1, pool: { start: 192.168.50.100, end: 192.168.50.110 } }
servers:
  - { name: vm-a, image: busybox, flavor: m1.nano, networks: [{ subnet: lan-subnet }] }
  - { name: vm-b, image: busybox, flavor: m1.nano, networks: [{ subnet: lan-subnet, fixedIp: 192.168.50.101 }] }
`;

test("a kernel+ramdisk image renders direct kernel boot on a Linux bridge, valid for libvirt", () => {
  const { lab, issues } = parseLab(KERNEL_LAB);
  assert.deepEqual(issues, []);
  const { files, plan } = renderLab(lab!, { domainType: "qemu" });
  const xml = files.get("servers/vm-a.xml")!;
  assertValid(virtXmlValidate(xml), "kernel-boot domain");
  assert.match(xml, /<kernel>\/var\/lib\/kvmlab\/images\/busybox\/kernel<\/kernel>/);
  assert.match(xml, /<initrd>\/var\/lib\/kvmlab\/images\/busybox\/ramdisk<\/initrd>/);
  assert.match(xml, /<cmdline>console=ttyS0 lab\.name=vm<\/cmdline>/);
  assert.doesNotMatch(xml, /device='disk'|virtualport/);
  // DHCP takes the pool's first address .100, .101 is fixed for vm-b, so vm-a gets .102.
  assert.equal(plan.dhcpPorts["lan-subnet"], "192.168.50.100");
  assert.equal(plan.servers.find((s) => s.name === "vm-a")!.ports[0].ip, "192.168.50.102");
  assert.equal(plan.servers.find((s) => s.name === "vm-a")!.host, null, "placement decided at apply time");
  assertValid(dnsmasqTest(files.get("subnets/lan-subnet/dnsmasq.conf")!), "dnsmasq.conf");
  assert.deepEqual(lab!.hosts[0].privateKeyPath, "~/.ssh/kvmlab");
});

const HA_LAB = (lb: string, hosts = 2) => `
name: ha
hosts:
${[1, 2]
  .slice(0, hosts)
  .map(
    (n) => `  - name: hv${n}
    address: 10.255.0.1${n}
    privateKeyPath: ~/.ssh/kvmlab
    hostKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJC9ivjyiIwVQaIynSL3v4u50/EB1w8amEowk2dv/zt`,
  )
  .join("\n")}
networks:
  - name: lan
    kind: selfservice
    subnets:
      - { name: lan-subnet, cidr: 10.70.0.0/24, pool: { start: 10.70.0.100, end: 10.70.0.120 } }
loadBalancers:
  - name: web-lb
    vipSubnet: lan-subnet
    ${lb}
    listeners:
      - name: http
        protocol: HTTP
        protocolPort: 80
        pool: { name: web, protocol: HTTP, lbAlgorithm: ROUND_ROBIN, members: [{ name: m1, address: 10.70.0.5, protocolPort: 80 }] }
`;

test("an ACTIVE_STANDBY load balancer plans two VRRP addresses from the pool and renders both keepalived confs", () => {
  const { lab, issues } = parseLab(HA_LAB("topology: ACTIVE_STANDBY\n    standbyHost: hv2"));
  assert.deepEqual(issues, []);
  const { files, plan } = renderLab(lab!);
  const vip = plan.vips["web-lb"];
  assert.equal(vip.ip, "10.70.0.101", "after the DHCP port .100");
  assert.deepEqual(vip.vrrpAddresses, ["10.70.0.102", "10.70.0.103"]);
  const confs = [0, 1].map((a) => files.get(`loadbalancers/web-lb/keepalived-${a}.conf`)!);
  assert.ok(confs[0] && confs[1], [...files.keys()].join(", "));
  assert.match(confs[0], /load balancer web-lb \(MASTER\)[\s\S]*priority 100/);
  assert.match(confs[1], /load balancer web-lb \(BACKUP\)[\s\S]*priority 90/);
  assert.match(confs[0], /unicast_src_ip 10\.70\.0\.102[\s\S]*10\.70\.0\.103/);
  assert.match(confs[0], /10\.70\.0\.101/);
  const lp = loadBalancerPaths("web-lb");
  for (const c of confs)
    assertValid(keepalivedCheck(c, lp.nsDevice, lp.checkScript, lp.notifyScript), "keepalived.conf");
  const single = renderLab(parseLab(HA_LAB("host: hv1")).lab!);
  assert.deepEqual(single.plan.vips["web-lb"].vrrpAddresses, []);
  assert.ok(![...single.files.keys()].some((k) => k.includes("keepalived")));
  for (const [lb, hosts, field] of [
    ["topology: ACTIVE_STANDBY\n    host: hv1\n    standbyHost: hv1", 2, "standbyHost"],
    ["standbyHost: hv2", 2, "standbyHost"],
    ["topology: ACTIVE_STANDBY\n    standbyHost: hv9", 2, "standbyHost"],
    ["topology: ACTIVE_STANDBY", 1, "topology"],
    ["topology: ACTIVE_PASSIVE", 2, "topology"],
  ] as const) {
    const r = parseLab(HA_LAB(lb, hosts));
    assert.ok(
      r.issues.some((i) => i.path === `loadBalancers[0].${field}`),
      `${lb}: ${JSON.stringify(r.issues)}`,
    );
  }
});
