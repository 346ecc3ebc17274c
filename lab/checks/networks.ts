/** Networks and subnets: CIDRs, gateways and pools inside their subnet; no overlap within a network. */
import { cidrContains, hostRange, intToIp, ipToInt, isIPv4, overlaps } from "../../core/net";
import type { PathSegment } from "../locate";
import { type CheckContext, rec, str, bool, items, type SubnetInfo } from "./context";
import { checkSegmentationId, kindOfType, type NetworkType } from "../../core/network";

/** type against kind and driver, segmentationId against type (core/network.ts rules). */
function checkNetworkType(n: Record<string, unknown>, i: number, add: CheckContext["add"]): void {
  const kind = n.kind === "provider" || n.kind === "selfservice" ? n.kind : null;
  const type = typeof n.type === "string" ? (n.type as NetworkType) : kind === "provider" ? "flat" : "vxlan";
  if (kind !== null && n.type !== undefined && kindOfType(type) !== kind)
    add(
      ["networks", i, "type"],
      `type ${type} does not go with kind ${kind} (a ${type} network is kind ${kindOfType(type)})`,
      `set kind: ${kindOfType(type)}, or a type of kind ${kind}`,
    );
  if (type === "gre" && (n.driver ?? "linuxbridge") !== "openvswitch")
    add(
      ["networks", i, "driver"],
      "a gre network needs Open vSwitch (GRE tunnel ports)",
      "set driver: openvswitch or type: vxlan",
    );
  if (n.segmentationId !== undefined) {
    const bad = checkSegmentationId(type, n.segmentationId);
    if (bad)
      add(
        ["networks", i, "segmentationId"],
        bad,
        type === "flat" || type === "local" ? "remove segmentationId" : "pick an id in the range",
      );
    if (type === "vxlan" && n.vni !== undefined && n.vni !== n.segmentationId)
      add(["networks", i, "segmentationId"], `segmentationId and vni differ`, "set only one of them");
  } else if (type === "vlan")
    add(["networks", i, "segmentationId"], "a vlan network needs its VLAN id", "set segmentationId: 1-4094");
  if (n.vni !== undefined && type !== "vxlan")
    add(["networks", i, "vni"], `vni is the VXLAN id; a ${type} network has none`, "use segmentationId");
}

export function checkNetworks(c: CheckContext): void {
  const { data, add, cidrAt, subnetInfo, fixedIps } = c;
  // ---- networks and subnets ----------------------------------------------------------------
  for (const [i, n] of items(data, "networks")) {
    const external = bool(n.external, false);
    const infos: SubnetInfo[] = [];
    checkNetworkType(n, i, add);
    if (external && n.kind === "selfservice") {
      add(
        ["networks", i, "external"],
        "an external network must be a provider network",
        "set kind: provider (with physicalInterface) or external: false",
      );
    }
    for (const [j, s] of items(n, "subnets")) {
      const path: PathSegment[] = ["networks", i, "subnets", j];
      const cidr = cidrAt([...path, "cidr"], s.cidr);
      let gateway: number | null = null;
      const inside = (p: PathSegment[], v: unknown, what: string): number | null => {
        if (!isIPv4(v) || cidr === null) return null;
        const ip = ipToInt(v);
        if (!cidrContains(cidr, ip)) {
          add(p, `${what} ${v} is outside ${cidr.text}`, `pick an address inside ${cidr.text}`);
          return null;
        }
        if (cidr.prefix < 31 && (ip === cidr.network || ip === cidr.broadcast)) {
          add(
            p,
            `${what} ${v} is the ${ip === cidr.network ? "network" : "broadcast"} address of ${cidr.text}`,
            `use one of ${intToIp(hostRange(cidr)[0])}–${intToIp(hostRange(cidr)[1])}`,
          );
          return null;
        }
        return ip;
      };
      if (s.gateway !== undefined) gateway = inside([...path, "gateway"], s.gateway, "gateway");
      const pool = rec(s.pool);
      let range: [number, number] | null = null;
      if (pool !== null) {
        const start = inside([...path, "pool", "start"], pool.start, "pool start");
        const end = inside([...path, "pool", "end"], pool.end, "pool end");
        if (start !== null && end !== null) {
          if (start > end)
            add(
              [...path, "pool", "end"],
              `pool end ${String(pool.end)} comes before start ${String(pool.start)}`,
              "swap start and end",
            );
          else range = [start, end];
        }
        if (range !== null && gateway !== null && gateway >= range[0] && gateway <= range[1]) {
          add(
            [...path, "gateway"],
            `gateway ${String(s.gateway)} lies inside the allocation pool`,
            "move the gateway out of the pool or shrink the pool",
          );
        }
      }
      const name = str(s.name);
      const info: SubnetInfo = {
        path,
        name: name ?? "",
        network: str(n.name) ?? "",
        networkExternal: external,
        cidr,
        gateway,
        pool: range,
        dhcp: bool(s.dhcp, true),
      };
      infos.push(info);
      if (name !== null && !subnetInfo.has(name)) subnetInfo.set(name, info);
      if (name !== null) fixedIps.set(name, new Map());
    }
    for (let a = 0; a < infos.length; a++)
      for (let b = a + 1; b < infos.length; b++) {
        const x = infos[a].cidr;
        const y = infos[b].cidr;
        if (x && y && overlaps(x, y))
          add(
            [...infos[b].path, "cidr"],
            `${y.text} overlaps ${x.text} of subnet ${infos[a].name} in the same network`,
            "give each subnet of a network its own range",
          );
      }
  }
}
