/**
 * Live migration steps (pure builders). Hosts share no storage and no trust, so for the
 * duration of one migration:
 *
 *   source       generates a one-off ed25519 key in /var/lib/kvmlab/migrate/<server>/
 *   destination  authorizes that key (restricted: no forwarding, no pty) in the authorized keys
 *                file its running sshd uses, tagged with a one-off comment
 *   source       gets a known_hosts holding the destination's host keys that match the pinned
 *                fingerprint (host-key checking stays on: libssh refuses any other key)
 *   both         have kvmlab's migration TLS material (once per host, migrationTlsStep): a CA of
 *                the host's own, a server and a client certificate it signed, and a trust list
 *                (QEMU's ca-cert.pem) of its own CA plus the CAs of hosts it migrates with
 *                (trustPeerStep); no private key ever leaves the host that made it
 *   source       `virsh migrate --live --persistent --undefinesource --tls [--copy-storage-inc]`
 *                to qemu+libssh://user@destination/system: QEMU's migration stream AND the NBD
 *                disk copy run over TLS with both ends' certificates checked
 *   both         the key, its authorization and the known_hosts are removed afterwards,
 *                whatever happened
 */
import { shQuote, type HostConnection, type Step } from "../host";
import { isIPv4 } from "../../core/net";
import { KVMLAB_STATE_DIR, migrationDir } from "../../core/paths";
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
    // --tls: libvirt gives both QEMUs TLS credentials from the host's migration certificate
    // folder (migrationTlsStep): the memory stream and the NBD disk copy are encrypted, the
    // source checks the destination's certificate against the tunnel address, and the
    // destination refuses a client without a certificate of a CA it trusts.
    "migrate --live --persistent --undefinesource --tls",
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

/**
 * kvmlab's own migration TLS folder on every host (root only, 0700): the host's CA key and
 * certificate, `certdir` (the QEMU certificate folder kvmlab manages, read from qemu.conf) and
 * `peers/<sha256 fingerprint>.pem` (the CA certificates of the hosts it migrates with).
 */
export const MIGRATION_TLS_DIR = `${KVMLAB_STATE_DIR}/migrate-tls`;

/** Days a host's migration CA and its certificates are valid (renewed 90 / 30 days before). */
export const MIGRATION_TLS_DAYS = { ca: 3650, leaf: 825 };

/** For tests only: every host path of the TLS steps under this folder (production: ""). */
export interface MigrationTlsOptions {
  root?: string;
}

const TLS_NAME_RE = /^[A-Za-z0-9._-]+$/;

/** The addresses a host's migration certificates name: its migration (tunnel) address and its address. */
export function migrationTlsAddresses(h: HostConnection): string[] {
  return [...new Set([migrationAddress(h), h.address].filter((a) => a !== ""))];
}

/** The subjectAltName entries for `addresses`, as openssl's config takes them (`IP:a`, `DNS:name`). */
function sanOf(addresses: readonly string[]): string[] {
  if (addresses.length === 0) throw new Error("migration TLS: a host certificate needs at least one address");
  return addresses.map((a) => {
    if (isIPv4(a)) return `IP:${a}`;
    if (/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(a)) return `DNS:${a}`;
    throw new Error(
      `migration TLS: the host address ${JSON.stringify(a)} is neither an IPv4 address nor a DNS name`,
    );
  });
}

/** Shell function `fp FILE`: the sha256 fingerprint of a PEM certificate, 64 lowercase hex digits. */
const FP_FN =
  "fp() { openssl x509 -in \"$1\" -noout -fingerprint -sha256 2>/dev/null | sed 's/.*=//; s/://g' | tr 'A-F' 'a-f'; }";

/**
 * Shell functions `ncs FILE`: the names a CA certificate's nameConstraints permit, one a line
 * in subjectAltName form (`IP:a`, `DNS:name`); `constrained FILE`: whether it has critical
 * nameConstraints (a CA made before them may sign for any address).
 */
const NC_FNS = [
  "ncs() { openssl x509 -in \"$1\" -noout -ext nameConstraints 2>/dev/null | tail -n +2 | tr -d ' ' | sed -n 's#^IP:\\([0-9.]*\\)/255\\.255\\.255\\.255$#IP:\\1#p; s#^DNS:\\([A-Za-z0-9.-]*\\)$#DNS:\\1#p'; }",
  "constrained() { openssl x509 -in \"$1\" -noout -ext nameConstraints 2>/dev/null | head -n 1 | grep -q 'Name Constraints: critical'; }",
].join("\n");

/**
 * Shell lines that (re)write QEMU's trust list, ca-cert.pem: the host's own CA, then its peers'
 * (peers/<fingerprint>.pem, and peers/<host name>.pem left by the first TLS version), each CA
 * once, and only CAs with critical nameConstraints.
 */
function bundleLines(dest: string): string[] {
  return [
    FP_FN,
    NC_FNS,
    't=$(mktemp "$d/.ca-cert.XXXXXX")',
    'seen=" $(fp "$k/ca-cert.pem") "',
    "{",
    '  cat "$k/ca-cert.pem"',
    '  for p in "$k"/peers/*.pem; do',
    // A peer CA without name constraints (a first-version file) may sign for any address:
    // kept on disk, not trusted; its host's next migration TLS step remakes it constrained.
    '    [ -e "$p" ] && constrained "$p" || continue',
    '    f=$(fp "$p"); [ -n "$f" ] || continue',
    '    case "$seen" in *" $f "*) continue ;; esac',
    '    seen="$seen$f "; cat "$p"',
    "  done",
    '} > "$t"',
    'chmod 0644 "$t"',
    `if cmp -s "$t" "$d/ca-cert.pem"; then rm -f "$t"; else mv -f "$t" "${dest}/ca-cert.pem"; fi`,
  ];
}

/**
 * A host's migration TLS material, made once and kept (idempotent; run under the host lock).
 * libvirt gives QEMU the folder qemu.conf names (`migrate_tls_x509_cert_dir`, else
 * `default_tls_x509_cert_dir`, else /etc/pki/qemu); kvmlab fills it only when it is empty or
 * kvmlab already manages it (a folder of someone else's certificates is refused, exit 42):
 *
 *   ca-cert.pem                  the host's own CA + its peers' CAs (trustPeerStep)
 *   server-cert.pem, -key.pem    the destination side: names the host's addresses
 *   client-cert.pem, -key.pem    the source side
 *
 * The CA key stays in MIGRATION_TLS_DIR (0600, root); the certificate keys are readable only by
 * root and the group QEMU runs as (qemu.conf `group`, required; 0600 when that is root). Keys
 * are made by openssl into files: never on a command line, never printed. The host's addresses
 * are the UNION of those its CA is constrained to / its server certificate names and
 * `addresses` (stacks that reach the host differently do not take each other's away). The CA
 * carries critical nameConstraints for exactly those addresses and is remade when they lack
 * one; a certificate is remade when it is missing, not signed by the host's CA, expires within
 * 30 days, or lacks a requested address. New files are put in place by one mv.
 * Refuses (exit 41) encrypted-key settings, a turned-off client check and a missing or unknown
 * qemu.conf `group`. Prints the host's CA certificate (public) for its peers.
 */
export function migrationTlsStep(
  hostName: string,
  addresses: readonly string[],
  opts: MigrationTlsOptions = {},
): Step {
  if (!TLS_NAME_RE.test(hostName))
    throw new Error(`migration TLS: invalid host name ${JSON.stringify(hostName)}`);
  const san = sanOf(addresses);
  const leaf = (n: "server" | "client", eku: string): string[] => [
    `if [ -n "$new" ] || ! [ -s "$d/${n}-key.pem" ] || ! [ -s "$d/${n}-cert.pem" ] \\`,
    `  || ! openssl verify -CAfile "$k/ca-cert.pem" "$d/${n}-cert.pem" >/dev/null 2>&1 \\`,
    `  || ! openssl x509 -in "$d/${n}-cert.pem" -noout -checkend 2592000 >/dev/null 2>&1 \\`,
    // A requested address the certificate does not name yet: remade naming them all ($all).
    `  || ! covers "$d/${n}-cert.pem"; then`,
    `  printf '%s\\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=${eku}' "subjectAltName=$(printf '%s\\n' "$all" | paste -sd, -)" > "$k/${n}.ext"`,
    `  o=$(openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$s/${n}-key.pem" -subj "/O=kvmlab/CN=$host migration ${n}" -out "$k/${n}.csr" 2>&1) || { echo "openssl: $o" >&2; exit 43; }`,
    `  o=$(openssl x509 -req -in "$k/${n}.csr" -CA "$k/ca-cert.pem" -CAkey "$k/ca-key.pem" -set_serial "0x$(openssl rand -hex 16)" -days ${MIGRATION_TLS_DAYS.leaf} -extfile "$k/${n}.ext" -out "$s/${n}-cert.pem" 2>&1) || { echo "openssl: $o" >&2; exit 43; }`,
    `  chgrp "$g" "$s/${n}-key.pem"; chmod "$km" "$s/${n}-key.pem"; chmod 0644 "$s/${n}-cert.pem"`,
    `  rm -f "$k/${n}.csr" "$k/${n}.ext"`,
    "fi",
  ];
  return {
    label: `migration TLS certificates on ${hostName}`,
    script: [
      "set -e",
      "umask 077",
      `r=${shQuote(opts.root ?? "")}; host=${shQuote(hostName)}; want=${shQuote(san.join("\n"))}`,
      // openssl makes the CA and the certificates here; a minimal Debian has no openssl binary.
      'command -v openssl >/dev/null 2>&1 || { echo "host $host has no openssl, which live migration over TLS needs to make its certificates: apt-get install openssl" >&2; exit 45; }',
      'c="$r/etc/libvirt/qemu.conf"',
      `get() { [ -r "$c" ] || return 0; sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\\"\\([^\\"]*\\)\\".*/\\1/p" "$c" | tail -n 1; }`,
      // A certificate's subjectAltName entries, one a line, in the form openssl's config takes.
      `sans() { openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ' | tr ',' '\\n' | sed 's/^IPAddress:/IP:/' | grep -E '^(IP:[0-9.]+|DNS:[A-Za-z0-9.-]+)$' || true; }`,
      NC_FNS,
      // Whether a certificate names every requested address.
      'covers() { h=" $(sans "$1" | tr \'\\n\' \' \') "; for a in $want; do case "$h" in *" $a "*) ;; *) return 1 ;; esac; done; }',
      'd=$(get migrate_tls_x509_cert_dir); [ -n "$d" ] || d=$(get default_tls_x509_cert_dir); [ -n "$d" ] || d=/etc/pki/qemu',
      'case "$d" in /*) ;; *) echo "qemu.conf names the migration TLS folder \\"$d\\", not an absolute path; fix qemu.conf" >&2; exit 41 ;; esac',
      'if [ -n "$(get migrate_tls_x509_secret_uuid)" ]; then echo "qemu.conf sets migrate_tls_x509_secret_uuid (encrypted keys), which kvmlab does not make; remove it from qemu.conf and restart libvirtd" >&2; exit 41; fi',
      // The listening QEMU checks the client's certificate only with migrate_tls_x509_verify
      // (else default_tls_x509_verify) at 1, libvirt's default; these are unquoted integers.
      `geti() { [ -r "$c" ] || return 0; sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\\([0-9][0-9]*\\).*/\\1/p" "$c" | tail -n 1; }`,
      'v=migrate_tls_x509_verify; n=$(geti $v); if [ -z "$n" ]; then v=default_tls_x509_verify; n=$(geti $v); fi',
      'if [ -n "$n" ] && [ "$n" -eq 0 ]; then echo "qemu.conf sets $v = 0: a destination would accept a migration stream from anyone on the tunnel network; set migrate_tls_x509_verify = 1 in qemu.conf (or remove the 0) and restart libvirtd" >&2; exit 41; fi',
      'd="$r$d"',
      // QEMU's group must read the keys: qemu.conf's `group`, never a guess (libvirt's
      // built-in default differs by distribution: kvm, qemu, libvirt-qemu).
      "g=$(get group); g=${g#+}",
      'if [ -z "$g" ]; then echo "qemu.conf does not set group (the group QEMU runs as, which must read the migration keys); set group = \\"<QEMU\'s group>\\" in qemu.conf (e.g. \\"kvm\\" on Debian/Ubuntu, \\"qemu\\" on Fedora, \\"root\\" when QEMU runs as root) and restart libvirtd" >&2; exit 41; fi',
      'if ! getent group "$g" >/dev/null 2>&1; then case "$g" in *[!0-9]*) echo "qemu.conf sets group = \\"$g\\", which is not a group on this host; set group in qemu.conf to the group QEMU runs as and restart libvirtd" >&2; exit 41 ;; esac; fi',
      'if [ "$g" = root ] || [ "$g" = 0 ]; then g=root; km=0600; else km=0640; fi',
      `k="$r"${shQuote(MIGRATION_TLS_DIR)}`,
      // QEMU's folder (and any parent made here) 0755, libvirt's documented layout: a QEMU that
      // is not root must enter it; the keys in it are 0640 root:<group>.
      'mkdir -p "$k/peers"; chmod 0700 "$k"',
      'if ! [ -d "$d" ]; then (umask 022; mkdir -p "$d"); fi',
      // Never take over a folder of certificates kvmlab did not make.
      'if [ "$(cat "$k/certdir" 2>/dev/null)" != "$d" ]; then',
      "  for f in ca-cert.pem server-cert.pem server-key.pem client-cert.pem client-key.pem; do",
      '    if [ -e "$d/$f" ]; then echo "$d/$f exists and kvmlab did not make it: kvmlab does not replace migration certificates it did not make; move them aside, or set migrate_tls_x509_cert_dir in qemu.conf to an empty folder for kvmlab and restart libvirtd" >&2; exit 42; fi',
      "  done",
      '  printf \'%s\\n\' "$d" > "$k/certdir"',
      "fi",
      // The first TLS version made it 0700 under umask 077.
      'if [ "$(stat -c %a "$d")" = 700 ]; then chmod 0755 "$d"; fi',
      // The host's addresses: those its CA is constrained to and its server certificate names
      // already (another stack may reach this host by them), then the requested ones.
      'all=$( { [ -s "$k/ca-cert.pem" ] && ncs "$k/ca-cert.pem"; [ -s "$d/server-cert.pem" ] && sans "$d/server-cert.pem"; printf \'%s\\n\' "$want"; } | awk \'NF && !s[$0]++\')',
      "new=",
      // The CA may sign only for the host's own addresses (critical nameConstraints), so a
      // peer that trusts it cannot be made to accept it for another host; one without them,
      // or constrained to fewer addresses, is remade (and re-issues the certificates).
      'if ! [ -s "$k/ca-key.pem" ] || ! [ -s "$k/ca-cert.pem" ] || ! openssl x509 -in "$k/ca-cert.pem" -noout -checkend 7776000 >/dev/null 2>&1 \\',
      '  || ! constrained "$k/ca-cert.pem" || [ "$(ncs "$k/ca-cert.pem" | sort)" != "$(printf \'%s\\n\' "$all" | sort)" ]; then',
      "  nc=$(printf '%s\\n' \"$all\" | sed 's#^IP:.*#&/255.255.255.255#; s#^#permitted;#' | paste -sd, -)",
      `  o=$(openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$k/ca-key.new" -out "$k/ca-cert.new" -days ${MIGRATION_TLS_DAYS.ca} -subj "/O=kvmlab/CN=kvmlab migration CA $host" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -addext "nameConstraints=critical,$nc" 2>&1) || { echo "openssl: $o" >&2; exit 43; }`,
      '  chmod 0600 "$k/ca-key.new"; chmod 0644 "$k/ca-cert.new"',
      '  mv -f "$k/ca-key.new" "$k/ca-key.pem"; mv -f "$k/ca-cert.new" "$k/ca-cert.pem"; new=1',
      "fi",
      // New files are made in a staging folder inside the certificate folder (same file system)
      // under their final names, then put in place by ONE mv: QEMU reads its files by fixed
      // names (no folder switch without a libvirtd restart), so the gap in which a QEMU that
      // loads its credentials could see a key and a certificate that do not match is the time
      // between two rename() calls, not between two commands.
      'rm -rf "$d"/.kvmlab-new.*; s=$(mktemp -d "$d/.kvmlab-new.XXXXXX")',
      ...leaf("server", "serverAuth"),
      ...leaf("client", "clientAuth"),
      ...bundleLines('"$s"'),
      'set -- "$s"/*.pem; if [ -e "$1" ]; then mv -f "$@" "$d/"; fi; rmdir "$s"',
      'cat "$k/ca-cert.pem"',
    ].join("\n"),
  };
}

/** The one PEM certificate in `text` (a step's output), or "" when there is none. */
export function parseCaCertificate(text: string): string {
  const m = /-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n?/.exec(text);
  return m ? m[0].replace(/\n?$/, "\n") : "";
}

/**
 * Makes a host trust `peer`'s migration CA (its certificate from migrationTlsStep on the peer):
 * kept as peers/<sha256 fingerprint>.pem, added and never overwritten (two stacks that give
 * different machines the same name, or one machine different names, no longer replace each
 * other's trust), and added to QEMU's trust list. `peer` (the program's host name) is only for
 * the label. Only a CA certificate is accepted. Run under the host lock, after migrationTlsStep.
 */
export function trustPeerStep(peer: string, caPem: string, opts: MigrationTlsOptions = {}): Step {
  if (!TLS_NAME_RE.test(peer))
    throw new Error(`migration TLS: invalid peer host name ${JSON.stringify(peer)}`);
  const pem = parseCaCertificate(caPem);
  if (pem === "" || pem.trim() !== caPem.trim())
    throw new Error(`migration TLS: host ${peer} did not give one PEM CA certificate`);
  const eof = "KVL_PEER_CA_EOF";
  return {
    label: `trust the migration CA of ${peer}`,
    script: [
      "set -e",
      "umask 077",
      `r=${shQuote(opts.root ?? "")}; k="$r"${shQuote(MIGRATION_TLS_DIR)}`,
      '[ -s "$k/ca-cert.pem" ] && [ -s "$k/certdir" ] || { echo "this host has no kvmlab migration CA yet" >&2; exit 44; }',
      'd=$(cat "$k/certdir")',
      'mkdir -p "$k/peers"',
      't=$(mktemp "$k/peers/.new.XXXXXX")',
      `cat > "$t" <<'${eof}'`,
      pem.trimEnd(),
      eof,
      'if ! openssl x509 -in "$t" -noout -ext basicConstraints 2>/dev/null | grep -q "CA:TRUE"; then rm -f "$t"; echo "the migration CA of the peer is not a CA certificate" >&2; exit 44; fi',
      NC_FNS,
      'if ! constrained "$t"; then rm -f "$t"; echo "the migration CA of the peer has no name constraints (an older kvmlab made it); run its migration TLS step, which remakes it" >&2; exit 44; fi',
      'chmod 0644 "$t"',
      FP_FN,
      'f=$(fp "$t")',
      'case "$f" in "" | *[!0-9a-f]*) rm -f "$t"; echo "the migration CA of the peer has no sha256 fingerprint" >&2; exit 44 ;; esac',
      'if [ -e "$k/peers/$f.pem" ]; then rm -f "$t"; else mv "$t" "$k/peers/$f.pem"; fi',
      ...bundleLines('"$d"'),
    ].join("\n"),
  };
}
