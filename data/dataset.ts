/**
 * Training data: records streamed from a JSON or JSON Lines file become tokenised examples with a
 * loss mask. The examples stay in memory as token ids, which a few hundred thousand records fit,
 * while the raw file is never read whole.
 *
 * Record formats, detected from the fields of the first usable record; every later record must
 * use the same format:
 * - Alpaca: `instruction` (string), optional `input` (string or null), `output` (string). The
 *   example is BOS + prompt (out of the loss) + output + EOS (in the loss), the prompt formatted
 *   by a named template (see templates.ts).
 * - pre-tokenised, as Hugging Face datasets write it: `input_ids` (integers below the vocabulary
 *   size) and optional `labels` of the same length. Each label is -100 (out of the loss) or the
 *   input id at the same index, because labels are not shifted. Without labels every token is in
 *   the loss. An optional `attention_mask` drops the positions where it is 0. No BOS or EOS is added.
 * - raw text: `text` (string). The example is BOS + text + EOS with every token after BOS in
 *   the loss.
 *
 * The loss mask follows the next-token convention: `lossMask[t]` says whether token t is a target,
 * predicted from position t - 1, so the loss is the mean of CE(logits[t], ids[t + 1]) over the t
 * where lossMask[t + 1] is true, and lossMask[0] never counts.
 */
import { DataError, type JsonFileFormat, readJsonItems } from "./json_stream.ts";
import { formatPrompt, responseMarker, type TemplateName } from "./templates.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** A tokenised training example. */
export interface Example {
  ids: number[];
  /** lossMask[t] is true when ids[t] is a target of the prediction made at position t - 1. */
  lossMask: boolean[];
}

/** Format of the records in a data file. */
export type RecordFormat = "alpaca" | "tokens" | "text";

/** Policy for an example longer than the maximum sequence length. */
export type OverLengthPolicy = "truncate" | "skip";

/** Policy for a malformed record. */
export type BadRecordPolicy = "skip" | "fail";

/** A malformed record and where it is. */
export interface BadRecord {
  file: string;
  line: number;
  message: string;
}

/** Options for reading a dataset. */
export interface DatasetOptions {
  tokenizer: Tokenizer;
  /** Maximum example length in tokens, at least 2. Longer examples are truncated or skipped. */
  maxSeqLen: number;
  /** Prompt template for Alpaca records (default "alpaca"). */
  template?: TemplateName;
  /** Policy for examples longer than `maxSeqLen` (default "truncate"). */
  overLength?: OverLengthPolicy;
  /** Policy for malformed records (default "fail": the first one throws `DataError`). */
  onBadRecord?: BadRecordPolicy;
  /** Fraction of records held out for validation, in [0, 1) (default 0). */
  valFraction?: number;
  /** Seed of the validation split (default 0). */
  seed?: number;
  /** Called for every malformed record that is skipped. */
  onReport?: (bad: BadRecord) => void;
}

/** Counts from reading one data file. */
export interface DatasetStats {
  file: string;
  fileFormat: JsonFileFormat | null;
  recordFormat: RecordFormat | null;
  /** Records read, good and bad; blank lines of JSON Lines are not records. */
  records: number;
  /** Whitespace-only lines of a JSON Lines file, skipped without counting as bad records. */
  blankLines: number;
  /** Malformed records and syntax errors between the elements of an array. */
  badRecords: number;
  /** The first `MAX_KEPT_BAD_RECORDS` malformed records and syntax errors. */
  bad: BadRecord[];
  /** Examples cut to the maximum sequence length. */
  truncated: number;
  /** Examples skipped for being longer than the maximum sequence length. */
  skippedTooLong: number;
  /** Records skipped because no token after the first is in the loss. */
  skippedNoTargets: number;
  trainExamples: number;
  valExamples: number;
  /** Tokens of the kept examples, training and validation together. */
  tokens: number;
  /** Target tokens (lossMask true at t >= 1) of the kept examples. */
  targets: number;
}

/** Examples read from one file, split into training and held-out validation sets. */
export interface Dataset {
  file: string;
  template: TemplateName;
  recordFormat: RecordFormat;
  train: Example[];
  val: Example[];
  stats: DatasetStats;
}

/** Number of malformed records whose details `DatasetStats.bad` keeps. */
export const MAX_KEPT_BAD_RECORDS = 100;

/** Target value of positions outside the loss, as in PyTorch and Hugging Face datasets. */
export const IGNORE_INDEX = -100;

const FORMAT_DESCRIPTIONS: Record<RecordFormat, string> = {
  alpaca: "Alpaca (instruction/output)",
  tokens: "pre-tokenised (input_ids)",
  text: "raw text (text)",
};

/** A tokenised record before the length limit, with the length of its prompt in tokens. */
export interface TokenisedRecord {
  example: Example;
  /** Tokens before the first one in the loss: BOS and the formatted prompt. */
  promptLength: number;
  /** Text at the end of the prompt that truncation keeps (the template's response marker). */
  marker: string;
}

/**
 * Returns the record format that `value`'s fields suggest, or null when it has none of them:
 * `input_ids` means pre-tokenised, `instruction` or `output` Alpaca, `text` raw text.
 */
export function recordFormatOf(value: unknown): RecordFormat | null {
  if (!isObject(value)) return null;
  if ("input_ids" in value) return "tokens";
  if ("instruction" in value || "output" in value) return "alpaca";
  if ("text" in value) return "text";
  return null;
}

/**
 * Tokenises one record of a known format. Returns the tokenised record, or a message saying what
 * is wrong with the record.
 *
 * For Alpaca records the prompt and the whole text are encoded separately, and the mask boundary
 * is the end of their common prefix. A token that spans the end of the prompt and the start of
 * the output (possible with merging tokenizers) is therefore in the loss.
 */
export function tokeniseRecord(
  value: unknown,
  format: RecordFormat,
  tokenizer: Tokenizer,
  template: TemplateName,
): TokenisedRecord | string {
  if (!isObject(value)) return `expected a JSON object, found ${describeType(value)}`;
  switch (format) {
    case "alpaca":
      return tokeniseAlpaca(value, tokenizer, template);
    case "tokens":
      return tokenisePretokenised(value, tokenizer);
    case "text":
      return tokeniseText(value, tokenizer);
  }
}

function tokeniseAlpaca(
  record: Record<string, unknown>,
  tokenizer: Tokenizer,
  template: TemplateName,
): TokenisedRecord | string {
  const { instruction, input, output } = record;
  if (instruction === undefined) return `missing "instruction"`;
  if (typeof instruction !== "string") {
    return `"instruction" must be a string, found ${describeType(instruction)}`;
  }
  if (input !== undefined && input !== null && typeof input !== "string") {
    return `"input" must be a string, found ${describeType(input)}`;
  }
  if (output === undefined) return `missing "output"`;
  if (typeof output !== "string") return `"output" must be a string, found ${describeType(output)}`;

  const prompt = formatPrompt(template, instruction, input ?? undefined);
  const promptIds = tokenizer.encode(prompt, { bos: true });
  const ids = tokenizer.encode(prompt + output, { bos: true, eos: true });
  let boundary = 0;
  while (
    boundary < promptIds.length && boundary < ids.length - 1 &&
    promptIds[boundary] === ids[boundary]
  ) boundary++;
  boundary = Math.max(boundary, 1);
  const lossMask = ids.map((_, t) => t >= boundary);
  return { example: { ids, lossMask }, promptLength: boundary, marker: responseMarker(template) };
}

function tokenisePretokenised(
  record: Record<string, unknown>,
  tokenizer: Tokenizer,
): TokenisedRecord | string {
  const { input_ids: inputIds, labels, attention_mask: attention } = record;
  if (!Array.isArray(inputIds)) {
    return `"input_ids" must be an array of integers, found ${describeType(inputIds)}`;
  }
  for (let i = 0; i < inputIds.length; i++) {
    const id = inputIds[i];
    if (!Number.isInteger(id) || id < 0 || id >= tokenizer.vocabSize) {
      return `input_ids[${i}] is ${JSON.stringify(id)}, expected an integer in ` +
        `[0, ${tokenizer.vocabSize}) for the tokenizer ${tokenizer.source}`;
    }
  }
  if (labels !== undefined && labels !== null) {
    if (!Array.isArray(labels)) {
      return `"labels" must be an array of integers, found ${describeType(labels)}`;
    }
    if (labels.length !== inputIds.length) {
      return `"labels" has ${labels.length} entries but "input_ids" has ${inputIds.length}`;
    }
    for (let i = 0; i < labels.length; i++) {
      if (labels[i] !== IGNORE_INDEX && labels[i] !== inputIds[i]) {
        return `labels[${i}] is ${JSON.stringify(labels[i])} but input_ids[${i}] is ` +
          `${inputIds[i]}: each label must be ${IGNORE_INDEX} or the input id at the same ` +
          `index (unshifted)`;
      }
    }
  }
  if (attention !== undefined && attention !== null) {
    if (!Array.isArray(attention) || attention.length !== inputIds.length) {
      return `"attention_mask" must be an array of 0 and 1 as long as "input_ids"`;
    }
    const bad = attention.findIndex((a) => a !== 0 && a !== 1);
    if (bad >= 0) {
      return `attention_mask[${bad}] is ${JSON.stringify(attention[bad])}, expected 0 or 1`;
    }
  }

  const ids: number[] = [];
  const lossMask: boolean[] = [];
  for (let i = 0; i < inputIds.length; i++) {
    if (attention?.[i] === 0) continue;
    ids.push(inputIds[i]);
    lossMask.push(!Array.isArray(labels) || labels[i] !== IGNORE_INDEX);
  }
  let promptLength = lossMask.indexOf(true, 1);
  if (promptLength < 0) promptLength = ids.length;
  return { example: { ids, lossMask }, promptLength, marker: "" };
}

function tokeniseText(
  record: Record<string, unknown>,
  tokenizer: Tokenizer,
): TokenisedRecord | string {
  const { text } = record;
  if (typeof text !== "string") return `"text" must be a string, found ${describeType(text)}`;
  const ids = tokenizer.encode(text, { bos: true, eos: true });
  const lossMask = ids.map((_, t) => t >= 1);
  return { example: { ids, lossMask }, promptLength: 1, marker: "" };
}

/** Returns the number of targets of an example: positions t >= 1 with lossMask[t] true. */
export function countTargets(example: Example): number {
  let n = 0;
  for (let t = 1; t < example.lossMask.length; t++) if (example.lossMask[t]) n++;
  return n;
}

/**
 * Returns how many tokens at the end of `promptIds` are needed to spell `marker`: the fewest
 * whose decoded text ends with it, at most all tokens but the first; 0 when the marker is empty
 * or never decodes.
 */
export function markerTokenCount(
  promptIds: number[],
  marker: string,
  tokenizer: Tokenizer,
): number {
  if (marker.length === 0) return 0;
  for (let k = 1; k < promptIds.length; k++) {
    const text = tokenizer.decode(promptIds.slice(promptIds.length - k));
    if (text.length >= marker.length && text.endsWith(marker)) return k;
  }
  return 0;
}

/**
 * Cuts an example to `maxSeqLen` tokens, keeping as much of the response as it can. The response
 * (tokens from `promptLength` on) keeps min(its length, max(maxSeqLen - promptLength,
 * ceil(maxSeqLen / 2))) tokens from its start. So it loses its end only when it is longer than
 * both the room left after the prompt and half the limit. The prompt gets the remaining
 * budget: when it is too long, its middle goes (the end of the instruction and the input), and it
 * keeps its first tokens (BOS and the template's header) and its last `markerLength` tokens
 * (the response marker). An example within the limit comes back unchanged.
 */
export function truncateExample(
  example: Example,
  promptLength: number,
  markerLength: number,
  maxSeqLen: number,
): Example {
  const { ids, lossMask } = example;
  if (ids.length <= maxSeqLen) return example;
  if (!Number.isInteger(maxSeqLen) || maxSeqLen < 2) {
    throw new RangeError(`maxSeqLen must be an integer >= 2, got ${maxSeqLen}`);
  }

  const responseLength = ids.length - promptLength;
  const keepResponse = Math.min(
    responseLength,
    Math.max(maxSeqLen - promptLength, Math.ceil(maxSeqLen / 2)),
  );
  const promptBudget = maxSeqLen - keepResponse;

  let keep: number[];
  if (promptBudget >= promptLength) {
    keep = range(0, promptLength);
  } else {
    const tail = Math.max(0, Math.min(markerLength, promptBudget - 1));
    const head = promptBudget - tail;
    keep = [...range(0, head), ...range(promptLength - tail, promptLength)];
  }
  keep.push(...range(promptLength, promptLength + keepResponse));
  return { ids: keep.map((i) => ids[i]), lossMask: keep.map((i) => lossMask[i]) };
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}

/**
 * Returns true when record `index` belongs to the held-out validation set: a hash of the seed and
 * the index, as a number in [0, 1), is below `fraction`. The decision depends on nothing else, so
 * it is the same in every pass over the file and while streaming.
 */
export function isValidationRecord(index: number, fraction: number, seed: number): boolean {
  if (fraction <= 0) return false;
  const seedLow = seed >>> 0;
  const seedHigh = Math.floor(seed / 2 ** 32) >>> 0;
  const h = mix32(mix32(index >>> 0) ^ mix32(seedLow ^ 0x9e3779b9) ^ mix32(seedHigh + 0x7f4a7c15));
  return h / 2 ** 32 < fraction;
}

/** Mixes 32 bits bijectively (the finaliser of MurmurHash3). */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/**
 * Reads a data file as a stream into tokenised examples, applying the length and bad-record
 * policies, and splits off `valFraction` of the records for validation. Throws `DataError` (with
 * file and line) for the first malformed record under the "fail" policy, and when no usable
 * example remains.
 */
export async function loadDataset(path: string, options: DatasetOptions): Promise<Dataset> {
  const {
    tokenizer,
    maxSeqLen,
    template = "alpaca",
    overLength = "truncate",
    onBadRecord = "fail",
    valFraction = 0,
    seed = 0,
    onReport,
  } = options;
  checkOptions(maxSeqLen, valFraction);

  const stats: DatasetStats = {
    file: path,
    fileFormat: null,
    recordFormat: null,
    records: 0,
    blankLines: 0,
    badRecords: 0,
    bad: [],
    truncated: 0,
    skippedTooLong: 0,
    skippedNoTargets: 0,
    trainExamples: 0,
    valExamples: 0,
    tokens: 0,
    targets: 0,
  };
  const train: Example[] = [];
  const val: Example[] = [];
  let formatLine = 0;

  const reportBad = (line: number, message: string): void => {
    if (onBadRecord === "fail") {
      throw new DataError(path, line, `${message} (use --on-bad-record skip to skip such records)`);
    }
    const bad = { file: path, line, message };
    stats.badRecords++;
    if (stats.bad.length < MAX_KEPT_BAD_RECORDS) stats.bad.push(bad);
    onReport?.(bad);
  };

  for await (const item of readJsonItems(path, (format) => stats.fileFormat = format)) {
    if (item.kind === "blank") {
      stats.blankLines++;
      continue;
    }
    if (item.kind === "syntax") {
      // A syntax error between array elements is reported but is not a record, so it does not
      // shift the indices that decide the validation split.
      reportBad(item.line, item.message);
      continue;
    }
    const index = stats.records++;
    if (item.kind === "error") {
      reportBad(item.line, item.message);
      continue;
    }

    const format = recordFormatOf(item.value);
    if (format === null) {
      reportBad(
        item.line,
        isObject(item.value)
          ? `record has none of the fields "instruction"/"output" (Alpaca), "input_ids" ` +
            `(pre-tokenised) or "text" (raw text)`
          : `expected a JSON object, found ${describeType(item.value)}`,
      );
      continue;
    }
    if (stats.recordFormat === null) {
      stats.recordFormat = format;
      formatLine = item.line;
    } else if (format !== stats.recordFormat) {
      reportBad(
        item.line,
        `mixed record formats: this record is ${FORMAT_DESCRIPTIONS[format]} but the file's ` +
          `records are ${FORMAT_DESCRIPTIONS[stats.recordFormat]} (from line ${formatLine}); ` +
          `a file must use one format`,
      );
      continue;
    }

    const tokenised = tokeniseRecord(item.value, format, tokenizer, template);
    if (typeof tokenised === "string") {
      reportBad(item.line, tokenised);
      continue;
    }
    let example = tokenised.example;
    if (example.ids.length > maxSeqLen) {
      if (overLength === "skip") {
        stats.skippedTooLong++;
        continue;
      }
      const promptIds = example.ids.slice(0, tokenised.promptLength);
      const markerLength = markerTokenCount(promptIds, tokenised.marker, tokenizer);
      example = truncateExample(example, tokenised.promptLength, markerLength, maxSeqLen);
      stats.truncated++;
    }
    const targets = countTargets(example);
    if (targets === 0) {
      stats.skippedNoTargets++;
      continue;
    }

    stats.tokens += example.ids.length;
    stats.targets += targets;
    if (isValidationRecord(index, valFraction, seed)) val.push(example);
    else train.push(example);
  }

  stats.trainExamples = train.length;
  stats.valExamples = val.length;
  if (train.length + val.length === 0) {
    throw new DataError(path, null, `no usable examples (${summarizeStats(stats, maxSeqLen)})`);
  }
  if (train.length === 0) {
    throw new DataError(
      path,
      null,
      `no training examples left after holding out ${val.length} for validation ` +
        `(val fraction ${valFraction}); lower the validation fraction`,
    );
  }
  return {
    file: path,
    template,
    recordFormat: stats.recordFormat as RecordFormat,
    train,
    val,
    stats,
  };
}

/** Options for `loadTrainingData`: a training file and either a validation file or fraction. */
export interface TrainingDataOptions extends DatasetOptions {
  /** A separate validation file, read with the same options; excludes `valFraction`. */
  valPath?: string;
}

/** Training and validation examples with the counts of each file read. */
export interface TrainingData {
  template: TemplateName;
  recordFormat: RecordFormat;
  train: Example[];
  val: Example[];
  trainStats: DatasetStats;
  /** Counts of the separate validation file, when there is one. */
  valStats: DatasetStats | null;
}

/**
 * Reads the training file and the validation examples: a held-out fraction of the training file,
 * or a separate file (whose records must use the training file's format). Throws when both are
 * given.
 */
export async function loadTrainingData(
  trainPath: string,
  options: TrainingDataOptions,
): Promise<TrainingData> {
  const { valPath, ...rest } = options;
  if (valPath !== undefined && (rest.valFraction ?? 0) > 0) {
    throw new Error(
      "give either a validation file (--val-data) or a validation fraction (--val-fraction), " +
        "not both",
    );
  }
  const trainSet = await loadDataset(trainPath, rest);
  if (valPath === undefined) {
    return {
      template: trainSet.template,
      recordFormat: trainSet.recordFormat,
      train: trainSet.train,
      val: trainSet.val,
      trainStats: trainSet.stats,
      valStats: null,
    };
  }
  const valSet = await loadDataset(valPath, { ...rest, valFraction: 0 });
  if (valSet.recordFormat !== trainSet.recordFormat) {
    throw new DataError(
      valPath,
      null,
      `records are ${FORMAT_DESCRIPTIONS[valSet.recordFormat]} but the training file ` +
        `${trainPath} has ${FORMAT_DESCRIPTIONS[trainSet.recordFormat]} records`,
    );
  }
  return {
    template: trainSet.template,
    recordFormat: trainSet.recordFormat,
    train: trainSet.train,
    val: valSet.train,
    trainStats: trainSet.stats,
    valStats: valSet.stats,
  };
}

/**
 * Formats the counts of a dataset as one line, for logs and errors. With `validationFile`, the
 * file's usable examples are counted as validation examples.
 */
export function summarizeStats(
  stats: DatasetStats,
  maxSeqLen: number,
  validationFile = false,
): string {
  const parts = [
    `${stats.records} records`,
    validationFile
      ? `${stats.trainExamples} validation examples`
      : `${stats.trainExamples} training and ${stats.valExamples} validation examples`,
    `${stats.badRecords} bad`,
    `${stats.truncated} truncated and ${stats.skippedTooLong} skipped as longer than ` +
    `${maxSeqLen} tokens`,
    `${stats.skippedNoTargets} without target tokens`,
  ];
  if (stats.blankLines > 0) parts.push(`${stats.blankLines} blank lines`);
  return parts.join(", ");
}

function checkOptions(maxSeqLen: number, valFraction: number): void {
  if (!Number.isInteger(maxSeqLen) || maxSeqLen < 2) {
    throw new RangeError(`max sequence length must be an integer >= 2, got ${maxSeqLen}`);
  }
  if (!(valFraction >= 0 && valFraction < 1)) {
    throw new RangeError(`validation fraction must be in [0, 1), got ${valFraction}`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describeType(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "nothing";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  return `a ${typeof value} (${JSON.stringify(value).slice(0, 40)})`;
}
