// Dynamic resources and the host layer they share.
export * from "./host";
export * from "./ipam";
export * from "./network";
export * from "./subnet";
export * from "./image";
export * from "./flavor";
export * from "./keypair";
export * from "./server";
export * from "./kit";
