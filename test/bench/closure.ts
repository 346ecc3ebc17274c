/**
 * Closure size: the text Pulumi stores as `__provider` in each dynamic resource's state (once in
 * the inputs, once in the outputs), for every kvmlab provider, serialized exactly as
 * `pulumi.dynamic.Resource` does (`serializeFunction(() => provider, { allowSecrets: true })`
 * on what the resource class hands over), and the time that took, three ways:
 *
 *   by value      this repository's dist/ from a folder where `kvmlab` does not resolve (a
 *                 program that reaches kvmlab by a relative path): the provider's code
 *   linked        this repository's dist/ from the repository itself, as the examples and tests
 *                 load it (node follows the node_modules/kvmlab link to the real path): a
 *                 require of kvmlab/dist/provider/<name>.js (provider/packaged.ts, linkedModule)
 *   package       `npm pack` installed into a program in a temporary folder: a require of
 *                 kvmlab/dist/provider/<name>.js (provider/packaged.ts)
 *
 * The time of the first provider includes the serializer's own start (it loads TypeScript).
 *
 *   npm run build && npm run bench:closure
 *
 * Needs the npm registry (or npm's cache) for the program's install; no sandbox, no host.
 * Figures, not assertions: test/lifecycle/package.test.ts bounds the real state of a resource.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const REPO = path.resolve(__dirname, "..", "..", "..");
const PROVIDERS = [
  ["network", "networkProvider"],
  ["subnet", "subnetProvider"],
  ["image", "imageProvider"],
  ["flavor", "flavorProvider"],
  ["keypair", "keypairProvider"],
  ["server", "serverProvider"],
] as const;

/**
 * Run as a separate node process from `cwd` (the closure serializer names modules relative to
 * the working directory): prints {provider: bytes} for the kvmlab found at `kvmlabDir`.
 */
const MEASURE = `
const path = require("path");
const [kvmlabDir, list] = [process.argv[1], JSON.parse(process.argv[2])];
const pulumi = require(require.resolve("@pulumi/pulumi", { paths: [kvmlabDir] }));
const { packagedProvider } = require(path.join(kvmlabDir, "dist/provider/packaged.js"));
(async () => {
  const out = {};
  for (const [file, name] of list) {
    const provider = require(path.join(kvmlabDir, "dist/provider", file + ".js"))[name];
    const t = Date.now();
    const handed = packagedProvider(provider);
    const sf = await pulumi.runtime.serializeFunction(() => handed, { allowSecrets: true });
    out[name] = [Buffer.byteLength(sf.text), Date.now() - t];
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
`;

function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0)
    throw new Error(`${cmd} ${args.join(" ")} in ${cwd} failed (${r.status}):\n${r.stderr.slice(-4000)}`);
  return r.stdout;
}

function measure(kvmlabDir: string, cwd: string): Record<string, [number, number]> {
  const out = run(process.execPath, ["-e", MEASURE, kvmlabDir, JSON.stringify(PROVIDERS)], cwd);
  return JSON.parse(out.trim().split("\n").pop() ?? "{}") as Record<string, [number, number]>;
}

function main(): void {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-closure-"));
  try {
    const packed = JSON.parse(
      run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", work], REPO),
    ) as { filename: string }[];
    const sdk = (
      JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8")) as {
        devDependencies: Record<string, string>;
      }
    ).devDependencies["@pulumi/pulumi"];
    const program = path.join(work, "program");
    fs.mkdirSync(program);
    fs.writeFileSync(
      path.join(program, "package.json"),
      JSON.stringify({
        name: "closure-bench",
        private: true,
        dependencies: { "@pulumi/pulumi": sdk, kvmlab: `file:${path.join(work, packed[0].filename)}` },
      }),
    );
    run("npm", ["install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"], program);

    const byValue = measure(REPO, work);
    const linked = measure(REPO, REPO);
    const pkg = measure(path.join(program, "node_modules", "kvmlab"), program);
    console.log(
      `serialized provider per resource (bytes, stored twice in state / ms to serialize), @pulumi/pulumi ${sdk}`,
    );
    const cell = (v: [number, number]) => `${v[0]} / ${v[1]}`.padStart(16);
    console.log(
      `${"provider".padEnd(17)}${"by value".padStart(16)}${"linked".padStart(16)}${"package".padStart(16)}`,
    );
    for (const [, name] of PROVIDERS)
      console.log(`${name.padEnd(17)}${cell(byValue[name])}${cell(linked[name])}${cell(pkg[name])}`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main();
