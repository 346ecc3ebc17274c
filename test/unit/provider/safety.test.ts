/**
 * Safe inputs (issue 15): inputs that carry whole configs or host paths are parsed against an
 * allow-list, and each refusal names the field and the refused directive, element or path.
 * Every case here was accepted before.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import {
  UNKNOWN,
  checkNetworkInputs,
  networkProvider,
  pinnedHost,
  recordHostKeys,
  checkImageInputs,
  checkServerInputs,
  checkSubnetInputs,
  dhcpPaths,
  type HostConnection,
} from "../../../provider";
import { PIN, serverRaw, testHost } from "./fixtures";

const hosts: HostConnection[] = [testHost("hv1", 1)];
const paths = dhcpPaths("lan", "v4");
const CONF = [
  "port=0",
  `interface=${paths.nsDevice}`,
  "except-interface=lo",
  "bind-interfaces",
  "no-resolv",
  "dhcp-authoritative",
  `dhcp-leasefile=${paths.leaseFile}`,
  `pid-file=${paths.pidFile}`,
  "dhcp-range=set:v4,10.10.0.2,10.10.0.254,255.255.255.0,86400",
  "dhcp-option=tag:v4,option:router,10.10.0.1",
].join("\n");

function subnet(dnsmasqConf: string) {
  return checkSubnetInputs({
    subnetName: "v4",
    networkName: "lan",
    networkBridge: "kvlb-1a2b3c4d",
    driver: "linuxbridge",
    hosts,
    cidr: "10.10.0.0/24",
    dnsmasqConf,
  });
}

test("dnsmasqConf: a rendered config passes; root-level directives are refused by name", () => {
  assert.deepEqual(subnet(CONF).failures, []);
  const cases: [string, RegExp][] = [
    ["user=root", /directive "user" is not allowed/],
    ["dhcp-script=/tmp/x.sh", /directive "dhcp-script" is not allowed/],
    ["tftp-root=/", /directive "tftp-root" is not allowed/],
    ["enable-tftp", /directive "enable-tftp" is not allowed/],
    ["conf-dir=/etc/dnsmasq.d", /directive "conf-dir" is not allowed/],
    ["conf-file=/etc/shadow", /directive "conf-file" is not allowed/],
    ["dhcp-option=tag:v4,option:router,10.0.0.1 $(reboot)", /directive "dhcp-option" has the value/],
  ];
  for (const [line, re] of cases) {
    const { failures } = subnet(`${CONF}\n${line}`);
    assert.equal(failures.length, 1, line);
    assert.equal(failures[0].property, "dnsmasqConf");
    assert.match(failures[0].reason, re, line);
  }
  const lease = subnet(CONF.replace(`dhcp-leasefile=${paths.leaseFile}`, "dhcp-leasefile=/etc/cron.d/x"));
  assert.match(lease.failures[0]?.reason ?? "", /directive "dhcp-leasefile" must be/);
});

function server(over: (xml: string) => string, raw: Record<string, unknown> = {}) {
  const base = serverRaw(hosts);
  const xml = base.domainXml as { kvm: string; qemu: string };
  return checkServerInputs({
    ...base,
    domainXml: { kvm: over(xml.kvm), qemu: over(xml.qemu) },
    ...raw,
  });
}

test("domainXml: host block devices, ethernet scripts, foreign bridges, host files and QEMU arguments are refused", () => {
  assert.deepEqual(server((x) => x).failures, []);
  const disk = (inner: string) => (x: string) => x.replace("<devices>", `<devices>\n${inner}`);
  const cases: [(x: string) => string, RegExp][] = [
    [
      disk("<disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vdb'/></disk>"),
      /a disk that is not a file/,
    ],
    [
      disk("<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vdb'/></disk>"),
      /the host file "\/etc\/shadow"/,
    ],
    [
      disk("<interface type='ethernet'><script path='/tmp/x'/><target dev='t1'/></interface>"),
      /not a bridge port/,
    ],
    [
      disk("<interface type='bridge'><source bridge='br-mgmt'/><target dev='t1'/></interface>"),
      /the bridge "br-mgmt" is not the bridge of one of the server's ports/,
    ],
    [disk("<hostdev mode='subsystem' type='pci'/>"), /a host device/],
    [
      (x) =>
        x.replace("</devices>", "</devices>\n<qemu:commandline><qemu:arg value='-x'/></qemu:commandline>"),
      /raw QEMU arguments/,
    ],
    [
      (x) => x.replace("<backend model='random'>/dev/urandom", "<backend model='random'>/dev/mem"),
      /RNG backend/,
    ],
  ];
  for (const [edit, re] of cases) {
    const { failures } = server(edit);
    assert.ok(failures.length > 0, String(re));
    assert.ok(
      failures.some((f) => f.property === "domainXml" && re.test(f.reason)),
      `${String(re)}: ${JSON.stringify(failures)}`,
    );
  }
});

test("image paths: canonical and inside the image store, so the image-in-use guard cannot be bypassed", () => {
  const img = (kernel: string) => ({
    image: {
      name: "cirros",
      kind: "kernel",
      disk: "",
      format: "qcow2",
      kernel,
      ramdisk: "/var/lib/kvmlab/images/cirros/ramdisk",
    },
  });
  for (const [p, re] of [
    ["/var/lib/kvmlab/images/cirros/./kernel", /canonical path/],
    ["/var/lib/kvmlab/images//cirros/kernel", /canonical path/],
    ["/etc/passwd", /in the image store/],
  ] as const) {
    const { failures } = server((x) => x.split("/var/lib/kvmlab/images/cirros/kernel").join(p), img(p));
    assert.ok(
      failures.some((f) => f.property === "image" && re.test(f.reason)),
      `${p}: ${JSON.stringify(failures)}`,
    );
  }
});

test("Image hostPath: canonical and never a pseudo file, kvmlab state or a secret", () => {
  const SHA = "a".repeat(64);
  for (const p of [
    "/proc/self/environ",
    "/etc/shadow",
    "/dev/zero",
    "/var/lib/kvmlab/records/ipam/x.json",
    "/srv//x",
    "/srv/./x",
  ]) {
    const { failures } = checkImageInputs({
      imageName: "tiny",
      hosts,
      kernel: { hostPath: p, sha256: SHA },
    });
    assert.ok(
      failures.some((f) => /hostPath/.test(f.reason)),
      `${p}: ${JSON.stringify(failures)}`,
    );
  }
  assert.deepEqual(
    checkImageInputs({ imageName: "tiny", hosts, kernel: { hostPath: "/srv/images/vmlinuz", sha256: SHA } })
      .failures,
    [],
  );
});

test("no predictable /tmp files written as root; seeds and the host lock are root's alone", () => {
  const { probeScript, infoStep, takeLockStep, materializeSteps } = {
    ...require("../../../provider/host/probe"),
    ...require("../../../provider/host/session"),
    ...require("../../../provider/server/steps"),
  } as {
    probeScript: (l: boolean) => string;
    infoStep: (n: string) => { script: string };
    takeLockStep: (label: string, wait: number) => { script: string };
    materializeSteps: (i: unknown, xml: string) => { label?: string; script: string }[];
  };
  assert.doesNotMatch(probeScript(true), /\/tmp\//);
  assert.doesNotMatch(infoStep("web1").script, /\/tmp\//);
  const { inputs } = checkServerInputs(serverRaw(hosts));
  const steps = materializeSteps(inputs, "<domain/>");
  for (const s of steps.filter((x) => /upload .*\/seed\//.test(x.label ?? "")))
    assert.match(s.script, /chmod 0600 /, `${s.label} is 0600`);
  assert.ok(
    steps.some((s) => /chmod 0700 .*\/seed'?$/m.test(s.script)),
    "the seed folder is 0700",
  );
  // The lock step, run by a local bash against a stand-in folder: the lock file is 0600.
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-lock-"));
  try {
    const script = takeLockStep("lock", 1).script.split("/var/lib/kvmlab").join(root);
    const r = spawnSync("bash", ["-c", `umask 022; ${script}`], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(fs.statSync(path.join(root, "lock")).mode & 0o777, 0o600);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("cloud-init: U+0085, U+2028 and U+2029 are refused, naming the field and the code point", () => {
  const base = serverRaw(hosts);
  const ci = base.cloudInit as { metaData: string; userData: string; networkConfig: string };
  for (const ch of ["\u0085", "\u2028", "\u2029"]) {
    const { failures } = checkServerInputs({
      ...base,
      cloudInit: { ...ci, userData: `${ci.userData}\n# x${ch}runcmd: [reboot]\n` },
    });
    const code = `U+${ch.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
    assert.ok(
      failures.some(
        (f) => f.property === "cloudInit" && f.reason.includes(`cloudInit.userData: contains ${code}`),
      ),
      `${code}: ${JSON.stringify(failures)}`,
    );
  }
});

test("the preview sentinel written literally is refused by create and update before any host command", async () => {
  const { inputs } = checkNetworkInputs({ networkName: "lan", kind: "selfservice", hosts });
  const literal = { ...inputs, mtu: UNKNOWN, hosts: [{ ...hosts[0], uplink: UNKNOWN }] };
  const p = networkProvider as unknown as Required<typeof networkProvider>;
  await assert.rejects(
    p.create(literal as never),
    /Network: hosts, mtu: the value contains Pulumi's preview placeholder/,
  );
  await assert.rejects(
    p.update("lan", { ...inputs, hostKeys: {}, realized: {} } as never, literal as never),
    /preview placeholder/,
  );
});

test("a host named constructor (or __proto__) pins like any other host", () => {
  for (const name of ["constructor", "__proto__", "toString"]) {
    const h = testHost(name, 1, { hostKey: "", trustOnFirstUse: true });
    assert.equal(pinnedHost(h, {}).hostKey, "", `${name}: nothing recorded, nothing pinned`);
    assert.equal(pinnedHost(h, { [name]: PIN }).hostKey, PIN);
    assert.deepEqual(recordHostKeys([h], {}), { [name]: "" });
  }
});

test("live migration: after an error only a certain outcome touches a host; the stream and the key are confined", () => {
  const { migrationOutcome, migrateStep, authorizeStep, MIGRATION_KEY_TTL_SEC } =
    require("../../../provider/server/migrate") as {
      MIGRATION_KEY_TTL_SEC: number;
      migrationOutcome: (s: unknown, d: unknown) => string;
      migrateStep: (n: string, d: HostConnection, c: boolean, t: number) => { script: string };
      authorizeStep: (f: string, pub: string, tag: string, from: string[]) => { script: string };
    };
  const running = { defined: true, state: "running" };
  const absent = { defined: false, state: "" };
  assert.equal(
    migrationOutcome(running, absent),
    "source",
    "runs on the source only: the destination may go",
  );
  assert.equal(migrationOutcome(absent, running), "destination", "completed: keep it");
  // Today's code read the source once and deleted the destination; these must touch nothing.
  assert.equal(migrationOutcome(running, running), "unknown");
  assert.equal(migrationOutcome(undefined, absent), "unknown", "source unreadable");
  assert.equal(migrationOutcome(running, undefined), "unknown", "destination unreadable");
  assert.equal(migrationOutcome(absent, absent), "unknown", "gone from both");
  assert.equal(migrationOutcome(running, { defined: true, state: "paused" }), "unknown");

  const dst = testHost("hv2", 2);
  const m = migrateStep("web1", dst, true, 60).script;
  assert.match(
    m,
    new RegExp(`--migrateuri '?tcp://${dst.tunnelAddress}'? `),
    "the stream goes over the tunnel address",
  );
  assert.match(
    m,
    new RegExp(`--listen-address '?${dst.tunnelAddress}'? `),
    "the destination listens there only",
  );
  const a = authorizeStep(
    "/root/.ssh/authorized_keys",
    "ssh-ed25519 AAAAC3Nz kvmlab",
    "kvmlab-migrate-web1-abc",
    ["10.255.0.11", "10.254.0.11"],
  ).script;
  assert.match(a, /from="10\.255\.0\.11,10\.254\.0\.11",no-agent-forwarding/);
  // The script as the destination runs it: the line carries an expiry-time about
  // MIGRATION_KEY_TTL_SEC ahead in the host's own clock, and a second run adds nothing.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-akf-"));
  try {
    const akf = path.join(dir, "ssh", "authorized_keys");
    const step = authorizeStep(akf, "ssh-ed25519 AAAAC3Nz kvmlab", "kvmlab-migrate-web1-abc", [
      "10.255.0.11",
    ]);
    for (let i = 0; i < 2; i++) {
      const r = spawnSync("bash", ["-c", step.script], { encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
    }
    const lines = fs.readFileSync(akf, "utf8").trim().split("\n");
    assert.equal(lines.length, 1, lines.join("\n"));
    const m =
      /^expiry-time="(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)",from="10\.255\.0\.11",no-agent-forwarding,no-X11-forwarding,no-port-forwarding,no-pty ssh-ed25519 AAAAC3Nz kvmlab-migrate-web1-abc$/.exec(
        lines[0],
      );
    assert.ok(m, lines[0]);
    const [, y, mo, d, h, mi, se] = m.map(Number);
    const ahead = (new Date(y, mo - 1, d, h, mi, se).getTime() - Date.now()) / 1000;
    assert.ok(
      ahead > MIGRATION_KEY_TTL_SEC - 60 && ahead <= MIGRATION_KEY_TTL_SEC + 1,
      `expires in ${ahead} s`,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
