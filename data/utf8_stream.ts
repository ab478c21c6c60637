/**
 * Streaming decode for tokenizers whose tokens are byte strings: each token's bytes go through one
 * streaming UTF-8 decoder, so a character split across byte-fallback tokens (an emoji as four
 * `<0xXX>` pieces) comes out whole once its last byte arrives.
 */
import type { StreamDecoder } from "./tokenizer.ts";

/** Role of a token's bytes in decoding. */
export const TokenKind = {
  /** Produces no text (BOS, EOS and other control tokens). */
  CONTROL: 0,
  /** Text whose leading space is dropped at the start of a sequence (SentencePiece's dummy prefix). */
  TEXT: 1,
  /** Bytes emitted as they are, never stripped (byte-fallback pieces, the unknown-token surface). */
  LITERAL: 2,
} as const;

/** One of the `TokenKind` values. */
export type TokenKind = typeof TokenKind[keyof typeof TokenKind];

/** A vocabulary as bytes: what each token id decodes to. */
export interface ByteVocabulary {
  /** Token bytes by id, with spaces already unescaped (U+2581 replaced by 0x20). */
  bytes: readonly Uint8Array[];
  /** `TokenKind` by id. */
  kinds: Uint8Array;
  /** Rule for dropping the leading space of a TEXT token, described at `Utf8TokenDecoder`. */
  stripLeadingSpace: "never" | "first" | "first-and-after-bos";
  /** Id whose following TEXT token loses its leading space under "first-and-after-bos". */
  bosId: number;
  /** File the vocabulary was read from, for error messages. */
  source: string;
}

const EMPTY = new Uint8Array(0);
const SPACE = 0x20;

/**
 * Decodes token ids to text one token at a time.
 *
 * The encoder adds a dummy prefix space, so the first TEXT token loses its leading space when
 * nothing has been emitted before it. Only one space is removed this way, as SentencePiece does.
 * With "first-and-after-bos", a TEXT token right after BOS also loses its leading space, as
 * llama2.c decodes.
 *
 * To stream a continuation of a prompt with the same spacing as decoding the whole sequence, push
 * the prompt ids first and discard their text.
 */
export class Utf8TokenDecoder implements StreamDecoder {
  readonly #vocab: ByteVocabulary;
  readonly #utf8 = new TextDecoder("utf-8", { ignoreBOM: true });
  #atStart = true;

  constructor(vocab: ByteVocabulary) {
    this.#vocab = vocab;
  }

  /** Adds one token and returns the text that is now complete (possibly empty). */
  push(id: number): string {
    return this.#utf8.decode(this.#tokenBytes(id), { stream: true });
  }

  /** Returns any remaining text, replacing an incomplete UTF-8 sequence with U+FFFD. */
  flush(): string {
    return this.#utf8.decode();
  }

  #tokenBytes(id: number): Uint8Array {
    const v = this.#vocab;
    if (!Number.isInteger(id) || id < 0 || id >= v.bytes.length) {
      throw new RangeError(
        `${v.source}: token id ${id} is outside the vocabulary of ${v.bytes.length} tokens`,
      );
    }
    const kind = v.kinds[id];
    if (kind === TokenKind.CONTROL) {
      if (id === v.bosId && v.stripLeadingSpace === "first-and-after-bos") this.#atStart = true;
      return EMPTY;
    }
    let bytes = v.bytes[id];
    if (
      kind === TokenKind.TEXT && this.#atStart && v.stripLeadingSpace !== "never" &&
      bytes[0] === SPACE
    ) {
      bytes = bytes.subarray(1);
      this.#atStart = false;
    }
    if (bytes.length > 0) this.#atStart = false;
    return bytes;
  }
}

/** Decodes a whole id sequence with a fresh `Utf8TokenDecoder`, so it matches streamed output. */
export function decodeTokenBytes(vocab: ByteVocabulary, ids: readonly number[]): string {
  const decoder = new Utf8TokenDecoder(vocab);
  let text = "";
  for (const id of ids) text += decoder.push(id);
  return text + decoder.flush();
}
