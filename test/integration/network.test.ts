/**
 * Network and Subnet providers against two `kvmlab sandbox` hosts, reached only over SSH
 * (instance "itest-net", built at the start and removed at the end).
 *
 * Proves, for both drivers: a self-service network carries traffic between namespaces plugged
 * into it on different hosts (over VXLAN); a DHCP client on the other host gets an address from
 * the pool; a bridge deleted by hand is reported by read and put back by update; create twice
 * converges; delete leaves no bridge, namespace, process, record or file; injection attempts are
 * refused by check before any connection. Also: a flat provider network holds the uplink.
 *
 * The test's own namespaces (kvlt-*) live inside the sandbox hosts; all traffic stays there.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { planSubnet } from "../../components/network";
import { plugLines } from "../support/plug";
import { sandboxHostConnections, startSandbox, stopSandbox } from "../support/sandbox";
import {
  allocateAddress,
  closeHostSessions,
  releaseAddress,
  dhcpPaths,
  hostPoolStats,
  networkDevices,
  networkProvider,
  runChecked,
  subnetProvider,
  type HostConnection,
  type NetworkInputs,
  type NetworkOutputs,
  type SubnetInputs,
  type SubnetOutputs,
} from "../../provider";

const INSTANCE = process.env.KVMLAB_ITEST_NETWORK_INSTANCE ?? "itest-net";
let hosts: HostConnection[] = [];

before(async () => {
  const status = await startSandbox(INSTANCE, 2);
  hosts = sandboxHostConnections(status);
  assert.equal(hosts.length, 2);
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
  provider: {
    check?: (o: T, n: T) => Promise<{ inputs?: T; failures?: { property: string; reason: string }[] }>;
  },
  raw: Record<string, unknown>,
): Promise<T> {
  const r = await provider.check!({} as T, raw as T);
  assert.deepEqual(r.failures ?? [], [], JSON.stringify(r.failures));
  return r.inputs as T;
}

/** Plugs a test namespace into a network's bridge on a host. */
async function plug(
  host: HostConnection,
  driver: string,
  bridge: string,
  ns: string,
  ip: string | null,
  mtu: number,
): Promise<void> {
  const dev = `${ns.slice(-8)}h`;
  // Both ends at the network's MTU (test/support/plug.ts says why).
  const lines = plugLines({
    ns,
    dev,
    bridge,
    ovs: driver === "openvswitch",
    mtu,
    cidr: ip ? `${ip}/24` : null,
  });
  await sh(host, ["set -e", ...lines].join("\n"));
}

async function unplug(host: HostConnection, driver: string, ns: string): Promise<void> {
  const dev = `${ns.slice(-8)}h`;
  await sh(
    host,
    [
      driver === "openvswitch" ? `ovs-vsctl --if-exists del-port ${dev}` : "true",
      `ip link del ${dev} 2>/dev/null || true`,
      `ip netns del ${ns} 2>/dev/null || true`,
    ].join("\n"),
  );
}

/** Everything kvmlab could leave on a host for a network/subnet. */
async function leftovers(host: HostConnection, networkName: string, subnetName: string): Promise<string> {
  const { bridge, vxlan } = networkDevices(networkName);
  const p = dhcpPaths(networkName, subnetName);
  return sh(
    host,
    [
      `ip -o link show | awk -F': ' '{print $2}' | grep -E '^(${bridge}|${vxlan}|${p.hostDevice})(@|$)' || true`,
      `ip netns list | grep -w ${p.namespace} || true`,
      `ovs-vsctl list-br | grep -x ${bridge} || true`,
      `pgrep -a dnsmasq | grep -F ${p.confFile} || true`,
      `ls /var/lib/kvmlab/records/network/${networkName}.json /var/lib/kvmlab/records/ipam/${subnetName}.json ${p.dir} 2>/dev/null || true`,
    ].join("\n"),
  );
}

for (const driver of ["linuxbridge", "openvswitch"] as const) {
  test(`${driver}: a self-service network spans both hosts, carries traffic and serves DHCP; drift, converge and delete`, async () => {
    const [hv1, hv2] = hosts;
    const networkName = `it-${driver === "openvswitch" ? "ovs" : "lb"}`;
    const subnetName = `${networkName}-v4`;
    const cidr = driver === "openvswitch" ? "10.77.2.0/24" : "10.77.1.0/24";
    const prefix = cidr.split(".").slice(0, 3).join(".");

    // Network
    const netIn = await checked<NetworkInputs>(networkProvider, {
      networkName,
      kind: "selfservice",
      driver,
      hosts,
    });
    const net = await networkProvider.create!(netIn);
    const outs = net.outs as NetworkOutputs;
    assert.equal(outs.mtu, 1450);
    for (const h of hosts) {
      const other = hosts.find((o) => o !== h)!;
      assert.deepEqual(outs.realized[h.name].remotes, [other.tunnelAddress]);
      assert.equal(outs.realized[h.name].bridge, true);
      assert.equal(outs.realized[h.name].vni, netIn.vni);
      assert.equal(outs.realized[h.name].datapathType, driver === "openvswitch" ? "netdev" : "linux");
      assert.match(outs.hostKeys[h.name], /^SHA256:/);
    }
    const ovsIds =
      driver === "openvswitch" ? await sh(hv1, `ovs-vsctl get bridge ${outs.bridge} external_ids`) : "";
    if (driver === "openvswitch") assert.match(ovsIds, new RegExp(`kvmlab-network="?${networkName}"?`));

    // Subnet with DHCP on hv1 (config rendered the way the component renders it)
    const plan = planSubnet(networkName, { name: subnetName, cidr }, outs.mtu);
    const subIn = await checked<SubnetInputs>(subnetProvider, {
      subnetName,
      networkName,
      networkBridge: outs.bridge,
      driver,
      hosts,
      cidr,
      gateway: plan.gateway,
      allocationPool: plan.allocationPool,
      dhcpAddress: plan.dhcpAddress,
      dnsmasqConf: plan.dnsmasqConf,
      mtu: outs.mtu,
    });
    const sub = await subnetProvider.create!(subIn);
    const subOuts = sub.outs as SubnetOutputs;
    assert.deepEqual(subOuts.realized, {
      namespace: true,
      port: true,
      portInBridge: true,
      address: `${prefix}.2`,
      dnsmasq: true,
      record: true,
    });

    const nsA = `kvlt-${driver.slice(0, 2)}-a`;
    const nsB = `kvlt-${driver.slice(0, 2)}-b`;
    try {
      // Traffic between namespaces on different hosts, over VXLAN.
      await plug(hv1, driver, outs.bridge, nsA, `${prefix}.200`, outs.mtu);
      await plug(hv2, driver, outs.bridge, nsB, null, outs.mtu);
      // DHCP from the other host: the request crosses the tunnel to dnsmasq on hv1.
      const lease = await sh(
        hv2,
        `ip netns exec ${nsB} timeout 20 busybox udhcpc -i eth0 -f -q -n -t 8 -T 2 -s /bin/true 2>&1 || true`,
      );
      const got = /lease of (\d+\.\d+\.\d+\.\d+) obtained/.exec(lease);
      assert.ok(got, `udhcpc output:\n${lease}`);
      const last = Number(got[1].split(".")[3]);
      assert.ok(got[1].startsWith(`${prefix}.`) && last >= 3 && last <= 254, `leased ${got[1]}`);
      await sh(hv2, `ip netns exec ${nsB} ip addr add ${got[1]}/24 dev eth0`);
      const ping = await sh(hv1, `ip netns exec ${nsA} busybox ping -c 3 -A -W 2 ${got[1]}`);
      assert.match(ping, /3 packets received/);
      // TCP from hv2 to hv1: 20 transfers of 1 MiB in a row on both drivers, none stalled. On
      // OVS's userspace datapath the sending host's packet socket still drops some segments of
      // a burst; TCP recovers from that as long as every port has the network's MTU on both
      // ends (plug above; docs/providers.md, Known limits, the OVS 1 MiB "stall").
      // The listener's stdin stays open so busybox nc does not quit early. The receiver counts
      // the bytes with wc instead of writing them to a file on the host's disk: a disk that
      // stalls under the rest of a CI run closes the TCP window, and a zero-window probe that
      // has backed off can keep an otherwise healthy transfer idle for many seconds.
      const size = 1048576;
      const sink = `/tmp/kvlt-${driver}.bytes`;
      /** `bound`: seconds a transfer may take; the sender is stopped after it, the listener 5 s later. */
      const round = async (size: number, bound: number): Promise<number[]> => {
        const delivered: number[] = [];
        for (let i = 0; i < 20; i++) {
          // nc's stdin is a FIFO that a bounded sleep holds open (not a pipe from it: the
          // pipeline would end only when the sleep does), so the count appears when nc ends;
          // the sleep is stopped by its PID once the count is read.
          await sh(
            hv1,
            [
              `rm -f ${sink} ${sink}.part ${sink}.in ${sink}.pid; mkfifo ${sink}.in`,
              `( (sleep ${bound + 5} > ${sink}.in & echo $! > ${sink}.pid) ; (ip netns exec ${nsA} timeout ${bound + 5} busybox nc -l -p 5001 < ${sink}.in 2>/dev/null | wc -c > ${sink}.part; mv ${sink}.part ${sink}) >/dev/null 2>&1 &)`,
              "sleep 0.3",
            ].join("\n"),
          );
          const t0 = Date.now();
          // A sender that did not finish (timeout's 124) prints its socket (ss: retransmits,
          // RTO, backoff, window), both namespaces' neighbours and the TCP counters, for the log.
          const sent = await sh(
            hv2,
            [
              `head -c ${size} /dev/zero | ip netns exec ${nsB} timeout ${bound} busybox nc -w 5 ${prefix}.200 5001; rc=$?`,
              `if [ $rc -ne 0 ]; then echo "sender exit $rc"; ip netns exec ${nsB} ss -tino dst ${prefix}.200; ip netns exec ${nsB} ip neigh; ip netns exec ${nsB} nstat -az 2>/dev/null | grep -E 'TcpRetransSegs|TCPTimeouts|TCPLossProbes|TCPSackRecovery|TCPLostRetransmit|TCPSpuriousRTOs|TCPWinProbe'; fi; true`,
            ].join("\n"),
          );
          const sentMs = Date.now() - t0;
          // The count appears when the listener ends: at the sender's FIN, or at its own timeout.
          const bytes = await sh(
            hv1,
            `for i in $(seq ${(bound + 10) * 10}); do [ -f ${sink} ] && break; sleep 0.1; done; cat ${sink} 2>/dev/null || echo 0; kill $(cat ${sink}.pid 2>/dev/null) 2>/dev/null; rm -f ${sink} ${sink}.in ${sink}.pid`,
          );
          delivered.push(Number(bytes.trim()));
          if (Number(bytes.trim()) !== size || sentMs > 5000) {
            const recv = await sh(
              hv1,
              `ip netns exec ${nsA} ss -tino src ${prefix}.200; ip netns exec ${nsA} ip neigh`,
            );
            console.log(
              `  transfer ${i + 1}: ${bytes.trim()} bytes, sender done after ${sentMs} ms\n${sent.trim()}\n  receiver:\n${recv.trim()}`,
            );
          }
        }
        return delivered;
      };
      // Where packets are lost: drops of the packet sockets ovs-vswitchd reads its ports with
      // (ss skmem d), of the kernel VXLAN device and of the namespace legs, on both hosts.
      const drops = async (h: HostConnection, ns: string): Promise<string> =>
        (
          await sh(
            h,
            [
              `echo "packet-socket drops: $(ss -0 -m -n 2>/dev/null | grep -o ',d[0-9]*)' | tr -dc '0-9\\n' | awk '{s+=$1} END {print s+0}')"`,
              `ip -s link show ${networkDevices(networkName).vxlan} 2>/dev/null | awk 'f==1 {print "vxlan rx drop " $4; f=0} /RX:/ {f=1}'`,
              `ip -s link show ${ns.slice(-8)}h 2>/dev/null | awk 'f==1 {print "leg rx drop " $4; f=0} /RX:/ {f=1}'`,
              driver === "openvswitch"
                ? "ovs-appctl coverage/show 2>/dev/null | grep -iE 'drop|overrun' | awk '{print $1, $NF}' | tr '\\n' ' '"
                : "true",
            ].join("\n"),
          )
        )
          .trim()
          .replace(/\n/g, "; ");
      const before1 = await drops(hv1, nsA);
      const before2 = await drops(hv2, nsB);
      const t = Date.now();
      const delivered = await round(size, 40);
      console.log(
        `${driver} vxlan: 20 x 1 MiB delivered ${delivered.join(",")} (${delivered.filter((b) => b === size).length}/20 whole, ${Date.now() - t} ms)`,
      );
      const after1 = await drops(hv1, nsA);
      const socketDrops = (d: string): number => Number(/packet-socket drops: (\d+)/.exec(d)?.[1] ?? NaN);
      const receiverDrops = socketDrops(after1) - socketDrops(before1);
      console.log(`  hv1 before: ${before1}\n  hv1 after:  ${after1}`);
      console.log(`  hv2 before: ${before2}\n  hv2 after:  ${await drops(hv2, nsB)}`);
      assert.deepEqual(
        delivered,
        delivered.map(() => size),
      );
      if (driver === "openvswitch") {
        // The receiving host reads the VXLAN device through the internal port's tap (tc
        // redirect), not through a packet socket: none of its packet sockets may drop (before
        // this, the VXLAN port's socket dropped 81-207 packets in 20 transfers).
        const vx = networkDevices(networkName).vxlan;
        const vi = networkDevices(networkName).vxlanPort;
        const plumbing = await sh(
          hv1,
          `[ -d /sys/module/openvswitch ] && echo kernel-datapath; ovs-vsctl port-to-br ${vx} 2>/dev/null || echo "${vx}: no OVS port"; ovs-vsctl port-to-br ${vi}; tc filter show dev ${vx} ingress; tc filter show dev ${vi} ingress`,
        );
        if (!plumbing.includes("kernel-datapath")) {
          assert.match(plumbing, new RegExp(`${vx}: no OVS port`));
          assert.match(plumbing, new RegExp(`Egress Redirect to device ${vi}\\)`));
          assert.match(plumbing, new RegExp(`Egress Redirect to device ${vx}\\)`));
          assert.equal(
            receiverDrops,
            0,
            `packet sockets on the receiving host dropped ${receiverDrops} packets`,
          );
        }
      }
      const toDhcp = await sh(hv2, `ip netns exec ${nsB} busybox ping -c 2 -A -W 2 ${prefix}.2`);
      assert.match(toDhcp, /2 packets received/);

      // Fixed-IP reservation through the IPAM API: dnsmasq hands the reserved address to the MAC.
      const mac = (await sh(hv2, `ip netns exec ${nsB} cat /sys/class/net/eth0/address`)).trim();
      const ref = { host: hv1, networkName, subnetName };
      const reserved = await allocateAddress(ref, "port:itest", { fixedIp: `${prefix}.77`, mac });
      assert.equal(reserved, `${prefix}.77`);
      assert.equal(await allocateAddress(ref, "port:itest", { fixedIp: `${prefix}.77`, mac }), reserved);
      await assert.rejects(
        allocateAddress(ref, "port:other", { fixedIp: `${prefix}.77` }),
        /already allocated to port:itest/,
      );
      const dynamic = await allocateAddress(ref, "port:dynamic");
      assert.ok(
        ![`${prefix}.2`, got[1], reserved].includes(dynamic),
        `dynamic allocation ${dynamic} collides`,
      );
      await sh(hv2, `ip netns exec ${nsB} ip addr flush dev eth0`);
      const lease2 = await sh(
        hv2,
        `ip netns exec ${nsB} timeout 20 busybox udhcpc -i eth0 -f -q -n -t 8 -T 2 -s /bin/true 2>&1 || true`,
      );
      assert.match(lease2, new RegExp(`lease of ${prefix.replace(/\./g, "\\.")}\\.77 obtained`), lease2);
      await releaseAddress(ref, "port:itest");
      await releaseAddress(ref, "port:dynamic");
      await releaseAddress(ref, "port:dynamic");
      assert.doesNotMatch(
        await sh(hv1, `cat ${dhcpPaths(networkName, subnetName).hostsFile}`),
        new RegExp(mac),
      );
      await sh(hv2, `ip netns exec ${nsB} ip addr add ${got[1]}/24 dev eth0`);

      // Create twice converges: same result, no duplicate flood entries.
      const again = await networkProvider.create!(netIn);
      assert.deepEqual((again.outs as NetworkOutputs).realized, outs.realized);
      const fdb = await sh(hv1, `bridge fdb show dev ${outs.vxlanDevice} | grep -c '^00:00:00:00:00:00'`);
      assert.equal(fdb.trim(), "1");
      const subAgain = await subnetProvider.create!(subIn);
      assert.deepEqual((subAgain.outs as SubnetOutputs).realized, subOuts.realized);
      assert.equal(
        (await sh(hv1, `pgrep -f -c ${dhcpPaths(networkName, subnetName).confFile} || true`)).trim(),
        "1",
      );

      // DHCP off by update: dnsmasq, port and namespace go, the IPAM record stays; on again restores.
      const offIn = { ...subIn, enableDhcp: false };
      const off = (await subnetProvider.update!(subnetName, subOuts, offIn)).outs as SubnetOutputs;
      assert.deepEqual(off.realized, {
        namespace: false,
        port: false,
        portInBridge: false,
        address: "",
        dnsmasq: false,
        record: true,
      });
      const on = (await subnetProvider.update!(subnetName, off, subIn)).outs as SubnetOutputs;
      assert.deepEqual(on.realized, subOuts.realized);

      // A no-change diff opens no connection.
      const before = hostPoolStats().connectionsOpened;
      const nd = await networkProvider.diff!(networkName, outs, netIn);
      const sd = await subnetProvider.diff!(subnetName, subOuts, subIn);
      assert.deepEqual([nd.changes, sd.changes], [false, false]);
      assert.equal(hostPoolStats().connectionsOpened, before);

      // Drift: the bridge deleted by hand on hv2 is reported by read and restored by update.
      await unplug(hv2, driver, nsB);
      await sh(
        hv2,
        driver === "openvswitch" ? `ovs-vsctl del-br ${outs.bridge}` : `ip link del ${outs.bridge}`,
      );
      const read = await networkProvider.read!(networkName, outs);
      const drifted = read.props as NetworkOutputs;
      assert.equal(read.id, networkName);
      assert.equal(drifted.realized.hv2.bridge, false);
      assert.equal(drifted.realized.hv1.bridge, true);
      assert.equal(
        networkProvider.diff && (await networkProvider.diff(networkName, drifted, netIn)).changes,
        true,
      );
      const fixed = await networkProvider.update!(networkName, drifted, netIn);
      assert.deepEqual((fixed.outs as NetworkOutputs).realized.hv2, outs.realized.hv2);
    } finally {
      await unplug(hv1, driver, nsA);
      await unplug(hv2, driver, nsB);
    }

    // Delete leaves nothing, and deleting again is fine.
    await subnetProvider.delete!(subnetName, subOuts);
    await networkProvider.delete!(networkName, outs);
    await subnetProvider.delete!(subnetName, subOuts);
    await networkProvider.delete!(networkName, outs);
    for (const h of hosts)
      assert.equal((await leftovers(h, networkName, subnetName)).trim(), "", `left on ${h.name}`);
    const gone = await networkProvider.read!(networkName, outs);
    assert.equal(gone.id, "");
  });
}

test("update adds a host to a self-service network and removes it again, re-pointing the tunnels", async () => {
  const [hv1, hv2] = hosts;
  const oneIn = await checked<NetworkInputs>(networkProvider, {
    networkName: "it-grow",
    kind: "selfservice",
    hosts: [hv1],
  });
  const one = (await networkProvider.create!(oneIn)).outs as NetworkOutputs;
  assert.deepEqual(one.realized.hv1.remotes, []);
  const twoIn = await checked<NetworkInputs>(networkProvider, {
    networkName: "it-grow",
    kind: "selfservice",
    hosts,
  });
  const diff = await networkProvider.diff!("it-grow", one, twoIn);
  assert.deepEqual([diff.changes, diff.replaces], [true, []]);
  const two = (await networkProvider.update!("it-grow", one, twoIn)).outs as NetworkOutputs;
  assert.deepEqual(two.realized.hv1.remotes, [hv2.tunnelAddress]);
  assert.deepEqual(two.realized.hv2.remotes, [hv1.tunnelAddress]);
  const back = (await networkProvider.update!("it-grow", two, oneIn)).outs as NetworkOutputs;
  assert.deepEqual(Object.keys(back.realized), ["hv1"]);
  assert.deepEqual(back.realized.hv1.remotes, []);
  assert.equal((await leftovers(hv2, "it-grow", "none")).trim(), "", "hv2 lost the network");
  await networkProvider.delete!("it-grow", back);
  assert.equal((await leftovers(hv1, "it-grow", "none")).trim(), "");
});

test("a flat provider network holds each host's uplink and gives it back on delete", async () => {
  const netIn = await checked<NetworkInputs>(networkProvider, {
    networkName: "it-flat",
    kind: "provider",
    hosts,
  });
  const net = await networkProvider.create!(netIn);
  const outs = net.outs as NetworkOutputs;
  for (const h of hosts) {
    assert.equal(outs.realized[h.name].uplinkAttached, true);
    assert.equal(
      (await sh(h, `basename "$(readlink /sys/class/net/${h.uplink}/master)"`)).trim(),
      outs.bridge,
    );
  }
  // A second flat network on the same uplink is refused, naming the bridge holding it.
  const other = await checked<NetworkInputs>(networkProvider, {
    networkName: "it-flat2",
    kind: "provider",
    hosts: [hosts[0]],
  });
  await assert.rejects(
    networkProvider.create!(other),
    new RegExp(`uplink eth1 is already in bridge ${outs.bridge}`),
  );
  assert.equal(
    (await leftovers(hosts[0], "it-flat2", "none")).trim(),
    "",
    "the refused network left nothing",
  );
  await networkProvider.delete!("it-flat", outs);
  for (const h of hosts) {
    assert.equal((await sh(h, `readlink /sys/class/net/${h.uplink}/master || true`)).trim(), "");
    assert.equal((await leftovers(h, "it-flat", "none")).trim(), "");
  }
});

test("a device id already used by another network's record is refused, naming it, and nothing is left", async () => {
  const [hv1] = hosts;
  const { shortId, writeRecordStep, deleteRecordStep } = await import("../../provider");
  // it-holder "owns" the device id of it-clash, and has a bridge under that name.
  const holderBridge = networkDevices("it-clash").bridge;
  await runChecked(hv1, [
    writeRecordStep("network", "it-holder", { name: "it-holder", shortId: shortId("it-clash") }),
    { script: `ip link add ${holderBridge} type bridge` },
  ]);
  try {
    const netIn = await checked<NetworkInputs>(networkProvider, {
      networkName: "it-clash",
      kind: "selfservice",
      hosts: [hv1],
    });
    // The bridge exists with no owner marker: the owner claim refuses it before anything is
    // made (issue 15); the device-id check behind it stays as a second line.
    await assert.rejects(
      networkProvider.create!(netIn),
      /network it-clash \(bridge kvlb-[0-9a-f]{8}\) already exists on this host with no kvmlab owner/,
    );
    // The failed create cleaned up after itself without touching the holder's bridge.
    assert.equal(
      (await sh(hv1, `ls /var/lib/kvmlab/records/network/it-clash.json 2>/dev/null || true`)).trim(),
      "",
    );
    assert.equal((await sh(hv1, `ip -o link show ${holderBridge} >/dev/null && echo kept`)).trim(), "kept");
  } finally {
    await runChecked(hv1, [
      deleteRecordStep("network", "it-holder"),
      { script: `ip link del ${holderBridge} 2>/dev/null || true` },
    ]);
  }
});

test("injection attempts are refused by check, before any connection", async () => {
  const before = hostPoolStats().connectionsOpened;
  const evil = [
    { networkName: "x; touch /tmp/pwned", kind: "selfservice", hosts },
    { networkName: "ok", kind: "provider", hosts: [{ ...hosts[0], uplink: "eth1;reboot" }] },
    {
      networkName: "ok",
      kind: "selfservice",
      hosts: [{ ...hosts[0], tunnelAddress: "10.0.0.1 dev $(id)" }, hosts[1]],
    },
    { networkName: "ok", kind: "selfservice", hosts: [{ ...hosts[0], address: "10.0.0.1`id`" }] },
  ];
  for (const raw of evil) {
    const r = await networkProvider.check!({} as NetworkInputs, raw as unknown as NetworkInputs);
    assert.ok((r.failures ?? []).length > 0, `refused: ${JSON.stringify(raw).slice(0, 80)}`);
  }
  const s = await subnetProvider.check!(
    {} as SubnetInputs,
    {
      subnetName: "s$(id)",
      networkName: "n",
      networkBridge: "kvlb-00000000",
      driver: "linuxbridge",
      hosts,
      cidr: "10.0.0.0/24",
      dnsServers: ["1.1.1.1\nrm -rf /"],
      dnsmasqConf: "",
    } as unknown as SubnetInputs,
  );
  assert.ok((s.failures ?? []).some((f) => f.property === "subnetName"));
  assert.ok((s.failures ?? []).some((f) => f.property === "dnsServers"));
  assert.equal(hostPoolStats().connectionsOpened, before);
});
