/**
 * No fixture ships a tokenizer.json, so these tests build their own. The first is BPE with byte
 * fallback over the LLaMA 2 SentencePiece vocabulary, checked against the golden LLaMA 2 ids. The
 * second is a small GPT-2 style byte-level BPE, a different decoder family in which a character
 * also splits across tokens.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { HfTokenizer, loadHfTokenizer } from "../data/hf_tokenizer.ts";
import { loadSentencePiece } from "../data/sentencepiece.ts";
import { fixture, fixtureTest, testRng } from "./helpers.ts";
import {
  goldenEncodeCases,
  streamChunks,
  tokenizerJsonFromSentencePiece,
} from "./tokenizer_helpers.ts";

let llama: Promise<HfTokenizer> | null = null;

/** Writes tokenizer.json and tokenizer_config.json for LLaMA 2 to a temp folder and loads them. */
function llamaTokenizer(): Promise<HfTokenizer> {
  llama ??= (async () => {
    const sp = await loadSentencePiece(fixture("tokenizers/llama2-tokenizer.model"));
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(
        join(dir, "tokenizer.json"),
        JSON.stringify(tokenizerJsonFromSentencePiece(sp.model)),
      );
      await Deno.writeTextFile(
        join(dir, "tokenizer_config.json"),
        JSON.stringify({ bos_token: { content: "<s>" }, eos_token: "</s>" }),
      );
      return await loadHfTokenizer(join(dir, "tokenizer.json"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  })();
  return llama;
}

/** GPT-2's byte-to-character table: printable bytes map to themselves, the rest to U+0100 on. */
function byteLevelAlphabet(): string[] {
  const table: string[] = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    table[b] = String.fromCodePoint(printable ? b : next++);
  }
  return table;
}

/** Builds a byte-level BPE tokenizer.json with 256 byte tokens, 4 merges and 1 special token. */
function byteLevelTokenizerJson(): Record<string, unknown> {
  const alphabet = byteLevelAlphabet();
  const vocab: Record<string, number> = {};
  alphabet.forEach((c, i) => vocab[c] = i);
  const merges: [string, string][] = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["ð", "Ł"]];
  for (const [l, r] of merges) vocab[l + r] = Object.keys(vocab).length;
  const eos = Object.keys(vocab).length;
  return {
    added_tokens: [{ id: eos, content: "<|endoftext|>", special: true }],
    normalizer: null,
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", vocab, merges, unk_token: null, byte_fallback: false },
  };
}

fixtureTest("hf encodes golden LLaMA 2 cases", async () => {
  const tokenizer = await llamaTokenizer();
  for (const { text, ids } of goldenEncodeCases()) {
    assert.deepEqual(tokenizer.encode(text), ids, `encode ${JSON.stringify(text)}`);
  }
});

fixtureTest("hf decodes golden ids to their text", async () => {
  const tokenizer = await llamaTokenizer();
  for (const { text, ids } of goldenEncodeCases()) {
    assert.equal(tokenizer.decode(ids), text, `decode ${JSON.stringify(ids)}`);
  }
});

fixtureTest("hf reads BOS and EOS from the config", async () => {
  const tokenizer = await llamaTokenizer();
  assert.equal(tokenizer.vocabSize, 32000);
  assert.equal(tokenizer.bosId, 1);
  assert.equal(tokenizer.eosId, 2);
  assert.deepEqual(tokenizer.encode("Hello world", { bos: true, eos: true }), [1, 15043, 3186, 2]);
  assert.equal(tokenizer.decode([1, 15043, 3186, 2]), "Hello world");
  assert.deepEqual(tokenizer.encode("</s>"), [1533, 29879, 29958], "special text is not matched");
  assert.deepEqual(tokenizer.encode(""), []);
  assert.equal(tokenizer.decode([]), "");
});

fixtureTest("hf stream decodes byte pieces whole", async () => {
  const tokenizer = await llamaTokenizer();
  const text = "llama 🦙 rocket 🚀 ok";
  const ids = tokenizer.encode(text, { bos: true });
  const at = ids.indexOf(243);
  assert.deepEqual(ids.slice(at, at + 4), [243, 162, 169, 156]);
  const chunks = streamChunks(tokenizer.decoder(), ids);
  for (const chunk of chunks) assert.ok(!chunk.includes("\uFFFD"), JSON.stringify(chunks));
  assert.deepEqual(chunks.slice(at, at + 4), ["", "", "", "🦙"]);
  assert.equal(chunks.join(""), text);
});

fixtureTest("hf stream equals decode on random text", async () => {
  const tokenizer = await llamaTokenizer();
  const rng = testRng();
  const alphabet = Array.from("abc XYZ  .\n日本語🦙🚀é—");
  for (let trial = 0; trial < 40; trial++) {
    const text = Array.from({ length: rng.int(25) }, () => alphabet[rng.int(alphabet.length)])
      .join("");
    const ids = tokenizer.encode(text, { bos: rng.int(2) === 0 });
    const chunks = streamChunks(tokenizer.decoder(), ids);
    assert.equal(
      chunks.join(""),
      tokenizer.decode(ids),
      `seed ${rng.seed}: ${JSON.stringify(text)}`,
    );
    assert.equal(tokenizer.decode(ids), text, `seed ${rng.seed}: ${JSON.stringify(text)}`);
  }
});

Deno.test("hf byte-level tokenizer round-trips and streams", () => {
  const tokenizer = new HfTokenizer(byteLevelTokenizerJson(), {}, "bytelevel/tokenizer.json");
  assert.equal(tokenizer.vocabSize, 261);
  assert.equal(tokenizer.bosId, -1, "no BOS name is known");
  assert.equal(tokenizer.eosId, 260, "EOS falls back to <|endoftext|>");

  const text = "the theme 🦙 héllo";
  const ids = tokenizer.encode(text);
  assert.ok(ids.includes(258), `"Ġthe" is merged: ${ids}`);
  assert.equal(tokenizer.decode(ids), text);
  assert.equal(tokenizer.decode([...ids, 260]), text, "special tokens decode to nothing");

  const chunks = streamChunks(tokenizer.decoder(), ids);
  for (const chunk of chunks) assert.ok(!chunk.includes("\uFFFD"), JSON.stringify(chunks));
  assert.equal(chunks.join(""), text);
  assert.ok(chunks.includes(" 🦙") || chunks.includes("🦙"), JSON.stringify(chunks));

  assert.throws(() => tokenizer.encode("x", { bos: true }), /no BOS token is known/);
  assert.throws(() => tokenizer.decode([261]), /token id 261 is outside .* 261 tokens/);
});

Deno.test("hf rejects files that are not tokenizers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const broken = join(dir, "tokenizer.json");
    await Deno.writeTextFile(broken, '{"model": {"type": "BPE"');
    await assert.rejects(loadHfTokenizer(broken), /tokenizer\.json: invalid JSON/);

    const config = join(dir, "config.json");
    await Deno.writeTextFile(config, JSON.stringify({ vocab_size: 32000 }));
    await assert.rejects(loadHfTokenizer(config), /config\.json: not a Hugging Face tokenizer/);

    const unknown = join(dir, "unknown.json");
    await Deno.writeTextFile(unknown, JSON.stringify({ model: { type: "Mystery" } }));
    await assert.rejects(loadHfTokenizer(unknown), /unknown\.json: cannot build the tokenizer/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
