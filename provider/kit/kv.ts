/** The one parser for the `key=value` lines remote read steps print. Pure. */

/** Parses `key=value` lines (later lines win; values trimmed; lines without `=` ignored). */
export function parseKeyValues(stdout: string): Map<string, string> {
  const kv = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    const at = line.indexOf("=");
    if (at > 0) kv.set(line.slice(0, at).trim(), line.slice(at + 1).trim());
  }
  return kv;
}
