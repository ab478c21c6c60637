import assert from "node:assert/strict";
import { KernelError } from "../../kernels/device.ts";
import { crossEntropy } from "../../kernels/loss.ts";
import { crossEntropyRef } from "../../model/reference/loss.ts";
import { assertClose, gpuTest, numericGrad, testRng } from "../helpers.ts";

/**
 * Asserts a cross-entropy gradient close to the expected one. f32 errors scale with the softmax
 * probability p, not with p - 1: the target elements are compared as p * gradScale (with
 * gradScale added back) and may also differ by the f32 rounding of p - 1 near 1.
 */
function assertGradClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  targets: Int32Array,
  gradScale: number,
  context: string,
  rtol: number,
): void {
  const V = expected.length / targets.length;
  const others: [number[], number[]] = [[], []];
  const hits: [number[], number[]] = [[], []];
  for (let i = 0; i < expected.length; i++) {
    const t = targets[Math.floor(i / V)];
    if (t >= 0 && t < V && i % V === t) {
      hits[0].push(actual[i] + gradScale);
      hits[1].push(expected[i] + gradScale);
    } else {
      others[0].push(actual[i]);
      others[1].push(expected[i]);
    }
  }
  assertClose(others[0], others[1], `${context}, non-target elements`, { rtol, atol: 1e-12 });
  assertClose(hits[0], hits[1], `${context}, target elements`, {
    rtol,
    atol: 2 ** -22 * gradScale,
  });
}

/** Returns targets in [0, V), with rows 1, 4, 7, ... masked by -100. */
function makeTargets(rng: { int(n: number): number }, M: number, V: number): Int32Array {
  return Int32Array.from({ length: M }, (_, r) => (r % 3 === 1 ? -100 : rng.int(V)));
}

for (const V of [5, 513, 32000]) {
  for (const M of [1, 7]) {
    gpuTest(`crossEntropy matches reference V=${V} M=${M}`, async (gpu) => {
      const rng = testRng();
      const logits = rng.normals(M * V, 3);
      const targets = makeTargets(rng, M, V);
      const gradScale = 1 / 5;
      const logitsT = gpu.upload(logits, [M, V], "f32", "logits");
      const targetsT = gpu.upload(targets, [M], "i32", "targets");
      const dLogits = gpu.tensor([M, V], "f32", "dLogits");
      const rowLoss = gpu.tensor([M], "f32", "rowLoss");
      const stats = gpu.tensor([2], "f32", "stats");
      crossEntropy(gpu, logitsT, targetsT, dLogits, stats, { gradScale, rowLoss });

      const ref = crossEntropyRef(logits, targets, V, gradScale);
      const context = `V=${V} M=${M} seed ${rng.seed}`;
      assertClose(await gpu.readF32(rowLoss), ref.rowLoss, `row loss ${context}`, {
        rtol: 1e-5,
        atol: 1e-5,
      });
      const grad = await gpu.readF32(dLogits);
      assertGradClose(grad, ref.dLogits, targets, gradScale, `dLogits ${context}`, 2e-5);
      const s = await gpu.readF32(stats);
      assertClose([s[0]], [ref.sum], `loss sum ${context}`, { rtol: 1e-5, atol: 1e-5 });
      assert.equal(s[1], ref.count, `count ${context}`);
      assertClose(await gpu.readF32(logitsT), logits, `logits unchanged ${context}`, {
        rtol: 0,
        atol: 0,
      });
    });
  }
}

gpuTest("crossEntropy in place overwrites logits", async (gpu) => {
  const rng = testRng();
  const M = 7, V = 513;
  const logits = rng.normals(M * V, 2);
  const targets = makeTargets(rng, M, V);
  const logitsT = gpu.upload(logits, [M, V], "f32", "logits");
  const stats = gpu.tensor([2], "f32", "stats");
  crossEntropy(gpu, logitsT, gpu.upload(targets, [M], "i32", "targets"), logitsT, stats, {
    gradScale: 0.5,
  });
  const ref = crossEntropyRef(logits, targets, V, 0.5);
  const grad = await gpu.readF32(logitsT);
  assertGradClose(grad, ref.dLogits, targets, 0.5, `in-place dLogits seed ${rng.seed}`, 2e-5);
  const s = await gpu.readF32(stats);
  assertClose([s[0]], [ref.sum], `in-place loss sum seed ${rng.seed}`, { rtol: 1e-5, atol: 1e-5 });
  assert.equal(s[1], ref.count);
});

gpuTest("crossEntropy accumulates stats over calls", async (gpu) => {
  const rng = testRng();
  const V = 513;
  const first = { M: 7, logits: rng.normals(7 * V, 2), targets: makeTargets(rng, 7, V) };
  const second = { M: 1, logits: rng.normals(V, 2), targets: Int32Array.of(rng.int(V)) };
  const stats = gpu.upload(Float32Array.of(1.5, 2), [2], "f32", "stats");
  for (const step of [first, second]) {
    const logitsT = gpu.upload(step.logits, [step.M, V], "f32", "logits");
    const targetsT = gpu.upload(step.targets, [step.M], "i32", "targets");
    crossEntropy(gpu, logitsT, targetsT, logitsT, stats);
  }
  const a = crossEntropyRef(first.logits, first.targets, V);
  const b = crossEntropyRef(second.logits, second.targets, V);
  const s = await gpu.readF32(stats);
  assertClose([s[0]], [1.5 + a.sum + b.sum], `accumulated loss seed ${rng.seed}`, {
    rtol: 1e-5,
    atol: 1e-5,
  });
  assert.equal(s[1], 2 + a.count + b.count);
});

gpuTest("crossEntropy gradient matches central differences", async (gpu) => {
  const rng = testRng();
  const M = 3, V = 5;
  const logits = rng.normals(M * V);
  const targets = Int32Array.of(rng.int(V), -100, rng.int(V));
  const gradScale = 1 / 2;
  const dLogits = gpu.tensor([M, V], "f32", "dLogits");
  const stats = gpu.tensor([2], "f32", "stats");
  crossEntropy(
    gpu,
    gpu.upload(logits, [M, V], "f32", "logits"),
    gpu.upload(targets, [M], "i32", "targets"),
    dLogits,
    stats,
    { gradScale },
  );
  const x = Float64Array.from(logits);
  const numeric = numericGrad(() => crossEntropyRef(x, targets, V).sum * gradScale, x);
  const grad = await gpu.readF32(dLogits);
  assertGradClose(grad, numeric, targets, gradScale, `central differences seed ${rng.seed}`, 2e-5);
});

gpuTest("crossEntropy stable for large logits", async (gpu) => {
  const rng = testRng();
  const M = 7, V = 32000;
  const logits = rng.normals(M * V, 30).map((x) => x + 1000);
  const targets = makeTargets(rng, M, V);
  const logitsT = gpu.upload(logits, [M, V], "f32", "logits");
  const rowLoss = gpu.tensor([M], "f32", "rowLoss");
  const stats = gpu.tensor([2], "f32", "stats");
  crossEntropy(gpu, logitsT, gpu.upload(targets, [M], "i32", "targets"), logitsT, stats, {
    rowLoss,
  });
  const ref = crossEntropyRef(logits, targets, V);
  // The logits near 1000 carry an f32 rounding of about 6e-5, which bounds the loss accuracy.
  assertClose(await gpu.readF32(rowLoss), ref.rowLoss, `large row loss seed ${rng.seed}`, {
    rtol: 1e-5,
    atol: 3e-4,
  });
  const grad = await gpu.readF32(logitsT);
  assertGradClose(grad, ref.dLogits, targets, 1, `large dLogits seed ${rng.seed}`, 3e-4);
});

gpuTest("crossEntropy handles V of 128K", async (gpu) => {
  const rng = testRng();
  const M = 2, V = 131072;
  const logits = rng.normals(M * V, 4);
  const targets = Int32Array.of(rng.int(V), rng.int(V));
  const logitsT = gpu.upload(logits, [M, V], "f32", "logits");
  const rowLoss = gpu.tensor([M], "f32", "rowLoss");
  const stats = gpu.tensor([2], "f32", "stats");
  crossEntropy(gpu, logitsT, gpu.upload(targets, [M], "i32", "targets"), logitsT, stats, {
    rowLoss,
  });
  const ref = crossEntropyRef(logits, targets, V);
  assertClose(await gpu.readF32(rowLoss), ref.rowLoss, `128K row loss seed ${rng.seed}`, {
    rtol: 1e-5,
    atol: 1e-5,
  });
  const grad = await gpu.readF32(logitsT);
  assertGradClose(grad, ref.dLogits, targets, 1, `128K dLogits seed ${rng.seed}`, 2e-5);
});

gpuTest("crossEntropy without gradient keeps logits", async (gpu) => {
  const rng = testRng();
  const M = 7, V = 5;
  const logits = rng.normals(M * V);
  const targets = makeTargets(rng, M, V);
  const logitsT = gpu.upload(logits, [M, V], "f32", "logits");
  const stats = gpu.tensor([2], "f32", "stats");
  crossEntropy(gpu, logitsT, gpu.upload(targets, [M], "i32", "targets"), null, stats);
  const ref = crossEntropyRef(logits, targets, V);
  const s = await gpu.readF32(stats);
  assertClose([s[0]], [ref.sum], `loss only seed ${rng.seed}`, { rtol: 1e-5, atol: 1e-6 });
  assert.equal(s[1], ref.count);
  assertClose(await gpu.readF32(logitsT), logits, "logits unchanged", { rtol: 0, atol: 0 });
});

gpuTest("crossEntropy treats out-of-range targets as masked", async (gpu) => {
  const M = 3, V = 5;
  const logits = new Float32Array(M * V).fill(0);
  const targets = Int32Array.of(2, V, -1);
  const dLogits = gpu.tensor([M, V], "f32", "dLogits");
  const stats = gpu.tensor([2], "f32", "stats");
  crossEntropy(
    gpu,
    gpu.upload(logits, [M, V], "f32", "logits"),
    gpu.upload(targets, [M], "i32", "targets"),
    dLogits,
    stats,
  );
  const s = await gpu.readF32(stats);
  assertClose([s[0], s[1]], [Math.log(V), 1], "one counted row of uniform logits");
  const grad = await gpu.readF32(dLogits);
  assertClose(grad.subarray(V), new Float32Array(2 * V), "masked rows get zero gradient", {
    rtol: 0,
    atol: 0,
  });
});

gpuTest("crossEntropy rejects mismatched shapes", async (gpu) => {
  const logits = gpu.tensor([4, 9], "f32", "logits");
  const stats = gpu.tensor([2], "f32", "stats");
  const shortTargets = gpu.tensor([3], "i32", "targets");
  assert.throws(
    () => crossEntropy(gpu, logits, shortTargets, null, stats),
    (e: Error) =>
      e instanceof KernelError && /crossEntropy/.test(e.message) && /\[3\]/.test(e.message),
  );
  const targets = gpu.tensor([4], "i32", "targets");
  const wrongGrad = gpu.tensor([4, 8], "f32", "dLogits");
  assert.throws(
    () => crossEntropy(gpu, logits, targets, wrongGrad, stats),
    (e: Error) => e instanceof KernelError && /dLogits/.test(e.message),
  );
  const u32Targets = gpu.tensor([4], "u32", "u32 targets");
  assert.throws(
    () => crossEntropy(gpu, logits, u32Targets, null, stats),
    (e: Error) => e instanceof KernelError && /i32/.test(e.message),
  );
  assert.throws(
    () => crossEntropy(gpu, logits, targets, null, gpu.tensor([1], "f32", "stats")),
    (e: Error) => e instanceof KernelError && /stats/.test(e.message),
  );
  await gpu.sync();
});
