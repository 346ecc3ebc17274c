/**
 * The LoadBalancer component under pulumi.runtime.setMocks: with `floatingIp` it registers a
 * FloatingIp on the given router whose target is the load balancer's VIP port, and exports its
 * address; without it, none and "". The mock gives the LoadBalancer resource the vipPort its
 * provider returns (address, subnet, network from its inputs). Proves the wiring; the sandbox
 * test (test/integration/loadBalancer.test.ts, "floating IP") proves the traffic.
 *
 * With `securityGroups` it registers one SecurityGroupPort per amphora on the VIP veth's host
 * side: SINGLE on the VIP with its MAC; ACTIVE_STANDBY on each amphora's VRRP address, with the VIP
 * as an allowed address pair and the peer's VRRP address admitted (the sandbox test
 * "security groups on the VIP port" proves the filtering).
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
const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

before(async () => {
  fs.writeFileSync(
    keyPath,
    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    {
      mode: 0o600,
    },
  );
  const host = (n: number) => ({
    name: `hv${n}`,
    address: `10.255.0.1${n}`,
    privateKeyPath: keyPath,
    hostKey: HOST_KEY,
    uplink: "eth1",
    tunnelAddress: `10.254.0.1${n}`,
  });
  pulumi.runtime.setAllConfig({ "kvmlab:hosts": JSON.stringify([host(1), host(2)]) });
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({ type: args.type, name: args.name, inputs: args.inputs });
        const state: Record<string, unknown> = { ...args.inputs };
        if (args.type.endsWith("kvmlab:Network")) state.bridge = `kvlb-${args.name}`;
        if (args.type.endsWith("kvmlab:Router")) state.host = args.inputs.host ?? "hv1";
        if (args.type.endsWith("kvmlab:LoadBalancer")) {
          state.vipPort = {
            address: args.inputs.vipAddress,
            subnet: args.inputs.subnetName,
            network: args.inputs.networkName,
          };
          state.host = args.inputs.lbHost || "hv1";
          state.amphorae =
            args.inputs.topology === "ACTIVE_STANDBY" ? [{ host: "hv1" }, { host: "hv2" }] : [];
        }
        if (args.type.endsWith("kvmlab:FloatingIp")) state.floatingIp = "172.24.4.101";
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

const listeners = [
  {
    name: "http",
    protocol: "HTTP" as const,
    protocolPort: 80,
    defaultPool: {
      name: "web",
      protocol: "HTTP" as const,
      lbAlgorithm: "ROUND_ROBIN" as const,
      members: [{ name: "web1", address: "10.60.0.11", protocolPort: 80 }],
    },
  },
];

test("LoadBalancer with floatingIp: a FloatingIp on the router targets the VIP port; without it none", async () => {
  const { Network } = await import("../../components/network");
  const { LoadBalancer } = await import("../../components/loadBalancer");
  const { Router } = await import("../../provider/router");
  const lan = new Network("lan", {
    kind: "selfservice",
    subnets: [{ name: "lan-v4", cidr: "10.60.0.0/24" }],
  });
  const ext = new Network("ext", {
    kind: "provider",
    subnets: [{ name: "ext-v4", cidr: "172.24.4.0/24", gateway: "172.24.4.1", enableDhcp: false }],
  });
  const router = new Router("r1", {
    hosts: [],
    host: "hv2",
    external: {
      subnetName: "ext-v4",
      networkName: "ext",
      bridge: "kvlb-ext",
      driver: "linuxbridge",
      cidr: "172.24.4.0/24",
      address: "172.24.4.100",
      gateway: "172.24.4.1",
      mtu: 1500,
      ipamHost: "hv1",
    },
    interfaces: [],
  });
  const lb = new LoadBalancer("web-lb", {
    network: lan,
    subnet: "lan-v4",
    vipAddress: "10.60.0.50",
    listeners,
    floatingIp: { router, external: ext, subnet: "ext-v4" },
  });
  assert.equal(await unwrap(lb.floatingIp), "172.24.4.101");
  const fips = registered.filter((r) => r.type.endsWith("kvmlab:FloatingIp"));
  assert.equal(fips.length, 1);
  const inputs = fips[0].inputs as {
    fipName: string;
    host: string;
    routerName: string;
    external: Record<string, unknown>;
    target: Record<string, unknown>;
  };
  assert.equal(fips[0].name, "web-lb-fip");
  assert.equal(inputs.fipName, "web-lb-fip");
  assert.equal(inputs.host, "hv2", "on the router's host");
  assert.deepEqual(inputs.target, { address: "10.60.0.50", subnetName: "lan-v4", networkName: "lan" });
  assert.equal(inputs.external.subnetName, "ext-v4");
  assert.equal(inputs.external.cidr, "172.24.4.0/24");

  const plain = new LoadBalancer("plain-lb", {
    network: lan,
    subnet: "lan-v4",
    vipAddress: "10.60.0.60",
    listeners,
  });
  assert.equal(await unwrap(plain.floatingIp), "");
  assert.equal(registered.filter((r) => r.type.endsWith("kvmlab:FloatingIp")).length, 1);
  assert.throws(
    () =>
      new LoadBalancer("bad-lb", {
        network: lan,
        subnet: "lan-v4",
        vipAddress: "10.60.0.70",
        listeners,
        floatingIp: { router, external: ext, subnet: "nope" },
      }),
    /floatingIp.subnet: the external network has no subnet "nope"; use one of ext-v4/,
  );
});

test("LoadBalancer with securityGroups: a SecurityGroupPort on each amphora's VIP port", async () => {
  const { Network } = await import("../../components/network");
  const { LoadBalancer } = await import("../../components/loadBalancer");
  const { SecurityGroup } = await import("../../provider/securityGroup");
  const { amphoraMac, loadBalancerPaths } = await import("../../core/paths");
  const lan = new Network("sglan", {
    kind: "selfservice",
    subnets: [{ name: "sglan-v4", cidr: "10.61.0.0/24" }],
  });
  const web = new SecurityGroup("vipsg", {
    hosts: [],
    rules: [{ direction: "ingress", protocol: "tcp", port: 80 }],
  });
  const single = new LoadBalancer("sg-lb", {
    network: lan,
    subnet: "sglan-v4",
    vipAddress: "10.61.0.50",
    listeners,
    securityGroups: [web],
  });
  const ha = new LoadBalancer("sg-ha", {
    network: lan,
    subnet: "sglan-v4",
    vipAddress: "10.61.0.60",
    listeners,
    topology: "ACTIVE_STANDBY",
    vrrpAddresses: ["10.61.0.61", "10.61.0.62"],
    securityGroups: [web],
  });
  const plain = new LoadBalancer("nosg-lb", {
    network: lan,
    subnet: "sglan-v4",
    vipAddress: "10.61.0.70",
    listeners,
  });
  assert.equal(plain.securityGroupPorts.length, 0, "no groups, no SecurityGroupPort");
  assert.equal(single.securityGroupPorts.length, 1);
  assert.equal(ha.securityGroupPorts.length, 2);
  for (const p of [...single.securityGroupPorts, ...ha.securityGroupPorts]) await unwrap(p.portName);
  await unwrap(ha.vipAddress);
  const ports = registered.filter((r) => r.type.endsWith("kvmlab:SecurityGroupPort"));
  const byName = (n: string) => {
    const r = ports.find((x) => x.name === n);
    assert.ok(r, `SecurityGroupPort ${n} registered (have ${ports.map((x) => x.name).join(", ")})`);
    return r.inputs;
  };
  const s = byName("sg-lb-vip");
  assert.equal(s.portName, "sg-lb-vip");
  assert.equal(s.host, "hv1", "the host the load balancer reports");
  assert.equal(s.tap, loadBalancerPaths("sg-lb").hostDevice, "the host side of the VIP veth");
  assert.equal(s.mac, loadBalancerPaths("sg-lb").vipMac);
  assert.equal(s.ip, "10.61.0.50");
  assert.deepEqual(s.allowedAddresses, []);
  assert.equal(s.driver, "linuxbridge");
  assert.deepEqual(s.groups, [
    { groupName: "vipsg", rules: [{ direction: "ingress", protocol: "tcp", port: 80 }] },
  ]);
  for (const i of [0, 1]) {
    const a = byName(`sg-ha-vip${i}`);
    assert.equal(a.portName, `sg-ha-vip${i}`);
    assert.equal(a.host, `hv${i + 1}`, "each amphora's own host");
    assert.equal(a.tap, loadBalancerPaths("sg-ha").hostDevice);
    assert.equal(a.mac, amphoraMac("sg-ha", i));
    assert.equal(a.ip, `10.61.0.6${i + 1}`, "the amphora's VRRP address");
    assert.deepEqual(a.allowedAddresses, ["10.61.0.60"], "the VIP as an allowed address pair");
    const groups = a.groups as { groupName: string; rules: Record<string, unknown>[] }[];
    assert.equal(groups[0].groupName, "vipsg");
    assert.deepEqual(groups[1], {
      groupName: "sg-ha-vrrp",
      rules: [
        {
          direction: "ingress",
          protocol: "any",
          portMin: 0,
          portMax: 0,
          remoteCidr: `10.61.0.6${2 - i}/32`,
          remoteGroup: "",
          ethertype: "IPv4",
        },
      ],
    });
  }
});
