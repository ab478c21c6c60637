/**
 * The tokenizer interface every tokenizer format implements.
 */

/** Options for `Tokenizer.encode`. */
export interface EncodeOptions {
  /** Prepend the beginning-of-sequence id (default false). */
  bos?: boolean;
  /** Append the end-of-sequence id (default false). */
  eos?: boolean;
}

/** Incremental decoder for streaming output: bytes split across tokens come out whole. */
export interface StreamDecoder {
  /** Adds one token and returns the text that is now complete (possibly empty). */
  push(id: number): string;
  /** Returns any remaining text, replacing incomplete UTF-8 with U+FFFD. */
  flush(): string;
}

/** A text tokenizer. */
export interface Tokenizer {
  vocabSize: number;
  bosId: number;
  eosId: number;
  /** File the tokenizer was read from, for messages and adapter metadata. */
  source: string;
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: readonly number[]): string;
  decoder(): StreamDecoder;
}
