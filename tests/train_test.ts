/**
 * Fine-tuning end to end on the aidreams260K checkpoint with generated instruction records:
 * validation loss falls, the saved adapter reloads to the same logits, a stopped and resumed run
 * ends with the same adapter as an uninterrupted one, and adapters are checked against their base
 * model.
 */
import assert from "node:assert/strict";
import { loadDataset } from "../data/dataset.ts";
import { Rng } from "../model/rng.ts";
import { initAdapter, modelFingerprint } from "../model/adapter.ts";
import { loadAdapter, readAdapterFile } from "../model/adapter_file.ts";
import { openModel } from "../model/open.ts";
import { Session } from "../model/session.ts";
import { TrainGraph } from "../model/train_graph.ts";
import { loadModel } from "../model/load.ts";
import { evaluateLoss } from "../train/evaluate.ts";
import { finetune, type FinetuneOptions } from "../train/finetune.ts";
import { listCheckpoints } from "../train/checkpoint.ts";
import { fixture, fixtureTest, gpuFixtureTest, testGpu } from "./helpers.ts";

const MODEL = "models/aidreams260K.bin";
const WORDS = [
  "pixels",
  "petals",
  "dream",
  "light",
  "river",
  "stone",
  "cloud",
  "garden",
  "music",
  "shadow",
  "window",
  "forest",
];

/** Writes `n` seeded instruction records whose answer is a word of the instruction. */
async function writeRecords(path: string, n: number, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const a = WORDS[rng.int(WORDS.length)];
    const b = WORDS[rng.int(WORDS.length)];
    const record = rng.int(2) === 0
      ? { instruction: `Repeat the word ${a}.`, input: "", output: a }
      : { instruction: "Say the last word.", input: `${a} and ${b}`, output: b };
    lines.push(JSON.stringify(record));
  }
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
}

async function dataDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "llama-adapter-train-" });
  await writeRecords(`${dir}/train.jsonl`, 160, 1);
  await writeRecords(`${dir}/val.jsonl`, 32, 2);
  return dir;
}

function options(dir: string, out: string, extra: Partial<FinetuneOptions> = {}): FinetuneOptions {
  return {
    model: fixture(MODEL),
    data: `${dir}/train.jsonl`,
    valData: `${dir}/val.jsonl`,
    out,
    adapterLen: 6,
    epochs: 1,
    batchSize: 8,
    gradAccum: 1,
    lr: 2e-2,
    minLr: 0,
    warmupSteps: 2,
    weightDecay: 0.02,
    beta1: 0.9,
    beta2: 0.95,
    clipGrad: 1,
    maxSeqLen: 40,
    onLong: "truncate",
    onBadRecord: "fail",
    template: "none",
    seed: 3,
    logEvery: 5,
    evalEvery: 0,
    saveEvery: 0,
    keep: 2,
    resume: false,
    recompute: false,
    quiet: true,
    ...extra,
  };
}

gpuFixtureTest("fine-tuning lowers validation loss and reloads exactly", async (gpu) => {
  const dir = await dataDir();
  const out = `${dir}/run`;

  // Validation loss of the untouched model: an adapter with zero gates is the base model.
  const opened = await openModel({ model: fixture(MODEL), gpu });
  opened.llama.setAdapter(initAdapter(opened.llama.config, { layers: 2, length: 6 }, 3));
  const val = await loadDataset(`${dir}/val.jsonl`, {
    tokenizer: opened.tokenizer!,
    maxSeqLen: 40,
    template: "none",
  });
  const evalGraph = new TrainGraph(opened.llama, { maxBatch: 8, maxSeqLen: 40, evalOnly: true });
  const before = await evaluateLoss(evalGraph, val.train, 8);

  const { result, adapterPath, summary } = await finetune(
    options(dir, out, { epochs: 2, lr: 5e-2 }),
  );
  assert.equal(result.stoppedBy, "done");
  assert.ok(result.finalValLoss !== null);
  assert.ok(
    result.finalValLoss! < before.loss - 0.3,
    `validation loss ${result.finalValLoss} should be well below the base model's ${before.loss}`,
  );
  assert.equal(summary.steps, 40);
  for (const f of ["adapter.safetensors", "metrics.jsonl", "loss.svg", "summary.json"]) {
    assert.ok((await Deno.stat(`${out}/${f}`)).size > 0, `${f} written`);
  }

  // The saved adapter, loaded onto a freshly opened model, gives the same logits and loss.
  const reloaded = await openModel({ model: fixture(MODEL), adapter: adapterPath, gpu });
  const graph = new TrainGraph(reloaded.llama, { maxBatch: 8, maxSeqLen: 40, evalOnly: true });
  const after = await evaluateLoss(graph, val.train, 8);
  assert.ok(
    Math.abs(after.loss - result.finalValLoss!) < 1e-6,
    `reloaded adapter loss ${after.loss} differs from the trained ${result.finalValLoss}`,
  );
  const ids = val.train[0].ids;
  const a = await Session.create(reloaded.llama).logitsAll(ids);
  const trained = await openModel({ model: fixture(MODEL), gpu });
  trained.llama.setAdapter((await readAdapterFile(adapterPath)).adapter);
  const b = await Session.create(trained.llama).logitsAll(ids);
  assert.deepEqual(a, b);
  assert.equal((await readAdapterFile(adapterPath)).metadata.template, "none");
});

gpuFixtureTest("stopped and resumed run equals an uninterrupted run", async () => {
  await testGpu();
  const dir = await dataDir();
  const straight = await finetune(options(dir, `${dir}/straight`, { saveEvery: 4 }));
  const first = await finetune(options(dir, `${dir}/resumed`, { saveEvery: 4, stopAtStep: 8 }));
  assert.equal(first.result.state.step, 8);
  assert.deepEqual(await listCheckpoints(`${dir}/resumed`), ["step-000004", "step-000008"]);
  const second = await finetune(options(dir, `${dir}/resumed`, { saveEvery: 4, resume: true }));
  assert.equal(second.result.state.step, straight.result.state.step);
  const x = await readAdapterFile(straight.adapterPath);
  const y = await readAdapterFile(second.adapterPath);
  assert.deepEqual(y.adapter.prompts, x.adapter.prompts, "prompts after resume");
  assert.deepEqual(y.adapter.gates, x.adapter.gates, "gates after resume");
  assert.deepEqual(await listCheckpoints(`${dir}/resumed`), ["step-000016", "step-000020"]);

  await assert.rejects(
    finetune(options(dir, `${dir}/resumed`, { resume: true, batchSize: 4 })),
    /batchSize/,
  );
});

gpuFixtureTest("non-finite loss stops and keeps the last checkpoint", async () => {
  const dir = await dataDir();
  const out = `${dir}/nan`;
  await finetune(options(dir, out, { saveEvery: 2, stopAtStep: 2 }));
  await assert.rejects(
    finetune(options(dir, out, { saveEvery: 2, resume: true, lr: 1e38, warmupSteps: 0 })),
    /not finite/,
  );
  assert.deepEqual(await listCheckpoints(out), ["step-000002"]);
});

fixtureTest("adapter for another base model is rejected", async () => {
  const dir = await dataDir();
  const { adapterPath } = await finetune(options(dir, `${dir}/run`, { maxSteps: 1 }));

  const stories = await loadModel(fixture("models/stories260K.bin"));
  await assert.rejects(
    loadAdapter(adapterPath, stories.config, await modelFingerprint(stories)),
    /another base model/,
  );

  // Same architecture, other weights: a copy of aidreams260K with a rescaled embedding.
  const original = await Deno.readFile(fixture(MODEL));
  const copy = original.slice();
  const floats = new Float32Array(copy.buffer, 28, 64 * 512);
  for (let i = 0; i < floats.length; i++) floats[i] *= 1.5;
  await Deno.writeFile(`${dir}/other.bin`, copy);
  const other = await loadModel(`${dir}/other.bin`);
  await assert.rejects(
    loadAdapter(adapterPath, other.config, await modelFingerprint(other)),
    /another base model/,
  );

  const same = await loadModel(fixture(MODEL));
  await loadAdapter(adapterPath, same.config, await modelFingerprint(same));
});
