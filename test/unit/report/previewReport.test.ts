/**
 * kvmlab preview-report: golden Markdown for the reviews that matter (a flavor resize, an image
 * change that replaces a server, a load balancer member added, a deleted network, a secret
 * change), built from REAL rendered artifacts (templates/) inside documents of the shape
 * `pulumi preview --json` prints; plus the real CLI's shape from a fixture, trimming, and the
 * command line.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  lineDiff,
  parsePreviewDigest,
  PreviewInputError,
  renderPreviewReport,
  SECRET_SIG,
  SIG_KEY,
  type JsonObject,
  type PreviewDigest,
  type PreviewStep,
} from "../../../report/preview";
import {
  renderDomainXml,
  renderHaproxyCfg,
  toDomainView,
  toHaproxyView,
  type DomainSpec,
  type HaproxySpec,
} from "../../../templates";
import { expectGolden, repoRoot, tempDir } from "../templates/support";

const STACK = "dev";
const PROJECT = "shop";
const urn = (type: string, name: string, parent = ""): string =>
  `urn:pulumi:${STACK}::${PROJECT}::${parent}${type}::${name}`;
const PROVIDER = "exports.handler = __f0; /* serialized provider */\nfunction __f0() {}\n";

function state(type: string, name: string, inputs: JsonObject, extra: JsonObject = {}): JsonObject {
  return {
    urn: urn(type, name, "kvmlab:compute:Server$"),
    custom: true,
    id: `${name}-id`,
    type,
    inputs: { __provider: PROVIDER, ...inputs },
    ...extra,
  };
}

function step(
  op: string,
  type: string,
  name: string,
  olds?: JsonObject,
  news?: JsonObject,
  more: Partial<PreviewStep> = {},
): PreviewStep {
  return {
    op,
    urn: urn(type, name, "kvmlab:compute:Server$"),
    provider: `urn:pulumi:${STACK}::${PROJECT}::pulumi:providers:pulumi-nodejs::default::04da6b54`,
    ...(olds ? { oldState: state(type, name, olds) as PreviewStep["oldState"] } : {}),
    ...(news ? { newState: state(type, name, news) as PreviewStep["newState"] } : {}),
    detailedDiff: null,
    ...more,
  };
}

function digest(steps: PreviewStep[], summary: Record<string, number>): PreviewDigest {
  return { config: { "kvmlab:hostKey": "[secret]" }, steps, duration: 4_200_000_000, changeSummary: summary };
}

const SERVER = "pulumi-nodejs:dynamic/kvmlab:Server";
const spec = (flavor: string, memoryMiB: number, image = "cirros"): DomainSpec => ({
  name: "shop-web1",
  uuid: "6f1c8a52-3b7e-4d21-9a0c-5e2f7b8d9c10",
  type: "kvm",
  vcpus: 1,
  memoryMiB,
  boot: { kind: "disk", disk: `/var/lib/kvmlab/instances/shop-web1/disk.qcow2` },
  seedIso: "/var/lib/kvmlab/instances/shop-web1/seed.iso",
  nics: [
    {
      bridge: "brq1a2b3c4d5e6",
      driver: "linuxbridge",
      target: "tap0a1b2c3d4e5",
      mac: "fa:16:3e:00:00:01",
      mtu: 1450,
    },
  ],
  serialLog: "/var/lib/kvmlab/instances/shop-web1/console.log",
  vnc: { listen: "127.0.0.1", port: 5901 },
  metadata: { lab: "shop", stack: "shop", project: "", server: "web1", image, flavor },
});
const xml = (flavor: string, mem: number, image?: string): { kvm: string; qemu: string } => ({
  kvm: renderDomainXml(toDomainView(spec(flavor, mem, image))),
  qemu: renderDomainXml(toDomainView({ ...spec(flavor, mem, image), type: "qemu" })),
});
const serverInputs = (flavor: string, mem: number, image = "cirros"): JsonObject => ({
  name: "web1",
  image,
  flavorName: flavor,
  vcpus: 1,
  ramMiB: mem,
  domainXml: xml(flavor, mem, image),
  hosts: [{ name: "hv1", address: "10.255.0.11", privateKey: "[secret]" }],
});

test("flavor resize: an update, no replace flagged, the <memory> lines of the domain XML as a line diff", () => {
  const olds = serverInputs("m1.tiny", 128);
  const news = {
    ...serverInputs("m1.small", 192),
    changePlan: "cold resize m1.tiny (1 vCPU, 128 MiB) -> m1.small (1 vCPU, 192 MiB)",
  };
  const d = digest(
    [step("update", SERVER, "web1", olds, news, { diffReasons: ["flavorName", "ramMiB", "domainXml"] })],
    {
      update: 1,
      same: 8,
    },
  );
  const md = renderPreviewReport(parsePreviewDigest(JSON.stringify(d)));
  expectGolden("preview-report/flavor-resize.md", md);
  assert.doesNotMatch(md, /CAUTION|replace/i, "a resize replaces nothing");
  const diffLines = md.split("\n").filter((l) => /^[-+] /.test(l));
  assert.deepEqual(
    diffLines,
    [
      "-  <memory unit='MiB'>128</memory>",
      "-  <currentMemory unit='MiB'>128</currentMemory>",
      "+  <memory unit='MiB'>192</memory>",
      "+  <currentMemory unit='MiB'>192</currentMemory>",
      "-      <kvmlab:flavor>m1.tiny</kvmlab:flavor>",
      "+      <kvmlab:flavor>m1.small</kvmlab:flavor>",
    ].sort((a, b) => md.indexOf(a) - md.indexOf(b)),
  );
  assert.match(
    md,
    /<code>domainXml\.kvm<\/code>, <code>domainXml\.qemu<\/code> — libvirt domain XML, \+3 −3 lines \(the same change in each\)/,
  );
  assert.doesNotMatch(md, /serialized provider/, "the provider's closure is never shown");
});

test("image change: the replacement is flagged at the top with the property that forced it", () => {
  const olds = serverInputs("m1.small", 192, "cirros");
  const news = serverInputs("m1.small", 192, "ubuntu-22.04");
  const d = digest(
    [
      step("create-replacement", SERVER, "web1", olds, news, {
        replaceReasons: ["image"],
        diffReasons: ["image", "domainXml"],
      }),
      step("replace", SERVER, "web1", olds, news, {
        replaceReasons: ["image"],
        diffReasons: ["image", "domainXml"],
      }),
      step("delete-replaced", SERVER, "web1", olds, undefined),
    ],
    { replace: 1, same: 8 },
  );
  const md = renderPreviewReport(parsePreviewDigest(JSON.stringify(d)));
  expectGolden("preview-report/image-replace.md", md);
  const caution = md.indexOf("[!CAUTION]");
  assert.ok(
    caution > 0 && caution < md.indexOf("#### Changes"),
    "the replacement is flagged before the details",
  );
  assert.match(
    md,
    /\| \*\*replace\*\* \| <code>web1<\/code> \| <code>kvmlab:Server<\/code> \| <code>image<\/code>: <code>&quot;cirros&quot;<\/code> → <code>&quot;ubuntu-22.04&quot;<\/code> — create-before-delete \|/,
  );
  assert.equal(md.match(/<b>\+- replace<\/b>/g)?.length, 1, "the three replacement steps are one entry");
});

const lbSpec = (members: number): HaproxySpec => ({
  name: "web-lb",
  vipAddress: "10.10.1.4",
  statsSocket: "/var/lib/kvmlab/lb/web-lb/haproxy.sock",
  maxconn: 20000,
  listeners: [
    {
      name: "http",
      protocol: "HTTP",
      protocolPort: 80,
      defaultPool: {
        name: "web-pool",
        protocol: "HTTP",
        lbAlgorithm: "ROUND_ROBIN",
        healthMonitor: { type: "HTTP", delay: 5, timeout: 3, maxRetries: 2, urlPath: "/health" },
        members: Array.from({ length: members }, (_, i) => ({
          name: `web-${i}`,
          address: `10.10.1.${10 + i}`,
          protocolPort: 80,
        })),
      },
    },
  ],
});

test("load balancer member added: the haproxy.cfg line diff shows the new server line", () => {
  const LB = "pulumi-nodejs:dynamic/kvmlab:LoadBalancer";
  const inputs = (n: number): JsonObject => ({
    name: "web-lb",
    vip: "10.10.1.4",
    members: Array.from({ length: n }, (_, i) => `10.10.1.${10 + i}:80`),
    haproxyCfg: renderHaproxyCfg(toHaproxyView(lbSpec(n))),
  });
  const d = digest(
    [
      step("create", SERVER, "web-2", undefined, serverInputs("m1.small", 192)),
      step("update", LB, "web-lb", inputs(2), inputs(3), { diffReasons: ["members", "haproxyCfg"] }),
    ],
    { create: 1, update: 1, same: 12 },
  );
  const md = renderPreviewReport(parsePreviewDigest(JSON.stringify(d)));
  expectGolden("preview-report/lb-member-added.md", md);
  assert.match(md, /<code>haproxyCfg<\/code> — haproxy\.cfg, \+1 −0 lines:/);
  assert.match(md, /^\+ {4}server web-2 10\.10\.1\.12:80 /m);
  assert.match(md, /\| <code>members\[2\]<\/code> \| — \| <code>&quot;10\.10\.1\.12:80&quot;<\/code> \|/);
  assert.doesNotMatch(md, /CAUTION/);
});

test("deleted network: flagged at the top as a delete", () => {
  const NET = "pulumi-nodejs:dynamic/kvmlab:Network";
  const SUB = "pulumi-nodejs:dynamic/kvmlab:Subnet";
  const d = digest(
    [
      step("delete", SUB, "db-subnet", {
        cidr: "10.10.3.0/24",
        dnsmasqConf: "interface=ns-db\ndhcp-range=10.10.3.10,10.10.3.200\n",
      }),
      step("delete", NET, "db-net", { kind: "selfservice", driver: "openvswitch", vni: 1003 }),
    ],
    { delete: 2, same: 20 },
  );
  const md = renderPreviewReport(parsePreviewDigest(JSON.stringify(d)));
  expectGolden("preview-report/network-deleted.md", md);
  assert.match(md, /\*\*:warning: 2 deletes\.\*\*/);
  assert.match(
    md,
    /\| \*\*delete\*\* \| <code>db-net<\/code> \| <code>kvmlab:Network<\/code> \| no longer in the program/,
  );
  assert.ok(md.indexOf("db-net") < md.indexOf("<sub>"), "the flagged table is the deletes' list");
});

test("secret change: values never shown, the change still reported", () => {
  const USER = "pulumi-nodejs:dynamic/kvmlab:User";
  const wrap = (v: string): JsonObject => ({ [SIG_KEY]: SECRET_SIG, value: v });
  const olds: JsonObject = {
    name: "alice",
    password: "[secret]",
    recoveryCodes: wrap("old-code-1\nold-code-2\n"),
    userData: "#cloud-config\npassword: hunter2\n",
  };
  const news: JsonObject = {
    name: "alice",
    password: "[secret]",
    recoveryCodes: wrap("new-code-1\nnew-code-2\n"),
    userData: "#cloud-config\npassword: correct-horse\n",
  };
  // Only its secretness differs (the CLI masks a whole secret as "[secret]"); the engine did not name it.
  olds.sshHosts = "[secret]";
  news.sshHosts = [{ name: "hv1", privateKey: "[secret]" }];
  const s = step("update", USER, "alice", olds, news, {
    diffReasons: ["password", "recoveryCodes", "userData"],
  });
  s.oldState!.additionalSecretOutputs = ["userData"];
  s.newState!.additionalSecretOutputs = ["userData"];
  const md = renderPreviewReport(parsePreviewDigest(JSON.stringify(digest([s], { update: 1, same: 3 }))));
  expectGolden("preview-report/secret-change.md", md);
  assert.doesNotMatch(md, /sshHosts/, "a secretness-only difference the engine did not report is left out");
  for (const leak of ["hunter2", "correct-horse", "old-code", "new-code"])
    assert.ok(!md.includes(leak), `${leak} leaked`);
  assert.match(md, /\| <code>recoveryCodes<\/code> \| \[secret\] \| \[secret\] \(changed; value hidden\) \|/);
  assert.match(md, /\| <code>userData<\/code> \| \[secret\] \| \[secret\] \(changed; value hidden\) \|/);
  // "[secret]" on both sides is the real CLI's masking: the change is known only from diffReasons.
  assert.match(md, /\| <code>password<\/code> \| \[secret\] \| \[secret\] \(changed; value hidden\) \|/);
});

test("the real CLI's document (fixture of its documented shape) renders, counts from changeSummary", () => {
  const file = path.join(repoRoot(), "test", "fixtures", "preview", "pulumi-preview.json");
  const d = parsePreviewDigest(fs.readFileSync(file, "utf8"));
  const md = renderPreviewReport(d);
  expectGolden("preview-report/pulumi-cli-fixture.md", md);
  assert.match(md, /\*\*1 to replace · 1 to delete · 1 to update · 1 to create · 6 unchanged\*\*/);
  assert.match(md, /delete-before-replace/, "delete-replaced before create-replacement means downtime");
  assert.doesNotMatch(md, /pulumi:pulumi:Stack/);
});

test("trimming: a report over the limit stays under it and names what it cut", () => {
  const NET = "pulumi-nodejs:dynamic/kvmlab:Subnet";
  const steps: PreviewStep[] = [];
  for (let i = 0; i < 40; i++) {
    const lines = (tag: string): string =>
      Array.from({ length: 300 }, (_, n) => `dhcp-host=fa:16:3e:00:${i}:${n},10.${i}.${n}.${tag}`).join(
        "\n",
      ) + "\n";
    steps.push(step("update", NET, `subnet-${i}`, { hostsFile: lines("1") }, { hostsFile: lines("2") }));
  }
  const md = renderPreviewReport({ steps, changeSummary: { update: 40 } });
  assert.ok(md.length <= 64_000, `${md.length} characters`);
  assert.match(
    md,
    /✂️ \*\*Trimmed\*\* to stay under GitHub's 65,536-character comment limit: line diffs left out for <code>subnet-\d+<\/code>, .* and \d+ more/,
  );
  assert.match(
    md,
    /<b>~ update<\/b> <code>subnet-0<\/code>[\s\S]*```diff/,
    "the first ones keep their diffs",
  );
  const unlimited = renderPreviewReport(
    { steps, changeSummary: { update: 40 } },
    { maxChars: 0, maxDiffLines: 10_000 },
  );
  assert.ok(unlimited.length > 64_000 && !unlimited.includes("Trimmed"));
});

test("line diff: Myers hunks with context, exactly the changed lines", () => {
  const a = ["a", "b", "c", "d", "e", "f", "g", "h"].join("\n") + "\n";
  const b = ["a", "b", "c", "D", "e", "f", "g", "h", "i"].join("\n") + "\n";
  assert.deepEqual(lineDiff(a, b, 1).lines, [
    "@@ -3,3 +3,3 @@",
    " c",
    "-d",
    "+D",
    " e",
    "@@ -8,1 +8,2 @@",
    " h",
    "+i",
  ]);
});

test("bad input is named: empty, text display, streamed events, wrong field types", () => {
  assert.throws(() => parsePreviewDigest(""), /empty: pulumi preview printed nothing/);
  assert.throws(
    () => parsePreviewDigest("Previewing update (dev)\n"),
    /not JSON: give the output of `pulumi preview --json`/,
  );
  assert.throws(() => parsePreviewDigest('{"sequence":0}\n{"sequence":1}\n'), /stream of engine events/);
  assert.throws(
    () => parsePreviewDigest('{"steps":[{"op":"update"}]}'),
    /steps\[0\]\.urn: expected a string/,
  );
  assert.throws(() => parsePreviewDigest('{"version":3,"deployment":{}}'), PreviewInputError);
});

test("kvmlab preview-report: file and stdin, --out, exit codes", () => {
  const bin = path.join(repoRoot(), "bin", "kvmlab.js");
  const fixture = path.join(repoRoot(), "test", "fixtures", "preview", "pulumi-preview.json");
  const { dir, cleanup } = tempDir();
  try {
    const fromFile = spawnSync(process.execPath, [bin, "preview-report", fixture], { encoding: "utf8" });
    assert.equal(fromFile.status, 0, fromFile.stderr);
    const fromStdin = spawnSync(process.execPath, [bin, "preview-report"], {
      input: fs.readFileSync(fixture),
      encoding: "utf8",
    });
    assert.equal(fromStdin.stdout, fromFile.stdout);
    const out = path.join(dir, "report.md");
    assert.equal(spawnSync(process.execPath, [bin, "preview-report", fixture, "--out", out]).status, 0);
    assert.equal(fs.readFileSync(out, "utf8"), fromFile.stdout);
    const bad = spawnSync(process.execPath, [bin, "preview-report", "-"], { input: "{}", encoding: "utf8" });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /standard input: no steps, changeSummary or diagnostics/);
    const usage = spawnSync(process.execPath, [bin, "preview-report", fixture, "--max-chars", "12"], {
      encoding: "utf8",
    });
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /--max-chars must be 0/);
  } finally {
    cleanup();
  }
});
