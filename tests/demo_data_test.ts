/**
 * The embedded demo data: the generator is deterministic, the committed files are what it writes
 * for the default seed, splits share no story, every answer can be read from its input, every
 * closing sentence of a corpus text is true of its story, and the committed tokenizer
 * round-trips the texts.
 *
 * The answer checks re-read each input with regular expressions written here, independent of
 * the generator's own bookkeeping of facts.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { DEMO_CHAT } from "../cli/defaults.ts";
import { parseLlama2cTokenizer } from "../data/llama2c_tokenizer.ts";
import { loadTokenizer } from "../data/load_tokenizer.ts";
import { formatPrompt } from "../data/templates.ts";
import {
  EXCHANGE_SEPARATOR,
  EXERCISE_SHARE,
  STORY_SENTENCES,
  STORY_WORDS,
} from "../scripts/demo/corpus.ts";
import {
  INSTRUCTION,
  LEADING_SPACE,
  QUESTION_SEPARATOR,
  TASKS,
} from "../scripts/demo/instructions.ts";
import { RESERVED_TOKENS, splitChunks, trainBpe } from "../scripts/demo/tokenizer.ts";
import { ANIMALS, COLOURS, NUMBER_WORDS } from "../scripts/demo/world.ts";
import {
  DEFAULT_SEED,
  DEMO_SIZES,
  makeDemoData,
  MAX_EXAMPLE_TOKENS,
} from "../scripts/make_demo_data.ts";

const DEMO = decodeURIComponent(new URL("../demo", import.meta.url).pathname);
const DATA_FILES = [
  "data/corpus_train.jsonl",
  "data/corpus_val.jsonl",
  "data/train.jsonl",
  "data/val.jsonl",
  "data/test.jsonl",
];
const ALL_FILES = [...DATA_FILES, "model/tokenizer.bin"];

interface Record {
  instruction: string;
  input: string;
  output: string;
  task: string;
}

function readJsonl<T>(path: string): T[] {
  return Deno.readTextFileSync(path).split("\n").filter((line) => line !== "").map((line) =>
    JSON.parse(line)
  );
}

function corpusTexts(file: string): string[] {
  return readJsonl<{ text: string }>(join(DEMO, file)).map((r) => r.text);
}

function instructions(file: string): Record[] {
  return readJsonl<Record>(join(DEMO, file));
}

/** Returns the story of an instruction record: its input without the leading space and question. */
function storyOf(r: Record): string {
  assert.ok(r.input.startsWith(LEADING_SPACE), `input lacks the leading space: ${r.input}`);
  const end = r.input.indexOf(QUESTION_SEPARATOR);
  assert.ok(end > 0, `input has no question line: ${r.input}`);
  return r.input.slice(LEADING_SPACE.length, end);
}

/** Returns the question of an instruction record: the last line of its input. */
function questionOf(r: Record): string {
  assert.equal(r.instruction, INSTRUCTION);
  const lines = r.input.split(QUESTION_SEPARATOR);
  assert.equal(lines.length, 2, `input is not a story and a question line: ${r.input}`);
  return lines[1];
}

/** A corpus text taken apart: its story, and its closing exchanges or writing exercise. */
interface CorpusText {
  story: string;
  /** Closing exchanges as records asking their question about the story, with the stated answer. */
  exchanges: { record: Record; stated: string }[];
  /** The exercise's instruction, for a writing exercise. */
  exercise?: string;
}

const ALPACA_START = "Below is an instruction";

/**
 * Splits a corpus text: a writing exercise (an Alpaca prompt and its response) or a story
 * followed by lines of "question answer" (`EXCHANGE_SEPARATOR`).
 */
function parseCorpusText(text: string): CorpusText {
  if (text.startsWith(ALPACA_START)) {
    const write = text.match(
      /### Instruction:\n(Write a story about \w+\.)\n\n### Response:\n (.*)$/s,
    );
    if (write) return { story: write[2], exchanges: [], exercise: write[1] };
    const more = text.match(
      /### Instruction:\n(Continue the text\.)\n\n### Input:\n (.*)\n\n### Response:\n (.*)$/s,
    );
    assert.ok(more, `unknown writing exercise: ${JSON.stringify(text)}`);
    return { story: `${more[2]} ${more[3]}`, exchanges: [], exercise: more[1] };
  }
  const [story, ...lines] = text.split(EXCHANGE_SEPARATOR);
  const exchanges = lines.map((line) => {
    const m = line.match(/^(.*?[?.]) (.*)$/);
    assert.ok(m, `closing line is not a question and an answer: ${JSON.stringify(line)}`);
    const [, question, stated] = m;
    const task = TASKS.find((t) => QUESTIONS[t].test(question));
    assert.ok(task, `closing question of no task: ${question}`);
    const record: Record = {
      task,
      instruction: INSTRUCTION,
      input: LEADING_SPACE + story + QUESTION_SEPARATOR + question,
      output: "",
    };
    return { record, stated };
  });
  return { story, exchanges };
}

/** The question pattern of each task. */
const QUESTIONS: { [task: string]: RegExp } = {
  colour: /^What colour is the (\w+)\?$/,
  home: /^Where does (\w+) live\?$/,
  owner: /^Who has the (\w+)\?$/,
  animals: /^List the animals in the text\.$/,
  count: /^How many animals are in the text\?$/,
  first_sentence: /^Repeat the first sentence\.$/,
  trip: /^Where did (\w+) go on (\w+)\?$/,
  food: /^What food does (\w+) like\?$/,
};

/** Returns the full-sentence answer a closing exchange gives for `task` with short answer `a`. */
function answerSentence(task: string, question: string, a: string): string {
  const [, x, y] = question.match(QUESTIONS[task]) ?? [];
  switch (task) {
    case "colour":
      return `The ${x} is ${a}.`;
    case "owner":
      return `${a} has the ${x}.`;
    case "home":
      return `${x} lives in ${a}.`;
    case "food":
      return `${x} likes ${a}.`;
    case "trip":
      return `On ${y}, ${x} went to ${a}.`;
    case "animals":
      return `The animals are ${a}.`;
    case "count":
      return a === "one" ? "There is one animal." : `There are ${a} animals.`;
    default:
      return a;
  }
}

/** True when `run` occurs in `ids` as a contiguous run. */
function includesRun(ids: readonly number[], run: readonly number[]): boolean {
  for (let i = 0; i + run.length <= ids.length; i++) {
    if (run.every((id, k) => ids[i + k] === id)) return true;
  }
  return false;
}

function sha256(path: string): string {
  return createHash("sha256").update(Deno.readFileSync(path)).digest("hex");
}

async function withTempDirs(count: number, fn: (dirs: string[]) => Promise<void>): Promise<void> {
  const dirs: string[] = [];
  for (let i = 0; i < count; i++) dirs.push(await Deno.makeTempDir({ prefix: "demo_data_" }));
  try {
    await fn(dirs);
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  }
}

// --- independent readers of the answers ---

const COLOUR = COLOURS.join("|");

/** Returns the single distinct value among `values`; fails when there are none or several. */
function only(values: string[], what: string): string {
  const distinct = [...new Set(values)];
  assert.equal(
    distinct.length,
    1,
    `${what}: expected one answer, found ${JSON.stringify(distinct)}`,
  );
  return distinct[0];
}

/** Returns group 1 (or 2, for alternations) of every match of `patterns` in `text`. */
function captures(text: string, patterns: string[]): string[] {
  const out: string[] = [];
  for (const p of patterns) {
    for (const m of text.matchAll(new RegExp(p, "g"))) out.push(m[1] ?? m[2]);
  }
  return out;
}

function question(instruction: string, pattern: RegExp): string[] {
  const m = instruction.match(pattern);
  assert.ok(m, `instruction ${JSON.stringify(instruction)} does not match ${pattern}`);
  return m.slice(1);
}

function animalsOf(text: string): string[] {
  const animals = new Set<string>(ANIMALS);
  return [...new Set((text.match(/[a-z]+/g) ?? []).filter((w) => animals.has(w)))];
}

/** Reads the answer to `r` from its input, without the leading space. */
function readAnswer(r: Record): string {
  const text = storyOf(r);
  const questionText = questionOf(r);
  switch (r.task) {
    case "colour": {
      const [noun] = question(questionText, QUESTIONS[r.task]);
      const found = captures(text, [`\\b(${COLOUR}) ${noun}\\b`, `The ${noun} is (${COLOUR})\\.`]);
      return only(found, questionText);
    }
    case "home": {
      const [p] = question(questionText, QUESTIONS[r.task]);
      const found = captures(text, [
        `\\b${p} lives in (the \\w+ \\w+)\\.`,
        `The home of ${p} is in (the \\w+ \\w+)\\.`,
      ]);
      return only(found, questionText);
    }
    case "owner": {
      const [noun] = question(questionText, QUESTIONS[r.task]);
      const found = captures(text, [
        `\\b(\\w+) has (?:an?|one) (?:pet )?(?:(?:${COLOUR}) )?${noun}\\b`,
      ]);
      return only(found, questionText);
    }
    case "animals":
      question(questionText, QUESTIONS[r.task]);
      return animalsOf(text).join(", ");
    case "count":
      question(questionText, QUESTIONS[r.task]);
      return NUMBER_WORDS[animalsOf(text).length];
    case "first_sentence": {
      question(questionText, QUESTIONS[r.task]);
      const end = text.indexOf(". ");
      return end < 0 ? text : text.slice(0, end + 1);
    }
    case "trip": {
      const [p, day] = question(questionText, QUESTIONS[r.task]);
      const who = `(?:\\w+ and )?${p}(?: and \\w+)?`;
      const found = captures(text, [
        `On ${day}, ${who} went to (the \\w+)\\.`,
        `\\b${who} went to (the \\w+) on ${day}\\.`,
      ]);
      return only(found, questionText);
    }
    case "food": {
      const [p] = question(questionText, QUESTIONS[r.task]);
      const found = captures(text, [
        `\\b${p} likes (\\w+)\\.`,
        `The favourite food of ${p} is (\\w+)\\.`,
      ]);
      return only(found, questionText);
    }
    default:
      throw new Error(`unknown task ${JSON.stringify(r.task)}`);
  }
}

// --- tests ---

Deno.test("demo generator deterministic for a seed", async () => {
  await withTempDirs(3, async ([a, b, c]) => {
    const sizes = DEMO_SIZES.tiny;
    await makeDemoData({ seed: 5, out: a, sizes });
    await makeDemoData({ seed: 5, out: b, sizes });
    await makeDemoData({ seed: 6, out: c, sizes });
    for (const file of ALL_FILES) {
      assert.deepEqual(
        Deno.readFileSync(join(a, file)),
        Deno.readFileSync(join(b, file)),
        `${file} differs between two runs with seed 5`,
      );
    }
    assert.notEqual(
      sha256(join(a, "data/corpus_train.jsonl")),
      sha256(join(c, "data/corpus_train.jsonl")),
      "seeds 5 and 6 wrote the same corpus",
    );
  });
});

Deno.test("demo generator tiny report counts", async () => {
  await withTempDirs(1, async ([out]) => {
    const sizes = DEMO_SIZES.tiny;
    const report = await makeDemoData({ seed: 3, out, sizes });
    assert.equal(report.files["data/corpus_train.jsonl"].records, sizes.corpusTrain);
    assert.equal(report.files["data/corpus_val.jsonl"].records, sizes.corpusVal);
    assert.equal(report.files["data/train.jsonl"].records, sizes.train);
    assert.equal(report.files["data/val.jsonl"].records, sizes.val);
    assert.equal(report.files["data/test.jsonl"].records, sizes.test);
    assert.equal(report.tokenizer.vocabSize, sizes.vocabSize);
    assert.equal(
      RESERVED_TOKENS + report.tokenizer.characters + report.tokenizer.merges,
      sizes.vocabSize,
    );
    assert.ok(report.tokens, "the tokenizer was not verified");
    assert.ok(report.tokens.maxPerExample <= MAX_EXAMPLE_TOKENS);
  });
});

Deno.test("committed demo files match generator", async () => {
  await withTempDirs(1, async ([out]) => {
    const report = await makeDemoData({
      seed: DEFAULT_SEED,
      out,
      sizes: DEMO_SIZES.default,
      verify: false,
    });
    for (const file of ALL_FILES) {
      assert.equal(
        sha256(join(DEMO, file)),
        sha256(join(out, file)),
        `demo/${file} is not what scripts/make_demo_data.ts writes for seed ${DEFAULT_SEED}; ` +
          `regenerate it`,
      );
    }
    assert.equal(report.files["data/train.jsonl"].records, DEMO_SIZES.default.train);
  });
});

Deno.test("demo splits share no texts", () => {
  const splits: [string, string[]][] = [
    ["corpus_train", corpusTexts("data/corpus_train.jsonl").map((t) => parseCorpusText(t).story)],
    ["corpus_val", corpusTexts("data/corpus_val.jsonl").map((t) => parseCorpusText(t).story)],
    ["train", instructions("data/train.jsonl").map(storyOf)],
    ["val", instructions("data/val.jsonl").map(storyOf)],
    ["test", instructions("data/test.jsonl").map(storyOf)],
  ];
  const seen = new Map<string, string>();
  for (const [name, texts] of splits) {
    for (const text of texts) {
      const earlier = seen.get(text);
      assert.equal(earlier, undefined, `${name} repeats a text of ${earlier}: ${text}`);
      seen.set(text, name);
    }
  }
});

Deno.test("demo stories within length limits", () => {
  const texts = [
    ...corpusTexts("data/corpus_train.jsonl").map((t) => parseCorpusText(t).story),
    ...instructions("data/test.jsonl").map(storyOf),
  ];
  for (const text of texts) {
    const sentences = text.split(/(?<=\.) /);
    const words = text.split(" ").length;
    assert.ok(sentences.length >= STORY_SENTENCES.min, `${sentences.length} sentences: ${text}`);
    assert.ok(sentences.length <= STORY_SENTENCES.max, `${sentences.length} sentences: ${text}`);
    assert.ok(words >= STORY_WORDS.min, `${words} words: ${text}`);
    assert.ok(words <= STORY_WORDS.max, `${words} words: ${text}`);
    assert.match(text, /^[A-Z][A-Za-z ,.]*\.$/, `unexpected characters: ${text}`);
  }
});

Deno.test("demo answers readable from input", () => {
  for (const file of ["data/train.jsonl", "data/val.jsonl", "data/test.jsonl"]) {
    for (const [line, r] of instructions(file).entries()) {
      const where = `demo/${file}:${line + 1}`;
      assert.ok(r.output.startsWith(LEADING_SPACE), `${where}: output lacks the leading space`);
      const answer = r.output.slice(LEADING_SPACE.length);
      assert.equal(answer, answer.trim(), `${where}: answer has extra whitespace`);
      assert.equal(readAnswer(r), answer, `${where}: ${r.instruction} ${r.input}`);
    }
  }
});

Deno.test("demo corpus answers true of their stories", () => {
  const kinds = new Map<string, number>();
  let texts = 0;
  let exercises = 0;
  for (const file of ["data/corpus_train.jsonl", "data/corpus_val.jsonl"]) {
    for (const [line, text] of corpusTexts(file).entries()) {
      const where = `demo/${file}:${line + 1}`;
      const { story, exchanges, exercise } = parseCorpusText(text);
      texts++;
      if (exercise) {
        exercises++;
        const name = exercise.match(/about (\w+)\./)?.[1];
        if (name) assert.ok(story.includes(name), `${where}: ${name} is not in the story`);
        continue;
      }
      assert.ok(exchanges.length >= 1, `${where}: no closing exchange`);
      assert.ok(exchanges.length <= 2, `${where}: ${exchanges.length} closing exchanges`);
      for (const { record, stated } of exchanges) {
        const short = readAnswer(record);
        const question = questionOf(record);
        assert.equal(stated, answerSentence(record.task, question, short), `${where}: ${text}`);
        kinds.set(record.task, (kinds.get(record.task) ?? 0) + 1);
      }
    }
  }
  // Every kind of exchange occurs and none dominates, and about a tenth of texts are exercises.
  assert.deepEqual([...kinds.keys()].sort(), [...TASKS].sort());
  const total = [...kinds.values()].reduce((a, b) => a + b, 0);
  for (const [task, n] of kinds) {
    assert.ok(n > total / 20, `${n} of ${total} exchanges are ${task}`);
  }
  assert.ok(Math.abs(exercises / texts - EXERCISE_SHARE) < 0.02, `${exercises} of ${texts}`);
});

Deno.test("demo chat defaults match data", () => {
  // chat sends messages to the demo model as the training records were written.
  assert.equal(DEMO_CHAT.instruction, INSTRUCTION);
  assert.equal(DEMO_CHAT.inputPrefix, LEADING_SPACE);
});

Deno.test("demo tasks balanced in each split", () => {
  for (const file of ["data/train.jsonl", "data/val.jsonl", "data/test.jsonl"]) {
    const records = instructions(file);
    const counts = new Map<string, number>();
    for (const r of records) counts.set(r.task, (counts.get(r.task) ?? 0) + 1);
    assert.deepEqual([...counts.keys()].sort(), [...TASKS].sort(), `${file} task types`);
    const share = records.length / TASKS.length;
    for (const [task, n] of counts) {
      assert.ok(Math.abs(n - share) <= 1, `${file}: ${n} ${task} records, expected ${share}`);
    }
  }
});

Deno.test("demo tokenizer round-trips sample", async () => {
  const vocabSize = DEMO_SIZES.default.vocabSize;
  const tokenizer = await loadTokenizer(join(DEMO, "model"), { vocabSize });
  assert.equal(tokenizer.vocabSize, vocabSize);

  const corpus = corpusTexts("data/corpus_val.jsonl").slice(0, 100);
  const records = instructions("data/test.jsonl").slice(0, 100);
  const texts = [
    ...corpus,
    ...records.map((r) => formatPrompt("alpaca", r.instruction, r.input) + r.output),
  ];
  for (const text of texts) {
    const ids = tokenizer.encode(text, { bos: true, eos: true });
    assert.equal(tokenizer.decode(ids), text);
    assert.ok(ids.length <= MAX_EXAMPLE_TOKENS, `${ids.length} tokens: ${text}`);
    const byteToken = ids.find((id) => id >= 3 && id < RESERVED_TOKENS);
    assert.equal(byteToken, undefined, `byte-fallback token in ${JSON.stringify(text)}`);
  }

  // With the leading space, every answer token is a token of the input, except a count's number
  // word and the commas of a list, and the input tokenizes inside the prompt as its story does
  // alone.
  for (const r of instructions("data/val.jsonl")) {
    const prompt = formatPrompt("alpaca", r.instruction, r.input);
    const promptIds = tokenizer.encode(prompt, { bos: true });
    const ids = tokenizer.encode(prompt + r.output, { bos: true });
    assert.deepEqual(ids.slice(0, promptIds.length), promptIds, `prompt tokens change: ${prompt}`);
    const storyIds = tokenizer.encode(storyOf(r));
    assert.ok(
      includesRun(promptIds, storyIds),
      `input tokens differ inside the prompt: ${r.input}`,
    );
    if (r.task === "count") continue;
    const answerIds = ids.slice(promptIds.length);
    assert.ok(answerIds.length > 0);
    for (const id of answerIds) {
      if (tokenizer.decode([id]) === ",") continue;
      assert.ok(storyIds.includes(id), `answer token ${id} of ${r.output} is not in ${r.input}`);
    }
  }
});

Deno.test("demo tokenizer file layout", () => {
  const path = join(DEMO, "model/tokenizer.bin");
  const { tokens } = parseLlama2cTokenizer(Deno.readFileSync(path), path);
  const text = (id: number) => new TextDecoder().decode(tokens[id].bytes);
  assert.deepEqual([0, 1, 2].map(text), ["<unk>", "<s>", "</s>"]);
  for (let b = 0; b < 256; b++) {
    assert.equal(text(3 + b), `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  }

  // Single characters come first, then merged pieces with strictly decreasing scores.
  let id = RESERVED_TOKENS;
  while (id < tokens.length && [...text(id)].length === 1) id++;
  const characters = new Set(
    Array.from({ length: id - RESERVED_TOKENS }, (_, i) => text(i + RESERVED_TOKENS)),
  );
  for (let k = id + 1; k < tokens.length; k++) {
    assert.ok(tokens[k].score < tokens[k - 1].score, `score of id ${k} does not decrease`);
  }
  const pieces = new Set(tokens.map((_, i) => text(i)));
  assert.equal(pieces.size, tokens.length, "a piece appears twice");

  for (const t of corpusTexts("data/corpus_val.jsonl")) {
    for (const c of " " + t) {
      assert.ok(characters.has(c), `character ${JSON.stringify(c)} is not a piece`);
    }
  }
});

Deno.test("bpe trainer merges inside chunks", () => {
  assert.deepEqual(splitChunks("Tom has a red ball.\n### Input:\nred"), [
    " Tom",
    " has",
    " a",
    " red",
    " ball",
    ".",
    "\n",
    "###",
    " Input",
    ":",
    "\n",
    "red",
  ]);
  const vocab = trainBpe(["a red hat. a red cat.", "red red"], RESERVED_TOKENS + 12);
  assert.deepEqual(vocab.characters, [" ", ".", "a", "c", "d", "e", "h", "r", "t"]);
  assert.equal(vocab.pieces.length, 3);
  // " red" occurs four times, so its pairs tie at 4 and the concatenation that sorts first wins:
  // " r" before "ed" and "re", then " re" before "ed".
  assert.deepEqual(vocab.pieces, [" r", " re", " red"]);
  for (const piece of vocab.pieces) assert.ok(!piece.includes("."), `${piece} crosses a chunk`);
});

Deno.test("bpe trainer rejects impossible sizes", () => {
  assert.throws(() => trainBpe(["a b c"], RESERVED_TOKENS + 1), /too small/);
  assert.throws(() => trainBpe(["ab ab"], RESERVED_TOKENS + 10), /too large for these texts/);
});

Deno.test("make_demo_data rejects unknown size", async () => {
  const script = new URL("../scripts/make_demo_data.ts", import.meta.url).pathname;
  await withTempDirs(1, async ([out]) => {
    const result = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, "--size", "huge", "--out", out],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(result.code, 1);
    const stderr = new TextDecoder().decode(result.stderr);
    assert.match(stderr, /--size must be one of default, tiny, not "huge"/);
    assert.deepEqual([...Deno.readDirSync(out)], [], "files written despite the bad option");
  });
});
