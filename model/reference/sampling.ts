/**
 * Float64 reference of greedy and nucleus (top-p) token selection, with the same ranking and
 * tie rules as the GPU kernels: tokens ranked by f32 logit, larger first (-0 below +0), equal
 * logits by lower index first.
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Returns the u32 key whose unsigned order is the order of the f32 value of x. */
export function orderKey(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  return (bits & 0x80000000 ? ~bits : bits | 0x80000000) >>> 0;
}

/** Returns the index of the largest value, the lowest index among equal maxima. */
export function argmaxRef(logits: ArrayLike<number>): number {
  let best = 0;
  for (let j = 1; j < logits.length; j++) {
    if (logits[j] > logits[best]) best = j;
  }
  return best;
}

/** Options of the sampling references, as for the `sampleTopP` kernel. */
export interface SampleRefOptions {
  temperature: number;
  topP: number;
  uniform: number;
}

/** A reference sampling result with the distances that decide whether f32 can match it. */
export interface SampleRef {
  token: number;
  /** Kept token ids in increasing order. */
  kept: number[];
  /**
   * Smallest |cumulative mass - topP| over the ranking prefixes, as a fraction of the total mass,
   * or Infinity when every token is kept. An f32 implementation can cut elsewhere when this is tiny.
   */
  cutMargin: number;
  /**
   * Smallest |cumulative kept probability - uniform| over the kept tokens in index order. An f32
   * implementation can pick a neighbour when this is tiny.
   */
  pickMargin: number;
}

/** Returns weights exp((x - max) / temperature), each in (0, 1], and their sum. */
function softmaxWeights(logits: ArrayLike<number>, temperature: number) {
  let max = -Infinity;
  for (let j = 0; j < logits.length; j++) max = Math.max(max, logits[j]);
  const weights = Float64Array.from(logits, (x) => Math.exp((x - max) / temperature));
  let total = 0;
  for (const w of weights) total += w;
  return { weights, total };
}

/** Picks the first kept token whose cumulative weight exceeds uniform * (kept total). */
function pick(weights: Float64Array, kept: number[], uniform: number) {
  let keptTotal = 0;
  for (const j of kept) keptTotal += weights[j];
  const u = uniform * keptTotal;
  let run = 0;
  let token = kept[kept.length - 1];
  let found = false;
  let pickMargin = Infinity;
  for (const j of kept) {
    run += weights[j];
    pickMargin = Math.min(pickMargin, Math.abs(run - u) / keptTotal);
    if (!found && run > u) {
      token = j;
      found = true;
    }
  }
  return { token, pickMargin };
}

/**
 * Samples by nucleus (top-p) sampling: softmax(logits / temperature), the shortest prefix of the
 * ranking with mass >= topP kept (all tokens when topP >= 1), then inverse-CDF selection with
 * `uniform` over the kept tokens in increasing index order.
 */
export function sampleTopPRef(logits: ArrayLike<number>, opts: SampleRefOptions): SampleRef {
  const { weights, total } = softmaxWeights(logits, opts.temperature);
  const V = logits.length;
  let kept: number[];
  let cutMargin = Infinity;
  if (opts.topP >= 1) {
    kept = Array.from({ length: V }, (_, j) => j);
  } else {
    const keys = Array.from(logits, orderKey);
    const ranking = Array.from({ length: V }, (_, j) => j);
    ranking.sort((a, b) => keys[b] - keys[a] || a - b);
    const target = opts.topP * total;
    let mass = 0;
    let count = 0;
    for (let i = 0; i < V; i++) {
      mass += weights[ranking[i]];
      cutMargin = Math.min(cutMargin, Math.abs(mass - target) / total);
      if (count === 0 && mass >= target) count = i + 1;
    }
    // Summation order can leave the full mass a rounding below target when topP is near 1.
    if (count === 0) count = V;
    kept = ranking.slice(0, count).sort((a, b) => a - b);
  }
  return { ...pick(weights, kept, opts.uniform), kept, cutMargin };
}

/** Samples from softmax(logits / temperature) by inverse CDF over all tokens in index order. */
export function sampleRef(
  logits: ArrayLike<number>,
  temperature: number,
  uniform: number,
): { token: number; pickMargin: number } {
  const { weights } = softmaxWeights(logits, temperature);
  const all = Array.from({ length: logits.length }, (_, j) => j);
  return pick(weights, all, uniform);
}
