/**
 * Autoscale benchmark: how long a scale-out takes from the agent's decision to the new member
 * serving traffic (in the pool after its health check answered), for a scale-out by 1 and by 2,
 * next to the bare `virsh start`-to-HTTP time of the same guest in the same run. Runs
 * examples/autoscale through the engine harness on a sandbox instance of its own
 * ("bench-asg", built first and removed at the end), TCG guests.
 *
 *   npm run build && node --require ./dist/test/support/inspectFix.js dist/test/bench/autoscale.js [--instance bench-asg] [--keep]
 *
 * Scale-outs are asked for by changing the program's `desired` (1 -> 2, back to 1, 1 -> 3), so
 * no CPU load skews the figures; the alarms are set so they never fire. The decision and
 * in-service times come from the agent's decisions.log (controller clock). The baseline starts a
 * stopped slot by hand (`virsh start` on its host over SSH) and polls its /health from the load
 * balancer's namespace every 250 ms; both ends are timed by this process, so the baseline
 * includes two SSH round trips (~0.1 s) the agent's figure does not.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type RunResult } from "../harness/engine/engine";
import { loadBalancerPaths } from "../../core/paths";
import {
  sshCheck,
  sshExec,
  startSandbox,
  stopSandbox,
  waitFor,
  type SandboxStatus,
} from "../support/sandbox";

const PROGRAM = path.resolve(__dirname, "..", "..", "..", "examples", "autoscale");
const DIR = "/var/lib/kvmlab/asg/web";

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : dflt;
}

async function main(): Promise<void> {
  const instance = arg("instance", "bench-asg");
  const keep = process.argv.includes("--keep");
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-bench-asg-"));
  let status: SandboxStatus | undefined;
  const run = (operation: "up" | "destroy", desired: number): Promise<RunResult> =>
    runEngine({
      operation,
      programDir: PROGRAM,
      stack: "bench",
      stateFile: path.join(stateDir, "state.json"),
      config: [
        { key: "kvmlab:sandboxInstance", value: instance, secret: false },
        { key: "autoscale:desired", value: String(desired), secret: false },
        { key: "autoscale:cooldown", value: "5", secret: false },
        { key: "autoscale:interval", value: "2", secret: false },
        // Alarms that never fire: the program's desired size is the only signal.
        { key: "autoscale:outThreshold", value: "6400", secret: false },
        { key: "autoscale:inThreshold", value: "0", secret: false },
      ],
      env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
    }).then((r) => {
      if (!r.ok) throw new Error(`${operation} failed:\n${r.errors.join("\n")}`);
      return r;
    });
  try {
    status = await startSandbox(instance, 2);
    const st = status;
    const up = await run("up", 1);
    const agentHost = up.outputs.agentHost as string;
    const ips = up.outputs.memberIps as string[];
    const hostsOf = up.outputs.memberHosts as string[];
    const size = async (): Promise<number> => {
      const t = await sshCheck(st, agentHost, `sed -n 's/^size=//p' ${DIR}/status 2>/dev/null || true`);
      return Number(t.trim() || "-1");
    };
    const waitSize = (n: number) =>
      waitFor(`size ${n}`, async () => ((await size()) === n ? true : undefined), {
        timeoutMs: 600_000,
        intervalMs: 1000,
      });
    await waitSize(1);
    const logLines = async (): Promise<string[]> =>
      (await sshCheck(st, agentHost, `cat ${DIR}/decisions.log`))
        .split("\n")
        .filter((l) => l.startsWith("ts="));
    const field = (l: string, k: string): string => new RegExp(`(?:^| )${k}=(\\S+)`).exec(l)?.[1] ?? "";

    /** Seconds from the program decision to each started member entering service. */
    const scaleOut = async (to: number): Promise<number[]> => {
      const before = (await logLines()).length;
      await run("up", to);
      await waitSize(to);
      const lines = (await logLines()).slice(before);
      const decision = lines.find(
        (l) => field(l, "event") === "decision" && field(l, "source") === "program",
      );
      if (!decision) throw new Error(`no program decision in:\n${lines.join("\n")}`);
      const t0 = Number(field(decision, "ts"));
      return lines
        .filter((l) => field(l, "action") === "in-service")
        .map((l) => (Number(field(l, "ts")) - t0) / 1000);
    };
    const by1 = await scaleOut(2);
    await run("up", 1);
    await waitSize(1);
    const by2 = await scaleOut(3);
    await run("up", 1);
    await waitSize(1);

    // Baseline: the same guests, started by hand, polled from the load balancer's namespace.
    const ns = loadBalancerPaths("web-lb").namespace;
    const bare: number[] = [];
    const stopped = (
      await sshCheck(st, agentHost, `sed -n 's/^member=\\(web-[0-9]*\\) stopped .*/\\1/p' ${DIR}/status`)
    )
      .split("\n")
      .filter((l) => l !== "")
      .map((m) => Number(m.split("-")[1]));
    for (const slot of stopped) {
      const member = `web-${slot}`;
      const t0 = Date.now();
      await sshCheck(st, hostsOf[slot], `virsh -c qemu:///system -q start ${member}`);
      await sshCheck(
        st,
        up.outputs.lbHost as string,
        `i=0; until ip netns exec ${ns} timeout 2 busybox wget -qO /dev/null http://${ips[slot]}/health; do i=$((i+1)); [ $i -lt 2400 ] || exit 1; sleep 0.25; done`,
        { timeoutMs: 620_000 },
      );
      bare.push((Date.now() - t0) / 1000);
      await sshExec(st, hostsOf[slot], `virsh -c qemu:///system -q destroy ${member}`);
    }
    const fmt = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(", ");
    console.log("autoscale scale-out (TCG guests; seconds)");
    console.log(`  decision -> member in service, scale-out by 1:  ${fmt(by1)}`);
    console.log(`  decision -> members in service, scale-out by 2: ${fmt(by2)}`);
    console.log(
      `  bare virsh start -> HTTP /health, same guests:  ${fmt(bare)} (${stopped.map((i) => `web-${i}`).join(", ")})`,
    );
    await run("destroy", 1);
  } finally {
    if (!keep) await stopSandbox(instance).catch(() => undefined);
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : String(err));
    process.exit(1);
  },
);
