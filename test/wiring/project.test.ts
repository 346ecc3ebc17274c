/**
 * Projects on objects (issue 14) under pulumi.runtime.setMocks: the stack's `kvmlab:project`
 * config is every resource's default project; a resource's own `project` (a Project resource, an
 * id or a bare name) wins; "" opts out. The project reaches a quota'd resource as its `project`
 * input (what the kit charges) and every owned resource's owner as `project=<domain>%2F<name>`.
 */
import { before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as pulumi from "@pulumi/pulumi";

interface Registered {
  type: string;
  name: string;
  inputs: Record<string, unknown>;
}
const registered: Registered[] = [];
const host = { name: "hv1", address: "10.255.0.11", port: 22, user: "root", privateKey: "k", hostKey: "" };

before(async () => {
  pulumi.runtime.setAllConfig({ "kvmlab:project": "demo" });
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({ type: args.type, name: args.name, inputs: args.inputs });
        const recordId =
          args.inputs.projectName !== undefined ? `Default/${String(args.inputs.projectName)}` : "";
        return { id: `${args.name}-id`, state: { ...args.inputs, recordId } };
      },
      call: (args) => args.inputs,
    },
    "proj",
    "dev",
    false,
  );
});

async function settled(): Promise<void> {
  await new Promise((r) => setTimeout(r, 100));
}

const byName = (n: string): Registered => {
  const r = registered.find((x) => x.name === n);
  assert.ok(r, `${n} registered`);
  return r;
};

test("kvmlab:project is the default project: charged (project input) and in the owner", async () => {
  const { Network, Router, Flavor } = require("../../provider") as typeof import("../../provider");
  new Network("n1", { kind: "internal", hosts: [host] } as never);
  new Router("r1", { hosts: [host] } as never);
  new Flavor("f1", { flavorName: "m1.x", vcpus: 1, ramMiB: 128, hosts: [host] } as never);
  await settled();
  assert.equal(byName("n1").inputs.project, "Default/demo");
  assert.equal(byName("n1").inputs.owner, "proj/dev/Network/n1/project=Default%2Fdemo");
  assert.equal(byName("r1").inputs.project, "Default/demo");
  // A resource with no quota carries the project only in its owner.
  assert.equal(byName("f1").inputs.owner, "proj/dev/Flavor/f1/project=Default%2Fdemo");
  assert.equal(byName("f1").inputs.project, undefined);
});

test('a resource\'s own project wins: a Project resource, an id, a name; "" opts out', async () => {
  const { Subnet, SecurityGroup, FloatingIp, Project } =
    require("../../provider") as typeof import("../../provider");
  const other = new Project("p-other", { projectName: "other", hosts: [host] } as never);
  new Subnet("s1", { hosts: [host], project: other } as never);
  new SecurityGroup("g1", { hosts: [host], project: "d2/team" } as never);
  new FloatingIp("ip1", { hosts: [host], project: "" } as never);
  await settled();
  assert.equal(byName("s1").inputs.project, "Default/other");
  assert.equal(byName("s1").inputs.owner, "proj/dev/Subnet/s1/project=Default%2Fother");
  assert.equal(byName("g1").inputs.project, "d2/team");
  assert.equal(byName("g1").inputs.owner, "proj/dev/SecurityGroup/g1/project=d2%2Fteam");
  assert.equal(byName("ip1").inputs.project, "");
  assert.equal(byName("ip1").inputs.owner, "proj/dev/FloatingIp/ip1");
});

test("two resources of one type and name under different parents are refused: they would share one owner on the hosts", async () => {
  const { Network } = require("../../provider") as typeof import("../../provider");
  class Holder extends pulumi.ComponentResource {
    constructor(type: string, name: string) {
      super(type, name);
    }
  }
  const a = new Holder("test:index:A", "a");
  const b = new Holder("test:index:B", "b");
  // Pulumi accepts both: their URNs differ by the parent's type.
  new Network("shared-net", { kind: "internal", hosts: [host] } as never, { parent: a });
  assert.throws(
    () => new Network("shared-net", { kind: "internal", hosts: [host] } as never, { parent: b }),
    /kvmlab:Network "shared-net": this program already has a Network named "shared-net".*Give one of them another name/s,
  );
  // Another type may use the name: its owner differs (.../Router/shared-net).
  const { Router } = require("../../provider") as typeof import("../../provider");
  new Router("shared-net", { hosts: [host] } as never, { parent: b });
  await settled();
  assert.equal(registered.filter((r) => r.name === "shared-net").length, 2);
});
