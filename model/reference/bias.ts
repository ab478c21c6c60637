/** Float64 reference of a linear layer's bias: y[m, n] + b[n], and its gradient over the rows. */

/** Returns y (M, N) with b (N) added to every row. */
export function addBiasRef(y: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const N = b.length;
  const out = Float64Array.from(y);
  for (let i = 0; i < out.length; i++) out[i] += b[i % N];
  return out;
}

/** Returns the column sums of dy (M, N): the gradient of `addBiasRef` with respect to b. */
export function biasGradRef(dy: ArrayLike<number>, N: number): Float64Array {
  const db = new Float64Array(N);
  for (let i = 0; i < dy.length; i++) db[i % N] += dy[i];
  return db;
}
