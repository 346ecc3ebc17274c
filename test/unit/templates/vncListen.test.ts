/**
 * The console on the management address (issue 14): the Server's XML is rendered in the program,
 * before placement, with a placeholder the provider fills from the chosen host; the fill accepts
 * only an IPv4 address and only inside the VNC listen attributes; a live migration moves the
 * listen address with libvirt's migratable XML; console token lifetimes are bounded.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { renderServer } from "../../../components/server";
import {
  fillManagementListen,
  MANAGEMENT_ADDRESS_PLACEHOLDER,
  MANAGEMENT_LISTEN,
} from "../../../templates/domain";
import { migrateStep, vncListenSwap } from "../../../provider/server/migrate";
import { shQuote } from "../../../provider/host/quote";
import { execFileSync } from "node:child_process";
import { checkTtlSec, issueConsoleToken } from "../../../provider/console";
import { testHost } from "../provider/fixtures";

function xmlWith(consoleListen: string): string {
  return renderServer({
    serverName: "web1",
    uuidSeed: "lab/dev/web1",
    lab: "lab",
    stack: "dev",
    project: "",
    image: {
      name: "cirros",
      kind: "kernel",
      disk: "",
      format: "qcow2",
      kernel: "/var/lib/kvmlab/images/cirros/kernel",
      ramdisk: "/var/lib/kvmlab/images/cirros/ramdisk",
    },
    flavor: { name: "m1.tiny", vcpus: 1, ramMiB: 128, diskGiB: 0 },
    ports: [],
    kernelCmdline: "console=ttyS0",
    cloudInit: false,
    publicKeys: [],
    userName: "kvmlab",
    userData: {},
    consoleListen,
  }).domainXml.kvm;
}

test('"management" renders the placeholder, and the fill puts the placed host\'s address in both listen attributes', () => {
  const xml = xmlWith(MANAGEMENT_LISTEN);
  assert.match(
    xml,
    new RegExp(`<graphics type='vnc' autoport='yes' listen='${MANAGEMENT_ADDRESS_PLACEHOLDER}'>`),
  );
  assert.match(xml, new RegExp(`<listen type='address' address='${MANAGEMENT_ADDRESS_PLACEHOLDER}'/>`));
  const filled = fillManagementListen(xml, "10.99.0.2", "host hv1");
  assert.match(filled, /<graphics type='vnc' autoport='yes' listen='10\.99\.0\.2'>/);
  assert.match(filled, /<listen type='address' address='10\.99\.0\.2'\/>/);
  assert.ok(!filled.includes(MANAGEMENT_ADDRESS_PLACEHOLDER));
  // Only the placeholder changes.
  assert.equal(filled.replace(/10\.99\.0\.2/g, MANAGEMENT_ADDRESS_PLACEHOLDER), xml);
});

test("an explicit address needs no fill; the fill refuses a host name and a placeholder outside the listen attributes", () => {
  const fixed = xmlWith("127.0.0.1");
  assert.equal(fillManagementListen(fixed, "hv1.example"), fixed);
  assert.throws(
    () => fillManagementListen(xmlWith(MANAGEMENT_LISTEN), "hv1.example", "host hv1"),
    /consoleListen: "management" listens on host hv1's management address, but its address "hv1\.example" is not an IPv4 address/,
  );
  assert.throws(
    () => fillManagementListen(`<name>${MANAGEMENT_ADDRESS_PLACEHOLDER}</name>`, "10.0.0.1"),
    /appears outside the VNC listen address/,
  );
  assert.throws(() => xmlWith("lan"), /vnc\.listen/);
});

test("a live migration of a management-address console moves it with the migratable XML", () => {
  const dst = testHost("hv2", 3);
  const plain = migrateStep("web1", dst, false, 240);
  assert.doesNotMatch(plain.script, /--xml|dumpxml/);
  const moved = migrateStep("web1", dst, false, 240, { from: "10.99.0.2", to: "10.99.0.3" });
  assert.ok(
    moved.script.includes(
      `dumpxml --migratable web1 | sed ${shQuote(vncListenSwap("10.99.0.2", "10.99.0.3"))} > /var/lib/kvmlab/migrate/web1/live.xml`,
    ),
    moved.script,
  );
  assert.match(moved.script, /dumpxml --migratable --inactive web1 /);
  assert.match(
    moved.script,
    /--xml \/var\/lib\/kvmlab\/migrate\/web1\/live\.xml --persistent-xml \/var\/lib\/kvmlab\/migrate\/web1\/inactive\.xml web1 /,
  );
});

test("the migration's sed moves only the console's listen address, not another element carrying the same address", () => {
  const before = [
    "<domain type='kvm'>",
    "  <devices>",
    "    <hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x00'/></source></hostdev>",
    "    <interface type='bridge'><ip address='10.99.0.2' prefix='24'/></interface>",
    "    <graphics type='vnc' port='5900' autoport='yes' listen='10.99.0.2'>",
    "      <listen type='address' address='10.99.0.2'/>",
    "    </graphics>",
    "    <serial type='tcp'><source mode='bind' host='10.99.0.2' service='4555'/></serial>",
    "  </devices>",
    "</domain>",
    "",
  ].join("\n");
  // The real sed, as the source host runs it.
  const after = execFileSync("sed", [vncListenSwap("10.99.0.2", "10.99.0.3")], {
    input: before,
    encoding: "utf8",
  });
  assert.match(after, /<graphics type='vnc' port='5900' autoport='yes' listen='10\.99\.0\.3'>/);
  assert.match(after, /<listen type='address' address='10\.99\.0\.3'\/>/);
  assert.match(after, /<ip address='10\.99\.0\.2' prefix='24'\/>/);
  assert.match(after, /host='10\.99\.0\.2'/);
  assert.equal(after.split("10.99.0.3").length - 1, 2);
  // 10.99.0.23 is not 10.99.0.2: the dots are literal and the quote ends the match.
  assert.equal(
    execFileSync("sed", [vncListenSwap("10.99.0.2", "10.99.0.3")], {
      input: "<graphics listen='10.99.0.23'>\n",
      encoding: "utf8",
    }),
    "<graphics listen='10.99.0.23'>\n",
  );
  assert.throws(() => vncListenSwap("10.99.0.2/s/x/y", "10.99.0.3"), /not an IPv4 address/);
});

test("console token lifetimes are bounded to 1-3600 s, refused before any host is reached", async () => {
  assert.equal(checkTtlSec(600), undefined);
  assert.equal(checkTtlSec(3600), undefined);
  for (const bad of [0, 3601, 1.5, "600"])
    assert.match(checkTtlSec(bad) ?? "", /ttlSec: expected an integer 1-3600/);
  await assert.rejects(issueConsoleToken([testHost("hv1", 2)], "web1", "Default/u", 86400), /ttlSec/);
});

test("the management listen is never 0.0.0.0, multicast or broadcast (the console has no password)", () => {
  const xml = `<graphics type='vnc' port='-1' listen='${MANAGEMENT_ADDRESS_PLACEHOLDER}'/>`;
  for (const bad of ["0.0.0.0", "224.0.0.1", "239.255.255.250", "255.255.255.255"])
    assert.throws(
      () => fillManagementListen(xml, bad, "host hv1"),
      /consoleListen.*not one address of one host/s,
      bad,
    );
  assert.match(fillManagementListen(xml, "10.99.0.2"), /listen='10\.99\.0\.2'/);
});
