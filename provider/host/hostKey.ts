/**
 * Host-key pinning. A pin is either an OpenSSH public key line (`ssh-ed25519 AAAA… [comment]`,
 * as in known_hosts without the host field, or `ssh-keyscan` output) or an OpenSSH SHA256
 * fingerprint (`SHA256:…`, as `ssh-keygen -lf` prints it). Both reduce to the fingerprint.
 */

/** OpenSSH's SHA256 fingerprint of a public key blob (wire format), e.g. `SHA256:abc…`. */
export function fingerprintOfKeyBlob(blob: Buffer): string {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  return `SHA256:${crypto.createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`;
}

/**
 * Fingerprint named by a pin, or an error text. Accepts a public key line (optionally with a
 * leading known_hosts host field) or a `SHA256:` fingerprint.
 */
export function pinFingerprint(pin: string): { fingerprint: string } | { error: string } {
  const text = pin.trim();
  if (/^SHA256:[A-Za-z0-9+/]{43}$/.test(text)) return { fingerprint: text };
  const words = text.split(/\s+/);
  const at = words.findIndex((w) =>
    /^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+)$/.test(w),
  );
  if (at >= 0 && at + 1 < words.length && /^[A-Za-z0-9+/]+={0,2}$/.test(words[at + 1])) {
    const blob = Buffer.from(words[at + 1], "base64");
    // The blob starts with the key type as an SSH string; a mismatch means a garbled line.
    const typeLen = blob.length >= 4 ? blob.readUInt32BE(0) : -1;
    if (typeLen > 0 && blob.subarray(4, 4 + typeLen).toString("latin1") === words[at]) {
      return { fingerprint: fingerprintOfKeyBlob(blob) };
    }
  }
  return {
    error:
      'expected the host\'s public key line ("ssh-ed25519 AAAA…", from ssh-keyscan or known_hosts) or its fingerprint ("SHA256:…", from ssh-keygen -lf)',
  };
}
