/**
 * The one Handlebars environment kvmlab renders with: isolated (`Handlebars.create()`), strict
 * (a missing field throws instead of rendering empty), templates read once from the source tree.
 *
 * Escaping policy: the domain XML template keeps Handlebars' HTML/XML escaping; haproxy.cfg,
 * dnsmasq.conf and cloud-init are compiled with `noEscape` and rely on their views, which
 * reject every value that could break out of its context. YAML values go through the `yaml`
 * helper (JSON scalars are valid YAML), so quoting is done in one place.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import Handlebars from "handlebars";

type TemplateName =
  | "libvirt/domain.xml"
  | "haproxy/haproxy.cfg"
  | "dnsmasq/dnsmasq.conf"
  | "cloudinit/meta-data"
  | "cloudinit/user-data"
  | "cloudinit/network-config";

const XML_TEMPLATES: ReadonlySet<TemplateName> = new Set(["libvirt/domain.xml"]);

/**
 * The folder holding the `.hbs` files. tsc does not copy them, so from `dist/templates/render.js`
 * this resolves back to the source tree's `templates/`; from the source tree it is `__dirname`.
 */
export function templatesDir(): string {
  const candidates = [__dirname, path.resolve(__dirname, "..", "..", "templates")];
  for (const dir of candidates) {
    if (fs.existsSync(path.join(dir, "libvirt", "domain.xml.hbs"))) return dir;
  }
  throw new Error(`kvmlab templates not found; looked in ${candidates.join(", ")}`);
}

function xmlEscape(value: string): string {
  return value
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");
}

/**
 * A YAML block literal when the text survives one unchanged (ends in exactly one newline,
 * first line not indented, no carriage returns); otherwise a double-quoted JSON scalar.
 */
function yamlBlock(value: string, indent: number): string {
  const fits =
    value.length > 1 &&
    value.endsWith("\n") &&
    !value.endsWith("\n\n") &&
    !/^[ \t\n]/.test(value) &&
    !value.includes("\r");
  if (!fits) return JSON.stringify(value);
  const pad = " ".repeat(indent);
  const lines = value.slice(0, -1).split("\n");
  return "|\n" + lines.map((line) => (line === "" ? "" : pad + line)).join("\n");
}

function createEnv(): typeof Handlebars {
  const env = Handlebars.create();
  // Minimal XML escaping for text that reviewers read (a kernel command line with '='):
  // Handlebars' default escaping would turn '=' into '&#x3D;'.
  env.registerHelper("xml", (value: unknown) => new env.SafeString(xmlEscape(String(value))));
  env.registerHelper("yaml", (value: unknown) => new env.SafeString(JSON.stringify(value)));
  env.registerHelper(
    "yamlBlock",
    (value: unknown, indent: unknown) => new env.SafeString(yamlBlock(String(value), Number(indent))),
  );
  env.registerHelper("join", (list: unknown, sep: unknown) =>
    (list as unknown[]).map(String).join(typeof sep === "string" ? sep : ","),
  );
  env.registerHelper("eq", (a: unknown, b: unknown) => a === b);
  return env;
}

let compiled: Map<TemplateName, Handlebars.TemplateDelegate> | undefined;

function template(name: TemplateName): Handlebars.TemplateDelegate {
  if (compiled === undefined) {
    const env = createEnv();
    const dir = templatesDir();
    const names: TemplateName[] = [
      "libvirt/domain.xml",
      "haproxy/haproxy.cfg",
      "dnsmasq/dnsmasq.conf",
      "cloudinit/meta-data",
      "cloudinit/user-data",
      "cloudinit/network-config",
    ];
    compiled = new Map(
      names.map((n) => [
        n,
        env.compile(fs.readFileSync(path.join(dir, `${n}.hbs`), "utf8"), {
          strict: true,
          noEscape: !XML_TEMPLATES.has(n),
          preventIndent: true,
        }),
      ]),
    );
  }
  return compiled.get(name) as Handlebars.TemplateDelegate;
}

/** Renders one template. Callers pass views built by the `to…View` functions only. */
export function renderTemplate(name: TemplateName, view: object): string {
  return template(name)(view, { allowProtoPropertiesByDefault: false });
}
