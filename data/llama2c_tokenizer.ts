/**
 * llama2.c `tokenizer.bin` files: an int32 max_token_length, then one record per token: a float32
 * merge score, an int32 byte length and the token's bytes (spaces stored as 0x20, byte-fallback
 * tokens as the text `<0xXX>`). All integers and floats are little-endian.
 *
 * Encoding follows llama2.c's `encode`: a dummy prefix " " for non-empty text, one symbol per UTF-8
 * character, characters missing from the vocabulary as byte tokens (id = byte + 3, the layout of
 * SentencePiece exports), then repeated merges of the adjacent pair whose concatenation has the best
 * score, leftmost on ties. Ids 1 and 2 are BOS and EOS, as llama2.c hard-codes them.
 */
import { mergeByScore, parseBytePiece } from "./sentencepiece.ts";
import type { EncodeOptions, StreamDecoder, Tokenizer } from "./tokenizer.ts";
import {
  type ByteVocabulary,
  decodeTokenBytes,
  TokenKind,
  Utf8TokenDecoder,
} from "./utf8_stream.ts";

const BOS_ID = 1;
const EOS_ID = 2;
/** Id of byte-fallback token `<0x00>`; byte b is token b + BYTE_OFFSET. */
const BYTE_OFFSET = 3;
const HEADER_BYTES = 4;
const RECORD_HEADER_BYTES = 8;

/** A token of a llama2.c vocabulary. */
export interface Llama2cToken {
  bytes: Uint8Array;
  score: number;
}

/**
 * Parses a llama2.c tokenizer file, reading records until the end of the file. With `vocabSize`,
 * the file must hold exactly that many records. Throws with the file name and record index when a
 * record runs past the end or is longer than the header's max_token_length.
 */
export function parseLlama2cTokenizer(
  bytes: Uint8Array,
  source: string,
  vocabSize?: number,
): { maxTokenLength: number; tokens: Llama2cToken[] } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const corrupt = (what: string) =>
    new Error(
      `${source}: invalid llama2.c tokenizer: ${what}; the file may be truncated or corrupt`,
    );
  if (bytes.length < HEADER_BYTES) throw corrupt(`${bytes.length} bytes is too short for a header`);
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength <= 0) throw corrupt(`max_token_length is ${maxTokenLength}`);

  const tokens: Llama2cToken[] = [];
  let pos = HEADER_BYTES;
  while (pos < bytes.length) {
    const index = tokens.length;
    if (bytes.length - pos < RECORD_HEADER_BYTES) {
      throw corrupt(`token ${index} at byte ${pos} is cut off in its score and length`);
    }
    const score = view.getFloat32(pos, true);
    const length = view.getInt32(pos + 4, true);
    pos += RECORD_HEADER_BYTES;
    if (length < 0 || length > maxTokenLength) {
      throw corrupt(
        `token ${index} has length ${length}, outside 0..${maxTokenLength} (max_token_length)`,
      );
    }
    if (bytes.length - pos < length) {
      throw corrupt(
        `token ${index} needs ${length} bytes at byte ${pos} but only ${bytes.length - pos} remain`,
      );
    }
    tokens.push({ bytes: bytes.slice(pos, pos + length), score });
    pos += length;
  }

  if (vocabSize !== undefined && tokens.length !== vocabSize) {
    throw new Error(
      `${source}: the tokenizer has ${tokens.length} tokens but the model's vocabulary has ` +
        `${vocabSize}; use the tokenizer the model was trained with`,
    );
  }
  if (tokens.length <= EOS_ID) {
    throw corrupt(`${tokens.length} tokens is too few to hold <unk>, BOS and EOS`);
  }
  return { maxTokenLength, tokens };
}

/** Returns the bytes as a string of char codes 0..255, so byte strings can key a Map. */
function latin1(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

/** A tokenizer for llama2.c `tokenizer.bin` vocabularies. */
export class Llama2cTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId = BOS_ID;
  readonly eosId = EOS_ID;
  readonly source: string;
  readonly maxTokenLength: number;
  readonly tokens: readonly Llama2cToken[];

  /** Token id by its bytes as a latin1 string; the first id wins for duplicates. */
  readonly #ids = new Map<string, number>();
  readonly #vocab: ByteVocabulary;

  constructor(parsed: { maxTokenLength: number; tokens: Llama2cToken[] }, source: string) {
    this.source = source;
    this.tokens = parsed.tokens;
    this.maxTokenLength = parsed.maxTokenLength;
    this.vocabSize = parsed.tokens.length;
    parsed.tokens.forEach((t, id) => {
      const key = latin1(t.bytes);
      if (!this.#ids.has(key)) this.#ids.set(key, id);
    });
    this.#vocab = this.#byteVocabulary();
  }

  /** Parses the bytes of a `tokenizer.bin`; see `parseLlama2cTokenizer`. */
  static fromBytes(bytes: Uint8Array, source: string, vocabSize?: number): Llama2cTokenizer {
    return new Llama2cTokenizer(parseLlama2cTokenizer(bytes, source, vocabSize), source);
  }

  /** Encodes text to ids; `bos`/`eos` add ids 1 and 2. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids: number[] = [];
    if (options.bos) ids.push(BOS_ID);
    if (text.length > 0) {
      const utf8 = new TextEncoder().encode(" " + text);
      const symbols = this.#characters(utf8);
      const scoreOf = (piece: string) => {
        const id = this.#ids.get(piece);
        return id === undefined ? undefined : this.tokens[id].score;
      };
      for (const piece of mergeByScore(symbols, scoreOf)) this.#emit(piece, ids);
    }
    if (options.eos) ids.push(EOS_ID);
    return ids;
  }

  /** Decodes ids to text: BOS and EOS produce nothing, `<0xXX>` tokens are raw bytes. */
  decode(ids: readonly number[]): string {
    return decodeTokenBytes(this.#vocab, ids);
  }

  /** Returns a streaming decoder whose chunks join to `decode(ids)`. */
  decoder(): StreamDecoder {
    return new Utf8TokenDecoder(this.#vocab);
  }

  /** Splits UTF-8 bytes into characters as latin1 strings (a lead byte and its continuations). */
  #characters(utf8: Uint8Array): string[] {
    const symbols: string[] = [];
    let start = 0;
    for (let i = 1; i <= utf8.length; i++) {
      const continuation = i < utf8.length && (utf8[i] & 0xc0) === 0x80 && i - start < 4;
      if (!continuation) {
        symbols.push(latin1(utf8.subarray(start, i)));
        start = i;
      }
    }
    return symbols;
  }

  #emit(piece: string, ids: number[]): void {
    const id = this.#ids.get(piece);
    if (id !== undefined) {
      ids.push(id);
      return;
    }
    for (let i = 0; i < piece.length; i++) {
      const byteId = piece.charCodeAt(i) + BYTE_OFFSET;
      if (byteId >= this.vocabSize) {
        throw new Error(
          `${this.source}: cannot encode byte 0x${piece.charCodeAt(i).toString(16)}: ` +
            `the ${this.vocabSize}-token vocabulary has no byte-fallback tokens`,
        );
      }
      ids.push(byteId);
    }
  }

  #byteVocabulary(): ByteVocabulary {
    const n = this.tokens.length;
    const bytes: Uint8Array[] = new Array(n);
    const kinds = new Uint8Array(n);
    this.tokens.forEach((t, id) => {
      const byte = parseBytePiece(latin1(t.bytes));
      if (id === BOS_ID || id === EOS_ID) {
        bytes[id] = new Uint8Array(0);
        kinds[id] = TokenKind.CONTROL;
      } else if (byte >= 0) {
        bytes[id] = Uint8Array.of(byte);
        kinds[id] = TokenKind.LITERAL;
      } else {
        bytes[id] = t.bytes;
        kinds[id] = TokenKind.TEXT;
      }
    });
    return {
      bytes,
      kinds,
      stripLeadingSpace: "first-and-after-bos",
      bosId: BOS_ID,
      source: this.source,
    };
  }
}

/**
 * Reads a llama2.c `tokenizer.bin`. Pass the model's `vocabSize` to reject a tokenizer made for
 * another model.
 */
export async function loadLlama2cTokenizer(
  path: string,
  vocabSize?: number,
): Promise<Llama2cTokenizer> {
  return Llama2cTokenizer.fromBytes(await Deno.readFile(path), path, vocabSize);
}
