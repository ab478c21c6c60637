/**
 * The training loop: AdamW over the adapter (or every weight), the recipe's learning-rate schedule,
 * gradient accumulation, periodic validation, atomic checkpoints with exact resume, metrics and a
 * loss plot.
 *
 * GPU work for many optimiser steps is recorded without waiting; the loss is read back only every
 * `logEvery` steps (each readback costs about 12 ms in Deno), and before every checkpoint, so a NaN
 * never reaches a saved checkpoint.
 */
import { type BatchPosition, BatchSampler, type SampledBatch } from "../data/batch.ts";
import type { Example } from "../data/dataset.ts";
import type { Tensor } from "../kernels/device.ts";
import { adamwStep, clipScale, sumSquares } from "../kernels/optimizer.ts";
import type { Llama } from "../model/llama.ts";
import type { TrainGraph } from "../model/train_graph.ts";
import { evaluateLoss } from "./evaluate.ts";
import { learningRate, type Schedule } from "./schedule.ts";
import type { MetricsLog } from "./metrics.ts";
import { Progress } from "./progress.ts";
import type { TrainState } from "./checkpoint.ts";

/** Hyperparameters of a run. */
export interface TrainSettings {
  batchSize: number;
  gradAccum: number;
  schedule: Schedule;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Global gradient-norm clip; 0 turns clipping off. */
  clipGrad: number;
  seed: number;
  logEvery: number;
  /** Validation every N steps; 0: only at the end. */
  evalEvery: number;
  /** Checkpoint every N steps; 0: only at the end. */
  saveEvery: number;
  /** Micro-batch size for validation. */
  evalBatchSize: number;
  /** Stop (with a checkpoint) after this many steps although the schedule runs longer. */
  stopAtStep?: number;
}

/** Optimiser state of one parameter tensor. */
interface Moments {
  name: string;
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
}

/** A record written to the metrics file. */
export interface StepMetrics {
  step: number;
  epoch: number;
  loss?: number;
  valLoss?: number;
  lr: number;
  tokensPerSecond?: number;
  elapsedSeconds: number;
}

/** Callbacks through which the loop saves checkpoints. */
export interface TrainHooks {
  /** Saves a checkpoint of the current parameters, moments (read back by the caller) and state. */
  save(
    state: TrainState,
    moments: { name: string; shape: number[]; m: Tensor; v: Tensor }[],
  ): Promise<void>;
  /** Called for messages to print above the progress bar. */
  log(message: string): void;
}

/** Result of `runTraining`. */
export interface TrainResult {
  state: TrainState;
  /** Loss per logged step. */
  history: StepMetrics[];
  finalValLoss: number | null;
  stoppedBy: "done" | "nan";
}

/** Runs training from `state` to `state.totalSteps`. */
export class Trainer {
  readonly graph: TrainGraph;
  readonly model: Llama;
  readonly settings: TrainSettings;
  readonly sampler: BatchSampler;
  readonly moments: Moments[];
  #sumSq: Tensor;
  #scale: Tensor;

  constructor(graph: TrainGraph, train: readonly Example[], settings: TrainSettings) {
    this.graph = graph;
    this.model = graph.model;
    this.settings = settings;
    const gpu = graph.gpu;
    this.sampler = new BatchSampler(train, {
      batchSize: settings.batchSize,
      seed: settings.seed,
      shuffle: true,
      bucketByLength: true,
    });
    const params = graph.parameters();
    const grads = graph.gradients();
    this.moments = params.map((p, i) => ({
      name: p.label,
      param: p,
      grad: grads[i],
      m: gpu.tensor(p.shape, "f32", `adam.m.${p.label}`),
      v: gpu.tensor(p.shape, "f32", `adam.v.${p.label}`),
    }));
    this.#sumSq = gpu.tensor([1], "f32", "grad.sumSquares");
    this.#scale = gpu.tensor([1], "f32", "grad.clipScale");
  }

  /** Optimiser steps per epoch. */
  get stepsPerEpoch(): number {
    return Math.max(1, Math.ceil(this.sampler.batchesPerEpoch / this.settings.gradAccum));
  }

  /** Loads saved moments (by parameter name); throws naming a missing or mismatched tensor. */
  restoreMoments(saved: Map<string, { m: Float32Array; v: Float32Array }>): void {
    for (const x of this.moments) {
      const s = saved.get(x.name);
      if (!s) throw new Error(`optimizer state has no moments for '${x.name}'`);
      if (s.m.length !== x.m.buffer.size / 4 || s.v.length !== x.v.buffer.size / 4) {
        throw new Error(`optimizer moments for '${x.name}' have the wrong size`);
      }
      this.graph.gpu.write(x.m, s.m);
      this.graph.gpu.write(x.v, s.v);
    }
  }

  #applyOptimizer(step: number, lr: number): void {
    const gpu = this.graph.gpu, s = this.settings;
    let gradScale: Tensor | undefined;
    if (s.clipGrad > 0) {
      gpu.clear(this.#sumSq);
      for (const x of this.moments) sumSquares(gpu, x.grad, this.#sumSq);
      clipScale(gpu, this.#sumSq, s.clipGrad, this.#scale);
      gradScale = this.#scale;
    }
    for (const x of this.moments) {
      adamwStep(gpu, x.param, x.grad, x.m, x.v, {
        lr,
        beta1: s.beta1,
        beta2: s.beta2,
        eps: s.eps,
        weightDecay: s.weightDecay,
        step: step + 1,
        gradScale,
      });
    }
  }

  /**
   * Trains from `state` until `state.totalSteps`, validating on `val`. Returns the final state;
   * stops early, without saving, when the loss is not finite.
   */
  async run(
    state: TrainState,
    val: readonly Example[],
    metrics: MetricsLog,
    hooks: TrainHooks,
    showProgress: boolean,
  ): Promise<TrainResult> {
    const s = this.settings, graph = this.graph, gpu = graph.gpu;
    const history: StepMetrics[] = [];
    const progress = new Progress("train", state.totalSteps, state.step, showProgress);
    const batches = this.sampler.batches(state.position);
    let pendingTokens = 0;
    let windowStart = performance.now();
    let windowTokens = 0;
    let finalValLoss: number | null = null;
    const epochOf = (p: BatchPosition) => p.epoch + p.index / this.sampler.batchesPerEpoch;
    graph.resetStats();

    const validate = async (step: number) => {
      if (!val.length) return null;
      const r = await evaluateLoss(graph, val, s.evalBatchSize);
      hooks.log(
        `step ${step}: validation loss ${r.loss.toFixed(4)} (perplexity ${
          r.perplexity.toFixed(2)
        })`,
      );
      if (state.bestValLoss === null || r.loss < state.bestValLoss) state.bestValLoss = r.loss;
      return r.loss;
    };

    const readLoss = async () => {
      const { lossSum, count } = await graph.readStats();
      graph.resetStats();
      return count > 0 ? lossSum / count : NaN;
    };

    const stopAt = Math.min(state.totalSteps, s.stopAtStep ?? Infinity);
    while (state.step < stopAt) {
      // Gather the micro-batches of this step first: the gradient scale needs their target count.
      const micro: SampledBatch[] = [];
      for (let a = 0; a < s.gradAccum; a++) {
        const next = batches.next();
        if (next.done) break;
        micro.push(next.value);
      }
      if (!micro.length) break;
      const targets = micro.reduce((n, b) => n + b.batch.targetCount, 0);
      const lr = learningRate(s.schedule, state.step);
      graph.zeroGrads();
      for (const b of micro) {
        graph.microBatch(
          b.batch.tokens,
          b.batch.targets,
          b.batch.batchSize,
          b.batch.seqLen,
          targets > 0 ? 1 / targets : 0,
        );
        pendingTokens += b.batch.tokenCount;
      }
      this.#applyOptimizer(state.step, lr);
      state.step++;
      state.position = micro[micro.length - 1].next;
      gpu.flush();

      const last = state.step === state.totalSteps;
      const stopping = last || state.step === stopAt;
      const saveNow = stopping || (s.saveEvery > 0 && state.step % s.saveEvery === 0);
      const evalNow = !last && s.evalEvery > 0 && state.step % s.evalEvery === 0;
      if (state.step % s.logEvery === 0 || saveNow || evalNow) {
        const loss = await readLoss();
        const now = performance.now();
        windowTokens += pendingTokens;
        state.tokens += pendingTokens;
        state.seconds += (now - windowStart) / 1000;
        const tokensPerSecond = windowTokens / ((now - windowStart) / 1000);
        pendingTokens = 0;
        if (!Number.isFinite(loss)) {
          progress.stop();
          hooks.log(
            `error: the training loss became ${loss} by step ${state.step}; stopping without ` +
              `saving. The last good checkpoint is kept; lower --lr or set --clip-grad and ` +
              `resume with --resume.`,
          );
          return { state, history, finalValLoss, stoppedBy: "nan" };
        }
        const record: StepMetrics = {
          step: state.step,
          epoch: epochOf(state.position),
          loss,
          lr,
          tokensPerSecond,
          elapsedSeconds: state.seconds,
        };
        if (evalNow) {
          const valLoss = await validate(state.step);
          if (valLoss !== null) record.valLoss = valLoss;
        }
        history.push(record);
        await metrics.write({ ...record });
        progress.update({
          step: state.step,
          epoch: record.epoch,
          loss,
          lr,
          tokensPerSecond,
        });
        windowStart = performance.now();
        windowTokens = 0;
      }
      if (last) {
        finalValLoss = await validate(state.step);
        if (finalValLoss !== null) {
          const record = {
            step: state.step,
            epoch: epochOf(state.position),
            valLoss: finalValLoss,
            lr,
            elapsedSeconds: state.seconds,
          };
          history.push(record);
          await metrics.write(record);
        }
      }
      if (saveNow) {
        await hooks.save(
          { ...state },
          this.moments.map((x) => ({ name: x.name, shape: x.param.shape, m: x.m, v: x.v })),
        );
        windowStart = performance.now();
      }
    }
    progress.stop();
    return { state, history, finalValLoss, stoppedBy: "done" };
  }
}
