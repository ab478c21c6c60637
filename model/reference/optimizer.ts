/** Float64 reference of AdamW and of gradient clipping by global norm. */

/** Hyperparameters of one AdamW step, with `gradScale` multiplying the gradient (1 if omitted). */
export interface AdamwRefOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step number. */
  step: number;
  gradScale?: number;
}

/**
 * Applies one AdamW step (decoupled weight decay, bias-corrected moments) to param, m and v in
 * place. All four arrays have the same length.
 */
export function adamwStepRef(
  param: Float64Array,
  grad: ArrayLike<number>,
  m: Float64Array,
  v: Float64Array,
  opts: AdamwRefOptions,
): void {
  const { lr, beta1, beta2, eps, weightDecay, step } = opts;
  const scale = opts.gradScale ?? 1;
  const correction1 = 1 - beta1 ** step;
  const correction2 = 1 - beta2 ** step;
  for (let i = 0; i < param.length; i++) {
    const g = grad[i] * scale;
    param[i] -= lr * weightDecay * param[i];
    m[i] = beta1 * m[i] + (1 - beta1) * g;
    v[i] = beta2 * v[i] + (1 - beta2) * g * g;
    const mHat = m[i] / correction1;
    const vHat = v[i] / correction2;
    param[i] -= lr * mHat / (Math.sqrt(vHat) + eps);
  }
}

/** Returns the sum of squares of the elements of every array in `xs`. */
export function sumSquaresRef(xs: readonly ArrayLike<number>[]): number {
  let s = 0;
  for (const x of xs) {
    for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  }
  return s;
}

/** Returns the clipping factor min(1, maxNorm / (sqrt(sumOfSquares) + 1e-6)). */
export function clipScaleRef(sumOfSquares: number, maxNorm: number): number {
  return Math.min(1, maxNorm / (Math.sqrt(sumOfSquares) + 1e-6));
}
