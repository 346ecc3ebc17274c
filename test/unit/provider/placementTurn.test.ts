/**
 * A placement turn takes the creates waiting for it once the placement lock is held (issue 13):
 * the creates that arrive while the lock is being taken (a new lock shell and a flock, about
 * 200 ms on a busy host) join that turn instead of waiting for the next one. Each is still
 * counted before the next is chosen, and each gets its own answer.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { checkServerInputs, ownerOf, serverProvider } from "../../../provider";
import { type ServerInputs } from "../../../provider/server";
import { diskServerRaw, testHost } from "./fixtures";
import { fakeHost } from "./fakeHost";

const hv1 = testHost("hv1", 1);
const provider = serverProvider as unknown as Required<typeof serverProvider>;

function server(serverName: string): ServerInputs {
  const { inputs, failures } = checkServerInputs({
    ...diskServerRaw(hv1, { stack: "a", serverName }),
    powerState: "external",
    owner: ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: serverName }),
  });
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

test("creates that arrive while the placement lock is being taken join that turn: one lock, one reading of the hosts", async () => {
  // Room for two 128 MiB servers (768 - 512 reserved = 256): the third must be refused, which
  // only happens when each placed server is counted before the next is chosen.
  const fake = fakeHost((label) => {
    if (/^read host capacity/.test(label)) return "memtotal=786432\nmemavailable=700000\ncpus=2\n";
    if (/^read domain /.test(label)) return "defined=yes\nstate=shut off\ntype=qemu\n";
    return "";
  });
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  let requested: () => void = () => undefined;
  const lockRequested = new Promise<void>((r) => (requested = r));
  let open: () => void = () => undefined;
  const gate = new Promise<void>((r) => (open = r));
  session.withNamedHostLock = async (h: { name: string }, name: string, fn: () => Promise<unknown>) => {
    requested();
    await gate;
    fake.log.push({ host: h.name, label: `${name} lock taken`, script: "" });
    try {
      return await fn();
    } finally {
      fake.log.push({ host: h.name, label: `${name} lock released`, script: "" });
    }
  };
  try {
    const first = provider.create(server("web1"));
    await lockRequested;
    // While web1's turn takes the lock, two more creates arrive.
    const later = [provider.create(server("web2")), provider.create(server("web3"))];
    await new Promise((r) => setTimeout(r, 50));
    open();
    const results = await Promise.allSettled([first, ...later]);
    const labels = fake.log.map((l) => l.label);
    assert.equal(labels.filter((l) => l === "placement lock taken").length, 1, labels.join(" | "));
    assert.equal(labels.filter((l) => /^read host capacity/.test(l)).length, 1, "the hosts are read once");
    assert.deepEqual(
      results.map((r) => r.status),
      ["fulfilled", "fulfilled", "rejected"],
    );
    assert.match(
      String((results[2] as PromiseRejectedResult).reason),
      /placement of server web3: .*hv1: 0 MiB RAM free, needs 128/,
    );
    for (const n of ["web1", "web2"])
      assert.ok(
        labels.some((l) => l === `write record server/${n}`),
        `${n}'s placement record is written`,
      );
    assert.ok(
      !labels.some((l) => /web3/.test(l) && /^(write record|claim )/.test(l)),
      "nothing of web3 is claimed",
    );
  } finally {
    fake.restore();
  }
});
