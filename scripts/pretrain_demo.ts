/**
 * Pretrains the demo base model from random weights on the demo corpus (never on the instruction
 * set), with the project's own kernels and trainer, and writes it to `demo/model` in the Hugging
 * Face layout beside the demo tokenizer.
 *
 *     deno run -A scripts/pretrain_demo.ts [--epochs N] [--seed S] [--out DIR]
 *
 * The architecture is a small LLaMA: RMSNorm, rotary embedding, SwiGLU and grouped-query
 * attention, with the embedding tied to the output projection. Run `scripts/make_demo_data.ts`
 * first if `demo/data` or `demo/model/tokenizer.bin` are missing.
 */
import { Command } from "commander";
import { DEMO_CONFIG } from "./pretrain_demo_config.ts";
import { finetune } from "../train/finetune.ts";

const root = new URL("../", import.meta.url).pathname;

const program = new Command()
  .name("pretrain_demo")
  .description("pretrain the demo base model on demo/data/corpus_train.jsonl")
  .option("--epochs <n>", "epochs over the corpus", Number, 2)
  .option("--max-steps <n>", "stop after this many optimiser steps", Number)
  .option("--batch-size <n>", "sequences per step", Number, 16)
  .option("--lr <rate>", "peak learning rate", Number, 4e-3)
  .option("--seed <n>", "seed of the initial weights and data order", Number, 1)
  .option("--work <dir>", "folder for checkpoints and metrics", `${root}runs/pretrain-demo`)
  .option("--out <dir>", "folder the finished model is copied to", `${root}demo/model`)
  .option("--resume", "continue from the newest checkpoint in --work", false);
program.parse(["deno", "pretrain_demo", ...Deno.args]);
const o = program.opts();

const started = performance.now();
const { result, adapterPath } = await finetune({
  model: `${root}demo/model`,
  tokenizer: `${root}demo/model/tokenizer.bin`,
  init: { config: DEMO_CONFIG, seed: o.seed },
  full: true,
  data: `${root}demo/data/corpus_train.jsonl`,
  valData: `${root}demo/data/corpus_val.jsonl`,
  out: o.work,
  adapterLen: 1,
  epochs: o.epochs,
  maxSteps: o.maxSteps,
  batchSize: o.batchSize,
  gradAccum: 1,
  lr: o.lr,
  minLr: o.lr / 10,
  warmupSteps: 50,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  clipGrad: 1,
  maxSeqLen: DEMO_CONFIG.maxSeqLen,
  onLong: "truncate",
  onBadRecord: "fail",
  template: "none",
  seed: o.seed,
  logEvery: 20,
  evalEvery: 250,
  saveEvery: 200,
  keep: 1,
  resume: o.resume,
  recompute: false,
});
if (result.state.step === result.state.totalSteps) {
  await Deno.mkdir(o.out, { recursive: true });
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(`${adapterPath}/${f}`, `${o.out}/${f}`);
  }
  const minutes = (performance.now() - started) / 60000;
  console.error(
    `demo model written to ${o.out} after ${minutes.toFixed(1)} minutes; validation loss ` +
      `${result.finalValLoss?.toFixed(4)}`,
  );
}
