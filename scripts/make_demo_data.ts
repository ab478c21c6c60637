/**
 * Generates the embedded demo data from a seed: a small world (scripts/demo/world.ts), a
 * pretraining corpus of short stories about it, instruction records whose answers can be read
 * from their input exactly, and a BPE tokenizer trained on both.
 *
 *     deno run -A scripts/make_demo_data.ts [--seed N] [--out DIR] [--size default|tiny]
 *
 * Writes, under the output folder:
 *   data/corpus_train.jsonl, data/corpus_val.jsonl   `{"text"}` records for pretraining
 *   data/train.jsonl, data/val.jsonl, data/test.jsonl  Alpaca records with a `task` field
 *   model/tokenizer.bin                                llama2.c tokenizer
 *
 * The same seed and size give byte-identical files. No two files share a story text. The
 * tokenizer is checked with the project's loader: it must round-trip every corpus text and
 * every formatted instruction record without byte-fallback tokens, and every formatted record
 * must fit in `MAX_EXAMPLE_TOKENS`.
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadTokenizer } from "../data/load_tokenizer.ts";
import { formatPrompt } from "../data/templates.ts";
import type { Tokenizer } from "../data/tokenizer.ts";
import { Rng } from "../model/rng.ts";
import { writeCorpus } from "./demo/corpus.ts";
import { type InstructionRecord, makeInstructions, TASKS } from "./demo/instructions.ts";
import { encodeTokenizerBin, RESERVED_TOKENS, trainBpe } from "./demo/tokenizer.ts";
import { makeWorld } from "./demo/world.ts";

/** The repository's demo folder, the default output. */
const DEMO_FOLDER = decodeURIComponent(new URL("../demo", import.meta.url).pathname);

/** Seed of the committed demo data. */
export const DEFAULT_SEED = 1;

/** Longest formatted instruction example (BOS, Alpaca prompt, output, EOS) allowed, in tokens. */
export const MAX_EXAMPLE_TOKENS = 256;

/** Number of records per file and the tokenizer's vocabulary size. */
export interface DemoSizes {
  corpusTrain: number;
  corpusVal: number;
  train: number;
  val: number;
  test: number;
  vocabSize: number;
}

/**
 * Named sizes: "default" is the committed demo, and "tiny" runs in about a second, for tests.
 * With seed 1, 768 ids leave nine rare words split into pieces. The default texts allow at most
 * 790 ids, because beyond that every word is already a single piece.
 */
export const DEMO_SIZES: Record<string, DemoSizes> = {
  default: { corpusTrain: 6000, corpusVal: 350, train: 2400, val: 200, test: 320, vocabSize: 768 },
  tiny: { corpusTrain: 200, corpusVal: 20, train: 48, val: 16, test: 16, vocabSize: 512 },
};

/** Options for `makeDemoData`. */
export interface DemoDataOptions {
  seed: number;
  /** Output folder; `data/` and `model/` are created inside it. */
  out: string;
  sizes: DemoSizes;
  /** Check the written tokenizer on every text (default true); see the module comment. */
  verify?: boolean;
}

/** Counts and token statistics of a generated data set. */
export interface DemoDataReport {
  files: Record<string, { records: number; bytes: number }>;
  tokenizer: { vocabSize: number; characters: number; merges: number };
  /** Present when the tokenizer was verified. */
  tokens?: {
    meanPerCorpusText: number;
    meanPerExample: number;
    maxPerExample: number;
  };
}

/** Returns a record formatted as training formats it: the Alpaca prompt, then the output. */
function formatRecord(r: InstructionRecord): string {
  return formatPrompt("alpaca", r.instruction, r.input) + r.output;
}

function jsonLines(records: readonly unknown[]): string {
  return records.map((r) => JSON.stringify(r) + "\n").join("");
}

/** Encodes `text` and throws unless it decodes back unchanged without byte-fallback tokens. */
function checkedLength(tokenizer: Tokenizer, text: string, options = {}): number {
  const ids = tokenizer.encode(text, options);
  const decoded = tokenizer.decode(ids);
  if (decoded !== text) {
    throw new Error(
      `${tokenizer.source} does not round-trip ${JSON.stringify(text)}: ` +
        `decoded ${JSON.stringify(decoded)}`,
    );
  }
  const byteToken = ids.find((id) => id >= 3 && id < RESERVED_TOKENS);
  if (byteToken !== undefined) {
    throw new Error(
      `${tokenizer.source} encodes ${JSON.stringify(text)} with byte token ${byteToken}; ` +
        `a character is missing from the vocabulary`,
    );
  }
  return ids.length;
}

function mean(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** Verifies the written tokenizer on all texts (see the module comment) and returns token counts. */
async function verifyTokenizer(
  path: string,
  vocabSize: number,
  corpus: readonly string[],
  records: readonly InstructionRecord[],
): Promise<NonNullable<DemoDataReport["tokens"]>> {
  const tokenizer = await loadTokenizer(path, { vocabSize });
  const corpusLengths = corpus.map((text) => checkedLength(tokenizer, text));
  const exampleLengths = records.map((r) =>
    checkedLength(tokenizer, formatRecord(r), { bos: true, eos: true })
  );
  const maxPerExample = Math.max(...exampleLengths);
  if (maxPerExample > MAX_EXAMPLE_TOKENS) {
    throw new Error(
      `a formatted instruction example has ${maxPerExample} tokens, more than ` +
        `${MAX_EXAMPLE_TOKENS}; shorten the stories (STORY_WORDS in scripts/demo/corpus.ts)`,
    );
  }
  return {
    meanPerCorpusText: mean(corpusLengths),
    meanPerExample: mean(exampleLengths),
    maxPerExample,
  };
}

/** Generates every demo file under `options.out` and returns what it wrote. */
export async function makeDemoData(options: DemoDataOptions): Promise<DemoDataReport> {
  const { sizes } = options;
  const rng = new Rng(options.seed);
  const world = makeWorld(rng);
  const used = new Set<string>();
  const corpusTrain = writeCorpus(world, rng, sizes.corpusTrain, used);
  const corpusVal = writeCorpus(world, rng, sizes.corpusVal, used);
  const train = makeInstructions(world, rng, sizes.train, used);
  const val = makeInstructions(world, rng, sizes.val, used);
  const test = makeInstructions(world, rng, sizes.test, used);

  // The tokenizer learns from training text only; the other splits use the same words.
  const vocab = trainBpe([...corpusTrain, ...train.map(formatRecord)], sizes.vocabSize);

  const dataDir = join(options.out, "data");
  const modelDir = join(options.out, "model");
  await Deno.mkdir(dataDir, { recursive: true });
  await Deno.mkdir(modelDir, { recursive: true });
  const files: Record<string, string> = {
    "corpus_train.jsonl": jsonLines(corpusTrain.map((text) => ({ text }))),
    "corpus_val.jsonl": jsonLines(corpusVal.map((text) => ({ text }))),
    "train.jsonl": jsonLines(train),
    "val.jsonl": jsonLines(val),
    "test.jsonl": jsonLines(test),
  };
  const report: DemoDataReport = {
    files: {},
    tokenizer: {
      vocabSize: vocab.vocabSize,
      characters: vocab.characters.length,
      merges: vocab.pieces.length,
    },
  };
  const encoder = new TextEncoder();
  for (const [name, content] of Object.entries(files)) {
    const bytes = encoder.encode(content);
    await Deno.writeFile(join(dataDir, name), bytes);
    report.files[`data/${name}`] = { records: content.split("\n").length - 1, bytes: bytes.length };
  }
  const tokenizerPath = join(modelDir, "tokenizer.bin");
  const tokenizerBytes = encodeTokenizerBin(vocab);
  await Deno.writeFile(tokenizerPath, tokenizerBytes);
  report.files["model/tokenizer.bin"] = { records: vocab.vocabSize, bytes: tokenizerBytes.length };

  if (options.verify ?? true) {
    report.tokens = await verifyTokenizer(
      tokenizerPath,
      vocab.vocabSize,
      [...corpusTrain, ...corpusVal],
      [...train, ...val, ...test],
    );
  }
  return report;
}

function printReport(report: DemoDataReport, out: string): void {
  for (const [name, { records, bytes }] of Object.entries(report.files)) {
    const unit = name.endsWith(".bin") ? "tokens" : "records";
    console.log(`${join(out, name)}: ${records} ${unit}, ${bytes} bytes`);
  }
  const t = report.tokenizer;
  console.log(
    `tokenizer: ${t.vocabSize} ids = ${RESERVED_TOKENS} reserved + ${t.characters} characters ` +
      `+ ${t.merges} merges`,
  );
  if (report.tokens) {
    const k = report.tokens;
    console.log(
      `tokens: ${k.meanPerCorpusText.toFixed(1)} per corpus text; per formatted example ` +
        `${k.meanPerExample.toFixed(1)} on average, ${k.maxPerExample} at most`,
    );
  }
  console.log(`task types: ${TASKS.join(", ")}`);
}

const USAGE = `usage: deno run -A scripts/make_demo_data.ts [--seed N] [--out DIR] [--size NAME]
  --seed N     seed of the generator (default ${DEFAULT_SEED})
  --out DIR    output folder; data/ and model/tokenizer.bin go inside
               (default: demo/ in the repository)
  --size NAME  ${Object.keys(DEMO_SIZES).join(" or ")} (default default)`;

async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      seed: { type: "string", default: String(DEFAULT_SEED) },
      out: { type: "string", default: DEMO_FOLDER },
      size: { type: "string", default: "default" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const seed = Number(values.seed);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`--seed must be a non-negative integer, not "${values.seed}"`);
  }
  if (!Object.hasOwn(DEMO_SIZES, values.size)) {
    throw new Error(
      `--size must be one of ${Object.keys(DEMO_SIZES).join(", ")}, not "${values.size}"`,
    );
  }
  const sizes = DEMO_SIZES[values.size];
  const report = await makeDemoData({ seed, out: values.out, sizes });
  printReport(report, values.out);
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    console.error(`make_demo_data: ${e instanceof Error ? e.message : e}`);
    console.error(USAGE);
    Deno.exit(1);
  }
}
