/**
 * Backward through one transformer block, from the gradient of its output to the gradient of its
 * input, accumulating the adapter's prompt and gate gradients (and, for full fine-tuning, every
 * weight gradient).
 *
 * The steps mirror `Llama.blockForward` in reverse:
 *
 *     dh = dOut w2               dw2 += dOut^T h
 *     da, du = swiglu'(a, u, dh) dw1 += da^T xn2, dw3 += du^T xn2
 *     dxn2 = da w1 + du w3
 *     dxMid = dOut + rmsnorm'(xMid, dxn2)       dffnNorm += ...
 *     dAtt = dxMid wo            dwo += dxMid^T att
 *     dq, dk, dv, dPk, dPv, dGate = attention'(...)
 *     dq, dk = rope^-1(dq), rope^-1(dk)
 *     dxn1 = dq wq + dk wk + dv wv     dwq/dwk/dwv += ...
 *     dx = dxMid + rmsnorm'(x, dxn1)            dattnNorm += ...
 *     dPrompt += dPk wk + dPv wv
 *
 * With bias tuning, each linear layer's bias gradient is the column sum of its output gradient:
 * dOut for w2, da and du for w1 and w3, dxMid for wo, and dq, dk (before the rotary embedding) and
 * dv for the tokens. The wk and wv biases also get the sums of dPk and dPv from the prompt.
 */
import { type Gpu, type Tensor, view } from "../kernels/device.ts";
import { matmulGradInput, matmulGradWeight } from "../kernels/matmul.ts";
import { rmsnormBackward } from "../kernels/norm.ts";
import { ropeBackward } from "../kernels/rope.ts";
import { swigluBackward } from "../kernels/swiglu.ts";
import { attentionBackward } from "../kernels/attention.ts";
import { add } from "../kernels/elementwise.ts";
import { biasGrad } from "../kernels/bias.ts";
import type { BiasName } from "./adapter.ts";
import { headDim, type ModelConfig } from "./config.ts";
import { type BlockActivations, type Llama, mapShapes } from "./llama.ts";

/** Weight gradients of one block for full fine-tuning; shapes as the weights, f32. */
export interface BlockWeightGrads {
  attnNorm: Tensor;
  wq: Tensor;
  wk: Tensor;
  wv: Tensor;
  wo: Tensor;
  ffnNorm: Tensor;
  w1: Tensor;
  w2: Tensor;
  w3: Tensor;
}

/** Adapter gradients of one adapted block. */
export interface AdapterGrads {
  /** (L, C) */
  prompt: Tensor;
  /** (H) */
  gate: Tensor;
  /** With bias tuning: one gradient per linear layer's bias; null otherwise. */
  biases: Record<BiasName, Tensor> | null;
}

/** Scratch tensors for backward, sized for the largest micro-batch. */
export interface BackwardScratch {
  /** (M, C) */
  dxMid: Tensor;
  /** (M, C) */
  dxn: Tensor;
  /** (M, F) */
  dh: Tensor;
  da: Tensor;
  du: Tensor;
  /** (B, T, H, D) */
  dAtt: Tensor;
  dq: Tensor;
  /** (B, T, Hkv, D) */
  dk: Tensor;
  dv: Tensor;
  /** (L, Hkv, D) */
  dPromptK: Tensor;
  dPromptV: Tensor;
  /** (H) gate gradient of one block and micro-batch, before it is added to the total */
  dGate: Tensor;
}

/** Returns the shape of every scratch tensor for B rows of T tokens and prompt length L. */
function scratchShapes(
  c: ModelConfig,
  B: number,
  T: number,
  promptLen: number,
): Record<keyof BackwardScratch, number[]> {
  const M = B * T, C = c.dim, D = headDim(c), H = c.nHeads, Hkv = c.nKvHeads, F = c.hiddenDim;
  const L = Math.max(1, promptLen);
  return {
    dxMid: [M, C],
    dxn: [M, C],
    dh: [M, F],
    da: [M, F],
    du: [M, F],
    dAtt: [B, T, H, D],
    dq: [B, T, H, D],
    dk: [B, T, Hkv, D],
    dv: [B, T, Hkv, D],
    dPromptK: [L, Hkv, D],
    dPromptV: [L, Hkv, D],
    dGate: [H],
  };
}

/** Allocates backward scratch for B rows of T tokens and prompt length L. */
export function allocBackwardScratch(
  gpu: Gpu,
  c: ModelConfig,
  B: number,
  T: number,
  promptLen: number,
): BackwardScratch {
  return mapShapes(
    scratchShapes(c, B, T, promptLen),
    (name, shape) => gpu.tensor(shape, "f32", `grad.${name}`),
  );
}

/** Returns views of `s` for B rows of T tokens. */
export function shapeScratch(
  s: BackwardScratch,
  c: ModelConfig,
  B: number,
  T: number,
  promptLen: number,
): BackwardScratch {
  return mapShapes(scratchShapes(c, B, T, promptLen), (name, shape) => view(s[name], shape));
}

/**
 * Records backward through block `layer`. On entry `dx` (M, C) holds the gradient of the block
 * output; on return it holds the gradient of the block input. `acts` must hold the activations of
 * this block's forward for the same batch. Adapter gradients accumulate into `adapterGrads` when the
 * block is adapted; weight gradients accumulate into `weightGrads` when given.
 */
export function blockBackward(
  model: Llama,
  layer: number,
  acts: BlockActivations,
  dx: Tensor,
  s: BackwardScratch,
  B: number,
  T: number,
  adapterGrads: AdapterGrads | null,
  weightGrads: BlockWeightGrads | null,
): void {
  const gpu = model.gpu, c = model.config, w = model.weights.layers[layer];
  const M = B * T, C = c.dim, D = headDim(c), H = c.nHeads, Hkv = c.nKvHeads;
  const flat = (t: Tensor, cols: number) => view(t, [M, cols]);
  const biases = model.adapterIndex(layer) >= 0 ? adapterGrads?.biases ?? null : null;
  const bias = (name: BiasName, dy: Tensor, rows = M) => {
    if (biases) biasGrad(gpu, view(dy, [rows, biases[name].shape[0]]), biases[name]);
  };

  // Feed-forward: xOut = xMid + (silu(xn2 w1^T) * xn2 w3^T) w2^T.
  bias("w2", dx);
  matmulGradInput(gpu, dx, w.w2, s.dh);
  if (weightGrads) matmulGradWeight(gpu, dx, acts.h, weightGrads.w2, { accumulate: true });
  swigluBackward(gpu, acts.a, acts.u, s.dh, s.da, s.du);
  bias("w1", s.da);
  bias("w3", s.du);
  matmulGradInput(gpu, s.da, w.w1, s.dxn);
  matmulGradInput(gpu, s.du, w.w3, s.dxn, { accumulate: true });
  if (weightGrads) {
    matmulGradWeight(gpu, s.da, acts.xn2, weightGrads.w1, { accumulate: true });
    matmulGradWeight(gpu, s.du, acts.xn2, weightGrads.w3, { accumulate: true });
  }
  gpu.copy(dx, 0, s.dxMid, 0, M * C * 4);
  rmsnormBackward(gpu, acts.xMid, w.ffnNorm, acts.rstd2, s.dxn, s.dxMid, {
    accumulate: true,
    dWeight: weightGrads?.ffnNorm,
  });

  // Attention: xMid = x + att wo^T.
  bias("wo", s.dxMid);
  matmulGradInput(gpu, s.dxMid, w.wo, flat(s.dAtt, H * D));
  if (weightGrads) {
    matmulGradWeight(gpu, s.dxMid, flat(acts.att, H * D), weightGrads.wo, { accumulate: true });
  }
  const ai = model.adapterIndex(layer);
  const prompt = ai >= 0
    ? { keys: acts.promptK, values: acts.promptV, gate: model.adapter!.gates[ai] }
    : undefined;
  attentionBackward(gpu, {
    q: acts.q,
    k: acts.k,
    v: acts.v,
    out: acts.att,
    lse: acts.lse,
    dOut: s.dAtt,
    dq: s.dq,
    dk: s.dk,
    dv: s.dv,
    pos0: 0,
    prompt,
    promptLse: prompt ? acts.lsePrompt : undefined,
    dPrompt: prompt ? { keys: s.dPromptK, values: s.dPromptV, gate: s.dGate } : undefined,
  });
  const rope = { layout: c.ropeLayout, theta: c.ropeTheta, pos0: 0 };
  ropeBackward(gpu, s.dq, s.dq, rope);
  ropeBackward(gpu, s.dk, s.dk, rope);
  bias("wq", s.dq);
  bias("wk", s.dk);
  bias("wv", s.dv);

  matmulGradInput(gpu, flat(s.dq, H * D), w.wq, s.dxn);
  matmulGradInput(gpu, flat(s.dk, Hkv * D), w.wk, s.dxn, { accumulate: true });
  matmulGradInput(gpu, flat(s.dv, Hkv * D), w.wv, s.dxn, { accumulate: true });
  if (weightGrads) {
    matmulGradWeight(gpu, flat(s.dq, H * D), acts.xn1, weightGrads.wq, { accumulate: true });
    matmulGradWeight(gpu, flat(s.dk, Hkv * D), acts.xn1, weightGrads.wk, { accumulate: true });
    matmulGradWeight(gpu, flat(s.dv, Hkv * D), acts.xn1, weightGrads.wv, { accumulate: true });
  }
  gpu.copy(s.dxMid, 0, dx, 0, M * C * 4);
  rmsnormBackward(gpu, acts.x, w.attnNorm, acts.rstd1, s.dxn, dx, {
    accumulate: true,
    dWeight: weightGrads?.attnNorm,
  });

  // Prompt keys and values: Pk = P wk^T, Pv = P wv^T, so dP += dPk wk + dPv wv.
  if (prompt && adapterGrads) {
    add(gpu, adapterGrads.gate, s.dGate, adapterGrads.gate);
    const L = model.adapter!.config.length;
    bias("wk", s.dPromptK, L);
    bias("wv", s.dPromptV, L);
    matmulGradInput(gpu, view(s.dPromptK, [L, Hkv * D]), w.wk, adapterGrads.prompt, {
      accumulate: true,
    });
    matmulGradInput(gpu, view(s.dPromptV, [L, Hkv * D]), w.wv, adapterGrads.prompt, {
      accumulate: true,
    });
  }
}
