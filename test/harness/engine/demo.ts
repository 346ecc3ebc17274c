/**
 * `npm run demo [-- destroy]`: the 3-tier lab on a local sandbox, in one command (as root, after
 * `npm run setup`). It starts the default `kvmlab sandbox` (or reuses it), runs `up` of
 * examples/three-tier, then prints the web URL, the bastion's SSH command and one with ProxyJump
 * for every server, and the console commands. `npm run demo -- destroy` removes the lab (the
 * sandbox stays: `kvmlab sandbox down` removes it).
 *
 * The Pulumi CLI cannot be installed on kvmlab's development machines, so the demo drives the
 * example through the engine harness (docs/engine-harness.md); with the Pulumi CLI,
 * `cd examples/three-tier && npm install && pulumi up` does the same.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { runEngine } from "./engine";

const ROOT = path.resolve(__dirname, "..", "..", "..", "..");
const PROGRAM = path.join(ROOT, "examples", "three-tier");
const DIR = path.join(ROOT, ".kvmlab-demo");
const INSTANCE = process.env.KVMLAB_SANDBOX_INSTANCE ?? "default";

function plain(v: unknown): unknown {
  return v !== null && typeof v === "object" && "value" in (v as object)
    ? (v as { value: unknown }).value
    : v;
}

async function main(argv: string[]): Promise<number> {
  const destroy = argv[0] === "destroy";
  if (argv.length > 0 && !destroy) {
    console.error("usage: npm run demo [-- destroy]");
    return 2;
  }
  fs.mkdirSync(DIR, { recursive: true, mode: 0o700 });
  if (!destroy) {
    console.log(`== kvmlab sandbox up --instance ${INSTANCE}`);
    const sb = spawnSync(
      process.execPath,
      [path.join(ROOT, "bin", "kvmlab.js"), "sandbox", "up", "--instance", INSTANCE],
      {
        stdio: "inherit",
      },
    );
    if (sb.status !== 0) return sb.status ?? 1;
  }
  console.log(`== ${destroy ? "destroy" : "up"} examples/three-tier (stack demo)`);
  const t0 = Date.now();
  const r = await runEngine({
    operation: destroy ? "destroy" : "up",
    programDir: PROGRAM,
    stack: "demo",
    stateFile: path.join(DIR, "demo.json"),
    config: [{ key: "kvmlab:sandboxInstance", value: INSTANCE, secret: false }],
    env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
    onStep: (e) => {
      if (e.op !== "same")
        console.log(`  ${e.op.padEnd(8)} ${e.type} ${e.urn.slice(e.urn.lastIndexOf("::") + 2)}`);
    },
  });
  if (!r.ok) {
    console.error(`demo: ${r.operation} failed:\n${r.errors.join("\n")}`);
    return 1;
  }
  console.log(`== done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  if (destroy) return 0;
  const o = r.outputs as Record<string, unknown>;
  const key = path.join(DIR, "id_ed25519");
  fs.writeFileSync(key, plain(o.sshPrivateKey) as string, { mode: 0o600 });
  const inet = `kvmlab-${INSTANCE}-inet`;
  const ssh = plain(o.sshCommands) as Record<string, string>;
  console.log(`
The 3-tier lab is up. From the sandbox's "internet" namespace:

  web URL      ${plain(o.webUrl)}
               ip netns exec ${inet} busybox wget -qO- ${plain(o.webUrl)}
  bastion      ip netns exec ${inet} ${ssh.bastion} -i ${key}
${Object.entries(ssh)
  .filter(([n]) => n !== "bastion")
  .map(([n, c]) => `  ${n.padEnd(12)} ip netns exec ${inet} ${c} -i ${key}`)
  .join("\n")}

(With ProxyJump, add the key to your ssh agent or ~/.ssh/config so the jump host gets it too.)
Consoles: ${Object.entries(plain(o.consoleCommands) as Record<string, string>)
    .map(([, c]) => c)
    .join("; ")}
Remove the lab: npm run demo -- destroy; the sandbox: kvmlab sandbox down`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`demo: ${(err as Error).stack ?? err}`);
    process.exit(1);
  },
);
