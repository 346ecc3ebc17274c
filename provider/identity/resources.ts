/**
 * Keystone's identity objects as kvmlab resources, each one record on the controller (hosts[0]):
 * Domain, Project, User, Group, Role, RoleAssignment. See docs/identity.md.
 *
 * References are by name: a project, user, group or domain-specific role is `<domain>/<name>`,
 * or a bare name in its default domain (`Default`, Keystone's bootstrap domain). Create checks
 * every reference on the controller under its host lock.
 */
import * as pulumi from "@pulumi/pulumi";
import {
  checkImplies,
  checkProjectPlacement,
  checkQuotas,
  DEFAULT_DOMAIN,
  BOOTSTRAP_ROLES,
  identityId,
  quotasWith,
  type Quotas,
} from "../../core/identity";
import { checkHostList, showValue, type HostConnection } from "../host";
import {
  applyRules,
  defineResource,
  failureList,
  isKnown,
  KvmlabResource,
  normalizeHosts,
  rules,
  type Checked,
  type HostConnectionArgs,
} from "../kit";
import { hashPassword, verifyPassword } from "./password";
import type { IdentityRecordBase, IdentityKind } from "./records";
import { identitySpec, type IdentityHostState, type IdentityOutputs } from "./spec";

type All = Partial<Record<IdentityKind, IdentityRecordBase[]>>;

/** `<domain>/<name>` from a reference that may be a bare name (in `domain`). Pure. */
export function qualify(ref: string, domain: string): string {
  return ref.includes("/") ? ref : identityId(domain, ref);
}

const REF_RE =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\/)?[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
const refRule = rules.expect((v) => typeof v === "string" && REF_RE.test(v), 'a name or "<domain>/<name>"');

function has(all: All, kind: IdentityKind, id: string): boolean {
  return (all[kind] ?? []).some((r) => r.id === id);
}

function hostsOf(news: Record<string, unknown>, out: ReturnType<typeof failureList>): HostConnection[] {
  out.add("hosts", checkHostList("hosts", news.hosts));
  return normalizeHosts(news.hosts) as HostConnection[];
}

function missing(kind: string, id: string, field: string): string {
  return `${field}: ${kind} ${id} does not exist on the controller; create it first (or fix the name)`;
}

interface Common {
  hosts: HostConnection[];
  /** Issue 15's owner string; the base class fills it in the program. */
  owner: string;
}
interface HostsArg {
  /** Hosts of the cloud; the first is the controller that keeps the records. */
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** @default `<pulumi project>/<stack>/<Type>/<resource name>` (issue 15) */
  readonly owner?: pulumi.Input<string>;
}

// ---- Domain ------------------------------------------------------------------------------------

export interface DomainInputs extends Common {
  domainName: string;
  description: string;
  enabled: boolean;
}
export type DomainOutputs = DomainInputs & IdentityOutputs;

function domainFields(news: Record<string, unknown>) {
  const out = failureList();
  const v = applyRules(
    news,
    {
      domainName: { rule: rules.name },
      description: { rule: rules.line(255), default: "" },
      enabled: { rule: rules.bool, default: true },
    },
    out,
  );
  return { inputs: { ...v, hosts: hostsOf(news, out) }, failures: out.failures };
}

const domain = defineResource<DomainInputs, DomainOutputs>(
  identitySpec<DomainInputs, DomainOutputs>({
    type: "Domain",
    nameKey: "domainName",
    kind: "domain",
    inputKeys: ["domainName", "description", "enabled", "hosts"],
    secretOutputs: ["hosts"],
    replaceKeys: ["domainName"],
    updateKeys: ["description", "enabled"],
    check: domainFields,
    idOf: (i) => i.domainName,
    recordOf: (i, uid) => ({
      kind: "domain",
      id: i.domainName,
      uid,
      name: i.domainName,
      description: i.description,
      enabled: i.enabled,
    }),
    deleteNeeds: ["project", "user", "group"],
    deleteVerify: (o, all) => {
      const users = ["project", "user", "group"].flatMap((k) =>
        (all[k as IdentityKind] ?? []).filter(
          (r) => (r as unknown as { domain: string }).domain === o.recordId,
        ),
      );
      return users.length > 0
        ? [
            `still holds ${users.map((r) => `${r.kind} ${r.id}`).join(", ")}; delete them first (Keystone cascades; kvmlab refuses to drop records of other resources)`,
          ]
        : [];
    },
  }),
);
export const domainProvider = domain.provider;
/** Validates and normalizes raw Domain inputs, the owner included (pure). */
export function checkDomainInputs(news: Record<string, unknown>): Checked {
  return domain.spec.check(news, undefined);
}
/** Pure diff of the Domain resource. */
export const diffDomain = domain.spec.diff;

export interface DomainArgs extends HostsArg {
  /** @default the resource name */
  readonly domainName?: pulumi.Input<string>;
  readonly description?: pulumi.Input<string>;
  /** @default true */
  readonly enabled?: pulumi.Input<boolean>;
}

/** A Keystone domain (`pulumi-nodejs:dynamic/kvmlab:Domain`). */
export class Domain extends KvmlabResource<DomainInputs, DomainOutputs> {
  declare readonly domainName: pulumi.Output<string>;
  declare readonly recordId: pulumi.Output<string>;
  declare readonly realized: pulumi.Output<IdentityHostState>;
  constructor(name: string, args: DomainArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(domain, name, { ...args, domainName: args.domainName ?? name }, opts);
  }
}

// ---- Project -----------------------------------------------------------------------------------

export interface ProjectInputs extends Common {
  projectName: string;
  domain: string;
  /** Parent project (name in the same domain, or `<domain>/<name>`); "" = top level. */
  parent: string;
  description: string;
  enabled: boolean;
  /** Overrides of Nova's and Neutron's default quotas (-1 = unlimited). */
  quotas: Partial<Quotas>;
}
export type ProjectOutputs = ProjectInputs & IdentityOutputs & { limits: Quotas };

function projectFields(news: Record<string, unknown>) {
  const out = failureList();
  const v = applyRules(
    news,
    {
      projectName: { rule: rules.name },
      domain: { rule: rules.name, default: DEFAULT_DOMAIN },
      parent: { rule: (f, x) => (x === "" ? undefined : refRule(f, x)), default: "" },
      description: { rule: rules.line(255), default: "" },
      enabled: { rule: rules.bool, default: true },
    },
    out,
  );
  const quotas = news.quotas ?? {};
  if (isKnown(quotas)) out.add("quotas", checkQuotas(quotas));
  return { inputs: { ...v, quotas, hosts: hostsOf(news, out) }, failures: out.failures };
}

type ProjectRecord = IdentityRecordBase & { name: string; domain: string; parent: string };

const project = defineResource<ProjectInputs, ProjectOutputs>(
  identitySpec<ProjectInputs, ProjectOutputs>({
    type: "Project",
    nameKey: "projectName",
    kind: "project",
    inputKeys: ["projectName", "domain", "parent", "description", "enabled", "quotas", "hosts"],
    extraOutputKeys: ["limits"],
    secretOutputs: ["hosts"],
    replaceKeys: ["projectName", "domain", "parent"],
    updateKeys: ["description", "enabled", "quotas"],
    check: projectFields,
    idOf: (i) => identityId(i.domain, i.projectName),
    extras: (i) => ({ limits: quotasWith(i.quotas) }),
    recordOf: (i, uid) => ({
      kind: "project",
      id: identityId(i.domain, i.projectName),
      uid,
      name: i.projectName,
      domain: i.domain,
      parent: i.parent === "" ? "" : qualify(i.parent, i.domain),
      description: i.description,
      enabled: i.enabled,
      quotas: quotasWith(i.quotas),
    }),
    needs: ["domain", "project"],
    verify: (i, all) => {
      if (!has(all, "domain", i.domain)) return [missing("domain", i.domain, "domain")];
      const projects = (all.project ?? []) as ProjectRecord[];
      return checkProjectPlacement(
        projects.map((p) => ({ id: p.id, domain: p.domain, parent: p.parent })),
        i.domain,
        i.parent === "" ? "" : qualify(i.parent, i.domain),
      );
    },
    deleteNeeds: ["project"],
    deleteVerify: (o, all) => {
      const kids = ((all.project ?? []) as ProjectRecord[]).filter((p) => p.parent === o.recordId);
      return kids.length > 0
        ? [
            `has child projects ${kids.map((k) => k.id).join(", ")}; delete them first (Keystone refuses to delete a non-leaf project)`,
          ]
        : [];
    },
  }),
);
export const projectProvider = project.provider;
/** Validates and normalizes raw Project inputs, the owner included (pure). */
export function checkProjectInputs(news: Record<string, unknown>): Checked {
  return project.spec.check(news, undefined);
}
/** Pure diff of the Project resource. */
export const diffProject = project.spec.diff;

export interface ProjectArgs extends HostsArg {
  /** @default the resource name */
  readonly projectName?: pulumi.Input<string>;
  /** @default "Default" */
  readonly domain?: pulumi.Input<string>;
  /** @default "" (top level) */
  readonly parent?: pulumi.Input<string>;
  readonly description?: pulumi.Input<string>;
  readonly enabled?: pulumi.Input<boolean>;
  /** Quota overrides, e.g. `{ instances: 20, cores: -1 }`. @default {} (Nova's and Neutron's defaults) */
  readonly quotas?: pulumi.Input<Partial<Quotas>>;
}

/** A Keystone project with its quotas (`pulumi-nodejs:dynamic/kvmlab:Project`). */
export class Project extends KvmlabResource<ProjectInputs, ProjectOutputs> {
  declare readonly projectName: pulumi.Output<string>;
  declare readonly domain: pulumi.Output<string>;
  /** `<domain>/<name>`: what a Server's `project` takes. */
  declare readonly recordId: pulumi.Output<string>;
  declare readonly limits: pulumi.Output<Quotas>;
  declare readonly realized: pulumi.Output<IdentityHostState>;
  constructor(name: string, args: ProjectArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(project, name, { ...args, projectName: args.projectName ?? name }, opts);
  }
}

// ---- User --------------------------------------------------------------------------------------

export interface UserInputs extends Common {
  userName: string;
  domain: string;
  /** Clear text: a Pulumi secret; only its scrypt hash leaves the provider. "" = no password. */
  password: string;
  sshPublicKeys: string[];
  email: string;
  enabled: boolean;
}
export type UserOutputs = UserInputs & IdentityOutputs & { passwordHash: string };

const SSH_KEY_RE =
  /^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9-]+@openssh\.com) [A-Za-z0-9+/=]+( [^\n\r]*)?$/;

function userFields(news: Record<string, unknown>) {
  const out = failureList();
  const v = applyRules(
    news,
    {
      userName: { rule: rules.name },
      domain: { rule: rules.name, default: DEFAULT_DOMAIN },
      email: { rule: rules.line(255), default: "" },
      enabled: { rule: rules.bool, default: true },
    },
    out,
  );
  const password = news.password ?? "";
  if (
    isKnown(password) &&
    (typeof password !== "string" || (password !== "" && (password.length < 8 || password.length > 1024)))
  )
    // Never show the value: it is a password.
    out.add("password", 'password: expected "" (no password) or 8-1024 characters; the value is not shown');
  const keys = news.sshPublicKeys ?? [];
  if (isKnown(keys)) {
    if (!Array.isArray(keys))
      out.add(
        "sshPublicKeys",
        `sshPublicKeys: expected a list of OpenSSH public keys, got ${showValue(keys)}`,
      );
    else
      keys.forEach((k, i) => {
        if (typeof k !== "string" || !SSH_KEY_RE.test(k.trim()))
          out.add(
            "sshPublicKeys",
            `sshPublicKeys[${i}]: expected one OpenSSH public key line ("ssh-ed25519 AAAA… comment"), got ${showValue(k)}`,
          );
      });
  }
  return {
    inputs: { ...v, password, sshPublicKeys: keys, hosts: hostsOf(news, out) },
    failures: out.failures,
  };
}

const user = defineResource<UserInputs, UserOutputs>(
  identitySpec<UserInputs, UserOutputs>({
    type: "User",
    nameKey: "userName",
    kind: "user",
    inputKeys: ["userName", "domain", "password", "sshPublicKeys", "email", "enabled", "hosts"],
    extraOutputKeys: ["passwordHash"],
    secretOutputs: ["hosts", "password", "passwordHash"],
    replaceKeys: ["userName", "domain"],
    // A new password is an update: the same user, a new hash.
    updateKeys: ["password", "sshPublicKeys", "email", "enabled"],
    check: userFields,
    idOf: (i) => identityId(i.domain, i.userName),
    extras: (i, olds) => ({
      passwordHash:
        i.password === ""
          ? ""
          : olds && olds.password === i.password && olds.passwordHash
            ? olds.passwordHash
            : hashPassword(i.password),
    }),
    recordOf: (i, uid, x) => ({
      kind: "user",
      id: identityId(i.domain, i.userName),
      uid,
      name: i.userName,
      domain: i.domain,
      passwordHash: x.passwordHash ?? "",
      sshPublicKeys: i.sshPublicKeys.map((k) => k.trim()),
      email: i.email,
      enabled: i.enabled,
    }),
    needs: ["domain"],
    verify: (i, all) => (has(all, "domain", i.domain) ? [] : [missing("domain", i.domain, "domain")]),
    matches: (o, have) => {
      const h = have as IdentityRecordBase & Record<string, unknown>;
      const hash = typeof h.passwordHash === "string" ? h.passwordHash : "";
      const pwOk = o.password === "" ? hash === "" : verifyPassword(o.password, hash);
      return (
        pwOk &&
        JSON.stringify(h.sshPublicKeys) === JSON.stringify(o.sshPublicKeys.map((k) => k.trim())) &&
        h.email === o.email &&
        h.enabled === o.enabled
      );
    },
  }),
);
export const userProvider = user.provider;
/** Validates and normalizes raw User inputs, the owner included (pure). */
export function checkUserInputs(news: Record<string, unknown>): Checked {
  return user.spec.check(news, undefined);
}
/** Pure diff of the User resource. */
export const diffUser = user.spec.diff;

export interface UserArgs extends HostsArg {
  /** @default the resource name */
  readonly userName?: pulumi.Input<string>;
  /** @default "Default" */
  readonly domain?: pulumi.Input<string>;
  /** Made a Pulumi secret here whatever the program passes. @default "" (no password) */
  readonly password?: pulumi.Input<string>;
  readonly sshPublicKeys?: pulumi.Input<pulumi.Input<string>[]>;
  readonly email?: pulumi.Input<string>;
  readonly enabled?: pulumi.Input<boolean>;
}

/** A Keystone user (`pulumi-nodejs:dynamic/kvmlab:User`); the password is stored as a scrypt hash only. */
export class User extends KvmlabResource<UserInputs, UserOutputs> {
  declare readonly userName: pulumi.Output<string>;
  declare readonly recordId: pulumi.Output<string>;
  declare readonly realized: pulumi.Output<IdentityHostState>;
  constructor(name: string, args: UserArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(
      user,
      name,
      {
        ...args,
        userName: args.userName ?? name,
        password: args.password === undefined ? undefined : pulumi.secret(args.password),
      },
      opts,
    );
  }
}

// ---- Group -------------------------------------------------------------------------------------

export interface GroupInputs extends Common {
  groupName: string;
  domain: string;
  /** Users: names in the group's domain or `<domain>/<name>`. */
  members: string[];
  description: string;
}
export type GroupOutputs = GroupInputs & IdentityOutputs;

function groupFields(news: Record<string, unknown>) {
  const out = failureList();
  const v = applyRules(
    news,
    {
      groupName: { rule: rules.name },
      domain: { rule: rules.name, default: DEFAULT_DOMAIN },
      description: { rule: rules.line(255), default: "" },
    },
    out,
  );
  const members = news.members ?? [];
  if (isKnown(members)) {
    if (!Array.isArray(members))
      out.add("members", `members: expected a list of user names, got ${showValue(members)}`);
    else members.forEach((m, i) => out.add("members", refRule(`members[${i}]`, m)));
  }
  return { inputs: { ...v, members, hosts: hostsOf(news, out) }, failures: out.failures };
}

const group = defineResource<GroupInputs, GroupOutputs>(
  identitySpec<GroupInputs, GroupOutputs>({
    type: "Group",
    nameKey: "groupName",
    kind: "group",
    inputKeys: ["groupName", "domain", "members", "description", "hosts"],
    secretOutputs: ["hosts"],
    replaceKeys: ["groupName", "domain"],
    updateKeys: ["members", "description"],
    check: groupFields,
    idOf: (i) => identityId(i.domain, i.groupName),
    recordOf: (i, uid) => ({
      kind: "group",
      id: identityId(i.domain, i.groupName),
      uid,
      name: i.groupName,
      domain: i.domain,
      members: [...new Set(i.members.map((m) => qualify(m, i.domain)))].sort(),
      description: i.description,
    }),
    needs: ["domain", "user"],
    verify: (i, all) => [
      ...(has(all, "domain", i.domain) ? [] : [missing("domain", i.domain, "domain")]),
      ...i.members
        .map((m) => qualify(m, i.domain))
        .filter((m) => !has(all, "user", m))
        .map((m) => missing("user", m, "members")),
    ],
  }),
);
export const groupProvider = group.provider;
/** Validates and normalizes raw Group inputs, the owner included (pure). */
export function checkGroupInputs(news: Record<string, unknown>): Checked {
  return group.spec.check(news, undefined);
}
/** Pure diff of the Group resource. */
export const diffGroup = group.spec.diff;

export interface GroupArgs extends HostsArg {
  readonly groupName?: pulumi.Input<string>;
  readonly domain?: pulumi.Input<string>;
  readonly members?: pulumi.Input<pulumi.Input<string>[]>;
  readonly description?: pulumi.Input<string>;
}

/** A Keystone group (`pulumi-nodejs:dynamic/kvmlab:Group`). */
export class Group extends KvmlabResource<GroupInputs, GroupOutputs> {
  declare readonly groupName: pulumi.Output<string>;
  declare readonly recordId: pulumi.Output<string>;
  constructor(name: string, args: GroupArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(group, name, { ...args, groupName: args.groupName ?? name }, opts);
  }
}

// ---- Role --------------------------------------------------------------------------------------

export interface RoleInputs extends Common {
  roleName: string;
  /** "" = a global role (like the bootstrap roles). */
  domain: string;
  /** Roles this role implies (global role names). */
  implies: string[];
  description: string;
}
export type RoleOutputs = RoleInputs & IdentityOutputs;

function roleFields(news: Record<string, unknown>) {
  const out = failureList();
  const v = applyRules(
    news,
    {
      roleName: { rule: rules.name },
      domain: { rule: (f, x) => (x === "" ? undefined : rules.name(f, x)), default: "" },
      description: { rule: rules.line(255), default: "" },
    },
    out,
  );
  const implies = news.implies ?? [];
  if (isKnown(implies)) {
    if (!Array.isArray(implies))
      out.add("implies", `implies: expected a list of role names, got ${showValue(implies)}`);
    else {
      implies.forEach((r, i) => out.add("implies", rules.name(`implies[${i}]`, r)));
      if (typeof v.roleName === "string") out.add("implies", checkImplies(v.roleName, implies as string[]));
    }
  }
  return { inputs: { ...v, implies, hosts: hostsOf(news, out) }, failures: out.failures };
}

const role = defineResource<RoleInputs, RoleOutputs>(
  identitySpec<RoleInputs, RoleOutputs>({
    type: "Role",
    nameKey: "roleName",
    kind: "role",
    inputKeys: ["roleName", "domain", "implies", "description", "hosts"],
    secretOutputs: ["hosts"],
    replaceKeys: ["roleName", "domain"],
    updateKeys: ["implies", "description"],
    check: roleFields,
    idOf: (i) => (i.domain === "" ? i.roleName : identityId(i.domain, i.roleName)),
    recordOf: (i, uid) => ({
      kind: "role",
      id: i.domain === "" ? i.roleName : identityId(i.domain, i.roleName),
      uid,
      name: i.roleName,
      domain: i.domain,
      implies: [...i.implies].sort(),
      description: i.description,
    }),
    needs: ["domain", "role"],
    verify: (i, all) => [
      ...(i.domain === "" || has(all, "domain", i.domain) ? [] : [missing("domain", i.domain, "domain")]),
      ...i.implies
        .filter((r) => !has(all, "role", r) && !BOOTSTRAP_ROLES.some((b) => b.name === r))
        .map((r) => missing("role", r, "implies")),
    ],
  }),
);
export const roleProvider = role.provider;
/** Validates and normalizes raw Role inputs, the owner included (pure). */
export function checkRoleInputs(news: Record<string, unknown>): Checked {
  return role.spec.check(news, undefined);
}
/** Pure diff of the Role resource. */
export const diffRole = role.spec.diff;

export interface RoleArgs extends HostsArg {
  readonly roleName?: pulumi.Input<string>;
  readonly domain?: pulumi.Input<string>;
  readonly implies?: pulumi.Input<pulumi.Input<string>[]>;
  readonly description?: pulumi.Input<string>;
}

/** A Keystone role (`pulumi-nodejs:dynamic/kvmlab:Role`). */
export class Role extends KvmlabResource<RoleInputs, RoleOutputs> {
  declare readonly roleName: pulumi.Output<string>;
  declare readonly recordId: pulumi.Output<string>;
  constructor(name: string, args: RoleArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(role, name, { ...args, roleName: args.roleName ?? name }, opts);
  }
}

// ---- RoleAssignment ----------------------------------------------------------------------------

export interface RoleAssignmentInputs extends Common {
  /** Exactly one of user / group: a name (Default domain) or `<domain>/<name>`. */
  user: string;
  group: string;
  /** Exactly one of project / domain. */
  project: string;
  domain: string;
  role: string;
  /** Keystone's OS-INHERIT: to every project below the target (not the target itself). */
  inherited: boolean;
}
export type RoleAssignmentOutputs = RoleAssignmentInputs & IdentityOutputs;

function assignmentFields(news: Record<string, unknown>) {
  const out = failureList();
  const opt = (f: string, x: unknown) => (x === "" ? undefined : refRule(f, x));
  const v = applyRules(
    news,
    {
      user: { rule: opt, default: "" },
      group: { rule: opt, default: "" },
      project: { rule: opt, default: "" },
      domain: { rule: (f, x) => (x === "" ? undefined : rules.name(f, x)), default: "" },
      role: { rule: refRule },
      inherited: { rule: rules.bool, default: false },
    },
    out,
  );
  if (isKnown(v.user) && isKnown(v.group) && (v.user === "") === (v.group === ""))
    out.add("user", 'user/group: set exactly one of "user" and "group"');
  if (isKnown(v.project) && isKnown(v.domain) && (v.project === "") === (v.domain === ""))
    out.add("project", 'project/domain: set exactly one of "project" and "domain"');
  return { inputs: { ...v, hosts: hostsOf(news, out) }, failures: out.failures };
}

/** The assignment's actor, target and record id. Pure. */
export function assignmentParts(i: Omit<RoleAssignmentInputs, "hosts" | "owner">) {
  const actor =
    i.user !== ""
      ? { kind: "user" as const, id: qualify(i.user, DEFAULT_DOMAIN) }
      : { kind: "group" as const, id: qualify(i.group, DEFAULT_DOMAIN) };
  const target =
    i.project !== ""
      ? { kind: "project" as const, id: qualify(i.project, DEFAULT_DOMAIN) }
      : { kind: "domain" as const, id: i.domain };
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const digest = crypto
    .createHash("sha256")
    .update(JSON.stringify([actor, target, i.role, i.inherited]))
    .digest("hex")
    .slice(0, 24);
  return { actor, target, id: `a-${digest}` };
}

const assignment = defineResource<RoleAssignmentInputs, RoleAssignmentOutputs>(
  identitySpec<RoleAssignmentInputs, RoleAssignmentOutputs>({
    type: "RoleAssignment",
    nameKey: "role",
    kind: "assignment",
    inputKeys: ["user", "group", "project", "domain", "role", "inherited", "hosts"],
    secretOutputs: ["hosts"],
    replaceKeys: ["user", "group", "project", "domain", "role", "inherited"],
    updateKeys: [],
    check: assignmentFields,
    idOf: (i) => assignmentParts(i).id,
    recordOf: (i, uid) => {
      const { actor, target, id } = assignmentParts(i);
      return { kind: "assignment", id, uid, actor, target, role: i.role, inherited: i.inherited };
    },
    needs: ["user", "group", "project", "domain", "role"],
    verify: (i, all) => {
      const { actor, target } = assignmentParts(i);
      const out: string[] = [];
      if (!has(all, actor.kind, actor.id)) out.push(missing(actor.kind, actor.id, actor.kind));
      if (!has(all, target.kind, target.id)) out.push(missing(target.kind, target.id, target.kind));
      if (!has(all, "role", i.role) && !BOOTSTRAP_ROLES.some((b) => b.name === i.role))
        out.push(missing("role", i.role, "role"));
      return out;
    },
  }),
);
export const roleAssignmentProvider = assignment.provider;
/** Validates and normalizes raw RoleAssignment inputs, the owner included (pure). */
export function checkRoleAssignmentInputs(news: Record<string, unknown>): Checked {
  return assignment.spec.check(news, undefined);
}
/** Pure diff of the RoleAssignment resource. */
export const diffRoleAssignment = assignment.spec.diff;

export interface RoleAssignmentArgs extends HostsArg {
  readonly user?: pulumi.Input<string>;
  readonly group?: pulumi.Input<string>;
  readonly project?: pulumi.Input<string>;
  readonly domain?: pulumi.Input<string>;
  readonly role: pulumi.Input<string>;
  readonly inherited?: pulumi.Input<boolean>;
}

/** A Keystone role assignment (`pulumi-nodejs:dynamic/kvmlab:RoleAssignment`). */
export class RoleAssignment extends KvmlabResource<RoleAssignmentInputs, RoleAssignmentOutputs> {
  declare readonly recordId: pulumi.Output<string>;
  constructor(name: string, args: RoleAssignmentArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(assignment, name, { ...args }, opts);
  }
}
