/**
 * The one way a namespace gets a leg on a network's bridge: a veth pair whose host end `$hd`
 * is a port of the bridge `$br` (Linux bridge or OVS) and whose other end `$nd` lives in the
 * namespace `$ns`, both at MTU `$mtu`. Used by the DHCP namespace (Subnet), the router's qr-/qg-
 * legs and the load balancer's VIP port. Returns shell lines that read the variables `ns`, `hd`,
 * `br`, `mtu` and the one named by `nsDevVar`; the caller sets them from validated values.
 * Idempotent: an existing, complete pair is kept.
 */
import { shQuote } from "./quote";
import { ovsRelabelGuardLines } from "../kit/owner";

export interface VethLegOptions {
  /** Shell variable holding the namespace-side device name. @default "nd" */
  readonly nsDevVar?: string;
  /** OVS `external_ids` key and value that attribute the port to its object. */
  readonly externalId: { readonly key: string; readonly value: string };
  /** Whether the bridge is an OVS bridge (else a Linux bridge). */
  readonly openvswitch: boolean;
  /** Also delete a stray namespace-side device before re-creating the pair. @default false */
  readonly clearNsSide?: boolean;
  /** Turn TX checksum offload off on an OVS port (userspace datapath). @default false */
  readonly ovsTxOff?: boolean;
  /**
   * More `external_ids` for the OVS port, as ovs-vsctl `set` arguments already quoted (the
   * owner and project from kit/owner.ts ovsOwnerIds). @default none
   */
  readonly ovsIds?: string;
  /**
   * With `ovsIds`: the owners whose `kvmlab-owner` the port may already carry (the new one and,
   * in an update, the state's). Another owner's port is refused before anything changes (exit
   * 73, review O2), never relabelled. Required with `ovsIds`.
   */
  readonly ovsGuard?: readonly string[];
  /** What the port is, for the refusal (e.g. "the DHCP port of subnet s"), and the fix. */
  readonly ovsGuardText?: { readonly what: string; readonly fix: string };
}

export function vethLegLines(o: VethLegOptions): string[] {
  const nd = `"$${o.nsDevVar ?? "nd"}"`;
  if (!/^kvmlab-[a-z][a-z0-9-]*$/.test(o.externalId.key))
    throw new Error(`vethLegLines: invalid external_ids key ${JSON.stringify(o.externalId.key)}`);
  if (o.openvswitch && o.ovsIds && (!o.ovsGuard || !o.ovsGuardText))
    throw new Error("vethLegLines: an OVS port labelled with an owner needs ovsGuard and ovsGuardText");
  return [
    // Before the pair is recreated or the port relabelled: not another owner's (review O2).
    ...(o.openvswitch && o.ovsIds && o.ovsGuard && o.ovsGuardText
      ? ovsRelabelGuardLines("port", '"$hd"', o.ovsGuard, o.ovsGuardText.what, o.ovsGuardText.fix)
      : []),
    `if ! { ip link show dev "$hd" >/dev/null 2>&1 && ip netns exec "$ns" ip link show dev ${nd} >/dev/null 2>&1; }; then`,
    o.clearNsSide
      ? `  ip link del dev "$hd" 2>/dev/null || true; ip netns exec "$ns" ip link del dev ${nd} 2>/dev/null || true`
      : '  ip link del dev "$hd" 2>/dev/null || true',
    `  ip link add "$hd" mtu $mtu type veth peer name ${nd} netns "$ns"`,
    "fi",
    'ip link set dev "$hd" mtu $mtu',
    o.openvswitch
      ? `ovs-vsctl --may-exist add-port "$br" "$hd" -- set port "$hd" external_ids:${o.externalId.key}=${shQuote(o.externalId.value)}${o.ovsIds ? ` ${o.ovsIds}` : ""}; ip link set dev "$hd" up` +
        (o.ovsTxOff
          ? '; command -v ethtool >/dev/null && ethtool -K "$hd" tx off >/dev/null 2>&1 || true'
          : "")
      : 'ip link set dev "$hd" master "$br" up',
  ];
}
