/**
 * What every section's checks share: the raw document, the locator, the issue list, and the
 * facts earlier sections found (names per kind, subnets, fixed addresses, routers) that later
 * ones use. Sections run in the order of lab/checks/index.ts.
 */
import { cidrContains, hostRange, intToIp, ipToInt, isIPv4, parseCidr, type Cidr } from "../../core/net";
import { FieldError } from "../../core/errors";
import type { Locator, PathSegment } from "../locate";
import type { LabIssue } from "../model";

export type Rec = Record<string, unknown>;
export const rec = (v: unknown): Rec | null =>
  v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Rec) : null;
export const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
export const num = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);
export const bool = (v: unknown, dflt: boolean): boolean => (typeof v === "boolean" ? v : dflt);

/** `[index, entry]` for each object entry of the list at `parent[key]`. */
export function items(parent: unknown, key: string): [number, Rec][] {
  const list = rec(parent)?.[key];
  if (!Array.isArray(list)) return [];
  return list.flatMap((v, i): [number, Rec][] => (rec(v) ? [[i, v as Rec]] : []));
}

function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length][b.length];
}

export interface SubnetInfo {
  path: PathSegment[];
  name: string;
  network: string;
  networkExternal: boolean;
  cidr: Cidr | null;
  gateway: number | null;
  pool: [number, number] | null;
  dhcp: boolean;
}

/** Names defined per kind: name → the path of its first definition. */
export interface KnownNames {
  hosts: Map<string, PathSegment[]>;
  domains: Map<string, PathSegment[]>;
  projects: Map<string, PathSegment[]>;
  users: Map<string, PathSegment[]>;
  images: Map<string, PathSegment[]>;
  flavors: Map<string, PathSegment[]>;
  keypairs: Map<string, PathSegment[]>;
  networks: Map<string, PathSegment[]>;
  subnets: Map<string, PathSegment[]>;
  groups: Map<string, PathSegment[]>;
  lbs: Map<string, PathSegment[]>;
  asgs: Map<string, PathSegment[]>;
  servers: Map<string, PathSegment[]>;
  volumes: Map<string, PathSegment[]>;
}

export function formatPathLocal(path: readonly PathSegment[]): string {
  return path.map((s, i) => (typeof s === "number" ? `[${s}]` : i === 0 ? s : `.${s}`)).join("");
}

export class CheckContext {
  readonly issues: LabIssue[] = [];
  /** Filled by the names section (lab/checks/names.ts), which runs first. */
  known!: KnownNames;
  /** Subnets by name (the first definition of a name), from the networks section. */
  readonly subnetInfo = new Map<string, SubnetInfo>();
  /** subnet → fixed address → the path that fixed it. */
  readonly fixedIps = new Map<string, Map<number, PathSegment[]>>();
  /** subnet → router it is attached to; router → its external network (null for none). */
  readonly routedBy = new Map<string, string>();
  readonly routerExternal = new Map<string, string | null>();
  /** subnet → dynamic addresses needed. */
  readonly demand = new Map<string, number>();

  constructor(
    readonly data: Rec,
    readonly at: Locator,
    readonly schemaIssuePaths: readonly string[],
  ) {}

  readonly add = (path: PathSegment[], message: string, fix: string, key?: string): void => {
    this.issues.push(this.at.issue(path, message, fix, key));
  };

  /** Registers names of one kind; duplicates are reported at the second occurrence. */
  readonly names = (kind: string, entries: [PathSegment[], unknown][]): Map<string, PathSegment[]> => {
    const seen = new Map<string, PathSegment[]>();
    for (const [path, value] of entries) {
      const name = str(value);
      if (name === null) continue;
      const first = seen.get(name);
      if (first !== undefined) {
        this.add(
          [...path, "name"],
          `duplicate ${kind} name "${name}" (first defined at ${formatPathLocal(first)})`,
          `rename one of the two ${kind}s`,
        );
      } else seen.set(name, path);
    }
    return seen;
  };

  /** Reports a reference to a name `known` does not hold, with the closest names as the fix. */
  readonly ref = (
    path: PathSegment[],
    value: unknown,
    known: ReadonlyMap<string, unknown>,
    kind: string,
  ): void => {
    const name = str(value);
    if (name === null || known.has(name)) return;
    const close = [...known.keys()].filter((k) => distance(k, name) <= 2);
    const fix =
      close.length > 0
        ? `did you mean "${close[0]}"?`
        : known.size > 0
          ? `use one of: ${[...known.keys()].join(", ")}`
          : `define the ${kind} first or correct the name`;
    this.add(path, `unknown ${kind} "${name}"`, fix);
  };

  readonly cidrAt = (path: PathSegment[], value: unknown): Cidr | null => {
    if (typeof value !== "string") return null;
    try {
      return parseCidr(value);
    } catch (err) {
      if (err instanceof FieldError)
        this.add(path, err.problem, "write the network address with its prefix, e.g. 10.0.1.0/24");
      return null;
    }
  };

  /** Projects objects may name: the defined ones, or "admin" when none is defined. */
  get projectsOrAdmin(): ReadonlyMap<string, unknown> {
    return this.known.projects.size > 0 ? this.known.projects : new Map([["admin", []]]);
  }

  /** True when `subnet` (null: no port) can take a floating IP: behind a router with an external network. */
  readonly canFloat = (subnet: string | null): boolean => {
    if (subnet === null) return true;
    const router = this.routedBy.get(subnet);
    return router !== undefined && (this.routerExternal.get(router) ?? null) !== null;
  };

  /** Counts `count` dynamic addresses needed in `subnet`. */
  readonly need = (subnet: unknown, count: number): void => {
    if (typeof subnet === "string") this.demand.set(subnet, (this.demand.get(subnet) ?? 0) + count);
  };
  /** Checks a fixed address in `subnet` and records it. */
  readonly fixed = (path: PathSegment[], subnet: unknown, ip: unknown): void => {
    if (typeof subnet !== "string" || !isIPv4(ip)) return;
    const info = this.subnetInfo.get(subnet);
    if (info === undefined || info.cidr === null) return;
    const value = ipToInt(ip);
    if (!cidrContains(info.cidr, value))
      return this.add(
        path,
        `${ip} is outside subnet ${subnet} (${info.cidr.text})`,
        `pick an address inside ${info.cidr.text}`,
      );
    if (value === info.gateway)
      return this.add(path, `${ip} is the gateway of subnet ${subnet}`, "pick another address");
    const [lo, hi] = hostRange(info.cidr);
    if (value < lo || value > hi)
      return this.add(
        path,
        `${ip} is not a host address of ${info.cidr.text}`,
        `use one of ${intToIp(lo)}–${intToIp(hi)}`,
      );
    const taken = this.fixedIps.get(subnet);
    const first = taken?.get(value);
    if (first !== undefined)
      return this.add(
        path,
        `${ip} is already used by ${formatPathLocal(first)}`,
        "give each port its own address",
      );
    taken?.set(value, path);
  };
}
