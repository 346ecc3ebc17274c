// Placeholder until the validate command lands; replaced by its implementation.
export async function main(_argv: string[]): Promise<number> {
  console.error("kvmlab validate: not implemented yet");
  return 1;
}
