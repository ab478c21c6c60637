/**
 * The canonical tensor names and the shapes a config implies, shared by every loader.
 *
 * Canonical names follow Meta's checkpoints without the `.weight` suffix: `tok_embeddings`,
 * `layers.{i}.attention_norm`, `layers.{i}.attention.{wq,wk,wv,wo}`, `layers.{i}.ffn_norm`,
 * `layers.{i}.feed_forward.{w1,w2,w3}`, `norm` and `output`.
 */
import { fmtShape } from "../../kernels/device.ts";
import { headDim, type ModelConfig } from "../config.ts";
import type { LayerWeights, ModelWeights, WeightSource } from "../weights.ts";

/** Canonical names of one block's tensors, by `LayerWeights` field. */
export const LAYER_TENSORS: Record<keyof LayerWeights, string> = {
  attnNorm: "attention_norm",
  wq: "attention.wq",
  wk: "attention.wk",
  wv: "attention.wv",
  wo: "attention.wo",
  ffnNorm: "ffn_norm",
  w1: "feed_forward.w1",
  w2: "feed_forward.w2",
  w3: "feed_forward.w3",
};

/** Returns the canonical name of tensor `part` (a `LAYER_TENSORS` value) of block `layer`. */
export function layerTensorName(layer: number, part: string): string {
  return `layers.${layer}.${part}`;
}

/**
 * Returns every canonical tensor name with the shape `config` implies, in checkpoint order:
 * embedding, blocks, final norm, then `output` unless the embeddings are tied.
 */
export function expectedShapes(config: ModelConfig): Map<string, number[]> {
  const { dim: C, hiddenDim: F, vocabSize: V } = config;
  const qDim = config.nHeads * headDim(config);
  const kvDim = config.nKvHeads * headDim(config);
  const layerShapes: Record<keyof LayerWeights, number[]> = {
    attnNorm: [C],
    wq: [qDim, C],
    wk: [kvDim, C],
    wv: [kvDim, C],
    wo: [C, qDim],
    ffnNorm: [C],
    w1: [F, C],
    w2: [C, F],
    w3: [F, C],
  };
  const shapes = new Map<string, number[]>();
  shapes.set("tok_embeddings", [V, C]);
  for (let l = 0; l < config.nLayers; l++) {
    for (const [field, part] of Object.entries(LAYER_TENSORS)) {
      shapes.set(layerTensorName(l, part), layerShapes[field as keyof LayerWeights]);
    }
  }
  shapes.set("norm", [C]);
  if (!config.tiedEmbeddings) shapes.set("output", [V, C]);
  return shapes;
}

/** Returns a short description of a config's sizes for shape-mismatch messages. */
export function describeConfig(c: ModelConfig): string {
  return `dim ${c.dim}, hidden ${c.hiddenDim}, ${c.nLayers} layers, ${c.nHeads} heads, ` +
    `${c.nKvHeads} kv heads, vocab ${c.vocabSize}`;
}

/** Access to one checkpoint's tensors by canonical name, supplied by each loader. */
export interface TensorLookup {
  /** Returns the tensor for a canonical name, or undefined when the checkpoint lacks it. */
  find(canonical: string): WeightSource | undefined;
  /** Returns the name the checkpoint stores a canonical tensor under, for messages. */
  storedName(canonical: string): string;
  /** File or directory the tensors were looked for in, for messages. */
  where: string;
  /** The file the config came from, for shape-mismatch messages. */
  configFile: string;
}

/**
 * Collects every tensor `config` needs into `ModelWeights`, checking that each is present and has
 * the expected shape. Throws naming the tensor, its stored name and the files involved.
 */
export function assembleWeights(
  config: ModelConfig,
  lookup: TensorLookup,
  format: string,
  path: string,
): ModelWeights {
  const shapes = expectedShapes(config);
  const get = (canonical: string): WeightSource => {
    const source = lookup.find(canonical);
    const stored = lookup.storedName(canonical);
    if (!source) {
      throw new Error(
        `${lookup.where}: tensor "${stored}" is missing; the checkpoint is incomplete or is not ` +
          `a LLaMA model, so download or export it again`,
      );
    }
    const expected = shapes.get(canonical)!;
    if (fmtShape(source.shape) !== fmtShape(expected)) {
      throw new Error(
        `${source.file}: tensor "${stored}" has shape ${fmtShape(source.shape)}, expected ` +
          `${fmtShape(expected)} from ${lookup.configFile} (${describeConfig(config)}); the ` +
          `config and the weights do not belong together`,
      );
    }
    return source;
  };

  const tokEmbedding = get("tok_embeddings");
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const layer = {} as LayerWeights;
    for (const [field, part] of Object.entries(LAYER_TENSORS)) {
      layer[field as keyof LayerWeights] = get(layerTensorName(l, part));
    }
    layers.push(layer);
  }
  return {
    config,
    tokEmbedding,
    layers,
    norm: get("norm"),
    output: config.tiedEmbeddings ? null : get("output"),
    format,
    path,
  };
}
