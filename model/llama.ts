/**
 * The LLaMA graph on the GPU: forward for training (keeping what backward needs in the adapted
 * blocks), prefill and decode with a KV cache, and the optional LLaMA-Adapter prefix.
 *
 * Block b, for activations x (M = B*T rows, C columns):
 *
 *     xn1  = rmsnorm(x) * attnNorm
 *     q, k, v = rope(xn1 wq^T), rope(xn1 wk^T), xn1 wv^T
 *     att  = attention(q, k, v [, prompt keys/values P wk^T, P wv^T, gate])
 *     xMid = x + att wo^T
 *     xn2  = rmsnorm(xMid) * ffnNorm
 *     a, u = xn2 w1^T, xn2 w3^T
 *     h    = silu(a) * u
 *     xOut = xMid + h w2^T
 *
 * then logits = (rmsnorm(x) * norm) output^T.
 */
import { type Gpu, type Tensor, view } from "../kernels/device.ts";
import { addBias as addBiasRows } from "../kernels/bias.ts";
import { embeddingForward } from "../kernels/embedding.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsnormForward } from "../kernels/norm.ts";
import { ropeForward } from "../kernels/rope.ts";
import { swigluForward } from "../kernels/swiglu.ts";
import { attentionForward } from "../kernels/attention.ts";
import { headDim, type ModelConfig } from "./config.ts";
import type { GpuLayer, GpuWeights } from "./gpu_weights.ts";
import type { Adapter, AdapterConfig, BiasName } from "./adapter.ts";
import {
  BIAS_NAMES,
  biasBlockSize,
  firstAdaptedLayer,
  joinBiases,
  splitBiases,
  validateAdapterConfig,
} from "./adapter.ts";

/** Adapter parameters on the GPU, one tensor per adapted block. */
export interface GpuAdapter {
  config: AdapterConfig;
  /** Index of the lowest adapted block. */
  first: number;
  /** Per adapted block: (L, C) prompts. */
  prompts: Tensor[];
  /** Per adapted block: (H) gates, before tanh. */
  gates: Tensor[];
  /** With bias tuning, per adapted block: the bias of each linear layer; empty otherwise. */
  biases: Record<BiasName, Tensor>[];
}

/** Activations of one block that backward reads. Row count M = B*T. */
export interface BlockActivations {
  /** (M, C) block input, the residual stream. */
  x: Tensor;
  /** (M) */
  rstd1: Tensor;
  /** (M, C) */
  xn1: Tensor;
  /** (B, T, H, D) after rotary embedding */
  q: Tensor;
  /** (B, T, Hkv, D) after rotary embedding */
  k: Tensor;
  /** (B, T, Hkv, D) */
  v: Tensor;
  /** (B, T, H, D) attention output before wo */
  att: Tensor;
  /** (B, H, T) log-sum-exp of the token scores */
  lse: Tensor;
  /** (B, H, T) log-sum-exp of the prompt scores */
  lsePrompt: Tensor;
  /** (L, Hkv, D) prompt keys and values of this block (adapted blocks only) */
  promptK: Tensor;
  promptV: Tensor;
  /** (M, C) */
  xMid: Tensor;
  /** (M) */
  rstd2: Tensor;
  /** (M, C) */
  xn2: Tensor;
  /** (M, F) gate and up projections and their SwiGLU product */
  a: Tensor;
  u: Tensor;
  h: Tensor;
}

/** Returns the shape of every block activation for B rows of T tokens and prompt length L. */
function blockShapes(
  c: ModelConfig,
  B: number,
  T: number,
  promptLen: number,
): Record<keyof BlockActivations, number[]> {
  const M = B * T, C = c.dim, D = headDim(c), H = c.nHeads, Hkv = c.nKvHeads, F = c.hiddenDim;
  const L = Math.max(1, promptLen);
  return {
    x: [M, C],
    rstd1: [M],
    xn1: [M, C],
    q: [B, T, H, D],
    k: [B, T, Hkv, D],
    v: [B, T, Hkv, D],
    att: [B, T, H, D],
    lse: [B, H, T],
    lsePrompt: [B, H, T],
    promptK: [L, Hkv, D],
    promptV: [L, Hkv, D],
    xMid: [M, C],
    rstd2: [M],
    xn2: [M, C],
    a: [M, F],
    u: [M, F],
    h: [M, F],
  };
}

/** Returns a record with `make(name, shape)` for each entry of `shapes`. */
export function mapShapes<K extends string>(
  shapes: Record<K, number[]>,
  make: (name: K, shape: number[]) => Tensor,
): Record<K, Tensor> {
  const out = {} as Record<K, Tensor>;
  for (const name of Object.keys(shapes) as K[]) out[name] = make(name, shapes[name]);
  return out;
}

/** Creates the activation tensors of one block for up to `B` rows of `T` tokens. */
export function allocBlockActivations(
  gpu: Gpu,
  c: ModelConfig,
  B: number,
  T: number,
  promptLen: number,
  label: string,
): BlockActivations {
  return mapShapes(
    blockShapes(c, B, T, promptLen),
    (name, shape) => gpu.tensor(shape, "f32", `${label}.${name}`),
  );
}

/** Returns views of `acts` shaped for B rows of T tokens (B*T within the allocated size). */
export function shapeActivations(
  acts: BlockActivations,
  c: ModelConfig,
  B: number,
  T: number,
  promptLen: number,
): BlockActivations {
  return mapShapes(blockShapes(c, B, T, promptLen), (name, shape) => view(acts[name], shape));
}

/** Reshapes a tensor of M rows to `shape`, for the flat/head views of the same data. */
function as2d(t: Tensor, rows: number, cols: number): Tensor {
  return view(t, [rows, cols]);
}

/** Key/value cache of one block: (1, S, Hkv, D) each, S the capacity in positions. */
export interface KvCache {
  k: Tensor;
  v: Tensor;
}

/** Reads per-block bias tensors back from the GPU into the `Adapter.biases` layout. */
export async function readBiases(
  gpu: Gpu,
  blocks: Record<BiasName, Tensor>[],
): Promise<Float32Array> {
  const parts: Float32Array[] = [];
  for (const block of blocks) {
    for (const name of BIAS_NAMES) parts.push(await gpu.readF32(block[name]));
  }
  return joinBiases(parts);
}

/** A loaded model on the GPU with an optional adapter. */
export class Llama {
  readonly gpu: Gpu;
  readonly config: ModelConfig;
  readonly weights: GpuWeights;
  adapter: GpuAdapter | null = null;

  constructor(gpu: Gpu, weights: GpuWeights) {
    this.gpu = gpu;
    this.config = weights.config;
    this.weights = weights;
  }

  /** Uploads `adapter` (replacing any previous one). */
  setAdapter(adapter: Adapter | null): void {
    if (!adapter) {
      this.adapter = null;
      return;
    }
    const c = this.config;
    validateAdapterConfig(c, adapter.config);
    const { layers: K, length: L } = adapter.config;
    const first = firstAdaptedLayer(c, adapter.config);
    const prompts: Tensor[] = [];
    const gates: Tensor[] = [];
    const biases: Record<BiasName, Tensor>[] = [];
    const blockBias = biasBlockSize(c);
    if (adapter.config.bias && adapter.biases?.length !== K * blockBias) {
      throw new Error(
        `adapter biases hold ${adapter.biases?.length ?? 0} values, expected ${K * blockBias}`,
      );
    }
    for (let i = 0; i < K; i++) {
      prompts.push(this.gpu.upload(
        adapter.prompts.slice(i * L * c.dim, (i + 1) * L * c.dim),
        [L, c.dim],
        "f32",
        `adapter.prompt.${first + i}`,
      ));
      gates.push(this.gpu.upload(
        adapter.gates.slice(i * c.nHeads, (i + 1) * c.nHeads),
        [c.nHeads],
        "f32",
        `adapter.gate.${first + i}`,
      ));
      if (adapter.config.bias) {
        const block = splitBiases(c, adapter.biases!.slice(i * blockBias, (i + 1) * blockBias));
        const tensors = {} as Record<BiasName, Tensor>;
        for (const name of BIAS_NAMES) {
          tensors[name] = this.gpu.upload(
            block[name],
            [block[name].length],
            "f32",
            `adapter.bias.${first + i}.${name}`,
          );
        }
        biases.push(tensors);
      }
    }
    this.adapter = { config: { ...adapter.config }, first, prompts, gates, biases };
  }

  /** Reads the adapter back from the GPU. */
  async readAdapter(): Promise<Adapter> {
    const a = this.adapter;
    if (!a) throw new Error("no adapter is set");
    const c = this.config;
    const { layers: K, length: L } = a.config;
    const prompts = new Float32Array(K * L * c.dim);
    const gates = new Float32Array(K * c.nHeads);
    for (let i = 0; i < K; i++) {
      prompts.set(await this.gpu.readF32(a.prompts[i]), i * L * c.dim);
      gates.set(await this.gpu.readF32(a.gates[i]), i * c.nHeads);
    }
    const out: Adapter = { config: { ...a.config }, prompts, gates };
    if (a.config.bias) out.biases = await readBiases(this.gpu, a.biases);
    return out;
  }

  /** Index into the adapter's per-block tensors, or -1 when block `layer` is not adapted. */
  adapterIndex(layer: number): number {
    const a = this.adapter;
    if (!a || layer < a.first) return -1;
    return layer - a.first;
  }

  /** Records the embedding of `T` tokens per row for B rows into `x` (B*T, C). */
  embed(tokens: Tensor, x: Tensor, offset = 0): void {
    embeddingForward(this.gpu, tokens, this.weights.tokEmbedding, x, offset);
  }

  /** Records the prompt keys and values of an adapted block: P wk^T and P wv^T, (L, Hkv, D). */
  promptKeysValues(layer: number, promptK: Tensor, promptV: Tensor): void {
    const i = this.adapterIndex(layer);
    const a = this.adapter!;
    const w = this.weights.layers[layer];
    const L = a.config.length, kvDim = this.config.nKvHeads * headDim(this.config);
    matmul(this.gpu, a.prompts[i], w.wk, as2d(promptK, L, kvDim));
    matmul(this.gpu, a.prompts[i], w.wv, as2d(promptV, L, kvDim));
    this.addBias(layer, "wk", promptK, L);
    this.addBias(layer, "wv", promptV, L);
  }

  /**
   * Records y += the bias of linear layer `name` of block `layer`, for M rows, when the block is
   * adapted with bias tuning; otherwise records nothing.
   */
  addBias(layer: number, name: BiasName, y: Tensor, M: number): void {
    const i = this.adapterIndex(layer);
    if (i < 0 || !this.adapter!.config.bias) return;
    const b = this.adapter!.biases[i][name];
    addBiasRows(this.gpu, as2d(y, M, b.shape[0]), b);
  }

  /**
   * Records block `layer` on `acts.x` (B rows of T tokens at positions pos0..), writing every
   * activation that backward reads, and the block output into `out` (M, C). With a cache, keys and
   * values are written into it at rows pos0.. and attention reads the cache (B must be 1).
   */
  blockForward(
    layer: number,
    acts: BlockActivations,
    out: Tensor,
    B: number,
    T: number,
    pos0: number,
    cache?: KvCache,
  ): void {
    const gpu = this.gpu, c = this.config, w: GpuLayer = this.weights.layers[layer];
    const M = B * T, D = headDim(c), H = c.nHeads, Hkv = c.nKvHeads;
    const rope = { layout: c.ropeLayout, theta: c.ropeTheta, pos0 };

    rmsnormForward(gpu, acts.x, w.attnNorm, acts.xn1, acts.rstd1, c.normEps);

    matmul(gpu, acts.xn1, w.wq, as2d(acts.q, M, H * D));
    matmul(gpu, acts.xn1, w.wk, as2d(acts.k, M, Hkv * D));
    matmul(gpu, acts.xn1, w.wv, as2d(acts.v, M, Hkv * D));
    this.addBias(layer, "wq", acts.q, M);
    this.addBias(layer, "wk", acts.k, M);
    this.addBias(layer, "wv", acts.v, M);
    ropeForward(gpu, acts.q, acts.q, rope);
    ropeForward(gpu, acts.k, acts.k, rope);

    let keys = acts.k, values = acts.v;
    if (cache) {
      const rowBytes = Hkv * D * 4;
      gpu.copy(acts.k, 0, cache.k, pos0 * rowBytes, T * rowBytes);
      gpu.copy(acts.v, 0, cache.v, pos0 * rowBytes, T * rowBytes);
      keys = cache.k;
      values = cache.v;
    }

    const ai = this.adapterIndex(layer);
    let prompt = undefined;
    if (ai >= 0) {
      this.promptKeysValues(layer, acts.promptK, acts.promptV);
      prompt = { keys: acts.promptK, values: acts.promptV, gate: this.adapter!.gates[ai] };
    }
    attentionForward(gpu, {
      q: acts.q,
      k: keys,
      v: values,
      out: acts.att,
      lse: acts.lse,
      promptLse: prompt ? acts.lsePrompt : undefined,
      pos0,
      prompt,
    });

    gpu.copy(acts.x, 0, acts.xMid, 0, M * c.dim * 4);
    matmul(gpu, as2d(acts.att, M, H * D), w.wo, acts.xMid, { accumulate: true });
    this.addBias(layer, "wo", acts.xMid, M);

    rmsnormForward(gpu, acts.xMid, w.ffnNorm, acts.xn2, acts.rstd2, c.normEps);
    matmul(gpu, acts.xn2, w.w1, acts.a);
    matmul(gpu, acts.xn2, w.w3, acts.u);
    this.addBias(layer, "w1", acts.a, M);
    this.addBias(layer, "w3", acts.u, M);
    swigluForward(gpu, acts.a, acts.u, acts.h);

    if (out !== acts.xMid) gpu.copy(acts.xMid, 0, out, 0, M * c.dim * 4);
    matmul(gpu, acts.h, w.w2, out, { accumulate: true });
    this.addBias(layer, "w2", out, M);
  }

  /** Records the final norm and output projection: logits (M, V) from x (M, C). */
  head(x: Tensor, xn: Tensor, rstd: Tensor, logits: Tensor): void {
    rmsnormForward(this.gpu, x, this.weights.norm, xn, rstd, this.config.normEps);
    matmul(this.gpu, xn, this.weights.output, logits);
  }
}
