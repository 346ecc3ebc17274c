// One linter for the whole tree: typescript-eslint's recommended rules plus the layering of
// docs/architecture.md ("who may import whom"):
//
//   core/        nothing of kvmlab; no Pulumi, SSH, Handlebars, YAML or file I/O
//   templates/   core/ only (plus Handlebars)
//   lab/         core/ and templates/ (and the schema in stacks/); no Pulumi, no SSH
//   provider/    core/ only (never renders: no templates/, no Handlebars, no YAML)
//   components/  core/, templates/, provider/
//   stacks/      (the program that applies a lab) components/ and lab/
//   report/      core/, templates/ and lab/ (pure review outputs); no Pulumi, no SSH, no file I/O
//   cli/, test/  everything
//
// Relative forms of every depth are caught (`../templates`, `../../templates/x`), by regex.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

/** A pattern refusing kvmlab folders `names`, however many `../` lead to them. */
const folders = (names, message) => ({
  regex: `^(\\./)?(\\.\\./)+(${names.join("|")})(/|$)`,
  message,
});
const PULUMI = {
  group: ["@pulumi/*"],
  message: "no Pulumi SDK here: it belongs in components/ and provider/",
};
const SSH = { group: ["node-ssh", "ssh2"], message: "no SSH here: only provider/ talks to hosts" };

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
    files: ["core/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            folders(
              ["templates", "lab", "provider", "components", "stacks", "cli", "test", "index"],
              "core/ imports nothing of kvmlab: it is the floor everyone else stands on",
            ),
            PULUMI,
            SSH,
            {
              group: ["handlebars", "yaml", "ajv", "fs", "node:fs", "child_process", "node:child_process"],
              message: "core/ is pure: no templates, no YAML, no I/O",
            },
          ],
        },
      ],
    },
  },
  {
    files: ["templates/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            folders(
              ["lab", "provider", "components", "stacks", "cli", "test", "index"],
              "templates/ imports only core/",
            ),
            PULUMI,
            SSH,
          ],
        },
      ],
    },
  },
  {
    files: ["lab/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            folders(
              ["provider", "components", "cli", "test", "index"],
              "lab/ imports only core/ and templates/",
            ),
            // The schema lives beside the YAML definitions in stacks/; nothing else of stacks/.
            {
              regex: "^(\\.\\./)+stacks/(?!lab\\.schema\\.json$)",
              message: "lab/ takes only the schema from stacks/",
            },
            PULUMI,
            SSH,
          ],
        },
      ],
    },
  },
  {
    files: ["provider/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            folders(
              ["templates", "lab", "components", "stacks", "cli", "test", "index"],
              "provider/ imports only core/: the provider does not render",
            ),
            { group: ["handlebars", "yaml"], message: "provider/ does not render or parse lab definitions" },
          ],
        },
      ],
    },
  },
  {
    files: ["report/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            folders(
              ["provider", "components", "stacks", "cli", "test", "index"],
              "report/ imports only core/, templates/ and lab/",
            ),
            PULUMI,
            SSH,
            {
              group: ["fs", "node:fs", "child_process", "node:child_process"],
              message: "report/ is pure: the cli/ commands do the I/O",
            },
          ],
        },
      ],
    },
  },
  {
    files: ["components/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            folders(
              ["lab", "stacks", "cli", "test", "index"],
              "components/ import core/, templates/ and provider/",
            ),
          ],
        },
      ],
    },
  },
  {
    files: ["stacks/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            folders(
              ["core", "templates", "provider", "cli", "test"],
              "the stacks/ program applies a lab through components/ and lab/",
            ),
          ],
        },
      ],
    },
  },
);
