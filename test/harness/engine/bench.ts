/**
 * Wall time of whole engine-harness runs (harness + program process + provider process) for
 * 1, 10 and 50 dynamic resources, on the `files` fixture.
 *
 *   node dist/test/harness/engine/bench.js [--runs R] [--sizes 1,10,50]
 *
 * Prints a Markdown table of medians, in ms. Not a test: figures depend on machine load.
 */
import * as os from "node:os";
import { FixtureStack, type Spec } from "./fixture";
import type { Operation } from "./engine";

interface Phase {
  label: string;
  op: Operation;
  spec: (n: number) => Spec;
}

const files = (n: number, content: string): Spec => ({
  files: Array.from({ length: n }, (_, i) => ({ name: `r${i}`, content: `${content}-${i}` })),
});

const PHASES: Phase[] = [
  { label: "preview (all new)", op: "preview", spec: (n) => files(n, "v1") },
  { label: "up (create)", op: "up", spec: (n) => files(n, "v1") },
  { label: "up (no-op)", op: "up", spec: (n) => files(n, "v1") },
  { label: "up (update all)", op: "up", spec: (n) => files(n, "v2") },
  { label: "destroy", op: "destroy", spec: () => ({ files: [] }) },
];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(argv: string[]): Promise<number> {
  let runs = 3;
  let sizes = [1, 10, 50];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--runs") runs = Number(argv[++i]);
    else if (argv[i] === "--sizes") sizes = argv[++i].split(",").map(Number);
    else {
      console.error(`unknown argument ${argv[i]}; usage: bench.js [--runs R] [--sizes 1,10,50]`);
      return 2;
    }
  }
  const times = new Map<string, number[]>();
  for (let r = 0; r < runs; r++) {
    for (const n of sizes) {
      const s = new FixtureStack(`bench${n}`);
      try {
        for (const p of PHASES) {
          const res = await s.run(p.op, p.spec(n));
          if (!res.ok) throw new Error(`${p.label} with ${n} resources failed: ${res.errors.join("; ")}`);
          const key = `${n}|${p.label}`;
          times.set(key, [...(times.get(key) ?? []), res.durationMs]);
        }
      } finally {
        s.cleanup();
      }
    }
  }
  console.log(
    `Engine harness wall time, median of ${runs} run(s), ms (load average ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(" ")}, ${os.cpus().length} cores)\n`,
  );
  console.log(`| resources | ${PHASES.map((p) => p.label).join(" | ")} |`);
  console.log(`|---|${PHASES.map(() => "---").join("|")}|`);
  for (const n of sizes)
    console.log(`| ${n} | ${PHASES.map((p) => median(times.get(`${n}|${p.label}`)!)).join(" | ")} |`);
  return 0;
}

main(process.argv.slice(2)).then(
  (c) => {
    process.exitCode = c;
  },
  (e: Error) => {
    console.error(e.message);
    process.exitCode = 1;
  },
);
