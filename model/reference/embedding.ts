/** Float64 reference of the token embedding, forward and backward. */

/** out[t, c] = table[tokens[t], c]; table is (V, C) row-major, out is (T, C). */
export function embeddingForwardRef(
  tokens: ArrayLike<number>,
  table: ArrayLike<number>,
  C: number,
): Float64Array {
  const out = new Float64Array(tokens.length * C);
  for (let t = 0; t < tokens.length; t++) {
    for (let c = 0; c < C; c++) out[t * C + c] = table[tokens[t] * C + c];
  }
  return out;
}

/** dTable[tokens[t], c] += dOut[t, c]; dTable is (V, C) and is updated in place. */
export function embeddingBackwardRef(
  tokens: ArrayLike<number>,
  dOut: ArrayLike<number>,
  dTable: Float64Array,
  C: number,
): void {
  for (let t = 0; t < tokens.length; t++) {
    for (let c = 0; c < C; c++) dTable[tokens[t] * C + c] += dOut[t * C + c];
  }
}
