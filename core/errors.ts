/** A problem with one input field: `field: problem; fix`. Pure. */
export class FieldError extends Error {
  constructor(
    readonly field: string,
    readonly problem: string,
    readonly fix?: string,
  ) {
    super(fix === undefined ? `${field}: ${problem}` : `${field}: ${problem}; ${fix}`);
    this.name = "FieldError";
  }
}
