// Components users compose; each file holds one component and its Args.
export * from "./hosts";
export * from "./network";
export * from "./image";
export * from "./server";
