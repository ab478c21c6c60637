/**
 * LLaMA-Adapter parameters: adaption prompts and zero-initialised gates for the top blocks.
 *
 * The method ("LLaMA-Adapter: Efficient Fine-tuning of Language Models with Zero-init Attention",
 * Zhang et al., 2023) freezes the base model and trains, for each of the top K blocks, a prompt of
 * L learnable vectors of the model width and one gate per attention head. Inside an adapted block,
 * the prompt is projected by the block's frozen wk and wv into L extra keys and values (without rotary
 * embedding); every query attends to them through a separate softmax whose output is scaled by
 * tanh(gate) and added to the ordinary causal attention output:
 *
 *     out_h = tanh(g_h) * softmax(q K_p^T / sqrt(D)) V_p + softmax_causal(q K^T / sqrt(D)) V
 *
 * The gates start at zero, so the adapted model starts as exactly the base model and the first
 * gradient reaches the gates alone.
 *
 * Checkpoints use the tensor names of the reference release: `adapter_query.weight` of shape
 * (K * L, dim), prompts of the lowest adapted block first, and `layers.{i}.attention.gate` of shape
 * (1, n_heads, 1, 1) for each adapted block index i.
 *
 * Optional bias tuning is the bias half of LLaMA-Adapter V2's "bias tuning" (Gao et al., 2023).
 * Each adapted block also trains a bias on the output of each of its seven linear layers (wq, wk,
 * wv, wo, w1, w2, w3), added after the matrix product and before the rotary embedding. The biases
 * start at zero, so the adapted model still starts as the base model. The prompt keys and values
 * go through the same biased wk and wv. V2's per-channel scales and unfrozen norms are not
 * implemented.
 */
import { headDim, type ModelConfig } from "./config.ts";
import type { ModelWeights } from "./weights.ts";
import { Rng } from "./rng.ts";

/** Shape of an adapter. */
export interface AdapterConfig {
  /** Number of adapted blocks K, counted from the top. */
  layers: number;
  /** Prompt length L per adapted block. */
  length: number;
  /** Also train a bias on every linear layer of the adapted blocks (see the module comment). */
  bias?: boolean;
}

/** Adapter parameters on the CPU. */
export interface Adapter {
  config: AdapterConfig;
  /** (K, L, dim): prompts, the lowest adapted block first. */
  prompts: Float32Array;
  /** (K, n_heads): gate values before tanh. */
  gates: Float32Array;
  /**
   * With `config.bias`: (K, biasBlockSize) biases, the lowest adapted block first, each block's
   * biases in BIAS_NAMES order. Absent otherwise.
   */
  biases?: Float32Array;
}

/** Linear layers that get a bias with bias tuning, in the order they are stored. */
export const BIAS_NAMES = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"] as const;

/** Name of a linear layer of a block. */
export type BiasName = typeof BIAS_NAMES[number];

/** Returns the output width of each linear layer of a block: the length of its bias. */
export function biasSizes(model: ModelConfig): Record<BiasName, number> {
  const D = headDim(model);
  return {
    wq: model.nHeads * D,
    wk: model.nKvHeads * D,
    wv: model.nKvHeads * D,
    wo: model.dim,
    w1: model.hiddenDim,
    w2: model.dim,
    w3: model.hiddenDim,
  };
}

/** Returns the count of bias values of one block. */
export function biasBlockSize(model: ModelConfig): number {
  return Object.values(biasSizes(model)).reduce((a, b) => a + b, 0);
}

/** Joins bias values, given in storage order, into one array: the inverse of `splitBiases`. */
export function joinBiases(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/** Splits one block's biases (biasBlockSize values) into views per linear layer. */
export function splitBiases(
  model: ModelConfig,
  block: Float32Array,
): Record<BiasName, Float32Array> {
  const sizes = biasSizes(model);
  const out = {} as Record<BiasName, Float32Array>;
  let offset = 0;
  for (const name of BIAS_NAMES) {
    out[name] = block.subarray(offset, offset + sizes[name]);
    offset += sizes[name];
  }
  return out;
}

/** Default number of adapted blocks: all but the first two, as the published 7B recipe (30 of 32). */
export function defaultAdapterLayers(config: ModelConfig): number {
  return Math.max(1, config.nLayers - 2);
}

/** Returns the index of the lowest adapted block. */
export function firstAdaptedLayer(model: ModelConfig, adapter: AdapterConfig): number {
  return model.nLayers - adapter.layers;
}

/** Throws a message naming the option when the adapter does not fit the model. */
export function validateAdapterConfig(model: ModelConfig, adapter: AdapterConfig): void {
  if (!Number.isInteger(adapter.layers) || adapter.layers < 1 || adapter.layers > model.nLayers) {
    throw new Error(
      `--adapter-layers must be an integer from 1 to the model's ${model.nLayers} layers, ` +
        `got ${adapter.layers}`,
    );
  }
  if (!Number.isInteger(adapter.length) || adapter.length < 1) {
    throw new Error(`--adapter-len must be a positive integer, got ${adapter.length}`);
  }
}

/**
 * Creates an adapter with prompts drawn from a standard normal distribution (seeded), all gates
 * zero and, with `config.bias`, all biases zero.
 */
export function initAdapter(model: ModelConfig, config: AdapterConfig, seed: number): Adapter {
  validateAdapterConfig(model, config);
  const rng = new Rng(seed);
  const adapter: Adapter = {
    config: { ...config },
    prompts: rng.normals(config.layers * config.length * model.dim),
    gates: new Float32Array(config.layers * model.nHeads),
  };
  if (config.bias) adapter.biases = new Float32Array(config.layers * biasBlockSize(model));
  return adapter;
}

/** Count of trainable adapter parameters. */
export function adapterParameterCount(model: ModelConfig, config: AdapterConfig): number {
  const bias = config.bias ? biasBlockSize(model) : 0;
  return config.layers * (config.length * model.dim + model.nHeads + bias);
}

/** Identity of a base model: its architecture and a few weight statistics. */
export interface ModelFingerprint {
  /** dim, hidden, layers, heads, kv heads and vocab, joined by "/". */
  arch: string;
  /** Root mean squares and means of the embedding rows and the final norm. */
  stats: number[];
}

function rms(x: Float32Array): number {
  let s = 0;
  for (const v of x) s += v * v;
  return Math.sqrt(s / Math.max(1, x.length));
}

function mean(x: Float32Array): number {
  let s = 0;
  for (const v of x) s += v;
  return s / Math.max(1, x.length);
}

/**
 * Computes a fingerprint of a base model, recorded in adapters so that loading one onto another
 * base model fails. Statistics instead of a hash make the same model stored as f32, f16 or bf16
 * match (compared with a 1% tolerance by `sameModel`).
 */
export async function modelFingerprint(weights: ModelWeights): Promise<ModelFingerprint> {
  const c = weights.config;
  // The rotary layout is left out: prompt keys get no rotary embedding, so an adapter works the
  // same on a Hugging Face copy of a model whose q/k rows are permuted.
  const arch = [c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.vocabSize].join("/");
  const norm = await weights.norm.readF32();
  const emb = await weights.tokEmbedding.readF32();
  const first = emb.subarray(0, c.dim);
  const last = emb.subarray(emb.length - c.dim);
  const stats = [rms(emb), rms(first), rms(last), mean(first), mean(last), rms(norm), mean(norm)];
  return { arch, stats: stats.map((v) => Number(v.toPrecision(6))) };
}

/** Returns a reason when two fingerprints differ, or null when they describe the same model. */
export function fingerprintMismatch(a: ModelFingerprint, b: ModelFingerprint): string | null {
  if (a.arch !== b.arch) return `architecture ${a.arch} differs from ${b.arch}`;
  for (let i = 0; i < a.stats.length; i++) {
    const x = a.stats[i], y = b.stats[i];
    if (Math.abs(x - y) > 1e-6 + 0.01 * Math.max(Math.abs(x), Math.abs(y))) {
      return `weight statistic ${i} is ${x} here and ${y} in the other model`;
    }
  }
  return null;
}
