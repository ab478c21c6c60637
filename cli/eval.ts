/** `eval`: mean loss, perplexity and exact-match accuracy of a model (with an adapter) on data. */
import { loadDataset } from "../data/dataset.ts";
import { Session } from "../model/session.ts";
import { TrainGraph } from "../model/train_graph.ts";
import { exactMatchAccuracy, readInstructions } from "../train/accuracy.ts";
import { evaluateLoss } from "../train/evaluate.ts";
import { chooseTemplate, type ModelCliOptions, openForCli } from "./common.ts";
import { DEFAULTS } from "./defaults.ts";

/** Options of the eval command. */
export interface EvalCliOptions extends ModelCliOptions {
  data: string;
  maxSeqLen: number;
  batchSize: number;
  limit?: number;
  accuracy: boolean;
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
  exactMatch: { correct: number; total: number; accuracy: number } | null;
  samples: { instruction: string; input?: string; expected: string; got: string }[];
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
    `data         ${o.data} (${result.examples} examples, ${result.targetTokens} target tokens)`,
  );
  console.log(`loss         ${result.loss.toFixed(4)}`);
  console.log(`perplexity   ${result.perplexity.toFixed(3)}`);
  const em = result.exactMatch;
  if (em) {
    console.log(`exact match  ${(100 * em.accuracy).toFixed(1)}% (${em.correct}/${em.total})`);
  }
}

/** Computes loss, perplexity and (for Alpaca data) exact-match accuracy; see `runEval`. */
export async function evaluate(o: EvalCliOptions): Promise<EvalResult> {
  const opened = await openForCli({ ...o, quiet: o.quiet || o.json });
  const tokenizer = opened.tokenizer!;
  const template = chooseTemplate({ ...o, template: o.template ?? undefined }, opened);
  const maxSeqLen = Math.min(o.maxSeqLen, opened.checkpoint.config.maxSeqLen);
  const data = await loadDataset(o.data, {
    tokenizer,
    maxSeqLen,
    template: template === "none" && !opened.adapter && !o.template ? "alpaca" : template,
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
        onProgress: (n) => {
          if (!o.json && !o.quiet && (n % 25 === 0 || n === records.length)) {
            console.error(`accuracy: ${n}/${records.length}`);
          }
        },
      },
    );
  }
  const adapterPath = typeof o.adapter === "string" ? o.adapter : DEFAULTS.adapter;
  const result: EvalResult = {
    model: o.model,
    adapter: opened.adapter ? adapterPath : null,
    data: o.data,
    template: data.template,
    examples: loss.examples,
    targetTokens: loss.tokens,
    loss: loss.loss,
    perplexity: loss.perplexity,
    exactMatch: accuracy
      ? { correct: accuracy.correct, total: accuracy.total, accuracy: accuracy.accuracy }
      : null,
    samples: accuracy?.samples ?? [],
  };
  opened.gpu.destroy();
  return result;
}
