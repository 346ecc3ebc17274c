/// <reference lib="dom" />
/**
 * The console proxy against one `kvmlab sandbox` host (instance "itest-con", or
 * $KVMLAB_ITEST_CON_INSTANCE), reached only over SSH (and, for the browser, over HTTP and
 * WebSocket to the sandbox host's management address).
 *
 * Proves: `kvmlab console <server> --user <reader>` prints a URL; Debian's chromium (through
 * puppeteer-core) opens it and noVNC reports "Connected to QEMU (<server>)" (QEMU names its VNC desktop after the domain) with a canvas of the guest's
 * screen size; the screenshot is kept as test-artifacts/console-<server>.png; a user without a
 * role on the project is refused by the command; the proxy refuses an expired token, the token
 * rewritten for another server, and a made-up token (noVNC never connects); the VNC port answers
 * on the host's management address and on no other address (the Server asked for "management" and
 * the provider filled in the placed host's address); a second stack's ConsoleProxy on the same
 * controller is refused naming the first and leaves it serving; deleting the proxy stops
 * websockify and removes every token.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { renderServer } from "../../components/server";
import { closeHostSessions, runChecked, sftpPut, type HostConnection } from "../../provider";
import {
  checkConsoleProxyInputs,
  consoleProxyProvider,
  consoleUrl,
  issueConsoleToken,
  type ConsoleProxyOutputs,
} from "../../provider/console";
import {
  checkDomainInputs,
  checkProjectInputs,
  checkRoleAssignmentInputs,
  checkUserInputs,
  domainProvider,
  projectProvider,
  roleAssignmentProvider,
  userProvider,
} from "../../provider/identity";
import { checkServerInputs, serverProvider, type ServerInputs } from "../../provider/server";
import {
  kvmlab,
  sandboxHostConnections,
  sshCheck,
  startSandbox,
  stopSandbox,
  waitFor,
  type SandboxStatus,
} from "../support/sandbox";

const INSTANCE = process.env.KVMLAB_ITEST_CON_INSTANCE ?? "itest-con";
const KEEP = process.env.KVMLAB_ITEST_KEEP === "1";
const CHROMIUM = process.env.KVMLAB_CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = path.resolve(__dirname, "..", "..", "..", "test-artifacts");
let status: SandboxStatus;
let hosts: HostConnection[] = [];
let proxy: ConsoleProxyOutputs | undefined;
const made: { provider: { delete?: (id: string, o: never) => Promise<void> }; id: string; outs: unknown }[] =
  [];

async function create(
  provider: { create?: (i: never) => Promise<{ id: string; outs?: unknown }> },
  check: (n: Record<string, unknown>) => { inputs: Record<string, unknown>; failures: unknown[] },
  raw: Record<string, unknown>,
): Promise<unknown> {
  const { inputs, failures } = check({ ...raw, hosts });
  assert.deepEqual(failures, []);
  const r = await provider.create!(inputs as never);
  made.push({ provider: provider as never, id: r.id, outs: r.outs });
  return r.outs;
}

function serverInputs(name: string): ServerInputs {
  const image = {
    name: "conimg",
    kind: "kernel" as const,
    disk: "",
    format: "qcow2" as const,
    kernel: "/var/lib/kvmlab/images/conimg/kernel",
    ramdisk: "/var/lib/kvmlab/images/conimg/ramdisk",
  };
  const flavor = { name: "m1.tiny", vcpus: 1, ramMiB: 128, diskGiB: 0 };
  const r = renderServer({
    serverName: name,
    uuidSeed: `itest-con/${name}`,
    lab: "itest",
    stack: "con",
    project: "Default/con",
    image,
    flavor,
    ports: [],
    // Kernel messages on both (no `quiet`: a person looking at the screenshot sees the boot);
    // ttyS0 last, so /dev/console (the guest's LAB-READY line) is the serial log this test waits
    // on (the guest also writes LAB-READY to tty0 itself).
    kernelCmdline: `console=tty0 console=ttyS0 panic=-1 lab.name=${name}`,
    cloudInit: false,
    publicKeys: [],
    userName: "kvmlab",
    userData: {},
    // "management": the provider fills in the address of the host placement chose.
    consoleListen: "management",
  });
  const { inputs, failures } = checkServerInputs({
    serverName: name,
    uuid: r.uuid,
    hosts,
    flavor,
    image,
    ports: [],
    domainXml: r.domainXml,
    cloudInit: r.cloudInit,
    powerState: "running",
    project: "Default/con",
  });
  assert.deepEqual(failures, []);
  return inputs as unknown as ServerInputs;
}

before(async () => {
  status = await startSandbox(INSTANCE, 1);
  hosts = sandboxHostConnections(status);
  await runChecked(hosts[0], [{ label: "image dir", script: "mkdir -p /var/lib/kvmlab/images/conimg" }]);
  // The distribution's bzImage, not the PVH vmlinux the other tests boot: a PVH-booted kernel
  // gets no VGA text console (no screen_info from real-mode setup), so its screen keeps
  // SeaBIOS's lines; the bzImage goes through real-mode setup and prints on the VGA screen.
  await sftpPut(hosts[0], status.image.kernelCompressed, "/var/lib/kvmlab/images/conimg/kernel");
  await sftpPut(hosts[0], status.image.ramdisk, "/var/lib/kvmlab/images/conimg/ramdisk");
  await create(domainProvider, checkDomainInputs, { domainName: "Default" });
  await create(projectProvider, checkProjectInputs, { projectName: "con" });
  await create(userProvider, checkUserInputs, { userName: "viewer", password: "viewer-password-1" });
  await create(userProvider, checkUserInputs, { userName: "stranger" });
  await create(roleAssignmentProvider, checkRoleAssignmentInputs, {
    user: "viewer",
    project: "con",
    role: "reader",
  });
  const s = await serverProvider.create!(serverInputs("con1") as never);
  made.push({ provider: serverProvider as never, id: s.id, outs: s.outs });
  const p = checkConsoleProxyInputs({ hosts });
  assert.deepEqual(p.failures, []);
  proxy = (await consoleProxyProvider.create!(p.inputs as never)).outs as ConsoleProxyOutputs;
});

after(async () => {
  if (proxy) await consoleProxyProvider.delete!("console", proxy as never).catch(() => undefined);
  for (const m of made.reverse()) await m.provider.delete!(m.id, m.outs as never).catch(() => undefined);
  await closeHostSessions();
  if (!KEEP) await stopSandbox(INSTANCE);
});

/** Opens `url` in headless Chromium; returns noVNC's status text and canvas size after `waitMs` or on connect. */
async function openConsole(
  url: string,
  screenshot?: string,
): Promise<{ status: string; width: number; height: number; textRows: number }> {
  const puppeteer = require("puppeteer-core") as typeof import("puppeteer-core");
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: 60_000,
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1100, height: 800 });
    await page.goto(url, { waitUntil: "load", timeout: 30_000 });
    // Connected, or a final state (Disconnected / something went wrong), within 30 s.
    await page
      .waitForFunction(
        () =>
          /^(Connected to|Disconnected|Something went wrong)/.test(
            document.getElementById("status")?.textContent ?? "",
          ),
        { timeout: 30_000 },
      )
      .catch(() => undefined);
    const text = await page.$eval("#status", (e) => e.textContent ?? "");
    if (text.startsWith("Connected to")) await new Promise((r) => setTimeout(r, 4000)); // let frames arrive
    const size = await page.evaluate(() => {
      const c = document.querySelector("#screen canvas") as HTMLCanvasElement | null;
      // Text rows on the guest's screen: 16-pixel bands holding any non-black pixel (VGA text
      // mode). SeaBIOS alone fills a handful; kernel and init output on tty0 fill many more.
      let textRows = 0;
      const ctx = c?.getContext("2d");
      if (c && ctx && c.width > 0)
        for (let y = 0; y + 16 <= c.height; y += 16) {
          const d = ctx.getImageData(0, y, c.width, 16).data;
          for (let i = 0; i < d.length; i += 4)
            if (d[i] + d[i + 1] + d[i + 2] > 96) {
              textRows++;
              break;
            }
        }
      return { width: c?.width ?? 0, height: c?.height ?? 0, textRows };
    });
    if (screenshot) await page.screenshot({ path: screenshot });
    return { status: text, ...size };
  } finally {
    await browser.close();
  }
}

test(
  "kvmlab console prints a URL; Chromium shows a live connection to that server's console",
  { timeout: 360_000 },
  async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`);
    // The guest has booted (its LAB-READY line on the serial console) before the screen is read.
    const serial = (
      made.find((m) => (m.outs as { serverName?: string }).serverName === "con1")!.outs as {
        serialLog: string;
      }
    ).serialLog;
    await waitFor(
      "con1's LAB-READY line on its serial console",
      async () =>
        (await sshCheck(status, hosts[0].name, `grep -c LAB-READY ${serial} 2>/dev/null; true`)).trim() > "0"
          ? true
          : undefined,
      { timeoutMs: 180_000, intervalMs: 2000 },
    );
    const r = await kvmlab(["console", "con1", "--user", "viewer", "--sandbox", INSTANCE], {
      timeoutMs: 60_000,
    });
    assert.equal(r.code, 0, r.stderr);
    const url = r.stdout.trim();
    assert.match(
      url,
      new RegExp(
        `^http://${hosts[0].address.replace(/\./g, "\\.")}:6080/vnc_lite\\.html\\?path=websockify%3Ftoken%3Dcon1\\.[A-Za-z0-9_-]{32}$`,
      ),
    );
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const shot = path.join(ARTIFACTS, "console-con1.png");
    const seen = await openConsole(url, shot);
    assert.equal(seen.status, "Connected to QEMU (con1)", JSON.stringify(seen));
    assert.ok(
      seen.width >= 640 && seen.height >= 400,
      `the canvas has the guest's screen size: ${JSON.stringify(seen)}`,
    );
    assert.ok(fs.statSync(shot).size > 5000);
    // The guest's console is on the screen: its boot log fills the text rows (SeaBIOS alone,
    // what a PVH-booted guest shows, fills about three).
    const rows = Math.floor(seen.height / 16);
    console.log(`# console canvas: ${seen.textRows} of ${rows} text rows in use; screenshot ${shot}`);
    assert.ok(
      seen.textRows >= rows - 5,
      `the guest's boot log fills the screen: ${seen.textRows} of ${rows} text rows in use (see ${shot})`,
    );
  },
);

test("a user without a role on the project gets no token", async () => {
  const r = await kvmlab(["console", "con1", "--user", "stranger", "--sandbox", INSTANCE], {
    timeoutMs: 60_000,
  });
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    /user Default\/stranger has no role on project Default\/con \(needs at least reader\)/,
  );
  assert.equal(r.stdout, "");
});

test(
  "the proxy refuses an expired token, a token rewritten for another server and a made-up one",
  { timeout: 180_000 },
  async () => {
    const t = await issueConsoleToken(hosts, "con1", "Default/viewer", 1);
    await new Promise((r) => setTimeout(r, 2500));
    const base = proxy!.baseUrl;
    const expired = await openConsole(t.url);
    assert.notEqual(
      expired.status.startsWith("Connected"),
      true,
      `expired token: ${JSON.stringify(expired)}`,
    );
    const fresh = await issueConsoleToken(hosts, "con1", "Default/viewer");
    const other = await openConsole(consoleUrl(base, fresh.token.replace(/^con1\./, "con2.")));
    assert.notEqual(other.status.startsWith("Connected"), true, `other server: ${JSON.stringify(other)}`);
    const fake = await openConsole(consoleUrl(base, `con1.${"A".repeat(32)}`));
    assert.notEqual(fake.status.startsWith("Connected"), true, `made-up token: ${JSON.stringify(fake)}`);
    // The fresh token itself still works (the refusals above are the token's, not the proxy's).
    assert.equal((await openConsole(fresh.url)).status, "Connected to QEMU (con1)");
  },
);

function tcpOpen(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: address, port, timeout: 3000 });
    s.once("connect", () => (s.destroy(), resolve(true)));
    s.once("error", () => resolve(false));
    s.once("timeout", () => (s.destroy(), resolve(false)));
  });
}

test("the VNC port answers on the management address and on no other address of the host", async () => {
  const t = await issueConsoleToken(hosts, "con1", "Default/viewer");
  assert.equal(await tcpOpen(hosts[0].address, t.vncPort), true, "VNC on the management address");
  // Every other address of the host, tried from inside the host.
  const out = await sshCheck(
    status,
    hosts[0].name,
    `for a in 127.0.0.1 $(ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1 | grep -vx ${hosts[0].address}); do if timeout 2 bash -c "exec 3<>/dev/tcp/$a/${t.vncPort}" 2>/dev/null; then echo "open $a"; else echo "closed $a"; fi; done`,
  );
  assert.match(out, /closed 127\.0\.0\.1/);
  assert.doesNotMatch(out, /^open /m, out);
});

test("the domain listens on the placed host's management address, filled in by the provider", async () => {
  const out = await sshCheck(
    status,
    hosts[0].name,
    'virsh -c qemu:///system dumpxml con1 | grep -E "<graphics|<listen"',
  );
  assert.match(out, new RegExp(`listen='${hosts[0].address.replace(/\./g, "\\.")}'`), out);
  assert.doesNotMatch(out, /kvmlab-management-address|127\.0\.0\.1/, out);
});

test("a second stack's ConsoleProxy on the same controller is refused; neither its create nor its delete touches the first", async () => {
  const other = checkConsoleProxyInputs({ hosts, owner: "other/dev/ConsoleProxy/console" });
  assert.deepEqual(other.failures, []);
  await assert.rejects(
    consoleProxyProvider.create!(other.inputs as never),
    /the console proxy on this host belongs to .*ConsoleProxy\/console, not to other\/dev\/ConsoleProxy\/console/,
  );
  await assert.rejects(
    consoleProxyProvider.delete!("console", { ...proxy!, owner: "other/dev/ConsoleProxy/console" } as never),
    /belongs to/,
  );
  // The first proxy still serves its tokens.
  const t = await issueConsoleToken(hosts, "con1", "Default/viewer");
  assert.equal((await openConsole(t.url)).status, "Connected to QEMU (con1)");
});

test("deleting the proxy stops websockify and removes every token", async () => {
  await consoleProxyProvider.delete!("console", proxy as never);
  proxy = undefined;
  const out = await sshCheck(
    status,
    hosts[0].name,
    "ls -A /var/lib/kvmlab/console 2>/dev/null; ss -Hltn 'sport = :6080'; true",
  );
  assert.equal(out.trim(), "");
});
