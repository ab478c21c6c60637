/**
 * Loads a checkpoint in any supported format, detecting the format from the path:
 *   - a llama2.c file (version 0 export): the file itself;
 *   - a Hugging Face Llama directory: config.json with model.safetensors or
 *     model.safetensors.index.json, given as the directory or any of those files;
 *   - a Meta directory: params.json with consolidated.NN.pth shards, given as the directory or any
 *     of those files.
 */
import { basename, dirname } from "node:path";
import { HF_CONFIG, HF_INDEX, HF_SINGLE, loadHuggingFace } from "./loaders/huggingface.ts";
import { loadLlama2c } from "./loaders/llama2c.ts";
import { listShards, loadMeta, META_PARAMS, META_SHARD } from "./loaders/meta.ts";
import type { ModelWeights } from "./weights.ts";

/** Checkpoint formats `loadModel` reads. */
export type CheckpointFormat = "llama2c" | "huggingface" | "meta";

/** Options for `loadModel`. */
export interface LoadOptions {
  /** Skip detection and read the path as this format. */
  format?: CheckpointFormat;
  /** Context length in tokens for Meta checkpoints, whose params.json usually lacks one. */
  maxSeqLen?: number;
}

const LOOKED_FOR = `a llama2.c checkpoint file, a Hugging Face directory (${HF_CONFIG} with ` +
  `${HF_SINGLE} or ${HF_INDEX}) or a Meta directory (${META_PARAMS} with consolidated.00.pth ` +
  `and any further shards)`;

async function stat(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Returns the file names in `dir`, sorted. */
async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) names.push(entry.name);
  return names.sort();
}

/** Returns the format of a checkpoint directory, or throws listing what was looked for. */
async function detectDirectory(dir: string): Promise<CheckpointFormat> {
  const names = new Set(await listDir(dir));
  const safetensors = names.has(HF_SINGLE) || names.has(HF_INDEX);
  if (names.has(HF_CONFIG) && safetensors) return "huggingface";
  if (names.has(META_PARAMS) && (await listShards(dir)).length > 0) return "meta";

  let hint = "";
  if (names.has(HF_CONFIG) && [...names].some((n) => /^pytorch_model.*\.bin$/.test(n))) {
    hint = ` It has ${HF_CONFIG} with pytorch_model*.bin weights; convert them to safetensors ` +
      `(for example with transformers: save_pretrained(..., safe_serialization=True)).`;
  } else if (names.has(HF_CONFIG)) {
    hint = ` It has ${HF_CONFIG} but no ${HF_SINGLE} or ${HF_INDEX}.`;
  } else if (names.has(META_PARAMS)) {
    hint = ` It has ${META_PARAMS} but no consolidated.NN.pth shards.`;
  } else if (safetensors) {
    hint = ` It has safetensors weights but no ${HF_CONFIG}.`;
  }
  const shown = [...names].slice(0, 10);
  const contents = names.size === 0
    ? "it is empty"
    : `it contains ${shown.join(", ")}${names.size > shown.length ? ", ..." : ""}`;
  throw new Error(
    `${dir}: no checkpoint found in this directory (${contents}). Looked for ${LOOKED_FOR}.` +
      `${hint} Give a llama2.c checkpoint as the path of its .bin file.`,
  );
}

/** True when the first bytes look like a safetensors header: a small length, then "{". */
function looksLikeSafetensors(head: Uint8Array): boolean {
  if (head.length < 9) return false;
  const length = new DataView(head.buffer, head.byteOffset).getBigUint64(0, true);
  return length > 1n && length < 100_000_000n && head[8] === 0x7b;
}

/** Returns the format of a checkpoint file and the path its loader takes. */
async function detectFile(path: string): Promise<[CheckpointFormat, string]> {
  const name = basename(path);
  const dir = dirname(path);
  if (name === HF_CONFIG || name === HF_INDEX || name.endsWith(".safetensors")) {
    return ["huggingface", dir];
  }
  if (name === META_PARAMS || META_SHARD.test(name)) return ["meta", dir];

  const file = await Deno.open(path, { read: true });
  const head = new Uint8Array(9);
  let filled = 0;
  try {
    while (filled < head.length) {
      const n = await file.read(head.subarray(filled));
      if (n === null) break;
      filled += n;
    }
  } finally {
    file.close();
  }
  const start = head.subarray(0, filled);
  if (looksLikeSafetensors(start)) return ["huggingface", dir];
  if (start[0] === 0x50 && start[1] === 0x4b && start[2] === 0x03 && start[3] === 0x04) {
    return ["meta", dir];
  }
  return ["llama2c", path];
}

/**
 * Loads a checkpoint lazily (tensors are read when first used), detecting its format from `path`
 * unless `options.format` is given. Throws when the path is missing or contains no recognised
 * checkpoint, listing the formats looked for, and otherwise with the loader's error, which names
 * the file and the tensor.
 *
 * Example: `const weights = await loadModel("models/stories260K.bin");`
 */
export async function loadModel(path: string, options: LoadOptions = {}): Promise<ModelWeights> {
  const info = await stat(path);
  if (!info) throw new Error(`${path}: not found; expected ${LOOKED_FOR}`);

  let format: CheckpointFormat;
  let target = path;
  if (info.isDirectory) format = options.format ?? await detectDirectory(path);
  else [format, target] = await detectFile(path);
  if (options.format && options.format !== format) {
    format = options.format;
    target = info.isDirectory || format === "llama2c" ? path : dirname(path);
  }

  if (format === "llama2c") return loadLlama2c(target);
  if (format === "huggingface") return loadHuggingFace(target);
  return loadMeta(target, { maxSeqLen: options.maxSeqLen });
}
