import assert from "node:assert/strict";
import type { ModelConfig } from "../model/config.ts";
import { loadLlama2c } from "../model/loaders/llama2c.ts";
import type { LayerWeights, ModelWeights, WeightSource } from "../model/weights.ts";
import {
  LAYER_KEYS,
  type RefAdapter,
  type RefLayer,
  RefModel,
  type RefWeights,
} from "../model/reference/llama.ts";
import { Rng } from "../model/rng.ts";
import { biasBlockSize } from "../model/adapter.ts";
import { assertClose, fixture, fixtureTest, testRng } from "./helpers.ts";

interface Golden {
  tokens: number[];
  loss_mask: boolean[];
  adapter: { layers: number; length: number };
  adapter_prompt: number[][][];
  adapter_gate: number[][];
  base_logits: number[][];
  adapted_logits: number[][];
  base_loss: number;
  adapted_loss: number;
  grad_adapter_prompt: number[][][];
  grad_adapter_gate: number[][];
}

async function readGolden(name: string): Promise<Golden> {
  return JSON.parse(await Deno.readTextFile(fixture(`golden/${name}`)));
}

function goldenAdapter(g: Golden): RefAdapter {
  return {
    config: { layers: g.adapter.layers, length: g.adapter.length },
    prompts: Float64Array.from(g.adapter_prompt.flat(2)),
    gates: Float64Array.from(g.adapter_gate.flat()),
  };
}

let stories: Promise<RefModel> | null = null;

/** Returns the stories260K model in float64, read once per test file. */
function storiesModel(): Promise<RefModel> {
  if (!stories) {
    stories = loadLlama2c(fixture("models/stories260K.bin")).then(RefModel.fromWeights);
  }
  return stories;
}

/** Central difference of `loss` with respect to x[i]; x is perturbed in place and restored. */
function centralDiff(loss: () => number, x: Float64Array, i: number, eps: number): number {
  const old = x[i];
  x[i] = old + eps;
  const up = loss();
  x[i] = old - eps;
  const down = loss();
  x[i] = old;
  return (up - down) / (2 * eps);
}

/**
 * Checks `analytic[i]` against central differences of `loss` at `count` random indices of `x`
 * (all of them when x is smaller), within atol + rtol * |numeric|.
 */
function checkSampledGrad(
  what: string,
  loss: () => number,
  x: Float64Array,
  analytic: Float64Array,
  rng: Rng,
  count: number,
  { eps = 1e-5, rtol = 1e-5, atol = 1e-8 } = {},
  indices: number[] = [],
): void {
  assert.equal(analytic.length, x.length, `${what}: gradient length`);
  const picked = [...indices];
  if (x.length <= count) picked.push(...Array.from({ length: x.length }, (_, i) => i));
  else for (let n = 0; n < count; n++) picked.push(rng.int(x.length));
  const numeric = picked.map((i) => centralDiff(loss, x, i, eps));
  const actual = picked.map((i) => analytic[i]);
  assertClose(actual, numeric, `${what} at indices [${picked.join(", ")}]`, { rtol, atol });
}

/** Permutes wq/wk rows of every head from the interleaved rotary layout to the "half" layout. */
function toHalfLayout(w: Float64Array, heads: number, D: number, C: number): Float64Array {
  const out = new Float64Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < D / 2; i++) {
      for (const r of [0, 1]) {
        const from = (h * D + 2 * i + r) * C;
        const to = (h * D + r * (D / 2) + i) * C;
        out.set(w.subarray(from, from + C), to);
      }
    }
  }
  return out;
}

/**
 * The golden logits are float64 results stored rounded to float32, so they are within half a
 * float32 ulp (2^-24 relative). The two float64 implementations differ by far less than that.
 */
const GOLDEN_LOGITS = { rtol: 6e-8, atol: 1e-11 };

/** The golden losses are stored in float64; summation order alone separates them. */
const GOLDEN_LOSS = { rtol: 0, atol: 1e-12 };

/**
 * The golden gradients are central differences with eps 1e-5, whose truncation and rounding
 * errors are about 1e-10 each.
 */
const GOLDEN_GRAD = { rtol: 1e-6, atol: 1e-9 };

const EXACT = { rtol: 0, atol: 0 };

fixtureTest("reference logits and loss match golden adapter values", async () => {
  const model = await storiesModel();
  const g = await readGolden("stories260K-adapter.json");
  const adapter = goldenAdapter(g);

  assertClose(model.forward(g.tokens), g.base_logits.flat(), "base logits", GOLDEN_LOGITS);
  assertClose(
    model.forward(g.tokens, adapter),
    g.adapted_logits.flat(),
    "adapted logits",
    GOLDEN_LOGITS,
  );
  assertClose([model.loss(g.tokens, g.loss_mask)], [g.base_loss], "base loss", GOLDEN_LOSS);
  assertClose(
    [model.loss(g.tokens, g.loss_mask, adapter)],
    [g.adapted_loss],
    "adapted loss",
    GOLDEN_LOSS,
  );
});

fixtureTest("reference adapter gradients match golden central differences", async () => {
  const model = await storiesModel();
  const g = await readGolden("stories260K-adapter.json");
  const adapter = goldenAdapter(g);

  const grads = model.lossAndGrads(g.tokens, g.loss_mask, adapter);
  assertClose([grads.loss], [g.adapted_loss], "loss from lossAndGrads", GOLDEN_LOSS);
  assertClose(grads.prompts!, g.grad_adapter_prompt.flat(2), "prompt gradient", GOLDEN_GRAD);
  assertClose(grads.gates!, g.grad_adapter_gate.flat(), "gate gradient", GOLDEN_GRAD);
});

fixtureTest("reference with zero gates equals base model", async () => {
  const model = await storiesModel();
  const g = await readGolden("stories260K-adapter-init.json");
  const adapter = goldenAdapter(g);
  assert.ok(adapter.gates.every((x) => x === 0), "golden init gates are zero");

  const base = model.forward(g.tokens);
  const adapted = model.forward(g.tokens, adapter);
  assertClose(adapted, base, "adapted logits against own base logits", EXACT);
  assertClose(base, g.base_logits.flat(), "base logits", GOLDEN_LOGITS);
  assertClose(adapted, g.adapted_logits.flat(), "adapted logits", GOLDEN_LOGITS);

  const grads = model.lossAndGrads(g.tokens, g.loss_mask, adapter);
  assertClose([grads.loss], [g.adapted_loss], "loss", GOLDEN_LOSS);
  const nonzero = grads.prompts!.findIndex((x) => x !== 0);
  assert.equal(nonzero, -1, `prompt gradient element ${nonzero} is ${grads.prompts![nonzero]}`);
  assertClose(grads.gates!, g.grad_adapter_gate.flat(), "gate gradient", GOLDEN_GRAD);
});

fixtureTest("reference half rotary layout matches golden logits", async () => {
  const interleaved = await storiesModel();
  const g = await readGolden("stories260K-adapter.json");
  const c = interleaved.config;
  const D = c.dim / c.nHeads;
  const layers = interleaved.weights.layers.map((layer) => ({
    ...layer,
    wq: toHalfLayout(layer.wq, c.nHeads, D, c.dim),
    wk: toHalfLayout(layer.wk, c.nKvHeads, D, c.dim),
  }));
  const half = new RefModel(
    { ...c, ropeLayout: "half" },
    { ...interleaved.weights, layers },
  );

  // The permuted wk permutes the prompt keys within each head the same way as the queries. So the
  // prompt scores are unchanged, and the adapted logits check the prompt path in this layout.
  assertClose(
    half.forward(g.tokens),
    g.base_logits.flat(),
    "half layout base logits",
    GOLDEN_LOGITS,
  );
  assertClose(
    half.forward(g.tokens, goldenAdapter(g)),
    g.adapted_logits.flat(),
    "half layout adapted logits",
    GOLDEN_LOGITS,
  );
});

fixtureTest("reference weight gradients match central differences", async () => {
  const model = await storiesModel();
  const g = await readGolden("stories260K-adapter.json");
  const adapter = goldenAdapter(g);
  const rng = testRng();
  const w = model.weights;
  const C = model.config.dim;

  const grads = model.lossAndGrads(g.tokens, g.loss_mask, adapter, { allParams: true });
  const dw = grads.weights!;
  const adapterOnly = model.lossAndGrads(g.tokens, g.loss_mask, adapter);
  assertClose(grads.prompts!, adapterOnly.prompts!, "prompt gradient with allParams", {
    rtol: 1e-12,
    atol: 0,
  });
  assertClose(grads.gates!, adapterOnly.gates!, "gate gradient with allParams", {
    rtol: 1e-12,
    atol: 0,
  });

  const loss = () => model.loss(g.tokens, g.loss_mask, adapter);
  const what = (name: string) => `${name} gradient (seed ${rng.seed})`;
  // Rows of tokens in the sequence get gradient from the embedding lookup as well as from the
  // tied output projection.
  const inputRow = g.tokens[rng.int(g.tokens.length)];
  checkSampledGrad(what("tokEmbedding"), loss, w.tokEmbedding, dw.tokEmbedding, rng, 2, {}, [
    inputRow * C + rng.int(C),
    inputRow * C + rng.int(C),
  ]);
  checkSampledGrad(what("norm"), loss, w.norm, dw.norm, rng, 2);
  for (const key of LAYER_KEYS) {
    const l = rng.int(model.config.nLayers);
    checkSampledGrad(what(`layers.${l}.${key}`), loss, w.layers[l][key], dw.layers[l][key], rng, 3);
  }
  checkSampledGrad(what("prompts"), loss, adapter.prompts, grads.prompts!, rng, 4);
  checkSampledGrad(what("gates"), loss, adapter.gates, grads.gates!, rng, 3);
});

/** Builds a random model with 3 query heads per kv head, half rotary layout and untied output. */
function randomModel(rng: Rng): RefModel {
  const config: ModelConfig = {
    dim: 24,
    hiddenDim: 37,
    nLayers: 3,
    nHeads: 6,
    nKvHeads: 2,
    vocabSize: 29,
    maxSeqLen: 16,
    normEps: 1e-5,
    ropeTheta: 500,
    ropeLayout: "half",
    tiedEmbeddings: false,
    bosId: 1,
    eosIds: [2],
  };
  const C = config.dim;
  const kvDim = 8;
  const F = config.hiddenDim;
  const normal = (n: number, scale: number) => Float64Array.from(rng.normals(n, scale));
  const gain = (n: number) => Float64Array.from(rng.uniforms(n, 0.5, 1.5));
  const layers: RefLayer[] = Array.from({ length: config.nLayers }, () => ({
    attnNorm: gain(C),
    wq: normal(C * C, 0.4),
    wk: normal(kvDim * C, 0.4),
    wv: normal(kvDim * C, 0.3),
    wo: normal(C * C, 0.3),
    ffnNorm: gain(C),
    w1: normal(F * C, 0.3),
    w2: normal(C * F, 0.3),
    w3: normal(F * C, 0.3),
  }));
  const weights: RefWeights = {
    tokEmbedding: normal(config.vocabSize * C, 1),
    layers,
    norm: gain(C),
    output: normal(config.vocabSize * C, 0.3),
  };
  return new RefModel(config, weights);
}

Deno.test("reference gradients on grouped-query untied model", () => {
  const rng = testRng();
  const model = randomModel(rng);
  const T = 11;
  const tokens = Array.from({ length: T }, () => rng.int(model.config.vocabSize));
  const lossMask = Array.from({ length: T }, (_, t) => t >= 4 || t === 2);
  const K = 2, L = 3;
  const adapter: RefAdapter = {
    config: { layers: K, length: L },
    prompts: Float64Array.from(rng.normals(K * L * model.config.dim)),
    gates: Float64Array.from(rng.normals(K * model.config.nHeads, 0.5)),
  };

  const grads = model.lossAndGrads(tokens, lossMask, adapter, { allParams: true });
  const dw = grads.weights!;
  const loss = () => model.loss(tokens, lossMask, adapter);
  const what = (name: string) => `${name} gradient (seed ${rng.seed})`;
  const w = model.weights;

  checkSampledGrad(what("prompts"), loss, adapter.prompts, grads.prompts!, rng, 1000);
  checkSampledGrad(what("gates"), loss, adapter.gates, grads.gates!, rng, 1000);
  checkSampledGrad(what("tokEmbedding"), loss, w.tokEmbedding, dw.tokEmbedding, rng, 6, {}, [
    tokens[3] * 24 + 5,
  ]);
  checkSampledGrad(what("output"), loss, w.output!, dw.output!, rng, 6);
  checkSampledGrad(what("norm"), loss, w.norm, dw.norm, rng, 4);
  for (let l = 0; l < model.config.nLayers; l++) {
    for (const key of LAYER_KEYS) {
      checkSampledGrad(
        what(`layers.${l}.${key}`),
        loss,
        w.layers[l][key],
        dw.layers[l][key],
        rng,
        4,
      );
    }
  }
});

Deno.test("reference bias-tuning gradients match central differences", () => {
  const rng = testRng();
  const model = randomModel(rng);
  const c = model.config;
  const T = 9;
  const tokens = Array.from({ length: T }, () => rng.int(c.vocabSize));
  const lossMask = Array.from({ length: T }, (_, t) => t >= 3);
  const K = 2, L = 3;
  const adapter: RefAdapter = {
    config: { layers: K, length: L, bias: true },
    prompts: Float64Array.from(rng.normals(K * L * c.dim)),
    gates: Float64Array.from(rng.normals(K * c.nHeads, 0.5)),
    biases: Float64Array.from(rng.normals(K * biasBlockSize(c), 0.3)),
  };
  const grads = model.lossAndGrads(tokens, lossMask, adapter);
  const loss = () => model.loss(tokens, lossMask, adapter);
  const what = (name: string) => `${name} gradient (seed ${rng.seed})`;
  // Every bias of both blocks, so each linear layer's column sums are checked, including the lowest
  // adapted block, where backward stops.
  checkSampledGrad(what("biases"), loss, adapter.biases!, grads.biases!, rng, 10_000);
  checkSampledGrad(what("prompts"), loss, adapter.prompts, grads.prompts!, rng, 20);
  checkSampledGrad(what("gates"), loss, adapter.gates, grads.gates!, rng, 6);

  // Zero biases give the model without bias tuning.
  const zero = { ...adapter, biases: new Float64Array(adapter.biases!.length) };
  const plain = { ...adapter, config: { layers: K, length: L } };
  assertClose(model.forward(tokens, zero), model.forward(tokens, plain), "zero biases", {
    rtol: 0,
    atol: 0,
  });
});

Deno.test("reference rejects invalid inputs", () => {
  const model = randomModel(new Rng(7));
  const tokens = [1, 2, 3, 4];
  const mask = [false, true, true, true];
  const adapter = (layers: number, length: number, prompts: number, gates: number) => ({
    config: { layers, length },
    prompts: new Float64Array(prompts),
    gates: new Float64Array(gates),
  });

  assert.throws(() => model.forward([1, 29]), /token 1 is 29, expected an integer id in \[0, 29\)/);
  assert.throws(() => model.forward([]), /token sequence is empty/);
  assert.throws(
    () => model.forward(new Array(17).fill(1)),
    /17 tokens exceed the model's maximum sequence length 16/,
  );
  assert.throws(() => model.loss(tokens, [true, true]), /loss mask has 2 entries for 4 tokens/);
  assert.throws(() => model.loss(tokens, [true, false, false, false]), /selects no target/);
  assert.throws(
    () => model.forward(tokens, adapter(4, 2, 4 * 2 * 24, 4 * 6)),
    /adapter layers must be an integer from 1 to 3, got 4/,
  );
  assert.throws(
    () => model.forward(tokens, adapter(1, 2, 24, 6)),
    /adapter prompts has 24 values, expected 48/,
  );
  assert.throws(
    () => model.lossAndGrads(tokens, mask, adapter(1, 2, 48, 5)),
    /adapter gates has 5 values, expected 6/,
  );

  const w = model.weights;
  assert.throws(
    () => new RefModel(model.config, { ...w, output: null }),
    /tiedEmbeddings is false but the output weight is missing/,
  );
  const shortLayer = { ...w.layers[1], wk: new Float64Array(10) };
  assert.throws(
    () => new RefModel(model.config, { ...w, layers: [w.layers[0], shortLayer, w.layers[2]] }),
    /layers\.1\.wk has 10 values, expected 192 \(shape \[8, 24\]\)/,
  );
});

Deno.test("reference fromWeights reads and checks shapes", async () => {
  const model = randomModel(new Rng(3));
  const source = (name: string, shape: number[], values: Float64Array): WeightSource => ({
    name,
    shape,
    dtype: "f32",
    file: "synthetic.bin",
    readF32: () => Promise.resolve(Float32Array.from(values)),
  });
  const w = model.weights;
  const C = model.config.dim;
  const layers = w.layers.map((layer, l) => {
    const s = {} as LayerWeights;
    for (const key of LAYER_KEYS) {
      s[key] = source(`layers.${l}.${key}`, [layer[key].length / C, C], layer[key]);
    }
    s.attnNorm = source(`layers.${l}.attnNorm`, [C], layer.attnNorm);
    s.ffnNorm = source(`layers.${l}.ffnNorm`, [C], layer.ffnNorm);
    s.w2 = source(`layers.${l}.w2`, [C, model.config.hiddenDim], layer.w2);
    return s;
  });
  const weights: ModelWeights = {
    config: model.config,
    tokEmbedding: source("tok", [29, C], w.tokEmbedding),
    layers,
    norm: source("norm", [C], w.norm),
    output: source("output", [29, C], w.output!),
    format: "synthetic",
    path: "synthetic.bin",
  };
  const loaded = await RefModel.fromWeights(weights);
  const asF32 = (x: Float64Array) => Float64Array.from(Float32Array.from(x));
  assertClose(loaded.weights.tokEmbedding, asF32(w.tokEmbedding), "tokEmbedding", EXACT);
  assertClose(loaded.weights.output!, asF32(w.output!), "output", EXACT);
  assertClose(loaded.weights.norm, asF32(w.norm), "norm", EXACT);
  for (let l = 0; l < model.config.nLayers; l++) {
    for (const key of LAYER_KEYS) {
      assertClose(loaded.weights.layers[l][key], asF32(w.layers[l][key]), `${l}.${key}`, EXACT);
    }
  }

  layers[2].wv = source("layers.2.wv", [C, 8], w.layers[2].wv);
  await assert.rejects(
    () => RefModel.fromWeights(weights),
    /synthetic\.bin: tensor layers\.2\.wv has shape \[24, 8\], the model config expects \[8, 24\]/,
  );
});
