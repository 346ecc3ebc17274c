/**
 * kvmlab graph: the topology model of stacks/three-tier.yaml (every host, network, router,
 * server, autoscale member and load balancer; ports with addresses and security groups; router
 * legs; LB members), the stack-outputs form, the SVG, and the command line. The browser test is
 * graphBrowser.test.ts.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { loadLab } from "../../../lab/parse";
import {
  layoutTopology,
  renderHtml,
  renderSvg,
  topologyFromLab,
  topologyFromOutputs,
  TopologyError,
} from "../../../report/graph";
import { repoRoot, tempDir } from "../templates/support";
import { expectedObjects, LAB } from "./support";

test("topology of three-tier: every object, ports with addresses and security groups, legs, members", () => {
  const lab = loadLab(LAB);
  const t = topologyFromLab(lab);
  const want = expectedObjects();
  for (const [kind, names] of Object.entries(want))
    assert.deepEqual(
      t.nodes
        .filter((n) => n.kind === kind)
        .map((n) => n.label)
        .sort(),
      [...names].sort(),
      `${kind} nodes`,
    );
  const edges = (kind: string) => t.edges.filter((e) => e.kind === kind);
  // Router legs: one per interface plus the gateway.
  const edge = lab.routers[0];
  assert.equal(edges("interface").length, edge.interfaces.length);
  assert.deepEqual(
    edges("gateway").map((e) => e.target),
    ["network:public"],
  );
  assert.match(edges("gateway")[0].label ?? "", /^qg 203\.0\.113\.\d+$/);
  assert.ok(edges("interface").some((e) => e.label === "qr 10.10.1.1" && e.target === "network:web-net"));
  // Ports: the bastion's fixed address and its security group; every autoscale member on its network.
  assert.ok(edges("port").some((e) => e.source === "server:bastion" && e.label === "10.10.9.5 [bastion]"));
  assert.ok(edges("port").some((e) => e.source === "server:db-0" && e.label === "10.10.3.5 [db]"));
  assert.equal(
    edges("port").filter((e) => e.source.startsWith("server:web-") && /\[web\]$/.test(e.label ?? "")).length,
    4,
  );
  // Floating IPs on the bastion and the public LB; VIPs with the LB's security group.
  assert.ok(
    t.nodes
      .find((n) => n.id === "server:bastion")
      ?.lines.some((l) => /^floating IP 203\.0\.113\.\d+$/.test(l)),
  );
  assert.ok(t.nodes.find((n) => n.id === "loadbalancer:web-lb")?.lines.some((l) => /^floating IP /.test(l)));
  assert.ok(
    edges("vip").some((e) => e.source === "loadbalancer:was-lb" && e.label === "VIP 10.10.2.5 [was-lb]"),
  );
  // Members: each LB reaches its group's members.
  const members = edges("member")
    .map((e) => `${e.source}>${e.target}`)
    .sort();
  assert.deepEqual(members, [
    "loadbalancer:was-lb>server:was-0",
    "loadbalancer:was-lb>server:was-1",
    "loadbalancer:was-lb>server:was-2",
    "loadbalancer:was-lb>server:was-3",
    "loadbalancer:web-lb>server:web-0",
    "loadbalancer:web-lb>server:web-1",
    "loadbalancer:web-lb>server:web-2",
    "loadbalancer:web-lb>server:web-3",
  ]);
  // Hosts: uplinks of the provider network, and pinned servers.
  assert.deepEqual(
    edges("uplink")
      .map((e) => e.source)
      .sort(),
    ["host:hv1", "host:hv2"],
  );
  assert.deepEqual(
    edges("placement")
      .map((e) => `${e.source}>${e.target}`)
      .sort(),
    ["server:bastion>host:hv1", "server:db-0>host:hv2"],
  );
  // Every security group that sits on a port or VIP is named on an edge.
  const onEdges = t.edges.map((e) => e.label ?? "").join("\n");
  for (const sg of lab.securityGroups.map((g) => g.name))
    assert.match(onEdges, new RegExp(`\\[([^\\]]*, )?${sg}(, [^\\]]*)?\\]`), sg);
});

test("topology from stack outputs: the exported topology round-trips; bad documents are named", () => {
  const t = topologyFromLab(loadLab(LAB));
  assert.deepEqual(topologyFromOutputs(JSON.parse(JSON.stringify({ topology: t, serverIp: "10.0.0.5" }))), t);
  assert.throws(
    () => topologyFromOutputs({ serverIp: "10.0.0.5" }),
    /\(document\): expected \{name, nodes\[\], edges\[\]\}: export the lab's topology/,
  );
  assert.throws(() => topologyFromOutputs({ topology: "[secret]" }), /--show-secrets/);
  const bad = JSON.parse(JSON.stringify(t)) as { edges: { target: string }[] };
  bad.edges[3].target = "server:nope";
  assert.throws(
    () => topologyFromOutputs({ topology: bad }),
    (e: Error) =>
      e instanceof TopologyError && /topology\.edges\[3\]\.target: no node "server:nope"/.test(e.message),
  );
});

test("SVG and HTML: every node with its label, laid out without overlaps, no external URL", async () => {
  const t = topologyFromLab(loadLab(LAB));
  const l = await layoutTopology(t);
  const svg = renderSvg(l, { standalone: true });
  assert.equal(svg.match(/<g class="node /g)?.length, t.nodes.length);
  for (const n of t.nodes)
    assert.ok(svg.includes(`<text class="name" x="12" y="19">${n.label}</text>`), n.label);
  for (let i = 0; i < l.nodes.length; i++)
    for (let j = i + 1; j < l.nodes.length; j++) {
      const [a, b] = [l.nodes[i], l.nodes[j]];
      const apart =
        a.x + a.width <= b.x || b.x + b.width <= a.x || a.y + a.height <= b.y || b.y + b.height <= a.y;
      assert.ok(apart, `${a.id} overlaps ${b.id}`);
    }
  const html = renderHtml(l);
  const urls = [...html.matchAll(/(?:https?:)?\/\/[^\s"'<>)]+/g)].map((m) => m[0]);
  assert.deepEqual(
    [...new Set(urls)],
    ["http://www.w3.org/2000/svg"],
    "only the SVG namespace, which is never fetched",
  );
  assert.doesNotMatch(html, /<script|<link|src=|@import/);
});

test("docs/images/three-tier-graph.svg is what kvmlab graph draws today", () => {
  const file = path.join(repoRoot(), "docs", "images", "three-tier-graph.svg");
  const r = spawnSync(
    process.execPath,
    [path.join(repoRoot(), "bin", "kvmlab.js"), "graph", LAB, "--out", "/dev/stdout"],
    {
      encoding: "utf8",
    },
  );
  assert.equal(r.status, 2, "--out must name an .svg or .html file");
  const { dir, cleanup } = tempDir();
  try {
    const fresh = path.join(dir, "g.svg");
    spawnSync(process.execPath, [path.join(repoRoot(), "bin", "kvmlab.js"), "graph", LAB, "--out", fresh]);
    assert.equal(
      fs.readFileSync(file, "utf8"),
      fs.readFileSync(fresh, "utf8"),
      "docs/images/three-tier-graph.svg is stale: run `kvmlab graph stacks/three-tier.yaml --out docs/images/three-tier-graph.svg`",
    );
  } finally {
    cleanup();
  }
});

test("kvmlab graph: writes SVG and HTML, names bad input, exit codes", () => {
  const bin = path.join(repoRoot(), "bin", "kvmlab.js");
  const { dir, cleanup } = tempDir();
  try {
    const svg = path.join(dir, "three-tier.svg");
    const r = spawnSync(process.execPath, [bin, "graph", LAB, "--out", svg], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /wrote .*three-tier\.svg: 20 objects/);
    assert.match(fs.readFileSync(svg, "utf8"), /^<\?xml version="1\.0" encoding="UTF-8"\?>\n<svg xmlns=/);
    const outputs = path.join(dir, "outputs.json");
    fs.writeFileSync(outputs, JSON.stringify({ topology: topologyFromLab(loadLab(LAB)) }));
    const fromOutputs = spawnSync(
      process.execPath,
      [bin, "graph", outputs, "--out", path.join(dir, "o.html")],
      { encoding: "utf8" },
    );
    assert.equal(fromOutputs.status, 0, fromOutputs.stderr);
    assert.equal(
      spawnSync(process.execPath, [bin, "graph", LAB, "--out", path.join(dir, "x.png")]).status,
      2,
    );
    assert.equal(spawnSync(process.execPath, [bin, "graph", LAB]).status, 2);
    fs.writeFileSync(
      path.join(dir, "bad.yaml"),
      "name: x\nservers: [{ name: a, image: nope, flavor: nope }]\n",
    );
    const bad = spawnSync(process.execPath, [bin, "graph", path.join(dir, "bad.yaml"), "--out", svg], {
      encoding: "utf8",
    });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /is not a valid lab/);
  } finally {
    cleanup();
  }
});
