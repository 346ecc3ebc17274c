import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { main as render } from "../../../cli/render";
import { main as validate } from "../../../cli/validate";
import { repoRoot, tempDir } from "../templates/support";
import { capture } from "../../support/console";

const threeTier = () => path.join(repoRoot(), "stacks", "three-tier.yaml");

function listFiles(dir: string): string[] {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath ?? e.path, e.name)))
    .sort();
}

test("kvmlab validate: exit 0 for three-tier, summary on stdout", async () => {
  const r = await capture(() => validate([threeTier()]));
  assert.equal(r.code, 0, r.err);
  assert.match(
    r.out,
    /valid lab "three-tier": 2 hosts, 5 networks, 2 servers \+ 4 autoscale members, 2 load balancers/,
  );
});

test("kvmlab validate: exit 1 with every problem as file:line:col path, message and fix", async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const file = path.join(dir, "lab.yaml");
  fs.writeFileSync(
    file,
    "name: x\nflavors:\n  - { name: f, vcpus: 0, ramMiB: 128, diskGiB: 1 }\nservers:\n  - name: s\n    image: nope\n    flavor: f\n    networks: [{ subnet: nowhere }]\n",
  );
  const r = await capture(() => validate([file]));
  assert.equal(r.code, 1);
  assert.match(
    r.err,
    new RegExp(`${file.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}:3:\\d+  flavors\\[0\\]\\.vcpus: `),
  );
  assert.match(
    r.err,
    /:6:12 {2}servers\[0\]\.image: unknown image "nope"\n {4}fix: define the image first or correct the name\n/,
  );
  assert.match(r.err, /:8:\d+ {2}servers\[0\]\.networks\[0\]\.subnet: unknown subnet "nowhere"/);
  assert.match(r.err, /3 problems$/);
  const json = await capture(() => validate([file, "--json"]));
  assert.equal(json.code, 1);
  assert.deepEqual(
    JSON.parse(json.out).map((i: { path: string }) => i.path),
    ["flavors[0].vcpus", "servers[0].image", "servers[0].networks[0].subnet"],
  );
});

test("kvmlab validate: usage errors exit 2; unreadable file exits 1", async () => {
  assert.equal((await capture(() => validate([]))).code, 2);
  assert.equal((await capture(() => validate(["a", "b"]))).code, 2);
  assert.equal((await capture(() => validate(["--bogus", "a"]))).code, 2);
  const missing = await capture(() => validate(["/nonexistent/lab.yaml"]));
  assert.equal(missing.code, 1);
  assert.match(missing.err, /cannot read \/nonexistent\/lab\.yaml: no such file; check the path/);
  assert.equal(missing.err.split("\n").length, 1, "one line");
});

test("kvmlab render: writes one file per object into DIR only, byte-identical on re-render", async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const out = path.join(dir, "out");
  const first = await capture(() => render([threeTier(), "--out", out, "--domain-type", "qemu"]));
  assert.equal(first.code, 0, first.err);
  assert.match(first.out, /wrote 53 files/);
  assert.match(first.out, /allocated deterministically/);
  const files = listFiles(out);
  assert.ok(files.includes("servers/web-0.xml") && files.includes("servers/web-0/user-data"));
  assert.ok(
    files.includes("loadbalancers/web-lb/haproxy.cfg") && files.includes("subnets/web-subnet/dnsmasq.conf"),
  );
  assert.deepEqual(fs.readdirSync(dir), ["out"], "nothing written beside DIR");
  const snapshot = new Map(files.map((f) => [f, fs.readFileSync(path.join(out, f), "utf8")]));
  assert.match(snapshot.get("servers/web-0.xml")!, /<domain type='qemu'>/);

  const again = await capture(() => render([threeTier(), "--out", out, "--domain-type", "qemu"]));
  assert.equal(again.code, 0, again.err);
  assert.deepEqual(listFiles(out), files);
  for (const f of files) assert.equal(fs.readFileSync(path.join(out, f), "utf8"), snapshot.get(f), f);
});

test("kvmlab render: refuses a non-empty foreign folder and an invalid lab", async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  fs.writeFileSync(path.join(dir, "precious.txt"), "keep me");
  const r = await capture(() => render([threeTier(), "--out", dir]));
  assert.equal(r.code, 1);
  assert.match(r.err, /not empty and is not an earlier render's output/);
  assert.deepEqual(fs.readdirSync(dir), ["precious.txt"]);

  const bad = path.join(dir, "bad.yaml");
  fs.writeFileSync(bad, "name: x\nservers: 3\n");
  const out = path.join(dir, "never");
  const r2 = await capture(() => render([bad, "--out", out]));
  assert.equal(r2.code, 1);
  assert.match(r2.err, /nothing rendered/);
  assert.ok(!fs.existsSync(out));
  const noOut = await capture(() => render([threeTier()]));
  assert.equal(noOut.code, 2, "--out is required");
  assert.match(
    noOut.err,
    /^kvmlab render: missing --out DIR; name the folder to write into, e.g. --out \/tmp\/three-tier\n/,
  );
  assert.equal((await capture(() => render([threeTier(), "--out", out, "--domain-type", "xen"]))).code, 2);
});

test("kvmlab render: never writes through a symbolic link inside DIR", async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const out = path.join(dir, "out");
  const elsewhere = path.join(dir, "elsewhere");
  fs.mkdirSync(elsewhere);
  fs.mkdirSync(out);
  fs.symlinkSync(elsewhere, path.join(out, "servers"));
  // An empty folder but for a link: no marker, so it is refused as foreign …
  const r = await capture(() => render([threeTier(), "--out", out]));
  assert.equal(r.code, 1);
  // … and after an earlier render whose servers/ was replaced by a link, the link is refused.
  fs.rmSync(path.join(out, "servers"));
  assert.equal((await capture(() => render([threeTier(), "--out", out]))).code, 0);
  fs.rmSync(path.join(out, "servers"), { recursive: true });
  fs.symlinkSync(elsewhere, path.join(out, "servers"));
  const linked = await capture(() => render([threeTier(), "--out", out]));
  assert.equal(linked.code, 1);
  assert.match(
    linked.err,
    /^kvmlab render: refusing to write servers\/\S+: servers in \S+ is a symbolic link/,
  );
  assert.deepEqual(fs.readdirSync(elsewhere), [], "nothing written through the link");
});
