/**
 * A hostile corpus (issue 15): more than 1,000 names and values (shell metacharacters, path
 * traversal, option injection, control characters, YAML and Unicode line breaks, bidi
 * overrides, over-long names, values of the wrong type) through EVERY provider's check and the
 * lab loader. 100 % must be refused, and refused by check, i.e. before any host command; each
 * refusal names the field.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  checkFlavorInputs,
  checkImageInputs,
  checkKeypairInputs,
  checkNetworkInputs,
  checkServerInputs,
  checkSubnetInputs,
  dhcpPaths,
  type HostConnection,
} from "../../../provider";
import { parseLab } from "../../../lab/parse";
import { serverRaw, testHost } from "./fixtures";

/** Characters no kvmlab name may hold: every ASCII one outside [A-Za-z0-9_.-], controls, Unicode traps. */
function badChars(): string[] {
  const out: string[] = [];
  for (let c = 0; c < 128; c++) {
    const ch = String.fromCharCode(c);
    if (!/[A-Za-z0-9_.-]/.test(ch)) out.push(ch);
  }
  return [
    ...out,
    "\u0085",
    "\u00a0",
    "\u2028",
    "\u2029",
    "\u202e",
    "\u200b",
    "\ufeff",
    "ü",
    "ı",
    "😀",
    "\ud800",
  ];
}

/** The corpus: each bad character in many positions and shapes, plus structural attacks. */
export function hostileCorpus(): unknown[] {
  const shapes = [
    (b: string) => b,
    (b: string) => `web${b}`,
    (b: string) => `${b}web`,
    (b: string) => `we${b}b`,
    (b: string) => `web1${b}rm -rf /`,
    (b: string) => `a${b}b${b}c`,
    (b: string) => `server-${b}-01`,
    (b: string) => `${b}${b}`,
    (b: string) => `lan${b}$(reboot)`,
    (b: string) => `v4${b}../../etc`,
    (b: string) => `x${b}`.repeat(3),
    (b: string) => `kvlb-1a2b${b}`,
    (b: string) => `n${b}--help`,
    (b: string) => `${"a".repeat(20)}${b}${"b".repeat(20)}`,
  ];
  const values = new Set<unknown>();
  for (const b of badChars()) for (const s of shapes) values.add(s(b));
  for (const v of ["", "-", "-rf", "--help", "a-", "-a", ".", "..", ".hidden", "x.", "_x", "x_"])
    values.add(v);
  for (let n = 64; n <= 300; n += 7) values.add("a".repeat(n));
  const typed: unknown[] = [0, 1, -1, 3.5, NaN, true, false, null, [], ["web"], {}, { name: "web" }];
  return [...values, ...typed];
}

const hosts: HostConnection[] = [testHost("hv1", 1)];
const SHA = "a".repeat(64);

/** Per provider: a valid input with `v` at a field, and the property its refusal names. */
const CASES: { what: string; property: string; check: (v: unknown) => { property: string }[] }[] = [
  {
    what: "Network.networkName",
    property: "networkName",
    check: (v) => checkNetworkInputs({ networkName: v, kind: "selfservice", hosts }).failures,
  },
  {
    what: "Network.hosts[0].name",
    property: "hosts",
    check: (v) =>
      checkNetworkInputs({ networkName: "lan", kind: "selfservice", hosts: [{ ...hosts[0], name: v }] })
        .failures,
  },
  {
    what: "Subnet.subnetName",
    property: "subnetName",
    check: (v) => {
      const p = dhcpPaths("lan", "v4");
      return checkSubnetInputs({
        subnetName: v,
        networkName: "lan",
        networkBridge: "kvlb-1a2b3c4d",
        driver: "linuxbridge",
        hosts,
        cidr: "10.10.0.0/24",
        dnsmasqConf: `interface=${p.nsDevice}\npid-file=${p.pidFile}\ndhcp-leasefile=${p.leaseFile}\n`,
      }).failures;
    },
  },
  {
    what: "Flavor.flavorName",
    property: "flavorName",
    check: (v) => checkFlavorInputs({ flavorName: v, vcpus: 1, ramMiB: 256, hosts }).failures,
  },
  {
    what: "Keypair.keyName",
    property: "keyName",
    check: (v) => checkKeypairInputs({ keyName: v }).failures,
  },
  {
    what: "Image.imageName",
    property: "imageName",
    check: (v) =>
      checkImageInputs({ imageName: v, hosts, kernel: { hostPath: "/srv/images/vmlinuz", sha256: SHA } })
        .failures,
  },
  {
    what: "Server.serverName",
    property: "serverName",
    check: (v) => checkServerInputs(serverRaw(hosts, { serverName: v })).failures,
  },
  {
    what: "Network.owner",
    property: "owner",
    check: (v) => checkNetworkInputs({ networkName: "lan", kind: "selfservice", hosts, owner: v }).failures,
  },
];

test("the hostile corpus has more than 1,000 distinct names and values", () => {
  assert.ok(hostileCorpus().length > 1000, `${hostileCorpus().length} values`);
});

for (const c of CASES) {
  test(`${c.what}: 100 % of the hostile corpus is refused by check, naming the field`, () => {
    const accepted: string[] = [];
    const corpus = hostileCorpus();
    for (const v of corpus) {
      const failures = c.check(v);
      if (!failures.some((f) => f.property === c.property)) accepted.push(JSON.stringify(v) ?? String(v));
    }
    assert.deepEqual(accepted.slice(0, 20), [], `${accepted.length} of ${corpus.length} accepted`);
  });
}

test("the lab loader refuses 100 % of the hostile corpus as a lab name and as a host name", () => {
  const text = fs.readFileSync(
    path.resolve(__dirname, "..", "..", "..", "..", "stacks", "three-tier.yaml"),
    "utf8",
  );
  assert.ok(parseLab(text).lab, "the base lab loads");
  const accepted: string[] = [];
  const corpus = hostileCorpus().filter((v) => typeof v === "string") as string[];
  for (const v of corpus) {
    for (const [from, to] of [
      ["name: three-tier\n", `name: ${JSON.stringify(v)}\n`],
      ["  - name: hv1\n", `  - name: ${JSON.stringify(v)}\n`],
    ]) {
      const { lab, issues } = parseLab(text.replace(from, to));
      if (lab !== null || issues.length === 0) accepted.push(`${from.trim()} → ${JSON.stringify(v)}`);
    }
  }
  assert.deepEqual(accepted.slice(0, 20), [], `${accepted.length} of ${corpus.length * 2} accepted`);
});
