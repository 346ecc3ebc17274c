/**
 * Reads a Pulumi project the way the CLI does: Pulumi.yaml (name, runtime, main, project config)
 * and Pulumi.<stack>.yaml (stack config), plus --config / --secret flags.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as YAML from "yaml";

export interface ConfigValue {
  value: string;
  secret: boolean;
}

export interface Project {
  name: string;
  /** Folder holding Pulumi.yaml (the CLI's root directory). */
  rootDir: string;
  /** Folder the program runs in (`main` when it names a folder, else rootDir or main's folder). */
  programDir: string;
  /** Entry point passed to cmd/run: "." or a file relative to programDir. */
  entry: string;
  typescript: boolean;
  nodeargs: string[];
  /** Fully qualified keys (`ns:key`). */
  config: Map<string, ConfigValue>;
}

export interface ConfigFlag {
  key: string;
  value: string;
  secret: boolean;
}

type Yaml = Record<string, unknown>;

function readYaml(file: string): Yaml {
  const doc = YAML.parse(fs.readFileSync(file, "utf8")) as unknown;
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== "object" || Array.isArray(doc))
    throw new Error(`${file}: expected a mapping at the top level`);
  return doc as Yaml;
}

function configText(v: unknown): string {
  return typeof v === "string" ? v : JSON.stringify(v);
}

export function loadProject(dir: string, stack: string, flags: ConfigFlag[]): Project {
  const rootDir = path.resolve(dir);
  const file = ["Pulumi.yaml", "Pulumi.yml"].map((f) => path.join(rootDir, f)).find((f) => fs.existsSync(f));
  if (!file) throw new Error(`${rootDir}: no Pulumi.yaml (is this a Pulumi program folder?)`);
  const doc = readYaml(file);
  const name = doc.name;
  if (typeof name !== "string" || name === "") throw new Error(`${file}: "name" is required`);
  const runtime = doc.runtime;
  const runtimeName = typeof runtime === "string" ? runtime : (runtime as Yaml | undefined)?.name;
  if (runtimeName !== "nodejs") {
    throw new Error(
      `${file}: runtime "${String(runtimeName)}" is not supported by the engine harness (only nodejs)`,
    );
  }
  const options =
    (typeof runtime === "object" && runtime !== null
      ? ((runtime as Yaml).options as Yaml | undefined)
      : undefined) ?? {};
  // The Node.js language host defaults `typescript` to true (sdk/nodejs/cmd/pulumi-language-nodejs).
  const typescript =
    options.typescript === undefined ? true : options.typescript === true || options.typescript === "true";
  const nodeargs = typeof options.nodeargs === "string" ? options.nodeargs.split(/\s+/).filter(Boolean) : [];

  let programDir = rootDir;
  let entry = ".";
  if (typeof doc.main === "string" && doc.main !== "") {
    const main = path.resolve(rootDir, doc.main);
    if (!fs.existsSync(main)) throw new Error(`${file}: main "${doc.main}" does not exist (${main})`);
    if (fs.statSync(main).isDirectory()) programDir = main;
    else entry = path.relative(programDir, main);
  }

  if (entry === ".") checkDefaultEntry(file, programDir);

  const config = new Map<string, ConfigValue>();
  const qualify = (key: string): string => (key.includes(":") ? key : `${name}:${key}`);
  // Project-level config: `key: value` or `key: {default|value, secret}` (Pulumi.yaml "config" block).
  for (const [k, v] of Object.entries((doc.config as Yaml | undefined) ?? {})) {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      const spec = v as Yaml;
      const val = spec.value ?? spec.default;
      if (val !== undefined) config.set(qualify(k), { value: configText(val), secret: spec.secret === true });
    } else {
      config.set(qualify(k), { value: configText(v), secret: false });
    }
  }
  const stackFile = path.join(rootDir, `Pulumi.${stack}.yaml`);
  if (fs.existsSync(stackFile)) {
    const sdoc = readYaml(stackFile);
    for (const [k, v] of Object.entries((sdoc.config as Yaml | undefined) ?? {})) {
      if (v !== null && typeof v === "object" && "secure" in (v as Yaml)) {
        throw new Error(
          `${stackFile}: "${k}" is a "secure:" value encrypted by the Pulumi CLI; the engine harness cannot decrypt it. Pass it with --secret ${k}=VALUE instead`,
        );
      }
      config.set(qualify(k), { value: configText(v), secret: false });
    }
    for (const unsupported of ["secretsprovider", "encryptedkey", "environment"]) {
      if (unsupported in sdoc)
        throw new Error(`${stackFile}: "${unsupported}" is not supported by the engine harness`);
    }
  }
  for (const f of flags) config.set(qualify(f.key), { value: f.value, secret: f.secret });
  return { name, rootDir, programDir, entry, typescript, nodeargs, config };
}

/** PULUMI_CONFIG and PULUMI_CONFIG_SECRET_KEYS as the language host passes them to cmd/run. */
export function configEnv(p: Project): { PULUMI_CONFIG: string; PULUMI_CONFIG_SECRET_KEYS: string } {
  const cfg: Record<string, string> = {};
  const secrets: string[] = [];
  for (const [k, v] of p.config) {
    cfg[k] = v.value;
    if (v.secret) secrets.push(k);
  }
  return { PULUMI_CONFIG: JSON.stringify(cfg), PULUMI_CONFIG_SECRET_KEYS: JSON.stringify(secrets) };
}

/**
 * With the default entry ".", cmd/run takes the entry point from the nearest package.json
 * (npmPackageRootFromProgramPath). For a program folder inside another package, such as an
 * example in this repository, that is the outer package's `main` — a different program. The CLI
 * would run it silently; the harness refuses.
 */
function checkDefaultEntry(pulumiYaml: string, programDir: string): void {
  for (let dir = programDir; ; dir = path.dirname(dir)) {
    const pkg = path.join(dir, "package.json");
    if (fs.existsSync(pkg)) {
      if (dir === programDir) return;
      const doc = JSON.parse(fs.readFileSync(pkg, "utf8")) as { main?: unknown; exports?: unknown };
      if (doc.main !== undefined || doc.exports !== undefined) {
        throw new Error(
          `${pulumiYaml}: no "main", so cmd/run would take the entry point from ${pkg} (main/exports of another package) instead of this program; set "main: index.ts" (or index.js) in Pulumi.yaml, or give the program folder its own package.json`,
        );
      }
      return;
    }
    if (path.dirname(dir) === dir) return;
  }
}
