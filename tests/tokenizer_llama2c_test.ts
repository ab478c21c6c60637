import assert from "node:assert/strict";
import { join } from "node:path";
import { Llama2cTokenizer, loadLlama2cTokenizer } from "../data/llama2c_tokenizer.ts";
import { loadSentencePiece } from "../data/sentencepiece.ts";
import { fixture, fixtureTest, testRng } from "./helpers.ts";
import { goldenEncodeCases } from "./tokenizer_helpers.ts";

const LLAMA_BIN = "tokenizers/llama2-tokenizer.bin";
const AIDREAMS_BIN = "models/aidreams260K-tok512.bin";

let llama: Promise<Llama2cTokenizer> | null = null;
function llamaTokenizer(): Promise<Llama2cTokenizer> {
  llama ??= loadLlama2cTokenizer(fixture(LLAMA_BIN), 32000);
  return llama;
}

interface GenerationCase {
  model: string;
  tokenizer?: string;
  prompt?: string;
  prompt_ids: number[];
  ids: number[];
  text?: string;
}

function aidreamsCase(): GenerationCase {
  const golden = JSON.parse(Deno.readTextFileSync(fixture("golden/generation.json")));
  return (golden.cases as GenerationCase[]).find((c) => c.tokenizer === AIDREAMS_BIN)!;
}

/** Writes a llama2.c tokenizer file from (score, text) records. */
function llama2cBytes(maxTokenLength: number, records: [number, string][]): Uint8Array {
  const parts: number[] = [];
  const header = new DataView(new ArrayBuffer(4));
  header.setInt32(0, maxTokenLength, true);
  parts.push(...new Uint8Array(header.buffer));
  for (const [score, text] of records) {
    const bytes = new TextEncoder().encode(text);
    const head = new DataView(new ArrayBuffer(8));
    head.setFloat32(0, score, true);
    head.setInt32(4, bytes.length, true);
    parts.push(...new Uint8Array(head.buffer), ...bytes);
  }
  return Uint8Array.from(parts);
}

fixtureTest("llama2c reads the LLaMA 2 tokenizer.bin", async () => {
  const tokenizer = await llamaTokenizer();
  assert.equal(tokenizer.vocabSize, 32000);
  assert.equal(tokenizer.bosId, 1);
  assert.equal(tokenizer.eosId, 2);
  assert.equal(new TextDecoder().decode(tokenizer.tokens[3 + 0x41].bytes), "<0x41>");
  assert.equal(new TextDecoder().decode(tokenizer.tokens[29871].bytes), " ");
});

fixtureTest("llama2c encodes golden LLaMA 2 cases", async () => {
  const tokenizer = await llamaTokenizer();
  for (const { text, ids } of goldenEncodeCases()) {
    assert.deepEqual(tokenizer.encode(text), ids, `encode ${JSON.stringify(text)}`);
  }
});

fixtureTest("llama2c decodes golden ids to their text", async () => {
  const tokenizer = await llamaTokenizer();
  for (const { text, ids } of goldenEncodeCases()) {
    assert.equal(tokenizer.decode(ids), text, `decode ${JSON.stringify(ids)}`);
  }
});

fixtureTest("llama2c encodes the aidreams prompt", async () => {
  const golden = aidreamsCase();
  const tokenizer = await loadLlama2cTokenizer(fixture(AIDREAMS_BIN), 512);
  assert.deepEqual(tokenizer.encode(golden.prompt!, { bos: true }), golden.prompt_ids);
});

fixtureTest("llama2c decodes the aidreams generation", async () => {
  const golden = aidreamsCase();
  const tokenizer = await loadLlama2cTokenizer(fixture(AIDREAMS_BIN), 512);
  // The C program prints a newline after the generated text; the ids hold no newline token.
  assert.equal(tokenizer.decode([1, ...golden.ids]) + "\n", golden.text);
  assert.equal(tokenizer.decode(golden.ids) + "\n", golden.text);
});

fixtureTest("llama2c drops the space after BOS", async () => {
  const tokenizer = await llamaTokenizer();
  assert.equal(tokenizer.decode([1, 15043, 3186, 2, 1, 15043]), "Hello worldHello");
  assert.equal(tokenizer.decode([15043, 3186]), "Hello world");
  assert.equal(tokenizer.decode([29871, 15043]), " Hello");
  assert.deepEqual(tokenizer.encode("Hello", { bos: true, eos: true }), [1, 15043, 2]);
});

fixtureTest("llama2c agrees with the SentencePiece model", async () => {
  const bin = await llamaTokenizer();
  const model = await loadSentencePiece(fixture("tokenizers/llama2-tokenizer.model"));
  const rng = testRng();
  const alphabet = Array.from("abcXYZ019 .,\n\t  éüß—日本語中文🦙🚀\u00a0<>");
  for (let trial = 0; trial < 200; trial++) {
    const length = rng.int(40);
    const text = Array.from({ length }, () => alphabet[rng.int(alphabet.length)]).join("");
    const ids = bin.encode(text);
    assert.deepEqual(ids, model.encode(text), `seed ${rng.seed}: ${JSON.stringify(text)}`);
    assert.equal(bin.decode(ids), text, `seed ${rng.seed}: ${JSON.stringify(text)}`);
  }
  // Random ids, special ids left out (llama2.c prints <unk> literally, SentencePiece as " ⁇ ").
  for (let trial = 0; trial < 50; trial++) {
    const ids = Array.from({ length: 1 + rng.int(20) }, () => 3 + rng.int(32000 - 3));
    assert.equal(bin.decode(ids), model.decode(ids), `seed ${rng.seed}: ${ids}`);
  }
});

Deno.test("llama2c merges by best score, leftmost on ties", () => {
  const tokenizer = Llama2cTokenizer.fromBytes(
    llama2cBytes(6, [
      [0, "<unk>"],
      [0, "\n<s>\n"],
      [0, "\n</s>\n"],
      [-5, " "],
      [-5, "a"],
      [-1, "aa"],
      [-2, " a"],
      [-1, "aaa"],
    ]),
    "tiny.bin",
  );
  // " aaaa": the leftmost "aa" merges first, then "aaa" ties with the remaining "aa" and is
  // leftmost. Rightmost-first would give [3, 4, 7].
  assert.deepEqual(tokenizer.encode("aaaa"), [3, 7, 4]);
  assert.deepEqual(tokenizer.encode("aaa"), [3, 7]);
  // Bytes missing from a vocabulary without byte tokens cannot be encoded.
  assert.throws(() => tokenizer.encode("b"), /tiny\.bin: cannot encode byte 0x62/);
});

Deno.test("llama2c rejects a truncated or mismatched file", async () => {
  const bytes = llama2cBytes(6, [[0, "<unk>"], [0, "\n<s>\n"], [0, "\n</s>\n"], [-1, "hello"]]);
  const dir = await Deno.makeTempDir();
  try {
    const cuts = [
      { at: 2, why: /too short for a header/ },
      { at: 9, why: /token 0 at byte 4 is cut off/ },
      { at: bytes.length - 1, why: /token 3 needs 5 bytes .* only 4 remain/ },
    ];
    for (const { at, why } of cuts) {
      const path = join(dir, `cut${at}.bin`);
      await Deno.writeFile(path, bytes.subarray(0, at));
      await assert.rejects(loadLlama2cTokenizer(path), (e: Error) => {
        assert.ok(e.message.includes(path), `message names the file: ${e.message}`);
        assert.match(e.message, why);
        assert.match(e.message, /truncated or corrupt/);
        return true;
      });
    }
    const whole = join(dir, "whole.bin");
    await Deno.writeFile(whole, bytes);
    await assert.rejects(loadLlama2cTokenizer(whole, 512), /has 4 tokens but .* has 512/);
    assert.equal((await loadLlama2cTokenizer(whole, 4)).vocabSize, 4);

    const long = join(dir, "long.bin");
    await Deno.writeFile(long, llama2cBytes(2, [[0, "<unk>"]]));
    await assert.rejects(loadLlama2cTokenizer(long), /token 0 has length 5, outside 0..2/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

fixtureTest("llama2c encodes 20 KB of text quickly", async () => {
  const tokenizer = await llamaTokenizer();
  const text = goldenEncodeCases().map(({ text }) => text).join("\n").repeat(12).slice(0, 20_000);
  const start = performance.now();
  const ids = tokenizer.encode(text);
  const ms = performance.now() - start;
  assert.ok(ms < 5000, `encoding ${text.length} characters took ${ms.toFixed(0)} ms`);
  assert.equal(tokenizer.decode(ids), text);
});
