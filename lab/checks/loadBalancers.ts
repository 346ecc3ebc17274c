/** Load balancers: VIP subnet and address, floating IP, listeners (unique ports, members, the HAProxy view's own rules). */
import { FieldError } from "../../core/errors";
import { toHaproxyView, type L7PolicySpec, type ListenerSpec, type PoolSpec } from "../../templates/haproxy";
import type { PathSegment } from "../locate";
import { type CheckContext, type Rec, rec, str, num, bool, items, formatPathLocal } from "./context";

export function checkLoadBalancers(c: CheckContext): void {
  const { data, add, names, ref, projectsOrAdmin, need, fixed, canFloat, schemaIssuePaths } = c;
  const { hosts, subnets, groups, servers } = c.known;
  // ---- load balancers ---------------------------------------------------------------------
  for (const [i, lb] of items(data, "loadBalancers")) {
    const path: PathSegment[] = ["loadBalancers", i];
    ref([...path, "vipSubnet"], lb.vipSubnet, subnets, "subnet");
    if (lb.project !== undefined) ref([...path, "project"], lb.project, projectsOrAdmin, "project");
    if (lb.host !== undefined) ref([...path, "host"], lb.host, hosts, "host");
    (Array.isArray(lb.securityGroups) ? lb.securityGroups : []).forEach((g, k) =>
      ref([...path, "securityGroups", k], g, groups, "security group"),
    );
    const standby = lb.topology === "ACTIVE_STANDBY";
    if (lb.standbyHost !== undefined) {
      ref([...path, "standbyHost"], lb.standbyHost, hosts, "host");
      if (!standby)
        add(
          [...path, "standbyHost"],
          "standbyHost applies only to topology ACTIVE_STANDBY",
          "set topology: ACTIVE_STANDBY, or remove standbyHost",
        );
      else if (lb.host !== undefined && lb.host === lb.standbyHost)
        add(
          [...path, "standbyHost"],
          `both amphorae would run on ${String(lb.host)}; ACTIVE_STANDBY needs two hosts`,
          "name another host as standbyHost",
        );
    }
    // A lab without `hosts` takes them from stack config at apply time (checked there).
    if (standby && hosts.size === 1)
      add(
        [...path, "topology"],
        "ACTIVE_STANDBY runs two amphorae on two hosts; the lab has one",
        "add a host, or use topology SINGLE",
      );
    if (lb.vipAddress !== undefined) fixed([...path, "vipAddress"], lb.vipSubnet, lb.vipAddress);
    else need(lb.vipSubnet, 1);
    // ACTIVE_STANDBY: each amphora's own VRRP address comes from the pool too.
    if (standby) need(lb.vipSubnet, 2);
    if (bool(lb.floatingIp, false) && !canFloat(str(lb.vipSubnet))) {
      add(
        [...path, "floatingIp"],
        `subnet ${String(lb.vipSubnet)} is not behind a router with an external network`,
        "attach the VIP subnet to a router that has externalNetwork, or remove floatingIp",
      );
    }
    names(
      "listener",
      items(lb, "listeners").map(([j, l]) => [[...path, "listeners", j], l.name]),
    );
    const ports = new Map<number, number>();
    for (const [j, l] of items(lb, "listeners")) {
      const lpath: PathSegment[] = [...path, "listeners", j];
      const port = num(l.protocolPort);
      if (port !== null) {
        if (ports.has(port))
          add(
            [...lpath, "protocolPort"],
            `port ${port} is already used by listeners[${ports.get(port)}]`,
            "give each listener its own port",
          );
        else ports.set(port, j);
      }
      const pool = rec(l.pool);
      for (const [k, m] of items(pool, "members"))
        if (m.server !== undefined)
          ref([...lpath, "pool", "members", k, "server"], m.server, servers, "server");
      for (const [q, pol] of items(l, "l7Policies"))
        for (const [k, m] of items(rec(pol.redirectPool), "members"))
          if (m.server !== undefined)
            ref(
              [...lpath, "l7Policies", q, "redirectPool", "members", k, "server"],
              m.server,
              servers,
              "server",
            );
      // The HAProxy view owns protocol/persistence/monitor rules: build it for this listener
      // with placeholder addresses and report its first objection here.
      const lpathText = formatPathLocal(lpath);
      if (
        schemaIssuePaths.some(
          (p) => p === lpathText || p.startsWith(`${lpathText}.`) || p.startsWith(`${lpathText}[`),
        )
      )
        continue;
      try {
        const spec = toListenerSpec(l);
        if (spec !== null) {
          toHaproxyView({
            name: "validate",
            vipAddress: "192.0.2.1",
            statsSocket: "/run/kvmlab/validate.sock",
            listeners: [spec],
          });
        }
      } catch (err) {
        if (!(err instanceof FieldError)) throw err;
        const field = viewFieldToPath(err.field);
        if (field !== null) add([...lpath, ...field], err.problem, err.fix ?? "see docs/lab-definition.md");
      }
    }
  }
}

/** Maps a HAProxy view field (`listeners[0].defaultPool.members[1].name`) to the YAML path under a listener. */
function viewFieldToPath(field: string): PathSegment[] | null {
  const tokens = [...field.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) =>
    m[2] !== undefined ? Number(m[2]) : m[1],
  );
  if (tokens[0] !== "listeners" || tokens[1] !== 0) return null;
  return tokens.slice(2).map((t) => (t === "defaultPool" ? "pool" : t));
}

/** The HAProxy view's listener spec for a raw YAML listener, members at placeholder addresses. */
function toListenerSpec(l: Rec): ListenerSpec | null {
  if (typeof l.name !== "string" || typeof l.protocol !== "string" || typeof l.protocolPort !== "number")
    return null;
  const poolSpec = (pool: Rec | null): PoolSpec | null =>
    pool === null
      ? null
      : {
          ...(pool as unknown as PoolSpec),
          lbAlgorithm: (str(pool.lbAlgorithm) ?? "ROUND_ROBIN") as PoolSpec["lbAlgorithm"],
          members: items(pool, "members").map(([k, m]) => ({
            name: str(m.server) ?? str(m.name) ?? `member-${k}`,
            address: str(m.address) ?? "192.0.2.2",
            protocolPort: num(m.protocolPort) ?? 1,
            weight: num(m.weight) ?? 1,
            backup: bool(m.backup, false),
            adminStateUp: bool(m.adminStateUp, true),
            monitorPort: num(m.monitorPort),
            monitorAddress: str(m.monitorAddress),
          })),
        };
  return {
    ...(l as unknown as ListenerSpec),
    defaultPool: poolSpec(rec(l.pool)),
    l7Policies: items(l, "l7Policies").map(([, p]) => ({
      ...(p as unknown as L7PolicySpec),
      redirectPool: poolSpec(rec(p.redirectPool)),
    })),
  };
}
