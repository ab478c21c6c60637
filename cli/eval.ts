/** `eval`: mean loss, perplexity and exact-match accuracy of a model (with an adapter) on data. */
import { loadDataset } from "../data/dataset.ts";
import { Session } from "../model/session.ts";
import { TrainGraph } from "../model/train_graph.ts";
import { exactMatchAccuracy, readInstructions, type TaskAccuracy } from "../train/accuracy.ts";
import { evaluateLoss } from "../train/evaluate.ts";
import type { OpenedModel } from "../model/open.ts";
import { chooseTemplate, type ModelCliOptions, openForCli } from "./common.ts";
import { DEFAULTS } from "./defaults.ts";

/** Options of the eval command. */
export interface EvalCliOptions extends ModelCliOptions {
  data: string;
  maxSeqLen: number;
  batchSize: number;
  limit?: number;
  accuracy: boolean;
  /** Number of generated answers to print beside the expected ones (default 0). */
  show?: number;
  /** With an adapter, also evaluate the base model alone on the same prompts (default true). */
  base?: boolean;
  json: boolean;
}

/** Result of `evaluate`, as `eval --json` prints it. */
export interface EvalResult {
  model: string;
  adapter: string | null;
  data: string;
  template: string;
  examples: number;
  targetTokens: number;
  loss: number;
  perplexity: number;
  exactMatch: {
    correct: number;
    total: number;
    accuracy: number;
    /** Counts per `task` field of the records; empty when they have none. */
    byTask: Record<string, TaskAccuracy>;
  } | null;
  samples: { instruction: string; input?: string; expected: string; got: string }[];
  /** The base model alone with the same template, when an adapter was applied and compared. */
  base?: EvalResult | null;
}

function percent(em: EvalResult["exactMatch"]): string {
  return em ? `${(100 * em.accuracy).toFixed(1)}% (${em.correct}/${em.total})` : "-";
}

/** Runs the eval command and prints a table or JSON. */
export async function runEval(o: EvalCliOptions): Promise<void> {
  const result = await evaluate(o);
  if (o.json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  const adapter = result.adapter ? ` + adapter ${result.adapter}` : "";
  console.log(`model        ${o.model}${adapter}`);
  console.log(
    `data         ${o.data} (${result.examples} examples, ${result.targetTokens} target tokens, ` +
      `template ${result.template})`,
  );
  const rows = result.base ? [["base model", result.base], ["with adapter", result]] as const : [[
    result.adapter ? "with adapter" : "model",
    result,
  ]] as const;
  console.log(`${"".padEnd(14)}${"loss".padStart(9)}${"perplexity".padStart(12)}  exact match`);
  for (const [name, r] of rows) {
    console.log(
      `${name.padEnd(14)}${r.loss.toFixed(4).padStart(9)}${r.perplexity.toFixed(3).padStart(12)}` +
        `  ${percent(r.exactMatch)}`,
    );
  }
  const tasks = Object.keys(result.exactMatch?.byTask ?? {});
  if (tasks.length > 0) {
    console.log(`exact match by task${rows.map(([name]) => name.padStart(15)).join("")}`);
    for (const task of tasks) {
      const cells = rows.map(([, r]) => {
        const t = r.exactMatch?.byTask[task];
        return (t ? `${t.correct}/${t.total}` : "-").padStart(15);
      });
      console.log(`  ${task.padEnd(17)}${cells.join("")}`);
    }
  }
  const printed = result.samples.slice(0, o.show ?? 0);
  for (const [i, sample] of printed.entries()) {
    const base = result.base?.samples[i]?.got;
    console.log(`\n#${i + 1} ${sample.instruction}${sample.input ? `\n${sample.input}` : ""}`);
    console.log(`  expected     ${JSON.stringify(sample.expected.trim())}`);
    if (base !== undefined) console.log(`  base model   ${JSON.stringify(base.trim())}`);
    console.log(
      `  ${(result.base ? "with adapter" : "got").padEnd(13)}${JSON.stringify(sample.got.trim())}`,
    );
  }
  if (printed.length > 0) console.log();
  console.log("loss: mean cross-entropy per target token (the answer and its end token), in nats");
}

/**
 * Computes loss, perplexity and (for Alpaca data) exact-match accuracy; see `runEval`. With an
 * adapter and `base` not false, also evaluates the base model alone into `result.base`, on the
 * same prompts so that the rows differ only in the adapter. The model is opened once for both.
 */
export async function evaluate(o: EvalCliOptions): Promise<EvalResult> {
  const opened = await openForCli({ ...o, quiet: o.quiet || o.json });
  try {
    const result = await evaluateOpened(o, opened);
    const adapter = opened.llama.adapter;
    if (adapter && (o.base ?? true)) {
      // Detached, the adapter's tensors stay on the GPU but no block reads them.
      opened.llama.adapter = null;
      try {
        result.base = await evaluateOpened({ ...o, template: result.template }, opened);
      } finally {
        opened.llama.adapter = adapter;
      }
    }
    return result;
  } finally {
    opened.gpu.destroy();
  }
}

/** Evaluates `opened` as it is: with its adapter when one is attached to the model. */
async function evaluateOpened(o: EvalCliOptions, opened: OpenedModel): Promise<EvalResult> {
  const withAdapter = opened.llama.adapter !== null;
  const tokenizer = opened.tokenizer!;
  const template = chooseTemplate({ ...o, template: o.template ?? undefined }, opened);
  const maxSeqLen = Math.min(o.maxSeqLen, opened.checkpoint.config.maxSeqLen);
  const data = await loadDataset(o.data, {
    tokenizer,
    maxSeqLen,
    template: template === "none" && !withAdapter && !o.template ? "alpaca" : template,
    overLength: "truncate",
    onBadRecord: "skip",
  });
  const examples = o.limit ? data.train.slice(0, o.limit) : data.train;
  const longest = Math.max(2, ...examples.map((e) => e.ids.length));
  const graph = new TrainGraph(opened.llama, {
    maxBatch: o.batchSize,
    maxSeqLen: longest,
    evalOnly: true,
  });
  const loss = await evaluateLoss(graph, examples, o.batchSize);

  let accuracy = null;
  if (o.accuracy && data.recordFormat === "alpaca") {
    const records = await readInstructions(o.data, o.limit);
    const session = Session.create(opened.llama);
    accuracy = await exactMatchAccuracy(
      session,
      tokenizer,
      records,
      data.template,
      opened.checkpoint.config.eosIds,
      {
        samples: Math.max(5, o.show ?? 0),
        onProgress: (n) => {
          if (!o.json && !o.quiet && (n % 25 === 0 || n === records.length)) {
            const row = withAdapter ? "with adapter" : "base model";
            console.error(`generating answers (${row}): ${n}/${records.length}`);
          }
        },
      },
    );
  }
  const adapterPath = typeof o.adapter === "string" ? o.adapter : DEFAULTS.adapter;
  const result: EvalResult = {
    model: o.model,
    adapter: withAdapter ? adapterPath : null,
    data: o.data,
    template: data.template,
    examples: loss.examples,
    targetTokens: loss.tokens,
    loss: loss.loss,
    perplexity: loss.perplexity,
    exactMatch: accuracy
      ? {
        correct: accuracy.correct,
        total: accuracy.total,
        accuracy: accuracy.accuracy,
        byTask: accuracy.byTask,
      }
      : null,
    samples: accuracy?.samples ?? [],
  };
  return result;
}
