/**
 * Exact-match accuracy: greedy generation from each record's formatted prompt, compared with its
 * reference output after trimming surrounding whitespace.
 */
import { readJsonItems } from "../data/json_stream.ts";
import { formatPrompt, type TemplateName } from "../data/templates.ts";
import type { Tokenizer } from "../data/tokenizer.ts";
import type { Session } from "../model/session.ts";

/** An instruction record with a reference answer. */
export interface Instruction {
  instruction: string;
  input?: string;
  output: string;
  /** The record's `task` field, when it has a string one; accuracy is also reported per task. */
  task?: string;
}

/** Correct and total answers of one task. */
export interface TaskAccuracy {
  correct: number;
  total: number;
}

/** Accuracy over a set of records, with a few sample answers. */
export interface AccuracyResult {
  correct: number;
  total: number;
  accuracy: number;
  /** Counts per `task` field, in order of first appearance; empty when no record has one. */
  byTask: Record<string, TaskAccuracy>;
  samples: { instruction: string; input?: string; expected: string; got: string }[];
}

/** Reads the Alpaca records of a JSON or JSONL file that have string instruction and output. */
export async function readInstructions(path: string, limit?: number): Promise<Instruction[]> {
  const out: Instruction[] = [];
  for await (const item of readJsonItems(path)) {
    if (item.kind !== "value") continue;
    const v = item.value as Record<string, unknown>;
    if (typeof v?.instruction !== "string" || typeof v?.output !== "string") continue;
    out.push({
      instruction: v.instruction,
      input: typeof v.input === "string" ? v.input : undefined,
      output: v.output,
      ...(typeof v.task === "string" ? { task: v.task } : {}),
    });
    if (limit !== undefined && out.length >= limit) break;
  }
  return out;
}

/** Normalises an answer for comparison: trimmed, inner whitespace runs collapsed to one space. */
export function normalizeAnswer(s: string): string {
  return s.trim().replace(/\s+/g, " ");
}

/**
 * Generates an answer for each record greedily (at most the reference's token count plus
 * `slack` tokens) and counts exact matches.
 */
export async function exactMatchAccuracy(
  session: Session,
  tokenizer: Tokenizer,
  records: readonly Instruction[],
  template: TemplateName,
  eosIds: readonly number[],
  options: {
    slack?: number;
    decodeChunk?: number;
    /** Number of answers kept in `samples`, the first ones (default 5). */
    samples?: number;
    onProgress?: (done: number) => void;
  } = {},
): Promise<AccuracyResult> {
  const slack = options.slack ?? 8;
  let correct = 0;
  const byTask: Record<string, TaskAccuracy> = {};
  const samples: AccuracyResult["samples"] = [];
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    const prompt = tokenizer.encode(formatPrompt(template, r.instruction, r.input), { bos: true });
    const budget = tokenizer.encode(r.output).length + slack;
    session.reset();
    const room = session.capacity - prompt.length;
    let got = "";
    if (room > 0) {
      const { ids } = await session.generate(prompt, {
        temperature: 0,
        topP: 1,
        seed: 0,
        maxTokens: Math.min(budget, room),
        eosIds,
        decodeChunk: options.decodeChunk ?? 16,
      });
      got = tokenizer.decode(ids.filter((id) => !eosIds.includes(id)));
    }
    const ok = normalizeAnswer(got) === normalizeAnswer(r.output);
    if (ok) correct++;
    if (r.task !== undefined) {
      byTask[r.task] ??= { correct: 0, total: 0 };
      byTask[r.task].total++;
      if (ok) byTask[r.task].correct++;
    }
    if (samples.length < (options.samples ?? 5)) {
      samples.push({ instruction: r.instruction, input: r.input, expected: r.output, got });
    }
    options.onProgress?.(i + 1);
  }
  const total = records.length;
  return { correct, total, accuracy: total ? correct / total : NaN, byTask, samples };
}
