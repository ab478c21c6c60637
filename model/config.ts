/**
 * Model configuration shared by every checkpoint format, and the adapter's own settings.
 */

/**
 * Rotary pairing of the q/k projection rows. llama2.c and Meta checkpoints rotate interleaved pairs
 * (2i, 2i+1) of each head; Hugging Face checkpoints permute q_proj/k_proj so that the pairs are
 * (i, i + head_dim/2), the "rotate half" layout.
 */
export type RopeLayout = "interleaved" | "half";

/** Architecture of a LLaMA-family model. */
export interface ModelConfig {
  /** Model width (hidden_size, dim). */
  dim: number;
  /** SwiGLU inner width (intermediate_size). */
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  /** Key/value heads; nHeads / nKvHeads query heads share each one (grouped-query attention). */
  nKvHeads: number;
  vocabSize: number;
  /** Longest sequence the model supports, in tokens. */
  maxSeqLen: number;
  normEps: number;
  ropeTheta: number;
  ropeLayout: RopeLayout;
  /** True when the output projection is the token embedding matrix. */
  tiedEmbeddings: boolean;
  bosId: number;
  /** Token ids that end generation. */
  eosIds: number[];
}

/** Width of one attention head. */
export function headDim(c: ModelConfig): number {
  return c.dim / c.nHeads;
}

/** Throws with the offending field when a config is inconsistent. `source` names the file. */
export function validateConfig(c: ModelConfig, source: string): void {
  const positive: (keyof ModelConfig)[] = [
    "dim",
    "hiddenDim",
    "nLayers",
    "nHeads",
    "nKvHeads",
    "vocabSize",
    "maxSeqLen",
  ];
  for (const k of positive) {
    const v = c[k] as number;
    if (!Number.isInteger(v) || v <= 0) {
      throw new Error(`${source}: ${k} must be a positive integer, got ${v}`);
    }
  }
  if (c.dim % c.nHeads !== 0) {
    throw new Error(`${source}: dim ${c.dim} is not divisible by the ${c.nHeads} attention heads`);
  }
  if (c.nHeads % c.nKvHeads !== 0) {
    throw new Error(
      `${source}: ${c.nHeads} attention heads are not divisible by ${c.nKvHeads} key/value heads`,
    );
  }
  if (headDim(c) % 2 !== 0) {
    throw new Error(`${source}: head dimension ${headDim(c)} must be even for rotary embedding`);
  }
  if (!(c.normEps > 0) || !(c.ropeTheta > 0)) {
    throw new Error(`${source}: normEps and ropeTheta must be positive`);
  }
}
