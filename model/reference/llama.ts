/**
 * Float64 CPU reference of a LLaMA-family model with LLaMA-Adapter, forward and analytic backward.
 * It is the ground truth that the GPU model and trainer are tested against, so it is written for
 * clarity, not speed, and shares no code with them.
 *
 * The model: token embedding, N blocks of
 *
 *     x = x + wo(attention(rope(wq(rmsnorm(x))), rope(wk(rmsnorm(x))), wv(rmsnorm(x))))
 *     x = x + w2(silu(w1(rmsnorm(x))) * w3(rmsnorm(x)))
 *
 * then a final RMSNorm and the output projection (the embedding matrix when tied). Attention is
 * causal with grouped-query heads. The adapter (LLaMA-Adapter v1, "LLaMA-Adapter: Efficient
 * Fine-tuning of Language Models with Zero-init Attention") gives each of the top K blocks a prompt
 * P (L, C) and a gate per head g (H). In such a block every query also attends, through its own
 * softmax, to the L prompt keys P wk^T (no rotary embedding) and values P wv^T, and that output is
 * scaled by tanh(g_h) before it joins the token attention output. With all gates zero the adapted
 * model equals the base model exactly.
 */
import { type ModelConfig, validateConfig } from "../config.ts";
import type { ModelWeights, WeightSource } from "../weights.ts";
import { BIAS_NAMES, biasBlockSize, type BiasName, biasSizes } from "../adapter.ts";
import { addBiasRef, biasGradRef } from "./bias.ts";
import {
  attentionBackward,
  type AttentionCache,
  attentionForward,
  type AttentionShape,
  crossEntropyBackward,
  crossEntropyForward,
  linearBackward,
  linearForward,
  lossCount,
  type PromptKeysValues,
  rmsnormBackward,
  rmsnormForward,
  ropeBackward,
  ropeForward,
  swigluBackward,
  swigluForward,
} from "./llama_layers.ts";

/** Weights of one block in float64, shapes as in `LayerWeights` (linear weights are (out, in)). */
export interface RefLayer {
  /** (C) */
  attnNorm: Float64Array;
  /** (H*D, C) */
  wq: Float64Array;
  /** (Hkv*D, C) */
  wk: Float64Array;
  /** (Hkv*D, C) */
  wv: Float64Array;
  /** (C, H*D) */
  wo: Float64Array;
  /** (C) */
  ffnNorm: Float64Array;
  /** (hidden, C) */
  w1: Float64Array;
  /** (C, hidden) */
  w2: Float64Array;
  /** (hidden, C) */
  w3: Float64Array;
}

/** Every weight of the model in float64; also the layout of full weight gradients. */
export interface RefWeights {
  /** (V, C) */
  tokEmbedding: Float64Array;
  layers: RefLayer[];
  /** (C) */
  norm: Float64Array;
  /** (V, C), or null when the output projection is the embedding matrix. */
  output: Float64Array | null;
}

/** Adapter parameters in float64, laid out as `Adapter` in `model/adapter.ts`. */
export interface RefAdapter {
  config: {
    /** Number of adapted blocks K, counted from the top. */
    layers: number;
    /** Prompt length L per adapted block. */
    length: number;
    /** Bias tuning: a bias on the output of every linear layer of the adapted blocks. */
    bias?: boolean;
  };
  /** (K, L, C): prompts, the lowest adapted block (N-K) first. */
  prompts: Float64Array;
  /** (K, H): gates before tanh. */
  gates: Float64Array;
  /** With `config.bias`: (K, biasBlockSize), each block's biases in BIAS_NAMES order. */
  biases?: Float64Array;
}

/** Options of `RefModel.lossAndGrads`. */
export interface RefGradOptions {
  /** Also compute the gradient of every model weight, as full fine-tuning needs. */
  allParams?: boolean;
}

/** Loss and gradients from `RefModel.lossAndGrads`. */
export interface RefGrads {
  loss: number;
  /** (K, L, C), or null without an adapter. */
  prompts: Float64Array | null;
  /** (K, H), or null without an adapter. */
  gates: Float64Array | null;
  /** (K, biasBlockSize), or null without bias tuning. */
  biases: Float64Array | null;
  /** Gradients of all weights, tied output folded into `tokEmbedding`; null unless `allParams`. */
  weights: RefWeights | null;
}

/** Activations of one block that the backward pass reads. */
interface BlockCache {
  /** (T, C), the block input */
  x: Float64Array;
  /** (T, C) and (T), the attention RMSNorm output and reciprocal RMS */
  xn: Float64Array;
  rstd: Float64Array;
  /** (T, H*D) and (T, Hkv*D) after rotary embedding; v (T, Hkv*D) */
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
  prompt: PromptKeysValues | null;
  /** The block's biases (bias tuning), or null. */
  bias: RefBiases | null;
  attention: AttentionCache;
  /** (T, H*D), the input of wo */
  attOut: Float64Array;
  /** (T, C), the residual after attention */
  x2: Float64Array;
  /** (T, C) and (T), the FFN RMSNorm output and reciprocal RMS */
  xn2: Float64Array;
  rstd2: Float64Array;
  /** (T, hidden) */
  h1: Float64Array;
  h3: Float64Array;
  act: Float64Array;
}

/** One block's biases per linear layer. */
type RefBiases = Record<BiasName, Float64Array>;

/** Returns views of adapted block a's biases, or null without bias tuning. */
function blockBiases(config: ModelConfig, all: Float64Array | null | undefined, a: number) {
  if (!all) return null;
  const sizes = biasSizes(config);
  const size = biasBlockSize(config);
  const out = {} as RefBiases;
  let offset = a * size;
  for (const name of BIAS_NAMES) {
    out[name] = all.subarray(offset, offset + sizes[name]);
    offset += sizes[name];
  }
  return out;
}

/** Returns y with bias b (N) added to every row, or y itself without a bias. */
function withBias(y: Float64Array, b: Float64Array | undefined): Float64Array {
  return b ? addBiasRef(y, b) : y;
}

/** Adds the column sums of dy to db, the gradient of `withBias`; does nothing without a bias. */
function addBiasGrad(db: Float64Array | undefined, dy: Float64Array): void {
  if (db) addInPlace(db, biasGradRef(dy, db.length));
}

/** Activations of a whole forward pass. */
interface ForwardCache {
  blocks: BlockCache[];
  /** (T, C), the input of the final RMSNorm, its output and reciprocal RMS */
  xLast: Float64Array;
  xf: Float64Array;
  rstdFinal: Float64Array;
  /** (T, V) */
  logits: Float64Array;
}

/** A LLaMA-family model in float64 on the CPU. */
export class RefModel {
  readonly config: ModelConfig;
  readonly weights: RefWeights;

  /** Wraps float64 weights; throws naming the tensor when a shape does not match `config`. */
  constructor(config: ModelConfig, weights: RefWeights) {
    validateConfig(config, "reference model config");
    const s = shapes(config);
    expectLength(weights.tokEmbedding, s.tokEmbedding, "tokEmbedding");
    expectLength(weights.norm, s.norm, "norm");
    if (config.tiedEmbeddings !== (weights.output === null)) {
      throw new Error(
        `reference model: tiedEmbeddings is ${config.tiedEmbeddings} but the output weight is ` +
          `${weights.output === null ? "missing" : "present"}`,
      );
    }
    if (weights.output) expectLength(weights.output, s.output, "output");
    if (weights.layers.length !== config.nLayers) {
      throw new Error(
        `reference model: ${weights.layers.length} layers of weights, config has ${config.nLayers}`,
      );
    }
    weights.layers.forEach((layer, l) => {
      for (const key of LAYER_KEYS) expectLength(layer[key], s.layer[key], `layers.${l}.${key}`);
    });
    this.config = config;
    this.weights = weights;
  }

  /** Reads every tensor of a loaded checkpoint as float64. */
  static async fromWeights(source: ModelWeights): Promise<RefModel> {
    const c = source.config;
    const s = shapes(c);
    const layers: RefLayer[] = [];
    for (const lw of source.layers) {
      const layer = {} as RefLayer;
      for (const key of LAYER_KEYS) layer[key] = await readF64(lw[key], s.layer[key]);
      layers.push(layer);
    }
    return new RefModel(c, {
      tokEmbedding: await readF64(source.tokEmbedding, s.tokEmbedding),
      layers,
      norm: await readF64(source.norm, s.norm),
      output: source.output ? await readF64(source.output, s.output) : null,
    });
  }

  /** Returns the logits (T, V) of every position; tokens are ids at positions 0..T-1. */
  forward(tokens: ArrayLike<number>, adapter: RefAdapter | null = null): Float64Array {
    this.#validate(tokens, null, adapter);
    return this.#forward(tokens, adapter).logits;
  }

  /**
   * Returns the mean over t of cross_entropy(logits[t], tokens[t+1]) for the t where lossMask[t+1]
   * is truthy. Throws when the mask selects no target.
   */
  loss(
    tokens: ArrayLike<number>,
    lossMask: ArrayLike<boolean | number>,
    adapter: RefAdapter | null = null,
  ): number {
    this.#validate(tokens, lossMask, adapter);
    const { logits } = this.#forward(tokens, adapter);
    return crossEntropyForward(logits, tokens, lossMask, this.config.vocabSize);
  }

  /**
   * Returns the loss and its gradients with respect to the adapter's prompts and gates and, with
   * `allParams`, every weight. Without `allParams` the backward pass stops at the lowest adapted
   * block, as adapter training does.
   */
  lossAndGrads(
    tokens: ArrayLike<number>,
    lossMask: ArrayLike<boolean | number>,
    adapter: RefAdapter | null,
    opts: RefGradOptions = {},
  ): RefGrads {
    this.#validate(tokens, lossMask, adapter);
    const c = this.config;
    const w = this.weights;
    const T = tokens.length;
    const C = c.dim;
    const V = c.vocabSize;
    const allParams = opts.allParams ?? false;
    const cache = this.#forward(tokens, adapter);
    const loss = crossEntropyForward(cache.logits, tokens, lossMask, V);

    const dw = allParams ? zerosLike(w) : null;
    const K = adapter ? adapter.config.layers : 0;
    const L = adapter ? adapter.config.length : 0;
    const firstAdapted = c.nLayers - K;
    const dPrompts = adapter ? new Float64Array(adapter.prompts.length) : null;
    const dGates = adapter ? new Float64Array(adapter.gates.length) : null;
    const dBiases = adapter?.config.bias ? new Float64Array(adapter.biases!.length) : null;
    if (!allParams && !adapter) {
      return { loss, prompts: null, gates: null, biases: null, weights: null };
    }

    // Output projection and final norm.
    const dlogits = crossEntropyBackward(cache.logits, tokens, lossMask, V);
    const outW = w.output ?? w.tokEmbedding;
    const dOutW = dw ? (dw.output ?? dw.tokEmbedding) : null;
    const dxf = linearBackward(dlogits, cache.xf, outW, T, C, V, dOutW);
    let dx = rmsnormBackward(dxf, cache.xLast, w.norm, cache.rstdFinal, T, C, dw ? dw.norm : null);

    const lowest = allParams ? 0 : firstAdapted;
    for (let l = c.nLayers - 1; l >= lowest; l--) {
      const a = l - firstAdapted;
      const adapted = a >= 0
        ? {
          dPrompt: dPrompts!.subarray(a * L * C, (a + 1) * L * C),
          dGates: dGates!.subarray(a * c.nHeads, (a + 1) * c.nHeads),
          prompt: adapter!.prompts.subarray(a * L * C, (a + 1) * L * C),
          dBias: blockBiases(c, dBiases, a),
        }
        : null;
      const needInputGrad = allParams || l > firstAdapted;
      dx = this.#blockBackward(
        dx,
        cache.blocks[l],
        w.layers[l],
        dw ? dw.layers[l] : null,
        adapted,
        needInputGrad,
      );
    }

    if (dw) {
      for (let t = 0; t < T; t++) {
        for (let i = 0; i < C; i++) dw.tokEmbedding[tokens[t] * C + i] += dx[t * C + i];
      }
    }
    return { loss, prompts: dPrompts, gates: dGates, biases: dBiases, weights: dw };
  }

  #forward(tokens: ArrayLike<number>, adapter: RefAdapter | null): ForwardCache {
    const c = this.config;
    const w = this.weights;
    const T = tokens.length;
    const C = c.dim;
    const firstAdapted = c.nLayers - (adapter ? adapter.config.layers : 0);

    let x: Float64Array = new Float64Array(T * C);
    for (let t = 0; t < T; t++) {
      x.set(w.tokEmbedding.subarray(tokens[t] * C, (tokens[t] + 1) * C), t * C);
    }

    const blocks: BlockCache[] = [];
    for (let l = 0; l < c.nLayers; l++) {
      let prompt: PromptKeysValues | null = null;
      let bias: RefBiases | null = null;
      if (adapter && l >= firstAdapted) {
        bias = blockBiases(c, adapter.config.bias ? adapter.biases : null, l - firstAdapted);
        prompt = this.#promptKeysValues(adapter, l - firstAdapted, w.layers[l], bias);
      }
      const block = this.#blockForward(x, w.layers[l], prompt, bias);
      blocks.push(block);
      const ffn = linearForward(block.act, w.layers[l].w2, T, c.hiddenDim, C);
      x = addResidual(block.x2, withBias(ffn, bias?.w2));
    }

    const { out: xf, rstd: rstdFinal } = rmsnormForward(x, w.norm, T, C, c.normEps);
    const logits = linearForward(xf, w.output ?? w.tokEmbedding, T, C, c.vocabSize);
    return { blocks, xLast: x, xf, rstdFinal, logits };
  }

  /** Projects adapted block a's prompt (L, C) through the block's wk and wv (and their biases). */
  #promptKeysValues(
    adapter: RefAdapter,
    a: number,
    layer: RefLayer,
    bias: RefBiases | null,
  ): PromptKeysValues {
    const c = this.config;
    const L = adapter.config.length;
    const kvDim = c.nKvHeads * (c.dim / c.nHeads);
    const prompt = adapter.prompts.subarray(a * L * c.dim, (a + 1) * L * c.dim);
    return {
      L,
      keys: withBias(linearForward(prompt, layer.wk, L, c.dim, kvDim), bias?.wk),
      values: withBias(linearForward(prompt, layer.wv, L, c.dim, kvDim), bias?.wv),
      gates: adapter.gates.subarray(a * c.nHeads, (a + 1) * c.nHeads),
    };
  }

  /** Runs one block up to the FFN activation; the caller adds w2(act) to x2. */
  #blockForward(
    x: Float64Array,
    layer: RefLayer,
    prompt: PromptKeysValues | null,
    bias: RefBiases | null,
  ): BlockCache {
    const c = this.config;
    const T = x.length / c.dim;
    const C = c.dim;
    const D = C / c.nHeads;
    const shape: AttentionShape = { T, H: c.nHeads, Hkv: c.nKvHeads, D };
    const kvDim = c.nKvHeads * D;

    const { out: xn, rstd } = rmsnormForward(x, layer.attnNorm, T, C, c.normEps);
    const q = withBias(linearForward(xn, layer.wq, T, C, C), bias?.wq);
    const k = withBias(linearForward(xn, layer.wk, T, C, kvDim), bias?.wk);
    const v = withBias(linearForward(xn, layer.wv, T, C, kvDim), bias?.wv);
    ropeForward(q, T, c.nHeads, D, c.ropeTheta, c.ropeLayout);
    ropeForward(k, T, c.nKvHeads, D, c.ropeTheta, c.ropeLayout);

    const { out: attOut, cache: attention } = attentionForward(q, k, v, shape, prompt);
    const x2 = addResidual(x, withBias(linearForward(attOut, layer.wo, T, C, C), bias?.wo));

    const { out: xn2, rstd: rstd2 } = rmsnormForward(x2, layer.ffnNorm, T, C, c.normEps);
    const h1 = withBias(linearForward(xn2, layer.w1, T, C, c.hiddenDim), bias?.w1);
    const h3 = withBias(linearForward(xn2, layer.w3, T, C, c.hiddenDim), bias?.w3);
    const act = swigluForward(h1, h3);

    return { x, xn, rstd, q, k, v, prompt, bias, attention, attOut, x2, xn2, rstd2, h1, h3, act };
  }

  /**
   * Backward of one block given dy (T, C), the gradient of its output. Adds weight gradients to
   * `dLayer` when given and the adapter gradients to `adapted` when the block is adapted. Returns
   * the gradient of the block input, or an empty array when `needInputGrad` is false.
   */
  #blockBackward(
    dy: Float64Array,
    b: BlockCache,
    layer: RefLayer,
    dLayer: RefLayer | null,
    adapted: {
      dPrompt: Float64Array;
      dGates: Float64Array;
      prompt: Float64Array;
      dBias: RefBiases | null;
    } | null,
    needInputGrad: boolean,
  ): Float64Array {
    const c = this.config;
    const T = b.x.length / c.dim;
    const C = c.dim;
    const F = c.hiddenDim;
    const D = C / c.nHeads;
    const kvDim = c.nKvHeads * D;
    const shape: AttentionShape = { T, H: c.nHeads, Hkv: c.nKvHeads, D };

    const dBias = adapted?.dBias ?? undefined;
    // FFN: x_out = x2 + w2(silu(w1 xn2) * w3 xn2).
    addBiasGrad(dBias?.w2, dy);
    const dact = linearBackward(dy, b.act, layer.w2, T, F, C, dLayer ? dLayer.w2 : null);
    const { dh1, dh3 } = swigluBackward(dact, b.h1, b.h3);
    addBiasGrad(dBias?.w1, dh1);
    addBiasGrad(dBias?.w3, dh3);
    const dxn2 = linearBackward(dh1, b.xn2, layer.w1, T, C, F, dLayer ? dLayer.w1 : null);
    addInPlace(dxn2, linearBackward(dh3, b.xn2, layer.w3, T, C, F, dLayer ? dLayer.w3 : null));
    const dffn = rmsnormBackward(
      dxn2,
      b.x2,
      layer.ffnNorm,
      b.rstd2,
      T,
      C,
      dLayer ? dLayer.ffnNorm : null,
    );
    const dx2 = addResidual(dy, dffn);

    // Attention: x2 = x + wo(attention(q, k, v, prompt)).
    addBiasGrad(dBias?.wo, dx2);
    const dAttOut = linearBackward(dx2, b.attOut, layer.wo, T, C, C, dLayer ? dLayer.wo : null);
    const g = attentionBackward(dAttOut, b.q, b.k, b.v, shape, b.prompt, b.attention);

    // The prompt keys and values are P wk^T and P wv^T, so P and the frozen wk, wv get gradients.
    if (adapted && g.dPromptKeys && g.dPromptValues && g.dGates) {
      const L = b.prompt!.L;
      const dwk = dLayer ? dLayer.wk : null;
      const dwv = dLayer ? dLayer.wv : null;
      addInPlace(
        adapted.dPrompt,
        linearBackward(g.dPromptKeys, adapted.prompt, layer.wk, L, C, kvDim, dwk),
      );
      addInPlace(
        adapted.dPrompt,
        linearBackward(g.dPromptValues, adapted.prompt, layer.wv, L, C, kvDim, dwv),
      );
      addInPlace(adapted.dGates, g.dGates);
      addBiasGrad(dBias?.wk, g.dPromptKeys);
      addBiasGrad(dBias?.wv, g.dPromptValues);
    }
    if (!needInputGrad && !dBias) return new Float64Array(0);

    ropeBackward(g.dq, T, c.nHeads, D, c.ropeTheta, c.ropeLayout);
    ropeBackward(g.dk, T, c.nKvHeads, D, c.ropeTheta, c.ropeLayout);
    addBiasGrad(dBias?.wq, g.dq);
    addBiasGrad(dBias?.wk, g.dk);
    addBiasGrad(dBias?.wv, g.dv);
    if (!needInputGrad) return new Float64Array(0);
    const dxn = linearBackward(g.dq, b.xn, layer.wq, T, C, C, dLayer ? dLayer.wq : null);
    addInPlace(dxn, linearBackward(g.dk, b.xn, layer.wk, T, C, kvDim, dLayer ? dLayer.wk : null));
    addInPlace(dxn, linearBackward(g.dv, b.xn, layer.wv, T, C, kvDim, dLayer ? dLayer.wv : null));
    const dAttn = rmsnormBackward(
      dxn,
      b.x,
      layer.attnNorm,
      b.rstd,
      T,
      C,
      dLayer ? dLayer.attnNorm : null,
    );
    return addResidual(dx2, dAttn);
  }

  /** Throws naming the argument when tokens, mask or adapter do not fit the model. */
  #validate(
    tokens: ArrayLike<number>,
    lossMask: ArrayLike<boolean | number> | null,
    adapter: RefAdapter | null,
  ): void {
    const c = this.config;
    if (tokens.length === 0) throw new Error("reference model: token sequence is empty");
    if (tokens.length > c.maxSeqLen) {
      throw new Error(
        `reference model: ${tokens.length} tokens exceed the model's maximum sequence length ` +
          `${c.maxSeqLen}`,
      );
    }
    for (let t = 0; t < tokens.length; t++) {
      const id = tokens[t];
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) {
        throw new Error(
          `reference model: token ${t} is ${id}, expected an integer id in [0, ${c.vocabSize})`,
        );
      }
    }
    if (lossMask && lossMask.length !== tokens.length) {
      throw new Error(
        `reference model: loss mask has ${lossMask.length} entries for ${tokens.length} tokens`,
      );
    }
    if (lossMask && lossCount(lossMask) === 0) {
      throw new Error(
        `reference model: loss mask selects no target; mark at least one of tokens ` +
          `1..${tokens.length - 1} as part of the loss`,
      );
    }
    if (!adapter) return;
    const { layers: K, length: L } = adapter.config;
    if (!Number.isInteger(K) || K < 1 || K > c.nLayers) {
      throw new Error(
        `reference model: adapter layers must be an integer from 1 to ${c.nLayers}, got ${K}`,
      );
    }
    if (!Number.isInteger(L) || L < 1) {
      throw new Error(`reference model: adapter length must be a positive integer, got ${L}`);
    }
    expectLength(adapter.prompts, K * L * c.dim, "adapter prompts");
    expectLength(adapter.gates, K * c.nHeads, "adapter gates");
    if (adapter.config.bias) {
      expectLength(adapter.biases ?? new Float64Array(0), K * biasBlockSize(c), "adapter biases");
    }
  }
}

/** Returns weights of the same shapes as `w`, all zero (the start of a gradient accumulation). */
export function zerosLike(w: RefWeights): RefWeights {
  const layers = w.layers.map((layer) => {
    const z = {} as RefLayer;
    for (const key of LAYER_KEYS) z[key] = new Float64Array(layer[key].length);
    return z;
  });
  return {
    tokEmbedding: new Float64Array(w.tokEmbedding.length),
    layers,
    norm: new Float64Array(w.norm.length),
    output: w.output ? new Float64Array(w.output.length) : null,
  };
}

/** Names of the per-block weights, in checkpoint order. */
export const LAYER_KEYS = [
  "attnNorm",
  "wq",
  "wk",
  "wv",
  "wo",
  "ffnNorm",
  "w1",
  "w2",
  "w3",
] as const satisfies readonly (keyof RefLayer)[];

/** Expected shapes of every weight for a config. */
function shapes(c: ModelConfig) {
  const C = c.dim;
  const kvDim = c.nKvHeads * (C / c.nHeads);
  const F = c.hiddenDim;
  return {
    tokEmbedding: [c.vocabSize, C],
    norm: [C],
    output: [c.vocabSize, C],
    layer: {
      attnNorm: [C],
      wq: [C, C],
      wk: [kvDim, C],
      wv: [kvDim, C],
      wo: [C, C],
      ffnNorm: [C],
      w1: [F, C],
      w2: [C, F],
      w3: [F, C],
    } satisfies Record<keyof RefLayer, number[]>,
  };
}

async function readF64(source: WeightSource, shape: number[]): Promise<Float64Array> {
  if (source.shape.join(",") !== shape.join(",")) {
    throw new Error(
      `${source.file}: tensor ${source.name} has shape [${source.shape.join(", ")}], ` +
        `the model config expects [${shape.join(", ")}]`,
    );
  }
  const values = await source.readF32();
  expectLength(values, shape.reduce((a, b) => a * b, 1), `${source.file}: ${source.name}`);
  return Float64Array.from(values);
}

function expectLength(a: ArrayLike<number>, expected: number | number[], name: string): void {
  const n = typeof expected === "number" ? expected : expected.reduce((x, y) => x * y, 1);
  if (a.length !== n) {
    const shape = typeof expected === "number" ? "" : ` (shape [${expected.join(", ")}])`;
    throw new Error(`reference model: ${name} has ${a.length} values, expected ${n}${shape}`);
  }
}

function addResidual(a: Float64Array, b: Float64Array): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] + b[i];
  return out;
}

function addInPlace(acc: Float64Array, b: Float64Array): void {
  for (let i = 0; i < acc.length; i++) acc[i] += b[i];
}
