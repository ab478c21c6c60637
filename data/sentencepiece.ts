/**
 * SentencePiece `tokenizer.model` files (LLaMA, LLaMA 2, Mistral): the ModelProto is parsed with
 * our own protobuf reader, and the BPE model type is encoded and decoded as SentencePiece does.
 *
 * Encoding: the text is normalized (optional whitespace cleanup, a dummy prefix space, spaces
 * escaped as U+2581) and split into characters, with user-defined pieces kept whole. Then the
 * adjacent pair whose concatenation is the vocabulary piece with the highest score is merged,
 * leftmost first on ties, until no pair is a piece. Symbols that are not pieces become `<0xXX>`
 * byte pieces of their UTF-8 bytes when the model has byte fallback, else the unknown token.
 *
 * Decoding: U+2581 becomes a space, byte pieces join into UTF-8, control tokens produce nothing, and
 * the leading space of the first piece is dropped (it came from the dummy prefix).
 */
import { ProtoReader, WireType } from "./protobuf.ts";
import type { EncodeOptions, StreamDecoder, Tokenizer } from "./tokenizer.ts";
import {
  type ByteVocabulary,
  decodeTokenBytes,
  TokenKind,
  Utf8TokenDecoder,
} from "./utf8_stream.ts";

/** Raised for a valid tokenizer file that uses a feature this project does not implement. */
export class UnsupportedTokenizerError extends Error {
  override name = "UnsupportedTokenizerError";
}

/** `ModelProto.SentencePiece.Type` values. */
export const PieceType = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

/** One of the `PieceType` values. */
export type PieceType = typeof PieceType[keyof typeof PieceType];

/** One vocabulary entry of a SentencePiece model. */
export interface SentencePiece {
  piece: string;
  score: number;
  type: PieceType;
}

/** `TrainerSpec.ModelType` names by enum value. */
const MODEL_TYPES: Record<number, string> = { 1: "unigram", 2: "bpe", 3: "word", 4: "char" };

/** The parts of a SentencePiece ModelProto that encoding and decoding use. */
export interface SentencePieceModel {
  pieces: SentencePiece[];
  /** "unigram", "bpe", "word" or "char" (`TrainerSpec.model_type`). */
  modelType: string;
  /** Special token ids; -1 when the model has none. */
  unkId: number;
  bosId: number;
  eosId: number;
  padId: number;
  byteFallback: boolean;
  /** Text an unknown token decodes to. */
  unkSurface: string;
  treatWhitespaceAsSuffix: boolean;
  /** Normalization rule name, e.g. "identity" or "nmt_nfkc". */
  normalizerName: string;
  /** Size of the precompiled normalization map; 0 for the identity normalizer. */
  charsmapBytes: number;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  escapeWhitespaces: boolean;
}

// Field numbers from sentencepiece_model.proto.
const MODEL_PIECES = 1;
const MODEL_TRAINER_SPEC = 2;
const MODEL_NORMALIZER_SPEC = 3;
const PIECE_PIECE = 1;
const PIECE_SCORE = 2;
const PIECE_TYPE = 3;
const TRAINER_MODEL_TYPE = 3;
const TRAINER_TREAT_WHITESPACE_AS_SUFFIX = 24;
const TRAINER_BYTE_FALLBACK = 35;
const TRAINER_UNK_ID = 40;
const TRAINER_BOS_ID = 41;
const TRAINER_EOS_ID = 42;
const TRAINER_PAD_ID = 43;
const TRAINER_UNK_SURFACE = 44;
const NORMALIZER_NAME = 1;
const NORMALIZER_CHARSMAP = 2;
const NORMALIZER_ADD_DUMMY_PREFIX = 3;
const NORMALIZER_REMOVE_EXTRA_WHITESPACES = 4;
const NORMALIZER_ESCAPE_WHITESPACES = 5;

/** The whitespace escape symbol, U+2581 LOWER ONE EIGHTH BLOCK. */
export const SPACE_SYMBOL = "\u2581";

/**
 * Parses a serialized SentencePiece ModelProto. Absent fields take their proto2 defaults. The
 * trainer and normalizer specs must be present, because their defaults would silently change how
 * text is split, and a file cut short after its pieces lacks both.
 */
export function parseSentencePieceModel(bytes: Uint8Array, source: string): SentencePieceModel {
  const r = new ProtoReader(bytes, source);
  const pieces: SentencePiece[] = [];
  const model: SentencePieceModel = {
    pieces,
    modelType: "unigram",
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
    byteFallback: false,
    unkSurface: " \u2047 ",
    treatWhitespaceAsSuffix: false,
    normalizerName: "",
    charsmapBytes: 0,
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  };
  let haveTrainer = false;
  let haveNormalizer = false;

  while (!r.atEnd()) {
    const tag = r.tag();
    if (tag.field === MODEL_PIECES) {
      r.expectWire(tag, WireType.LEN, "pieces");
      pieces.push(parsePiece(r.message(), pieces.length));
    } else if (tag.field === MODEL_TRAINER_SPEC) {
      r.expectWire(tag, WireType.LEN, "trainer_spec");
      parseTrainerSpec(r.message(), model);
      haveTrainer = true;
    } else if (tag.field === MODEL_NORMALIZER_SPEC) {
      r.expectWire(tag, WireType.LEN, "normalizer_spec");
      parseNormalizerSpec(r.message(), model);
      haveNormalizer = true;
    } else {
      r.skip(tag.wire);
    }
  }

  if (pieces.length === 0) {
    throw new Error(`${source}: no vocabulary pieces found; is this a SentencePiece model file?`);
  }
  if (!haveTrainer || !haveNormalizer) {
    const missing = !haveTrainer ? "trainer_spec" : "normalizer_spec";
    throw new Error(
      `${source}: the SentencePiece model has no ${missing}, so the file may be truncated`,
    );
  }
  const specials: [string, number][] = [
    ["unk_id", model.unkId],
    ["bos_id", model.bosId],
    ["eos_id", model.eosId],
  ];
  for (const [name, id] of specials) {
    if (id >= pieces.length) {
      throw new Error(`${source}: ${name} ${id} is outside the ${pieces.length} pieces`);
    }
  }
  return model;
}

function parsePiece(r: ProtoReader, index: number): SentencePiece {
  let piece: string | undefined;
  let score = 0;
  let type: number = PieceType.NORMAL;
  while (!r.atEnd()) {
    const tag = r.tag();
    if (tag.field === PIECE_PIECE) {
      r.expectWire(tag, WireType.LEN, "piece");
      piece = r.string();
    } else if (tag.field === PIECE_SCORE) {
      r.expectWire(tag, WireType.I32, "score");
      score = r.float();
    } else if (tag.field === PIECE_TYPE) {
      r.expectWire(tag, WireType.VARINT, "type");
      type = r.int32();
    } else {
      r.skip(tag.wire);
    }
  }
  if (piece === undefined) throw new Error(`${r.source}: piece ${index} has no text`);
  if (type < PieceType.NORMAL || type > PieceType.BYTE) {
    throw new Error(`${r.source}: piece ${index} (${JSON.stringify(piece)}) has type ${type}`);
  }
  return { piece, score, type: type as PieceType };
}

function parseTrainerSpec(r: ProtoReader, model: SentencePieceModel): void {
  while (!r.atEnd()) {
    const tag = r.tag();
    switch (tag.field) {
      case TRAINER_MODEL_TYPE: {
        const value = r.int32();
        model.modelType = MODEL_TYPES[value] ?? `unknown (${value})`;
        break;
      }
      case TRAINER_TREAT_WHITESPACE_AS_SUFFIX:
        model.treatWhitespaceAsSuffix = r.bool();
        break;
      case TRAINER_BYTE_FALLBACK:
        model.byteFallback = r.bool();
        break;
      case TRAINER_UNK_ID:
        model.unkId = r.int32();
        break;
      case TRAINER_BOS_ID:
        model.bosId = r.int32();
        break;
      case TRAINER_EOS_ID:
        model.eosId = r.int32();
        break;
      case TRAINER_PAD_ID:
        model.padId = r.int32();
        break;
      case TRAINER_UNK_SURFACE:
        model.unkSurface = r.string();
        break;
      default:
        r.skip(tag.wire);
    }
  }
}

function parseNormalizerSpec(r: ProtoReader, model: SentencePieceModel): void {
  while (!r.atEnd()) {
    const tag = r.tag();
    switch (tag.field) {
      case NORMALIZER_NAME:
        model.normalizerName = r.string();
        break;
      case NORMALIZER_CHARSMAP:
        model.charsmapBytes = r.lengthDelimited().length;
        break;
      case NORMALIZER_ADD_DUMMY_PREFIX:
        model.addDummyPrefix = r.bool();
        break;
      case NORMALIZER_REMOVE_EXTRA_WHITESPACES:
        model.removeExtraWhitespaces = r.bool();
        break;
      case NORMALIZER_ESCAPE_WHITESPACES:
        model.escapeWhitespaces = r.bool();
        break;
      default:
        r.skip(tag.wire);
    }
  }
}

/** A merge candidate: symbols `left` and `right` are adjacent and their text is a piece. */
interface Candidate {
  score: number;
  left: number;
  right: number;
  leftLength: number;
  rightLength: number;
}

/** True when candidate a is merged before b: higher score first, then the leftmost. */
function before(a: Candidate, b: Candidate): boolean {
  return a.score > b.score || (a.score === b.score && a.left < b.left);
}

/** A binary heap of merge candidates ordered by `before`. */
class CandidateHeap {
  #items: Candidate[] = [];

  get size(): number {
    return this.#items.length;
  }

  push(c: Candidate): void {
    const items = this.#items;
    let i = items.length;
    items.push(c);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(c, items[parent])) break;
      items[i] = items[parent];
      i = parent;
    }
    items[i] = c;
  }

  pop(): Candidate {
    const items = this.#items;
    const top = items[0];
    const last = items.pop()!;
    const n = items.length;
    if (n === 0) return top;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const child = r < n && before(items[r], items[l]) ? r : l;
      if (!before(items[child], last)) break;
      items[i] = items[child];
      i = child;
    }
    items[i] = last;
    return top;
  }
}

/**
 * Merges adjacent symbols bottom-up as BPE with scores does: while some adjacent pair concatenates
 * to a string that `scoreOf` scores, merge the pair with the highest score, leftmost on ties.
 * Returns the final symbols. `onMerge` is called for every merge, in order.
 *
 * Cost: O(n log n) for n symbols, because candidates sit in a heap over a linked list of symbols
 * and a stale candidate (one whose symbols changed) is skipped when it is popped.
 */
export function mergeByScore(
  symbols: readonly string[],
  scoreOf: (piece: string) => number | undefined,
  onMerge?: (left: string, right: string, merged: string) => void,
): string[] {
  const n = symbols.length;
  if (n < 2) return symbols.slice();
  const text = symbols.slice();
  const alive = new Uint8Array(n).fill(1);
  const prev = new Int32Array(n);
  const next = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  const heap = new CandidateHeap();
  const consider = (left: number) => {
    const right = next[left];
    if (right < 0) return;
    const score = scoreOf(text[left] + text[right]);
    if (score === undefined) return;
    heap.push({
      score,
      left,
      right,
      leftLength: text[left].length,
      rightLength: text[right].length,
    });
  };
  for (let i = 0; i + 1 < n; i++) consider(i);

  while (heap.size > 0) {
    const c = heap.pop();
    const { left, right } = c;
    const stale = !alive[left] || !alive[right] || next[left] !== right ||
      text[left].length !== c.leftLength || text[right].length !== c.rightLength;
    if (stale) continue;

    const merged = text[left] + text[right];
    onMerge?.(text[left], text[right], merged);
    text[left] = merged;
    alive[right] = 0;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;

    if (prev[left] >= 0) consider(prev[left]);
    consider(left);
  }

  // Symbol 0 is never merged into a left neighbour, so the list always starts there.
  const out: string[] = [];
  for (let i = 0; i >= 0; i = next[i]) out.push(text[i]);
  return out;
}

/** Returns the name of a byte-fallback piece, e.g. `<0x0A>` for byte 10. */
export function bytePieceName(byte: number): string {
  return `<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`;
}

/** A tokenizer for SentencePiece BPE models. */
export class SentencePieceTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly source: string;
  readonly model: SentencePieceModel;

  /** Pieces that merges may produce (NORMAL, USER_DEFINED, UNUSED), by text. */
  readonly #mergeable = new Map<string, number>();
  /** Byte-fallback piece id per byte value; -1 where the model lacks that byte piece. */
  readonly #byteIds = new Int32Array(256).fill(-1);
  /** User-defined pieces by their first character, longest first. */
  readonly #userDefined = new Map<string, string[]>();
  readonly #hasUnused: boolean;
  readonly #vocab: ByteVocabulary;

  /** Builds a tokenizer from a parsed model; throws UnsupportedTokenizerError for non-BPE models. */
  constructor(model: SentencePieceModel, source: string) {
    if (model.modelType !== "bpe") {
      throw new UnsupportedTokenizerError(
        `${source}: SentencePiece model type ${model.modelType} is not supported (only bpe, ` +
          `as in LLaMA); use the model's tokenizer.json instead`,
      );
    }
    if (model.charsmapBytes > 0 && model.normalizerName !== "identity") {
      throw new UnsupportedTokenizerError(
        `${source}: SentencePiece normalization "${model.normalizerName}" is not supported ` +
          `(only identity, as in LLaMA); use the model's tokenizer.json instead`,
      );
    }
    if (model.treatWhitespaceAsSuffix) {
      throw new UnsupportedTokenizerError(
        `${source}: treat_whitespace_as_suffix is not supported; use the model's tokenizer.json`,
      );
    }
    this.model = model;
    this.source = source;
    this.vocabSize = model.pieces.length;
    this.bosId = model.bosId;
    this.eosId = model.eosId;

    let hasUnused = false;
    model.pieces.forEach(({ piece, type }, id) => {
      if (
        type === PieceType.NORMAL || type === PieceType.USER_DEFINED || type === PieceType.UNUSED
      ) {
        if (!this.#mergeable.has(piece)) this.#mergeable.set(piece, id);
      }
      if (type === PieceType.UNUSED) hasUnused = true;
      if (type === PieceType.BYTE) {
        const byte = parseBytePiece(piece);
        if (byte >= 0) this.#byteIds[byte] = id;
      }
      if (type === PieceType.USER_DEFINED && piece.length > 0) {
        const first = String.fromCodePoint(piece.codePointAt(0)!);
        const list = this.#userDefined.get(first) ?? [];
        list.push(piece);
        this.#userDefined.set(first, list);
      }
    });
    for (const list of this.#userDefined.values()) list.sort((a, b) => b.length - a.length);
    this.#hasUnused = hasUnused;
    this.#vocab = byteVocabulary(model, source);
  }

  /** Parses the bytes of a `tokenizer.model`; `source` names the file in errors. */
  static fromBytes(bytes: Uint8Array, source: string): SentencePieceTokenizer {
    return new SentencePieceTokenizer(parseSentencePieceModel(bytes, source), source);
  }

  /** Returns the id of a piece, or undefined when it is not in the vocabulary. */
  pieceToId(piece: string): number | undefined {
    const id = this.#mergeable.get(piece);
    if (id !== undefined) return id;
    const index = this.model.pieces.findIndex((p) => p.piece === piece);
    return index >= 0 ? index : undefined;
  }

  /** Encodes text to ids; `bos`/`eos` add the model's BOS/EOS ids. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids: number[] = [];
    if (options.bos) ids.push(this.#special("bos", this.bosId));
    const normalized = this.normalize(text);
    if (normalized.length > 0) {
      const scoreOf = (piece: string) => {
        const id = this.#mergeable.get(piece);
        return id === undefined ? undefined : this.model.pieces[id].score;
      };
      // Which two pieces formed each merged piece, to split UNUSED pieces back up.
      const merges = new Map<string, [string, string]>();
      const onMerge = this.#hasUnused
        ? (left: string, right: string, merged: string) => merges.set(merged, [left, right])
        : undefined;
      let pieces = mergeByScore(this.#split(normalized), scoreOf, onMerge);
      if (this.#hasUnused) pieces = pieces.flatMap((p) => this.#resegment(p, merges));
      for (const piece of pieces) this.#emit(piece, ids);
    }
    if (options.eos) ids.push(this.#special("eos", this.eosId));
    return ids;
  }

  /**
   * Applies the model's normalizer flags: optional whitespace cleanup (trim, collapse runs of
   * spaces), the dummy prefix space for non-empty text, and U+2581 for every space.
   */
  normalize(text: string): string {
    let s = text;
    if (this.model.removeExtraWhitespaces) s = s.replace(/ +/g, " ").replace(/^ | $/g, "");
    if (s.length === 0) return "";
    if (this.model.addDummyPrefix) s = " " + s;
    if (this.model.escapeWhitespaces) s = s.replaceAll(" ", SPACE_SYMBOL);
    return s;
  }

  /** Decodes ids to text (see `Utf8TokenDecoder` for the leading-space rule). */
  decode(ids: readonly number[]): string {
    return decodeTokenBytes(this.#vocab, ids);
  }

  /** Returns a streaming decoder whose chunks join to `decode(ids)`. */
  decoder(): StreamDecoder {
    return new Utf8TokenDecoder(this.#vocab);
  }

  #special(name: string, id: number): number {
    if (id < 0) throw new Error(`${this.source}: the tokenizer has no ${name} token`);
    return id;
  }

  /** Splits normalized text into characters, keeping user-defined pieces whole. */
  #split(s: string): string[] {
    const symbols: string[] = [];
    for (let i = 0; i < s.length;) {
      const c = String.fromCodePoint(s.codePointAt(i)!);
      const match = this.#userDefined.get(c)?.find((p) => s.startsWith(p, i)) ?? c;
      symbols.push(match);
      i += match.length;
    }
    return symbols;
  }

  /** Splits a merged UNUSED piece back into the pieces it was made of, as SentencePiece does. */
  #resegment(piece: string, merges: Map<string, [string, string]>): string[] {
    const id = this.#mergeable.get(piece);
    if (id === undefined || this.model.pieces[id].type !== PieceType.UNUSED) return [piece];
    const parts = merges.get(piece);
    if (!parts) return [piece];
    return [...this.#resegment(parts[0], merges), ...this.#resegment(parts[1], merges)];
  }

  #emit(piece: string, ids: number[]): void {
    const id = this.#mergeable.get(piece);
    if (id !== undefined) {
      ids.push(id);
      return;
    }
    if (this.model.byteFallback) {
      const bytes = new TextEncoder().encode(piece);
      if (bytes.every((b) => this.#byteIds[b] >= 0)) {
        for (const b of bytes) ids.push(this.#byteIds[b]);
        return;
      }
    }
    ids.push(this.#special("unk", this.model.unkId));
  }
}

/** Returns the byte value of a `<0xXX>` piece, or -1 for any other text. */
export function parseBytePiece(piece: string): number {
  const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
  return m ? parseInt(m[1], 16) : -1;
}

function byteVocabulary(model: SentencePieceModel, source: string): ByteVocabulary {
  const utf8 = new TextEncoder();
  const n = model.pieces.length;
  const bytes: Uint8Array[] = new Array(n);
  const kinds = new Uint8Array(n);
  const unkSurface = utf8.encode(model.unkSurface);
  model.pieces.forEach(({ piece, type }, id) => {
    if (type === PieceType.CONTROL) {
      bytes[id] = new Uint8Array(0);
      kinds[id] = TokenKind.CONTROL;
    } else if (type === PieceType.UNKNOWN) {
      bytes[id] = unkSurface;
      kinds[id] = TokenKind.LITERAL;
    } else if (type === PieceType.BYTE && parseBytePiece(piece) >= 0) {
      bytes[id] = Uint8Array.of(parseBytePiece(piece));
      kinds[id] = TokenKind.LITERAL;
    } else {
      bytes[id] = utf8.encode(piece.replaceAll(SPACE_SYMBOL, " "));
      kinds[id] = TokenKind.TEXT;
    }
  });
  const strip = model.addDummyPrefix || model.removeExtraWhitespaces;
  return {
    bytes,
    kinds,
    stripLeadingSpace: strip ? "first" : "never",
    bosId: model.bosId,
    source,
  };
}

/** Reads a SentencePiece `tokenizer.model` file. */
export async function loadSentencePiece(path: string): Promise<SentencePieceTokenizer> {
  return SentencePieceTokenizer.fromBytes(await Deno.readFile(path), path);
}
