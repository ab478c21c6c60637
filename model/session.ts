/**
 * Inference with a KV cache: prefill a prompt, then decode several tokens per GPU submission with
 * sampling on the GPU, so the readback latency (about 12 ms in Deno) is paid once per chunk of
 * tokens rather than once per token.
 *
 * The sequence's token ids live in a GPU buffer `tokens` (capacity entries). Each decode step reads
 * the id that the previous step sampled into that buffer, so a chunk of steps runs without the CPU.
 */
import { type Gpu, type Tensor, view } from "../kernels/device.ts";
import { argmax, sampleTopP } from "../kernels/sampling.ts";
import { headDim } from "./config.ts";
import {
  allocBlockActivations,
  type BlockActivations,
  type KvCache,
  type Llama,
  shapeActivations,
} from "./llama.ts";
import { Rng } from "./rng.ts";

/** Sampling settings. */
export interface SamplingOptions {
  /** 0 picks the most likely token; otherwise logits are divided by it. */
  temperature: number;
  /** Nucleus mass in (0, 1]. */
  topP: number;
  seed: number;
}

/** Reason generation stopped. */
export type StopReason = "eos" | "max-tokens" | "context";

/** Options for `Session.create`. */
export interface SessionOptions {
  /** Positions the KV cache stores (default and maximum: the model's context length). */
  capacity?: number;
  /** Maximum tokens of a prompt processed in one forward pass (bounds activation memory). */
  prefillChunk?: number;
}

/** A sequence being generated, with its KV cache on the GPU. */
export class Session {
  readonly model: Llama;
  readonly capacity: number;
  /** Number of positions filled in the cache. */
  position = 0;

  #gpu: Gpu;
  #prefillChunk: number;
  #caches: KvCache[];
  #acts: BlockActivations;
  #tokens: Tensor;
  #xLast: Tensor;
  #xnLast: Tensor;
  #rstdLast: Tensor;
  #logits: Tensor;
  #rng: Rng | null = null;

  private constructor(model: Llama, capacity: number, prefillChunk: number) {
    const gpu = model.gpu, c = model.config;
    this.model = model;
    this.capacity = capacity;
    this.#gpu = gpu;
    this.#prefillChunk = prefillChunk;
    const D = headDim(c);
    this.#caches = [];
    for (let l = 0; l < c.nLayers; l++) {
      this.#caches.push({
        k: gpu.tensor([1, capacity, c.nKvHeads, D], "f32", `cache.${l}.k`),
        v: gpu.tensor([1, capacity, c.nKvHeads, D], "f32", `cache.${l}.v`),
      });
    }
    const L = model.adapter?.config.length ?? 1;
    this.#acts = allocBlockActivations(gpu, c, 1, prefillChunk, L, "infer");
    this.#tokens = gpu.tensor([capacity + 1], "u32", "session.tokens");
    this.#xLast = gpu.tensor([1, c.dim], "f32", "session.xLast");
    this.#xnLast = gpu.tensor([1, c.dim], "f32", "session.xnLast");
    this.#rstdLast = gpu.tensor([1], "f32", "session.rstdLast");
    this.#logits = gpu.tensor([1, c.vocabSize], "f32", "session.logits");
  }

  /** Allocates the cache and workspace for `model` (with its current adapter). */
  static create(model: Llama, options: SessionOptions = {}): Session {
    const max = model.config.maxSeqLen;
    const capacity = Math.min(options.capacity ?? max, max);
    const chunk = Math.max(1, Math.min(options.prefillChunk ?? 256, capacity));
    return new Session(model, capacity, chunk);
  }

  /** Forgets the sequence (the cache is overwritten by the next prefill). */
  reset(): void {
    this.position = 0;
  }

  /** Records the forward pass of T tokens already in the tokens buffer at [pos0, pos0 + T). */
  #forward(pos0: number, T: number): void {
    const m = this.model, c = m.config, gpu = this.#gpu;
    const L = m.adapter?.config.length ?? 1;
    const acts = shapeActivations(this.#acts, c, 1, T, L);
    m.embed(this.#tokens, acts.x, pos0);
    for (let l = 0; l < c.nLayers; l++) {
      m.blockForward(l, acts, acts.x, 1, T, pos0, this.#caches[l]);
    }
    const rowBytes = c.dim * 4;
    gpu.copy(acts.x, (T - 1) * rowBytes, this.#xLast, 0, rowBytes);
    m.head(this.#xLast, this.#xnLast, this.#rstdLast, this.#logits);
  }

  /** Records sampling of the next token from the last logits into tokens[index]. */
  #sample(index: number, s: SamplingOptions): void {
    if (s.temperature <= 0) {
      argmax(this.#gpu, this.#logits, this.#tokens, index);
    } else {
      this.#rng ??= new Rng(s.seed);
      sampleTopP(this.#gpu, this.#logits, this.#tokens, index, {
        temperature: s.temperature,
        topP: s.topP,
        uniform: this.#rng.uniform(),
      });
    }
  }

  /**
   * Appends `ids` to the sequence and runs them through the model, recording the sampled next
   * token. Throws when the sequence would exceed the capacity.
   */
  prefill(ids: readonly number[], sampling: SamplingOptions): void {
    const c = this.model.config;
    if (this.position + ids.length > this.capacity) {
      throw new Error(
        `the prompt needs ${this.position + ids.length} positions, over the context of ` +
          `${this.capacity} tokens; shorten it or /reset the conversation`,
      );
    }
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) {
        throw new Error(`token id ${id} is outside the model's vocabulary of ${c.vocabSize}`);
      }
    }
    this.#gpu.write(this.#tokens, Uint32Array.from(ids), this.position);
    for (let at = 0; at < ids.length; at += this.#prefillChunk) {
      const T = Math.min(this.#prefillChunk, ids.length - at);
      this.#forward(this.position + at, T);
    }
    this.position += ids.length;
    this.#sample(this.position, sampling);
  }

  /**
   * Generates after `prompt` until an end-of-sequence id, `maxTokens` tokens or the context limit,
   * calling `onTokens` with each chunk of new ids as it arrives. Returns the ids and the reason.
   */
  async generate(
    prompt: readonly number[],
    options: SamplingOptions & {
      maxTokens: number;
      eosIds: readonly number[];
      decodeChunk?: number;
      onTokens?: (ids: number[]) => void;
    },
  ): Promise<{ ids: number[]; stop: StopReason }> {
    const chunkSize = Math.max(1, options.decodeChunk ?? 16);
    this.#rng = options.temperature > 0 ? new Rng(options.seed) : null;
    if (prompt.length) this.prefill(prompt, options);
    const out: number[] = [];
    while (true) {
      // Invariant: tokens[position] has been sampled but not yet run through the model, and
      // every earlier token has. A token can be emitted at index capacity but not run.
      const wanted = options.maxTokens - out.length;
      const steps = Math.min(chunkSize, wanted, this.capacity - this.position + 1);
      for (let i = 0; i < steps - 1; i++) {
        this.#forward(this.position + i, 1);
        this.#sample(this.position + i + 1, options);
      }
      const read = await this.#gpu.read(this.#tokens, this.position, steps);
      let stop: StopReason | null = null;
      const fresh: number[] = [];
      for (const id of read) {
        fresh.push(id);
        if (options.eosIds.includes(id)) stop = "eos";
        else if (out.length + fresh.length >= options.maxTokens) stop = "max-tokens";
        if (stop) break;
      }
      out.push(...fresh);
      if (fresh.length) options.onTokens?.(fresh);
      // The last accepted token sits at index position + fresh.length - 1.
      const last = this.position + fresh.length - 1;
      this.position = last + 1;
      if (last >= this.capacity) return { ids: out, stop: stop ?? "context" };
      // Run the last accepted token (again, if the chunk already ran it) so the cache holds the
      // whole history and a chat can continue after it.
      this.#forward(last, 1);
      if (stop) return { ids: out, stop };
      this.#sample(this.position, options);
    }
  }

  /**
   * Returns the logits (T, V) of every position of `ids` from a fresh sequence, computed by the
   * full-sequence forward pass (no decode steps). Used to check the cache and for scoring.
   */
  async logitsAll(ids: readonly number[]): Promise<Float32Array> {
    const m = this.model, c = m.config, gpu = this.#gpu;
    const T = ids.length;
    if (T > this.#prefillChunk || T > this.capacity) {
      throw new Error(`logitsAll: ${T} tokens exceed the session's prefill chunk`);
    }
    this.reset();
    gpu.write(this.#tokens, Uint32Array.from(ids), 0);
    const L = m.adapter?.config.length ?? 1;
    const acts = shapeActivations(this.#acts, c, 1, T, L);
    m.embed(this.#tokens, acts.x, 0);
    for (let l = 0; l < c.nLayers; l++) m.blockForward(l, acts, acts.x, 1, T, 0, this.#caches[l]);
    const logits = gpu.tensor([T, c.vocabSize], "f32", "logitsAll");
    const xn = view(acts.xn1, [T, c.dim]);
    m.head(view(acts.x, [T, c.dim]), xn, view(acts.rstd1, [T]), logits);
    const out = await gpu.readF32(logits);
    logits.buffer.destroy();
    this.position = T;
    return out;
  }

  /**
   * Returns the logits (V) after feeding `ids` one token at a time through the cache, for each
   * position: (T, V). Used to check that decode matches the full-sequence forward.
   */
  async logitsStepwise(ids: readonly number[]): Promise<Float32Array> {
    const c = this.model.config;
    this.reset();
    this.#gpu.write(this.#tokens, Uint32Array.from(ids), 0);
    const out = new Float32Array(ids.length * c.vocabSize);
    for (let t = 0; t < ids.length; t++) {
      this.#forward(t, 1);
      out.set(await this.#gpu.readF32(this.#logits), t * c.vocabSize);
    }
    this.position = ids.length;
    return out;
  }
}
