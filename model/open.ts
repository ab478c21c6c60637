/**
 * Opens a model for use: reads the checkpoint and tokenizer, uploads the weights to the GPU, and
 * applies an adapter, checking that it was trained on this base model.
 */
import { Gpu } from "../kernels/device.ts";
import { loadTokenizer } from "../data/load_tokenizer.ts";
import type { Tokenizer } from "../data/tokenizer.ts";
import { loadModel } from "./load.ts";
import type { ModelWeights } from "./weights.ts";
import { type ModelFingerprint, modelFingerprint } from "./adapter.ts";
import { type AdapterFile, loadAdapter } from "./adapter_file.ts";
import { uploadWeights, type WeightStorage } from "./gpu_weights.ts";
import { Llama } from "./llama.ts";

/** Options for `openModel`. */
export interface OpenOptions {
  /** Checkpoint file or directory. */
  model: string;
  /** Weights already loaded (or initialised); `model` is then only a name for messages. */
  checkpoint?: ModelWeights;
  /** Tokenizer file; by default one found beside the model. */
  tokenizer?: string;
  /** Skip the tokenizer (for token-id work such as logits checks). */
  noTokenizer?: boolean;
  /** Adapter checkpoint to apply. */
  adapter?: string;
  /** GPU storage of frozen matrices. */
  weights?: WeightStorage;
  /** A device to reuse; one is created otherwise. */
  gpu?: Gpu;
  /** Print the adapter and load progress to stderr. */
  log?: boolean;
}

/** An opened model. */
export interface OpenedModel {
  gpu: Gpu;
  checkpoint: ModelWeights;
  llama: Llama;
  tokenizer: Tokenizer | null;
  fingerprint: ModelFingerprint;
  adapter: AdapterFile | null;
}

/** Opens a model, its tokenizer and optionally an adapter. Throws with the file and the fix. */
export async function openModel(options: OpenOptions): Promise<OpenedModel> {
  const checkpoint = options.checkpoint ?? await loadModel(options.model);
  const tokenizer = options.noTokenizer
    ? null
    : await loadTokenizer(options.tokenizer ?? options.model, {
      vocabSize: checkpoint.config.vocabSize,
    });
  if (tokenizer && tokenizer.vocabSize > checkpoint.config.vocabSize) {
    throw new Error(
      `tokenizer ${tokenizer.source} has ${tokenizer.vocabSize} tokens but the model ` +
        `${options.model} only ${checkpoint.config.vocabSize}; pass the model's own tokenizer ` +
        `with --tokenizer`,
    );
  }
  const fingerprint = await modelFingerprint(checkpoint);
  const adapter = options.adapter
    ? await loadAdapter(options.adapter, checkpoint.config, fingerprint)
    : null;
  const gpu = options.gpu ?? await Gpu.create({ log: options.log });
  const weights = await uploadWeights(gpu, checkpoint, { storage: options.weights ?? "auto" });
  const llama = new Llama(gpu, weights);
  if (adapter) llama.setAdapter(adapter.adapter);
  return { gpu, checkpoint, llama, tokenizer, fingerprint, adapter };
}
