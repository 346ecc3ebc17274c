/**
 * Quota enforcement: a reservation ledger per project on the controller (hosts[0]),
 * /var/lib/kvmlab/records/quota-usage/id-<digest of the project id>.json, changed only under the
 * controller's host lock (flock on /var/lib/kvmlab/lock, held by the SSH session's shell), so
 * two `pulumi up` processes reserving for one project at once are serialized: the second reads
 * the ledger the first wrote. The limits come from the project's identity record (written by the
 * Project resource); the arithmetic is core/identity.ts.
 *
 *   reserveQuota(controller, project, holder, usage)  sets holder's entry or throws naming the
 *       quota, the usage and the limit (nothing is written then)
 *   releaseQuota(controller, project, holder)          drops holder's entry (idempotent)
 *   readQuota(controller, project)                     limits, usage and ledger
 */
import {
  applyReservation,
  identityRecordName,
  ledgerUsage,
  quotaError,
  quotasWith,
  type Ledger,
  type Quotas,
  type Usage,
} from "../core/identity";
// From the host modules themselves, not ./host's index: the provider kit imports this module.
import type { HostConnection } from "./host/connection";
import type { QuotaSpec } from "./kit/quota";
import { deleteRecordStep, parseRecord, readRecordStep, writeRecordStep } from "./host/files";
import { runChecked, withHostLock } from "./host/session";

export const QUOTA_RECORD_KIND = "quota-usage";

interface LedgerRecord {
  kind: "quota-usage";
  project: string;
  ledger: Ledger;
}

/** The project's limits and ledger, read in one round trip (the caller holds the lock to change them). */
async function readBoth(host: HostConnection, project: string): Promise<{ limits: Quotas; ledger: Ledger }> {
  const name = identityRecordName(project);
  const [p, l] = await runChecked(host, [
    readRecordStep("identity-project", name),
    readRecordStep(QUOTA_RECORD_KIND, name),
  ]);
  const rec = parseRecord<{ quotas?: Partial<Quotas> }>(p, `project/${project}`);
  if (!rec)
    throw new Error(
      `project: ${project} does not exist on controller ${host.name}; create it with a Project resource (or fix the server's project)`,
    );
  const led = parseRecord<LedgerRecord>(l, `${QUOTA_RECORD_KIND}/${project}`);
  return { limits: quotasWith(rec.quotas ?? {}), ledger: led?.ledger ?? {} };
}

/** Reserves `usage` for `holder` in `project`, atomically across processes. */
export async function reserveQuota(
  host: HostConnection,
  project: string,
  holder: string,
  usage: Usage,
): Promise<void> {
  await withHostLock(host, async () => {
    const { limits, ledger } = await readBoth(host, project);
    const r = applyReservation(ledger, limits, holder, usage);
    if (r.violations.length > 0) throw new Error(quotaError(project, r.violations));
    const record: LedgerRecord = { kind: "quota-usage", project, ledger: r.ledger };
    await runChecked(host, [writeRecordStep(QUOTA_RECORD_KIND, identityRecordName(project), record)]);
  });
}

/** Drops the holders' reservations (idempotent; removes the ledger when it empties). */
export async function releaseQuota(
  host: HostConnection,
  project: string,
  holder: string | readonly string[],
): Promise<void> {
  const holders = typeof holder === "string" ? [holder] : holder;
  await withHostLock(host, async () => {
    const name = identityRecordName(project);
    const [l] = await runChecked(host, [readRecordStep(QUOTA_RECORD_KIND, name)]);
    const led = parseRecord<LedgerRecord>(l, `${QUOTA_RECORD_KIND}/${project}`);
    if (!led || !holders.some((h) => h in led.ledger)) return;
    const rest = { ...led.ledger };
    for (const h of holders) delete rest[h];
    await runChecked(host, [
      Object.keys(rest).length === 0
        ? deleteRecordStep(QUOTA_RECORD_KIND, name)
        : writeRecordStep(QUOTA_RECORD_KIND, name, { ...led, ledger: rest }),
    ]);
  });
}

/** Limits, usage and ledger of a project (read only). */
export async function readQuota(
  host: HostConnection,
  project: string,
): Promise<{ limits: Quotas; usage: Quotas; ledger: Ledger }> {
  const { limits, ledger } = await readBoth(host, project);
  return { limits, usage: ledgerUsage(ledger), ledger };
}

/**
 * A resource's quota declaration for the provider kit (`quota: charges((i) => ({ routers: 1 }))`):
 * the usage function plus this ledger. See provider/kit/quota.ts for what the kit does with it.
 */
export function charges<I>(usage: (i: I) => Usage, legacyHolders?: (o: I) => string[]): QuotaSpec<I> {
  return {
    usage,
    ledger: { reserve: reserveQuota, release: releaseQuota },
    ...(legacyHolders ? { legacyHolders } : {}),
  };
}
