import { test } from "node:test";
import * as assert from "node:assert/strict";
import { keepalivedPair, renderKeepalivedConf, type KeepalivedSpec } from "../../../templates/keepalived";
import { loadBalancerPaths, vrrpRouterId } from "../../../core/paths";
import { assertFieldError, assertValid, expectGolden, keepalivedCheck } from "./support";

const master: KeepalivedSpec = {
  name: "web-lb",
  role: "MASTER",
  interface: "kvlw1a2b3c4d",
  virtualRouterId: 17,
  vrrpAddress: "10.60.0.51",
  peerAddress: "10.60.0.52",
  vipAddress: "10.60.0.50",
  cidr: "10.60.0.0/24",
  authPass: "a1b2c3d4",
  checkScript: "/var/lib/kvmlab/lb/web-lb/check.sh",
};

test("keepalived: an ACTIVE_STANDBY pair renders Octavia's vrrp_instance and passes keepalived -t", () => {
  const conf = renderKeepalivedConf(master);
  expectGolden("keepalived/master.conf", conf);
  assertValid(keepalivedCheck(conf, master.interface, master.checkScript), "keepalived.conf");
  const backup = renderKeepalivedConf({
    ...master,
    role: "BACKUP",
    vrrpAddress: master.peerAddress,
    peerAddress: master.vrrpAddress,
  });
  expectGolden("keepalived/backup.conf", backup);
  assertValid(keepalivedCheck(backup, master.interface, master.checkScript), "keepalived.conf");
  const lines = (c: string) => c.split("\n").map((l) => l.trim());
  assert.ok(lines(conf).includes("priority 100") && lines(backup).includes("priority 90"));
  assert.ok(lines(conf).includes("nopreempt"), "Octavia: no preemption, the VIP stays where it is");
  assert.ok(lines(backup).includes("unicast_src_ip 10.60.0.52") && lines(backup).includes("10.60.0.51"));
  assert.ok(lines(conf).includes("10.60.0.50/24 dev kvlw1a2b3c4d"));
});

test("keepalived: every field is checked and the error names it", () => {
  assertFieldError(() => renderKeepalivedConf({ ...master, peerAddress: master.vrrpAddress }), "peerAddress");
  assertFieldError(() => renderKeepalivedConf({ ...master, vipAddress: "10.61.0.50" }), "vipAddress");
  assertFieldError(() => renderKeepalivedConf({ ...master, authPass: "toolongpass" }), "authPass");
  assertFieldError(() => renderKeepalivedConf({ ...master, virtualRouterId: 0 }), "virtualRouterId");
  assertFieldError(() => renderKeepalivedConf({ ...master, interface: "eth0;reboot" }), "interface");
  assertFieldError(() => renderKeepalivedConf({ ...master, checkScript: "/tmp/x y" }), "checkScript");
  assertFieldError(
    () => renderKeepalivedConf({ ...master, role: "PRIMARY" as KeepalivedSpec["role"] }),
    "role",
  );
});

test("keepalived: keepalivedPair renders MASTER/BACKUP for the amphora namespaces, with the notify script, and passes keepalived -t", () => {
  const { vrrpAddresses, keepalivedConfs } = keepalivedPair("web-lb", "10.60.0.50", "10.60.0.0/24");
  assert.deepEqual(vrrpAddresses, ["10.60.0.51", "10.60.0.52"], "default: the two addresses after the VIP");
  const p = loadBalancerPaths("web-lb");
  const lines = (c: string) => c.split("\n").map((l) => l.trim());
  for (const [i, c] of keepalivedConfs.entries()) {
    assert.ok(lines(c).includes(`notify ${p.notifyScript}`), c);
    assert.ok(lines(c).includes(`script ${p.checkScript}`), c);
    assert.ok(lines(c).includes(`unicast_src_ip ${vrrpAddresses[i]}`), c);
    assert.ok(lines(c).includes(`virtual_router_id ${vrrpRouterId("web-lb")}`), c);
    assert.ok(lines(c).includes(`priority ${i === 0 ? 100 : 90}`), c);
    assertValid(keepalivedCheck(c, p.nsDevice, p.checkScript, p.notifyScript), "keepalived.conf");
  }
  assert.deepEqual(
    keepalivedPair("web-lb", "10.60.0.50", "10.60.0.0/24", ["10.60.0.7", "10.60.0.8"]).vrrpAddresses,
    ["10.60.0.7", "10.60.0.8"],
  );
  assertFieldError(
    () => keepalivedPair("web-lb", "10.60.0.50", "10.60.0.0/24", ["10.60.0.7"]),
    "vrrpAddresses",
  );
  assertFieldError(
    () => keepalivedPair("web-lb", "10.60.0.50", "10.60.0.0/24", ["10.60.0.50", "10.60.0.8"]),
    "vipAddress",
  );
});
