// Node 20.20 hangs formatting Pulumi's errors (nodejs/node#64011): installed on load.
import "./nodeInspectFix";
// Dynamic resources and the host layer they share. The root index.ts exports this barrel as
// the `resources` namespace: its Network, Image and Server are the raw resources the components
// of the same names wire.
export * from "./host";
export * from "./ipam";
export * from "./network";
export * from "./subnet";
export * from "./image";
export * from "./flavor";
export * from "./keypair";
export * from "./server";
export * from "./kit";
export * from "./loadBalancer";
export * from "./router";
export * from "./floatingIp";
export * from "./securityGroup";
export * from "./identity";
export * from "./quota";
export * from "./console";
export * from "./volume";
export * from "./autoscale";
