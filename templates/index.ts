// Public surface of the render layer: view builders, renderers and the pure helpers they share.
export * from "./validate";
export * from "./net";
export * from "./dnsmasq";
export * from "./cloudInit";
export * from "./domain";
export * from "./haproxy";
export { templatesDir } from "./render";
export * from "./naming";
