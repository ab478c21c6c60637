/** The architecture of the demo base model, shared by the pretraining and profiling scripts. */
import type { ModelConfig } from "../model/config.ts";

/** Architecture of the demo base model. */
export const DEMO_CONFIG: ModelConfig = {
  dim: 64,
  hiddenDim: 176,
  nLayers: 4,
  nHeads: 4,
  nKvHeads: 2,
  vocabSize: 768,
  maxSeqLen: 256,
  normEps: 1e-5,
  ropeTheta: 10000,
  ropeLayout: "half",
  tiedEmbeddings: true,
  bosId: 1,
  eosIds: [2],
};
