/**
 * Remote steps of the Server provider (pure builders: they return bash text built only from
 * validated values and shQuote()d arguments) and the parsers of what they print.
 */
import { recordPath, shQuote, uploadStep, writeRecordStep, type Step } from "../host";
import { imageDir, imageUserStep } from "../image/steps";
import { dhcpPaths } from "../ipam";
import { recordDir } from "../../core/paths";
import { instancePaths, type ServerImage, type ServerInputs, type ServerPort } from "./model";
import { parseKeyValues } from "../kit/kv";
import { ownerMarkerPath, type OwnedObject } from "../kit/owner";
import {
  KVMLAB_DOMAIN_KEY,
  KVMLAB_DOMAIN_XMLNS,
  metadataBlockOf,
  metadataSetText,
  ownerOnlySetText,
} from "../../core/domainMetadata";
import { hybridGuardLines, hybridPlugStep, hybridUnplugLines } from "./hybrid";

/** virsh on the host's system instance, quiet. */
export const VIRSH = "virsh -q -c qemu:///system";

/**
 * What placement counts of each server record, and what the placement guard compares: one line
 * "<uuid> <ramMiB> <vcpus>" per regular file records/server/*.json with a non-blank line, read
 * from its top-level lines as kvmlab writes them (two-space indent, JSON.stringify(…, null, 2)):
 * `  "uuid": "<letters, digits, dashes>",`, `  "ramMiB": <digits>,` and `  "vcpus": <digits>,`;
 * the last of each wins, a missing (or empty) one is "-". The records of the UUIDs in the awk
 * variable `skip` (" u1 u2 ") are left out; a "-" UUID never is (it is no UUID a turn claims). Each file is read with getline (a file removed meanwhile, or
 * unreadable, reads as empty, not as an awk error), so the stats step and the guard run this one
 * program and agree by construction (review 8, P3): TypeScript never re-reads the records.
 */
const CAPACITY_AWK = [
  // An empty UUID reads "-" (review 8b, Q2), and "-" is never skipped: every view counts it.
  'function flush() { if (u == "") u = "-"; if (seen && (u == "-" || index(skip, " " u " ") == 0)) print u " " r " " v }',
  "function take() {",
  "  if (NF > 0) seen = 1",
  '  if ($0 ~ /^  "uuid": "[A-Za-z0-9-]*",?$/) { s = $0; sub(/^  "uuid": "/, "", s); sub(/",?$/, "", s); u = s }',
  '  if ($0 ~ /^  "ramMiB": [0-9]+,?$/) { s = $0; sub(/^  "ramMiB": /, "", s); sub(/,$/, "", s); r = s }',
  '  if ($0 ~ /^  "vcpus": [0-9]+,?$/) { s = $0; sub(/^  "vcpus": /, "", s); sub(/,$/, "", s); v = s }',
  "}",
  "BEGIN {",
  "  for (i = 1; i < ARGC; i++) {",
  '    seen = 0; u = "-"; r = "-"; v = "-"',
  "    while ((getline < ARGV[i]) > 0) take()",
  "    close(ARGV[i]); flush()",
  "  }",
  "  exit",
  "}",
].join("\n");

/** Bash that prints the capacity lines (CAPACITY_AWK, unsorted) of the host's server records; fails when awk does. */
function capacityLinesScript(skip: readonly string[]): string {
  return [
    `set --; for f in ${recordDir("server")}/*.json; do if [ -f "$f" ]; then set -- "$@" "$f"; fi; done`,
    `if [ $# -gt 0 ]; then awk -v skip=${shQuote(` ${skip.join(" ")} `)} ${shQuote(CAPACITY_AWK)} "$@"; fi`,
  ].join("\n");
}

/**
 * Capacity and what kvmlab's server records count on a host (see parseHostLoad): the capacity
 * lines after a `--capacity--` line, computed by the same awk program as the placement guard.
 */
export function statsStep(): Step {
  return {
    label: "read host capacity and server records",
    script: [
      "echo memtotal=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)",
      "echo memavailable=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)",
      "echo cpus=$(nproc)",
      "echo --capacity--",
      `lines=$(${capacityLinesScript([])}) || { echo 'reading the server records (awk) failed' >&2; exit 1; }`,
      `if [ -n "$lines" ]; then printf '%s\\n' "$lines"; fi`,
    ].join("\n"),
  };
}

/** The exit status of resizeFitsStep's refusal. */
export const RESIZE_REFUSED_EXIT = 37;

/**
 * The fit check of a resize (an update that grows the flavor on the same host, review 8 P2):
 * refuses (exit 37) unless the new flavor fits the host beside the other servers' records, by
 * placement's rules (PLACEMENT: (MemTotal - 512 MiB) x 1.0 RAM, nproc x 4 vCPUs, and
 * MemAvailable at least the flavor's RAM, as chooseHost: review 8b Q8; the memory the running
 * guest holds, which its stop frees, counts as available), counted with the same awk program as
 * placement (the server's own record left out; see fitCheckLines). Run under the
 * host's lock in the batch that writes the server's record with the new flavor, before the
 * guest is stopped: the record then counts the new size for every later placement.
 */
export function resizeFitsStep(
  i: Pick<ServerInputs, "uuid" | "flavor"> & { serverName: string },
  hostName: string,
  policy: { reservedHostMemoryMiB: number; ramAllocationRatio: number; cpuAllocationRatio: number },
  /**
   * `false` for an update that grows only the record, not the guest (update's metadata-only and
   * record-only branches, review 9b M7): the records test alone, no MemAvailable test.
   */
  opts: { memAvailable?: boolean } = {},
): Step {
  const f = i.flavor;
  const what = `flavor: ${f.name} (${f.vcpus} vCPU, ${f.ramMiB} MiB) does not fit host ${hostName}`;
  const tail = ` for server ${i.serverName}; pick a smaller flavor, free capacity on ${hostName}, or move the server to another host first (its host pin)`;
  return {
    label: `check that flavor ${f.name} fits host ${hostName} for server ${i.serverName}`,
    script: fitCheckLines(
      i.uuid,
      f,
      policy,
      what,
      tail,
      RESIZE_REFUSED_EXIT,
      i.serverName,
      opts.memAvailable !== false,
    ).join("\n"),
  };
}

/**
 * Passes only when `o`'s owner marker names `owner` (exit 1 otherwise, a missing marker too).
 * Placed before the cleanup of a create whose claim batch's outcome is unknown (a timeout or a
 * lost shell after the batch was sent, review 8 P4): the name's marker is the claim's first
 * write, so when it is not this owner's the create wrote nothing there, and the cleanup, which
 * passes unmarked objects, must not touch them (an object of the same name from before owners).
 */
export function claimedByStep(o: OwnedObject, owner: string): Step {
  return {
    label: `check that ${o.what} was claimed by this create`,
    script: [
      `f=${shQuote(ownerMarkerPath(o.kind, ...o.key))}`,
      `if [ -f "$f" ] && [ "$(head -n1 "$f" 2>/dev/null)" = ${shQuote(owner)} ]; then exit 0; fi`,
      `echo ${shQuote(`${o.what} was not claimed by ${owner}: nothing of this create to remove`)} >&2`,
      "exit 1",
    ].join("\n"),
  };
}

/** The exit status of recordsUnchangedStep's refusal: placement reads the host again and retries. */
export const RECORDS_CHANGED_EXIT = 36;

/**
 * The placement guard (issue 13: placement holds no cross-process lock). Run under the host's
 * lock as the first step of a claim batch: refuses with exit 36 when the host's server records
 * count something the placement turn did not read, `expected` (serverCapacityText of that
 * reading, without the UUIDs in `skip`, the servers the turn claims on this host). The same
 * lines are computed here by the stats step's own awk program (CAPACITY_AWK), the skipped UUIDs
 * left out, sorted bytewise (LC_ALL=C). A line the host has and the reading
 * lacks refuses (compared as multisets with comm): a record added, or one whose RAM or vCPU
 * count changed (a new line). A record only removed since the reading (a destroy meanwhile)
 * passes: it only makes the reading conservative. A record rewritten with only other fields
 * changed (addresses) passes too. The check and the claim's record write are under the same
 * host lock, so two processes never count the same free RAM. The remote shell is bash (`<()`).
 */
export function recordsUnchangedStep(expected: string, skip: readonly string[]): Step {
  return {
    label: "check that the server records on this host are as placement read them",
    script: [
      // awk to a variable first: its failure is its own (exit 1), never the refusal's 36.
      `lines=$(${capacityLinesScript(skip)}) || { echo 'placement guard: reading the server records (awk) failed' >&2; exit 1; }`,
      'actual=""',
      `if [ -n "$lines" ]; then actual=$(printf '%s\\n' "$lines" | LC_ALL=C sort) || exit 1; fi`,
      // Only the lines the reading lacks: comm -13 prints the lines of the second (sorted) input
      // that the first does not have, each duplicate counted.
      `expected=${shQuote(expected)}`,
      'new=""',
      `if [ -n "$actual" ]; then new=$(LC_ALL=C comm -13 <(printf '%s\\n' "$expected") <(printf '%s\\n' "$actual")) || { echo 'placement guard: comparing the server records failed' >&2; exit 1; }; fi`,
      `if [ -n "$new" ]; then echo "the server records on this host changed since placement read them (another kvmlab run placed or resized a server here meanwhile: \${new%%$'\\n'*})" >&2; exit ${RECORDS_CHANGED_EXIT}; fi`,
    ].join("\n"),
  };
}

/** The record kept on the server's host: what placement counts and what identifies it. */
export function serverRecord(
  inputs: ServerInputs,
  addresses: { ip: string; mac: string }[],
): Record<string, unknown> {
  return {
    name: inputs.serverName,
    uuid: inputs.uuid,
    flavor: inputs.flavor.name,
    vcpus: inputs.flavor.vcpus,
    ramMiB: inputs.flavor.ramMiB,
    image: inputs.image.name,
    ports: addresses.map((a) => ({ ip: a.ip, mac: a.mac })),
    owner: inputs.owner ?? "",
    project: inputs.project ?? "",
  };
}

/** Fails with exit 30 when something the server needs on this host is missing. */
export function preflightStep(inputs: ServerInputs): Step {
  const tools = ["virsh"];
  if (inputs.image.kind === "disk" || inputs.image.disk !== "") tools.push("qemu-img");
  const seed = inputs.cloudInit.metaData !== "";
  if (seed) tools.push("genisoimage");
  const lines = [
    `for t in ${tools.join(" ")}; do command -v "$t" >/dev/null 2>&1 || missing="$missing $t"; done`,
    'if [ -n "$missing" ]; then echo "missing on this host:$missing (apt-get install -y libvirt-clients qemu-utils genisoimage)" >&2; exit 30; fi',
  ];
  const files: [string, string][] = [];
  if (inputs.image.disk !== "") files.push(["disk", inputs.image.disk]);
  if (inputs.image.kernel !== "") files.push(["kernel", inputs.image.kernel]);
  if (inputs.image.ramdisk !== "") files.push(["ramdisk", inputs.image.ramdisk]);
  for (const [what, p] of files) {
    lines.push(
      `[ -f ${shQuote(p)} ] || { echo ${shQuote(`image ${inputs.image.name}: its ${what} ${p} is not on this host; create the Image on this host (add the host to the Image's hosts)`)} >&2; exit 31; }`,
    );
  }
  for (const port of inputs.ports) {
    lines.push(
      `[ -e /sys/class/net/${shQuote(port.bridge)} ] || { echo ${shQuote(`bridge ${port.bridge} of network ${port.networkName} is not on this host; add the host to the network`)} >&2; exit 32; }`,
    );
  }
  return { label: `check host for server ${inputs.serverName}`, script: lines.join("\n") };
}

/**
 * Whether the server's image files are those of the image store's image of that name (what an
 * Image resource put there); only then is the server marked as a user of that image.
 */
export function usesStoreImage(image: ServerImage): boolean {
  const dir = `${imageDir(image.name)}/`;
  const files = [image.disk, image.kernel, image.ramdisk].filter((f) => f !== "");
  return files.length > 0 && files.every((f) => f.startsWith(dir) && !f.slice(dir.length).includes("/"));
}

/**
 * Shell lines that set `$other` to what else on the host uses the UUID `uuid` (issue 15, review
 * S1), "" when nothing does: the domain another instance folder `dir`'s domain.xml names, the
 * libvirt domain of that UUID when it has another name, or another server's record carrying the
 * UUID. `libvirt: "files"` reads libvirt's definition files instead of asking virsh (the claim,
 * which runs under the host lock on every first create). One grep over all the files of a kind
 * (the first that names the UUID, in glob order, as a loop with a grep per file found; a file
 * grep cannot read does not hide a match in another), not a grep per file: this runs twice per
 * create in the claim batch, under the host lock (issue 13). Values from the host only ever
 * reach `$other` inside double quotes.
 */
export function otherUserOfUuidLines(
  serverName: string,
  uuid: string,
  dir: string,
  libvirt: "virsh" | "files" = "virsh",
): string[] {
  const xml = shQuote(`${dir}/domain.xml`);
  const n = shQuote(serverName);
  const own = shQuote(recordPath("server", serverName));
  const hasUuid = shQuote(`"uuid": "${uuid}"`);
  return [
    "other=",
    `if [ -f ${xml} ]; then dn=$(grep -o '<name>[^<]*</name>' ${xml} 2>/dev/null | head -n1 | sed 's:</*name>::g'); if [ -n "$dn" ] && [ "$dn" != ${n} ]; then other="the domain $dn (its ${dir}/domain.xml)"; fi; fi`,
    libvirt === "virsh"
      ? `if [ -z "$other" ]; then dn=$(${VIRSH} domname ${shQuote(uuid)} 2>/dev/null || true); if [ -n "$dn" ] && [ "$dn" != ${n} ]; then other="the libvirt domain $dn"; fi; fi`
      : `if [ -z "$other" ]; then set --; for df in /etc/libvirt/qemu/*.xml /run/libvirt/qemu/*.xml; do if [ -f "$df" ] && [ "$df" != ${shQuote(`/etc/libvirt/qemu/${serverName}.xml`)} ] && [ "$df" != ${shQuote(`/run/libvirt/qemu/${serverName}.xml`)} ]; then set -- "$@" "$df"; fi; done; if [ $# -gt 0 ]; then df=$(grep -lF -- ${shQuote(`<uuid>${uuid}</uuid>`)} "$@" 2>/dev/null; :); df=\${df%%$'\\n'*}; if [ -n "$df" ]; then other="the libvirt domain in $df"; fi; fi; fi`,
    `if [ -z "$other" ]; then set --; for rf in ${recordDir("server")}/*.json; do if [ -f "$rf" ] && [ "$rf" != ${own} ]; then set -- "$@" "$rf"; fi; done; if [ $# -gt 0 ]; then rf=$(grep -lF -- ${hasUuid} "$@" 2>/dev/null; :); rf=\${rf%%$'\\n'*}; if [ -n "$rf" ]; then other="the server recorded in $rf"; fi; fi; fi`,
  ];
}

/**
 * Steps that put the server's files on a host and define the domain (idempotent): instance
 * folder, the image's user marker (so the image's delete refuses while the server is here),
 * seed files and ISO, qcow2 overlay (grown to the flavor's disk), domain XML, define.
 * A domain of the same name with another UUID is refused (it is not this server's), and so is
 * an instance folder another server uses (its domain.xml names another domain, or libvirt or a
 * record gives the UUID to another server): nothing is written into it (review S1).
 */
export function materializeSteps(
  inputs: ServerInputs,
  xml: string,
  opts: { define?: boolean; alsoOwners?: readonly string[] } = {},
): Step[] {
  const p = instancePaths(inputs);
  const steps: Step[] = [
    {
      label: `prepare instance folder of ${inputs.serverName}`,
      script: [
        "set -e",
        `u=$(${VIRSH} domuuid ${shQuote(inputs.serverName)} 2>/dev/null || true)`,
        `if [ -n "$u" ] && [ "$u" != ${shQuote(inputs.uuid)} ]; then echo ${shQuote(`a domain named ${inputs.serverName} already exists on this host with another UUID`)}" ($u); it is not this server's: rename the server or remove that domain" >&2; exit 33; fi`,
        ...otherUserOfUuidLines(inputs.serverName, inputs.uuid, p.dir),
        `if [ -n "$other" ]; then echo ${shQuote(`server ${inputs.serverName}: its UUID ${inputs.uuid} and instance folder ${p.dir} are used by `)}"$other"${shQuote(`, not by this server; nothing was written. Fix: give this server another uuid (the components derive it from the server's name and stack), or remove the other server from the stack that owns it`)} >&2; exit 35; fi`,
        `mkdir -p ${shQuote(p.seedDir)}`,
        `chmod 0755 ${shQuote(p.dir)}`,
        // The seed holds user data (keys, files): root only; libvirt relabels the ISO for QEMU.
        `chmod 0700 ${shQuote(p.seedDir)}`,
      ].join("\n"),
    },
  ];
  if (usesStoreImage(inputs.image)) steps.push(imageUserStep(inputs.image.name, inputs.serverName, true));
  if (inputs.cloudInit.metaData !== "") {
    steps.push(
      uploadStep(`${p.seedDir}/meta-data`, inputs.cloudInit.metaData, { mode: "0600" }),
      uploadStep(`${p.seedDir}/user-data`, inputs.cloudInit.userData, { mode: "0600" }),
      uploadStep(`${p.seedDir}/network-config`, inputs.cloudInit.networkConfig, { mode: "0600" }),
      {
        label: `build NoCloud seed ISO of ${inputs.serverName}`,
        script: [
          "set -e",
          `cd ${shQuote(p.seedDir)}`,
          "sum=$(cat meta-data user-data network-config | sha256sum | cut -d' ' -f1)",
          `if [ ! -f ${shQuote(p.seedIso)} ] || [ "$(cat .sha256 2>/dev/null)" != "$sum" ]; then`,
          "  umask 077",
          `  genisoimage -quiet -output ${shQuote(`${p.seedIso}.tmp`)} -volid cidata -joliet -rock meta-data user-data network-config`,
          `  mv -f ${shQuote(`${p.seedIso}.tmp`)} ${shQuote(p.seedIso)}`,
          '  echo "$sum" > .sha256',
          "fi",
        ].join("\n"),
      },
    );
  }
  if (inputs.image.disk !== "") {
    const sizeArg = inputs.flavor.diskGiB > 0 ? `${inputs.flavor.diskGiB}G` : "";
    steps.push({
      label: `create the disk of ${inputs.serverName}`,
      script: [
        "set -e",
        `d=${shQuote(p.disk)}`,
        `[ -f "$d" ] || qemu-img create -q -f qcow2 -F ${inputs.image.format} -b ${shQuote(inputs.image.disk)} "$d" ${sizeArg}`,
        ...(sizeArg
          ? [
              `want=$((${inputs.flavor.diskGiB} * 1073741824))`,
              `have=$(qemu-img info -U --output=json "$d" | sed -n 's/.*"virtual-size": *\\([0-9]*\\).*/\\1/p' | head -n1)`,
              'if [ "$have" -lt "$want" ]; then qemu-img resize -q "$d" "$want"; fi',
            ]
          : []),
      ].join("\n"),
    });
  }
  steps.push(uploadStep(p.domainXml, xml, { mode: "0600" }));
  // Hybrid OVS ports: qbr/qvb/qvo before the domain can start (also on a migration's destination).
  const plug = hybridPlugStep(
    inputs.serverName,
    inputs.ports,
    inputs.owner ?? "",
    inputs.project ?? "",
    opts.alsoOwners,
  );
  if (plug) steps.push(plug);
  if (opts.define !== false) {
    steps.push({
      label: `define domain ${inputs.serverName}`,
      script: `${VIRSH} define ${shQuote(p.domainXml)} >/dev/null`,
    });
    // A raw XML (no kvmlab element) defines a domain without the owner-only element (review
    // L6): set it again after every define, so a redefine never drops it for good.
    if (metadataBlockOf(xml) === "") {
      const set = metadataStep(inputs, xml);
      if (set) steps.push(set);
    }
  }
  return steps;
}

/**
 * The image's user marker for the server, when it uses an image of the store (empty otherwise).
 * Create writes it under the host lock before anything refers to the image, so an Image delete
 * (which checks the markers under the same lock) refuses from then on; the slow rest of the
 * create (seed, overlay, define, start) then runs without the lock.
 */
export function imageUseSteps(inputs: Pick<ServerInputs, "image" | "serverName">): Step[] {
  return usesStoreImage(inputs.image) ? [imageUserStep(inputs.image.name, inputs.serverName, true)] : [];
}

/** Writes the server's record (placement counts it). */
export function recordStep(inputs: ServerInputs, addresses: { ip: string; mac: string }[]): Step {
  return writeRecordStep("server", inputs.serverName, serverRecord(inputs, addresses));
}

/**
 * The placement claim's record write (same path, text and mode 0600 as recordStep), for the claim
 * batch that runs under the host lock: the text is written with the shell's printf and renamed
 * into place (one process, mv) instead of recordStep's upload (base64, checksums, chmod, chown:
 * about eight processes), issue 13. The define batch, which holds no lock, keeps recordStep.
 */
export function claimRecordStep(inputs: ServerInputs): Step {
  const p = recordPath("server", inputs.serverName);
  return {
    label: `write record server/${inputs.serverName}`,
    script: [
      `d=${shQuote(recordDir("server"))}`,
      '[ -d "$d" ] || mkdir -p "$d"',
      "umask 077",
      `p=${shQuote(p)}; t="$p.kvmlab-tmp.$$"`,
      `if printf '%s' ${shQuote(`${JSON.stringify(serverRecord(inputs, []), null, 2)}\n`)} > "$t" && mv -f "$t" "$p"; then exit 0; fi`,
      'rm -f "$t"; exit 1',
    ].join("\n"),
  };
}

/**
 * The bash line that refuses (exit 34) when the record at `p` (a shell word: a quoted path or
 * "$p") exists and is another server's (does not carry `uuid`), printing `message`. One check for
 * nameFreeStep, reservationStep and markMigratingStep.
 */
function otherServerRecordLine(p: string, uuid: string, message: string): string {
  return `if [ -f ${p} ] && ! grep -qF -- ${shQuote(`"uuid": "${uuid}"`)} ${p}; then echo ${shQuote(message)} >&2; exit 34; fi`;
}

/** Refuses (exit 34) when the host records another server (another UUID) under this name. */
export function nameFreeStep(inputs: Pick<ServerInputs, "serverName" | "uuid">): Step {
  const rec = recordPath("server", inputs.serverName);
  return {
    label: `check that the name ${inputs.serverName} is free on the host`,
    script: otherServerRecordLine(
      shQuote(rec),
      inputs.uuid,
      `another server is recorded under the name ${inputs.serverName} on this host (${rec}); rename this server`,
    ),
  };
}

/**
 * Sets kvmlab's metadata element of a defined domain in place (virDomainSetMetadata): in the
 * persistent definition, and in the running guest too when it runs. No redefine, no restart.
 * `xml` is the host XML the state will hold (its element is what gets set); an XML without
 * kvmlab's element (a raw provider call's) gets one with only the project and the owner (review
 * O3). The domain of that name must be this server's (its UUID), else it is left alone and the
 * step exits 33 (review O5). Undefined when there is nothing to set (no element, no owner).
 */
export function metadataStep(
  s: Pick<ServerInputs, "serverName" | "uuid" | "project"> & { owner?: string },
  xml: string,
): Step | undefined {
  const text = metadataSetText(xml) || ownerOnlySetText(s.owner ?? "", s.project ?? "");
  if (text === "") return undefined;
  const n = shQuote(s.serverName);
  const set = `${VIRSH} metadata ${n} --uri ${shQuote(KVMLAB_DOMAIN_XMLNS)} --key ${KVMLAB_DOMAIN_KEY} --set ${shQuote(text)}`;
  return {
    label: `set kvmlab metadata of domain ${s.serverName}`,
    script: [
      "set -e",
      `u=$(${VIRSH} domuuid ${n} 2>/dev/null || true)`,
      `if [ "$u" != ${shQuote(s.uuid)} ]; then echo ${shQuote(`the domain named ${s.serverName} on this host is not this server (UUID ${s.uuid}): it has UUID `)}"\${u:-(none)}"${shQuote(`; its metadata was left alone. Fix: run "pulumi refresh", then remove or rename that domain by hand if it is not kvmlab's`)} >&2; exit 33; fi`,
      `st=$(${VIRSH} domstate ${n})`,
      'case "$st" in running|paused) live=--live ;; *) live= ;; esac',
      `${set} --config $live`,
    ].join("\n"),
  };
}

/** Starts the domain unless it runs. */
export function startStep(name: string): Step {
  return {
    label: `start domain ${name}`,
    script: `st=$(${VIRSH} domstate ${shQuote(name)}); [ "$st" = running ] || ${VIRSH} start ${shQuote(name)} >/dev/null`,
  };
}

/** Asks the guest to shut down (ACPI); the caller polls the state. */
export function shutdownStep(name: string): Step {
  return {
    label: `shut down domain ${name}`,
    script: `st=$(${VIRSH} domstate ${shQuote(name)}); if [ "$st" = running ]; then ${VIRSH} shutdown ${shQuote(name)} >/dev/null; fi; true`,
  };
}

/** Powers the domain off at once. */
export function destroyStep(name: string): Step {
  return {
    label: `power off domain ${name}`,
    script: `st=$(${VIRSH} domstate ${shQuote(name)} 2>/dev/null || true); if [ "$st" != "shut off" ] && [ -n "$st" ]; then ${VIRSH} destroy ${shQuote(name)} >/dev/null; fi; true`,
  };
}

/** Prints key=value lines about the domain (see parseDomainInfo). */
export function infoStep(name: string): Step {
  const n = shQuote(name);
  return {
    label: `read domain ${name}`,
    script: [
      // In a shell variable, not a predictable /tmp file written as root (issue 15).
      `if ! di=$(${VIRSH} dominfo ${n} 2>/dev/null); then echo defined=no; exit 0; fi`,
      "echo defined=yes",
      'printf \'%s\\n\' "$di" | awk -F\': *\' \'/^UUID/ {print "uuid=" $2} /^State/ {print "state=" $2} /^Max memory/ {print "maxmem=" $2} /^CPU\\(s\\)/ {print "vcpus=" $2}\'',
      `echo "vnc=$(${VIRSH} vncdisplay ${n} 2>/dev/null | head -n1)"`,
      `echo "type=$(${VIRSH} dumpxml ${n} 2>/dev/null | sed -n "s/^<domain type='\\([a-z]*\\)'.*/\\1/p" | head -n1)"`,
      // kvmlab's metadata element on one line (empty when the domain has none).
      `echo "meta=$(${VIRSH} metadata ${n} ${shQuote(KVMLAB_DOMAIN_XMLNS)} 2>/dev/null | tr -d '\\n')"`,
    ].join("\n"),
  };
}

export interface DomainInfo {
  defined: boolean;
  uuid: string;
  /** "running", "shut off", "paused"… */
  state: string;
  maxMemKiB: number;
  vcpus: number;
  /** 5900 + display, or 0 without VNC or when not running. */
  vncPort: number;
  type: string;
  /** kvmlab's `<kvmlab:instance>` element as libvirt keeps it ("" when absent). */
  metadata: string;
}

export function parseDomainInfo(stdout: string): DomainInfo {
  const kv = parseKeyValues(stdout);
  const vnc = /:(\d+)\s*$/.exec(kv.get("vnc") ?? "");
  return {
    defined: kv.get("defined") === "yes",
    uuid: kv.get("uuid") ?? "",
    state: kv.get("state") ?? "",
    maxMemKiB: Number.parseInt(kv.get("maxmem") ?? "0", 10) || 0,
    vcpus: Number(kv.get("vcpus") ?? 0) || 0,
    vncPort: vnc ? 5900 + Number(vnc[1]) : 0,
    type: kv.get("type") ?? "",
    metadata: kv.get("meta") ?? "",
  };
}

/**
 * Removes the server from a host (idempotent): the domain only when its UUID is this server's,
 * the instance folder, its user marker on the image and the record. Leaves everything else alone.
 */
export function deleteStep(
  server: Pick<ServerInputs, "serverName" | "uuid" | "image" | "domainXml"> & {
    ports?: readonly ServerPort[];
    owner?: string;
  },
): Step {
  const { serverName: name, uuid } = server;
  // The folder its XML names (its UUID's; its name's for a server created before issue 15).
  const p = instancePaths(server);
  const n = shQuote(name);
  const rec = shQuote(recordPath("server", name));
  return {
    label: `delete server ${name}`,
    script: [
      // libvirtd not answering is not "no such domain": when libvirt keeps a definition of this
      // name, stop here, so the owner marker and record stay with it (the next up returns to this
      // host and adopts it; a delete retries). With no definition there is nothing of libvirt's.
      `if ! ${VIRSH} list --all >/dev/null 2>&1 && [ -e ${shQuote(`/etc/libvirt/qemu/${name}.xml`)} ]; then echo ${shQuote(`libvirtd on this host does not answer and keeps a definition of server ${name}, so it was not removed; start libvirtd (systemctl start libvirtd) and run again`)} >&2; exit 69; fi`,
      `u=$(${VIRSH} domuuid ${n} 2>/dev/null || true)`,
      // A domain or record of the same name with another UUID belongs to another server (a name
      // clash refused at create): leave all of it alone.
      `if [ -n "$u" ] && [ "$u" != ${shQuote(uuid)} ]; then exit 0; fi`,
      `if [ -f ${rec} ] && ! grep -qF -- ${shQuote(`"uuid": "${uuid}"`)} ${rec}; then exit 0; fi`,
      // Its hybrid ports' qvo must carry no other owner (issue 14), checked before anything goes.
      ...hybridGuardLines(name, server.ports, [server.owner ?? ""]),
      // The instance folder stays when another server uses it (review S1: a server of another
      // stack given the same UUID): read before this domain goes (libvirt then still names it).
      ...otherUserOfUuidLines(name, uuid, p.dir),
      'if [ -n "$u" ]; then',
      `  st=$(${VIRSH} domstate ${n} 2>/dev/null || true)`,
      `  if [ "$st" != "shut off" ]; then ${VIRSH} destroy ${n} >/dev/null 2>&1 || true; fi`,
      `  ${VIRSH} undefine ${n} >/dev/null`,
      "fi",
      `if [ -n "$other" ]; then echo ${shQuote(`server ${name}: its instance folder ${p.dir} is used by `)}"$other"${shQuote("; it was left in place")} >&2; else rm -rf ${shQuote(p.dir)}; fi`,
      ...hybridUnplugLines(server.ports),
      imageUserStep(server.image.name, name, false).script,
      `rm -f ${rec}`,
      "true",
    ].join("\n"),
  };
}

/** Last lines of the serial log (for error messages). */
export function serialTailStep(
  server: Pick<ServerInputs, "serverName" | "uuid" | "domainXml">,
  lines = 25,
): Step {
  const p = instancePaths(server);
  return {
    label: `read serial log of ${server.serverName}`,
    script: `tail -n ${lines} ${shQuote(p.serialLog)} 2>/dev/null; true`,
  };
}

/**
 * One readiness probe (exit 0 = ready). http and dhcp run on the port's DHCP host (inside the
 * subnet's qdhcp namespace); serial runs on the server's host.
 */
export function readinessProbeStep(
  inputs: ServerInputs,
  ip: string,
  port: ServerPort,
  opts: { leaseGate?: boolean } = {},
): Step {
  const r = inputs.readiness;
  if (r.kind === "serial") {
    return {
      label: `wait for "${r.pattern}" on the serial console`,
      script: `grep -qF -- ${shQuote(r.pattern)} ${shQuote(instancePaths(inputs).serialLog)}`,
    };
  }
  const dhcp = dhcpPaths(port.networkName, port.subnetName);
  if (r.kind === "dhcp") {
    return {
      label: `wait for the DHCP lease of ${port.mac}`,
      script: `grep -qi -- ${shQuote(` ${port.mac} ${ip} `)} ${shQuote(dhcp.leaseFile)}`,
    };
  }
  const url = `http://${ip}:${r.port}${r.path}`;
  return {
    label: `wait for ${url} to answer`,
    script: [
      `ns=${shQuote(dhcp.namespace)}; url=${shQuote(url)}`,
      '[ -e "/run/netns/$ns" ] || { echo "namespace $ns is missing: the subnet needs DHCP for the http readiness probe" >&2; exit 2; }',
      // Until the guest holds its lease an HTTP probe could only wait for ARP, blocking the
      // host's shared shell for everyone; the gate makes it return at once instead.
      ...(opts.leaseGate && port.dhcp
        ? [
            `grep -qi -- ${shQuote(` ${port.mac} ${ip} `)} ${shQuote(dhcp.leaseFile)} || { echo "no DHCP lease for ${port.mac} yet" >&2; exit 3; }`,
          ]
        : []),
      'if command -v curl >/dev/null 2>&1; then ip netns exec "$ns" curl -fsS --connect-timeout 0.5 -m 2 -o /dev/null "$url"',
      'else ip netns exec "$ns" timeout 3 wget -q -O /dev/null "$url"; fi',
    ].join("\n"),
  };
}

/** A HTTP GET from the subnet's namespace on the DHCP host, printing the body (tests). */
export function httpFromSubnetStep(port: Pick<ServerPort, "networkName" | "subnetName">, url: string): Step {
  const dhcp = dhcpPaths(port.networkName, port.subnetName);
  return {
    label: `GET ${url}`,
    script: `ip netns exec ${shQuote(dhcp.namespace)} curl -fsS -m 3 ${shQuote(url)}`,
  };
}

/** Placement's capacity rules (PLACEMENT in model.ts), as the fit checks take them. */
export interface FitPolicy {
  reservedHostMemoryMiB: number;
  ramAllocationRatio: number;
  cpuAllocationRatio: number;
}

/**
 * Bash lines of a fit check by placement's rules (freeCapacity and chooseHost in model.ts): the
 * other servers' records counted by CAPACITY_AWK (the lines the stats step and the guard print;
 * the records of `skipUuid`, the server's own, left out), then refused with exit `exit` unless
 * int((MemTotal MiB - reserved) x ramRatio) - their RAM >= the flavor's RAM, int(nproc x
 * cpuRatio) - their vCPUs >= its vCPUs, and MemAvailable >= its RAM (a host without
 * MemAvailable reads 0 and is refused, as placement refuses it), the resident memory of domain
 * `credit` added when given (a resize's own guest, freed by its stop). The message is `what`, then
 * " beside its other servers: <n> MiB RAM and <n> vCPUs free" or ": only <n> MiB of memory
 * available right now", then `tail`. Writes nothing.
 */
function fitCheckLines(
  skipUuid: string,
  f: { ramMiB: number; vcpus: number },
  policy: FitPolicy,
  what: string,
  tail: string,
  exit: number,
  /** A domain whose resident memory counts as available (a resize's guest, freed by its stop). */
  credit?: string,
  /** false: the records test only (the guest does not grow, only its record). */
  memAvailable = true,
): string[] {
  for (const n of [f.ramMiB, f.vcpus, policy.reservedHostMemoryMiB])
    if (!Number.isInteger(n) || n < 0) throw new Error(`fit check: ${n} is not a whole number`);
  for (const n of [policy.ramAllocationRatio, policy.cpuAllocationRatio])
    if (!Number.isFinite(n) || n <= 0) throw new Error(`fit check: ratio ${n} is not a positive number`);
  const records = [
    `lines=$(${capacityLinesScript([skipUuid])}) || { echo 'reading the server records (awk) failed' >&2; exit 1; }`,
    `used=$(printf '%s\\n' "$lines" | awk '{ if ($2 ~ /^[0-9]+$/) r += $2; if ($3 ~ /^[0-9]+$/) v += $3 } END { print r + 0, v + 0 }') || exit 1`,
    "mem=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)",
    "cpus=$(nproc)",
    "set -- $used",
    `free=$(awk -v mem="$mem" -v r="$1" -v v="$2" -v cpus="$cpus" 'BEGIN { print int((mem - ${policy.reservedHostMemoryMiB}) * ${policy.ramAllocationRatio}) - r, int(cpus * ${policy.cpuAllocationRatio}) - v }') || exit 1`,
    "set -- $free",
    `if [ "$1" -lt ${f.ramMiB} ] || [ "$2" -lt ${f.vcpus} ]; then echo ${shQuote(`${what} beside its other servers: `)}"$1 MiB RAM and $2 vCPUs free"${shQuote(tail)} >&2; exit ${exit}; fi`,
  ];
  if (!memAvailable) return records;
  return [
    ...records,
    "avail=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)",
    // As chooseHost: the RAM free right now (a missing MemAvailable reads 0, as parseHostLoad).
    'case "$avail" in "" | *[!0-9]*) avail=0 ;; esac',
    ...(credit === undefined
      ? ['held=""']
      : [
          // The guest's own resident memory (QEMU's RSS, virsh dommemstat) is freed by its stop
          // before it starts with the new flavor; 0 when it does not run or cannot be read.
          `rss=$(${VIRSH} dommemstat ${shQuote(credit)} 2>/dev/null | awk '$1 == "rss" { print int($2 / 1024) }') || rss=0`,
          'case "$rss" in "" | *[!0-9]*) rss=0 ;; esac',
          'held=""; if [ "$rss" -gt 0 ]; then avail=$((avail + rss)); held=" (with the $rss MiB the guest holds now)"; fi',
        ]),
    `if [ "$avail" -lt ${f.ramMiB} ]; then echo ${shQuote(`${what}: only `)}"$avail MiB of memory available right now$held"${shQuote(tail)} >&2; exit ${exit}; fi`,
  ];
}

/** The exit status of migrationFitsStep's refusal: the destination is too small, nothing moved. */
export const MIGRATION_REFUSED_EXIT = 38;

/**
 * The fit check of a live migration's destination (review 8 P2): refuses (exit 38) unless the
 * server's flavor fits host `hostName` beside the servers recorded there, by placement's rules
 * (fitCheckLines, the server's own record, a reservation of an earlier attempt, left out). Run
 * under the destination's lock in the batch that writes the reservation (reservationStep),
 * before anything of the guest is prepared there: a refusal writes nothing, and the guest keeps
 * running on `sourceName`. The message names the field (`host`), the free capacity and the fix.
 */
export function migrationFitsStep(
  i: Pick<ServerInputs, "uuid" | "flavor"> & { serverName: string },
  hostName: string,
  sourceName: string,
  policy: FitPolicy,
): Step {
  const f = i.flavor;
  const what = `host: server ${i.serverName} (flavor ${f.name}: ${f.vcpus} vCPU, ${f.ramMiB} MiB) does not fit host ${hostName}`;
  const tail = `; it was not migrated and keeps running on ${sourceName}. Fix: pin another host (host), free capacity on ${hostName}, or give the server a smaller flavor first`;
  return {
    label: `check that server ${i.serverName} fits host ${hostName}`,
    script: fitCheckLines(i.uuid, f, policy, what, tail, MIGRATION_REFUSED_EXIT).join("\n"),
  };
}

/** The record field that marks a migration's reservation (absent from a server's normal record). */
export const RESERVATION_FIELD = "reservation";
/** The reservation field's line in a record (JSON.stringify's two-space indent), for grep. */
const RESERVATION_LINE = `^  "${RESERVATION_FIELD}": `;

/**
 * A live migration's reservation on its destination (review 8 P2): the server's record (what
 * placement counts: serverRecord, so the stats step's capacity lines and the placement guard see
 * it) with RESERVATION_FIELD naming the migration, written under the destination's lock in the
 * batch of migrationFitsStep and the owner claims, before the guest moves: every placement from
 * then on counts the guest's RAM there. The normal record (recordStep) replaces it once the guest
 * runs there. When the migration failed with the guest on the source, undoDestination removes it
 * (deleteStep, behind noDomainHereStep); an unfinished migration's is removed by the next update,
 * attempt or delete (behind abandonedRecordGateStep and noDomainHereStep). Only this server's: a
 * record of another UUID under this name refuses (exit 34, as nameFreeStep), and this server's
 * normal record (the guest already runs here) is kept. Written
 * with printf and a rename (mode 0600, as claimRecordStep). Prints `reserved` or `kept`.
 */
export function reservationStep(
  inputs: ServerInputs,
  addresses: { ip: string; mac: string }[],
  sourceName: string,
): Step {
  const p = recordPath("server", inputs.serverName);
  const value = {
    ...serverRecord(inputs, addresses),
    [RESERVATION_FIELD]: `live migration from ${sourceName}`,
  };
  return {
    label: `reserve capacity for server ${inputs.serverName}`,
    script: [
      `d=${shQuote(recordDir("server"))}`,
      `p=${shQuote(p)}`,
      otherServerRecordLine(
        '"$p"',
        inputs.uuid,
        `serverName: another server (another UUID) is recorded under the name ${inputs.serverName} on this host (${p}); it was not migrated. Fix: rename this server (serverName), or, if no domain of that name is defined on this host, remove that stale record`,
      ),
      `if [ -f "$p" ] && ! grep -q -- ${shQuote(RESERVATION_LINE)} "$p"; then echo kept; exit 0; fi`,
      '[ -d "$d" ] || mkdir -p "$d"',
      "umask 077",
      't="$p.kvmlab-tmp.$$"',
      `if printf '%s' ${shQuote(`${JSON.stringify(value, null, 2)}\n`)} > "$t" && mv -f "$t" "$p"; then echo reserved; exit 0; fi`,
      'rm -f "$t"; exit 1',
    ].join("\n"),
  };
}

/** The exit status of noDomainHereStep: a domain of this server is defined on the host. */
export const DOMAIN_HERE_EXIT = 39;

/**
 * The first step of the cleanup of a migration's destination (review 9b M2): refuses (exit
 * DOMAIN_HERE_EXIT) while the domain named like the server is defined on the host with this
 * server's UUID (the guest may run there: nothing of it is removed) and (exit 69) when libvirtd
 * does not answer (then that is unknown). Only the domain of that name is checked (review 9c
 * C6): a domain of this UUID under another name is not seen here; deleteStep still keeps a
 * folder another domain uses, and the UUID's owner guard refuses another owner's marker.
 * Writes nothing.
 */
export function noDomainHereStep(i: Pick<ServerInputs, "serverName" | "uuid">): Step {
  return {
    label: `check that no domain of server ${i.serverName} is defined here`,
    script: [
      `if ! ${VIRSH} list --all >/dev/null 2>&1; then echo ${shQuote(`libvirtd on this host does not answer, so whether server ${i.serverName} is defined here is unknown: nothing of it was removed; start libvirtd and run again`)} >&2; exit 69; fi`,
      `u=$(${VIRSH} domuuid ${shQuote(i.serverName)} 2>/dev/null || true)`,
      `if [ "$u" = ${shQuote(i.uuid)} ]; then echo ${shQuote(`server ${i.serverName} (UUID ${i.uuid}) is defined on this host: nothing of it was removed`)} >&2; exit ${DOMAIN_HERE_EXIT}; fi`,
      "true",
    ].join("\n"),
  };
}

/**
 * The source's record field that names a live migration's destination while it may hold this
 * server's reservation (review 9b M1): set before the destination is prepared
 * (markMigratingStep), gone with the source's record once the guest moved, cleared after a
 * failure that removed everything on the destination, and kept otherwise (a killed `up`, an
 * unknown outcome, a failed cleanup), so the server's next update or delete removes that
 * reservation there (pendingMigrationStep reads it).
 */
export const MIGRATING_FIELD = "migrating";

/** The record with `migrating` (a destination host's name) written in place, as reservationStep. */
function rewriteRecordLines(
  inputs: ServerInputs,
  addresses: { ip: string; mac: string }[],
  migrating: string,
): string[] {
  const p = recordPath("server", inputs.serverName);
  const value = {
    ...serverRecord(inputs, addresses),
    ...(migrating ? { [MIGRATING_FIELD]: migrating } : {}),
  };
  return [
    `d=${shQuote(recordDir("server"))}`,
    `p=${shQuote(p)}`,
    '[ -d "$d" ] || mkdir -p "$d"',
    "umask 077",
    't="$p.kvmlab-tmp.$$"',
    `if printf '%s' ${shQuote(`${JSON.stringify(value, null, 2)}\n`)} > "$t" && mv -f "$t" "$p"; then exit 0; fi`,
    'rm -f "$t"; exit 1',
  ];
}

/** Prints the MIGRATING_FIELD of the record at "$p" (sed over its own line), or nothing. */
const MIGRATING_READ = `sed -n ${shQuote(`s/^  "${MIGRATING_FIELD}": "\\([A-Za-z0-9._-]*\\)",\\{0,1\\}$/\\1/p`)} "$p" | head -n1`;

/**
 * On the source, before a live migration prepares its destination (review 9b M1): rewrites the
 * server's record with MIGRATING_FIELD naming `dstName` (the record of this UUID only: exit 34
 * for another server's, as reservationStep). Prints the destination an earlier attempt named
 * there ("" for none), so that one is cleaned up first.
 */
export function markMigratingStep(
  inputs: ServerInputs,
  addresses: { ip: string; mac: string }[],
  dstName: string,
): Step {
  const p = recordPath("server", inputs.serverName);
  return {
    label: `note the migration of server ${inputs.serverName} to ${dstName}`,
    script: [
      `p=${shQuote(p)}`,
      otherServerRecordLine(
        '"$p"',
        inputs.uuid,
        `another server (another UUID) is recorded under the name ${inputs.serverName} on this host (${p}); not migrating`,
      ),
      `if [ -f "$p" ]; then ${MIGRATING_READ}; fi`,
      ...rewriteRecordLines(inputs, addresses, dstName),
    ].join("\n"),
  };
}

/** Prints the destination the server's record on this host names in MIGRATING_FIELD (its UUID's record only), or nothing. */
export function pendingMigrationStep(i: Pick<ServerInputs, "serverName" | "uuid">): Step {
  return {
    label: `read the pending migration of server ${i.serverName}`,
    script: [
      `p=${shQuote(recordPath("server", i.serverName))}`,
      '[ -f "$p" ] || exit 0',
      `grep -qF -- ${shQuote(`"uuid": "${i.uuid}"`)} "$p" || exit 0`,
      MIGRATING_READ,
      "true",
    ].join("\n"),
  };
}

/**
 * Clears MIGRATING_FIELD from the server's record on this host (rewritten as recordStep's text,
 * from `inputs`), only when the record carries this UUID and still names `dstName`. Idempotent.
 */
export function clearMigratingStep(
  inputs: ServerInputs,
  addresses: { ip: string; mac: string }[],
  dstName: string,
): Step {
  return {
    label: `clear the pending migration of server ${inputs.serverName}`,
    script: [
      `p=${shQuote(recordPath("server", inputs.serverName))}`,
      '[ -f "$p" ] || exit 0',
      `grep -qF -- ${shQuote(`"uuid": "${inputs.uuid}"`)} "$p" || exit 0`,
      `[ "$(${MIGRATING_READ})" = ${shQuote(dstName)} ] || exit 0`,
      ...rewriteRecordLines(inputs, addresses, ""),
    ].join("\n"),
  };
}

/**
 * What a host holds of a server under its name (review 9b M1, an abandoned migration's
 * destination): prints `reservation` (a record of its UUID with RESERVATION_FIELD), `record` (its
 * normal record), `other` (another UUID's record) or `none`.
 */
export function recordKindStep(i: Pick<ServerInputs, "serverName" | "uuid">): Step {
  const p = shQuote(recordPath("server", i.serverName));
  return {
    label: `read the record of server ${i.serverName}`,
    script: [
      `[ -f ${p} ] || { echo none; exit 0; }`,
      `grep -qF -- ${shQuote(`"uuid": "${i.uuid}"`)} ${p} || { echo other; exit 0; }`,
      `if grep -q -- ${shQuote(RESERVATION_LINE)} ${p}; then echo reservation; else echo record; fi`,
    ].join("\n"),
  };
}

/** Exit status of abandonedRecordGateStep: the server's record there is not a reservation (left alone). */
export const NOT_ABANDONED_EXIT = 43;

/**
 * The test recordKindStep answers, as a gate in the same batch (and lock hold) as the removal of
 * an unfinished migration's leftovers (review 9c C5): exits 0 when the server's record on this
 * host is its reservation or absent, else NOT_ABANDONED_EXIT (its normal record or another
 * server's: the steps after it do not run, and nothing is removed). Writes nothing.
 */
export function abandonedRecordGateStep(i: Pick<ServerInputs, "serverName" | "uuid">): Step {
  const p = shQuote(recordPath("server", i.serverName));
  return {
    label: `check that the record of server ${i.serverName} here is a reservation or none`,
    script: [
      `[ -f ${p} ] || exit 0`,
      `grep -qF -- ${shQuote(`"uuid": "${i.uuid}"`)} ${p} || { echo ${shQuote(`another server's record is under the name ${i.serverName} here: left alone`)} >&2; exit ${NOT_ABANDONED_EXIT}; }`,
      `grep -q -- ${shQuote(RESERVATION_LINE)} ${p} && exit 0`,
      `echo ${shQuote(`the record of server ${i.serverName} here is its normal record, not a reservation: left alone`)} >&2; exit ${NOT_ABANDONED_EXIT}`,
    ].join("\n"),
  };
}
