/**
 * The kit's quota declaration (provider/kit/quota.ts): a toy resource on the real
 * defineResource with an in-memory ledger that applies core/identity.ts's arithmetic, so every
 * promise is checked without SSH: reserve before create (a refusal runs no create), release on a
 * failed create, reserve-first at update (a refused growth runs no update and changes nothing),
 * a project move, release at delete on the controller the state records (whatever order the
 * hosts have by then), the check of `project`, and which real providers declare a quota.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  defineResource,
  floatingIpProvider,
  keypairProvider,
  networkProvider,
  routerProvider,
  securityGroupProvider,
  serverProvider,
  subnetProvider,
  checkProjectRef,
  projectRefOf,
  type HostConnection,
  type QuotaLedger,
  type ResourceSpec,
} from "../../../provider";
import {
  applyReservation,
  quotaError,
  quotasWith,
  type Ledger,
  type Quotas,
  type Usage,
} from "../../../core/identity";

interface ToyIn {
  name: string;
  hosts: HostConnection[];
  rules: string[];
  owner: string;
  project: string;
}
interface ToyOut extends ToyIn {
  hostKeys: Record<string, string>;
}

const host = (name: string): HostConnection =>
  ({
    name,
    address: "127.0.0.1",
    port: 22,
    user: "root",
    privateKey: "k",
    hostKey: "SHA256:x",
  }) as HostConnection;

/** A ledger per (controller, project), refusing like the real one; records the call order. */
function fakeLedger(limits: Record<string, Partial<Quotas>>) {
  const books = new Map<string, Ledger>();
  const calls: string[] = [];
  const ledger: QuotaLedger = {
    async reserve(h, project, holder, usage) {
      calls.push(`reserve ${h.name} ${project} ${holder} ${JSON.stringify(usage)}`);
      const key = `${h.name}|${project}`;
      const r = applyReservation(books.get(key) ?? {}, quotasWith(limits[project] ?? {}), holder, usage);
      if (r.violations.length > 0) throw new Error(quotaError(project, r.violations));
      books.set(key, r.ledger);
    },
    async release(h, project, holders) {
      calls.push(`release ${h.name} ${project} ${holders.join(",")}`);
      const key = `${h.name}|${project}`;
      const l = { ...(books.get(key) ?? {}) };
      for (const x of holders) delete l[x];
      books.set(key, l);
    },
  };
  const held = (ctl: string, project: string): Ledger => books.get(`${ctl}|${project}`) ?? {};
  return { ledger, calls, held };
}

function toy(ledger: QuotaLedger, failCreate = false, failUpdate = false) {
  const ran: string[] = [];
  const spec: ResourceSpec<ToyIn, ToyOut> = {
    type: "Toy",
    inputKeys: ["name", "hosts", "rules", "owner"],
    outputKeys: ["hostKeys"],
    secretOutputs: [],
    check: (news) => ({ inputs: { ...news }, failures: [] }),
    diff: () => ({ changes: true, replaces: [], deleteBeforeReplace: false }),
    async create(i) {
      ran.push("create");
      if (failCreate) throw new Error("boom");
      return { id: i.name, outs: { ...i, hostKeys: {} } };
    },
    async read(_id, p) {
      return p;
    },
    async update(_id, _o, n) {
      ran.push("update");
      if (failUpdate) throw new Error("update failed");
      return { ...n, hostKeys: {} };
    },
    async delete() {
      ran.push("delete");
    },
    quota: {
      usage: (i: ToyIn): Usage => ({ securityGroups: 1, securityGroupRules: i.rules.length }),
      ledger,
      legacyHolders: (o: ToyIn) => [`toy:${o.name}`],
    },
  };
  return { p: defineResource(spec).provider, ran };
}

const inputs = (over: Partial<ToyIn> = {}): ToyIn => ({
  name: "g",
  hosts: [host("ctl"), host("hv2")],
  rules: ["a", "b"],
  owner: "p/s/Toy/g",
  project: "Default/demo",
  ...over,
});

test("kit quota: create reserves first under the owner as holder and records the controller", async () => {
  const f = fakeLedger({});
  const { p, ran } = toy(f.ledger);
  const outs = (await p.create!(inputs())).outs as ToyOut;
  assert.deepEqual(f.calls, [
    'reserve ctl Default/demo p/s/Toy/g {"securityGroups":1,"securityGroupRules":2}',
  ]);
  assert.deepEqual(ran, ["create"]);
  assert.equal((outs as unknown as { quotaController: string }).quotaController, "ctl");
  assert.deepEqual(f.held("ctl", "Default/demo"), {
    "p/s/Toy/g": { securityGroups: 1, securityGroupRules: 2 },
  });
});

test("kit quota: a refused create names quota, usage and limit and runs no create", async () => {
  const f = fakeLedger({ "Default/demo": { securityGroupRules: 3 } });
  const { p, ran } = toy(f.ledger);
  await p.create!(inputs({ name: "a", owner: "p/s/Toy/a" }));
  await assert.rejects(
    p.create!(inputs({ name: "b", owner: "p/s/Toy/b" })),
    /securityGroupRules: usage 2 \+ requested 2 exceeds limit 3/,
  );
  assert.deepEqual(ran, ["create"]);
  assert.deepEqual(Object.keys(f.held("ctl", "Default/demo")), ["p/s/Toy/a"]);
});

test("kit quota: a failed create releases its reservation", async () => {
  const f = fakeLedger({});
  const { p } = toy(f.ledger, true);
  await assert.rejects(p.create!(inputs()), /boom/);
  assert.deepEqual(f.held("ctl", "Default/demo"), {});
});

test("kit quota: no project charges nothing", async () => {
  const f = fakeLedger({});
  const { p } = toy(f.ledger);
  const outs = (await p.create!(inputs({ project: "" }))).outs as ToyOut;
  assert.deepEqual(f.calls, []);
  await p.delete!("g", outs);
  assert.deepEqual(f.calls, []);
});

test("kit quota: a grown rule count is reserved before the update; refused, nothing runs or changes", async () => {
  const f = fakeLedger({ "Default/demo": { securityGroupRules: 3 } });
  const { p, ran } = toy(f.ledger);
  const outs = (await p.create!(inputs())).outs as ToyOut;
  await assert.rejects(
    p.update!("g", outs, inputs({ rules: ["a", "b", "c", "d"] })),
    /securityGroupRules: usage 0 \+ requested 4 exceeds limit 3/,
  );
  assert.deepEqual(ran, ["create"]);
  assert.deepEqual(f.held("ctl", "Default/demo")["p/s/Toy/g"], { securityGroups: 1, securityGroupRules: 2 });
  await p.update!("g", outs, inputs({ rules: ["a", "b", "c"] }));
  assert.deepEqual(f.held("ctl", "Default/demo")["p/s/Toy/g"], { securityGroups: 1, securityGroupRules: 3 });
});

test("kit quota: a failed update restores the old charge", async () => {
  const f = fakeLedger({});
  const { p } = toy(f.ledger, false, true);
  const outs = (await p.create!(inputs())).outs as ToyOut;
  await assert.rejects(p.update!("g", outs, inputs({ rules: ["a", "b", "c"] })), /update failed/);
  assert.deepEqual(f.held("ctl", "Default/demo")["p/s/Toy/g"], { securityGroups: 1, securityGroupRules: 2 });
});

test("kit quota: a new project moves the charge (reserve there first, release here after)", async () => {
  const f = fakeLedger({});
  const { p } = toy(f.ledger);
  const outs = (await p.create!(inputs())).outs as ToyOut;
  const moved = await p.update!(
    "g",
    outs,
    inputs({ project: "Default/other", owner: "p/s/Toy/g/project=x" }),
  );
  assert.deepEqual(f.held("ctl", "Default/demo"), {});
  assert.deepEqual(Object.keys(f.held("ctl", "Default/other")), ["p/s/Toy/g/project=x"]);
  assert.equal((moved.outs as unknown as { quotaController: string }).quotaController, "ctl");
});

test("kit quota: delete releases on the recorded controller even after the hosts were reordered", async () => {
  const f = fakeLedger({});
  const { p } = toy(f.ledger);
  const outs = (await p.create!(inputs())).outs as ToyOut;
  await p.delete!("g", { ...outs, hosts: [host("hv2"), host("ctl")] });
  assert.deepEqual(f.calls.at(-1), "release ctl Default/demo p/s/Toy/g,toy:g");
  assert.deepEqual(f.held("ctl", "Default/demo"), {});
});

test("kit quota: a state from before quotaController releases on hosts[0], its legacy holder too", async () => {
  const f = fakeLedger({});
  const { p } = toy(f.ledger);
  await f.ledger.reserve(host("ctl"), "Default/demo", "toy:g", { securityGroups: 1 });
  const old = { ...inputs(), hostKeys: {} }; // no quotaController: written before the kit charged
  await p.delete!("g", old);
  assert.deepEqual(f.calls.at(-1), "release ctl Default/demo p/s/Toy/g,toy:g");
  assert.deepEqual(f.held("ctl", "Default/demo"), {});
});

test("kit quota: a controller dropped from hosts is an error naming it and the fix", async () => {
  const f = fakeLedger({});
  const { p, ran } = toy(f.ledger);
  const outs = (await p.create!(inputs())).outs as ToyOut;
  await assert.rejects(
    p.delete!("g", { ...outs, hosts: [host("hv2")] }),
    /quota ledger of this resource is on controller ctl \(recorded in the state\).*keep ctl in hosts/,
  );
  assert.deepEqual(ran, ["create", "delete"]);
});

test("kit quota: check validates and passes `project`; a new project is an update, not a replace", async () => {
  const f = fakeLedger({});
  const { p } = toy(f.ledger);
  const bad = await p.check!({} as never, { ...inputs(), project: "no spaces/allowed here" } as never);
  assert.match(bad.failures?.[0]?.reason ?? "", /project: expected "<domain>\/<project>"/);
  const ok = await p.check!({} as never, { ...inputs(), project: "Default/demo" } as never);
  assert.equal((ok.inputs as ToyIn).project, "Default/demo");
  const d = await p.diff!("g", { ...inputs(), hostKeys: {} }, inputs({ project: "Default/x" }));
  assert.equal(d.changes, true);
  assert.deepEqual(d.replaces ?? [], []);
  assert.equal(checkProjectRef("Default/demo"), undefined);
  assert.equal(projectRefOf("demo"), "Default/demo");
  assert.equal(projectRefOf("d1/demo"), "d1/demo");
});

test("kit quota: network, subnet, router, floating IP, security group and server declare a charge", async () => {
  // The kit validates `project` only for a resource that declares a quota.
  const providers = {
    networkProvider,
    subnetProvider,
    routerProvider,
    floatingIpProvider,
    securityGroupProvider,
    serverProvider,
  };
  for (const [n, prov] of Object.entries(providers)) {
    const c = await prov.check!({} as never, { project: "bad project" } as never);
    assert.ok(
      c.failures?.some((x) => x.property === "project" && /expected "<domain>\/<project>"/.test(x.reason)),
      n,
    );
  }
  const k = await keypairProvider.check!({} as never, { project: "bad project" } as never);
  assert.ok(!k.failures?.some((x) => x.property === "project"), "keypair charges nothing");
});
