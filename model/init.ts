/**
 * Fresh model weights for pretraining from scratch: linear and embedding weights drawn from a
 * normal distribution with standard deviation 0.02 (the output projections of each block, wo and
 * w2, scaled down by 1/sqrt(2 * layers) so the residual stream starts small), norms at one.
 */
import { headDim, type ModelConfig, validateConfig } from "./config.ts";
import { Rng } from "./rng.ts";
import type { LayerWeights, ModelWeights, WeightSource } from "./weights.ts";

/** Standard deviation of initial linear and embedding weights. */
export const INIT_STD = 0.02;

function memorySource(name: string, shape: number[], data: Float32Array): WeightSource {
  return {
    name,
    shape,
    dtype: "f32",
    file: "(initialised in memory)",
    readF32: () => Promise.resolve(data),
  };
}

/** Returns seeded random weights for `config`, held in memory. */
export function randomWeights(config: ModelConfig, seed: number): ModelWeights {
  validateConfig(config, "model config");
  const rng = new Rng(seed);
  const C = config.dim, F = config.hiddenDim, V = config.vocabSize;
  const qDim = config.nHeads * headDim(config), kvDim = config.nKvHeads * headDim(config);
  const residualStd = INIT_STD / Math.sqrt(2 * config.nLayers);
  const normal = (name: string, shape: number[], std = INIT_STD) =>
    memorySource(name, shape, rng.normals(shape[0] * (shape[1] ?? 1), std));
  const ones = (name: string) => memorySource(name, [C], new Float32Array(C).fill(1));

  const tokEmbedding = normal("tok_embeddings", [V, C]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    layers.push({
      attnNorm: ones(`layers.${l}.attention_norm`),
      wq: normal(`layers.${l}.attention.wq`, [qDim, C]),
      wk: normal(`layers.${l}.attention.wk`, [kvDim, C]),
      wv: normal(`layers.${l}.attention.wv`, [kvDim, C]),
      wo: normal(`layers.${l}.attention.wo`, [C, qDim], residualStd),
      ffnNorm: ones(`layers.${l}.ffn_norm`),
      w1: normal(`layers.${l}.feed_forward.w1`, [F, C]),
      w2: normal(`layers.${l}.feed_forward.w2`, [C, F], residualStd),
      w3: normal(`layers.${l}.feed_forward.w3`, [F, C]),
    });
  }
  return {
    config,
    tokEmbedding,
    layers,
    norm: ones("norm"),
    output: config.tiedEmbeddings ? null : normal("output", [V, C]),
    format: "initialised",
    path: "(initialised in memory)",
  };
}
