/**
 * Helpers for the tokenizer tests: the golden encode cases, a protobuf writer that builds small
 * SentencePiece models with chosen pieces and flags, and a Hugging Face tokenizer.json built from
 * a SentencePiece vocabulary.
 */
import { PieceType, type SentencePieceModel, SPACE_SYMBOL } from "../data/sentencepiece.ts";
import type { StreamDecoder } from "../data/tokenizer.ts";
import { fixture } from "./helpers.ts";

/** One golden case: text and its LLaMA 2 ids (dummy prefix on, no BOS). */
export interface EncodeCase {
  text: string;
  ids: number[];
}

/** Reads the golden LLaMA 2 encode cases. */
export function goldenEncodeCases(): EncodeCase[] {
  return JSON.parse(Deno.readTextFileSync(fixture("golden/llama2-tokenizer-encode.json")));
}

/** Pushes ids one at a time and returns each pushed chunk, then the flushed rest. */
export function streamChunks(decoder: StreamDecoder, ids: readonly number[]): string[] {
  const chunks = ids.map((id) => decoder.push(id));
  chunks.push(decoder.flush());
  return chunks;
}

// Protobuf encoding, just enough to write a SentencePiece ModelProto.

function varint(value: number): number[] {
  // Negative int32 values are written as 10-byte two's complement, as protobuf encoders do.
  let v = BigInt.asUintN(64, BigInt(value));
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}

function tag(field: number, wire: number): number[] {
  return varint(field * 8 + wire);
}

function lengthDelimited(field: number, payload: Uint8Array | number[]): number[] {
  return [...tag(field, 2), ...varint(payload.length), ...payload];
}

function varintField(field: number, value: number): number[] {
  return [...tag(field, 0), ...varint(value)];
}

function floatField(field: number, value: number): number[] {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setFloat32(0, value, true);
  return [...tag(field, 5), ...b];
}

const utf8 = (s: string) => new TextEncoder().encode(s);

/** A piece for `sentencePieceModelBytes`. */
export interface PieceSpec {
  piece: string;
  score?: number;
  type?: number;
}

/** Serializes a ModelProto with the given pieces and the trainer/normalizer flags that are set. */
export function sentencePieceModelBytes(
  pieces: PieceSpec[],
  spec: Partial<Omit<SentencePieceModel, "pieces">>,
): Uint8Array {
  const out: number[] = [];
  for (const p of pieces) {
    const body = [...lengthDelimited(1, utf8(p.piece))];
    if (p.score !== undefined) body.push(...floatField(2, p.score));
    if (p.type !== undefined) body.push(...varintField(3, p.type));
    out.push(...lengthDelimited(1, body));
  }

  const modelTypes: Record<string, number> = { unigram: 1, bpe: 2, word: 3, char: 4 };
  const trainer: number[] = [];
  if (spec.modelType !== undefined) trainer.push(...varintField(3, modelTypes[spec.modelType]));
  if (spec.byteFallback !== undefined) trainer.push(...varintField(35, spec.byteFallback ? 1 : 0));
  if (spec.unkId !== undefined) trainer.push(...varintField(40, spec.unkId));
  if (spec.bosId !== undefined) trainer.push(...varintField(41, spec.bosId));
  if (spec.eosId !== undefined) trainer.push(...varintField(42, spec.eosId));
  if (spec.padId !== undefined) trainer.push(...varintField(43, spec.padId));
  out.push(...lengthDelimited(2, trainer));

  const normalizer: number[] = [];
  if (spec.normalizerName !== undefined) {
    normalizer.push(...lengthDelimited(1, utf8(spec.normalizerName)));
  }
  if (spec.charsmapBytes) {
    normalizer.push(...lengthDelimited(2, new Uint8Array(spec.charsmapBytes)));
  }
  const flags: ["addDummyPrefix" | "removeExtraWhitespaces" | "escapeWhitespaces", number][] = [
    ["addDummyPrefix", 3],
    ["removeExtraWhitespaces", 4],
    ["escapeWhitespaces", 5],
  ];
  for (const [key, field] of flags) {
    if (spec[key] !== undefined) normalizer.push(...varintField(field, spec[key] ? 1 : 0));
  }
  out.push(...lengthDelimited(3, normalizer));
  return Uint8Array.from(out);
}

/**
 * Builds a Hugging Face tokenizer.json with the vocabulary of a SentencePiece BPE model. Its BPE
 * model has byte fallback, and its merges are every split of a NORMAL piece into two NORMAL pieces,
 * ranked by the merged piece's score. The normalizer prepends U+2581 and escapes spaces. The
 * decoder unescapes, joins byte pieces and strips one leading space. Control and unknown pieces
 * become special added tokens.
 */
export function tokenizerJsonFromSentencePiece(model: SentencePieceModel): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  const normal = new Map<string, number>();
  model.pieces.forEach((p, id) => {
    vocab[p.piece] = id;
    if (p.type === PieceType.NORMAL) normal.set(p.piece, id);
  });

  const merges: { score: number; left: number; right: number; pair: [string, string] }[] = [];
  for (const [piece, id] of normal) {
    const chars = Array.from(piece);
    for (let k = 1; k < chars.length; k++) {
      const l = chars.slice(0, k).join("");
      const r = chars.slice(k).join("");
      const left = normal.get(l);
      const right = normal.get(r);
      if (left !== undefined && right !== undefined) {
        merges.push({ score: model.pieces[id].score, left, right, pair: [l, r] });
      }
    }
  }
  merges.sort((a, b) => b.score - a.score || a.left - b.left || a.right - b.right);

  const special = model.pieces
    .map((p, id) => ({ ...p, id }))
    .filter((p) => p.type === PieceType.CONTROL || p.type === PieceType.UNKNOWN);
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: special.map((p) => ({
      id: p.id,
      content: p.piece,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: SPACE_SYMBOL },
        { type: "Replace", pattern: { String: " " }, content: SPACE_SYMBOL },
      ],
    },
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: SPACE_SYMBOL }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: model.pieces[model.unkId]?.piece ?? null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: model.byteFallback,
      vocab,
      merges: merges.map((m) => m.pair),
    },
  };
}
