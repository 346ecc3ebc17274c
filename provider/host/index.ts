/**
 * kvmlab host layer: how providers reach and change KVM hosts.
 *
 * API (all functions are serialization-safe: provider closures capture them by value, and they
 * `require` node-ssh / node built-ins lazily; shared state lives in one per-process pool on
 * `globalThis`, so every resource of every type shares one connection per host):
 *
 *   Connection shape and checks (connection.ts)
 *     HostConnection                 {name, address, port, user, privateKey (secret), hostKey,
 *                                     trustOnFirstUse, uplink, tunnelAddress}
 *     checkHostConnection(field, v)  → string[] errors naming `${field}.x` (unknown-tolerant)
 *     checkHostList(field, v)        → string[] (non-empty, unique names)
 *     normalizeHostConnection(raw)   → HostConnection with defaults (port 22, user root, "" for none)
 *
 *   Running steps (session.ts) — one SSH connection and one `bash -s` shell per host
 *     runSteps(host, steps, {stopOnError?, timeoutMs?, lane?}) → StepResult[] {code|null, stdout, stderr}
 *         one round trip for the whole batch; never throws for exit status. lane "worker": in a
 *         worker shell (another channel on the same connection; no lock) so a slow step does
 *         not hold up the main shell
 *     runChecked(host, steps, opts)  → stdout[]; throws remoteStepError (host, step label, status,
 *         stderr tail) at the first failing step, later steps skipped on the host
 *     runLocked(host, steps, opts)   like runChecked, under the host lock, in ONE round trip;
 *         opts.riders: the steps of the tickets announced on the host (lockedRider(host): the
 *         IPAM turn's commit) ride after `steps` in the same lock hold, each ticket getting its
 *         own outcome (results, skipped, or the batch's loss); they never change the caller's.
 *         lockedBatch is the same with the transport given (fake hosts in unit tests)
 *     withHostLock(host, fn, waitSec?, first?)  in-process mutex + flock /var/lib/kvmlab/lock held
 *         by the shell across several batches; the steps `first` run in the round trip that
 *         takes the lock, and fn gets their stdouts. The lock is not re-entrant: never call
 *         runLocked, withHostLock or allocateAddress/releaseAddress for the same host inside fn.
 *     hostLockFree(host)             resolves when the host's in-process mutex, as queued now, is
 *         free; takes nothing (the IPAM turn plans after it, so late allocations join its commit;
 *         a turn riding in a claim batch skips it)
 *     withNamedHostLock(host, name, fn)  flock /var/lib/kvmlab/<name>.lock (or a given lock file; fd 8; mutex per file) in a lock shell
 *         of its own, kept for that lock's next turn once its release ran (volumes; not kept for a
 *         given lock file: an autoscale group's group.lock, taken once per create)
 *     observedHostKey(host)          SHA256 fingerprint seen first in this process; it pins every
 *         later trust-on-first-use connection to that address (a changed key is refused)
 *     pooledSsh(host)                the pooled NodeSSH (SFTP)
 *     hostPoolStats(), resetHostPoolStats(), setHostPoolMode("pooled"|"naive"), closeHostSessions()
 *     hostCache(host, topic, make)   per-process memo per host
 *     A Step is {script, label?}: bash text run in a subshell (stdin /dev/null). Build scripts
 *     only from validated values and shQuote()d arguments.
 *
 *   Quoting and validation (quote.ts)
 *     shQuote(s), shCommand(...args), checkName, checkDeviceName, checkIPv4/isIPv4,
 *     checkHostAddress, checkUser, checkPort, checkRemotePath, collect, showValue,
 *     UNKNOWN (preview sentinel), containsUnknown(v)
 *
 *   Files and records (files.ts)
 *     uploadStep(path, content, {mode, owner}) / uploadFile(...)  atomic, sha256-aware
 *         (prints/returns changed vs unchanged)
 *     recordPath(kind, name) = /var/lib/kvmlab/records/<kind>/<name>.json
 *     readRecordStep / writeRecordStep / deleteRecordStep, parseRecord, readRecord, writeRecord
 *     sftpPut(host, localPath, remotePath)   large files over SFTP on the pooled connection
 *
 *   Capabilities (probe.ts)
 *     probeHost(host, withLibvirt?)  → HostCapabilities {kvm, libvirtVersion, qemuVersion,
 *         ovsVersion, ovsKernelDatapath, dnsmasq, haproxy, iptables, nft, ...}, cached
 *     requireFeatures(host, ["openvswitch","dhcp","libvirt",...]) throws one error with the
 *         apt-get line for everything missing
 *
 *   Host keys (hostKey.ts)
 *     pinFingerprint(pin) → {fingerprint} | {error}; fingerprintOfKeyBlob(blob)
 *
 *   Names on hosts (naming.ts)
 *     shortId(name), deviceName(prefix, name) — deterministic ≤15-char device names
 *
 * Example inside a provider method:
 *     const out = await runChecked(host, [
 *       { label: "create bridge", script: `ip link show ${shQuote(br)} >/dev/null 2>&1 || ip link add ${shQuote(br)} type bridge` },
 *       writeRecordStep("network", name, record),
 *     ]);
 */
export * from "./connection";
export * from "./files";
export * from "./framing";
export * from "./hostKey";
export * from "./naming";
export * from "./probe";
export * from "./quote";
export * from "./session";
export * from "./veth";
