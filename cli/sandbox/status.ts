/**
 * The sandbox status contract moved to components/sandbox.ts, where programs may import it
 * (components never reach up into cli/); the sandbox command keeps reading it through this name.
 */
export * from "../../components/sandbox";
