// Placeholder until the render command lands; replaced by its implementation.
export async function main(_argv: string[]): Promise<number> {
  console.error("kvmlab render: not implemented yet");
  return 1;
}
