// Components users compose; each file holds one component and its Args. The root index.ts
// re-exports this barrel first, unqualified.
export * from "./hosts";
export * from "./network";
export * from "./image";
export * from "./server";
export { readSandboxStatus, type SandboxHost, type SandboxStatus } from "./sandbox";
export * from "./loadBalancer";
export * from "./identity";
export * from "./volume";
export * from "./threeTierApp";
export * from "./autoscaleGroup";
