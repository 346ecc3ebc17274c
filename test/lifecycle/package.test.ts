/**
 * kvmlab as an npm package, the way a user's Pulumi program gets it: `npm pack` of this
 * repository, installed into a fresh TypeScript program in a temporary folder outside the
 * repository, type-checked with tsc, then run through the engine harness (real cmd/run, real
 * dynamic-provider plugin) against a sandbox instance of its own ("lc-package", or
 * $KVMLAB_LC_PACKAGE_INSTANCE):
 *
 *   tarball        has the compiled code with its types, the templates and the lab schema;
 *                  no tests, harness or source maps
 *   install        one copy of @pulumi/pulumi in the program (kvmlab only peers on it)
 *   newest SDK     the newest @pulumi/pulumi of the peer range: type-check and preview
 *   oldest SDK     3.248.0: type-check, preview, up of one Network (its bridge appears on the
 *                  host), state per resource under 10 KiB with the provider as a require of
 *                  the installed kvmlab, destroy (the bridge is gone, the state empty)
 *
 * The registry must be reachable (npm install); npm's cache makes repeated runs quick.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type RunResult } from "../harness/engine/engine";
import { runCommand, sshExec, startSandbox, stopSandbox, type SandboxStatus } from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_LC_PACKAGE_INSTANCE ?? "lc-package";
const KEEP = process.env.KVMLAB_LC_KEEP === "1";
const REPO = path.resolve(__dirname, "..", "..", "..");
const PACKAGE = JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8")) as {
  version: string;
  peerDependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
/** The oldest SDK of the peer range: the one this repository develops and tests with. */
const OLDEST_SDK = PACKAGE.devDependencies["@pulumi/pulumi"];
const PEER_RANGE = PACKAGE.peerDependencies["@pulumi/pulumi"];
const TSC = path.join(REPO, "node_modules", "typescript", "bin", "tsc");
/** Serialized provider plus inputs and outputs of one Network; by value it was about 50 KB. */
const MAX_RESOURCE_STATE_BYTES = 10 * 1024;

let status: SandboxStatus;
let work = "";
let tarball = "";
let upDone = false;

/** npm with the registry and cache the runner has; no lifecycle scripts of dependencies. */
async function npm(args: string[], cwd: string, timeoutMs = 300_000): Promise<string> {
  const r = await runCommand("sh", ["-c", 'cd "$0" && exec npm "$@"', cwd, ...args], { timeoutMs });
  assert.equal(r.code, 0, `npm ${args.join(" ")} in ${cwd} failed:\n${r.stderr.slice(-4000)}`);
  return r.stdout;
}

/** A Pulumi TypeScript program as `pulumi new typescript` makes it, using kvmlab. */
async function makeProgram(name: string, sdk: string): Promise<string> {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  const devTypes = JSON.parse(
    fs.readFileSync(path.join(REPO, "node_modules", "@types", "node", "package.json"), "utf8"),
  ) as { version: string };
  const ts = JSON.parse(
    fs.readFileSync(path.join(REPO, "node_modules", "typescript", "package.json"), "utf8"),
  ) as { version: string };
  fs.writeFileSync(
    path.join(dir, "package.json"),
    JSON.stringify(
      {
        name,
        private: true,
        main: "index.ts",
        dependencies: { "@pulumi/pulumi": sdk, kvmlab: `file:${tarball}` },
        devDependencies: { "@types/node": devTypes.version, typescript: ts.version },
      },
      null,
      2,
    ),
  );
  fs.writeFileSync(path.join(dir, "Pulumi.yaml"), `name: ${name}\nruntime: nodejs\nmain: index.ts\n`);
  fs.writeFileSync(
    path.join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        target: "ES2022",
        module: "commonjs",
        moduleResolution: "node10",
        esModuleInterop: true,
        skipLibCheck: true,
        types: ["node"],
      },
      files: ["index.ts"],
    }),
  );
  fs.writeFileSync(
    path.join(dir, "index.ts"),
    [
      'import * as pulumi from "@pulumi/pulumi";',
      'import * as kvmlab from "kvmlab";',
      "",
      'const sandboxInstance = new pulumi.Config("kvmlab").require("sandboxInstance");',
      "// The component and the raw resource of the same name, side by side without a clash.",
      "type Raw = kvmlab.resources.Network;",
      'const net = new kvmlab.Network("pkgnet", { kind: "selfservice", hostDiscovery: { sandboxInstance } });',
      "const raw: Raw = net.network;",
      "export const bridge = net.bridge;",
      "export const vni = raw.vni;",
      "",
    ].join("\n"),
  );
  await npm(["install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"], dir);
  return dir;
}

/**
 * The newest SDK of the peer range. npm's own choice for the range would be the newest whose
 * `engines` accepts the running Node.js (3.249.0 and later want Node.js 22; this machine runs
 * 20), so ask for it by version: it installs with an engine warning.
 */
async function newestSdk(): Promise<string> {
  const out = await npm(["view", `@pulumi/pulumi@${PEER_RANGE}`, "version", "--json"], work, 60_000);
  const versions = JSON.parse(out) as string | string[];
  return Array.isArray(versions) ? versions[versions.length - 1] : versions;
}

function installedSdks(dir: string): string[] {
  const found: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      const full = path.join(d, e.name);
      if (full.endsWith(path.join("@pulumi", "pulumi")) && fs.existsSync(path.join(full, "package.json")))
        found.push(path.relative(dir, full));
      walk(full);
    }
  };
  walk(path.join(dir, "node_modules"));
  return found;
}

function sdkVersion(dir: string): string {
  const p = path.join(dir, "node_modules", "@pulumi", "pulumi", "package.json");
  return (JSON.parse(fs.readFileSync(p, "utf8")) as { version: string }).version;
}

async function typeCheck(dir: string): Promise<void> {
  const r = await runCommand(process.execPath, [TSC, "-p", dir, "--noEmit"], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, `tsc -p ${dir} failed:\n${r.stdout}${r.stderr}`);
}

function run(dir: string, operation: "preview" | "up" | "destroy"): Promise<RunResult> {
  return runEngine({
    operation,
    programDir: dir,
    stack: "pkg",
    stateFile: path.join(dir, "state.json"),
    config: [{ key: "kvmlab:sandboxInstance", value: INSTANCE, secret: false }],
    env: { PULUMI_NODEJS_TRANSPILE_ONLY: "true" },
  });
}

function ok(r: RunResult): RunResult {
  assert.ok(r.ok, `${r.operation} failed:\n${r.errors.join("\n")}`);
  return r;
}

before(async () => {
  status = await startSandbox(INSTANCE, 1);
  work = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-package-"));
  assert.ok(path.relative(REPO, work).startsWith(".."), "the program folder is outside the repository");
  // dist/ is what runs this test, so it is current: pack it without running prepare (tsc) again.
  const out = await npm(["pack", "--ignore-scripts", "--json", "--pack-destination", work], REPO);
  tarball = path.join(work, (JSON.parse(out) as { filename: string }[])[0].filename);
});

after(async () => {
  if (upDone) await run(path.join(work, "oldest"), "destroy").catch(() => undefined);
  if (!KEEP) await stopSandbox(INSTANCE);
  if (work && !KEEP) fs.rmSync(work, { recursive: true, force: true });
});

test("the tarball holds code, types, templates and schema, and no tests", async () => {
  const r = await runCommand("tar", ["tzf", tarball]);
  const files = r.stdout.split("\n").filter((f) => f !== "");
  for (const f of [
    "package/package.json",
    "package/dist/index.js",
    "package/dist/index.d.ts",
    "package/dist/components/network.d.ts",
    "package/dist/provider/packaged.js",
    "package/templates/libvirt/domain.xml.hbs",
    "package/bin/kvmlab.js",
  ])
    assert.ok(files.includes(f), `${f} is in the tarball`);
  assert.ok(
    files.some((f) => f.endsWith("lab.schema.json")),
    "the lab definition schema is in the tarball",
  );
  const unwanted = files.filter((f) => /^package\/(dist\/)?test\//.test(f) || f.endsWith(".map"));
  assert.deepEqual(unwanted, [], "no tests, harness, benchmarks or source maps");
});

test(
  `newest @pulumi/pulumi of ${PEER_RANGE}: one SDK copy, type-checks, previews`,
  { timeout: 600_000 },
  async () => {
    const newest = await newestSdk();
    const dir = await makeProgram("newest", newest);
    assert.deepEqual(installedSdks(dir), [path.join("node_modules", "@pulumi", "pulumi")]);
    assert.equal(sdkVersion(dir), newest);
    console.log(`newest @pulumi/pulumi of ${PEER_RANGE}: ${newest}`);
    await typeCheck(dir);
    const p = ok(await run(dir, "preview"));
    assert.deepEqual(
      p.counts,
      { create: 2, same: 0, update: 0, replace: 0, delete: 0 },
      "component + network",
    );
  },
);

test(
  `oldest @pulumi/pulumi (${OLDEST_SDK}): type-checks, preview, up, small state, destroy`,
  { timeout: 600_000 },
  async () => {
    const dir = await makeProgram("oldest", OLDEST_SDK);
    assert.deepEqual(installedSdks(dir), [path.join("node_modules", "@pulumi", "pulumi")]);
    assert.equal(sdkVersion(dir), OLDEST_SDK);
    assert.ok(
      fs.existsSync(path.join(dir, "node_modules", "kvmlab", "dist", "index.js")),
      "kvmlab installed",
    );
    assert.ok(!fs.lstatSync(path.join(dir, "node_modules", "kvmlab")).isSymbolicLink(), "a copy, not a link");
    await typeCheck(dir);

    ok(await run(dir, "preview"));
    const up = ok(await run(dir, "up"));
    upDone = true;
    assert.equal(up.counts.create, 2);
    const bridge = up.outputs.bridge;
    assert.match(String(bridge), /^kvlb-[0-9a-f]{8}$/);
    const host = status.hosts[0].name;
    assert.equal(
      (await sshExec(status, host, `ip link show dev ${String(bridge)}`)).code,
      0,
      "bridge on host",
    );

    const state = JSON.parse(fs.readFileSync(path.join(dir, "state.json"), "utf8")) as {
      resources: {
        custom: boolean;
        type: string;
        inputs: Record<string, unknown>;
        outputs: Record<string, unknown>;
      }[];
    };
    const network = state.resources.filter((r) => r.custom);
    assert.match(network[0]?.type ?? "", /^pulumi-nodejs:dynamic/);
    assert.equal(network.length, 1, "one dynamic resource");
    const provider = String(network[0].outputs.__provider ?? network[0].inputs.__provider);
    assert.match(provider, /require\("kvmlab\/dist\/provider\/network\.js"\)/, "provider is a require");
    assert.doesNotMatch(provider, /networkApplyStep/, "no provider code by value");
    const bytes = Buffer.byteLength(JSON.stringify(network[0]));
    console.log(`state of the Network resource: ${bytes} bytes (provider text ${provider.length})`);
    assert.ok(bytes < MAX_RESOURCE_STATE_BYTES, `${bytes} bytes of state for one Network`);

    ok(await run(dir, "destroy"));
    upDone = false;
    assert.notEqual(
      (await sshExec(status, host, `ip link show dev ${String(bridge)}`)).code,
      0,
      "bridge gone",
    );
    const after = JSON.parse(fs.readFileSync(path.join(dir, "state.json"), "utf8")) as {
      resources: unknown[];
    };
    assert.deepEqual(after.resources, []);
  },
);
