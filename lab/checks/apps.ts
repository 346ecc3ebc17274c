/** Apps: a three-tier app's tiers name their autoscale groups, load balancers and servers, consistently. */
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
}
