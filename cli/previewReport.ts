/**
 * `kvmlab preview-report [FILE]`: turns `pulumi preview --json` output (FILE, or standard input)
 * into the Markdown comment for a pull or merge request (report/preview). Exit 0 on success,
 * 1 when the input cannot be read or is not a preview document, 2 on usage.
 */
import * as fs from "node:fs";
import { parseArgs, UsageError } from "./args";
import { unreadable } from "./lab/read";

const USAGE = `usage: kvmlab preview-report [FILE] [--out FILE] [--max-chars N]

Reads the output of \`pulumi preview --json\` from FILE (or standard input, also with FILE "-")
and writes a Markdown comment: counts, replacements and deletes with the property that forced
each, a line diff of every changed rendered file, secrets masked.
  --out FILE        write the comment to FILE instead of standard output
  --max-chars N     trim the comment to at most N characters (default 64000, under GitHub's
                    65,536 limit; 0 = no limit, e.g. for a job artifact)`;

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    process.stdin.on("data", (c: Buffer) => chunks.push(c));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    process.stdin.on("error", reject);
  });
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(argv, { valued: ["out", "max-chars"] });
    if (parsed.positional.length > 1) throw new UsageError("expected at most one input file");
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`kvmlab preview-report: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.help) {
    console.log(USAGE);
    return 0;
  }
  const rawMax = parsed.options.get("max-chars");
  const maxChars = rawMax === undefined ? undefined : Number(rawMax);
  if (
    maxChars !== undefined &&
    (!Number.isInteger(maxChars) || maxChars < 0 || (maxChars > 0 && maxChars < 2000))
  ) {
    console.error(
      `kvmlab preview-report: --max-chars must be 0 (no limit) or a whole number of at least 2000, got "${String(rawMax)}"`,
    );
    return 2;
  }
  const file = parsed.positional[0] ?? "-";
  let text: string;
  try {
    if (file === "-") {
      if (process.stdin.isTTY) {
        console.error(
          `kvmlab preview-report: no input: pipe \`pulumi preview --json\` into it or give the file\n\n${USAGE}`,
        );
        return 2;
      }
      text = await readStdin();
    } else text = fs.readFileSync(file, "utf8");
  } catch (err) {
    console.error(
      `kvmlab preview-report: ${unreadable(file, err).replace(/ \(e\.g\. stacks\/three-tier\.yaml\)|; give the lab's YAML file/, "")}`,
    );
    return 1;
  }
  const { parsePreviewDigest, PreviewInputError, renderPreviewReport } =
    require("../report/preview") as typeof import("../report/preview");
  let report: string;
  try {
    report = renderPreviewReport(parsePreviewDigest(text), { maxChars });
  } catch (err) {
    if (!(err instanceof PreviewInputError)) throw err;
    console.error(`kvmlab preview-report: ${file === "-" ? "standard input" : file}: ${err.message}`);
    return 1;
  }
  const out = parsed.options.get("out");
  if (typeof out === "string") fs.writeFileSync(out, report);
  else process.stdout.write(report);
  return 0;
}
