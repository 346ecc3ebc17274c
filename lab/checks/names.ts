/** Names per kind: every name unique within its kind (servers share theirs with autoscale members); host addresses. */
import { isIPv4 } from "../../core/net";
import type { PathSegment } from "../locate";
import { type CheckContext, rec, str, num, items } from "./context";

export function checkNames(c: CheckContext): void {
  const { data, add, names } = c;
  // ---- names per kind ---------------------------------------------------------------------
  const hosts = names(
    "host",
    items(data, "hosts").map(([i, h]) => [["hosts", i], h.name]),
  );
  // The schema admits IPv4 addresses and DNS names alike; four numbers with dots are never a DNS
  // name (a top-level label is not all digits), so they must be a valid IPv4 address.
  for (const [i, h] of items(data, "hosts")) {
    const address = str(h.address);
    if (address !== null && /^\d+(\.\d+){3}$/.test(address) && !isIPv4(address)) {
      add(
        ["hosts", i, "address"],
        `${address} is not a valid IPv4 address`,
        "use four numbers from 0 to 255 (e.g. 10.255.0.11) or the host's DNS name",
      );
    }
  }
  const identity = rec(data.identity);
  const domains = names(
    "domain",
    items(identity, "domains").map(([i, d]) => [["identity", "domains", i], d.name]),
  );
  const projects = names(
    "project",
    items(identity, "projects").map(([i, p]) => [["identity", "projects", i], p.name]),
  );
  const users = names(
    "user",
    items(identity, "users").map(([i, u]) => [["identity", "users", i], u.name]),
  );
  const images = names(
    "image",
    items(data, "images").map(([i, x]) => [["images", i], x.name]),
  );
  const flavors = names(
    "flavor",
    items(data, "flavors").map(([i, x]) => [["flavors", i], x.name]),
  );
  const keypairs = names(
    "keypair",
    items(data, "keypairs").map(([i, x]) => [["keypairs", i], x.name]),
  );
  const networks = names(
    "network",
    items(data, "networks").map(([i, x]) => [["networks", i], x.name]),
  );
  const subnetEntries: [PathSegment[], unknown][] = [];
  for (const [i, n] of items(data, "networks"))
    for (const [j, s] of items(n, "subnets")) subnetEntries.push([["networks", i, "subnets", j], s.name]);
  const subnets = names("subnet", subnetEntries);
  names(
    "router",
    items(data, "routers").map(([i, x]) => [["routers", i], x.name]),
  );
  const groups = names(
    "security group",
    items(data, "securityGroups").map(([i, x]) => [["securityGroups", i], x.name]),
  );
  const lbs = names(
    "load balancer",
    items(data, "loadBalancers").map(([i, x]) => [["loadBalancers", i], x.name]),
  );
  const asgs = names(
    "autoscale group",
    items(data, "autoscaleGroups").map(([i, x]) => [["autoscaleGroups", i], x.name]),
  );
  names(
    "app",
    items(data, "apps").map(([i, x]) => [["apps", i], x.name]),
  );
  // Servers share one namespace with autoscale group members (<group>-0 … <group>-<max-1>).
  const serverEntries: [PathSegment[], unknown][] = items(data, "servers").map(([i, x]) => [
    ["servers", i],
    x.name,
  ]);
  for (const [i, g] of items(data, "autoscaleGroups")) {
    const max = num(g.max) ?? 0;
    const name = str(g.name);
    if (name !== null)
      for (let k = 0; k < Math.min(max, 100); k++)
        serverEntries.push([["autoscaleGroups", i], `${name}-${k}`]);
  }
  const servers = names("server", serverEntries);
  const volumes = names(
    "volume",
    items(data, "volumes").map(([i, x]) => [["volumes", i], x.name]),
  );

  c.known = {
    hosts,
    domains,
    projects,
    users,
    images,
    flavors,
    keypairs,
    networks,
    subnets,
    groups,
    lbs,
    asgs,
    servers,
    volumes,
  };
}
