/**
 * A server's UUID has an owner (issue 15, review S1). The instance folder is keyed by the UUID
 * (instances/<uuid>/), so a server of another stack given the same UUID (an explicit `uuid`, or
 * the components' one, which anybody can compute from project, stack and name) must never write
 * into that folder or remove it. Before the fix it was placed on the first server's host, wrote
 * its seed and domain.xml into the first's folder, failed at `virsh define` and its cleanup
 * `rm -rf`ed the first's folder, disk included.
 *
 * The provider runs against a fake host whose owner markers, records and instance folders are
 * real files: the steps that only touch kvmlab's state (markers, records, uploads, the instance
 * folder, define/delete) run in a local bash with /var/lib/kvmlab and /etc/libvirt/qemu (and
 * /run/libvirt/qemu, libvirt's status files of running domains) mapped to
 * a temporary folder, virsh, qemu-img, genisoimage and chown shadowed by shell functions (virsh
 * keeps domain name → UUID in files and refuses a second name for a UUID, as libvirt does).
 * Every other step is answered by its label.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { checkServerInputs, ownerOf, serverProvider, type StepResult } from "../../../provider";
import { type ServerInputs, type ServerOutputs } from "../../../provider/server";
import { deleteStep, materializeSteps } from "../../../provider/server/steps";
import { diskServerRaw, testHost } from "./fixtures";
import { fakeHost, serverOutputsOn, type Fake } from "./fakeHost";

const hv1 = testHost("hv1", 1);
const provider = serverProvider as unknown as Required<typeof serverProvider>;

/** Checked inputs of server `serverName` of `stack`, its UUID derived from `uuidSeed`. */
function server(stack: string, serverName: string, uuidSeed: string): ServerInputs {
  const { inputs, failures } = checkServerInputs({
    ...diskServerRaw(hv1, { stack, serverName, uuidSeed }),
    owner: ownerOf({ pulumiProject: "lab", stack, type: "Server", name: serverName }),
  });
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

/** Shell functions standing in for the host's tools ($VS: domain name → UUID files, $ETC: definitions). */
const TOOLS = String.raw`
chown() { :; }
genisoimage() { while [ $# -gt 0 ]; do if [ "$1" = -output ]; then echo iso > "$2"; shift; fi; shift; done; }
qemu-img() {
  case "$1" in
    create) for a; do case "$a" in */instances/*/disk.qcow2) echo overlay > "$a" ;; esac; done ;;
    info) echo '"virtual-size": 1073741824' ;;
  esac
  return 0
}
virsh() {
  while [ $# -gt 0 ]; do case "$1" in -c) shift 2 ;; -*) shift ;; *) break ;; esac; done
  c=$1; shift
  case "$c" in
    list) return 0 ;;
    domuuid) [ -f "$VS/$1" ] || { echo "error: failed to get domain '$1'" >&2; return 1; }; cat "$VS/$1" ;;
    domname) for f in "$VS"/*; do if [ -f "$f" ] && [ "$(cat "$f")" = "$1" ]; then basename "$f"; return 0; fi; done; echo "error: failed to get domain '$1'" >&2; return 1 ;;
    domstate) [ -f "$VS/$1" ] || return 1; echo "shut off" ;;
    define)
      n=$(grep -o '<name>[^<]*</name>' "$1" | head -n1 | sed 's:</*name>::g')
      u=$(grep -o '<uuid>[^<]*</uuid>' "$1" | head -n1 | sed 's:</*uuid>::g')
      for f in "$VS"/*; do if [ -f "$f" ] && [ "$(cat "$f")" = "$u" ] && [ "$(basename "$f")" != "$n" ]; then echo "error: operation failed: domain '$(basename "$f")' already exists with uuid $u" >&2; return 1; fi; done
      echo "$u" > "$VS/$n"; cp "$1" "$ETC/$n.xml" ;;
    undefine) rm -f "$VS/$1" "$ETC/$1.xml" ;;
    *) return 0 ;;
  esac
}
`;

/** Steps run in the local bash (they touch only kvmlab's state, mapped to the temporary root). */
const LOCAL =
  /^(claim |check the owner of |release the owner marker of |check that the name |check that server UUID |upload \/var\/lib\/kvmlab\/(records|instances)\/|prepare instance folder |build NoCloud seed ISO |create the disk of |define domain |delete server |mark image |unmark image )/;

interface Host {
  root: string;
  fake: Fake;
  run(script: string): StepResult;
  /** Every file under the root (relative path → content). */
  files(under: string): Map<string, string>;
  marker(kind: string, key: string): string | undefined;
  done(): void;
}

function localHost(): Host {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvl-uuid-"));
  for (const d of ["virsh", "etc/libvirt/qemu", "run/libvirt/qemu", "images/cirros"])
    fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.writeFileSync(path.join(root, "images/cirros/disk.qcow2"), "base");
  const run = (script: string): StepResult => {
    const mapped = script
      .split("/var/lib/kvmlab")
      .join(root)
      .split("/etc/libvirt/qemu")
      .join(`${root}/etc/libvirt/qemu`)
      .split("/run/libvirt/qemu")
      .join(`${root}/run/libvirt/qemu`);
    const r = spawnSync("bash", ["--noprofile", "--norc", "-c", `${TOOLS}\n${mapped}`], {
      encoding: "utf8",
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        VS: `${root}/virsh`,
        ETC: `${root}/etc/libvirt/qemu`,
      },
    });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  let state = "running";
  const fake = fakeHost((label, script) => {
    if (LOCAL.test(label)) return run(script);
    if (/^read host capacity/.test(label)) return "memtotal=4194304\nmemavailable=4000000\ncpus=2\n";
    if (/^shut down domain/.test(label)) state = "shut off";
    if (/^start domain/.test(label)) state = "running";
    if (/^read domain /.test(label)) return `defined=yes\nstate=${state}\ntype=qemu\n`;
    return "";
  });
  const walk = (dir: string, out: Map<string, string>): Map<string, string> => {
    if (!fs.existsSync(dir)) return out;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p, out);
      else out.set(path.relative(root, p), fs.readFileSync(p, "utf8"));
    }
    return out;
  };
  return {
    root,
    fake,
    run,
    files: (under) => walk(path.join(root, under), new Map()),
    marker(kind, key) {
      const f = path.join(root, "owners", kind, `${key}.owner`);
      return fs.existsSync(f) ? fs.readFileSync(f, "utf8").trim() : undefined;
    },
    done() {
      fake.restore();
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

function outputsOf(i: ServerInputs): ServerOutputs {
  return serverOutputsOn(i, hv1);
}

test("another stack's server with the same UUID is refused naming the owner, and never writes into or removes the first's folder", async () => {
  const x = server("a", "web1", "lab/a/web1");
  // Stack b's server, given stack a's web1's UUID (its seed is public: project/stack/name).
  const y = server("b", "app1", "lab/a/web1");
  assert.equal(y.uuid, x.uuid);
  const dir = `instances/${x.uuid}`;
  const h = localHost();
  try {
    await provider.create(x);
    const before = h.files(dir);
    assert.ok(before.get(`${dir}/domain.xml`)?.includes("<name>web1</name>"), [...before.keys()].join());
    assert.ok(before.has(`${dir}/disk.qcow2`) && before.has(`${dir}/seed/user-data`));

    const from = h.fake.log.length;
    const refused = await provider.create(y).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    const steps = h.fake.log.slice(from);
    const abs = `/var/lib/kvmlab/${dir}`;
    assert.deepEqual(
      steps.filter(
        (s) =>
          s.label.startsWith(`upload ${abs}`) ||
          /^(prepare instance folder|create the disk|build NoCloud|define domain)/.test(s.label),
      ),
      [],
      "nothing of app1 is written into web1's folder",
    );
    assert.ok(
      !steps.some((s) => s.script.includes(`rm -rf ${abs}`)),
      `no rm -rf of web1's folder: ${steps.map((s) => s.label).join(" | ")}`,
    );
    assert.deepEqual(h.files(dir), before, "web1's folder is as it was");
    assert.ok(refused, "app1's create is refused");
    assert.match(
      refused.message,
      new RegExp(`server UUID ${x.uuid} .* belongs to ${x.owner}, not to ${y.owner}`),
    );
    assert.match(refused.message, /Fix: give this resource another uuid/);
    assert.equal(h.marker("server", "web1"), x.owner);
    assert.equal(h.marker("server-uuid", x.uuid), x.owner, "the UUID is web1's, claimed with its name");
    assert.equal(fs.readFileSync(path.join(h.root, "virsh", "web1"), "utf8").trim(), x.uuid);
    assert.ok(!fs.existsSync(path.join(h.root, "virsh", "app1")));

    // web1's delete removes its folder and releases both markers.
    await provider.delete(x.uuid, outputsOf(x));
    assert.equal(h.files(dir).size, 0);
    assert.equal(h.marker("server", "web1"), undefined);
    assert.equal(h.marker("server-uuid", x.uuid), undefined);
  } finally {
    h.done();
  }
});

test("a UUID in use by a server created before its marker existed is refused too (no marker, its domain and record say whose)", async () => {
  const x = server("a", "web1", "lab/a/web1");
  const y = server("b", "app1", "lab/a/web1");
  const h = localHost();
  try {
    await provider.create(x);
    fs.rmSync(path.join(h.root, "owners", "server-uuid"), { recursive: true });
    const before = h.files(`instances/${x.uuid}`);
    await assert.rejects(
      provider.create(y),
      new RegExp(
        `server UUID ${x.uuid} already exists on this host with no kvmlab owner.*Fix: give this resource another uuid`,
      ),
    );
    assert.deepEqual(h.files(`instances/${x.uuid}`), before);
    assert.equal(h.marker("server-uuid", x.uuid), undefined, "not claimed by app1");
  } finally {
    h.done();
  }
});

test("an update adopts the UUID's marker of a server whose state predates it; a create run again adopts its own", async () => {
  const x = server("a", "web1", "lab/a/web1");
  const h = localHost();
  try {
    await provider.create(x);
    assert.equal(await provider.create(x).then(() => h.marker("server-uuid", x.uuid)), x.owner);
    fs.rmSync(path.join(h.root, "owners", "server-uuid"), { recursive: true });
    const olds = outputsOf(x);
    const { inputs: news, failures } = checkServerInputs(
      { ...x, powerState: "stopped" } as unknown as Record<string, unknown>,
      olds as unknown as Record<string, unknown>,
    );
    assert.deepEqual(failures, []);
    await provider.update(x.uuid, olds, news as unknown as ServerInputs);
    assert.equal(h.marker("server-uuid", x.uuid), x.owner);
  } finally {
    h.done();
  }
});

test("materialize refuses, and delete keeps, an instance folder another server uses (defence in depth)", () => {
  const x = server("a", "web1", "lab/a/web1");
  const y = server("b", "app1", "lab/a/web1");
  const h = localHost();
  try {
    // web1's folder and domain, with no owner markers at all (e.g. a migration's destination).
    for (const s of materializeSteps(x, x.domainXml.qemu)) assert.equal(h.run(s.script).code, 0, s.label);
    const before = h.files(`instances/${x.uuid}`);
    assert.ok(before.size > 0);

    const prepare = h.run(materializeSteps(y, y.domainXml.qemu)[0].script);
    assert.equal(prepare.code, 35, prepare.stderr);
    assert.match(
      prepare.stderr,
      new RegExp(
        `server app1: its UUID ${x.uuid} and instance folder \\S+/instances/${x.uuid} are used by the domain web1 .*Fix: give this server another uuid`,
      ),
    );
    // Not the folder's domain.xml but libvirt names web1: refused too.
    fs.rmSync(path.join(h.root, `instances/${x.uuid}/domain.xml`));
    const byLibvirt = h.run(materializeSteps(y, y.domainXml.qemu)[0].script);
    assert.equal(byLibvirt.code, 35);
    assert.match(byLibvirt.stderr, /used by the libvirt domain web1/);

    // app1's record carries the UUID (its create claimed and recorded it): its delete runs, but
    // the folder stays.
    fs.mkdirSync(path.join(h.root, "records/server"), { recursive: true });
    fs.writeFileSync(
      path.join(h.root, "records/server/app1.json"),
      JSON.stringify({ name: "app1", uuid: y.uuid }, null, 2),
    );
    const del = h.run(deleteStep(y).script);
    assert.equal(del.code, 0, del.stderr);
    assert.match(
      del.stderr,
      /its instance folder .* is used by the libvirt domain web1; it was left in place/,
    );
    before.delete(`instances/${x.uuid}/domain.xml`);
    assert.deepEqual(h.files(`instances/${x.uuid}`), before, "web1's folder is kept");
    assert.ok(!fs.existsSync(path.join(h.root, "records/server/app1.json")), "app1's own record goes");

    // web1's own delete removes it.
    const own = h.run(deleteStep(x).script);
    assert.equal(own.code, 0, own.stderr);
    assert.equal(h.files(`instances/${x.uuid}`).size, 0);
  } finally {
    h.done();
  }
});

test("an unmarked libvirt domain of the server's name refuses the claim: a persistent one, or a running transient one (libvirt's files, no virsh call)", async () => {
  for (const where of ["etc/libvirt/qemu", "run/libvirt/qemu"]) {
    const x = server("a", "web1", "lab/a/web1");
    const h = localHost();
    try {
      fs.writeFileSync(path.join(h.root, where, "web1.xml"), "<domain><name>web1</name></domain>");
      await assert.rejects(
        provider.create(x),
        /server web1 already exists on this host with no kvmlab owner.*Fix: give this resource another serverName/,
        where,
      );
      assert.equal(h.marker("server", "web1"), undefined, `${where}: not claimed`);
      assert.equal(h.files("records").size, 0, `${where}: no record written`);
      assert.ok(
        !h.fake.log.some((l) => /^claim server web1 /.test(l.label) && /virsh/.test(l.script)),
        "the name's claim asks no virsh",
      );
    } finally {
      h.done();
    }
  }
});

test("a running transient libvirt domain (only a status file under /run/libvirt/qemu) that has the server's UUID refuses the UUID's claim (review 7, P1)", async () => {
  const x = server("a", "web1", "lab/a/web1");
  const h = localHost();
  try {
    fs.writeFileSync(
      path.join(h.root, "run/libvirt/qemu", "other.xml"),
      `<domstatus><domain><name>other</name><uuid>${x.uuid}</uuid></domain></domstatus>`,
    );
    await assert.rejects(
      provider.create(x),
      new RegExp(`server UUID ${x.uuid} already exists on this host with no kvmlab owner`),
    );
    assert.equal(h.marker("server-uuid", x.uuid), undefined, "not claimed");
    // The UUID's refusal comes before the name's claim: a refused create leaves no marker.
    assert.equal(h.marker("server", "web1"), undefined, "the name is not left claimed");
  } finally {
    h.done();
  }
});
