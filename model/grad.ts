/** One-batch loss and adapter gradients, for custom training loops and checks against references. */
import type { Adapter } from "./adapter.ts";
import { type Llama, readBiases } from "./llama.ts";
import { TrainGraph } from "./train_graph.ts";

/** Loss and gradients of one batch. */
export interface AdapterGradients {
  /** Mean cross-entropy over the batch's target tokens. */
  loss: number;
  /** Target tokens counted. */
  count: number;
  /**
   * Gradients in the layout of `Adapter`: prompts (K, L, dim), gates (K, n_heads) and, with bias
   * tuning, biases (K, biasBlockSize).
   */
  grads: Adapter;
}

/**
 * Computes the loss of one batch and its gradients with respect to the adapter's prompts and gates
 * on the GPU. `tokens` and `targets` are (B, T) row-major; `targets[b*T + t]` is the id predicted at
 * position t, or negative to leave the position out of the loss. The model must have an adapter.
 *
 * @example
 * const { loss, grads } = await adapterLossAndGrads(llama, tokens, targets, 1, tokens.length);
 */
export async function adapterLossAndGrads(
  model: Llama,
  tokens: Uint32Array,
  targets: Int32Array,
  B: number,
  T: number,
): Promise<AdapterGradients> {
  if (!model.adapter) {
    throw new Error("adapterLossAndGrads: the model has no adapter; call setAdapter");
  }
  let count = 0;
  for (const t of targets) if (t >= 0) count++;
  const graph = new TrainGraph(model, { maxBatch: B, maxSeqLen: T });
  graph.zeroGrads();
  graph.resetStats();
  graph.microBatch(tokens, targets, B, T, count > 0 ? 1 / count : 0);
  const { lossSum } = await graph.readStats();
  const a = model.adapter;
  const c = model.config;
  const { layers: K, length: L } = a.config;
  const prompts = new Float32Array(K * L * c.dim);
  const gates = new Float32Array(K * c.nHeads);
  for (let i = 0; i < K; i++) {
    prompts.set(await model.gpu.readF32(graph.adapterGrads[i].prompt), i * L * c.dim);
    gates.set(await model.gpu.readF32(graph.adapterGrads[i].gate), i * c.nHeads);
  }
  const grads: Adapter = { config: { ...a.config }, prompts, gates };
  if (a.config.bias) {
    grads.biases = await readBiases(model.gpu, graph.adapterGrads.map((g) => g.biases!));
  }
  return { loss: count > 0 ? lossSum / count : NaN, count, grads };
}
