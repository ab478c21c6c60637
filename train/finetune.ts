/**
 * Fine-tuning end to end: open the base model, read the data, create or resume the adapter, train,
 * and write the adapter, checkpoints, metrics, a loss plot and a summary into the output folder.
 *
 *     <out>/adapter.safetensors   the final adapter (what `generate --adapter` takes)
 *     <out>/checkpoints/step-N/   resumable checkpoints (the newest `keep`)
 *     <out>/metrics.jsonl         one JSON record per logged step
 *     <out>/loss.svg              training and validation loss curves
 *     <out>/summary.json          settings, counts, timings and final losses
 */
import { loadTrainingData, summarizeStats } from "../data/dataset.ts";
import type { TemplateName } from "../data/templates.ts";
import {
  type Adapter,
  adapterParameterCount,
  defaultAdapterLayers,
  initAdapter,
} from "../model/adapter.ts";
import { encodeAdapter, readAdapterFile, saveAdapter } from "../model/adapter_file.ts";
import type { WeightStorage } from "../model/gpu_weights.ts";
import { type OpenedModel, openModel } from "../model/open.ts";
import type { ModelConfig } from "../model/config.ts";
import { randomWeights } from "../model/init.ts";
import { encodeHfModel, saveHfModel } from "../model/save_hf.ts";
import { numel } from "../kernels/device.ts";
import { TrainGraph } from "../model/train_graph.ts";
import { writeFileAtomic } from "./atomic.ts";
import {
  encodeMoments,
  listCheckpoints,
  readMoments,
  readState,
  type TrainState,
  writeCheckpoint,
} from "./checkpoint.ts";
import { MetricsLog, readMetrics } from "./metrics.ts";
import { lossPlotSvg } from "./plot.ts";
import { scaledLearningRate } from "./schedule.ts";
import { Trainer, type TrainResult } from "./trainer.ts";

/** Options of `finetune`, as the command line gives them. */
export interface FinetuneOptions {
  model: string;
  tokenizer?: string;
  weights?: WeightStorage;
  data: string;
  valData?: string;
  valFraction?: number;
  out: string;
  adapterLayers?: number;
  adapterLen: number;
  /** Also train a bias on every linear layer of the adapted blocks (LLaMA-Adapter V2). */
  bias?: boolean;
  epochs: number;
  maxSteps?: number;
  batchSize: number;
  gradAccum: number;
  lr?: number;
  minLr: number;
  warmupSteps?: number;
  warmupEpochs?: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  clipGrad: number;
  /** Maximum example length in tokens; default 512, or the model's context if that is shorter. */
  maxSeqLen?: number;
  onLong: "truncate" | "skip";
  onBadRecord: "skip" | "fail";
  template: TemplateName;
  seed: number;
  logEvery: number;
  evalEvery: number;
  saveEvery: number;
  keep: number;
  resume: boolean;
  recompute: boolean;
  quiet?: boolean;
  /** Stop after this many steps with a checkpoint, as an interrupted run would (for tests). */
  stopAtStep?: number;
  /** Train every weight instead of an adapter; the result is a model folder `<out>/model`. */
  full?: boolean;
  /** Start from random weights of this architecture instead of `model` (pretraining). */
  init?: { config: ModelConfig; seed: number };
}

/** Result of `finetune`: the output path, the training result and the summary. */
export interface FinetuneResult {
  adapterPath: string;
  result: TrainResult;
  summary: Record<string, unknown>;
}

/** Settings that must match when resuming. */
function resumeKey(o: FinetuneOptions, layers: number): Record<string, unknown> {
  return {
    data: o.data,
    adapterLayers: layers,
    adapterLen: o.adapterLen,
    bias: o.bias ?? false,
    batchSize: o.batchSize,
    gradAccum: o.gradAccum,
    maxSeqLen: o.maxSeqLen ?? null,
    seed: o.seed,
    template: o.template,
  };
}

/** Returns the newest checkpoint folder in `out`, or throws when there is none. */
async function newestCheckpoint(out: string): Promise<string> {
  const names = await listCheckpoints(out);
  if (!names.length) {
    throw new Error(`--resume: no checkpoint found in ${out}/checkpoints; start without --resume`);
  }
  return `${out}/checkpoints/${names[names.length - 1]}`;
}

/**
 * Fine-tunes an adapter (or, with `full`, every weight); see the module comment for what is
 * written. A full run resumes from the weights stored in its newest checkpoint.
 */
export async function finetune(o: FinetuneOptions): Promise<FinetuneResult> {
  if (o.full && o.weights && o.weights !== "auto" && o.weights !== "f32") {
    throw new Error(`--full trains every weight in f32; --weights ${o.weights} is not possible`);
  }
  const tokenizer = o.tokenizer ?? o.model;
  let opened: OpenedModel;
  if (o.full && o.resume) {
    opened = await openModel({
      model: await newestCheckpoint(o.out),
      tokenizer,
      weights: "f32",
      log: !o.quiet,
    });
  } else if (o.init) {
    opened = await openModel({
      model: o.model,
      checkpoint: randomWeights(o.init.config, o.init.seed),
      tokenizer,
      weights: "f32",
      log: !o.quiet,
    });
  } else {
    opened = await openModel({
      model: o.model,
      tokenizer,
      weights: o.full ? "f32" : o.weights,
      log: !o.quiet,
    });
  }
  try {
    return await finetuneOpened(o, opened);
  } finally {
    opened.gpu.destroy();
  }
}

async function finetuneOpened(o: FinetuneOptions, opened: OpenedModel): Promise<FinetuneResult> {
  const log = (m: string) => {
    if (!o.quiet) console.error(m);
  };
  const { gpu, llama, checkpoint, fingerprint } = opened;
  const tokenizer = opened.tokenizer!;
  const config = checkpoint.config;
  const maxSeqLen = o.maxSeqLen ?? Math.min(512, config.maxSeqLen);
  if (maxSeqLen > config.maxSeqLen) {
    throw new Error(
      `--max-seq-len ${maxSeqLen} exceeds the model's context of ${config.maxSeqLen} tokens`,
    );
  }

  const data = await loadTrainingData(o.data, {
    tokenizer,
    maxSeqLen,
    template: o.template,
    overLength: o.onLong,
    onBadRecord: o.onBadRecord,
    valFraction: o.valData ? 0 : o.valFraction,
    valPath: o.valData,
    seed: o.seed,
    onReport: (bad) => log(`warning: ${bad.file}:${bad.line}: ${bad.message} (skipped)`),
  });
  log(`data ${o.data}: ${summarizeStats(data.trainStats, maxSeqLen)}`);
  if (data.valStats) {
    log(`validation ${o.valData}: ${summarizeStats(data.valStats, maxSeqLen, true)}`);
  }

  const full = o.full ?? false;
  const layers = full ? config.nLayers : o.adapterLayers ?? defaultAdapterLayers(config);
  const adapterConfig = { layers, length: o.adapterLen, bias: o.bias ?? false };
  await Deno.mkdir(o.out, { recursive: true });

  // A fresh adapter, or the newest checkpoint when resuming (a full run opened its weights).
  let adapter: Adapter | null = full ? null : initAdapter(config, adapterConfig, o.seed);
  let resumeDir: string | null = null;
  let state: TrainState | null = null;
  if (o.resume) {
    resumeDir = await newestCheckpoint(o.out);
    state = await readState(resumeDir);
    const expected = resumeKey(o, layers);
    for (const [k, v] of Object.entries(expected)) {
      // Checkpoints from before bias tuning have no `bias` setting: they were written without.
      const stored = k === "bias" ? state.settings[k] ?? false : state.settings[k];
      if (JSON.stringify(stored) !== JSON.stringify(v)) {
        throw new Error(
          `--resume: checkpoint ${resumeDir} was written with ${k} = ` +
            `${JSON.stringify(stored)}, this run has ${JSON.stringify(v)}; ` +
            `use the same options or a new --out`,
        );
      }
    }
    if (!full) adapter = (await readAdapterFile(`${resumeDir}/adapter.safetensors`)).adapter;
    log(`resuming from ${resumeDir} at step ${state.step}`);
  }
  llama.setAdapter(adapter);

  const graph = new TrainGraph(llama, {
    maxBatch: o.batchSize,
    maxSeqLen: Math.max(
      2,
      ...data.train.map((e) => e.ids.length),
      ...data.val.map((e) => e.ids.length),
    ),
    recompute: o.recompute,
    full,
  });

  const effectiveBatch = o.batchSize * o.gradAccum;
  const lr = o.lr ?? scaledLearningRate(effectiveBatch);
  const stepsPerEpoch = Math.max(
    1,
    Math.ceil(Math.ceil(data.train.length / o.batchSize) / o.gradAccum),
  );
  const totalSteps = o.maxSteps ?? Math.max(1, Math.round(o.epochs * stepsPerEpoch));
  // The recipe warms up for 2 of 5 epochs. By default the same share (40%, at most 2 epochs) of
  // the run is warm-up, measured in the run's own steps so that --max-steps shortens it too.
  const warmupSteps = o.warmupSteps ??
    (o.warmupEpochs !== undefined
      ? Math.round(o.warmupEpochs * stepsPerEpoch)
      : Math.round(totalSteps * (o.epochs > 0 ? Math.min(2, 0.4 * o.epochs) / o.epochs : 0.4)));

  const trainer = new Trainer(graph, data.train, {
    batchSize: o.batchSize,
    gradAccum: o.gradAccum,
    schedule: { lr, minLr: o.minLr, warmupSteps: Math.min(warmupSteps, totalSteps), totalSteps },
    weightDecay: o.weightDecay,
    beta1: o.beta1,
    beta2: o.beta2,
    eps: 1e-8,
    clipGrad: o.clipGrad,
    seed: o.seed,
    logEvery: o.logEvery,
    evalEvery: o.evalEvery,
    saveEvery: o.saveEvery,
    evalBatchSize: o.batchSize,
    stopAtStep: o.stopAtStep,
  });
  if (resumeDir) {
    if (state!.settings.dataFingerprint !== trainer.sampler.fingerprint()) {
      throw new Error(
        `--resume: the training examples differ from those of checkpoint ${resumeDir} (the data ` +
          `file, tokenizer or --max-seq-len changed); use the same data or a new --out`,
      );
    }
    trainer.restoreMoments(await readMoments(`${resumeDir}/optimizer.safetensors`));
  }

  state ??= {
    step: 0,
    position: { epoch: 0, index: 0 },
    totalSteps,
    settings: { ...resumeKey(o, layers), dataFingerprint: trainer.sampler.fingerprint() },
    bestValLoss: null,
    tokens: 0,
    seconds: 0,
  };
  state.totalSteps = totalSteps;

  const paramCount = full
    ? graph.parameters().reduce((n, t) => n + numel(t.shape), 0)
    : adapterParameterCount(config, adapterConfig);
  const warmup = trainer.settings.schedule.warmupSteps;
  log(
    (full
      ? `full fine-tuning: all ${config.nLayers} blocks, `
      : `adapter: ${layers} of ${config.nLayers} blocks, prompt length ${o.adapterLen}` +
        `${adapterConfig.bias ? ", bias tuning" : ""}, `) +
      `${paramCount} trainable parameters; ${totalSteps} steps of ${effectiveBatch} examples, ` +
      `peak lr ${lr.toExponential(3)}, ${warmup} warm-up step${warmup === 1 ? "" : "s"}`,
  );

  const meta = (step: number) => ({
    template: data.template,
    baseModel: o.model,
    fingerprint,
    extra: { step: String(step), data: o.data, tokenizer: tokenizer.source },
  });
  const metrics = await MetricsLog.open(`${o.out}/metrics.jsonl`, o.resume);
  let result: TrainResult;
  try {
    result = await trainer.run(state, data.val, metrics, {
      save: async (s, moments) => {
        const m: { name: string; shape: number[]; m: Float32Array; v: Float32Array }[] = [];
        for (const x of moments) {
          m.push({
            name: x.name,
            shape: x.shape,
            m: await gpu.readF32(x.m),
            v: await gpu.readF32(x.v),
          });
        }
        const files = [{ name: "optimizer.safetensors", bytes: encodeMoments(m) }];
        if (full) {
          const model = await encodeHfModel(gpu, llama.weights);
          files.push({ name: "model.safetensors", bytes: model.safetensors });
          files.push({ name: "config.json", bytes: new TextEncoder().encode(model.config) });
        } else {
          const current = await llama.readAdapter();
          files.push({
            name: "adapter.safetensors",
            bytes: encodeAdapter(config, current, meta(s.step)),
          });
        }
        await writeCheckpoint(o.out, s, files, o.keep);
      },
      log,
    }, !o.quiet);
  } finally {
    metrics.close();
  }

  const adapterPath = full ? `${o.out}/model` : `${o.out}/adapter.safetensors`;
  if (result.stoppedBy === "done" && result.state.step === totalSteps) {
    if (full) {
      await saveHfModel(adapterPath, gpu, llama.weights);
      await copyTokenizer(tokenizer.source, adapterPath);
    } else {
      await saveAdapter(adapterPath, config, await llama.readAdapter(), meta(result.state.step));
    }
  }

  const records = await readMetrics(`${o.out}/metrics.jsonl`);
  const train = records.filter((r) => typeof r.loss === "number")
    .map((r) => [r.step as number, r.loss as number] as [number, number]);
  const val = records.filter((r) => typeof r.valLoss === "number")
    .map((r) => [r.step as number, r.valLoss as number] as [number, number]);
  await writeFileAtomic(
    `${o.out}/loss.svg`,
    lossPlotSvg(`LLaMA-Adapter fine-tuning: ${o.data.split("/").pop()}`, [
      { name: "training", color: "#1f77b4", points: train },
      { name: "validation", color: "#d62728", points: val },
    ]),
  );
  const summary = {
    model: o.model,
    data: o.data,
    adapter: adapterPath,
    adapterLayers: layers,
    adapterLen: o.adapterLen,
    bias: adapterConfig.bias,
    trainableParameters: paramCount,
    steps: result.state.step,
    examples: data.train.length,
    validationExamples: data.val.length,
    tokens: result.state.tokens,
    seconds: result.state.seconds,
    tokensPerSecond: result.state.tokens / Math.max(1e-9, result.state.seconds),
    finalTrainLoss: train.length ? train[train.length - 1][1] : null,
    finalValLoss: result.finalValLoss,
    bestValLoss: result.state.bestValLoss,
    stoppedBy: result.stoppedBy,
    gpu: gpu.info.description,
  };
  await writeFileAtomic(`${o.out}/summary.json`, JSON.stringify(summary, null, 2) + "\n");
  if (result.stoppedBy === "nan") {
    throw new Error(
      `training stopped: the loss is not finite at step ${result.state.step}; the last good ` +
        `checkpoint is in ${o.out}/checkpoints`,
    );
  }
  const finished = result.state.step === totalSteps;
  log(
    `${finished ? "done" : "stopped"}: ${result.state.step} of ${totalSteps} steps in ` +
      `${result.state.seconds.toFixed(1)} s (${summary.tokensPerSecond.toFixed(0)} tokens/s); ` +
      `final training loss ${summary.finalTrainLoss?.toFixed(4) ?? "-"}, validation loss ` +
      `${result.finalValLoss?.toFixed(4) ?? "-"}; ` +
      (finished
        ? `${full ? "model" : "adapter"} written to ${adapterPath}`
        : `checkpoint in ${o.out}/checkpoints; continue with --resume`),
  );
  return { adapterPath, result, summary };
}

/** Copies a tokenizer file into a model folder under its conventional name. */
async function copyTokenizer(source: string, dir: string): Promise<void> {
  const name = source.endsWith(".model")
    ? "tokenizer.model"
    : source.endsWith(".json")
    ? "tokenizer.json"
    : "tokenizer.bin";
  await Deno.copyFile(source, `${dir}/${name}`);
}
