import assert from "node:assert/strict";
import { loadLlama2cTokenizer } from "../data/llama2c_tokenizer.ts";
import { loadSentencePiece } from "../data/sentencepiece.ts";
import type { Tokenizer } from "../data/tokenizer.ts";
import { fixture, fixtureTest, testRng } from "./helpers.ts";
import { streamChunks } from "./tokenizer_helpers.ts";

/** LLaMA 2 has no pieces for these characters, so each is spelled as UTF-8 byte pieces. */
const BYTE_TEXT = "llama 🦙 rocket 🚀 ok 𝄞 ☃ 龘!";
const BYTE_PIECES_LLAMA = [243, 162, 169, 156]; // <0xF0> <0x9F> <0xA6> <0x99>, the llama emoji

/** Returns a loader that reads the file once for all tests of this file. */
function once(load: () => Promise<Tokenizer>): () => Promise<Tokenizer> {
  let loaded: Promise<Tokenizer> | null = null;
  return () => loaded ??= load();
}

const loaders: [string, () => Promise<Tokenizer>][] = [
  ["sentencepiece", once(() => loadSentencePiece(fixture("tokenizers/llama2-tokenizer.model")))],
  ["llama2c", once(() => loadLlama2cTokenizer(fixture("tokenizers/llama2-tokenizer.bin")))],
];

for (const [name, load] of loaders) {
  fixtureTest(`${name} stream decodes byte pieces whole`, async () => {
    const tokenizer = await load();
    const ids = tokenizer.encode(BYTE_TEXT, { bos: true });
    const at = ids.indexOf(BYTE_PIECES_LLAMA[0]);
    assert.deepEqual(ids.slice(at, at + 4), BYTE_PIECES_LLAMA, "the llama emoji is byte pieces");

    const chunks = streamChunks(tokenizer.decoder(), ids);
    for (const chunk of chunks) assert.ok(!chunk.includes("\uFFFD"), JSON.stringify(chunks));
    assert.deepEqual(chunks.slice(at, at + 4), ["", "", "", "🦙"]);
    assert.equal(chunks.join(""), tokenizer.decode(ids));
    assert.equal(chunks.join(""), BYTE_TEXT);
  });

  fixtureTest(`${name} stream equals decode on random ids`, async () => {
    const tokenizer = await load();
    const rng = testRng();
    for (let trial = 0; trial < 100; trial++) {
      // Mostly byte pieces (ids 3..258), so characters split and invalid sequences both occur.
      const ids = Array.from(
        { length: 1 + rng.int(12) },
        () => rng.int(4) === 0 ? rng.int(tokenizer.vocabSize) : 3 + rng.int(256),
      );
      const chunks = streamChunks(tokenizer.decoder(), ids);
      assert.equal(chunks.join(""), tokenizer.decode(ids), `seed ${rng.seed}: ${ids}`);
    }
  });

  fixtureTest(`${name} stream flushes an incomplete character`, async () => {
    const tokenizer = await load();
    const decoder = tokenizer.decoder();
    assert.equal(decoder.push(15043), "Hello");
    assert.equal(decoder.push(243), "");
    assert.equal(decoder.push(162), "");
    assert.equal(decoder.flush(), "\uFFFD");
  });

  fixtureTest(`${name} stream continues a pushed prompt`, async () => {
    const tokenizer = await load();
    const prompt = tokenizer.encode("Once upon", { bos: true });
    const continuation = tokenizer.encode("Once upon a time").slice(prompt.length - 1);
    const decoder = tokenizer.decoder();
    for (const id of prompt) decoder.push(id);
    const text = continuation.map((id) => decoder.push(id)).join("") + decoder.flush();
    assert.equal(text, " a time");
  });
}
