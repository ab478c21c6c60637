/**
 * Hugging Face `tokenizer.json` files, encoded and decoded by the `@huggingface/tokenizers` package
 * (tokenizers.js), with `tokenizer_config.json` beside it for the BOS and EOS token names.
 *
 * Special added tokens (BOS, EOS, chat markers) are kept out of the text splitter, so text that
 * contains "</s>" is encoded as ordinary characters, as SentencePiece does. Only `EncodeOptions`
 * adds BOS and EOS, and special tokens decode to nothing.
 */
import { Tokenizer as HfLibTokenizer } from "@huggingface/tokenizers";
import type { EncodeOptions, StreamDecoder, Tokenizer } from "./tokenizer.ts";

/** An `added_tokens` entry of tokenizer.json. */
interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
}

/** BOS and EOS names tried, in order, when tokenizer_config.json does not name them. */
const BOS_NAMES = ["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"];
const EOS_NAMES = ["</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"];

const DECODE_OPTIONS = { skip_special_tokens: false, clean_up_tokenization_spaces: false };

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** Returns the content of a config token entry, which is a string or an `{content}` object. */
function tokenName(entry: unknown): string | undefined {
  if (typeof entry === "string") return entry;
  if (isRecord(entry) && typeof entry.content === "string") return entry.content;
  return undefined;
}

/** A tokenizer backed by tokenizers.js. */
export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly source: string;

  readonly #lib: HfLibTokenizer;
  readonly #specialIds: Set<number>;

  /**
   * Builds a tokenizer from parsed tokenizer.json and tokenizer_config.json objects (pass `{}` when
   * there is no config). Throws with `source` in the message when the JSON is not a tokenizer or
   * uses a component tokenizers.js lacks. BOS/EOS are -1 when neither file names them.
   */
  constructor(tokenizerJson: unknown, config: unknown, source: string) {
    this.source = source;
    if (!isRecord(tokenizerJson) || !isRecord(tokenizerJson.model)) {
      throw new Error(`${source}: not a Hugging Face tokenizer.json (no "model" object)`);
    }
    if (!isRecord(config)) throw new Error(`${source}: tokenizer_config.json is not an object`);
    const added = Array.isArray(tokenizerJson.added_tokens)
      ? tokenizerJson.added_tokens as AddedTokenJson[]
      : [];
    for (const t of added) {
      if (!isRecord(t) || !Number.isInteger(t.id) || typeof t.content !== "string") {
        throw new Error(`${source}: invalid added_tokens entry ${JSON.stringify(t)}`);
      }
    }
    const special = added.filter((t) => t.special);
    this.#specialIds = new Set(special.map((t) => t.id));

    try {
      this.#lib = new HfLibTokenizer({
        normalizer: null,
        pre_tokenizer: null,
        post_processor: null,
        decoder: null,
        ...tokenizerJson,
        added_tokens: added.filter((t) => !t.special),
      }, config);
    } catch (e) {
      throw new Error(`${source}: cannot build the tokenizer: ${(e as Error).message}`);
    }

    let maxId = -1;
    for (const id of this.#lib.get_vocab(true).values()) maxId = Math.max(maxId, id);
    for (const t of added) maxId = Math.max(maxId, t.id);
    this.vocabSize = maxId + 1;

    const idOf = (name: string | undefined) => {
      if (name === undefined) return undefined;
      return added.find((t) => t.content === name)?.id ?? this.#lib.token_to_id(name);
    };
    const find = (configured: unknown, fallbacks: string[]) =>
      idOf(tokenName(configured)) ?? fallbacks.map(idOf).find((id) => id !== undefined) ?? -1;
    this.bosId = find(config.bos_token, BOS_NAMES);
    this.eosId = find(config.eos_token, EOS_NAMES);
  }

  /** Encodes text to ids; `bos`/`eos` add the BOS/EOS ids. Special-token text is not matched. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids: number[] = [];
    if (options.bos) ids.push(this.#special("BOS", this.bosId));
    const encoded = this.#lib.encode(text, { add_special_tokens: false }).ids;
    for (const id of encoded) {
      if (!Number.isInteger(id)) {
        throw new Error(
          `${this.source}: part of the text has no token and the tokenizer has no unknown token`,
        );
      }
      ids.push(id);
    }
    if (options.eos) ids.push(this.#special("EOS", this.eosId));
    return ids;
  }

  /** Decodes ids to text; special tokens produce nothing, tokenization spaces are kept as is. */
  decode(ids: readonly number[]): string {
    return this.decodeText(ids.filter((id) => !this.#isSpecial(id)));
  }

  /**
   * Returns a streaming decoder whose chunks join to `decode(ids)` for decoders that only strip at
   * the sequence start (Metaspace, ByteFallback, ByteLevel). Text is released once it no longer
   * ends in U+FFFD, so a character split across byte tokens comes out whole.
   */
  decoder(): StreamDecoder {
    return new HfStreamDecoder(this, (id) => this.#isSpecial(id));
  }

  /** Decodes ids that contain no special tokens. */
  decodeText(ids: readonly number[]): string {
    if (ids.length === 0) return "";
    return this.#lib.decode(ids as number[], DECODE_OPTIONS);
  }

  #isSpecial(id: number): boolean {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(
        `${this.source}: token id ${id} is outside the vocabulary of ${this.vocabSize} tokens`,
      );
    }
    return this.#specialIds.has(id);
  }

  #special(name: string, id: number): number {
    if (id < 0) {
      throw new Error(
        `${this.source}: no ${name} token is known; name it as ${name.toLowerCase()}_token ` +
          `in tokenizer_config.json`,
      );
    }
    return id;
  }
}

/**
 * Incremental decoder that emits the text of ids[prefix, end) minus the text of ids[prefix, read).
 * `read` is where the last emitted text ended and `prefix` is where the emit before it ended. Both
 * decodes start at the same token, so the decoder's start-of-sequence handling cancels out.
 */
class HfStreamDecoder implements StreamDecoder {
  readonly #ids: number[] = [];
  #prefix = 0;
  #read = 0;

  constructor(
    private readonly tokenizer: HfTokenizer,
    private readonly isSpecial: (id: number) => boolean,
  ) {}

  push(id: number): string {
    if (this.isSpecial(id)) return "";
    this.#ids.push(id);
    const before = this.tokenizer.decodeText(this.#ids.slice(this.#prefix, this.#read));
    const after = this.tokenizer.decodeText(this.#ids.slice(this.#prefix));
    if (after.length <= before.length || after.endsWith("\uFFFD")) return "";
    this.#prefix = this.#read;
    this.#read = this.#ids.length;
    return after.slice(before.length);
  }

  flush(): string {
    const before = this.tokenizer.decodeText(this.#ids.slice(this.#prefix, this.#read));
    const after = this.tokenizer.decodeText(this.#ids.slice(this.#prefix));
    if (this.#read < this.#ids.length) {
      this.#prefix = this.#read;
      this.#read = this.#ids.length;
    }
    return after.slice(before.length);
  }
}

/**
 * Reads a `tokenizer.json`, with the `tokenizer_config.json` in the same folder when there is one.
 */
export async function loadHfTokenizer(path: string): Promise<HfTokenizer> {
  const json = await readJson(path);
  const configPath = path.replace(/[^/\\]*$/, "tokenizer_config.json");
  let config: unknown = {};
  try {
    config = await readJson(configPath);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return new HfTokenizer(json, config, path);
}

async function readJson(path: string): Promise<unknown> {
  const text = await Deno.readTextFile(path);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: invalid JSON: ${(e as Error).message}`);
  }
}
