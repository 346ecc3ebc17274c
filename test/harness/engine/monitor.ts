/**
 * The ResourceMonitor and Engine gRPC services the program's SDK talks to, served on 127.0.0.1.
 * Registration requests are decoded into plain objects and handed to a {@link MonitorHandler};
 * the answer goes back only when the step has finished, so the SDK orders dependent resources
 * by itself (pitfall 7).
 */
import * as grpc from "@grpc/grpc-js";
import { Empty } from "google-protobuf/google/protobuf/empty_pb";
import { Struct } from "google-protobuf/google/protobuf/struct_pb";
import * as engproto from "@pulumi/pulumi/proto/engine_pb";
import * as engrpc from "@pulumi/pulumi/proto/engine_grpc_pb";
import * as resproto from "@pulumi/pulumi/proto/resource_pb";
import * as resrpc from "@pulumi/pulumi/proto/resource_grpc_pb";
import type { PropertyMap } from "./props";

/** A RegisterResource request, decoded. */
export interface Registration {
  type: string;
  name: string;
  custom: boolean;
  parent: string;
  inputs: PropertyMap;
  dependencies: string[];
  propertyDependencies: Record<string, string[]>;
  protect: boolean;
  retainOnDelete: boolean;
  /** The deleteBeforeReplace option when the program set it, else undefined. */
  deleteBeforeReplace: boolean | undefined;
  ignoreChanges: string[];
  replaceOnChanges: string[];
  additionalSecretOutputs: string[];
  /** Names of options the harness does not support that the program used. */
  unsupported: string[];
}

export interface RegistrationResult {
  urn: string;
  id: string;
  outputs: PropertyMap;
}

export interface MonitorHandler {
  register(r: Registration): Promise<RegistrationResult>;
  registerOutputs(urn: string, outputs: PropertyMap): void;
  log(severity: "debug" | "info" | "warning" | "error", message: string, urn: string): void;
}

/** Monitor features the harness advertises (SupportsFeature). Only secrets: see pitfall 11. */
const FEATURES = new Set(["secrets"]);

function unsupportedOptions(req: resproto.RegisterResourceRequest): string[] {
  const out: string[] = [];
  if (req.getAliasesList().length > 0 || req.getAliasurnsList().length > 0) out.push("aliases");
  if (req.getImportid() !== "") out.push("import");
  if (req.getRemote()) out.push("remote (multi-language) components");
  if (req.getProvider() !== "" || req.getProvidersMap().getLength() > 0)
    out.push("explicit providers (provider/providers option)");
  if (req.getTransformsList().length > 0) out.push("transforms");
  const h = req.getHooks();
  if (h) {
    const lists = [
      h.getBeforeCreateList(),
      h.getAfterCreateList(),
      h.getBeforeUpdateList(),
      h.getAfterUpdateList(),
      h.getBeforeDeleteList(),
      h.getAfterDeleteList(),
      h.getOnErrorList(),
    ];
    if (lists.some((l) => l.length > 0)) out.push("resource hooks");
  }
  if (req.getDeletedwith() !== "") out.push("deletedWith");
  if (req.getReplaceWithList().length > 0) out.push("replaceWith");
  if (req.hasReplacementTrigger()) out.push("replacementTrigger");
  const t = req.getCustomtimeouts();
  if (t && (t.getCreate() !== "" || t.getUpdate() !== "" || t.getDelete() !== "")) out.push("customTimeouts");
  if (req.getEnvvarmappingsMap().getLength() > 0) out.push("envVarMappings");
  return out;
}

function decode(req: resproto.RegisterResourceRequest): Registration {
  const propertyDependencies: Record<string, string[]> = {};
  req.getPropertydependenciesMap().forEach((v, k) => {
    propertyDependencies[k] = v.getUrnsList();
  });
  return {
    type: req.getType(),
    name: req.getName(),
    custom: req.getCustom(),
    parent: req.getParent(),
    inputs: (req.getObject()?.toJavaScript() ?? {}) as PropertyMap,
    dependencies: req.getDependenciesList(),
    propertyDependencies,
    protect: req.hasProtect() ? req.getProtect() === true : false,
    retainOnDelete: req.hasRetainondelete() ? req.getRetainondelete() === true : false,
    deleteBeforeReplace: req.getDeletebeforereplacedefined() ? req.getDeletebeforereplace() : undefined,
    ignoreChanges: req.getIgnorechangesList(),
    replaceOnChanges: req.getReplaceonchangesList(),
    additionalSecretOutputs: req.getAdditionalsecretoutputsList(),
    unsupported: unsupportedOptions(req),
  };
}

function fail(cb: grpc.sendUnaryData<never>, message: string, code = grpc.status.UNKNOWN): void {
  cb({ code, details: message, message } as grpc.ServiceError, null);
}

function unsupported(feature: string) {
  return (_call: unknown, cb: grpc.sendUnaryData<never>): void =>
    fail(
      cb,
      `${feature} is not supported by the kvmlab engine harness (test infrastructure; see docs/engine-harness.md)`,
      grpc.status.UNIMPLEMENTED,
    );
}

export class MonitorServer {
  private readonly server = new grpc.Server({
    "grpc.max_receive_message_length": 400 * 1024 * 1024,
    "grpc.max_send_message_length": 400 * 1024 * 1024,
  });
  private rootUrn = "";
  address = "";

  constructor(private readonly handler: MonitorHandler) {
    const monitor: resrpc.IResourceMonitorServer = {
      getDeploymentInfo: unsupported("GetDeploymentInfo"),
      supportsFeature: (call, cb) => {
        const resp = new resproto.SupportsFeatureResponse();
        resp.setHassupport(FEATURES.has(call.request.getId()));
        cb(null, resp);
      },
      invoke: (call, cb) =>
        fail(
          cb,
          `invoke of "${call.request.getTok()}" is not supported by the kvmlab engine harness`,
          grpc.status.UNIMPLEMENTED,
        ),
      call: (call, cb) =>
        fail(
          cb,
          `method calls ("${call.request.getTok()}") are not supported by the kvmlab engine harness`,
          grpc.status.UNIMPLEMENTED,
        ),
      readResource: (call, cb) =>
        fail(
          cb,
          `reading existing resources (.get() of ${call.request.getType()} "${call.request.getName()}") is not supported by the kvmlab engine harness`,
          grpc.status.UNIMPLEMENTED,
        ),
      registerResource: (call, cb) => {
        let reg: Registration;
        try {
          reg = decode(call.request);
        } catch (e) {
          fail(cb, `cannot decode RegisterResource: ${(e as Error).message}`);
          return;
        }
        this.handler.register(reg).then(
          (r) => {
            const resp = new resproto.RegisterResourceResponse();
            resp.setUrn(r.urn);
            resp.setId(r.id);
            resp.setObject(Struct.fromJavaScript(r.outputs as Record<string, never>));
            resp.setResult(resproto.Result.SUCCESS);
            cb(null, resp);
          },
          (e: Error) => fail(cb, e.message),
        );
      },
      registerResourceOutputs: (call, cb) => {
        this.handler.registerOutputs(
          call.request.getUrn(),
          (call.request.getOutputs()?.toJavaScript() ?? {}) as PropertyMap,
        );
        cb(null, new Empty());
      },
      registerStackTransform: unsupported("transforms (registerStackTransform)"),
      registerStackInvokeTransform: unsupported("invoke transforms"),
      registerResourceHook: unsupported("resource hooks"),
      registerErrorHook: unsupported("error hooks"),
      registerPackage: unsupported("packages (RegisterPackage, parameterized providers)"),
      // Every registration is answered only after its step finished, so there is nothing to wait for.
      signalAndWaitForShutdown: (_call, cb) => cb(null, new Empty()),
    };
    const S = engproto.LogSeverity;
    const engine: engrpc.IEngineServer = {
      log: (call, cb) => {
        const r = call.request;
        const sev = r.getSeverity();
        const severity =
          sev === S.ERROR ? "error" : sev === S.WARNING ? "warning" : sev === S.INFO ? "info" : "debug";
        this.handler.log(severity, r.getMessage(), r.getUrn());
        cb(null, new Empty());
      },
      getRootResource: (_call, cb) => {
        const resp = new engproto.GetRootResourceResponse();
        resp.setUrn(this.rootUrn);
        cb(null, resp);
      },
      setRootResource: (call, cb) => {
        this.rootUrn = call.request.getUrn();
        cb(null, new engproto.SetRootResourceResponse());
      },
      startDebugging: unsupported("debugging"),
      requirePulumiVersion: (_call, cb) => cb(null, new engproto.RequirePulumiVersionResponse()),
    };
    this.server.addService(
      resrpc.ResourceMonitorService,
      monitor as unknown as grpc.UntypedServiceImplementation,
    );
    this.server.addService(engrpc.EngineService, engine as unknown as grpc.UntypedServiceImplementation);
  }

  async start(): Promise<string> {
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    this.address = `127.0.0.1:${port}`;
    return this.address;
  }

  stop(): void {
    this.server.forceShutdown();
  }
}
