/** Identity: domains, projects, users and assignments refer to defined names; the default project exists. */
import { type CheckContext, rec, items } from "./context";

export function checkIdentity(c: CheckContext): void {
  const { data, add, ref, projectsOrAdmin } = c;
  const { domains, projects, users } = c.known;
  // ---- identity ----------------------------------------------------------------------------
  const identity = rec(data.identity);
  for (const [i, p] of items(identity, "projects"))
    ref(["identity", "projects", i, "domain"], p.domain, domains, "domain");
  for (const [i, u] of items(identity, "users"))
    ref(["identity", "users", i, "domain"], u.domain, domains, "domain");
  for (const [i, a] of items(identity, "assignments")) {
    ref(["identity", "assignments", i, "user"], a.user, users, "user");
    ref(["identity", "assignments", i, "project"], a.project, projects, "project");
  }
  if (data.defaultProject !== undefined)
    ref(["defaultProject"], data.defaultProject, projectsOrAdmin, "project");
  if (data.defaultProject === undefined && projects.size > 0 && !projects.has("admin")) {
    const needsProject = [
      ...items(data, "servers"),
      ...items(data, "loadBalancers"),
      ...items(data, "autoscaleGroups"),
    ].some(([, x]) => x.project === undefined);
    if (needsProject)
      add(
        [],
        'objects without "project" belong to "admin", which identity.projects does not define',
        `set defaultProject to one of: ${[...projects.keys()].join(", ")}`,
      );
  }
}
