// Public surface of the render layer: view builders, renderers and the pure helpers they share.
export * from "./validate";
export * from "../core/net";
export * from "./dnsmasq";
export * from "./cloudInit";
export * from "./domain";
export * from "./haproxy";
export { templatesDir } from "./render";
export { KVMLAB_STATE_DIR, loadBalancerPaths } from "../core/paths";
export * from "./server";
export * from "./subnet";
export * from "../core/router";
