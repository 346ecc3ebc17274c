/**
 * Flavor provider without hosts: check (every field, defaults, unknowns), extra-spec
 * validation, the deterministic flavorId, the pure diff (sizes replace; specs, description and
 * hosts update; drift updates), the record comparison, the guarded delete step, and
 * serialization. Says nothing about hosts (see test/integration/image.test.ts for records).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  checkExtraSpecs,
  checkFlavorInputs,
  diffFlavor,
  flavorDeleteStep,
  flavorId,
  flavorProvider,
  flavorRecord,
  flavorState,
  type FlavorInputs,
  type FlavorOutputs,
} from "../../../provider/flavor";
import { UNKNOWN, hostPoolStats, type HostConnection } from "../../../provider/host";
import { assertSerializable } from "../../harness/serialization";
import { PIN, testHost } from "./fixtures";

function host(name: string, n: number): HostConnection {
  return testHost(name, n, { uplink: "", tunnelAddress: "" });
}
const HOSTS = [host("hv1", 1), host("hv2", 2)];

function inputs(over: Record<string, unknown> = {}): FlavorInputs {
  const { inputs: i, failures } = checkFlavorInputs({
    flavorName: "m1.small",
    vcpus: 2,
    ramMiB: 2048,
    hosts: HOSTS,
    ...over,
  });
  assert.deepEqual(failures, []);
  return i as unknown as FlavorInputs;
}

function outputs(i: FlavorInputs): FlavorOutputs {
  return {
    ...i,
    flavorId: flavorId(i),
    controller: i.hosts[0].name,
    hostKeys: { hv1: PIN, hv2: PIN },
    realized: { record: true, matches: true },
  };
}

test("check fills defaults: no root size (image size), no ephemeral disk, no swap, no specs", () => {
  const i = inputs();
  assert.equal(i.diskGiB, 0);
  assert.equal(i.ephemeralGiB, 0);
  assert.equal(i.swapMiB, 0);
  assert.deepEqual(i.extraSpecs, {});
  assert.equal(i.description, "");
  assert.equal(i.hosts[0].port, 22);
});

test("fails on every bad field, naming it and what is allowed", () => {
  const { failures } = checkFlavorInputs({
    flavorName: "m1 small",
    vcpus: 0,
    ramMiB: 10.5,
    diskGiB: -1,
    ephemeralGiB: "5",
    swapMiB: 2 ** 40,
    description: "two\nlines",
    extraSpecs: { "hw:cpu_policy": "fast" },
    hosts: [],
  });
  assert.deepEqual(
    failures.map((f) => f.property),
    [
      "flavorName",
      "vcpus",
      "ramMiB",
      "diskGiB",
      "ephemeralGiB",
      "swapMiB",
      "extraSpecs",
      "description",
      "hosts",
    ],
  );
  assert.match(failures[1].reason, /^vcpus: expected the number of virtual CPUs, an integer 1-255, got 0/);
  assert.match(failures[6].reason, /^extraSpecs.hw:cpu_policy: expected "shared" or "dedicated"/);
  assert.match(failures[8].reason, /^hosts: expected a non-empty list of hosts/);
});

test("extra specs: known Nova keys and kvmlab: keys pass; unknown keys, bad values and topology errors fail", () => {
  assert.deepEqual(
    checkExtraSpecs(
      {
        "hw:cpu_sockets": "1",
        "hw:cpu_cores": "2",
        "hw:cpu_threads": "2",
        "hw:mem_page_size": "2MB",
        "quota:disk_read_iops_sec": "500",
        "trait:HW_CPU_X86_AVX2": "required",
        "kvmlab:tier": "web frontend",
      },
      4,
    ),
    [],
  );
  const errors = checkExtraSpecs(
    {
      "hw:cpu_sockets": "2",
      "hw:cpu_cores": "2",
      "hw:cpu_threads": "2",
      "foo:bar": "1",
      "hw:numa_nodes": "9",
      "kvmlab:x": "bad\u0001",
      "quota:cpu_shares": "-1",
    },
    4,
  );
  assert.equal(errors.length, 5, errors.join("\n"));
  assert.ok(errors.some((e) => /^extraSpecs\."foo:bar": unknown key; use a Nova key/.test(e)));
  assert.ok(errors.some((e) => /hw:numa_nodes: 9 is more than the flavor's 4 vcpus/.test(e)));
  assert.ok(errors.some((e) => /must equal vcpus \(4\)/.test(e)));
  assert.ok(errors.some((e) => /kvmlab:x: expected printable text/.test(e)));
  assert.ok(errors.some((e) => /quota:cpu_shares: expected a non-negative integer/.test(e)));
  assert.deepEqual(checkExtraSpecs(["x"], 1), [
    'extraSpecs: expected a map of string keys to string values, got ["x"]',
  ]);
});

test("unknowns are accepted during preview", () => {
  const { failures } = checkFlavorInputs({
    flavorName: UNKNOWN,
    vcpus: UNKNOWN,
    ramMiB: UNKNOWN,
    diskGiB: UNKNOWN,
    extraSpecs: { "hw:cpu_policy": UNKNOWN },
    description: UNKNOWN,
    hosts: UNKNOWN,
  });
  assert.deepEqual(failures, []);
});

test("flavorId is a UUID fixed by name and sizes, not by specs or description", () => {
  const a = flavorId(inputs());
  assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(flavorId(inputs({ extraSpecs: { "hw:cpu_policy": "shared" }, description: "x" })), a);
  assert.notEqual(flavorId(inputs({ ramMiB: 4096 })), a);
  assert.notEqual(flavorId(inputs({ flavorName: "m1.large" })), a);
});

test("diff is pure: no change opens nothing; sizes replace; specs, description and hosts update", () => {
  const before = hostPoolStats();
  const olds = outputs(inputs());
  assert.deepEqual(diffFlavor(olds, inputs()), {
    changes: false,
    replaces: [],
    stables: ["flavorId", "flavorName", "vcpus", "ramMiB", "diskGiB", "ephemeralGiB", "swapMiB"],
    deleteBeforeReplace: false,
  });
  assert.deepEqual(diffFlavor(olds, inputs({ vcpus: 4 })).replaces, ["vcpus"]);
  assert.deepEqual(diffFlavor(olds, inputs({ ramMiB: 4096, diskGiB: 10 })).replaces, ["ramMiB", "diskGiB"]);
  const specs = diffFlavor(olds, inputs({ extraSpecs: { "hw:cpu_policy": "dedicated" } }));
  assert.equal(specs.changes, true);
  assert.deepEqual(specs.replaces, []);
  assert.deepEqual(diffFlavor(olds, inputs({ description: "general purpose" })).replaces, []);
  assert.equal(diffFlavor(olds, inputs({ hosts: [HOSTS[1], HOSTS[0]] })).changes, true);
  assert.deepEqual(diffFlavor(olds, { ...inputs(), vcpus: UNKNOWN as unknown as number }).replaces, [
    "vcpus",
  ]);
  // Spec order does not matter.
  const two = outputs(inputs({ extraSpecs: { "hw:cpu_policy": "shared", "hw:boot_menu": "true" } }));
  assert.equal(
    diffFlavor(two, inputs({ extraSpecs: { "hw:boot_menu": "true", "hw:cpu_policy": "shared" } })).changes,
    false,
  );
  assert.deepEqual(hostPoolStats(), before);
});

test("drift found by refresh (record changed on the host) makes an update, not a replace", () => {
  const olds = { ...outputs(inputs()), realized: { record: true, matches: false } };
  const d = diffFlavor(olds, inputs());
  assert.equal(d.changes, true);
  assert.deepEqual(d.replaces, []);
});

test("flavorState compares the host's record with the inputs", () => {
  const i = inputs({ extraSpecs: { "hw:cpu_policy": "shared" } });
  const rec = flavorRecord(i);
  assert.deepEqual(flavorState(i, `${JSON.stringify(rec, null, 2)}\n`), { record: true, matches: true });
  assert.deepEqual(flavorState(i, JSON.stringify({ ...rec, vcpus: 8 })), { record: true, matches: false });
  assert.deepEqual(flavorState(i, ""), { record: false, matches: false });
  assert.throws(() => flavorState(i, "{broken"), /record flavor\/m1.small on the host is not valid JSON/);
});

test("the delete step removes the record only when it still carries this flavor's id", () => {
  const id = flavorId(inputs());
  const step = flavorDeleteStep("m1.small", id);
  assert.match(
    step.script,
    new RegExp(`grep -q '"flavorId": "${id}"' /var/lib/kvmlab/records/flavor/m1.small.json`),
  );
  assert.throws(() => flavorDeleteStep("m1.small", "x'; rm -rf /"), /invalid flavorId/);
  assert.throws(() => flavorDeleteStep("a;b", id), /record name: expected a name/);
});

test("outputs survive a JSON round trip", () => {
  const o = outputs(inputs({ extraSpecs: { "kvmlab:a": "b" } }));
  assert.deepEqual(JSON.parse(JSON.stringify(o)), o);
});

test("the flavor provider is serialization-safe and its pure methods work after loading back", async () => {
  const { provider, text } = await assertSerializable(flavorProvider, {
    methods: ["check", "diff", "create", "read", "update", "delete"],
    forbid: [/handlebars/, /require\("yaml"\)/],
  });
  assert.doesNotMatch(text, /^const \w+ = require\("node-ssh"\);$/m);
  const check = provider.check as (o: object, n: object) => Promise<{ failures: { property: string }[] }>;
  const r = await check({}, { flavorName: "x", vcpus: 0, ramMiB: 128, hosts: HOSTS });
  assert.deepEqual(
    r.failures.map((f) => f.property),
    ["vcpus"],
  );
});

test("the record carries the identity project of its owner (issue 14), and none without one", () => {
  const withProject = flavorRecord(inputs({ owner: "lab/dev/Flavor/m1.small/project=Default%2Fdemo" }));
  assert.equal(withProject.project, "Default/demo");
  assert.ok(
    !("project" in flavorRecord(inputs({ owner: "lab/dev/Flavor/m1.small" }))),
    "records stay as before",
  );
});
