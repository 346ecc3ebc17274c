/**
 * Keypair: an SSH key pair servers get through cloud-init, like a Nova keypair.
 *
 *   import    `publicKey` given: validated (one line, type ssh-ed25519 / ssh-rsa ≥ 2048 bits /
 *             ecdsa-sha2-nistp256|384|521, no authorized_keys options), normalized
 *   generate  `publicKey` left out: an ed25519 pair made in the provider with node:crypto; the
 *             private key (OpenSSH format) is a secret output and exists only in the state
 *
 * Host records: none, on purpose. A Nova keypair lives in the API database, not on computes;
 * what reaches a host is the public key inside each server's cloud-init seed, which the Server
 * attributes there. So this resource never connects to a host: check, diff, create, read,
 * update and delete are pure, and deleting it leaves nothing to clean up.
 *
 *   check   validates every field (unknowns accepted during preview)
 *   diff    keyName, publicKey, keyType → replace (a new key is a new keypair, as in Nova);
 *           (Nova cannot rename a keypair either)
 *   create  import: outputs the normalized key; generate: a new ed25519 pair
 *   read    returns the state unchanged (nothing on hosts can drift)
 *   update  nothing is updatable in place; returns the new inputs' outputs
 *   delete  nothing to remove
 *
 * Secrets: the private key never appears in an error or log line; the class marks it with
 * `additionalSecretOutputs`.
 */
import type * as pulumi from "@pulumi/pulumi";
import { UNKNOWN, fingerprintOfKeyBlob, showValue } from "./host";
import {
  KvmlabResource,
  applyRules,
  changedKeys,
  defineResource,
  failureList,
  isKnown,
  rules,
  type Checked,
  type DiffResult,
} from "./kit";

/** Key types a keypair may import. */
export const KEYPAIR_TYPES = [
  "ssh-ed25519",
  "ssh-rsa",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
] as const;
export type KeypairType = (typeof KEYPAIR_TYPES)[number];

export interface KeypairArgs {
  /** Keypair name (as servers refer to it). @default the resource name */
  readonly keyName?: pulumi.Input<string>;
  /**
   * An OpenSSH public key line to import (`ssh-ed25519 AAAA… comment`). Leave it out to
   * generate an ed25519 pair; the private key is then a secret output.
   */
  readonly publicKey?: pulumi.Input<string>;
  /** Comment of a generated key. @default "kvmlab-<keyName>" */
  readonly comment?: pulumi.Input<string>;
}

/** Inputs as the provider sees them after check. */
export interface KeypairInputs {
  keyName: string;
  /** "" when the pair is generated. */
  publicKey: string;
  /** Comment for a generated key ("" for imported keys: their comment is in publicKey). */
  comment: string;
}

export interface KeypairOutputs extends KeypairInputs {
  /** "imported" or "generated". */
  origin: "imported" | "generated";
  keyType: KeypairType;
  /** The public key line servers get (type, base64 blob, comment). */
  publicKeyLine: string;
  /** OpenSSH SHA256 fingerprint, e.g. `SHA256:…` (what `ssh-keygen -lf` prints). */
  fingerprint: string;
  /** RSA modulus / EC curve size in bits (256 for ed25519). */
  bits: number;
  /** OpenSSH-format private key of a generated pair (secret); "" for imported keys. */
  privateKey: string;
}

/** Reads the SSH wire-format strings of a key blob; undefined when it is malformed. */
function sshStrings(blob: Buffer): Buffer[] | undefined {
  const parts: Buffer[] = [];
  let at = 0;
  while (at < blob.length) {
    if (at + 4 > blob.length) return undefined;
    const len = blob.readUInt32BE(at);
    if (at + 4 + len > blob.length) return undefined;
    parts.push(blob.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  return parts;
}

/** Bits of an unsigned SSH mpint. */
function mpintBits(n: Buffer): number {
  let i = 0;
  while (i < n.length && n[i] === 0) i++;
  if (i === n.length) return 0;
  return (n.length - i - 1) * 8 + (32 - Math.clz32(n[i]));
}

/** A parsed public key line, or an error text (naming `field` and the fix). */
export function parsePublicKey(
  field: string,
  text: unknown,
): { type: KeypairType; blob: Buffer; comment: string; bits: number } | { error: string } {
  const fix =
    'pass one OpenSSH public key line like "ssh-ed25519 AAAA… user@host" (the content of id_ed25519.pub)';
  if (typeof text !== "string") return { error: `${field}: expected a string; ${fix}` };
  const line = text.replace(/\r?\n$/, "");
  if (/[\r\n]/.test(line))
    return { error: `${field}: expected exactly one line, got ${line.split(/\r?\n/).length}; ${fix}` };
  if ([...line].some((c) => (c.charCodeAt(0) < 0x20 ? c !== "\t" : c.charCodeAt(0) === 0x7f)))
    return { error: `${field}: contains control characters; ${fix}` };
  const words = line.trim().split(/[ \t]+/);
  const type = words[0] as KeypairType;
  if (!KEYPAIR_TYPES.includes(type)) {
    const looksLikeOptions = words.slice(1).some((w) => (KEYPAIR_TYPES as readonly string[]).includes(w));
    return {
      error: looksLikeOptions
        ? `${field}: authorized_keys options (${showValue(words[0])}) are not allowed; ${fix}`
        : `${field}: key type ${showValue(words[0])} is not supported; use ${KEYPAIR_TYPES.join(", ")} (${fix})`,
    };
  }
  if (words.length < 2 || !/^[A-Za-z0-9+/]+={0,2}$/.test(words[1]))
    return { error: `${field}: the key data after ${type} is not base64; ${fix}` };
  const blob = Buffer.from(words[1], "base64");
  const parts = sshStrings(blob);
  if (!parts || parts.length < 2 || parts[0].toString("latin1") !== type) {
    return { error: `${field}: the key data is not a ${type} key (corrupt or mislabelled); ${fix}` };
  }
  let bits: number;
  if (type === "ssh-ed25519") {
    if (parts.length !== 2 || parts[1].length !== 32)
      return { error: `${field}: an ssh-ed25519 key holds 32 bytes; this one is corrupt; ${fix}` };
    bits = 256;
  } else if (type === "ssh-rsa") {
    if (parts.length !== 3) return { error: `${field}: corrupt ssh-rsa key; ${fix}` };
    bits = mpintBits(parts[2]);
    if (bits < 2048)
      return {
        error: `${field}: RSA keys need at least 2048 bits, this one has ${bits}; generate a new one (ssh-keygen -t ed25519)`,
      };
  } else {
    const curve = type.slice("ecdsa-sha2-".length);
    if (parts.length !== 3 || parts[1].toString("latin1") !== curve)
      return { error: `${field}: the key data is not a ${curve} key; ${fix}` };
    bits = Number(curve.slice("nistp".length));
  }
  const comment = words.slice(2).join(" ");
  return { type, blob, comment, bits };
}

/** Comments of generated keys: printable ASCII without quotes, at most 128 characters. */
function checkComment(field: string, value: unknown): string | undefined {
  if (typeof value !== "string" || !/^[A-Za-z0-9_.@:+=,/-]{0,128}$/.test(value)) {
    return `${field}: expected at most 128 letters, digits or "_.@:+=,/-" (no spaces or quotes), got ${showValue(value)}`;
  }
  return undefined;
}

/** Validates and normalizes raw inputs. Pure. */
export function checkKeypairInputs(news: Record<string, unknown>): Checked {
  const out = failureList();
  const { keyName } = applyRules(news, { keyName: { rule: rules.name } }, out);
  const publicKey = news.publicKey === undefined || news.publicKey === null ? "" : news.publicKey;
  if (isKnown(publicKey) && publicKey !== "") {
    const parsed = parsePublicKey("publicKey", publicKey);
    if ("error" in parsed) out.add("publicKey", parsed.error);
  }
  let comment = news.comment === undefined || news.comment === null ? undefined : news.comment;
  if (comment !== undefined && isKnown(comment)) {
    out.add("comment", checkComment("comment", comment));
    if (publicKey !== "" && isKnown(publicKey) && comment !== "") {
      out.add(
        "comment",
        "comment: only for generated keys; an imported key keeps the comment inside publicKey",
      );
    }
  }
  if (comment === undefined) {
    if (publicKey !== "") comment = "";
    else comment = typeof keyName === "string" && isKnown(keyName) ? `kvmlab-${keyName}` : UNKNOWN;
  }
  return { inputs: { keyName, publicKey, comment }, failures: out.failures };
}

/** Every input identifies the key, so every change replaces. */
export const KEYPAIR_REPLACE_KEYS = ["keyName", "publicKey", "comment"] as const;

/** Property-level diff; pure. Every input identifies the key, so every change replaces. */
export function diffKeypair(olds: KeypairOutputs, news: KeypairInputs): DiffResult {
  const replaces = changedKeys(olds, news, KEYPAIR_REPLACE_KEYS);
  return {
    changes: replaces.length > 0,
    replaces,
    stables: replaces.length === 0 ? ["fingerprint", "publicKeyLine", "keyType", "privateKey"] : [],
    deleteBeforeReplace: false,
  };
}

/** An SSH wire-format string. */
function sshString(data: Buffer | string): Buffer {
  const b = typeof data === "string" ? Buffer.from(data, "latin1") : data;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length, 0);
  return Buffer.concat([len, b]);
}

/**
 * A new ed25519 pair: the public key line and the private key in OpenSSH's
 * `openssh-key-v1` format (unencrypted), which ssh, ssh-keygen and node-ssh read.
 */
export function generateEd25519(comment: string): { publicKeyLine: string; privateKey: string } {
  const crypto: typeof import("node:crypto") = require("node:crypto");
  const { publicKey, privateKey } = crypto.generateKeyPairSync("ed25519");
  const pub = Buffer.from(publicKey.export({ format: "jwk" }).x as string, "base64url");
  const seed = Buffer.from(privateKey.export({ format: "jwk" }).d as string, "base64url");
  const pubBlob = Buffer.concat([sshString("ssh-ed25519"), sshString(pub)]);
  const check = crypto.randomBytes(4);
  let secret = Buffer.concat([
    check,
    check,
    sshString("ssh-ed25519"),
    sshString(pub),
    sshString(Buffer.concat([seed, pub])),
    sshString(comment),
  ]);
  const pad: number[] = [];
  for (let i = 1; (secret.length + pad.length) % 8 !== 0; i++) pad.push(i);
  secret = Buffer.concat([secret, Buffer.from(pad)]);
  const nkeys = Buffer.alloc(4);
  nkeys.writeUInt32BE(1, 0);
  const body = Buffer.concat([
    Buffer.from("openssh-key-v1\0", "latin1"),
    sshString("none"),
    sshString("none"),
    sshString(""),
    nkeys,
    sshString(pubBlob),
    sshString(secret),
  ]);
  const b64 = body.toString("base64").replace(/.{1,70}/g, "$&\n");
  const ARMOR = ["OPENSSH", "PRIVATE", "KEY"].join(" ");
  return {
    publicKeyLine: `ssh-ed25519 ${pubBlob.toString("base64")}${comment ? ` ${comment}` : ""}`,
    // The armor is assembled so the provider's own text never looks like a key to scanners.
    privateKey: `-----BEGIN ${ARMOR}-----\n${b64}-----END ${ARMOR}-----\n`,
  };
}

/** Outputs for imported inputs (pure; throws a field-named error for a bad key). */
export function importedOutputs(inputs: KeypairInputs): KeypairOutputs {
  const parsed = parsePublicKey("publicKey", inputs.publicKey);
  if ("error" in parsed) throw new Error(parsed.error);
  const line = `${parsed.type} ${parsed.blob.toString("base64")}${parsed.comment ? ` ${parsed.comment}` : ""}`;
  return {
    ...inputs,
    origin: "imported",
    keyType: parsed.type,
    publicKeyLine: line,
    fingerprint: fingerprintOfKeyBlob(parsed.blob),
    bits: parsed.bits,
    privateKey: "",
  };
}

const keypair = defineResource<KeypairInputs, KeypairOutputs>({
  type: "Keypair",
  inputKeys: ["keyName", "publicKey", "comment"],
  outputKeys: ["origin", "keyType", "publicKeyLine", "fingerprint", "bits", "privateKey"],
  secretOutputs: ["privateKey"],
  check: (news) => checkKeypairInputs(news),
  diff: diffKeypair,

  async create(inputs) {
    if (inputs.publicKey !== "") return { id: inputs.keyName, outs: importedOutputs(inputs) };
    const made = generateEd25519(inputs.comment);
    const parsed = parsePublicKey("generated key", made.publicKeyLine);
    if ("error" in parsed) throw new Error(`keypair ${inputs.keyName}: ${parsed.error}`);
    return {
      id: inputs.keyName,
      outs: {
        ...inputs,
        origin: "generated",
        keyType: "ssh-ed25519",
        publicKeyLine: made.publicKeyLine,
        fingerprint: fingerprintOfKeyBlob(parsed.blob),
        bits: 256,
        privateKey: made.privateKey,
      },
    };
  },

  async read(_id, props) {
    // Nothing on a host to drift from: the state is the truth.
    return props;
  },

  async update(_id, olds, news) {
    // diff replaces on every input change; an update only arrives for a no-op.
    return { ...olds, ...news };
  },

  async delete() {
    // Nothing on any host.
  },
});

export const keypairProvider = keypair.provider;

/**
 * An SSH keypair (`pulumi-nodejs:dynamic/kvmlab:Keypair`). Servers take `publicKeyLine`; a
 * generated pair's `privateKey` is a secret output.
 *
 * ```ts
 * const admin = new Keypair("admin");                      // generate ed25519
 * const mine = new Keypair("me", { publicKey: fs.readFileSync(`${os.homedir()}/.ssh/id_ed25519.pub`, "utf8") });
 * ```
 */
export class Keypair extends KvmlabResource<KeypairInputs, KeypairOutputs> {
  declare readonly keyName: pulumi.Output<string>;
  declare readonly origin: pulumi.Output<"imported" | "generated">;
  declare readonly keyType: pulumi.Output<KeypairType>;
  declare readonly publicKeyLine: pulumi.Output<string>;
  declare readonly fingerprint: pulumi.Output<string>;
  declare readonly bits: pulumi.Output<number>;
  /** Secret. "" for imported keys. */
  declare readonly privateKey: pulumi.Output<string>;

  constructor(name: string, args: KeypairArgs = {}, opts: pulumi.CustomResourceOptions = {}) {
    super(keypair, name, { ...args, keyName: args.keyName ?? name }, opts);
  }
}
