/**
 * A placement turn takes the creates waiting for it once the placement lock is held (issue 13):
 * the creates that arrive while the lock is being taken (a new lock shell and a flock, about
 * 200 ms on a busy host) join that turn instead of waiting for the next one. Each is still
 * counted before the next is chosen, and each gets its own answer.
 *
 * After placement, a create's address (the DHCP host's lock) and its host check and image claim
 * (the placed host's lock) run side by side; a failure of either still cleans up both.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  checkServerInputs,
  ipamRecordName,
  ownerOf,
  portOwner,
  serverProvider,
  type IpamRecord,
  type StepResult,
} from "../../../provider";
import { type ServerInputs } from "../../../provider/server";
import { diskServerRaw, serverRaw, testHost } from "./fixtures";
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

/** A fake host with the subnet lan/lan-v4's IPAM record kept (read and written by the steps). */
function withIpam(start: IpamRecord, failHostCheck: boolean) {
  let current = start;
  const name = ipamRecordName("lan", "lan-v4");
  const fake = fakeHost((label, script): string | StepResult => {
    if (/^read host capacity/.test(label)) return "memtotal=4194304\nmemavailable=4000000\ncpus=2\n";
    if (label === `read record ipam/${name}`) return JSON.stringify(current);
    if (label === `write record ipam/${name}`) {
      const b64 = /<<'(KVL_EOF_[0-9a-f]+)'\n([\s\S]*?)\1/.exec(script)![2];
      current = JSON.parse(Buffer.from(b64.replace(/\n/g, ""), "base64").toString("utf8")) as IpamRecord;
    }
    if (failHostCheck && /^check host for server /.test(label))
      return { code: 31, stdout: "", stderr: "image cirros: its kernel is not on this host" };
    if (/^read domain /.test(label)) return "defined=yes\nstate=shut off\ntype=qemu\n";
    return "";
  });
  return Object.assign(fake, { record: () => current });
}

const lanRecord = (allocations: IpamRecord["allocations"]): IpamRecord => ({
  subnet: "lan-v4",
  cidr: "10.10.0.0/24",
  gateway: "10.10.0.1",
  pool: { start: "10.10.0.2", end: "10.10.0.254" },
  allocations,
});

function lanServer(owner: string): ServerInputs {
  const { inputs, failures } = checkServerInputs({ ...serverRaw([hv1]), powerState: "external", owner });
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

test("the address and the host check run side by side: a failed host check still releases the address allocated beside it", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const i = lanServer(me);
  const fake = withIpam(lanRecord({}), true);
  try {
    await assert.rejects(provider.create(i), /check host for server web1.*its kernel is not on this host/s);
    const labels = fake.log.map((l) => l.label);
    assert.ok(
      labels.includes(`write record ipam/${ipamRecordName("lan", "lan-v4")}`),
      "the address was allocated",
    );
    assert.deepEqual(fake.record().allocations, {}, `the address is released again: ${labels.join(" | ")}`);
    assert.ok(labels.includes("delete server web1"), "the claim on the host is removed");
    assert.ok(!labels.some((l) => /^define domain/.test(l)), "nothing is defined");
  } finally {
    fake.restore();
  }
});

test("a refused address with the host check beside it: the server's claim on the host is removed, the other owner's address stays", async () => {
  const me = ownerOf({ pulumiProject: "lab", stack: "b", type: "Server", name: "web1" });
  const theirs = ownerOf({ pulumiProject: "lab", stack: "a", type: "Server", name: "web1" });
  const i = lanServer(me);
  const start = lanRecord({ "10.10.0.2": { owner: portOwner(i.uuid, 0), mac: "", holder: theirs } });
  const fake = withIpam(start, false);
  try {
    await assert.rejects(provider.create(i), /belongs to lab\/a\/Server\/web1, not to lab\/b\/Server\/web1/);
    const labels = fake.log.map((l) => l.label);
    assert.deepEqual(fake.record(), start, "the other owner's address is kept, nothing written over it");
    assert.ok(
      labels.includes("delete server web1"),
      `the claim on the host is removed: ${labels.join(" | ")}`,
    );
    assert.ok(!labels.some((l) => /^define domain/.test(l)), "nothing is defined");
  } finally {
    fake.restore();
  }
});
