/**
 * The meaning checks of a lab definition, run after (and independently of) the schema so one
 * pass reports everything: unique names, references, address plans, flavor fit, load balancer
 * consistency. Works on the raw parsed YAML and tolerates wrong shapes (the schema reports those).
 * One module per lab section; they share what earlier sections found through {@link CheckContext}.
 */
import type { Locator } from "../locate";
import type { LabIssue } from "../model";
import { checkApps } from "./apps";
import { checkCapacity } from "./capacity";
import { CheckContext, type Rec } from "./context";
import { checkFlavors } from "./flavors";
import { checkIdentity } from "./identity";
import { checkLoadBalancers } from "./loadBalancers";
import { checkNames } from "./names";
import { checkNetworks } from "./networks";
import { checkRouters } from "./routers";
import { checkSecurityGroups } from "./securityGroups";
import { checkServers } from "./servers";
import { checkVolumes } from "./volumes";

/** The sections in the order they run: each may use what the ones before it found. */
const SECTIONS: readonly ((c: CheckContext) => void)[] = [
  checkNames,
  checkIdentity,
  checkNetworks,
  checkRouters,
  checkSecurityGroups,
  checkFlavors,
  checkServers,
  checkVolumes,
  checkLoadBalancers,
  checkCapacity,
  checkApps,
];

export function checkSemantics(data: Rec, at: Locator, schemaIssuePaths: readonly string[] = []): LabIssue[] {
  const c = new CheckContext(data, at, schemaIssuePaths);
  for (const section of SECTIONS) section(c);
  return c.issues;
}
