/**
 * core/identity.ts: effective roles (direct, via groups, inherited from the domain and from
 * ancestor projects, implied chains, cycles), the project tree depth rule, implied-role refusals,
 * and quota arithmetic (defaults, -1, the reservation ledger, resize counting only the growth,
 * the error text naming quota, usage and limit).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  applyReservation,
  BOOTSTRAP_ROLES,
  checkImplies,
  checkProjectPlacement,
  checkQuotas,
  DEFAULT_QUOTAS,
  effectiveRoles,
  ledgerUsage,
  quotaError,
  quotasWith,
  quotaViolations,
  serverUsage,
  type IdentityModel,
} from "../../../core/identity";

const ROLES = BOOTSTRAP_ROLES.map((r) => ({ id: r.name, implies: r.implies }));

function model(over: Partial<IdentityModel> = {}): IdentityModel {
  return {
    projects: [
      { id: "D/top", domain: "D", parent: "" },
      { id: "D/mid", domain: "D", parent: "D/top" },
      { id: "D/leaf", domain: "D", parent: "D/mid" },
      { id: "E/other", domain: "E", parent: "" },
    ],
    groups: [{ id: "D/ops", members: ["D/alice", "D/bob"] }],
    roles: ROLES,
    assignments: [],
    ...over,
  };
}

test("a direct assignment gives the role and every role it implies (admin → manager → member → reader)", () => {
  const m = model({
    assignments: [
      {
        actor: { kind: "user", id: "D/alice" },
        target: { kind: "project", id: "D/top" },
        role: "admin",
        inherited: false,
      },
    ],
  });
  assert.deepEqual(effectiveRoles(m, "D/alice", "D/top"), ["admin", "manager", "member", "reader"]);
  // Not inherited: the child project gets nothing; another user gets nothing.
  assert.deepEqual(effectiveRoles(m, "D/alice", "D/mid"), []);
  assert.deepEqual(effectiveRoles(m, "D/carol", "D/top"), []);
});

test("roles come through group membership, only to members", () => {
  const m = model({
    assignments: [
      {
        actor: { kind: "group", id: "D/ops" },
        target: { kind: "project", id: "D/mid" },
        role: "member",
        inherited: false,
      },
    ],
  });
  assert.deepEqual(effectiveRoles(m, "D/bob", "D/mid"), ["member", "reader"]);
  assert.deepEqual(effectiveRoles(m, "D/carol", "D/mid"), []);
});

test("inherited on a domain: every project of that domain, not projects of other domains", () => {
  const m = model({
    assignments: [
      {
        actor: { kind: "user", id: "D/carol" },
        target: { kind: "domain", id: "D" },
        role: "reader",
        inherited: true,
      },
    ],
  });
  for (const p of ["D/top", "D/mid", "D/leaf"]) assert.deepEqual(effectiveRoles(m, "D/carol", p), ["reader"]);
  assert.deepEqual(effectiveRoles(m, "D/carol", "E/other"), []);
  // A non-inherited domain assignment does not reach projects (Keystone: domain-scoped only).
  const direct = model({
    assignments: [
      {
        actor: { kind: "user", id: "D/carol" },
        target: { kind: "domain", id: "D" },
        role: "reader",
        inherited: false,
      },
    ],
  });
  assert.deepEqual(effectiveRoles(direct, "D/carol", "D/top"), []);
});

test("inherited on a project: the subtree below it, not the project itself", () => {
  const m = model({
    assignments: [
      {
        actor: { kind: "group", id: "D/ops" },
        target: { kind: "project", id: "D/top" },
        role: "manager",
        inherited: true,
      },
    ],
  });
  assert.deepEqual(effectiveRoles(m, "D/alice", "D/top"), []);
  assert.deepEqual(effectiveRoles(m, "D/alice", "D/mid"), ["manager", "member", "reader"]);
  assert.deepEqual(effectiveRoles(m, "D/alice", "D/leaf"), ["manager", "member", "reader"]);
});

test("direct, group and inherited combine; custom implied roles chain; cycles end", () => {
  const m = model({
    roles: [
      ...ROLES,
      { id: "auditor", implies: ["reader", "observer"] },
      { id: "observer", implies: ["auditor"] },
    ],
    assignments: [
      {
        actor: { kind: "user", id: "D/alice" },
        target: { kind: "project", id: "D/leaf" },
        role: "auditor",
        inherited: false,
      },
      {
        actor: { kind: "group", id: "D/ops" },
        target: { kind: "domain", id: "D" },
        role: "member",
        inherited: true,
      },
    ],
  });
  assert.deepEqual(effectiveRoles(m, "D/alice", "D/leaf"), ["auditor", "member", "observer", "reader"]);
  assert.deepEqual(effectiveRoles(m, "D/alice", "D/nope"), []);
});

test("project tree: same domain, existing parent, depth at most 5", () => {
  const projects = [
    { id: "D/p1", domain: "D", parent: "" },
    { id: "D/p2", domain: "D", parent: "D/p1" },
    { id: "D/p3", domain: "D", parent: "D/p2" },
    { id: "D/p4", domain: "D", parent: "D/p3" },
    { id: "D/p5", domain: "D", parent: "D/p4" },
  ];
  assert.deepEqual(checkProjectPlacement(projects, "D", ""), []);
  assert.deepEqual(checkProjectPlacement(projects, "D", "D/p4"), []);
  assert.match(checkProjectPlacement(projects, "D", "D/p5")[0], /^parent: .*depth 6, deeper than 5/);
  assert.match(checkProjectPlacement(projects, "E", "D/p1")[0], /^parent: .*domain D, not E/);
  assert.match(checkProjectPlacement(projects, "D", "D/nope")[0], /^parent: project D\/nope does not exist/);
});

test("implied roles: no self, never admin", () => {
  assert.deepEqual(checkImplies("auditor", ["reader"]), []);
  assert.match(checkImplies("auditor", ["auditor"])[0], /cannot imply itself/);
  assert.match(checkImplies("boss", ["admin"])[0], /admin may not be implied/);
});

test("quota defaults are Nova's, Neutron's and Cinder's; overrides; -1 is unlimited", () => {
  assert.deepEqual(DEFAULT_QUOTAS, {
    instances: 10,
    cores: 20,
    ramMiB: 51200,
    floatingIps: 50,
    networks: 100,
    subnets: 100,
    ports: 500,
    routers: 10,
    securityGroups: 10,
    securityGroupRules: 100,
    volumes: 10,
    gigabytes: 1000,
  });
  const q = quotasWith({ instances: -1, cores: 4 });
  assert.equal(q.instances, -1);
  assert.equal(q.cores, 4);
  assert.deepEqual(quotaViolations(q, ledgerUsage({}), { instances: 1000, cores: 4 }), []);
  assert.deepEqual(quotaViolations(q, ledgerUsage({}), { cores: 5 }), [
    { quota: "cores", usage: 0, requested: 5, limit: 4 },
  ]);
  assert.deepEqual(checkQuotas({ instances: 3, cores: -1 }), []);
  assert.match(checkQuotas({ instance: 3 })[0], /^quotas\.instance: unknown quota/);
  assert.match(checkQuotas({ cores: -2 })[0], /^quotas\.cores: expected -1 \(unlimited\)/);
});

test("the ledger: ten servers fit the default quota, the 11th is refused naming instances, usage and limit", () => {
  let ledger = {};
  for (let i = 1; i <= 10; i++) {
    const r = applyReservation(ledger, DEFAULT_QUOTAS, `server:s${i}`, serverUsage(1, 512, 1));
    assert.deepEqual(r.violations, []);
    ledger = r.ledger;
  }
  assert.deepEqual(ledgerUsage(ledger).instances, 10);
  const r = applyReservation(ledger, DEFAULT_QUOTAS, "server:s11", serverUsage(1, 512, 1));
  assert.equal(r.ledger, ledger, "a refused reservation changes nothing");
  assert.deepEqual(r.violations, [{ quota: "instances", usage: 10, requested: 1, limit: 10 }]);
  assert.equal(
    quotaError("Default/demo", r.violations),
    "quota exceeded for project Default/demo: instances: usage 10 + requested 1 exceeds limit 10; free resources or raise the project's quotas",
  );
  // Re-reserving the same holder (a retried create) does not count twice.
  assert.deepEqual(
    applyReservation(ledger, DEFAULT_QUOTAS, "server:s3", serverUsage(1, 512, 1)).violations,
    [],
  );
});

test("resize counts only the holder's new size against the others; shrinking always passes", () => {
  const limits = quotasWith({ cores: 8 });
  const ledger = { "server:a": serverUsage(4, 1024, 1), "server:b": serverUsage(2, 1024, 1) };
  assert.deepEqual(applyReservation(ledger, limits, "server:b", serverUsage(4, 1024, 1)).violations, []);
  const grow = applyReservation(ledger, limits, "server:b", serverUsage(6, 1024, 1));
  assert.deepEqual(grow.violations, [{ quota: "cores", usage: 4, requested: 6, limit: 8 }]);
  const over = { ...ledger, "server:c": serverUsage(8, 1024, 1) }; // limit lowered after the fact
  assert.deepEqual(applyReservation(over, limits, "server:c", serverUsage(2, 1024, 1)).violations, []);
});
