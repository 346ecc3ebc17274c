/**
 * kvmlab's domain metadata (issue 14): the owner the provider fills in sits where the template
 * would render it, a change inside the element alone is a metadata change (no redefine), the
 * text handed to `virsh metadata --set` carries every field, and drift is read from what libvirt
 * prints.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  metadataBlockOf,
  metadataDrift,
  metadataSetText,
  ownerOnlySetText,
  parseDomainMetadata,
  sameApartFromMetadata,
  withDomainOwner,
} from "../../../core/domainMetadata";
import { renderDomainXml, toDomainView, type DomainSpec } from "../../../templates/domain";
import { virtXmlValidate, assertValid } from "../templates/support";

const OWNER = "shop/dev/Server/web-0/project=Default%2Fdemo";

const spec = (metadata: Partial<DomainSpec["metadata"]> = {}): DomainSpec => ({
  name: "web-0",
  uuid: "6f1e1d9a-3b1c-4a57-9a39-8d3a3f0e6b11",
  type: "kvm",
  vcpus: 1,
  memoryMiB: 256,
  boot: { kind: "disk", disk: "/var/lib/kvmlab/instances/web-0/disk.qcow2" },
  nics: [],
  serialLog: "/var/lib/kvmlab/instances/web-0/console.log",
  metadata: {
    lab: "shop",
    stack: "dev",
    project: "Default/demo",
    server: "web-0",
    image: "cirros",
    flavor: "m1.tiny",
    ...metadata,
  },
});

test("the provider's owner lands where the template renders it, and the XML validates", () => {
  const program = renderDomainXml(toDomainView(spec()));
  assert.doesNotMatch(program, /kvmlab:owner/);
  const filled = withDomainOwner(program, OWNER);
  assert.equal(filled, renderDomainXml(toDomainView(spec({ owner: OWNER }))));
  assertValid(virtXmlValidate(filled), "domain XML with owner");
  // Idempotent, and a new owner replaces the old one.
  assert.equal(withDomainOwner(filled, OWNER), filled);
  const moved = withDomainOwner(filled, "shop/dev/Server/web-0");
  assert.equal(parseDomainMetadata(moved).owner, "shop/dev/Server/web-0");
  assert.equal(moved.match(/kvmlab:owner>/g)?.length, 2);
  // "" (a state from before owners) leaves the XML alone; a non-owner is refused.
  assert.equal(withDomainOwner(program, ""), program);
  assert.throws(() => withDomainOwner(program, "x</kvmlab:owner><evil/>"), /not an owner string/);
});

test("a change inside kvmlab's metadata alone is no redefine; any other change is", () => {
  const a = withDomainOwner(renderDomainXml(toDomainView(spec())), OWNER);
  const b = withDomainOwner(renderDomainXml(toDomainView(spec({ project: "Default/other" }))), OWNER);
  const c = withDomainOwner(renderDomainXml(toDomainView(spec())), "shop/dev/Server/web-0");
  assert.ok(sameApartFromMetadata(a, b));
  assert.ok(sameApartFromMetadata(a, c));
  assert.notEqual(a, b);
  const bigger = withDomainOwner(renderDomainXml(toDomainView({ ...spec(), memoryMiB: 512 })), OWNER);
  assert.ok(!sameApartFromMetadata(a, bigger));
  // The XML of a state from before issue 14 (project = the stack, no stack or owner element).
  const old = a
    .replace(/\n\s*<kvmlab:stack>[^<]*<\/kvmlab:stack>/, "")
    .replace(/\n\s*<kvmlab:owner>[^<]*<\/kvmlab:owner>/, "")
    .replace("<kvmlab:project>Default/demo</kvmlab:project>", "<kvmlab:project>dev</kvmlab:project>");
  assert.ok(sameApartFromMetadata(old, a));
});

test("virsh metadata --set text: every field, no prefix, one line; drift read from libvirt's forms", () => {
  const xml = withDomainOwner(renderDomainXml(toDomainView(spec())), OWNER);
  const text = metadataSetText(xml);
  assert.equal(
    text,
    `<instance><lab>shop</lab><stack>dev</stack><project>Default/demo</project><owner>${OWNER}</owner><server>web-0</server><image>cirros</image><flavor>m1.tiny</flavor></instance>`,
  );
  assert.deepEqual(parseDomainMetadata(text), parseDomainMetadata(metadataBlockOf(xml)));
  // What libvirt prints back (prefixed, on one line after tr -d '\n'): no drift.
  const host = metadataBlockOf(xml).replace(/\n\s*/g, "");
  assert.equal(metadataDrift(xml, host), "");
  // A project changed on the host by hand, an owner removed: both named.
  const edited = host
    .replace("<kvmlab:project>Default/demo</kvmlab:project>", "<kvmlab:project>Default/x</kvmlab:project>")
    .replace(/<kvmlab:owner>[^<]*<\/kvmlab:owner>/, "");
  assert.equal(
    metadataDrift(xml, edited),
    `project: host "Default/x", expected "Default/demo"; owner: host (none), expected "${OWNER}"`,
  );
  // No metadata on the host at all (virsh metadata prints nothing): every field drifts.
  assert.match(metadataDrift(xml, ""), /^lab: host \(none\)/);
  // An empty project as libvirt writes it.
  const none = withDomainOwner(renderDomainXml(toDomainView(spec({ project: "" }))), OWNER);
  assert.equal(
    metadataDrift(
      none,
      metadataBlockOf(none).replace("<kvmlab:project></kvmlab:project>", "<kvmlab:project/>"),
    ),
    "",
  );
});

test("only the domain's own <metadata> element counts as kvmlab's metadata (review O4)", () => {
  const xml = withDomainOwner(renderDomainXml(toDomainView(spec())), OWNER);
  const block = metadataBlockOf(xml);
  assert.notEqual(block, "");
  // The same element moved out of <metadata> (libvirt ignores unknown elements): not kvmlab's
  // metadata, so a change inside it is a redefine, and nothing would be handed to --set.
  const moved = xml.replace(block, "").replace("</devices>", `${block}\n  </devices>`);
  assert.equal(metadataBlockOf(moved), "");
  assert.equal(metadataSetText(moved), "");
  const movedChanged = moved.replace(
    "<kvmlab:flavor>m1.tiny</kvmlab:flavor>",
    "<kvmlab:flavor>big</kvmlab:flavor>",
  );
  assert.ok(!sameApartFromMetadata(moved, movedChanged), "a change outside <metadata> is a redefine");
  // A copy of the element after the real one: a change in the copy is a redefine.
  const twice = xml.replace("</devices>", `${block}\n  </devices>`);
  assert.equal(metadataBlockOf(twice), block);
  const at = twice.lastIndexOf("<kvmlab:flavor>m1.tiny");
  const twiceChanged = `${twice.slice(0, at)}<kvmlab:flavor>big${twice.slice(at + "<kvmlab:flavor>m1.tiny".length)}`;
  assert.equal(metadataBlockOf(twiceChanged), block, "the real element is unchanged");
  assert.ok(!sameApartFromMetadata(twice, twiceChanged));
  // Something other than the known fields inside the element: not kvmlab's metadata either.
  const smuggled = xml.replace("</kvmlab:instance>", "<kvmlab:x><disk/></kvmlab:x></kvmlab:instance>");
  assert.equal(metadataBlockOf(smuggled), "");
  assert.ok(!sameApartFromMetadata(xml, smuggled));
  // The element in another namespace, or <metadata> not right after <uuid>: not kvmlab's.
  assert.equal(metadataBlockOf(xml.replace("https://kvmlab.dev/xmlns/domain/1.0", "urn:x")), "");
  assert.equal(metadataBlockOf(xml.replace("<metadata>", "<title>t</title>\n  <metadata>")), "");
  // Two XMLs without kvmlab's element are the same only when equal; one with and one without differ.
  assert.ok(sameApartFromMetadata(moved, moved));
  assert.ok(!sameApartFromMetadata(xml, moved));
  // Flavor notes are part of the element.
  const noted = xml.replace(
    "</kvmlab:instance>",
    "  <kvmlab:spec key='hw:x'>1</kvmlab:spec>\n    </kvmlab:instance>",
  );
  assert.match(metadataBlockOf(noted), /kvmlab:spec/);
  assert.ok(sameApartFromMetadata(xml, noted));
});

test("an XML without kvmlab's element still gets the owner and project set (review O3)", () => {
  assert.equal(
    ownerOnlySetText(OWNER, "Default/demo"),
    `<instance><project>Default/demo</project><owner>${OWNER}</owner></instance>`,
  );
  assert.deepEqual(parseDomainMetadata(ownerOnlySetText(OWNER, "")), { project: "", owner: OWNER });
  assert.equal(ownerOnlySetText("", "Default/demo"), "", "a state from before owners sets nothing");
  assert.throws(() => ownerOnlySetText("x'$(id)", ""), /not an owner string/);
  assert.throws(() => ownerOnlySetText(OWNER, "a</project>"), /project: .* is not "<domain>\/<project>"/);
});

test("review L6: drift of a raw XML is read against its owner-only element, so a lost one shows", () => {
  const raw = "<domain type='kvm'><name>web-0</name></domain>";
  const mine = { owner: OWNER, project: "Default/demo" };
  assert.equal(metadataDrift(raw, ownerOnlySetText(OWNER, "Default/demo"), mine), "");
  assert.equal(
    metadataDrift(raw, "", mine),
    `project: host (none), expected "Default/demo"; owner: host (none), expected ${JSON.stringify(OWNER)}`,
  );
  // A state from before owners expects nothing.
  assert.equal(metadataDrift(raw, "", { owner: "", project: "" }), "");
});
