/**
 * Helpers for lifecycle tests that drive the `files` fixture program
 * (test/fixtures/programs/files) through the engine harness in a temporary folder.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runEngine, type Operation, type RunResult } from "./engine";
import type { ConfigFlag } from "./project";

/** The fixture's source folder (holds Pulumi.yaml, whose `main` points at the compiled program). */
export const FILES_PROGRAM = path.resolve(
  __dirname,
  "..",
  "..",
  "..",
  "..",
  "test",
  "fixtures",
  "programs",
  "files",
);

export interface JournalEntry {
  /** create, update, delete; `delete@<tag>` from the tagged provider. */
  op: string;
  file: string;
  start: number;
  end: number;
  pid: number;
}

/** Options of one fixture file; see test/fixtures/programs/files/index.ts FileSpec. */
export interface FileSpec {
  name: string;
  file?: string;
  content?: string;
  contentFrom?: string;
  fileFrom?: string;
  parent?: string;
  dependsOn?: string[];
  dbr?: boolean;
  deleteBeforeReplace?: boolean;
  ignoreChanges?: string[];
  replaceOnChanges?: string[];
  protect?: boolean;
  retainOnDelete?: boolean;
  additionalSecretOutputs?: string[];
  sleepMs?: number;
  fail?: string;
  secretExtra?: boolean;
  legacy?: boolean;
  tag?: string;
  aliases?: string[];
}

export interface Spec {
  components?: string[];
  files: FileSpec[];
  throwAfter?: string[];
}

/** One temporary folder: the files, the journal and the state file of one scenario. */
export class FixtureStack {
  readonly dir: string;
  readonly stateFile: string;
  private journalSeen = 0;

  constructor(label: string) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `kvmlab-engine-${label}-`));
    this.stateFile = path.join(this.dir, "state", "dev.json");
  }

  async run(
    operation: Operation,
    spec: Spec,
    opts: { parallel?: number; secrets?: Record<string, string>; logs?: string[] } = {},
  ): Promise<RunResult> {
    const config: ConfigFlag[] = [
      { key: "spec", value: JSON.stringify({ dir: this.dir, ...spec }), secret: false },
    ];
    for (const [k, v] of Object.entries(opts.secrets ?? {})) config.push({ key: k, value: v, secret: true });
    return runEngine({
      operation,
      programDir: FILES_PROGRAM,
      stateFile: this.stateFile,
      config,
      parallel: opts.parallel,
      // A bound so that a harness bug fails the test instead of hanging CI (generous: machines are shared).
      programTimeoutMs: 180_000,
      onLog: (l) => opts.logs?.push(l),
    });
  }

  /** Every journal entry so far. */
  journal(): JournalEntry[] {
    const f = path.join(this.dir, "journal.jsonl");
    if (!fs.existsSync(f)) return [];
    return fs
      .readFileSync(f, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as JournalEntry);
  }

  /** Journal entries added since the previous call. */
  newJournal(): JournalEntry[] {
    const all = this.journal();
    const fresh = all.slice(this.journalSeen);
    this.journalSeen = all.length;
    return fresh;
  }

  exists(file: string): boolean {
    return fs.existsSync(path.join(this.dir, file));
  }

  read(file: string): string {
    return fs.readFileSync(path.join(this.dir, file), "utf8");
  }

  stateText(): string {
    return fs.readFileSync(this.stateFile, "utf8");
  }

  /** URN names in the state file, in order. */
  stateNames(): string[] {
    const s = JSON.parse(this.stateText()) as { resources: { urn: string; delete?: boolean }[] };
    return s.resources.map((r) => `${r.urn.split("::").slice(-1)[0]}${r.delete ? " (delete)" : ""}`);
  }

  cleanup(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Highest number of journal entries whose [start, end] intervals overlap at one instant. */
export function maxOverlap(entries: JournalEntry[]): number {
  const points = entries.flatMap((e) => [
    { t: e.start, d: 1 },
    { t: e.end, d: -1 },
  ]);
  points.sort((a, b) => a.t - b.t || a.d - b.d);
  let cur = 0;
  let max = 0;
  for (const p of points) {
    cur += p.d;
    max = Math.max(max, cur);
  }
  return max;
}

/** "op file" strings, for order assertions. */
export function ops(entries: JournalEntry[]): string[] {
  return entries.map((e) => `${e.op} ${e.file}`);
}
