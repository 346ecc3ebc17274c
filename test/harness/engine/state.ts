/**
 * The harness's state file: one JSON file per program and stack. Secrets are stored encrypted
 * (AES-256-GCM) with a key that never enters the state file: either the key file next to it
 * (`<state>.key`, mode 0600, created on first use) or a key derived from the environment
 * variable KVMLAB_ENGINE_PASSPHRASE (scrypt, salt kept in the state file).
 *
 * The format is the harness's own, not Pulumi's checkpoint (DeploymentV3) format.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { isPlainObject, isSecret, SECRET_SIG, SIG_KEY, type PropertyMap, type Value } from "./props";

export const PASSPHRASE_ENV = "KVMLAB_ENGINE_PASSPHRASE";

/** One resource as recorded in state (mirrors the fields of pkg/resource/state.go State that the harness uses). */
export interface ResourceState {
  urn: string;
  type: string;
  custom: boolean;
  id?: string;
  parent?: string;
  provider?: string;
  inputs: PropertyMap;
  outputs: PropertyMap;
  dependencies: string[];
  propertyDependencies: Record<string, string[]>;
  protect?: boolean;
  retainOnDelete?: boolean;
  deleteBeforeReplace?: boolean;
  ignoreChanges?: string[];
  replaceOnChanges?: string[];
  additionalSecretOutputs?: string[];
  /** Replaced (create-before-delete) and still waiting for its delete; retried on the next run. */
  delete?: boolean;
  /** Provider reported a partial failure (ErrorResourceInitFailed); the next run updates it. */
  initErrors?: string[];
}

export interface Snapshot {
  project: string;
  stack: string;
  resources: ResourceState[];
}

interface StateFile {
  version: 1;
  note: string;
  project: string;
  stack: string;
  secrets?: { kdf: "keyfile" | "scrypt"; salt?: string; check: string };
  resources: ResourceState[];
}

const NOTE =
  "kvmlab engine harness state (test infrastructure, not a Pulumi checkpoint); secrets are AES-256-GCM encrypted";
const CHECK_TEXT = "kvmlab-engine-harness";

export class StateStore {
  constructor(readonly file: string) {}

  get keyFile(): string {
    return `${this.file}.key`;
  }

  load(project: string, stack: string): Snapshot {
    if (!fs.existsSync(this.file)) return { project, stack, resources: [] };
    const raw = JSON.parse(fs.readFileSync(this.file, "utf8")) as StateFile;
    if (raw.version !== 1) throw new Error(`${this.file}: unknown state version ${String(raw.version)}`);
    if (raw.project !== project || raw.stack !== stack) {
      throw new Error(
        `${this.file} holds project "${raw.project}" stack "${raw.stack}", not "${project}" stack "${stack}"; pass another --state FILE`,
      );
    }
    let key: Buffer | undefined;
    if (raw.secrets) {
      key = this.key(raw.secrets.kdf, raw.secrets.salt, false);
      if (decrypt(key, raw.secrets.check) !== JSON.stringify(CHECK_TEXT)) {
        throw new Error(
          `${this.file}: the secrets key does not match (wrong ${raw.secrets.kdf === "scrypt" ? PASSPHRASE_ENV : this.keyFile})`,
        );
      }
    }
    const decode = (m: PropertyMap): PropertyMap =>
      mapSecrets(m, (c) => ({
        [SIG_KEY]: SECRET_SIG,
        value: JSON.parse(decrypt(need(key, this.file), c)) as Value,
      })) as PropertyMap;
    return {
      project,
      stack,
      resources: raw.resources.map((r) => ({ ...r, inputs: decode(r.inputs), outputs: decode(r.outputs) })),
    };
  }

  save(snap: Snapshot): void {
    const passphrase = process.env[PASSPHRASE_ENV];
    const kdf = passphrase ? "scrypt" : "keyfile";
    let salt: string | undefined;
    if (kdf === "scrypt") {
      const prev = fs.existsSync(this.file)
        ? (JSON.parse(fs.readFileSync(this.file, "utf8")) as StateFile)
        : undefined;
      salt =
        prev?.secrets?.kdf === "scrypt" && prev.secrets.salt
          ? prev.secrets.salt
          : crypto.randomBytes(16).toString("base64");
    }
    const hasSecrets = snap.resources.some((r) => hasSecret(r.inputs) || hasSecret(r.outputs));
    let key: Buffer | undefined;
    if (hasSecrets) key = this.key(kdf, salt, true);
    const encode = (m: PropertyMap): PropertyMap =>
      mapSecretValues(m, (v) => ({
        [SIG_KEY]: SECRET_SIG,
        ciphertext: encrypt(need(key, this.file), JSON.stringify(v)),
      })) as PropertyMap;
    const out: StateFile = {
      version: 1,
      note: NOTE,
      project: snap.project,
      stack: snap.stack,
      secrets: key ? { kdf, salt, check: encrypt(key, JSON.stringify(CHECK_TEXT)) } : undefined,
      resources: snap.resources.map((r) => ({ ...r, inputs: encode(r.inputs), outputs: encode(r.outputs) })),
    };
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `${JSON.stringify(out, null, 2)}\n`, { mode: 0o600 });
    fs.renameSync(tmp, this.file);
  }

  private key(kdf: "keyfile" | "scrypt", salt: string | undefined, create: boolean): Buffer {
    if (kdf === "scrypt") {
      const passphrase = process.env[PASSPHRASE_ENV];
      if (!passphrase) throw new Error(`${this.file} was encrypted with a passphrase: set ${PASSPHRASE_ENV}`);
      return crypto.scryptSync(passphrase, Buffer.from(salt ?? "", "base64"), 32);
    }
    if (!fs.existsSync(this.keyFile)) {
      if (!create)
        throw new Error(`${this.file} holds encrypted secrets but its key file ${this.keyFile} is missing`);
      fs.mkdirSync(path.dirname(this.keyFile), { recursive: true });
      fs.writeFileSync(this.keyFile, crypto.randomBytes(32).toString("hex"), { mode: 0o600, flag: "wx" });
    }
    const hex = fs.readFileSync(this.keyFile, "utf8").trim();
    if (!/^[0-9a-f]{64}$/.test(hex))
      throw new Error(`${this.keyFile}: expected 64 hex characters (a 256-bit key)`);
    return Buffer.from(hex, "hex");
  }
}

function need(key: Buffer | undefined, file: string): Buffer {
  if (!key) throw new Error(`${file}: a secret is present but no secrets key is recorded`);
  return key;
}

function encrypt(key: Buffer, text: string): string {
  const iv = crypto.randomBytes(12);
  const c = crypto.createCipheriv("aes-256-gcm", key, iv);
  const body = Buffer.concat([c.update(text, "utf8"), c.final()]);
  return Buffer.concat([iv, c.getAuthTag(), body]).toString("base64");
}

function decrypt(key: Buffer, b64: string): string {
  const raw = Buffer.from(b64, "base64");
  const d = crypto.createDecipheriv("aes-256-gcm", key, raw.subarray(0, 12));
  d.setAuthTag(raw.subarray(12, 28));
  try {
    return Buffer.concat([d.update(raw.subarray(28)), d.final()]).toString("utf8");
  } catch {
    return "";
  }
}

function hasSecret(v: Value): boolean {
  if (isSecret(v)) return true;
  if (Array.isArray(v)) return v.some(hasSecret);
  if (isPlainObject(v)) return Object.values(v).some(hasSecret);
  return false;
}

function mapSecretValues(v: Value, f: (plain: Value) => Value): Value {
  if (isSecret(v)) return f(v.value);
  if (Array.isArray(v)) return v.map((x) => mapSecretValues(x, f));
  if (isPlainObject(v))
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, mapSecretValues(x, f)]));
  return v;
}

function mapSecrets(v: Value, f: (ciphertext: string) => Value): Value {
  if (isPlainObject(v) && v[SIG_KEY] === SECRET_SIG && typeof v.ciphertext === "string")
    return f(v.ciphertext);
  if (Array.isArray(v)) return v.map((x) => mapSecrets(x, f));
  if (isPlainObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, mapSecrets(x, f)]));
  return v;
}
