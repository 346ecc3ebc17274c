/**
 * The real dynamic-provider plugin (`@pulumi/pulumi/cmd/dynamic-provider`, which the CLI runs as
 * pulumi-resource-pulumi-nodejs) in its own process, and a gRPC client that calls it the way
 * pkg/resource/plugin/provider_plugin.go does.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as readline from "node:readline";
import * as grpc from "@grpc/grpc-js";
import { Struct } from "google-protobuf/google/protobuf/struct_pb";
import * as provproto from "@pulumi/pulumi/proto/provider_pb";
import * as provrpc from "@pulumi/pulumi/proto/provider_grpc_pb";
import * as statusproto from "@pulumi/pulumi/proto/status_pb";
import { stripSecretsMap, type PropertyMap } from "./props";
import { childEnv, inspectFixPath, sdkModule } from "./sdk";

export interface CheckResult {
  inputs: PropertyMap;
  failures: { property: string; reason: string }[];
}

export interface DiffResult {
  changes: "some" | "none" | "unknown";
  replaces: string[];
  deleteBeforeReplace: boolean;
}

/** A Create or Update that failed after the object was made (pulumirpc.ErrorResourceInitFailed). */
export class InitFailedError extends Error {
  constructor(
    message: string,
    readonly id: string,
    readonly properties: PropertyMap,
    readonly reasons: string[],
  ) {
    super(message);
  }
}

const toStruct = (m: PropertyMap): Struct =>
  Struct.fromJavaScript(stripSecretsMap(m) as Record<string, never>);
const fromStruct = (s: Struct | undefined): PropertyMap => (s ? (s.toJavaScript() as PropertyMap) : {});

export interface ProviderOptions {
  programDir: string;
  project: string;
  stack: string;
  engineAddress: string;
  /** Stack config, fully qualified keys, plain values (Configure args). */
  config: Record<string, string>;
  env: Record<string, string>;
  onLog: (line: string) => void;
}

export class DynamicProvider {
  private constructor(
    private readonly proc: ChildProcess,
    private readonly client: provrpc.ResourceProviderClient,
  ) {}

  static async start(o: ProviderOptions): Promise<DynamicProvider> {
    const entry = sdkModule(o.programDir, "cmd/dynamic-provider");
    const proc = spawn(process.execPath, ["--require", inspectFixPath(), entry, o.engineAddress], {
      cwd: o.programDir,
      env: childEnv({
        ...o.env,
        PULUMI_NODEJS_PROJECT: o.project,
        PULUMI_NODEJS_STACK: o.stack,
        PULUMI_CONFIG: JSON.stringify(o.config),
      }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    readline.createInterface({ input: proc.stderr! }).on("line", (l) => o.onLog(l));
    const port = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error("dynamic provider did not print its port within 60 s")),
        60_000,
      );
      const lines = readline.createInterface({ input: proc.stdout! });
      let first = true;
      lines.on("line", (l) => {
        if (first) {
          first = false;
          clearTimeout(timer);
          resolve(l.trim());
        } else o.onLog(l);
      });
      proc.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`dynamic provider exited with code ${String(code)} before it started`));
      });
    });
    if (!/^\d+$/.test(port)) throw new Error(`dynamic provider printed "${port}" instead of its port`);
    const client = new provrpc.ResourceProviderClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    const p = new DynamicProvider(proc, client);
    // Configure once, as the engine does for the default provider (pkg/resource/deploy/providers/registry.go).
    const req = new provproto.ConfigureRequest();
    req.setArgs(Struct.fromJavaScript(o.config));
    req.setAcceptsecrets(true);
    req.setAcceptresources(false);
    await p.unary<provproto.ConfigureResponse>("configure", req);
    return p;
  }

  private unary<T>(method: string, req: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      const fn = (
        this.client as unknown as Record<
          string,
          (r: unknown, cb: (e: grpc.ServiceError | null, v: T) => void) => void
        >
      )[method];
      fn.call(this.client, req, (err, resp) => (err ? reject(decodeError(method, err)) : resolve(resp)));
    });
  }

  async check(
    urn: string,
    olds: PropertyMap,
    news: PropertyMap,
    randomSeed?: Uint8Array,
  ): Promise<CheckResult> {
    const req = new provproto.CheckRequest();
    req.setUrn(urn);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    if (randomSeed) req.setRandomseed(randomSeed);
    const resp = await this.unary<provproto.CheckResponse>("check", req);
    return {
      inputs: fromStruct(resp.getInputs()),
      failures: resp.getFailuresList().map((f) => ({ property: f.getProperty(), reason: f.getReason() })),
    };
  }

  async diff(
    urn: string,
    id: string,
    oldInputs: PropertyMap,
    olds: PropertyMap,
    news: PropertyMap,
    ignoreChanges: string[],
  ): Promise<DiffResult> {
    const req = new provproto.DiffRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setOldInputs(toStruct(oldInputs));
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    req.setIgnorechangesList(ignoreChanges);
    const resp = await this.unary<provproto.DiffResponse>("diff", req);
    const C = provproto.DiffResponse.DiffChanges;
    const c = resp.getChanges();
    return {
      changes: c === C.DIFF_SOME ? "some" : c === C.DIFF_NONE ? "none" : "unknown",
      replaces: resp.getReplacesList(),
      deleteBeforeReplace: resp.getDeletebeforereplace(),
    };
  }

  async create(urn: string, inputs: PropertyMap): Promise<{ id: string; outputs: PropertyMap }> {
    const req = new provproto.CreateRequest();
    req.setUrn(urn);
    req.setProperties(toStruct(inputs));
    const resp = await this.unary<provproto.CreateResponse>("create", req);
    return { id: resp.getId(), outputs: fromStruct(resp.getProperties()) };
  }

  async read(
    urn: string,
    id: string,
    outputs: PropertyMap,
    inputs: PropertyMap,
  ): Promise<{ id: string; outputs: PropertyMap; inputs?: PropertyMap }> {
    const req = new provproto.ReadRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setProperties(toStruct(outputs));
    req.setInputs(toStruct(inputs));
    const resp = await this.unary<provproto.ReadResponse>("read", req);
    return {
      id: resp.getId(),
      outputs: fromStruct(resp.getProperties()),
      inputs: resp.hasInputs() ? fromStruct(resp.getInputs()) : undefined,
    };
  }

  async update(
    urn: string,
    id: string,
    olds: PropertyMap,
    news: PropertyMap,
    oldInputs: PropertyMap,
    ignoreChanges: string[],
  ): Promise<PropertyMap> {
    const req = new provproto.UpdateRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    req.setOldInputs(toStruct(oldInputs));
    req.setIgnorechangesList(ignoreChanges);
    const resp = await this.unary<provproto.UpdateResponse>("update", req);
    return fromStruct(resp.getProperties());
  }

  async delete(urn: string, id: string, outputs: PropertyMap, inputs: PropertyMap): Promise<void> {
    const req = new provproto.DeleteRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setProperties(toStruct(outputs));
    req.setOldInputs(toStruct(inputs));
    await this.unary<unknown>("delete", req);
  }

  /** Stops the plugin (the engine closes plugins at the end of a deployment). */
  async close(): Promise<void> {
    this.client.close();
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise<void>((resolve) => this.proc.once("exit", () => resolve()));
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
  }
}

/** Turns a gRPC error into an Error, unpacking ErrorResourceInitFailed details when present. */
function decodeError(method: string, err: grpc.ServiceError): Error {
  const bins = err.metadata?.get("grpc-status-details-bin") ?? [];
  for (const bin of bins) {
    const status = statusproto.Status.deserializeBinary(new Uint8Array(bin as Buffer));
    for (const any of status.getDetailsList()) {
      if (any.getTypeName() !== "pulumirpc.ErrorResourceInitFailed") continue;
      const d = provproto.ErrorResourceInitFailed.deserializeBinary(any.getValue_asU8());
      return new InitFailedError(
        err.details || err.message,
        d.getId(),
        fromStruct(d.getProperties()),
        d.getReasonsList(),
      );
    }
  }
  return new Error(`dynamic provider ${method} failed: ${err.details || err.message}`);
}
