/**
 * Neutron's hybrid plumbing of a Server's OVS port (os-vif's "ovs hybrid plug"): a per-port
 * Linux bridge qbr<id> between the guest's tap and OVS, linked to the OVS bridge by the veth
 * pair qvb<id> (in qbr) / qvo<id> (in OVS), names from the tap (core/securityGroup.ts). The
 * domain XML names qbr<id> as a plain bridge (components/server.ts), so libvirt plugs the tap
 * into it at every start: the guest's reboots, a cold resize (redefine) and a live migration
 * (the destination gets the plumbing before the migration, the source loses it after) all keep
 * the tap behind iptables, where SecurityGroupPort's physdev rules see it. Pure step builders.
 */
import { hybridDevices } from "../../core/securityGroup";
import type { Step } from "../host";
import { ovsOwnerGuardLines, ovsOwnerIds, ovsRelabelGuardLines } from "../kit/owner";
import type { ServerPort } from "./model";

/** The bridge the domain XML names for a port: qbr<id> for a hybrid port, else the network's. */
export function domainBridgeOf(port: Pick<ServerPort, "bridge" | "tap" | "hybrid">): string {
  return port.hybrid === true ? hybridDevices(port.tap).qbr : port.bridge;
}

/** Makes (idempotently) the qbr/qvb/qvo plumbing of the server's hybrid ports, before define. */
export function hybridPlugStep(
  serverName: string,
  ports: readonly ServerPort[],
  owner: string,
  project = "",
  alsoOwners: readonly string[] = [],
): Step | null {
  const hybrid = ports.filter((p) => p.hybrid === true && p.driver === "openvswitch");
  if (hybrid.length === 0) return null;
  // The qvo port and interface carry the server's owner and project (issue 14).
  const ids = ovsOwnerIds(owner, project);
  const own = ids === "" ? "" : ` ${ids}`;
  const lines = ["set -e"];
  for (const p of hybrid) {
    const d = hybridDevices(p.tap);
    lines.push(
      // Another owner's qvo is neither recreated nor relabelled (review O2).
      // Both rows (review L5): a SecurityGroupPort that made the qvo labels its port row too.
      ...(ids === ""
        ? []
        : (["interface", "port"] as const).flatMap((t) =>
            ovsRelabelGuardLines(
              t,
              d.qvo,
              [owner, ...alsoOwners],
              `the hybrid port of server ${serverName}`,
              `check which stack holds server ${serverName} (ovs-vsctl list ${t} ${d.qvo}); rename this server or delete it from that stack`,
            ),
          )),
      `ip link show ${d.qbr} >/dev/null 2>&1 || ip link add ${d.qbr} type bridge`,
      `ip link set ${d.qbr} type bridge forward_delay 0 stp_state 0 2>/dev/null || true`,
      `if ! ip link show ${d.qvb} >/dev/null 2>&1; then ip link del ${d.qvo} 2>/dev/null || true; ip link add ${d.qvb} type veth peer name ${d.qvo}; fi`,
      `mtu=$(cat /sys/class/net/${p.bridge}/mtu); ip link set ${d.qvb} mtu $mtu; ip link set ${d.qvo} mtu $mtu`,
      `ip link set ${d.qvb} master ${d.qbr}`,
      `ovs-vsctl --may-exist add-port ${p.bridge} ${d.qvo} -- set interface ${d.qvo} external_ids:kvmlab-tap=${p.tap}${own} -- set port ${d.qvo} external_ids:kvmlab-tap=${p.tap}${own}`,
      `ethtool -K ${d.qvb} tx off >/dev/null 2>&1 || true; ethtool -K ${d.qvo} tx off >/dev/null 2>&1 || true`,
      `ip link set ${d.qvb} up; ip link set ${d.qvo} up; ip link set ${d.qbr} up`,
    );
  }
  return { label: `plug the hybrid ports of ${serverName} (qbr/qvb/qvo)`, script: lines.join("\n") };
}

/**
 * Shell lines refusing (exit 73) when a hybrid port's qvo carries another owner than `owners`
 * (issue 14): run before anything of the server is removed.
 */
export function hybridGuardLines(
  serverName: string,
  ports: readonly ServerPort[] | undefined,
  owners: readonly string[],
): string[] {
  return (ports ?? [])
    .filter((p) => p.hybrid === true && p.driver === "openvswitch")
    .flatMap((p) => {
      const d = hybridDevices(p.tap);
      return ovsOwnerGuardLines(
        "interface",
        d.qvo,
        owners,
        `OVS port ${d.qvo} of server ${serverName}`,
        `check which stack holds server ${serverName} (ovs-vsctl list interface ${d.qvo}); delete it from that stack`,
      );
    });
}

/** Shell lines removing the hybrid plumbing of the server's ports (idempotent). */
export function hybridUnplugLines(ports: readonly ServerPort[] | undefined): string[] {
  return (ports ?? [])
    .filter((p) => p.hybrid === true && p.driver === "openvswitch")
    .map((p) => {
      const d = hybridDevices(p.tap);
      return `ovs-vsctl --if-exists del-port ${d.qvo}; ip link del ${d.qvb} 2>/dev/null || true; ip link del ${d.qbr} 2>/dev/null || true`;
    });
}
