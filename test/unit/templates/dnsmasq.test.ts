import { test } from "node:test";
import * as assert from "node:assert/strict";
import { DnsmasqSpec, renderDnsmasqConf, toDnsmasqView } from "../../../templates";
import { assertFieldError, assertValid, dnsmasqTest, expectGolden, INJECTIONS } from "./support";

const base: DnsmasqSpec = {
  network: "web-net",
  subnet: "web-subnet",
  interface: "ns-1a2b3c4d5e6",
  cidr: "10.10.1.0/24",
  rangeStart: "10.10.1.10",
  rangeEnd: "10.10.1.200",
  gateway: "10.10.1.1",
  dnsServers: ["10.10.1.1", "192.0.2.53"],
  leaseTimeSec: 3600,
  mtu: 1450,
  hosts: [
    { mac: "fa:16:3e:00:00:0a", ip: "10.10.1.5", hostname: "web-0" },
    { mac: "fa:16:3e:00:00:0b", ip: "10.10.1.6" },
  ],
  leaseFile: "/var/lib/kvmlab/dhcp/web-net/leases",
  pidFile: "/run/kvmlab/dhcp/web-net.pid",
};

test("dnsmasq: one subnet with gateway, DNS, MTU and static hosts", () => {
  const conf = renderDnsmasqConf(toDnsmasqView(base));
  expectGolden("dnsmasq/subnet-static-hosts.conf", conf);
  assertValid(dnsmasqTest(conf), "dnsmasq.conf");
  const lines = conf.split("\n");
  assert.ok(lines.includes("port=0"), "DNS off by default");
  assert.ok(lines.includes("interface=ns-1a2b3c4d5e6"));
  assert.ok(lines.includes("bind-interfaces") && lines.includes("except-interface=lo"));
  assert.ok(lines.includes("dhcp-range=set:web-subnet,10.10.1.10,10.10.1.200,255.255.255.0,3600"));
  assert.ok(lines.includes("dhcp-option=tag:web-subnet,option:router,10.10.1.1"));
  assert.ok(lines.includes("dhcp-option=tag:web-subnet,option:dns-server,10.10.1.1,192.0.2.53"));
  assert.ok(lines.includes("dhcp-host=fa:16:3e:00:00:0a,10.10.1.5,web-0"));
  assert.ok(lines.includes("dhcp-host=fa:16:3e:00:00:0b,10.10.1.6"));
  assert.match(conf, /namespace qdhcp-web-net/);
  assert.equal(lines.filter((l) => l.startsWith("interface=")).length, 1, "exactly one interface served");
});

test("dnsmasq: no gateway sends an empty router option; DNS port on request", () => {
  const conf = renderDnsmasqConf(
    toDnsmasqView({ ...base, gateway: null, dnsServers: [], hosts: [], mtu: null, dnsPort: 53 }),
  );
  expectGolden("dnsmasq/subnet-isolated.conf", conf);
  assertValid(dnsmasqTest(conf), "dnsmasq.conf");
  assert.match(conf, /^dhcp-option=tag:web-subnet,option:router$/m);
  assert.match(conf, /^port=53$/m);
  assert.doesNotMatch(conf, /dns-server|dhcp-host|option:mtu/);
});

test("dnsmasq: rendering is deterministic", () => {
  assert.equal(renderDnsmasqConf(toDnsmasqView(base)), renderDnsmasqConf(toDnsmasqView(base)));
});

test("dnsmasq: fails when addresses lie outside the subnet or the range runs backwards", () => {
  assertFieldError(
    () => toDnsmasqView({ ...base, rangeEnd: "10.10.2.5" }),
    "rangeEnd",
    /outside 10\.10\.1\.0\/24/,
  );
  assertFieldError(() => toDnsmasqView({ ...base, gateway: "10.10.9.1" }), "gateway");
  assertFieldError(() => toDnsmasqView({ ...base, rangeStart: "10.10.1.201" }), "rangeEnd", /comes before/);
  assertFieldError(
    () => toDnsmasqView({ ...base, hosts: [{ mac: "fa:16:3e:00:00:0a", ip: "10.9.0.1" }] }),
    "hosts[0].ip",
  );
  assertFieldError(
    () => toDnsmasqView({ ...base, hosts: [base.hosts![0], { ...base.hosts![0], ip: "10.10.1.7" }] }),
    "hosts[1].mac",
    /duplicate/,
  );
});

test("dnsmasq: fails on injection attempts, naming the field", () => {
  for (const bad of INJECTIONS) {
    assertFieldError(() => toDnsmasqView({ ...base, network: bad }), "network");
    assertFieldError(() => toDnsmasqView({ ...base, interface: bad }), "interface");
    assertFieldError(
      () => toDnsmasqView({ ...base, hosts: [{ mac: "fa:16:3e:00:00:0a", ip: "10.10.1.5", hostname: bad }] }),
      "hosts[0].hostname",
    );
  }
  assertFieldError(
    () => toDnsmasqView({ ...base, interface: "ns-1a2b3c4d5e6f7" }),
    "interface",
    /at most 15/,
  );
  assertFieldError(() => toDnsmasqView({ ...base, leaseFile: "/tmp/x\nport=53" }), "leaseFile");
});

test("dnsmasq: a hand-made view is refused", () => {
  const view = { ...toDnsmasqView(base) };
  assert.throws(() => renderDnsmasqConf(view), /toDnsmasqView/);
});
