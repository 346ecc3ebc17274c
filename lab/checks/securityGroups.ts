/** Security groups: remote groups exist; ports only for tcp/udp; port ranges in order. */
import type { PathSegment } from "../locate";
import { type CheckContext, rec, num, items } from "./context";

export function checkSecurityGroups(c: CheckContext): void {
  const { data, add, ref } = c;
  const { groups } = c.known;
  // ---- security groups --------------------------------------------------------------------
  for (const [i, g] of items(data, "securityGroups"))
    for (const [j, r] of items(g, "rules")) {
      const path: PathSegment[] = ["securityGroups", i, "rules", j];
      if (r.remoteGroup !== undefined) ref([...path, "remoteGroup"], r.remoteGroup, groups, "security group");
      const portful = r.protocol === "tcp" || r.protocol === "udp";
      if (!portful && (r.port !== undefined || r.portRange !== undefined)) {
        add(
          [...path, r.port !== undefined ? "port" : "portRange"],
          `protocol ${String(r.protocol)} has no ports`,
          "remove port/portRange or use tcp/udp",
        );
      }
      if (r.port !== undefined && r.portRange !== undefined)
        add([...path, "portRange"], "give port or portRange, not both", "remove one");
      const pr = rec(r.portRange);
      if (pr && num(pr.min) !== null && num(pr.max) !== null && (pr.min as number) > (pr.max as number)) {
        add(
          [...path, "portRange", "max"],
          `max ${String(pr.max)} is below min ${String(pr.min)}`,
          "swap min and max",
        );
      }
    }
}
