/** Servers and autoscale groups: references, one port per subnet, fixed addresses, flavor fits image, floating IPs, sizes. */
import type { PathSegment } from "../locate";
import { type CheckContext, type Rec, rec, str, num, bool, items } from "./context";

export function checkServers(c: CheckContext): void {
  const { data, add, names, ref, projectsOrAdmin, need, fixed, canFloat } = c;
  const { hosts, images, flavors, keypairs, subnets, groups, lbs } = c.known;
  // ---- ports, servers, autoscale groups ----------------------------------------------------
  const checkLaunch = (path: PathSegment[], l: Rec, members: number) => {
    ref([...path, "image"], l.image, images, "image");
    ref([...path, "flavor"], l.flavor, flavors, "flavor");
    if (l.keypair !== undefined) ref([...path, "keypair"], l.keypair, keypairs, "keypair");
    (Array.isArray(l.securityGroups) ? l.securityGroups : []).forEach((g, k) =>
      ref([...path, "securityGroups", k], g, groups, "security group"),
    );
    const subnetsSeen = new Set<string>();
    for (const [k, p] of items(l, "networks")) {
      ref([...path, "networks", k, "subnet"], p.subnet, subnets, "subnet");
      if (typeof p.subnet === "string") {
        if (subnetsSeen.has(p.subnet))
          add(
            [...path, "networks", k, "subnet"],
            `a second port on subnet ${p.subnet}`,
            "use one port per subnet",
          );
        subnetsSeen.add(p.subnet);
      }
      if (p.fixedIp !== undefined) {
        if (members !== 1)
          add(
            [...path, "networks", k, "fixedIp"],
            "an autoscale group's members cannot share a fixed IP",
            "remove fixedIp",
          );
        else fixed([...path, "networks", k, "fixedIp"], p.subnet, p.fixedIp);
      } else need(p.subnet, members);
    }
    const image = items(data, "images").find(([, x]) => x.name === l.image)?.[1];
    const flavor = items(data, "flavors").find(([, x]) => x.name === l.flavor)?.[1];
    if (image && flavor) {
      const minRam = num(image.minRamMiB) ?? 0;
      const minDisk = num(image.minDiskGiB) ?? 0;
      const ram = num(flavor.ramMiB);
      const disk = num(flavor.diskGiB);
      if (ram !== null && ram < minRam)
        add(
          [...path, "flavor"],
          `flavor ${String(l.flavor)} has ${ram} MiB RAM; image ${String(l.image)} needs at least ${minRam} MiB`,
          "pick a bigger flavor or lower the image's minRamMiB",
        );
      if (disk !== null && disk !== 0 && disk < minDisk)
        add(
          [...path, "flavor"],
          `flavor ${String(l.flavor)} has a ${disk} GiB disk; image ${String(l.image)} needs at least ${minDisk} GiB`,
          "pick a flavor with a bigger disk",
        );
    }
  };
  for (const [i, s] of items(data, "servers")) {
    const path: PathSegment[] = ["servers", i];
    checkLaunch(path, s, 1);
    if (s.project !== undefined) ref([...path, "project"], s.project, projectsOrAdmin, "project");
    if (s.host !== undefined) ref([...path, "host"], s.host, hosts, "host");
    if (bool(s.floatingIp, false)) {
      const first = str(items(s, "networks")[0]?.[1].subnet);
      if (!canFloat(first))
        add(
          [...path, "floatingIp"],
          `subnet ${first} is not behind a router with an external network`,
          "attach the subnet to a router that has externalNetwork, or remove floatingIp",
        );
    }
  }
  for (const [i, g] of items(data, "autoscaleGroups")) {
    const path: PathSegment[] = ["autoscaleGroups", i];
    const [min, max, desired] = [num(g.min), num(g.max), num(g.desired)];
    if (min !== null && max !== null && min > max)
      add([...path, "max"], `max ${max} is below min ${min}`, "raise max or lower min");
    if (desired !== null && min !== null && desired < min)
      add([...path, "desired"], `desired ${desired} is below min ${min}`, "set min ≤ desired ≤ max");
    if (desired !== null && max !== null && desired > max)
      add([...path, "desired"], `desired ${desired} is above max ${max}`, "set min ≤ desired ≤ max");
    const launch = rec(g.launch);
    if (launch) checkLaunch([...path, "launch"], launch, max ?? 0);
    if (g.project !== undefined) ref([...path, "project"], g.project, projectsOrAdmin, "project");
    names(
      "policy",
      items(g, "policies").map(([k, p]) => [[...path, "policies", k], p.name]),
    );
    const pool = rec(g.pool);
    if (pool) {
      ref([...path, "pool", "loadBalancer"], pool.loadBalancer, lbs, "load balancer");
      const lb = items(data, "loadBalancers").find(([, x]) => x.name === pool.loadBalancer)?.[1];
      if (lb) {
        const listener = items(lb, "listeners").find(([, x]) => x.name === pool.listener)?.[1];
        const known = new Map(items(lb, "listeners").map(([, x]) => [String(x.name), x]));
        if (!listener)
          ref(
            [...path, "pool", "listener"],
            pool.listener,
            known,
            `listener of ${String(pool.loadBalancer)}`,
          );
        else if (!rec(listener.pool))
          add(
            [...path, "pool", "listener"],
            `listener ${String(pool.listener)} has no pool`,
            `add a pool to listener ${String(pool.listener)}`,
          );
      }
    }
  }
}
