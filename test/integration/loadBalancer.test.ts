/**
 * LoadBalancer provider against two `kvmlab sandbox` hosts (instance "itest-lb"), reached only
 * over SSH. A Linux-bridge self-service network spans both hosts; two guests of the sandbox's
 * test image (web1 on hv1, web2 on hv2) are the members; the load balancer runs on hv1; the
 * client is a test namespace (kvlt-lbc) on hv2, so every request crosses the VXLAN.
 *
 * Proves: the VIP answers and ROUND_ROBIN spreads; SOURCE_IP and HTTP_COOKIE persistence keep
 * a client on one member; a member whose health check fails (guest paused) leaves rotation and
 * shows ERROR, and comes back ONLINE; under load from ab (bounded: at most 1500 requests, 3 at a
 * time, 20 s), adding a member, removing one (drained first) and changing the algorithm each
 * complete with 0 failed requests, and a long download survives the reload; a config haproxy
 * rejects (TERMINATED_HTTPS with a missing certificate) fails the update with haproxy's message
 * while the old config keeps serving; refresh reports haproxy dead and a config edited by hand
 * and update repairs both; delete leaves no namespace, link, process, socket, file or IPAM entry.
 *
 * One test gives the VIP a floating IP: a router on hv2 (gateway on the sandbox's external
 * network, leg on the VIP subnet) and a FloatingIp whose target is the load balancer's vipPort;
 * requests from the sandbox's internet namespace to the floating IP reach both members, and
 * deleting the floating IP and router leaves the hosts as they were.
 *
 * One puts security groups on the VIP port (a SecurityGroupPort on the VIP veth's host side, as
 * the LoadBalancer component's `securityGroups` wires it): with a group admitting tcp/80 only, a
 * second listener on 8080 is refused while 80 serves and the members stay ONLINE (health checks
 * leave through the port); adding tcp/8080 to the group opens it without touching haproxy;
 * deleting the port leaves no chain or jump behind.
 *
 * Another puts a load balancer on an Open vSwitch (netdev) network: its VIP port is an OVS
 * port, a namespace member answers through it, and delete leaves no namespace or port.
 *
 * All traffic stays inside the sandbox hosts' namespaces.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { planSubnet } from "../../components/network";
import { loadBalancerConfig } from "../../components/loadBalancer";
import { ipamRecordName, loadBalancerPaths } from "../../core/paths";
import type { ListenerSpec, MemberSpec, PoolSpec } from "../../templates/haproxy";
import {
  runCommand,
  sandboxHostConnections,
  startSandbox,
  stopSandbox,
  testGuestXml,
  type SandboxStatus,
} from "../support/sandbox";
import { plugOnNetwork } from "../support/plug";
import {
  closeHostSessions,
  floatingIpProvider,
  loadBalancerProvider,
  networkProvider,
  routerProvider,
  runChecked,
  securityGroupPortProvider,
  shQuote,
  subnetProvider,
  type FloatingIpOutputs,
  type HostConnection,
  type LoadBalancerInputs,
  type LoadBalancerOutputs,
  type NetworkInputs,
  type NetworkOutputs,
  type RouterOutputs,
  type SecurityGroupPortInputs,
  type SecurityGroupPortOutputs,
  type SubnetInputs,
  type SubnetOutputs,
} from "../../provider";

const INSTANCE = process.env.KVMLAB_ITEST_LB_INSTANCE ?? "itest-lb";
const NET = "itlb";
const SUBNET = "itlb-v4";
const CIDR = "10.79.1.0/24";
const VIP = "10.79.1.50";
const LB = "itlb-web";
const CLIENT = "kvlt-lbc";
const M3 = "kvlt-lbm3";
let status: SandboxStatus;
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

function guestUuid(n: number): string {
  return `6c1f2a3b-4d5e-4f60-8a7b-00000000000${n}`;
}

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  hosts = sandboxHostConnections(status);
  const [hv1, hv2] = hosts;
  const netIn = await checked<NetworkInputs>(networkProvider, {
    networkName: NET,
    kind: "selfservice",
    driver: "linuxbridge",
    hosts,
  });
  netOuts = (await networkProvider.create!(netIn)).outs as NetworkOutputs;
  const plan = planSubnet(NET, { name: SUBNET, cidr: CIDR }, netOuts.mtu);
  const subIn = await checked<SubnetInputs>(subnetProvider, {
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
  });
  subOuts = (await subnetProvider.create!(subIn)).outs as SubnetOutputs;
  // Members: the sandbox's test guest (answers "hello from NAME", /health, /big).
  for (const [i, h] of [hv1, hv2].entries()) {
    const xml = testGuestXml(status, {
      name: `web${i + 1}`,
      uuid: guestUuid(i + 1),
      bridge: netOuts.bridge,
      ipCidr: `10.79.1.${11 + i}/24`,
    });
    await sh(
      h,
      `cat > /tmp/web${i + 1}.xml <<'KVLT_EOF'\n${xml}KVLT_EOF\nvirsh -q define /tmp/web${i + 1}.xml && virsh -q start web${i + 1}`,
    );
  }
  // The client namespace on hv2, and a third member (busybox httpd in a namespace) on hv1.
  const plug = (ns: string, ip: string) => ["set -e", ...plugOnNetwork(ns, ip, netOuts!)].join("\n");
  await sh(hv2, plug(CLIENT, "10.79.1.30"));
  await sh(
    hv1,
    [
      plug(M3, "10.79.1.13"),
      `mkdir -p /tmp/${M3}/cgi-bin && echo "hello from web3" > /tmp/${M3}/index.html && echo ok > /tmp/${M3}/health`,
      `ip netns exec ${M3} busybox httpd -p 80 -h /tmp/${M3}`,
    ].join("\n"),
  );
  // Both guests answer before any test starts.
  await sh(
    hv2,
    `for ip in 10.79.1.11 10.79.1.12; do i=0; until ip netns exec ${CLIENT} curl -sf -m 2 http://$ip/health >/dev/null; do i=$((i+1)); [ $i -ge 120 ] && { echo "guest $ip never answered" >&2; exit 1; }; sleep 1; done; done`,
    180_000,
  );
});

after(async () => {
  try {
    if (hosts.length === 2 && process.env.KVMLAB_KEEP_SANDBOX !== "1") {
      // The busybox httpd this test started, by PID (the namespace holds only it).
      await sh(hosts[0], `for p in $(ip netns pids ${M3} 2>/dev/null); do kill $p; done; true`).catch(
        () => "",
      );
    }
  } finally {
    await closeHostSessions();
    if (process.env.KVMLAB_KEEP_SANDBOX !== "1") await stopSandbox(INSTANCE);
  }
});

function member(name: string, last: number): MemberSpec {
  return { name, address: `10.79.1.${last}`, protocolPort: 80 };
}

function listeners(
  members: MemberSpec[],
  pool: Partial<PoolSpec> = {},
  extra: ListenerSpec[] = [],
): ListenerSpec[] {
  return [
    {
      name: "http",
      protocol: "HTTP",
      protocolPort: 80,
      defaultPool: {
        name: "web",
        protocol: "HTTP",
        lbAlgorithm: "ROUND_ROBIN",
        healthMonitor: {
          type: "HTTP",
          delay: 1,
          timeout: 1,
          maxRetries: 1,
          maxRetriesDown: 2,
          urlPath: "/health",
        },
        members,
        ...pool,
      },
    },
    ...extra,
  ];
}

function lbRaw(ls: ListenerSpec[]): Record<string, unknown> {
  return {
    lbName: LB,
    hosts,
    lbHost: "hv1",
    networkName: NET,
    networkBridge: netOuts!.bridge,
    driver: "linuxbridge",
    subnetName: SUBNET,
    cidr: CIDR,
    gateway: subOuts!.gateway,
    subnetHost: subOuts!.dhcpHost,
    vipAddress: VIP,
    haproxyCfg: loadBalancerConfig(LB, VIP, ls),
    drainTimeout: 5,
    mtu: netOuts!.mtu,
  };
}

/** `n` GETs of `/` from the client; the bodies. */
async function bodies(n: number, curlArgs = ""): Promise<string[]> {
  const out = await sh(
    hosts[1],
    `rm -f /tmp/kvlt-jar; for i in $(seq ${n}); do ip netns exec ${CLIENT} curl -s -m 3 ${curlArgs} http://${VIP}/ || echo FAILED; done`,
  );
  return out.trim().split("\n");
}

/** Everything of a load balancer that could stay on a host. */
async function leftovers(host: HostConnection): Promise<string> {
  const p = loadBalancerPaths(LB);
  return sh(
    host,
    [
      "ip netns list | awk '{print $1}' | sort",
      "ip -o link show | awk -F': ' '{print $2}' | sort",
      `pgrep -af ${p.config} || true`,
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

async function waitMember(
  outs: LoadBalancerOutputs,
  key: string,
  want: string,
): Promise<LoadBalancerOutputs> {
  for (let i = 0; i < 40; i++) {
    const now = await readLb(outs);
    if (now.memberStatus[key] === want) return now;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`member ${key} never became ${want}`);
}

async function update(outs: LoadBalancerOutputs, ls: ListenerSpec[]): Promise<LoadBalancerOutputs> {
  const news = await checked<LoadBalancerInputs>(loadBalancerProvider, lbRaw(ls));
  const r = await loadBalancerProvider.update!(LB, outs, news);
  return r.outs as LoadBalancerOutputs;
}

/** Starts `cmd` in the background on `host` (output to a file); returns its PID. */
async function startBg(host: HostConnection, name: string, cmd: string): Promise<string> {
  const out = await sh(
    host,
    `nohup sh -c ${shQuote(cmd)} > /tmp/kvlt-${name}.out 2>&1 < /dev/null &\necho $!`,
  );
  return out.trim();
}

/** Waits (at most 60 s) for a background command to end; its output. */
async function waitBg(host: HostConnection, name: string, pid: string): Promise<string> {
  return sh(
    host,
    `i=0; while [ -r /proc/${pid}/stat ] && [ "$(awk '{print $3}' /proc/${pid}/stat)" != Z ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; cat /tmp/kvlt-${name}.out`,
    70_000,
  );
}

/** Runs ab from the client while `during` runs; returns ab's counts. */
async function underLoad(
  what: string,
  during: () => Promise<LoadBalancerOutputs>,
): Promise<{ outs: LoadBalancerOutputs; complete: number; failed: number; non2xx: number }> {
  const pid = await startBg(
    hosts[1],
    "ab",
    `ip netns exec ${CLIENT} ab -q -l -t 20 -n 1500 -c 3 -s 5 http://${VIP}/`,
  );
  await new Promise((r) => setTimeout(r, 1500));
  const outs = await during();
  const text = await waitBg(hosts[1], "ab", pid);
  const num = (re: RegExp) => Number(re.exec(text)?.[1] ?? "NaN");
  const complete = num(/Complete requests:\s+(\d+)/);
  const failed = num(/Failed requests:\s+(\d+)/);
  const non2xx = /Non-2xx responses:\s+(\d+)/.exec(text) ? num(/Non-2xx responses:\s+(\d+)/) : 0;
  const rps = /Requests per second:\s+([\d.]+)/.exec(text)?.[1];
  console.log(
    `load balancer under load, ${what}: requests sent ${complete}, failed ${failed}, non-2xx ${non2xx}, ${rps} req/s, reload ${outs.reloadMs} ms`,
  );
  assert.ok(complete > 0, `ab ran:\n${text}`);
  return { outs, complete, failed, non2xx };
}

test("linuxbridge: a load balancer serves its VIP, persists sessions, follows member health, reloads hitlessly and cleans up", async () => {
  const [hv1] = hosts;
  const before = [await leftovers(hv1), await leftovers(hosts[1])];
  const web = [member("web1", 11), member("web2", 12)];
  const inputs = await checked<LoadBalancerInputs>(loadBalancerProvider, lbRaw(listeners(web)));
  const created = await loadBalancerProvider.create!(inputs);
  let outs = created.outs as LoadBalancerOutputs;
  try {
    assert.equal(outs.host, "hv1");
    assert.equal(outs.provisioningStatus, "ACTIVE");
    assert.deepEqual(outs.drift, []);
    assert.equal(outs.vipPort.address, VIP);
    assert.match(outs.vipPort.mac, /^fa:16:3e:/);

    // Another program's load balancer of the same name is refused before anything is touched.
    const other = await checked<LoadBalancerInputs>(loadBalancerProvider, {
      ...lbRaw(listeners(web)),
      owner: "other/dev/LoadBalancer/itlb-web",
    });
    await assert.rejects(loadBalancerProvider.create!(other), /belongs to|owner/);

    // ROUND_ROBIN spreads.
    outs = await waitMember(outs, "web/web2", "ONLINE");
    assert.equal(outs.memberStatus["web/web1"], "ONLINE");
    assert.equal(outs.operatingStatus, "ONLINE");
    const rr = await bodies(6);
    assert.ok(
      rr.includes("hello from web1") && rr.includes("hello from web2"),
      `round robin: ${rr.join(" | ")}`,
    );

    // SOURCE_IP persistence keeps the client on one member.
    outs = await update(outs, listeners(web, { sessionPersistence: { type: "SOURCE_IP" } }));
    const src = await bodies(6);
    assert.equal(new Set(src).size, 1, `SOURCE_IP: ${src.join(" | ")}`);

    // HTTP_COOKIE persistence: a client with the cookie stays; the cookie names the member.
    outs = await update(outs, listeners(web, { sessionPersistence: { type: "HTTP_COOKIE" } }));
    const jar = await bodies(6, "-c /tmp/kvlt-jar -b /tmp/kvlt-jar");
    assert.equal(new Set(jar).size, 1, `HTTP_COOKIE: ${jar.join(" | ")}`);
    const cookie = await sh(hosts[1], "grep -o 'SRV[[:space:]]*web[12]' /tmp/kvlt-jar || true");
    assert.match(cookie, /SRV\s+web[12]/);
    const noJar = await bodies(6);
    assert.equal(new Set(noJar).size, 2, `without the cookie both answer: ${noJar.join(" | ")}`);
    outs = await update(outs, listeners(web));

    // A member whose health check fails leaves rotation (ERROR) and comes back (ONLINE).
    await sh(hosts[1], "virsh -q suspend web2");
    outs = await waitMember(outs, "web/web2", "ERROR");
    assert.equal(outs.operatingStatus, "DEGRADED");
    const one = await bodies(6);
    assert.deepEqual(new Set(one), new Set(["hello from web1"]), `web2 out of rotation: ${one.join(" | ")}`);
    await sh(hosts[1], "virsh -q resume web2");
    outs = await waitMember(outs, "web/web2", "ONLINE");

    // Under load: add a member, remove it (drained first), change the algorithm; 0 failed.
    const three = [...web, member("web3", 13)];
    const add = await underLoad("adding member web3", () => update(outs, listeners(three)));
    outs = add.outs;
    assert.equal(add.failed + add.non2xx, 0, "adding a member fails no request");
    outs = await waitMember(outs, "web/web3", "ONLINE");
    const withM3 = await bodies(6);
    assert.ok(withM3.includes("hello from web3"), `web3 in rotation: ${withM3.join(" | ")}`);
    const remove = await underLoad("removing member web3 (drained first)", () =>
      update(outs, listeners(web)),
    );
    outs = remove.outs;
    assert.equal(remove.failed + remove.non2xx, 0, "removing a member fails no request");
    assert.equal(outs.memberStatus["web/web3"], undefined);

    // A long download keeps its connection across the reload of an algorithm change.
    const long = await startBg(
      hosts[1],
      "long",
      `ip netns exec ${CLIENT} curl -s --limit-rate 200k -o /dev/null -w '%{http_code} %{size_download}' http://${VIP}/big`,
    );
    const algo = await underLoad("changing the algorithm to LEAST_CONNECTIONS", () =>
      update(outs, listeners(web, { lbAlgorithm: "LEAST_CONNECTIONS" })),
    );
    outs = algo.outs;
    assert.equal(algo.failed + algo.non2xx, 0, "changing the algorithm fails no request");
    assert.match(outs.haproxyCfg, /balance leastconn/);
    assert.equal(
      (await waitBg(hosts[1], "long", long)).trim(),
      "200 1048576",
      "the long-lived connection survived the reload",
    );

    // A config haproxy rejects: the update fails with haproxy's message; the old one serves.
    const bad = listeners(web, { lbAlgorithm: "LEAST_CONNECTIONS" }, [
      {
        name: "https",
        protocol: "TERMINATED_HTTPS",
        protocolPort: 443,
        certificatePath: "/var/lib/kvmlab/lb/itlb-web/missing.pem",
        defaultPool: { name: "web-tls", protocol: "HTTP", lbAlgorithm: "ROUND_ROBIN", members: web },
      },
    ]);
    await assert.rejects(update(outs, bad), (err: Error) => {
      assert.match(err.message, /missing\.pem/);
      assert.match(err.message, /haproxy refused the new config \(kept as .*haproxy\.cfg\.failed\)/);
      return true;
    });
    const still = await bodies(4);
    assert.ok(!still.includes("FAILED"), `the old config keeps serving: ${still.join(" | ")}`);
    const after = await readLb(outs);
    assert.equal(after.realized.failedConfig, true);
    assert.deepEqual(after.drift, [], "the running config is still the last accepted one");

    // Refresh reports drift: haproxy dead, then a config edited by hand; update repairs both.
    const p = loadBalancerPaths(LB);
    await sh(hv1, `kill $(cat ${p.pidFile}); sleep 1`);
    const dead = await readLb(outs);
    assert.ok(dead.drift.includes("haproxy is not running"), dead.drift.join("; "));
    assert.equal(dead.provisioningStatus, "ERROR");
    assert.equal(dead.operatingStatus, "OFFLINE");
    outs = await update(dead, listeners(web, { lbAlgorithm: "LEAST_CONNECTIONS" }));
    assert.deepEqual(outs.drift, []);
    await sh(hv1, `echo '# edited by hand' >> ${p.config}`);
    const edited = await readLb(outs);
    assert.ok(
      edited.drift.some((d) => /edited by hand/.test(d)),
      edited.drift.join("; "),
    );
    outs = await update(edited, listeners(web, { lbAlgorithm: "LEAST_CONNECTIONS" }));
    assert.deepEqual(outs.drift, []);
    assert.ok(!(await bodies(2)).includes("FAILED"));
  } finally {
    await loadBalancerProvider.delete!(LB, outs);
  }
  // Nothing left: namespace, veth, haproxy process, socket, file, IPAM reservation.
  assert.deepEqual([await leftovers(hv1), await leftovers(hosts[1])], before);
  assert.equal((await bodies(1))[0], "FAILED", "the VIP no longer answers");
});

test("openvswitch: the VIP port is an OVS port; the load balancer answers and leaves nothing behind", async () => {
  const hv1 = hosts[0];
  const net = "itlbo";
  const sub = "itlbo-v4";
  const lb = "itlb-ovs";
  const netIn = await checked<NetworkInputs>(networkProvider, {
    networkName: net,
    kind: "selfservice",
    driver: "openvswitch",
    hosts: [hv1],
  });
  const nOuts = (await networkProvider.create!(netIn)).outs as NetworkOutputs;
  const plan = planSubnet(net, { name: sub, cidr: "10.79.2.0/24" }, nOuts.mtu);
  const sOuts = (
    await subnetProvider.create!(
      await checked<SubnetInputs>(subnetProvider, {
        subnetName: sub,
        networkName: net,
        networkBridge: nOuts.bridge,
        driver: "openvswitch",
        hosts: [hv1],
        cidr: "10.79.2.0/24",
        gateway: plan.gateway,
        allocationPool: plan.allocationPool,
        dhcpAddress: plan.dhcpAddress,
        dnsmasqConf: plan.dnsmasqConf,
        mtu: nOuts.mtu,
      }),
    )
  ).outs as SubnetOutputs;
  // A member (busybox httpd) and a client, both namespaces on the OVS bridge.
  const plug = (ns: string, ip: string) =>
    // OVS netdev bridges need full checksums from veths (docs/providers.md): txOff.
    plugOnNetwork(ns, ip, nOuts, { ovs: true, txOff: true }).join("\n");
  const before = await sh(hv1, "ip netns list | sort; ovs-vsctl list-ports " + nOuts.bridge);
  await sh(
    hv1,
    [
      "set -e",
      plug("kvlt-obm", "10.79.2.11"),
      plug("kvlt-obc", "10.79.2.30"),
      "mkdir -p /tmp/kvlt-obm && echo 'hello from ovs-member' > /tmp/kvlt-obm/index.html",
      "ip netns exec kvlt-obm busybox httpd -p 80 -h /tmp/kvlt-obm",
    ].join("\n"),
  );
  const raw: Record<string, unknown> = {
    ...lbRaw([]),
    lbName: lb,
    // With a project (issue 14): the OVS VIP port carries the owner and the project.
    owner: `kvmlab-it/sandbox/LoadBalancer/${lb}/project=Default%2Fdemo`,
    hosts: [hv1],
    networkName: net,
    networkBridge: nOuts.bridge,
    driver: "openvswitch",
    subnetName: sub,
    cidr: "10.79.2.0/24",
    gateway: sOuts.gateway,
    subnetHost: "hv1",
    vipAddress: "10.79.2.50",
    mtu: nOuts.mtu,
    haproxyCfg: loadBalancerConfig(
      lb,
      "10.79.2.50",
      listeners([{ name: "m1", address: "10.79.2.11", protocolPort: 80 }], { healthMonitor: null }),
    ),
  };
  const outs = (
    await loadBalancerProvider.create!(await checked<LoadBalancerInputs>(loadBalancerProvider, raw))
  ).outs as LoadBalancerOutputs;
  try {
    assert.equal(outs.realized.portInBridge, true, "the VIP port is a port of the OVS bridge");
    assert.deepEqual(outs.memberStatus, { "web/m1": "NO_MONITOR" });
    const body = await sh(hv1, "ip netns exec kvlt-obc curl -s -m 5 http://10.79.2.50/");
    assert.equal(body.trim(), "hello from ovs-member");
    const hd = loadBalancerPaths(lb).hostDevice;
    const ids = await sh(hv1, `ovs-vsctl get port ${hd} external_ids`);
    assert.match(
      ids,
      new RegExp(`kvmlab-owner="kvmlab-it/sandbox/LoadBalancer/${lb}/project=Default%2Fdemo"`),
    );
    assert.match(ids, /kvmlab-project="Default\/demo"/);
    // Another owner's port (as if another stack had re-plugged it) is not removed: exit 73.
    await sh(hv1, `ovs-vsctl set port ${hd} external_ids:kvmlab-owner='"other/prod/LoadBalancer/${lb}"'`);
    await assert.rejects(loadBalancerProvider.delete!(lb, outs), /belongs to other\/prod\/LoadBalancer/);
    assert.equal(
      (await sh(hv1, `ovs-vsctl port-to-br ${hd}`)).trim(),
      nOuts.bridge,
      "the port is still there",
    );
    await sh(hv1, `ovs-vsctl set port ${hd} external_ids:kvmlab-owner='"${raw.owner as string}"'`);
  } finally {
    await loadBalancerProvider.delete!(lb, outs);
    await sh(
      hv1,
      // The busybox httpd this test started, by PID; then the test's own ports and namespaces.
      "for p in $(ip netns pids kvlt-obm); do kill $p; done; for d in lt-obmh lt-obch; do ovs-vsctl --if-exists del-port $d; ip link del $d 2>/dev/null; done; ip netns del kvlt-obm; ip netns del kvlt-obc; true",
    );
  }
  assert.equal(await sh(hv1, "ip netns list | sort; ovs-vsctl list-ports " + nOuts.bridge), before);
  await subnetProvider.delete!(sub, sOuts);
  await networkProvider.delete!(net, nOuts);
});

/** `n` GETs of `url` from the sandbox's internet namespace (on this machine, created by the sandbox). */
async function fromInternet(url: string, n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await runCommand(
      "ip",
      ["netns", "exec", status.external.internetNetns, "timeout", "5", "busybox", "wget", "-qO-", url],
      { timeoutMs: 15_000 },
    );
    out.push(r.code === 0 ? r.stdout.trim() : "FAILED");
  }
  return out;
}

test("floating IP: the VIP answers through a floating IP from the internet namespace, both members serve", async () => {
  const [hv1, hv2] = hosts;
  const state = (h: HostConnection) =>
    sh(
      h,
      [
        "ip netns list | awk '{print $1}' | sort",
        "ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort",
        "ls /var/lib/kvmlab/lb /var/lib/kvmlab/routers /var/lib/kvmlab/floatingips 2>/dev/null || true",
      ].join("\necho ---\n"),
    );
  const before = [await state(hv1), await state(hv2)];
  const extIn = await checked<NetworkInputs>(networkProvider, {
    networkName: "itlbx",
    kind: "provider",
    driver: "linuxbridge",
    hosts,
  });
  const ext = (await networkProvider.create!(extIn)).outs as NetworkOutputs;
  const extSubIn = await checked<SubnetInputs>(subnetProvider, {
    subnetName: "itlbx-v4",
    networkName: ext.networkName,
    networkBridge: ext.bridge,
    driver: "linuxbridge",
    hosts,
    cidr: status.external.cidr,
    gateway: status.external.gateway,
    allocationPool: status.external.allocationPool,
    enableDhcp: false,
    dnsmasqConf: "",
    mtu: ext.mtu,
  });
  const extSub = (await subnetProvider.create!(extSubIn)).outs as SubnetOutputs;
  let lbOuts: LoadBalancerOutputs | undefined;
  let rOuts: RouterOutputs | undefined;
  let fOuts: FloatingIpOutputs | undefined;
  try {
    const lbIn = await checked<LoadBalancerInputs>(
      loadBalancerProvider,
      lbRaw(listeners([member("web1", 11), member("web2", 12)])),
    );
    lbOuts = (await loadBalancerProvider.create!(lbIn)).outs as LoadBalancerOutputs;
    // The router on hv2: the internet -> hv2 -> VXLAN -> the VIP on hv1.
    const rIn = await checked(routerProvider, {
      routerName: "itlb-r",
      hosts,
      host: "hv2",
      external: {
        subnetName: extSub.subnetName,
        networkName: ext.networkName,
        bridge: ext.bridge,
        driver: "linuxbridge",
        cidr: extSub.cidr,
        address: status.external.allocationPool.start,
        gateway: status.external.gateway,
        mtu: ext.mtu,
        ipamHost: extSub.dhcpHost,
      },
      interfaces: [
        {
          subnetName: SUBNET,
          networkName: NET,
          bridge: netOuts!.bridge,
          driver: "linuxbridge",
          cidr: CIDR,
          address: subOuts!.gateway,
          mtu: netOuts!.mtu,
        },
      ],
    });
    rOuts = (await routerProvider.create!(rIn)).outs as RouterOutputs;
    const vip = lbOuts.vipPort;
    const fIn = await checked(floatingIpProvider, {
      fipName: "itlb-fip",
      hosts,
      host: "hv2",
      routerName: "itlb-r",
      external: {
        networkName: ext.networkName,
        subnetName: extSub.subnetName,
        cidr: extSub.cidr,
        ipamHost: extSub.dhcpHost,
      },
      target: { address: vip.address, subnetName: vip.subnet, networkName: vip.network },
    });
    fOuts = (await floatingIpProvider.create!(fIn)).outs as FloatingIpOutputs;
    const fip = fOuts.floatingIp;
    // Wait for the first answer (ARP, GARP), then 10 requests: both members, none failed.
    const end = Date.now() + 20_000;
    while ((await fromInternet(`http://${fip}/`, 1))[0] === "FAILED" && Date.now() < end)
      await new Promise((r) => setTimeout(r, 500));
    const got = await fromInternet(`http://${fip}/`, 10);
    console.log(`# internet -> floating IP ${fip} -> VIP ${vip.address}: ${got.join(", ")}`);
    assert.ok(!got.includes("FAILED"), got.join(", "));
    assert.deepEqual([...new Set(got)].sort(), ["hello from web1", "hello from web2"]);
    assert.deepEqual(
      await fromInternet(`http://${vip.address}/`, 1),
      ["FAILED"],
      "the VIP itself is not routed",
    );
    await floatingIpProvider.delete!("itlb-fip", fOuts);
    fOuts = undefined;
    assert.deepEqual(await fromInternet(`http://${fip}/`, 1), ["FAILED"], "gone with the floating IP");
  } finally {
    if (fOuts) await floatingIpProvider.delete!("itlb-fip", fOuts);
    if (rOuts) await routerProvider.delete!("itlb-r", rOuts);
    if (lbOuts) await loadBalancerProvider.delete!(LB, lbOuts);
    await subnetProvider.delete!("itlbx-v4", extSub);
    await networkProvider.delete!("itlbx", ext);
  }
  assert.deepEqual([await state(hv1), await state(hv2)], before);
});

test("security groups on the VIP port: only the admitted listener port answers, opening a port is an update, delete leaves no rule", async () => {
  const [hv1, hv2] = hosts;
  const p = loadBalancerPaths(LB);
  const rules = (h: HostConnection) =>
    sh(h, "{ iptables-save -t filter; iptables-save -t raw; } | grep -c 'port itlb-web-vip' || true");
  const before = [await rules(hv1), await rules(hv2)];
  const web = [member("web1", 11), member("web2", 12)];
  const alt: ListenerSpec = {
    name: "alt",
    protocol: "HTTP",
    protocolPort: 8080,
    defaultPool: { name: "alt", protocol: "HTTP", lbAlgorithm: "ROUND_ROBIN", members: web },
  };
  const tcp = (port: number) => ({
    direction: "ingress" as const,
    protocol: "tcp" as const,
    portMin: port,
    portMax: port,
    remoteCidr: "0.0.0.0/0",
    remoteGroup: "",
    ethertype: "IPv4" as const,
  });
  const sgRaw = (ports: number[]) => ({
    portName: `${LB}-vip`,
    hosts,
    host: "hv1",
    tap: p.hostDevice,
    mac: p.vipMac,
    ip: VIP,
    driver: "linuxbridge",
    networkBridge: netOuts!.bridge,
    // Neutron's default egress rule first (a SecurityGroup adds it): haproxy's health checks and
    // its connections to the members leave through this same port.
    groups: [
      {
        groupName: "itlb-vipsg",
        rules: [
          { ...tcp(0), direction: "egress" as const, protocol: "any" as const, remoteCidr: "" },
          ...ports.map(tcp),
        ],
      },
    ],
  });
  const get = async (port: number): Promise<string> =>
    (await sh(hv2, `ip netns exec ${CLIENT} curl -s -m 3 http://${VIP}:${port}/ || echo FAILED`)).trim();
  let lbOuts: LoadBalancerOutputs | undefined;
  let sgOuts: SecurityGroupPortOutputs | undefined;
  try {
    const lbIn = await checked<LoadBalancerInputs>(loadBalancerProvider, lbRaw(listeners(web, {}, [alt])));
    lbOuts = (await loadBalancerProvider.create!(lbIn)).outs as LoadBalancerOutputs;
    assert.match(await get(8080), /^hello from web[12]$/, "8080 answers before the group");
    const sgIn = await checked<SecurityGroupPortInputs>(securityGroupPortProvider, sgRaw([80]));
    sgOuts = (await securityGroupPortProvider.create!(sgIn)).outs as SecurityGroupPortOutputs;
    const got = [await get(80), await get(80), await get(8080)];
    console.log(`# VIP behind a group admitting tcp/80: 80 -> ${got[0]}, ${got[1]}; 8080 -> ${got[2]}`);
    assert.match(got[0], /^hello from web[12]$/);
    assert.equal(got[2], "FAILED", "8080 is not admitted by the group");
    // Health checks leave through the filtered port (egress open, replies ESTABLISHED).
    lbOuts = await waitMember(lbOuts, "web/web1", "ONLINE");
    lbOuts = await waitMember(lbOuts, "web/web2", "ONLINE");
    // Opening 8080 is an update of the port only; haproxy is not reloaded.
    const sgNew = await checked<SecurityGroupPortInputs>(securityGroupPortProvider, sgRaw([80, 8080]));
    const d = await securityGroupPortProvider.diff!(`${LB}-vip`, sgOuts, sgNew);
    assert.deepEqual(d.replaces ?? [], [], "an update, not a replacement");
    sgOuts = (await securityGroupPortProvider.update!(`${LB}-vip`, sgOuts, sgNew))
      .outs as SecurityGroupPortOutputs;
    assert.match(await get(8080), /^hello from web[12]$/, "8080 admitted after the update");
    assert.equal((await readLb(lbOuts)).reloadMs, lbOuts.reloadMs, "haproxy untouched");
    await securityGroupPortProvider.delete!(`${LB}-vip`, sgOuts);
    sgOuts = undefined;
    assert.deepEqual([await rules(hv1), await rules(hv2)], before, "no chain or jump of the port left");
  } finally {
    if (sgOuts) await securityGroupPortProvider.delete!(`${LB}-vip`, sgOuts);
    if (lbOuts) await loadBalancerProvider.delete!(LB, lbOuts);
  }
});
