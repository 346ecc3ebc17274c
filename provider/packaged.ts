/**
 * What a dynamic resource hands to `pulumi.dynamic.Resource`, so that each resource's state holds
 * a `require` of the installed kvmlab instead of a copy of kvmlab's code.
 *
 * Pulumi serializes the provider object's closure into every resource's state (`__provider`).
 * A module the closure captures is written as `require("<path under node_modules>")` when it was
 * loaded from a node_modules folder and by value otherwise, with every function it reaches. A
 * provider's methods call functions of their own module, which TypeScript compiles to local
 * bindings, so even from node_modules/kvmlab every resource carried its provider module's code
 * (13-28 KB of text per resource, twice in state: inputs and outputs).
 *
 * When the provider object is exported by a module loaded from a node_modules folder (kvmlab
 * installed as a package), {@link packagedProvider} returns a delegate whose methods only look the
 * provider up on that module's exports, so the serialized text is
 * `require("kvmlab/dist/provider/network.js")` and a few lines.
 *
 * A link (this repository's own `node_modules/kvmlab -> ..`, a `file:` dependency without
 * install-links, `npm link`) makes node load kvmlab from its real path, outside node_modules, so
 * Pulumi would serialize the provider by value: 55-400 KB of text per resource and 1-3 s of the
 * program's start per provider type (the closure serializer walks every function the provider
 * reaches). When the program's directory resolves the name `kvmlab` to this very package, the
 * delegate names the module by that name instead (`require("kvmlab/dist/provider/<file>.js")`,
 * resolved by the provider plugin, which runs in the program's directory, exactly as for an
 * installed kvmlab). Anywhere else (kvmlab reached by a relative path, a program whose
 * `kvmlab` is another copy) it returns the provider itself, serialized by value.
 *
 * The state then names the module path and the export: a later kvmlab must keep both, or the
 * resources it recorded cannot be refreshed, updated or deleted (docs/package.md).
 */
import * as fs from "node:fs";
import * as path from "node:path";

const METHODS = ["check", "diff", "create", "read", "update", "delete"] as const;
const chosen = new WeakMap<object, object>();

/** The provider to serialize: a delegate to the installed package's module, or `provider` itself. */
export function packagedProvider<T extends object>(provider: T): T {
  let result = chosen.get(provider);
  if (result === undefined) {
    const home = definingModule(provider);
    const linked = home ? undefined : linkedModule(provider, process.cwd());
    if (home) {
      // The closure captures the module object, which Pulumi writes as a require of its path.
      const mod = home.exports;
      result = delegate(() => mod, home.key, home.name, provider);
    } else if (linked) {
      // `require` is the serialized code's own (Pulumi never captures it): the provider plugin
      // resolves `spec` from the program's directory.
      const spec = linked.spec;
      result = delegate(() => require(spec) as Record<string, unknown>, linked.key, spec, provider);
    } else result = provider;
    chosen.set(provider, result);
  }
  return result as T;
}

/** The name under which `exports` holds `provider` as its own value (not a barrel's getter). */
function exportKey(exports: unknown, provider: object): string | undefined {
  if ((typeof exports !== "object" && typeof exports !== "function") || exports === null) return undefined;
  for (const key of Object.getOwnPropertyNames(exports)) {
    const d = Object.getOwnPropertyDescriptor(exports, key);
    if (d && "value" in d && d.value === provider) return key;
  }
  return undefined;
}

/**
 * The module under node_modules/ whose own (non-getter) export `key` is `provider`, with its name
 * as a require from the program would give it (the path after the last node_modules/).
 */
function definingModule(
  provider: object,
): { exports: Record<string, unknown>; key: string; name: string } | undefined {
  const inNodeModules = `${path.sep}node_modules${path.sep}`;
  for (const [file, mod] of Object.entries(require.cache)) {
    if (!mod || !file.includes(inNodeModules)) continue;
    const key = exportKey(mod.exports, provider);
    if (key !== undefined) {
      const name = file
        .slice(file.lastIndexOf(inNodeModules) + inNodeModules.length)
        .split(path.sep)
        .join("/");
      return { exports: mod.exports as Record<string, unknown>, key, name };
    }
  }
  return undefined;
}

/**
 * An object with `provider`'s methods, each calling `lookup()[key][method]`. Its closure captures
 * `lookup` (and what it captures: the module object, or the module's name) and three strings.
 * The serialized text runs later, in the provider plugin, with whatever kvmlab the program has
 * then: a module it cannot load, or an export it no longer has (renamed by an upgrade), is said
 * with the module, the export and the fix, not as a bare TypeError.
 */
function delegate(
  lookup: () => Record<string, unknown>,
  key: string,
  where: string,
  provider: object,
): object {
  // One function the methods share (the serializer writes a captured function once).
  const call = (method: string, args: unknown[]): unknown => {
    let mod: Record<string, unknown>;
    try {
      mod = lookup();
    } catch (err) {
      throw new Error(
        `kvmlab: cannot load ${where}: ${(err as Error).message}. Fix: npm install kvmlab in the program's folder (in kvmlab's repository: npm run prepare)`,
        { cause: err },
      );
    }
    const target = mod[key] as Record<string, unknown> | undefined;
    const fn = target?.[method];
    if (typeof fn !== "function")
      throw new Error(
        `kvmlab: ${where} has no ${key}.${method} (renamed since this state was written). Fix: install the kvmlab that wrote it`,
      );
    return (fn as (...a: unknown[]) => unknown).apply(target, args);
  };
  const d: Record<string, unknown> = {};
  for (const method of METHODS) {
    if (typeof (provider as Record<string, unknown>)[method] !== "function") continue;
    d[method] = function (...args: unknown[]): unknown {
      return call(method, args);
    };
  }
  return d;
}

/**
 * The provider's defining module as a name the program resolves, `kvmlab/dist/…/<file>.js`, when
 * `require.resolve("kvmlab")` from `cwd` is this package (same real path of package.json) and the
 * module is one of its compiled files; else undefined (serialize by value).
 */
export function linkedModule(provider: object, cwd: string): { spec: string; key: string } | undefined {
  // This file is dist/provider/packaged.js: the package root is two folders up. Run any other
  // way (from the TypeScript sources, no dist/), nothing matches and the provider goes by value.
  const root = path.resolve(__dirname, "..", "..");
  let providers: string;
  try {
    const resolved = fs.realpathSync(require.resolve("kvmlab/package.json", { paths: [cwd] }));
    if (resolved !== fs.realpathSync(path.join(root, "package.json"))) return undefined;
    providers = fs.realpathSync(path.join(root, "dist", "provider"));
  } catch {
    return undefined;
  }
  // Only the provider modules (dist/provider/ and its folders): a re-export elsewhere in dist/
  // (an index, a test) must not name the module the state will require; a dist/ that is itself
  // a link elsewhere would give a wrong name.
  if (providers !== __dirname) return undefined;
  for (const [file, mod] of Object.entries(require.cache)) {
    if (!mod || !file.startsWith(`${providers}${path.sep}`) || !file.endsWith(".js")) continue;
    const key = exportKey(mod.exports, provider);
    if (key !== undefined) {
      const rel = path.relative(providers, file).split(path.sep).join("/");
      return { spec: `kvmlab/dist/provider/${rel}`, key };
    }
  }
  return undefined;
}
