/**
 * Where things are in a lab definition: YAML paths (`servers[2].networks[0].subnet`), their line
 * and column in the parsed document, and the issue texts that carry them. Used by the parser and
 * by every section's checks (lab/checks/); imports nothing else of the language.
 */
import { isMap, isNode, Document, LineCounter, Node } from "yaml";
import type { LabIssue } from "./model";

export type PathSegment = string | number;

/** `servers[2].networks[0].subnet` from path segments. */
export function formatPath(segments: readonly PathSegment[]): string {
  return segments
    .map((s, i) =>
      typeof s === "number"
        ? `[${s}]`
        : i === 0
          ? s
          : /^[A-Za-z_$][\w$-]*$/.test(s)
            ? `.${s}`
            : `[${JSON.stringify(s)}]`,
    )
    .join("");
}

/** `servers[2].name` → ["servers", 2, "name"]. */
export function parsePath(path: string): PathSegment[] {
  return [...path.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) => (m[2] !== undefined ? Number(m[2]) : m[1]));
}

/** One line per issue: `file:line:col  path: message (fix: …)`. */
export function formatIssues(file: string, issues: readonly LabIssue[]): string {
  return issues
    .map(
      (i) =>
        `${file}:${i.line}:${i.column}  ${i.path === "" ? "(document)" : i.path}: ${i.message}\n    fix: ${i.fix}`,
    )
    .join("\n");
}

/** Locates YAML paths in the parsed document for issue reports. */
export class Locator {
  constructor(
    private readonly doc: Document,
    private readonly lines: LineCounter,
  ) {}

  private position(offset: number): { line: number; column: number } {
    const { line, col } = this.lines.linePos(offset);
    return { line, column: col };
  }

  /** The node at `path`, or its nearest existing ancestor; with `key`, that key of the map at `path`. */
  locate(path: readonly PathSegment[], key?: string): { line: number; column: number } {
    for (let n = path.length; n >= 0; n--) {
      const node = n === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, n), true);
      if (isNode(node) && node.range) {
        if (key !== undefined && n === path.length && isMap(node)) {
          const pair = node.items.find(
            (p) => isNode(p.key) && (p.key as Node & { value?: unknown }).value === key,
          );
          if (pair && isNode(pair.key) && pair.key.range) return this.position(pair.key.range[0]);
        }
        return this.position(node.range[0]);
      }
    }
    return { line: 1, column: 1 };
  }

  /**
   * An issue at `path`. With `key`, the issue concerns that key of the map at `path`: the
   * reported path includes it and the position is the key itself.
   */
  issue(path: readonly PathSegment[], message: string, fix: string, key?: string): LabIssue {
    const full = key === undefined ? path : [...path, key];
    return { path: formatPath(full), ...this.locate(path, key), message, fix };
  }
}
