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
