/**
 * The training graph: forward over a micro-batch, the masked cross-entropy loss, and backward into
 * the adapter's prompts and gates (or, for full fine-tuning, into every weight).
 *
 * Blocks below the lowest adapted block run forward only, in one shared scratch, keeping nothing.
 * Adapted blocks keep what backward reads: all activations per block, or with `recompute` only
 * their input, re-running the block forward just before its backward. Losses and target counts
 * accumulate on the GPU in `stats`, so the CPU reads them back only when it logs.
 */
import { type Gpu, type Tensor, view } from "../kernels/device.ts";
import { embeddingBackward } from "../kernels/embedding.ts";
import { crossEntropy, LOSS_STATS_SIZE } from "../kernels/loss.ts";
import { matmulGradInput, matmulGradWeight } from "../kernels/matmul.ts";
import { rmsnormBackward } from "../kernels/norm.ts";
import { BIAS_NAMES, type BiasName } from "./adapter.ts";
import {
  type AdapterGrads,
  allocBackwardScratch,
  type BackwardScratch,
  blockBackward,
  type BlockWeightGrads,
  shapeScratch,
} from "./backward.ts";
import {
  allocBlockActivations,
  type BlockActivations,
  type Llama,
  shapeActivations,
} from "./llama.ts";

/** Returns a record with `make(name, tensor)` for each of `biases`' linear layers. */
function mapBiases(
  biases: Record<BiasName, Tensor>,
  make: (name: BiasName, b: Tensor) => Tensor,
): Record<BiasName, Tensor> {
  const out = {} as Record<BiasName, Tensor>;
  for (const name of BIAS_NAMES) out[name] = make(name, biases[name]);
  return out;
}

/** Options for `TrainGraph`. */
export interface TrainGraphOptions {
  /** Largest number of sequences in a micro-batch. */
  maxBatch: number;
  /** Largest sequence length in tokens. */
  maxSeqLen: number;
  /** Keep only block inputs and recompute the rest in backward. */
  recompute?: boolean;
  /** Gradients for every weight (full fine-tuning) instead of the adapter. */
  full?: boolean;
  /** Forward and loss only: no activations kept, no gradients. */
  evalOnly?: boolean;
}

/** Gradients of the non-block weights, for full fine-tuning. */
export interface HeadWeightGrads {
  /** (V, C); also receives the output projection's gradient when tied. */
  tokEmbedding: Tensor;
  /** (C) */
  norm: Tensor;
  /** (V, C), or null when the output is tied to the embedding. */
  output: Tensor | null;
}

/** Workspace and gradients for training one model. */
export class TrainGraph {
  readonly model: Llama;
  readonly gpu: Gpu;
  readonly options: Required<TrainGraphOptions>;
  /** Index of the lowest block that backward reaches. */
  readonly first: number;
  /** Adapter gradients, one per adapted block (empty for full fine-tuning). */
  readonly adapterGrads: AdapterGrads[] = [];
  /** Per-block weight gradients (full fine-tuning only). */
  readonly blockGrads: BlockWeightGrads[] = [];
  readonly headGrads: HeadWeightGrads | null = null;
  /** (LOSS_STATS_SIZE) f32: summed loss and counted targets since the last `resetStats`. */
  readonly stats: Tensor;

  #tokens: Tensor;
  #targets: Tensor;
  #low: BlockActivations;
  #kept: BlockActivations[];
  #inputs: Tensor[];
  #xFinal: Tensor;
  #xnFinal: Tensor;
  #rstdFinal: Tensor;
  #logits: Tensor;
  #dx: Tensor;
  #dxn: Tensor;
  #scratch: BackwardScratch;

  constructor(model: Llama, options: TrainGraphOptions) {
    const gpu = model.gpu, c = model.config;
    this.model = model;
    this.gpu = gpu;
    this.options = { recompute: false, full: false, evalOnly: false, ...options };
    const { maxBatch: B, maxSeqLen: T, full, recompute, evalOnly } = this.options;
    if (T > c.maxSeqLen) {
      throw new Error(
        `--max-seq-len ${T} exceeds the model's context of ${c.maxSeqLen} tokens`,
      );
    }
    if (!full && !evalOnly && !model.adapter) {
      throw new Error("TrainGraph needs an adapter, full: true or evalOnly: true");
    }
    if (full && model.weights.storage !== "f32") {
      throw new Error(
        `full fine-tuning needs f32 weights on the GPU, they are stored as ` +
          `${model.weights.storage}; use --weights f32`,
      );
    }
    if (evalOnly) this.first = c.nLayers;
    else if (full) this.first = 0;
    else this.first = model.adapter!.first;
    const L = model.adapter?.config.length ?? 1;
    const M = B * T;
    const K = c.nLayers - this.first;

    this.#tokens = gpu.tensor([M], "u32", "train.tokens");
    this.#targets = gpu.tensor([M], "i32", "train.targets");
    this.stats = gpu.tensor([LOSS_STATS_SIZE], "f32", "train.stats");
    this.#low = allocBlockActivations(gpu, c, B, T, L, "train.low");
    this.#kept = [];
    this.#inputs = [];
    if (recompute) {
      const shared = allocBlockActivations(gpu, c, B, T, L, "train.recompute");
      for (let i = 0; i < K; i++) {
        this.#inputs.push(gpu.tensor([M, c.dim], "f32", `train.input.${this.first + i}`));
        this.#kept.push(shared);
      }
    } else {
      for (let i = 0; i < K; i++) {
        const acts = allocBlockActivations(gpu, c, B, T, L, `train.block.${this.first + i}`);
        this.#kept.push(acts);
        this.#inputs.push(acts.x);
      }
    }
    this.#xFinal = gpu.tensor([M, c.dim], "f32", "train.xFinal");
    this.#xnFinal = gpu.tensor([M, c.dim], "f32", "train.xnFinal");
    this.#rstdFinal = gpu.tensor([M], "f32", "train.rstdFinal");
    this.#logits = gpu.tensor([M, c.vocabSize], "f32", "train.logits");
    // An evalOnly graph never runs backward, so its backward tensors are minimal.
    const gradRows = evalOnly ? 1 : M;
    this.#dx = gpu.tensor([gradRows, c.dim], "f32", "train.dx");
    this.#dxn = gpu.tensor([gradRows, c.dim], "f32", "train.dxn");
    this.#scratch = evalOnly
      ? allocBackwardScratch(gpu, c, 1, 1, L)
      : allocBackwardScratch(gpu, c, B, T, L);

    if (evalOnly) {
      // No gradients.
    } else if (full) {
      const w = model.weights;
      for (let l = 0; l < c.nLayers; l++) {
        const lw = w.layers[l];
        const g = (t: Tensor, name: string) => gpu.tensor(t.shape, "f32", `grad.${l}.${name}`);
        this.blockGrads.push({
          attnNorm: g(lw.attnNorm, "attnNorm"),
          wq: g(lw.wq, "wq"),
          wk: g(lw.wk, "wk"),
          wv: g(lw.wv, "wv"),
          wo: g(lw.wo, "wo"),
          ffnNorm: g(lw.ffnNorm, "ffnNorm"),
          w1: g(lw.w1, "w1"),
          w2: g(lw.w2, "w2"),
          w3: g(lw.w3, "w3"),
        });
      }
      const tied = w.output === w.tokEmbedding;
      this.headGrads = {
        tokEmbedding: gpu.tensor(w.tokEmbedding.shape, "f32", "grad.tokEmbedding"),
        norm: gpu.tensor(w.norm.shape, "f32", "grad.norm"),
        output: tied ? null : gpu.tensor(w.output.shape, "f32", "grad.output"),
      };
    } else {
      const a = model.adapter!;
      for (let i = 0; i < a.prompts.length; i++) {
        this.adapterGrads.push({
          prompt: gpu.tensor(a.prompts[i].shape, "f32", `grad.prompt.${a.first + i}`),
          gate: gpu.tensor(a.gates[i].shape, "f32", `grad.gate.${a.first + i}`),
          biases: a.config.bias
            ? mapBiases(
              a.biases[i],
              (name, b) => gpu.tensor(b.shape, "f32", `grad.bias.${a.first + i}.${name}`),
            )
            : null,
        });
      }
    }
  }

  /** Returns every gradient tensor, in the order of `parameters()`. */
  gradients(): Tensor[] {
    if (this.options.full) {
      const out: Tensor[] = [this.headGrads!.tokEmbedding, this.headGrads!.norm];
      if (this.headGrads!.output) out.push(this.headGrads!.output);
      for (const g of this.blockGrads) {
        out.push(g.attnNorm, g.wq, g.wk, g.wv, g.wo, g.ffnNorm, g.w1, g.w2, g.w3);
      }
      return out;
    }
    return this.adapterGrads.flatMap((g) => [
      g.prompt,
      g.gate,
      ...(g.biases ? BIAS_NAMES.map((name) => g.biases![name]) : []),
    ]);
  }

  /** Returns every trained parameter tensor, in the order of `gradients()`. */
  parameters(): Tensor[] {
    const m = this.model;
    if (this.options.full) {
      const w = m.weights;
      const out: Tensor[] = [w.tokEmbedding, w.norm];
      if (w.output !== w.tokEmbedding) out.push(w.output);
      for (const l of w.layers) {
        out.push(l.attnNorm, l.wq, l.wk, l.wv, l.wo, l.ffnNorm, l.w1, l.w2, l.w3);
      }
      return out;
    }
    const a = m.adapter!;
    return a.prompts.flatMap((p, i) => [
      p,
      a.gates[i],
      ...(a.config.bias ? BIAS_NAMES.map((name) => a.biases[i][name]) : []),
    ]);
  }

  /** Records zeroing of every gradient. */
  zeroGrads(): void {
    for (const g of this.gradients()) this.gpu.clear(g);
  }

  /** Records zeroing of the loss statistics. */
  resetStats(): void {
    this.gpu.clear(this.stats);
  }

  /** Reads the summed loss and target count accumulated since `resetStats`. */
  async readStats(): Promise<{ lossSum: number; count: number }> {
    const s = await this.gpu.readF32(this.stats);
    return { lossSum: s[0], count: s[1] };
  }

  #check(tokens: Uint32Array, targets: Int32Array, B: number, T: number): void {
    const { maxBatch, maxSeqLen } = this.options;
    if (B < 1 || B > maxBatch || T < 1 || T > maxSeqLen) {
      throw new Error(
        `micro-batch of ${B} x ${T} tokens exceeds the workspace of ${maxBatch} x ${maxSeqLen}`,
      );
    }
    if (tokens.length !== B * T || targets.length !== B * T) {
      throw new Error(`micro-batch arrays must hold ${B * T} entries`);
    }
    const V = this.model.config.vocabSize;
    for (let i = 0; i < tokens.length; i++) {
      if (tokens[i] >= V) {
        throw new Error(`token id ${tokens[i]} is outside the vocabulary of ${V}`);
      }
      if (targets[i] >= V) {
        throw new Error(`target id ${targets[i]} is outside the vocabulary of ${V}`);
      }
    }
  }

  /** Records the forward pass up to the logits; returns the views used. */
  #forward(tokens: Uint32Array, targets: Int32Array, B: number, T: number) {
    const m = this.model, c = m.config, gpu = this.gpu;
    this.#check(tokens, targets, B, T);
    const M = B * T, L = m.adapter?.config.length ?? 1;
    const tok = view(this.#tokens, [M]);
    const tgt = view(this.#targets, [M]);
    gpu.write(tok, tokens);
    gpu.write(tgt, targets);

    const low = shapeActivations(this.#low, c, B, T, L);
    const kept = this.first < c.nLayers;
    const firstInput = kept ? view(this.#inputs[0], [M, c.dim]) : low.x;
    m.embed(tok, this.first === 0 ? firstInput : low.x);
    for (let l = 0; l < this.first; l++) m.blockForward(l, low, low.x, B, T, 0);
    if (kept && this.first > 0) gpu.copy(low.x, 0, firstInput, 0, M * c.dim * 4);

    const xFinal = kept ? view(this.#xFinal, [M, c.dim]) : low.x;
    for (let l = this.first; l < c.nLayers; l++) {
      const i = l - this.first;
      const acts = shapeActivations(this.#kept[i], c, B, T, L);
      const input = view(this.#inputs[i], [M, c.dim]);
      if (input.buffer !== acts.x.buffer) gpu.copy(input, 0, acts.x, 0, M * c.dim * 4);
      const out = l + 1 < c.nLayers ? view(this.#inputs[i + 1], [M, c.dim]) : xFinal;
      m.blockForward(l, acts, out, B, T, 0);
    }
    const logits = view(this.#logits, [M, c.vocabSize]);
    const xnFinal = view(this.#xnFinal, [M, c.dim]);
    const rstdFinal = view(this.#rstdFinal, [M]);
    m.head(xFinal, xnFinal, rstdFinal, logits);
    return { tok, tgt, logits, xFinal, xnFinal, rstdFinal, M, L };
  }

  /**
   * Records forward and backward of one micro-batch of B rows of T tokens. `targets[b*T + t]` is
   * the id predicted at position t, or negative when outside the loss. Gradients accumulate (call
   * `zeroGrads` before the first micro-batch of a step) scaled by `gradScale`, normally
   * 1 / (targets counted over the whole optimiser step).
   */
  microBatch(
    tokens: Uint32Array,
    targets: Int32Array,
    B: number,
    T: number,
    gradScale: number,
  ): void {
    const m = this.model, c = m.config, gpu = this.gpu;
    const { tok, tgt, logits, xFinal, xnFinal, rstdFinal, M, L } = this.#forward(
      tokens,
      targets,
      B,
      T,
    );
    if (this.options.evalOnly) throw new Error("microBatch on an evalOnly graph");
    crossEntropy(gpu, logits, tgt, logits, this.stats, { gradScale });

    const dx = view(this.#dx, [M, c.dim]);
    const dxn = view(this.#dxn, [M, c.dim]);
    matmulGradInput(gpu, logits, m.weights.output, dxn);
    if (this.headGrads) {
      const dOut = this.headGrads.output ?? this.headGrads.tokEmbedding;
      matmulGradWeight(gpu, logits, xnFinal, dOut, { accumulate: true });
    }
    rmsnormBackward(gpu, xFinal, m.weights.norm, rstdFinal, dxn, dx, {
      accumulate: false,
      dWeight: this.headGrads?.norm,
    });

    const scratch = shapeScratch(this.#scratch, c, B, T, L);
    for (let l = c.nLayers - 1; l >= this.first; l--) {
      const i = l - this.first;
      const acts = shapeActivations(this.#kept[i], c, B, T, L);
      if (this.options.recompute) {
        const input = view(this.#inputs[i], [M, c.dim]);
        gpu.copy(input, 0, acts.x, 0, M * c.dim * 4);
        // The recomputed block output is not needed, so it goes to xnFinal, which backward has
        // already read by this point.
        m.blockForward(l, acts, view(this.#xnFinal, [M, c.dim]), B, T, 0);
      }
      blockBackward(
        m,
        l,
        acts,
        dx,
        scratch,
        B,
        T,
        this.adapterGrads[i] ?? null,
        this.blockGrads[l] ?? null,
      );
    }
    if (this.headGrads) embeddingBackward(gpu, tok, dx, this.headGrads.tokEmbedding);
  }

  /** Records the forward pass and loss of one micro-batch, accumulating `stats` only. */
  evalBatch(tokens: Uint32Array, targets: Int32Array, B: number, T: number): void {
    const { tgt, logits } = this.#forward(tokens, targets, B, T);
    crossEntropy(this.gpu, logits, tgt, null, this.stats, {});
  }

  /** Runs the training forward pass on B rows of T tokens and returns the logits (B*T, V). */
  async forwardLogits(tokens: Uint32Array, B: number, T: number): Promise<Float32Array> {
    const targets = new Int32Array(B * T).fill(-1);
    const { logits } = this.#forward(tokens, targets, B, T);
    return await this.gpu.readF32(logits);
  }
}
