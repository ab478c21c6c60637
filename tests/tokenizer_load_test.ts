import assert from "node:assert/strict";
import { join } from "node:path";
import { HfTokenizer } from "../data/hf_tokenizer.ts";
import { Llama2cTokenizer } from "../data/llama2c_tokenizer.ts";
import { findTokenizer, isTokenizerFileName, loadTokenizer } from "../data/load_tokenizer.ts";
import {
  PieceType,
  SentencePieceTokenizer,
  UnsupportedTokenizerError,
} from "../data/sentencepiece.ts";
import { fixture, fixtureTest } from "./helpers.ts";
import { sentencePieceModelBytes } from "./tokenizer_helpers.ts";

const LLAMA_MODEL = "tokenizers/llama2-tokenizer.model";

/** A tokenizer.json with three tokens, enough to load. */
const TINY_TOKENIZER_JSON = JSON.stringify({
  added_tokens: [
    { id: 1, content: "<s>", special: true },
    { id: 2, content: "</s>", special: true },
  ],
  model: { type: "BPE", vocab: { "a": 0, "<s>": 1, "</s>": 2 }, merges: [] },
});

const UNIGRAM_MODEL = sentencePieceModelBytes([
  { piece: "<unk>", type: PieceType.UNKNOWN },
  { piece: "<s>", type: PieceType.CONTROL },
  { piece: "</s>", type: PieceType.CONTROL },
  { piece: "a", score: -1 },
], { modelType: "unigram" });

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("load tells tokenizer files by name", () => {
  assert.equal(isTokenizerFileName("/m/tokenizer.model"), true);
  assert.equal(isTokenizerFileName("/m/tokenizer.json"), true);
  assert.equal(isTokenizerFileName("/m/tokenizer.bin"), true);
  assert.equal(isTokenizerFileName("/m/aidreams260K-tok512.bin"), true);
  assert.equal(isTokenizerFileName("/m/tok4096.bin"), true);
  assert.equal(isTokenizerFileName("/m/stories260K.bin"), false);
  assert.equal(isTokenizerFileName("/m/stock.bin"), false);
  assert.equal(isTokenizerFileName("/m/model.safetensors"), false);
});

fixtureTest("load picks the format from a tokenizer path", async () => {
  const model = await loadTokenizer(fixture(LLAMA_MODEL));
  assert.ok(model instanceof SentencePieceTokenizer);
  const bin = await loadTokenizer(fixture("tokenizers/llama2-tokenizer.bin"), { vocabSize: 32000 });
  assert.ok(bin instanceof Llama2cTokenizer);
  assert.equal(bin.source, fixture("tokenizers/llama2-tokenizer.bin"));
});

fixtureTest("load finds the tokenizer beside a llama2.c model", async () => {
  const tokenizer = await loadTokenizer(fixture("models/aidreams260K.bin"), { vocabSize: 512 });
  assert.equal(tokenizer.source, fixture("models/aidreams260K-tok512.bin"));
  assert.deepEqual(
    tokenizer.encode("Once upon a time", { bos: true }),
    [1, 429, 491, 433, 295, 429, 444, 445, 265, 262, 263, 342, 430],
  );
});

fixtureTest("load lists what it looked for beside a model", async () => {
  const model = fixture("models/stories260K.bin");
  await assert.rejects(loadTokenizer(model, { vocabSize: 512 }), (e: Error) => {
    assert.match(e.message, /no tokenizer found for .*stories260K\.bin/);
    for (
      const name of ["stories260K-tok*.bin", "tokenizer.bin", "tokenizer.model", "tokenizer.json"]
    ) {
      assert.ok(e.message.includes(fixture(`models/${name}`)), `lists ${name}: ${e.message}`);
    }
    return true;
  });
});

Deno.test("load reports a path that does not exist", async () => {
  await withTempDir(async (dir) => {
    const missing = join(dir, "nowhere", "tokenizer.model");
    await assert.rejects(loadTokenizer(missing), (e: Error) => {
      assert.match(e.message, /no tokenizer found/);
      assert.ok(e.message.includes(missing), e.message);
      return true;
    });
    const empty = join(dir, "model");
    await Deno.mkdir(empty);
    await assert.rejects(loadTokenizer(empty), (e: Error) => {
      assert.ok(e.message.includes(join(empty, "tokenizer.model")), e.message);
      assert.ok(e.message.includes(join(empty, "tokenizer.json")), e.message);
      assert.ok(e.message.includes(join(empty, "tokenizer.bin")), e.message);
      assert.ok(e.message.includes(join(dir, "tokenizer.model")), e.message);
      return true;
    });
  });
});

fixtureTest("load prefers tokenizer.model in a model folder", async () => {
  await withTempDir(async (dir) => {
    await Deno.copyFile(fixture(LLAMA_MODEL), join(dir, "tokenizer.model"));
    await Deno.writeTextFile(join(dir, "tokenizer.json"), TINY_TOKENIZER_JSON);
    await Deno.writeTextFile(join(dir, "config.json"), "{}");
    const search = await findTokenizer(dir);
    assert.deepEqual(search.found, [join(dir, "tokenizer.model"), join(dir, "tokenizer.json")]);
    assert.ok(await loadTokenizer(dir) instanceof SentencePieceTokenizer);
    // A model file inside the folder leads to the same tokenizer.
    const weights = join(dir, "model.safetensors");
    await Deno.writeFile(weights, new Uint8Array(8));
    assert.equal((await loadTokenizer(weights)).source, join(dir, "tokenizer.model"));
  });
});

Deno.test("load passes over an unsupported tokenizer.model", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(join(dir, "tokenizer.model"), UNIGRAM_MODEL);
    await assert.rejects(loadTokenizer(dir), UnsupportedTokenizerError);
    await Deno.writeTextFile(join(dir, "tokenizer.json"), TINY_TOKENIZER_JSON);
    const tokenizer = await loadTokenizer(dir);
    assert.ok(tokenizer instanceof HfTokenizer);
    assert.deepEqual(tokenizer.encode("a", { bos: true, eos: true }), [1, 0, 2]);
  });
});

Deno.test("load finds tokenizer.model in the parent folder", async () => {
  await withTempDir(async (dir) => {
    const modelDir = join(dir, "llama-7b");
    await Deno.mkdir(modelDir);
    await Deno.writeFile(join(dir, "tokenizer.model"), UNIGRAM_MODEL);
    const search = await findTokenizer(modelDir);
    assert.deepEqual(search.found, [join(dir, "tokenizer.model")]);
  });
});

fixtureTest("load rejects a tokenizer larger than the model", async () => {
  await assert.rejects(
    loadTokenizer(fixture(LLAMA_MODEL), { vocabSize: 512 }),
    /has 32000 tokens but the model's vocabulary has 512/,
  );
  await assert.rejects(
    loadTokenizer(fixture("tokenizers/llama2-tokenizer.bin"), { vocabSize: 512 }),
    /has 32000 tokens but the model's vocabulary has 512/,
  );
  // A model vocabulary padded past the tokenizer's is fine for SentencePiece.
  assert.equal((await loadTokenizer(fixture(LLAMA_MODEL), { vocabSize: 32064 })).vocabSize, 32000);
});
