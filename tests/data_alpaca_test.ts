import assert from "node:assert/strict";
import { BatchSampler } from "../data/batch.ts";
import { countTargets, type Example, loadDataset, tokeniseRecord } from "../data/dataset.ts";
import { loadSentencePiece } from "../data/sentencepiece.ts";
import { formatPrompt } from "../data/templates.ts";
import type { Tokenizer } from "../data/tokenizer.ts";
import { fixture, fixtureTest } from "./helpers.ts";
import { writeTemp } from "./data_helpers.ts";

const ALPACA = fixture("data/alpaca_en_demo.json");
const MARKER = "\n\n### Response:\n";

interface AlpacaRecord {
  instruction: string;
  input: string;
  output: string;
}

let tokenizerPromise: Promise<Tokenizer> | null = null;
function llama2(): Promise<Tokenizer> {
  tokenizerPromise ??= loadSentencePiece(fixture("tokenizers/llama2-tokenizer.model"));
  return tokenizerPromise;
}

/** Returns the index of the first token in the loss, asserting the mask is false then true. */
function maskBoundary(example: Example, label: string): number {
  const boundary = example.lossMask.indexOf(true);
  assert.ok(boundary > 0, `${label}: the first token is never a target`);
  assert.ok(example.lossMask.slice(boundary).every((m) => m), `${label}: mask is true after it`);
  return boundary;
}

fixtureTest("alpaca prompt tokens match the golden LLaMA 2 ids", async () => {
  const tokenizer = await llama2();
  // LLaMA 2 ids of the Alpaca prompt for this instruction up to "### Response:" (no BOS), from
  // two independent SentencePiece implementations.
  const golden = JSON.parse(
    await Deno.readTextFile(fixture("golden/llama2-tokenizer-encode.json")),
  ) as { text: string; ids: number[] }[];
  const instruction = "Give three tips for staying healthy.";
  const promptCase = golden.find((c) => c.text === formatPrompt("alpaca", instruction).trimEnd());
  assert.ok(promptCase, "the golden file has the Alpaca prompt");

  const record = { instruction, input: "", output: "Eat well." };
  const result = tokeniseRecord(record, "alpaca", tokenizer, "alpaca");
  assert.ok(typeof result !== "string");
  const { ids } = result.example;
  const boundary = maskBoundary(result.example, "prompt");
  // BOS, the golden ids, and the final "\n" as its byte token <0x0A>.
  assert.deepEqual(ids.slice(0, boundary), [tokenizer.bosId, ...promptCase.ids, 13]);
  assert.equal(tokenizer.decode(ids.slice(boundary, -1)), "Eat well.");
  assert.equal(ids.at(-1), tokenizer.eosId);
});

fixtureTest("alpaca demo streams, masks and batches", async () => {
  const tokenizer = await llama2();
  const records = JSON.parse(await Deno.readTextFile(ALPACA)) as AlpacaRecord[];
  const maxSeqLen = 2048;
  const data = await loadDataset(ALPACA, { tokenizer, maxSeqLen });
  assert.equal(data.stats.fileFormat, "array");
  assert.equal(data.recordFormat, "alpaca");
  assert.equal(data.stats.records, 999);
  assert.equal(data.stats.badRecords, 0);
  assert.equal(data.stats.truncated, 0, `no record is longer than ${maxSeqLen} tokens`);
  assert.equal(data.train.length, 999);

  for (const [i, example] of data.train.entries()) {
    const { instruction, input, output } = records[i];
    const prompt = formatPrompt("alpaca", instruction, input);
    const boundary = maskBoundary(example, `record ${i}`);
    assert.equal(example.ids[0], tokenizer.bosId, `record ${i} starts with BOS`);
    assert.equal(example.ids.at(-1), tokenizer.eosId, `record ${i} ends with EOS`);
    assert.equal(tokenizer.decode(example.ids.slice(0, boundary)), prompt, `record ${i} prompt`);
    assert.equal(
      boundary,
      tokenizer.encode(prompt, { bos: true }).length,
      `record ${i}: the prompt's tokens end at the mask boundary`,
    );
    assert.equal(tokenizer.decode(example.ids.slice(boundary, -1)), output, `record ${i} output`);
  }

  // Record 0 has no input and record 5 has one.
  const first = data.train[0];
  assert.equal(
    tokenizer.decode(first.ids.slice(0, maskBoundary(first, "record 0"))),
    "Below is an instruction that describes a task. Write a response that appropriately " +
      "completes the request.\n\n### Instruction:\nDescribe a process of making crepes.\n\n" +
      "### Response:\n",
  );
  assert.ok(
    tokenizer.decode(first.ids).includes("Making crepes is an easy and delicious process!"),
  );
  const withInput = data.train[5];
  assert.equal(
    tokenizer.decode(withInput.ids.slice(0, maskBoundary(withInput, "record 5"))),
    "Below is an instruction that describes a task, paired with an input that provides further " +
      "context. Write a response that appropriately completes the request.\n\n" +
      "### Instruction:\nGiven the parameters of a triangle, find out its perimeter.\n\n" +
      "### Input:\nSide 1 = 4\nSide 2 = 6\nSide 3 = 8\n\n### Response:\n",
  );

  const sampler = new BatchSampler(data.train, { batchSize: 16, seed: 3, bucketByLength: true });
  let targets = 0;
  let tokens = 0;
  let rows = 0;
  for (const { batch } of sampler.batches(undefined, 1)) {
    targets += batch.targetCount;
    tokens += batch.tokenCount;
    rows += batch.batchSize;
  }
  assert.equal(rows, 999);
  assert.equal(tokens, data.stats.tokens);
  assert.equal(targets, data.stats.targets);
  assert.equal(targets, data.train.reduce((n, e) => n + countTargets(e), 0));
});

fixtureTest("alpaca demo truncation keeps the marker", async () => {
  const tokenizer = await llama2();
  // The first 250 records, as a JSON array, keep the run short.
  const records = JSON.parse(await Deno.readTextFile(ALPACA)) as AlpacaRecord[];
  const path = await writeTemp("alpaca_250.json", JSON.stringify(records.slice(0, 250), null, 2));
  const maxSeqLen = 96;
  const truncated = await loadDataset(path, { tokenizer, maxSeqLen });
  const skipped = await loadDataset(path, { tokenizer, maxSeqLen, overLength: "skip" });
  assert.ok(truncated.stats.truncated > 0, "some records are longer than 96 tokens");
  assert.equal(skipped.stats.skippedTooLong, truncated.stats.truncated);
  assert.equal(skipped.train.length, 250 - truncated.stats.truncated);
  assert.equal(truncated.train.length, 250);
  let promptsCut = 0;
  for (const [i, example] of truncated.train.entries()) {
    assert.ok(example.ids.length <= maxSeqLen, `record ${i} fits`);
    const boundary = maskBoundary(example, `record ${i}`);
    const prompt = tokenizer.decode(example.ids.slice(0, boundary));
    assert.ok(prompt.startsWith("Below is an instruction"), `record ${i} keeps the header`);
    assert.ok(prompt.endsWith(MARKER), `record ${i} keeps the response marker`);
    const { instruction, input } = records[i];
    if (prompt !== formatPrompt("alpaca", instruction, input)) promptsCut++;
  }
  assert.ok(promptsCut > 0, "some prompts lose their middle");
});
