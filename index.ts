/**
 * kvmlab's public face: `import * as kvmlab from "kvmlab"`.
 *
 *   kvmlab.Network, kvmlab.Server, kvmlab.Image, kvmlab.resolveHosts, …
 *                       the components a program composes (components/), first and unqualified
 *   kvmlab.Flavor, kvmlab.Keypair, kvmlab.Domain, kvmlab.Project, kvmlab.User, kvmlab.Group,
 *   kvmlab.Role, kvmlab.RoleAssignment, kvmlab.ConsoleProxy
 *                       dynamic resources that need no component around them (kvmlab.Identity
 *                       wires the identity ones in order; docs/identity.md)
 *   kvmlab.readSandboxStatus, kvmlab.sandbox.*
 *                       what a running `kvmlab sandbox` publishes (components/sandbox.ts)
 *   kvmlab.resources.*  every raw dynamic resource and its provider (provider/): Network, Subnet,
 *                       Image, Flavor, Keypair, Server, their Args, pure checks and host steps.
 *                       Its Network, Image and Server are the single resources the components
 *                       wire, hence the namespace: a name means one thing at the top level.
 *
 * docs/package.md says how to install kvmlab into a Pulumi program.
 */
// First: Node 20.20 hangs formatting Pulumi's errors (nodejs/node#64011); see the module.
import "./provider/nodeInspectFix";
export * from "./components";
export { Flavor, type FlavorArgs, Keypair, type KeypairArgs, type HostConnectionArgs } from "./provider";
export {
  FloatingIp,
  type FloatingIpArgs,
  Router,
  type RouterArgs,
  SecurityGroup,
  type SecurityGroupArgs,
  SecurityGroupPort,
  type SecurityGroupPortArgs,
  Domain,
  Project,
  User,
  Group,
  Role,
  RoleAssignment,
  ConsoleProxy,
  type DomainArgs,
  type ProjectArgs,
  type UserArgs,
  type GroupArgs,
  type RoleArgs,
  type RoleAssignmentArgs,
  type ConsoleProxyArgs,
} from "./provider";
export * as resources from "./provider";
export * as sandbox from "./components/sandbox";
