/**
 * Loader for Hugging Face Llama directories: `config.json` with either one `model.safetensors` or
 * shards listed by `model.safetensors.index.json` (`{"weight_map": {tensor: shard file}}`).
 *
 * Hugging Face's conversion script permutes the rows of each q_proj/k_proj head so that rotary
 * embedding pairs element i with i + head_dim/2 ("rotate half"). The rows are kept in that order
 * and `config.ropeLayout` is set to "half".
 */
import { type ModelConfig, validateConfig } from "../config.ts";
import type { ModelWeights } from "../weights.ts";
import { assembleWeights, expectedShapes, LAYER_TENSORS } from "./canonical.ts";
import { readSafetensors, type SafetensorsFile, safetensorsSource } from "./safetensors.ts";

/** File names this loader looks for in a directory. */
export const HF_CONFIG = "config.json";
export const HF_SINGLE = "model.safetensors";
export const HF_INDEX = "model.safetensors.index.json";

/** Hugging Face tensor names of one block's tensors, by canonical part name. */
const HF_LAYER_NAMES: Record<string, string> = {
  [LAYER_TENSORS.attnNorm]: "input_layernorm",
  [LAYER_TENSORS.wq]: "self_attn.q_proj",
  [LAYER_TENSORS.wk]: "self_attn.k_proj",
  [LAYER_TENSORS.wv]: "self_attn.v_proj",
  [LAYER_TENSORS.wo]: "self_attn.o_proj",
  [LAYER_TENSORS.ffnNorm]: "post_attention_layernorm",
  [LAYER_TENSORS.w1]: "mlp.gate_proj",
  [LAYER_TENSORS.w2]: "mlp.down_proj",
  [LAYER_TENSORS.w3]: "mlp.up_proj",
};

/** Returns the Hugging Face name of a canonical tensor name. */
export function hfTensorName(canonical: string): string {
  if (canonical === "tok_embeddings") return "model.embed_tokens.weight";
  if (canonical === "norm") return "model.norm.weight";
  if (canonical === "output") return "lm_head.weight";
  const match = /^layers\.(\d+)\.(.+)$/.exec(canonical);
  const part = match && HF_LAYER_NAMES[match[2]];
  if (!part) throw new Error(`no Hugging Face name for tensor "${canonical}"`);
  return `model.layers.${match[1]}.${part}.weight`;
}

/** Tensors some exports include that the model does not need: the rotary frequency buffers. */
const IGNORED = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

/** Model types whose checkpoints have exactly the Llama tensors and semantics. */
const LLAMA_MODEL_TYPES = ["llama", "mistral"];

/**
 * Builds a `ModelConfig` from a parsed config.json. Missing optional fields take the defaults of
 * transformers' LlamaConfig (rms_norm_eps 1e-6, rope_theta 10000, max_position_embeddings 2048,
 * untied embeddings, bos 1, eos 2). Throws naming `path` and the field.
 */
export function parseHfConfig(json: Record<string, unknown>, path: string): ModelConfig {
  const required = (key: string): number => {
    const v = json[key];
    if (typeof v !== "number") {
      throw new Error(`${path}: "${key}" is missing or not a number (got ${JSON.stringify(v)})`);
    }
    return v;
  };
  const optional = (key: string, fallback: number): number => {
    const v = json[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "number") {
      throw new Error(`${path}: "${key}" must be a number, got ${JSON.stringify(v)}`);
    }
    return v;
  };

  const modelType = json.model_type;
  if (modelType !== undefined && !LLAMA_MODEL_TYPES.includes(modelType as string)) {
    throw new Error(
      `${path}: model_type ${JSON.stringify(modelType)} is not supported; this loader reads ` +
        `${LLAMA_MODEL_TYPES.join(" and ")} checkpoints`,
    );
  }
  if (json.hidden_act !== undefined && json.hidden_act !== "silu") {
    throw new Error(
      `${path}: hidden_act ${JSON.stringify(json.hidden_act)} is not supported; ` +
        `the model computes SwiGLU with silu`,
    );
  }
  if (json.rope_scaling !== undefined && json.rope_scaling !== null) {
    throw new Error(
      `${path}: rope_scaling ${JSON.stringify(json.rope_scaling)} is not supported because the ` +
        `rotary kernel implements unscaled RoPE`,
    );
  }

  const dim = required("hidden_size");
  const nHeads = required("num_attention_heads");
  const headDimField = json.head_dim;
  if (typeof headDimField === "number" && headDimField * nHeads !== dim) {
    throw new Error(
      `${path}: head_dim ${headDimField} times ${nHeads} heads is not hidden_size ${dim}; ` +
        `models with a separate head width are not supported`,
    );
  }

  const eos = json.eos_token_id;
  let eosIds: number[];
  if (eos === undefined || eos === null) eosIds = [2];
  else if (typeof eos === "number") eosIds = [eos];
  else if (Array.isArray(eos) && eos.every((x) => typeof x === "number")) eosIds = eos;
  else throw new Error(`${path}: eos_token_id must be a number or a list of numbers`);

  const config: ModelConfig = {
    dim,
    hiddenDim: required("intermediate_size"),
    nLayers: required("num_hidden_layers"),
    nHeads,
    nKvHeads: optional("num_key_value_heads", nHeads),
    vocabSize: required("vocab_size"),
    maxSeqLen: optional("max_position_embeddings", 2048),
    normEps: optional("rms_norm_eps", 1e-6),
    ropeTheta: optional("rope_theta", 10000),
    ropeLayout: "half",
    tiedEmbeddings: json.tie_word_embeddings === true,
    bosId: optional("bos_token_id", 1),
    eosIds,
  };
  validateConfig(config, path);
  return config;
}

/** Reads a JSON file, throwing with the path when it is missing or invalid. */
export async function readJsonFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${path}: file not found`);
    throw e;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: invalid JSON: ${(e as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`${path}: expected a JSON object`);
  }
  return value as Record<string, unknown>;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Reads the shard index and the header of every shard it names. Returns, for each tensor name,
 * the shard holding it. Throws when the index names a tensor its shard does not contain.
 */
async function readShards(dir: string): Promise<Map<string, SafetensorsFile>> {
  const indexPath = `${dir}/${HF_INDEX}`;
  const index = await readJsonFile(indexPath);
  const weightMap = index.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new Error(`${indexPath}: "weight_map" is missing or not an object`);
  }

  const shards = new Map<string, SafetensorsFile>();
  const byTensor = new Map<string, SafetensorsFile>();
  for (const [name, shardName] of Object.entries(weightMap)) {
    if (typeof shardName !== "string" || shardName.includes("/") || shardName.includes("\\")) {
      throw new Error(
        `${indexPath}: tensor "${name}" maps to ${JSON.stringify(shardName)}, expected the ` +
          `file name of a shard in the same directory`,
      );
    }
    let shard = shards.get(shardName);
    if (!shard) {
      shard = await readSafetensors(`${dir}/${shardName}`);
      shards.set(shardName, shard);
    }
    if (!shard.tensors.has(name)) {
      throw new Error(
        `${shard.file.path}: tensor "${name}" is missing, but ${HF_INDEX} lists it in this ` +
          `shard; the download is incomplete or mixes versions, so download it again`,
      );
    }
    byTensor.set(name, shard);
  }
  return byTensor;
}

/**
 * Loads a Hugging Face Llama directory lazily: config.json and the safetensors headers are read
 * now, tensors on demand. Throws naming the file and tensor for a missing, misshapen, unexpected
 * or unsupported-dtype tensor.
 */
export async function loadHuggingFace(dir: string): Promise<ModelWeights> {
  const configPath = `${dir}/${HF_CONFIG}`;
  const config = parseHfConfig(await readJsonFile(configPath), configPath);

  let byTensor: Map<string, SafetensorsFile>;
  let where: string;
  if (await exists(`${dir}/${HF_INDEX}`)) {
    byTensor = await readShards(dir);
    where = `${dir}/${HF_INDEX}`;
  } else {
    const single = await readSafetensors(`${dir}/${HF_SINGLE}`);
    byTensor = new Map([...single.tensors.keys()].map((name) => [name, single]));
    where = single.file.path;
  }

  const wanted = new Map<string, string>();
  for (const canonical of expectedShapes(config).keys()) {
    wanted.set(hfTensorName(canonical), canonical);
  }
  for (const [name, shard] of byTensor) {
    if (wanted.has(name) || IGNORED.test(name)) continue;
    if (config.tiedEmbeddings && name === "lm_head.weight") continue;
    throw new Error(
      `${shard.file.path}: unexpected tensor "${name}"; a ${config.nLayers}-layer Llama model ` +
        `without biases has no such tensor, so this checkpoint has another architecture or ` +
        `its config.json is wrong`,
    );
  }

  return assembleWeights(
    config,
    {
      find: (canonical) => {
        const name = hfTensorName(canonical);
        const shard = byTensor.get(name);
        return shard && safetensorsSource(shard, shard.tensors.get(name)!, canonical);
      },
      storedName: hfTensorName,
      where,
      configFile: configPath,
    },
    "safetensors",
    dir,
  );
}
