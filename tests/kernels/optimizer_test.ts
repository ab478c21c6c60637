import assert from "node:assert/strict";
import { type Gpu, KernelError, type Tensor } from "../../kernels/device.ts";
import { adamwStep, clipScale, sumSquares } from "../../kernels/optimizer.ts";
import { adamwStepRef, clipScaleRef, sumSquaresRef } from "../../model/reference/optimizer.ts";
import { assertClose, gpuTest, testRng } from "../helpers.ts";

const HYPERPARAMS = { lr: 3e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.02 };

/** Creates parameters and zeroed moments on the GPU and in float64. */
function makeState(gpu: Gpu, init: Float32Array, shape: number[]) {
  return {
    param: gpu.upload(init, shape, "f32", "param"),
    m: gpu.tensor(shape, "f32", "m"),
    v: gpu.tensor(shape, "f32", "v"),
    refParam: Float64Array.from(init),
    refM: new Float64Array(init.length),
    refV: new Float64Array(init.length),
  };
}

gpuTest("adamwStep matches reference over steps", async (gpu) => {
  const rng = testRng();
  const shape = [37, 29];
  const n = 37 * 29;
  const s = makeState(gpu, rng.normals(n), shape);
  const grad = gpu.tensor(shape, "f32", "grad");
  for (let step = 1; step <= 6; step++) {
    const g = rng.normals(n, 0.5);
    gpu.write(grad, g);
    adamwStep(gpu, s.param, grad, s.m, s.v, { ...HYPERPARAMS, step });
    adamwStepRef(s.refParam, g, s.refM, s.refV, { ...HYPERPARAMS, step });
  }
  const context = `after 6 steps seed ${rng.seed}`;
  assertClose(await gpu.readF32(s.param), s.refParam, `param ${context}`, {
    rtol: 1e-5,
    atol: 1e-6,
  });
  assertClose(await gpu.readF32(s.m), s.refM, `m ${context}`, { rtol: 1e-5, atol: 1e-7 });
  assertClose(await gpu.readF32(s.v), s.refV, `v ${context}`, { rtol: 1e-5, atol: 1e-8 });
});

gpuTest("adamwStep applies decoupled weight decay", async (gpu) => {
  const rng = testRng();
  const n = 5;
  const init = rng.normals(n);
  const s = makeState(gpu, init, [n]);
  // With a zero gradient the moments stay 0, so only the decay moves the parameters.
  const grad = gpu.tensor([n], "f32", "grad");
  adamwStep(gpu, s.param, grad, s.m, s.v, { ...HYPERPARAMS, lr: 0.5, weightDecay: 0.1, step: 1 });
  const expected = Array.from(init, (x) => x * (1 - 0.5 * 0.1));
  assertClose(await gpu.readF32(s.param), expected, `decay only seed ${rng.seed}`, {
    rtol: 1e-6,
    atol: 0,
  });
});

gpuTest("adamwStep scales gradients by GPU factor", async (gpu) => {
  const rng = testRng();
  const n = 1000;
  const s = makeState(gpu, rng.normals(n), [n]);
  const grad = gpu.tensor([n], "f32", "grad");
  const scale = gpu.tensor([1], "f32", "gradScale");
  const factors = [0.25, 1, 0.03, 0.7];
  for (let i = 0; i < factors.length; i++) {
    const g = rng.normals(n, 2);
    gpu.write(grad, g);
    gpu.write(scale, Float32Array.of(factors[i]));
    const step = i + 1;
    adamwStep(gpu, s.param, grad, s.m, s.v, { ...HYPERPARAMS, step, gradScale: scale });
    adamwStepRef(s.refParam, g, s.refM, s.refV, { ...HYPERPARAMS, step, gradScale: factors[i] });
  }
  const context = `scaled seed ${rng.seed}`;
  assertClose(await gpu.readF32(s.param), s.refParam, `param ${context}`, {
    rtol: 1e-5,
    atol: 1e-6,
  });
  assertClose(await gpu.readF32(s.m), s.refM, `m ${context}`, { rtol: 1e-5, atol: 1e-7 });
  assertClose(await gpu.readF32(s.v), s.refV, `v ${context}`, { rtol: 1e-5, atol: 1e-8 });
});

gpuTest("sumSquares accumulates over tensors", async (gpu) => {
  const rng = testRng();
  // 300_001 elements exceed 256 workgroups x 256 invocations x 4, so the grid-stride loop wraps.
  const sizes = [1, 5, 513, 300_001];
  const xs = sizes.map((n) => rng.normals(n));
  const acc = gpu.upload(Float32Array.of(2), [1], "f32", "acc");
  for (const x of xs) sumSquares(gpu, gpu.upload(x, [x.length], "f32", "x"), acc);
  const expected = 2 + sumSquaresRef(xs);
  assertClose(await gpu.readF32(acc), [expected], `sum of squares seed ${rng.seed}`, {
    rtol: 1e-5,
    atol: 0,
  });
});

gpuTest("clipScale limits global norm", async (gpu) => {
  const sum = gpu.tensor([1], "f32", "sumOfSquares");
  const out = gpu.tensor([1], "f32", "scale");
  for (const [s, maxNorm] of [[400, 1], [0.25, 1], [0, 1], [1e6, 5], [16, 4]]) {
    gpu.write(sum, Float32Array.of(s));
    clipScale(gpu, sum, maxNorm, out);
    assertClose(await gpu.readF32(out), [clipScaleRef(s, maxNorm)], `s=${s} maxNorm=${maxNorm}`, {
      rtol: 1e-6,
      atol: 0,
    });
  }
});

gpuTest("clipping pipeline runs without readback", async (gpu) => {
  const rng = testRng();
  const sizes = [700, 41];
  const states = sizes.map((n) => makeState(gpu, rng.normals(n), [n]));
  const acc = gpu.tensor([1], "f32", "sumOfSquares");
  const scale = gpu.tensor([1], "f32", "scale");

  // Adam's first step is almost invariant to the gradient scale, so step 1 sets nonzero moments
  // from small gradients and step 2 is the clipped one.
  const small = sizes.map((n) => rng.normals(n, 0.1));
  states.forEach((s, i) => {
    adamwStep(gpu, s.param, gpu.upload(small[i], [sizes[i]], "f32", "grad"), s.m, s.v, {
      ...HYPERPARAMS,
      step: 1,
    });
    adamwStepRef(s.refParam, small[i], s.refM, s.refV, { ...HYPERPARAMS, step: 1 });
  });

  const large = sizes.map((n) => rng.normals(n, 3));
  const largeTs = large.map((g, i) => gpu.upload(g, [sizes[i]], "f32", "grad"));
  gpu.clear(acc);
  for (const g of largeTs) sumSquares(gpu, g, acc);
  clipScale(gpu, acc, 1, scale);
  states.forEach((s, i) => {
    adamwStep(gpu, s.param, largeTs[i], s.m, s.v, { ...HYPERPARAMS, step: 2, gradScale: scale });
  });

  const factor = clipScaleRef(sumSquaresRef(large), 1);
  assert.ok(factor < 0.1, `gradients of norm ${1 / factor} should be clipped`);
  assertClose(await gpu.readF32(scale), [factor], `clip factor seed ${rng.seed}`, {
    rtol: 1e-5,
    atol: 0,
  });
  for (let i = 0; i < states.length; i++) {
    const s = states[i];
    adamwStepRef(s.refParam, large[i], s.refM, s.refV, {
      ...HYPERPARAMS,
      step: 2,
      gradScale: factor,
    });
    assertClose(await gpu.readF32(s.param), s.refParam, `param ${i} seed ${rng.seed}`, {
      rtol: 1e-5,
      atol: 1e-6,
    });
  }
});

function throwsKernelError(fn: () => void, kernel: string, pattern: RegExp): void {
  assert.throws(fn, (e: Error) => {
    assert.ok(e instanceof KernelError, `expected a KernelError, got ${e}`);
    assert.match(e.message, new RegExp(`^${kernel}:`));
    assert.match(e.message, pattern);
    return true;
  });
}

gpuTest("optimizer kernels reject invalid arguments", async (gpu) => {
  const t = (shape: number[], label: string, dtype: "f32" | "i32" = "f32"): Tensor =>
    gpu.tensor(shape, dtype, label);
  const param = t([4, 3], "param");
  const grad = t([4, 3], "grad");
  const m = t([4, 3], "m");
  const v = t([4, 3], "v");
  const opts = { ...HYPERPARAMS, step: 1 };
  throwsKernelError(
    () => adamwStep(gpu, param, t([3, 4], "grad"), m, v, opts),
    "adamwStep",
    /grad/,
  );
  throwsKernelError(
    () => adamwStep(gpu, param, grad, t([12], "m"), v, opts),
    "adamwStep",
    /\[12\]/,
  );
  throwsKernelError(() => adamwStep(gpu, param, grad, m, m, opts), "adamwStep", /distinct/);
  throwsKernelError(
    () => adamwStep(gpu, param, grad, m, v, { ...opts, gradScale: t([2], "scale") }),
    "adamwStep",
    /scale/,
  );
  throwsKernelError(
    () => adamwStep(gpu, param, grad, m, v, { ...opts, step: 0 }),
    "adamwStep",
    /step/,
  );
  throwsKernelError(
    () => adamwStep(gpu, param, grad, m, v, { ...opts, beta2: 1 }),
    "adamwStep",
    /beta2/,
  );
  throwsKernelError(() => sumSquares(gpu, t([5], "x", "i32"), t([1], "acc")), "sumSquares", /i32/);
  throwsKernelError(() => sumSquares(gpu, grad, t([2], "acc")), "sumSquares", /acc/);
  throwsKernelError(() => clipScale(gpu, t([1], "s"), 0, t([1], "out")), "clipScale", /maxNorm/);
  throwsKernelError(() => clipScale(gpu, t([2], "s"), 1, t([1], "out")), "clipScale", /'s'/);
  await gpu.sync();
});
