/**
 * A small tokenizer for the data tests: UTF-8 bytes, with optional multi-character pieces that
 * encoding matches greedily (longest first), so tests can make tokens that merge across the end
 * of a prompt.
 */
import type { EncodeOptions, StreamDecoder, Tokenizer } from "../data/tokenizer.ts";

const BYTE_OFFSET = 3;
const utf8 = new TextEncoder();

/** Byte-level tokenizer: 0 is padding, 1 BOS, 2 EOS, 3..258 the bytes, then `pieces`. */
export class ByteTokenizer implements Tokenizer {
  readonly bosId = 1;
  readonly eosId = 2;
  readonly source = "byte tokenizer (tests)";
  readonly vocabSize: number;
  readonly #pieces: string[];
  /** Pieces with their ids, longest first, for greedy matching. */
  readonly #byLength: { piece: string; id: number }[];

  constructor(pieces: string[] = []) {
    this.#pieces = pieces;
    this.#byLength = pieces.map((piece, i) => ({ piece, id: BYTE_OFFSET + 256 + i }))
      .sort((a, b) => b.piece.length - a.piece.length);
    this.vocabSize = BYTE_OFFSET + 256 + pieces.length;
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids: number[] = options.bos ? [this.bosId] : [];
    const pushBytes = (segment: string) => {
      for (const b of utf8.encode(segment)) ids.push(BYTE_OFFSET + b);
    };
    let plainFrom = 0;
    let i = 0;
    while (i < text.length) {
      const match = this.#byLength.find(({ piece }) => text.startsWith(piece, i));
      if (match) {
        pushBytes(text.slice(plainFrom, i));
        ids.push(match.id);
        i += match.piece.length;
        plainFrom = i;
      } else i++;
    }
    pushBytes(text.slice(plainFrom));
    if (options.eos) ids.push(this.eosId);
    return ids;
  }

  decode(ids: readonly number[]): string {
    const bytes: number[] = [];
    for (const id of ids) {
      if (id >= BYTE_OFFSET + 256) {
        bytes.push(...utf8.encode(this.#pieces[id - BYTE_OFFSET - 256]));
      } else if (id >= BYTE_OFFSET) bytes.push(id - BYTE_OFFSET);
    }
    return new TextDecoder().decode(new Uint8Array(bytes));
  }

  decoder(): StreamDecoder {
    const ids: number[] = [];
    let emitted = "";
    return {
      push: (id) => {
        ids.push(id);
        const text = this.decode(ids);
        const complete = text.endsWith("\uFFFD") ? text.slice(0, text.lastIndexOf("\uFFFD")) : text;
        const out = complete.slice(emitted.length);
        emitted = complete;
        return out;
      },
      flush: () => this.decode(ids).slice(emitted.length),
    };
  }
}

let tempDir: string | null = null;

/** Writes `text` to a file in this test run's temporary folder and returns its path. */
export async function writeTemp(name: string, text: string): Promise<string> {
  if (tempDir === null) {
    tempDir = await Deno.makeTempDir({ prefix: "llama-adapter-data-" });
    const dir = tempDir;
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
  }
  const path = `${tempDir}/${name}`;
  await Deno.writeTextFile(path, text);
  return path;
}
