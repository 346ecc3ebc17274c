// Public surface of the topology picture: model (from a lab or stack outputs), layout, SVG/HTML.
export * from "./model";
export * from "./render";
