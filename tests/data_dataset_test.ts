import assert from "node:assert/strict";
import {
  type BadRecord,
  countTargets,
  type Example,
  isValidationRecord,
  loadDataset,
  loadTrainingData,
  markerTokenCount,
  tokeniseRecord,
  truncateExample,
} from "../data/dataset.ts";
import { DataError } from "../data/json_stream.ts";
import { formatPrompt, parseTemplateName } from "../data/templates.ts";
import { ByteTokenizer, writeTemp } from "./data_helpers.ts";

const tokenizer = new ByteTokenizer();
const MARKER = "\n\n### Response:\n";

function jsonl(records: unknown[]): string {
  return records.map((r) => JSON.stringify(r)).join("\n") + "\n";
}

/** Returns the index of the first token in the loss, asserting the mask is false then true. */
function maskBoundary(example: Example): number {
  const boundary = example.lossMask.indexOf(true);
  assert.ok(boundary > 0, "the first token is never a target");
  assert.ok(example.lossMask.slice(boundary).every((m) => m), "mask is true after the boundary");
  return boundary;
}

Deno.test("alpaca prompt texts match the standard template", () => {
  assert.equal(
    formatPrompt("alpaca", "Add the numbers.", "2 and 3"),
    "Below is an instruction that describes a task, paired with an input that provides further " +
      "context. Write a response that appropriately completes the request.\n\n" +
      "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n",
  );
  const withoutInput = "Below is an instruction that describes a task. Write a response that " +
    "appropriately completes the request.\n\n### Instruction:\nName a color.\n\n### Response:\n";
  assert.equal(formatPrompt("alpaca", "Name a color."), withoutInput);
  assert.equal(formatPrompt("alpaca", "Name a color.", ""), withoutInput);
  assert.equal(formatPrompt("none", "Name a color."), "Name a color.");
  assert.equal(formatPrompt("none", "Translate.", "chat"), "Translate.\n\nchat");
  assert.equal(parseTemplateName("none"), "none");
  assert.throws(() => parseTemplateName("vicuna"), /unknown prompt template "vicuna".*alpaca/);
});

Deno.test("alpaca record masks the prompt and keeps output and EOS", () => {
  for (const input of [undefined, null, "", "some input"]) {
    const record = { instruction: "Name a color.", input, output: "Blue." };
    const result = tokeniseRecord(record, "alpaca", tokenizer, "alpaca");
    assert.ok(typeof result !== "string");
    const { ids } = result.example;
    const prompt = formatPrompt("alpaca", "Name a color.", input ?? undefined);
    assert.equal(ids[0], tokenizer.bosId);
    assert.equal(ids.at(-1), tokenizer.eosId);
    assert.equal(tokenizer.decode(ids), prompt + "Blue.");
    const boundary = maskBoundary(result.example);
    assert.equal(boundary, 1 + new TextEncoder().encode(prompt).length);
    assert.equal(result.promptLength, boundary);
    assert.equal(tokenizer.decode(ids.slice(boundary)), "Blue.");
    assert.equal(countTargets(result.example), ids.length - boundary);
  }
});

Deno.test("alpaca mask boundary at a merged token", () => {
  // ":\nBl" spans the end of the prompt and the start of the output. It is one token of the full
  // text, so it must be a target.
  const merging = new ByteTokenizer([":\nBl", "### Response"]);
  const record = { instruction: "Name a color.", output: "Blue." };
  const result = tokeniseRecord(record, "alpaca", merging, "alpaca");
  assert.ok(typeof result !== "string");
  const { ids } = result.example;
  const boundary = maskBoundary(result.example);
  assert.equal(merging.decode(ids.slice(boundary, boundary + 1)), ":\nBl");
  assert.ok(merging.decode(ids.slice(0, boundary)).endsWith("### Response"));
  assert.equal(countTargets(result.example), ids.length - boundary);
});

Deno.test("raw text and none template records", () => {
  const text = tokeniseRecord({ text: "once upon" }, "text", tokenizer, "alpaca");
  assert.ok(typeof text !== "string");
  assert.equal(tokenizer.decode(text.example.ids), "once upon");
  assert.deepEqual(text.example.lossMask, text.example.ids.map((_, t) => t > 0));

  const none = tokeniseRecord({ instruction: "Q? ", output: "A." }, "alpaca", tokenizer, "none");
  assert.ok(typeof none !== "string");
  assert.equal(tokenizer.decode(none.example.ids), "Q? A.");
  assert.equal(maskBoundary(none.example), 4);
});

Deno.test("pre-tokenised records follow their labels", () => {
  const record = { input_ids: [1, 40, 41, 42, 43, 2], labels: [-100, -100, -100, 42, 43, 2] };
  const result = tokeniseRecord(record, "tokens", tokenizer, "alpaca");
  assert.ok(typeof result !== "string");
  assert.deepEqual(result.example.ids, record.input_ids);
  assert.deepEqual(result.example.lossMask, [false, false, false, true, true, true]);
  assert.equal(result.promptLength, 3);

  const noLabels = tokeniseRecord({ input_ids: [1, 40, 41] }, "tokens", tokenizer, "alpaca");
  assert.ok(typeof noLabels !== "string");
  assert.deepEqual(noLabels.example.lossMask, [true, true, true]);
  assert.equal(countTargets(noLabels.example), 2);

  const padded = tokeniseRecord(
    {
      input_ids: [1, 40, 41, 0, 0],
      labels: [-100, 40, 41, -100, -100],
      attention_mask: [1, 1, 1, 0, 0],
    },
    "tokens",
    tokenizer,
    "alpaca",
  );
  assert.ok(typeof padded !== "string");
  assert.deepEqual(padded.example.ids, [1, 40, 41]);
  assert.deepEqual(padded.example.lossMask, [false, true, true]);

  const bad: [unknown, RegExp][] = [
    [{ input_ids: [1, 2], labels: [2, 1] }, /labels\[0\] is 2 but input_ids\[0\] is 1/],
    [{ input_ids: [1, 2], labels: [-100] }, /"labels" has 1 entries but "input_ids" has 2/],
    [{ input_ids: [1, 9999] }, /input_ids\[1\] is 9999, expected an integer in \[0, 259\)/],
    [{ input_ids: [1, 2.5] }, /input_ids\[1\] is 2.5/],
    [{ input_ids: "1 2" }, /"input_ids" must be an array/],
    [{ input_ids: [1, 2], attention_mask: [1, 2] }, /attention_mask\[1\] is 2/],
  ];
  for (const [value, message] of bad) {
    const out = tokeniseRecord(value, "tokens", tokenizer, "alpaca");
    assert.equal(typeof out, "string", JSON.stringify(value));
    assert.match(out as string, message);
  }
});

Deno.test("bad records are skipped with file and line", async () => {
  const text = [
    JSON.stringify({ instruction: "a", output: "b" }),
    JSON.stringify({ instruction: "no output" }),
    JSON.stringify({ instruction: 7, output: "x" }),
    '{"instruction": "broken", "output": ',
    "",
    "   ",
    JSON.stringify({ instruction: "a", output: ["not", "a", "string"] }),
    JSON.stringify([1, 2]),
    JSON.stringify({ prompt: "unknown fields" }),
    JSON.stringify({ instruction: "c", input: 3, output: "d" }),
    JSON.stringify({ instruction: "e", input: "f", output: "g" }),
  ].join("\n");
  const path = await writeTemp("bad.jsonl", text);
  const reported: BadRecord[] = [];
  const data = await loadDataset(path, {
    tokenizer,
    maxSeqLen: 512,
    onBadRecord: "skip",
    onReport: (bad) => reported.push(bad),
  });
  assert.equal(data.train.length, 2);
  assert.equal(data.stats.records, 9);
  assert.equal(data.stats.blankLines, 2);
  assert.equal(data.stats.badRecords, 7);
  assert.deepEqual(data.stats.bad, reported);
  assert.deepEqual(reported.map((b) => b.line), [2, 3, 4, 7, 8, 9, 10]);
  assert.ok(reported.every((b) => b.file === path));
  const messages = reported.map((b) => b.message);
  assert.match(messages[0], /missing "output"/);
  assert.match(messages[1], /"instruction" must be a string, found a number/);
  assert.match(messages[2], /invalid JSON/);
  assert.match(messages[3], /"output" must be a string, found an array/);
  assert.match(messages[4], /expected a JSON object, found an array/);
  assert.match(messages[5], /none of the fields/);
  assert.match(messages[6], /"input" must be a string/);
});

Deno.test("bad record fails with file and line", async () => {
  const text = jsonl([{ instruction: "a", output: "b" }]) + "\n" +
    jsonl([{ instruction: "a", output: 3 }]);
  const path = await writeTemp("fail.jsonl", text);
  await assert.rejects(
    () => loadDataset(path, { tokenizer, maxSeqLen: 64 }),
    (e) =>
      e instanceof DataError && e.line === 3 &&
      e.message.startsWith(`${path}:3: "output" must be a string`) &&
      e.message.includes("--on-bad-record skip"),
  );
});

Deno.test("bad elements of a json array report their lines", async () => {
  const text = '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a"},\n' +
    '  {"instruction": "a", "output": "b",},\n  {"instruction": "c", "output": "d"}\n' +
    '  {"instruction": "e", "output": "f"}\n]\n';
  const path = await writeTemp("bad.json", text);
  const data = await loadDataset(path, { tokenizer, maxSeqLen: 512, onBadRecord: "skip" });
  assert.equal(data.stats.fileFormat, "array");
  assert.equal(data.train.length, 3);
  assert.deepEqual(data.stats.bad.map((b) => b.line), [3, 4, 6]);
  assert.match(data.stats.bad[2].message, /expected ',' or '\]'/);
  // The missing comma is reported but is not a record.
  assert.equal(data.stats.records, 5);
  assert.equal(data.stats.badRecords, 3);
  await assert.rejects(
    () => loadDataset(path, { tokenizer, maxSeqLen: 512 }),
    (e) => e instanceof DataError && e.line === 3,
  );
});

Deno.test("mixed record formats are reported", async () => {
  const path = await writeTemp(
    "mixed.jsonl",
    jsonl([
      { instruction: "a", output: "b" },
      { input_ids: [1, 40, 2] },
      { text: "plain" },
      { instruction: "c", output: "d" },
    ]),
  );
  const data = await loadDataset(path, { tokenizer, maxSeqLen: 64, onBadRecord: "skip" });
  assert.equal(data.recordFormat, "alpaca");
  assert.equal(data.train.length, 2);
  assert.deepEqual(data.stats.bad.map((b) => b.line), [2, 3]);
  assert.match(data.stats.bad[0].message, /mixed record formats.*pre-tokenised.*Alpaca.*line 1/);
  assert.match(data.stats.bad[1].message, /mixed record formats.*raw text/);
});

Deno.test("empty dataset is an error naming the file", async () => {
  const cases = [
    ["empty.jsonl", ""],
    ["blank.jsonl", "\n\n  \n"],
    ["empty.json", "[]"],
    ["all_bad.jsonl", jsonl([{ instruction: "a" }, { output: 1 }])],
  ];
  for (const [name, text] of cases) {
    const path = await writeTemp(name, text);
    await assert.rejects(
      () => loadDataset(path, { tokenizer, maxSeqLen: 64, onBadRecord: "skip" }),
      (e) => e instanceof DataError && e.message.startsWith(`${path}: no usable examples`),
      name,
    );
  }
});

Deno.test("truncateExample keeps the response and prompt ends", () => {
  // Prompt of 10 tokens (the last 3 the marker), response of 6.
  const ids = Array.from({ length: 16 }, (_, i) => 100 + i);
  const lossMask = ids.map((_, t) => t >= 10);
  const example = { ids, lossMask };

  assert.equal(truncateExample(example, 10, 3, 16), example);

  // Limit 14: the response (6) fits after a prompt of 8, which drops 2 middle tokens.
  const cut = truncateExample(example, 10, 3, 14);
  assert.deepEqual(cut.ids, [100, 101, 102, 103, 104, 107, 108, 109, 110, 111, 112, 113, 114, 115]);
  assert.deepEqual(cut.lossMask, cut.ids.map((id) => id >= 110));

  // Limit 8: the response keeps ceil(8 / 2) = 4 tokens from its start, the prompt 4 (1 + marker).
  const short = truncateExample(example, 10, 3, 8);
  assert.deepEqual(short.ids, [100, 107, 108, 109, 110, 111, 112, 113]);

  // Limit 2: BOS and the first response token.
  assert.deepEqual(truncateExample(example, 10, 3, 2).ids, [100, 110]);

  // A short prompt stays whole and the response loses its end.
  const longResponse = { ids, lossMask: ids.map((_, t) => t >= 2) };
  assert.deepEqual(truncateExample(longResponse, 2, 0, 12).ids, ids.slice(0, 12));

  // Without a marker the prompt loses its end.
  assert.deepEqual(truncateExample(example, 10, 0, 8).ids, [
    100,
    101,
    102,
    103,
    110,
    111,
    112,
    113,
  ]);
});

Deno.test("markerTokenCount finds the marker tokens", () => {
  const prompt = tokenizer.encode(formatPrompt("alpaca", "Do it."), { bos: true });
  assert.equal(markerTokenCount(prompt, MARKER, tokenizer), MARKER.length);
  // ".\n\n" joins the end of the instruction to the marker, so the marker takes 4 tokens:
  // ".\n\n", "### Response", ":" and "\n".
  const merging = new ByteTokenizer([".\n\n", "### Response"]);
  const mergedPrompt = merging.encode(formatPrompt("alpaca", "Do it."), { bos: true });
  assert.equal(markerTokenCount(mergedPrompt, MARKER, merging), 4);
  assert.equal(markerTokenCount(prompt, "", tokenizer), 0);
});

Deno.test("long examples are truncated or skipped and counted", async () => {
  const records = [
    { instruction: "short", output: "ok" },
    { instruction: "long instruction ".repeat(30), output: "the response" },
    { instruction: "x", output: "long response ".repeat(40) },
    { instruction: "y", input: "long input ".repeat(50), output: "fine" },
  ];
  const path = await writeTemp("long.jsonl", jsonl(records));
  // The prompt of "x" (127 tokens) is under half the limit, so it stays whole.
  const maxSeqLen = 300;

  const skipped = await loadDataset(path, { tokenizer, maxSeqLen, overLength: "skip" });
  assert.equal(skipped.stats.skippedTooLong, 3);
  assert.equal(skipped.stats.truncated, 0);
  assert.equal(skipped.train.length, 1);

  const truncated = await loadDataset(path, { tokenizer, maxSeqLen });
  assert.equal(truncated.stats.truncated, 3);
  assert.equal(truncated.stats.skippedTooLong, 0);
  assert.equal(truncated.train.length, 4);
  for (const [i, example] of truncated.train.entries()) {
    assert.ok(example.ids.length <= maxSeqLen, `example ${i} fits`);
    const boundary = maskBoundary(example);
    const prompt = tokenizer.decode(example.ids.slice(0, boundary));
    assert.ok(prompt.startsWith("Below is an instruction"), `example ${i} keeps its header`);
    assert.ok(prompt.endsWith(MARKER), `example ${i} keeps the response marker`);
  }
  // Long prompts lose their middle and keep the whole response with EOS.
  for (const i of [1, 3]) {
    const example = truncated.train[i];
    const boundary = maskBoundary(example);
    assert.equal(tokenizer.decode(example.ids.slice(boundary)), records[i].output);
    assert.equal(example.ids.at(-1), tokenizer.eosId);
    assert.equal(example.ids.length, maxSeqLen);
  }
  // A long response keeps the whole prompt and loses its end.
  const longResponse = truncated.train[2];
  const boundary = maskBoundary(longResponse);
  assert.equal(
    tokenizer.decode(longResponse.ids.slice(0, boundary)),
    formatPrompt("alpaca", "x"),
  );
  assert.ok(records[2].output.startsWith(tokenizer.decode(longResponse.ids.slice(boundary))));
  assert.equal(longResponse.ids.length, maxSeqLen);
});

Deno.test("pre-tokenised file without targets is counted", async () => {
  const path = await writeTemp(
    "tokens.jsonl",
    jsonl([
      { input_ids: [1, 40, 41, 2], labels: [-100, -100, 41, 2] },
      { input_ids: [1, 40, 41, 2], labels: [-100, -100, -100, -100] },
      { input_ids: [1] },
      {
        input_ids: [1, 50, 51, 52, 53, 54, 55, 2],
        labels: [-100, -100, -100, -100, 53, 54, 55, 2],
      },
    ]),
  );
  const data = await loadDataset(path, { tokenizer, maxSeqLen: 6 });
  assert.equal(data.recordFormat, "tokens");
  assert.equal(data.stats.skippedNoTargets, 2);
  assert.equal(data.stats.truncated, 1);
  assert.deepEqual(data.train[0].ids, [1, 40, 41, 2]);
  // Prompt [1, 50, 51, 52] cut to its first 3 tokens, response [53, 54, 55] whole.
  assert.deepEqual(data.train[1].ids, [1, 50, 51, 53, 54, 55]);
  assert.deepEqual(data.train[1].lossMask, [false, false, false, true, true, true]);
  assert.equal(data.stats.targets, 2 + 3);
});

Deno.test("validation split is seeded, stable and disjoint", async () => {
  const records = Array.from({ length: 400 }, (_, i) => ({
    instruction: `task ${i}`,
    output: `answer ${i}`,
  }));
  const path = await writeTemp("split.jsonl", jsonl(records));
  const options = { tokenizer, maxSeqLen: 256, valFraction: 0.25, seed: 7 };
  const a = await loadDataset(path, options);
  const b = await loadDataset(path, options);
  assert.deepEqual(a.train, b.train);
  assert.deepEqual(a.val, b.val);

  const outputOf = (e: Example) => tokenizer.decode(e.ids.slice(e.lossMask.indexOf(true)));
  const trainSet = new Set(a.train.map(outputOf));
  const valSet = new Set(a.val.map(outputOf));
  assert.equal(trainSet.size + valSet.size, records.length);
  for (const output of valSet) assert.ok(!trainSet.has(output), `${output} in both sets`);
  assert.ok(a.val.length > 60, `val size ${a.val.length} near 100`);
  assert.ok(a.val.length < 140, `val size ${a.val.length} near 100`);
  assert.equal(a.stats.valExamples, a.val.length);

  // The decision for a record depends on its index alone, not on the rest of the file.
  const heldOut = records.filter((_, i) => isValidationRecord(i, 0.25, 7)).map((r) => r.output);
  assert.deepEqual(a.val.map(outputOf), heldOut);

  const other = await loadDataset(path, { ...options, seed: 8 });
  assert.notDeepEqual(other.val.map(outputOf), a.val.map(outputOf));
  const none = await loadDataset(path, { ...options, valFraction: 0 });
  assert.equal(none.val.length, 0);
  assert.equal(none.train.length, records.length);
});

Deno.test("isValidationRecord holds out about the fraction", () => {
  for (const fraction of [0.01, 0.1, 0.5]) {
    let heldOut = 0;
    for (let i = 0; i < 20000; i++) if (isValidationRecord(i, fraction, 123)) heldOut++;
    const expected = 20000 * fraction;
    assert.ok(Math.abs(heldOut - expected) < 5 * Math.sqrt(expected), `${fraction}: ${heldOut}`);
  }
});

Deno.test("separate validation file", async () => {
  const train = await writeTemp("train.jsonl", jsonl([{ instruction: "a", output: "b" }]));
  const val = await writeTemp("val.json", JSON.stringify([{ instruction: "c", output: "d" }]));
  const data = await loadTrainingData(train, { tokenizer, maxSeqLen: 128, valPath: val });
  assert.equal(data.train.length, 1);
  assert.equal(data.val.length, 1);
  assert.equal(data.valStats?.file, val);
  assert.equal(data.template, "alpaca");

  await assert.rejects(
    () => loadTrainingData(train, { tokenizer, maxSeqLen: 128, valPath: val, valFraction: 0.1 }),
    /either a validation file.*or a validation fraction/,
  );
  const tokens = await writeTemp("val_tokens.jsonl", jsonl([{ input_ids: [1, 40, 2] }]));
  await assert.rejects(
    () => loadTrainingData(train, { tokenizer, maxSeqLen: 128, valPath: tokens }),
    (e) => e instanceof DataError && e.message.startsWith(`${tokens}: records are pre-tokenised`),
  );
});

Deno.test("dataset options are checked", async () => {
  const path = await writeTemp("one.jsonl", jsonl([{ instruction: "a", output: "b" }]));
  await assert.rejects(() => loadDataset(path, { tokenizer, maxSeqLen: 1 }), /integer >= 2/);
  await assert.rejects(
    () => loadDataset(path, { tokenizer, maxSeqLen: 8, valFraction: 1 }),
    /validation fraction must be in \[0, 1\)/,
  );
});
