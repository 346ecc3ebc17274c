/**
 * Test helpers shared by the template, stacks and CLI tests: golden files and the real
 * validators (virt-xml-validate, haproxy -c, dnsmasq --test). A missing validator fails the
 * test: CI installs them, and a skipped check would prove nothing.
 */
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

/** The repository root (the folder with package.json), found from the compiled test file. */
export function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, "package.json"))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${__dirname}`);
    dir = parent;
  }
  return dir;
}

/**
 * Compares `actual` with test/golden/<relPath>. With UPDATE_GOLDEN=1 the file is (re)written
 * instead; review the diff before committing it.
 */
export function expectGolden(relPath: string, actual: string): void {
  const file = path.join(repoRoot(), "test", "golden", relPath);
  if (process.env.UPDATE_GOLDEN === "1") {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, actual);
    return;
  }
  assert.ok(fs.existsSync(file), `golden file ${relPath} is missing; run with UPDATE_GOLDEN=1 to create it`);
  assert.equal(
    actual,
    fs.readFileSync(file, "utf8"),
    `output differs from golden ${relPath} (UPDATE_GOLDEN=1 rewrites it)`,
  );
}

/** A fresh temporary folder, removed by the returned cleanup function. */
export function tempDir(prefix = "kvmlab-test-"): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

interface ToolResult {
  ok: boolean;
  output: string;
}

function runTool(cmd: string, args: string[]): ToolResult {
  const result = spawnSync(cmd, args, { encoding: "utf8", timeout: 30_000 });
  if (result.error !== undefined) {
    assert.fail(`${cmd} could not run (${result.error.message}); install it (see .ci/run)`);
  }
  return { ok: result.status === 0, output: `${result.stdout}${result.stderr}` };
}

function withFile<T>(name: string, text: string, fn: (file: string) => T): T {
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, name);
    fs.writeFileSync(file, text);
    return fn(file);
  } finally {
    cleanup();
  }
}

/** `virt-xml-validate FILE domain`; also fails when xmllint (libxml2-utils) is missing. */
export function virtXmlValidate(xml: string): ToolResult {
  return withFile("domain.xml", xml, (file) => {
    const r = runTool("virt-xml-validate", [file, "domain"]);
    return { ok: r.ok && /validates/.test(r.output), output: r.output };
  });
}

/**
 * `haproxy -c -f FILE`: valid and free of warnings, except the one about a missing server-state
 * file (it exists only on the load balancer's host, written before the first start).
 */
export function haproxyCheck(cfg: string): ToolResult {
  return withFile("haproxy.cfg", cfg, (file) => {
    const r = runTool("haproxy", ["-c", "-f", file]);
    const rest = r.output
      .split("\n")
      .filter((l) => !/Can't open global server state file/.test(l))
      .join("\n");
    return { ok: r.ok && !/\[WARNING\]|\[ALERT\]/.test(rest), output: r.output };
  });
}

/** `dnsmasq --test --conf-file=FILE` (syntax check only; starts nothing). */
export function dnsmasqTest(conf: string): ToolResult {
  return withFile("dnsmasq.conf", conf, (file) => runTool("dnsmasq", ["--test", `--conf-file=${file}`]));
}

export function assertValid(result: ToolResult, what: string): void {
  assert.ok(result.ok, `${what} rejected by its validator:\n${result.output}`);
}

/** Asserts that `fn` throws a FieldError whose field equals `field`. */
export function assertFieldError(fn: () => unknown, field: string, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof Error, "expected an Error");
    assert.equal((err as { field?: string }).field, field, `wrong field in: ${err.message}`);
    if (message !== undefined) assert.match(err.message, message);
    return true;
  });
}

/** Values that could break out of an XML, HAProxy, dnsmasq, YAML or shell context. */
export const INJECTIONS = [
  "web\nglobal",
  "web'",
  'web"',
  "web<x>",
  "web]]>",
  "web;reboot",
  "web$(id)",
  "web`id`",
  "web 1",
  "web#c",
  "web\\",
  "",
];

/**
 * `keepalived -t -f FILE` (config test only; starts nothing). keepalived also requires the VRRP
 * interface and the check script to exist, so it runs in a fresh network namespace (`unshare -n`,
 * gone when the command ends) holding a veth of that name, with a stand-in check script.
 */
export function keepalivedCheck(
  conf: string,
  iface: string,
  checkScript: string,
  notifyScript?: string,
): ToolResult {
  const { dir, cleanup } = tempDir();
  try {
    const script = path.join(dir, "check.sh");
    fs.writeFileSync(script, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    fs.chmodSync(dir, 0o755);
    const file = path.join(dir, "keepalived.conf");
    let text = conf.replaceAll(checkScript, script);
    if (notifyScript !== undefined) {
      const notify = path.join(dir, "notify.sh");
      fs.writeFileSync(notify, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
      text = text.replaceAll(notifyScript, notify);
    }
    fs.writeFileSync(file, text);
    const r = runTool("unshare", [
      "-n",
      "sh",
      "-c",
      'ip link add "$1" type veth peer name kvlt-peer && ip link set "$1" up && exec keepalived -t -l -n -f "$2"',
      "sh",
      iface,
      file,
    ]);
    return { ok: r.ok && !/WARNING|Disabling|Unknown|ignoring/i.test(r.output), output: r.output };
  } finally {
    cleanup();
  }
}
