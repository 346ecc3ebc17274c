/**
 * The base class of every kvmlab dynamic resource: a resource class keeps only its `declare`
 * lines and its defaults, and passes its {@link ResourceKind}; the kit fills the output keys,
 * the secret outputs and the type name.
 */
import * as pulumi from "@pulumi/pulumi";
import { packagedProvider } from "../packaged";
import { ownerOf } from "./owner";
import type { ResourceKind } from "./provider";

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
    // The owner of every host object this resource makes: derived here, in the program, because
    // a dynamic provider never sees the URN (see kit/owner.ts).
    if ((kind.spec.inputKeys as readonly string[]).includes("owner") && inputs.owner === undefined)
      props.owner = ownerOf({
        pulumiProject: pulumi.getProject(),
        stack: pulumi.getStack(),
        type: kind.spec.type,
        name,
        ...(typeof inputs.ownerProject === "string" ? { project: inputs.ownerProject } : {}),
      });
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
