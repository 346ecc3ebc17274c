/**
 * The VNC console's listen address when it is "management": the template renders a placeholder
 * (the XML is rendered in the program, before placement picks a host) and the Server provider
 * fills it with the chosen host's management address through {@link fillManagementListen}.
 * Pure, and free of the template engine (the provider's serialized code carries it).
 */
import { ipToInt } from "./net";
import { FieldError } from "./errors";

/** `vnc.listen` / the Server's `consoleListen`: the management address of the host placement chose. */
export const MANAGEMENT_LISTEN = "management";

/** What the rendered XML holds in place of that address until the provider knows the host. */
export const MANAGEMENT_ADDRESS_PLACEHOLDER = "kvmlab-management-address";

/**
 * The domain XML with the management-address placeholder replaced by `address` (the placed
 * host's IPv4 management address). Only the graphics `listen='…'` and `<listen address='…'>`
 * attributes may hold the placeholder: any other occurrence, or an address that is not IPv4, is
 * refused (FieldError). XML without the placeholder comes back unchanged. Pure.
 */
export function fillManagementListen(xml: string, address: string, host = "the host"): string {
  if (!xml.includes(MANAGEMENT_ADDRESS_PLACEHOLDER)) return xml;
  let n: number;
  try {
    n = ipToInt(address, "address");
  } catch {
    throw new FieldError(
      "consoleListen",
      `"management" listens on ${host}'s management address, but its address ${JSON.stringify(address)} is not an IPv4 address`,
      "give the host by its IPv4 address, or set consoleListen to an address of that host",
    );
  }
  // The VNC server has no password: never every interface (0.0.0.0), a multicast or a broadcast address.
  if (n === 0 || n >>> 28 === 0xe || n >>> 0 === 0xffffffff)
    throw new FieldError(
      "consoleListen",
      `"management" listens on ${host}'s management address, but ${address} is not one address of one host (0.0.0.0 would open the password-less console on every interface)`,
      "give the host by its own IPv4 management address",
    );
  const out = xml
    .replace(new RegExp(`(<graphics [^>]*listen=')${MANAGEMENT_ADDRESS_PLACEHOLDER}'`, "g"), `$1${address}'`)
    .replace(
      new RegExp(`(<listen type='address' address=')${MANAGEMENT_ADDRESS_PLACEHOLDER}'`, "g"),
      `$1${address}'`,
    );
  if (out.includes(MANAGEMENT_ADDRESS_PLACEHOLDER))
    throw new FieldError(
      "domainXml",
      `the placeholder ${MANAGEMENT_ADDRESS_PLACEHOLDER} appears outside the VNC listen address`,
      'render the XML with renderDomain; only vnc.listen may be "management"',
    );
  return out;
}
