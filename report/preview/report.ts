/**
 * The pull-request comment for a `pulumi preview --json` document: counts first; replacements
 * and deletes flagged at the top with the property that forced each; then, per changed
 * resource, its changed properties and a unified line diff of every changed multi-line string
 * (the rendered domain XML, haproxy.cfg, rulesets, dnsmasq files, cloud-init); secrets masked;
 * trimmed to fit a GitHub comment, saying what was cut. Pure: text in, text out.
 */
import { splitUrn, type PreviewDiagnostic, type PreviewDigest, type PreviewStep } from "./digest";
import { artifactKind, lineDiff } from "./lineDiff";
import {
  containsSecret,
  isMultiline,
  propertyChanges,
  SECRET_TEXT,
  showValue,
  type PropertyChange,
} from "./values";

/** GitHub refuses comments over 65,536 characters; pulumi/actions trims to 64,000 as well. */
export const GITHUB_COMMENT_LIMIT = 65_536;
export const DEFAULT_MAX_CHARS = 64_000;
/** The first line of every report: CI jobs find their earlier comment (or note) by it. */
export const MARKER_PREFIX = "<!-- kvmlab-preview-report";

export interface ReportOptions {
  /** Upper bound of the report's length in characters; 0 = no limit. @default 64000 */
  maxChars?: number;
  /** Lines of a single artifact diff shown before it is cut. @default 400 */
  maxDiffLines?: number;
  /** Unchanged lines around each change. @default 3 */
  context?: number;
}

type Kind = "create" | "update" | "replace" | "delete" | "other";

interface Entry {
  urn: string;
  name: string;
  type: string;
  kind: Kind;
  op: string;
  step: PreviewStep;
  /** Known only when the replacement steps were shown: delete-replaced before create-replacement. */
  deleteBeforeReplace?: boolean;
}

const STACK_TYPE = "pulumi:pulumi:Stack";
const PROVIDER_KEY = "__provider";
const ORDER = ["replace", "delete", "update", "create"];
const VERB: Record<string, string> = {
  create: "to create",
  update: "to update",
  replace: "to replace",
  delete: "to delete",
  same: "unchanged",
  read: "to read",
  refresh: "to refresh",
  import: "to import",
  discard: "to discard",
};
const SYMBOL: Record<Kind, string> = { create: "+", update: "~", replace: "+-", delete: "-", other: "·" };

export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** Inline code that is safe in a table cell and in HTML (summary lines). */
function code(s: string): string {
  return `<code>${escapeHtml(s).replace(/\|/g, "&#124;").replace(/\n/g, "↵")}</code>`;
}

/** Display type: the dynamic provider's prefix dropped (`pulumi-nodejs:dynamic/kvmlab:Server` → `kvmlab:Server`). */
function shortType(type: string): string {
  return type.replace(/^pulumi-nodejs:dynamic\//, "");
}

function fence(lines: readonly string[], lang: string): string {
  const longest = Math.max(
    2,
    ...lines.map((l) => Math.max(0, ...(l.match(/`+/g) ?? []).map((m) => m.length))),
  );
  const f = "`".repeat(Math.max(3, longest + 1));
  return `${f}${lang}\n${lines.join("\n")}\n${f}`;
}

/** Groups the steps by resource: one entry per changed resource, replacement steps folded into their replace. */
function entries(steps: readonly PreviewStep[]): { list: Entry[]; same: number } {
  const byUrn = new Map<string, Entry>();
  const list: Entry[] = [];
  const seen = new Map<string, string[]>();
  let same = 0;
  for (const step of steps) {
    const type = step.newState?.type ?? step.oldState?.type ?? splitUrn(step.urn).type;
    if (type === STACK_TYPE) continue;
    const ops = seen.get(step.urn) ?? [];
    ops.push(step.op);
    seen.set(step.urn, ops);
    if (step.op === "same") {
      same++;
      continue;
    }
    const replacing = ["replace", "create-replacement", "delete-replaced"].includes(step.op);
    const kind: Kind = replacing
      ? "replace"
      : step.op === "create" || step.op === "update" || step.op === "delete"
        ? step.op
        : "other";
    const existing = byUrn.get(step.urn);
    if (existing && replacing && existing.kind === "replace") {
      if (step.op === "replace") existing.step = step;
      continue;
    }
    const e: Entry = { urn: step.urn, name: splitUrn(step.urn).name, type, kind, op: step.op, step };
    if (replacing) byUrn.set(step.urn, e);
    list.push(e);
  }
  for (const e of list) {
    if (e.kind !== "replace") continue;
    const ops = seen.get(e.urn) ?? [];
    const d = ops.indexOf("delete-replaced");
    const c = ops.indexOf("create-replacement");
    if (d >= 0 && c >= 0) e.deleteBeforeReplace = d < c;
  }
  return { list, same };
}

function counts(digest: PreviewDigest, list: readonly Entry[], same: number): [string, number][] {
  let summary: Record<string, number>;
  if (digest.changeSummary) summary = { ...digest.changeSummary };
  else {
    summary = { same };
    for (const e of list) {
      const op = e.kind === "other" ? e.op : e.kind;
      summary[op] = (summary[op] ?? 0) + 1;
    }
  }
  const keys = Object.keys(summary).sort((a, b) => rank(a) - rank(b));
  return keys.map((k) => [k, summary[k]]);
}

function rank(op: string): number {
  const i = ORDER.indexOf(op);
  return i >= 0 ? i : op === "same" ? 100 : 50;
}

const topKey = (path: string): string => path.split(/[.[]/)[0];

function changesOf(e: Entry): { changes: PropertyChange[]; providerChanged: boolean } {
  const o = e.step.oldState;
  const n = e.step.newState;
  const secretKeys = [...(o?.additionalSecretOutputs ?? []), ...(n?.additionalSecretOutputs ?? [])];
  const reasons = new Set([...(e.step.diffReasons ?? []), ...(e.step.replaceReasons ?? [])]);
  // A secret masked as "[secret]" on one side cannot be compared with the other side: when the
  // engine named the changed keys and this one is not among them, only its secretness differs.
  const changes = (o && n ? propertyChanges(o.inputs, n.inputs, secretKeys, [PROVIDER_KEY]) : []).filter(
    (c) =>
      !(
        c.secret &&
        reasons.size > 0 &&
        !reasons.has(topKey(c.path)) &&
        (c.old === SECRET_TEXT || c.new === SECRET_TEXT)
      ),
  );
  // Keys the engine says changed whose values look equal here: both masked as "[secret]" by
  // the CLI (or values the preview leaves out). Report them without values.
  for (const key of [...(e.step.diffReasons ?? []), ...(e.step.replaceReasons ?? [])]) {
    if (key === PROVIDER_KEY || changes.some((c) => topKey(c.path) === key)) continue;
    const ov = o?.inputs?.[key];
    const nv = n?.inputs?.[key];
    if (containsSecret(ov ?? null) || containsSecret(nv ?? null) || secretKeys.includes(key))
      changes.push({ path: key, kind: "update", secret: true });
  }
  const op = o?.inputs?.[PROVIDER_KEY];
  const np = n?.inputs?.[PROVIDER_KEY];
  return {
    changes,
    providerChanged:
      o !== undefined &&
      n !== undefined &&
      op !== undefined &&
      np !== undefined &&
      JSON.stringify(op) !== JSON.stringify(np),
  };
}

/** Why a replacement happens: each replace reason with its old → new value where it is short. */
function replaceWhy(e: Entry): string {
  const reasons = e.step.replaceReasons ?? [];
  const { changes } = changesOf(e);
  const parts = reasons.map((r) => {
    const cs = changes.filter((c) => topKey(c.path) === r);
    if (cs.length === 1 && cs[0].secret) return `${code(r)} (secret)`;
    if (cs.length === 1 && !isMultiline(cs[0].old) && !isMultiline(cs[0].new))
      return `${code(cs[0].path)}: ${code(showValue(cs[0].old, 60))} → ${code(showValue(cs[0].new, 60))}`;
    if (cs.length > 0)
      return `${code(r)} (${cs.length === 1 ? "see its diff" : `${cs.length} changes, see below`})`;
    return code(r);
  });
  const why = parts.length > 0 ? parts.join("; ") : "the provider asked for a replacement (no reason given)";
  const mode =
    e.deleteBeforeReplace === true
      ? " — **delete-before-replace**: the old one goes first (downtime)"
      : e.deleteBeforeReplace === false
        ? " — create-before-delete"
        : "";
  return `${why}${mode}`;
}

interface DiffPart {
  paths: string[];
  kind?: string;
  lines: readonly string[];
  added: number;
  removed: number;
}

/** Line diffs of the multi-line string changes, identical diffs merged (e.g. domainXml.kvm and .qemu). */
function diffParts(changes: readonly PropertyChange[], context: number): DiffPart[] {
  const parts: DiffPart[] = [];
  for (const c of changes) {
    if (c.secret || !(isMultiline(c.old) || isMultiline(c.new))) continue;
    const before = typeof c.old === "string" ? c.old : "";
    const after = typeof c.new === "string" ? c.new : "";
    const d = lineDiff(before, after, context);
    const same = parts.find((p) => p.lines.join("\n") === d.lines.join("\n"));
    if (same) same.paths.push(c.path);
    else parts.push({ paths: [c.path], kind: artifactKind(after || before), ...d });
  }
  return parts;
}

function scalarRows(changes: readonly PropertyChange[]): string[] {
  return changes
    .filter((c) => c.secret || !(isMultiline(c.old) || isMultiline(c.new)))
    .map((c) => {
      if (c.secret) {
        const what = c.kind === "add" ? "added" : c.kind === "delete" ? "removed" : "changed";
        return `| ${code(c.path)} | [secret] | [secret] (${what}; value hidden) |`;
      }
      return `| ${code(c.path)} | ${c.old === undefined ? "—" : code(showValue(c.old))} | ${c.new === undefined ? "—" : code(showValue(c.new))} |`;
    });
}

function summaryLine(e: Entry): string {
  const verb = e.kind === "other" ? e.op : e.kind;
  return `<summary><b>${SYMBOL[e.kind]} ${escapeHtml(verb)}</b> ${code(e.name)} <i>${escapeHtml(shortType(e.type))}</i></summary>`;
}

/** The full detail block of an update or replace, and the compact one used when space runs out. */
function detailBlock(
  e: Entry,
  opts: Required<ReportOptions>,
): { full: string; compact: string; cutDiffs: boolean } {
  const { changes, providerChanged } = changesOf(e);
  const body: string[] = [];
  let cutDiffs = false;
  const rows = scalarRows(changes);
  if (rows.length > 0)
    body.push(["| property | before | after |", "| --- | --- | --- |", ...rows].join("\n"));
  for (const p of diffParts(changes, opts.context)) {
    const names = p.paths.map(code).join(", ");
    const what = p.kind ? ` — ${p.kind}` : "";
    let lines = p.lines;
    let cut = "";
    if (lines.length > opts.maxDiffLines) {
      cut = `\n\n<i>✂️ ${lines.length - opts.maxDiffLines} more diff lines of this file cut (limit ${opts.maxDiffLines}).</i>`;
      lines = lines.slice(0, opts.maxDiffLines);
      cutDiffs = true;
    }
    const sameNote = p.paths.length > 1 ? " (the same change in each)" : "";
    body.push(
      `${names}${what}, +${p.added} −${p.removed} lines${sameNote}:\n\n${fence(lines, "diff")}${cut}`,
    );
  }
  if (providerChanged) body.push(`<i>The provider's code changed (${code(PROVIDER_KEY)}).</i>`);
  if (changes.length === 0 && !providerChanged) {
    const reasons = e.step.diffReasons ?? [];
    body.push(
      reasons.length > 0
        ? `Changed: ${reasons.map(code).join(", ")} (values not in the preview).`
        : e.step.oldState && e.step.newState
          ? "The provider reports a change but the inputs are equal: the host may have drifted (run `pulumi refresh`)."
          : "No property details in the preview.",
    );
  }
  const full = `<details open>\n${summaryLine(e)}\n\n${body.join("\n\n")}\n\n</details>`;
  const names = [...new Set(changes.map((c) => c.path))];
  const compact = `<details>\n${summaryLine(e)}\n\nChanged: ${names.length > 0 ? names.map(code).join(", ") : "(see the full report)"} — diff left out to fit the comment limit.\n\n</details>`;
  return { full, compact, cutDiffs };
}

function diagnosticLines(diags: readonly PreviewDiagnostic[]): { text: string; errors: number } {
  const shown = diags.filter((d) => d.severity === "error" || d.severity === "warning");
  const errors = shown.filter((d) => d.severity === "error").length;
  if (shown.length === 0) return { text: "", errors };
  const items = shown.slice(0, 20).map((d) => {
    const msg = `${d.prefix ?? ""}${d.message ?? ""}`.trim();
    const short = msg.length > 1000 ? `${msg.slice(0, 999)}…` : msg;
    const where = d.urn ? ` ${code(splitUrn(d.urn).name)}` : "";
    return `- **${escapeHtml(d.severity ?? "")}**${where}:\n\n${fence(short.split("\n"), "text").replace(/^/gm, "  ")}`;
  });
  const more = shown.length > 20 ? `\n- …and ${shown.length - 20} more` : "";
  return { text: `#### Diagnostics\n\n${items.join("\n")}${more}`, errors };
}

function listNames(names: readonly string[], max = 15): string {
  const shown = names.slice(0, max).map(code).join(", ");
  return names.length > max ? `${shown} and ${names.length - max} more` : shown;
}

/** Renders the Markdown comment for a preview document. */
export function renderPreviewReport(digest: PreviewDigest, options: ReportOptions = {}): string {
  const opts: Required<ReportOptions> = {
    maxChars: options.maxChars ?? DEFAULT_MAX_CHARS,
    maxDiffLines: options.maxDiffLines ?? 400,
    context: options.context ?? 3,
  };
  const limit = opts.maxChars > 0 ? opts.maxChars : Infinity;
  const steps = digest.steps ?? [];
  const { list, same } = entries(steps);
  const first = steps[0] ? splitUrn(steps[0].urn) : undefined;
  const where = first ? `${first.project}/${first.stack}` : "(no resources)";

  const head: string[] = [`${MARKER_PREFIX}: ${where} -->`, `### kvmlab preview: ${code(where)}`];
  const c = counts(digest, list, same);
  const changing = c.filter(([op, n]) => op !== "same" && n > 0);
  head.push(
    changing.length === 0
      ? `**No changes.** ${c.find(([op]) => op === "same")?.[1] ?? 0} unchanged.`
      : `**${c
          .filter(([, n]) => n > 0)
          .map(([op, n]) => `${n} ${VERB[op] ?? `to ${op}`}`)
          .join(" · ")}**`,
  );
  if (digest.maybeCorrupt)
    head.push("> [!WARNING]\n> Pulumi says one or more resources may be corrupt (`maybeCorrupt`).");

  const flagged = list.filter((e) => e.kind === "replace" || e.kind === "delete");
  if (flagged.length > 0) {
    const nRep = flagged.filter((e) => e.kind === "replace").length;
    const nDel = flagged.length - nRep;
    const title = [
      nRep > 0 ? `${nRep} replacement${nRep > 1 ? "s" : ""}` : "",
      nDel > 0 ? `${nDel} delete${nDel > 1 ? "s" : ""}` : "",
    ]
      .filter(Boolean)
      .join(" and ");
    const rows: string[] = [];
    let size = 0;
    for (const e of flagged) {
      const why =
        e.kind === "replace" ? replaceWhy(e) : "no longer in the program: it is removed from the hosts";
      const row = `> | **${e.kind}** | ${code(e.name)} | ${code(shortType(e.type))} | ${why} |`;
      if (size + row.length > limit / 4) {
        rows.push(`> | … | ${flagged.length - rows.length} more | | |`);
        break;
      }
      rows.push(row);
      size += row.length;
    }
    head.push(
      [
        "> [!CAUTION]",
        `> **:warning: ${title}.** These recreate or remove objects on the hosts:`,
        ">",
        "> | change | resource | type | forced by |",
        "> | --- | --- | --- | --- |",
        ...rows,
      ].join("\n"),
    );
  }
  const diag = diagnosticLines(digest.diagnostics ?? []);
  if (diag.errors > 0)
    head.push(
      `> [!WARNING]\n> The preview reported ${diag.errors} error(s): the plan below may be incomplete.`,
    );
  if (diag.text) head.push(diag.text);

  const footer =
    "<sub>kvmlab preview-report, from <code>pulumi preview --json</code>. Secrets are shown as [secret]; line diffs cover every changed multi-line input (rendered files).</sub>";

  // Blocks in priority order: replacements, updates, then other steps, then the create list.
  const NOTE_RESERVE = 1500;
  let used = head.join("\n\n").length + footer.length + 4;
  const budget = limit - NOTE_RESERVE;
  const body: string[] = [];
  const compacted: string[] = [];
  const omitted: string[] = [];
  let cutDiffs = false;
  const detailed = [...list.filter((e) => e.kind === "replace"), ...list.filter((e) => e.kind === "update")];
  if (detailed.length > 0) body.push("#### Changes");
  for (const e of detailed) {
    const b = detailBlock(e, opts);
    if (used + b.full.length + 2 <= budget) {
      body.push(b.full);
      used += b.full.length + 2;
      cutDiffs ||= b.cutDiffs;
    } else if (used + b.compact.length + 2 <= budget) {
      body.push(b.compact);
      used += b.compact.length + 2;
      compacted.push(e.name);
    } else omitted.push(e.name);
  }
  const lists: [string, Entry[]][] = [
    ["To create", list.filter((e) => e.kind === "create")],
    ["Other steps", list.filter((e) => e.kind === "other")],
  ];
  for (const [title, es] of lists) {
    if (es.length === 0) continue;
    const items = es.map((e) => {
      const extra =
        e.kind === "create" && containsSecret(e.step.newState?.inputs ?? null) ? " (has secret inputs)" : "";
      return `- ${e.kind === "other" ? `${escapeHtml(e.op)} ` : ""}${code(e.name)} <i>${escapeHtml(shortType(e.type))}</i>${extra}`;
    });
    const inner = items.join("\n");
    const text =
      es.length > 10
        ? `#### ${title} (${es.length})\n\n<details>\n<summary>${es.length} resources</summary>\n\n${inner}\n\n</details>`
        : `#### ${title} (${es.length})\n\n${inner}`;
    if (used + text.length + 2 <= budget) {
      body.push(text);
      used += text.length + 2;
    } else {
      const short = `#### ${title} (${es.length})\n\nList left out to fit the comment limit.`;
      body.push(short);
      used += short.length + 2;
      omitted.push(`${title.toLowerCase()} list (${es.length})`);
    }
  }

  const notes: string[] = [];
  if (compacted.length > 0) notes.push(`line diffs left out for ${listNames(compacted)}`);
  if (omitted.length > 0) notes.push(`left out entirely: ${listNames(omitted)}`);
  if (cutDiffs) notes.push(`diffs longer than ${opts.maxDiffLines} lines cut`);
  const trimNote =
    notes.length > 0
      ? `> [!NOTE]\n> ✂️ **Trimmed** to stay under GitHub's ${GITHUB_COMMENT_LIMIT.toLocaleString("en-US")}-character comment limit: ${notes.join("; ")}. Run \`kvmlab preview-report --max-chars 0\` on the same preview JSON (or see the CI job's artifact) for everything.`
      : "";

  let text = [...head, ...body, ...(trimNote ? [trimNote] : []), footer].join("\n\n") + "\n";
  if (text.length > limit) {
    // Only when the head alone is too long (thousands of diagnostics or flagged rows): cut at a blank line.
    const cutAt = text.lastIndexOf("\n\n", limit - 400);
    text = `${text.slice(0, Math.max(0, cutAt))}\n\n> [!NOTE]\n> ✂️ **Trimmed**: the report was cut here at ${limit} characters. Run \`kvmlab preview-report --max-chars 0\` for everything.\n`;
  }
  return text;
}
