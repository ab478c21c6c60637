/** Float64 reference of RMSNorm, forward and backward. */

/**
 * Normalises each row of x: out[m, c] = x[m, c] * rstd[m] * weight[c] with
 * rstd[m] = 1 / sqrt(mean_c(x[m, c]^2) + eps). x and out are (M, C), weight is (C), rstd is (M).
 */
export function rmsnormForwardRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  M: number,
  C: number,
  eps: number,
): { out: Float64Array; rstd: Float64Array } {
  const out = new Float64Array(M * C);
  const rstd = new Float64Array(M);
  for (let m = 0; m < M; m++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[m * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[m] = r;
    for (let c = 0; c < C; c++) out[m * C + c] = x[m * C + c] * r * weight[c];
  }
  return { out, rstd };
}

/**
 * Returns the gradients of RMSNorm given dOut (M, C):
 * dx[m, c] = rstd * weight[c] * dOut[m, c] - rstd^3 / C * x[m, c] * sum_k(dOut[m, k] weight[k] x[m, k]),
 * dWeight[c] = sum_m dOut[m, c] * x[m, c] * rstd[m].
 */
export function rmsnormBackwardRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  dOut: ArrayLike<number>,
  M: number,
  C: number,
  eps: number,
): { dx: Float64Array; dWeight: Float64Array } {
  const { rstd } = rmsnormForwardRef(x, weight, M, C, eps);
  const dx = new Float64Array(M * C);
  const dWeight = new Float64Array(C);
  for (let m = 0; m < M; m++) {
    const r = rstd[m];
    let dot = 0;
    for (let c = 0; c < C; c++) dot += dOut[m * C + c] * weight[c] * x[m * C + c];
    for (let c = 0; c < C; c++) {
      const i = m * C + c;
      dx[i] = r * weight[c] * dOut[i] - (r ** 3 / C) * x[i] * dot;
      dWeight[c] += dOut[i] * x[i] * r;
    }
  }
  return { dx, dWeight };
}
