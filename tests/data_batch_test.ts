import assert from "node:assert/strict";
import { BatchSampler, makeBatch, type SampledBatch } from "../data/batch.ts";
import { type Example, IGNORE_INDEX } from "../data/dataset.ts";
import type { Rng } from "../model/rng.ts";
import { testRng } from "./helpers.ts";

/** One seed for the file, printed by the tests whose checks depend on it. */
const SEED = Date.now() % 1_000_000;

/** Returns `count` random examples of lengths 2..maxLength, with a prompt of random length. */
function randomExamples(count: number, maxLength: number, rng: Rng = testRng(SEED)): Example[] {
  return Array.from({ length: count }, () => {
    const n = 2 + rng.int(maxLength - 1);
    const prompt = 1 + rng.int(n - 1);
    return {
      ids: Array.from({ length: n }, () => 3 + rng.int(500)),
      lossMask: Array.from({ length: n }, (_, t) => t >= prompt),
    };
  });
}

Deno.test("makeBatch pads rows and shifts targets", () => {
  const examples: Example[] = [
    { ids: [1, 10, 11, 12, 2], lossMask: [false, false, true, true, true] },
    { ids: [1, 20, 2], lossMask: [false, true, true] },
    { ids: [1, 30, 31, 32, 33, 34, 2], lossMask: [false, false, false, false, true, false, true] },
  ];
  const batch = makeBatch(examples, { padId: 9 });
  assert.equal(batch.batchSize, 3);
  assert.equal(batch.seqLen, 7);
  const X = IGNORE_INDEX;
  assert.deepEqual(
    Array.from(batch.tokens),
    [
      [1, 10, 11, 12, 2, 9, 9],
      [1, 20, 2, 9, 9, 9, 9],
      [1, 30, 31, 32, 33, 34, 2],
    ].flat(),
  );
  assert.deepEqual(
    Array.from(batch.targets),
    [
      [X, 11, 12, 2, X, X, X],
      [20, 2, X, X, X, X, X],
      [X, X, X, 33, X, 2, X],
    ].flat(),
  );
  assert.deepEqual(batch.lengths, [5, 3, 7]);
  assert.equal(batch.tokenCount, 15);
  assert.equal(batch.targetCount, 7);
});

Deno.test("makeBatch matches the mask convention on random rows", () => {
  const examples = randomExamples(13, 41);
  const seqLen = 48;
  const batch = makeBatch(examples, { seqLen });
  assert.equal(batch.tokens.length, 13 * seqLen);
  let targets = 0;
  for (const [b, { ids, lossMask }] of examples.entries()) {
    for (let t = 0; t < seqLen; t++) {
      const at = b * seqLen + t;
      const expectedToken = t < ids.length ? ids[t] : 0;
      const expectedTarget = t + 1 < ids.length && lossMask[t + 1] ? ids[t + 1] : IGNORE_INDEX;
      assert.equal(batch.tokens[at], expectedToken, `token (${b}, ${t}), seed ${SEED}`);
      assert.equal(batch.targets[at], expectedTarget, `target (${b}, ${t}), seed ${SEED}`);
      if (expectedTarget !== IGNORE_INDEX) targets++;
    }
  }
  assert.equal(batch.targetCount, targets);
  assert.equal(batch.tokenCount, examples.reduce((n, e) => n + e.ids.length, 0));
});

Deno.test("makeBatch rejects bad input", () => {
  const example = { ids: [1, 2, 3], lossMask: [false, true, true] };
  assert.throws(() => makeBatch([]), /batch of 0 examples/);
  assert.throws(() => makeBatch([example], { seqLen: 2 }), /3 tokens does not fit .* 2/);
  assert.throws(() => makeBatch([{ ids: [1, 2], lossMask: [true] }]), /2 ids but 1 loss mask/);
  assert.throws(() => makeBatch([example], { padId: -1 }), /pad id/);
});

function collect(batches: Iterable<SampledBatch>): SampledBatch[] {
  return [...batches];
}

Deno.test("sampler deals every example once per epoch", () => {
  const examples = randomExamples(23, 20);
  for (const bucketByLength of [false, true]) {
    const sampler = new BatchSampler(examples, { batchSize: 4, seed: 5, bucketByLength });
    assert.equal(sampler.batchesPerEpoch, 6);
    const batches = collect(sampler.batches(undefined, 3));
    assert.equal(batches.length, 18);
    const orders: number[][] = [];
    for (let epoch = 0; epoch < 3; epoch++) {
      const epochBatches = batches.filter((b) => b.position.epoch === epoch);
      const seen = epochBatches.flatMap((b) => b.indices);
      assert.deepEqual([...seen].sort((a, b) => a - b), examples.map((_, i) => i));
      orders.push(seen);
      for (const { batch, indices } of epochBatches) {
        assert.deepEqual(batch.lengths, indices.map((i) => examples[i].ids.length));
      }
    }
    assert.notDeepEqual(orders[0], orders[1], `epochs are shuffled differently, seed ${SEED}`);
  }
});

Deno.test("sampler buckets by length", () => {
  const examples = randomExamples(40, 60);
  const sampler = new BatchSampler(examples, { batchSize: 5, seed: 1, bucketByLength: true });
  const sorted = examples.map((e) => e.ids.length).sort((a, b) => a - b);
  const plan = sampler.epochPlan(0);
  const lengthRanges = plan.map((batch) => {
    const lengths = batch.map((i) => examples[i].ids.length);
    return [Math.min(...lengths), Math.max(...lengths)];
  });
  // Each batch covers 5 consecutive lengths of the sorted list.
  const chunks = Array.from({ length: 8 }, (_, i) => [sorted[i * 5], sorted[i * 5 + 4]]);
  assert.deepEqual(
    [...lengthRanges].sort((a, b) => a[0] - b[0] || a[1] - b[1]),
    [...chunks].sort((a, b) => a[0] - b[0] || a[1] - b[1]),
  );
  assert.notDeepEqual(lengthRanges, chunks, `batch order is shuffled, seed ${SEED}`);
});

Deno.test("sampler without shuffle keeps order and drops last", () => {
  const examples = randomExamples(10, 8);
  const sampler = new BatchSampler(examples, { batchSize: 3, shuffle: false, dropLast: true });
  assert.deepEqual(sampler.epochPlan(4), [[0, 1, 2], [3, 4, 5], [6, 7, 8]]);
  const keep = new BatchSampler(examples, { batchSize: 3, shuffle: false });
  assert.deepEqual(keep.epochPlan(0).at(-1), [9]);
  assert.throws(
    () => new BatchSampler(examples, { batchSize: 11, dropLast: true }),
    /make no batch of 11/,
  );
  assert.throws(() => new BatchSampler(examples, { batchSize: 0 }), /positive integer/);
});

Deno.test("sampler resume gives the same remaining batches", () => {
  const examples = randomExamples(17, 30);
  const options = { batchSize: 4, seed: 99, bucketByLength: true, seqLen: 32 };
  const full = collect(new BatchSampler(examples, options).batches(undefined, 3));
  assert.equal(full.length, 15);
  for (const stop of [0, 3, 4, 5, 9, 14]) {
    // A fresh sampler, as after a restart, continues from the position stored after batch `stop`.
    const resumed = collect(new BatchSampler(examples, options).batches(full[stop].next, 3));
    assert.equal(resumed.length, full.length - stop - 1, `resume after ${stop}, seed ${SEED}`);
    for (const [i, r] of resumed.entries()) {
      const original = full[stop + 1 + i];
      assert.deepEqual(r.position, original.position);
      assert.deepEqual(r.indices, original.indices);
      assert.deepEqual(r.batch.tokens, original.batch.tokens);
      assert.deepEqual(r.batch.targets, original.batch.targets);
    }
  }
  assert.deepEqual(full[4].next, { epoch: 1, index: 0 });
  assert.deepEqual(full[3].next, { epoch: 0, index: 4 });
});

Deno.test("sampler rejects positions outside an epoch", () => {
  const sampler = new BatchSampler(randomExamples(8, 10), { batchSize: 4 });
  assert.throws(() => sampler.batches({ epoch: 0, index: 2 }).next(), /resume batch index 2/);
  assert.throws(() => sampler.batches({ epoch: -1, index: 0 }).next(), /resume epoch/);
});

Deno.test("sampler fingerprint follows data and options", () => {
  const examples = randomExamples(12, 10, testRng(42));
  const base = new BatchSampler(examples, { batchSize: 4, seed: 3 }).fingerprint();
  assert.match(base, /^[0-9a-f]{8}$/);
  assert.equal(
    new BatchSampler(randomExamples(12, 10, testRng(42)), { batchSize: 4, seed: 3 }).fingerprint(),
    base,
  );
  assert.notEqual(new BatchSampler(examples, { batchSize: 4, seed: 4 }).fingerprint(), base);
  assert.notEqual(new BatchSampler(examples, { batchSize: 3, seed: 3 }).fingerprint(), base);
  const changed = examples.map((e) => ({ ids: [...e.ids], lossMask: [...e.lossMask] }));
  changed[5].lossMask[1] = !changed[5].lossMask[1];
  assert.notEqual(new BatchSampler(changed, { batchSize: 4, seed: 3 }).fingerprint(), base);
});
