// Placeholder until the sandbox command lands; replaced by its implementation.
export async function main(_argv: string[]): Promise<number> {
  console.error("kvmlab sandbox: not implemented yet");
  return 1;
}
