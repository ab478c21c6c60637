/**
 * Whole-model speed: prefill and decode tokens/s, time to first token, adapter training tokens/s
 * with its model-FLOPs utilisation, and the training step with every block adapted against the
 * forward pass alone. Runs on the demo model (`--model`, default demo/model), or on random weights
 * of the demo architecture when that folder has no weights.
 *
 * Model FLOPs per token count the matrix products only: forward 2 P (P = weights used per token,
 * the output projection included), adapter backward 2 P_b for the input gradients of the blocks
 * that backward passes through and of the output projection (no weight gradients are needed), and
 * full fine-tuning 6 P. Utilisation is that rate over the measured FMA peak of the same run.
 */
import type { Gpu } from "../../kernels/device.ts";
import { numel } from "../../kernels/device.ts";
import { defaultAdapterLayers, initAdapter } from "../../model/adapter.ts";
import { randomWeights } from "../../model/init.ts";
import { openModel } from "../../model/open.ts";
import type { ModelWeights } from "../../model/weights.ts";
import { Session } from "../../model/session.ts";
import { TrainGraph } from "../../model/train_graph.ts";
import { loadModel } from "../../model/load.ts";
import { type BenchContext, type BenchRow, timeRepeated } from "../bench.ts";
import { DEMO_CONFIG } from "../pretrain_demo_config.ts";

const PREFILL_TOKENS = 128;
const PROMPT_TOKENS = 32;
const DECODE_TOKENS = 64;
const TRAIN_BATCH = 8;
const TRAIN_SEQ = 64;

async function checkpoint(path: string): Promise<ModelWeights> {
  try {
    return await loadModel(path);
  } catch {
    return randomWeights(DEMO_CONFIG, 1);
  }
}

/** Measures inference and training on one model; see the file comment. */
export async function modelBench(gpu: Gpu, ctx: BenchContext): Promise<BenchRow[]> {
  const weights = await checkpoint(ctx.modelPath);
  const { llama } = await openModel({
    model: ctx.modelPath,
    checkpoint: weights,
    noTokenizer: true,
    gpu,
    weights: "f32",
  });
  const c = llama.config;
  const name = weights.format === "initialised" ? "random demo-sized model" : ctx.modelPath;
  const blockParams = llama.weights.layers.map((l) =>
    [l.wq, l.wk, l.wv, l.wo, l.w1, l.w2, l.w3].reduce((n, t) => n + numel(t.shape), 0)
  );
  const headParams = numel(llama.weights.output.shape);
  const perToken = 2 * (blockParams.reduce((a, b) => a + b, 0) + headParams);
  const rows: BenchRow[] = [];
  const row = (r: Omit<BenchRow, "section">) => {
    const full: BenchRow = { section: "model", ...r };
    if (full.gflops !== undefined && ctx.peakGflops) full.ofPeak = full.gflops / ctx.peakGflops;
    ctx.log(`  ${r.name}: ${r.note ?? ""}`);
    rows.push(full);
  };
  const ids = Array.from({ length: PREFILL_TOKENS }, (_, i) => 3 + ((i * 37) % (c.vocabSize - 3)));
  const shape = `${name}: dim ${c.dim}, ${c.nLayers} layers, vocab ${c.vocabSize}`;

  // Prefill: the prompt in one forward pass, up to the next-token sample.
  const session = Session.create(llama, { prefillChunk: PREFILL_TOKENS });
  const sampling = { temperature: 0, topP: 1, seed: 0 };
  const prefill = await timeRepeated(gpu, () => {
    session.reset();
    session.prefill(ids, sampling);
  }, ctx.minSeconds);
  row({
    name: "prefill",
    shape: `${shape}; ${PREFILL_TOKENS} tokens`,
    gflops: (perToken * PREFILL_TOKENS) / prefill.seconds / 1e9,
    ms: prefill.seconds * 1e3,
    reps: prefill.reps,
    note: `${(PREFILL_TOKENS / prefill.seconds).toFixed(0)} tokens/s`,
  });

  // Time to first token: prefill of a short prompt, sampling and reading the token back.
  const firstTimes: number[] = [];
  for (let i = 0; i < 5; i++) {
    const start = performance.now();
    session.reset();
    await session.generate(ids.slice(0, PROMPT_TOKENS), {
      ...sampling,
      maxTokens: 1,
      eosIds: [],
    });
    firstTimes.push(performance.now() - start);
  }
  firstTimes.sort((a, b) => a - b);
  row({
    name: "time to first token",
    shape: `${shape}; ${PROMPT_TOKENS}-token prompt`,
    ms: firstTimes[2],
    note: `${firstTimes[2].toFixed(1)} ms (median of 5, one readback included)`,
  });

  // Decode: chunks of 16 steps per submission with sampling on the GPU.
  let decodeSeconds = Infinity;
  for (let i = 0; i < 3; i++) {
    session.reset();
    session.prefill(ids.slice(0, PROMPT_TOKENS), sampling);
    await gpu.sync();
    const start = performance.now();
    await session.generate([], {
      ...sampling,
      maxTokens: DECODE_TOKENS,
      eosIds: [],
      decodeChunk: 16,
    });
    decodeSeconds = Math.min(decodeSeconds, (performance.now() - start) / 1000);
  }
  row({
    name: "decode",
    shape: `${shape}; ${DECODE_TOKENS} tokens after ${PROMPT_TOKENS}, 16 per submission`,
    gflops: (perToken * DECODE_TOKENS) / decodeSeconds / 1e9,
    ms: (decodeSeconds * 1e3) / DECODE_TOKENS,
    note: `${(DECODE_TOKENS / decodeSeconds).toFixed(1)} tokens/s`,
  });

  // Training: one micro-batch forward and backward, for the default adapter, every block
  // adapted, and full fine-tuning, against the forward pass alone.
  const tokens = new Uint32Array(TRAIN_BATCH * TRAIN_SEQ).map((_, i) => 3 + (i * 7) % 500);
  const targets = new Int32Array(tokens.length).map((_, i) => 3 + (i * 11) % 500);
  const n = tokens.length;
  const forwardOnly = new TrainGraph(llama, {
    maxBatch: TRAIN_BATCH,
    maxSeqLen: TRAIN_SEQ,
    evalOnly: true,
  });
  const fwd = await timeRepeated(
    gpu,
    () => forwardOnly.evalBatch(tokens, targets, TRAIN_BATCH, TRAIN_SEQ),
    ctx.minSeconds,
  );
  const trainShape = `${shape}; ${TRAIN_BATCH} x ${TRAIN_SEQ} tokens`;
  row({
    name: "forward only",
    shape: trainShape,
    gflops: (perToken * n) / fwd.seconds / 1e9,
    ms: fwd.seconds * 1e3,
    reps: fwd.reps,
    note: `${(n / fwd.seconds).toFixed(0)} tokens/s`,
  });

  const cases: [string, number | "full"][] = [
    ["adapter training, default K", defaultAdapterLayers(c)],
    ["adapter training, K = all", c.nLayers],
    ["full fine-tuning", "full"],
  ];
  for (const [label, K] of cases) {
    if (K === "full") llama.setAdapter(null);
    else llama.setAdapter(initAdapter(c, { layers: K, length: 10 }, 0));
    const graph = new TrainGraph(llama, {
      maxBatch: TRAIN_BATCH,
      maxSeqLen: TRAIN_SEQ,
      full: K === "full",
    });
    const step = await timeRepeated(gpu, () => {
      graph.zeroGrads();
      graph.microBatch(tokens, targets, TRAIN_BATCH, TRAIN_SEQ, 1 / n);
    }, ctx.minSeconds);
    const backBlocks = K === "full"
      ? 0
      : blockParams.slice(c.nLayers - K).reduce((a, b) => a + b, 0);
    const flops = K === "full" ? 3 * perToken * n : (perToken + 2 * (backBlocks + headParams)) * n;
    row({
      name: label,
      shape: trainShape,
      gflops: flops / step.seconds / 1e9,
      ms: step.seconds * 1e3,
      reps: step.reps,
      note: `${(n / step.seconds).toFixed(0)} tokens/s; step ${
        (step.seconds / fwd.seconds)
          .toFixed(2)
      }x the forward pass`,
    });
  }
  llama.setAdapter(null);
  return rows;
}
