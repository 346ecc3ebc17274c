/** Tiny argument parser for the lab commands: one positional file plus `--flag value` options. */
export interface ParsedArgs {
  readonly positional: string[];
  readonly options: Map<string, string | true>;
}

export function parseArgs(
  argv: readonly string[],
  valued: readonly string[],
  flags: readonly string[] = [],
): ParsedArgs {
  const positional: string[] = [];
  const options = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      const [key, inline] = arg.slice(2).split(/=(.*)/s, 2);
      if (valued.includes(key)) {
        const value = inline ?? argv[++i];
        if (value === undefined) throw new UsageError(`--${key} needs a value`);
        options.set(key, value);
      } else if (flags.includes(key) || key === "help") {
        options.set(key, true);
      } else throw new UsageError(`unknown option --${key}`);
    } else if (arg === "-h") options.set("help", true);
    else positional.push(arg);
  }
  return { positional, options };
}

export class UsageError extends Error {}

/** One line saying why a lab file cannot be read and what to do about it. */
export function unreadable(file: string, err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT")
    return `cannot read ${file}: no such file; check the path (e.g. stacks/three-tier.yaml)`;
  if (code === "EISDIR") return `cannot read ${file}: it is a folder; give the lab's YAML file`;
  if (code === "EACCES")
    return `cannot read ${file}: permission denied; make it readable or run as its owner`;
  return `cannot read ${file}: ${(err as Error).message}`;
}
