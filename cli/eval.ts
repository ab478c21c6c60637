/** `eval`: mean loss, perplexity and exact-match accuracy of a model (with an adapter) on data. */
import { loadDataset } from "../data/dataset.ts";
import { Session } from "../model/session.ts";
import { TrainGraph } from "../model/train_graph.ts";
import { exactMatchAccuracy, readInstructions } from "../train/accuracy.ts";
import { evaluateLoss } from "../train/evaluate.ts";
import { chooseTemplate, type ModelCliOptions, openForCli } from "./common.ts";

/** Options of the eval command. */
export interface EvalCliOptions extends ModelCliOptions {
  data: string;
  maxSeqLen: number;
  batchSize: number;
  limit?: number;
  accuracy: boolean;
  json: boolean;
}

/** Runs the eval command and prints a table or JSON. */
export async function runEval(o: EvalCliOptions): Promise<void> {
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
  const result = {
    model: o.model,
    adapter: opened.adapter ? (typeof o.adapter === "string" ? o.adapter : "default") : null,
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
  if (o.json) {
    console.log(JSON.stringify(result, null, 2));
  } else {
    console.log(`model        ${o.model}${result.adapter ? ` + adapter ${result.adapter}` : ""}`);
    console.log(`data         ${o.data} (${loss.examples} examples, ${loss.tokens} target tokens)`);
    console.log(`loss         ${loss.loss.toFixed(4)}`);
    console.log(`perplexity   ${loss.perplexity.toFixed(3)}`);
    if (accuracy) {
      console.log(
        `exact match  ${(100 * accuracy.accuracy).toFixed(1)}% ` +
          `(${accuracy.correct}/${accuracy.total})`,
      );
    }
  }
  opened.gpu.destroy();
}
