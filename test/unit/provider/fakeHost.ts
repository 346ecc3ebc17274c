/**
 * A fake host for provider unit tests: the host layer's step runners are replaced, every step
 * is answered by `answer(label, script, host)` (its stdout with exit 0, or a whole result) and
 * logged with its host, label and script; named host locks are logged as "<name> lock taken" / "<name> lock released".
 */
import * as assert from "node:assert/strict";
import { remoteStepError, type HostConnection, type Step, type StepResult } from "../../../provider";
import { instancePaths, type ServerInputs, type ServerOutputs } from "../../../provider/server";

export interface Fake {
  log: { host: string; label: string; script: string }[];
  restore(): void;
}

/**
 * What runChecked/runLocked make of a batch's results, for fake hosts: the stdouts, or the first
 * failure thrown as the real runners throw it (RemoteStepError: the step's index in `steps`, its
 * label, its exit status; the same message).
 */
export function checkedResults(
  h: HostConnection,
  steps: readonly Step[],
  results: readonly StepResult[],
): string[] {
  return results.map((r, i) => {
    if (r.code !== 0) throw remoteStepError(h, steps[i], r, i);
    return r.stdout;
  });
}

/** Replaces the host layer's runners: `answer(label)` gives a step's stdout (exit 0) or its result. */
export function fakeHost(answer: (label: string, script: string, host: string) => string | StepResult): Fake {
  const session = require("../../../provider/host/session") as Record<string, unknown>;
  const probe = require("../../../provider/host/probe") as Record<string, unknown>;
  const saved = { ...session };
  const savedProbe = { ...probe };
  const log: Fake["log"] = [];
  // runChecked/runLocked stop at the first failure, as the real ones (stopOnError): later steps
  // are neither run nor logged.
  const run = (h: HostConnection, steps: readonly Step[], stopOnError = false): StepResult[] => {
    const out: StepResult[] = [];
    for (const s of steps) {
      if (stopOnError && out.some((r) => r.code !== 0)) {
        out.push({ code: null, stdout: "", stderr: "" });
        continue;
      }
      log.push({ host: h.name, label: s.label ?? "", script: s.script });
      const r = answer(s.label ?? "", s.script, h.name);
      out.push(typeof r === "string" ? { code: 0, stdout: r, stderr: "" } : r);
    }
    return out;
  };
  const checked = async (h: HostConnection, steps: readonly Step[]): Promise<string[]> =>
    checkedResults(h, steps, run(h, steps, true));
  session.runSteps = async (h: HostConnection, steps: readonly Step[]) => run(h, steps);
  session.runChecked = checked;
  session.runLocked = checked;
  // The steps withHostLock runs with the lock's take: their stdouts go to fn.
  session.withHostLock = async (
    h: HostConnection,
    fn: (first: string[]) => Promise<unknown>,
    _waitSec?: number,
    first: readonly Step[] = [],
  ) => fn(await checked(h, first));
  session.withNamedHostLock = async (h: HostConnection, name: string, fn: () => Promise<unknown>) => {
    log.push({ host: h.name, label: `${name} lock taken`, script: "" });
    try {
      return await fn();
    } finally {
      log.push({ host: h.name, label: `${name} lock released`, script: "" });
    }
  };
  probe.requireFeatures = async () => ({ kvm: false, libvirtVersion: "10", qemuVersion: "8", dnsmasq: true });
  return {
    log,
    restore() {
      Object.assign(session, saved);
      Object.assign(probe, savedProbe);
    },
  };
}

/** The content of the domain.xml an upload step in the log wrote. */
export function uploadedXml(fake: Fake, re = /^upload .*\/domain\.xml$/): string {
  const up = fake.log.filter((l) => re.test(l.label));
  assert.equal(up.length, 1, `one domain.xml written: ${fake.log.map((l) => l.label).join(" | ")}`);
  const b64 = /<<'(KVL_EOF_[0-9a-f]+)'\n([\s\S]*?)\1/.exec(up[0].script)![2];
  return Buffer.from(b64.replace(/\n/g, ""), "base64").toString("utf8");
}

/** What a server's state holds after its create on `host`: running, no addresses, its own folder. */
export function serverOutputsOn(i: ServerInputs, host: HostConnection): ServerOutputs {
  const p = instancePaths(i);
  return {
    ...i,
    host: host.name,
    hostAddress: host.address,
    domainType: "qemu",
    addresses: [],
    ips: [],
    macs: [],
    vncPort: 0,
    consoleUrl: "",
    serialLog: p.serialLog,
    instanceDir: p.dir,
    actualPowerState: "running",
    hostKeys: {},
  };
}
