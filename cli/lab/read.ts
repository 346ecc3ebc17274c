/** One line saying why a lab file cannot be read and what to do about it. */
export function unreadable(file: string, err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT")
    return `cannot read ${file}: no such file; check the path (e.g. stacks/three-tier.yaml)`;
  if (code === "EISDIR") return `cannot read ${file}: it is a folder; give the lab's YAML file`;
  if (code === "EACCES")
    return `cannot read ${file}: permission denied; make it readable or run as its owner`;
  return `cannot read ${file}: ${(err as Error).message}`;
}
