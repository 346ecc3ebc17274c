/**
 * LoadBalancer provider, pure parts: check (defaults, refusals naming their field), diff (the
 * config is an update, never a replacement; drift), Octavia's status mapping from haproxy's
 * stats, the member diff that decides what to drain, step text, and serialization.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { assertSerializable } from "../../harness/serialization";
import { loadBalancerRaw, testHost } from "./fixtures";
import { amphoraMac, loadBalancerPaths } from "../../../core/paths";
import { keepalivedPair } from "../../../templates/keepalived";
import {
  UNKNOWN,
  amphoraeDrift,
  applyConfigStep,
  keepalivedApplyStep,
  checkLoadBalancerInputs,
  configServers,
  diffLoadBalancer,
  drainStep,
  loadBalancerDeleteStep,
  loadBalancerDrift,
  loadBalancerProvider,
  memberOperatingStatus,
  operatingStatuses,
  parseLoadBalancerState,
  removedServers,
  vipPortStep,
  type LoadBalancerInputs,
  type LoadBalancerOutputs,
} from "../../../provider";

const hosts = [testHost("hv1", 1), testHost("hv2", 2)];

function checked(over: Record<string, unknown> = {}, members?: string[]): LoadBalancerInputs {
  const r = checkLoadBalancerInputs(loadBalancerRaw(hosts, over, members));
  assert.deepEqual(r.failures, []);
  return r.inputs as unknown as LoadBalancerInputs;
}

function sha(text: string): string {
  return require("node:crypto").createHash("sha256").update(text).digest("hex") as string;
}

function outputsOf(inputs: LoadBalancerInputs, drift: string[] = []): LoadBalancerOutputs {
  return { ...inputs, host: "hv1", drift, realized: {} } as unknown as LoadBalancerOutputs;
}

test("check fills Octavia-style defaults: least-loaded host, 10 s drain, MTU 1500", () => {
  const i = checked();
  assert.equal(i.lbHost, "");
  assert.equal(i.drainTimeout, 10);
  assert.equal(i.mtu, 1500);
});

test("check refuses each bad field by name, with the fix", () => {
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ vipAddress: "10.20.0.5" }, "vipAddress", /inside 10\.10\.0\.0\/24/],
    [{ lbHost: "hv9" }, "lbHost", /not one of the hosts \(hv1, hv2\)/],
    [{ subnetHost: "hv9" }, "subnetHost", /not one of the hosts/],
    [{ driver: "ovn" }, "driver", /linuxbridge/],
    [{ networkBridge: "br0; rm -rf /" }, "networkBridge", /kvlb-/],
    [{ lbName: "a b" }, "lbName", /lbName/],
    [{ drainTimeout: -1 }, "drainTimeout", /0-3600/],
    [{ haproxyCfg: "global\n    stats socket /tmp/x.sock\n" }, "haproxyCfg", /renderHaproxyCfg/],
  ];
  for (const [over, field, re] of cases) {
    const r = checkLoadBalancerInputs(loadBalancerRaw(hosts, over));
    const f = r.failures.find((x) => x.property === field);
    assert.ok(f, `${field}: refused (${JSON.stringify(r.failures)})`);
    assert.match(f.reason, re);
  }
  // A config that binds another address than the VIP is refused.
  const raw = loadBalancerRaw(hosts);
  const other = (raw.haproxyCfg as string).replace("bind 10.10.0.50:80", "bind 0.0.0.0:80");
  const r = checkLoadBalancerInputs({ ...raw, haproxyCfg: other });
  assert.match(r.failures.map((f) => f.reason).join("\n"), /must bind the VIP 10\.10\.0\.50/);
});

test("check accepts unknowns anywhere (preview)", () => {
  for (const key of ["vipAddress", "haproxyCfg", "cidr", "lbHost", "subnetHost"]) {
    const r = checkLoadBalancerInputs(loadBalancerRaw(hosts, { [key]: UNKNOWN }));
    assert.deepEqual(r.failures, [], key);
  }
});

test("diff: listener, pool, member and monitor changes are updates (a reload), never a replacement", () => {
  const olds = outputsOf(checked());
  const fewer = checked({}, ["web1"]);
  const d = diffLoadBalancer(olds, fewer);
  assert.equal(d.changes, true);
  assert.deepEqual(d.replaces, []);
  assert.deepEqual(diffLoadBalancer(olds, checked()).changes, false);
  // Where it runs stays when the program leaves the host to placement.
  assert.deepEqual(diffLoadBalancer(olds, checked({ lbHost: "hv1" })).replaces, []);
  assert.deepEqual(diffLoadBalancer(olds, checked({ lbHost: "hv2" })).replaces, ["lbHost"]);
  // The VIP, its subnet and network make a new load balancer.
  assert.deepEqual(diffLoadBalancer(olds, { ...checked(), vipAddress: "10.10.0.51" }).replaces, [
    "vipAddress",
  ]);
  // Drift found by refresh is a change.
  assert.equal(diffLoadBalancer(outputsOf(checked(), ["haproxy is not running"]), checked()).changes, true);
});

test("drift names haproxy dead and a config edited by hand", () => {
  const i = checked();
  const mac = loadBalancerPaths("web-lb").vipMac;
  const ok = {
    namespace: true,
    port: true,
    portInBridge: true,
    address: "10.10.0.50/24",
    mac,
    haproxy: true,
    configSha: sha(i.haproxyCfg),
    failedConfig: false,
    servers: {},
    backends: {},
    keepalived: false,
    keepalivedConfigSha: "",
    vrrpState: "",
    holdsVip: false,
  };
  assert.deepEqual(loadBalancerDrift(ok, { ...i, mac }), []);
  assert.deepEqual(loadBalancerDrift({ ...ok, haproxy: false }, { ...i, mac }), ["haproxy is not running"]);
  assert.match(loadBalancerDrift({ ...ok, configSha: sha("x") }, { ...i, mac })[0], /edited by hand/);
});

test("member statuses map from haproxy's stats as Octavia maps its heartbeat", () => {
  assert.equal(memberOperatingStatus("UP"), "ONLINE");
  assert.equal(memberOperatingStatus("UP 1/2"), "ONLINE");
  assert.equal(memberOperatingStatus("DOWN"), "ERROR");
  assert.equal(memberOperatingStatus("DOWN 1/2"), "ERROR");
  assert.equal(memberOperatingStatus("DRAIN"), "DRAINING");
  assert.equal(memberOperatingStatus("MAINT"), "OFFLINE");
  assert.equal(memberOperatingStatus("no check"), "NO_MONITOR");
  const row = (px: string, sv: string, status: string) => {
    const f = Array.from({ length: 40 }, () => "");
    f[0] = px;
    f[1] = sv;
    f[17] = status;
    return `stat=${f.join(",")}`;
  };
  const state = parseLoadBalancerState(
    [
      "namespace=yes",
      "haproxy=yes",
      row("http", "FRONTEND", "OPEN"),
      row("web:http", "web1", "UP"),
      row("web:http", "web2", "DOWN"),
      row("web:http", "BACKEND", "UP"),
    ].join("\n"),
  );
  assert.deepEqual(state.servers, { "web:http/web1": "UP", "web:http/web2": "DOWN" });
  const st = operatingStatuses(state);
  assert.deepEqual(st.members, { "web/web1": "ONLINE", "web/web2": "ERROR" });
  assert.equal(st.loadBalancer, "DEGRADED");
  assert.equal(operatingStatuses({ ...state, haproxy: false }).loadBalancer, "OFFLINE");
  assert.equal(
    operatingStatuses({ ...state, backends: { "web:http": "DOWN" } }).loadBalancer,
    "ERROR",
    "a pool DOWN is an ERROR",
  );
});

test("the members a new config drops are the ones drained before the reload", () => {
  const two = checked().haproxyCfg;
  const one = checked({}, ["web1"]).haproxyCfg;
  assert.deepEqual(configServers(two), ["web:http/web1", "web:http/web2"]);
  assert.deepEqual(removedServers(two, one), ["web:http/web2"]);
  assert.deepEqual(removedServers(one, two), []);
});

test("steps: -c before the swap, *.failed kept, reload through the master, state saved; quoting", () => {
  const paths = loadBalancerPaths("web-lb");
  const apply = applyConfigStep("web-lb", paths).script;
  assert.ok(apply.indexOf("haproxy -c -f") < apply.indexOf('mv -f "$new" "$cfg"'), "checked before the swap");
  assert.match(apply, /mv -f "\$new" "\$failed"/);
  assert.match(apply, /show servers state/);
  assert.match(apply, /echo reload \| socat/);
  assert.match(apply, /haproxy -Ws -D -f "\$cfg"/);
  const drain = drainStep("web-lb", paths, ["web:http/web'2"], 5).script;
  assert.match(drain, /'web:http\/web'\\''2'/, "server names are shell-quoted");
  assert.match(drain, /state drain/);
  const port = vipPortStep(
    {
      lbName: "web-lb",
      networkBridge: "kvlb-1a2b3c4d",
      driver: "openvswitch",
      addressCidr: "10.10.0.50/24",
      mac: paths.vipMac,
      gateway: "10.10.0.1",
      mtu: 1450,
    },
    paths,
  ).script;
  assert.match(port, /ovs-vsctl --may-exist add-port/);
  assert.match(port, /fa:16:3e:/);
  const del = loadBalancerDeleteStep("web-lb", "linuxbridge", paths).script;
  assert.match(del, /ip netns del "\$ns"/);
  assert.match(del, /rm -rf "\$dir"/);
});

test("the provider serializes without captured modules or secrets", async () => {
  const { text } = await assertSerializable(loadBalancerProvider, {
    forbid: [/handlebars/i, /\.hbs\b/, /templates\//],
    methods: ["check", "diff", "create", "read", "update", "delete"],
    maxBytes: 256 * 1024,
  });
  assert.match(text, /require\("node-ssh"\)/);
});

function standby(over: Record<string, unknown> = {}): Record<string, unknown> {
  const ha = keepalivedPair("web-lb", "10.10.0.50", "10.10.0.0/24");
  return { topology: "ACTIVE_STANDBY", ...ha, ...over };
}

test("ACTIVE_STANDBY: check accepts the pair, defaults SINGLE, refuses each bad field by name", () => {
  const s = checked();
  assert.equal(s.topology, "SINGLE");
  assert.deepEqual([s.vrrpAddresses, s.keepalivedConfs, s.standbyHost], [[], [], ""]);
  const i = checked(standby({ lbHost: "hv1", standbyHost: "hv2" }));
  assert.deepEqual(i.vrrpAddresses, ["10.10.0.51", "10.10.0.52"]);
  const ha = keepalivedPair("web-lb", "10.10.0.50", "10.10.0.0/24");
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ topology: "ACTIVE_ACTIVE" }, "topology", /"SINGLE" or "ACTIVE_STANDBY"/],
    [standby({ lbHost: "hv1", standbyHost: "hv1" }), "standbyHost", /different hosts/],
    [standby({ standbyHost: "hv9" }), "standbyHost", /not one of the hosts/],
    [standby({ vrrpAddresses: ["10.10.0.51"] }), "vrrpAddresses", /two amphorae/],
    [standby({ vrrpAddresses: ["10.10.0.50", "10.10.0.52"] }), "vrrpAddresses", /differ from vipAddress/],
    [standby({ vrrpAddresses: ["10.20.0.51", "10.10.0.52"] }), "vrrpAddresses[0]", /inside 10\.10\.0\.0\/24/],
    [
      standby({ keepalivedConfs: [ha.keepalivedConfs[1], ha.keepalivedConfs[0]] }),
      "keepalivedConfs",
      /unicast_src_ip 10\.10\.0\.51/,
    ],
    [standby({ keepalivedConfs: ["x"] }), "keepalivedConfs", /two keepalived\.conf/],
    [{ vrrpAddresses: ["10.10.0.51", "10.10.0.52"] }, "vrrpAddresses", /only for topology "ACTIVE_STANDBY"/],
    [standby({ hosts: [hosts[0]], subnetHost: "hv1" }), "hosts", /two hosts/],
  ];
  for (const [over, field, reason] of cases) {
    const r = checkLoadBalancerInputs(loadBalancerRaw(hosts, over));
    const f = r.failures.find((x) => x.property === field);
    assert.ok(f, `${field} refused for ${JSON.stringify(over).slice(0, 120)}: ${JSON.stringify(r.failures)}`);
    assert.match(f.reason, reason);
  }
});

test("ACTIVE_STANDBY: topology and VRRP addresses replace, keepalived.conf updates, a state from before topologies is SINGLE", () => {
  const single = checked();
  const olds = {
    ...outputsOf(single),
    topology: undefined,
    vrrpAddresses: undefined,
    keepalivedConfs: undefined,
  };
  assert.equal(diffLoadBalancer(olds as unknown as LoadBalancerOutputs, single).changes, false);
  assert.deepEqual(diffLoadBalancer(outputsOf(single), checked(standby())).replaces, [
    "topology",
    "vrrpAddresses",
  ]);
  const i = checked(standby());
  const o = {
    ...outputsOf(i),
    amphorae: [{ host: "hv1" }, { host: "hv2" }],
  } as unknown as LoadBalancerOutputs;
  assert.equal(diffLoadBalancer(o, i).changes, false);
  const confs = [i.keepalivedConfs[0].replace("advert_int 1", "advert_int 2"), i.keepalivedConfs[1]];
  const d = diffLoadBalancer(o, { ...i, keepalivedConfs: confs });
  assert.deepEqual([d.changes, d.replaces], [true, []]);
  assert.deepEqual(diffLoadBalancer(o, { ...i, standbyHost: "hv1" }).replaces, ["standbyHost"]);
});

test("ACTIVE_STANDBY: drift names the amphora whose keepalived died, no VIP holder and split brain", () => {
  const i = checked(standby());
  const amp = (n: number, over: Record<string, unknown> = {}) => ({
    namespace: true,
    port: true,
    portInBridge: true,
    address: `${i.vrrpAddresses[n]}/24`,
    mac: amphoraMac("web-lb", n),
    haproxy: true,
    configSha: sha(i.haproxyCfg),
    failedConfig: false,
    servers: {},
    backends: {},
    keepalived: true,
    keepalivedConfigSha: sha(i.keepalivedConfs[n]),
    vrrpState: n === 0 ? "MASTER" : "BACKUP",
    holdsVip: n === 0,
    ...over,
  });
  assert.notEqual(amphoraMac("web-lb", 0), amphoraMac("web-lb", 1));
  assert.deepEqual(amphoraeDrift(i, ["hv1", "hv2"], [amp(0), amp(1)]), []);
  assert.deepEqual(
    amphoraeDrift(
      i,
      ["hv1", "hv2"],
      [amp(0, { keepalived: false, holdsVip: false }), amp(1, { holdsVip: true })],
    ),
    ["amphora 0 on hv1: keepalived is not running"],
  );
  assert.deepEqual(amphoraeDrift(i, ["hv1", "hv2"], [amp(0, { holdsVip: false }), amp(1)]), [
    "no amphora holds the VIP 10.10.0.50",
  ]);
  assert.match(amphoraeDrift(i, ["hv1", "hv2"], [amp(0), amp(1, { holdsVip: true })])[0], /split brain/);
  assert.match(
    amphoraeDrift(i, ["hv1", "hv2"], [amp(0), amp(1, { keepalivedConfigSha: sha("x") })])[0],
    /amphora 1 on hv2: keepalived\.conf .* \(edited by hand\?\)/,
  );
});

test("ACTIVE_STANDBY steps: keepalived -t in the namespace before the swap, PID files, SIGTERM first on delete, the VIP kept", () => {
  const p = loadBalancerPaths("web-lb");
  const apply = keepalivedApplyStep("web-lb", p).script;
  // Every variable the scripts use is set (an unset $knew made keepalived -t check the default file).
  for (const v of ["kcfg", "knew", "kpid", "rpid", "cpid", "vstate"])
    assert.ok(
      apply.includes(
        `${v}=${p[({ kcfg: "keepalivedConfig", knew: "keepalivedNewConfig", kpid: "keepalivedPid", rpid: "vrrpPid", cpid: "checkerPid", vstate: "vrrpStateFile" } as const)[v as "kcfg"]]}`,
      ),
      v,
    );
  assert.match(apply, /kalive\(\) \{/);
  assert.ok(apply.indexOf("keepalived -t") < apply.indexOf('mv -f "$knew" "$kcfg"'));
  assert.match(
    apply,
    /ip netns exec "\$ns" keepalived --vrrp -f "\$kcfg" -p "\$kpid" -r "\$rpid" -c "\$cpid"/,
  );
  assert.match(apply, /kill -HUP/);
  const del = loadBalancerDeleteStep("web-lb", "linuxbridge", p).script;
  assert.ok(del.indexOf('kill "$kp"') >= 0 && del.indexOf('kill "$kp"') < del.indexOf("ip netns del"));
  const port = vipPortStep(
    {
      lbName: "web-lb",
      networkBridge: "kvlb-1a2b3c4d",
      driver: "linuxbridge",
      addressCidr: "10.10.0.51/24",
      mac: amphoraMac("web-lb", 1),
      gateway: "",
      mtu: 1450,
      vipCidr: "10.10.0.50/24",
    },
    p,
  ).script;
  assert.match(port, /\[ "\$a" = "\$keep" \] \|\|/);
  assert.match(port, /ip_nonlocal_bind=1/);
});
