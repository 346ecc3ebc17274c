// One linter for the whole tree: typescript-eslint's recommended rules plus the layering
// rules from docs/architecture.md (templates are pure; the provider never renders).
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "examples/**/node_modules/**", "bin/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      // Provider methods require() their dependencies lazily so closure serialization stays safe.
      "@typescript-eslint/no-require-imports": "off",
    },
  },
  {
    files: ["templates/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        { patterns: ["@pulumi/*", "../provider/*", "../components/*", "node-ssh"] },
      ],
    },
  },
  {
    files: ["provider/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        { patterns: ["handlebars", "yaml", "../templates/*", "../components/*", "../stacks/*"] },
      ],
    },
  },
);
