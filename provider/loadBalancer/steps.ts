/**
 * Pure parts of the LoadBalancer provider: the remote scripts (built only from validated values
 * and shQuote()d arguments), the parser of what the read step prints, Octavia's status mapping
 * and the member diff between two configs. No SSH here; provider/loadBalancer.ts runs them.
 */
import type { LoadBalancerPaths } from "../../core/paths";
import { parseKeyValues } from "../kit/kv";
import { ovsOwnerGuardLines } from "../kit/owner";
import { shQuote, vethLegLines, type Step } from "../host";

/** Octavia's member operating statuses (what its health manager derives from haproxy). */
export type MemberOperatingStatus = "ONLINE" | "OFFLINE" | "ERROR" | "NO_MONITOR" | "DRAINING";
/** Octavia's load balancer / listener / pool operating statuses. */
export type OperatingStatus = "ONLINE" | "OFFLINE" | "DEGRADED" | "ERROR" | "NO_MONITOR";

/** The VIP port as the namespace holds it. */
export interface VipPortSpec {
  readonly lbName: string;
  readonly networkBridge: string;
  readonly driver: "linuxbridge" | "openvswitch";
  /** Address with prefix, e.g. 10.10.0.50/24. */
  readonly addressCidr: string;
  readonly mac: string;
  /** Default route of the namespace ("" for none). */
  readonly gateway: string;
  readonly mtu: number;
  /**
   * ACTIVE_STANDBY: the VIP/prefix keepalived may add to the device (kept, not removed as a
   * stray address), and haproxy may bind it while this amphora is BACKUP (ip_nonlocal_bind).
   */
  readonly vipCidr?: string;
  /** The OVS port's owner/project external_ids (kit/owner.ts ovsOwnerIds; issue 14). @default none */
  readonly ovsIds?: string;
  /** With ovsIds: the owners the port may already carry (host/veth.ts ovsGuard; review O2). */
  readonly ovsGuard?: readonly string[];
}

/** What the read step finds on the host. */
export interface LoadBalancerHostState {
  namespace: boolean;
  port: boolean;
  portInBridge: boolean;
  address: string;
  mac: string;
  /** The master-worker process is alive. */
  haproxy: boolean;
  /** sha256 of the haproxy.cfg on the host ("" when absent). */
  configSha: string;
  /** A rejected config is kept beside the running one. */
  failedConfig: boolean;
  /** `<backend>/<server>` → haproxy status column (UP, DOWN, DRAIN, MAINT, "no check", …). */
  servers: Record<string, string>;
  /** backend → haproxy's BACKEND row status (UP / DOWN). */
  backends: Record<string, string>;
  /** ACTIVE_STANDBY: keepalived (its PID file's process) is alive. */
  keepalived: boolean;
  /** sha256 of keepalived.conf ("" when absent). */
  keepalivedConfigSha: string;
  /** What keepalived's notify script last wrote: MASTER, BACKUP, FAULT, STOP ("" never). */
  vrrpState: string;
  /** The device holds the VIP (read only when asked). */
  holdsVip: boolean;
}

const ALIVE =
  'alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(awk \'{print $3}\' "/proc/$1/stat")" != Z ] && grep -q haproxy "/proc/$1/comm"; }';

function vars(paths: LoadBalancerPaths): string {
  return [
    `ns=${shQuote(paths.namespace)}; hd=${paths.hostDevice}; nd=${paths.nsDevice}; dir=${shQuote(paths.dir)}`,
    `cfg=${shQuote(paths.config)}; new=${shQuote(paths.newConfig)}; failed=${shQuote(paths.failedConfig)}`,
    `sock=${shQuote(paths.statsSocket)}; msock=${shQuote(paths.masterSocket)}; pidf=${shQuote(paths.pidFile)}; state=${shQuote(paths.stateFile)}`,
    `kcfg=${shQuote(paths.keepalivedConfig)}; knew=${shQuote(paths.keepalivedNewConfig)}; kpid=${shQuote(paths.keepalivedPid)}; rpid=${shQuote(paths.vrrpPid)}; cpid=${shQuote(paths.checkerPid)}; vstate=${shQuote(paths.vrrpStateFile)}`,
    'kalive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(awk \'{print $3}\' "/proc/$1/stat")" != Z ] && grep -q keepalived "/proc/$1/comm"; }',
  ].join("\n");
}

/** Step: the namespace and the VIP veth in the network's bridge, with the VIP's address and MAC (idempotent). */
export function vipPortStep(spec: VipPortSpec, paths: LoadBalancerPaths): Step {
  const lines = [
    "set -e",
    vars(paths),
    `br=${shQuote(spec.networkBridge)}; mtu=${spec.mtu}; addr=${shQuote(spec.addressCidr)}; mac=${shQuote(spec.mac)}; gw=${shQuote(spec.gateway)}; keep=${shQuote(spec.vipCidr ?? "")}`,
    '[ -e "/sys/class/net/$br" ] || { echo "bridge $br of the VIP network is missing on this host; create or refresh the Network first, or place the load balancer on a host of that network" >&2; exit 21; }',
    '[ -e "/run/netns/$ns" ] || ip netns add "$ns"',
    'ip netns exec "$ns" ip link set lo up',
    ...vethLegLines({
      externalId: { key: "kvmlab-lb", value: spec.lbName },
      openvswitch: spec.driver === "openvswitch",
      ...(spec.ovsIds
        ? {
            ovsIds: spec.ovsIds,
            ovsGuard: spec.ovsGuard ?? [],
            ovsGuardText: {
              what: `the VIP port of load balancer ${spec.lbName}`,
              fix: `check which stack holds load balancer ${spec.lbName} (ovs-vsctl list port ${paths.hostDevice}); rename this load balancer or delete it from that stack`,
            },
          }
        : {}),
    }),
  ];
  lines.push(
    'cur=$(ip netns exec "$ns" cat "/sys/class/net/$nd/address")',
    'if [ "$cur" != "$mac" ]; then ip netns exec "$ns" ip link set dev "$nd" down; ip netns exec "$ns" ip link set dev "$nd" address "$mac"; fi',
    'ip netns exec "$ns" ip link set dev "$nd" mtu $mtu up',
    // keepalived's VIP (ACTIVE_STANDBY) is not a stray address; haproxy binds it on the BACKUP too.
    'for a in $(ip netns exec "$ns" ip -4 -o addr show dev "$nd" | awk \'{print $4}\'); do [ "$a" = "$addr" ] || [ "$a" = "$keep" ] || ip netns exec "$ns" ip addr del "$a" dev "$nd"; done',
    'if [ -n "$keep" ]; then ip netns exec "$ns" sysctl -q -w net.ipv4.ip_nonlocal_bind=1; fi',
    'ip netns exec "$ns" ip addr replace "$addr" dev "$nd"',
    'if [ -n "$gw" ]; then ip netns exec "$ns" ip route replace default via "$gw" dev "$nd"; fi',
    // Tell the segment where the VIP is now (Octavia sends a GARP after start/reload too).
    'command -v arping >/dev/null 2>&1 && ip netns exec "$ns" arping -q -U -c 1 -I "$nd" "${addr%/*}" >/dev/null 2>&1 || true',
  );
  return { label: `plug VIP port of load balancer ${spec.lbName}`, script: lines.join("\n") };
}

/**
 * Step: drain members before a reload removes them. Each `<backend>/<server>` is set to DRAIN
 * through the runtime API (no new connections; persistence no longer sends clients to it) and
 * the step waits, at most `timeoutSec`, for its current sessions to end.
 */
export function drainStep(
  lbName: string,
  paths: LoadBalancerPaths,
  servers: readonly string[],
  timeoutSec: number,
): Step {
  const list = servers.map((s) => shQuote(s)).join(" ");
  return {
    label: `drain ${servers.length} member(s) of load balancer ${lbName}`,
    script: [
      vars(paths),
      ALIVE,
      'pid=$(cat "$pidf" 2>/dev/null || true); alive "$pid" || exit 0',
      `for s in ${list}; do echo "set server $s state drain" | socat -t 2 stdio "unix-connect:$sock" >/dev/null 2>&1 || true; done`,
      `end=$(( $(date +%s) + ${timeoutSec} ))`,
      "while :; do",
      "  busy=0",
      `  for s in ${list}; do b=\${s%%/*}; v=\${s#*/}; n=$(echo "show stat" | socat -t 2 stdio "unix-connect:$sock" 2>/dev/null | awk -F, -v b="$b" -v v="$v" '$1==b && $2==v {print $5}'); [ -n "$n" ] && [ "$n" != 0 ] && busy=1; done`,
      "  [ $busy = 0 ] && break",
      '  [ "$(date +%s)" -ge "$end" ] && { echo "drain: sessions still open after the drain timeout; removing anyway" >&2; break; }',
      "  sleep 0.2",
      "done",
      "true",
    ].join("\n"),
  };
}

/**
 * Step: check the uploaded `haproxy.cfg.new` with `haproxy -c`; refused → kept as
 * `haproxy.cfg.failed`, haproxy's message on stderr, exit 24, the running haproxy untouched.
 * Accepted → renamed over `haproxy.cfg` (atomic), then haproxy started (master-worker, `-Ws`)
 * or, when running and the config changed, the server state saved and the master told to
 * reload through its socket. Prints `changed=`, `action=` and `reloadMs=`.
 */
export function applyConfigStep(lbName: string, paths: LoadBalancerPaths): Step {
  return {
    label: `apply haproxy config of load balancer ${lbName}`,
    script: [
      "set -e",
      vars(paths),
      ALIVE,
      'command -v socat >/dev/null 2>&1 || { echo "socat is missing on this host: apt-get install socat (kvmlab reaches haproxy\x27s master and runtime sockets with it)" >&2; exit 27; }',
      // An empty state file with its version line (haproxy warns about a missing one, or one without it).
      '[ -s "$state" ] || echo 1 > "$state"',
      'if ! out=$(haproxy -c -f "$new" 2>&1); then mv -f "$new" "$failed"; printf "%s\\n" "$out" | grep -v "^\\[NOTICE\\]" >&2; echo "haproxy refused the new config (kept as $failed); the running config keeps serving" >&2; exit 24; fi',
      'rm -f "$failed"',
      'changed=yes; if cmp -s "$new" "$cfg"; then changed=no; rm -f "$new"; else mv -f "$new" "$cfg"; fi',
      'pid=$(cat "$pidf" 2>/dev/null || true)',
      'if alive "$pid"; then',
      "  if [ $changed = no ]; then echo changed=no; echo action=none; exit 0; fi",
      '  echo "show servers state" | socat -t 2 stdio "unix-connect:$sock" > "$state.tmp" 2>/dev/null && mv -f "$state.tmp" "$state" || rm -f "$state.tmp"',
      "  workers() { echo 'show proc' | socat -t 2 stdio \"unix-connect:$msock\" 2>/dev/null | awk '/^# workers/{w=1;next} /^#/{w=0} w && $2==\"worker\" {print $1}'; }",
      '  old=$(workers | tr "\\n" " ")',
      "  t0=$(date +%s%N)",
      '  echo reload | socat -t 5 stdio "unix-connect:$msock" >/dev/null 2>&1 || kill -USR2 "$pid"',
      '  i=0; while :; do now=$(workers | head -n1); if [ -n "$now" ] && ! echo " $old " | grep -q " $now "; then break; fi; i=$((i+1)); [ $i -ge 100 ] && { echo "haproxy did not start a new worker within 10 s after reload" >&2; exit 25; }; sleep 0.1; done',
      '  echo "reloadMs=$(( ($(date +%s%N) - t0) / 1000000 ))"; echo changed=yes; echo action=reload',
      "else",
      '  rm -f "$sock" "$msock"',
      // As many open files as the host allows (Octavia's unit sets LimitNOFILE=2600000).
      '  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true',
      '  if ! err=$(ip netns exec "$ns" haproxy -Ws -D -f "$cfg" -p "$pidf" -S "$msock,mode,600" 2>&1 </dev/null >/dev/null); then printf "%s\\n" "$err" | grep -v "^\\[NOTICE\\]" >&2; case "$err" in *"FD limit"*) echo "haproxy needs about 2.5 open files per connection and this host allows $(ulimit -Hn): lower the load balancer\x27s maxconn" >&2;; esac; exit 26; fi',
      '  i=0; while [ ! -S "$sock" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done',
      "  echo changed=$changed; echo action=start; echo reloadMs=0",
      "fi",
    ].join("\n"),
  };
}

/**
 * Step (ACTIVE_STANDBY): check the uploaded `keepalived.conf.new` with `keepalived -t` inside
 * the amphora namespace (it checks the interface too); refused → removed, keepalived's message on
 * stderr, exit 29, the running keepalived untouched. Accepted → renamed over keepalived.conf;
 * keepalived started (`--vrrp`, three PID files, no systemd) or, when running and the config
 * changed, told to reload (SIGHUP). Prints `keepalived=start|reload|none`.
 */
export function keepalivedApplyStep(lbName: string, paths: LoadBalancerPaths): Step {
  return {
    label: `apply keepalived config of load balancer ${lbName}`,
    script: [
      "set -e",
      vars(paths),
      'command -v keepalived >/dev/null 2>&1 || { echo "keepalived is missing on this host: apt-get install keepalived (topology ACTIVE_STANDBY runs it in each amphora namespace)" >&2; exit 28; }',
      '[ -s "$knew" ] || { echo "keepalived.conf.new is missing or empty" >&2; exit 29; }',
      'if ! out=$(ip netns exec "$ns" keepalived -t -f "$knew" 2>&1); then rm -f "$knew"; printf "%s\\n" "$out" >&2; echo "keepalived -t refused the new keepalived.conf; the running one keeps serving" >&2; exit 29; fi',
      'changed=yes; if cmp -s "$knew" "$kcfg"; then changed=no; rm -f "$knew"; else mv -f "$knew" "$kcfg"; fi',
      'pid=$(cat "$kpid" 2>/dev/null || true)',
      'if kalive "$pid"; then',
      '  if [ $changed = yes ]; then kill -HUP "$pid"; echo keepalived=reload; else echo keepalived=none; fi',
      "else",
      '  rm -f "$kpid" "$rpid" "$cpid"',
      '  ip netns exec "$ns" keepalived --vrrp -f "$kcfg" -p "$kpid" -r "$rpid" -c "$cpid" </dev/null >/dev/null 2>&1',
      '  i=0; until kalive "$(cat "$kpid" 2>/dev/null)"; do i=$((i+1)); [ $i -ge 50 ] && { echo "keepalived did not start within 5 s (see the host\x27s log)" >&2; exit 30; }; sleep 0.1; done',
      "  echo keepalived=start",
      "fi",
    ].join("\n"),
  };
}

/** Step printing the load balancer's state on its host (key=value lines and `stat=` CSV rows). */
export function loadBalancerReadStep(
  lbName: string,
  driver: string,
  bridge: string,
  paths: LoadBalancerPaths,
  vipCidr = "",
): Step {
  return {
    label: `read load balancer ${lbName}`,
    script: [
      vars(paths),
      `br=${shQuote(bridge)}`,
      ALIVE,
      'echo "namespace=$( [ -e "/run/netns/$ns" ] && echo yes || echo no)"',
      'echo "port=$( ip link show dev "$hd" >/dev/null 2>&1 && echo yes || echo no)"',
      driver === "openvswitch"
        ? 'echo "inbridge=$( [ "$(ovs-vsctl port-to-br "$hd" 2>/dev/null)" = "$br" ] && echo yes || echo no)"'
        : 'm=$(readlink "/sys/class/net/$hd/master" 2>/dev/null || true); echo "inbridge=$( [ "${m##*/}" = "$br" ] && echo yes || echo no)"',
      'if [ -e "/run/netns/$ns" ]; then echo "address=$(ip netns exec "$ns" ip -4 -o addr show dev "$nd" 2>/dev/null | awk \'{print $4}\' | head -n1)"; echo "mac=$(ip netns exec "$ns" cat "/sys/class/net/$nd/address" 2>/dev/null)"; fi',
      'echo "configsha=$( [ -f "$cfg" ] && sha256sum < "$cfg" | cut -d" " -f1)"',
      'echo "failed=$( [ -f "$failed" ] && echo yes || echo no)"',
      'pid=$(cat "$pidf" 2>/dev/null || true)',
      'echo "keepalived=$(kalive "$(cat "$kpid" 2>/dev/null)" && echo yes || echo no)"',
      'echo "kconfigsha=$( [ -f "$kcfg" ] && sha256sum < "$kcfg" | cut -d" " -f1)"',
      'echo "vrrpstate=$(cat "$vstate" 2>/dev/null | head -n1)"',
      ...(vipCidr === ""
        ? []
        : [
            `if [ -e "/run/netns/$ns" ] && ip netns exec "$ns" ip -4 -o addr show dev "$nd" 2>/dev/null | awk '{print $4}' | grep -qx ${shQuote(vipCidr)}; then echo holdsvip=yes; else echo holdsvip=no; fi`,
          ]),
      'if alive "$pid"; then echo haproxy=yes; echo "show stat" | socat -t 2 stdio "unix-connect:$sock" 2>/dev/null | grep -v "^#" | grep -v "^$" | sed "s/^/stat=/"; else echo haproxy=no; fi',
      "true",
    ].join("\n"),
  };
}

/** Parses {@link loadBalancerReadStep}'s output. */
export function parseLoadBalancerState(stdout: string): LoadBalancerHostState {
  const lines = stdout.split("\n");
  const kv = parseKeyValues(lines.filter((l) => !l.startsWith("stat=")).join("\n"));
  const servers: Record<string, string> = {};
  const backends: Record<string, string> = {};
  for (const l of lines) {
    if (!l.startsWith("stat=")) continue;
    const f = l.slice(5).split(",");
    if (f.length < 18) continue;
    const [px, sv, status] = [f[0], f[1], f[17]];
    if (sv === "FRONTEND") continue;
    if (sv === "BACKEND") backends[px] = status;
    else servers[`${px}/${sv}`] = status;
  }
  return {
    namespace: kv.get("namespace") === "yes",
    port: kv.get("port") === "yes",
    portInBridge: kv.get("inbridge") === "yes",
    address: kv.get("address") ?? "",
    mac: kv.get("mac") ?? "",
    haproxy: kv.get("haproxy") === "yes",
    configSha: kv.get("configsha") ?? "",
    failedConfig: kv.get("failed") === "yes",
    servers,
    backends,
    keepalived: kv.get("keepalived") === "yes",
    keepalivedConfigSha: kv.get("kconfigsha") ?? "",
    vrrpState: kv.get("vrrpstate") ?? "",
    holdsVip: kv.get("holdsvip") === "yes",
  };
}

/**
 * A member's operating status from haproxy's status column, as Octavia's health manager maps
 * the amphora's heartbeat (`heartbeat_udp.py`): UP* → ONLINE, DOWN* → ERROR, DRAIN → DRAINING,
 * MAINT → OFFLINE, "no check" → NO_MONITOR. haproxy says "UP 1/3" / "DOWN 1/2" while a check
 * is in transition: the leading word decides, as in Octavia.
 */
export function memberOperatingStatus(haproxyStatus: string): MemberOperatingStatus {
  const s = haproxyStatus.trim();
  if (s === "no check") return "NO_MONITOR";
  if (s.startsWith("UP")) return "ONLINE";
  if (s.startsWith("DOWN")) return "ERROR";
  if (s.startsWith("DRAIN") || s.startsWith("NOLB")) return "DRAINING";
  return "OFFLINE"; // MAINT and anything else
}

/**
 * Member statuses keyed `<pool>/<member>` (the backend is named `<pool>:<listener>`), and the
 * load balancer's operating status: OFFLINE when haproxy is not running, ERROR when a pool is
 * DOWN, DEGRADED when a member is ERROR, else ONLINE (Octavia's roll-up).
 */
export function operatingStatuses(state: LoadBalancerHostState): {
  members: Record<string, MemberOperatingStatus>;
  loadBalancer: OperatingStatus;
} {
  const members: Record<string, MemberOperatingStatus> = {};
  for (const [key, status] of Object.entries(state.servers)) {
    const [backend, server] = [key.slice(0, key.indexOf("/")), key.slice(key.indexOf("/") + 1)];
    members[`${backend.split(":")[0]}/${server}`] = memberOperatingStatus(status);
  }
  if (!state.haproxy) return { members, loadBalancer: "OFFLINE" };
  const poolDown = Object.entries(state.backends).some(
    ([b, s]) => s.startsWith("DOWN") && Object.keys(state.servers).some((k) => k.startsWith(`${b}/`)),
  );
  if (poolDown) return { members, loadBalancer: "ERROR" };
  if (Object.values(members).includes("ERROR")) return { members, loadBalancer: "DEGRADED" };
  return { members, loadBalancer: "ONLINE" };
}

/** `<backend>/<server>` of every `server` line of a haproxy.cfg (pure text scan). */
export function configServers(cfg: string): string[] {
  const out: string[] = [];
  let backend: string | null = null;
  for (const raw of cfg.split("\n")) {
    const line = raw.trim();
    const section = /^(global|defaults|frontend|backend|listen|peers|resolvers|userlist)\b\s*(\S*)/.exec(
      line,
    );
    if (section && !raw.startsWith(" ") && !raw.startsWith("\t")) {
      backend = section[1] === "backend" || section[1] === "listen" ? section[2] : null;
      continue;
    }
    const m = /^server\s+(\S+)\s/.exec(line);
    if (m && backend !== null) out.push(`${backend}/${m[1]}`);
  }
  return out;
}

/** Members in `oldCfg` that `newCfg` no longer has: the ones to drain before the reload. */
export function removedServers(oldCfg: string, newCfg: string): string[] {
  const keep = new Set(configServers(newCfg));
  return configServers(oldCfg).filter((s) => !keep.has(s));
}

/** Step removing everything of the load balancer from its host (idempotent). */
export function loadBalancerDeleteStep(
  lbName: string,
  driver: string,
  paths: LoadBalancerPaths,
  owners: readonly string[] = [],
): Step {
  // The VIP port goes only while it carries no other owner (issue 14), checked before anything stops.
  const portGuard =
    driver === "openvswitch"
      ? ovsOwnerGuardLines(
          "port",
          '"$hd"',
          owners,
          `the VIP port ${paths.hostDevice} of load balancer ${lbName}`,
          `check which stack holds load balancer ${lbName} (ovs-vsctl list port ${paths.hostDevice}); delete it from that stack`,
        )
      : [];
  return {
    label: `delete load balancer ${lbName}`,
    script: [
      vars(paths),
      ...portGuard,
      ALIVE,
      // keepalived first (ACTIVE_STANDBY): SIGTERM, so it sends a priority-0 advert and removes the
      // VIP (SIGKILL would leave the VIP on the device); its PID files go when it has stopped.
      'kp=$(cat "$kpid" 2>/dev/null || true)',
      'if kalive "$kp"; then kill "$kp"; i=0; while kalive "$kp" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; kalive "$kp" && kill -9 "$kp"; fi',
      'pid=$(cat "$pidf" 2>/dev/null || true)',
      // The master stops its workers on SIGTERM (old workers included).
      'if alive "$pid"; then kill "$pid"; i=0; while alive "$pid" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; alive "$pid" && kill -9 "$pid"; fi',
      // Workers left behind (master killed hard): any haproxy in the namespace.
      'if [ -e "/run/netns/$ns" ]; then for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done; fi',
      driver === "openvswitch"
        ? 'command -v ovs-vsctl >/dev/null 2>&1 && ovs-vsctl --if-exists del-port "$hd"'
        : "true",
      'ip link del dev "$hd" 2>/dev/null || true',
      'rm -rf "$dir"',
      'rmdir "${dir%/*}" 2>/dev/null || true',
      'if [ -e "/run/netns/$ns" ]; then ip netns del "$ns"; fi',
      "true",
    ].join("\n"),
  };
}

/** Step printing how many load balancers a host already runs (for least-loaded placement). */
export function loadCountStep(): Step {
  return {
    label: "count load balancers",
    script: 'echo "lbs=$(ls -d /var/lib/kvmlab/lb/*/ 2>/dev/null | wc -l)"',
  };
}
