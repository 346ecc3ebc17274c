// Public surface of the preview report: parse `pulumi preview --json`, render the PR comment.
export * from "./digest";
export * from "./values";
export * from "./lineDiff";
export * from "./report";
