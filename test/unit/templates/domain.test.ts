import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  deterministicIfName,
  deterministicMac,
  deterministicUuid,
  DomainSpec,
  KVMLAB_DOMAIN_XMLNS,
  renderDomainXml,
  toDomainView,
} from "../../../templates";
import { assertFieldError, assertValid, expectGolden, INJECTIONS, virtXmlValidate } from "./support";

const diskServer: DomainSpec = {
  name: "three-tier-web-0",
  type: "kvm",
  vcpus: 2,
  memoryMiB: 2048,
  boot: { kind: "disk", disk: "/var/lib/kvmlab/instances/three-tier-web-0/disk.qcow2" },
  seedIso: "/var/lib/kvmlab/instances/three-tier-web-0/seed.iso",
  nics: [
    {
      bridge: deterministicIfName("brq", "three-tier/web-net"),
      driver: "linuxbridge",
      target: deterministicIfName("tap", "three-tier/web-0/0"),
      mac: deterministicMac("three-tier/web-0/0"),
      mtu: 1450,
    },
  ],
  serialLog: "/var/lib/kvmlab/instances/three-tier-web-0/console.log",
  vnc: { listen: "127.0.0.1", port: 5901 },
  metadata: {
    lab: "three-tier",
    stack: "demo",
    project: "Default/demo",
    server: "web-0",
    image: "ubuntu-22.04",
    flavor: "m1.small",
  },
};

const kernelServer: DomainSpec = {
  name: "tiny-0",
  uuid: "6f1c8a52-3b7e-4d21-9a0c-5e2f7b8d9c10",
  type: "qemu",
  vcpus: 1,
  memoryMiB: 128,
  boot: {
    kind: "kernel",
    kernel: "/var/lib/kvmlab/images/tiny/vmlinuz",
    initrd: "/var/lib/kvmlab/images/tiny/initramfs.cpio.gz",
    cmdline: 'console=ttyS0 panic=-1 kvmlab.note="a&b<c>"',
  },
  nics: [
    {
      bridge: "br-int",
      driver: "openvswitch",
      target: "tap0a1b2c3d4e5",
      mac: "fa:16:3e:00:00:01",
      interfaceId: deterministicUuid("port/tiny-0/0"),
    },
    { bridge: "br-ext", driver: "openvswitch", target: "tap0a1b2c3d4e6", mac: "fa:16:3e:00:00:02" },
  ],
  serialLog: "/var/lib/kvmlab/instances/tiny-0/console.log",
  metadata: {
    lab: "sandbox",
    stack: "admin",
    project: "",
    server: "tiny-0",
    image: "tiny",
    flavor: "m1.nano",
  },
  tbCacheMiB: 32,
};

test("domain XML: qcow2 overlay on a Linux bridge, KVM, fixed VNC port", () => {
  const xml = renderDomainXml(toDomainView(diskServer));
  expectGolden("libvirt/disk-linuxbridge.xml", xml);
  assertValid(virtXmlValidate(xml), "domain XML");
  assert.match(xml, /^<domain type='kvm'>/);
  assert.match(xml, new RegExp(`<uuid>${deterministicUuid("three-tier/demo/web-0")}</uuid>`));
  assert.match(xml, /<memory unit='MiB'>2048<\/memory>/);
  assert.match(xml, /<vcpu placement='static'>2<\/vcpu>/);
  assert.match(
    xml,
    /<driver name='qemu' type='qcow2'\/>\n\s+<source file='\/var\/lib\/kvmlab\/instances\/three-tier-web-0\/disk.qcow2'\/>/,
  );
  assert.match(xml, /<disk type='file' device='cdrom'>[\s\S]*seed\.iso[\s\S]*<readonly\/>/);
  assert.match(xml, /<source bridge='brq[0-9a-f]{11}'\/>/);
  assert.doesNotMatch(xml, /virtualport/);
  assert.match(xml, /<target dev='tap[0-9a-f]{11}'\/>/);
  assert.match(xml, /<mac address='fa:16:3e:[0-9a-f:]{8}'\/>/);
  assert.match(xml, /<graphics type='vnc' port='5901' autoport='no' listen='127\.0\.0\.1'>/);
  assert.match(
    xml,
    /<log file='\/var\/lib\/kvmlab\/instances\/three-tier-web-0\/console\.log' append='on'\/>/,
  );
  assert.match(xml, /<cpu mode='host-passthrough'/);
  assert.match(xml, /<acpi\/>/);
  assert.ok(xml.includes(`<kvmlab:instance xmlns:kvmlab='${KVMLAB_DOMAIN_XMLNS}'>`));
  for (const [k, v] of Object.entries(diskServer.metadata))
    assert.ok(xml.includes(`<kvmlab:${k}>${v}</kvmlab:${k}>`), k);
});

test("domain XML: direct kernel boot on OVS under TCG, autoport VNC, escaped command line", () => {
  const xml = renderDomainXml(toDomainView(kernelServer));
  expectGolden("libvirt/kernel-ovs-tcg.xml", xml);
  assertValid(virtXmlValidate(xml), "domain XML");
  assert.match(xml, /^<domain type='qemu'>/);
  assert.match(xml, /<uuid>6f1c8a52-3b7e-4d21-9a0c-5e2f7b8d9c10<\/uuid>/);
  assert.match(xml, /<kernel>\/var\/lib\/kvmlab\/images\/tiny\/vmlinuz<\/kernel>/);
  assert.match(xml, /<initrd>\/var\/lib\/kvmlab\/images\/tiny\/initramfs\.cpio\.gz<\/initrd>/);
  assert.ok(
    xml.includes("<cmdline>console=ttyS0 panic=-1 kvmlab.note=&quot;a&amp;b&lt;c&gt;&quot;</cmdline>"),
  );
  assert.doesNotMatch(xml, /<boot dev=|device='disk'|device='cdrom'|host-passthrough/);
  assert.equal(xml.match(/<virtualport type='openvswitch'>/g)?.length, 2);
  assert.match(xml, /<parameters interfaceid='[0-9a-f-]{36}'\/>/);
  assert.match(xml, /<graphics type='vnc' autoport='yes' listen='127\.0\.0\.1'>/);
  assert.match(xml, /<tb-cache unit='MiB'>32<\/tb-cache>/);
});

test("domain XML: without VNC there is no graphics or video device, and it still validates", () => {
  const xml = renderDomainXml(toDomainView({ ...kernelServer, vnc: null, tbCacheMiB: null }));
  assertValid(virtXmlValidate(xml), "domain XML");
  assert.doesNotMatch(xml, /<graphics|<video|<tcg>/);
});

test("domain XML: deterministic for the same input", () => {
  assert.equal(renderDomainXml(toDomainView(diskServer)), renderDomainXml(toDomainView(diskServer)));
});

test("domain XML: fails on injection attempts and bad devices, naming the field", () => {
  for (const bad of [...INJECTIONS, "a]]>b", "x' onload='y"]) {
    assertFieldError(() => toDomainView({ ...diskServer, name: bad }), "name");
    // "" is the identity project "none"; every other injection is refused.
    if (bad !== "")
      assertFieldError(
        () => toDomainView({ ...diskServer, metadata: { ...diskServer.metadata, project: bad } }),
        "metadata.project",
      );
    assertFieldError(
      () => toDomainView({ ...diskServer, metadata: { ...diskServer.metadata, stack: bad } }),
      "metadata.stack",
    );
    if (bad !== "")
      assertFieldError(
        () => toDomainView({ ...diskServer, metadata: { ...diskServer.metadata, owner: bad } }),
        "metadata.owner",
      );
    assertFieldError(
      () => toDomainView({ ...diskServer, nics: [{ ...diskServer.nics[0], bridge: bad }] }),
      "nics[0].bridge",
    );
    assertFieldError(
      () => toDomainView({ ...diskServer, nics: [{ ...diskServer.nics[0], target: bad }] }),
      "nics[0].target",
    );
  }
  assertFieldError(
    () => toDomainView({ ...diskServer, nics: [{ ...diskServer.nics[0], target: "tap 0" }] }),
    "nics[0].target",
  );
  assertFieldError(
    () => toDomainView({ ...diskServer, nics: [{ ...diskServer.nics[0], target: "tap0123456789abc" }] }),
    "nics[0].target",
    /at most 15/,
  );
  assertFieldError(
    () => toDomainView({ ...diskServer, nics: [{ ...diskServer.nics[0], target: "vnet0" }] }),
    "nics[0].target",
    /start with "tap"/,
  );
  assertFieldError(
    () => toDomainView({ ...diskServer, nics: [{ ...diskServer.nics[0], mac: "52:54:00:00:00:01" }] }),
    "nics[0].mac",
  );
  assertFieldError(
    () =>
      toDomainView({ ...diskServer, nics: [diskServer.nics[0], { ...diskServer.nics[0], target: "tap1" }] }),
    "nics[1].mac",
    /duplicate/,
  );
  assertFieldError(
    () => toDomainView({ ...diskServer, boot: { kind: "disk", disk: "/var/x'/>" } }),
    "boot.disk",
  );
  assertFieldError(() => toDomainView({ ...diskServer, serialLog: "relative.log" }), "serialLog");
  assertFieldError(
    () => toDomainView({ ...kernelServer, boot: { kind: "kernel", kernel: "/k", cmdline: "a\nb" } }),
    "boot.cmdline",
  );
  assertFieldError(() => toDomainView({ ...diskServer, tbCacheMiB: 32 }), "tbCacheMiB", /TCG/);
  assertFieldError(() => toDomainView({ ...diskServer, uuid: "not-a-uuid" }), "uuid");
  assertFieldError(() => toDomainView({ ...diskServer, vcpus: 0 }), "vcpus");
  assertFieldError(
    () => toDomainView({ ...diskServer, vnc: { listen: "0.0.0.0'", port: 5901 } }),
    "vnc.listen",
  );
});
