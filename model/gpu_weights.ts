/**
 * Uploads a checkpoint's frozen weights to the GPU, one tensor at a time, as f32 or packed 16-bit.
 */
import type { DType, Gpu, Tensor } from "../kernels/device.ts";
import { byteSize } from "../kernels/device.ts";
import { packHalf } from "../kernels/pack.ts";
import type { ModelConfig } from "./config.ts";
import type { ModelWeights, WeightSource } from "./weights.ts";

/** Storage of frozen linear and embedding weights on the GPU. */
export type WeightStorage = "f32" | "bf16" | "f16" | "auto";

/** One transformer block on the GPU; shapes as in `LayerWeights`. */
export interface GpuLayer {
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

/** A model's weights on the GPU. */
export interface GpuWeights {
  config: ModelConfig;
  /** (V, C) */
  tokEmbedding: Tensor;
  layers: GpuLayer[];
  /** (C) */
  norm: Tensor;
  /** (V, C); the embedding tensor itself when tied. */
  output: Tensor;
  /** Storage chosen for the matrices. */
  storage: "f32" | "bf16" | "f16";
  /** Bytes of GPU memory the weights use. */
  bytes: number;
}

/** Options for `uploadWeights`. */
export interface UploadOptions {
  /** "auto" keeps f32 unless a matrix would exceed the device's binding limit, then uses bf16. */
  storage?: WeightStorage;
  /** Called after each tensor with the count uploaded so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

function allSources(w: ModelWeights): WeightSource[] {
  const out = [w.tokEmbedding, w.norm];
  if (w.output) out.push(w.output);
  for (const l of w.layers) {
    out.push(l.attnNorm, l.wq, l.wk, l.wv, l.wo, l.ffnNorm, l.w1, l.w2, l.w3);
  }
  return out;
}

/** Chooses the storage of matrices for "auto": f32 when every matrix fits one binding. */
export function chooseStorage(gpu: Gpu, w: ModelWeights, storage: WeightStorage): DType {
  if (storage !== "auto") return storage;
  const limit = Math.min(gpu.info.maxStorageBufferBindingSize, gpu.info.maxBufferSize);
  const fits = allSources(w).every((s) => byteSize(s.shape, "f32") <= limit);
  return fits ? "f32" : "bf16";
}

async function uploadSource(gpu: Gpu, s: WeightSource, dtype: DType): Promise<Tensor> {
  if (dtype === "f32") return gpu.upload(await s.readF32(), s.shape, "f32", s.name);
  const half = dtype as "bf16" | "f16";
  if (s.dtype === half && s.readHalf) {
    return gpu.upload(await s.readHalf(), s.shape, half, s.name);
  }
  return gpu.upload(packHalf(await s.readF32(), half), s.shape, half, s.name);
}

/**
 * Uploads every tensor of `w`. Norm weights stay f32; matrices use the chosen storage. Tensors are
 * read from the checkpoint one at a time, so host memory holds at most one tensor beyond the file
 * cache.
 */
export async function uploadWeights(
  gpu: Gpu,
  w: ModelWeights,
  options: UploadOptions = {},
): Promise<GpuWeights> {
  const storage = chooseStorage(gpu, w, options.storage ?? "auto") as "f32" | "bf16" | "f16";
  const total = allSources(w).length;
  let done = 0;
  let bytes = 0;
  const up = async (s: WeightSource, matrix: boolean) => {
    const t = await uploadSource(gpu, s, matrix ? storage : "f32");
    bytes += t.buffer.size;
    options.onProgress?.(++done, total);
    return t;
  };
  const tokEmbedding = await up(w.tokEmbedding, true);
  const layers: GpuLayer[] = [];
  for (const l of w.layers) {
    layers.push({
      attnNorm: await up(l.attnNorm, false),
      wq: await up(l.wq, true),
      wk: await up(l.wk, true),
      wv: await up(l.wv, true),
      wo: await up(l.wo, true),
      ffnNorm: await up(l.ffnNorm, false),
      w1: await up(l.w1, true),
      w2: await up(l.w2, true),
      w3: await up(l.w3, true),
    });
  }
  const norm = await up(w.norm, false);
  const output = w.output ? await up(w.output, true) : tokEmbedding;
  await gpu.sync();
  return { config: w.config, tokEmbedding, layers, norm, output, storage, bytes };
}
