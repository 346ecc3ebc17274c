/**
 * The Network component under pulumi.runtime.setMocks: which children it registers, with which
 * names, parents and inputs; how hosts are found (explicit, kvmlab:hosts, sandbox, none) and
 * that private keys stay secrets. Proves the wiring; does not prove the hosts accept it (see
 * test/integration/network.test.ts).
 */
import { before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";

interface Registered {
  type: string;
  name: string;
  inputs: Record<string, unknown>;
}

const registered: Registered[] = [];
const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-wiring-"));
const keyPath = path.join(keyDir, "id");
const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-wiring\n-----END OPENSSH PRIVATE KEY-----\n";
const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

before(async () => {
  fs.writeFileSync(keyPath, KEY, { mode: 0o600 });
  pulumi.runtime.setAllConfig({
    "kvmlab:hosts": JSON.stringify([
      {
        name: "hv1",
        address: "10.255.0.11",
        privateKeyPath: keyPath,
        hostKey: HOST_KEY,
        uplink: "eth1",
        tunnelAddress: "10.254.0.11",
      },
      {
        name: "hv2",
        address: "10.255.0.12",
        privateKeyPath: keyPath,
        hostKey: HOST_KEY,
        uplink: "eth1",
        tunnelAddress: "10.254.0.12",
      },
    ]),
  });
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({ type: args.type, name: args.name, inputs: args.inputs });
        const state: Record<string, unknown> = { ...args.inputs };
        if (args.type.endsWith("kvmlab:Network")) state.bridge = "kvlb-00000000";
        return { id: `${args.name}-id`, state };
      },
      call(args) {
        return args.inputs;
      },
    },
    "project",
    "stack",
    false,
  );
});

function unwrap<T>(o: pulumi.Output<T>): Promise<T> {
  return new Promise((resolve) => o.apply(resolve));
}

test("a Network with two subnets registers one Network and one Subnet each, named after the component", async () => {
  const { Network } = await import("../../components/network");
  const lan = new Network("lan", {
    kind: "selfservice",
    driver: "openvswitch",
    subnets: [
      { name: "lan-a", cidr: "10.10.0.0/24", dnsServers: ["10.10.0.1"] },
      {
        name: "lan-b",
        cidr: "10.20.0.0/24",
        gateway: null,
        allocationPool: { start: "10.20.0.100", end: "10.20.0.150" },
        dhcpHost: "hv2",
      },
    ],
  });
  assert.equal(await unwrap(lan.bridge), "kvlb-00000000");
  assert.deepEqual(Object.keys(lan.subnets), ["lan-a", "lan-b"]);
  await Promise.all(Object.values(lan.subnets).map((s) => unwrap(s.urn)));
  const mine = registered.filter((r) => r.name === "lan" || r.name.startsWith("lan-"));
  assert.deepEqual(
    mine.map((r) => [r.type, r.name]),
    [
      ["kvmlab:network:Network", "lan"],
      ["pulumi-nodejs:dynamic/kvmlab:Network", "lan"],
      ["pulumi-nodejs:dynamic/kvmlab:Subnet", "lan-lan-a"],
      ["pulumi-nodejs:dynamic/kvmlab:Subnet", "lan-lan-b"],
    ],
  );
  const net = mine[1].inputs;
  assert.equal(net.networkName, "lan");
  assert.equal(net.kind, "selfservice");
  assert.equal(net.driver, "openvswitch");
  assert.equal(net.mtu, 1450);
  // The host list reaches the provider as a secret (it holds the private keys).
  const SECRET_SIG = "4dabf18193072939515e22adb298388d";
  const wrapped = net.hosts as Record<string, unknown>;
  assert.equal(wrapped[SECRET_SIG], "1b47061264138c4ac30d75fd1eb44270", "hosts must be a secret input");
  const hosts = wrapped.value as Record<string, unknown>[];
  assert.deepEqual(
    hosts.map((h) => [h.name, h.address, h.port, h.user, h.uplink, h.tunnelAddress]),
    [
      ["hv1", "10.255.0.11", 22, "root", "eth1", "10.254.0.11"],
      ["hv2", "10.255.0.12", 22, "root", "eth1", "10.254.0.12"],
    ],
  );
  assert.equal(hosts[0].privateKey, KEY);

  const a = mine[2].inputs;
  // Names known in the program, not the Network's outputs (the mock returns another bridge):
  // a preview of a Network update must not show its subnets as replaced.
  const { networkDevices } = await import("../../provider/network");
  assert.equal(a.networkBridge, networkDevices("lan").bridge);
  assert.notEqual(a.networkBridge, "kvlb-00000000");
  assert.equal(a.networkName, "lan");
  assert.equal(a.driver, "openvswitch");
  assert.equal(a.gateway, "10.10.0.1");
  assert.deepEqual(a.allocationPool, { start: "10.10.0.2", end: "10.10.0.254" });
  assert.equal(a.dhcpAddress, "10.10.0.2");
  const conf = a.dnsmasqConf as string;
  const { dhcpPaths } = await import("../../provider/subnet");
  const paths = dhcpPaths("lan", "lan-a");
  assert.ok(conf.split("\n").includes(`interface=${paths.nsDevice}`), conf);
  assert.ok(conf.split("\n").includes(`pid-file=${paths.pidFile}`), conf);
  // The DHCP port's own address is kept out of the dynamic range.
  assert.match(conf, /^dhcp-range=set:lan-a,10\.10\.0\.3,10\.10\.0\.254,255\.255\.255\.0,86400$/m);
  assert.match(conf, /option:dns-server,10\.10\.0\.1/);
  assert.match(conf, /option:mtu,1450/);
  const b = mine[3].inputs;
  assert.equal(b.gateway, "");
  assert.equal(b.dhcpHost, "hv2");
  assert.match(b.dnsmasqConf as string, /^dhcp-range=set:lan-b,10\.20\.0\.101,10\.20\.0\.150,/m);
});

test("fails when a subnet cannot be planned or names repeat, naming the subnet", async () => {
  const { Network } = await import("../../components/network");
  assert.throws(
    () => new Network("bad1", { subnets: [{ name: "s", cidr: "10.0.0.1/24" }] }),
    /subnets\[s\]\.cidr: expected an IPv4 network/,
  );
  assert.throws(
    () =>
      new Network("bad2", {
        subnets: [
          { name: "s", cidr: "10.0.0.0/24" },
          { name: "s", cidr: "10.1.0.0/24" },
        ],
      }),
    /subnets: the name "s" appears twice/,
  );
  assert.throws(
    () =>
      new Network("bad3", {
        subnets: [{ name: "s", cidr: "10.0.0.0/24", allocationPool: { start: "10.0.0.9", end: "10.0.0.9" } }],
      }),
    /needs at least 2 addresses/,
  );
});

test("hosts: explicit beats config, config beats sandbox, sandbox is announced, none is an error naming both fixes", async () => {
  const { resolveHosts } = await import("../../components/hosts");
  const explicit = resolveHosts([{ name: "x1", address: "192.0.2.1", privateKey: KEY, hostKey: HOST_KEY }]);
  assert.equal(explicit.source, "explicit");
  assert.equal(await pulumi.isSecret(explicit.hosts[0].privateKey as pulumi.Output<string>), true);

  const fromConfig = resolveHosts(undefined, { readSandbox: () => assert.fail("config should win") });
  assert.equal(fromConfig.source, "config");
  assert.equal(await pulumi.isSecret(fromConfig.hosts[0].privateKey as pulumi.Output<string>), true);

  const emptyConfig = { getObject: () => undefined } as unknown as pulumi.Config;
  const logs: string[] = [];
  const knownHosts = path.join(keyDir, "known_hosts");
  fs.writeFileSync(knownHosts, `# comment\n[10.255.0.11]:2222 ${HOST_KEY}\n`);
  const sandbox = resolveHosts(undefined, {
    config: emptyConfig,
    log: (m) => logs.push(m),
    readSandbox: () => ({
      instance: "dev",
      hosts: [
        {
          name: "hv1",
          address: "10.255.0.11",
          port: 2222,
          user: "root",
          privateKeyPath: keyPath,
          knownHostsPath: knownHosts,
          uplink: "eth1",
          tunnelAddress: "10.254.0.11",
        },
      ],
    }),
  });
  assert.equal(sandbox.source, "sandbox");
  assert.equal(sandbox.hosts[0].hostKey, HOST_KEY);
  assert.match(logs.join(), /^using kvmlab sandbox hosts hv1 \(10\.255\.0\.11:2222\) from instance dev/);

  assert.throws(
    () => resolveHosts(undefined, { config: emptyConfig, readSandbox: () => undefined }),
    /no KVM hosts: set stack config kvmlab:hosts .* or start a local sandbox with "sudo npx kvmlab sandbox up"/,
  );
  assert.throws(
    () => resolveHosts([{ name: "x", address: "192.0.2.1", privateKeyPath: path.join(keyDir, "missing") }]),
    /hosts\[0\]\.privateKeyPath: cannot read/,
  );
});

test("a raw resource given plain hosts (private key in clear) stores them as a secret input", async () => {
  const { Flavor } = await import("../../provider/flavor");
  const plainHosts = [
    {
      name: "hv1",
      address: "10.255.0.11",
      port: 22,
      user: "root",
      privateKey: KEY,
      hostKey: HOST_KEY,
      uplink: "eth1",
      tunnelAddress: "10.254.0.11",
    },
  ];
  const f = new Flavor("raw-plain-hosts", { flavorName: "m1.raw", vcpus: 1, ramMiB: 128, hosts: plainHosts });
  await unwrap(f.urn);
  const r = registered.find((x) => x.name === "raw-plain-hosts");
  assert.ok(r, "the Flavor registered");
  const wrapped = r.inputs.hosts as Record<string, unknown>;
  const SECRET_SIG = "4dabf18193072939515e22adb298388d";
  assert.equal(
    wrapped[SECRET_SIG],
    "1b47061264138c4ac30d75fd1eb44270",
    "hosts (with the private key) is a secret input",
  );
  assert.equal((wrapped.value as { privateKey: string }[])[0].privateKey, KEY);
});
