// Keystone-style identity resources (records on the controller) and the record layer they share.
export * from "./password";
export * from "./records";
export * from "./spec";
export * from "./resources";
