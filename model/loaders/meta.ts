/**
 * Loader for Meta's LLaMA checkpoints: `params.json` with one `consolidated.NN.pth` per
 * model-parallel shard, each a PyTorch zip archive (`<archive>/data.pkl` plus raw little-endian
 * storages under `<archive>/data/<key>`).
 *
 * Shards are merged the way Meta's model-parallel layers split them: column-parallel weights (wq,
 * wk, wv, w1, w3, output) are split along dim 0, row-parallel ones (wo, w2) along dim 1, the token
 * embedding along dim 1 (LLaMA 1 and 2) or dim 0 (LLaMA 3, detected from the shard shapes), and
 * norms are replicated. `rope.freqs` is ignored. Rotary pairs are interleaved (2i, 2i+1).
 */
import { fmtShape, numel } from "../../kernels/device.ts";
import { type ModelConfig, validateConfig } from "../config.ts";
import type { ModelWeights, WeightDType, WeightSource } from "../weights.ts";
import { assembleWeights, describeConfig, expectedShapes, LAYER_TENSORS } from "./canonical.ts";
import { ByteFile, DTYPE_BYTES, lazySource } from "./file.ts";
import { readJsonFile } from "./huggingface.ts";
import { readTensorTable, type TensorRef } from "./pickle.ts";
import { ZipArchive } from "./zip.ts";

/** File names this loader looks for in a directory. */
export const META_PARAMS = "params.json";
export const META_SHARD = /^consolidated\.(\d+)\.pth$/;

/** Context length used when params.json has no max_seq_len; Meta's reference code defaults to 2048. */
export const META_DEFAULT_MAX_SEQ_LEN = 2048;

/** Tensors that Meta checkpoints may include and the model does not need. */
const IGNORED = new Set(["rope.freqs"]);

/** Split of a tensor across model-parallel shards: the dim it is split along, or replicated. */
type Split = 0 | 1 | "replicated";

function splitOf(canonical: string): Split {
  if (canonical === "norm" || canonical.endsWith(LAYER_TENSORS.attnNorm)) return "replicated";
  if (canonical.endsWith(LAYER_TENSORS.ffnNorm)) return "replicated";
  if (canonical.endsWith(LAYER_TENSORS.wo) || canonical.endsWith(LAYER_TENSORS.w2)) return 1;
  return 0;
}

/** One tensor of one shard, located in its file. */
interface ShardTensor {
  ref: TensorRef;
  file: ByteFile;
  /** Absolute byte offset of the tensor's storage record. */
  storageOffset: number;
  /** Stored name, e.g. `layers.0.attention.wq.weight`. */
  name: string;
}

/** Returns the names of the consolidated.NN.pth files in `dir`, sorted by shard number. */
export async function listShards(dir: string): Promise<string[]> {
  const shards: [number, string][] = [];
  for await (const entry of Deno.readDir(dir)) {
    const match = META_SHARD.exec(entry.name);
    if (match && entry.isFile) shards.push([Number(match[1]), entry.name]);
  }
  shards.sort((a, b) => a[0] - b[0]);
  return shards.map(([, name]) => name);
}

/**
 * Returns the SwiGLU hidden size Meta derives from params.json: 4 * dim, times 2/3 (truncated),
 * times ffn_dim_multiplier when given (truncated), rounded up to a multiple of multiple_of.
 */
export function metaHiddenDim(dim: number, multipleOf: number, ffnDimMultiplier?: number): number {
  let hidden = 4 * dim;
  hidden = Math.floor((2 * hidden) / 3);
  if (ffnDimMultiplier !== undefined) hidden = Math.floor(ffnDimMultiplier * hidden);
  return multipleOf * Math.ceil(hidden / multipleOf);
}

/** True when `stride` is the row-major stride of `shape` (dims of size 1 may have any stride). */
function isContiguous(shape: number[], stride: number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}

/**
 * Reads one shard's tensor as row-major bytes. A contiguous tensor is one byte range; a strided
 * view (a transposed weight, say) reads the span of storage it covers and gathers its elements.
 */
async function readShardTensor(t: ShardTensor): Promise<Uint8Array> {
  const { ref } = t;
  const size = DTYPE_BYTES[ref.storage.dtype];
  const what = `tensor "${t.name}"`;
  const count = numel(ref.shape);
  if (isContiguous(ref.shape, ref.stride)) {
    return t.file.read(t.storageOffset + ref.offset * size, count * size, what);
  }
  const span = count === 0 ? 0 : storageSpan(ref);
  const source = await t.file.read(t.storageOffset + ref.offset * size, span * size, what);
  const out = new Uint8Array(count * size);
  const index = new Array(ref.shape.length).fill(0);
  for (let i = 0; i < count; i++) {
    let from = 0;
    for (let d = 0; d < index.length; d++) from += index[d] * ref.stride[d];
    out.set(source.subarray(from * size, (from + 1) * size), i * size);
    for (let d = index.length - 1; d >= 0; d--) {
      if (++index[d] < ref.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

/** Number of storage elements from a view's first element to its last, inclusive. */
function storageSpan(ref: TensorRef): number {
  let last = 0;
  for (let d = 0; d < ref.shape.length; d++) last += (ref.shape[d] - 1) * ref.stride[d];
  return last + 1;
}

/** Reads one shard's tensor table and locates every tensor's storage in the file. */
async function readShard(path: string): Promise<Map<string, ShardTensor>> {
  const file = await ByteFile.open(path);
  const archive = await ZipArchive.open(file);
  const pickles = [...archive.entries.keys()].filter((n) =>
    n === "data.pkl" || n.endsWith("/data.pkl")
  );
  if (pickles.length !== 1) {
    throw new Error(
      `${path}: expected one "<archive>/data.pkl" entry, found ${pickles.length}; the file is not ` +
        `a PyTorch checkpoint saved by torch.save`,
    );
  }
  const prefix = pickles[0].slice(0, -"data.pkl".length);
  const byteorder = archive.entries.get(`${prefix}byteorder`);
  if (byteorder) {
    const order = new TextDecoder().decode(await archive.readEntry(byteorder)).trim();
    if (order !== "little") {
      throw new Error(`${path}: storages are ${order}-endian; only little-endian is supported`);
    }
  }
  const table = readTensorTable(
    await archive.readEntry(archive.entries.get(pickles[0])!),
    `${path} (${pickles[0]})`,
  );

  const storageOffsets = new Map<string, number>();
  const tensors = new Map<string, ShardTensor>();
  for (const [name, ref] of table) {
    if (IGNORED.has(name)) continue;
    const recordName = `${prefix}data/${ref.storage.key}`;
    const record = archive.entries.get(recordName);
    if (!record) {
      throw new Error(
        `${path}: tensor "${name}" refers to storage record "${recordName}", which the archive ` +
          `does not contain; the checkpoint is damaged, so download it again`,
      );
    }
    const size = DTYPE_BYTES[ref.storage.dtype];
    if (record.size < ref.storage.numel * size) {
      throw new Error(
        `${path}: storage record "${recordName}" of tensor "${name}" has ${record.size} bytes ` +
          `but its ${ref.storage.numel} elements need ${ref.storage.numel * size}; the ` +
          `checkpoint is damaged, so download it again`,
      );
    }
    const count = numel(ref.shape);
    if (count > 0 && ref.offset + storageSpan(ref) > ref.storage.numel) {
      throw new Error(
        `${path}: tensor "${name}" ${fmtShape(ref.shape)} with stride ${
          fmtShape(ref.stride)
        } and ` +
          `offset ${ref.offset} reaches past the ${ref.storage.numel} elements of its storage; ` +
          `the checkpoint is damaged`,
      );
    }
    let storageOffset = storageOffsets.get(recordName);
    if (storageOffset === undefined) {
      storageOffset = await archive.dataOffset(record);
      storageOffsets.set(recordName, storageOffset);
    }
    tensors.set(name, { ref, file, storageOffset, name });
  }
  return tensors;
}

/**
 * Merges one tensor's shards into a lazy source named `canonical`. Throws naming the files when
 * the shards disagree in dtype or in the sizes that are not split.
 */
function mergeShards(canonical: string, parts: ShardTensor[], split: Split): WeightSource {
  const first = parts[0];
  const dtype: WeightDType = first.ref.storage.dtype;
  const files = parts.map((p) => p.file.path).join(", ");
  for (const p of parts) {
    if (p.ref.storage.dtype !== dtype) {
      throw new Error(
        `${p.file.path}: tensor "${p.name}" is ${p.ref.storage.dtype} but is ${dtype} in ` +
          `${first.file.path}; all shards must have the same dtype`,
      );
    }
    const sameRank = p.ref.shape.length === first.ref.shape.length;
    const agrees = sameRank && p.ref.shape.every((d, i) => d === first.ref.shape[i] || i === split);
    if (!agrees || (split !== "replicated" && p.ref.shape.length !== 2)) {
      throw new Error(
        `${p.file.path}: tensor "${p.name}" has shape ${fmtShape(p.ref.shape)}, which cannot be ` +
          `merged with ${fmtShape(first.ref.shape)} from ${first.file.path} ` +
          `(${split === "replicated" ? "replicated" : `split along dim ${split}`})`,
      );
    }
  }

  if (parts.length === 1 || split === "replicated") {
    return lazySource(
      canonical,
      [...first.ref.shape],
      dtype,
      first.file.path,
      () => readShardTensor(first),
    );
  }
  const shape = [...first.ref.shape];
  shape[split] = parts.reduce((sum, p) => sum + p.ref.shape[split], 0);
  const size = DTYPE_BYTES[dtype];
  return lazySource(canonical, shape, dtype, files, async () => {
    const pieces = await Promise.all(parts.map(readShardTensor));
    const out = new Uint8Array(numel(shape) * size);
    if (split === 0) {
      let at = 0;
      for (const piece of pieces) {
        out.set(piece, at);
        at += piece.length;
      }
      return out;
    }
    // Split along dim 1: each output row is the concatenation of the shards' rows.
    const rowBytes = shape[1] * size;
    let column = 0;
    for (const [s, piece] of pieces.entries()) {
      const pieceRow = parts[s].ref.shape[1] * size;
      for (let r = 0; r < shape[0]; r++) {
        out.set(piece.subarray(r * pieceRow, (r + 1) * pieceRow), r * rowBytes + column);
      }
      column += pieceRow;
    }
    return out;
  });
}

/** Options for `loadMeta`. */
export interface MetaOptions {
  /** Context length, since params.json usually does not store one (default 2048). */
  maxSeqLen?: number;
}

/** Builds the config from params.json, with the vocab size and hidden size taken as given. */
function metaConfig(
  params: Record<string, unknown>,
  path: string,
  vocabSize: number,
  hiddenDim: number,
  maxSeqLen: number,
): ModelConfig {
  const num = (key: string, fallback?: number): number => {
    const v = params[key] ?? fallback;
    if (typeof v !== "number") {
      throw new Error(`${path}: "${key}" is missing or not a number (got ${JSON.stringify(v)})`);
    }
    return v;
  };
  const nHeads = num("n_heads");
  // Llama 3's tokenizer (vocab 128256) has <|begin_of_text|> 128000, <|end_of_text|> 128001 and
  // <|eot_id|> 128009; LLaMA 1 and 2 use 1 and 2.
  const llama3 = vocabSize >= 128000;
  const config: ModelConfig = {
    dim: num("dim"),
    hiddenDim,
    nLayers: num("n_layers"),
    nHeads,
    nKvHeads: num("n_kv_heads", nHeads),
    vocabSize,
    maxSeqLen: num("max_seq_len", maxSeqLen),
    normEps: num("norm_eps", 1e-5),
    ropeTheta: num("rope_theta", 10000),
    ropeLayout: "interleaved",
    tiedEmbeddings: false,
    bosId: llama3 ? 128000 : 1,
    eosIds: llama3 ? [128001, 128009] : [2],
  };
  validateConfig(config, path);
  return config;
}

/**
 * Loads a Meta checkpoint directory lazily: params.json, the zip directories and pickles are read
 * now, tensors on demand. Throws naming the file and tensor for a missing, misshapen or unexpected
 * tensor, an inconsistent hidden size, a disallowed pickle global or a compressed entry.
 */
export async function loadMeta(dir: string, options: MetaOptions = {}): Promise<ModelWeights> {
  const paramsPath = `${dir}/${META_PARAMS}`;
  const params = await readJsonFile(paramsPath);
  const shardNames = await listShards(dir);
  if (shardNames.length === 0) {
    throw new Error(`${dir}: no consolidated.NN.pth shard found next to ${META_PARAMS}`);
  }
  shardNames.forEach((name, i) => {
    if (Number(META_SHARD.exec(name)![1]) !== i) {
      throw new Error(
        `${dir}: shard ${name} is out of sequence; expected consolidated.00.pth to ` +
          `consolidated.${String(shardNames.length - 1).padStart(2, "0")}.pth with none missing`,
      );
    }
  });
  const shards = await Promise.all(shardNames.map((name) => readShard(`${dir}/${name}`)));

  // Every shard must contain the same tensors.
  const names = [...shards[0].keys()];
  for (const [i, shard] of shards.entries()) {
    for (const name of names) {
      if (!shard.has(name)) {
        throw new Error(
          `${dir}/${shardNames[i]}: tensor "${name}" is missing, but ${shardNames[0]} has it; ` +
            `the shards do not belong together`,
        );
      }
    }
    if (shard.size !== shards[0].size) {
      const extra = [...shard.keys()].find((n) => !shards[0].has(n));
      throw new Error(
        `${dir}/${shardNames[i]}: tensor "${extra}" is not in ${
          shardNames[0]
        }; the shards do not ` +
          `belong together`,
      );
    }
  }

  const dim = params.dim as number;
  const embeddingSplit: Split = shards.length > 1 &&
      shards[0].get("tok_embeddings.weight")?.ref.shape[1] === dim
    ? 0
    : 1;
  const merged = new Map<string, WeightSource>();
  for (const name of names) {
    const canonical = name.replace(/\.weight$/, "");
    const split = canonical === "tok_embeddings" ? embeddingSplit : splitOf(canonical);
    merged.set(canonical, mergeShards(canonical, shards.map((s) => s.get(name)!), split));
  }

  // Sizes params.json leaves out or may get wrong come from the tensors, then are cross-checked.
  const embedding = merged.get("tok_embeddings");
  const vocabParam = params.vocab_size;
  const vocabSize = typeof vocabParam === "number" && vocabParam > 0
    ? vocabParam
    : embedding?.shape[0] ?? 0;
  const hiddenDim = metaHiddenDim(
    dim,
    typeof params.multiple_of === "number" ? params.multiple_of : 256,
    typeof params.ffn_dim_multiplier === "number" ? params.ffn_dim_multiplier : undefined,
  );
  const config = metaConfig(
    params,
    paramsPath,
    vocabSize,
    hiddenDim,
    options.maxSeqLen ?? META_DEFAULT_MAX_SEQ_LEN,
  );
  const w1 = merged.get("layers.0.feed_forward.w1");
  if (w1 && w1.shape[0] !== hiddenDim) {
    throw new Error(
      `${paramsPath}: dim ${dim}, multiple_of ${params.multiple_of} and ffn_dim_multiplier ` +
        `${params.ffn_dim_multiplier ?? "(none)"} give hidden size ${hiddenDim}, but tensor ` +
        `"layers.0.feed_forward.w1.weight" in ${w1.file} has ${w1.shape[0]} rows; ` +
        `params.json does not match the weights`,
    );
  }

  const expected = expectedShapes(config);
  for (const canonical of merged.keys()) {
    if (!expected.has(canonical)) {
      throw new Error(
        `${dir}/${shardNames[0]}: unexpected tensor "${canonical}.weight"; a model with ` +
          `${describeConfig(config)} has no such tensor, so params.json does not match the weights`,
      );
    }
  }

  return assembleWeights(
    config,
    {
      find: (canonical) => merged.get(canonical),
      storedName: (canonical) => `${canonical}.weight`,
      where: `${dir} (${shardNames.join(", ")})`,
      configFile: paramsPath,
    },
    "meta",
    dir,
  );
}
