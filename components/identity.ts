/**
 * Identity component: a lab's Keystone-style identity in one call, wired in dependency order
 * (domains → projects, parents first → users → groups → roles → assignments), every record on
 * the controller (the first resolved host). See docs/identity.md.
 *
 * ```ts
 * const id = new Identity("lab", {
 *   projects: [{ name: "demo", quotas: { instances: 4 } }],
 *   users: [{ name: "alice", password: config.requireSecret("alicePassword") }],
 *   assignments: [{ user: "alice", project: "demo", role: "member" }],
 * });
 * new Server("web1", { ..., project: id.projectId("demo") });
 * ```
 *
 * The `Default` domain is created unless `domains` names it (as `keystone-manage bootstrap`
 * does); the bootstrap roles (admin → manager → member → reader, service) need no resource.
 */
import * as pulumi from "@pulumi/pulumi";
import { DEFAULT_DOMAIN, type Quotas } from "../core/identity";
import { Domain, Group, Project, Role, RoleAssignment, User } from "../provider/identity/resources";
import { resolveHosts, type HostSpec, type ResolveHostsOptions } from "./hosts";

export interface IdentityArgs {
  readonly domains?: readonly { name: string; description?: string; enabled?: boolean }[];
  /** Parents must come before their children. */
  readonly projects?: readonly {
    name: string;
    domain?: string;
    parent?: string;
    description?: string;
    quotas?: Partial<Quotas>;
  }[];
  readonly users?: readonly {
    name: string;
    domain?: string;
    password?: pulumi.Input<string>;
    sshPublicKeys?: string[];
    email?: string;
    enabled?: boolean;
  }[];
  readonly groups?: readonly { name: string; domain?: string; members?: string[] }[];
  readonly roles?: readonly { name: string; domain?: string; implies?: string[] }[];
  readonly assignments?: readonly {
    user?: string;
    group?: string;
    project?: string;
    domain?: string;
    role: string;
    inherited?: boolean;
  }[];
  /** Hosts; the first is the controller. @default kvmlab:hosts, else the running sandbox's hosts */
  readonly hosts?: readonly HostSpec[];
  readonly hostDiscovery?: ResolveHostsOptions;
}

export class Identity extends pulumi.ComponentResource {
  public readonly domains: Record<string, Domain> = {};
  /** By `<domain>/<name>`. */
  public readonly projects: Record<string, Project> = {};
  public readonly users: Record<string, User> = {};
  public readonly groups: Record<string, Group> = {};
  public readonly roles: Record<string, Role> = {};
  public readonly assignments: RoleAssignment[] = [];

  constructor(name: string, args: IdentityArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("kvmlab:identity:Identity", name, {}, opts);
    const hosts = resolveHosts(args.hosts, args.hostDiscovery).hosts;
    const child = (deps: pulumi.Resource[]): pulumi.CustomResourceOptions => ({
      parent: this,
      dependsOn: deps,
    });
    const id = (domain: string | undefined, n: string): string =>
      n.includes("/") ? n : `${domain ?? DEFAULT_DOMAIN}/${n}`;

    const domains = [...(args.domains ?? [])];
    if (!domains.some((d) => d.name === DEFAULT_DOMAIN)) domains.unshift({ name: DEFAULT_DOMAIN });
    for (const d of domains)
      this.domains[d.name] = new Domain(
        `${name}-domain-${d.name}`,
        { domainName: d.name, description: d.description, enabled: d.enabled, hosts },
        child([]),
      );
    const domainOf = (d?: string): pulumi.Resource[] =>
      [this.domains[d ?? DEFAULT_DOMAIN]].filter((x) => x !== undefined);

    for (const p of args.projects ?? []) {
      const parent = p.parent ? this.projects[id(p.domain, p.parent)] : undefined;
      this.projects[id(p.domain, p.name)] = new Project(
        `${name}-project-${p.domain ?? DEFAULT_DOMAIN}-${p.name}`,
        {
          projectName: p.name,
          domain: p.domain,
          parent: p.parent,
          description: p.description,
          quotas: p.quotas,
          hosts,
        },
        child([...domainOf(p.domain), ...(parent ? [parent] : [])]),
      );
    }
    for (const u of args.users ?? [])
      this.users[id(u.domain, u.name)] = new User(
        `${name}-user-${u.domain ?? DEFAULT_DOMAIN}-${u.name}`,
        {
          userName: u.name,
          domain: u.domain,
          password: u.password,
          sshPublicKeys: u.sshPublicKeys,
          email: u.email,
          enabled: u.enabled,
          hosts,
        },
        child(domainOf(u.domain)),
      );
    const allUsers = Object.values(this.users);
    for (const g of args.groups ?? [])
      this.groups[id(g.domain, g.name)] = new Group(
        `${name}-group-${g.domain ?? DEFAULT_DOMAIN}-${g.name}`,
        { groupName: g.name, domain: g.domain, members: g.members, hosts },
        child([...domainOf(g.domain), ...allUsers]),
      );
    for (const r of args.roles ?? [])
      this.roles[r.domain ? `${r.domain}/${r.name}` : r.name] = new Role(
        `${name}-role-${r.domain ?? "global"}-${r.name}`,
        { roleName: r.name, domain: r.domain, implies: r.implies, hosts },
        child(r.domain ? domainOf(r.domain) : []),
      );
    const everything = [
      ...Object.values(this.domains),
      ...Object.values(this.projects),
      ...allUsers,
      ...Object.values(this.groups),
      ...Object.values(this.roles),
    ];
    (args.assignments ?? []).forEach((a, i) =>
      this.assignments.push(
        new RoleAssignment(
          `${name}-assignment-${i}-${a.user ?? a.group}-${a.role}`,
          {
            user: a.user,
            group: a.group,
            project: a.project,
            domain: a.domain,
            role: a.role,
            inherited: a.inherited,
            hosts,
          },
          child(everything),
        ),
      ),
    );
    this.registerOutputs({ projects: Object.keys(this.projects), users: Object.keys(this.users) });
  }

  /** A project's id (`<domain>/<name>`) as an Output a Server's `project` takes (so the Server waits for it). */
  projectId(project: string, domain: string = DEFAULT_DOMAIN): pulumi.Output<string> {
    const key = project.includes("/") ? project : `${domain}/${project}`;
    const p = this.projects[key];
    if (!p)
      throw new Error(
        `project: ${key} is not among this Identity's projects (${Object.keys(this.projects).join(", ")})`,
      );
    return p.recordId;
  }
}
