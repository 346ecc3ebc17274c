/**
 * Flavors: every extra spec is one kvmlab can express in the domain XML (or refused here, at
 * its key); a flavor with an ephemeral or swap disk is refused where a server uses it.
 */
import { FieldError } from "../../core/errors";
import { checkNoEphemeralOrSwap, flavorDomainSettings } from "../../core/flavor";
import { type CheckContext, items, num, rec, str } from "./context";

export function checkFlavors(c: CheckContext): void {
  const { data, add } = c;
  const used = new Set<string>();
  for (const [, s] of items(data, "servers")) if (typeof s.flavor === "string") used.add(s.flavor);
  for (const [, g] of items(data, "autoscaleGroups")) {
    const f = rec(g.launch)?.flavor;
    if (typeof f === "string") used.add(f);
  }
  for (const [i, f] of items(data, "flavors")) {
    const specs = rec(f.extraSpecs);
    const vcpus = num(f.vcpus);
    if (specs !== null && vcpus !== null && Object.values(specs).every((v) => typeof v === "string")) {
      try {
        flavorDomainSettings(specs as Record<string, string>, vcpus, "extraSpecs");
      } catch (err) {
        if (!(err instanceof FieldError)) throw err;
        const key = err.field.slice("extraSpecs.".length).replace(/^"(.*)"$/, "$1");
        const known = key !== "" && Object.prototype.hasOwnProperty.call(specs, key);
        add(
          ["flavors", i, "extraSpecs"],
          err.problem,
          err.fix ?? "see docs/templates.md",
          known ? key : undefined,
        );
      }
    }
    const name = str(f.name);
    if (name === null || !used.has(name)) continue;
    const sizes = { ephemeralGiB: num(f.ephemeralGiB) ?? 0, swapMiB: num(f.swapMiB) ?? 0 };
    const refused = checkNoEphemeralOrSwap(sizes);
    if (refused) {
      const key = refused.field.slice("flavor.".length);
      add(["flavors", i], `${refused.problem}, and servers use flavor ${name}`, refused.fix ?? "", key);
    }
  }
}
