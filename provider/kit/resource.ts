/**
 * The base class of every kvmlab dynamic resource: a resource class keeps only its `declare`
 * lines and its defaults, and passes its {@link ResourceKind}; the kit fills the output keys,
 * the secret outputs and the type name.
 */
import * as pulumi from "@pulumi/pulumi";
import { packagedProvider } from "../packaged";
import { ownerOf } from "./owner";
import type { ResourceKind } from "./provider";
import { projectRefOf } from "./quota";

/**
 * The identity project a resource belongs to: a Project resource (its `recordId`), a
 * `<domain>/<name>` id or a bare name (domain "Default"). "" = none.
 */
export type ProjectRef = pulumi.Input<string> | { readonly recordId: pulumi.Input<string> };

/** The argument every kvmlab resource takes (issue 14). */
export interface InProjectArgs {
  /**
   * The identity project: fills the owner's `project=` segment and is charged the resource's
   * quotas. @default the stack's `kvmlab:project` config value, else none (nothing charged)
   */
  readonly project?: ProjectRef;
}

/** The stack config key naming the default project of every kvmlab resource in the program. */
export const DEFAULT_PROJECT_CONFIG = "kvmlab:project";

/** `project`, or the stack's default project, as an input of its `<domain>/<name>` id ("" = none). */
export function resolveProject(project: unknown): pulumi.Input<string> {
  const given =
    project === undefined || project === null ? (new pulumi.Config("kvmlab").get("project") ?? "") : project;
  const ref =
    typeof given === "object" && given !== null && "recordId" in given && !pulumi.Output.isInstance(given)
      ? (given as { recordId: pulumi.Input<string> }).recordId
      : (given as pulumi.Input<string>);
  return typeof ref === "string" ? projectRefOf(ref) : pulumi.output(ref).apply((r) => projectRefOf(r ?? ""));
}

/**
 * The owner names taken in the running program, per Pulumi run (keyed by its resource monitor:
 * one per `pulumi up`/`preview`, a new one per `setMocks`).
 */
const ownerNamesByRun = new WeakMap<object, Set<string>>();

/**
 * Refuses a second kvmlab resource of the same type and name in one program. The owner on the
 * hosts is `<project>/<stack>/<Type>/<name>` (kit/owner.ts): Pulumi tells the two apart by their
 * parents' types in the URN, but on the hosts they would be ONE owner, so each could adopt,
 * change or delete what the other made. Without a monitor (plain unit code) there is no run to
 * check against.
 */
export function takeOwnerName(type: string, name: string): void {
  const monitor = pulumi.runtime.getMonitor() as object | undefined;
  if (monitor === undefined || monitor === null) return;
  let names = ownerNamesByRun.get(monitor);
  if (!names) ownerNamesByRun.set(monitor, (names = new Set()));
  if (names.has(`${type}/${name}`))
    throw new Error(
      `kvmlab:${type} "${name}": this program already has a ${type} named "${name}" (under another parent). ` +
        `Both would have the owner ".../${type}/${name}" on the hosts, so each could adopt, change or delete ` +
        `what the other made. Give one of them another name (components prefix their children with their own name).`,
    );
  names.add(`${type}/${name}`);
}

export abstract class KvmlabResource<I extends object, O extends I> extends pulumi.dynamic.Resource {
  constructor(
    kind: ResourceKind<I, O>,
    name: string,
    inputs: Record<string, unknown>,
    opts: pulumi.CustomResourceOptions = {},
  ) {
    const props: Record<string, unknown> = {};
    for (const k of kind.spec.inputKeys) props[k] = inputs[k];
    for (const k of kind.spec.outputKeys) props[k] = undefined;
    const owned = (kind.spec.inputKeys as readonly string[]).includes("owner");
    // The identity project (issue 14): the argument or the stack's default. A quota'd resource
    // carries it as its `project` input; every owned resource carries it in its owner.
    const project = owned || kind.spec.quota ? resolveProject(inputs.project) : "";
    if (kind.spec.quota) {
      props.project = project;
      props.quotaController = undefined;
    }
    // The owner of every host object this resource makes: derived here, in the program, because
    // a dynamic provider never sees the URN (see kit/owner.ts).
    if (owned && inputs.owner === undefined) {
      takeOwnerName(kind.spec.type, name);
      const ownerFor = (p: string): string =>
        ownerOf({
          pulumiProject: pulumi.getProject(),
          stack: pulumi.getStack(),
          type: kind.spec.type,
          name,
          ...(p !== "" ? { project: p } : {}),
        });
      props.owner = typeof project === "string" ? ownerFor(project) : pulumi.output(project).apply(ownerFor);
    }
    // The hosts carry private keys: stored as a secret in the state's INPUTS too, also when a
    // program passes plain hosts to a raw resource (components already pass secrets).
    if ((kind.spec.inputKeys as readonly string[]).includes("hosts") && props.hosts !== undefined)
      props.hosts = pulumi.secret(props.hosts as pulumi.Input<unknown>);
    const secrets = [...kind.spec.secretOutputs];
    super(
      // Installed from node_modules, state holds a require of the provider's module, not its code.
      packagedProvider(kind.provider),
      name,
      props,
      secrets.length > 0 ? pulumi.mergeOptions(opts, { additionalSecretOutputs: secrets }) : opts,
      "kvmlab",
      kind.spec.type,
    );
  }
}
