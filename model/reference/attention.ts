/**
 * Float64 reference of causal attention with the LLaMA-Adapter prompt, forward and backward.
 *
 * q is (B, T, H, D), k and v are (B, S, Hkv, D), out is (B, T, H, D), all row-major. Query t of
 * batch row b sits at position pos0 + t and attends to keys 0 .. pos0 + t. Head h reads kv head
 * floor(h / (H / Hkv)). The optional prompt keys and values pk, pv are (L, Hkv, D), shared by every
 * batch row and seen by every query, and the gate is (H). With scale = 1 / sqrt(D):
 *
 *   out = tanh(gate[h]) * softmax_l(q . pk[l] * scale) pv
 *       + softmax_{s <= pos0+t}(q . k[s] * scale) v
 */

/** Sizes of one attention call; L is 0 without a prompt. */
export interface AttentionDims {
  B: number;
  T: number;
  S: number;
  H: number;
  Hkv: number;
  D: number;
  L: number;
  pos0: number;
}

/** Inputs of the reference; `pk`, `pv` (L, Hkv, D) and `gate` (H) only when dims.L > 0. */
export interface AttentionRefInputs {
  q: ArrayLike<number>;
  k: ArrayLike<number>;
  v: ArrayLike<number>;
  pk?: ArrayLike<number>;
  pv?: ArrayLike<number>;
  gate?: ArrayLike<number>;
}

/** Forward results: out (B, T, H, D) and the log-sum-exp of each softmax row, (B, H, T). */
export interface AttentionRefOutputs {
  out: Float64Array;
  lse: Float64Array;
  promptLse: Float64Array;
}

/** Gradients of the reference; the prompt ones are empty arrays when dims.L is 0. */
export interface AttentionRefGrads {
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
  dpk: Float64Array;
  dpv: Float64Array;
  dgate: Float64Array;
}

function dot(a: ArrayLike<number>, ai: number, b: ArrayLike<number>, bi: number, n: number) {
  let s = 0;
  for (let d = 0; d < n; d++) s += a[ai + d] * b[bi + d];
  return s;
}

/** Returns softmax probabilities of `scores` in place and their log-sum-exp. */
function softmaxInPlace(scores: Float64Array): number {
  let m = -Infinity;
  for (const s of scores) m = Math.max(m, s);
  let sum = 0;
  for (let i = 0; i < scores.length; i++) {
    scores[i] = Math.exp(scores[i] - m);
    sum += scores[i];
  }
  for (let i = 0; i < scores.length; i++) scores[i] /= sum;
  return m + Math.log(sum);
}

/**
 * Visits every query row (b, t, h) with its probabilities over the prompt (L) and over the
 * visible keys (pos0 + t + 1), and the element offsets of its q row, its k/v rows and prompt rows.
 */
function forEachRow(
  dims: AttentionDims,
  x: AttentionRefInputs,
  visit: (row: {
    b: number;
    t: number;
    h: number;
    qi: number;
    kvBase: number;
    kvStride: number;
    pBase: number;
    probs: Float64Array;
    promptProbs: Float64Array;
    lse: number;
    promptLse: number;
  }) => void,
): void {
  const { B, T, S, H, Hkv, D, L, pos0 } = dims;
  const scale = 1 / Math.sqrt(D);
  const group = H / Hkv;
  const kvStride = Hkv * D;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const kvh = Math.floor(h / group);
        const qi = ((b * T + t) * H + h) * D;
        const kvBase = b * S * kvStride + kvh * D;
        const pBase = kvh * D;

        const probs = new Float64Array(pos0 + t + 1);
        for (let s = 0; s < probs.length; s++) {
          probs[s] = dot(x.q, qi, x.k, kvBase + s * kvStride, D) * scale;
        }
        const lse = softmaxInPlace(probs);

        const promptProbs = new Float64Array(L);
        for (let l = 0; l < L; l++) {
          promptProbs[l] = dot(x.q, qi, x.pk!, pBase + l * kvStride, D) * scale;
        }
        const promptLse = L > 0 ? softmaxInPlace(promptProbs) : 0;

        visit({ b, t, h, qi, kvBase, kvStride, pBase, probs, promptProbs, lse, promptLse });
      }
    }
  }
}

/** Computes the forward pass in float64. */
export function attentionForwardRef(
  dims: AttentionDims,
  x: AttentionRefInputs,
): AttentionRefOutputs {
  const { B, T, H, D } = dims;
  const out = new Float64Array(B * T * H * D);
  const lse = new Float64Array(B * H * T);
  const promptLse = new Float64Array(B * H * T);
  forEachRow(dims, x, (r) => {
    const gate = dims.L > 0 ? Math.tanh(x.gate![r.h]) : 0;
    for (let d = 0; d < D; d++) {
      let token = 0;
      for (let s = 0; s < r.probs.length; s++) {
        token += r.probs[s] * x.v[r.kvBase + s * r.kvStride + d];
      }
      let prompt = 0;
      for (let l = 0; l < dims.L; l++) {
        prompt += r.promptProbs[l] * x.pv![r.pBase + l * r.kvStride + d];
      }
      out[r.qi + d] = gate * prompt + token;
    }
    const row = (r.b * H + r.h) * T + r.t;
    lse[row] = r.lse;
    promptLse[row] = r.promptLse;
  });
  return { out, lse, promptLse };
}

/**
 * Computes the gradients of sum(out * dOut) with respect to q, k, v, the prompt keys and values
 * and the gate, in float64. dOut is (B, T, H, D).
 */
export function attentionBackwardRef(
  dims: AttentionDims,
  x: AttentionRefInputs,
  dOut: ArrayLike<number>,
): AttentionRefGrads {
  const { D, L } = dims;
  const scale = 1 / Math.sqrt(D);
  const g: AttentionRefGrads = {
    dq: new Float64Array(x.q.length),
    dk: new Float64Array(x.k.length),
    dv: new Float64Array(x.v.length),
    dpk: new Float64Array(L > 0 ? x.pk!.length : 0),
    dpv: new Float64Array(L > 0 ? x.pv!.length : 0),
    dgate: new Float64Array(L > 0 ? dims.H : 0),
  };
  forEachRow(dims, x, (r) => {
    // Token softmax: dP[s] = dOut . v[s], dS = P (dP - sum_s P dP).
    const dScores = new Float64Array(r.probs.length);
    let rowDelta = 0;
    for (let s = 0; s < r.probs.length; s++) {
      dScores[s] = dot(dOut, r.qi, x.v, r.kvBase + s * r.kvStride, D);
      rowDelta += r.probs[s] * dScores[s];
    }
    for (let s = 0; s < r.probs.length; s++) {
      const ki = r.kvBase + s * r.kvStride;
      const ds = r.probs[s] * (dScores[s] - rowDelta) * scale;
      for (let d = 0; d < D; d++) {
        g.dq[r.qi + d] += ds * x.k[ki + d];
        g.dk[ki + d] += ds * x.q[r.qi + d];
        g.dv[ki + d] += r.probs[s] * dOut[r.qi + d];
      }
    }
    if (L === 0) return;

    // Prompt softmax, scaled by tanh(gate): d(prompt output) = tanh(gate) dOut.
    const tg = Math.tanh(x.gate![r.h]);
    const dPrompt = new Float64Array(L);
    let promptDot = 0; // dOut . (softmax(prompt scores) pv)
    for (let l = 0; l < L; l++) {
      dPrompt[l] = dot(dOut, r.qi, x.pv!, r.pBase + l * r.kvStride, D);
      promptDot += r.promptProbs[l] * dPrompt[l];
    }
    g.dgate[r.h] += (1 - tg * tg) * promptDot;
    for (let l = 0; l < L; l++) {
      const pi = r.pBase + l * r.kvStride;
      const ds = r.promptProbs[l] * tg * (dPrompt[l] - promptDot) * scale;
      for (let d = 0; d < D; d++) {
        g.dq[r.qi + d] += ds * x.pk![pi + d];
        g.dpk[pi + d] += ds * x.q[r.qi + d];
        g.dpv[pi + d] += tg * r.promptProbs[l] * dOut[r.qi + d];
      }
    }
  });
  return g;
}
