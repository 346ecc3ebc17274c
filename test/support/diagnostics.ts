/**
 * Diagnostics of the hosts' network plumbing for a failure message: when a guest gets no DHCP
 * lease or stops answering, the next failure should say which side dropped the traffic without
 * the sandbox (it is gone by the time anyone reads the log). Read-only and bounded: each command
 * at most 5 s and 3000 bytes, the DHCP section 6000 bytes, the devices 7000, each host at most
 * 16000 bytes and 30 s.
 *
 * Session 9's second CI: guest sga on the OVS userspace-datapath VXLAN network lanovs got no lease
 * in 120 s; the tc redirect between the VXLAN device and the bridge's internal port (see
 * vxlanRedirectLines in provider/network.ts) was the suspect, but nothing was left to read.
 */
import { sshExec, type SandboxStatus } from "./sandbox";
import { KVMLAB_STATE_DIR } from "../../core/paths";

/**
 * Bytes of output kept per command and per host, and the budgets of the host's first two
 * sections (their sum stays below the host's, so neither is ever cut by what follows).
 */
export const DIAG_COMMAND_BYTES = 3000;
export const DIAG_HOST_BYTES = 16000;
export const DIAG_DHCP_BYTES = 6000;
export const DIAG_DEVICE_BYTES = 7000;

/**
 * The host-side script (bash), in the order a "no DHCP lease" failure needs it, each section
 * with its own budget: first each subnet's dnsmasq (running or not), leases and hosts file; then
 * every VXLAN device and every kvmlab OVS internal port (kvli-*, the redirect's peer) with its
 * counters, qdiscs and ingress filters (the redirect); then the DHCP namespaces' counters, OVS
 * bridges, ports and flows (what is left of the host's bytes). `stateDir`: for tests only.
 */
export function networkDiagnosticsScript(stateDir: string = KVMLAB_STATE_DIR): string {
  const dhcp = `${stateDir}/dhcp`;
  return [
    "set +e",
    `d() { echo "## $*"; timeout 5 "$@" 2>&1 | head -c ${DIAG_COMMAND_BYTES}; echo; }`,
    "{",
    "{",
    `for f in ${dhcp}/*/*/dnsmasq.pid; do`,
    '  [ -f "$f" ] || continue',
    '  dir=${f%/dnsmasq.pid}; pid=$(head -c 20 "$f")',
    '  echo "## $dir: dnsmasq pid $pid: $(cat "/proc/$pid/comm" 2>/dev/null || echo not running)"',
    '  echo "# leases"; head -c 1500 "$dir/dnsmasq.leases" 2>&1',
    '  echo "# hosts"; head -c 1500 "$dir/hosts" 2>&1',
    "done",
    `} 2>&1 | head -c ${DIAG_DHCP_BYTES}`,
    "{",
    // VXLAN devices (both datapaths) and kvmlab's internal ports (the userspace datapath's
    // redirect peer). ovs-vsctl --bare prints a blank line between records, and the bridges' own
    // internal ports (kvbr-*) come first: keep the kvli-* names only, then bound.
    "devs=$(ip -o link show type vxlan 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | head -n 20)",
    "devs=\"$devs $(timeout 5 ovs-vsctl --bare --columns=name find interface type=internal 2>/dev/null | grep '^kvli-' | head -n 20)\"",
    "for v in $devs; do",
    '  d ip -s -d link show dev "$v"',
    '  d tc qdisc show dev "$v"',
    '  d tc -s filter show dev "$v" ingress',
    "done",
    `} 2>&1 | head -c ${DIAG_DEVICE_BYTES}`,
    "for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^qdhcp-' | head -n 10); do",
    '  d ip netns exec "$ns" ip -s link',
    "done",
    // Last, so that dnsmasq and the devices are never cut off by a long flow table.
    "d ovs-vsctl show",
    'for b in $(timeout 5 ovs-vsctl list-br 2>/dev/null | head -n 20); do d ovs-ofctl dump-flows "$b"; done',
    `} 2>&1 | head -c ${DIAG_HOST_BYTES}`,
  ].join("\n");
}

/**
 * Runs the diagnostics on each host (at once, 30 s each); never throws: a host that does not
 * answer says so in its section.
 */
export async function collectNetworkDiagnostics(
  status: SandboxStatus,
  hosts?: readonly string[],
): Promise<string> {
  const names = hosts ?? status.hosts.map((h) => h.name);
  const parts = await Promise.all(
    names.map(async (h) => {
      try {
        const r = await sshExec(status, h, networkDiagnosticsScript(), { timeoutMs: 30_000 });
        return `=== ${h} (exit ${r.code}) ===\n${r.stdout}${r.stderr ? `\n# stderr: ${r.stderr.slice(0, 500)}` : ""}`;
      } catch (e) {
        return `=== ${h}: no diagnostics (${(e as Error).message}) ===`;
      }
    }),
  );
  return parts.join("\n");
}

/**
 * Runs `fn`; when it throws, the error's message gets the hosts' network diagnostics appended
 * (read at that moment, before any cleanup), and the error is thrown again.
 */
export async function withNetworkDiagnostics<T>(
  status: SandboxStatus,
  fn: () => Promise<T>,
  hosts?: readonly string[],
): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    const diag = await collectNetworkDiagnostics(status, hosts);
    if (e instanceof Error) {
      e.message = `${e.message}\n\nNetwork diagnostics of the hosts at the failure:\n${diag}`;
      throw e;
    }
    throw new Error(`${String(e)}\n\nNetwork diagnostics of the hosts at the failure:\n${diag}`, {
      cause: e,
    });
  }
}
