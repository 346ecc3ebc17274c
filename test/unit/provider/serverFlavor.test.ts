/**
 * The flavor takes one road to the Server: the provider's check takes the whole flavor with the
 * one set of limits (core/flavor.ts), refuses what a server cannot honour, keeps a canonical form
 * that equals what older state holds, and verifies the XML's <vcpu> and <memory> against it.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { FLAVOR_LIMITS } from "../../../core/flavor";
import { checkFlavorInputs } from "../../../provider/flavor";
import { canonicalJson, checkServerInputs, checkXmlMatchesFlavor } from "../../../provider/server";
import { renderServer } from "../../../templates/server";
import type { ServerFlavor } from "../../../core/shapes";

const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
const HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDcx0o34EeVL0jZSs+mikMgIPV8TH/2JVLvZOKDCGWGv";
const hosts = [
  {
    name: "hv1",
    address: "10.0.0.11",
    port: 22,
    user: "root",
    privateKey: KEY,
    hostKey: HOSTKEY,
    trustOnFirstUse: false,
    uplink: "eth1",
    tunnelAddress: "",
  },
];
const image = {
  name: "cirros",
  kind: "kernel" as const,
  disk: "",
  format: "qcow2" as const,
  kernel: "/var/lib/kvmlab/images/cirros/kernel",
  ramdisk: "/var/lib/kvmlab/images/cirros/ramdisk",
};

/** Server inputs as the component makes them, with the XML rendered for `xmlFlavor`. */
function raw(flavor: Record<string, unknown>, xmlFlavor: ServerFlavor = flavor as unknown as ServerFlavor) {
  const r = renderServer({
    serverName: "web1",
    uuidSeed: "lab/dev/web1",
    lab: "lab",
    stack: "dev",
    project: "",
    image,
    flavor: xmlFlavor,
    ports: [],
    kernelCmdline: "console=ttyS0",
    cloudInit: false,
    publicKeys: [],
    userName: "kvmlab",
    userData: {},
    consoleListen: "0.0.0.0",
  });
  return {
    serverName: "web1",
    uuid: r.uuid,
    hosts,
    flavor,
    image,
    ports: [],
    domainXml: r.domainXml,
    cloudInit: r.cloudInit,
  };
}

const reasons = (news: Record<string, unknown>): string[] =>
  checkServerInputs(news)
    .failures.filter((f) => f.property === "flavor")
    .map((f) => f.reason);

test("the Server and the Flavor accept and refuse the same sizes (one set of limits)", () => {
  for (const [size, { min, max }] of Object.entries(FLAVOR_LIMITS)) {
    for (const value of [min - 1, min, max, max + 1]) {
      const base = { flavorName: "f", vcpus: 2, ramMiB: 256, diskGiB: 1, hosts, [size]: value };
      const flavorOk = !checkFlavorInputs(base).failures.some((f) => f.property === size);
      const server = { name: "f", vcpus: 2, ramMiB: 256, diskGiB: 1, [size]: value };
      // Ephemeral and swap disks are refused by the Server whatever their size; compare ranges only.
      const serverReasons = reasons({
        ...raw(server, { name: "f", vcpus: 2, ramMiB: 256, diskGiB: 1 }),
      }).filter(
        (r) =>
          r.startsWith(`flavor.${size}: expected`) ||
          (r.includes("<vcpu>") && size !== "vcpus") ||
          (r.includes("<memory>") && size !== "ramMiB"),
      );
      assert.equal(serverReasons.length === 0, flavorOk, `${size}=${value}: ${serverReasons.join("; ")}`);
    }
  }
});

test("the XML's <vcpu> and <memory> must equal the flavor; the error names both values", () => {
  const xmlFor2 = raw({ name: "m1.small", vcpus: 2, ramMiB: 256, diskGiB: 0 });
  const lied = { ...xmlFor2, flavor: { name: "m1.small", vcpus: 1, ramMiB: 256, diskGiB: 0 } };
  assert.deepEqual(reasons(lied), [
    "domainXml.kvm: <vcpu> is 2 but flavor.vcpus is 1; render the XML from the same flavor (components/server.ts does)",
    "domainXml.qemu: <vcpu> is 2 but flavor.vcpus is 1; render the XML from the same flavor (components/server.ts does)",
  ]);
  const ram = { ...xmlFor2, flavor: { name: "m1.small", vcpus: 2, ramMiB: 512, diskGiB: 0 } };
  assert.match(reasons(ram)[0], /^domainXml\.kvm: <memory> is 256 MiB but flavor\.ramMiB is 512/);
  assert.deepEqual(reasons(xmlFor2), []);
  assert.equal(
    checkXmlMatchesFlavor("kvm", "<domain/>", 1, 128),
    "domainXml.kvm: <vcpu> is missing but flavor.vcpus is 1; render the XML from the same flavor (components/server.ts does)",
  );
});

test("the whole flavor is checked: extra specs mapped or refused by key, ephemeral and swap refused", () => {
  const specs = { "hw:watchdog_action": "reset", "kvmlab:owner": "ops" };
  const ok = checkServerInputs(
    raw({ name: "m1.w", vcpus: 2, ramMiB: 256, diskGiB: 0, ephemeralGiB: 0, swapMiB: 0, extraSpecs: specs }),
  );
  assert.deepEqual(ok.failures, []);
  assert.deepEqual(ok.inputs.flavor, { name: "m1.w", vcpus: 2, ramMiB: 256, diskGiB: 0, extraSpecs: specs });
  const plain = { name: "m1.w", vcpus: 2, ramMiB: 256, diskGiB: 0 };
  const pinned = raw(plain);
  pinned.flavor = { ...plain, extraSpecs: { "hw:cpu_policy": "dedicated" } };
  assert.match(
    reasons(pinned).join("\n"),
    /flavor\.extraSpecs\.hw:cpu_policy: "dedicated" needs pinned host CPUs/,
  );
  const unknownKey = raw(plain);
  unknownKey.flavor = { ...plain, extraSpecs: { "foo:bar": "1" } };
  assert.match(reasons(unknownKey).join("\n"), /^flavor\.extraSpecs\."foo:bar": unknown key/);
  const eph = raw(plain);
  eph.flavor = { ...plain, ephemeralGiB: 5 };
  assert.deepEqual(reasons(eph), [
    "flavor.ephemeralGiB: 5 GiB: kvmlab servers have no ephemeral disk; use a flavor with ephemeralGiB 0 (grow the root disk with diskGiB instead)",
  ]);
  const swap = raw(plain);
  swap.flavor = { ...plain, swapMiB: 256 };
  assert.match(reasons(swap)[0], /^flavor\.swapMiB: 256 MiB: kvmlab servers have no swap disk/);
});

test("the canonical flavor of a plain flavor is the one older state holds: no resize on upgrade", () => {
  const before = { name: "m1.tiny", vcpus: 1, ramMiB: 128, diskGiB: 0 };
  const now = checkServerInputs(raw({ ...before, ephemeralGiB: 0, swapMiB: 0, extraSpecs: {} })).inputs
    .flavor;
  assert.equal(canonicalJson(now), canonicalJson(before));
});
