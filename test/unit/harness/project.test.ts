import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { configEnv, loadProject } from "../../harness/engine/project";

function project(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-project-"));
  // Its own package.json, so the default entry "." stays inside the folder.
  fs.writeFileSync(path.join(dir, "package.json"), "{}");
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  return dir;
}

test("config comes from Pulumi.yaml, then Pulumi.<stack>.yaml, then flags; keys get the project namespace", () => {
  const dir = project({
    "Pulumi.yaml":
      "name: demo\nruntime: nodejs\nconfig:\n  size: 1\n  region:\n    default: eu\n  token:\n    value: t0\n    secret: true\n",
    "Pulumi.dev.yaml": "config:\n  demo:size: 2\n  other:flag: true\n  demo:list: [1, 2]\n",
  });
  try {
    const p = loadProject(dir, "dev", [
      { key: "region", value: "us", secret: false },
      { key: "pw", value: "hunter2", secret: true },
    ]);
    assert.equal(p.name, "demo");
    assert.equal(p.typescript, true, "the language host's default");
    assert.equal(p.entry, ".");
    const env = configEnv(p);
    assert.deepEqual(JSON.parse(env.PULUMI_CONFIG), {
      "demo:size": "2",
      "demo:region": "us",
      "demo:token": "t0",
      "other:flag": "true",
      "demo:list": "[1,2]",
      "demo:pw": "hunter2",
    });
    assert.deepEqual(JSON.parse(env.PULUMI_CONFIG_SECRET_KEYS).sort(), ["demo:pw", "demo:token"]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("fails on secure: values, other runtimes, a missing main, and an entry that would run another package", () => {
  const secure = project({
    "Pulumi.yaml": "name: d\nruntime: nodejs\n",
    "Pulumi.dev.yaml": "config:\n  d:pw:\n    secure: AAAB\n",
  });
  const python = project({ "Pulumi.yaml": "name: d\nruntime: python\n" });
  const noMain = project({ "Pulumi.yaml": "name: d\nruntime: nodejs\nmain: bin/index.js\n" });
  const nested = fs.mkdtempSync(path.join(os.tmpdir(), "kvmlab-project-"));
  fs.writeFileSync(path.join(nested, "package.json"), JSON.stringify({ main: "dist/index.js" }));
  fs.mkdirSync(path.join(nested, "example"));
  fs.writeFileSync(path.join(nested, "example", "Pulumi.yaml"), "name: ex\nruntime: nodejs\n");
  try {
    assert.throws(() => loadProject(secure, "dev", []), /"d:pw" is a "secure:" value .* --secret d:pw=VALUE/);
    assert.throws(() => loadProject(python, "dev", []), /runtime "python" is not supported/);
    assert.throws(() => loadProject(noMain, "dev", []), /main "bin\/index.js" does not exist/);
    assert.throws(() => loadProject(path.join(nested, "example"), "dev", []), /set "main: index.ts"/);
    fs.appendFileSync(path.join(nested, "example", "Pulumi.yaml"), "main: index.ts\n");
    fs.writeFileSync(path.join(nested, "example", "index.ts"), "");
    assert.equal(loadProject(path.join(nested, "example"), "dev", []).entry, "index.ts");
  } finally {
    for (const d of [secure, python, noMain, nested]) fs.rmSync(d, { recursive: true, force: true });
  }
});
