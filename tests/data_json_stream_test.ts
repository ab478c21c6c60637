import assert from "node:assert/strict";
import {
  DataError,
  jsonArrayItems,
  type JsonItem,
  jsonLinesItems,
  readJsonItems,
} from "../data/json_stream.ts";
import { testRng } from "./helpers.ts";
import { writeTemp } from "./data_helpers.ts";

const ELEMENTS: unknown[] = [
  { instruction: 'Say "hi" [twice]', input: "", output: "hi\nhi {}" },
  { path: "C:\\dir\\", nested: [[1, 2], { a: [] }], escaped: '\\"', unicode: "é ✓ 😀" },
  42,
  "a string, with a comma ]",
  null,
  [{ deep: { deeper: [true, false] } }],
  { empty: {} },
  -1.5e-3,
];

/** Pretty-prints ELEMENTS as a JSON array, returning the text and the line of each element. */
function prettyArray(elements: unknown[]): { text: string; lines: number[] } {
  let text = "[\n";
  const lines: number[] = [];
  elements.forEach((e, i) => {
    lines.push(text.split("\n").length);
    text += JSON.stringify(e, null, 2) + (i + 1 < elements.length ? ",\n" : "\n");
  });
  return { text: text + "]\n", lines };
}

async function collect(items: AsyncIterable<JsonItem>): Promise<JsonItem[]> {
  const out: JsonItem[] = [];
  for await (const item of items) out.push(item);
  return out;
}

function chunked(text: string, sizes: () => number): string[] {
  const chunks: string[] = [];
  for (let i = 0; i < text.length;) {
    const n = Math.max(1, sizes());
    chunks.push(text.slice(i, i + n));
    i += n;
  }
  return chunks;
}

Deno.test("json array yields elements and lines for any chunking", async () => {
  const { text, lines } = prettyArray(ELEMENTS);
  const expected = ELEMENTS.map((value, i) => ({ kind: "value", line: lines[i], value }));
  for (const size of [1, 2, 3, 7, 64, text.length]) {
    const items = await collect(jsonArrayItems(chunked(text, () => size)));
    assert.deepEqual(items, expected, `chunk size ${size}`);
  }
  const rng = testRng();
  for (let trial = 0; trial < 20; trial++) {
    const items = await collect(jsonArrayItems(chunked(text, () => 1 + rng.int(40))));
    assert.deepEqual(items, expected, `random chunks, seed ${rng.seed}`);
  }
});

Deno.test("json array of compact and empty forms", async () => {
  assert.deepEqual(await collect(jsonArrayItems(["[]"])), []);
  assert.deepEqual(await collect(jsonArrayItems([" [ ] \n"])), []);
  assert.deepEqual(await collect(jsonArrayItems(['[1,"x",{"a":1}]'])), [
    { kind: "value", line: 1, value: 1 },
    { kind: "value", line: 1, value: "x" },
    { kind: "value", line: 1, value: { a: 1 } },
  ]);
});

Deno.test("json array reports a broken element and continues", async () => {
  const text = '[\n{"a": 1},\n{"b": 2,},\n{"c": [1}\n,\n{"d": 4}\n]';
  const items = await collect(jsonArrayItems(chunked(text, () => 3)));
  assert.equal(items.length, 4);
  assert.deepEqual(items[0], { kind: "value", line: 2, value: { a: 1 } });
  assert.equal(items[1].kind, "error");
  assert.equal(items[1].line, 3);
  assert.match((items[1] as { message: string }).message, /invalid JSON/);
  // `{"c": [1}` ends at its "}" (which closes the open "[" too) and fails to parse.
  assert.equal(items[2].kind, "error");
  assert.equal(items[2].line, 4);
  assert.deepEqual(items[3], { kind: "value", line: 6, value: { d: 4 } });
});

Deno.test("json array reports a missing comma and recovers", async () => {
  const items = await collect(jsonArrayItems(['[\n{"a": 1}\n{"b": 2}\n]']));
  assert.deepEqual(items[0], { kind: "value", line: 2, value: { a: 1 } });
  assert.equal(items[1].kind, "syntax");
  assert.equal(items[1].line, 3);
  assert.match((items[1] as { message: string }).message, /expected ',' or '\]'/);
  assert.deepEqual(items[2], { kind: "value", line: 3, value: { b: 2 } });
  assert.equal(items.length, 3);
});

Deno.test("json array structural errors name their line", async () => {
  const cases: [string, number, JsonItem["kind"], RegExp][] = [
    ['[\n{"a": 1},\n]', 3, "syntax", /trailing comma/],
    ['[\n{"a": 1},\n\n', 4, "syntax", /missing '\]'/],
    ['[\n{"a": 1}', 2, "syntax", /missing '\]'/],
    ['[\n{"a": "unterminated}\n', 2, "error", /inside this element/],
    ['[\n{"a": 1}\n]\nextra', 4, "syntax", /after the closing '\]'/],
    ["[1,,2]", 1, "syntax", /empty element/],
    ["{", 1, "syntax", /expected '\['/],
  ];
  for (const [text, line, kind, message] of cases) {
    const items = await collect(jsonArrayItems([text]));
    const errors = items.filter((i) => i.kind === "error" || i.kind === "syntax");
    assert.equal(errors.length, 1, `one error for ${JSON.stringify(text)}`);
    assert.equal(errors[0].line, line, `line for ${JSON.stringify(text)}`);
    assert.equal(errors[0].kind, kind, `kind for ${JSON.stringify(text)}`);
    assert.match((errors[0] as { message: string }).message, message);
  }
});

Deno.test("json lines yields values, blanks and errors by line", async () => {
  const text = '{"a": 1}\r\n\n   \n{"b": \n{"c": [3]}\n[4]\n{"d": "last line without newline"}';
  for (const size of [1, 5, text.length]) {
    const items = await collect(jsonLinesItems(chunked(text, () => size)));
    assert.deepEqual(items.map((i) => [i.kind, i.line]), [
      ["value", 1],
      ["blank", 2],
      ["blank", 3],
      ["error", 4],
      ["value", 5],
      ["value", 6],
      ["value", 7],
    ]);
    assert.deepEqual((items[0] as { value: unknown }).value, { a: 1 });
    assert.deepEqual((items[6] as { value: unknown }).value, { d: "last line without newline" });
  }
});

Deno.test("readJsonItems detects the format from the first character", async () => {
  const array = await writeTemp("array.json", '\uFEFF\n\n  [{"x": 1},\n {"x": 2}]\n');
  const formats: string[] = [];
  const items = await collect(readJsonItems(array, (f) => formats.push(f)));
  assert.deepEqual(formats, ["array"]);
  assert.deepEqual(items, [
    { kind: "value", line: 3, value: { x: 1 } },
    { kind: "value", line: 4, value: { x: 2 } },
  ]);

  const lines = await writeTemp("lines.jsonl", '\n{"x": 1}\n{"x": 2}\n');
  const jsonlItems = await collect(readJsonItems(lines, (f) => formats.push(f)));
  assert.deepEqual(formats, ["array", "jsonl"]);
  assert.deepEqual(jsonlItems.map((i) => [i.kind, i.line]), [
    ["blank", 1],
    ["value", 2],
    ["value", 3],
  ]);
});

Deno.test("readJsonItems rejects other content and missing files", async () => {
  const csv = await writeTemp("data.csv", "\n\ninstruction,output\n");
  await assert.rejects(
    () => collect(readJsonItems(csv)),
    (e) => e instanceof DataError && e.line === 3 && e.message.startsWith(`${csv}:3: expected`),
  );
  const missing = `${csv}.missing`;
  await assert.rejects(
    () => collect(readJsonItems(missing)),
    (e) => e instanceof DataError && e.message === `${missing}: file not found`,
  );
  const empty = await writeTemp("empty.json", "  \n");
  assert.deepEqual(await collect(readJsonItems(empty)), []);
});

Deno.test("readJsonItems streams a file larger than one chunk", async () => {
  const records = Array.from({ length: 3000 }, (_, i) => ({ i, text: "x".repeat(i % 97) }));
  const path = await writeTemp("big.json", JSON.stringify(records, null, 1));
  let count = 0;
  for await (const item of readJsonItems(path)) {
    assert.equal(item.kind, "value");
    assert.deepEqual((item as { value: unknown }).value, records[count]);
    count++;
  }
  assert.equal(count, records.length);
});
