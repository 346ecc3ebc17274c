/**
 * Server: a libvirt domain on one of the lab's KVM hosts, like a Nova instance.
 *
 *   check   validates every field (unknowns accepted during preview), fills defaults and
 *           computes `changePlan`, the one line preview shows for an update
 *   diff    pure (no SSH): serverName, uuid, image, cloud-init and ports replace; flavor and
 *           domain XML are a cold resize/redefine; a new `host` pin is a live migration;
 *           powerState is start/stop
 *   create  placement (unless pinned): every candidate host's capacity and kvmlab's server
 *           records, the host with the most free RAM that fits the flavor; then, in one short
 *           batch under that host's lock: a guard that the records are still as read (no
 *           cross-process placement lock: a changed host is read again and placed again),
 *           preflight, the claim (owner markers and the server's record, which every later
 *           placement counts), the image's user marker (images/<image>/.users/<server>, which
 *           makes the image's delete refuse) and the volumes a create run again keeps; beside
 *           placement, IPs from the subnets' IPAM (dnsmasq dhcp-host entries for the port
 *           MACs); then, holding no lock, in a worker shell of the host: instance folder,
 *           NoCloud seed ISO (genisoimage -V cidata), qcow2 overlay, domain XML for the host's
 *           domain type (kvm when usable, else qemu), virsh define; start; readiness wait
 *           (bounded, serial log tail in the error). Locks cover decisions only (quota,
 *           placement, IPAM, the image claim), so parallel creates overlap their waits. On
 *           failure everything is removed again.
 *   read    dominfo + vncdisplay on the server's host (gone = deleted)
 *   update  migrate (virsh migrate --live, see server/migrate.ts; the destination is marked
 *           as a user of the image, the source's marker goes with the source's files), then
 *           redefine (stop, define, start), then start/stop
 *   delete  the domain (only when its UUID is this server's), the instance folder (disk, seed,
 *           serial log), the image's user marker, the record and the IP reservations; idempotent
 *
 * Files on the host: /var/lib/kvmlab/instances/<uuid>/{disk.qcow2, seed/, seed.iso, console.log,
 * domain.xml} (a server created before issue 15 keeps instances/<serverName>/, which its XML
 * names: instancePaths); record /var/lib/kvmlab/records/server/<serverName>.json.
 *
 * Serialization: the provider object below references only pure helpers and the host layer's
 * functions; everything else is `require`d inside method bodies. When KVMLAB_METRICS_FILE is
 * set (benchmarks), each operation appends one JSON line with its timings and SSH counters.
 */
import type * as pulumi from "@pulumi/pulumi";
import {
  fingerprintOfKeyBlob,
  hostPoolStats,
  requireFeatures,
  failedStep,
  runChecked,
  runLocked,
  runSteps,
  sessionKey,
  withNamedHostLock,
  recordPath,
  shQuote,
  uploadStep,
  type HostConnection,
  type Step,
} from "./host";
import { allocateAddressOrigin, releaseAddress, type AllocationTimings } from "./ipam";
import { serverUsage } from "../core/identity";
import {
  KvmlabResource,
  canonicalJson,
  defineResource,
  hostKeyRecord,
  hostNamed as namedHost,
  claimStep,
  claimableStep,
  claimedNow,
  guardStep,
  ownerMarkerPath,
  ownerIn,
  releaseOwnerStep,
  type HostConnectionArgs,
  type OwnedObject,
  type ProjectRef,
} from "./kit";
import { fillManagementListen, MANAGEMENT_ADDRESS_PLACEHOLDER } from "../core/vncListen";
import { metadataDrift, withDomainOwner } from "../core/domainMetadata";
import { charges } from "./quota";
import {
  checkServerInputs,
  chooseHost,
  freeCapacity,
  diffServer,
  parseHostLoad,
  planUpdate,
  serverCapacityText,
  PLACEMENT,
  withPlaced,
  portOwner,
  instancePaths,
  serverPaths,
  SERVER_INPUT_KEYS,
  type HostLoad,
  type PowerState,
  type Readiness,
  type ServerAddress,
  type ServerFlavor,
  type ServerImage,
  type ServerInputs,
  type ServerOutputs,
  type ServerPort,
} from "./server/model";
import {
  authorizeStep,
  destinationFactsStep,
  knownHostsText,
  migrateStep,
  migrationCleanupStep,
  migrationDir,
  migrationKeyStep,
  migrationOutcome,
  migrationTlsAddresses,
  migrationTlsStep,
  abortMigrationStep,
  parseCaCertificate,
  parseDestinationFacts,
  revokeStep,
  trustPeerStep,
} from "./server/migrate";
import {
  attachedVolumesStep,
  dropVolumesStep,
  keptListingHasDomain,
  keptVolumesStep,
  migrateDisks,
  parseAttachedVolumes,
  parseKeptVolumes,
  prepareVolumesStep,
  withVolumeDisks,
  type KeptVolume,
} from "./server/volumes";
import {
  claimedByStep,
  claimRecordStep,
  deleteStep,
  destroyStep,
  imageUseSteps,
  infoStep,
  materializeSteps,
  metadataStep,
  nameFreeStep,
  otherUserOfUuidLines,
  parseDomainInfo,
  preflightStep,
  readinessProbeStep,
  recordStep,
  recordsUnchangedStep,
  RECORDS_CHANGED_EXIT,
  resizeFitsStep,
  serialTailStep,
  shutdownStep,
  startStep,
  statsStep,
  type DomainInfo,
} from "./server/steps";
import {
  clearMigratingStep,
  markMigratingStep,
  migrationFitsStep,
  noDomainHereStep,
  pendingMigrationStep,
  abandonedRecordGateStep,
  DOMAIN_HERE_EXIT,
  MIGRATING_FIELD,
  NOT_ABANDONED_EXIT,
  RESERVATION_FIELD,
  reservationStep,
} from "./server/steps";

export * from "./server/model";
export { parseDomainInfo, type DomainInfo } from "./server/steps";

/** Timings of one provider operation (for benchmarks). */
interface OpMetrics {
  op: string;
  server: string;
  startedAt: number;
  /** Time spent waiting for QEMU/libvirt: define/start/shutdown/migrate steps and readiness. */
  waitMs: number;
  /** Readiness probes run (each one remote step). */
  probes: number;
  /** Milliseconds per phase of kvmlab's own work (create: quota, placement, probe, ipam, claim, info). */
  phases: Record<string, number>;
  /** How many creates shared this one's placement turn and IPAM turn. */
  batches?: { placement: number; ipam: number; attempts?: number };
}

function startMetrics(op: string, server: string): OpMetrics {
  return { op, server, startedAt: Date.now(), waitMs: 0, probes: 0, phases: {} };
}

/** Runs `fn` and records its duration as phase `name` of the metrics. */
async function phase<T>(m: OpMetrics, name: string, fn: () => Promise<T>): Promise<T> {
  const t = Date.now();
  try {
    return await fn();
  } finally {
    m.phases[name] = (m.phases[name] ?? 0) + Date.now() - t;
  }
}

/** Appends one JSON line to $KVMLAB_METRICS_FILE (benchmarks only; never secrets). */
function finishMetrics(m: OpMetrics, extra: Record<string, unknown> = {}): void {
  const file = process.env.KVMLAB_METRICS_FILE;
  if (!file) return;
  const fs: typeof import("node:fs") = require("node:fs");
  const stats = hostPoolStats();
  const line = {
    op: m.op,
    server: m.server,
    pid: process.pid,
    totalMs: Date.now() - m.startedAt,
    waitMs: m.waitMs,
    probes: m.probes,
    phases: m.phases,
    ...(m.batches ? { shared: m.batches } : {}),
    connectionsOpened: stats.connectionsOpened,
    channelsOpened: stats.channelsOpened,
    batches: stats.batches,
    steps: stats.steps,
    riderWaits: stats.riderWaits,
    riderWaitsTimedOut: stats.riderWaitsTimedOut,
    ...extra,
  };
  fs.appendFileSync(file, `${JSON.stringify(line)}\n`);
}

/** Runs `fn` and adds its duration to the metrics' wait time. */
async function waited<T>(m: OpMetrics, fn: () => Promise<T>): Promise<T> {
  const t = Date.now();
  try {
    return await fn();
  } finally {
    m.waitMs += Date.now() - t;
  }
}

/** The domain type a host runs: kvm where the host's probe found KVM usable, else qemu (TCG). */
async function domainTypeOf(host: HostConnection): Promise<"kvm" | "qemu"> {
  const caps = await requireFeatures(host, ["libvirt"]);
  return caps.kvm ? "kvm" : "qemu";
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function hostNamed(hosts: readonly HostConnection[], name: string): HostConnection {
  return namedHost(hosts, name, "server");
}

/**
 * Placement is serialized per process (so parallel creates see each other's claims) and
 * claimed on the host by the server's record, which every later placement counts.
 */
async function placementTurn<T>(fn: () => Promise<T>): Promise<T> {
  const g = globalThis as unknown as Record<symbol, Promise<unknown> | undefined>;
  const key = Symbol.for("kvmlab.serverPlacement.v1");
  const before = g[key] ?? Promise.resolve();
  const mine = before.then(fn, fn);
  g[key] = mine.catch(() => undefined);
  return mine;
}

/**
 * What placement gives a create: the host it claimed, and the listing of the kept-volumes step
 * that ran in the same locked batch. `error` is set when a step after the claim failed (the image
 * claim): the host holds this create's claim then, which the create's cleanup removes.
 */
interface Placed {
  host: HostConnection;
  listing: string;
  error?: unknown;
  /**
   * With `error`: a batch with this create's claim was sent to the host past the guard, but
   * whether the claim was written is not known (a timeout, a lost shell, a later refusal or give
   * up): the cleanup runs only when the name's marker is this owner's (claimedByStep).
   */
  ifClaimed?: boolean;
}

/** A create waiting for its placement turn. */
interface PlacementRequest {
  inputs: ServerInputs;
  /** Filled by the turn (benchmarks): when the request was made, and its sub-phases in ms. */
  startedAt: number;
  timings: Record<string, number>;
  resolve: (placed: Placed) => void;
  reject: (err: unknown) => void;
}

/** Creates waiting for placement in this process, per set of hosts. */
function placementQueue(): Map<string, PlacementRequest[]> {
  const g = globalThis as unknown as Record<symbol, Map<string, PlacementRequest[]> | undefined>;
  return (g[Symbol.for("kvmlab.serverPlacementQueue.v1")] ??= new Map());
}

/**
 * How many times one placement turn reads the hosts and claims before it gives up on a request
 * whose host's records keep gaining servers (or RAM/vCPUs) between the reading and the claim
 * (another process placing or resizing servers there at the same moment).
 */
export const PLACEMENT_ATTEMPTS = 5;

/** The pause before each reading again (ms, uniformly random in [min, max]). */
export const PLACEMENT_BACKOFF_MS = { min: 50, max: 300 };

/** Reads every candidate host's load (one batch per host, in parallel). */
async function hostLoads(hosts: readonly HostConnection[]): Promise<HostLoad[]> {
  return Promise.all(
    hosts.map(async (h) => {
      const [out] = await runChecked(h, [statsStep()]);
      return parseHostLoad(h.name, out);
    }),
  );
}

/**
 * The server's objects on a host, for the owner guards. libvirt domain names are one namespace
 * per host, so the name is the identity ON the host; the UUID tells servers apart in IPAM.
 *
 * The claim's test for an unmarked domain of that name reads libvirt's files instead of asking
 * virsh, as the UUID's does (it runs under the host lock in every first create's claim batch;
 * a virsh call there cost each create of a placement turn one more libvirtd connection, issue
 * 13): the persistent definition /etc/libvirt/qemu/<name>.xml, or the status file
 * /run/libvirt/qemu/<name>.xml that libvirt keeps for every running domain, transient ones too.
 */
export function serverOwned(serverName: string): OwnedObject {
  return {
    kind: "server",
    key: [serverName],
    what: `server ${serverName}`,
    field: "serverName",
    exists: `{ [ -e ${shQuote(`/etc/libvirt/qemu/${serverName}.xml`)} ] || [ -e ${shQuote(`/run/libvirt/qemu/${serverName}.xml`)} ] || [ -e ${shQuote(recordPath("server", serverName))} ]; }`,
  };
}

/**
 * The server's UUID on a host, for the owner guards (review S1). The instance folder is keyed by
 * the UUID (instances/<uuid>/), and libvirt, IPAM and the quota know a server by it too, so the
 * UUID needs an owner of its own: without one, a server of another stack given the same UUID
 * (an explicit `uuid`, or the components' one, derived from project, stack and name) would be
 * placed on this host, write into this server's folder and remove it in its failed create's
 * cleanup. Claimed with the name, in the placement's claim batch; with no marker, a domain,
 * folder or record of another server with this UUID refuses the claim.
 */
export function serverUuidOwned(i: Pick<ServerInputs, "serverName" | "uuid">): OwnedObject {
  const dir = serverPaths(i.uuid).dir;
  return {
    kind: "server-uuid",
    key: [i.uuid],
    what: `server UUID ${i.uuid}`,
    field: "uuid",
    exists: `{ ${otherUserOfUuidLines(i.serverName, i.uuid, dir, "files").join("\n")}\n[ -n "$other" ]; }`,
  };
}

/**
 * Picks the host (or takes the pin), checks it has what the server needs, claims the server
 * there for its owner (refused when another owner holds the name), writes the placement record
 * and the image's user marker, and lists the volumes a create run again keeps: one locked round
 * trip on the chosen host.
 *
 * One turn serves every create of this process that waits for placement over the same hosts:
 * one reading of the hosts, then each server in turn (each counting the ones placed before it),
 * claims in parallel across hosts. N parallel creates take a few turns instead of N (issue 13);
 * the accounting is the same as N turns in a row.
 *
 * Across processes there is no placement lock: each host's claim batch begins with a guard
 * (recordsUnchangedStep, under that host's lock) that refuses when the host's server records
 * count other than what the turn read; the turn then reads again and places those creates again
 * (at most PLACEMENT_ATTEMPTS times). A claim is written only when nothing counted changed since
 * the reading, under the same lock as the check, so two `up`s never count the same free RAM.
 */
async function placeAndClaim(inputs: ServerInputs, timings: Record<string, number> = {}): Promise<Placed> {
  // Same hosts: same names, addresses, keys and pins (a turn uses the first request's).
  const group = inputs.hosts
    .map((h) => `${h.name}=${sessionKey(h)}`)
    .sort()
    .join(",");
  return new Promise<Placed>((resolve, reject) => {
    const queue = placementQueue();
    queue.set(group, [
      ...(queue.get(group) ?? []),
      { inputs, startedAt: Date.now(), timings, resolve, reject },
    ]);
    void placementTurn(async () => {
      // An earlier turn took this request along.
      if ((queue.get(group) ?? []).length > 0) await placeBatch(group, inputs.hosts);
    });
  });
}

/**
 * The index in `steps` of the step a runLocked/runChecked error names as failed, from the
 * error's fields (RemoteStepError), never its text; -1 when it is no step's failure (a timeout,
 * a lost shell, the lock's take).
 */
function failedStepIndex(err: unknown, steps: readonly Step[]): number {
  const { index } = failedStep(err);
  return index < steps.length ? index : -1;
}

/**
 * The host lock's take failed with an exit status (flock's wait ran out, the lock file could
 * not be opened): the batch stopped there, none of its steps ran (review 9a R3). Not an unknown
 * outcome like a timeout or a lost shell (no exit status), after which the steps may have run.
 */
function lockNotTaken(err: unknown): boolean {
  const f = failedStep(err);
  return f.index === -1 && f.exitStatus !== null;
}

/** What a host's reading counts for the server `uuid` (its record; 0 when it has none). */
function ownCount(load: HostLoad, uuid: string): { ramMiB: number; vcpus: number } {
  const own = (load.capacity ?? []).filter((c) => c.uuid === uuid);
  const n = (t: string) => (/^[0-9]+$/.test(t) ? Number(t) : 0);
  return {
    ramMiB: own.reduce((a, c) => a + n(c.ramMiB), 0),
    vcpus: own.reduce((a, c) => a + n(c.vcpus), 0),
  };
}

/**
 * A create run again over its own record on `load`'s host: fits unless its flavor grew beyond
 * what the host has free beside its other servers (by placement's rules, chooseHost's: the
 * allocation ratio with the record's own count freed first, and the memory available right now
 * holding the whole flavor). The error names the host, the flavor, what is free and the fixes.
 */
function grownFits(load: HostLoad, i: ServerInputs): { host: string } | { error: string } {
  const own = ownCount(load, i.uuid);
  if (i.flavor.ramMiB <= own.ramMiB && i.flavor.vcpus <= own.vcpus) return { host: load.host };
  const free = freeCapacity(load);
  const ram = free.ramMiB + own.ramMiB;
  const vcpus = free.vcpus + own.vcpus;
  const where = `flavor: ${i.flavor.name} (${i.flavor.vcpus} vCPU, ${i.flavor.ramMiB} MiB) does not fit host ${load.host}, where server ${i.serverName} is recorded (a create run again stays on its host)`;
  const fixes = `pick a smaller flavor, free capacity on ${load.host}, or destroy the server first`;
  if (ram < i.flavor.ramMiB || vcpus < i.flavor.vcpus)
    return {
      error: `${where}, beside its other servers: ${ram} MiB RAM and ${vcpus} vCPUs free for it; ${fixes}`,
    };
  // chooseHost's test too (review 9a R7): the host's memory available right now holds the whole
  // new size, as for a new server (a guest of this server running now is not counted as free).
  if (load.memAvailableMiB < i.flavor.ramMiB)
    return { error: `${where}: only ${load.memAvailableMiB} MiB of memory available right now; ${fixes}` };
  return { host: load.host };
}

/** `load` with the server's record counting its (new) flavor instead of what it counted. */
function withGrowth(load: HostLoad, i: ServerInputs): HostLoad {
  const own = ownCount(load, i.uuid);
  return {
    ...load,
    allocatedRamMiB: load.allocatedRamMiB - own.ramMiB + i.flavor.ramMiB,
    allocatedVcpus: load.allocatedVcpus - own.vcpus + i.flavor.vcpus,
    capacity: [
      ...(load.capacity ?? []).filter((c) => c.uuid !== i.uuid),
      { uuid: i.uuid, ramMiB: String(i.flavor.ramMiB), vcpus: String(i.flavor.vcpus) },
    ],
  };
}

/**
 * One placement turn for the creates waiting over `hosts` (key `group`): settles every request
 * it takes, never throws. The requests are taken when the turn begins, and those that arrive
 * while it reads the hosts join it (when the reading covers their hosts); the creates that
 * arrive later all go into the next turn.
 */
async function placeBatch(group: string, hosts: readonly HostConnection[]): Promise<void> {
  const queue = placementQueue();
  const batch = queue.get(group) ?? [];
  queue.delete(group);
  const pending = new Set<PlacementRequest>(batch);
  const turnStart = Date.now();
  const settle = (r: PlacementRequest, outcome: { placed: Placed } | { error: unknown }) => {
    if (!pending.delete(r)) return;
    if ("placed" in outcome) r.resolve(outcome.placed);
    else r.reject(outcome.error);
  };
  const candidatesOf = (i: ServerInputs) => (i.host !== "" ? hosts.filter((h) => h.name === i.host) : hosts);
  // Every refusal comes before the first marker this create writes, so a refused create leaves
  // no marker behind: the host check first, then the UUID's claim is checked (it would be
  // refused after the name's was written), and the name's record check runs before the UUID's
  // claim.
  // The claim's steps that write after the name's marker (the UUID's claim and the record): a
  // failure there (an I/O error) may leave this create's markers behind (review 8b, Q7). Known
  // by identity, not position (review 9a R4), so a step added or moved keeps the rule.
  const writesAfterName = new WeakSet<Step>();
  const afterName = (step: Step): Step => {
    writesAfterName.add(step);
    return step;
  };
  const claimSteps = (i: ServerInputs): Step[] => [
    preflightStep(i),
    claimableStep(serverUuidOwned(i), i.owner),
    claimStep(serverOwned(i.serverName), i.owner),
    nameFreeStep(i),
    // The UUID too: it keys the instance folder (review S1). Its scan for another user of the
    // UUID (domains, folders, records) is claimableStep's above, in this batch under the same
    // lock, with nothing written since but this server's name marker: not repeated (issue 13,
    // 6-8 ms per create in the claim batch).
    afterName(claimStep({ ...serverUuidOwned(i), exists: undefined }, i.owner)),
    afterName(claimRecordStep(i)),
  ];
  // After the claim, same lock: the image is marked as used (an Image delete refuses from here
  // on), and a create run again over a domain it defined before keeps the volumes attached to
  // it since (issue 16); the listing is the last step's output.
  const afterSteps = (i: ServerInputs): Step[] => [
    ...imageUseSteps(i),
    keptVolumesStep(i.serverName, i.uuid, { quick: true }),
  ];
  const lastRefused = new Map<PlacementRequest, string>();
  // The host where a batch with the request's claim steps was sent past the guard (the claim
  // may be written there): a later failure of the request settles with that host, so create's
  // owner-guarded cleanup runs there (review 8, P4).
  const sent = new Map<PlacementRequest, HostConnection>();
  const fail = (r: PlacementRequest, error: unknown) => {
    const host = sent.get(r);
    if (host) settle(r, { placed: { host, listing: "", error, ifClaimed: true } });
    else settle(r, { error });
  };
  let firstLoaded = turnStart;
  try {
    let todo = batch;
    for (let attempt = 1; todo.length > 0; attempt++) {
      if (attempt > PLACEMENT_ATTEMPTS) {
        for (const r of todo)
          fail(
            r,
            new Error(
              `placement of server ${r.inputs.serverName}: the server records on host ${lastRefused.get(r) ?? "?"} changed between reading them and claiming, ${PLACEMENT_ATTEMPTS} times in a row (another kvmlab run is placing or resizing servers on the same hosts at the same moment); run the operation again, or run the other one first`,
            ),
          );
        break;
      }
      // A short jittered pause before reading again, so two runs refused by each other's claims
      // do not read and claim in step again.
      if (attempt > 1)
        await sleep(
          PLACEMENT_BACKOFF_MS.min + Math.random() * (PLACEMENT_BACKOFF_MS.max - PLACEMENT_BACKOFF_MS.min),
        );
      const began = Date.now();
      const wanted = hosts.filter((h) => todo.some((r) => candidatesOf(r.inputs).includes(h)));
      const read = new Map((await hostLoads(wanted)).map((l) => [l.host, l]));
      const loads = new Map(read);
      const loaded = Date.now();
      if (attempt === 1) {
        firstLoaded = loaded;
        // The creates that arrived while the hosts were read join this turn when the reading
        // covers their candidate hosts (the others wait for the next turn), as they joined
        // while the placement lock was taken before: N parallel creates take fewer turns.
        const late = queue.get(group) ?? [];
        const joining = late.filter((r) => candidatesOf(r.inputs).every((h) => read.has(h.name)));
        const staying = late.filter((r) => !joining.includes(r));
        if (staying.length > 0) queue.set(group, staying);
        else queue.delete(group);
        for (const r of joining) pending.add(r);
        batch.push(...joining);
        todo = batch;
        for (const r of batch)
          Object.assign(r.timings, {
            "placement.queue": Math.max(0, turnStart - r.startedAt),
            "placement.loads": loaded - Math.max(began, r.startedAt),
            placementBatch: batch.length,
          });
      }
      for (const r of todo) r.timings.placementAttempts = attempt;
      const claims = new Map<string, { host: HostConnection; requests: PlacementRequest[] }>();
      for (const r of todo) {
        const i = r.inputs;
        // A request whose claim batch was sent to a host and lost there (its claim may be partly
        // written: markers without a record, so the reading does not list it) is retried on that
        // host only, and any error settles with it (fail), so create's owner-guarded cleanup
        // runs where the markers may be (review 8b, Q3).
        const pinned = sent.get(r);
        const candidates = (pinned ? [pinned] : candidatesOf(i)).map((h) => loads.get(h.name) as HostLoad);
        // A create run again (after a failure or lost state) converges on the host it claimed;
        // with a bigger flavor than its record counts, only when the growth fits there beside
        // the other servers (review 8b, P6: its record is rewritten with the new flavor).
        const mine = candidates.find((l) => l.serverUuids.includes(i.uuid));
        const choice = mine ? grownFits(mine, i) : chooseHost(candidates, i.flavor);
        if ("error" in choice) {
          const where = pinned
            ? ` (its claim on host ${pinned.name} may be partly written after a lost claim batch, so it was retried there only and its claim is removed; run the operation again to place it anew)`
            : "";
          fail(r, new Error(`placement of server ${i.serverName}: ${choice.error}${where}`));
          continue;
        }
        if (!mine) loads.set(choice.host, withPlaced(loads.get(choice.host) as HostLoad, i));
        else loads.set(choice.host, withGrowth(mine, i));
        const host = hostNamed(hosts, choice.host);
        const entry = claims.get(choice.host) ?? { host, requests: [] };
        entry.requests.push(r);
        claims.set(choice.host, entry);
      }
      const again: PlacementRequest[] = [];
      const claimed = (r: PlacementRequest) => {
        r.timings["placement.claim"] = Date.now() - loaded;
        if (attempt > 1) r.timings["placement.retry"] = began - firstLoaded;
      };
      await Promise.all(
        [...claims.values()].map(async ({ host, requests }) => {
          // The guard: the host's records, but for the servers this turn claims there, are as read.
          const skip = requests.map((r) => r.inputs.uuid);
          const guard = recordsUnchangedStep(
            serverCapacityText(read.get(host.name)?.capacity ?? [], skip),
            skip,
          );
          // The guard (step 0) refused with its own exit status: nothing was written.
          const refusedByGuard = (err: unknown) => {
            const f = failedStep(err);
            return f.index === 0 && f.exitStatus === RECORDS_CHANGED_EXIT;
          };
          const retry = (r: PlacementRequest) => {
            lastRefused.set(r, host.name);
            again.push(r);
          };
          // Every claim on a host in one locked round trip; when one is refused, each again on
          // its own (the steps are idempotent for their owner), so each gets its own answer.
          if (requests.length > 1) {
            const parts = requests.map((r) => [...claimSteps(r.inputs), ...afterSteps(r.inputs)]);
            const steps = [guard, ...parts.flat()];
            try {
              const out = await runLocked(host, steps, { riders: true });
              let at = 1;
              requests.forEach((r, k) => {
                at += parts[k].length;
                claimed(r);
                settle(r, { placed: { host, listing: out[at - 1] } });
              });
              return;
            } catch (err) {
              if (refusedByGuard(err)) {
                requests.forEach(retry);
                return;
              }
              // The lock was not taken: nothing ran, each fails with that error (no cleanup
              // there, no retry that would wait for the same lock again).
              if (lockNotTaken(err)) {
                requests.forEach((r) => fail(r, err));
                return;
              }
              // Past the guard: any of these claims may be written (each is re-run below).
              if (failedStepIndex(err, steps) !== 0) for (const r of requests) sent.set(r, host);
              // below
            }
          }
          for (const r of requests) {
            const claim = claimSteps(r.inputs);
            const steps = [guard, ...claim, ...afterSteps(r.inputs)];
            try {
              const out = await runLocked(host, steps, { riders: true });
              claimed(r);
              settle(r, { placed: { host, listing: out[out.length - 1] } });
            } catch (err) {
              const at = failedStepIndex(err, steps);
              if (refusedByGuard(err)) retry(r);
              // A step after the claim failed: the claim is this create's (its cleanup removes it).
              else if (at > claim.length) settle(r, { placed: { host, listing: "", error: err } });
              else {
                // No step's exit status (a timeout, a lost shell), or a failure of the UUID's
                // claim or the record, after the name's marker (review 8b, Q7: an I/O error): the
                // claim may be partly written, so create's cleanup runs there once the name's
                // marker shows it is this owner's (as after a lost batch, P4). The steps before
                // (the host check, the UUID's check, the name's claim and record check) refuse
                // before this create writes anything; so does a lock not taken (nothing ran).
                const unknown = at === -1 ? !lockNotTaken(err) : writesAfterName.has(steps[at]);
                if (unknown) sent.set(r, host);
                fail(r, err);
              }
            }
          }
        }),
      );
      todo = again.filter((r) => pending.has(r));
    }
  } catch (err) {
    // Reading the hosts failed: the requests still open get its error.
    for (const r of [...pending]) fail(r, err);
  }
  // Unreachable unless a bug left one open: never leave a create waiting forever.
  for (const r of [...pending]) fail(r, new Error("placement turn ended without an answer"));
}

function serialTail(text: string): string {
  // Keep the log readable and free of terminal control sequences.
  const esc = String.fromCharCode(27);
  return text
    .split(esc)
    .map((part, i) => (i === 0 ? part : part.replace(/^\[[0-9;?]*[A-Za-z]/, "")))
    .join("")
    .split("")
    .filter((c) => c === "\t" || c === "\n" || (c >= " " && c <= "~"))
    .join("")
    .trimEnd();
}

/**
 * Slow steps (virsh define/start/dominfo, readiness probes, serial log) run in the host's worker
 * shells: they need no lock, and in the main shell they would hold up the quick locked steps
 * (quota, placement, IPAM) of every other operation on that host (issue 13).
 */
const WORKER = { lane: "worker" } as const;

/** The volumes in the server's persistent definition (its UUID's), which a redefine keeps (issue 16). */
async function keptVolumes(
  host: HostConnection,
  i: Pick<ServerInputs, "serverName" | "uuid"> & { owner?: string },
): Promise<KeptVolume[]> {
  const [out] = await runChecked(host, [keptVolumesStep(i.serverName, i.uuid)], WORKER);
  return parseKeptVolumes(i.serverName, out, ownerIn(i));
}

async function readInfo(host: HostConnection, name: string): Promise<DomainInfo> {
  const [out] = await runChecked(host, [infoStep(name)], WORKER);
  return parseDomainInfo(out);
}

/** Waits (bounded by readiness.timeoutSec) until the guest answers; throws with the serial log tail. */
async function waitReady(
  inputs: ServerInputs,
  host: HostConnection,
  addresses: readonly ServerAddress[],
  m: OpMetrics,
): Promise<void> {
  const r: Readiness = inputs.readiness;
  if (r.kind === "none") return;
  await waited(m, async () => {
    const port: ServerPort | undefined = inputs.ports[0];
    const probeHost = r.kind === "serial" || !port ? host : hostNamed(inputs.hosts, port.dhcpHost);
    const ip = addresses[0]?.ip ?? "";
    const step = readinessProbeStep(inputs, ip, port);
    // A guest configured statically never takes a lease: the gate lifts after a while.
    const gated = readinessProbeStep(inputs, ip, port, { leaseGate: true });
    const started = Date.now();
    const gateMs = Math.min(20000, (r.timeoutSec * 1000) / 2);
    const deadline = started + r.timeoutSec * 1000;
    let last: string;
    for (let i = 0; ; i++) {
      m.probes += 1;
      const [res] = await runSteps(probeHost, [Date.now() - started < gateMs ? gated : step], WORKER);
      if (res.code === 0) return;
      last = res.stderr.trim().split("\n").slice(-1)[0] ?? "";
      if (Date.now() >= deadline) break;
      if (i % 10 === 9) {
        const info = await readInfo(host, inputs.serverName);
        if (info.state !== "running") {
          last = `the domain is ${info.state || "gone"}`;
          break;
        }
      }
      await sleep(500);
    }
    const [tail] = await runSteps(host, [serialTailStep(inputs)], WORKER);
    throw new Error(
      `server ${inputs.serverName} on host ${host.name} did not become ready (${step.label}) within ${r.timeoutSec} s` +
        `${last ? ` (last: ${last})` : ""}. Last lines of its serial console ${instancePaths(inputs).serialLog}:\n${serialTail(tail.stdout) || "(empty)"}`,
    );
  });
}

/** ACPI shutdown, bounded wait, then power off. */
async function stopDomain(host: HostConnection, name: string, m: OpMetrics, timeoutSec = 30): Promise<void> {
  await waited(m, async () => {
    await runChecked(host, [shutdownStep(name)], WORKER);
    const deadline = Date.now() + timeoutSec * 1000;
    while (Date.now() < deadline) {
      const info = await readInfo(host, name);
      if (!info.defined || info.state === "shut off") return;
      await sleep(300);
    }
    await runChecked(host, [destroyStep(name)], WORKER);
  });
}

async function startDomain(
  inputs: ServerInputs,
  host: HostConnection,
  addresses: readonly ServerAddress[],
  m: OpMetrics,
): Promise<void> {
  await waited(m, () => runChecked(host, [startStep(inputs.serverName)], WORKER));
  await waitReady(inputs, host, addresses, m);
}

function powerOf(info: DomainInfo): string {
  if (!info.defined) return "absent";
  if (info.state === "running") return "running";
  if (info.state === "shut off") return "stopped";
  return info.state;
}

function outputsFor(
  inputs: ServerInputs,
  host: HostConnection,
  domainType: "kvm" | "qemu",
  addresses: ServerAddress[],
  info: DomainInfo,
  lastMigrationMs: number,
): ServerOutputs & { lastMigrationMs: number } {
  const p = instancePaths(inputs);
  return {
    ...inputs,
    host: host.name,
    hostAddress: host.address,
    domainType,
    addresses,
    ips: addresses.map((a) => a.ip),
    macs: addresses.map((a) => a.mac),
    vncPort: info.vncPort,
    consoleUrl: info.vncPort > 0 ? `vnc://${host.address}:${info.vncPort}` : "",
    serialLog: p.serialLog,
    instanceDir: p.dir,
    actualPowerState: powerOf(info),
    metadataDrift: "",
    hostKeys: {},
    lastMigrationMs,
  };
}

/**
 * Allocates every port's address (idempotent per owner): the allocation id is the server's
 * UUID and port index, its holder the server's owner. `made` collects the ports whose entry this
 * call made, or found already this holder's, so a failed create releases only those: never an
 * entry from before holders that it took over (review 8, P5). With `adopt: false` (beside
 * placement, before the UUID's claim is known to be this create's) such an entry is not taken
 * over at all: `deferred` says to allocate again once the claim is.
 */
async function allocatePorts(
  inputs: ServerInputs,
  made: number[] = [],
  timings: AllocationTimings[] = [],
  adopt = true,
): Promise<{ addresses: ServerAddress[]; deferred: boolean }> {
  const out: ServerAddress[] = [];
  let deferred = false;
  for (const [i, port] of inputs.ports.entries()) {
    const dhcpHost = hostNamed(inputs.hosts, port.dhcpHost);
    const t: AllocationTimings = {};
    timings.push(t);
    const { ip, origin } = await allocateAddressOrigin(
      { host: dhcpHost, networkName: port.networkName, subnetName: port.subnetName },
      portOwner(inputs.uuid, i),
      {
        fixedIp: port.fixedIp === "" ? undefined : port.fixedIp,
        mac: port.mac,
        holder: inputs.owner,
        adopt,
        adoptSameMacOnly: true,
      },
      t,
    );
    if (origin === "made" || origin === "mine") made.push(i);
    if (origin === "deferred") deferred = true;
    out.push({
      networkName: port.networkName,
      subnetName: port.subnetName,
      ip,
      mac: port.mac,
      tap: port.tap,
    });
  }
  return { addresses: out, deferred };
}

/**
 * Releases the ports' addresses (only those in `only` when given). Allocations made before
 * issue 15 (by name) are released too; another owner's never (releaseAddress's holder).
 */
async function releasePorts(
  o: Pick<ServerInputs, "serverName" | "uuid" | "ports" | "hosts"> & { owner?: string },
  only?: readonly number[],
): Promise<void> {
  const holder = ownerIn(o);
  for (const [i, port] of o.ports.entries()) {
    if (only && !only.includes(i)) continue;
    const dhcpHost = hostNamed(o.hosts, port.dhcpHost);
    const ref = { host: dhcpHost, networkName: port.networkName, subnetName: port.subnetName };
    await releaseAddress(ref, portOwner(o.uuid, i), holder);
    if (!holder) await releaseAddress(ref, portOwner(o.serverName, i));
  }
}

/**
 * Live-migrates a running server from `src` to `dst` (see server/migrate.ts). Returns the time
 * the migration itself took.
 */
async function migrateServer(
  olds: ServerOutputs,
  src: HostConnection,
  dst: HostConnection,
  m: OpMetrics,
): Promise<number> {
  const dstType = await domainTypeOf(dst);
  if (dstType !== olds.domainType) {
    throw new Error(
      `server ${olds.serverName}: cannot live-migrate a ${olds.domainType} domain to host ${dst.name}, which runs ${dstType} domains; pin it to a host of the same kind`,
    );
  }
  // The guest on the source must be this owner's before anything of it moves (issue 15): checked
  // before the destination is prepared, so a refusal leaves both hosts as they were.
  const srcOwner = ownerIn(olds);
  const srcGuards = srcOwner
    ? [guardStep(serverOwned(olds.serverName), [srcOwner]), guardStep(serverUuidOwned(olds), [srcOwner])]
    : [];
  // The destination an earlier, unfinished attempt noted in the source's record (review 9b M1).
  const pendingOut = await runChecked(src, [...srcGuards, pendingMigrationStep(olds)]);
  const pending = pendingOut[pendingOut.length - 1].trim();
  const before = await readInfo(src, olds.serverName);
  if (before.state !== "running") {
    throw new Error(
      `server ${olds.serverName} is ${powerOf(before)} on ${src.name}; live migration needs it running (set powerState "running" first, or replace it)`,
    );
  }
  // The stream runs over TLS (virsh migrate --tls): both hosts' certificates first, before
  // anything of the guest is prepared on the destination.
  await prepareMigrationTls(src, dst);
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const tag = `kvmlab-migrate-${olds.serverName}-${crypto.randomBytes(6).toString("hex")}`;
  const xml = withDomainOwner(olds.domainXml[olds.domainType], ownerIn(olds));
  const owner = ownerIn(olds);
  // An earlier attempt's leftovers go first, also on this same destination (review 9c C2): the
  // note is cleared again after a refusal below, so every attempt starts clean, and the source's
  // record names one destination at a time (review 9b M1).
  if (pending !== "") {
    const left = await dropAbandoned(olds, pending, olds.hosts, src.name);
    if (left !== "") throw new Error(`server ${olds.serverName}: not migrated to ${dst.name}: ${left}`);
  }
  // The source's record names the destination before anything is written there, so a killed
  // `up` or an unknown outcome leaves a trace the next update or delete cleans up (review 9b M1).
  const ownName = srcOwner ? [guardStep(serverOwned(olds.serverName), [srcOwner])] : [];
  await runLocked(src, [...ownName, markMigratingStep(olds, olds.addresses, dst.name)]);
  const unmark = () =>
    runLocked(src, [...ownName, clearMigratingStep(olds, olds.addresses, dst.name)]).then(
      () => undefined,
      () => undefined,
    );
  // Removes what this call made on the destination; clears the note on the source when nothing stays.
  const undo = async (c: Claimed | undefined, vols: ReturnType<typeof parseAttachedVolumes>) => {
    const left = await undoDestination(olds, dst, c, vols);
    if (left === "") await unmark();
    return left;
  };
  // The destination's capacity (review 8 P2): under its lock, the flavor is checked by
  // placement's rules before anything is written there (a refusal leaves both hosts as they
  // were), and the server's reservation record is written in the same batch, so every placement
  // from then on counts the guest's RAM there (its guard sees the new line). The normal record
  // replaces it once the guest runs there; a failure with the guest on the source removes it.
  const reserve = reservationStep(olds, olds.addresses, src.name);
  const claims = owner
    ? [claimStep(serverOwned(olds.serverName), owner), claimStep(serverUuidOwned(olds), owner)]
    : [];
  // First batch: the refusals, then the claims (they refuse a record there without a marker, so
  // they come before the reservation), last, so that the batch's outputs say which markers this
  // call made (review 9b M2): only those are released again after a failure.
  const claimBatch: Step[] = [
    ...(owner
      ? [
          // The UUID's and the name's refusals before anything is written (as at create).
          claimableStep(serverUuidOwned(olds), owner),
          claimableStep(serverOwned(olds.serverName), owner),
        ]
      : []),
    migrationFitsStep(olds, dst.name, src.name, PLACEMENT),
    ...claims,
  ];
  // What this call made on the destination: undefined while unknown (the batch failed at a claim,
  // or an unknown outcome, a timeout).
  let claimed: Claimed | undefined;
  try {
    const out = await runLocked(dst, claimBatch, { timeoutMs: 120000 });
    claimed = {
      name: owner !== "" && claimedNow(out[claimBatch.indexOf(claims[0])]),
      uuid: owner !== "" && claimedNow(out[claimBatch.indexOf(claims[1])]),
    };
  } catch (err) {
    // A refusal before the claims wrote nothing; from them on (or an unknown outcome, a
    // timeout) what this call may have written is removed again (its markers kept: unknown).
    const at = failedStepIndex(err, claimBatch);
    if (at !== -1 && (claims.length === 0 || at < claimBatch.indexOf(claims[0]))) {
      await unmark();
      throw err;
    }
    throw withNote(err, await undo(undefined, []));
  }
  // Second batch: the fit check again with the reservation (under the same lock hold, so no
  // placement comes between them), then the same files (overlay on its own copy of the image,
  // seed ISO). Attached volumes travel with the guest (issue 16): empty files of their size on
  // the destination, copied by the migration itself.
  let volumes: ReturnType<typeof parseAttachedVolumes> = [];
  try {
    await runLocked(
      dst,
      [
        migrationFitsStep(olds, dst.name, src.name, PLACEMENT),
        reserve,
        preflightStep(olds),
        ...materializeSteps(olds, listenOn(xml, dst), { define: false }),
      ],
      { timeoutMs: 120000 },
    );
    const [volOut] = await runChecked(src, [attachedVolumesStep(olds.serverName)]);
    const attached = parseAttachedVolumes(volOut);
    if (attached.length > 0) await runLocked(dst, [prepareVolumesStep(attached)], { timeoutMs: 600000 });
    volumes = attached;
    // Its key as pinned (configured, recorded, or seen first in this run by the step above).
    if (!hostKeyRecord(dst))
      throw new Error(`host ${dst.name}: no pinned host key to check the migration target against`);
  } catch (err) {
    throw withNote(err, await undo(claimed, volumes));
  }
  const pin = { fingerprint: hostKeyRecord(dst) };
  let authorizedKeysFile = "";
  let migratedMs: number;
  try {
    const [pub] = await runChecked(src, [migrationKeyStep(olds.serverName, tag)]);
    const [factsOut] = await runChecked(dst, [destinationFactsStep()]);
    const facts = parseDestinationFacts(factsOut);
    authorizedKeysFile = facts.authorizedKeysFile;
    const keys = facts.hostKeys.filter(
      (k) => fingerprintOfKeyBlob(Buffer.from(k.split(" ")[1], "base64")) === pin.fingerprint,
    );
    if (keys.length === 0) {
      throw new Error(
        `host ${dst.name}: none of its sshd host keys matches the pinned ${pin.fingerprint}; not migrating`,
      );
    }
    if (!authorizedKeysFile)
      throw new Error(`host ${dst.name}: cannot tell which authorized keys file its sshd reads`);
    await runLocked(dst, [
      authorizeStep(
        authorizedKeysFile,
        pub,
        tag,
        [src.address, src.tunnelAddress].filter((a) => a !== ""),
      ),
    ]);
    const t = Date.now();
    await waited(m, () =>
      runChecked(
        src,
        [
          uploadStep(`${migrationDir(olds.serverName)}/known_hosts`, knownHostsText(dst, keys), {
            mode: "0600",
          }),
          migrateStep(
            olds.serverName,
            dst,
            olds.image.disk !== "",
            240,
            vncMove(xml, src, dst),
            migrateDisks(olds.image.disk !== "", volumes),
          ),
        ],
        { timeoutMs: 260000 },
      ),
    );
    migratedMs = Date.now() - t;
  } catch (err) {
    // Never delete a copy that might be the only one (issue 15): stop libvirtd's job first,
    // then read BOTH hosts and act only on a certain outcome.
    await runSteps(src, [abortMigrationStep(olds.serverName)]).catch(() => undefined);
    const [s, d] = await Promise.all([
      readInfo(src, olds.serverName).catch(() => undefined),
      readInfo(dst, olds.serverName).catch(() => undefined),
    ]);
    const outcome = migrationOutcome(s, d);
    const revoked = await revokeKey(dst, authorizedKeysFile, tag);
    await runSteps(src, [migrationCleanupStep(olds.serverName)]).catch(() => undefined);
    const msg = err instanceof Error ? err.message : String(err);
    if (outcome === "source") {
      // The guest runs on the source and the destination has no domain: drop what was prepared.
      const undone = await undo(claimed, volumes);
      throw new Error(`${msg}${revoked}${undone}`, { cause: err });
    }
    if (outcome === "unknown")
      throw new Error(
        `${msg}\nserver ${olds.serverName}: after the failed migration ${src.name} reports ${s ? powerOf(s) : "nothing (unreachable)"} and ${dst.name} reports ${d ? powerOf(d) : "nothing (unreachable)"}; nothing was deleted on either host (its capacity reservation on ${dst.name} stays, counting ${olds.flavor.ramMiB} MiB there). Check both with "virsh list --all", keep the running copy, then run "pulumi refresh" and "pulumi up"${revoked}`,
        { cause: err },
      );
    // "destination": the migration completed after all; finish the move below.
    migratedMs = 0;
  }
  if (authorizedKeysFile) {
    const revoked = await revokeKey(dst, authorizedKeysFile, tag);
    await runSteps(src, [migrationCleanupStep(olds.serverName)]).catch(() => undefined);
    await runLocked(dst, [recordStep(olds, olds.addresses)]);
    await runLocked(src, [...guardedDelete(olds, ownerIn(olds)), dropVolumesStep(volumes, "source")]);
    if (revoked) throw new Error(`server ${olds.serverName} moved to ${dst.name}, but${revoked}`);
    return migratedMs;
  }
  await runLocked(dst, [recordStep(olds, olds.addresses)]);
  await runLocked(src, [...guardedDelete(olds, ownerIn(olds)), dropVolumesStep(volumes, "source")]);
  return migratedMs;
}

/**
 * Both hosts of a migration get kvmlab's migration TLS material (made once per host, kept) and
 * trust each other's CA (server/migrate.ts); only certificates cross between the hosts.
 */
async function prepareMigrationTls(src: HostConnection, dst: HostConnection): Promise<void> {
  const cas = await Promise.all(
    [src, dst].map(async (h) => {
      const [out] = await runLocked(h, [migrationTlsStep(h.name, migrationTlsAddresses(h))]);
      const ca = parseCaCertificate(out);
      if (!ca)
        throw new Error(`host ${h.name}: making its migration TLS certificates printed no CA certificate`);
      return ca;
    }),
  );
  await Promise.all([
    runLocked(src, [trustPeerStep(dst.name, cas[1])]),
    runLocked(dst, [trustPeerStep(src.name, cas[0])]),
  ]);
}

/**
 * The domain XML for `host`: a console listening on "management" (templates/domain.ts) gets the
 * management address of the host placement chose (or the migration's destination), validated.
 */
function listenOn(xml: string, host: HostConnection): string {
  return fillManagementListen(xml, host.address, `host ${host.name}`);
}

/**
 * The XML a host gets: the rendered one with the owner in kvmlab's metadata (issue 14) and the
 * console's management address filled in.
 */
function hostXml(
  o: Pick<ServerInputs, "domainXml"> & { owner?: string },
  type: "kvm" | "qemu",
  host: HostConnection,
): string {
  return listenOn(withDomainOwner(o.domainXml[type], ownerIn(o)), host);
}

/** The VNC listen address a migration moves from and to (only for a "management" console). */
function vncMove(
  xml: string,
  src: HostConnection,
  dst: HostConnection,
): { from: string; to: string } | undefined {
  return xml.includes(MANAGEMENT_ADDRESS_PLACEHOLDER)
    ? { from: listenOn(xml, src) && src.address, to: listenOn(xml, dst) && dst.address }
    : undefined;
}

/**
 * The delete batch: refuses another owner's server (its name or its UUID) first, then releases
 * both markers (no guard for state from before owners; a UUID unmarked since a state from before
 * its marker passes).
 */
function guardedDelete(
  o: Pick<ServerInputs, "serverName" | "uuid" | "image" | "ports" | "domainXml">,
  owner: string,
): Step[] {
  const owned = serverOwned(o.serverName);
  const uuid = serverUuidOwned(o);
  return owner
    ? [
        guardStep(owned, [owner]),
        guardStep(uuid, [owner]),
        deleteStep(o),
        releaseOwnerStep(uuid, [owner]),
        releaseOwnerStep(owned, [owner]),
      ]
    : [deleteStep(o)];
}

/** `err` with `note` appended to its message ("" keeps it as it is). */
function withNote(err: unknown, note: string): unknown {
  if (note === "") return err;
  return new Error(`${err instanceof Error ? err.message : String(err)}${note}`, { cause: err });
}

/** The owner markers one migration call made on its destination (claimedNow of its claims). */
interface Claimed {
  name: boolean;
  uuid: boolean;
}

/**
 * Removes what a failed live migration prepared on its destination while the guest runs on the
 * source (review 9b M2; best effort): under the destination's lock, owner-guarded, and only while
 * no domain named like the server with its UUID is defined there (noDomainHereStep): the instance folder (overlay,
 * seed ISO), the reservation record (deleteStep removes only a record of this UUID), the
 * volumes prepared for it, and the owner markers this call made (`claimed`; undefined when that
 * is unknown: then they are kept, and the text says so). Returns "" when nothing stays, else the
 * text to append to the error, naming what stays and how to remove it.
 */
async function undoDestination(
  o: ServerOutputs,
  dst: HostConnection,
  claimed: Claimed | undefined,
  volumes: ReturnType<typeof parseAttachedVolumes>,
): Promise<string> {
  const owner = ownerIn(o);
  const name = serverOwned(o.serverName);
  const uuid = serverUuidOwned(o);
  const markers = (c: Claimed) =>
    [
      c.uuid ? ownerMarkerPath(uuid.kind, ...uuid.key) : "",
      c.name ? ownerMarkerPath(name.kind, ...name.key) : "",
    ].filter((x) => x !== "");
  try {
    await runLocked(dst, [
      ...(owner ? [guardStep(name, [owner]), guardStep(uuid, [owner])] : []),
      noDomainHereStep(o),
      deleteStep(o),
      ...(volumes.length > 0 ? [dropVolumesStep(volumes, "destination")] : []),
      ...(owner && claimed?.uuid ? [releaseOwnerStep(uuid, [owner])] : []),
      ...(owner && claimed?.name ? [releaseOwnerStep(name, [owner])] : []),
    ]);
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).trim().replace(/\s*\n\s*/g, " ");
    const left = owner ? markers(claimed ?? { name: true, uuid: true }) : [];
    return `\nserver ${o.serverName}: what this migration prepared on ${dst.name} could not be removed (${why}); its capacity reservation ${recordPath("server", o.serverName)} (counting ${o.flavor.ramMiB} MiB there), its instance folder ${instancePaths(o).dir}${left.length > 0 ? ` and the owner markers ${left.join(", ")}` : ""} may stay until it is: run the update again (a new attempt replaces them; the next update or delete of the server removes them), or remove them by hand on ${dst.name}, only while no domain ${o.serverName} is defined there and the record carries "uuid": "${o.uuid}" and a "${RESERVATION_FIELD}" field`;
  }
  if (!owner || claimed !== undefined) return "";
  return `\nserver ${o.serverName}: the owner markers ${markers({ name: true, uuid: true }).join(", ")} on ${dst.name} were kept (this attempt cannot tell whether it made them); they refuse only a server ${o.serverName} of another owner there: remove them by hand when no server ${o.serverName} of yours is on ${dst.name}`;
}

/**
 * Removes what an unfinished live migration of this server (a killed `up`, an unknown outcome
 * left alone, a failed cleanup; review 9b M1) left on host `name`, the destination the record on
 * its source `src` named (MIGRATING_FIELD), in ONE batch under that host's lock (review 9c C5):
 * owner-guarded, only while no domain named like the server with its UUID is defined there (noDomainHereStep;
 * libvirtd not answering refuses), and only when the server's record there is its reservation
 * or absent (abandonedRecordGateStep; its normal record or another server's is left alone): its
 * instance folder, that record and its owner markers. A host no longer among the server's hosts
 * is skipped. Returns "" when nothing stays (or it was left alone), else the text of the error
 * (what stays, and the ways out: make the host answer, or drop the note on `src`; review 9c C3).
 */
async function dropAbandoned(
  o: ServerOutputs,
  name: string,
  hosts: readonly HostConnection[],
  src: string,
): Promise<string> {
  const at = hosts.find((h) => h.name === name);
  if (!at) return "";
  const owner = ownerIn(o);
  const owned = serverOwned(o.serverName);
  const uuid = serverUuidOwned(o);
  const gate = abandonedRecordGateStep(o);
  const here = noDomainHereStep(o);
  const batch: Step[] = [
    ...(owner ? [guardStep(owned, [owner]), guardStep(uuid, [owner])] : []),
    here,
    gate,
    deleteStep(o),
    ...(owner ? [releaseOwnerStep(uuid, [owner]), releaseOwnerStep(owned, [owner])] : []),
  ];
  try {
    await runLocked(at, batch);
    return "";
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).trim().replace(/\s*\n\s*/g, " ");
    if (why.includes(`step "${gate.label}" failed with exit status ${NOT_ABANDONED_EXIT}`)) return "";
    const rec = recordPath("server", o.serverName);
    const dropNote = `if ${name} is gone for good, drop the note on ${src}: remove the "${MIGRATING_FIELD}": "${name}" line from ${rec} there (sed -z -i 's/,\\n  "${MIGRATING_FIELD}": "[A-Za-z0-9._-]*"//' ${rec}) and run again`;
    if (why.includes(`step "${here.label}" failed with exit status ${DOMAIN_HERE_EXIT}`))
      return `an earlier live migration of it to ${name} did not finish, and a domain ${o.serverName} of its UUID ${o.uuid} is defined on ${name} (the guest may have moved there): nothing there was removed, and kvmlab does not take that domain over. Fix: find which host runs the guest; if it runs on ${name}, remove the server from the state ("pulumi state delete") and manage that domain by hand, or replace the server; if it is a stale copy, remove that domain on ${name} by hand (virsh undefine ${o.serverName}) and run again; ${dropNote}`;
    return `an earlier live migration of it to ${name} did not finish, and what it left there could not be removed (${why}): its capacity reservation ${rec} (counting ${o.flavor.ramMiB} MiB there), its instance folder ${instancePaths(o).dir} and its owner markers. Fix: make ${name} answer (libvirtd too) and run again, or, only while no domain ${o.serverName} is defined on ${name} and the record carries "uuid": "${o.uuid}" and a "${RESERVATION_FIELD}" field, remove them there by hand and run again; ${dropNote}`;
  }
}

/**
 * Revokes the one-off migration key on the destination (three tries). Returns "" when it is
 * gone, else the text to append to the error (a key left authorized is reported, never hidden).
 */
async function revokeKey(dst: HostConnection, authorizedKeysFile: string, tag: string): Promise<string> {
  if (!authorizedKeysFile) return "";
  let last = "";
  for (let i = 0; i < 3; i++) {
    try {
      await runLocked(dst, [revokeStep(authorizedKeysFile, tag)]);
      return "";
    } catch (e) {
      last = e instanceof Error ? e.message : String(e);
    }
  }
  return `\nrevoking the one-off migration key on ${dst.name} failed: ${last}. Remove the line tagged ${tag} from ${authorizedKeysFile} on ${dst.name} by hand`;
}

const server = defineResource<ServerInputs, ServerOutputs>({
  type: "Server",
  inputKeys: SERVER_INPUT_KEYS,
  outputKeys: [
    "hostAddress",
    "domainType",
    "addresses",
    "ips",
    "macs",
    "vncPort",
    "consoleUrl",
    "serialLog",
    "instanceDir",
    "actualPowerState",
    "metadataDrift",
    "lastMigrationMs",
    "hostKeys",
  ],
  secretOutputs: ["hosts"],
  check: (news, olds) => checkServerInputs(news, olds),
  diff: diffServer,
  // Charged by the kit before create (a refused server leaves nothing), resized first at update.
  quota: charges(
    (i) => serverUsage(i.flavor.vcpus, i.flavor.ramMiB, i.ports.length),
    (o) => [`server:${o.uuid}`],
  ),

  async create(inputs) {
    const m = startMetrics("create", inputs.serverName);
    let host: HostConnection | undefined;
    let ifClaimed = false;
    let addresses: ServerAddress[] = [];
    const allocated: number[] = [];
    try {
      // Locks are held only for decisions (quota, placement, IPAM, the image claim), never
      // across define, boot or readiness, so parallel creates overlap their waits (issue 13).
      // (The kit reserved the quota before this call, under the controller's lock: see `quota`.)
      // The capability probe (cached per host) runs beside placement instead of after it.
      for (const h of inputs.host !== "" ? [hostNamed(inputs.hosts, inputs.host)] : inputs.hosts)
        void domainTypeOf(h).catch(() => undefined);
      const placing: Record<string, number> = {};
      const ipam: AllocationTimings[] = [];
      // The addresses (the DHCP hosts' locks) do not depend on the host: they are allocated
      // beside placement, which in one locked round trip on the chosen host checks it, claims
      // the server there, marks the image as used and lists the volumes a create run again
      // keeps (issue 16). Both are settled before any error is thrown, so the cleanup below
      // releases every address allocated and removes the claim; placement's error comes first.
      const [allocatedR, placedR] = await Promise.allSettled([
        phase(m, "ipam", () => allocatePorts(inputs, allocated, ipam, false)),
        phase(m, "placement", () => placeAndClaim(inputs, placing)),
      ]);
      if (placedR.status === "fulfilled") {
        host = placedR.value.host;
        ifClaimed = placedR.value.ifClaimed === true;
      }
      for (const [k, v] of Object.entries(placing))
        if (k !== "placementBatch" && k !== "placementAttempts") m.phases[k] = v;
      for (const t of ipam) {
        m.phases["ipam.wait"] = (m.phases["ipam.wait"] ?? 0) + (t.waitMs ?? 0);
        m.phases["ipam.work"] = (m.phases["ipam.work"] ?? 0) + (t.workMs ?? 0);
      }
      m.batches = {
        placement: placing.placementBatch ?? 0,
        ipam: Math.max(0, ...ipam.map((t) => t.batch ?? 0)),
        attempts: placing.placementAttempts ?? 0,
      };
      if (placedR.status === "rejected") throw placedR.reason;
      if (placedR.value.error !== undefined) throw placedR.value.error;
      if (allocatedR.status === "rejected") throw allocatedR.reason;
      addresses = allocatedR.value.addresses;
      // An address entry of this UUID from before holders is taken over only now that the
      // UUID's claim on the host is this create's (review 8, P5).
      if (allocatedR.value.deferred)
        addresses = (await phase(m, "ipam.adopt", () => allocatePorts(inputs, allocated, ipam))).addresses;
      const placed: HostConnection = placedR.value.host;
      const listing = placedR.value.listing;
      const domainType = await phase(m, "probe", () => domainTypeOf(placed));
      const running = inputs.powerState === "running";
      // The domain's info (state, VNC port) is read in the batch that defines it, or that starts
      // it: no round trip of its own after the wait.
      const define = (kept: readonly KeptVolume[]) => {
        const xml = withVolumeDisks(inputs.serverName, hostXml(inputs, domainType, placed), kept);
        return waited(m, () =>
          runChecked(
            placed,
            [
              ...materializeSteps(inputs, xml),
              recordStep(inputs, addresses),
              ...(running ? [] : [infoStep(inputs.serverName)]),
            ],
            { timeoutMs: 180000, ...WORKER },
          ),
        );
      };
      let defined: string[];
      if (keptListingHasDomain(listing)) {
        // A create run again over its own domain: a Volume may attach to it meanwhile, so read
        // again and define under the host's "volumes" lock, as update does (review L4).
        parseKeptVolumes(inputs.serverName, listing, inputs.owner);
        defined = await withNamedHostLock(placed, "volumes", async () =>
          define(await keptVolumes(placed, inputs)),
        );
      } else {
        // No domain of this server: no Volume can be attached to it (attach needs the domain).
        defined = await define(parseKeptVolumes(inputs.serverName, listing, inputs.owner));
      }
      let info: DomainInfo;
      if (running) {
        const [, out] = await waited(m, () =>
          runChecked(placed, [startStep(inputs.serverName), infoStep(inputs.serverName)], WORKER),
        );
        info = parseDomainInfo(out);
        await waitReady(inputs, placed, addresses, m);
      } else info = parseDomainInfo(defined[defined.length - 1]);
      const outs = outputsFor(inputs, placed, domainType, addresses, info, 0);
      finishMetrics(m, { host: placed.name });
      return { id: inputs.uuid, outs };
    } catch (err) {
      // Leave nothing of THIS server behind: domain, files, record (only once the host claim
      // was this owner's: `host` is set), and the addresses this call allocated. A create
      // refused for a name another owner holds touches nothing.
      // When the claim's outcome is unknown (placement's ifClaimed), only once the name's marker
      // shows it was written.
      if (host)
        await runLocked(host, [
          ...(ifClaimed ? [claimedByStep(serverOwned(inputs.serverName), inputs.owner)] : []),
          ...guardedDelete(inputs, inputs.owner),
        ]).catch(() => undefined);
      await releasePorts(inputs, allocated).catch(() => undefined);
      throw err;
    }
  },

  async read(_id, props) {
    const host = hostNamed(props.hosts, props.host);
    const info = await readInfo(host, props.serverName);
    if (!info.defined) return undefined;
    const vncPort = info.vncPort;
    const type = props.domainType ?? "kvm";
    return {
      ...props,
      // kvmlab's metadata as the host has it, against the state's XML (issue 14).
      metadataDrift:
        props.domainXml && typeof props.domainXml[type] === "string"
          ? metadataDrift(withDomainOwner(props.domainXml[type], ownerIn(props)), info.metadata, {
              owner: ownerIn(props),
              project: props.project ?? "",
            })
          : "",
      actualPowerState: powerOf(info),
      vncPort,
      consoleUrl: vncPort > 0 ? `vnc://${host.address}:${vncPort}` : "",
    };
  },

  async update(_id, olds, news) {
    const m = startMetrics("update", news.serverName);
    const plan = planUpdate(olds, news);
    if (news.image.kind === "disk" && news.flavor.diskGiB < olds.flavor.diskGiB) {
      throw new Error(
        `flavor: ${news.flavor.name} has a ${news.flavor.diskGiB} GiB disk, smaller than the ${olds.flavor.diskGiB} GiB the server has; disks do not shrink: pick a flavor with diskGiB >= ${olds.flavor.diskGiB} or replace the server`,
      );
    }
    let host = hostNamed(news.hosts, olds.host);
    let lastMigrationMs = (olds as ServerOutputs & { lastMigrationMs?: number }).lastMigrationMs ?? 0;
    if (plan.migrateTo !== "") {
      const dst = hostNamed(news.hosts, plan.migrateTo);
      lastMigrationMs = await migrateServer(olds, host, dst, m);
      host = dst;
    }
    const type = olds.domainType;
    // A server whose state predates the UUID's marker (review S1) gets it here, like the name's
    // marker of a state from before owners: only in an update (a no-change up makes no call).
    const guarded = await runLocked(host, [
      guardStep(serverOwned(news.serverName), [news.owner, ownerIn(olds)], true),
      guardStep(serverUuidOwned(news), [news.owner, ownerIn(olds)], true),
      pendingMigrationStep(news),
    ]);
    // A migration that did not finish (its source's record names the destination, review 9b
    // M1): what it left there is removed before this update changes anything, then the note.
    const pending = guarded[2].trim();
    if (pending !== "" && pending !== host.name) {
      const left = await dropAbandoned(olds, pending, [...news.hosts, ...olds.hosts], host.name);
      if (left !== "") throw new Error(`server ${news.serverName}: nothing was changed: ${left}`);
      await runLocked(host, [
        guardStep(serverOwned(news.serverName), [news.owner, ownerIn(olds)]),
        clearMigratingStep(olds, olds.addresses, pending),
      ]);
    }
    const current = await readInfo(host, news.serverName);
    if (!current.defined)
      throw new Error(
        `server ${news.serverName} is gone from host ${host.name}; run "pulumi refresh" to drop it from the state, then "pulumi up" recreates it`,
      );
    let running = current.state === "running";
    const wasRunning = running;
    // A resize that needs more RAM or vCPUs is checked against the host (review 8, P2).
    const grows = news.flavor.ramMiB > olds.flavor.ramMiB || news.flavor.vcpus > olds.flavor.vcpus;
    const resizeFits = () => resizeFitsStep(news, host.name, PLACEMENT);
    // Only the record grows, not the guest: no MemAvailable test (review 9b M7).
    const recordFits = () => resizeFitsStep(news, host.name, PLACEMENT, { memAvailable: false });
    if (plan.redefine || plan.resizeDisk) {
      // The new XML lists no volume; the ones attached stay attached (issue 16). Read before the
      // stop, so a refusal leaves the guest running.
      withVolumeDisks(news.serverName, hostXml(news, type, host), await keptVolumes(host, news));
      // A bigger flavor must fit the host (refused while the guest still runs); the record
      // then counts the new size for every placement from here on.
      if (grows) await runLocked(host, [resizeFits(), recordStep(news, olds.addresses)]);
      // Whether the define may have run: from then on the domain may have the new flavor, and
      // the bigger record stays (a step after it failed, or an unknown outcome, a timeout:
      // conservative). The define step's own failure (virsh define's exit status) defined nothing.
      let defineMayHaveRun = false;
      try {
        if (running) await stopDomain(host, news.serverName, m);
        running = false;
        // Read again and define under the host's "volumes" lock (the one a Volume's attach and
        // detach hold): an attachment made meanwhile is not lost.
        await withNamedHostLock(host, "volumes", async () => {
          const xml = withVolumeDisks(
            news.serverName,
            hostXml(news, type, host),
            await keptVolumes(host, news),
          );
          const steps = [
            preflightStep(news),
            ...materializeSteps(news, xml, { alsoOwners: [ownerIn(olds)] }),
            recordStep(news, olds.addresses),
          ];
          const define = steps.findIndex((s) => s.label === `define domain ${news.serverName}`);
          try {
            await waited(m, () => runLocked(host, steps, { timeoutMs: 180000 }));
          } catch (err) {
            const at = failedStepIndex(err, steps);
            defineMayHaveRun = at === -1 || define === -1 || at > define; // its own exit status: not defined
            throw err;
          }
        });
      } catch (err) {
        // A grown resize that failed before its define: the record written above with the new
        // flavor is rewritten with the old one (best effort, under the host's lock, owner-guarded
        // as the rest of update), so the host is not over-counted by the delta (review 8b, Q1).
        if (grows && !defineMayHaveRun)
          await runLocked(host, [
            guardStep(serverOwned(news.serverName), [news.owner, ownerIn(olds)]),
            recordStep(olds, olds.addresses),
          ]).catch(() => undefined);
        throw err;
      }
    } else if (plan.metadata) {
      // Only kvmlab's metadata (project, owner, stack…) changed, or refresh found it drifted: set
      // it in place in the live guest and its persistent definition, keep the instance folder's
      // copy and the record in step. No stop, no define.
      // The domain must still be this server's (its UUID, checked again in the step).
      if (current.uuid !== "" && current.uuid !== news.uuid)
        throw new Error(
          `server ${news.serverName}: the domain of that name on host ${host.name} has UUID ${current.uuid}, not this server's ${news.uuid}; its metadata was left alone. Fix: run "pulumi refresh", then remove or rename that domain by hand if it is not kvmlab's`,
        );
      const xml = hostXml(news, type, host);
      const set = metadataStep(news, xml);
      // A flavor grown with the same XML (a raw provider call: the guest itself does not grow)
      // is written to the record here too, so it is checked first as a resize is (review 8b
      // Q5): a refusal changes nothing, neither the metadata nor the record.
      await runLocked(host, [
        ...(grows ? [recordFits()] : []),
        ...(set ? [set] : []),
        uploadStep(instancePaths(news).domainXml, xml, { mode: "0600" }),
        recordStep(news, olds.addresses),
      ]);
    } else if (canonicalJson(olds.flavor) !== canonicalJson(news.flavor)) {
      await runLocked(host, [...(grows ? [recordFits()] : []), recordStep(news, olds.addresses)]);
    }
    if (news.powerState === "running" && !running) await startDomain(news, host, olds.addresses, m);
    if (news.powerState === "stopped" && running) await stopDomain(host, news.serverName, m);
    // "external": powered by its agent; a redefine that stopped it starts it again.
    if (news.powerState === "external" && wasRunning && !running)
      await startDomain(news, host, olds.addresses, m);
    const info = await readInfo(host, news.serverName);
    const outs = outputsFor(news, host, type, olds.addresses, info, lastMigrationMs);
    finishMetrics(m, { host: host.name, migratedMs: plan.migrateTo !== "" ? lastMigrationMs : 0 });
    return outs;
  },

  async delete(_id, olds) {
    const m = startMetrics("delete", olds.serverName);
    const host = hostNamed(olds.hosts, olds.host);
    // The destination of a migration that did not finish (its source's record names it) is
    // cleaned up first, and the server's record (the only note of it) is removed only after that
    // succeeded, so a retry finds the note again (review 9c C1). Idempotent: no record, no note.
    const owner = ownerIn(olds);
    const guards = owner
      ? [guardStep(serverOwned(olds.serverName), [owner]), guardStep(serverUuidOwned(olds), [owner])]
      : [];
    const out = await waited(m, () => runLocked(host, [...guards, pendingMigrationStep(olds)]));
    const pending = out[out.length - 1].trim();
    if (pending !== "" && pending !== host.name) {
      const left = await dropAbandoned(olds, pending, olds.hosts, host.name);
      if (left !== "")
        throw new Error(
          `server ${olds.serverName} was not deleted (its record on ${host.name} keeps the note, so running the delete again retries this first): ${left}`,
        );
    }
    await waited(m, () => runLocked(host, guardedDelete(olds, owner)));
    await releasePorts(olds);
    finishMetrics(m, { host: host.name });
  },
});

export const serverProvider = server.provider;

/** Program-facing arguments of the Server resource (components/server.ts fills most of them). */
export interface ServerResourceArgs {
  /** libvirt domain name on the host. @default the resource name */
  readonly serverName?: pulumi.Input<string>;
  readonly uuid: pulumi.Input<string>;
  /** Candidate hosts (placement) — the private keys are secrets. */
  readonly hosts: pulumi.Input<pulumi.Input<HostConnectionArgs>[]>;
  /** Pin to this host; changing it later live-migrates. @default "" (placement decides once) */
  readonly host?: pulumi.Input<string>;
  readonly flavor: pulumi.Input<ServerFlavor>;
  readonly image: pulumi.Input<ServerImage>;
  readonly ports?: pulumi.Input<pulumi.Input<ServerPort>[]>;
  readonly domainXml: pulumi.Input<{ kvm: pulumi.Input<string>; qemu: pulumi.Input<string> }>;
  readonly cloudInit?: pulumi.Input<{ metaData: string; userData: string; networkConfig: string }>;
  /** @default "running" */
  readonly powerState?: pulumi.Input<PowerState>;
  /** @default { kind: "none" } */
  readonly readiness?: pulumi.Input<Partial<Readiness>>;
  /** Owner of the host objects. @default set by the kit: "<project>/<stack>/Server/<name>" */
  readonly owner?: pulumi.Input<string>;
  /** Project whose quotas it counts against (see InProjectArgs). @default the stack's `kvmlab:project`, else none */
  readonly project?: ProjectRef;
}

/** A server (`pulumi-nodejs:dynamic/kvmlab:Server`). */
export class Server extends KvmlabResource<ServerInputs, ServerOutputs> {
  declare readonly serverName: pulumi.Output<string>;
  declare readonly uuid: pulumi.Output<string>;
  declare readonly host: pulumi.Output<string>;
  declare readonly hostAddress: pulumi.Output<string>;
  declare readonly domainType: pulumi.Output<"kvm" | "qemu">;
  declare readonly addresses: pulumi.Output<ServerAddress[]>;
  declare readonly ips: pulumi.Output<string[]>;
  declare readonly macs: pulumi.Output<string[]>;
  declare readonly ports: pulumi.Output<ServerPort[]>;
  declare readonly vncPort: pulumi.Output<number>;
  declare readonly consoleUrl: pulumi.Output<string>;
  declare readonly serialLog: pulumi.Output<string>;
  declare readonly instanceDir: pulumi.Output<string>;
  declare readonly powerState: pulumi.Output<PowerState>;
  declare readonly actualPowerState: pulumi.Output<string>;
  declare readonly metadataDrift: pulumi.Output<string>;
  declare readonly changePlan: pulumi.Output<string>;
  declare readonly lastMigrationMs: pulumi.Output<number>;
  declare readonly hostKeys: pulumi.Output<Record<string, string>>;
  declare readonly hosts: pulumi.Output<HostConnection[]>;
  declare readonly owner: pulumi.Output<string>;

  constructor(name: string, args: ServerResourceArgs, opts: pulumi.CustomResourceOptions = {}) {
    super(server, name, { ...args, serverName: args.serverName ?? name }, opts);
  }
}
