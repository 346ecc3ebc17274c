/**
 * The Identity component and the identity resource classes under pulumi.runtime.setMocks: the
 * Default domain is added, every object becomes one resource of its type with its domain filled,
 * a password passed as a plain string reaches the engine as a secret (so state holds it only
 * encrypted), and projectId() gives the `<domain>/<name>` a Server's `project` takes.
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
const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-wiring-id-"));
const keyPath = path.join(keyDir, "id");
const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
const SECRET_SIG = "4dabf18193072939515e22adb298388d";

before(async () => {
  fs.writeFileSync(
    keyPath,
    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    { mode: 0o600 },
  );
  pulumi.runtime.setAllConfig({
    "kvmlab:hosts": JSON.stringify([
      { name: "hv1", address: "10.255.0.11", privateKeyPath: keyPath, hostKey: HOST_KEY },
    ]),
  });
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({ type: args.type, name: args.name, inputs: args.inputs });
        const recordId =
          args.inputs.projectName !== undefined
            ? `${String(args.inputs.domain ?? "Default")}/${String(args.inputs.projectName)}`
            : "";
        return { id: `${args.name}-id`, state: { ...args.inputs, recordId } };
      },
      call: (args) => args.inputs,
    },
    "project",
    "stack",
    false,
  );
});

function unwrap<T>(o: pulumi.Output<T>): Promise<T> {
  return new Promise((resolve) => o.apply(resolve));
}

test("Identity: Default domain added, one resource per object, passwords secret, projectId for servers", async () => {
  const { Identity } = require("../../components/identity") as typeof import("../../components/identity");
  const id = new Identity("lab", {
    projects: [
      { name: "demo", quotas: { instances: 4 } },
      { name: "child", parent: "demo" },
    ],
    users: [{ name: "alice", password: "plain-text-given-password" }, { name: "bob" }],
    groups: [{ name: "ops", members: ["alice"] }],
    assignments: [{ group: "ops", project: "demo", role: "member", inherited: true }],
  });
  assert.equal(await unwrap(id.projectId("demo")), "Default/demo");
  assert.throws(() => id.projectId("nope"), /project: Default\/nope is not among this Identity's projects/);
  await new Promise((r) => setTimeout(r, 50));
  const types = registered.map((r) => r.type.split(":").pop()).sort();
  assert.deepEqual(types, [
    "Domain",
    "Group",
    "Identity",
    "Project",
    "Project",
    "RoleAssignment",
    "User",
    "User",
  ]);
  const alice = registered.find((r) => r.inputs.userName === "alice")!;
  const pw = alice.inputs.password as Record<string, unknown>;
  assert.equal(pw[SECRET_SIG], "1b47061264138c4ac30d75fd1eb44270", "the password is a secret input");
  assert.ok(!JSON.stringify(registered.filter((r) => r !== alice)).includes("plain-text-given-password"));
  const child = registered.find((r) => r.inputs.projectName === "child")!;
  assert.equal(child.inputs.parent, "demo");
  assert.deepEqual(registered.find((r) => r.inputs.projectName === "demo")!.inputs.quotas, { instances: 4 });
});
