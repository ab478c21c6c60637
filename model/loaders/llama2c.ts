/**
 * Loader for llama2.c checkpoints (the "legacy", version 0 export of Karpathy's llama2.c).
 *
 * The header is 7 little-endian int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len. Float32 arrays follow, each stacking one weight of all layers:
 *   token_embedding (V, C), rms_att (L, C), wq (L, C, C), wk (L, Hkv*D, C), wv (L, Hkv*D, C),
 *   wo (L, C, C), rms_ffn (L, C), w1 (L, hidden, C), w2 (L, C, hidden), w3 (L, hidden, C),
 *   rms_final (C), freq_cis_real (seq_len, D/2), freq_cis_imag (seq_len, D/2), [wcls (V, C)].
 * A negative vocab_size means the file ends with its own classifier wcls; otherwise the output
 * projection is the embedding. The rotary tables are skipped because the rope kernel computes them.
 * Rotary pairs are interleaved (2i, 2i+1), as in Meta's checkpoints.
 */
import { type ModelConfig, validateConfig } from "../config.ts";
import type { ModelWeights, WeightSource } from "../weights.ts";
import { assembleWeights, describeConfig } from "./canonical.ts";
import { ByteFile, fileTensor } from "./file.ts";

/** Size of the version 0 header: 7 int32. */
export const LLAMA2C_HEADER_BYTES = 28;

/** First uint32 of llama2.c's versioned exports (version 1 and later), "ak42" in ASCII. */
const VERSIONED_MAGIC = 0x616b3432;

/** Settings the llama2.c format does not store; these are the values llama2.c's run.c uses. */
const LLAMA2C_DEFAULTS = { normEps: 1e-5, ropeTheta: 10000, bosId: 1, eosIds: [2] };

/** Config and classifier flag decoded from a llama2.c header. */
export interface Llama2cHeader {
  config: ModelConfig;
  /** True when the file stores its own classifier (the header's vocab_size was negative). */
  separateClassifier: boolean;
}

/**
 * Decodes and validates the 28-byte header of a llama2.c checkpoint. Throws naming `path` when
 * the header is a versioned export or describes an impossible model.
 */
export function parseLlama2cHeader(bytes: Uint8Array, path: string): Llama2cHeader {
  if (bytes.length < LLAMA2C_HEADER_BYTES) {
    throw new Error(
      `${path}: file has ${bytes.length} bytes, shorter than the ${LLAMA2C_HEADER_BYTES}-byte ` +
        `llama2.c header; it is truncated or not a llama2.c checkpoint`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, LLAMA2C_HEADER_BYTES);
  if (view.getUint32(0, true) === VERSIONED_MAGIC) {
    throw new Error(
      `${path}: llama2.c export version ${view.getInt32(4, true)} is not supported; export the ` +
        `model with llama2.c's legacy (version 0) format`,
    );
  }
  const h = Array.from({ length: 7 }, (_, i) => view.getInt32(4 * i, true));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen] = h;
  const config: ModelConfig = {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(vocab),
    maxSeqLen: seqLen,
    ropeLayout: "interleaved",
    tiedEmbeddings: vocab > 0,
    ...LLAMA2C_DEFAULTS,
    eosIds: [...LLAMA2C_DEFAULTS.eosIds],
  };
  try {
    validateConfig(config, path);
  } catch (e) {
    throw new Error(
      `${(e as Error).message} (llama2.c header: ${h.join(", ")}); the file is not a llama2.c ` +
        `checkpoint or its header is damaged`,
    );
  }
  return { config, separateClassifier: vocab < 0 };
}

/** One float32 array of the file: a canonical name (per layer when stacked) and its shape. */
interface Segment {
  name: string;
  /** Shape of one layer's slice, or of the whole array for unstacked ones. */
  shape: number[];
  /** Number of stacked layers, or 1. */
  count: number;
}

function fileSegments(c: ModelConfig): Segment[] {
  const D = c.dim / c.nHeads;
  const kvDim = c.nKvHeads * D;
  const L = c.nLayers;
  const segments: Segment[] = [
    { name: "tok_embeddings", shape: [c.vocabSize, c.dim], count: 1 },
    { name: "attention_norm", shape: [c.dim], count: L },
    { name: "attention.wq", shape: [c.dim, c.dim], count: L },
    { name: "attention.wk", shape: [kvDim, c.dim], count: L },
    { name: "attention.wv", shape: [kvDim, c.dim], count: L },
    { name: "attention.wo", shape: [c.dim, c.dim], count: L },
    { name: "ffn_norm", shape: [c.dim], count: L },
    { name: "feed_forward.w1", shape: [c.hiddenDim, c.dim], count: L },
    { name: "feed_forward.w2", shape: [c.dim, c.hiddenDim], count: L },
    { name: "feed_forward.w3", shape: [c.hiddenDim, c.dim], count: L },
    { name: "norm", shape: [c.dim], count: 1 },
    { name: "freq_cis_real", shape: [c.maxSeqLen, D / 2], count: 1 },
    { name: "freq_cis_imag", shape: [c.maxSeqLen, D / 2], count: 1 },
  ];
  if (!c.tiedEmbeddings) segments.push({ name: "output", shape: [c.vocabSize, c.dim], count: 1 });
  return segments;
}

/**
 * Loads a llama2.c checkpoint lazily: only the header is read now, and each tensor reads its own
 * byte range when asked. Throws naming the file when it is truncated, longer than its header
 * implies, or a versioned llama2.c export.
 */
export async function loadLlama2c(path: string): Promise<ModelWeights> {
  const file = await ByteFile.open(path);
  const header = await file.read(0, Math.min(LLAMA2C_HEADER_BYTES, file.size), "the header");
  const { config } = parseLlama2cHeader(header, path);

  const sources = new Map<string, WeightSource>();
  let offset = LLAMA2C_HEADER_BYTES;
  for (const seg of fileSegments(config)) {
    const bytes = 4 * seg.shape.reduce((a, b) => a * b, 1);
    for (let l = 0; l < seg.count; l++) {
      const name = seg.count === 1 ? seg.name : `layers.${l}.${seg.name}`;
      if (offset + bytes > file.size) {
        throw new Error(
          `${path}: file is truncated: it has ${file.size} bytes but tensor "${name}" ends at ` +
            `byte ${offset + bytes} (llama2.c header: ${describeConfig(config)}, ` +
            `seq_len ${config.maxSeqLen}); download or export the checkpoint again`,
        );
      }
      if (!name.startsWith("freq_cis")) {
        sources.set(name, fileTensor(file, name, seg.shape, "f32", offset));
      }
      offset += bytes;
    }
  }
  if (offset !== file.size) {
    throw new Error(
      `${path}: file has ${file.size - offset} bytes after the last tensor, which ends at byte ` +
        `${offset} for the header's sizes (${describeConfig(config)}, seq_len ` +
        `${config.maxSeqLen}, ${config.tiedEmbeddings ? "shared" : "separate"} classifier); ` +
        `the header does not match the weights or the file is not a llama2.c checkpoint`,
    );
  }

  return assembleWeights(
    config,
    {
      find: (name) => sources.get(name),
      storedName: (name) => name,
      where: path,
      configFile: `the llama2.c header of ${path}`,
    },
    "llama2.c",
    path,
  );
}
