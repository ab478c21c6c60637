/** Float64 reference of the cross-entropy loss and its gradient with respect to the logits. */

/** Per-row losses, their sum over counted rows, the count and the scaled gradient. */
export interface CrossEntropyRef {
  /** (M) loss of each row; 0 for rows left out of the loss. */
  rowLoss: Float64Array;
  sum: number;
  count: number;
  /** (M, V) gradient (softmax - onehot(target)) * gradScale; 0 for rows left out. */
  dLogits: Float64Array;
}

/**
 * Computes cross-entropy over the rows of logits (M, V) row-major against targets (M). A target
 * outside [0, V) leaves its row out of the loss, as the kernel does.
 */
export function crossEntropyRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  V: number,
  gradScale = 1,
): CrossEntropyRef {
  const M = targets.length;
  const rowLoss = new Float64Array(M);
  const dLogits = new Float64Array(M * V);
  let sum = 0;
  let count = 0;
  for (let r = 0; r < M; r++) {
    const t = targets[r];
    if (!(t >= 0 && t < V)) continue;
    const base = r * V;

    let max = -Infinity;
    for (let j = 0; j < V; j++) max = Math.max(max, logits[base + j]);
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(logits[base + j] - max);
    const lse = max + Math.log(s);

    rowLoss[r] = lse - logits[base + t];
    sum += rowLoss[r];
    count++;
    for (let j = 0; j < V; j++) {
      const p = Math.exp(logits[base + j] - lse);
      dLogits[base + j] = (p - (j === t ? 1 : 0)) * gradScale;
    }
  }
  return { rowLoss, sum, count, dLogits };
}
