/**
 * The hosts a `kvmlab` command that talks to a lab uses (`quota`, `console`): a JSON file of
 * hosts (`--hosts <file>`: a list of {name, address, port?, user?, privateKeyPath, hostKey?},
 * the shape of stack config `kvmlab:hosts`), else a running sandbox (`--sandbox <instance>`,
 * default $KVMLAB_SANDBOX_INSTANCE or "default"). The first host is the controller.
 */
import * as fs from "node:fs";
import { defaultInstance, readSandboxStatus } from "../components/sandbox";
import type { HostConnection } from "../provider/host";

export function commandHosts(opts: Map<string, string | true>): HostConnection[] {
  const file = opts.get("hosts");
  if (typeof file === "string") {
    const list = JSON.parse(fs.readFileSync(file, "utf8")) as {
      name: string;
      address: string;
      port?: number;
      user?: string;
      privateKeyPath: string;
      hostKey?: string;
    }[];
    if (!Array.isArray(list) || list.length === 0)
      throw new Error(`--hosts ${file}: expected a non-empty JSON list of hosts`);
    return list.map((h) => ({
      name: h.name,
      address: h.address,
      port: h.port ?? 22,
      user: h.user ?? "root",
      privateKey: fs.readFileSync(h.privateKeyPath, "utf8"),
      hostKey: h.hostKey ?? "",
      trustOnFirstUse: !h.hostKey,
      uplink: "",
      tunnelAddress: "",
    }));
  }
  const instance =
    typeof opts.get("sandbox") === "string" ? (opts.get("sandbox") as string) : defaultInstance();
  const status = readSandboxStatus(instance);
  if (!status || status.hosts.length === 0)
    throw new Error(
      `no hosts: pass --hosts <file.json>, or start sandbox ${instance} ("sudo npx kvmlab sandbox up")`,
    );
  return status.hosts.map((h) => ({
    name: h.name,
    address: h.address,
    port: h.port,
    user: h.user,
    privateKey: fs.readFileSync(h.privateKeyPath, "utf8"),
    hostKey: h.hostKey,
    trustOnFirstUse: false,
    uplink: h.uplink,
    tunnelAddress: h.tunnelAddress,
  }));
}

/** `name` or `<domain>/<name>` → `<domain>/<name>` (bare names are in `Default`). */
export function qualified(ref: string): string {
  return ref.includes("/") ? ref : `Default/${ref}`;
}
