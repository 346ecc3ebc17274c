/**
 * cloud-init NoCloud seed files: `meta-data`, `user-data` (#cloud-config) and
 * `network-config` (version 2). Every scalar is emitted as a quoted YAML string (or a block
 * literal for file contents), and the view rejects names that could not be one.
 */
import { cidrContains, ipToInt, parseCidr } from "../core/net";
import { renderTemplate } from "./render";
import { assertSealed, seal } from "./sealed";
import {
  checkBool,
  checkHostname,
  checkIfName,
  checkInt,
  checkMac,
  checkPasswordHash,
  checkPath,
  checkSshPublicKey,
  checkText,
  FieldError,
} from "./validate";

const USER_PATTERN = /^[a-z_][a-z0-9_-]{0,31}$/;
const GROUP_PATTERN = USER_PATTERN;
const OWNER_PATTERN = /^[a-z_][a-z0-9_-]{0,31}(?::[a-z_][a-z0-9_-]{0,31})?$/;
const MODE_PATTERN = /^0[0-7]{3}$/;

export interface CloudUserSpec {
  readonly name: string;
  readonly sshAuthorizedKeys?: readonly string[];
  /** crypt(3) hash (`$6$…`); clear text is refused. `null`/absent locks the password. */
  readonly passwordHash?: string | null;
  /** Passwordless sudo. @default false */
  readonly sudo?: boolean;
  readonly groups?: readonly string[];
  /** @default "/bin/sh" */
  readonly shell?: string;
}

export interface WriteFileSpec {
  readonly path: string;
  readonly content: string;
  /** Octal mode. @default "0644" */
  readonly permissions?: string;
  /** @default "root:root" */
  readonly owner?: string;
}

export interface CloudNicSpec {
  /** Guest interface name (`eth0`). */
  readonly name: string;
  readonly mac: string;
  /** `dhcp` or a static address with its subnet. */
  readonly address: "dhcp" | { readonly ip: string; readonly cidr: string };
  /** Default route via this address (static addresses only). @default none */
  readonly gateway?: string | null;
  readonly dnsServers?: readonly string[];
  readonly mtu?: number | null;
}

export interface CloudInitSpec {
  /** NoCloud instance id; a change makes cloud-init run again as a new instance. */
  readonly instanceId: string;
  readonly hostname: string;
  readonly users?: readonly CloudUserSpec[];
  readonly writeFiles?: readonly WriteFileSpec[];
  /** Shell lines (run with sh -c) or argv arrays (run directly). */
  readonly runcmd?: readonly (string | readonly string[])[];
  readonly nics?: readonly CloudNicSpec[];
}

export interface CloudInitView {
  readonly instanceId: string;
  readonly hostname: string;
  readonly users: readonly {
    readonly name: string;
    readonly sshAuthorizedKeys: readonly string[];
    readonly passwordHash: string | null;
    readonly sudo: boolean;
    readonly groups: string | null;
    readonly shell: string;
  }[];
  readonly passwordAuth: boolean;
  readonly writeFiles: readonly {
    readonly path: string;
    readonly content: string;
    readonly permissions: string;
    readonly owner: string;
  }[];
  readonly runcmd: readonly (string | readonly string[])[];
  readonly nics: readonly {
    readonly name: string;
    readonly mac: string;
    readonly dhcp: boolean;
    readonly address: string | null;
    readonly gateway: string | null;
    readonly dnsServers: readonly string[];
    readonly mtu: number | null;
  }[];
}

function checkPattern(field: string, value: unknown, pattern: RegExp, what: string): string {
  if (typeof value !== "string" || !pattern.test(value)) {
    throw new FieldError(field, `invalid ${what} ${JSON.stringify(value)}`, `use ${pattern.source}`);
  }
  return value;
}

/** Validates `spec` and returns the view the three cloud-init renderers accept. */
export function toCloudInitView(spec: CloudInitSpec): CloudInitView {
  const instanceId = checkPattern(
    "instanceId",
    spec.instanceId,
    /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/,
    "instance id",
  );
  const hostname = checkHostname("hostname", spec.hostname);
  const userNames = new Set<string>();
  const users = (spec.users ?? []).map((u, i) => {
    const name = checkPattern(`users[${i}].name`, u.name, USER_PATTERN, "user name");
    if (userNames.has(name))
      throw new FieldError(`users[${i}].name`, `duplicate user ${name}`, "list each user once");
    userNames.add(name);
    const groups = (u.groups ?? []).map((g, j) =>
      checkPattern(`users[${i}].groups[${j}]`, g, GROUP_PATTERN, "group"),
    );
    return {
      name,
      sshAuthorizedKeys: (u.sshAuthorizedKeys ?? []).map((k, j) =>
        checkSshPublicKey(`users[${i}].sshAuthorizedKeys[${j}]`, k),
      ),
      passwordHash:
        u.passwordHash === undefined || u.passwordHash === null
          ? null
          : checkPasswordHash(`users[${i}].passwordHash`, u.passwordHash),
      sudo: checkBool(`users[${i}].sudo`, u.sudo ?? false),
      groups: groups.length > 0 ? groups.join(", ") : null,
      shell: checkPath(`users[${i}].shell`, u.shell ?? "/bin/sh"),
    };
  });
  const paths = new Set<string>();
  const writeFiles = (spec.writeFiles ?? []).map((f, i) => {
    const path = checkPath(`writeFiles[${i}].path`, f.path);
    if (paths.has(path))
      throw new FieldError(`writeFiles[${i}].path`, `duplicate path ${path}`, "merge the two files");
    paths.add(path);
    return {
      path,
      content: checkText(`writeFiles[${i}].content`, f.content, { multiline: true }),
      permissions: checkPattern(
        `writeFiles[${i}].permissions`,
        f.permissions ?? "0644",
        MODE_PATTERN,
        "mode",
      ),
      owner: checkPattern(`writeFiles[${i}].owner`, f.owner ?? "root:root", OWNER_PATTERN, "owner"),
    };
  });
  const runcmd = (spec.runcmd ?? []).map((cmd, i) =>
    typeof cmd === "string"
      ? checkText(`runcmd[${i}]`, cmd, { max: 4096 })
      : Array.isArray(cmd) && cmd.length > 0
        ? cmd.map((arg, j) => checkText(`runcmd[${i}][${j}]`, arg, { max: 4096 }))
        : (() => {
            throw new FieldError(`runcmd[${i}]`, "expected a command line or a non-empty argv array");
          })(),
  );
  const nicNames = new Set<string>();
  const nics = (spec.nics ?? []).map((n, i) => {
    const name = checkIfName(`nics[${i}].name`, n.name);
    if (nicNames.has(name))
      throw new FieldError(`nics[${i}].name`, `duplicate interface ${name}`, "name each NIC once");
    nicNames.add(name);
    const dhcp = n.address === "dhcp";
    let address: string | null = null;
    let gateway: string | null = null;
    if (!dhcp) {
      if (typeof n.address !== "object" || n.address === null) {
        throw new FieldError(`nics[${i}].address`, 'expected "dhcp" or { ip, cidr }');
      }
      const cidr = parseCidr(n.address.cidr, `nics[${i}].address.cidr`);
      ipToInt(n.address.ip, `nics[${i}].address.ip`);
      if (!cidrContains(cidr, n.address.ip)) {
        throw new FieldError(`nics[${i}].address.ip`, `${n.address.ip} is outside ${cidr.text}`);
      }
      address = `${n.address.ip}/${cidr.prefix}`;
      if (n.gateway !== undefined && n.gateway !== null) {
        ipToInt(n.gateway, `nics[${i}].gateway`);
        if (!cidrContains(cidr, n.gateway)) {
          throw new FieldError(
            `nics[${i}].gateway`,
            `${n.gateway} is outside ${cidr.text}`,
            "use an on-link gateway",
          );
        }
        gateway = n.gateway;
      }
    } else if (n.gateway !== undefined && n.gateway !== null) {
      throw new FieldError(
        `nics[${i}].gateway`,
        "a DHCP interface takes its gateway from DHCP",
        "remove gateway",
      );
    }
    return {
      name,
      mac: checkMac(`nics[${i}].mac`, n.mac),
      dhcp,
      address,
      gateway,
      dnsServers: (n.dnsServers ?? []).map((ip, j) => (ipToInt(ip, `nics[${i}].dnsServers[${j}]`), ip)),
      mtu: n.mtu === undefined || n.mtu === null ? null : checkInt(`nics[${i}].mtu`, n.mtu, 576, 9216),
    };
  });
  return seal({
    instanceId,
    hostname,
    users,
    passwordAuth: users.some((u) => u.passwordHash !== null),
    writeFiles,
    runcmd,
    nics,
  });
}

export function renderMetaData(view: CloudInitView): string {
  assertSealed(view, "toCloudInitView");
  return renderTemplate("cloudinit/meta-data", view);
}

export function renderUserData(view: CloudInitView): string {
  assertSealed(view, "toCloudInitView");
  return renderTemplate("cloudinit/user-data", view);
}

export function renderNetworkConfig(view: CloudInitView): string {
  assertSealed(view, "toCloudInitView");
  return renderTemplate("cloudinit/network-config", view);
}

/** The three NoCloud seed files, named as the seed ISO (volume label `cidata`) expects them. */
export function renderCloudInit(view: CloudInitView): {
  "meta-data": string;
  "user-data": string;
  "network-config": string;
} {
  return {
    "meta-data": renderMetaData(view),
    "user-data": renderUserData(view),
    "network-config": renderNetworkConfig(view),
  };
}
