/**
 * Issue 10's Done-when with real guests (test/fixtures/programs/sg-guests through the engine
 * harness, on a two-host sandbox "lc-sgg" or $KVMLAB_LC_SGG_INSTANCE): a router on hv1, guests
 * sga (OVS, hv2, floating IP), sgb (OVS, hv1) and sgc (Linux bridge, hv2), all in group "web"
 * (tcp/80 from anywhere, tcp/8080 from members of "bastion").
 *
 * Router: sga answers from the internet namespace through its floating IP only; sgc (no floating
 * IP) reaches the internet namespace and the peer sees the router's gateway address (SNAT: the
 * guest's `lab.probe` logs PROBE-OK <address the peer saw>); sgb reaches sga through sga's
 * floating IP (hairpin).
 * Security groups, for the OVS target sga and the Linux bridge target sgc (real guests), with
 * clients as test namespaces on the target's network on hv2: tcp/80 passes; tcp/8080 admits a
 * bastion member and refuses a non-member (the guest listens there); a forged source address is
 * dropped (the forger is a namespace stand-in behind a SecurityGroupPort of its own: a guest
 * cannot forge easily); revoking the 8080 rule (`up` with revoke=true: the Servers stay "same")
 * cuts the member's live connection (a request trickling in: the client is the only sender). Destroy leaves no chain, set, qbr device,
 * zone record or qrouter namespace.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { runEngine, type RunResult } from "../harness/engine/engine";
import {
  sandboxHostConnections,
  sshCheck,
  startSandbox,
  stopSandbox,
  waitFor,
  type SandboxStatus,
} from "../support/sandbox";
import { plugLines } from "../support/plug";
import { withNetworkDiagnostics } from "../support/diagnostics";
import { closeHostSessions, securityGroupPortProvider, type SecurityGroupPortOutputs } from "../../provider";
import { DEFAULT_EGRESS } from "../../core/securityGroup";

const INSTANCE = process.env.KVMLAB_LC_SGG_INSTANCE ?? "lc-sgg";
const PROGRAM = path.resolve(__dirname, "..", "..", "..", "test", "fixtures", "programs", "sg-guests");
const MEMBERS = ["10.20.1.240", "10.20.2.240"];
let status: SandboxStatus;
let stateDir = "";
let destroyed = false;

before(async () => {
  status = await startSandbox(INSTANCE, 2);
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-lc-sgg-"));
});

after(async () => {
  if (!destroyed && stateDir) await run("destroy").catch(() => undefined);
  await closeHostSessions();
  await stopSandbox(INSTANCE);
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

function run(operation: "up" | "destroy", revoke = false): Promise<RunResult> {
  return runEngine({
    operation,
    programDir: PROGRAM,
    stack: "lc",
    stateFile: path.join(stateDir, "state.json"),
    config: [
      { key: "sg-guests:sandboxInstance", value: INSTANCE, secret: false },
      { key: "sg-guests:bastionMembers", value: JSON.stringify(MEMBERS), secret: false },
      { key: "sg-guests:revoke", value: String(revoke), secret: false },
    ],
    env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
  });
}

function ok(r: RunResult): RunResult {
  assert.ok(r.ok, `${r.operation} failed:\n${r.errors.join("\n")}`);
  return r;
}

function stepOf(r: RunResult, type: string, name: string): string {
  const s = r.steps.filter((e) => e.urn.endsWith(`${type}::${name}`));
  assert.equal(s.length, 1, `one step for ${type} ${name}: ${JSON.stringify(s.map((e) => e.op))}`);
  return s[0].op;
}

/** GET from the sandbox's internet namespace (bounded); undefined when nothing answers. */
function fromInternet(ip: string, port: number): string | undefined {
  const r = spawnSync(
    "ip",
    [
      "netns",
      "exec",
      status.external.internetNetns,
      "timeout",
      "4",
      "busybox",
      "wget",
      "-qO-",
      `http://${ip}:${port}/`,
    ],
    { encoding: "utf8", timeout: 8_000 },
  );
  return r.status === 0 ? r.stdout.trim() : undefined;
}

const sh = (host: string, script: string, timeoutMs = 60_000): Promise<string> =>
  sshCheck(status, host, script, { timeoutMs });

/** HTTP GET from test namespace `ns` on `host` (curl, 4 s bound); undefined when refused or dropped. */
async function get(host: string, ns: string, url: string, from = ""): Promise<string | undefined> {
  const out = await sh(
    host,
    `ip netns exec ${ns} curl -fsS --connect-timeout 3 -m 4 ${from ? `--interface ${from} ` : ""}${url} 2>/dev/null || echo KVSG-FAIL`,
  );
  return out.includes("KVSG-FAIL") ? undefined : out.trim();
}

/** The last PROBE-OK body in a guest's serial log, once there is one. */
function probeOk(host: string, server: string): Promise<string> {
  return waitFor(
    `PROBE-OK on ${server}'s console`,
    async () => {
      const out = await sh(
        host,
        // The serial log the domain names (instance folders are keyed by UUID, issue 15).
        `f=$(virsh -c qemu:///system dumpxml ${server} | sed -n "s:.*<log file='\\([^']*\\)'.*:\\1:p" | head -n1); grep -a PROBE-OK "$f" | tail -n 1 || true`,
      );
      const m = /PROBE-OK (\S+)/.exec(out);
      return m ? m[1] : undefined;
    },
    { timeoutMs: 90_000, intervalMs: 2_000 },
  );
}

/** A test namespace with eth0 on `bridge` (OVS port or Linux bridge port) at `ip`. */
async function plug(
  host: string,
  ns: string,
  dev: string,
  bridge: string,
  mode: "ovs" | "lb",
  ip: string,
  mac: string,
): Promise<void> {
  await sh(
    host,
    // Both ends at the selfservice networks' MTU (1450; test/support/plug.ts says why).
    [
      "set -e",
      ...plugLines({ ns, dev, bridge, ovs: mode === "ovs", mtu: 1450, cidr: `${ip}/24`, mac, txOff: true }),
    ].join("\n"),
  );
}

async function unplug(host: string, ns: string, dev: string): Promise<void> {
  await sh(
    host,
    [
      `for p in $(cat /tmp/${ns}.pids 2>/dev/null); do kill -- -$p 2>/dev/null || kill $p 2>/dev/null || true; done`,
      `ovs-vsctl --if-exists del-port ${dev}`,
      `ip link del ${dev} 2>/dev/null || true`,
      `ip netns del ${ns} 2>/dev/null || true`,
      `rm -f /tmp/${ns}.pids`,
    ].join("\n"),
  ).catch(() => undefined);
}

interface Target {
  name: string;
  d: "o" | "l";
  ip: string;
  bridge: string;
  mode: "ovs" | "lb";
  driver: "openvswitch" | "linuxbridge";
  pre: string;
}

test(
  "real guests: floating IP only, SNAT seen as the gateway, hairpin; security groups on OVS and Linux bridge: allowed, refused, remote group, anti-spoofing, revoke cuts a live flow",
  { timeout: 1_500_000 },
  async () => {
    // A guest without a lease (session 9's second CI: sga on the OVS VXLAN network, no answer to
    // ten discovers) fails here: the message then carries the hosts' plumbing, read at once.
    const o = await withNetworkDiagnostics(status, async () => {
      const up = ok(await run("up"));
      return up.outputs as Record<string, string>;
    });
    const hv2 = o.hostA;
    assert.equal(o.hostC, hv2);

    // --- Router, with real guests.
    await withNetworkDiagnostics(status, async () => {
      assert.equal(
        await waitFor("sga through its floating IP", async () => fromInternet(o.floatingIp, 80), {
          timeoutMs: 60_000,
          intervalMs: 1_000,
        }),
        "hello from sga",
      );
      assert.equal(
        fromInternet(o.ipA, 80),
        undefined,
        "the fixed address is not reachable from the internet",
      );
      assert.equal(
        await probeOk(hv2, "sgc"),
        o.gateway,
        "the internet peer sees the router's gateway address (SNAT)",
      );
      const hairpin = await probeOk(status.hosts[0].name, "sgb");
      assert.match(hairpin, /^\d+\.\d+\.\d+\.\d+$/, "sgb reached sga through sga's floating IP (hairpin)");
    });

    // --- Security groups on both drivers (targets on hv2).
    const hosts = sandboxHostConnections(status);
    const targets: Target[] = [
      {
        name: "sga",
        d: "o",
        ip: o.ipA,
        bridge: o.lanovsBridge,
        mode: "ovs",
        driver: "openvswitch",
        pre: "10.20.1",
      },
      {
        name: "sgc",
        d: "l",
        ip: o.ipC,
        bridge: o.lanlbBridge,
        mode: "lb",
        driver: "linuxbridge",
        pre: "10.20.2",
      },
    ];
    const forgers: SecurityGroupPortOutputs[] = [];
    try {
      for (const t of targets) {
        await plug(
          hv2,
          `kvsg-mem${t.d}`,
          `kvsgmem${t.d}`,
          t.bridge,
          t.mode,
          `${t.pre}.240`,
          `fa:16:3e:77:00:4${t.d === "o" ? 0 : 1}`,
        );
        await plug(
          hv2,
          `kvsg-oth${t.d}`,
          `kvsgoth${t.d}`,
          t.bridge,
          t.mode,
          `${t.pre}.241`,
          `fa:16:3e:77:00:5${t.d === "o" ? 0 : 1}`,
        );
        // The forger: behind a SecurityGroupPort of its own (egress open: only anti-spoofing bites).
        const tap = `tapkvsgfg${t.d}`;
        const mac = `fa:16:3e:77:00:6${t.d === "o" ? 0 : 1}`;
        const c = (await securityGroupPortProvider.check!(
          {} as never,
          {
            portName: `forger-${t.d}`,
            hosts,
            host: hv2,
            tap,
            mac,
            ip: `${t.pre}.242`,
            driver: t.driver,
            networkBridge: t.bridge,
            groups: [{ groupName: "forger", rules: [DEFAULT_EGRESS] }],
          } as never,
        )) as { inputs: never; failures: unknown[] };
        assert.deepEqual(c.failures, []);
        const fg = (await securityGroupPortProvider.create!(c.inputs)).outs as SecurityGroupPortOutputs;
        forgers.push(fg);
        await plug(hv2, `kvsg-fg${t.d}`, tap, fg.portBridge, "lb", `${t.pre}.242`, mac);

        const url = (port: number, p = "/"): string => `http://${t.ip}:${port}${p}`;
        const allowed = await waitFor(
          `${t.name}:80 from a client`,
          () => get(hv2, `kvsg-oth${t.d}`, url(80)),
          {
            timeoutMs: 30_000,
            intervalMs: 1_000,
          },
        );
        assert.equal(allowed, `hello from ${t.name}`, `${t.driver}: tcp/80 passes`);
        assert.equal(
          await get(hv2, `kvsg-mem${t.d}`, url(8080)),
          `hello from ${t.name}`,
          `${t.driver}: a bastion member reaches tcp/8080`,
        );
        assert.equal(
          await get(hv2, `kvsg-oth${t.d}`, url(8080)),
          undefined,
          `${t.driver}: tcp/8080 is refused to a non-member (the guest listens there)`,
        );
        assert.equal(
          await get(hv2, `kvsg-fg${t.d}`, url(80, "/cgi-bin/ip")),
          `${t.pre}.242`,
          `${t.driver}: the forger's own address passes`,
        );
        await sh(hv2, `ip netns exec kvsg-fg${t.d} ip addr add ${t.pre}.243/24 dev eth0`);
        assert.equal(
          await get(hv2, `kvsg-fg${t.d}`, url(80, "/cgi-bin/ip"), `${t.pre}.243`),
          undefined,
          `${t.driver}: a forged source address is dropped`,
        );
        // A live connection on 8080 in which the client is the only sender: a request whose
        // header lines trickle in (one a second, at most 300; busybox httpd waits up to 60 s per
        // line). A download would not do: after `conntrack -D` the guest's own next segment
        // (egress, allowed) would re-create the entry and the flow would go on.
        await sh(
          hv2,
          `ip netns exec kvsg-mem${t.d} setsid sh -c '(printf "GET / HTTP/1.0\\r\\n"; i=0; while [ $i -lt 300 ]; do printf "X-Pad: %s\\r\\n" $i; sleep 1; i=$((i+1)); done) | busybox nc ${t.ip} 8080 >/dev/null' </dev/null >/dev/null 2>&1 & echo $! > /tmp/kvsg-mem${t.d}.pids`,
        );
      }
      // Bytes of the trickling request the guest has acknowledged (the client's TCP socket).
      const acked = async (t: Target): Promise<number> => {
        const out = await sh(hv2, `ip netns exec kvsg-mem${t.d} ss -tinH dst ${t.ip} dport = :8080 || true`);
        return Number(/bytes_acked:(\d+)/.exec(out)?.[1] ?? "-1");
      };
      await new Promise((r) => setTimeout(r, 3_000));
      const s0 = await Promise.all(targets.map(acked));
      await new Promise((r) => setTimeout(r, 4_000));
      const s1 = await Promise.all(targets.map(acked));
      targets.forEach((t, i) =>
        assert.ok(
          s1[i] > s0[i] && s0[i] > 0,
          `${t.driver}: the connection carries data before the revoke (${s0[i]} -> ${s1[i]})`,
        ),
      );

      const revoked = ok(await run("up", true));
      for (const n of ["sga", "sgb", "sgc"])
        assert.equal(stepOf(revoked, "kvmlab:Server", n), "same", `${n} untouched`);
      assert.equal(stepOf(revoked, "kvmlab:SecurityGroupPort", "sga-port0"), "update");
      assert.equal(stepOf(revoked, "kvmlab:SecurityGroupPort", "sgc-port0"), "update");
      await new Promise((r) => setTimeout(r, 2_000));
      const s2 = await Promise.all(targets.map(acked));
      await new Promise((r) => setTimeout(r, 5_000));
      const s3 = await Promise.all(targets.map(acked));
      targets.forEach((t, i) => {
        assert.ok(s2[i] > 0, `${t.driver}: the client still holds the connection`);
        assert.equal(
          s3[i],
          s2[i],
          `${t.driver}: revoking the rule cut the live connection (nothing acknowledged for 5 s)`,
        );
      });
      for (const t of targets)
        assert.equal(
          await get(hv2, `kvsg-mem${t.d}`, `http://${t.ip}:8080/`),
          undefined,
          `${t.driver}: 8080 is closed to members now`,
        );
    } finally {
      for (const t of targets)
        for (const [ns, dev] of [
          [`kvsg-mem${t.d}`, `kvsgmem${t.d}`],
          [`kvsg-oth${t.d}`, `kvsgoth${t.d}`],
          [`kvsg-fg${t.d}`, `tapkvsgfg${t.d}`],
        ])
          await unplug(hv2, ns, dev);
      for (const fg of forgers)
        await securityGroupPortProvider.delete!(fg.portName, fg).catch(() => undefined);
    }

    ok(await run("destroy"));
    destroyed = true;
    for (const h of status.hosts) {
      const left = await sh(
        h.name,
        [
          "{ iptables-save; iptables-save -t raw; } 2>/dev/null | grep -c kvmlab || true",
          "ipset list -n | grep -c kvmlab || true",
          "ip -o link show | grep -cE ': (qbr|qvb|qvo)' || true",
          "ls /var/lib/kvmlab/ctzones 2>/dev/null | wc -l",
          "ip netns list | grep -c qrouter || true",
        ].join("; "),
      );
      assert.equal(
        left.trim().split(/\s+/).join(" "),
        "0 0 0 0 0",
        `${h.name}: nothing of kvmlab left (chains, sets, qbr/qvb/qvo, zones, namespaces)`,
      );
    }
  },
);
