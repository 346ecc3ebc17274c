/**
 * The one argument parser of the `kvmlab` commands (validate, render, sandbox): positional
 * words plus `--name value` / `--name=value` options and `--flag` switches; `-h`/`--help` ask for
 * the command's usage. Problems throw {@link UsageError}, which each command prints with its usage
 * and exit status 2.
 */

export class UsageError extends Error {}

export interface ArgSpec {
  /** Options that take a value (without the leading `--`). */
  readonly valued?: readonly string[];
  /** Switches without a value (without the leading `--`). */
  readonly flags?: readonly string[];
  /**
   * The words a command accepts (e.g. sandbox's actions), with the word `help` meaning `--help`;
   * any other word, and any unknown option, is reported as `unknown argument "<arg>"`. Without
   * it, every word is a positional (a file) and an unknown option is `unknown option --<name>`.
   */
  readonly words?: readonly string[];
}

export interface ParsedArgs {
  readonly positional: string[];
  /** Option name → value (`true` for switches). */
  readonly options: Map<string, string | true>;
  /** `-h` or `--help` (or the word `help` for commands with {@link ArgSpec.words}) was given. */
  readonly help: boolean;
}

/**
 * Parses `argv` left to right. Help stops the parse (whatever follows is not looked at); `--`
 * makes every later argument a positional.
 */
export function parseArgs(argv: readonly string[], spec: ArgSpec = {}): ParsedArgs {
  const valued = spec.valued ?? [];
  const flags = spec.flags ?? [];
  const positional: string[] = [];
  const options = new Map<string, string | true>();
  const done = (help: boolean): ParsedArgs => ({ positional, options, help });
  const unknown = (arg: string, key: string): UsageError =>
    new UsageError(spec.words !== undefined ? `unknown argument "${arg}"` : `unknown option --${key}`);
  const word = (arg: string): void => {
    if (spec.words !== undefined && !spec.words.includes(arg)) throw unknown(arg, arg);
    positional.push(arg);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      for (const rest of argv.slice(i + 1)) word(rest);
      break;
    }
    if (arg === "-h" || arg === "--help" || (spec.words !== undefined && arg === "help")) return done(true);
    if (arg.startsWith("--")) {
      const [key, inline] = arg.slice(2).split(/=(.*)/s, 2);
      if (valued.includes(key)) {
        const value = inline ?? argv[++i];
        if (value === undefined) throw new UsageError(`--${key} needs a value`);
        options.set(key, value);
      } else if (flags.includes(key)) options.set(key, true);
      else throw unknown(arg, key);
    } else word(arg);
  }
  return done(false);
}
