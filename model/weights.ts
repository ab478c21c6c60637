/**
 * Checkpoint tensors as every loader returns them: one canonical set of names and shapes, each
 * tensor read lazily from its file so a large checkpoint is never held twice in memory.
 *
 * Linear weights are (out_features, in_features), so a layer computes y = x W^T. The rotary pairing
 * of wq/wk rows is the checkpoint's own and is recorded in `ModelConfig.ropeLayout`.
 */
import type { ModelConfig } from "./config.ts";

/** Element type of stored weights. */
export type WeightDType = "f32" | "bf16" | "f16";

/** A tensor in a checkpoint, read on demand. */
export interface WeightSource {
  /** Canonical name, e.g. `layers.3.attention.wq`. */
  name: string;
  shape: number[];
  /** Type as stored in the file. */
  dtype: WeightDType;
  /** File the tensor comes from, for error messages. */
  file: string;
  /** Reads the values as f32. */
  readF32(): Promise<Float32Array>;
  /** Reads the raw 16-bit values of a bf16/f16 tensor; undefined for f32 tensors. */
  readHalf?: () => Promise<Uint16Array>;
}

/** Tensors of one transformer block, with shapes for dim C, heads H, kv heads Hkv, head size D. */
export interface LayerWeights {
  /** (C) */
  attnNorm: WeightSource;
  /** (H*D, C) */
  wq: WeightSource;
  /** (Hkv*D, C) */
  wk: WeightSource;
  /** (Hkv*D, C) */
  wv: WeightSource;
  /** (C, H*D) */
  wo: WeightSource;
  /** (C) */
  ffnNorm: WeightSource;
  /** (hidden, C), the gate projection */
  w1: WeightSource;
  /** (C, hidden), the down projection */
  w2: WeightSource;
  /** (hidden, C), the up projection */
  w3: WeightSource;
}

/** A loaded checkpoint. */
export interface ModelWeights {
  config: ModelConfig;
  /** (V, C) */
  tokEmbedding: WeightSource;
  layers: LayerWeights[];
  /** (C) */
  norm: WeightSource;
  /** (V, C), or null when tied to the embedding. */
  output: WeightSource | null;
  /** Description of the checkpoint format, e.g. "llama2.c", "safetensors", "meta". */
  format: string;
  /** Path given by the user. */
  path: string;
}
