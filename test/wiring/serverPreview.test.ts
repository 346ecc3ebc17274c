/**
 * The Server component during preview (pulumi.runtime.setMocks with preview on): an unpinned
 * server's host is not known until placement, so the SecurityGroupPort of a port with groups
 * gets an unknown host (its check passes) instead of "" (refused as no host, which failed the
 * preview of every unpinned server with security groups, e.g. the 3-tier app's).
 */
import { before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as pulumi from "@pulumi/pulumi";

const registered: { type: string; name: string; inputs: Record<string, unknown> }[] = [];
const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-wiring\n-----END OPENSSH PRIVATE KEY-----\n";
const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
const hosts = [
  { name: "hv1", address: "10.255.0.11", privateKey: KEY, hostKey: HOST_KEY, uplink: "eth1" },
  { name: "hv2", address: "10.255.0.12", privateKey: KEY, hostKey: HOST_KEY, uplink: "eth1" },
];

before(async () => {
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({ type: args.type, name: args.name, inputs: args.inputs });
        // Preview: the checked inputs stand in for the outputs (a dynamic provider's create is not run).
        const state: Record<string, unknown> = { ...args.inputs };
        if (args.type.endsWith("kvmlab:Network")) state.bridge = "kvlb-00000000";
        if (args.type.endsWith("kvmlab:Server")) state.ips = ["172.24.4.101"];
        return { id: `${args.name}-id`, state };
      },
      call(args) {
        return args.inputs;
      },
    },
    "proj",
    "dev",
    true,
  );
});

function settle<T>(o: pulumi.Output<T>): Promise<void> {
  return new Promise((resolve) => {
    o.apply(() => resolve());
    void (o as unknown as { isKnown: Promise<boolean> }).isKnown.then((k) => (k ? undefined : resolve()));
  });
}

test("preview: an unpinned server's SecurityGroupPort gets an unknown host, which its check accepts; a pinned one keeps its host", async () => {
  const { Network } = await import("../../components/network");
  const { Server, imageStorePaths } = await import("../../components/server");
  const { SecurityGroup } = await import("../../provider/securityGroup");
  const { checkSecurityGroupPortInputs } = await import("../../provider/securityGroup");
  const { UNKNOWN } = await import("../../provider/host/quote");
  const net = new Network("pvnet", {
    kind: "provider",
    hosts,
    subnets: [{ name: "v4", cidr: "172.24.4.0/24" }],
  });
  const web = new SecurityGroup("pvsg", {
    hosts,
    rules: [{ direction: "ingress", protocol: "tcp", port: 80 }],
  });
  const common = {
    hosts,
    image: { name: "labimg", kind: "kernel" as const, ...imageStorePaths("labimg", "kernel") },
    flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128 },
    ports: [{ network: net, subnet: "v4", securityGroups: [web] }],
  };
  const free = new Server("pv-free", { ...common, serverName: "pvfree" });
  const pinned = new Server("pv-pinned", { ...common, serverName: "pvpinned", host: "hv2" });
  const ports = [free.securityGroupPorts[0], pinned.securityGroupPorts[0]];
  assert.ok(ports[0] && ports[1]);
  await Promise.all(ports.map((p) => settle(p!.portName)));
  await Promise.all([free, pinned].map((s) => settle(s.ip)));
  for (let i = 0; i < 50 && registered.filter((r) => r.type.endsWith("SecurityGroupPort")).length < 2; i++)
    await new Promise((r) => setTimeout(r, 20));
  const port = (name: string) => {
    const r = registered.find((x) => x.type.endsWith("kvmlab:SecurityGroupPort") && x.name === name);
    assert.ok(r, `SecurityGroupPort ${name} registered`);
    return r.inputs;
  };
  const freePort = port("pv-free-port0");
  assert.ok(
    pulumi.isUnknown(freePort.host),
    `the port's host is unknown during preview, got ${String(freePort.host)}`,
  );
  assert.equal(port("pv-pinned-port0").host, "hv2", "a pinned server's port keeps its host");
  // The provider's check: "" would be "not one of the hosts"; the unknown host passes.
  // (What the dynamic provider's check receives for an unknown value is the engine's sentinel.)
  const failures = (inputs: Record<string, unknown>) =>
    checkSecurityGroupPortInputs({ ...inputs, hosts }).failures.map((f) => f.property);
  assert.ok(
    failures({ ...freePort, host: UNKNOWN }).every((p) => p !== "host"),
    "an unknown host is not a check failure",
  );
  assert.ok(failures({ ...freePort, host: "" }).includes("host"), 'the old input, "", is refused');
});
