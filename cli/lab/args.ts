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
