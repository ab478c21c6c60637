/**
 * Adapter checkpoints: the adapter's tensors in safetensors, named as in the reference
 * LLaMA-Adapter release, with metadata describing the adapter and the base model it was trained on.
 *
 * Tensors: `adapter_query.weight` (K * L, dim), the prompts of the lowest adapted block first, and
 * `layers.{i}.attention.gate` (1, n_heads, 1, 1) for each adapted block i. With bias tuning, also
 * one 1-d bias per linear layer of each adapted block, named after the layer as in Meta
 * checkpoints: `layers.{i}.attention.wq.bias` (also wk, wv, wo) and
 * `layers.{i}.feed_forward.w1.bias` (also w2, w3).
 * Metadata (all strings): `format` = "llama-adapter", `adapter_layers`, `adapter_len`,
 * `first_layer`, `gate` = "tanh", `bias` = "true" or "false", `template`, `base_model` (a path,
 * informational), `base_fingerprint` (JSON of `ModelFingerprint`), and free-form training details.
 * A file without `bias` has no biases.
 */
import { writeFileAtomic } from "../train/atomic.ts";
import type { ModelConfig } from "./config.ts";
import {
  type Adapter,
  BIAS_NAMES,
  biasBlockSize,
  type BiasName,
  biasSizes,
  fingerprintMismatch,
  firstAdaptedLayer,
  joinBiases,
  type ModelFingerprint,
  splitBiases,
  validateAdapterConfig,
} from "./adapter.ts";
import { encodeSafetensors, type NamedTensor } from "./safetensors_write.ts";
import { readF32Tensor, readSafetensors } from "./loaders/safetensors.ts";

/** Metadata stored with an adapter. */
export interface AdapterMetadata {
  /** Prompt template the adapter was trained with ("alpaca", "none"). */
  template: string;
  baseModel: string;
  fingerprint: ModelFingerprint;
  /** Extra string fields (training step, data file, ...). */
  extra?: Record<string, string>;
}

/** Adapter tensors plus their metadata, as stored in a file. */
export interface AdapterFile {
  adapter: Adapter;
  metadata: AdapterMetadata;
  /** Index of the lowest adapted block recorded in the file. */
  firstLayer: number;
  /** With bias tuning: the length of each linear layer's bias, the same in every block. */
  biasSizes?: Record<BiasName, number>;
}

/** Returns the tensor name of linear layer `name`'s bias in block `layer`. */
export function biasTensorName(layer: number, name: BiasName): string {
  const part = name === "w1" || name === "w2" || name === "w3" ? "feed_forward" : "attention";
  return `layers.${layer}.${part}.${name}.bias`;
}

/** Returns the safetensors bytes of an adapter. */
export function encodeAdapter(
  model: ModelConfig,
  adapter: Adapter,
  meta: AdapterMetadata,
): Uint8Array {
  const { layers: K, length: L } = adapter.config;
  const first = firstAdaptedLayer(model, adapter.config);
  const tensors: NamedTensor[] = [
    { name: "adapter_query.weight", shape: [K * L, model.dim], data: adapter.prompts },
  ];
  for (let i = 0; i < K; i++) {
    tensors.push({
      name: `layers.${first + i}.attention.gate`,
      shape: [1, model.nHeads, 1, 1],
      data: adapter.gates.slice(i * model.nHeads, (i + 1) * model.nHeads),
    });
  }
  if (adapter.config.bias) {
    const size = biasBlockSize(model);
    for (let i = 0; i < K; i++) {
      const block = splitBiases(model, adapter.biases!.slice(i * size, (i + 1) * size));
      for (const name of BIAS_NAMES) {
        const data = block[name];
        tensors.push({ name: biasTensorName(first + i, name), shape: [data.length], data });
      }
    }
  }
  return encodeSafetensors(tensors, {
    format: "llama-adapter",
    adapter_layers: String(K),
    adapter_len: String(L),
    first_layer: String(first),
    gate: "tanh",
    bias: adapter.config.bias ? "true" : "false",
    template: meta.template,
    base_model: meta.baseModel,
    base_fingerprint: JSON.stringify(meta.fingerprint),
    ...(meta.extra ?? {}),
  });
}

/** Writes an adapter to `path` atomically. */
export async function saveAdapter(
  path: string,
  model: ModelConfig,
  adapter: Adapter,
  meta: AdapterMetadata,
): Promise<void> {
  await writeFileAtomic(path, encodeAdapter(model, adapter, meta));
}

/**
 * Reads an adapter file. Throws an error naming the file for a truncated or malformed file, a
 * missing tensor or field, or a shape that does not match the metadata.
 */
export async function readAdapterFile(path: string): Promise<AdapterFile> {
  const fail = (msg: string): never => {
    throw new Error(`adapter ${path}: ${msg}`);
  };
  // Errors of the safetensors reader start with the path, so "adapter " makes them read as ours.
  const prefixed = async <T>(read: () => Promise<T>): Promise<T> => {
    try {
      return await read();
    } catch (e) {
      throw new Error(`adapter ${(e as Error).message}`);
    }
  };
  const st = await prefixed(() => readSafetensors(path));
  const meta = st.metadata;
  if (meta.format !== "llama-adapter") {
    fail(`metadata format is '${meta.format}', expected 'llama-adapter'; is this an adapter file?`);
  }
  const K = Number(meta.adapter_layers), L = Number(meta.adapter_len);
  const first = Number(meta.first_layer);
  if (!(K >= 1) || !(L >= 1) || !(first >= 0)) {
    fail(`metadata adapter_layers/adapter_len/first_layer are missing or invalid`);
  }
  if (meta.gate !== "tanh") fail(`gate function '${meta.gate}' is not supported (only tanh)`);
  const tensor = (name: string) => prefixed(() => readF32Tensor(st, name));
  const query = await tensor("adapter_query.weight");
  if (query.shape.length !== 2 || query.shape[0] !== K * L) {
    fail(`adapter_query.weight has shape [${query.shape}], expected [${K * L}, dim]`);
  }
  const gates: Float32Array[] = [];
  let nHeads = -1;
  for (let i = 0; i < K; i++) {
    const g = await tensor(`layers.${first + i}.attention.gate`);
    if (g.shape.length !== 4 || g.shape[0] !== 1 || g.shape[2] !== 1 || g.shape[3] !== 1) {
      fail(
        `layers.${first + i}.attention.gate has shape [${g.shape}], expected [1, n_heads, 1, 1]`,
      );
    }
    if (nHeads >= 0 && g.shape[1] !== nHeads) fail(`gate tensors disagree on the head count`);
    nHeads = g.shape[1];
    gates.push(g.data);
  }
  const allGates = new Float32Array(K * nHeads);
  gates.forEach((g, i) => allGates.set(g, i * nHeads));
  if (meta.bias !== undefined && meta.bias !== "true" && meta.bias !== "false") {
    fail(`metadata bias is '${meta.bias}', expected 'true' or 'false'`);
  }
  const bias = meta.bias === "true";
  let biases: Float32Array | undefined;
  let sizes: Record<BiasName, number> | undefined;
  if (bias) {
    const parts: Float32Array[] = [];
    sizes = {} as Record<BiasName, number>;
    for (let i = 0; i < K; i++) {
      for (const name of BIAS_NAMES) {
        const tensorName = biasTensorName(first + i, name);
        const b = await tensor(tensorName);
        if (b.shape.length !== 1) fail(`${tensorName} has shape [${b.shape}], expected 1-d`);
        if (i === 0) sizes[name] = b.shape[0];
        else if (sizes[name] !== b.shape[0]) {
          fail(`${tensorName} has ${b.shape[0]} values, block ${first} has ${sizes[name]}`);
        }
        parts.push(b.data);
      }
    }
    biases = joinBiases(parts);
  }
  let fingerprint: ModelFingerprint;
  try {
    fingerprint = JSON.parse(meta.base_fingerprint);
  } catch {
    return fail(`metadata base_fingerprint is missing or not JSON`);
  }
  const extra: Record<string, string> = {};
  const known = new Set([
    "format",
    "adapter_layers",
    "adapter_len",
    "first_layer",
    "gate",
    "bias",
    "template",
    "base_model",
    "base_fingerprint",
  ]);
  for (const [k, v] of Object.entries(meta)) if (!known.has(k)) extra[k] = v;
  const adapter: Adapter = {
    config: { layers: K, length: L, bias },
    prompts: query.data,
    gates: allGates,
  };
  if (biases) adapter.biases = biases;
  return {
    adapter,
    biasSizes: sizes,
    metadata: {
      template: meta.template ?? "none",
      baseModel: meta.base_model ?? "",
      fingerprint,
      extra,
    },
    firstLayer: first,
  };
}

/**
 * Reads an adapter and checks it against the base model: dimensions, head count, adapted blocks
 * and the fingerprint. Throws an error naming the file and the mismatch.
 */
export async function loadAdapter(
  path: string,
  model: ModelConfig,
  fingerprint: ModelFingerprint,
): Promise<AdapterFile> {
  const file = await readAdapterFile(path);
  const { adapter } = file;
  const dim = adapter.prompts.length / (adapter.config.layers * adapter.config.length);
  const nHeads = adapter.gates.length / adapter.config.layers;
  const other = (why: string) =>
    new Error(
      `adapter ${path} was trained for another base model (${why}); it was made for ` +
        `'${file.metadata.baseModel}'. Pass the matching --model.`,
    );
  if (dim !== model.dim) throw other(`prompt width ${dim}, model dim ${model.dim}`);
  if (nHeads !== model.nHeads) {
    throw other(`${nHeads} gates per block, model has ${model.nHeads} heads`);
  }
  validateAdapterConfig(model, adapter.config);
  if (file.firstLayer !== firstAdaptedLayer(model, adapter.config)) {
    throw other(
      `adapted blocks start at ${file.firstLayer}, but ${adapter.config.layers} top ` +
        `blocks of ${model.nLayers} start at ${firstAdaptedLayer(model, adapter.config)}`,
    );
  }
  if (file.biasSizes) {
    const expected = biasSizes(model);
    for (const name of BIAS_NAMES) {
      if (file.biasSizes[name] !== expected[name]) {
        throw other(
          `bias of ${name} has ${file.biasSizes[name]} values, the model's layer has ` +
            `${expected[name]} outputs`,
        );
      }
    }
  }
  const why = fingerprintMismatch(file.metadata.fingerprint, fingerprint);
  if (why) throw other(why);
  return file;
}
