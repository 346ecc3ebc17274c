/**
 * The autoscale scripts that run as root on the hosts (the agent and the forced member
 * command), read from the package's own templates/autoscale/ — never taken from an input.
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** One of templates/autoscale/*.sh as shipped with this package (source tree or dist). */
export function shippedScript(name: "agent.sh" | "member.sh"): string {
  const candidates = [
    path.resolve(__dirname, "..", "..", "templates", "autoscale"),
    path.resolve(__dirname, "..", "..", "..", "templates", "autoscale"),
  ];
  for (const dir of candidates) {
    const f = path.join(dir, name);
    if (fs.existsSync(f)) {
      const text = fs.readFileSync(f, "utf8");
      if (!text.startsWith("#!/bin/sh\n"))
        throw new Error(`kvmlab: ${f} is not the shipped autoscale script`);
      return text;
    }
  }
  throw new Error(`kvmlab autoscale script ${name} not found; looked in ${candidates.join(", ")}`);
}
