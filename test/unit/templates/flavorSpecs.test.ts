/**
 * A flavor's extra specs in the domain XML: every spec kvmlab can express renders into the
 * element libvirt knows (checked by virt-xml-validate, for kvm and qemu domains), the rest is
 * refused naming the key, and the whole flavor reaches renderServer.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { flavorDomainSettings } from "../../../core/flavor";
import { renderDomainXml, toDomainView, type DomainSpec } from "../../../templates";
import { renderServer, type ServerRenderInput } from "../../../templates/server";
import { assertFieldError, assertValid, expectGolden, virtXmlValidate } from "./support";

const ALL_SPECS: Record<string, string> = {
  "hw:cpu_sockets": "2",
  "hw:cpu_cores": "2",
  "hw:cpu_threads": "1",
  "hw:cpu_policy": "shared",
  "hw:mem_page_size": "small",
  "hw:numa_nodes": "1",
  "hw:watchdog_action": "reset",
  "hw:boot_menu": "true",
  "hw_rng:allowed": "true",
  "quota:cpu_shares": "2048",
  "quota:cpu_period": "100000",
  "quota:cpu_quota": "50000",
  "quota:disk_read_bytes_sec": "10485760",
  "quota:disk_write_bytes_sec": "5242880",
  "quota:disk_total_iops_sec": "500",
  "quota:vif_inbound_average": "1024",
  "quota:vif_inbound_peak": "2048",
  "quota:vif_inbound_burst": "512",
  "quota:vif_outbound_average": "768",
  "kvmlab:owner": "team <a&b>",
};

const base: DomainSpec = {
  name: "web-0",
  uuid: "6f1c8a52-3b7e-4d21-9a0c-5e2f7b8d9c11",
  type: "kvm",
  vcpus: 4,
  memoryMiB: 1024,
  boot: { kind: "disk", disk: "/var/lib/kvmlab/instances/web-0/disk.qcow2" },
  seedIso: "/var/lib/kvmlab/instances/web-0/seed.iso",
  nics: [
    {
      bridge: "kvlb-00000001",
      driver: "linuxbridge",
      target: "tap0000000001",
      mac: "fa:16:3e:00:00:11",
      mtu: 1450,
    },
    { bridge: "kvlb-00000002", driver: "openvswitch", target: "tap0000000002", mac: "fa:16:3e:00:00:12" },
  ],
  serialLog: "/var/lib/kvmlab/instances/web-0/console.log",
  vnc: { listen: "0.0.0.0", port: "auto" },
  metadata: { lab: "demo", stack: "dev", project: "", server: "web-0", image: "cirros", flavor: "m1.tuned" },
};

test("every extra spec kvmlab expresses renders into valid domain XML (kvm and qemu)", () => {
  const flavorSettings = flavorDomainSettings(ALL_SPECS, 4);
  const kvm = renderDomainXml(toDomainView({ ...base, flavorSettings }));
  expectGolden("libvirt/disk-flavor-specs.xml", kvm);
  assertValid(virtXmlValidate(kvm), "domain XML with extra specs (kvm)");
  assert.match(
    kvm,
    /<cpu mode='host-passthrough' check='none'>\n\s+<topology sockets='2' cores='2' threads='1'\/>\n\s+<\/cpu>/,
  );
  assert.match(
    kvm,
    /<cputune>\n\s+<shares>2048<\/shares>\n\s+<period>100000<\/period>\n\s+<quota>50000<\/quota>\n\s+<\/cputune>/,
  );
  assert.match(kvm, /<bootmenu enable='yes'\/>/);
  assert.match(kvm, /<watchdog model='i6300esb' action='reset'\/>/);
  assert.match(kvm, /<rng model='virtio'>/);
  assert.match(
    kvm,
    /<target dev='vda' bus='virtio'\/>\n\s+<iotune>\n\s+<read_bytes_sec>10485760<\/read_bytes_sec>\n\s+<write_bytes_sec>5242880<\/write_bytes_sec>\n\s+<total_iops_sec>500<\/total_iops_sec>\n\s+<\/iotune>/,
  );
  assert.equal(kvm.match(/<iotune>/g)?.length, 1, "only the root disk, not the seed CD-ROM");
  assert.equal(
    kvm.match(
      /<bandwidth>\n\s+<inbound average='1024' peak='2048' burst='512'\/>\n\s+<outbound average='768'\/>\n\s+<\/bandwidth>/g,
    )?.length,
    2,
    "every NIC",
  );
  assert.ok(kvm.includes("<kvmlab:spec key='kvmlab:owner'>team &lt;a&amp;b&gt;</kvmlab:spec>"));
  const qemu = renderDomainXml(toDomainView({ ...base, type: "qemu", tbCacheMiB: 32, flavorSettings }));
  assertValid(virtXmlValidate(qemu), "domain XML with extra specs (qemu)");
  assert.match(qemu, /<cpu>\n\s+<topology sockets='2' cores='2' threads='1'\/>\n\s+<\/cpu>/);
  assert.doesNotMatch(qemu, /host-passthrough/);
});

test("hw_rng:allowed=false removes the RNG, hw:watchdog_action=disabled and hw:boot_menu=false are honoured", () => {
  const xml = renderDomainXml(
    toDomainView({
      ...base,
      flavorSettings: flavorDomainSettings(
        { "hw_rng:allowed": "false", "hw:watchdog_action": "disabled", "hw:boot_menu": "false" },
        4,
      ),
    }),
  );
  assertValid(virtXmlValidate(xml), "domain XML");
  assert.doesNotMatch(xml, /<rng|<watchdog|<cputune|<topology|<iotune|<bandwidth/);
  assert.match(xml, /<bootmenu enable='no'\/>/);
  // Without extra specs the XML is what it always was (the RNG stays kvmlab's default).
  assert.equal(
    renderDomainXml(toDomainView({ ...base, flavorSettings: flavorDomainSettings({}, 4) })),
    renderDomainXml(toDomainView(base)),
  );
});

test("a missing topology value takes the rest of the vcpus; a topology that does not fit is refused", () => {
  assert.deepEqual(flavorDomainSettings({ "hw:cpu_sockets": "2" }, 4).topology, {
    sockets: 2,
    cores: 2,
    threads: 1,
  });
  assert.deepEqual(flavorDomainSettings({ "hw:cpu_threads": "2" }, 4).topology, {
    sockets: 2,
    cores: 1,
    threads: 2,
  });
  assertFieldError(
    () => flavorDomainSettings({ "hw:cpu_sockets": "3" }, 4),
    "flavor.extraSpecs.hw:cpu_sockets",
    /does not divide/,
  );
  assertFieldError(
    () => flavorDomainSettings({ "hw:cpu_sockets": "1", "hw:cpu_cores": "1", "hw:cpu_threads": "1" }, 2),
    "flavor.extraSpecs",
    /must equal vcpus \(2\)/,
  );
});

test("extra specs kvmlab cannot express are refused, naming the key and the fix", () => {
  const refused: [Record<string, string>, string, RegExp][] = [
    [{ "hw:cpu_policy": "dedicated" }, "flavor.extraSpecs.hw:cpu_policy", /pinned host CPUs.*use "shared"/],
    [{ "hw:mem_page_size": "2MB" }, "flavor.extraSpecs.hw:mem_page_size", /huge pages/],
    [{ "hw:numa_nodes": "2" }, "flavor.extraSpecs.hw:numa_nodes", /NUMA/],
    [{ "trait:HW_CPU_X86_AVX2": "required" }, "flavor.extraSpecs.trait:HW_CPU_X86_AVX2", /no traits/],
    [
      { "quota:cpu_period": "10" },
      "flavor.extraSpecs.quota:cpu_period",
      /outside libvirt's range 1000-1000000/,
    ],
    [
      { "quota:disk_total_bytes_sec": "0" },
      "flavor.extraSpecs.quota:disk_total_bytes_sec",
      /0 sets no limit/,
    ],
    [
      { "quota:disk_total_bytes_sec": "10", "quota:disk_read_bytes_sec": "5" },
      "flavor.extraSpecs.quota:disk_total_bytes_sec",
      /total and read bytes at once/,
    ],
    [
      { "quota:vif_outbound_peak": "10" },
      "flavor.extraSpecs.quota:vif_outbound_peak",
      /add quota:vif_outbound_average/,
    ],
    [{ "foo:bar": "1" }, 'flavor.extraSpecs."foo:bar"', /unknown key/],
    [{ "hw:watchdog_action": "explode" }, "flavor.extraSpecs.hw:watchdog_action", /expected "disabled"/],
  ];
  for (const [specs, field, message] of refused)
    assertFieldError(() => flavorDomainSettings(specs, 4), field, message);
});

function serverInput(flavor: ServerRenderInput["flavor"]): ServerRenderInput {
  return {
    serverName: "web-0",
    uuidSeed: "demo/dev/web-0",
    lab: "demo",
    stack: "dev",
    project: "",
    image: {
      name: "cirros",
      kind: "disk",
      disk: "/var/lib/kvmlab/images/cirros/disk.qcow2",
      format: "qcow2",
      kernel: "",
      ramdisk: "",
    },
    flavor,
    ports: [
      { networkName: "lan", subnetName: "lan-v4", bridge: "kvlb-00000001", driver: "linuxbridge", mtu: 1450 },
    ],
    kernelCmdline: "console=ttyS0",
    cloudInit: false,
    publicKeys: [],
    userName: "kvmlab",
    userData: {},
    consoleListen: "0.0.0.0",
  };
}

test("renderServer takes the whole flavor: extra specs reach both XMLs, ephemeral and swap disks are refused", () => {
  const r = renderServer(
    serverInput({
      name: "m1.tuned",
      vcpus: 2,
      ramMiB: 256,
      diskGiB: 1,
      extraSpecs: { "hw:watchdog_action": "poweroff" },
    }),
  );
  for (const xml of [r.domainXml.kvm, r.domainXml.qemu]) {
    assert.match(xml, /<watchdog model='i6300esb' action='poweroff'\/>/);
    assertValid(virtXmlValidate(xml), "server XML");
  }
  assert.throws(
    () => renderServer(serverInput({ name: "m1.eph", vcpus: 1, ramMiB: 256, diskGiB: 1, ephemeralGiB: 5 })),
    /^FieldError: flavor\.ephemeralGiB: 5 GiB: kvmlab servers have no ephemeral disk; use a flavor with ephemeralGiB 0/,
  );
  assert.throws(
    () => renderServer(serverInput({ name: "m1.swap", vcpus: 1, ramMiB: 256, diskGiB: 1, swapMiB: 512 })),
    /flavor\.swapMiB: 512 MiB: kvmlab servers have no swap disk/,
  );
  assert.throws(
    () =>
      renderServer(
        serverInput({
          name: "m1.pin",
          vcpus: 1,
          ramMiB: 256,
          diskGiB: 1,
          extraSpecs: { "hw:cpu_policy": "dedicated" },
        }),
      ),
    /flavor\.extraSpecs\.hw:cpu_policy/,
  );
});
