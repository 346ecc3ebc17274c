/**
 * The provider kit: what every kvmlab resource provider shares. See docs/adding-a-resource.md
 * for what a resource supplies.
 *
 *   check.ts     Failure, FailureList, isUnknown (THE preview-unknown rule), rules table
 *   kv.ts        parseKeyValues (remote read steps print key=value lines)
 *   host.ts      HostConnectionArgs, normalizeHosts, pinnedHost(s), hostKeyRecord,
 *                recordHostKeys, onEveryHost, hostNamed
 *   provider.ts  defineResource(spec) → {spec, provider}; inputsOf, changedKeys, sameValue,
 *                canonicalJson
 *   resource.ts  KvmlabResource (base class; sets the `owner` input)
 *   owner.ts     ownerOf, checkedOwner, claimStep / guardStep / releaseOwnerStep (issue 15)
 *   quota.ts     the `quota` declaration: project refs, charges (issue 14; ledger in ../quota.ts)
 */
export * from "./check";
export * from "./kv";
export * from "./host";
export * from "./provider";
export * from "./resource";
export * from "./owner";
export * from "./safety";
export * from "./quota";
