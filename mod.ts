/**
 * llama-adapter: fine-tune LLaMA-family models with LLaMA-Adapter on any GPU through WebGPU.
 *
 * @example
 * import { openModel, Session } from "./mod.ts";
 * const { llama, tokenizer } = await openModel({ model: "demo/model" });
 * const session = Session.create(llama);
 * const ids = tokenizer!.encode("Once upon a time", { bos: true });
 * const { ids: out } = await session.generate(ids, {
 *   temperature: 0, topP: 1, seed: 0, maxTokens: 32, eosIds: llama.config.eosIds,
 * });
 * console.log(tokenizer!.decode(out));
 *
 * @module
 */
export { Gpu, type GpuInfo, type Tensor } from "./kernels/device.ts";
export { type ModelConfig, type RopeLayout } from "./model/config.ts";
export type { ModelWeights, WeightSource } from "./model/weights.ts";
export { loadModel } from "./model/load.ts";
export { type OpenedModel, openModel, type OpenOptions } from "./model/open.ts";
export { type GpuWeights, uploadWeights } from "./model/gpu_weights.ts";
export { Llama } from "./model/llama.ts";
export { type SamplingOptions, Session, type StopReason } from "./model/session.ts";
export {
  type Adapter,
  type AdapterConfig,
  adapterParameterCount,
  defaultAdapterLayers,
  initAdapter,
  modelFingerprint,
} from "./model/adapter.ts";
export { loadAdapter, readAdapterFile, saveAdapter } from "./model/adapter_file.ts";
export { type AdapterGradients, adapterLossAndGrads } from "./model/grad.ts";
export { TrainGraph } from "./model/train_graph.ts";
export type { Tokenizer } from "./data/tokenizer.ts";
export { loadTokenizer } from "./data/load_tokenizer.ts";
export { formatPrompt, type TemplateName } from "./data/templates.ts";
export { loadDataset, loadTrainingData } from "./data/dataset.ts";
export { BatchSampler, makeBatch } from "./data/batch.ts";
export { finetune, type FinetuneOptions } from "./train/finetune.ts";
export { evaluateLoss } from "./train/evaluate.ts";
export { exactMatchAccuracy } from "./train/accuracy.ts";
export { learningRate, scaledLearningRate } from "./train/schedule.ts";
