/**
 * Trains a byte-pair-encoding vocabulary for the demo and writes it as a llama2.c
 * `tokenizer.bin`, the format `data/llama2c_tokenizer.ts` reads.
 *
 * Training sees each text as the encoder will: with a dummy prefix space. The text is split
 * into chunks first (a word with its leading space, a run of digits, a run of punctuation, a
 * run of newlines, a run of spaces), and merges never cross a chunk, so a word keeps its
 * leading space (" red") as in SentencePiece and no piece joins a newline to the next word.
 * Each step merges the most frequent adjacent pair; ties go to the pair whose concatenation
 * sorts first, then to the shorter left part, so the result depends only on the texts.
 *
 * The file holds, in id order: `<unk>`, `<s>` (BOS) and `</s>` (EOS); the 256 byte tokens
 * `<0x00>`..`<0xFF>` (ids 3..258); every single character of the training texts; then the
 * merged pieces in merge order. The llama2.c encoder repeatedly merges the adjacent pair whose
 * concatenation scores best, so merged piece k gets score -k (earlier merges win), and
 * characters, bytes and special tokens get 0 (the encoder never looks their scores up, since a
 * concatenation of two symbols is never a single character).
 */
import { bytePieceName } from "../../data/sentencepiece.ts";

/** Number of ids before the first character piece: three special tokens and 256 bytes. */
export const RESERVED_TOKENS = 3 + 256;

/** Special tokens at ids 0, 1 and 2. */
const SPECIAL_PIECES = ["<unk>", "<s>", "</s>"];

/** Chunks that merges stay inside; see the module comment. The last branch takes any other character. */
const CHUNK_PATTERN = / ?[A-Za-z]+|'[a-z]+| ?[0-9]+|\n+| ?[^\sA-Za-z0-9']+| +|[^]/gu;

/** A trained vocabulary, without the reserved tokens. */
export interface BpeVocabulary {
  /** Every character of the training texts, sorted by code point. */
  characters: string[];
  /** Merged pieces in merge order, each new. */
  pieces: string[];
  /** Total number of ids, reserved tokens included. */
  vocabSize: number;
}

/** A distinct chunk of the training texts as its current symbols, with its frequency. */
interface ChunkType {
  symbols: string[];
  count: number;
}

/** Splits a text into the chunks that merges stay inside, after adding the dummy prefix. */
export function splitChunks(text: string): string[] {
  return (" " + text).match(CHUNK_PATTERN) ?? [];
}

function countChunks(texts: Iterable<string>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const text of texts) {
    for (const chunk of splitChunks(text)) counts.set(chunk, (counts.get(chunk) ?? 0) + 1);
  }
  return counts;
}

/** Compares strings by UTF-16 code units, independent of locale. */
function compareStrings(a: string, b: string): number {
  if (a < b) return -1;
  if (a > b) return 1;
  return 0;
}

/** Returns the best pair to merge next, or null when no chunk has two symbols left. */
function bestPair(types: readonly ChunkType[]): { left: string; right: string } | null {
  const counts = new Map<string, { left: string; right: string; count: number }>();
  for (const { symbols, count } of types) {
    for (let i = 0; i + 1 < symbols.length; i++) {
      const key = symbols[i] + "\u0000" + symbols[i + 1];
      const entry = counts.get(key);
      if (entry) entry.count += count;
      else counts.set(key, { left: symbols[i], right: symbols[i + 1], count });
    }
  }
  let best: { left: string; right: string; count: number } | null = null;
  for (const c of counts.values()) {
    if (best === null || c.count > best.count) {
      best = c;
      continue;
    }
    if (c.count < best.count) continue;
    const order = compareStrings(c.left + c.right, best.left + best.right);
    if (order < 0 || (order === 0 && c.left.length < best.left.length)) best = c;
  }
  return best;
}

/** Replaces every non-overlapping (left, right) pair in `symbols`, scanning left to right. */
function applyMerge(symbols: string[], left: string, right: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < symbols.length; i++) {
    if (i + 1 < symbols.length && symbols[i] === left && symbols[i + 1] === right) {
      out.push(left + right);
      i++;
    } else {
      out.push(symbols[i]);
    }
  }
  return out;
}

/**
 * Trains a vocabulary of exactly `vocabSize` ids on `texts`. Throws when `vocabSize` is too
 * small for the reserved tokens and the characters, or so large that the texts run out of
 * pairs to merge (every chunk already a single piece).
 */
export function trainBpe(texts: Iterable<string>, vocabSize: number): BpeVocabulary {
  const chunkCounts = countChunks(texts);
  const characterSet = new Set<string>();
  for (const chunk of chunkCounts.keys()) for (const c of chunk) characterSet.add(c);
  const characters = [...characterSet].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);

  const mergeCount = vocabSize - RESERVED_TOKENS - characters.length;
  if (mergeCount < 0) {
    throw new Error(
      `vocabulary size ${vocabSize} is too small: ${RESERVED_TOKENS} reserved tokens and ` +
        `${characters.length} characters need at least ${RESERVED_TOKENS + characters.length}`,
    );
  }

  const types: ChunkType[] = [...chunkCounts].map(([chunk, count]) => ({
    symbols: Array.from(chunk),
    count,
  }));
  const known = new Set(characters);
  const pieces: string[] = [];
  while (pieces.length < mergeCount) {
    const pair = bestPair(types);
    if (pair === null) {
      throw new Error(
        `vocabulary size ${vocabSize} is too large for these texts: after ${pieces.length} ` +
          `merges every chunk is a single piece; use at most ` +
          `${RESERVED_TOKENS + characters.length + pieces.length}`,
      );
    }
    for (const t of types) t.symbols = applyMerge(t.symbols, pair.left, pair.right);
    // Two different pairs can spell the same piece ("a"+"bc" and "ab"+"c"); it is stored once.
    const merged = pair.left + pair.right;
    if (!known.has(merged)) {
      known.add(merged);
      pieces.push(merged);
    }
  }
  return { characters, pieces, vocabSize };
}

/** Returns the pieces of `vocab` in id order, with their scores. */
export function vocabularyPieces(vocab: BpeVocabulary): { piece: string; score: number }[] {
  const out: { piece: string; score: number }[] = [];
  for (const piece of SPECIAL_PIECES) out.push({ piece, score: 0 });
  for (let b = 0; b < 256; b++) out.push({ piece: bytePieceName(b), score: 0 });
  for (const piece of vocab.characters) out.push({ piece, score: 0 });
  vocab.pieces.forEach((piece, k) => out.push({ piece, score: -k }));
  return out;
}

/**
 * Serialises `vocab` in llama2.c's tokenizer format: an int32 max_token_length, then per id a
 * float32 score, an int32 byte length and the piece's UTF-8 bytes, all little-endian.
 */
export function encodeTokenizerBin(vocab: BpeVocabulary): Uint8Array {
  const encoder = new TextEncoder();
  const entries = vocabularyPieces(vocab).map(({ piece, score }) => ({
    bytes: encoder.encode(piece),
    score,
  }));
  const maxTokenLength = Math.max(...entries.map((e) => e.bytes.length));
  const size = 4 + entries.reduce((sum, e) => sum + 8 + e.bytes.length, 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setInt32(0, maxTokenLength, true);
  let pos = 4;
  for (const { bytes, score } of entries) {
    view.setFloat32(pos, score, true);
    view.setInt32(pos + 4, bytes.length, true);
    out.set(bytes, pos + 8);
    pos += 8 + bytes.length;
  }
  return out;
}
