/**
 * Network and Subnet providers without hosts: check (validation, defaults, unknowns), the pure
 * diff (update vs replace, drift), the scripts' quoting, IPAM planning, and serialization of
 * both providers. Proves no SSH is needed for check/diff; says nothing about hosts (see
 * test/integration/network.test.ts).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { assertSerializable } from "../../harness/serialization";
import { PIN, testHost } from "./fixtures";
import {
  UNKNOWN,
  checkNetworkInputs,
  checkSubnetInputs,
  defaultVni,
  dhcpPaths,
  diffNetwork,
  diffSubnet,
  hostPoolStats,
  hostsFileText,
  networkApplyStep,
  networkDevices,
  networkProvider,
  parseNetworkState,
  planAllocation,
  planRelease,
  subnetDefaults,
  subnetProvider,
  type HostConnection,
  type IpamRecord,
  type NetworkInputs,
  type NetworkOutputs,
  type SubnetInputs,
  type SubnetOutputs,
} from "../../../provider";

function host(name: string, n: number): HostConnection {
  return testHost(name, n);
}

const HOSTS = [host("hv1", 1), host("hv2", 2)];

function netInputs(over: Partial<NetworkInputs> = {}): NetworkInputs {
  const { inputs, failures } = checkNetworkInputs({
    networkName: "lan",
    kind: "selfservice",
    hosts: HOSTS,
    ...over,
  });
  assert.deepEqual(failures, []);
  return inputs as unknown as NetworkInputs;
}

function realizedFor(inputs: NetworkInputs): NetworkOutputs {
  const realized: NetworkOutputs["realized"] = {};
  for (const h of inputs.hosts) {
    realized[h.name] = {
      bridge: true,
      mtu: inputs.mtu,
      vni: inputs.kind === "selfservice" ? inputs.vni : 0,
      remotes:
        inputs.kind === "selfservice"
          ? inputs.hosts.filter((o) => o.name !== h.name).map((o) => o.tunnelAddress)
          : [],
      uplinkAttached: inputs.kind === "provider",
      datapathType: "linux",
      record: true,
    };
  }
  const d = networkDevices(inputs.networkName);
  return {
    ...inputs,
    shortId: d.shortId,
    bridge: d.bridge,
    vxlanDevice: d.vxlan,
    hostKeys: { hv1: PIN, hv2: PIN },
    realized,
  };
}

test("network check fills defaults: linuxbridge, derived VNI, MTU 1450 (selfservice) or 1500 (provider)", () => {
  const n = netInputs();
  assert.equal(n.driver, "linuxbridge");
  assert.equal(n.vni, defaultVni("lan"));
  assert.ok(n.vni >= 4096 && n.vni <= 16777215);
  assert.equal(n.mtu, 1450);
  assert.equal(n.hosts[0].port, 22);
  const p = netInputs({ kind: "provider" });
  assert.equal(p.mtu, 1500);
  assert.equal(p.vni, 0);
});

test("fails when network inputs are bad, naming each field and its fix", () => {
  const { failures } = checkNetworkInputs({
    networkName: "lan;rm -rf /",
    kind: "vlan",
    driver: "ovn",
    vni: 0,
    mtu: 100,
    hosts: [
      { ...HOSTS[0], uplink: "eth 1", tunnelAddress: "" },
      { ...HOSTS[1], address: "$(reboot)" },
    ],
  });
  const text = failures.map((f) => `${f.property}|${f.reason}`).join("\n");
  for (const want of [
    /^networkName\|networkName: expected a name/m,
    /^kind\|kind: expected "provider" .* or "selfservice"/m,
    /^driver\|driver: expected "linuxbridge" or "openvswitch"/m,
    /^vni\|vni: expected an integer 1-16777215/m,
    /^mtu\|mtu: expected an integer 576-9000/m,
    /^hosts\|hosts\[0\]\.uplink: expected a network device name/m,
    /^hosts\|hosts\[1\]\.address: expected an IPv4 address or a DNS name/m,
  ]) {
    assert.match(text, want);
  }
  const ss = checkNetworkInputs({
    networkName: "lan",
    kind: "selfservice",
    hosts: [{ ...HOSTS[0], tunnelAddress: "" }, HOSTS[1]],
  });
  assert.match(
    ss.failures.map((f) => f.reason).join(),
    /hosts\[0\]\.tunnelAddress: a selfservice network on several hosts needs/,
  );
  const flat = checkNetworkInputs({
    networkName: "ext",
    kind: "provider",
    hosts: [{ ...HOSTS[0], uplink: "" }],
  });
  assert.match(
    flat.failures.map((f) => f.reason).join(),
    /hosts\[0\]\.uplink: a provider \(flat\) network needs/,
  );
});

test("network check accepts unknowns during preview and leaves them unknown", () => {
  const { inputs, failures } = checkNetworkInputs({
    networkName: UNKNOWN,
    kind: "selfservice",
    hosts: UNKNOWN,
    mtu: UNKNOWN,
  });
  assert.deepEqual(failures, []);
  assert.equal(inputs.vni, UNKNOWN);
  assert.equal(inputs.hosts, UNKNOWN);
  const partial = checkNetworkInputs({
    networkName: "lan",
    kind: "selfservice",
    hosts: [{ ...HOSTS[0], privateKey: UNKNOWN }],
  });
  assert.deepEqual(partial.failures, []);
});

test("network diff: no change is no change; identity fields replace; MTU, hosts and drift update", async () => {
  const news = netInputs();
  const olds = realizedFor(news);
  assert.deepEqual(diffNetwork(olds, news).changes, false);
  for (const [field, value] of [
    ["networkName", "lan2"],
    ["kind", "provider"],
    ["driver", "openvswitch"],
    ["vni", 5000],
  ] as const) {
    const d = diffNetwork(olds, { ...news, [field]: value });
    assert.equal(d.changes, true, field);
    assert.deepEqual(d.replaces, [field]);
    assert.equal(d.deleteBeforeReplace, true);
  }
  const mtu = diffNetwork(olds, { ...news, mtu: 1400 });
  assert.deepEqual([mtu.changes, mtu.replaces], [true, []]);
  const more = diffNetwork(olds, { ...news, hosts: [...news.hosts, host("hv3", 3)] });
  assert.deepEqual([more.changes, more.replaces], [true, []]);
  // Refresh found the bridge gone on hv2: an update puts it back.
  const drifted = { ...olds, realized: { ...olds.realized, hv2: { ...olds.realized.hv2, bridge: false } } };
  assert.deepEqual([diffNetwork(drifted, news).changes, diffNetwork(drifted, news).replaces], [true, []]);
  const unknownHosts = diffNetwork(olds, { ...news, hosts: UNKNOWN as unknown as HostConnection[] });
  assert.equal(unknownHosts.changes, true);
  const unknownName = diffNetwork(olds, { ...news, networkName: UNKNOWN });
  assert.deepEqual(unknownName.replaces, ["networkName"]);
  // The provider's diff is the pure one, and opening no connection.
  const before = hostPoolStats().connectionsOpened;
  const viaProvider = await networkProvider.diff!("lan", olds, news);
  assert.equal(viaProvider.changes, false);
  assert.equal(hostPoolStats().connectionsOpened, before);
});

test("the apply script quotes values and uses short device names", () => {
  const n = netInputs({ networkName: "a.b_c-d" });
  const step = networkApplyStep(n, n.hosts[0]);
  const { bridge, vxlan } = networkDevices("a.b_c-d");
  assert.ok(bridge.length <= 15 && vxlan.length <= 15);
  assert.match(step.script, new RegExp(`br=${bridge}; vx=${vxlan}`));
  assert.match(step.script, /name=a\.b_c-d;/);
  assert.match(step.script, /want=" 10\.254\.0\.12 "/);
  assert.match(step.script, /vni=\d+; local=10\.254\.0\.11/);
  const ovs = networkApplyStep(netInputs({ driver: "openvswitch", kind: "provider" }), n.hosts[0]);
  assert.match(ovs.script, /dp=netdev; \[ -d \/sys\/module\/openvswitch \] && dp=system/);
  assert.match(ovs.script, /external_ids:kvmlab-network="\$name"/);
  assert.match(ovs.script, /up=eth1/);
});

test("a provider network refuses an uplink that carries the host's management or tunnel address (the fake ip answers as the host would)", () => {
  const fs = require("node:fs") as typeof import("node:fs");
  const os = require("node:os") as typeof import("node:os");
  const path = require("node:path") as typeof import("node:path");
  const { spawnSync } = require("node:child_process") as typeof import("node:child_process");
  const host = testHost("hv1", 1); // management 10.255.0.11, tunnel 10.254.0.11, uplink eth1
  for (const kind of ["provider"] as const)
    for (const driver of ["linuxbridge", "openvswitch"] as const) {
      const script = networkApplyStep(netInputs({ driver, kind }), host).script;
      // Only the uplink checks: from `up=` up to the first line after them.
      const lines = script.split("\n");
      const from = lines.findIndex((l) => l.startsWith("up="));
      const checks = lines.slice(
        from,
        lines.findIndex((l, i) => i > from && l.startsWith("m=")),
      );
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-uplink-"));
      try {
        const run = (uplinkAddr: string) => {
          fs.writeFileSync(
            path.join(dir, "ip"),
            `#!/bin/sh\ncase "$*" in\n  "link show dev eth1") exit 0 ;;\n  "-o -4 addr show dev eth1") echo "3: eth1    inet ${uplinkAddr}/24 brd 10.0.0.255 scope global eth1" ;;\n  *) exit 1 ;;\nesac\n`,
            { mode: 0o755 },
          );
          return spawnSync("bash", ["-c", checks.join("\n")], {
            encoding: "utf8",
            env: { PATH: `${dir}:/usr/bin:/bin` },
          });
        };
        const mgmt = run("10.255.0.11");
        assert.equal(mgmt.status, 22, `${driver}: ${mgmt.stderr}`);
        assert.match(
          mgmt.stderr,
          /uplink eth1 carries 10\.255\.0\.11, .*Fix: set hosts\[\]\.uplink to a NIC/,
        );
        assert.equal(run("10.254.0.11").status, 22, `${driver}: the tunnel address`);
        const other = run("172.24.4.1");
        assert.equal(other.status, 0, `${driver}: ${other.stderr}`);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
});

test("the read parser turns host output into state", () => {
  assert.deepEqual(
    parseNetworkState(
      "record=yes\nbridge=yes\ndatapath=netdev\nvxattached=yes\nupattached=no\nmtu=1450\nvni=4242\nremotes=10.254.0.13 10.254.0.12 \n",
    ),
    {
      bridge: true,
      mtu: 1450,
      vni: 4242,
      remotes: ["10.254.0.12", "10.254.0.13"],
      uplinkAttached: false,
      datapathType: "netdev",
      record: true,
    },
  );
  assert.equal(parseNetworkState("record=no\nbridge=no\nvxattached=no\n").bridge, false);
});

function subnetRaw(over: Record<string, unknown> = {}): Record<string, unknown> {
  const paths = dhcpPaths("lan", "lan-v4");
  return {
    subnetName: "lan-v4",
    networkName: "lan",
    networkBridge: networkDevices("lan").bridge,
    driver: "linuxbridge",
    hosts: HOSTS,
    cidr: "10.10.0.0/24",
    dnsmasqConf: `interface=${paths.nsDevice}\npid-file=${paths.pidFile}\ndhcp-leasefile=${paths.leaseFile}\n`,
    ...over,
  };
}

test("subnet check fills gateway, pool, DHCP address and host; refuses bad values by field", () => {
  const { inputs, failures } = checkSubnetInputs(subnetRaw());
  assert.deepEqual(failures, []);
  assert.equal(inputs.gateway, "10.10.0.1");
  assert.deepEqual(inputs.allocationPool, { start: "10.10.0.2", end: "10.10.0.254" });
  assert.equal(inputs.dhcpAddress, "10.10.0.2");
  assert.equal(inputs.dhcpHost, "hv1");
  assert.equal(inputs.enableDhcp, true);
  assert.deepEqual(subnetDefaults("10.0.0.0/30"), undefined);
  const bad = checkSubnetInputs(
    subnetRaw({
      cidr: "10.10.0.1/24",
    }),
  );
  assert.match(
    bad.failures.map((f) => f.reason).join(),
    /cidr: expected an IPv4 network like 10\.10\.0\.0\/24/,
  );
  const more = checkSubnetInputs(
    subnetRaw({
      gateway: "10.20.0.1",
      allocationPool: { start: "10.10.0.50", end: "10.10.0.10" },
      dnsServers: ["8.8.8.8", "x;y"],
      dhcpHost: "hv9",
      networkBridge: "br0; reboot",
      dnsmasqConf: "interface=eth0\n",
    }),
  );
  const text = more.failures.map((f) => `${f.property}|${f.reason}`).join("\n");
  for (const want of [
    /^gateway\|gateway: expected a host address inside 10\.10\.0\.0\/24/m,
    /^allocationPool\|allocationPool: start 10\.10\.0\.50 comes after end/m,
    /^dnsServers\|dnsServers\[1\]: expected an IPv4 address/m,
    /^dhcpHost\|dhcpHost: "hv9" is not one of the network's hosts \(hv1, hv2\)/m,
    /^networkBridge\|networkBridge: expected the Network's bridge output/m,
    /^dnsmasqConf\|dnsmasqConf: line 1: directive "interface" must be "kvln-[0-9a-f]{8}" for this subnet/m,
  ]) {
    assert.match(text, want);
  }
  const unknown = checkSubnetInputs(
    subnetRaw({ cidr: UNKNOWN, networkBridge: UNKNOWN, dnsmasqConf: UNKNOWN }),
  );
  assert.deepEqual(unknown.failures, []);
});

test("subnet diff: cidr and DHCP host replace, config and pool update, drift updates", () => {
  const news = checkSubnetInputs(subnetRaw()).inputs as unknown as SubnetInputs;
  const paths = dhcpPaths("lan", "lan-v4");
  const olds: SubnetOutputs = {
    ...news,
    namespace: paths.namespace,
    hostDevice: paths.hostDevice,
    nsDevice: paths.nsDevice,
    hostKeys: { hv1: PIN, hv2: "" },
    realized: {
      namespace: true,
      port: true,
      portInBridge: true,
      address: "10.10.0.2",
      dnsmasq: true,
      record: true,
    },
  };
  assert.equal(diffSubnet(olds, news).changes, false);
  assert.deepEqual(diffSubnet(olds, { ...news, cidr: "10.11.0.0/24" }).replaces, ["cidr"]);
  assert.deepEqual(diffSubnet(olds, { ...news, dhcpHost: "hv2" }).replaces, ["dhcpHost"]);
  const conf = diffSubnet(olds, { ...news, dnsmasqConf: `${news.dnsmasqConf}# x\n` });
  assert.deepEqual([conf.changes, conf.replaces], [true, []]);
  const dead = diffSubnet({ ...olds, realized: { ...olds.realized, dnsmasq: false } }, news);
  assert.deepEqual([dead.changes, dead.replaces], [true, []]);
});

test("IPAM: same owner same address, fixed IPs checked, pool exhaustion named, leases avoided", () => {
  const record: IpamRecord = {
    subnet: "s",
    cidr: "10.0.0.0/29",
    gateway: "10.0.0.1",
    pool: { start: "10.0.0.2", end: "10.0.0.4" },
    allocations: {},
  };
  const a = planAllocation(record, "server:a", { mac: "fa:16:3e:00:00:01" });
  assert.ok("ip" in a);
  assert.equal(a.ip, "10.0.0.2");
  const again = planAllocation(a.record, "server:a");
  assert.ok("ip" in again && again.ip === "10.0.0.2");
  const b = planAllocation(a.record, "server:b", { leased: ["10.0.0.3"] });
  assert.ok("ip" in b && b.ip === "10.0.0.4");
  const c = planAllocation((b as { record: IpamRecord }).record, "server:c", { leased: ["10.0.0.3"] });
  assert.match((c as { error: string }).error, /no free address left in the pool 10\.0\.0\.2-10\.0\.0\.4/);
  assert.match(
    (planAllocation(record, "x", { fixedIp: "10.0.0.1" }) as { error: string }).error,
    /is the gateway/,
  );
  assert.match(
    (planAllocation(record, "x", { fixedIp: "10.0.0.7" }) as { error: string }).error,
    /not a host address of 10\.0\.0\.0\/29/,
  );
  assert.match(
    (planAllocation(a.record, "x", { fixedIp: "10.0.0.2" }) as { error: string }).error,
    /already allocated to server:a/,
  );
  assert.match((planAllocation(record, "a b") as { error: string }).error, /^owner: /);
  assert.match((planAllocation(record, "a", { mac: "FA:16" }) as { error: string }).error, /^mac: /);
  assert.equal(hostsFileText(a.record), "fa:16:3e:00:00:01,10.0.0.2\n");
  assert.deepEqual(planRelease(a.record, "server:a").allocations, {});
});

test("both providers serialize without captured modules, templates or secrets, and load back", async () => {
  for (const [name, provider] of [
    ["network", networkProvider],
    ["subnet", subnetProvider],
  ] as const) {
    // The shared check: no captured modules or secrets, loads back as the plugin loads it.
    const { text, provider: rebuilt } = await assertSerializable(provider, {
      forbid: [/handlebars/i, /require\("yaml"\)/, /\.hbs\b/, /templates\//],
      methods: ["check", "diff", "create", "read", "update", "delete"],
      maxBytes: 256 * 1024,
    });
    assert.match(text, /require\("node-ssh"\)/, `${name}: node-ssh is required lazily inside a function`);
    // check and diff run in the rebuilt copy, with no host.
    const check = rebuilt.check as typeof networkProvider.check;
    if (name === "network") {
      const r = await check!(
        {} as NetworkInputs,
        { networkName: "x", kind: "selfservice", hosts: [HOSTS[0]] } as unknown as NetworkInputs,
      );
      assert.deepEqual(r.failures, []);
    }
  }
});
