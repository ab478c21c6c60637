/**
 * Profiles one training micro-batch kernel by kernel on the current adapter: every dispatch is
 * recorded, then replayed alone `REPS` times between GPU syncs, and the time per kernel name is
 * summed. Timestamp queries would be better, but lavapipe returns zeros for them.
 *
 *     deno run -A scripts/profile_step.ts [--model PATH] [--full] [--batch B] [--seq T]
 */
import { Command } from "commander";
import { type Binding, Gpu } from "../kernels/device.ts";
import { initAdapter } from "../model/adapter.ts";
import { openModel } from "../model/open.ts";
import { randomWeights } from "../model/init.ts";
import { TrainGraph } from "../model/train_graph.ts";
import { DEMO_CONFIG } from "./pretrain_demo_config.ts";

const o = new Command()
  .option("--model <path>", "model to profile (default: a random demo-sized model)")
  .option("--full", "full fine-tuning instead of an adapter", false)
  .option("--batch <n>", "rows per micro-batch", Number, 16)
  .option("--seq <n>", "tokens per row", Number, 64)
  .option("--reps <n>", "replays of each dispatch", Number, 3)
  .parse(["deno", "profile_step", ...Deno.args]).opts();

const gpu = await Gpu.create();
const opened = await openModel({
  model: o.model ?? "(random)",
  checkpoint: o.model ? undefined : randomWeights(DEMO_CONFIG, 1),
  noTokenizer: true,
  gpu,
  weights: "f32",
});
const llama = opened.llama;
if (!o.full) llama.setAdapter(initAdapter(llama.config, { layers: 2, length: 10 }, 0));
const B = o.batch, T = o.seq;
const graph = new TrainGraph(llama, { maxBatch: B, maxSeqLen: T, full: o.full });
const tokens = new Uint32Array(B * T).map((_, i) => (i * 7) % llama.config.vocabSize);
const targets = new Int32Array(B * T).map((_, i) => (i * 11) % llama.config.vocabSize);

type Recorded = {
  kernel: string;
  pipeline: GPUComputePipeline;
  bindings: readonly Binding[];
  workgroups: readonly [number, number?, number?];
  params?: ArrayBuffer;
};
const recorded: Recorded[] = [];
const dispatch = gpu.dispatch.bind(gpu);
gpu.dispatch = (kernel, pipeline, bindings, workgroups, params) => {
  recorded.push({ kernel, pipeline, bindings, workgroups, params });
  dispatch(kernel, pipeline, bindings, workgroups, params);
};
graph.zeroGrads();
let t0 = performance.now();
graph.microBatch(tokens, targets, B, T, 1 / (B * T));
await gpu.sync();
const wall = performance.now() - t0;
gpu.dispatch = dispatch;

const totals = new Map<string, { ms: number; count: number }>();
for (const r of recorded) {
  gpu.dispatch(r.kernel, r.pipeline, r.bindings, r.workgroups, r.params);
  await gpu.sync();
  t0 = performance.now();
  for (let i = 0; i < o.reps; i++) {
    gpu.dispatch(r.kernel, r.pipeline, r.bindings, r.workgroups, r.params);
  }
  await gpu.sync();
  const ms = Math.max(0, (performance.now() - t0 - 12) / o.reps);
  const e = totals.get(r.kernel) ?? { ms: 0, count: 0 };
  e.ms += ms;
  e.count++;
  totals.set(r.kernel, e);
}
let sum = 0;
for (const e of totals.values()) sum += e.ms;
console.log(
  `micro-batch ${B} x ${T}, ${recorded.length} dispatches, wall ${wall.toFixed(0)} ms, ` +
    `sum of replays ${sum.toFixed(0)} ms (readback latency of 12 ms subtracted per replay)`,
);
for (const [k, e] of [...totals].sort((a, b) => b[1].ms - a[1].ms)) {
  console.log(
    `${k.padEnd(28)} ${e.ms.toFixed(1).padStart(8)} ms  ${String(e.count).padStart(4)} dispatches`,
  );
}
