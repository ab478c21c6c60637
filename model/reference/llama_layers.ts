/**
 * Float64 reference of the steps of a LLaMA block, each forward next to its backward: linear
 * layers, RMSNorm, rotary embedding, causal attention with LLaMA-Adapter prompts, SwiGLU and the
 * masked next-token cross-entropy. All tensors are row-major Float64Arrays; T is the number of
 * tokens, C the model width, H the query heads, Hkv the key/value heads and D the head width.
 *
 * Backward functions return the gradient of their input and add weight gradients into the arrays
 * they are given (pass null to skip them), so one set of gradient arrays accumulates over blocks and
 * sequences.
 */
import type { RopeLayout } from "../config.ts";

/** y = x W^T: x is (T, IN), W is (OUT, IN), y is (T, OUT). */
export function linearForward(
  x: Float64Array,
  W: Float64Array,
  T: number,
  IN: number,
  OUT: number,
): Float64Array {
  const y = new Float64Array(T * OUT);
  for (let t = 0; t < T; t++) {
    const xo = t * IN;
    for (let o = 0; o < OUT; o++) {
      const wo = o * IN;
      let s = 0;
      for (let i = 0; i < IN; i++) s += x[xo + i] * W[wo + i];
      y[t * OUT + o] = s;
    }
  }
  return y;
}

/** Returns dx = dy W (T, IN) and adds dy^T x to dW (OUT, IN) when dW is given. */
export function linearBackward(
  dy: Float64Array,
  x: Float64Array,
  W: Float64Array,
  T: number,
  IN: number,
  OUT: number,
  dW: Float64Array | null,
): Float64Array {
  const dx = new Float64Array(T * IN);
  for (let t = 0; t < T; t++) {
    const xo = t * IN;
    for (let o = 0; o < OUT; o++) {
      const g = dy[t * OUT + o];
      if (g === 0) continue;
      const wo = o * IN;
      for (let i = 0; i < IN; i++) dx[xo + i] += g * W[wo + i];
      if (dW) { for (let i = 0; i < IN; i++) dW[wo + i] += g * x[xo + i]; }
    }
  }
  return dx;
}

/** Output of `rmsnormForward`: out (T, C) and the reciprocal RMS of each row, rstd (T). */
export interface RmsnormResult {
  out: Float64Array;
  rstd: Float64Array;
}

/** out[t, c] = x[t, c] * w[c] / sqrt(mean_c(x[t]^2) + eps); x is (T, C), w is (C). */
export function rmsnormForward(
  x: Float64Array,
  w: Float64Array,
  T: number,
  C: number,
  eps: number,
): RmsnormResult {
  const out = new Float64Array(T * C);
  const rstd = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[t] = r;
    for (let c = 0; c < C; c++) out[t * C + c] = x[t * C + c] * r * w[c];
  }
  return { out, rstd };
}

/**
 * Returns dx (T, C) and adds sum_t dy * x * rstd to dw (C) when given. With r = rstd[t]:
 * dx[c] = r w[c] dy[c] - x[c] r^3 / C * sum_j dy[j] w[j] x[j].
 */
export function rmsnormBackward(
  dy: Float64Array,
  x: Float64Array,
  w: Float64Array,
  rstd: Float64Array,
  T: number,
  C: number,
  dw: Float64Array | null,
): Float64Array {
  const dx = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const r = rstd[t];
    let dot = 0;
    for (let c = 0; c < C; c++) dot += dy[t * C + c] * w[c] * x[t * C + c];
    const k = (dot * r * r * r) / C;
    for (let c = 0; c < C; c++) {
      dx[t * C + c] = r * w[c] * dy[t * C + c] - x[t * C + c] * k;
      if (dw) dw[c] += dy[t * C + c] * x[t * C + c] * r;
    }
  }
  return dx;
}

/**
 * Rotates x (T, nHeads * D) in place by the rotary embedding of each row's position t (0-based).
 * Pair i of a head (i < D/2) turns by the angle t * theta^(-2i/D); the pair is (2i, 2i+1) for the
 * "interleaved" layout and (i, i + D/2) for "half".
 */
export function ropeForward(
  x: Float64Array,
  T: number,
  nHeads: number,
  D: number,
  theta: number,
  layout: RopeLayout,
): void {
  rotate(x, T, nHeads, D, theta, layout, 1);
}

/** Rotates the gradient dx (T, nHeads * D) in place by the inverse (transposed) rotation. */
export function ropeBackward(
  dx: Float64Array,
  T: number,
  nHeads: number,
  D: number,
  theta: number,
  layout: RopeLayout,
): void {
  rotate(dx, T, nHeads, D, theta, layout, -1);
}

function rotate(
  x: Float64Array,
  T: number,
  nHeads: number,
  D: number,
  theta: number,
  layout: RopeLayout,
  direction: 1 | -1,
): void {
  const half = D / 2;
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const angle = t * Math.pow(theta, (-2 * i) / D);
      const cos = Math.cos(angle);
      const sin = direction * Math.sin(angle);
      for (let h = 0; h < nHeads; h++) {
        const base = t * nHeads * D + h * D;
        const ia = layout === "interleaved" ? base + 2 * i : base + i;
        const ib = layout === "interleaved" ? base + 2 * i + 1 : base + i + half;
        const a = x[ia];
        const b = x[ib];
        x[ia] = a * cos - b * sin;
        x[ib] = a * sin + b * cos;
      }
    }
  }
}

/** act = silu(h1) * h3 element-wise, with silu(a) = a / (1 + exp(-a)). */
export function swigluForward(h1: Float64Array, h3: Float64Array): Float64Array {
  const act = new Float64Array(h1.length);
  for (let i = 0; i < h1.length; i++) act[i] = (h1[i] / (1 + Math.exp(-h1[i]))) * h3[i];
  return act;
}

/** Returns dh1 and dh3 for act = silu(h1) * h3; silu'(a) = s (1 + a (1 - s)), s = sigmoid(a). */
export function swigluBackward(
  dact: Float64Array,
  h1: Float64Array,
  h3: Float64Array,
): { dh1: Float64Array; dh3: Float64Array } {
  const dh1 = new Float64Array(h1.length);
  const dh3 = new Float64Array(h1.length);
  for (let i = 0; i < h1.length; i++) {
    const a = h1[i];
    const s = 1 / (1 + Math.exp(-a));
    dh1[i] = dact[i] * h3[i] * s * (1 + a * (1 - s));
    dh3[i] = dact[i] * a * s;
  }
  return { dh1, dh3 };
}

/** Sizes of one attention call. */
export interface AttentionShape {
  /** Tokens. */
  T: number;
  /** Query heads. */
  H: number;
  /** Key/value heads; query head h reads key/value head floor(h / (H / Hkv)). */
  Hkv: number;
  /** Head width. */
  D: number;
}

/** Adaption prompt of one block, already projected by the block's wk and wv. */
export interface PromptKeysValues {
  /** Prompt length L. */
  L: number;
  /** (L, Hkv * D), the prompt times wk^T, without rotary embedding. */
  keys: Float64Array;
  /** (L, Hkv * D), the prompt times wv^T. */
  values: Float64Array;
  /** (H), the gates before tanh. */
  gates: Float64Array;
}

/** Values saved by `attentionForward` for the backward pass. */
export interface AttentionCache {
  /** (H, T, T): causal softmax of the token scores; entries above the diagonal are zero. */
  probs: Float64Array;
  /** (H, T, L): softmax of the prompt scores, or null without a prompt. */
  promptProbs: Float64Array | null;
  /** (T, H * D): sum_j promptProbs[h, t, j] V_p[j] before the gate, or null without a prompt. */
  promptMix: Float64Array | null;
}

/**
 * Computes causal attention for q (T, H*D) after rotary embedding and k, v (T, Hkv*D), returning
 * out (T, H*D). With a prompt, each head h adds tanh(gates[h]) * softmax(q K_p^T / sqrt(D)) V_p,
 * a separate softmax over all L prompt positions that every query attends to.
 */
export function attentionForward(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  shape: AttentionShape,
  prompt: PromptKeysValues | null,
): { out: Float64Array; cache: AttentionCache } {
  const { T, H, Hkv, D } = shape;
  const group = H / Hkv;
  const scale = 1 / Math.sqrt(D);
  const out = new Float64Array(T * H * D);
  const probs = new Float64Array(H * T * T);
  const L = prompt ? prompt.L : 0;
  const promptProbs = prompt ? new Float64Array(H * T * L) : null;
  const promptMix = prompt ? new Float64Array(T * H * D) : null;

  for (let h = 0; h < H; h++) {
    const kvOff = Math.floor(h / group) * D;
    for (let t = 0; t < T; t++) {
      const qOff = t * H * D + h * D;

      const p = probs.subarray((h * T + t) * T, (h * T + t) * T + t + 1);
      for (let u = 0; u <= t; u++) p[u] = dot(q, qOff, k, u * Hkv * D + kvOff, D) * scale;
      softmaxInPlace(p);
      for (let u = 0; u <= t; u++) {
        for (let d = 0; d < D; d++) out[qOff + d] += p[u] * v[u * Hkv * D + kvOff + d];
      }

      if (prompt && promptProbs && promptMix) {
        const pp = promptProbs.subarray((h * T + t) * L, (h * T + t + 1) * L);
        for (let j = 0; j < L; j++) {
          pp[j] = dot(q, qOff, prompt.keys, j * Hkv * D + kvOff, D) * scale;
        }
        softmaxInPlace(pp);
        for (let j = 0; j < L; j++) {
          for (let d = 0; d < D; d++) {
            promptMix[qOff + d] += pp[j] * prompt.values[j * Hkv * D + kvOff + d];
          }
        }
        const gate = Math.tanh(prompt.gates[h]);
        for (let d = 0; d < D; d++) out[qOff + d] += gate * promptMix[qOff + d];
      }
    }
  }
  return { out, cache: { probs, promptProbs, promptMix } };
}

/** Gradients returned by `attentionBackward`; the prompt ones are null without a prompt. */
export interface AttentionGrads {
  /** (T, H*D), with respect to the rotated queries. */
  dq: Float64Array;
  /** (T, Hkv*D), with respect to the rotated keys. */
  dk: Float64Array;
  /** (T, Hkv*D) */
  dv: Float64Array;
  /** (L, Hkv*D), with respect to the prompt keys. */
  dPromptKeys: Float64Array | null;
  /** (L, Hkv*D), with respect to the prompt values. */
  dPromptValues: Float64Array | null;
  /** (H), with respect to the gates before tanh. */
  dGates: Float64Array | null;
}

/**
 * Backward of `attentionForward` given dout (T, H*D). Through a softmax p = softmax(s),
 * ds = p * (dp - sum(p * dp)); the gate gets (1 - tanh(g)^2) * sum_t dout . promptMix.
 */
export function attentionBackward(
  dout: Float64Array,
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  shape: AttentionShape,
  prompt: PromptKeysValues | null,
  cache: AttentionCache,
): AttentionGrads {
  const { T, H, Hkv, D } = shape;
  const group = H / Hkv;
  const scale = 1 / Math.sqrt(D);
  const dq = new Float64Array(T * H * D);
  const dk = new Float64Array(T * Hkv * D);
  const dv = new Float64Array(T * Hkv * D);
  const L = prompt ? prompt.L : 0;
  const dPromptKeys = prompt ? new Float64Array(L * Hkv * D) : null;
  const dPromptValues = prompt ? new Float64Array(L * Hkv * D) : null;
  const dGates = prompt ? new Float64Array(H) : null;
  const dp = new Float64Array(Math.max(T, L));

  for (let h = 0; h < H; h++) {
    const kvOff = Math.floor(h / group) * D;
    for (let t = 0; t < T; t++) {
      const qOff = t * H * D + h * D;

      const p = cache.probs.subarray((h * T + t) * T, (h * T + t) * T + t + 1);
      let sum = 0;
      for (let u = 0; u <= t; u++) {
        const vOff = u * Hkv * D + kvOff;
        dp[u] = dot(dout, qOff, v, vOff, D);
        sum += p[u] * dp[u];
        for (let d = 0; d < D; d++) dv[vOff + d] += p[u] * dout[qOff + d];
      }
      for (let u = 0; u <= t; u++) {
        const ds = p[u] * (dp[u] - sum) * scale;
        const kOff = u * Hkv * D + kvOff;
        for (let d = 0; d < D; d++) {
          dq[qOff + d] += ds * k[kOff + d];
          dk[kOff + d] += ds * q[qOff + d];
        }
      }

      if (prompt && cache.promptProbs && cache.promptMix && dPromptKeys && dPromptValues) {
        const gate = Math.tanh(prompt.gates[h]);
        dGates![h] += (1 - gate * gate) * dot(dout, qOff, cache.promptMix, qOff, D);

        const pp = cache.promptProbs.subarray((h * T + t) * L, (h * T + t + 1) * L);
        let psum = 0;
        for (let j = 0; j < L; j++) {
          const vOff = j * Hkv * D + kvOff;
          dp[j] = gate * dot(dout, qOff, prompt.values, vOff, D);
          psum += pp[j] * dp[j];
          for (let d = 0; d < D; d++) dPromptValues[vOff + d] += gate * pp[j] * dout[qOff + d];
        }
        for (let j = 0; j < L; j++) {
          const ds = pp[j] * (dp[j] - psum) * scale;
          const kOff = j * Hkv * D + kvOff;
          for (let d = 0; d < D; d++) {
            dq[qOff + d] += ds * prompt.keys[kOff + d];
            dPromptKeys[kOff + d] += ds * q[qOff + d];
          }
        }
      }
    }
  }
  return { dq, dk, dv, dPromptKeys, dPromptValues, dGates };
}

/** Counts the positions t < T-1 whose target tokens[t+1] is in the loss (lossMask[t+1] truthy). */
export function lossCount(lossMask: ArrayLike<boolean | number>): number {
  let n = 0;
  for (let t = 1; t < lossMask.length; t++) if (lossMask[t]) n++;
  return n;
}

/**
 * Returns the mean over t of -log softmax(logits[t])[tokens[t+1]] over the positions where
 * lossMask[t+1] is truthy; logits is (T, V). Throws when no position is in the loss.
 */
export function crossEntropyForward(
  logits: Float64Array,
  tokens: ArrayLike<number>,
  lossMask: ArrayLike<boolean | number>,
  V: number,
): number {
  const n = lossCountOrThrow(lossMask);
  let total = 0;
  for (let t = 0; t + 1 < tokens.length; t++) {
    if (!lossMask[t + 1]) continue;
    const row = logits.subarray(t * V, (t + 1) * V);
    total += logSumExp(row) - row[tokens[t + 1]];
  }
  return total / n;
}

/** Returns dlogits (T, V) of `crossEntropyForward`: (softmax(logits[t]) - onehot) / n on loss rows. */
export function crossEntropyBackward(
  logits: Float64Array,
  tokens: ArrayLike<number>,
  lossMask: ArrayLike<boolean | number>,
  V: number,
): Float64Array {
  const n = lossCountOrThrow(lossMask);
  const dlogits = new Float64Array(tokens.length * V);
  for (let t = 0; t + 1 < tokens.length; t++) {
    if (!lossMask[t + 1]) continue;
    const row = logits.subarray(t * V, (t + 1) * V);
    const lse = logSumExp(row);
    for (let i = 0; i < V; i++) dlogits[t * V + i] = Math.exp(row[i] - lse) / n;
    dlogits[t * V + tokens[t + 1]] -= 1 / n;
  }
  return dlogits;
}

function lossCountOrThrow(lossMask: ArrayLike<boolean | number>): number {
  const n = lossCount(lossMask);
  if (n === 0) {
    throw new Error(
      `loss mask of ${lossMask.length} tokens selects no target after the first token; ` +
        `mark at least one of tokens 1..${lossMask.length - 1} as part of the loss`,
    );
  }
  return n;
}

function dot(a: Float64Array, aOff: number, b: Float64Array, bOff: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[aOff + i] * b[bOff + i];
  return s;
}

function softmaxInPlace(x: Float64Array): void {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) max = Math.max(max, x[i]);
  let sum = 0;
  for (let i = 0; i < x.length; i++) {
    x[i] = Math.exp(x[i] - max);
    sum += x[i];
  }
  for (let i = 0; i < x.length; i++) x[i] /= sum;
}

function logSumExp(x: Float64Array): number {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) max = Math.max(max, x[i]);
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += Math.exp(x[i] - max);
  return max + Math.log(sum);
}
