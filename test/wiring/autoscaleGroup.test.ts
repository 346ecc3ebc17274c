/**
 * The AutoscaleGroup component's rolling-replacement steps under pulumi.runtime.setMocks, with the
 * dependencies every registration carries (the mock monitor's request: dependsOn and the
 * property dependencies together): per slot roll-out -> Server -> roll-in, and NO dependency
 * between slots (issue 13: on a fresh group all slot Servers are created at once; the one
 * member out at a time rule is roll.sh's, on the controller). The roll-out's bound grows with
 * max (core/autoscale.ts rollOutTimeoutSec), the roll-in's does not.
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
  urn: string;
  inputs: Record<string, unknown>;
  deps: string[];
}

const registered: Registered[] = [];
const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-wiring-asg-"));
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
        const state: Record<string, unknown> = { ...args.inputs };
        if (args.type.endsWith("kvmlab:Network")) state.bridge = `kvlb-${args.name}`;
        if (args.type.endsWith("kvmlab:Subnet")) state.dhcpHost = "hv1";
        if (args.type.endsWith("kvmlab:Server"))
          state.ips = (args.inputs.ports as { fixedIp: string }[]).map((p) => p.fixedIp);
        return { id: `${args.name}-id`, state };
      },
      call(args) {
        return args.inputs;
      },
    },
    "asg",
    "dev",
    false,
  );
  // The mock monitor hands newResource no dependencies: read them from its request.
  const monitor = (
    pulumi.runtime as unknown as {
      getMonitor(): {
        registerResource(req: RegisterRequest, cb: (err: unknown, resp: unknown) => void): void;
      };
    }
  ).getMonitor();
  const orig = monitor.registerResource.bind(monitor);
  monitor.registerResource = (req, cb) => {
    orig(req, (err, resp) => {
      const urn = (resp as { getUrn?: () => string } | undefined)?.getUrn?.() ?? "";
      registered.push({
        type: req.getType(),
        name: req.getName(),
        urn,
        inputs: {},
        deps: [
          ...req.getDependenciesList(),
          ...[...req.getPropertydependenciesMap().entries()].flatMap(([, d]) => d.getUrnsList()),
        ],
      });
      cb(err, resp);
    });
  };
});

interface RegisterRequest {
  getType(): string;
  getName(): string;
  getDependenciesList(): string[];
  getPropertydependenciesMap(): { entries(): Iterable<[string, { getUrnsList(): string[] }]> };
}

function unwrap<T>(o: pulumi.Output<T>): Promise<T> {
  return new Promise((resolve) => o.apply(resolve));
}

test("AutoscaleGroup: per slot roll-out -> Server -> roll-in, no dependency between slots; the roll-out's bound grows with max", async () => {
  const { Network } = await import("../../components/network");
  const { AutoscaleGroup } = await import("../../components/autoscaleGroup");
  const { rollInTimeoutSec, rollOutTimeoutSec } = await import("../../core/autoscale");
  const net = new Network("lan", { subnets: [{ name: "lan-v4", cidr: "10.61.0.0/24" }] });
  const g = new AutoscaleGroup("web", {
    launch: {
      image: { name: "cirros", kind: "disk", disk: "/srv/cirros.qcow2" },
      flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 256 },
      ports: [{ network: net, subnet: "lan-v4", fixedIps: ["10.61.0.10", "10.61.0.11", "10.61.0.12"] }],
    },
    min: 1,
    max: 3,
    bootTimeout: 120,
    drainTimeout: 5,
  });
  await unwrap(g.memberIps);
  await unwrap(pulumi.all(g.rolls.map((r) => r.urn)));
  // Let the last registrations (roll-ins after their Servers) reach the monitor.
  await new Promise((r) => setTimeout(r, 200));

  const byName = new Map(registered.map((r) => [r.name, r]));
  const slotOf = (urn: string): number | undefined => {
    const m = /::web-(\d)(-roll-(out|in))?$/.exec(urn);
    return m ? Number(m[1]) : undefined;
  };
  for (const i of [0, 1, 2]) {
    const out = byName.get(`web-${i}-roll-out`);
    const server = registered.find((r) => r.type.endsWith("kvmlab:Server") && r.name === `web-${i}`);
    const back = byName.get(`web-${i}-roll-in`);
    assert.ok(out && server && back, `slot ${i}: its roll-out, Server and roll-in are registered`);
    assert.ok(server.deps.includes(out.urn), `Server web-${i} waits for its roll-out`);
    assert.ok(back.deps.includes(server.urn), `web-${i}-roll-in waits for its Server`);
    for (const r of [out, server, back]) {
      const others = r.deps.filter((d) => slotOf(d) !== undefined && slotOf(d) !== i);
      assert.deepEqual(others, [], `${r.name} depends on no other slot's roll step or Server`);
    }
  }
  const timeouts = await unwrap(
    pulumi.all(
      g.rolls.map((r) =>
        pulumi.all([r.member, r.phase, (r as unknown as { timeoutSec: pulumi.Output<number> }).timeoutSec]),
      ),
    ),
  );
  for (const [member, phase, sec] of timeouts)
    assert.equal(
      sec,
      phase === "out" ? rollOutTimeoutSec(3, 120, 5) : rollInTimeoutSec(120, 5),
      `${member} roll-${phase}'s bound`,
    );
  assert.equal(rollOutTimeoutSec(3, 120, 5), 3 * (2 * 120 + 5 + 60) + 900);
});
