/**
 * The `kvmlab` command line: the jobs Pulumi itself does not do.
 * Each subcommand lives in its own module, loaded only when it is run.
 */

interface Command {
  summary: string;
  load: () => { main(argv: string[]): Promise<number> };
}

const COMMANDS: Record<string, Command> = {
  sandbox: {
    summary: "local KVM hosts in network namespaces: up, status, down",
    load: () => require("./sandbox"),
  },
  validate: {
    summary: "check a lab definition and report every problem with its location",
    load: () => require("./validate"),
  },
  render: {
    summary: "write every artifact of a lab definition to a folder, touching no host",
    load: () => require("./render"),
  },
  "preview-report": {
    summary: "turn `pulumi preview --json` into a pull-request comment with line diffs",
    load: () => require("./previewReport"),
  },
  quota: {
    summary: "show a project's quota usage against its limits (read from the controller)",
    load: () => require("./quota"),
  },
  console: {
    summary: "print a noVNC console URL with an expiring token for a server (needs reader on its project)",
    load: () => require("./console"),
  },
  asg: {
    summary:
      "an autoscale group's agent: status (size, members, cooldown, decisions), signal <policy>, reset <member> (a FAILED slot)",
    load: () => require("./asg"),
  },
  graph: {
    summary: "draw a lab's topology (from its YAML or a stack's outputs) as SVG or HTML",
    load: () => require("./graph"),
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: kvmlab <command> [options]\n\ncommands:\n${lines.join("\n")}\n\nRun "kvmlab <command> --help" for a command's options.`;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (command === undefined) {
    console.error(`kvmlab: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  return command.load().main(rest);
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      console.error(`kvmlab: ${err instanceof Error ? err.message : String(err)}`);
      process.exitCode = 1;
    },
  );
}
