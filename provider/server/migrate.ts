/**
 * Live migration steps (pure builders). Hosts share no storage and no trust, so for the
 * duration of one migration:
 *
 *   source       generates a one-off ed25519 key in /var/lib/kvmlab/migrate/<server>/
 *   destination  authorizes that key (restricted: no forwarding, no pty) in the authorized keys
 *                file its running sshd uses, tagged with a one-off comment
 *   source       gets a known_hosts holding the destination's host keys that match the pinned
 *                fingerprint (host-key checking stays on: libssh refuses any other key)
 *   source       `virsh migrate --live --persistent --undefinesource [--copy-storage-inc]`
 *                to qemu+libssh://user@destination/system
 *   both         the key, its authorization and the known_hosts are removed afterwards,
 *                whatever happened
 */
import { shQuote, type HostConnection, type Step } from "../host";
import { isIPv4 } from "../../core/net";
import { migrationDir } from "../../core/paths";
import { VIRSH } from "./steps";

/** Folder on the source holding the one-off key and known_hosts (one definition: core/paths.ts). */
export { migrationDir } from "../../core/paths";

/** Source: a fresh key pair; prints the public key line. */
export function migrationKeyStep(serverName: string, tag: string): Step {
  const d = shQuote(migrationDir(serverName));
  return {
    label: `generate a one-off migration key for ${serverName}`,
    script: [
      "set -e",
      `rm -rf ${d}`,
      `mkdir -p ${d}`,
      `chmod 0700 ${d}`,
      `ssh-keygen -q -t ed25519 -N '' -C ${shQuote(tag)} -f ${d}/id`,
      `cat ${d}/id.pub`,
    ].join("\n"),
  };
}

/**
 * Destination: prints the host public keys of the running sshd (one `type base64` per line),
 * then `akf=<authorized keys file>` for the connecting user.
 */
export function destinationFactsStep(): Step {
  return {
    label: "read the destination's sshd host keys and authorized keys file",
    script: [
      "cfg=/etc/ssh/sshd_config",
      "pid=$(cat /run/sshd.pid 2>/dev/null || true)",
      'if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ]; then f=$(tr "\\0" " " < "/proc/$pid/cmdline" | grep -o -- "-f [^ ]*" | head -n1 | cut -d" " -f2); [ -n "$f" ] && cfg=$f; fi',
      "u=$(id -un)",
      't=$(sshd -T -f "$cfg" -C "user=$u,host=kvmlab,addr=127.0.0.1" 2>/dev/null) || { echo "cannot read the sshd configuration ($cfg) with sshd -T" >&2; exit 40; }',
      'for k in $(echo "$t" | awk \'$1=="hostkey" {print $2}\'); do [ -r "$k.pub" ] && awk \'{print $1, $2}\' "$k.pub"; done',
      'a=$(echo "$t" | awk \'$1=="authorizedkeysfile" {print $2; exit}\')',
      'a=$(echo "$a" | sed -e "s|%h|$HOME|g" -e "s|%u|$u|g" -e "s|%%|%|g")',
      'case "$a" in /*) ;; *) a="$HOME/$a" ;; esac',
      'echo "akf=$a"',
    ].join("\n"),
  };
}

/** Parses destinationFactsStep's output. */
export function parseDestinationFacts(stdout: string): { hostKeys: string[]; authorizedKeysFile: string } {
  const hostKeys: string[] = [];
  let authorizedKeysFile = "";
  for (const line of stdout.split("\n")) {
    if (line.startsWith("akf=")) authorizedKeysFile = line.slice(4).trim();
    else if (/^[a-z0-9@.-]+ [A-Za-z0-9+/]+=*$/.test(line.trim())) hostKeys.push(line.trim());
  }
  return { hostKeys, authorizedKeysFile };
}

/** How long a one-off migration key is accepted after it is authorized (sshd checks it at login). */
export const MIGRATION_KEY_TTL_SEC = 900;

/**
 * Destination: authorizes the one-off key (idempotent), usable only from the source's
 * addresses (`from=`: the key cannot be used from anywhere else while it exists) and only for
 * MIGRATION_KEY_TTL_SEC (`expiry-time=`: libvirt logs in once, when the migration starts).
 */
export function authorizeStep(
  authorizedKeysFile: string,
  publicKeyLine: string,
  tag: string,
  fromAddresses: readonly string[] = [],
): Step {
  const words = publicKeyLine.trim().split(/\s+/);
  if (words.length < 2 || !/^ssh-ed25519$/.test(words[0]) || !/^[A-Za-z0-9+/]+=*$/.test(words[1])) {
    throw new Error(
      `the source produced an unexpected migration key line: ${JSON.stringify(publicKeyLine.slice(0, 80))}`,
    );
  }
  if (!/^[A-Za-z0-9._-]+$/.test(tag)) throw new Error(`authorizeStep: invalid tag ${JSON.stringify(tag)}`);
  for (const a of fromAddresses)
    if (!/^[0-9.]+$/.test(a) && !/^[A-Za-z0-9.-]+$/.test(a))
      throw new Error(`authorizeStep: invalid source address ${JSON.stringify(a)}`);
  const from = fromAddresses.length > 0 ? `from="${[...new Set(fromAddresses)].join(",")}",` : "";
  const line = `${from}no-agent-forwarding,no-X11-forwarding,no-port-forwarding,no-pty ${words[0]} ${words[1]} ${tag}`;
  // The key also expires by itself (sshd's expiry-time, in the destination's own clock and time
  // zone), so a revoke that never runs (a killed `up`) does not leave it usable.
  return {
    label: "authorize the one-off migration key on the destination",
    script: [
      "set -e",
      `f=${shQuote(authorizedKeysFile)}`,
      'mkdir -p "$(dirname "$f")"',
      '[ -f "$f" ] || { : > "$f"; chmod 0600 "$f"; }',
      `e=$(date -d '+${MIGRATION_KEY_TTL_SEC} seconds' +%Y%m%d%H%M%S)`,
      `grep -qF -- ${shQuote(tag)} "$f" || printf 'expiry-time="%s",%s\\n' "$e" ${shQuote(line)} >> "$f"`,
    ].join("\n"),
  };
}

/** Destination: removes every line carrying the tag (idempotent, keeps mode and owner). */
export function revokeStep(authorizedKeysFile: string, tag: string): Step {
  return {
    label: "revoke the one-off migration key on the destination",
    script: [
      `f=${shQuote(authorizedKeysFile)}; tag=${shQuote(tag)}`,
      '[ -f "$f" ] || exit 0',
      'grep -qF -- "$tag" "$f" || exit 0',
      't=$(mktemp "$f.kvmlab-tmp.XXXXXX")',
      'grep -vF -- "$tag" "$f" > "$t" || true',
      'chmod --reference="$f" "$t"; chown --reference="$f" "$t"',
      'mv -f "$t" "$f"',
    ].join("\n"),
  };
}

/** Source: the live migration itself. Prints nothing; fails with virsh's message. */
export function migrateStep(
  serverName: string,
  dest: HostConnection,
  copyStorage: boolean,
  timeoutSec: number,
  /** A console on the management address moves from the source's to the destination's. */
  vnc?: { from: string; to: string },
  /** Only these disks are copied (attached volumes and the root disk; server/volumes.ts). */
  disks: readonly string[] = [],
): Step {
  const d = migrationDir(serverName);
  const uri = `qemu+libssh://${dest.user}@${dest.address}:${dest.port}/system?keyfile=${d}/id&known_hosts=${d}/known_hosts&sshauth=privkey`;
  // The guest's memory and disk travel over the tunnel (underlay) network when the host has
  // one, never the management network, to a destination listening on that address only.
  const stream = migrationAddress(dest);
  const args = [
    VIRSH,
    "migrate --live --persistent --undefinesource",
    copyStorage || disks.length > 0 ? "--copy-storage-inc" : "",
    disks.length > 0 ? `--migrate-disks ${shQuote(disks.join(","))}` : "",
    `--timeout ${Math.max(5, Math.floor(timeoutSec / 2))}`,
    `--migrateuri ${shQuote(`tcp://${stream}`)}`,
    `--listen-address ${shQuote(stream)}`,
    // The destination's QEMU cannot listen on the source's address: the domain moves with its
    // own XML (libvirt's migratable XML, only the VNC listen address changed).
    vnc ? `--xml ${shQuote(`${d}/live.xml`)} --persistent-xml ${shQuote(`${d}/inactive.xml`)}` : "",
    shQuote(serverName),
    shQuote(uri),
  ].filter((a) => a !== "");
  const swap = vnc ? vncListenSwap(vnc.from, vnc.to) : "";
  const prep = vnc
    ? [
        "set -eo pipefail",
        `${VIRSH} dumpxml --migratable ${shQuote(serverName)} | sed ${shQuote(swap)} > ${shQuote(`${d}/live.xml`)}`,
        `${VIRSH} dumpxml --migratable --inactive ${shQuote(serverName)} | sed ${shQuote(swap)} > ${shQuote(`${d}/inactive.xml`)}`,
      ].join("\n") + "\n"
    : "";
  return {
    label: `live-migrate ${serverName} to ${dest.name}`,
    script: `${prep}timeout ${timeoutSec} ${args.join(" ")} </dev/null`,
  };
}

/**
 * The sed program that moves a VNC console's listen address from `from` to `to` in libvirt's XML:
 * only on the `<graphics …>` line (its `listen=`) and on `<listen type='address' …/>` lines, so an
 * interface, host device or any other element that happens to carry the same address keeps it.
 * Both addresses are IPv4 dotted quads (checked where the console address is filled).
 */
export function vncListenSwap(from: string, to: string): string {
  for (const a of [from, to])
    if (!isIPv4(a))
      throw new Error(
        `live migration: the console's listen address ${JSON.stringify(a)} is not an IPv4 address`,
      );
  const f = from.replace(/\./g, "\\.");
  return `/<graphics /s/listen='${f}'/listen='${to}'/g; /<listen type='address' /s/address='${f}'/address='${to}'/g`;
}

/** The address a migration stream goes to: the host's tunnel address, else its address. */
export function migrationAddress(h: HostConnection): string {
  return h.tunnelAddress || h.address;
}

/**
 * Source: aborts a migration job that may still run (the local `timeout` or a lost SSH session
 * does not stop libvirtd's job) and waits, bounded, until no job is left. Always exits 0.
 */
export function abortMigrationStep(serverName: string): Step {
  const n = shQuote(serverName);
  return {
    label: `abort a running migration job of ${serverName}`,
    script: [
      `${VIRSH} domjobabort ${n} >/dev/null 2>&1 || true`,
      "i=0",
      `while [ $i -lt 60 ] && ${VIRSH} domjobinfo ${n} 2>/dev/null | grep -Eq "^Job type: *(Unbounded|Bounded)"; do sleep 0.5; i=$((i+1)); done`,
      "true",
    ].join("\n"),
  };
}

/** What a failed migration left: where the guest runs, by reading BOTH hosts after the job ended. */
export type MigrationOutcome = "source" | "destination" | "unknown";

/**
 * Where the only certain copy of the guest is, after an error (pure). "source": it runs on the
 * source and the destination has no domain (what was prepared there may go). "destination":
 * the migration completed (keep it, finish the move). "unknown": a host could not be read, or
 * both or neither run it: touch nothing on either host.
 */
export function migrationOutcome(
  src: { defined: boolean; state: string } | undefined,
  dst: { defined: boolean; state: string } | undefined,
): MigrationOutcome {
  if (!src || !dst) return "unknown";
  const srcRuns = src.defined && src.state === "running";
  const dstRuns = dst.defined && (dst.state === "running" || dst.state === "paused");
  if (srcRuns && !dst.defined) return "source";
  if (dstRuns && dst.state === "running" && !src.defined) return "destination";
  return "unknown";
}

/** Source: removes the one-off key and known_hosts. */
export function migrationCleanupStep(serverName: string): Step {
  return { label: "remove the one-off migration key", script: `rm -rf ${shQuote(migrationDir(serverName))}` };
}

/** known_hosts text for the destination. */
export function knownHostsText(dest: HostConnection, keys: readonly string[]): string {
  // Both spellings: OpenSSH writes port 22 bare, libssh looks the host up with its port.
  const names =
    dest.port === 22 ? [dest.address, `[${dest.address}]:22`] : [`[${dest.address}]:${dest.port}`];
  return names.flatMap((n) => keys.map((k) => `${n} ${k}\n`)).join("");
}
