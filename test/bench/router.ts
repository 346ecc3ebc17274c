/**
 * Router benchmark: a router with 4 attached subnets and 10 floating IPs, created, diffed with no
 * change, refreshed and deleted through kvmlab's host layer (one pooled SSH connection per host,
 * batched steps) and the naive way (a new SSH connection per remote command, as
 * @pulumi/command's remote.Command does), on a `kvmlab sandbox` instance of its own
 * ("bench-router", built first and removed at the end). The networks and subnets are set up
 * once, outside the figures.
 *
 *   npm run build && node dist/test/bench/router.js [--instance bench-router] [--keep]
 *
 * Prints per phase: wall time, SSH connections opened, remote steps, round trips (batches).
 */
import {
  closeHostSessions,
  floatingIpProvider,
  hostPoolStats,
  networkProvider,
  resetHostPoolStats,
  routerProvider,
  setHostPoolMode,
  subnetProvider,
  type FloatingIpOutputs,
  type HostConnection,
  type HostPoolStats,
  type NetworkOutputs,
  type RouterOutputs,
  type SubnetOutputs,
} from "../../provider";
import { sandboxHostConnections, startSandbox, stopSandbox, type SandboxStatus } from "../support/sandbox";

async function checked<T>(
  p: { check?: (o: T, n: T) => Promise<unknown> },
  raw: Record<string, unknown>,
): Promise<T> {
  const r = (await p.check!({} as T, raw as T)) as { inputs?: T; failures?: { reason: string }[] };
  if ((r.failures ?? []).length > 0) throw new Error(r.failures!.map((f) => f.reason).join("; "));
  return r.inputs as T;
}

interface Lab {
  ext: NetworkOutputs;
  extSub: SubnetOutputs;
  nets: NetworkOutputs[];
  subs: SubnetOutputs[];
}

async function setup(hosts: HostConnection[], status: SandboxStatus): Promise<Lab> {
  const net = async (name: string, kind: string): Promise<NetworkOutputs> =>
    (await networkProvider.create!(await checked(networkProvider, { networkName: name, kind, hosts })))
      .outs as NetworkOutputs;
  const sub = async (
    n: NetworkOutputs,
    name: string,
    cidr: string,
    extra: Record<string, unknown> = {},
  ): Promise<SubnetOutputs> =>
    (
      await subnetProvider.create!(
        await checked(subnetProvider, {
          subnetName: name,
          networkName: n.networkName,
          networkBridge: n.bridge,
          driver: n.driver,
          hosts,
          cidr,
          enableDhcp: false,
          dnsmasqConf: "",
          mtu: n.mtu,
          ...extra,
        }),
      )
    ).outs as SubnetOutputs;
  const ext = await net("bext", "provider");
  const extSub = await sub(ext, "bext-v4", status.external.cidr, {
    gateway: status.external.gateway,
    allocationPool: status.external.allocationPool,
  });
  const nets: NetworkOutputs[] = [];
  const subs: SubnetOutputs[] = [];
  for (let i = 1; i <= 4; i++) {
    nets.push(await net(`blan${i}`, "selfservice"));
    subs.push(await sub(nets[i - 1], `blan${i}-v4`, `10.81.${i}.0/24`));
  }
  return { ext, extSub, nets, subs };
}

function routerRaw(hosts: HostConnection[], lab: Lab, status: SandboxStatus): Record<string, unknown> {
  const leg = (n: NetworkOutputs, s: SubnetOutputs) => ({
    subnetName: s.subnetName,
    networkName: n.networkName,
    bridge: n.bridge,
    driver: n.driver,
    cidr: s.cidr,
    address: s.gateway,
    mtu: n.mtu,
  });
  return {
    routerName: "br1",
    hosts,
    host: hosts[0].name,
    external: {
      ...leg(lab.ext, lab.extSub),
      address: status.external.allocationPool.start,
      gateway: status.external.gateway,
      ipamHost: lab.extSub.dhcpHost,
    },
    interfaces: lab.nets.map((n, i) => leg(n, lab.subs[i])),
  };
}

function fipRaw(hosts: HostConnection[], lab: Lab, i: number): Record<string, unknown> {
  const s = lab.subs[i % 4];
  return {
    fipName: `bfip${i}`,
    hosts,
    host: hosts[0].name,
    routerName: "br1",
    external: {
      networkName: "bext",
      subnetName: "bext-v4",
      cidr: lab.extSub.cidr,
      ipamHost: lab.extSub.dhcpHost,
    },
    target: {
      address: s.cidr.replace(/0\/24$/, String(10 + i)),
      subnetName: s.subnetName,
      networkName: s.networkName,
    },
  };
}

async function measure(fn: () => Promise<void>): Promise<{ ms: number; stats: HostPoolStats }> {
  const before = hostPoolStats();
  const t0 = process.hrtime.bigint();
  await fn();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const after = hostPoolStats();
  const stats = { ...after };
  for (const k of Object.keys(stats) as (keyof HostPoolStats)[]) stats[k] = after[k] - before[k];
  return { ms, stats };
}

async function run(hosts: HostConnection[], lab: Lab, status: SandboxStatus, mode: "pooled" | "naive") {
  await closeHostSessions();
  resetHostPoolStats();
  setHostPoolMode(mode);
  try {
    const rIn = await checked<RouterOutputs>(routerProvider, routerRaw(hosts, lab, status));
    const fIns = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        checked<FloatingIpOutputs>(floatingIpProvider, fipRaw(hosts, lab, i)),
      ),
    );
    let router!: RouterOutputs;
    const fips: FloatingIpOutputs[] = [];
    const create = await measure(async () => {
      router = (await routerProvider.create!(rIn)).outs as RouterOutputs;
      for (const f of fIns) fips.push((await floatingIpProvider.create!(f)).outs as FloatingIpOutputs);
    });
    const diff = await measure(async () => {
      if ((await routerProvider.diff!("br1", router, rIn)).changes)
        throw new Error("router: no-change diff reports changes");
      for (let i = 0; i < 10; i++)
        if ((await floatingIpProvider.diff!(fips[i].fipName, fips[i], fIns[i])).changes)
          throw new Error(`${fips[i].fipName}: no-change diff reports changes`);
    });
    const refresh = await measure(async () => {
      await routerProvider.read!("br1", router);
      for (const f of fips) await floatingIpProvider.read!(f.fipName, f);
    });
    const del = await measure(async () => {
      for (const f of fips) await floatingIpProvider.delete!(f.fipName, f);
      await routerProvider.delete!("br1", router);
    });
    return { create, diff, refresh, delete: del };
  } finally {
    setHostPoolMode("pooled");
    await closeHostSessions();
  }
}

async function main(argv: string[]): Promise<number> {
  const at = argv.indexOf("--instance");
  const instance = at >= 0 ? argv[at + 1] : "bench-router";
  const status = await startSandbox(instance, 2);
  try {
    const hosts = sandboxHostConnections(status).slice(0, 2);
    const lab = await setup(hosts, status);
    console.log(
      `kvmlab router benchmark: 1 router with 4 subnets + 10 floating IPs on sandbox "${instance}"\n`,
    );
    const pooled = await run(hosts, lab, status, "pooled");
    const naive = await run(hosts, lab, status, "naive");
    const head = `${"phase".padEnd(10)} ${"kvmlab ms".padStart(10)} ${"conns".padStart(6)} ${"steps".padStart(6)} ${"trips".padStart(6)} | ${"naive ms".padStart(10)} ${"conns".padStart(6)} ${"trips".padStart(6)} | ${"ratio".padStart(6)}`;
    console.log(head);
    console.log("-".repeat(head.length));
    for (const phase of ["create", "diff", "refresh", "delete"] as const) {
      const p = pooled[phase];
      const n = naive[phase];
      console.log(
        `${phase.padEnd(10)} ${p.ms.toFixed(0).padStart(10)} ${String(p.stats.connectionsOpened).padStart(6)} ${String(p.stats.steps).padStart(6)} ${String(p.stats.batches).padStart(6)} | ${n.ms.toFixed(0).padStart(10)} ${String(n.stats.connectionsOpened).padStart(6)} ${String(n.stats.batches).padStart(6)} | ${p.ms >= 20 ? `x${(n.ms / p.ms).toFixed(1)}` : "-"}`.padStart(
          6,
        ),
      );
    }
    console.log(
      "\nconns = SSH connections opened; steps = remote commands; trips = round trips (batches); naive = one connection per command.",
    );
    return 0;
  } finally {
    await closeHostSessions();
    if (!argv.includes("--keep")) await stopSandbox(instance);
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      console.error(err instanceof Error ? err.message : err);
      process.exitCode = 1;
    },
  );
}
