/**
 * IP address management for subnets: one record per subnet on its DHCP host,
 * /var/lib/kvmlab/records/ipam/<ipamRecordName(network, subnet)>.json (keyed by the subnet's
 * full identity), changed only under the host lock (a commit only over the record it was
 * planned on), so two resources (in this process or another) never get the same address. Every allocation names its id (`owner`, e.g.
 * server:<uuid>:0) and the resource owner that made it (`holder`, kit/owner.ts): an id held by
 * another resource owner is refused, never handed out or released.
 *
 * Other providers (Server ports, routers, load balancers) call {@link allocateAddress} in their
 * create and {@link releaseAddress} in their delete. Allocations with a MAC become dnsmasq
 * `dhcp-host` entries (the subnet's dhcp-hostsfile), and dnsmasq re-reads them on SIGHUP, so a
 * port with a fixed IP gets exactly that address by DHCP.
 *
 * Serialization: plain functions over the host layer; nothing captured but other functions.
 */
import { hostsFileText, type IpamRecord } from "../core/ipam";
import { dhcpPaths, ipamRecordName, type DhcpPaths } from "../core/paths";
import { intToIp as intToIpv4, ipv4ToInt, tryParseCidr as parseCidr4 } from "../core/net";
import {
  checkRemotePath,
  failedStep,
  hostLockFree,
  lockedRider,
  readRecordStep,
  remoteStepError,
  recordPath,
  parseRecord,
  runChecked,
  runLocked,
  sessionKey,
  shQuote,
  showValue,
  withHostLock,
  type HostConnection,
  type RiderOutcome,
  type Step,
} from "./host";

/** A subnet's allocations and their dhcp-hostsfile text (one definition: core/ipam.ts). */
export { hostsFileText, type IpamRecord } from "../core/ipam";

/** Where a subnet's DHCP service lives, and IPv4 math (one definition each: core/). */
export { dhcpPaths, ipamRecordName, type DhcpPaths } from "../core/paths";
export { ipv4ToInt, intToIp as intToIpv4, tryParseCidr as parseCidr4 } from "../core/net";

/** Owner ids: letters, digits and `_.:-` (e.g. `server:web1:eth0`, `dhcp`). */
export function checkOwner(owner: string): string | undefined {
  return /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(owner)
    ? undefined
    : `owner: expected letters, digits and "_.:-", got ${showValue(owner)}`;
}

export function checkMacAddress(mac: string): string | undefined {
  return mac === "" || /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)
    ? undefined
    : `mac: expected lower-case aa:bb:cc:dd:ee:ff, got ${showValue(mac)}`;
}

/**
 * Chooses an address for `owner` (pure). The same owner gets its existing address back
 * (idempotent create); a fixed IP must be inside the CIDR, not the gateway, and free; a dynamic
 * one is the lowest free pool address not currently leased by dnsmasq.
 */
export function planAllocation(
  record: IpamRecord,
  owner: string,
  opts: {
    fixedIp?: string;
    mac?: string;
    leased?: readonly string[];
    holder?: string;
    adoptSameMacOnly?: boolean;
  } = {},
): { ip: string; record: IpamRecord; origin: AllocationOrigin } | { error: string } {
  const ownerError = checkOwner(owner) ?? checkMacAddress(opts.mac ?? "");
  if (ownerError) return { error: ownerError };
  const cidr = parseCidr4(record.cidr);
  if (!cidr)
    return {
      error: `subnet ${record.subnet}: its IPAM record has an invalid cidr ${showValue(record.cidr)}`,
    };
  const mine = Object.entries(record.allocations).find(([, a]) => a.owner === owner);
  const mac = opts.mac ?? "";
  const holder = opts.holder ?? "";
  // The same id made by another resource owner (two stacks, one server name or UUID): refuse.
  if (mine && holder && mine[1].holder && mine[1].holder !== holder)
    return {
      error: `subnet ${record.subnet}: the address ${mine[0]} of ${owner} belongs to ${mine[1].holder}, not to ${holder}; kvmlab never hands out or releases another owner's address. Fix: rename this resource, or remove it from the stack that owns it`,
    };
  const entry = holder ? { owner, mac, holder } : { owner, mac };
  // A new entry; this holder's own (or one without holders on either side); or an entry from
  // before holders that this holder takes over.
  const origin: AllocationOrigin = !mine ? "made" : holder && !mine[1].holder ? "adopted" : "mine";
  // An entry from before holders is taken over only with evidence that it is this owner's: its
  // MAC is this port's (review 8b, Q4: an owner id such as a server's UUID can be another
  // stack's, whose server is on another host, while IPAM spans the hosts).
  if (origin === "adopted" && opts.adoptSameMacOnly && mine && mine[1].mac !== mac)
    return {
      error: `subnet ${record.subnet}: the address ${mine[0]} of ${owner} has no holder (an entry from before holders) and its MAC ${mine[1].mac || "(none)"} is not this port's ${mac || "(none)"}: it may be another stack's server of the same UUID, so it is not taken over. Fix: give this server another uuid, or first destroy the server that uses this address (its delete releases the entry)`,
    };
  const withAlloc = (ip: string): { ip: string; record: IpamRecord; origin: AllocationOrigin } => ({
    ip,
    record: { ...record, allocations: { ...record.allocations, [ip]: entry } },
    origin,
  });
  if (opts.fixedIp !== undefined && opts.fixedIp !== "") {
    const n = ipv4ToInt(opts.fixedIp);
    if (Number.isNaN(n) || n <= cidr.network || n >= cidr.broadcast) {
      return {
        error: `fixedIp: ${showValue(opts.fixedIp)} is not a host address of ${record.cidr}; pick one inside it`,
      };
    }
    if (opts.fixedIp === record.gateway)
      return {
        error: `fixedIp: ${opts.fixedIp} is the gateway of subnet ${record.subnet}; pick another address`,
      };
    const holder = record.allocations[opts.fixedIp];
    if (holder && holder.owner !== owner) {
      return {
        error: `fixedIp: ${opts.fixedIp} in subnet ${record.subnet} is already allocated to ${holder.owner}; pick another address`,
      };
    }
    // An owner moving to a new fixed address gives up its old one.
    const rest = { ...record.allocations };
    if (mine) delete rest[mine[0]];
    return {
      ip: opts.fixedIp,
      record: { ...record, allocations: { ...rest, [opts.fixedIp]: entry } },
      origin,
    };
  }
  if (mine) return withAlloc(mine[0]);
  const leased = new Set(opts.leased ?? []);
  const start = ipv4ToInt(record.pool.start);
  const end = ipv4ToInt(record.pool.end);
  for (let n = start; n <= end; n++) {
    const ip = intToIpv4(n);
    if (ip === record.gateway || record.allocations[ip] || leased.has(ip)) continue;
    return withAlloc(ip);
  }
  return {
    error: `subnet ${record.subnet}: no free address left in the pool ${record.pool.start}-${record.pool.end}; widen allocationPool or release addresses`,
  };
}

/**
 * Removes every allocation of `owner` (pure, idempotent). With `holder`, an allocation another
 * resource owner made is kept (it is not this resource's to release).
 */
export function planRelease(record: IpamRecord, owner: string, holder = ""): IpamRecord {
  const allocations: IpamRecord["allocations"] = {};
  for (const [ip, a] of Object.entries(record.allocations)) {
    const theirs = holder !== "" && a.holder !== undefined && a.holder !== holder;
    if (a.owner !== owner || theirs) allocations[ip] = a;
  }
  return { ...record, allocations };
}

/**
 * A step writing `text` to `path` (created with mode 0600 or 0644, owned by the shell's user,
 * root on a kvmlab host): decoded into a temporary file next to it and renamed over it, so a
 * reader never sees half a file. For the IPAM commit, which runs under the DHCP host's lock on
 * every create's turn (issue 13): two processes (base64, mv) where uploadStep runs about twelve
 * (mkdir, sha256sum and cut twice, stat, mktemp, chmod, chown, …); 23-25 ms each measured on the
 * sandbox (session 9), 2-4 ms this way. The commit writes only when the record changed, so
 * uploadStep's "unchanged" test is not needed. The text travels as base64 in a quoted
 * here-document, like uploadStep's.
 */
export function quickWriteStep(label: string, path: string, text: string, mode: "0600" | "0644"): Step {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const pathError = checkRemotePath("path", path);
  if (pathError) throw new Error(`quickWriteStep: ${pathError}`);
  const b64 = Buffer.from(text, "utf8")
    .toString("base64")
    .replace(/.{1,76}/g, "$&\n");
  const eof = `KVL_EOF_${crypto.randomBytes(8).toString("hex")}`;
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  return {
    label,
    script: [
      `d=${shQuote(dir)}`,
      '[ -d "$d" ] || mkdir -p "$d" || exit 1',
      `umask ${mode === "0600" ? "077" : "022"}`,
      `p=${shQuote(path)}; t="$p.kvmlab-tmp.$$"`,
      // A leftover of a crashed write with the same pid would keep its mode: removed first.
      'if [ -e "$t" ] || [ -L "$t" ]; then rm -f "$t"; fi',
      `if base64 -d > "$t" <<'${eof}'`,
      `${b64}${eof}`,
      'then mv -f "$t" "$p" && exit 0; fi',
      'rm -f "$t"; exit 1',
    ].join("\n"),
  };
}

/**
 * Steps that store a record and make dnsmasq see it (hostsfile + SIGHUP when running): the
 * record (0600) and the hostsfile (0644) written by quickWriteStep, the pid read by the shell
 * (no cat): four processes for the commit instead of about twenty-five. The SIGHUP goes only to
 * a process whose name (/proc/<pid>/comm) is dnsmasq.
 */
export function ipamCommitSteps(record: IpamRecord, paths: DhcpPaths, networkName: string): Step[] {
  const name = ipamRecordName(networkName, record.subnet);
  return [
    quickWriteStep(
      `write record ipam/${name}`,
      recordPath("ipam", name),
      `${JSON.stringify({ ...record, network: networkName }, null, 2)}\n`,
      "0600",
    ),
    quickWriteStep(`upload ${paths.hostsFile}`, paths.hostsFile, hostsFileText(record), "0644"),
    {
      label: `reload dhcp hosts of subnet ${record.subnet}`,
      // Only a dnsmasq (review 9a R6): a stale pid file can name any process now, which SIGHUP
      // would stop or confuse. The name is read by the shell (no process) and must be exactly dnsmasq (subnet.ts's alive() greps for the substring).
      script: `pid=; c=; { read -r pid < ${shQuote(paths.pidFile)}; } 2>/dev/null; case "$pid" in ''|*[!0-9]*) ;; *) { read -r c < "/proc/$pid/comm"; } 2>/dev/null; if [ "$c" = dnsmasq ]; then kill -HUP "$pid"; fi ;; esac; true`,
    },
  ];
}

/** Step printing the addresses dnsmasq currently leases (one per line). */
export function leasedStep(paths: DhcpPaths): Step {
  return {
    label: "read dhcp leases",
    script: `if [ -f ${shQuote(paths.leaseFile)} ]; then awk '{print $3}' ${shQuote(paths.leaseFile)}; fi`,
  };
}

/** Where a subnet's IPAM lives: its DHCP host and names (outputs of the Subnet resource). */
export interface SubnetRef {
  readonly host: HostConnection;
  readonly networkName: string;
  readonly subnetName: string;
}

/** Timings of one allocation (benchmarks): waiting for its subnet's turn, then the turn. */
export interface AllocationTimings {
  /** From the call until its subnet's turn began (earlier turns of the subnet). */
  waitMs?: number;
  /** The turn: the reads, then the commit under the DHCP host's lock (other users of it first). */
  workMs?: number;
  /** How many allocations the turn served (this one included). */
  batch?: number;
}

/**
 * What an allocation did to its owner's entry (review 8, P5): `made` a new one; found it
 * already `mine` (this holder's, or no holder on either side); `adopted` an entry from before
 * holders, writing this holder into it; or `deferred` that adoption (with `adopt: false`:
 * nothing written, the address it would take given).
 */
export type AllocationOrigin = "made" | "mine" | "adopted" | "deferred";

/** The options of an allocation. */
export interface AllocationOptions {
  fixedIp?: string;
  mac?: string;
  /** The resource owner making the allocation (kept in the entry; another holder's is refused). */
  holder?: string;
  /**
   * false: do not take over an entry from before holders (answer `deferred` instead). A server
   * create allocates beside placement, before the UUID's claim is known to be its own.
   */
  adopt?: boolean;
  /**
   * true: an entry from before holders is taken over only when its MAC is `mac` (else refused,
   * naming the address, the subnet and the fix). A server's port: its owner id is the server's
   * UUID, which another stack's server on another host may carry (review 8b, Q4).
   */
  adoptSameMacOnly?: boolean;
}

/** One allocation waiting for its subnet's turn. */
interface AllocationRequest {
  owner: string;
  opts: AllocationOptions;
  startedAt: number;
  timings?: AllocationTimings;
  resolve: (a: { ip: string; origin: AllocationOrigin }) => void;
  reject: (err: unknown) => void;
}

/** Per subnet (DHCP host session, network, subnet): the allocations waiting and the turn chain. */
interface SubnetQueue {
  waiting: AllocationRequest[];
  /** Turns scheduled and not yet ended (the queue is dropped at 0). */
  turns: number;
  tail: Promise<void>;
}

/** The allocations waiting in this process, per subnet (shared by every provider: globalThis). */
function allocationQueues(): Map<string, SubnetQueue> {
  const g = globalThis as unknown as Record<symbol, Map<string, SubnetQueue> | undefined>;
  return (g[Symbol.for("kvmlab.ipamAllocationQueue.v1")] ??= new Map());
}

/**
 * Allocates an address in a subnet for `owner` (idempotent per owner). With `mac`, dnsmasq
 * hands that address to that MAC.
 *
 * Allocations that wait for the same subnet in this process share one turn of the DHCP host's
 * lock (issue 13): one reading of the record and the leases, each allocation planned in turn
 * on the record as the ones before it left it (each gets its own answer: a refused one changes
 * nothing and holds up none of the others), one commit. A turn serves what waited when it
 * began and what arrived while it read or waited for the DHCP host's lock in this process
 * (session 10); what arrives later waits for the next. Two round trips per turn: the reads (no
 * lock), then the commit under the lock behind a check that the record is as read (else the
 * turn reads, plans and commits again under the lock: see allocationTurn).
 */
export async function allocateAddress(
  ref: SubnetRef,
  owner: string,
  opts: AllocationOptions = {},
  timings?: AllocationTimings,
): Promise<string> {
  return (await allocateAddressOrigin(ref, owner, opts, timings)).ip;
}

/** allocateAddress, also telling what it did to the owner's entry (AllocationOrigin). */
export async function allocateAddressOrigin(
  ref: SubnetRef,
  owner: string,
  opts: AllocationOptions = {},
  timings?: AllocationTimings,
): Promise<{ ip: string; origin: AllocationOrigin }> {
  const key = `${sessionKey(ref.host)}|${ref.networkName}|${ref.subnetName}`;
  const queues = allocationQueues();
  let q = queues.get(key);
  if (!q) {
    q = { waiting: [], turns: 0, tail: Promise.resolve() };
    queues.set(key, q);
  }
  const queue = q;
  return new Promise<{ ip: string; origin: AllocationOrigin }>((resolve, reject) => {
    queue.waiting.push({ owner, opts, startedAt: Date.now(), timings, resolve, reject });
    queue.turns += 1;
    const turn = async (): Promise<void> => {
      // Allocations asked for in the same tick (the creates a placement turn released) join.
      await new Promise<void>((r) => setImmediate(r));
      try {
        const batch = queue.waiting.splice(0);
        if (batch.length > 0) await allocationTurn(ref, batch, queue.waiting);
      } finally {
        queue.turns -= 1;
        if (queue.turns === 0 && queues.get(key) === queue) queues.delete(key);
      }
    };
    queue.tail = queue.tail.then(turn, turn);
  });
}

/** The exit status of ipamUnchangedStep's refusal: the turn then runs locked (reads, plans and commits under the lock). */
export const IPAM_CHANGED_EXIT = 38;

/**
 * The IPAM turn's guard (issue 13): run under the DHCP host's lock as the first step of the
 * commit, refuses with exit 38 unless the subnet's record file is byte for byte `expected`, the
 * text the turn read and planned on (read by the shell itself: no process). Every writer of the
 * record (allocations, releases, the Subnet) holds that lock, so a commit is written only over
 * the record it was planned on: two runs never hand out the same address.
 */
export function ipamUnchangedStep(networkName: string, subnetName: string, expected: string): Step {
  const name = ipamRecordName(networkName, subnetName);
  return {
    label: `check that the IPAM record of subnet ${subnetName} is as read`,
    script: [
      `f=${shQuote(recordPath("ipam", name))}; cur=`,
      // -d '': the whole file, newlines kept; read's status at the end of the file is not a failure.
      `if [ -f "$f" ]; then { IFS= read -r -d '' cur < "$f"; } 2>/dev/null || :; fi`,
      `if [ "$cur" != ${shQuote(expected)} ]; then echo ${shQuote(`the IPAM record of subnet ${subnetName} changed since it was read (another writer, another kvmlab run or this one, allocated or released an address in it meanwhile)`)} >&2; exit ${IPAM_CHANGED_EXIT}; fi`,
    ].join("\n"),
  };
}

/**
 * Plans every allocation of `batch` in turn on `recText` (the record as read): the answers
 * (a refused one keeps its own reason) and the record to write (`undefined`: nothing to write).
 */
function planTurn(
  ref: SubnetRef,
  batch: readonly AllocationRequest[],
  recText: string,
  leasedText: string,
  answers: Map<AllocationRequest, { ip: string; origin: AllocationOrigin } | { error: unknown }>,
): { base: IpamRecord; next: IpamRecord } | undefined {
  const name = ipamRecordName(ref.networkName, ref.subnetName);
  answers.clear();
  const record = parseRecord<IpamRecord>(recText, `ipam/${name} (subnet ${ref.subnetName})`);
  if (!record)
    throw new Error(
      `subnet ${ref.subnetName} has no IPAM record on host ${ref.host.name}; create the Subnet first (add it to dependsOn)`,
    );
  const leased = leasedText.split("\n").filter((l) => l !== "");
  let next = record;
  for (const r of batch) {
    const { adopt, ...opts } = r.opts;
    const plan = planAllocation(next, r.owner, { ...opts, leased });
    if ("error" in plan) {
      answers.set(r, { error: new Error(plan.error) });
      continue;
    }
    // An entry from before holders is not taken over yet: nothing written for it.
    if (plan.origin === "adopted" && adopt === false) {
      answers.set(r, { ip: plan.ip, origin: "deferred" });
      continue;
    }
    next = plan.record;
    answers.set(r, { ip: plan.ip, origin: plan.origin });
  }
  return JSON.stringify(next) === JSON.stringify(record) ? undefined : { base: record, next };
}

/**
 * A commit's failure after which the record may hold what it wrote: a step after the record's
 * write (its index `at` in the batch) failed, or no step's (a timeout, a lost shell: the steps
 * may have run). The record's own write replaces the file by a rename, so its failure, like
 * the guard's or the lock's, leaves the record as it was.
 */
function recordMayBeWritten(err: unknown, at: number): boolean {
  const f = failedStep(err);
  return f.index > at || (f.index === -1 && f.exitStatus === null);
}

/**
 * `current` with this turn's changes undone (review 9a R8): every address whose entry the turn
 * changed (from `base`, the record it planned on, to `next`, what it wrote) and that `current`
 * still holds as the turn wrote it gets its entry from `base` back (none, for an address the
 * turn allocated). An address another writer changed since is left as it is. Pure.
 */
export function undoTurn(current: IpamRecord, base: IpamRecord, next: IpamRecord): IpamRecord {
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  const allocations = { ...current.allocations };
  const ips = new Set([...Object.keys(base.allocations), ...Object.keys(next.allocations)]);
  for (const ip of ips) {
    const was = base.allocations[ip];
    const wrote = next.allocations[ip];
    if (same(was, wrote) || !same(current.allocations[ip], wrote)) continue;
    if (was) allocations[ip] = was;
    else delete allocations[ip];
  }
  return { ...current, allocations };
}

/** Under the DHCP host's lock: writes `recText` (the record as read now) without the turn's changes. */
async function writeUndo(ref: SubnetRef, recText: string, base: IpamRecord, next: IpamRecord): Promise<void> {
  const name = ipamRecordName(ref.networkName, ref.subnetName);
  const current = parseRecord<IpamRecord>(recText, `ipam/${name} (subnet ${ref.subnetName})`);
  if (!current) return;
  // Written even when the record shows nothing of the turn: the hostsfile may.
  await runChecked(
    ref.host,
    ipamCommitSteps(
      undoTurn(current, base, next),
      dhcpPaths(ref.networkName, ref.subnetName),
      ref.networkName,
    ),
  );
}

/**
 * After a commit that failed past its guard (the hostsfile's write, dnsmasq's reload, a
 * timeout or a lost shell: the record may hold this turn's entries although every allocation
 * of the turn is refused), takes the lock again, reads the record and writes it back without
 * this turn's changes (undoTurn), hostsfile and reload too, so no address stays allocated
 * that nobody owns (review 9a R8). Throws when that fails too (the caller notes it). Between
 * the failed commit and the undo the lock is free: another writer may take an address the
 * undo would give back, which then stays theirs. The locked turn's step failures are undone
 * in the same hold instead (review 10a, finding 2); this serves the optimistic commit and
 * any commit whose shell was lost or timed out.
 */
async function undoCommit(ref: SubnetRef, base: IpamRecord, next: IpamRecord): Promise<void> {
  const name = ipamRecordName(ref.networkName, ref.subnetName);
  await withHostLock(ref.host, async ([recText]) => writeUndo(ref, recText, base, next), undefined, [
    readRecordStep("ipam", name),
  ]);
}

/**
 * One turn of a subnet's allocations: `first` (what waited when it began) and those that join
 * from `late` (the subnet's waiting list) once the record is read and the DHCP host's lock in
 * this process is first free (only when the turn has something to write or someone waits).
 * Settles every request, never throws.
 *
 * Optimistic first (issue 13): the record and the leases are read without the lock, every
 * allocation is planned on that reading, and the commit runs under the DHCP host's lock in one
 * round trip behind ipamUnchangedStep (or, when a placement claim batch on the DHCP host waits
 * for this turn's ticket, rides at the end of that batch, in its lock hold and round trip, and
 * skips hostLockFree and a lock take of its own: session 11), which refuses when the record
 * changed since the reading (another writer: another kvmlab run, or this one's releases and
 * Subnet updates). The lock is
 * held only for the check and the writes (about 10 ms), not across two round trips and the
 * planning, so a placement claim on the same host (the DHCP host is often the placed one) no
 * longer waits for them. A turn with nothing to write and nobody joined takes no lock and
 * waits for none. Requests that joined were planned on a reading older than they are: the
 * guard confirms their answers (addresses and refusals) under the lock even when nothing is
 * written.
 *
 * Refused once, the turn runs locked (review 9a R1): the record and the leases read in the
 * round trip that takes the lock, planned and committed before it is released, as before issue
 * 13. That turn cannot be refused, so a record that keeps changing (a burst of releases by
 * another stack's destroy) makes the allocation wait for the lock, never fail.
 *
 * A commit that fails after the record's write (review 9a R8) is undone under the lock before
 * the allocations are refused: in the locked turn's own hold when a step failed, else by
 * undoCommit, which takes the lock again.
 */
async function allocationTurn(
  ref: SubnetRef,
  first: readonly AllocationRequest[],
  late: AllocationRequest[],
): Promise<void> {
  const paths = dhcpPaths(ref.networkName, ref.subnetName);
  const name = ipamRecordName(ref.networkName, ref.subnetName);
  const answers = new Map<AllocationRequest, { ip: string; origin: AllocationOrigin } | { error: unknown }>();
  const batch = [...first];
  const turnStart = Date.now();
  const read = (): Step[] => [readRecordStep("ipam", name), leasedStep(paths)];
  // A commit that failed with the record maybe written: what it wrote over what.
  let sent: { base: IpamRecord; next: IpamRecord } | undefined;
  // Announced before the reading (session 11): a placement claim batch on the DHCP host that
  // takes the host's lock meanwhile waits for this turn's plan and carries its commit (guard
  // first) in its own lock hold and round trip, instead of the commit waiting for that batch and
  // taking the lock again after it.
  const ticket = lockedRider(ref.host);
  try {
    try {
      const [recText, leasedText] = await runChecked(ref.host, read());
      let plan = planTurn(ref, batch, recText, leasedText, answers);
      // A turn with nothing to write and nobody waiting answers from this reading at once, as
      // before session 10: it takes no lock and waits for none (review 10a, finding 3).
      let joined = false;
      let riding = false;
      if (!plan && late.length === 0) ticket.withdraw();
      else if (ticket.wanted()) riding = true;
      else {
        // Withdrawn first: a claim batch that takes the lock from here on does not wait for it.
        ticket.withdraw();
        // The commit waits for the DHCP host's in-process lock (a placement claim batch on the
        // same host holds it for 30-150 ms): the wait comes before the planning instead.
        await hostLockFree(ref.host);
      }
      if (plan || late.length > 0) {
        // The allocations that arrived while the record was read or until the lock was first
        // free join this turn (session 10): it plans them on the same reading, as placement's
        // turn takes the creates that arrive while it reads the hosts.
        if (late.length > 0) {
          batch.push(...late.splice(0));
          joined = true;
          plan = planTurn(ref, batch, recText, leasedText, answers);
        }
      }
      let refused = false;
      // A joined allocation is planned on a reading older than its request: a release finished
      // before it asked may be missing from it, so its answer (an address, or a refusal such as
      // "already allocated") is confirmed under the lock by the guard even when the turn has
      // nothing to write; refused, the locked turn below replans it (review 10a, finding 1).
      if (plan || joined) {
        const guard = ipamUnchangedStep(ref.networkName, ref.subnetName, recText);
        const commit = plan ? [guard, ...ipamCommitSteps(plan.next, paths, ref.networkName)] : [guard];
        try {
          let carried: RiderOutcome = riding ? await ticket.ride(commit) : { skipped: true };
          // The claim batch was lost, but what rode in it was the guard alone (a turn with
          // nothing to write, run to confirm the joined allocations' answers): nothing can have
          // been written, so the guard runs again under a lock of its own instead of failing the
          // joiners with the batch's error (review 11a N5).
          if ("error" in carried && !plan) carried = { skipped: true };
          if ("error" in carried) {
            // A new error (the claim's own stays as placement reports it: the undo's note below
            // must not amend it, review 11a S2); no step's failure, so the record may be written.
            const why = carried.error instanceof Error ? carried.error.message : String(carried.error);
            throw new Error(
              `the IPAM commit of subnet ${ref.subnetName}, carried in a placement claim batch on host ${ref.host.name}, was lost with that batch (it may have run in part): ${why}`,
              { cause: carried.error },
            );
          }
          if ("results" in carried) {
            // Carried under the claim batch's lock: its own steps' failure, indexed as runLocked's.
            const at = carried.results.findIndex((r) => r.code !== 0);
            if (at !== -1) throw remoteStepError(ref.host, commit[at], carried.results[at], at);
          } else await runLocked(ref.host, commit);
        } catch (err) {
          // Past the record's write (step 1), or no step's failure (a timeout, a lost shell).
          if (plan && recordMayBeWritten(err, 1)) sent = plan;
          const f = failedStep(err);
          // Refused by the guard (step 0, nothing written): the locked turn below.
          if (f.index !== 0 || f.exitStatus !== IPAM_CHANGED_EXIT) throw err;
          refused = true;
        }
      }
      if (refused) {
        await withHostLock(
          ref.host,
          async ([lockedRec, lockedLeased]) => {
            const again = planTurn(ref, batch, lockedRec, lockedLeased, answers);
            if (again) {
              try {
                await runChecked(ref.host, ipamCommitSteps(again.next, paths, ref.networkName));
              } catch (err) {
                if (!recordMayBeWritten(err, 0)) throw err;
                // A step after the record's write failed and the shell, still alive, still
                // holds the lock: undone in this hold, so no other writer takes an address the
                // undo gives back in between (review 10a, finding 2). A timeout or a lost shell
                // (the lock is gone with it): undoCommit below takes the lock again.
                if (failedStep(err).index <= 0) {
                  sent = again;
                  throw err;
                }
                try {
                  const [nowText] = await runChecked(ref.host, [readRecordStep("ipam", name)]);
                  await writeUndo(ref, nowText, again.base, again.next);
                } catch (undoErr) {
                  throw withUndoNote(err, undoErr, ref.subnetName);
                }
                throw err;
              }
            }
          },
          undefined,
          read(),
        );
      }
    } finally {
      ticket.withdraw();
      const end = Date.now();
      for (const r of batch) {
        const began = Math.max(turnStart, r.startedAt);
        if (r.timings)
          Object.assign(r.timings, { waitMs: began - r.startedAt, workMs: end - began, batch: batch.length });
      }
    }
  } catch (err) {
    // No allocation of this turn has an address. A commit that failed after it was sent may
    // have written the record (review 9a R8): this turn's entries are taken out again under the
    // lock, so none stays allocated that nobody owns (a refused allocation keeps its own reason).
    let failure = err;
    if (sent) {
      try {
        await undoCommit(ref, sent.base, sent.next);
      } catch (undoErr) {
        failure = withUndoNote(err, undoErr, ref.subnetName);
      }
    }
    for (const r of batch) {
      const a = answers.get(r);
      r.reject(a && "error" in a ? a.error : failure);
    }
    return;
  }
  for (const r of batch) {
    const a = answers.get(r);
    if (a && "ip" in a) r.resolve(a);
    else r.reject(a ? a.error : new Error("IPAM turn ended without an answer"));
  }
}

/**
 * `err` (a failed commit) noting that taking this turn's entries out again failed too: they may
 * stay in the record until the resources are created again or the entries removed by hand.
 */
function withUndoNote(err: unknown, undoErr: unknown, subnet: string): unknown {
  const note = `; taking this turn's entries out of the IPAM record of subnet ${subnet} again failed too (${undoErr instanceof Error ? undoErr.message : String(undoErr)}): they may stay allocated until the resources are created again or the entries are removed by hand`;
  if (err instanceof Error) {
    err.message += note;
    return err;
  }
  return new Error(`${String(err)}${note}`);
}

/**
 * Releases every address of `owner` in a subnet; a missing subnet record is fine (idempotent).
 * With `holder`, addresses another resource owner made stay.
 */
export async function releaseAddress(ref: SubnetRef, owner: string, holder = ""): Promise<void> {
  const paths = dhcpPaths(ref.networkName, ref.subnetName);
  await withHostLock(ref.host, async () => {
    const record = await readIpamRecord(ref);
    if (!record) return;
    const next = planRelease(record, owner, holder);
    if (JSON.stringify(next) !== JSON.stringify(record))
      await runChecked(ref.host, ipamCommitSteps(next, paths, ref.networkName));
  });
}

/**
 * Reads a subnet's IPAM record (takes no lock itself: callers that change it hold the host lock).
 * `undefined` when the host keeps no record of that subnet.
 */
export async function readIpamRecord(ref: SubnetRef): Promise<IpamRecord | undefined> {
  const name = ipamRecordName(ref.networkName, ref.subnetName);
  const [recText] = await runChecked(ref.host, [readRecordStep("ipam", name)]);
  return parseRecord<IpamRecord>(recText, `ipam/${name} (subnet ${ref.subnetName})`);
}
