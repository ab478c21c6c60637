import assert from "node:assert/strict";
import { join } from "node:path";
import { ProtoReader } from "../data/protobuf.ts";
import {
  loadSentencePiece,
  PieceType,
  SentencePieceTokenizer,
  UnsupportedTokenizerError,
} from "../data/sentencepiece.ts";
import { fixture, fixtureTest, testRng } from "./helpers.ts";
import { goldenEncodeCases, type PieceSpec, sentencePieceModelBytes } from "./tokenizer_helpers.ts";

const MODEL = "tokenizers/llama2-tokenizer.model";

let llama: Promise<SentencePieceTokenizer> | null = null;
function llamaTokenizer(): Promise<SentencePieceTokenizer> {
  llama ??= loadSentencePiece(fixture(MODEL));
  return llama;
}

/** Control and unknown pieces that every synthetic model starts with (ids 0, 1, 2). */
const SPECIAL_PIECES: PieceSpec[] = [
  { piece: "<unk>", type: PieceType.UNKNOWN },
  { piece: "<s>", type: PieceType.CONTROL },
  { piece: "</s>", type: PieceType.CONTROL },
];

function syntheticTokenizer(
  pieces: PieceSpec[],
  spec: Parameters<typeof sentencePieceModelBytes>[1] = {},
): SentencePieceTokenizer {
  const bytes = sentencePieceModelBytes([...SPECIAL_PIECES, ...pieces], {
    modelType: "bpe",
    ...spec,
  });
  return SentencePieceTokenizer.fromBytes(bytes, "synthetic.model");
}

fixtureTest("sentencepiece reads the LLaMA 2 model spec", async () => {
  const { model, vocabSize, bosId, eosId } = await llamaTokenizer();
  assert.equal(vocabSize, 32000);
  assert.equal(model.modelType, "bpe");
  assert.equal(model.byteFallback, true);
  assert.equal(model.unkId, 0);
  assert.equal(bosId, 1);
  assert.equal(eosId, 2);
  assert.equal(model.padId, -1, "pad_id -1 is a 10-byte negative varint");
  assert.equal(model.addDummyPrefix, true);
  assert.equal(model.removeExtraWhitespaces, false);
  assert.equal(model.escapeWhitespaces, true);
  assert.deepEqual(model.pieces[29871], { piece: "\u2581", score: -1e9, type: PieceType.NORMAL });
  assert.equal(model.pieces[3 + 0x0a].piece, "<0x0A>");
  assert.equal(model.pieces[3 + 0x0a].type, PieceType.BYTE);
});

fixtureTest("sentencepiece looks up piece ids", async () => {
  const tokenizer = await llamaTokenizer();
  assert.equal(tokenizer.pieceToId("\u2581Hello"), 15043);
  assert.equal(tokenizer.pieceToId("<s>"), 1);
  assert.equal(tokenizer.pieceToId("<0x0A>"), 13);
  assert.equal(tokenizer.pieceToId("no such piece"), undefined);
});

fixtureTest("sentencepiece encodes golden LLaMA 2 cases", async () => {
  const tokenizer = await llamaTokenizer();
  for (const { text, ids } of goldenEncodeCases()) {
    assert.deepEqual(tokenizer.encode(text), ids, `encode ${JSON.stringify(text)}`);
  }
});

fixtureTest("sentencepiece decodes golden ids to their text", async () => {
  const tokenizer = await llamaTokenizer();
  for (const { text, ids } of goldenEncodeCases()) {
    assert.equal(tokenizer.decode(ids), text, `decode ${JSON.stringify(ids)}`);
  }
});

fixtureTest("sentencepiece adds BOS and EOS on request", async () => {
  const tokenizer = await llamaTokenizer();
  assert.deepEqual(tokenizer.encode("Hello world", { bos: true, eos: true }), [1, 15043, 3186, 2]);
  assert.deepEqual(tokenizer.encode("", { bos: true }), [1]);
  assert.deepEqual(tokenizer.encode("", { eos: true }), [2]);
  assert.equal(tokenizer.decode([1, 15043, 3186, 2]), "Hello world");
  assert.equal(tokenizer.decode([1, 1, 29871, 15043, 2]), " Hello", "one dummy space is dropped");
});

fixtureTest("sentencepiece round-trips random text", async () => {
  const tokenizer = await llamaTokenizer();
  const rng = testRng();
  const alphabet = Array.from("abcXYZ019 .,\n\t  éüß—日本語中文🦙🚀\u00a0\u2581");
  for (let trial = 0; trial < 200; trial++) {
    const length = rng.int(30);
    const text = Array.from({ length }, () => alphabet[rng.int(alphabet.length)]).join("");
    const ids = tokenizer.encode(text);
    const expected = text.replaceAll("\u2581", " ");
    assert.equal(tokenizer.decode(ids), expected, `seed ${rng.seed}: ${JSON.stringify(text)}`);
  }
});

fixtureTest("sentencepiece rejects out-of-range ids", async () => {
  const tokenizer = await llamaTokenizer();
  assert.throws(() => tokenizer.decode([15043, 32000]), /token id 32000 is outside .* 32000/);
  assert.throws(() => tokenizer.decode([-1]), /token id -1/);
});

fixtureTest("sentencepiece encodes 20 KB of text quickly", async () => {
  const tokenizer = await llamaTokenizer();
  const rng = testRng();
  const words = goldenEncodeCases().flatMap(({ text }) => text.split(" "));
  const parts: string[] = [];
  let size = 0;
  while (size < 20_000) {
    const w = words[rng.int(words.length)];
    parts.push(w);
    size += w.length + 1;
  }
  const text = parts.join(" ");
  // A quadratic merge loop takes tens of seconds on 20 KB; the heap takes well under one.
  const start = performance.now();
  const ids = tokenizer.encode(text);
  const ms = performance.now() - start;
  assert.ok(ms < 5000, `encoding ${text.length} characters took ${ms.toFixed(0)} ms`);
  assert.equal(tokenizer.decode(ids), text, `seed ${rng.seed}`);
});

Deno.test("sentencepiece splits merged unused pieces back", () => {
  // "ab" wins the first merge but is UNUSED, so SentencePiece splits it again instead of
  // letting the lower-scored "bc" merge happen.
  const tokenizer = syntheticTokenizer([
    { piece: "a", score: -10 },
    { piece: "b", score: -10 },
    { piece: "c", score: -10 },
    { piece: "ab", score: -1, type: PieceType.UNUSED },
    { piece: "bc", score: -2 },
  ], { addDummyPrefix: false });
  assert.deepEqual(tokenizer.encode("abc"), [3, 4, 5]);
  assert.deepEqual(tokenizer.encode("bc"), [7]);
});

Deno.test("sentencepiece keeps user-defined pieces whole", () => {
  const tokenizer = syntheticTokenizer([
    { piece: "x", score: -1 },
    { piece: "<x>", type: PieceType.USER_DEFINED },
    { piece: "<", score: -5 },
    { piece: ">", score: -5 },
    { piece: "<xy>", type: PieceType.USER_DEFINED },
    { piece: "y", score: -1 },
  ], { addDummyPrefix: false });
  assert.deepEqual(tokenizer.encode("x<x>x"), [3, 4, 3]);
  assert.deepEqual(tokenizer.encode("<xy><x"), [7, 5, 3]);
  assert.equal(tokenizer.decode([3, 4, 3]), "x<x>x");
});

Deno.test("sentencepiece emits unk without byte fallback", () => {
  const tokenizer = syntheticTokenizer([
    { piece: "\u2581", score: -3 },
    { piece: "a", score: -1 },
    { piece: "\u2581a", score: -2 },
  ], { byteFallback: false });
  assert.deepEqual(tokenizer.encode("a\u00e9a"), [5, 0, 4]);
  assert.equal(tokenizer.decode([1, 5, 0, 4, 2]), "a \u2047 a");
});

Deno.test("sentencepiece removes extra whitespace when asked", () => {
  const pieces = [{ piece: "\u2581", score: -3 }, { piece: "a", score: -1 }];
  const strict = syntheticTokenizer(pieces, { removeExtraWhitespaces: true });
  assert.deepEqual(strict.encode("  a   a  "), [3, 4, 3, 4]);
  assert.deepEqual(strict.encode("   "), []);
  const loose = syntheticTokenizer(pieces, { removeExtraWhitespaces: false });
  assert.deepEqual(loose.encode(" a"), [3, 3, 4]);
});

Deno.test("sentencepiece rejects unsupported model types", () => {
  const bytes = sentencePieceModelBytes([...SPECIAL_PIECES, { piece: "a" }], {
    modelType: "unigram",
  });
  assert.throws(
    () => SentencePieceTokenizer.fromBytes(bytes, "uni.model"),
    (e: Error) => e instanceof UnsupportedTokenizerError && /uni\.model.*unigram/.test(e.message),
  );
  const nfkc = sentencePieceModelBytes([...SPECIAL_PIECES, { piece: "a" }], {
    modelType: "bpe",
    normalizerName: "nmt_nfkc",
    charsmapBytes: 16,
  });
  assert.throws(
    () => SentencePieceTokenizer.fromBytes(nfkc, "nfkc.model"),
    (e: Error) => e instanceof UnsupportedTokenizerError && /nmt_nfkc/.test(e.message),
  );
});

/** Byte offset where the pieces end and trainer_spec (field 2) begins. */
function piecesEnd(bytes: Uint8Array): number {
  const r = new ProtoReader(bytes, "scan");
  for (;;) {
    const at = r.pos;
    const tag = r.tag();
    if (tag.field !== 1) return at;
    r.skip(tag.wire);
  }
}

fixtureTest("sentencepiece rejects truncated model files", async () => {
  const bytes = await Deno.readFile(fixture(MODEL));
  const dir = await Deno.makeTempDir();
  try {
    const cuts = [
      { at: 3, why: /runs past the end/ },
      { at: 100_001, why: /runs past the end/ },
      { at: piecesEnd(bytes), why: /no trainer_spec.*truncated/ },
      { at: bytes.length - 3, why: /runs past the end/ },
    ];
    for (const { at, why } of cuts) {
      const path = join(dir, `cut${at}.model`);
      await Deno.writeFile(path, bytes.subarray(0, at));
      await assert.rejects(loadSentencePiece(path), (e: Error) => {
        assert.ok(e.message.includes(path), `message names the file: ${e.message}`);
        assert.match(e.message, why);
        return true;
      });
    }
    const empty = join(dir, "empty.model");
    await Deno.writeFile(empty, new Uint8Array(0));
    await assert.rejects(loadSentencePiece(empty), /empty\.model: no vocabulary pieces/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
