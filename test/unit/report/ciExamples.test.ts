/**
 * The example CI workflows in examples/ci: their YAML parses, has the structure GitHub Actions
 * and GitLab CI require, runs the preview and the report, and their sticky-comment scripts
 * really post once and then edit that same comment (the GitHub one against a stand-in for
 * actions/github-script's `github` client, the GitLab one against a stand-in GitLab API on
 * loopback).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import { parse } from "yaml";
import { MARKER_PREFIX, parsePreviewDigest, renderPreviewReport } from "../../../report/preview";
import { repoRoot, tempDir } from "../templates/support";

type Obj = Record<string, unknown>;
const CI = path.join(repoRoot(), "examples", "ci");
const load = (f: string): Obj =>
  parse(fs.readFileSync(path.join(CI, f), "utf8"), { strict: true, uniqueKeys: true }) as Obj;
const report = (stack: string): string =>
  renderPreviewReport(
    parsePreviewDigest(
      fs
        .readFileSync(path.join(repoRoot(), "test", "fixtures", "preview", "pulumi-preview.json"), "utf8")
        .replaceAll("urn:pulumi:dev::", `urn:pulumi:${stack}::`),
    ),
  );

interface Step {
  name?: string;
  uses?: string;
  run?: string;
  id?: string;
  if?: string;
  with?: Obj;
  env?: Obj;
  "working-directory"?: string;
}

test("GitHub Actions example: a pull_request workflow with pulumi/actions preview + comment-on-pr and the kvmlab report", () => {
  const wf = load("github-preview.yml");
  assert.equal(typeof wf.name, "string");
  assert.ok((wf.on as Obj).pull_request !== undefined, "runs on pull requests");
  assert.equal((wf.permissions as Obj)["pull-requests"], "write", "may comment");
  const jobs = wf.jobs as Record<string, { "runs-on": unknown; steps: Step[] }>;
  assert.ok(Object.keys(jobs).length > 0);
  for (const [name, job] of Object.entries(jobs)) {
    assert.ok(job["runs-on"], `${name}: runs-on`);
    assert.ok(Array.isArray(job.steps) && job.steps.length > 0, `${name}: steps`);
    for (const [i, s] of job.steps.entries()) {
      assert.ok(
        (s.uses === undefined) !== (s.run === undefined),
        `${name}.steps[${i}]: exactly one of uses and run`,
      );
      if (s.uses)
        assert.match(s.uses, /^[\w.-]+\/[\w.-]+@v\d+$/, `${name}.steps[${i}]: a released action version`);
    }
  }
  const steps = Object.values(jobs).flatMap((j) => j.steps);
  const pulumi = steps.find((s) => s.uses?.startsWith("pulumi/actions@"));
  assert.ok(pulumi, "uses pulumi/actions");
  assert.equal(pulumi.with?.command, "preview");
  assert.equal(pulumi.with?.["comment-on-pr"], true);
  assert.ok(pulumi.with?.["stack-name"] && pulumi.with?.["work-dir"]);
  const json = steps.findIndex((s) =>
    /pulumi preview .*--json > "\$RUNNER_TEMP\/preview\.json"/.test(s.run ?? ""),
  );
  const rep = steps.findIndex((s) =>
    /npx kvmlab preview-report "\$RUNNER_TEMP\/preview\.json" --out "\$RUNNER_TEMP\/report\.md"/.test(
      s.run ?? "",
    ),
  );
  const sticky = steps.findIndex((s) => s.uses?.startsWith("actions/github-script@"));
  assert.ok(json > 0 && rep > json && sticky > rep, "preview --json, then the report, then the comment");
  assert.equal(steps[json].id, "json");
  assert.ok(
    steps.some((s) => s.if === "steps.json.outputs.exit != '0'"),
    "a failed preview fails the job after commenting",
  );
});

test("GitHub Actions example: the comment script posts once, then edits the same comment", async () => {
  const wf = load("github-preview.yml");
  const steps = Object.values(wf.jobs as Record<string, { steps: Step[] }>).flatMap((j) => j.steps);
  const script = steps.find((s) => s.uses?.startsWith("actions/github-script@"))!.with!.script as string;
  const { dir, cleanup } = tempDir();
  try {
    const comments: { id: number; body: string }[] = [{ id: 1, body: "LGTM" }];
    const calls: string[] = [];
    const github = {
      paginate: async (_f: unknown, args: Obj) => {
        assert.deepEqual(args, { owner: "o", repo: "r", issue_number: 7, per_page: 100 });
        return comments.map((c) => ({ ...c }));
      },
      rest: {
        issues: {
          listComments: () => undefined,
          createComment: async (a: { body: string }) => {
            calls.push("create");
            comments.push({ id: comments.length + 1, body: a.body });
          },
          updateComment: async (a: { comment_id: number; body: string }) => {
            calls.push(`update ${a.comment_id}`);
            comments.find((c) => c.id === a.comment_id)!.body = a.body;
          },
        },
      },
    };
    const context = { repo: { owner: "o", repo: "r" }, issue: { number: 7 } };
    const core = { info: () => undefined };
    const AsyncFunction = Object.getPrototypeOf(async () => undefined).constructor as new (
      ...a: string[]
    ) => (...v: unknown[]) => Promise<void>;
    const run = async (text: string): Promise<void> => {
      fs.writeFileSync(path.join(dir, "report.md"), text);
      const fn = new AsyncFunction("require", "github", "context", "core", "process", script);
      await fn(require, github, context, core, { env: { REPORT: path.join(dir, "report.md") } });
    };
    await run(report("dev"));
    await run(report("dev").replace("1 to create", "2 to create"));
    await run(report("prod"));
    assert.deepEqual(calls, ["create", "update 2", "create"]);
    assert.equal(comments.length, 3, "one comment per stack, the reviewer's own untouched");
    assert.match(comments[1].body, /2 to create/);
    assert.equal(comments[0].body, "LGTM");
  } finally {
    cleanup();
  }
});

test("GitLab example: a merge-request job that previews, reports and keeps artifacts", () => {
  const doc = load("gitlab-preview.yml");
  const job = doc["kvmlab-preview"] as Obj;
  assert.ok(job, "defines the kvmlab-preview job");
  assert.equal(typeof job.image, "string");
  assert.deepEqual(job.rules, [{ if: '$CI_PIPELINE_SOURCE == "merge_request_event"' }]);
  const script = job.script as string[];
  assert.ok(Array.isArray(script) && script.every((l) => typeof l === "string"));
  assert.ok(
    script.some((l) => /pulumi preview --stack "\$STACK" --json > "\$CI_PROJECT_DIR\/preview\.json"/.test(l)),
  );
  assert.ok(script.some((l) => l.startsWith("npx kvmlab preview-report preview.json --out report.md")));
  assert.equal(script[script.length - 1], "exit $status", "a failed preview fails the job after the note");
  assert.equal((job.artifacts as Obj).when, "always");
  for (const [k, v] of Object.entries(doc))
    assert.ok(typeof v === "object" && v !== null, `${k}: a job is a mapping`);
});

test("GitLab example: the note script posts one note, then edits it (stand-in GitLab API on loopback)", async () => {
  const job = load("gitlab-preview.yml")["kvmlab-preview"] as { script: string[] };
  const block = job.script.find((l) => l.startsWith("node <<'JS'"))!;
  const js = block.slice(block.indexOf("\n") + 1, block.lastIndexOf("\nJS"));
  const notes: { id: number; body: string }[] = [{ id: 10, body: "please check the LB" }];
  // Enough other notes to need a second page.
  for (let i = 0; i < 120; i++) notes.push({ id: 100 + i, body: `comment ${i}` });
  const seen: string[] = [];
  const server = http.createServer((req, res) => {
    let data = "";
    req.on("data", (c: Buffer) => (data += c.toString()));
    req.on("end", () => {
      const url = new URL(req.url ?? "", "http://x");
      seen.push(`${req.method} ${url.pathname}${url.search}`);
      assert.equal(req.headers["private-token"], "tok");
      const base = "/api/v4/projects/42/merge_requests/5/notes";
      if (req.method === "GET" && url.pathname === base) {
        const page = Number(url.searchParams.get("page"));
        const per = Number(url.searchParams.get("per_page"));
        res.end(JSON.stringify(notes.slice((page - 1) * per, page * per)));
      } else if (req.method === "POST" && url.pathname === base) {
        notes.push({ id: 999, body: (JSON.parse(data) as { body: string }).body });
        res.end("{}");
      } else if (req.method === "PUT" && url.pathname.startsWith(`${base}/`)) {
        notes.find((n) => n.id === Number(url.pathname.split("/").pop()))!.body = (
          JSON.parse(data) as { body: string }
        ).body;
        res.end("{}");
      } else {
        res.statusCode = 404;
        res.end();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  const { dir, cleanup } = tempDir();
  const run = (text: string): Promise<number> => {
    fs.writeFileSync(path.join(dir, "report.md"), text);
    return new Promise((resolve) => {
      const child = spawn(process.execPath, ["-"], {
        cwd: dir,
        env: {
          ...process.env,
          CI_API_V4_URL: `http://127.0.0.1:${port}/api/v4`,
          CI_PROJECT_ID: "42",
          CI_MERGE_REQUEST_IID: "5",
          KVMLAB_NOTES_TOKEN: "tok",
        },
        stdio: ["pipe", "ignore", "inherit"],
      });
      child.stdin.end(js);
      const timer = setTimeout(() => child.kill(), 30_000);
      child.on("close", (code) => {
        clearTimeout(timer);
        resolve(code ?? 1);
      });
    });
  };
  try {
    assert.equal(await run(report("dev")), 0);
    assert.equal(await run(report("dev").replace("1 to create", "3 to create")), 0);
    const mine = notes.filter((n) => n.body.startsWith(MARKER_PREFIX));
    assert.equal(mine.length, 1, "one sticky note");
    assert.match(mine[0].body, /3 to create/, "edited in place");
    assert.equal(notes[0].body, "please check the LB");
    assert.ok(seen.includes("PUT /api/v4/projects/42/merge_requests/5/notes/999"), seen.join("\n"));
  } finally {
    server.close();
    cleanup();
  }
});
