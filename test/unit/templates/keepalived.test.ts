import { test } from "node:test";
import * as assert from "node:assert/strict";
import { renderKeepalivedConf, type KeepalivedSpec } from "../../../templates/keepalived";
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
