/**
 * Server provider units: check (validation, defaults, unknowns, injection refused), the diff
 * table (update vs replace vs migrate), the change plan shown by preview, placement, parsers,
 * step text quoting, and closure serialization. No host is contacted.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { UNKNOWN } from "../../../provider/host";
import {
  canonicalJson,
  checkServerInputs,
  chooseHost,
  diffServer,
  parseDomainInfo,
  parseHostLoad,
  planText,
  serverProvider,
  withPlaced,
  type HostLoad,
  type ServerInputs,
  type ServerOutputs,
} from "../../../provider/server";
import {
  authorizeStep,
  knownHostsText,
  migrateStep,
  parseDestinationFacts,
} from "../../../provider/server/migrate";
import {
  deleteStep,
  materializeSteps,
  nameFreeStep,
  readinessProbeStep,
} from "../../../provider/server/steps";
import { assertSerializable } from "../../harness/serialization";
import { serverRaw } from "./fixtures";

const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
const HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDcx0o34EeVL0jZSs+mikMgIPV8TH/2JVLvZOKDCGWGv";
const hosts = ["hv1", "hv2"].map((name, i) => ({
  name,
  address: `10.0.0.${11 + i}`,
  port: 22,
  user: "root",
  privateKey: KEY,
  hostKey: HOSTKEY,
  trustOnFirstUse: false,
  uplink: "eth1",
  tunnelAddress: "",
}));

function raw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return serverRaw(hosts, over);
}

function checked(over: Record<string, unknown> = {}): ServerInputs {
  const { inputs, failures } = checkServerInputs(raw(over));
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

function outputsOf(inputs: ServerInputs, over: Partial<ServerOutputs> = {}): ServerOutputs {
  return {
    ...inputs,
    host: "hv1",
    hostAddress: "10.0.0.11",
    domainType: "qemu",
    addresses: [],
    ips: ["10.10.0.21"],
    macs: [inputs.ports[0].mac],
    vncPort: 5900,
    consoleUrl: "vnc://10.0.0.11:5900",
    serialLog: "",
    instanceDir: "",
    actualPowerState: "running",
    hostKeys: {},
    ...over,
  };
}

test("check fills defaults and accepts rendered inputs", () => {
  const i = checked();
  assert.equal(i.host, "");
  assert.equal(i.powerState, "running");
  assert.deepEqual(i.readiness, { kind: "none", path: "/", port: 80, pattern: "", timeoutSec: 120 });
  assert.equal(i.ports[0].fixedIp, "");
  assert.equal(i.changePlan, "create");
});

test("check accepts unknowns during preview", () => {
  const { failures } = checkServerInputs(
    raw({ domainXml: UNKNOWN, ports: UNKNOWN, uuid: UNKNOWN, host: UNKNOWN }),
  );
  assert.deepEqual(failures, []);
});

test("fails when fields are invalid or could inject, naming the field and the fix", () => {
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ serverName: "web1; rm -rf /" }, "serverName", /serverName: expected a name/],
    [{ host: "hv9" }, "host", /hv9" is not one of the hosts \(hv1, hv2\)/],
    [{ flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 64 } }, "flavor", /at least 128/],
    [
      { image: { name: "x", kind: "kernel", kernel: "/tmp/$(reboot)" } },
      "image",
      /image\.kernel: expected an absolute path/,
    ],
    [{ powerState: "paused" }, "powerState", /"running", "stopped" or "external"/],
    [{ readiness: { kind: "http", path: "/x y" } }, "readiness", /readiness\.path/],
    [{ readiness: { kind: "serial", pattern: "a'b" } }, "readiness", /readiness\.pattern/],
  ];
  for (const [over, property, reason] of cases) {
    const { failures } = checkServerInputs(raw(over));
    assert.ok(
      failures.some((f) => f.property === property && reason.test(f.reason ?? "")),
      `${JSON.stringify(over)}: ${JSON.stringify(failures)}`,
    );
  }
  const base = raw();
  const ports = base.ports as Record<string, unknown>[];
  const bad = checkServerInputs({
    ...base,
    ports: [
      { ...ports[0], tap: "eth0" },
      { ...ports[0], bridge: "br x" },
    ],
  });
  assert.ok(bad.failures.some((f) => /ports\[0\]\.tap: expected a tap device name/.test(f.reason ?? "")));
  assert.ok(bad.failures.some((f) => /ports\[1\]\.bridge/.test(f.reason ?? "")));
  assert.ok(bad.failures.some((f) => /ports\[1\]\.mac: .* is used by another port/.test(f.reason ?? "")));
});

test("fails when the domain XML was not rendered for this server", () => {
  const base = raw();
  const xml = base.domainXml as { kvm: string; qemu: string };
  const other = checkServerInputs({
    ...base,
    domainXml: { ...xml, qemu: xml.qemu.replace("<name>web1</name>", "<name>web2</name>") },
  });
  assert.match(other.failures[0].reason, /domainXml\.qemu: the domain name must be serverName/);
  const swapped = checkServerInputs({ ...base, domainXml: { kvm: xml.qemu, qemu: xml.kvm } });
  assert.match(swapped.failures[0].reason, /rendered with type 'kvm'/);
});

test("diff: flavor is an update, a new host pin a migration, image/ports/cloud-init a replacement", () => {
  const olds = outputsOf(checked());
  assert.deepEqual(diffServer(olds, checked()), {
    changes: false,
    replaces: [],
    stables: ["serverName", "uuid", "macs", "ips", "addresses"],
    deleteBeforeReplace: true,
  });
  const resized = diffServer(olds, checked({ ramMiB: 192 }));
  assert.equal(resized.changes, true);
  assert.deepEqual(resized.replaces, []);
  assert.deepEqual(diffServer(olds, checked({ host: "hv2" })).replaces, []);
  assert.equal(diffServer(olds, checked({ host: "hv2" })).changes, true);
  assert.equal(
    diffServer(olds, checked({ host: "hv1" })).changes,
    false,
    "pinning to where it runs changes nothing",
  );
  assert.equal(diffServer(olds, checked({ powerState: "stopped" })).changes, true);
  const img = raw().image as Record<string, unknown>;
  assert.deepEqual(diffServer(olds, checked({ image: { ...img, name: "cirros2" } })).replaces, ["image"]);
  assert.equal(
    diffServer({ ...olds, actualPowerState: "stopped" }, checked()).changes,
    true,
    "refresh drift is repaired",
  );
  // Key order as it comes back from a protobuf Struct does not count as a change.
  const reordered = JSON.parse(canonicalJson(checked())) as ServerInputs;
  assert.equal(diffServer(olds, reordered).changes, false);
});

test("the change plan says what an update does", () => {
  const olds = checked() as unknown as Record<string, unknown>;
  assert.equal(planText(olds, checked() as unknown as Record<string, unknown>), "none");
  assert.match(
    planText(olds, checked({ ramMiB: 192 }) as unknown as Record<string, unknown>),
    /^cold resize m1\.tiny \(1 vCPU, 128 MiB\) -> m1\.tiny \(1 vCPU, 192 MiB\): stop, redefine, start; UUID, MACs and IPs kept$/,
  );
  assert.match(
    planText(olds, checked({ host: "hv2" }) as unknown as Record<string, unknown>),
    /^live-migrate to host hv2/,
  );
  assert.match(
    planText(olds, checked({ powerState: "stopped" }) as unknown as Record<string, unknown>),
    /^stop/,
  );
  const img = raw().image as Record<string, unknown>;
  assert.match(
    planText(olds, checked({ image: { ...img, name: "other" } }) as unknown as Record<string, unknown>),
    /^replace \(image changed/,
  );
  assert.equal(
    planText(
      JSON.parse(canonicalJson(olds)) as Record<string, unknown>,
      checked() as unknown as Record<string, unknown>,
    ),
    "none",
  );
});

test("placement: most free RAM among the hosts that fit; an error names every host otherwise", () => {
  const load = (host: string, allocatedRamMiB: number, memTotalMiB = 8704): HostLoad => ({
    host,
    memTotalMiB,
    memAvailableMiB: 4096,
    cpus: 2,
    allocatedRamMiB,
    allocatedVcpus: 0,
    servers: 0,
    serverUuids: [],
  });
  assert.deepEqual(chooseHost([load("hv1", 256), load("hv2", 128)], { vcpus: 1, ramMiB: 128 }), {
    host: "hv2",
  });
  assert.deepEqual(
    chooseHost([load("hv1", 0), load("hv2", 0)], { vcpus: 1, ramMiB: 128 }),
    { host: "hv1" },
    "ties keep host order",
  );
  const none = chooseHost([load("hv1", 8000), load("hv2", 0, 600)], { vcpus: 1, ramMiB: 512 });
  assert.ok("error" in none);
  assert.match(none.error, /hv1: 192 MiB RAM free, needs 512; hv2: 88 MiB RAM free, needs 512/);
  const busy = chooseHost([{ ...load("hv1", 0), allocatedVcpus: 8 }], { vcpus: 1, ramMiB: 128 });
  assert.ok("error" in busy && /hv1: 0 vCPUs free, needs 1/.test(busy.error));
});

test("one placement turn for several servers counts each placed server before choosing the next", () => {
  const load = (host: string, memTotalMiB: number): HostLoad => ({
    host,
    memTotalMiB,
    memAvailableMiB: 4096,
    cpus: 2,
    allocatedRamMiB: 0,
    allocatedVcpus: 0,
    servers: 0,
    serverUuids: [],
  });
  // Room for three 128 MiB servers on hv1 (896 - 512 reserved = 384), one on hv2 (640 - 512).
  let loads = [load("hv1", 896), load("hv2", 640)];
  const placed: string[] = [];
  for (const uuid of ["a", "b", "c", "d", "e"]) {
    const flavor = { vcpus: 1, ramMiB: 128 };
    const choice = chooseHost(loads, flavor);
    if ("error" in choice) {
      placed.push("none");
      continue;
    }
    placed.push(choice.host);
    loads = loads.map((l) => (l.host === choice.host ? withPlaced(l, { uuid, flavor }) : l));
  }
  // Without counting, all five would land on hv1 (most free RAM at the one reading).
  // (c: equal free RAM, hv2 has more free vCPUs.)
  assert.deepEqual(placed, ["hv1", "hv1", "hv2", "hv1", "none"]);
  assert.deepEqual(loads[0].serverUuids, ["a", "b", "d"]);
  assert.equal(loads[0].allocatedRamMiB, 384);
  assert.equal(loads[0].allocatedVcpus, 3);
  assert.equal(loads[1].servers, 1);
});

test("parsers read what the host steps print", () => {
  const l = parseHostLoad(
    "hv1",
    "memtotal=8388608\nmemavailable=4194304\ncpus=2\n--capacity--\nu1 128 1\nu2 192 2\n- - -\n 64 -\n",
  );
  assert.deepEqual(l, {
    host: "hv1",
    memTotalMiB: 8192,
    memAvailableMiB: 4096,
    cpus: 2,
    allocatedRamMiB: 384,
    allocatedVcpus: 3,
    servers: 4,
    // "-" counts 0 and names no server; an empty UUID names none either.
    serverUuids: ["u1", "u2"],
    capacity: [
      { uuid: "u1", ramMiB: "128", vcpus: "1" },
      { uuid: "u2", ramMiB: "192", vcpus: "2" },
      { uuid: "-", ramMiB: "-", vcpus: "-" },
      { uuid: "", ramMiB: "64", vcpus: "-" },
    ],
  });
  const info = parseDomainInfo(
    "defined=yes\nuuid=abc\nstate=running\nmaxmem=196608 KiB\nvcpus=1\nvnc=0.0.0.0:3\ntype=qemu\n" +
      'meta=<kvmlab:instance xmlns:kvmlab="https://kvmlab.dev/xmlns/domain/1.0">  <kvmlab:project>Default/a=b</kvmlab:project></kvmlab:instance>\n',
  );
  assert.deepEqual(info, {
    defined: true,
    uuid: "abc",
    state: "running",
    maxMemKiB: 196608,
    vcpus: 1,
    vncPort: 5903,
    type: "qemu",
    // kvmlab's metadata element, whole (values may hold "=").
    metadata:
      '<kvmlab:instance xmlns:kvmlab="https://kvmlab.dev/xmlns/domain/1.0">  <kvmlab:project>Default/a=b</kvmlab:project></kvmlab:instance>',
  });
  assert.equal(parseDomainInfo("defined=no\n").defined, false);
  const facts = parseDestinationFacts(
    `ssh-ed25519 AAAAB3\nssh-rsa AAAAC==\nakf=/etc/ssh/lab_authorized_keys\n`,
  );
  assert.deepEqual(facts, {
    hostKeys: ["ssh-ed25519 AAAAB3", "ssh-rsa AAAAC=="],
    authorizedKeysFile: "/etc/ssh/lab_authorized_keys",
  });
});

test("steps quote what they pass and guard the domain by UUID", () => {
  const i = checked();
  const del = deleteStep(i).script;
  assert.match(del, new RegExp(`grep -qF -- '"uuid": "${i.uuid}"'`));
  // libvirtd not answering stops the delete before anything goes (a failed create's cleanup
  // would otherwise drop the owner marker of a domain libvirt still has defined).
  const alive = del.indexOf(
    "if ! virsh -q -c qemu:///system list --all >/dev/null 2>&1 && [ -e /etc/libvirt/qemu/web1.xml ]; then",
  );
  assert.ok(alive >= 0 && alive < del.indexOf("domuuid"), "libvirtd is checked first");
  assert.ok(alive < del.indexOf("rm -rf"), "before any file goes");
  assert.match(
    del,
    /libvirtd on this host does not answer and keeps a definition of server web1.*exit 69; fi/,
  );
  assert.ok(
    del.includes(`else rm -rf /var/lib/kvmlab/instances/${i.uuid}; fi\n`),
    "the folder of its UUID (issue 15)",
  );
  assert.ok(
    del.indexOf("rm -f /var/lib/kvmlab/images/cirros/.users/web1\n") > del.indexOf("then exit 0; fi"),
    "the image's user marker goes only after the UUID guards",
  );
  assert.match(
    del,
    /if \[ -n "\$u" \] && \[ "\$u" != [0-9a-f-]+ \]; then exit 0; fi/,
    "another server's domain and files are left alone",
  );
  assert.match(nameFreeStep(i).script, /exit 34/);
  const steps = materializeSteps(i, i.domainXml.qemu);
  const mark = steps.findIndex((s) => s.label === "mark image cirros as used by web1");
  assert.ok(mark > 0, "the image is marked as used, after the UUID guard of the first step");
  assert.match(
    steps[mark].script,
    /mkdir -p \/var\/lib\/kvmlab\/images\/cirros\/\.users && : > \/var\/lib\/kvmlab\/images\/cirros\/\.users\/web1/,
  );
  assert.ok(
    materializeSteps(i, i.domainXml.qemu, { define: false }).some(
      (s) => s.label === "mark image cirros as used by web1",
    ),
    "the destination of a migration is marked too",
  );
  // Files outside the store's folder of that name are not the image's: no marker.
  for (const kernel of [
    "/boot/vmlinuz",
    "/var/lib/kvmlab/images/other/kernel",
    "/var/lib/kvmlab/images/cirros/x/kernel",
  ]) {
    const foreign = { ...i, image: { ...i.image, kernel } };
    assert.ok(
      !materializeSteps(foreign, i.domainXml.qemu).some((s) => (s.label ?? "").startsWith("mark image")),
      kernel,
    );
  }
  assert.ok(steps.some((s) => /genisoimage -quiet -output .* -volid cidata/.test(s.script)));
  assert.ok(steps.some((s) => s.label === "define domain web1"));
  assert.ok(
    !materializeSteps(i, i.domainXml.qemu, { define: false }).some((s) => s.label === "define domain web1"),
  );
  const probe = readinessProbeStep(
    { ...i, readiness: { ...i.readiness, kind: "http", path: "/health" } },
    "10.10.0.21",
    i.ports[0],
  );
  assert.match(probe.script, /ns=qdhcp-lan; url=http:\/\/10\.10\.0\.21:80\/health/);
  const dest = hosts[1];
  assert.match(
    migrateStep("web1", dest, false, 120).script,
    /^timeout 120 virsh -q -c qemu:\/\/\/system migrate --live --persistent --undefinesource --tls --timeout 60 --migrateuri tcp:\/\/10\.0\.0\.12 --listen-address 10\.0\.0\.12 web1 'qemu\+libssh:\/\/root@10\.0\.0\.12:22\/system\?keyfile=\/var\/lib\/kvmlab\/migrate\/web1\/id&known_hosts=\/var\/lib\/kvmlab\/migrate\/web1\/known_hosts&sshauth=privkey'/,
  );
  assert.match(migrateStep("web1", dest, true, 120).script, /--copy-storage-inc/);
  assert.equal(
    knownHostsText(dest, ["ssh-ed25519 AAAA"]),
    "10.0.0.12 ssh-ed25519 AAAA\n[10.0.0.12]:22 ssh-ed25519 AAAA\n",
  );
  assert.throws(
    () => authorizeStep("/root/.ssh/authorized_keys", 'command="reboot" ssh-ed25519 AAAA x', "t1"),
    /unexpected migration key line/,
  );
  assert.match(
    authorizeStep("/root/.ssh/authorized_keys", "ssh-ed25519 AAAA kvmlab", "kvmlab-migrate-web1-abc").script,
    /no-agent-forwarding,no-X11-forwarding,no-port-forwarding,no-pty ssh-ed25519 AAAA kvmlab-migrate-web1-abc/,
  );
});

test("the provider serializes without capturing modules or keys", async () => {
  const s = await assertSerializable(serverProvider, {
    forbid: [/handlebars/],
    methods: ["check", "diff", "create", "read", "update", "delete"],
  });
  assert.ok(s.sizeBytes < 512 * 1024);
});

test("hybrid OVS ports: the XML may name the port's qbr bridge; plumbing is made before define and removed on delete", async () => {
  const { renderServer } = await import("../../../components/server");
  const { domainBridgeOf } = await import("../../../provider/server/hybrid");
  const base = raw();
  const port0 = (base.ports as Record<string, unknown>[])[0];
  const tap = port0.tap as string;
  const qbr = domainBridgeOf({ bridge: "kvlo-1a2b3c4d", tap, hybrid: true });
  assert.equal(qbr, `qbr${tap.slice(3)}`, "named after the tap, as Neutron names qbr after the port id");
  // The XML as the component renders it for a hybrid port: a plain bridge port on qbr<id>.
  const r = renderServer({
    serverName: "web1",
    uuidSeed: "lab/dev/web1",
    lab: "lab",
    stack: "dev",
    project: "",
    image: base.image as never,
    flavor: base.flavor as never,
    ports: [{ networkName: "lan", subnetName: "lan-v4", bridge: qbr, driver: "linuxbridge", mtu: 1450 }],
    kernelCmdline: "console=ttyS0 lab.name=web1",
    cloudInit: true,
    publicKeys: [],
    userName: "kvmlab",
    userData: {},
    consoleListen: "0.0.0.0",
  });
  const ovsPort = { ...port0, bridge: "kvlo-1a2b3c4d", driver: "openvswitch", hybrid: true };
  const ok = checkServerInputs(raw({ ports: [ovsPort], domainXml: r.domainXml }));
  assert.deepEqual(ok.failures, [], "qbr<id> of a hybrid port is one of the server's bridges");
  const notHybrid = checkServerInputs(
    raw({ ports: [{ ...ovsPort, hybrid: undefined }], domainXml: r.domainXml }),
  );
  assert.ok(
    notHybrid.failures.some((f) => /qbr/.test(f.reason ?? "")),
    "without hybrid, an XML naming qbr<id> is refused",
  );
  const lb = checkServerInputs(raw({ ports: [{ ...port0, hybrid: true }] }));
  assert.ok(
    lb.failures.some((f) => /hybrid: the hybrid layout is for openvswitch ports/.test(f.reason ?? "")),
  );
  const plainIn = checked();
  assert.equal("hybrid" in plainIn.ports[0], false, "absent unless true: old states do not diff");
  const inputs = ok.inputs as unknown as ServerInputs;
  const steps = materializeSteps(inputs, r.domainXml.qemu);
  const plug = steps.findIndex((s) => /plug the hybrid ports/.test(s.label ?? ""));
  const define = steps.findIndex((s) => /define domain/.test(s.label ?? ""));
  assert.ok(plug >= 0 && plug < define, "plumbing before define");
  const d = tap.slice(3);
  assert.match(steps[plug].script, new RegExp(`ip link add qvb${d} type veth peer name qvo${d}`));
  assert.match(steps[plug].script, new RegExp(`ip link set qvb${d} master qbr${d}`));
  assert.match(steps[plug].script, new RegExp(`add-port kvlo-1a2b3c4d qvo${d} .*kvmlab-owner=`));
  // On a migration's destination too (define: false still plugs).
  assert.ok(
    materializeSteps(inputs, r.domainXml.qemu, { define: false }).some((s) =>
      /plug the hybrid/.test(s.label ?? ""),
    ),
  );
  const del = deleteStep(inputs).script;
  assert.ok(
    del.indexOf(`del-port qvo${d}`) > del.indexOf("undefine"),
    "unplugged after the domain is gone, and only past the UUID guard",
  );
  assert.doesNotMatch(deleteStep(plainIn).script, /qbr/);
});

test("review L6: every define of a raw XML (no kvmlab element) sets the owner-only metadata again right after it", () => {
  const i = { ...checked(), owner: "lab/dev/Server/web1", project: "Default/demo" };
  const raw = `<domain type='qemu'><name>web1</name><uuid>${i.uuid}</uuid><memory unit='MiB'>64</memory></domain>`;
  const steps = materializeSteps(i, raw);
  const define = steps.findIndex((s) => (s.label ?? "").startsWith("define domain"));
  assert.ok(define > 0);
  const set = steps[define + 1];
  assert.ok(set !== undefined, "a step follows the define");
  assert.match(
    set.script,
    /metadata '?web1'? --uri \S+ --key kvmlab --set '<instance><project>Default\/demo<\/project><owner>lab\/dev\/Server\/web1<\/owner><\/instance>' --config \$live/,
  );
  // A rendered XML carries the element itself; a migration's destination (no define) sets nothing.
  assert.ok(!materializeSteps(i, i.domainXml.qemu).some((s) => /metadata .* --set/.test(s.script)));
  assert.ok(!materializeSteps(i, raw, { define: false }).some((s) => /metadata .* --set/.test(s.script)));
});
