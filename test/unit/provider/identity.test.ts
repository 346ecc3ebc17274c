/**
 * Identity providers without hosts: checks (defaults, every refusal names its field, a refused
 * password is never echoed), diffs (names replace; a new password is an update), scrypt hashing
 * (salted, verifiable, never the clear text), record steps (guarded delete), the model built
 * from records (bootstrap roles, disabled users), and serialization.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  assignmentParts,
  checkGroupInputs,
  checkProjectInputs,
  checkRoleAssignmentInputs,
  checkRoleInputs,
  checkUserInputs,
  deleteOwnedRecordStep,
  diffUser,
  hashPassword,
  identityModel,
  listRecordsStep,
  parseRecordList,
  projectProvider,
  userProvider,
  verifyPassword,
  type IdentityRecords,
  type UserInputs,
  type UserOutputs,
} from "../../../provider/identity";
import { effectiveRoles } from "../../../core/identity";
import { assertSerializable } from "../../harness/serialization";
import { testHost } from "./fixtures";

const HOSTS = [testHost("hv1", 1)];
const SECRET = "correct horse battery staple";

test("project: defaults (Default domain, top level, no overrides), refusals name the field", () => {
  const ok = checkProjectInputs({ projectName: "demo", hosts: HOSTS });
  assert.deepEqual(ok.failures, []);
  assert.equal((ok.inputs as Record<string, unknown>).domain, "Default");
  assert.equal((ok.inputs as Record<string, unknown>).parent, "");
  assert.deepEqual(ok.inputs.quotas, {});
  const bad = checkProjectInputs({
    projectName: "de mo",
    parent: "a/b/c",
    quotas: { cores: -5 },
    hosts: HOSTS,
  });
  assert.deepEqual(
    bad.failures.map((f) => f.property),
    ["projectName", "parent", "quotas"],
  );
});

test("user: password length checked without showing it; SSH keys must be OpenSSH lines", () => {
  const short = checkUserInputs({ userName: "alice", password: "hunter2", hosts: HOSTS });
  assert.equal(short.failures.length, 1);
  assert.equal(short.failures[0].property, "password");
  assert.doesNotMatch(short.failures[0].reason, /hunter2/);
  const keys = checkUserInputs({
    userName: "alice",
    sshPublicKeys: ["ssh-ed25519 AAAAC3Nz alice@lab", "rm -rf /"],
    hosts: HOSTS,
  });
  assert.deepEqual(
    keys.failures.map((f) => f.reason.split(":")[0]),
    ["sshPublicKeys[1]"],
  );
});

test("group, role, assignment: references, implied-role rules, exactly one actor and target", () => {
  assert.deepEqual(
    checkGroupInputs({ groupName: "ops", members: ["alice", "Other/bob"], hosts: HOSTS }).failures,
    [],
  );
  assert.equal(
    checkGroupInputs({ groupName: "ops", members: ["a/b/c"], hosts: HOSTS }).failures[0].property,
    "members",
  );
  assert.match(
    checkRoleInputs({ roleName: "boss", implies: ["admin"], hosts: HOSTS }).failures[0].reason,
    /admin may not be implied/,
  );
  const both = checkRoleAssignmentInputs({
    user: "alice",
    group: "ops",
    project: "demo",
    role: "reader",
    hosts: HOSTS,
  });
  assert.deepEqual(
    both.failures.map((f) => f.property),
    ["user"],
  );
  const none = checkRoleAssignmentInputs({ user: "alice", role: "reader", hosts: HOSTS });
  assert.deepEqual(
    none.failures.map((f) => f.property),
    ["project"],
  );
  const a = assignmentParts({
    user: "alice",
    group: "",
    project: "demo",
    domain: "",
    role: "reader",
    inherited: false,
  });
  assert.deepEqual(a.actor, { kind: "user", id: "Default/alice" });
  assert.deepEqual(a.target, { kind: "project", id: "Default/demo" });
  assert.match(a.id, /^a-[0-9a-f]{24}$/);
  const inh = assignmentParts({
    user: "alice",
    group: "",
    project: "demo",
    domain: "",
    role: "reader",
    inherited: true,
  });
  assert.notEqual(inh.id, a.id, "inherited and direct are two assignments");
});

test("scrypt: salted (two hashes differ), verifies, never contains the password", () => {
  const a = hashPassword(SECRET);
  const b = hashPassword(SECRET);
  assert.notEqual(a, b);
  assert.match(a, /^scrypt\$32768\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
  assert.ok(!a.includes(SECRET));
  assert.equal(verifyPassword(SECRET, a), true);
  assert.equal(verifyPassword(`${SECRET}!`, a), false);
  assert.equal(verifyPassword(SECRET, "plain"), false);
});

test("user diff: a new password is an update, not a replacement; a new name replaces", () => {
  const i = checkUserInputs({ userName: "alice", password: SECRET, hosts: HOSTS })
    .inputs as unknown as UserInputs;
  const olds = {
    ...i,
    passwordHash: hashPassword(SECRET),
    recordId: "Default/alice",
    uid: "00000000-0000-4000-8000-000000000000",
    controller: "hv1",
    hostKeys: {},
    realized: { record: true, matches: true },
  } as UserOutputs;
  assert.deepEqual(diffUser(olds, i), { changes: false, replaces: [], deleteBeforeReplace: false });
  const pw = diffUser(olds, { ...i, password: "another long password" });
  assert.equal(pw.changes, true);
  assert.deepEqual(pw.replaces, []);
  assert.deepEqual(diffUser(olds, { ...i, userName: "bob" }).replaces, ["userName"]);
});

test("record steps: listing is one JSON per line; delete is guarded by the owner uid", () => {
  assert.match(listRecordsStep("user").script, /\/var\/lib\/kvmlab\/records\/identity-user\/\*\.json/);
  assert.deepEqual(parseRecordList('{"a":1}\n\n{"b":2}\n'), [{ a: 1 }, { b: 2 }]);
  const uid = "12345678-1234-4234-8234-123456789abc";
  const s = deleteOwnedRecordStep("project", "Default/demo", uid).script;
  assert.match(s, /identity-project\/id-[0-9a-f]{24}\.json/);
  assert.match(s, new RegExp(`grep -q '"uid": "${uid}"'`));
  assert.throws(() => deleteOwnedRecordStep("project", "Default/demo", "x'; rm -rf /"), /invalid uid/);
});

test("model from records: bootstrap roles imply the chain without records; disabled users hold nothing", () => {
  const base = { uid: "u" };
  const r: IdentityRecords = {
    domain: [{ ...base, kind: "domain", id: "Default", name: "Default", enabled: true }],
    project: [
      {
        ...base,
        kind: "project",
        id: "Default/demo",
        name: "demo",
        domain: "Default",
        parent: "",
        quotas: {},
      },
    ],
    user: [
      { ...base, kind: "user", id: "Default/alice", name: "alice", domain: "Default", enabled: true },
      { ...base, kind: "user", id: "Default/mallory", name: "mallory", domain: "Default", enabled: false },
    ],
    group: [
      {
        ...base,
        kind: "group",
        id: "Default/ops",
        name: "ops",
        domain: "Default",
        members: ["Default/alice", "Default/mallory"],
      },
    ],
    role: [],
    assignment: [
      {
        ...base,
        kind: "assignment",
        id: "a-1",
        actor: { kind: "group", id: "Default/ops" },
        target: { kind: "project", id: "Default/demo" },
        role: "admin",
        inherited: false,
      },
    ],
  };
  const m = identityModel(r);
  assert.deepEqual(effectiveRoles(m, "Default/alice", "Default/demo"), [
    "admin",
    "manager",
    "member",
    "reader",
  ]);
  assert.deepEqual(effectiveRoles(m, "Default/mallory", "Default/demo"), []);
});

test("identity providers serialize without node-ssh at load time", async () => {
  for (const p of [projectProvider, userProvider]) {
    const { text } = await assertSerializable(p, {
      methods: ["check", "diff", "create", "read", "update", "delete"],
      forbid: [/handlebars/, /require\("yaml"\)/],
    });
    assert.doesNotMatch(text, /^const \w+ = require\("node-ssh"\);$/m);
  }
});
