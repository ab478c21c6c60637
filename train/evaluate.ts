/** Mean loss over a set of examples, computed on the GPU with one readback at the end. */
import type { Example } from "../data/dataset.ts";
import { makeBatch } from "../data/batch.ts";
import type { TrainGraph } from "../model/train_graph.ts";

/** Loss over a dataset: mean cross-entropy per target token and its perplexity. */
export interface LossResult {
  loss: number;
  perplexity: number;
  /** Target tokens counted. */
  tokens: number;
  examples: number;
}

/**
 * Computes the mean loss of `examples` in batches of up to `batchSize` (sorted by length to limit
 * padding). The graph's loss statistics are reset before and after.
 */
export async function evaluateLoss(
  graph: TrainGraph,
  examples: readonly Example[],
  batchSize: number,
): Promise<LossResult> {
  const order = examples.map((_, i) => i).sort((a, b) =>
    examples[a].ids.length - examples[b].ids.length
  );
  graph.resetStats();
  const B = Math.min(batchSize, graph.options.maxBatch);
  for (let i = 0; i < order.length; i += B) {
    const batch = makeBatch(order.slice(i, i + B).map((j) => examples[j]));
    graph.evalBatch(batch.tokens, batch.targets, batch.batchSize, batch.seqLen);
  }
  const { lossSum, count } = await graph.readStats();
  graph.resetStats();
  const loss = count > 0 ? lossSum / count : NaN;
  return { loss, perplexity: Math.exp(loss), tokens: count, examples: examples.length };
}
