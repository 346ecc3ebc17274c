/**
 * Server instance folders keyed by the server's UUID (issue 15: "paths are keyed by the full
 * object identity, never a bare name"). Two stacks' same-named servers get different folders;
 * a server created before keeps the folder of its name (its state's XML names it): check maps
 * the newly rendered XML onto it, so an `up` neither replaces, moves nor redefines it, and every
 * step of an update or delete uses that folder. A replace builds the new server in its UUID's
 * folder. Pure, plus a cold resize against a fake host.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { checkServerInputs, serverProvider } from "../../../provider";
import {
  diffServer,
  instancePaths,
  planText,
  serverPaths,
  type ServerInputs,
  type ServerOutputs,
} from "../../../provider/server";
import { deleteStep, materializeSteps, serialTailStep } from "../../../provider/server/steps";
import { DISK_IMAGE, diskServerRaw, testHost } from "./fixtures";
import { fakeHost, serverOutputsOn, uploadedXml } from "./fakeHost";

const hv1 = testHost("hv1", 1);
const IMAGE = DISK_IMAGE;

/** Raw Server inputs for `web1` of `stack`, rendered as the component does (today's template). */
function raw(stack: string, over: { ramMiB?: number; image?: typeof IMAGE } = {}): Record<string, unknown> {
  return diskServerRaw(hv1, { stack, ...over });
}

function check(news: Record<string, unknown>, olds?: Record<string, unknown>): ServerInputs {
  const { inputs, failures } = checkServerInputs(news, olds);
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

/** What the code before issue 15 rendered and kept: the same XML with the folder of the name. */
function legacy(i: ServerInputs): ServerInputs {
  const to = (x: string) => x.split(`/instances/${i.uuid}/`).join("/instances/web1/");
  return { ...i, domainXml: { kvm: to(i.domainXml.kvm), qemu: to(i.domainXml.qemu) } };
}

function outputs(i: ServerInputs): ServerOutputs {
  return serverOutputsOn(i, hv1);
}

test("two stacks' servers of the same name get the folders of their UUIDs, and each step uses only its own", () => {
  const a = check(raw("a"));
  const b = check(raw("b"));
  assert.notEqual(a.uuid, b.uuid);
  for (const i of [a, b]) {
    const dir = `/var/lib/kvmlab/instances/${i.uuid}`;
    assert.equal(instancePaths(i).dir, dir);
    for (const x of [i.domainXml.kvm, i.domainXml.qemu]) {
      assert.ok(x.includes(`<source file='${dir}/disk.qcow2'/>`), x);
      assert.ok(x.includes(`<source file='${dir}/seed.iso'/>`));
      assert.ok(x.includes(`<log file='${dir}/console.log'`));
      assert.ok(!x.includes("/instances/web1/"), "never the bare name");
    }
    const steps = materializeSteps(i, i.domainXml.qemu).map((s) => s.script);
    assert.ok(steps[0].includes(`mkdir -p ${dir}/seed`), steps[0]);
    assert.ok(steps.some((s) => s.includes(`virsh -q -c qemu:///system define ${dir}/domain.xml`)));
    assert.ok(serialTailStep(i).script.includes(`${dir}/console.log`));
  }
  const delB = deleteStep(b).script;
  assert.ok(delB.includes(`else rm -rf /var/lib/kvmlab/instances/${b.uuid}; fi\n`));
  assert.ok(
    !delB.includes(a.uuid) && !delB.includes("/instances/web1"),
    "never A's folder, never the name's",
  );
});

test("a create whose XML names another folder (the bare name, another UUID) is refused naming the folder", () => {
  const a = raw("a");
  const b = raw("b");
  const xml = a.domainXml as { kvm: string; qemu: string };
  const uuid = a.uuid as string;
  for (const [what, x] of [
    ["the name's folder", (s: string) => s.split(`/instances/${uuid}/`).join("/instances/web1/")],
    [
      "another server's",
      (s: string) => s.split(`/instances/${uuid}/`).join(`/instances/${b.uuid as string}/`),
    ],
  ] as const) {
    const { failures } = checkServerInputs({ ...a, domainXml: { kvm: x(xml.kvm), qemu: x(xml.qemu) } });
    assert.ok(
      failures.some(
        (f) =>
          f.property === "domainXml" &&
          f.reason.includes(`the serial log must be /var/lib/kvmlab/instances/${uuid}/console.log`),
      ),
      `${what}: ${JSON.stringify(failures)}`,
    );
  }
});

test("a server created before keeps the folder of its name: no diff, the same XML, every step in that folder", () => {
  const old = legacy(check(raw("a")));
  const olds = outputs(old);
  assert.equal(olds.instanceDir, "/var/lib/kvmlab/instances/web1");
  // The program renders the UUID's folder now; check maps it onto the server's folder.
  const news = check(raw("a"), old as unknown as Record<string, unknown>);
  assert.deepEqual(news.domainXml, old.domainXml, "the XML the server has, unchanged");
  assert.equal(news.changePlan, "none");
  assert.equal(diffServer(olds, news).changes, false, "a no-change up changes nothing");
  assert.equal(instancePaths(news).dir, "/var/lib/kvmlab/instances/web1");
  const del = deleteStep(olds).script;
  assert.ok(
    del.includes("else rm -rf /var/lib/kvmlab/instances/web1; fi\n") &&
      !del.includes(`rm -rf /var/lib/kvmlab/instances/${old.uuid}`),
  );
  assert.ok(
    materializeSteps(news, news.domainXml.qemu)[0].script.includes(
      "mkdir -p /var/lib/kvmlab/instances/web1/seed",
    ),
  );

  // A resize is an update in place: the XML keeps the name's folder.
  const bigger = check(raw("a", { ramMiB: 192 }), old as unknown as Record<string, unknown>);
  assert.match(bigger.changePlan, /^cold resize/);
  assert.ok(bigger.domainXml.qemu.includes("<log file='/var/lib/kvmlab/instances/web1/console.log'"));
  assert.ok(!bigger.domainXml.qemu.includes(old.uuid + "/"));

  // A replace (a new image) builds a new server: in the folder of its UUID.
  const other = { ...IMAGE, name: "other", disk: "/var/lib/kvmlab/images/other/disk.qcow2" };
  const replaced = check(raw("a", { image: other }), old as unknown as Record<string, unknown>);
  assert.match(replaced.changePlan, /^replace/);
  assert.ok(
    replaced.domainXml.qemu.includes(`<log file='/var/lib/kvmlab/instances/${old.uuid}/console.log'`),
  );
  assert.deepEqual(diffServer(olds, replaced).replaces, ["image"]);
  assert.equal(planText(old as never, replaced as never), replaced.changePlan);
});

test("a cold resize of a server created before defines it from its own folder and writes nothing in the UUID's", async () => {
  const old = legacy(check(raw("a")));
  const olds = outputs(old);
  const news = check(raw("a", { ramMiB: 192 }), old as unknown as Record<string, unknown>);
  let state = "running";
  const fake = fakeHost((label) => {
    if (/^shut down domain web1/.test(label)) state = "shut off";
    if (/^start domain web1/.test(label)) state = "running";
    if (/^read domain web1/.test(label)) return `defined=yes\nstate=${state}\ntype=qemu\n`;
    return "";
  });
  try {
    const { outs } = (await (serverProvider as unknown as Required<typeof serverProvider>).update(
      olds.uuid,
      olds,
      news,
    )) as { outs: ServerOutputs };
    const scripts = fake.log.map((l) => `${l.label}\n${l.script}`).join("\n");
    assert.ok(!scripts.includes(`/instances/${old.uuid}`), "nothing in the UUID's folder");
    assert.ok(scripts.includes("define /var/lib/kvmlab/instances/web1/domain.xml"));
    const xml = uploadedXml(fake, /^upload \/var\/lib\/kvmlab\/instances\/web1\/domain\.xml$/);
    assert.match(xml, /<memory unit='MiB'>192<\/memory>/);
    assert.ok(xml.includes("<source file='/var/lib/kvmlab/instances/web1/disk.qcow2'/>"), "its own disk");
    assert.equal(outs.instanceDir, "/var/lib/kvmlab/instances/web1");
    assert.equal(outs.serialLog, "/var/lib/kvmlab/instances/web1/console.log");
  } finally {
    fake.restore();
  }
});

test("serverPaths: one folder per key under instances/", () => {
  assert.deepEqual(serverPaths("0e8f0000-0000-4000-8000-000000000001"), {
    dir: "/var/lib/kvmlab/instances/0e8f0000-0000-4000-8000-000000000001",
    disk: "/var/lib/kvmlab/instances/0e8f0000-0000-4000-8000-000000000001/disk.qcow2",
    seedDir: "/var/lib/kvmlab/instances/0e8f0000-0000-4000-8000-000000000001/seed",
    seedIso: "/var/lib/kvmlab/instances/0e8f0000-0000-4000-8000-000000000001/seed.iso",
    serialLog: "/var/lib/kvmlab/instances/0e8f0000-0000-4000-8000-000000000001/console.log",
    domainXml: "/var/lib/kvmlab/instances/0e8f0000-0000-4000-8000-000000000001/domain.xml",
  });
});
