/**
 * kvmlab's part of a libvirt domain's `<metadata>` (issue 14): the `<kvmlab:instance>` element in
 * the {@link KVMLAB_DOMAIN_XMLNS} namespace says whose a domain is: the Pulumi project (`lab`),
 * the stack, the identity project (`<domain>/<name>`, empty for none), the owner (issue 15's
 * owner string) and the server, image and flavor names.
 *
 * The program renders the element (templates/domain.ts) with everything but the owner; the Server
 * provider fills the owner ({@link withDomainOwner}) before the XML reaches a host, the same way
 * it fills the console's management address. Because libvirt can change a domain's metadata in
 * place (`virsh metadata --live --config`, virDomainSetMetadata), a change of this element alone
 * never needs a redefine: {@link sameApartFromMetadata} tells the provider so.
 *
 * Pure.
 */

/** XML namespace of kvmlab's domain metadata (prefix `kvmlab`). */
export const KVMLAB_DOMAIN_XMLNS = "https://kvmlab.dev/xmlns/domain/1.0";

/** The key (namespace prefix) of kvmlab's metadata element. */
export const KVMLAB_DOMAIN_KEY = "kvmlab";

/** An identity project reference: `<domain>/<project>`, both object names. */
export const PROJECT_REF_RE =
  /^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\/[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;

/** The owner string (provider/kit/owner.ts ownerOf): encoded segments joined by "/". */
export const DOMAIN_OWNER_RE = /^[A-Za-z0-9_%-][A-Za-z0-9_.%-]*(\/[A-Za-z0-9_%-][A-Za-z0-9_.%=-]*){3,5}$/;

/** The fields of `<kvmlab:instance>`, in the order the template writes them. */
export const DOMAIN_METADATA_FIELDS = [
  "lab",
  "stack",
  "project",
  "owner",
  "server",
  "image",
  "flavor",
] as const;
export type DomainMetadataField = (typeof DOMAIN_METADATA_FIELDS)[number];

/** One child of `<kvmlab:instance>` as the template writes it: a known field or a flavor note. */
const CHILD = `<kvmlab:(?:(?<f>${DOMAIN_METADATA_FIELDS.join("|")})>[^<]*</kvmlab:\\k<f>|spec key='[^'<>]*'>[^<]*</kvmlab:spec)>`;

/**
 * kvmlab's element, tied to the domain's own `<metadata>` (review O4): the document must open as
 * the template writes it, `<domain type=…>`, `<name>`, `<uuid>` (text-only elements, so nothing
 * can nest there), then `<metadata>` holding only `<kvmlab:instance>` in kvmlab's namespace,
 * whose children are only the known fields and flavor notes. Groups: `head` before the element,
 * `block` the element, `tail` the rest. Anything else (the element elsewhere, unknown children)
 * does not count as kvmlab's metadata, so a change there is a redefine.
 */
const DOC_RE = new RegExp(
  `^(?<head><domain type='[a-z]+'>\\s*<name>[^<]*</name>\\s*<uuid>[^<]*</uuid>\\s*<metadata>\\s*)` +
    `(?<block><kvmlab:instance xmlns:kvmlab='${KVMLAB_DOMAIN_XMLNS.replace(/[.]/g, "\\.")}'>(?:\\s*${CHILD})*\\s*</kvmlab:instance>)` +
    `(?<tail>\\s*</metadata>[\\s\\S]*)$`,
);

/**
 * The `<kvmlab:instance>…</kvmlab:instance>` text of a rendered domain XML, or "" without one
 * (or with one that is not the domain's own `<metadata>` element as the template writes it).
 */
export function metadataBlockOf(xml: string): string {
  return DOC_RE.exec(xml)?.groups?.block ?? "";
}

/**
 * True when two domain XMLs are equal except inside kvmlab's element of the domain's
 * `<metadata>` (review O4): then applying the new one is a metadata change (no redefine, no
 * restart). Two XMLs without that element must be equal; one with and one without are not.
 */
export function sameApartFromMetadata(a: string, b: string): boolean {
  const ma = DOC_RE.exec(a)?.groups;
  const mb = DOC_RE.exec(b)?.groups;
  if (!ma || !mb) return !ma && !mb && a === b;
  return ma.head === mb.head && ma.tail === mb.tail;
}

/**
 * The fields of kvmlab's metadata element as text values (XML entities decoded), from a rendered
 * XML or from what `virsh metadata <dom> <uri>` prints (libvirt may write the element with or
 * without the prefix on its children, and an empty element as `<x/>`). Fields not present are
 * absent from the result.
 */
export function parseDomainMetadata(text: string): Partial<Record<DomainMetadataField, string>> {
  const out: Partial<Record<DomainMetadataField, string>> = {};
  for (const f of DOMAIN_METADATA_FIELDS) {
    const full = new RegExp(`<(?:[A-Za-z0-9_-]+:)?${f}>([^<]*)</(?:[A-Za-z0-9_-]+:)?${f}>`).exec(text);
    if (full) out[f] = xmlUnescape(full[1]);
    else if (new RegExp(`<(?:[A-Za-z0-9_-]+:)?${f}\\s*/>`).test(text)) out[f] = "";
  }
  return out;
}

/**
 * The rendered XML with `<kvmlab:owner>` set to `owner` (inserted after `<kvmlab:project>` as the
 * template writes it, or replaced). Unchanged when the XML has no kvmlab metadata or the owner
 * is "" (a state from before owners). Throws on an owner that is not an owner string.
 */
export function withDomainOwner(xml: string, owner: string): string {
  if (owner === "") return xml;
  if (owner.length > 400 || !DOMAIN_OWNER_RE.test(owner))
    throw new Error(
      `owner: ${JSON.stringify(owner)} is not an owner string (ownerOf); it cannot go into the domain's metadata`,
    );
  const block = metadataBlockOf(xml);
  if (block === "") return xml;
  // Escaped as the template escapes it (Handlebars writes "=" as "&#x3D;"), so the filled XML is
  // byte for byte what rendering with the owner gives.
  const text = owner.replace(/=/g, "&#x3D;");
  let next: string;
  if (/<kvmlab:owner>[^<]*<\/kvmlab:owner>/.test(block)) {
    next = block.replace(/<kvmlab:owner>[^<]*<\/kvmlab:owner>/, () => `<kvmlab:owner>${text}</kvmlab:owner>`);
  } else {
    const m = /\n([ \t]*)<kvmlab:project>[^<]*<\/kvmlab:project>/.exec(block);
    if (!m) return xml;
    const at = m.index + m[0].length;
    next = `${block.slice(0, at)}\n${m[1]}<kvmlab:owner>${text}</kvmlab:owner>${block.slice(at)}`;
  }
  return xml.replace(block, () => next);
}

/**
 * The metadata element as `virsh metadata --key kvmlab --set` takes it: without the prefix and
 * the namespace declaration (libvirt puts the element and its children in the namespace given
 * by --uri and --key), on one line. "" when the XML has no kvmlab metadata.
 */
export function metadataSetText(xml: string): string {
  const block = metadataBlockOf(xml);
  if (block === "") return "";
  return block
    .replace(/ xmlns:kvmlab='[^']*'/, "")
    .replace(/<(\/?)kvmlab:/g, "<$1")
    .replace(/>\s+</g, "><")
    .replace(/&#x3D;/g, "=")
    .trim();
}

/**
 * The text for `virsh metadata --set` of a domain whose XML has no kvmlab element (review O3: a
 * raw provider call's XML): an element holding only the identity project and the owner, so the
 * host still says whose the domain is. "" for owner "" (a state from before owners). Throws on
 * values that are not an owner string or a project reference (nothing else reaches the shell).
 */
export function ownerOnlySetText(owner: string, project: string): string {
  if (owner === "") return "";
  if (owner.length > 400 || !DOMAIN_OWNER_RE.test(owner))
    throw new Error(
      `owner: ${JSON.stringify(owner)} is not an owner string (ownerOf); it cannot go into the domain's metadata`,
    );
  if (project !== "" && !PROJECT_REF_RE.test(project))
    throw new Error(
      `project: ${JSON.stringify(project)} is not "<domain>/<project>"; it cannot go into the domain's metadata`,
    );
  return `<instance><project>${project}</project><owner>${owner}</owner></instance>`;
}

/**
 * What differs between the metadata a domain on the host carries and the metadata it should
 * carry (from the XML the state holds): `field: host "a", expected "b"`, joined by "; " ("" when
 * they agree). Only the fields the expected XML has are compared. An XML without kvmlab's
 * element (a raw provider call's) is compared against the owner-only element its owner gives
 * (review L6: project and owner), so a lost one shows as drift; none for owner "".
 */
export function metadataDrift(
  expectedXml: string,
  hostText: string,
  ownerOnly: { owner: string; project: string } = { owner: "", project: "" },
): string {
  const block = metadataBlockOf(expectedXml);
  const want: Partial<Record<DomainMetadataField, string>> =
    block !== ""
      ? parseDomainMetadata(block)
      : ownerOnly.owner !== ""
        ? { project: ownerOnly.project, owner: ownerOnly.owner }
        : {};
  const have = parseDomainMetadata(hostText);
  const diffs: string[] = [];
  for (const f of DOMAIN_METADATA_FIELDS) {
    const w = want[f];
    if (w === undefined) continue;
    const h = have[f];
    if (h !== w)
      diffs.push(
        `${f}: host ${h === undefined ? "(none)" : JSON.stringify(h)}, expected ${JSON.stringify(w)}`,
      );
  }
  return diffs.join("; ");
}

function xmlUnescape(s: string): string {
  return s
    .replace(/&#x([0-9A-Fa-f]{1,6});/g, (_, h: string) => String.fromCodePoint(Number.parseInt(h, 16)))
    .replace(/&#([0-9]{1,7});/g, (_, d: string) => String.fromCodePoint(Number.parseInt(d, 10)))
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&amp;/g, "&");
}
