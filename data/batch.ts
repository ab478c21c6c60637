/**
 * Batching: tokenised examples padded into (B, T) token and target arrays, and a seeded epoch
 * sampler whose position (epoch, batch index) is all a checkpoint needs to resume the exact
 * sequence of batches.
 *
 * Each batch row is one example followed by padding, so with causal attention a real token never
 * attends to padding or to another example, and padded positions have no target.
 */
import { Rng } from "../model/rng.ts";
import { type Example, IGNORE_INDEX } from "./dataset.ts";

/** A padded batch, row-major: row b is example b, position t of it at index b * seqLen + t. */
export interface Batch {
  batchSize: number;
  seqLen: number;
  /** (batchSize, seqLen) token ids; padding positions hold the pad id. */
  tokens: Uint32Array;
  /**
   * (batchSize, seqLen) next-token targets: ids[t + 1] where lossMask[t + 1] is true, else -100,
   * and -100 at the last position of each example and on padding.
   */
  targets: Int32Array;
  /** Real (non-padding) tokens of each row. */
  lengths: number[];
  /** Real tokens in the batch. */
  tokenCount: number;
  /** Targets other than -100 in the batch. */
  targetCount: number;
}

/** Options for `makeBatch`. */
export interface BatchOptions {
  /** Pad every row to this length; by default rows are padded to the longest example. */
  seqLen?: number;
  /** Token id written at padding positions (default 0); it is never a target. */
  padId?: number;
}

/**
 * Pads examples into a batch. Throws when the list is empty or an example is longer than a fixed
 * `seqLen`.
 */
export function makeBatch(examples: readonly Example[], options: BatchOptions = {}): Batch {
  const { padId = 0 } = options;
  if (examples.length === 0) throw new RangeError("cannot make a batch of 0 examples");
  if (!Number.isInteger(padId) || padId < 0) {
    throw new RangeError(`pad id must be a non-negative integer, got ${padId}`);
  }
  const longest = Math.max(...examples.map((e) => e.ids.length));
  const seqLen = options.seqLen ?? longest;
  if (longest > seqLen) {
    throw new RangeError(
      `an example of ${longest} tokens does not fit the batch length ${seqLen}; ` +
        `truncate or skip examples longer than the sequence length when loading the data`,
    );
  }

  const B = examples.length;
  const T = seqLen;
  const tokens = new Uint32Array(B * T).fill(padId);
  const targets = new Int32Array(B * T).fill(IGNORE_INDEX);
  const lengths: number[] = [];
  let targetCount = 0;
  for (let b = 0; b < B; b++) {
    const { ids, lossMask } = examples[b];
    if (lossMask.length !== ids.length) {
      throw new RangeError(
        `example ${b} of the batch has ${ids.length} ids but ${lossMask.length} loss mask entries`,
      );
    }
    const row = b * T;
    for (let t = 0; t < ids.length; t++) {
      tokens[row + t] = ids[t];
      if (t + 1 < ids.length && lossMask[t + 1]) {
        targets[row + t] = ids[t + 1];
        targetCount++;
      }
    }
    lengths.push(ids.length);
  }
  const tokenCount = lengths.reduce((a, n) => a + n, 0);
  return { batchSize: B, seqLen: T, tokens, targets, lengths, tokenCount, targetCount };
}

/** Position of a sampler: batch `index` of epoch `epoch`, both from 0. */
export interface BatchPosition {
  epoch: number;
  index: number;
}

/** Options for `BatchSampler`. */
export interface SamplerOptions extends BatchOptions {
  /** Examples per batch; the last batch of an epoch may be smaller unless `dropLast`. */
  batchSize: number;
  /** Seed of the shuffles (default 0). */
  seed?: number;
  /** Shuffle the order every epoch (default true); false keeps the examples' order. */
  shuffle?: boolean;
  /**
   * Group examples of similar length into batches to reduce padding: batches are cut from the
   * examples sorted by length (ties in shuffled order), and then the batch order is shuffled.
   */
  bucketByLength?: boolean;
  /** Leave out the last, smaller batch of each epoch (default false). */
  dropLast?: boolean;
}

/** One batch from a sampler, with its position and the position of the batch after it. */
export interface SampledBatch {
  batch: Batch;
  /** Indices of the batch's rows in the sampler's examples. */
  indices: number[];
  position: BatchPosition;
  /** Position to store in a checkpoint written after this batch, to resume after it. */
  next: BatchPosition;
}

/**
 * Deals a fixed list of examples into batches, epoch after epoch. The order of epoch e depends
 * only on the seed, e and the options, so `batches(position)` continues exactly where a run that
 * stopped at `position` left off.
 */
export class BatchSampler {
  readonly examples: readonly Example[];
  readonly options: Readonly<Required<Omit<SamplerOptions, "seqLen">>> & { seqLen?: number };
  /** Batches in each epoch. */
  readonly batchesPerEpoch: number;
  #planEpoch = -1;
  #plan: number[][] = [];

  constructor(examples: readonly Example[], options: SamplerOptions) {
    const {
      batchSize,
      seed = 0,
      shuffle = true,
      bucketByLength = false,
      dropLast = false,
      padId = 0,
      seqLen,
    } = options;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new RangeError(`batch size must be a positive integer, got ${batchSize}`);
    }
    if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
    this.examples = examples;
    this.options = { batchSize, seed, shuffle, bucketByLength, dropLast, padId, seqLen };
    this.batchesPerEpoch = dropLast
      ? Math.floor(examples.length / batchSize)
      : Math.ceil(examples.length / batchSize);
    if (this.batchesPerEpoch === 0) {
      throw new RangeError(
        `${examples.length} examples make no batch of ${batchSize} with dropLast; ` +
          `lower the batch size`,
      );
    }
  }

  /** Returns the example indices of every batch of `epoch`, in the order they are dealt. */
  epochPlan(epoch: number): number[][] {
    if (epoch === this.#planEpoch) return this.#plan;
    const { batchSize, seed, shuffle, bucketByLength } = this.options;
    const rng = new Rng(BigInt.asUintN(64, BigInt(seed) * 0x9e3779b97f4a7c15n + BigInt(epoch)));

    const order = Array.from({ length: this.examples.length }, (_, i) => i);
    if (shuffle) rng.shuffle(order);
    if (bucketByLength) {
      // Array.prototype.sort is stable, so equal lengths keep their shuffled order.
      order.sort((a, b) => this.examples[a].ids.length - this.examples[b].ids.length);
    }
    const plan: number[][] = [];
    for (let i = 0; i < this.batchesPerEpoch; i++) {
      plan.push(order.slice(i * batchSize, (i + 1) * batchSize));
    }
    if (bucketByLength && shuffle) rng.shuffle(plan);

    this.#planEpoch = epoch;
    this.#plan = plan;
    return plan;
  }

  /**
   * Yields batches from `from` (default the start) to the end of epoch `epochs - 1`, or without
   * end when `epochs` is undefined. Throws when `from` is not a position of this sampler.
   */
  *batches(
    from: BatchPosition = { epoch: 0, index: 0 },
    epochs?: number,
  ): Generator<SampledBatch> {
    const { epoch: startEpoch, index: startIndex } = from;
    if (!Number.isInteger(startEpoch) || startEpoch < 0) {
      throw new RangeError(`resume epoch must be a non-negative integer, got ${startEpoch}`);
    }
    if (!Number.isInteger(startIndex) || startIndex < 0 || startIndex >= this.batchesPerEpoch) {
      throw new RangeError(
        `resume batch index ${startIndex} is outside the ${this.batchesPerEpoch} batches of an ` +
          `epoch; was the checkpoint written with other data or batch size?`,
      );
    }
    for (let epoch = startEpoch; epochs === undefined || epoch < epochs; epoch++) {
      const plan = this.epochPlan(epoch);
      for (let index = epoch === startEpoch ? startIndex : 0; index < plan.length; index++) {
        const indices = plan[index];
        const batch = makeBatch(indices.map((i) => this.examples[i]), this.options);
        const next = index + 1 < plan.length
          ? { epoch, index: index + 1 }
          : { epoch: epoch + 1, index: 0 };
        yield { batch, indices, position: { epoch, index }, next };
      }
    }
  }

  /**
   * Returns a hash of the examples and the options, to store with a checkpoint's position: a
   * different value on resume means the batches would differ from the original run.
   */
  fingerprint(): string {
    let h = 0x811c9dc5;
    const add = (x: number): void => {
      h = Math.imul(h ^ (x & 0xffff), 0x01000193);
      h = Math.imul(h ^ (x >>> 16), 0x01000193);
    };
    const { batchSize, seed, shuffle, bucketByLength, dropLast, padId, seqLen } = this.options;
    for (const x of [batchSize, seed, +shuffle, +bucketByLength, +dropLast, padId, seqLen ?? 0]) {
      add(x >>> 0);
    }
    add(this.examples.length);
    for (const { ids, lossMask } of this.examples) {
      add(ids.length);
      for (let t = 0; t < ids.length; t++) add(ids[t] * 2 + (lossMask[t] ? 1 : 0));
    }
    return (h >>> 0).toString(16).padStart(8, "0");
  }
}
