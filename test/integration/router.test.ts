/**
 * Router and FloatingIp against two `kvmlab sandbox` hosts, reached only over SSH (instance
 * "itest-router", built at the start and removed at the end).
 *
 * Layout: external flat network on both hosts (the sandbox's external network, whose gateway is
 * the "internet" namespace), self-service `lan1` (Linux bridge) and `lan2` (OVS) spanning hv1 and
 * hv2; the router on hv1; two stand-in servers on hv2 — test namespaces plugged into lan1 and
 * lan2 (the same attachment a guest's tap has) running busybox httpd with /cgi-bin/ip.
 *
 * Proves: s1 is reachable from the internet only through its floating IP (VXLAN to hv2) and sees
 * the real client; s2 (no FIP) reaches the internet through SNAT, the peer seeing the router's
 * gateway address; s1's egress leaves as its FIP; s2 reaches s1 through s1's FIP (hairpin, seen as
 * the gateway); a rule deleted by hand is drift and update puts it back; a converged router
 * diffs as no change; detaching lan2 is an update; re-association moves the FIP; disassociate
 * removes the address and conntrack entries; destroy leaves the hosts as they were.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { planSubnet } from "../../components/network";
import {
  runCommand,
  sandboxHostConnections,
  startSandbox,
  stopSandbox,
  type SandboxStatus,
} from "../support/sandbox";
import { plugLines } from "../support/plug";
import {
  closeHostSessions,
  diffRouter,
  floatingIpProvider,
  networkProvider,
  routerProvider,
  runChecked,
  subnetProvider,
  type FloatingIpOutputs,
  type HostConnection,
  type NetworkOutputs,
  type RouterOutputs,
  type SubnetOutputs,
} from "../../provider";
import { routerInterfaceNames } from "../../core/router";
import { ipamRecordName, recordPath } from "../../core/paths";

const INSTANCE = process.env.KVMLAB_ITEST_ROUTER_INSTANCE ?? "itest-router";
let hosts: HostConnection[] = [];
let status: SandboxStatus;

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  hosts = sandboxHostConnections(status);
});

after(async () => {
  await closeHostSessions();
  if (process.env.KVMLAB_KEEP_SANDBOX !== "1") await stopSandbox(INSTANCE);
});

async function sh(host: HostConnection, script: string, timeoutMs = 60_000): Promise<string> {
  const [out] = await runChecked(host, [{ label: "test command", script }], { timeoutMs });
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

/** From the sandbox's internet namespace (on this machine, created by the sandbox). */
async function fromInternet(url: string): Promise<string> {
  const r = await runCommand(
    "ip",
    ["netns", "exec", status.external.internetNetns, "timeout", "5", "busybox", "wget", "-qO-", url],
    {
      timeoutMs: 15_000,
    },
  );
  return r.code === 0 ? r.stdout.trim() : `FAILED(${r.code})`;
}

/** Host state the router and floating IP could leave behind. */
async function hostState(host: HostConnection): Promise<string> {
  return sh(
    host,
    [
      "ip netns list | awk '{print $1}' | sort",
      "ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(kvlt-|qr-|qg-)' | sort || true",
      "ls /var/lib/kvmlab/records/router /var/lib/kvmlab/routers /var/lib/kvmlab/floatingips 2>/dev/null || true",
      `cat ${recordPath("ipam", ipamRecordName("ext", "ext-v4"))} 2>/dev/null | tr , '\\n' | grep -E 'router|fip' || true`,
      "find /var/lib/kvmlab/owners -name '*.owner' 2>/dev/null | grep -E '/(router|floatingip)/' || true",
    ].join("\n"),
  );
}

/** A stand-in server: a namespace on `bridge` with httpd serving /cgi-bin/ip (the client address). */
async function server(
  host: HostConnection,
  driver: string,
  bridge: string,
  ns: string,
  cidr: string,
  gw: string,
): Promise<void> {
  const dev = `${ns.slice(-6)}h`;
  await sh(
    host,
    [
      "set -e",
      // Both ends at the selfservice networks' MTU (1450; test/support/plug.ts says why).
      ...plugLines({
        ns,
        dev,
        bridge,
        ovs: driver === "openvswitch",
        mtu: 1450,
        cidr,
        txOff: driver === "openvswitch",
        gateway: gw,
      }),
      `mkdir -p /tmp/${ns}/cgi-bin`,
      `printf '#!/bin/sh\\necho "Content-Type: text/plain"\\necho\\necho "$REMOTE_ADDR" | sed -e "s/^\\\\[::ffff://" -e "s/\\\\]$//"\\n' > /tmp/${ns}/cgi-bin/ip`,
      `chmod +x /tmp/${ns}/cgi-bin/ip`,
      `ip netns exec ${ns} setsid busybox httpd -f -p 80 -h /tmp/${ns} </dev/null >/dev/null 2>&1 & echo $! > /tmp/${ns}.pid`,
    ].join("\n"),
  );
}

async function unserver(host: HostConnection, driver: string, ns: string): Promise<void> {
  const dev = `${ns.slice(-6)}h`;
  await sh(
    host,
    [
      `[ -f /tmp/${ns}.pid ] && kill $(cat /tmp/${ns}.pid) 2>/dev/null || true`,
      driver === "openvswitch" ? `ovs-vsctl --if-exists del-port ${dev}` : "true",
      `ip link del ${dev} 2>/dev/null || true`,
      `ip netns del ${ns} 2>/dev/null || true`,
      `rm -rf /tmp/${ns} /tmp/${ns}.pid`,
    ].join("\n"),
  );
}

async function network(name: string, kind: string, driver: string): Promise<NetworkOutputs> {
  const inputs = await checked(networkProvider, { networkName: name, kind, driver, hosts });
  return (await networkProvider.create!(inputs)).outs as NetworkOutputs;
}

async function subnet(
  net: NetworkOutputs,
  name: string,
  cidr: string,
  extra: Record<string, unknown> = {},
): Promise<SubnetOutputs> {
  const inputs = await checked(subnetProvider, {
    subnetName: name,
    networkName: net.networkName,
    networkBridge: net.bridge,
    driver: net.driver,
    hosts,
    cidr,
    enableDhcp: false,
    dnsmasqConf: "",
    mtu: net.mtu,
    ...extra,
  });
  return (await subnetProvider.create!(inputs)).outs as SubnetOutputs;
}

function leg(net: NetworkOutputs, sub: SubnetOutputs) {
  return {
    subnetName: sub.subnetName,
    networkName: net.networkName,
    bridge: net.bridge,
    driver: net.driver,
    cidr: sub.cidr,
    address: sub.gateway,
    mtu: net.mtu,
  };
}

async function poll(
  what: string,
  fn: () => Promise<string>,
  want: (s: string) => boolean,
  ms = 20_000,
): Promise<string> {
  const end = Date.now() + ms;
  let last = "";
  while (Date.now() < end) {
    last = await fn();
    if (want(last)) return last;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.fail(`${what}: last answer ${JSON.stringify(last)}`);
}

test("router + floating IP: FIP-only reachability across hosts, SNAT, hairpin, drift, detach, re-association, clean destroy", async () => {
  const [hv1, hv2] = hosts;
  const before1 = await hostState(hv1);
  const before2 = await hostState(hv2);
  const ext = await network("ext", "provider", "linuxbridge");
  const extSub = await subnet(ext, "ext-v4", status.external.cidr, {
    gateway: status.external.gateway,
    allocationPool: status.external.allocationPool,
  });
  const lan1 = await network("lan1", "selfservice", "linuxbridge");
  const lan2 = await network("lan2", "selfservice", "openvswitch");
  const sub1 = await subnet(lan1, "lan1-v4", "10.80.1.0/24");
  const sub2 = await subnet(lan2, "lan2-v4", "10.80.2.0/24");
  const gwAddress = status.external.allocationPool.start;
  const external = {
    ...leg(ext, extSub),
    address: gwAddress,
    gateway: status.external.gateway,
    ipamHost: extSub.dhcpHost,
  };
  void planSubnet;

  const rIn = await checked(routerProvider, {
    routerName: "r1",
    hosts,
    host: "hv1",
    external,
    interfaces: [leg(lan1, sub1), leg(lan2, sub2)],
  });
  const r = await routerProvider.create!(rIn);
  let rOuts = r.outs as RouterOutputs;
  assert.equal(rOuts.realized.rules, "sync");
  assert.equal(rOuts.realized.jumps, 5);
  assert.equal(rOuts.realized.sysctls, "1,1,2,1");
  assert.equal(diffRouter(rOuts, rIn as never).changes, false, "a converged router is no change");
  // Another owner's router of the same name is refused and left alone.
  await assert.rejects(
    routerProvider.create!({ ...(rIn as object), owner: "other/stack/Router/r1" } as never),
    /belongs to/,
  );
  assert.equal((await routerProvider.read!("r1", rOuts)).props?.realized?.rules, "sync");

  await server(hv2, "linuxbridge", lan1.bridge, "kvlt-s1", "10.80.1.10/24", "10.80.1.1");
  await server(hv2, "openvswitch", lan2.bridge, "kvlt-s2", "10.80.2.10/24", "10.80.2.1");
  try {
    const fIn = await checked(floatingIpProvider, {
      fipName: "s1-fip",
      hosts,
      host: "hv1",
      routerName: "r1",
      external: { networkName: "ext", subnetName: "ext-v4", cidr: extSub.cidr, ipamHost: extSub.dhcpHost },
      target: { address: "10.80.1.10", subnetName: "lan1-v4", networkName: "lan1" },
    });
    const f = await floatingIpProvider.create!(fIn);
    let fOuts = f.outs as FloatingIpOutputs;
    const fip = fOuts.floatingIp;
    assert.notEqual(fip, gwAddress, "allocated through IPAM: not the router's address");
    assert.deepEqual(fOuts.realized, { addressOnGateway: true, rules: "sync", jumps: 2 });

    // Only through the FIP, and s1 sees the real client (DNAT keeps the source).
    const inet = status.external.gateway;
    assert.equal(
      await poll(
        "internet -> FIP",
        () => fromInternet(`http://${fip}/cgi-bin/ip`),
        (s) => s === inet,
      ),
      inet,
    );
    assert.match(
      await fromInternet("http://10.80.1.10/cgi-bin/ip"),
      /FAILED/,
      "the fixed address is not reachable from outside",
    );
    // Egress: s1 leaves as its FIP; s2 (no FIP) as the router's gateway address.
    assert.equal(
      (await sh(hv2, `ip netns exec kvlt-s1 timeout 5 busybox wget -qO- http://${inet}/cgi-bin/ip`)).trim(),
      fip,
    );
    assert.equal(
      (await sh(hv2, `ip netns exec kvlt-s2 timeout 5 busybox wget -qO- http://${inet}/cgi-bin/ip`)).trim(),
      gwAddress,
    );
    // Hairpin: s2 reaches s1 through s1's FIP; s1 sees the router's gateway address.
    assert.equal(
      (await sh(hv2, `ip netns exec kvlt-s2 timeout 5 busybox wget -qO- http://${fip}/cgi-bin/ip`)).trim(),
      gwAddress,
    );
    // East-west between internal subnets: no NAT.
    assert.equal(
      (
        await sh(hv2, "ip netns exec kvlt-s2 timeout 5 busybox wget -qO- http://10.80.1.10/cgi-bin/ip")
      ).trim(),
      "10.80.2.10",
    );

    // Drift: a rule deleted by hand is reported by read (refresh) and put back by update.
    await sh(hv1, "ip netns exec qrouter-r1 iptables -w -t nat -D kvmlab-snat 2");
    const read = await routerProvider.read!("r1", rOuts);
    const drifted = read.props as RouterOutputs;
    assert.equal(drifted.realized.rules, "drift");
    assert.equal(diffRouter(drifted, rIn as never).changes, true);
    rOuts = (await routerProvider.update!("r1", drifted, rIn)).outs as RouterOutputs;
    assert.equal(rOuts.realized.rules, "sync");
    assert.equal(
      (await sh(hv2, `ip netns exec kvlt-s2 timeout 5 busybox wget -qO- http://${inet}/cgi-bin/ip`)).trim(),
      gwAddress,
    );

    // Re-association is an update: the FIP now reaches s2; s1's flows are gone.
    const moved = await checked(floatingIpProvider, {
      ...fIn,
      target: { address: "10.80.2.10", subnetName: "lan2-v4", networkName: "lan2" },
    });
    fOuts = (await floatingIpProvider.update!("s1-fip", fOuts, moved)).outs as FloatingIpOutputs;
    assert.equal(fOuts.floatingIp, fip);
    assert.equal(
      await poll(
        "internet -> moved FIP",
        () => fromInternet(`http://${fip}/cgi-bin/ip`),
        (s) => s === inet,
      ),
      inet,
    );
    assert.equal(
      (await sh(hv2, `ip netns exec kvlt-s2 timeout 5 busybox wget -qO- http://${inet}/cgi-bin/ip`)).trim(),
      fip,
    );

    // Detaching lan2 is an update: its qr- leg goes, lan1 stays routed.
    const detach = await checked(routerProvider, { ...rIn, interfaces: [leg(lan1, sub1)] });
    rOuts = (await routerProvider.update!("r1", rOuts, detach)).outs as RouterOutputs;
    const qr2 = routerInterfaceNames("r1", "lan2-v4").device;
    assert.equal(qr2 in rOuts.realized.legs, false);
    assert.equal(routerInterfaceNames("r1", "lan1-v4").device in rOuts.realized.legs, true);

    // Disassociate: address and conntrack entries gone.
    await floatingIpProvider.delete!("s1-fip", fOuts);
    assert.equal(
      (await sh(hv1, `ip netns exec qrouter-r1 ip -4 -o addr show | grep -c ' ${fip}/32 ' || true`)).trim(),
      "0",
    );
    assert.equal(
      (
        await sh(hv1, `ip netns exec qrouter-r1 conntrack -L -d ${fip} 2>/dev/null | grep -c . || true`)
      ).trim(),
      "0",
    );
    assert.match(await fromInternet(`http://${fip}/cgi-bin/ip`), /FAILED/);
  } finally {
    await unserver(hv2, "linuxbridge", "kvlt-s1");
    await unserver(hv2, "openvswitch", "kvlt-s2");
  }
  await routerProvider.delete!("r1", rOuts);
  for (const s of [sub1, sub2, extSub]) await subnetProvider.delete!(s.subnetName, s);
  for (const n of [lan1, lan2, ext]) await networkProvider.delete!(n.networkName, n);
  assert.equal(await hostState(hv1), before1, "hv1 is as before");
  assert.equal(await hostState(hv2), before2, "hv2 is as before");
});
