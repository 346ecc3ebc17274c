import { test } from "node:test";
import * as assert from "node:assert/strict";
import { parse } from "yaml";
import { CloudInitSpec, renderCloudInit, toCloudInitView } from "../../../templates";
import { assertFieldError, expectGolden, INJECTIONS } from "./support";

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVzZXJrZXlub3RyZWFsbHlhcmVhbGtleQ ops@bastion";
const HASH = "$6$kvmlabsalt$Qm9ndXNoYXNoZm9ydGVzdHNvbmx5Lm5vdGFyZWFsaGFzaC5rdm1sYWIuLi4uLi4uLi4uLi4uLi4uLi4u";

const spec: CloudInitSpec = {
  instanceId: "iid-three-tier-web-0",
  hostname: "web-0",
  users: [
    { name: "ops", sshAuthorizedKeys: [KEY], sudo: true, groups: ["adm", "wheel"], shell: "/bin/bash" },
    { name: "app", passwordHash: HASH },
  ],
  writeFiles: [
    { path: "/etc/kvmlab/app.env", content: "PORT=8080\nDB_HOST=10.10.3.5\n", permissions: "0600" },
    { path: "/etc/motd", content: "  starts indented: 'quotes' and \"double\" $HOME `id`" },
  ],
  runcmd: ["echo 'ready' > /run/kvmlab-ready", ["systemctl", "enable", "--now", "app.service"]],
  nics: [
    {
      name: "eth0",
      mac: "fa:16:3e:10:00:01",
      address: { ip: "10.10.1.5", cidr: "10.10.1.0/24" },
      gateway: "10.10.1.1",
      dnsServers: ["10.10.1.1"],
      mtu: 1450,
    },
    { name: "eth1", mac: "fa:16:3e:10:00:02", address: "dhcp" },
  ],
};

test("cloud-init: seed files match their goldens and parse back to the intended data", () => {
  const files = renderCloudInit(toCloudInitView(spec));
  expectGolden("cloudinit/web-0/meta-data", files["meta-data"]);
  expectGolden("cloudinit/web-0/user-data", files["user-data"]);
  expectGolden("cloudinit/web-0/network-config", files["network-config"]);

  assert.deepEqual(parse(files["meta-data"]), {
    "instance-id": "iid-three-tier-web-0",
    "local-hostname": "web-0",
  });

  assert.ok(files["user-data"].startsWith("#cloud-config\n"));
  const ud = parse(files["user-data"]);
  assert.equal(ud.hostname, "web-0");
  assert.equal(ud.ssh_pwauth, true, "a user with a password hash enables password login");
  assert.deepEqual(ud.users[0], {
    name: "ops",
    shell: "/bin/bash",
    groups: "adm, wheel",
    sudo: "ALL=(ALL) NOPASSWD:ALL",
    lock_passwd: true,
    ssh_authorized_keys: [KEY],
  });
  assert.equal(ud.users[1].hashed_passwd, HASH);
  assert.equal(ud.users[1].lock_passwd, false);
  assert.deepEqual(
    ud.write_files.map((f: { path: string; content: string; permissions: string }) => [
      f.path,
      f.content,
      f.permissions,
    ]),
    spec.writeFiles!.map((f) => [f.path, f.content, f.permissions ?? "0644"]),
  );
  assert.deepEqual(ud.runcmd, spec.runcmd);

  const nc = parse(files["network-config"]);
  assert.equal(nc.version, 2);
  assert.deepEqual(nc.ethernets.eth0, {
    match: { macaddress: "fa:16:3e:10:00:01" },
    "set-name": "eth0",
    dhcp4: false,
    addresses: ["10.10.1.5/24"],
    routes: [{ to: "0.0.0.0/0", via: "10.10.1.1" }],
    nameservers: { addresses: ["10.10.1.1"] },
    mtu: 1450,
  });
  assert.equal(nc.ethernets.eth1.dhcp4, true);
});

test("cloud-init: interface names that YAML would read as a boolean, number or null stay strings", () => {
  for (const name of ["true", "null", "1", "0x10", "1e3", "-", "on"]) {
    const files = renderCloudInit(
      toCloudInitView({ ...spec, nics: [{ name, mac: "fa:16:3e:10:00:01", address: "dhcp" }] }),
    );
    const nc = parse(files["network-config"]);
    assert.deepEqual(Object.keys(nc.ethernets), [name], name);
    assert.equal(nc.ethernets[name]["set-name"], name);
    // cloud-init reads YAML 1.1, where "on" is a boolean too: the key is quoted, not plain.
    assert.ok(files["network-config"].includes(`  ${JSON.stringify(name)}:\n`), name);
  }
});

test("cloud-init: without users no password login and no users key", () => {
  const files = renderCloudInit(toCloudInitView({ instanceId: "i-1", hostname: "db-0" }));
  const ud = parse(files["user-data"]);
  assert.equal(ud.ssh_pwauth, false);
  assert.equal(ud.users, undefined);
  assert.deepEqual(parse(files["network-config"]), { version: 2, ethernets: {} });
});

test("cloud-init: any file content and command survive quoting unchanged", () => {
  const tricky = [
    "a: b\n",
    "- x\n",
    "|\n",
    "#c\n",
    "x\n\n",
    "\n",
    "tab\there\n",
    "}{][\n",
    "---\n...\n",
    "ends\\",
  ];
  const files = renderCloudInit(
    toCloudInitView({
      instanceId: "i-1",
      hostname: "h",
      writeFiles: tricky.map((content, i) => ({ path: `/f${i}`, content })),
      runcmd: tricky.map((t) => t.replace(/\n/g, " ").replace(/\t/g, " ")),
    }),
  );
  const ud = parse(files["user-data"]);
  assert.deepEqual(
    ud.write_files.map((f: { content: string }) => f.content),
    tricky,
  );
});

test("cloud-init: clear-text passwords are refused", () => {
  assertFieldError(
    () => toCloudInitView({ ...spec, users: [{ name: "app", passwordHash: "hunter2" }] }),
    "users[0].passwordHash",
    /clear-text/,
  );
});

test("cloud-init: fails on injection attempts, naming the field", () => {
  for (const bad of INJECTIONS) {
    assertFieldError(() => toCloudInitView({ ...spec, hostname: bad }), "hostname");
    assertFieldError(() => toCloudInitView({ ...spec, users: [{ name: bad }] }), "users[0].name");
    assertFieldError(
      () => toCloudInitView({ ...spec, nics: [{ ...spec.nics![0], name: bad }] }),
      "nics[0].name",
    );
  }
  assertFieldError(
    () =>
      toCloudInitView({ ...spec, users: [{ name: "a", sshAuthorizedKeys: [`${KEY}\nruncmd: [reboot]`] }] }),
    "users[0].sshAuthorizedKeys[0]",
  );
  assertFieldError(() => toCloudInitView({ ...spec, runcmd: ["echo a\nreboot"] }), "runcmd[0]");
  assertFieldError(
    () => toCloudInitView({ ...spec, writeFiles: [{ path: "/etc/../x", content: "" }] }),
    "writeFiles[0].path",
  );
  assertFieldError(
    () => toCloudInitView({ ...spec, writeFiles: [{ path: "/x", content: "", permissions: "777" }] }),
    "writeFiles[0].permissions",
  );
});
