/** Routers: external networks are external; each subnet on one router, with a gateway, without overlaps. */
import { overlaps } from "../../core/net";
import { type CheckContext, str, bool, items, type SubnetInfo } from "./context";

export function checkRouters(c: CheckContext): void {
  const { data, add, ref, subnetInfo, routedBy, routerExternal } = c;
  const { networks, subnets } = c.known;
  // ---- routers ----------------------------------------------------------------------------
  for (const [i, r] of items(data, "routers")) {
    const ext = str(r.externalNetwork);
    if (r.externalNetwork !== undefined) {
      ref(["routers", i, "externalNetwork"], r.externalNetwork, networks, "network");
      const netEntry = items(data, "networks").find(([, n]) => n.name === ext);
      if (netEntry && !bool(netEntry[1].external, false)) {
        add(
          ["routers", i, "externalNetwork"],
          `network "${ext}" is not external`,
          `set external: true on network ${ext} or pick an external network`,
        );
      }
    }
    routerExternal.set(str(r.name) ?? "", ext);
    const attached: SubnetInfo[] = [];
    const list = Array.isArray(r.interfaces) ? r.interfaces : [];
    list.forEach((s, j) => {
      ref(["routers", i, "interfaces", j], s, subnets, "subnet");
      const info = typeof s === "string" ? subnetInfo.get(s) : undefined;
      if (info === undefined) return;
      if (info.network === ext)
        add(
          ["routers", i, "interfaces", j],
          `subnet ${s} belongs to the router's external network`,
          "attach internal subnets only",
        );
      if (info.gateway === null)
        add(
          ["routers", i, "interfaces", j],
          `subnet ${s} has no gateway for the router to take`,
          `set gateway on subnet ${s}`,
        );
      const other = routedBy.get(s as string);
      if (other !== undefined && other !== r.name)
        add(
          ["routers", i, "interfaces", j],
          `subnet ${s} is already attached to router ${other}`,
          "attach each subnet to one router",
        );
      routedBy.set(s as string, String(r.name));
      for (const prev of attached) {
        if (prev.cidr && info.cidr && overlaps(prev.cidr, info.cidr)) {
          add(
            ["routers", i, "interfaces", j],
            `${info.cidr.text} of ${s} overlaps ${prev.cidr.text} of ${prev.name}, both on this router`,
            "use non-overlapping ranges for subnets behind one router",
          );
        }
      }
      attached.push(info);
    });
  }
}
