/**
 * The ground floor's paths and names are the ones every layer uses: the Server component's
 * image paths are the files the Image provider writes, the providers' device names and record
 * paths are core/'s, and the name rule is one rule.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { imageStorePaths } from "../../../components/server";
import { checkName as coreCheckName, deviceName, shortId } from "../../../core/names";
import { dhcpPaths, imageFileName, networkDevices, recordPath, serverPaths } from "../../../core/paths";
import { checkImageInputs, imageOutputs, type ImageInputs } from "../../../provider/image";
import { checkName, recordPath as providerRecordPath } from "../../../provider/host";
import { networkDevices as providerNetworkDevices } from "../../../provider/network";
import { dhcpPaths as providerDhcpPaths } from "../../../provider/ipam";
import { serverPaths as providerServerPaths } from "../../../provider/server/model";
import { checkName as templateCheckName } from "../../../templates";

const HOST = {
  name: "hv1",
  address: "10.255.0.11",
  port: 22,
  user: "root",
  privateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
  hostKey: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
  trustOnFirstUse: false,
  uplink: "",
  tunnelAddress: "",
};

function providerPaths(news: Record<string, unknown>): { disk: string; kernel: string; ramdisk: string } {
  const r = checkImageInputs({ imageName: "cirros", hosts: [HOST], ...news });
  assert.deepEqual(r.failures, []);
  const o = imageOutputs(r.inputs as unknown as ImageInputs, {}, {}, 0);
  return { disk: o.diskPath, kernel: o.kernelPath, ramdisk: o.ramdiskPath };
}

test("imageStorePaths names the files the Image provider writes (disk.qcow2, disk.raw, kernel, ramdisk)", () => {
  const source = { localPath: "/srv/cirros.img", sha256: "a".repeat(64) };
  for (const format of ["qcow2", "raw"] as const) {
    const fromProvider = providerPaths({ source, diskFormat: format });
    const fromComponent = imageStorePaths("cirros", "disk", format);
    assert.equal(fromComponent.disk, fromProvider.disk);
    assert.equal(fromComponent.disk, `/var/lib/kvmlab/images/cirros/disk.${format}`);
    assert.equal(fromComponent.format, format);
  }
  // The default format is qcow2, the documented example's.
  assert.equal(imageStorePaths("cirros", "disk").disk, providerPaths({ source, diskFormat: "qcow2" }).disk);
  const kernel = providerPaths({
    kernel: { hostPath: "/boot/vmlinuz", sha256: "b".repeat(64) },
    ramdisk: { hostPath: "/boot/initrd", sha256: "c".repeat(64) },
  });
  const k = imageStorePaths("cirros", "kernel");
  assert.deepEqual({ disk: k.disk, kernel: k.kernel, ramdisk: k.ramdisk }, kernel);
  assert.equal(imageFileName("disk", "raw"), "disk.raw");
  assert.throws(() => imageStorePaths("../etc", "disk"), /record name: expected a name/);
});

test("providers name devices, DHCP, server files and records with core/'s functions", () => {
  assert.deepEqual(providerNetworkDevices("lan"), networkDevices("lan"));
  assert.equal(networkDevices("lan").bridge, `kvlb-${shortId("lan")}`);
  assert.equal(deviceName("x", "lan").length <= 15, true);
  assert.deepEqual(providerDhcpPaths("lan", "lan-v4"), dhcpPaths("lan", "lan-v4"));
  assert.deepEqual(providerServerPaths("web-0"), serverPaths("web-0"));
  assert.equal(providerRecordPath("ipam", "lan-v4"), recordPath("ipam", "lan-v4"));
  assert.equal(recordPath("ipam", "lan-v4"), "/var/lib/kvmlab/records/ipam/lan-v4.json");
});

test("one name rule: provider, templates and core accept and refuse the same names", () => {
  for (const name of ["a", "web-0", "a.b_c", "x".repeat(63), "", "-a", "a-", "x".repeat(64), "a b", "a/b"]) {
    const ok = coreCheckName("n", name) === undefined;
    assert.equal(checkName("n", name) === undefined, ok, name);
    let templateOk = true;
    try {
      templateCheckName("n", name);
    } catch {
      templateOk = false;
    }
    assert.equal(templateOk, ok, name);
  }
});
