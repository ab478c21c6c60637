/** Float64 reference of the SwiGLU gate, forward and backward. */

function sigmoid(a: number): number {
  return 1 / (1 + Math.exp(-a));
}

/** Returns out = silu(a) * b element-wise, with silu(a) = a * sigmoid(a). */
export function swigluForwardRef(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] * sigmoid(a[i]) * b[i];
  return out;
}

/**
 * Returns the gradients of out = silu(a) * b given dOut:
 * da = dOut * b * s * (1 + a * (1 - s)) with s = sigmoid(a), and db = dOut * silu(a).
 */
export function swigluBackwardRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  dOut: ArrayLike<number>,
): { da: Float64Array; db: Float64Array } {
  const da = new Float64Array(a.length);
  const db = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) {
    const s = sigmoid(a[i]);
    da[i] = dOut[i] * b[i] * s * (1 + a[i] * (1 - s));
    db[i] = dOut[i] * a[i] * s;
  }
  return { da, db };
}
