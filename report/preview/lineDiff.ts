/**
 * Unified line diffs of rendered files (domain XML, haproxy.cfg, rulesets, dnsmasq, cloud-init),
 * computed with the `diff` package (Myers' algorithm). Pure.
 */
import { structuredPatch } from "diff";

export interface LineDiff {
  /** Hunks in unified format (`@@ -a,b +c,d @@` headers, ` `/`-`/`+` lines), without file headers. */
  readonly lines: readonly string[];
  readonly added: number;
  readonly removed: number;
}

/** The unified diff of two texts with `context` unchanged lines around each change. */
export function lineDiff(before: string, after: string, context = 3): LineDiff {
  const patch = structuredPatch("a", "b", before, after, undefined, undefined, { context });
  const lines: string[] = [];
  let added = 0;
  let removed = 0;
  for (const h of patch.hunks) {
    lines.push(`@@ -${h.oldStart},${h.oldLines} +${h.newStart},${h.newLines} @@`);
    for (const l of h.lines) {
      if (l.startsWith("\\")) continue; // "\ No newline at end of file": noise in a review
      if (l.startsWith("+")) added++;
      else if (l.startsWith("-")) removed++;
      lines.push(l);
    }
  }
  return { lines, added, removed };
}

/** What kind of rendered file a text is, for the heading of its diff (a guess from its content). */
export function artifactKind(text: string): string | undefined {
  const head = text.trimStart().slice(0, 400);
  if (/^<domain[\s>]/.test(head)) return "libvirt domain XML";
  if (/^#cloud-config\b/.test(head)) return "cloud-init";
  if (/^(instance-id|local-hostname):/m.test(head)) return "cloud-init meta-data";
  if (/^(version:\s*2|network:)/m.test(head) && /ethernets:/.test(text)) return "cloud-init network-config";
  if (/^(global|defaults|frontend|backend|listen)\b/m.test(text) && /^\s+(bind|server|mode)\s/m.test(text))
    return "haproxy.cfg";
  if (/^\*(filter|nat|mangle|raw)\s*$/m.test(text) && /^COMMIT\s*$/m.test(text)) return "iptables ruleset";
  if (/^\s*table\s+(inet|ip|ip6|bridge|arp|netdev)\s/m.test(text)) return "nftables ruleset";
  if (/^(dhcp-range|dhcp-host|interface|bind-interfaces|dhcp-option)=/m.test(text)) return "dnsmasq";
  if (/^([0-9a-f]{2}:){5}[0-9a-f]{2},/m.test(text)) return "dnsmasq hosts";
  return undefined;
}
