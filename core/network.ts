/**
 * Network types (Neutron's ML2 type drivers) and their segmentation-id rules. Pure.
 *
 *   flat    untagged on each host's uplink (the old kind "provider")
 *   vlan    802.1Q tag `segmentationId` (1-4094) on each host's uplink; several VLAN networks
 *           share one uplink
 *   vxlan   VXLAN tunnel between hosts, VNI `segmentationId` (1-16777215; the old kind
 *           "selfservice", whose `vni` is the same number)
 *   gre     GRE tunnel between hosts (Open vSwitch only), key `segmentationId` (1-4294967295)
 *   local   one host, no uplink and no tunnel
 *
 * `kind` stays: "provider" means flat (or vlan when a type says so), "selfservice" means vxlan
 * (or gre/local). A type decides the kind; a kind alone decides the type.
 */

export const NETWORK_TYPES = ["flat", "vlan", "vxlan", "gre", "local"] as const;
export type NetworkType = (typeof NETWORK_TYPES)[number];
export type NetworkKindName = "provider" | "selfservice";

/** Inclusive segmentation-id range per type (none for flat and local). */
export const SEGMENTATION_RANGES: Readonly<Record<NetworkType, readonly [number, number] | null>> = {
  flat: null,
  vlan: [1, 4094],
  vxlan: [1, 16777215],
  gre: [1, 4294967295],
  local: null,
};

/** The kind a type belongs to: on the uplink ("provider") or between hosts ("selfservice"). */
export function kindOfType(type: NetworkType): NetworkKindName {
  return type === "flat" || type === "vlan" ? "provider" : "selfservice";
}

/** The type a kind means when no type is given. */
export function typeOfKind(kind: NetworkKindName): NetworkType {
  return kind === "provider" ? "flat" : "vxlan";
}

/** Whether the type carries traffic over a tunnel between hosts. */
export function isTunnelType(type: NetworkType): boolean {
  return type === "vxlan" || type === "gre";
}

/** Whether the type holds each host's uplink (flat alone, vlan through a shared trunk). */
export function usesUplink(type: NetworkType): boolean {
  return type === "flat" || type === "vlan";
}

/**
 * Bytes a type's encapsulation takes from the underlay MTU (VXLAN 50, GRE over IPv4 with a key
 * and the Ethernet header 42), so a default MTU keeps a 1500 underlay whole.
 */
export function defaultTypeMtu(type: NetworkType): number {
  if (type === "vxlan") return 1450;
  if (type === "gre") return 1458;
  return 1500;
}

/** Refusal text for a segmentation id, or undefined when it is valid for the type. */
export function checkSegmentationId(type: NetworkType, id: unknown): string | undefined {
  const range = SEGMENTATION_RANGES[type];
  if (range === null) {
    return `a ${type} network has no segmentation id; remove segmentationId (got ${JSON.stringify(id)})`;
  }
  if (typeof id !== "number" || !Number.isInteger(id) || id < range[0] || id > range[1]) {
    return `segmentationId must be an integer ${range[0]}-${range[1]} for a ${type} network (got ${JSON.stringify(id)})`;
  }
  return undefined;
}

/** Default segmentation id from a name's short id: VXLAN above the VLAN range, GRE likewise. */
export function defaultSegmentationId(type: NetworkType, shortIdHex: string): number | null {
  const n = Number.parseInt(shortIdHex, 16);
  if (type === "vxlan") return 4096 + (n % (16777215 - 4096));
  if (type === "gre") return 4096 + (n % (4294967295 - 4096));
  return null;
}
