/**
 * Apps: a three-tier app's tiers name their autoscale groups, load balancers and servers,
 * consistently. Autoscale groups' load balancers: the lab program builds a group's load balancer
 * through the AutoscaleGroup component, which gives it one listener whose pool holds the group's
 * slots, all of weight 1 (components/autoscaleGroup.ts).
 */
import type { PathSegment } from "../locate";
import { type CheckContext, rec, bool, items } from "./context";

export function checkApps(c: CheckContext): void {
  const { data, add, ref } = c;
  const { lbs, asgs, servers } = c.known;
  // ---- apps -------------------------------------------------------------------------------
  for (const [i, a] of items(data, "apps")) {
    const path: PathSegment[] = ["apps", i];
    for (const tier of ["web", "was"] as const) {
      const t = rec(a[tier]);
      if (!t) continue;
      if (t.autoscaleGroup === undefined)
        add([...path, tier], `the ${tier} tier needs an autoscaleGroup`, "add autoscaleGroup: <group name>");
      else ref([...path, tier, "autoscaleGroup"], t.autoscaleGroup, asgs, "autoscale group");
      if (t.loadBalancer === undefined)
        add(
          [...path, tier],
          `the ${tier} tier needs a loadBalancer`,
          "add loadBalancer: <load balancer name>",
        );
      else ref([...path, tier, "loadBalancer"], t.loadBalancer, lbs, "load balancer");
      const g = items(data, "autoscaleGroups").find(([, x]) => x.name === t.autoscaleGroup)?.[1];
      const poolLb = rec(g?.pool)?.loadBalancer;
      if (g && t.loadBalancer !== undefined && poolLb !== t.loadBalancer) {
        add(
          [...path, tier, "loadBalancer"],
          `autoscale group ${String(t.autoscaleGroup)} registers with ${poolLb === undefined ? "no load balancer" : String(poolLb)}, not ${String(t.loadBalancer)}`,
          `set autoscaleGroups[].pool.loadBalancer of ${String(t.autoscaleGroup)} to ${String(t.loadBalancer)}`,
        );
      }
    }
    for (const tier of ["db", "bastion"] as const) {
      const t = rec(a[tier]);
      if (!t) continue;
      if (t.server === undefined)
        add([...path, tier], `the ${tier} tier needs a server`, "add server: <server name>");
      else ref([...path, tier, "server"], t.server, servers, "server");
    }
    const web = items(data, "loadBalancers").find(([, x]) => x.name === rec(a.web)?.loadBalancer)?.[1];
    if (web && !bool(web.floatingIp, false))
      add(
        [...path, "web", "loadBalancer"],
        `the public load balancer ${String(web.name)} has no floating IP`,
        `set floatingIp: true on load balancer ${String(web.name)}`,
      );
    const bastion = items(data, "servers").find(([, x]) => x.name === rec(a.bastion)?.server)?.[1];
    if (bastion && !bool(bastion.floatingIp, false))
      add(
        [...path, "bastion", "server"],
        `the bastion ${String(bastion.name)} has no floating IP`,
        `set floatingIp: true on server ${String(bastion.name)}`,
      );
  }

  // ---- autoscale groups' load balancers ------------------------------------------------------
  const lbUsers = new Map<unknown, string>();
  for (const [i, g] of items(data, "autoscaleGroups")) {
    const pool = rec(g.pool);
    if (!pool) continue;
    const path: PathSegment[] = ["autoscaleGroups", i, "pool"];
    if (pool.weight !== undefined && pool.weight !== 1)
      add(
        [...path, "weight"],
        `the AutoscaleGroup component gives every slot of ${String(g.name)} weight 1, not ${String(pool.weight)}`,
        "drop weight (the group's members are alike)",
      );
    const other = lbUsers.get(pool.loadBalancer);
    if (other !== undefined)
      add(
        [...path, "loadBalancer"],
        `load balancer ${String(pool.loadBalancer)} is already autoscale group ${other}'s (a group builds its own load balancer)`,
        `give ${String(g.name)} a load balancer of its own`,
      );
    lbUsers.set(pool.loadBalancer, String(g.name));
    const lbEntry = items(data, "loadBalancers").find(([, x]) => x.name === pool.loadBalancer);
    if (!lbEntry) continue;
    const [j, lb] = lbEntry;
    const listeners = items(lb, "listeners");
    if (listeners.length !== 1)
      add(
        ["loadBalancers", j, "listeners"],
        `load balancer ${String(lb.name)} is autoscale group ${String(g.name)}'s: the AutoscaleGroup component gives it exactly one listener (the group's), not ${listeners.length}`,
        "keep only the group's listener here and put the others on a load balancer of their own",
      );
    for (const [k, l] of listeners) {
      if (items(l, "l7Policies").length > 0)
        add(
          ["loadBalancers", j, "listeners", k, "l7Policies"],
          `listener ${String(l.name)} of autoscale group ${String(g.name)}'s load balancer has L7 policies; the AutoscaleGroup component builds its listener without them`,
          "drop l7Policies, or put them on a load balancer of its own",
        );
      if (items(rec(l.pool), "members").length > 0)
        add(
          ["loadBalancers", j, "listeners", k, "pool", "members"],
          `the pool of autoscale group ${String(g.name)}'s listener lists members of its own; the group's slots are its only members`,
          "drop members (the group's slots join the pool by themselves)",
        );
    }
  }
}
