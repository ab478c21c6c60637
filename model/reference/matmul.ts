/** Float64 reference of the linear layer: the forward product and its two gradients. */

/** Returns y = x W^T; x is (M, K), w is (N, K), y is (M, N), all row-major. */
export function matmulRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  M: number,
  N: number,
  K: number,
): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      y[m * N + n] = s;
    }
  }
  return y;
}

/** Returns dx = dY W; dy is (M, N), w is (N, K), dx is (M, K). */
export function matmulGradInputRef(
  dy: ArrayLike<number>,
  w: ArrayLike<number>,
  M: number,
  N: number,
  K: number,
): Float64Array {
  const dx = new Float64Array(M * K);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      const g = dy[m * N + n];
      for (let k = 0; k < K; k++) dx[m * K + k] += g * w[n * K + k];
    }
  }
  return dx;
}

/** Returns dW = dY^T X; dy is (M, N), x is (M, K), dw is (N, K). */
export function matmulGradWeightRef(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  M: number,
  N: number,
  K: number,
): Float64Array {
  const dw = new Float64Array(N * K);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      const g = dy[m * N + n];
      for (let k = 0; k < K; k++) dw[n * K + k] += g * x[m * K + k];
    }
  }
  return dw;
}
