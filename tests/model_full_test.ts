/**
 * Full fine-tuning gradients on the GPU (every weight trainable) against the float64 reference's
 * analytic gradients, on stories260K with a batch of two rows.
 *
 * Tolerance: 2e-5 absolute plus 2e-3 relative per element; the GPU sums in f32 over the batch
 * and sequence, the reference in float64.
 */
import assert from "node:assert/strict";
import { openModel } from "../model/open.ts";
import { LAYER_KEYS, RefModel } from "../model/reference/llama.ts";
import { TrainGraph } from "../model/train_graph.ts";
import { loadModel } from "../model/load.ts";
import { assertClose, fixture, gpuFixtureTest } from "./helpers.ts";

gpuFixtureTest("full fine-tuning gradients match the float64 reference", async (gpu) => {
  const golden = JSON.parse(
    await Deno.readTextFile(fixture("golden/stories260K-adapter.json")),
  ) as { tokens: number[]; loss_mask: boolean[] };
  const rows = [golden.tokens, golden.tokens.slice(3).reverse()];
  const T = golden.tokens.length;
  const masks = [golden.loss_mask, golden.tokens.map((_, t) => t % 3 !== 0)];

  const tokens = new Uint32Array(2 * T);
  const targets = new Int32Array(2 * T).fill(-100);
  let count = 0;
  rows.forEach((row, b) => {
    tokens.set(row, b * T);
    for (let t = 0; t + 1 < row.length; t++) {
      if (masks[b][t + 1]) {
        targets[b * T + t] = row[t + 1];
        count++;
      }
    }
  });

  const { llama } = await openModel({
    model: fixture("models/stories260K.bin"),
    noTokenizer: true,
    gpu,
    weights: "f32",
  });
  const graph = new TrainGraph(llama, { maxBatch: 2, maxSeqLen: T, full: true });
  graph.zeroGrads();
  graph.resetStats();
  graph.microBatch(tokens, targets, 2, T, 1 / count);
  const { lossSum } = await graph.readStats();

  // The reference's loss is a mean per row; the batch loss is the mean over all targets, so the
  // expected gradient is the target-count-weighted sum of the per-row gradients.
  const ref = await RefModel.fromWeights(await loadModel(fixture("models/stories260K.bin")));
  let expectedLoss = 0;
  const expected = new Map<string, Float64Array>();
  const addScaled = (name: string, g: Float64Array, s: number) => {
    const acc = expected.get(name) ?? new Float64Array(g.length);
    for (let i = 0; i < g.length; i++) acc[i] += s * g[i];
    expected.set(name, acc);
  };
  rows.forEach((row, b) => {
    const mask = masks[b].slice(0, row.length);
    const n = mask.slice(1).filter(Boolean).length;
    const r = ref.lossAndGrads(row, mask, null, { allParams: true });
    expectedLoss += r.loss * n;
    const w = r.weights!;
    addScaled("tokEmbedding", w.tokEmbedding, n / count);
    addScaled("norm", w.norm, n / count);
    w.layers.forEach((layer, l) => {
      for (const key of LAYER_KEYS) addScaled(`${l}.${key}`, layer[key], n / count);
    });
  });
  assertClose([lossSum], [expectedLoss], "summed loss", { rtol: 1e-5, atol: 0 });

  const tol = { rtol: 2e-3, atol: 2e-5 };
  const head = graph.headGrads!;
  assert.equal(head.output, null, "stories260K ties the output to the embedding");
  assertClose(
    await gpu.readF32(head.tokEmbedding),
    expected.get("tokEmbedding")!,
    "dEmbedding",
    tol,
  );
  assertClose(await gpu.readF32(head.norm), expected.get("norm")!, "dNorm", tol);
  for (let l = 0; l < llama.config.nLayers; l++) {
    const g = graph.blockGrads[l];
    for (const key of LAYER_KEYS) {
      assertClose(
        await gpu.readF32(g[key]),
        expected.get(`${l}.${key}`)!,
        `layer ${l} d${key}`,
        tol,
      );
    }
  }
});
