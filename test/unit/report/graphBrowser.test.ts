/// <reference lib="dom" />
/**
 * `kvmlab graph stacks/three-tier.yaml --out graph.html` opened in headless Chromium (Debian's
 * `chromium`, through puppeteer-core): the page loads nothing from outside, draws one SVG node
 * per object of the lab with its label, visible and apart, and keeps a screenshot a person can
 * look at: test-artifacts/graph-three-tier.png (git-ignored).
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { repoRoot, tempDir } from "../templates/support";
import { expectedObjects } from "./support";

const CHROMIUM = process.env.KVMLAB_CHROMIUM ?? "/usr/bin/chromium";

test(
  "three-tier graph.html in headless Chromium: every object drawn with its label; screenshot kept",
  { timeout: 120_000 },
  async () => {
    assert.ok(
      fs.existsSync(CHROMIUM),
      `${CHROMIUM} is missing: apt-get install -y chromium (see .ci/run), or set KVMLAB_CHROMIUM`,
    );
    const root = repoRoot();
    const { dir, cleanup } = tempDir();
    const puppeteer = require("puppeteer-core") as typeof import("puppeteer-core");
    const browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
      timeout: 60_000,
    });
    try {
      const html = path.join(dir, "graph.html");
      const r = spawnSync(
        process.execPath,
        [
          path.join(root, "bin", "kvmlab.js"),
          "graph",
          path.join(root, "stacks", "three-tier.yaml"),
          "--out",
          html,
        ],
        { encoding: "utf8" },
      );
      assert.equal(r.status, 0, r.stderr);

      const page = await browser.newPage();
      const requests: string[] = [];
      page.on("request", (req) => requests.push(req.url()));
      await page.setViewport({ width: 1600, height: 900 });
      await page.goto(`file://${html}`, { waitUntil: "load", timeout: 30_000 });
      // Show the whole drawing at its natural size, so the screenshot is readable.
      const size = await page.evaluate(() => {
        const svg = document.querySelector("main svg") as SVGSVGElement;
        return { width: Number(svg.getAttribute("width")), height: Number(svg.getAttribute("height")) };
      });
      await page.setViewport({ width: Math.ceil(size.width) + 60, height: Math.ceil(size.height) + 140 });
      assert.deepEqual(requests, [`file://${html}`], "the page loads nothing but itself");

      const drawn = await page.evaluate(() =>
        Array.from(document.querySelectorAll("main svg g.node")).map((g) => {
          const box = (g as SVGGElement).getBoundingClientRect();
          const name = g.querySelector("text.name") as SVGTextElement;
          const nb = name.getBoundingClientRect();
          const rect = g.querySelector("rect") as SVGRectElement;
          const rb = rect.getBoundingClientRect();
          return {
            kind: g.getAttribute("data-kind") ?? "",
            label: name.textContent ?? "",
            width: box.width,
            height: box.height,
            fill: getComputedStyle(rect).fill,
            // The name fits inside its box.
            inside:
              nb.left >= rb.left && nb.right <= rb.right + 0.5 && nb.top >= rb.top && nb.bottom <= rb.bottom,
            box: { x: rb.x, y: rb.y, w: rb.width, h: rb.height },
          };
        }),
      );
      const want = expectedObjects();
      for (const [kind, names] of Object.entries(want))
        assert.deepEqual(
          drawn
            .filter((d) => d.kind === kind)
            .map((d) => d.label)
            .sort(),
          [...names].sort(),
          `${kind} nodes drawn`,
        );
      assert.equal(drawn.length, Object.values(want).flat().length);
      for (const d of drawn) {
        assert.ok(d.width > 40 && d.height > 20, `${d.label} has a visible box`);
        assert.ok(d.inside, `${d.label}: its name overflows its box`);
        assert.notEqual(d.fill, "rgb(0, 0, 0)", `${d.label}: the page's styles apply`);
      }
      for (let i = 0; i < drawn.length; i++)
        for (let j = i + 1; j < drawn.length; j++) {
          const [a, b] = [drawn[i].box, drawn[j].box];
          const apart = a.x + a.w <= b.x || b.x + b.w <= a.x || a.y + a.h <= b.y || b.y + b.h <= a.y;
          assert.ok(apart, `${drawn[i].label} overlaps ${drawn[j].label}`);
        }
      const edgeLabels = await page.evaluate(() =>
        Array.from(document.querySelectorAll("main svg g.edge text")).map((t) => t.textContent ?? ""),
      );
      assert.ok(
        edgeLabels.includes("10.10.9.5 [bastion]") && edgeLabels.includes("qr 10.10.1.1"),
        edgeLabels.join(" | "),
      );

      const artifacts = path.join(root, "test-artifacts");
      fs.mkdirSync(artifacts, { recursive: true });
      const shot = path.join(artifacts, "graph-three-tier.png");
      await page.screenshot({ path: shot as `${string}.png`, fullPage: true });
      fs.copyFileSync(html, path.join(artifacts, "graph-three-tier.html"));
      assert.ok(fs.statSync(shot).size > 20_000, "the screenshot holds a picture");
      process.stdout.write(`# screenshot: ${shot}\n`);
    } finally {
      await browser.close();
      cleanup();
    }
  },
);
