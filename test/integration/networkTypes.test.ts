/**
 * Network types (issue 16) against two `kvmlab sandbox` hosts (instance "itest-types"), reached
 * only over SSH. Guests are namespace stand-ins (a veth into the network's bridge): kernel TCP
 * behind a veth, which is what the userspace datapath sees from a guest's tap too.
 *
 * Proves: a VLAN network on Open vSwitch carries 20 one-MiB TCP transfers in a row between the
 * hosts over the shared uplink, and a second VLAN with another id on the same uplink cannot
 * reach it (same addresses, other tag); the Linux bridge driver refuses VLAN with the module the
 * host lacks (or carries it when the host has 8021q); on the userspace datapath a GRE network is
 * refused while the tunnel address is not on an OVS bridge, naming the fix, and once the host has
 * it carries 20 one-MiB transfers in a row from senders with default offloads; a local network stays on one host with no uplink or tunnel; hostile
 * types, ids and names are refused by check, naming the field, before any connection; delete
 * leaves no port, tunnel, bridge or record.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import {
  sandboxHostConnections,
  startSandbox,
  stopSandbox,
  testGuestXml,
  type SandboxStatus,
} from "../support/sandbox";
import { plugLines } from "../support/plug";
import {
  closeHostSessions,
  greBridge,
  hostNetworkTypes,
  hostPoolStats,
  networkDevices,
  networkProvider,
  runChecked,
  segmentDevices,
  type HostConnection,
  type NetworkInputs,
  type NetworkOutputs,
} from "../../provider";

const INSTANCE = process.env.KVMLAB_ITEST_TYPES_INSTANCE ?? "itest-types";
let hosts: HostConnection[] = [];
let status: SandboxStatus;

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  hosts = sandboxHostConnections(status);
  assert.equal(hosts.length, 2);
});

after(async () => {
  await closeHostSessions();
  if (process.env.KVMLAB_KEEP_SANDBOX !== "1") await stopSandbox(INSTANCE);
});

async function sh(host: HostConnection, script: string): Promise<string> {
  const [out] = await runChecked(host, [{ label: "test command", script }], { timeoutMs: 120_000 });
  return out;
}

async function checked(raw: Record<string, unknown>): Promise<NetworkInputs> {
  const r = await networkProvider.check!({} as NetworkInputs, raw as unknown as NetworkInputs);
  assert.deepEqual(r.failures ?? [], [], JSON.stringify(r.failures));
  return r.inputs as NetworkInputs;
}

/** A namespace stand-in for a guest: veth `<ns>h` into the bridge, eth0 inside with `ip`. */
async function plug(
  host: HostConnection,
  bridge: string,
  ns: string,
  ip: string,
  mtu: number,
): Promise<void> {
  const lines = plugLines({ ns, dev: `${ns}h`, bridge, ovs: true, mtu, cidr: `${ip}/24` });
  await sh(host, ["set -e", ...lines].join("\n"));
}

async function unplug(host: HostConnection, ns: string): Promise<void> {
  await sh(
    host,
    `ovs-vsctl --if-exists del-port ${ns}h; ip link del ${ns}h 2>/dev/null || true; ip netns del ${ns} 2>/dev/null || true`,
  );
}

/**
 * Sends `count` transfers of 1 MiB in a row from `from` (host, namespace) to `to` at `ip`, each
 * bounded (15 s); returns the bytes each one delivered.
 */
export async function transfers(
  to: HostConnection,
  toNs: string,
  ip: string,
  from: HostConnection,
  fromNs: string,
  count = 20,
): Promise<number[]> {
  const size = 1048576;
  const got: number[] = [];
  for (let i = 0; i < count; i++) {
    const sink = `/tmp/kvlt-${toNs}.bytes`;
    await sh(
      to,
      `rm -f ${sink}; (sleep 16 | ip netns exec ${toNs} timeout 16 busybox nc -l -p 5001 > ${sink} 2>/dev/null &) ; sleep 0.3`,
    );
    await sh(
      from,
      `head -c ${size} /dev/zero | ip netns exec ${fromNs} timeout 15 busybox nc -w 5 ${ip} 5001 || true`,
    );
    const bytes = await sh(
      to,
      `for i in $(seq 50); do [ "$(stat -c %s ${sink} 2>/dev/null)" = ${size} ] && break; sleep 0.1; done; stat -c %s ${sink} 2>/dev/null || echo 0; rm -f ${sink}`,
    );
    got.push(Number(bytes.trim()));
  }
  return got;
}

/** Every object the network could leave on a host. */
async function leftovers(host: HostConnection, networkName: string): Promise<string> {
  const { bridge, vxlan, vxlanPort } = networkDevices(networkName);
  const { trunk, trunkPort } = segmentDevices(networkName, host.uplink ?? "");
  const tb = greBridge(networkName);
  return sh(
    host,
    [
      `ip -o link show | awk -F': ' '{print $2}' | grep -E '^(${bridge}|${vxlan}|${vxlanPort}|${trunkPort}|${tb}|kvlg-.*)(@|$)' || true`,
      `ovs-vsctl list-br | grep -xE '${bridge}|${trunk}|${tb}' || true`,
      `ovs-vsctl --bare --columns=name find port external_ids:kvmlab-network=${networkName} || true`,
      `ls /var/lib/kvmlab/records/network/${networkName}.json /var/lib/kvmlab/owners/network/${networkName}.owner 2>/dev/null || true`,
    ].join("\n"),
  );
}

test("openvswitch vlan: 20 one-MiB transfers between hosts over the shared uplink; another VLAN id on the same uplink cannot reach it", async () => {
  const [hv1, hv2] = hosts;
  const a = await checked({
    networkName: "it-vlan-a",
    type: "vlan",
    segmentationId: 101,
    driver: "openvswitch",
    hosts,
  });
  const b = await checked({
    networkName: "it-vlan-b",
    type: "vlan",
    segmentationId: 102,
    driver: "openvswitch",
    hosts,
  });
  assert.equal(a.kind, "provider");
  assert.equal(a.mtu, 1500);
  const na = (await networkProvider.create!(a)).outs as NetworkOutputs;
  const nb = (await networkProvider.create!(b)).outs as NetworkOutputs;
  for (const h of hosts) {
    assert.equal(na.realized[h.name].segmentationId, 101);
    assert.equal(nb.realized[h.name].segmentationId, 102);
    assert.equal(na.realized[h.name].uplinkAttached, true);
    const { trunk } = segmentDevices("it-vlan-a", h.uplink!);
    assert.equal((await sh(h, `ovs-vsctl port-to-br ${h.uplink}`)).trim(), trunk);
  }
  try {
    // Same subnet on both VLANs: only the tag keeps them apart.
    await plug(hv1, na.bridge, "va1", "10.88.0.1", na.mtu);
    await plug(hv2, na.bridge, "va2", "10.88.0.2", na.mtu);
    await plug(hv1, nb.bridge, "vb1", "10.88.0.11", nb.mtu);
    await plug(hv2, nb.bridge, "vb2", "10.88.0.12", nb.mtu);
    assert.match(
      await sh(hv2, "ip netns exec va2 busybox ping -c 2 -A -W 2 10.88.0.1"),
      /2 packets received/,
    );
    assert.match(
      await sh(hv2, "ip netns exec vb2 busybox ping -c 2 -A -W 2 10.88.0.11"),
      /2 packets received/,
    );
    // Across the tags: nothing (ARP for 10.88.0.1 from VLAN 102 never reaches VLAN 101).
    const cross = await sh(hv2, "ip netns exec vb2 busybox ping -c 3 -W 1 10.88.0.1 2>&1 || true");
    assert.match(cross, / 0 packets received/, cross);
    const cross2 = await sh(hv1, "ip netns exec vb1 busybox ping -c 3 -W 1 10.88.0.2 2>&1 || true");
    assert.match(cross2, / 0 packets received/, cross2);
    const got = await transfers(hv1, "va1", "10.88.0.1", hv2, "va2");
    console.log(`vlan (openvswitch): 20 x 1 MiB delivered ${got.join(",")}`);
    assert.deepEqual(
      got,
      got.map(() => 1048576),
    );
  } finally {
    for (const [h, ns] of [
      [hv1, "va1"],
      [hv2, "va2"],
      [hv1, "vb1"],
      [hv2, "vb2"],
    ] as const)
      await unplug(h, ns);
  }
  await networkProvider.delete!("it-vlan-a", na);
  // The trunk bridge stays while VLAN 102 still uses it; the uplink goes with the last one.
  assert.equal(
    (await sh(hv1, `ovs-vsctl port-to-br ${hv1.uplink}`)).trim(),
    segmentDevices("x", hv1.uplink!).trunk,
  );
  await networkProvider.delete!("it-vlan-b", nb);
  for (const h of hosts) {
    assert.equal((await leftovers(h, "it-vlan-a")).trim(), "", `left on ${h.name}`);
    assert.equal((await leftovers(h, "it-vlan-b")).trim(), "", `left on ${h.name}`);
    assert.equal((await sh(h, `ovs-vsctl port-to-br ${h.uplink} 2>/dev/null || true`)).trim(), "");
  }
});

test("linuxbridge vlan: refused naming the 8021q module when the host lacks it, leaving nothing", async (t) => {
  const [hv1] = hosts;
  const types = await hostNetworkTypes(hv1, "linuxbridge");
  if (types.includes("vlan")) {
    t.skip("this host has 802.1Q support; the refusal cannot be shown here");
    return;
  }
  assert.ok(!types.includes("gre"), `linuxbridge types ${types.join(",")}`);
  const inputs = await checked({ networkName: "it-vlan-lb", type: "vlan", segmentationId: 7, hosts: [hv1] });
  await assert.rejects(
    networkProvider.create!(inputs),
    /cannot carry this vlan network: .*8021q.*modprobe 8021q/,
  );
  assert.equal((await leftovers(hv1, "it-vlan-lb")).trim(), "");
});

test("local: one host, a bridge with no uplink and no tunnel", async () => {
  const [hv1] = hosts;
  const inputs = await checked({
    networkName: "it-local",
    type: "local",
    driver: "openvswitch",
    hosts: [hv1],
  });
  assert.equal(inputs.segmentationId, 0);
  const outs = (await networkProvider.create!(inputs)).outs as NetworkOutputs;
  assert.deepEqual(
    { ...outs.realized.hv1, datapathType: "" },
    {
      bridge: true,
      mtu: 1500,
      vni: 0,
      remotes: [],
      uplinkAttached: false,
      datapathType: "",
      record: true,
    },
  );
  assert.equal(
    (await sh(hv1, `ovs-vsctl list-ports ${outs.bridge}`)).trim(),
    "",
    "a local network has no port of its own",
  );
  await networkProvider.delete!("it-local", outs);
  assert.equal((await leftovers(hv1, "it-local")).trim(), "");
});

test("hostile types, ids and names are refused by check, naming the field, before any connection", async () => {
  const before = hostPoolStats().connectionsOpened;
  const cases: [Record<string, unknown>, string][] = [
    [{ networkName: "n", type: "vlan; reboot", hosts }, "type"],
    [{ networkName: "n", type: "vlan", segmentationId: "101; reboot", hosts }, "segmentationId"],
    [{ networkName: "n", type: "vlan", segmentationId: 4095, hosts }, "segmentationId"],
    [{ networkName: "n", type: "vlan", segmentationId: 0, hosts }, "segmentationId"],
    [{ networkName: "n", type: "vlan", hosts }, "segmentationId"],
    [
      { networkName: "n", type: "gre", segmentationId: 2 ** 32, driver: "openvswitch", hosts },
      "segmentationId",
    ],
    [{ networkName: "n", type: "gre", hosts }, "driver"],
    [{ networkName: "n", type: "flat", segmentationId: 5, hosts }, "segmentationId"],
    [{ networkName: "n", type: "local", hosts }, "hosts"],
    [{ networkName: "n", type: "vxlan", segmentationId: 5, vni: 6, hosts }, "segmentationId"],
    [{ networkName: "n", type: "vxlan", kind: "provider", hosts }, "kind"],
    [{ networkName: "n$(id)", type: "vlan", segmentationId: 5, hosts }, "networkName"],
    [
      { networkName: "n", type: "vlan", segmentationId: 5, hosts: [{ ...hosts[0], uplink: "eth1;id" }] },
      "hosts",
    ],
  ];
  for (const [raw, field] of cases) {
    const r = await networkProvider.check!({} as NetworkInputs, raw as unknown as NetworkInputs);
    assert.ok(
      (r.failures ?? []).some((f) => f.property === field),
      `${JSON.stringify({ ...raw, hosts: undefined })}: expected a failure on ${field}, got ${JSON.stringify(r.failures)}`,
    );
  }
  assert.equal(hostPoolStats().connectionsOpened, before);
});

const GRE_GUEST = "it-gre-g1";

// On the userspace datapath (the sandbox's) this moves each host's tunnel address onto an OVS
// bridge, what OVS native tunnels need there, and back at the end.
test("openvswitch gre: refused while the tunnel address is not on an OVS bridge, naming the fix; then 20 one-MiB transfers between the hosts, and delete leaves nothing", async () => {
  const [hv1, hv2] = hosts;
  const inputs = await checked({ networkName: "it-gre", type: "gre", driver: "openvswitch", hosts });
  assert.equal(inputs.mtu, 1458);
  assert.ok(inputs.segmentationId >= 4096);
  const netdev =
    (await sh(hv1, "[ -d /sys/module/openvswitch ] && echo kernel || echo netdev")).trim() === "netdev";
  const moved: HostConnection[] = [];
  // OVS's own drop counters: netdev_push_header_drops counts packets its native tunnels refused
  // to encapsulate because they still carried offload flags (partial checksum, TSO).
  const pushDrops = async (h: HostConnection): Promise<number> =>
    Number(
      (
        await sh(
          h,
          "ovs-appctl coverage/show 2>/dev/null | awk '$1 == \"netdev_push_header_drops\" {print $NF}'",
        )
      ).trim() || 0,
    );
  try {
    if (netdev) {
      for (const h of hosts) assert.ok(!(await hostNetworkTypes(h, "openvswitch")).includes("gre"));
      await assert.rejects(
        networkProvider.create!(inputs),
        /cannot carry this gre network: .*userspace \(netdev\) datapath.*the tunnel address 10\.254\.0\.1\d is on eth2, not an OVS bridge: .*add-br br-phy.*ip addr del 10\.254\.0\.1\d\/24 dev eth2/,
      );
      for (const h of hosts)
        assert.equal((await leftovers(h, "it-gre")).trim(), "", `refused create left on ${h.name}`);
      // The host administrator's fix, as the error names it.
      for (const h of hosts) {
        moved.push(h);
        await sh(
          h,
          [
            "set -e",
            "ovs-vsctl add-br br-phy -- set bridge br-phy datapath_type=netdev -- add-port br-phy eth2",
            `ip addr del ${h.tunnelAddress}/24 dev eth2`,
            "ip link set br-phy mtu 9000 up",
            `ip addr add ${h.tunnelAddress}/24 dev br-phy`,
          ].join("\n"),
        );
      }
      // The probe is cached per session: new sessions probe afresh.
      await closeHostSessions();
      for (const h of hosts) assert.ok((await hostNetworkTypes(h, "openvswitch")).includes("gre"));
    }
    // An mtu the underlay cannot carry (9000 + 42 > 9000: the sandbox's eth2, under br-phy on
    // netdev, has 9000) is refused before anything is made, naming the field, both numbers and
    // the fix (review V3).
    await assert.rejects(
      networkProvider.create!({ ...inputs, mtu: 9000 }),
      /cannot carry this gre network: mtu: .*mtu 9000 plus its 42-byte tunnel overhead is 9042, more than the underlay MTU 9000 .*set mtu to at most 8958/,
    );
    for (const h of hosts)
      assert.equal((await leftovers(h, "it-gre")).trim(), "", `refused mtu left on ${h.name}`);
    const outs = (await networkProvider.create!(inputs)).outs as NetworkOutputs;
    for (const h of hosts) {
      const other = hosts.find((o) => o !== h)!;
      assert.deepEqual(outs.realized[h.name].remotes, [other.tunnelAddress]);
      assert.equal(outs.realized[h.name].segmentationId, inputs.segmentationId);
    }
    if (netdev) {
      // The GRE port sits on the GRE bridge, behind the veth link with checksum offload off.
      const { vxlan, vxlanPort } = networkDevices("it-gre");
      const { grePort } = segmentDevices("it-gre", "", hv2.tunnelAddress!);
      assert.equal((await sh(hv1, `ovs-vsctl port-to-br ${grePort}`)).trim(), greBridge("it-gre"));
      assert.equal((await sh(hv1, `ovs-vsctl port-to-br ${vxlanPort}`)).trim(), outs.bridge);
      assert.equal((await sh(hv1, `ovs-vsctl port-to-br ${vxlan}`)).trim(), greBridge("it-gre"));
      for (const d of [vxlan, vxlanPort])
        assert.match(await sh(hv1, `ethtool -k ${d}`), /^tx-checksumming: off/m, d);
    }
    try {
      // Namespaces with the kernel's default offloads (partial checksums, TSO), as guests send.
      await plug(hv1, outs.bridge, "ga1", "10.89.0.1", outs.mtu);
      await plug(hv2, outs.bridge, "ga2", "10.89.0.2", outs.mtu);
      assert.match(await sh(hv2, "ip netns exec ga2 ethtool -k eth0"), /^tx-checksumming: on/m);
      // The first packets may go while OVS resolves the remote's underlay address (its own ARP).
      const ping = await sh(
        hv2,
        "for i in 1 2 3 4 5; do ip netns exec ga2 busybox ping -c 1 -W 2 10.89.0.1 >/dev/null 2>&1 && break; done; ip netns exec ga2 busybox ping -c 3 -A -W 2 10.89.0.1 || true",
      );
      assert.match(ping, /3 packets received/, ping);
      const before = await Promise.all(hosts.map(pushDrops));
      const t = Date.now();
      const got = await transfers(hv1, "ga1", "10.89.0.1", hv2, "ga2");
      console.log(
        `gre (openvswitch${netdev ? ", userspace datapath" : ""}): 20 x 1 MiB delivered ${got.join(",")} (${got.filter((b) => b === 1048576).length}/20 whole, ${Date.now() - t} ms)`,
      );
      const after = await Promise.all(hosts.map(pushDrops));
      console.log(`  netdev_push_header_drops before ${before.join(",")}, after ${after.join(",")}`);
      assert.deepEqual(
        got,
        got.map(() => 1048576),
      );
      assert.deepEqual(after, before, "OVS refused to encapsulate packets that carried offload flags");

      // A guest (virtio NIC with its default offloads, the network's MTU) on hv1 sends its
      // 1 MiB /big to the namespace on hv2, 20 times, over the same tunnel.
      const xml = testGuestXml(status, {
        name: GRE_GUEST,
        uuid: "6b1d0f0e-0000-4000-8000-000000000016",
        bridge: outs.bridge,
        ovs: true,
        mtu: outs.mtu,
        ipCidr: "10.89.0.5/24",
      });
      await sh(
        hv1,
        `cat > /tmp/${GRE_GUEST}.xml <<'KVLT_EOF'\n${xml}KVLT_EOF\nvirsh -q define /tmp/${GRE_GUEST}.xml && virsh -q start ${GRE_GUEST}`,
      );
      await sh(
        hv2,
        `i=0; until ip netns exec ga2 timeout 3 busybox wget -q -O /dev/null http://10.89.0.5/health; do i=$((i+1)); [ $i -ge 90 ] && { echo "guest 10.89.0.5 never answered" >&2; exit 1; }; sleep 1; done`,
      );
      const g0 = Date.now();
      const fromGuest: number[] = [];
      for (let i = 0; i < 20; i++)
        fromGuest.push(
          Number(
            (
              await sh(hv2, "ip netns exec ga2 timeout 15 busybox wget -q -O - http://10.89.0.5/big | wc -c")
            ).trim(),
          ),
        );
      console.log(
        `gre guest on hv1 -> namespace on hv2: 20 x /big delivered ${fromGuest.join(",")} (${fromGuest.filter((b) => b === 1048576).length}/20 whole, ${Date.now() - g0} ms); netdev_push_header_drops after ${(await Promise.all(hosts.map(pushDrops))).join(",")}`,
      );
      assert.deepEqual(
        fromGuest,
        fromGuest.map(() => 1048576),
      );
      assert.deepEqual(await Promise.all(hosts.map(pushDrops)), before);
    } finally {
      await sh(
        hv1,
        `virsh -q destroy ${GRE_GUEST} >/dev/null 2>&1; virsh -q undefine ${GRE_GUEST} >/dev/null 2>&1; rm -f /tmp/${GRE_GUEST}.xml; true`,
      );
      await unplug(hv1, "ga1");
      await unplug(hv2, "ga2");
    }
    await networkProvider.delete!("it-gre", outs);
    for (const h of hosts) assert.equal((await leftovers(h, "it-gre")).trim(), "", `left on ${h.name}`);
  } finally {
    // Give each host its tunnel address back on eth2 (the tests after this one use the underlay).
    for (const h of moved)
      await sh(
        h,
        `ovs-vsctl --if-exists del-br br-phy; ip addr add ${h.tunnelAddress}/24 dev eth2 2>/dev/null || true; ip link set eth2 up`,
      );
    if (moved.length > 0) await closeHostSessions();
  }
});

test("openvswitch: every bridge and port a network makes carries its owner; a bridge another owner holds is not deleted", async () => {
  const [hv1] = hosts;
  const vlan = await checked({
    networkName: "it-own-v",
    type: "vlan",
    segmentationId: 103,
    driver: "openvswitch",
    hosts,
    owner: "itest/types/Network/it-own-v",
  });
  const vx = await checked({
    networkName: "it-own-x",
    kind: "selfservice",
    driver: "openvswitch",
    hosts,
    owner: "itest/types/Network/it-own-x",
  });
  const nv = (await networkProvider.create!(vlan)).outs as NetworkOutputs;
  let nx: NetworkOutputs | undefined = (await networkProvider.create!(vx)).outs as NetworkOutputs;
  try {
    for (const h of hosts) {
      console.log(
        `# ${h.name}: ovs-vsctl --columns=name,external_ids list port\n` +
          (await sh(h, "ovs-vsctl --columns=name,external_ids list port")),
      );
      for (const n of [nv, nx]) {
        const ports = (
          await sh(
            h,
            `ovs-vsctl --bare --columns=name find port external_ids:kvmlab-network=${n.networkName}`,
          )
        )
          .split(/\s+/)
          .filter((p) => p !== "");
        // VLAN: the patch pair (bridge side, trunk side); VXLAN: the tunnel port.
        assert.ok(ports.length >= 1, `${h.name}: ports of ${n.networkName}: ${ports.join(" ")}`);
        assert.ok(ports.includes(n.bridge), `${h.name}: the bridge's own port row of ${n.networkName}`);
        for (const p of [...ports.map((x) => `port ${x}`), `bridge ${n.bridge}`]) {
          const owner = (await sh(h, `ovs-vsctl get ${p} external_ids:kvmlab-owner`)).trim();
          assert.equal(owner, `"${n.owner}"`, `${h.name}: ${p}`);
        }
      }
    }
    // Another owner's bridge (here: relabelled by hand on hv1) is refused by name, and kept.
    await sh(
      hv1,
      `ovs-vsctl set bridge ${nx.bridge} external_ids:kvmlab-owner='"itest/other/Network/it-own-x"'`,
    );
    await assert.rejects(
      networkProvider.delete!("it-own-x", nx),
      /OVS bridge kvlb-[0-9a-f]+ of network it-own-x belongs to itest\/other\/Network\/it-own-x, not to itest\/types\/Network\/it-own-x; it was not removed\. Fix: /,
    );
    assert.equal((await sh(hv1, `ovs-vsctl br-exists ${nx.bridge} && echo kept`)).trim(), "kept");
    await sh(hv1, `ovs-vsctl set bridge ${nx.bridge} external_ids:kvmlab-owner='"${nx.owner}"'`);
    await networkProvider.delete!("it-own-x", nx);
    nx = undefined;
  } finally {
    if (nx) await networkProvider.delete!("it-own-x", nx).catch(() => undefined);
    await networkProvider.delete!("it-own-v", nv);
  }
  for (const h of hosts) {
    assert.equal((await leftovers(h, "it-own-v")).trim(), "", `left on ${h.name}`);
    assert.equal((await leftovers(h, "it-own-x")).trim(), "", `left on ${h.name}`);
  }
});
