/**
 * LoadBalancer topology ACTIVE_STANDBY against two `kvmlab sandbox` hosts (instance
 * "itest-lbha"), reached only over SSH. A Linux-bridge self-service network spans both hosts
 * (VXLAN); the members are busybox httpd in namespaces (kvlt-ham1 on hv1, kvlt-ham2 on hv2); the
 * amphorae run on hv1 (MASTER) and hv2 (BACKUP); the client is a namespace (kvlt-hac) on hv2.
 *
 * Proves: two amphorae, each with its own VRRP address reserved in the IPAM; keepalived (VRRP
 * unicast over the VXLAN) puts the VIP on hv1's amphora, whose state is MASTER and hv2's BACKUP;
 * under a bounded request loop (curl every 0.1 s, 1 s timeout, 15 s) stopping the MASTER's
 * keepalived (SIGTERM) moves the VIP to hv2 and requests continue (prints how many failed and
 * the outage in ms); refresh reports the dead keepalived as drift, update restarts it (hv1 comes
 * back as BACKUP: nopreempt); a config change reloads haproxy on both amphorae; delete leaves
 * nothing on either host (namespaces, links, files, owner markers, IPAM entries compared).
 *
 * A second test puts security groups on both amphorae's VIP ports as the LoadBalancer component
 * wires them (own VRRP address, the VIP as an allowed address pair, the peer's VRRP address
 * admitted, tcp/80 from anywhere): VRRP still passes (hv1 MASTER, hv2 BACKUP, no split brain), a
 * port no listener admits times out instead of being refused, and after the MASTER's keepalived
 * stops the VIP answers from hv2's amphora through its filtered port.
 *
 * All traffic stays inside the sandbox hosts' namespaces.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { planSubnet } from "../../components/network";
import { loadBalancerConfig } from "../../components/loadBalancer";
import { amphoraMac, ipamRecordName, loadBalancerPaths } from "../../core/paths";
import { keepalivedPair } from "../../templates/keepalived";
import type { ListenerSpec } from "../../templates/haproxy";
import { sandboxHostConnections, startSandbox, stopSandbox } from "../support/sandbox";
import { plugOnNetwork } from "../support/plug";
import {
  closeHostSessions,
  loadBalancerProvider,
  networkProvider,
  runChecked,
  securityGroupPortProvider,
  subnetProvider,
  type HostConnection,
  type LoadBalancerInputs,
  type LoadBalancerOutputs,
  type NetworkInputs,
  type NetworkOutputs,
  type SecurityGroupPortInputs,
  type SecurityGroupPortOutputs,
  type SubnetInputs,
  type SubnetOutputs,
} from "../../provider";

const INSTANCE = process.env.KVMLAB_ITEST_LBHA_INSTANCE ?? "itest-lbha";
const NET = "itha";
const SUBNET = "itha-v4";
const CIDR = "10.79.3.0/24";
const VIP = "10.79.3.50";
const LB = "itha-web";
const CLIENT = "kvlt-hac";
let hosts: HostConnection[] = [];
let netOuts: NetworkOutputs | undefined;
let subOuts: SubnetOutputs | undefined;

async function sh(host: HostConnection, script: string, timeoutMs = 60_000): Promise<string> {
  const [out] = await runChecked(host, [{ label: "test command", script }], { timeoutMs });
  return out;
}

async function checked<T>(
  provider: {
    check?: (o: T, n: T) => Promise<{ inputs?: T; failures?: { property: string; reason: string }[] }>;
  },
  raw: Record<string, unknown>,
): Promise<T> {
  const r = await provider.check!({} as T, raw as T);
  assert.deepEqual(r.failures ?? [], [], JSON.stringify(r.failures));
  return r.inputs as T;
}

const plug = (ns: string, ip: string) => plugOnNetwork(ns, ip, netOuts!).join("\n");

before(async () => {
  const status = await startSandbox(INSTANCE, 2);
  hosts = sandboxHostConnections(status);
  netOuts = (
    await networkProvider.create!(
      await checked<NetworkInputs>(networkProvider, {
        networkName: NET,
        kind: "selfservice",
        driver: "linuxbridge",
        hosts,
      }),
    )
  ).outs as NetworkOutputs;
  const plan = planSubnet(NET, { name: SUBNET, cidr: CIDR }, netOuts.mtu);
  subOuts = (
    await subnetProvider.create!(
      await checked<SubnetInputs>(subnetProvider, {
        subnetName: SUBNET,
        networkName: NET,
        networkBridge: netOuts.bridge,
        driver: "linuxbridge",
        hosts,
        cidr: CIDR,
        gateway: plan.gateway,
        allocationPool: plan.allocationPool,
        dhcpAddress: plan.dhcpAddress,
        dnsmasqConf: plan.dnsmasqConf,
        mtu: netOuts.mtu,
      }),
    )
  ).outs as SubnetOutputs;
  for (const [i, h] of hosts.entries()) {
    const ns = `kvlt-ham${i + 1}`;
    await sh(
      h,
      [
        "set -e",
        plug(ns, `10.79.3.${11 + i}`),
        `mkdir -p /tmp/${ns} && echo "hello from m${i + 1}" > /tmp/${ns}/index.html && echo ok > /tmp/${ns}/health`,
        `ip netns exec ${ns} busybox httpd -p 80 -h /tmp/${ns}`,
      ].join("\n"),
    );
  }
  await sh(hosts[1], plug(CLIENT, "10.79.3.30"));
});

after(async () => {
  try {
    if (hosts.length === 2 && process.env.KVMLAB_KEEP_SANDBOX !== "1")
      for (const [i, h] of hosts.entries())
        await sh(h, `for p in $(ip netns pids kvlt-ham${i + 1} 2>/dev/null); do kill $p; done; true`).catch(
          () => "",
        );
  } finally {
    await closeHostSessions();
    if (process.env.KVMLAB_KEEP_SANDBOX !== "1") await stopSandbox(INSTANCE);
  }
});

function listeners(members: number[]): ListenerSpec[] {
  return [
    {
      name: "http",
      protocol: "HTTP",
      protocolPort: 80,
      defaultPool: {
        name: "web",
        protocol: "HTTP",
        lbAlgorithm: "ROUND_ROBIN",
        healthMonitor: { type: "HTTP", delay: 1, timeout: 1, maxRetries: 1, urlPath: "/health" },
        members: members.map((m) => ({ name: `m${m}`, address: `10.79.3.${10 + m}`, protocolPort: 80 })),
      },
    },
  ];
}

function lbRaw(members: number[]): Record<string, unknown> {
  const ha = keepalivedPair(LB, VIP, CIDR);
  return {
    lbName: LB,
    hosts,
    lbHost: "hv1",
    standbyHost: "hv2",
    topology: "ACTIVE_STANDBY",
    vrrpAddresses: ha.vrrpAddresses,
    keepalivedConfs: ha.keepalivedConfs,
    networkName: NET,
    networkBridge: netOuts!.bridge,
    driver: "linuxbridge",
    subnetName: SUBNET,
    cidr: CIDR,
    gateway: subOuts!.gateway,
    subnetHost: subOuts!.dhcpHost,
    vipAddress: VIP,
    haproxyCfg: loadBalancerConfig(LB, VIP, listeners(members)),
    drainTimeout: 2,
    mtu: netOuts!.mtu,
  };
}

/** Everything of a load balancer that could stay on a host. */
async function leftovers(host: HostConnection): Promise<string> {
  return sh(
    host,
    [
      "ip netns list | awk '{print $1}' | sort",
      "ip -o link show | awk -F': ' '{print $2}' | sort",
      `pgrep -af ${loadBalancerPaths(LB).dir} || true`,
      "ls -R /var/lib/kvmlab/lb 2>/dev/null || true",
      `grep -o '"lb:[^"]*"' /var/lib/kvmlab/records/ipam/${ipamRecordName(NET, SUBNET)}.json || true`,
      "ls /var/lib/kvmlab/owners/lb 2>/dev/null || true",
    ].join("\necho ---\n"),
  );
}

async function readLb(outs: LoadBalancerOutputs): Promise<LoadBalancerOutputs> {
  const r = await loadBalancerProvider.read!(LB, outs);
  return r.props as LoadBalancerOutputs;
}

/** Reads until `ok` holds (bounded). */
async function waitFor(
  outs: LoadBalancerOutputs,
  ok: (o: LoadBalancerOutputs) => boolean,
  what: string,
  seconds = 20,
): Promise<LoadBalancerOutputs> {
  let cur = outs;
  for (let i = 0; i < seconds * 2; i++) {
    cur = await readLb(cur);
    if (ok(cur)) return cur;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.fail(
    `${what} not within ${seconds} s: ${JSON.stringify(cur.amphorae)} drift ${JSON.stringify(cur.drift)}`,
  );
}

test("ACTIVE_STANDBY: the VIP moves to the standby amphora when the active one stops; both reload; delete leaves nothing", async () => {
  const [hv1, hv2] = hosts;
  const before1 = await leftovers(hv1);
  const before2 = await leftovers(hv2);
  let outs = (
    await loadBalancerProvider.create!(await checked<LoadBalancerInputs>(loadBalancerProvider, lbRaw([1, 2])))
  ).outs as LoadBalancerOutputs;
  try {
    assert.deepEqual(
      outs.amphorae.map((a) => a.host),
      ["hv1", "hv2"],
    );
    const ipam = await sh(
      hosts.find((h) => h.name === subOuts!.dhcpHost)!,
      `cat /var/lib/kvmlab/records/ipam/${ipamRecordName(NET, SUBNET)}.json`,
    );
    for (const o of [`lb:${LB}`, `lb:${LB}:vrrp0`, `lb:${LB}:vrrp1`])
      assert.ok(ipam.includes(`"${o}"`), `IPAM holds ${o}: ${ipam}`);
    outs = await waitFor(
      outs,
      (o) =>
        o.amphorae[0].holdsVip &&
        o.amphorae[0].vrrpState === "MASTER" &&
        o.amphorae[1].vrrpState === "BACKUP",
      "hv1's amphora MASTER with the VIP, hv2's BACKUP",
    );
    assert.equal(outs.amphorae[1].holdsVip, false);
    assert.deepEqual(outs.drift, []);
    const bodies = (
      await sh(
        hv2,
        `for i in $(seq 6); do ip netns exec ${CLIENT} curl -s -m 3 http://${VIP}/ || echo FAILED; done`,
      )
    )
      .trim()
      .split("\n");
    assert.deepEqual([...new Set(bodies)].sort(), ["hello from m1", "hello from m2"]);

    // Failover under a bounded request loop: SIGTERM of the MASTER's keepalived after 3 s.
    const loop = sh(
      hv2,
      `end=$(( $(date +%s) + 15 )); while [ "$(date +%s)" -lt $end ]; do t=$(date +%s%3N); b=$(ip netns exec ${CLIENT} curl -s -m 1 http://${VIP}/) || b=FAILED; echo "REQ $t $b"; sleep 0.1; done`,
      60_000,
    );
    await new Promise((r) => setTimeout(r, 3000));
    await sh(hv1, `kill "$(cat ${loadBalancerPaths(LB).keepalivedPid})"`);
    const reqs = (await loop)
      .split("\n")
      .filter((l) => l.startsWith("REQ "))
      .map((l) => {
        const [, t, ...b] = l.split(" ");
        return { t: Number(t), body: b.join(" ") };
      });
    const failed = reqs.filter((r) => r.body === "FAILED");
    const firstFail = reqs.findIndex((r) => r.body === "FAILED");
    const lastFail = reqs.map((r) => r.body).lastIndexOf("FAILED");
    const outageMs =
      firstFail < 0 ? 0 : (reqs[lastFail + 1]?.t ?? reqs[lastFail].t + 1000) - reqs[firstFail].t;
    console.log(
      `# ACTIVE_STANDBY failover (SIGTERM of the MASTER's keepalived on hv1): requests ${reqs.length}, failed ${failed.length}, outage ${outageMs} ms`,
    );
    assert.ok(reqs.length > 30, `the loop ran: ${reqs.length}`);
    assert.notEqual(reqs[reqs.length - 1].body, "FAILED", "requests continue after the move");
    assert.ok(outageMs <= 5000, `outage ${outageMs} ms`);
    outs = await waitFor(outs, (o) => o.amphorae[1].holdsVip, "the VIP on hv2's amphora");
    assert.equal(outs.amphorae[0].holdsVip, false, "the stopped amphora released the VIP");
    assert.equal(outs.amphorae[1].vrrpState, "MASTER");
    assert.equal(outs.vipPort.host, "hv2");
    assert.ok(
      outs.drift.includes("amphora 0 on hv1: keepalived is not running"),
      `refresh reports the drift: ${JSON.stringify(outs.drift)}`,
    );
    assert.equal(outs.provisioningStatus, "ERROR");

    // Update repairs: keepalived starts again on hv1, which stays BACKUP (nopreempt).
    const news = await checked<LoadBalancerInputs>(loadBalancerProvider, lbRaw([1, 2]));
    outs = (await loadBalancerProvider.update!(LB, outs, news)).outs as LoadBalancerOutputs;
    outs = await waitFor(
      outs,
      (o) => o.amphorae[0].vrrpState === "BACKUP" && o.amphorae[1].holdsVip && o.drift.length === 0,
      "hv1's keepalived back as BACKUP",
    );

    // A config change reloads haproxy on both amphorae.
    const news2 = await checked<LoadBalancerInputs>(loadBalancerProvider, lbRaw([2]));
    outs = (await loadBalancerProvider.update!(LB, outs, news2)).outs as LoadBalancerOutputs;
    const sha = require("node:crypto").createHash("sha256").update(news2.haproxyCfg).digest("hex") as string;
    assert.deepEqual(
      outs.realizedAmphorae.map((r) => r.configSha),
      [sha, sha],
    );
    assert.deepEqual(outs.drift, []);
    const after2 = (
      await sh(
        hv2,
        `for i in $(seq 4); do ip netns exec ${CLIENT} curl -s -m 3 http://${VIP}/ || echo FAILED; done`,
      )
    )
      .trim()
      .split("\n");
    assert.deepEqual([...new Set(after2)], ["hello from m2"]);
  } finally {
    await loadBalancerProvider.delete!(LB, outs);
  }
  assert.equal(await leftovers(hv1), before1, "nothing of the load balancer left on hv1");
  assert.equal(await leftovers(hv2), before2, "nothing of the load balancer left on hv2");
});

test("ACTIVE_STANDBY behind security groups: VRRP passes, unadmitted ports are dropped, the VIP fails over through the filtered ports", async () => {
  const [hv1, hv2] = hosts;
  const before = [await leftovers(hv1), await leftovers(hv2)];
  const raw = lbRaw([1, 2]);
  const vrrp = raw.vrrpAddresses as string[];
  const rule = (protocol: "tcp" | "any", port: number, remoteCidr: string, direction = "ingress") => ({
    direction,
    protocol,
    portMin: port,
    portMax: port,
    remoteCidr,
    remoteGroup: "",
    ethertype: "IPv4",
  });
  // What components/loadBalancer.ts gives each amphora's port.
  const portRaw = (i: number) => ({
    portName: `${LB}-vip${i}`,
    hosts,
    host: `hv${i + 1}`,
    tap: loadBalancerPaths(LB).hostDevice,
    mac: amphoraMac(LB, i),
    ip: vrrp[i],
    allowedAddresses: [VIP],
    driver: "linuxbridge",
    networkBridge: raw.networkBridge,
    groups: [
      { groupName: "itha-web", rules: [rule("any", 0, "", "egress"), rule("tcp", 80, "0.0.0.0/0")] },
      { groupName: `${LB}-vrrp`, rules: [rule("any", 0, `${vrrp[1 - i]}/32`)] },
    ],
  });
  let outs = (
    await loadBalancerProvider.create!(await checked<LoadBalancerInputs>(loadBalancerProvider, raw))
  ).outs as LoadBalancerOutputs;
  const ports: SecurityGroupPortOutputs[] = [];
  try {
    for (const i of [0, 1]) {
      const pin = await checked<SecurityGroupPortInputs>(securityGroupPortProvider, portRaw(i));
      ports.push((await securityGroupPortProvider.create!(pin)).outs as SecurityGroupPortOutputs);
    }
    // VRRP adverts pass the filter: the roles hold (no split brain) for several advert intervals.
    outs = await waitFor(
      outs,
      (o) =>
        o.amphorae[0].holdsVip &&
        o.amphorae[0].vrrpState === "MASTER" &&
        o.amphorae[1].vrrpState === "BACKUP",
      "hv1 MASTER, hv2 BACKUP behind the groups",
    );
    await new Promise((r) => setTimeout(r, 5000));
    outs = await readLb(outs);
    assert.deepEqual(
      outs.amphorae.map((a) => [a.vrrpState, a.holdsVip]),
      [
        ["MASTER", true],
        ["BACKUP", false],
      ],
      "still one MASTER after 5 s of adverts through the filter",
    );
    // Admitted: tcp/80. Not admitted: 8080 (no listener: unfiltered it would be refused at once, exit 7).
    const probe = (port: number) =>
      sh(hv2, `ip netns exec ${CLIENT} curl -s -m 2 -o /dev/null http://${VIP}:${port}/; echo "exit=$?"`);
    assert.match(await probe(80), /exit=0/);
    assert.match(await probe(8080), /exit=28/, "dropped by the group (timeout), not refused");
    // Failover: the VIP now leaves through hv2's port from the VIP address (the allowed pair).
    await sh(hv1, `kill "$(cat ${loadBalancerPaths(LB).keepalivedPid})"`);
    outs = await waitFor(outs, (o) => o.amphorae[1].holdsVip, "the VIP on hv2's amphora");
    let ok = "";
    for (let i = 0; i < 20 && ok === ""; i++) {
      const b = (await sh(hv2, `ip netns exec ${CLIENT} curl -s -m 1 http://${VIP}/ || true`)).trim();
      if (b.startsWith("hello from")) ok = b;
      else await new Promise((r) => setTimeout(r, 500));
    }
    console.log(`# ACTIVE_STANDBY behind security groups: after failover the VIP answers "${ok}" from hv2`);
    assert.match(ok, /^hello from m[12]$/);
    assert.match(await probe(8080), /exit=28/, "hv2's port filters too");
  } finally {
    for (const [i, p] of ports.entries()) await securityGroupPortProvider.delete!(`${LB}-vip${i}`, p);
    await loadBalancerProvider.delete!(LB, outs);
  }
  const rulesLeft = (h: HostConnection) =>
    sh(h, `{ iptables-save -t filter; iptables-save -t raw; } | grep -c 'port ${LB}-vip' || true`);
  assert.deepEqual([(await rulesLeft(hv1)).trim(), (await rulesLeft(hv2)).trim()], ["0", "0"]);
  assert.deepEqual([await leftovers(hv1), await leftovers(hv2)], before);
});
