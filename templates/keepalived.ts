/**
 * keepalived.conf for one amphora of an ACTIVE_STANDBY load balancer, modelled on Octavia's
 * `amphorae/drivers/keepalived/jinja/templates/keepalived_base.template`: one `vrrp_instance`
 * holding the VIP, unicast VRRP between the two amphorae's own addresses on the VIP subnet
 * (`unicast_src_ip` / `unicast_peer`), `nopreempt`, PASS authentication, GARP refresh while
 * MASTER, and a `vrrp_script` that fails when this amphora's haproxy is gone (Octavia: the
 * haproxy check script over the stats socket), so the peer takes the VIP.
 *
 * Deviations from Octavia: no policy-routing table 1 (`virtual_routes`/`virtual_rules`), since
 * the amphora namespace has one leg; the check script tests the haproxy master's PID instead of
 * the stats socket (both fail when haproxy is gone); `script_user root` + `enable_script_security`
 * (the script lives in the root-owned per-LB folder).
 *
 * Pure: no I/O. Every field is validated; errors name the field.
 */
import { cidrContains, intToIp, ipv4ToInt, isIPv4, parseCidr } from "../core/net";
import { loadBalancerPaths, shortIdOf, vrrpRouterId } from "../core/paths";
import { checkIfName, checkInt, checkName, checkOneOf, checkPath, FieldError } from "./validate";

export const VRRP_ROLES = ["MASTER", "BACKUP"] as const;

/** Octavia's defaults (octavia.conf [keepalived_vrrp]). */
export const KEEPALIVED_DEFAULTS = {
  advertInt: 1,
  checkInterval: 5,
  failCount: 2,
  successCount: 2,
  garpRefresh: 5,
  garpRefreshRepeat: 2,
  /** Octavia: MASTER 100, BACKUP 90 (constants.ROLE_MASTER_PRIORITY / ROLE_BACKUP_PRIORITY). */
  priority: { MASTER: 100, BACKUP: 90 },
} as const;

export interface KeepalivedSpec {
  /** The load balancer's name (the vrrp_instance is `lb_<name>`). */
  readonly name: string;
  readonly role: (typeof VRRP_ROLES)[number];
  /** The amphora namespace's device on the VIP subnet. */
  readonly interface: string;
  /** 1..255, unique per VIP subnet (Octavia: the load balancer's vrrp_id). */
  readonly virtualRouterId: number;
  /** This amphora's own address on the VIP subnet (not the VIP). */
  readonly vrrpAddress: string;
  /** The peer amphora's address. */
  readonly peerAddress: string;
  readonly vipAddress: string;
  /** The VIP subnet (prefix for the VIP). */
  readonly cidr: string;
  /** At most 8 characters (VRRP PASS authentication). */
  readonly authPass: string;
  /** The check script (exit 0 while this amphora's haproxy runs). */
  readonly checkScript: string;
  /** Run on every state change (`notify <script>`: keepalived passes type, name, state, priority). */
  readonly notifyScript?: string;
  readonly advertInt?: number;
  readonly checkInterval?: number;
}

function checkIpv4(field: string, value: unknown): string {
  if (typeof value !== "string" || !isIPv4(value))
    throw new FieldError(field, `must be an IPv4 address, got ${JSON.stringify(value)}`);
  return value;
}

export function renderKeepalivedConf(spec: KeepalivedSpec): string {
  const name = checkName("name", spec.name);
  const role = checkOneOf("role", spec.role, VRRP_ROLES);
  const dev = checkIfName("interface", spec.interface);
  const vrid = checkInt("virtualRouterId", spec.virtualRouterId, 1, 255);
  const src = checkIpv4("vrrpAddress", spec.vrrpAddress);
  const peer = checkIpv4("peerAddress", spec.peerAddress);
  const vip = checkIpv4("vipAddress", spec.vipAddress);
  const net = parseCidr(spec.cidr);
  const prefix = net.prefix;
  for (const [field, ip] of [
    ["vrrpAddress", src],
    ["peerAddress", peer],
    ["vipAddress", vip],
  ] as const)
    if (!cidrContains(net, ip)) throw new FieldError(field, `${ip} is outside the VIP subnet ${spec.cidr}`);
  if (src === peer) throw new FieldError("peerAddress", "must differ from vrrpAddress (the two amphorae)");
  if (vip === src || vip === peer)
    throw new FieldError("vipAddress", "must differ from both amphora addresses");
  if (typeof spec.authPass !== "string" || !/^[A-Za-z0-9]{1,8}$/.test(spec.authPass))
    throw new FieldError("authPass", "must be 1-8 letters or digits (VRRP PASS authentication keeps 8)");
  const script = checkPath("checkScript", spec.checkScript);
  const notify = spec.notifyScript === undefined ? null : checkPath("notifyScript", spec.notifyScript);
  const advert = checkInt("advertInt", spec.advertInt ?? KEEPALIVED_DEFAULTS.advertInt, 1, 255);
  const interval = checkInt(
    "checkInterval",
    spec.checkInterval ?? KEEPALIVED_DEFAULTS.checkInterval,
    1,
    3600,
  );
  return [
    `# keepalived.conf for load balancer ${name} (${role}), rendered by kvmlab`,
    "global_defs {",
    `  router_id ${name}`,
    "  script_user root",
    "  enable_script_security",
    "  vrrp_garp_master_delay 1",
    "}",
    "",
    "vrrp_script check_script {",
    `  script ${script}`,
    `  interval ${interval}`,
    `  fall ${KEEPALIVED_DEFAULTS.failCount}`,
    `  rise ${KEEPALIVED_DEFAULTS.successCount}`,
    "}",
    "",
    `vrrp_instance lb_${name.replace(/-/g, "_")} {`,
    "  state BACKUP",
    `  interface ${dev}`,
    `  virtual_router_id ${vrid}`,
    `  priority ${KEEPALIVED_DEFAULTS.priority[role]}`,
    "  nopreempt",
    "  accept",
    `  garp_master_refresh ${KEEPALIVED_DEFAULTS.garpRefresh}`,
    `  garp_master_refresh_repeat ${KEEPALIVED_DEFAULTS.garpRefreshRepeat}`,
    `  advert_int ${advert}`,
    "  authentication {",
    "    auth_type PASS",
    `    auth_pass ${spec.authPass}`,
    "  }",
    "",
    `  unicast_src_ip ${src}`,
    "  unicast_peer {",
    `    ${peer}`,
    "  }",
    "",
    "  virtual_ipaddress {",
    `    ${vip}/${prefix} dev ${dev}`,
    "  }",
    "",
    "  track_script {",
    "    check_script",
    "  }",
    ...(notify === null ? [] : ["", `  notify ${notify}`]),
    "}",
    "",
  ].join("\n");
}

/**
 * The two keepalived.conf of an ACTIVE_STANDBY load balancer (amphora 0 MASTER, 1 BACKUP) as
 * kvmlab runs them: the amphora namespace's device, the check and notify scripts in the load
 * balancer's folder, virtual_router_id and PASS from the name's hash. `vrrpAddresses` defaults
 * to the two addresses after the VIP.
 */
export function keepalivedPair(
  lbName: string,
  vipAddress: string,
  cidr: string,
  vrrpAddresses?: readonly string[],
): { vrrpAddresses: [string, string]; keepalivedConfs: [string, string] } {
  const vip = checkIpv4("vipAddress", vipAddress);
  const given = vrrpAddresses ?? [intToIp(ipv4ToInt(vip) + 1), intToIp(ipv4ToInt(vip) + 2)];
  if (given.length !== 2)
    throw new FieldError("vrrpAddresses", `expected two addresses (one per amphora), got ${given.length}`);
  const addrs: [string, string] = [given[0], given[1]];
  const p = loadBalancerPaths(lbName);
  const conf = (i: 0 | 1): string =>
    renderKeepalivedConf({
      name: lbName,
      role: i === 0 ? "MASTER" : "BACKUP",
      interface: p.nsDevice,
      virtualRouterId: vrrpRouterId(lbName),
      vrrpAddress: addrs[i],
      peerAddress: addrs[1 - i],
      vipAddress: vip,
      cidr,
      authPass: shortIdOf(`vrrp-pass/${lbName}`),
      checkScript: p.checkScript,
      notifyScript: p.notifyScript,
    });
  return { vrrpAddresses: addrs, keepalivedConfs: [conf(0), conf(1)] };
}
