/** Pool capacity: each subnet's pool holds the dynamic addresses the lab needs (DHCP, VIPs, ports at autoscale max, floating IPs, router gateways). */
import { type CheckContext, str, bool, items } from "./context";

export function checkCapacity(c: CheckContext): void {
  const { data, add, subnetInfo, fixedIps, routedBy, routerExternal, demand, need } = c;
  // ---- pool capacity ----------------------------------------------------------------------
  // Floating IPs and router gateway legs come from the external network's first subnet.
  for (const [, r] of items(data, "routers")) {
    const ext = items(data, "networks").find(([, n]) => n.name === r.externalNetwork)?.[1];
    need(str(items(ext, "subnets")[0]?.[1].name), 1);
  }
  const floating = [...items(data, "servers"), ...items(data, "loadBalancers")].filter(([, x]) =>
    bool(x.floatingIp, false),
  );
  for (const [, x] of floating) {
    const subnet = str(items(x, "networks")[0]?.[1].subnet) ?? str(x.vipSubnet);
    const router = subnet === null ? undefined : routedBy.get(subnet);
    const extName = router === undefined ? null : routerExternal.get(router);
    const ext = items(data, "networks").find(([, n]) => n.name === extName)?.[1];
    need(str(items(ext, "subnets")[0]?.[1].name), 1);
  }
  for (const [name, info] of subnetInfo) {
    if (info.pool === null) continue;
    const dynamic = (demand.get(name) ?? 0) + (info.dhcp ? 1 : 0);
    const fixedInPool = [...(fixedIps.get(name)?.keys() ?? [])].filter(
      (ip) => ip >= info.pool![0] && ip <= info.pool![1],
    ).length;
    const size = info.pool[1] - info.pool[0] + 1 - fixedInPool;
    if (dynamic > size) {
      add(
        [...info.path, "pool"],
        `pool of subnet ${name} has ${size} free addresses but the lab needs up to ${dynamic} (DHCP, VIPs, ports at autoscale max, floating IPs)`,
        "widen the pool or lower the demand",
      );
    }
  }
}
