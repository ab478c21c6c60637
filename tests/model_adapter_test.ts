/**
 * The adapter on the GPU against the float64 NumPy golden values: adapted logits, loss and the
 * gradients of prompts and gates; the zero-init property; and training forward versus KV-cache
 * generation.
 *
 * Tolerances: logits 1e-4 absolute; loss 1e-5 relative; gradients 2e-5 absolute plus 1e-3
 * relative, since the golden gradients are central differences (eps 1e-5) in float64 and ours
 * are analytic in f32.
 */
import assert from "node:assert/strict";
import type { Gpu } from "../kernels/device.ts";
import { adamwStep } from "../kernels/optimizer.ts";
import { type Adapter, biasBlockSize } from "../model/adapter.ts";
import { RefModel } from "../model/reference/llama.ts";
import { Rng } from "../model/rng.ts";
import { adapterLossAndGrads } from "../model/grad.ts";
import { openModel } from "../model/open.ts";
import { Session } from "../model/session.ts";
import { TrainGraph } from "../model/train_graph.ts";
import { assertClose, fixture, gpuFixtureTest } from "./helpers.ts";

interface AdapterGolden {
  adapter: { layers: number; length: number };
  tokens: number[];
  loss_mask: boolean[];
  adapter_prompt: number[][][];
  adapter_gate: number[][];
  base_logits: number[][];
  adapted_logits: number[][];
  base_loss: number;
  adapted_loss: number;
  grad_adapter_prompt: number[][][];
  grad_adapter_gate: number[][];
}

async function golden(name: string): Promise<AdapterGolden> {
  return JSON.parse(await Deno.readTextFile(fixture(`golden/${name}`)));
}

function goldenAdapter(g: AdapterGolden): Adapter {
  return {
    config: { layers: g.adapter.layers, length: g.adapter.length },
    prompts: Float32Array.from(g.adapter_prompt.flat(2)),
    gates: Float32Array.from(g.adapter_gate.flat()),
  };
}

function targetsOf(g: AdapterGolden): Int32Array {
  const T = g.tokens.length;
  const targets = new Int32Array(T).fill(-100);
  for (let t = 0; t + 1 < T; t++) if (g.loss_mask[t + 1]) targets[t] = g.tokens[t + 1];
  return targets;
}

async function stories(gpu: Gpu) {
  return await openModel({ model: fixture("models/stories260K.bin"), noTokenizer: true, gpu });
}

for (const name of ["stories260K-adapter.json", "stories260K-adapter-init.json"]) {
  gpuFixtureTest(`adapter logits, loss and gradients match ${name}`, async (gpu) => {
    const g = await golden(name);
    const { llama } = await stories(gpu);
    llama.setAdapter(goldenAdapter(g));

    const session = Session.create(llama, { prefillChunk: g.tokens.length });
    const logits = await session.logitsAll(g.tokens);
    assertClose(logits, g.adapted_logits.flat(), "adapted logits", { rtol: 0, atol: 1e-4 });

    const T = g.tokens.length;
    const r = await adapterLossAndGrads(llama, Uint32Array.from(g.tokens), targetsOf(g), 1, T);
    assertClose([r.loss], [g.adapted_loss], "adapted loss", { rtol: 1e-5, atol: 0 });
    assertClose(r.grads.gates, g.grad_adapter_gate.flat(), "gate gradient", {
      rtol: 1e-3,
      atol: 2e-5,
    });
    assertClose(r.grads.prompts, g.grad_adapter_prompt.flat(2), "prompt gradient", {
      rtol: 1e-3,
      atol: 2e-5,
    });
  });
}

gpuFixtureTest("zero gates give exactly the base logits", async (gpu) => {
  const g = await golden("stories260K-adapter-init.json");
  const { llama } = await stories(gpu);
  const session = Session.create(llama, { prefillChunk: g.tokens.length });
  const base = await session.logitsAll(g.tokens);
  llama.setAdapter(goldenAdapter(g));
  const adapted = await Session.create(llama, { prefillChunk: g.tokens.length })
    .logitsAll(g.tokens);
  assert.deepEqual(adapted, base, "adapted logits must equal base logits bit for bit");
});

gpuFixtureTest("first step from zero gates changes only the gates", async (gpu) => {
  const g = await golden("stories260K-adapter-init.json");
  const { llama } = await stories(gpu);
  llama.setAdapter(goldenAdapter(g));
  const before = await llama.readAdapter();
  const T = g.tokens.length;
  const targets = targetsOf(g);
  const graph = new TrainGraph(llama, { maxBatch: 1, maxSeqLen: T });
  graph.zeroGrads();
  graph.microBatch(
    Uint32Array.from(g.tokens),
    targets,
    1,
    T,
    1 / targets.filter((t) => t >= 0).length,
  );
  const params = graph.parameters(), grads = graph.gradients();
  for (let i = 0; i < params.length; i++) {
    const m = gpu.tensor(params[i].shape, "f32", "m"), v = gpu.tensor(params[i].shape, "f32", "v");
    adamwStep(gpu, params[i], grads[i], m, v, {
      lr: 1e-2,
      beta1: 0.9,
      beta2: 0.95,
      eps: 1e-8,
      weightDecay: 0,
      step: 1,
    });
  }
  const after = await llama.readAdapter();
  assert.deepEqual(after.prompts, before.prompts, "prompts must not move on the first step");
  let moved = 0;
  for (let i = 0; i < after.gates.length; i++) if (after.gates[i] !== before.gates[i]) moved++;
  assert.ok(moved > 0, "the gates must move on the first step");
});

gpuFixtureTest("training forward and KV-cache decode give the same logits", async (gpu) => {
  const g = await golden("stories260K-adapter.json");
  const { llama } = await stories(gpu);
  llama.setAdapter(goldenAdapter(g));
  const T = g.tokens.length;
  const graph = new TrainGraph(llama, { maxBatch: 2, maxSeqLen: T });
  // Two rows, the second a shorter copy padded at the end: each row must match alone.
  const tokens = new Uint32Array(2 * T);
  tokens.set(g.tokens, 0);
  tokens.set(g.tokens.slice(0, T - 5), T);
  const training = await graph.forwardLogits(tokens, 2, T);
  const session = Session.create(llama, { prefillChunk: T });
  const decoded = await session.logitsStepwise(g.tokens);
  const V = llama.config.vocabSize;
  assertClose(training.subarray(0, T * V), decoded, "row 0 logits", { rtol: 0, atol: 1e-5 });
  assertClose(
    training.subarray(T * V, (2 * T - 5) * V),
    decoded.subarray(0, (T - 5) * V),
    "row 1 logits",
    { rtol: 0, atol: 1e-5 },
  );
});

gpuFixtureTest("recomputed activations give identical gradients", async (gpu) => {
  const g = await golden("stories260K-adapter.json");
  const { llama } = await stories(gpu);
  llama.setAdapter(goldenAdapter(g));
  const T = g.tokens.length;
  const targets = targetsOf(g);
  const tokens = Uint32Array.from(g.tokens);
  const grads = async (recompute: boolean) => {
    const graph = new TrainGraph(llama, { maxBatch: 1, maxSeqLen: T, recompute });
    graph.zeroGrads();
    graph.microBatch(tokens, targets, 1, T, 0.1);
    const out: number[] = [];
    for (const t of graph.gradients()) out.push(...await gpu.readF32(t));
    return out;
  };
  const kept = await grads(false);
  const recomputed = await grads(true);
  assert.deepEqual(recomputed, kept);
  assert.ok(kept.some((v) => v !== 0), "gradients are not all zero");
});

gpuFixtureTest("bias tuning: logits and gradients match the float64 reference", async (gpu) => {
  const g = await golden("stories260K-adapter.json");
  const opened = await stories(gpu);
  const { llama } = opened;
  const c = llama.config;
  const rng = new Rng(11);
  const base = goldenAdapter(g);
  const K = base.config.layers;
  const adapter: Adapter = {
    ...base,
    config: { ...base.config, bias: true },
    biases: rng.normals(K * biasBlockSize(c), 0.2),
  };
  llama.setAdapter(adapter);
  const back = await llama.readAdapter();
  assert.deepEqual(back.biases, adapter.biases, "biases read back as uploaded");

  const ref = await RefModel.fromWeights(opened.checkpoint);
  const refAdapter = {
    config: adapter.config,
    prompts: Float64Array.from(adapter.prompts),
    gates: Float64Array.from(adapter.gates),
    biases: Float64Array.from(adapter.biases!),
  };
  const T = g.tokens.length;
  const expected = ref.lossAndGrads(g.tokens, g.loss_mask, refAdapter);

  // Prefill and token-by-token decode with the KV cache against the reference logits.
  const refLogits = ref.forward(g.tokens, refAdapter);
  const session = Session.create(llama, { prefillChunk: T });
  assertClose(await session.logitsAll(g.tokens), refLogits, "prefill logits", {
    rtol: 0,
    atol: 1e-4,
  });
  const stepwise = await Session.create(llama).logitsStepwise(g.tokens);
  assertClose(stepwise, refLogits, "decode logits", { rtol: 0, atol: 1e-4 });

  const r = await adapterLossAndGrads(llama, Uint32Array.from(g.tokens), targetsOf(g), 1, T);
  assertClose([r.loss], [expected.loss], "loss", { rtol: 1e-5, atol: 0 });
  const tol = { rtol: 1e-3, atol: 2e-5 };
  assertClose(r.grads.biases!, expected.biases!, "bias gradient", tol);
  assertClose(r.grads.prompts, expected.prompts!, "prompt gradient", tol);
  assertClose(r.grads.gates, expected.gates!, "gate gradient", tol);
  assert.ok(expected.biases!.some((v) => Math.abs(v) > 1e-3), "bias gradients are not all tiny");
});

gpuFixtureTest("bias tuning starts as the base model", async (gpu) => {
  const g = await golden("stories260K-adapter-init.json");
  const { llama } = await stories(gpu);
  const base = await Session.create(llama, { prefillChunk: g.tokens.length }).logitsAll(g.tokens);
  const adapter = goldenAdapter(g);
  llama.setAdapter({
    ...adapter,
    config: { ...adapter.config, bias: true },
    biases: new Float32Array(adapter.config.layers * biasBlockSize(llama.config)),
  });
  const adapted = await Session.create(llama, { prefillChunk: g.tokens.length })
    .logitsAll(g.tokens);
  assertClose(adapted, base, "zero gates and zero biases", { rtol: 0, atol: 0 });
});
