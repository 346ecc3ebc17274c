/**
 * A separate process that reserves quota on the controller, for the cross-process test in
 * test/integration/identity.test.ts. Reads {host, project, holders, usage} as JSON on stdin
 * (the host's private key travels there, never in argv), tries each holder in turn and prints
 * one JSON line: {ok: [...holders reserved], refused: [...error messages]}.
 */
import { closeHostSessions, type HostConnection } from "../../provider/host";
import { reserveQuota } from "../../provider/quota";
import type { Usage } from "../../core/identity";

async function main(): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  const job = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
    host: HostConnection;
    project: string;
    holders: string[];
    usage: Usage;
  };
  const ok: string[] = [];
  const refused: string[] = [];
  for (const h of job.holders) {
    try {
      await reserveQuota(job.host, job.project, h, job.usage);
      ok.push(h);
    } catch (e) {
      refused.push(e instanceof Error ? e.message : String(e));
    }
  }
  await closeHostSessions();
  process.stdout.write(`${JSON.stringify({ ok, refused })}\n`);
}

void main();
