/** Shared by the graph tests: the lab they draw and what it holds. */
import * as path from "node:path";
import { loadLab } from "../../../lab/parse";
import { repoRoot } from "../templates/support";

export const LAB = path.join(repoRoot(), "stacks", "three-tier.yaml");

/** What the lab holds, counted from the lab itself: the names every picture must show. */
export function expectedObjects(file = LAB): Record<string, string[]> {
  const lab = loadLab(file);
  return {
    host: lab.hosts.map((h) => h.name),
    network: lab.networks.map((n) => n.name),
    router: lab.routers.map((r) => r.name),
    server: [
      ...lab.servers.map((s) => s.name),
      // Every slot of a group (the AutoscaleGroup component defines them all).
      ...lab.autoscaleGroups.flatMap((g) => Array.from({ length: g.max }, (_, i) => `${g.name}-${i}`)),
    ],
    loadbalancer: lab.loadBalancers.map((l) => l.name),
  };
}
