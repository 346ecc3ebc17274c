/**
 * The Image component, and the Keypair/Flavor/Image resource classes, under
 * pulumi.runtime.setMocks: child names and types, hosts defaulting to every configured host
 * (or `onHosts`), relative local paths resolved in the program, secrets kept secret. Proves
 * the wiring; the hosts are exercised in test/integration/image.test.ts.
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
const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-wiring-img-"));
const keyPath = path.join(keyDir, "id");
const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-wiring\n-----END OPENSSH PRIVATE KEY-----\n";
const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
const SHA = "d".repeat(64);
const SECRET_SIG = "4dabf18193072939515e22adb298388d";

before(async () => {
  fs.writeFileSync(keyPath, KEY, { mode: 0o600 });
  pulumi.runtime.setAllConfig({
    "kvmlab:hosts": JSON.stringify(
      ["hv1", "hv2", "hv3"].map((name, i) => ({
        name,
        address: `10.255.0.1${i + 1}`,
        privateKeyPath: keyPath,
        hostKey: HOST_KEY,
      })),
    ),
  });
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({ type: args.type, name: args.name, inputs: args.inputs });
        return { id: `${args.name}-id`, state: { ...args.inputs } };
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

function hostNames(inputs: Record<string, unknown>): string[] {
  const wrapped = inputs.hosts as Record<string, unknown>;
  assert.equal(wrapped[SECRET_SIG], "1b47061264138c4ac30d75fd1eb44270", "hosts must be a secret input");
  return (wrapped.value as { name: string }[]).map((h) => h.name);
}

test("an Image goes to every configured host by default; a relative localPath is resolved in the program", async () => {
  const { Image } = await import("../../components/image");
  const img = new Image("cirros", {
    source: { localPath: "images/cirros.qcow2", sha256: SHA },
    diskFormat: "qcow2",
  });
  await unwrap(img.image.urn);
  const mine = registered.filter((r) => r.name === "cirros");
  assert.deepEqual(
    mine.map((r) => r.type),
    ["kvmlab:image:Image", "pulumi-nodejs:dynamic/kvmlab:Image"],
  );
  const inputs = mine[1].inputs;
  assert.equal(inputs.imageName, "cirros");
  assert.deepEqual(hostNames(inputs), ["hv1", "hv2", "hv3"]);
  assert.deepEqual(inputs.source, { localPath: path.resolve("images/cirros.qcow2"), sha256: SHA });
  assert.equal(inputs.diskFormat, "qcow2");
});

test("onHosts limits an Image to some hosts; unknown names fail with the known ones listed", async () => {
  const { Image } = await import("../../components/image");
  const tiny = new Image("tiny", {
    kernel: { hostPath: "/boot/vmlinuz", sha256: SHA },
    kernelCmdline: "console=ttyS0",
    onHosts: ["hv2"],
  });
  await unwrap(tiny.image.urn);
  const child = registered.find((r) => r.name === "tiny" && r.type.endsWith("kvmlab:Image"));
  assert.ok(child);
  assert.deepEqual(hostNames(child.inputs), ["hv2"]);
  assert.equal(child.inputs.kernelCmdline, "console=ttyS0");
  assert.throws(
    () => new Image("bad", { kernel: { hostPath: "/k", sha256: SHA }, onHosts: ["hv9"] }),
    /onHosts: \["hv9"\] not among the hosts; use names from \["hv1","hv2","hv3"\]/,
  );
});

test("Flavor and Keypair register their types with hosts and private keys kept secret", async () => {
  const { Flavor } = await import("../../provider/flavor");
  const { Keypair } = await import("../../provider/keypair");
  const { resolveHosts } = await import("../../components/hosts");
  const f = new Flavor("m1.small", { vcpus: 1, ramMiB: 2048, diskGiB: 20, hosts: resolveHosts().hosts });
  const k = new Keypair("admin");
  await Promise.all([unwrap(f.urn), unwrap(k.urn)]);
  const flavor = registered.find((r) => r.type === "pulumi-nodejs:dynamic/kvmlab:Flavor");
  assert.ok(flavor);
  assert.equal(flavor.inputs.flavorName, "m1.small");
  assert.deepEqual(hostNames(flavor.inputs), ["hv1", "hv2", "hv3"]);
  const kp = registered.find((r) => r.type === "pulumi-nodejs:dynamic/kvmlab:Keypair");
  assert.ok(kp);
  assert.equal(kp.inputs.keyName, "admin");
  assert.equal(kp.inputs.publicKey, undefined);
});
