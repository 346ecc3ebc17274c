/**
 * SecurityGroup and SecurityGroupPort against a `kvmlab sandbox` host, reached only over SSH
 * (instance "itest-sg"). For each driver (Linux bridge: physdev on the network's bridge; OVS:
 * Neutron's hybrid qbr/qvb/qvo plumbing), a protected port (a test namespace whose host-side
 * device is the port's tap, the attachment a guest's tap has) in group "web":
 * ingress tcp/80 from anywhere, tcp/8080 from members of group "bastion", tcp/9000 from anywhere
 * (revoked later). Proves: an allowed port passes, a port not allowed is refused, the remote-group
 * rule admits a member and refuses a non-member, a forged source address is dropped, revoking
 * a rule cuts a live TCP connection it allowed (conntrack -D), a hand-deleted rule is drift, and
 * delete leaves no chain, ipset, device, conntrack entry of the zone, or file.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { sandboxHostConnections, startSandbox, stopSandbox } from "../support/sandbox";
import { plugLines } from "../support/plug";
import {
  closeHostSessions,
  diffSecurityGroupPort,
  networkProvider,
  runChecked,
  securityGroupPortProvider,
  securityGroupProvider,
  type HostConnection,
  type NetworkOutputs,
  type SecurityGroupOutputs,
  type SecurityGroupPortOutputs,
} from "../../provider";

const INSTANCE = process.env.KVMLAB_ITEST_SG_INSTANCE ?? "itest-sg";
let hosts: HostConnection[] = [];

before(async () => {
  hosts = sandboxHostConnections(await startSandbox(INSTANCE, 1));
});

after(async () => {
  await closeHostSessions();
  if (process.env.KVMLAB_KEEP_SANDBOX !== "1") await stopSandbox(INSTANCE);
});

async function sh(host: HostConnection, script: string): Promise<string> {
  const [out] = await runChecked(host, [{ label: "test command", script }], { timeoutMs: 60_000 });
  return out;
}

async function checked<T>(
  provider: { check?: (o: T, n: T) => Promise<unknown> },
  raw: Record<string, unknown>,
): Promise<T> {
  const r = (await provider.check!({} as T, raw as T)) as { inputs?: T; failures?: unknown[] };
  assert.deepEqual(r.failures ?? [], [], JSON.stringify(r.failures));
  return r.inputs as T;
}

/** A namespace with eth0 whose host end `dev` joins `bridge`. */
async function plug(
  h: HostConnection,
  ns: string,
  dev: string,
  bridge: string,
  ovs: boolean,
  ip: string,
  mac: string,
): Promise<void> {
  await sh(
    h,
    // At the selfservice networks' MTU (1450).
    ["set -e", ...plugLines({ ns, dev, bridge, ovs, mtu: 1450, cidr: `${ip}/24`, mac, txOff: true })].join(
      "\n",
    ),
  );
}

async function unplug(h: HostConnection, ns: string, dev: string): Promise<void> {
  await sh(
    h,
    [
      `for p in $(cat /tmp/${ns}.pids 2>/dev/null); do kill -- -$p 2>/dev/null || kill $p 2>/dev/null || true; done`,
      `ovs-vsctl --if-exists del-port ${dev}`,
      `ip link del ${dev} 2>/dev/null || true`,
      `ip netns del ${ns} 2>/dev/null || true`,
      `rm -rf /tmp/${ns}.pids /tmp/${ns} /tmp/${ns}.sink`,
    ].join("\n"),
  );
}

/** 0 when a TCP connect + short exchange works, else the exit code. */
async function tcp(h: HostConnection, ns: string, ip: string, port: number): Promise<number> {
  return Number(
    (
      await sh(h, `echo hi | ip netns exec ${ns} timeout 4 busybox nc ${ip} ${port} >/dev/null 2>&1; echo $?`)
    ).trim(),
  );
}

async function state(h: HostConnection): Promise<string> {
  return sh(
    h,
    [
      "iptables-save | grep -E '^(:|-A) ?kvmlab' || true",
      "iptables-save -t raw | grep kvmlab || true",
      "ipset list -n | grep kvmlab || true",
      "ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(qbr|qvb|qvo|tap)' || true",
      "ls /var/lib/kvmlab/ports /var/lib/kvmlab/secgroups 2>/dev/null || true",
    ].join("\n"),
  );
}

const RULES = [
  { direction: "ingress", protocol: "tcp", port: 80 },
  { direction: "ingress", protocol: "tcp", port: 8080, remoteGroup: "bastion" },
  { direction: "ingress", protocol: "tcp", port: 9000 },
];

for (const driver of ["linuxbridge", "openvswitch"] as const) {
  test(`${driver}: allowed/refused ports, remote group, anti-spoofing, revoke cuts a live flow, drift, clean delete`, async () => {
    const [h] = hosts;
    const d = driver === "openvswitch" ? "o" : "l";
    const pre = `10.90.${d === "o" ? 2 : 1}`;
    const before0 = await state(h);
    const netIn = await checked(networkProvider, {
      networkName: `sg-${d}`,
      kind: "selfservice",
      driver,
      hosts,
    });
    const net = (await networkProvider.create!(netIn)).outs as NetworkOutputs;
    const bastion = (
      await securityGroupProvider.create!(
        await checked(securityGroupProvider, { groupName: "bastion", hosts, members: [`${pre}.20`] }),
      )
    ).outs as SecurityGroupOutputs;
    assert.deepEqual(bastion.realized[h.name], [`${pre}.20`]);
    const webIn = await checked<SecurityGroupOutputs>(securityGroupProvider, {
      groupName: "web",
      hosts,
      rules: RULES,
      members: [`${pre}.10`],
    });
    const web = (await securityGroupProvider.create!(webIn)).outs as SecurityGroupOutputs;
    const tap = `tapsg${d}10`;
    const mac = "fa:16:3e:00:00:10";
    const portIn = await checked(securityGroupPortProvider, {
      portName: `srv-${d}`,
      hosts,
      host: h.name,
      tap,
      mac,
      ip: `${pre}.10`,
      driver,
      networkBridge: net.bridge,
      groups: [{ groupName: "web", rules: web.rules }],
    });
    let port = (await securityGroupPortProvider.create!(portIn)).outs as SecurityGroupPortOutputs;
    assert.equal(port.realized.rules, "sync");
    assert.equal(port.realized.jumps, 6);
    if (driver === "openvswitch") assert.equal(port.realized.hybrid, "yes");
    assert.match(port.ruleset, /-j RETURN/);
    const ovs = driver === "openvswitch";
    try {
      await plug(h, `kvlt-srv${d}`, tap, port.portBridge, false, `${pre}.10`, mac);
      await plug(h, `kvlt-bas${d}`, `kvltbas${d}`, net.bridge, ovs, `${pre}.20`, "fa:16:3e:00:00:20");
      await plug(h, `kvlt-oth${d}`, `kvltoth${d}`, net.bridge, ovs, `${pre}.30`, "fa:16:3e:00:00:30");
      await sh(
        h,
        [
          `: > /tmp/kvlt-srv${d}.pids`,
          ...[80, 8080, 8081].map(
            (p) =>
              `ip netns exec kvlt-srv${d} setsid sh -c 'while true; do echo ok | busybox nc -l -p ${p} >/dev/null 2>&1; done' </dev/null >/dev/null 2>&1 & echo $! >> /tmp/kvlt-srv${d}.pids`,
          ),
          `ip netns exec kvlt-srv${d} setsid sh -c 'sleep 600 | busybox nc -l -p 9000 > /tmp/kvlt-srv${d}.sink' </dev/null >/dev/null 2>&1 & echo $! >> /tmp/kvlt-srv${d}.pids`,
          "sleep 0.5",
        ].join("\n"),
      );
      // Allowed, refused, remote group member / non-member.
      assert.equal(await tcp(h, `kvlt-oth${d}`, `${pre}.10`, 80), 0, "tcp/80 is allowed from anywhere");
      assert.notEqual(await tcp(h, `kvlt-oth${d}`, `${pre}.10`, 8081), 0, "tcp/8081 is not allowed");
      assert.equal(await tcp(h, `kvlt-bas${d}`, `${pre}.10`, 8080), 0, "a bastion member reaches tcp/8080");
      assert.notEqual(await tcp(h, `kvlt-oth${d}`, `${pre}.10`, 8080), 0, "a non-member does not");
      // Anti-spoofing: the port's own address passes, a forged one is dropped.
      assert.match(
        await sh(h, `ip netns exec kvlt-srv${d} busybox ping -c 1 -W 2 ${pre}.20 || true`),
        /1 packets received/,
      );
      await sh(h, `ip netns exec kvlt-srv${d} ip addr add ${pre}.99/24 dev eth0`);
      assert.match(
        await sh(h, `ip netns exec kvlt-srv${d} busybox ping -c 1 -W 2 -I ${pre}.99 ${pre}.20 || true`),
        /0 packets received/,
      );

      // A live flow on tcp/9000, then the rule is revoked: the flow stops.
      await sh(
        h,
        `ip netns exec kvlt-bas${d} setsid sh -c 'while true; do echo tick; sleep 0.2; done | busybox nc ${pre}.10 9000' </dev/null >/dev/null 2>&1 & echo $! >> /tmp/kvlt-srv${d}.pids`,
      );
      const size = async (): Promise<number> =>
        Number((await sh(h, `stat -c %s /tmp/kvlt-srv${d}.sink 2>/dev/null || echo 0`)).trim());
      await new Promise((r) => setTimeout(r, 1500));
      const s1 = await size();
      await new Promise((r) => setTimeout(r, 1000));
      assert.ok((await size()) > s1, "the flow carries data before the revoke");
      const revokedIn = await checked<SecurityGroupOutputs>(securityGroupProvider, {
        ...webIn,
        rules: RULES.slice(0, 2),
      });
      const web2 = (await securityGroupProvider.update!("web", web, revokedIn)).outs as SecurityGroupOutputs;
      const portIn2 = await checked(securityGroupPortProvider, {
        ...portIn,
        groups: [{ groupName: "web", rules: web2.rules }],
      });
      port = (await securityGroupPortProvider.update!(port.portName, port, portIn2))
        .outs as SecurityGroupPortOutputs;
      await new Promise((r) => setTimeout(r, 1000));
      const s2 = await size();
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(await size(), s2, "revoking the rule cut the live connection");

      // Drift: a rule deleted by hand is reported, and update puts it back.
      await sh(h, `iptables -w -D kvmlab-i${port.ruleset.match(/kvmlab-i([0-9a-f]{8})/)![1]} 2`);
      const read = (await securityGroupPortProvider.read!(port.portName, port))
        .props as SecurityGroupPortOutputs;
      assert.equal(read.realized.rules, "drift");
      assert.equal(diffSecurityGroupPort(read, portIn2 as never).changes, true);
      port = (await securityGroupPortProvider.update!(port.portName, read, portIn2))
        .outs as SecurityGroupPortOutputs;
      assert.equal(port.realized.rules, "sync");
      assert.equal(await tcp(h, `kvlt-oth${d}`, `${pre}.10`, 80), 0);
    } finally {
      await unplug(h, `kvlt-srv${d}`, tap);
      await unplug(h, `kvlt-bas${d}`, `kvltbas${d}`);
      await unplug(h, `kvlt-oth${d}`, `kvltoth${d}`);
    }
    await securityGroupPortProvider.delete!(port.portName, port);
    const zoneLeft = await sh(h, `conntrack -L -w ${port.zone} 2>/dev/null | grep -c ${pre}.10 || true`);
    assert.equal(zoneLeft.trim(), "0", "no conntrack entry of the port is left in its zone");
    await securityGroupProvider.delete!("web", web);
    await securityGroupProvider.delete!("bastion", bastion);
    await networkProvider.delete!(net.networkName, net);
    assert.equal(await state(h), before0, "the host is as before");
  });
}
