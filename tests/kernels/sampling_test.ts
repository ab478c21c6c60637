import assert from "node:assert/strict";
import { KernelError } from "../../kernels/device.ts";
import { argmax, sampleTopP } from "../../kernels/sampling.ts";
import { argmaxRef, orderKey, sampleRef, sampleTopPRef } from "../../model/reference/sampling.ts";
import { gpuTest, testRng } from "../helpers.ts";

/**
 * Smallest reference margin (fraction of the total mass) at which f32 sums must select the same
 * token: f32 sums over 32000 weights err by about 1e-6 of the total.
 */
const MARGIN = 2e-5;

/** Returns n uniforms in [0, 1) that are exact f32 values, as the kernel rounds them. */
function f32Uniforms(rng: { uniform(): number }, n: number): number[] {
  return Array.from({ length: n }, () => Math.min(Math.fround(rng.uniform()), 1 - 2 ** -24));
}

/**
 * Returns a topP near `topP` halfway between two cumulative masses of the ranking, at a step of at
 * least 4 * MARGIN, so that f32 sums cut the ranking where float64 does.
 */
function robustTopP(logits: Float32Array, temperature: number, topP: number): number {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  const weights = Array.from(logits, (x) => Math.exp((x - max) / temperature));
  const total = weights.reduce((a, b) => a + b, 0);
  const keys = Array.from(logits, orderKey);
  const ranking = weights.map((_, j) => j).sort((a, b) => keys[b] - keys[a] || a - b);
  const cumulative = [0];
  for (const j of ranking) cumulative.push(cumulative[cumulative.length - 1] + weights[j] / total);

  let k = cumulative.findIndex((c) => c >= topP);
  if (k < 1) k = ranking.length;
  while (k > 1 && cumulative[k] - cumulative[k - 1] < 4 * MARGIN) k--;
  return (cumulative[k - 1] + cumulative[k]) / 2;
}

for (const V of [5, 513, 32000]) {
  gpuTest(`argmax picks lowest tied index V=${V}`, async (gpu) => {
    const rng = testRng();
    const plain = rng.normals(V);
    const tied = Float32Array.from(plain);
    const positions = [rng.int(V), rng.int(V), rng.int(V)];
    for (const j of positions) tied[j] = 20;
    const out = gpu.tensor([2], "u32", "tokens");
    argmax(gpu, gpu.upload(plain, [V], "f32", "plain"), out, 0);
    argmax(gpu, gpu.upload(tied, [V], "f32", "tied"), out, 1);
    const got = await gpu.read(out);
    assert.equal(got[0], argmaxRef(plain), `plain V=${V} seed ${rng.seed}`);
    assert.equal(got[1], Math.min(...positions), `ties at ${positions} seed ${rng.seed}`);
  });
}

gpuTest("argmax reads requested row", async (gpu) => {
  const rng = testRng();
  const rows = 3, V = 513;
  const logits = rng.normals(rows * V);
  const logitsT = gpu.upload(logits, [rows, V], "f32", "logits");
  const out = gpu.tensor([5], "u32", "tokens");
  for (let r = 0; r < rows; r++) argmax(gpu, logitsT, out, r + 2, { row: r });
  const got = await gpu.read(out);
  for (let r = 0; r < rows; r++) {
    const expected = argmaxRef(logits.subarray(r * V, (r + 1) * V));
    assert.equal(got[r + 2], expected, `row ${r} seed ${rng.seed}`);
  }
});

interface Case {
  V: number;
  temperature: number;
  topP: number;
  samples: number;
  /** Logit generator: normals times a scale, or rounded to halves so that many logits tie. */
  quantised?: boolean;
}

const CASES: Case[] = [
  { V: 5, temperature: 1, topP: 0.6, samples: 60 },
  { V: 513, temperature: 0.7, topP: 0.9, samples: 60 },
  { V: 513, temperature: 1.3, topP: 0.35, samples: 60 },
  { V: 513, temperature: 1, topP: 0.8, samples: 60, quantised: true },
  { V: 513, temperature: 1, topP: 0.3, samples: 60, quantised: true },
  { V: 32000, temperature: 0.8, topP: 0.9, samples: 8 },
  { V: 32000, temperature: 1, topP: 0.5, samples: 8, quantised: true },
];

for (const c of CASES) {
  const name = `sampleTopP matches reference V=${c.V} T=${c.temperature} topP=${c.topP}` +
    (c.quantised ? " with ties" : "");
  gpuTest(name, async (gpu) => {
    const rng = testRng();
    const normals = rng.normals(c.V, 3);
    const logits = c.quantised ? normals.map((x) => Math.round(x * 2) / 2) : normals;
    const logitsT = gpu.upload(logits, [c.V], "f32", "logits");
    const uniforms = f32Uniforms(rng, c.samples);
    const out = gpu.tensor([c.samples], "u32", "tokens");
    const topP = robustTopP(logits, c.temperature, c.topP);
    const opts = { temperature: c.temperature, topP };
    uniforms.forEach((uniform, i) => sampleTopP(gpu, logitsT, out, i, { ...opts, uniform }));
    const got = await gpu.read(out);

    let compared = 0;
    for (let i = 0; i < c.samples; i++) {
      const ref = sampleTopPRef(logits, { ...opts, uniform: uniforms[i] });
      assert.ok(ref.cutMargin >= MARGIN, `topP ${topP} is too near a cut, seed ${rng.seed}`);
      if (ref.pickMargin < MARGIN) continue;
      compared++;
      assert.equal(
        got[i],
        ref.token,
        `uniform ${uniforms[i]} (kept ${ref.kept.length} tokens) seed ${rng.seed}`,
      );
    }
    assert.ok(compared >= c.samples / 2, `only ${compared} samples far from a boundary`);
  });
}

gpuTest("sampleTopP keeps lowest-index ties", async (gpu) => {
  const rng = testRng();
  for (const V of [513, 32000]) {
    // All logits tie, so the kept set is the first k indices and sampling is uniform over them.
    const logits = new Float32Array(V).fill(0.25);
    const k = 1 + rng.int(V - 1);
    const topP = (k - 0.5) / V;
    const samples = 12;
    const uniforms = f32Uniforms(rng, samples);
    const out = gpu.tensor([samples], "u32", "tokens");
    const logitsT = gpu.upload(logits, [V], "f32", "logits");
    uniforms.forEach((uniform, i) => {
      sampleTopP(gpu, logitsT, out, i, { temperature: 1, topP, uniform });
    });
    const got = await gpu.read(out);
    for (let i = 0; i < samples; i++) {
      const ref = sampleTopPRef(logits, { temperature: 1, topP, uniform: uniforms[i] });
      assert.equal(ref.kept.length, k);
      const context = `V=${V} k=${k} uniform ${uniforms[i]} seed ${rng.seed}`;
      assert.ok(got[i] < k, `token ${got[i]} is outside the kept set, ${context}`);
      if (ref.pickMargin >= MARGIN) assert.equal(got[i], ref.token, context);
    }
  }
});

gpuTest("sampleTopP with topP 1 samples plainly", async (gpu) => {
  const rng = testRng();
  const V = 513, samples = 60, temperature = 0.9;
  const logits = rng.normals(V, 2);
  const logitsT = gpu.upload(logits, [V], "f32", "logits");
  const uniforms = f32Uniforms(rng, samples);
  const out = gpu.tensor([samples], "u32", "tokens");
  uniforms.forEach((uniform, i) =>
    sampleTopP(gpu, logitsT, out, i, { temperature, topP: 1, uniform })
  );
  const got = await gpu.read(out);
  let compared = 0;
  for (let i = 0; i < samples; i++) {
    const ref = sampleRef(logits, temperature, uniforms[i]);
    if (ref.pickMargin < MARGIN) continue;
    compared++;
    assert.equal(got[i], ref.token, `uniform ${uniforms[i]} seed ${rng.seed}`);
  }
  assert.ok(compared >= samples / 2, `only ${compared} samples far from a boundary`);
});

gpuTest("sampleTopP with tiny topP is argmax", async (gpu) => {
  const rng = testRng();
  for (const V of [5, 32000]) {
    const logits = rng.normals(V, 2);
    const positions = [rng.int(V), rng.int(V)];
    for (const j of positions) logits[j] = 20;
    const logitsT = gpu.upload(logits, [V], "f32", "logits");
    const uniforms = [0, ...f32Uniforms(rng, 5), 1 - 2 ** -24];
    const out = gpu.tensor([uniforms.length], "u32", "tokens");
    uniforms.forEach((uniform, i) => {
      sampleTopP(gpu, logitsT, out, i, { temperature: 1.5, topP: 1e-6, uniform });
    });
    const got = await gpu.read(out);
    for (let i = 0; i < uniforms.length; i++) {
      assert.equal(
        got[i],
        Math.min(...positions),
        `V=${V} uniform ${uniforms[i]} seed ${rng.seed}`,
      );
    }
  }
});

gpuTest("sampleTopP reads requested row", async (gpu) => {
  const rng = testRng();
  const rows = 4, V = 513, samples = 30;
  const logits = rng.normals(rows * V, 3);
  const logitsT = gpu.upload(logits, [rows, V], "f32", "logits");
  const uniforms = f32Uniforms(rng, samples);
  const out = gpu.tensor([samples], "u32", "tokens");
  const row = logits.subarray(3 * V);
  const opts = { temperature: 1, topP: robustTopP(row, 1, 0.75), row: 3 };
  uniforms.forEach((uniform, i) => sampleTopP(gpu, logitsT, out, i, { ...opts, uniform }));
  const got = await gpu.read(out);
  let compared = 0;
  for (let i = 0; i < samples; i++) {
    const ref = sampleTopPRef(row, { ...opts, uniform: uniforms[i] });
    assert.ok(ref.cutMargin >= MARGIN, `topP too near a cut, seed ${rng.seed}`);
    if (ref.pickMargin < MARGIN) continue;
    compared++;
    assert.equal(got[i], ref.token, `row 3 uniform ${uniforms[i]} seed ${rng.seed}`);
  }
  assert.ok(compared >= samples / 2, `only ${compared} samples far from a boundary`);
});

function throwsKernelError(fn: () => void, kernel: string, pattern: RegExp): void {
  assert.throws(fn, (e: Error) => {
    assert.ok(e instanceof KernelError, `expected a KernelError, got ${e}`);
    assert.match(e.message, new RegExp(`^${kernel}:`));
    assert.match(e.message, pattern);
    return true;
  });
}

gpuTest("sampling kernels reject invalid arguments", async (gpu) => {
  const logits = gpu.tensor([2, 7], "f32", "logits");
  const out = gpu.tensor([3], "u32", "tokens");
  const ok = { temperature: 1, topP: 0.9, uniform: 0.5 };
  const cube = gpu.tensor([2, 2, 7], "f32", "cube");
  throwsKernelError(() => argmax(gpu, cube, out, 0), "argmax", /\(rows, V\)/);
  throwsKernelError(() => argmax(gpu, logits, gpu.tensor([3], "i32", "ids"), 0), "argmax", /u32/);
  throwsKernelError(() => argmax(gpu, logits, out, 3), "argmax", /outIndex 3/);
  throwsKernelError(() => argmax(gpu, logits, out, 0, { row: 2 }), "argmax", /row 2/);
  throwsKernelError(
    () => sampleTopP(gpu, gpu.tensor([7], "i32", "ids"), out, 0, ok),
    "sampleTopP",
    /f32/,
  );
  throwsKernelError(() => sampleTopP(gpu, logits, out, -1, ok), "sampleTopP", /outIndex -1/);
  throwsKernelError(
    () => sampleTopP(gpu, logits, out, 0, { ...ok, temperature: 0 }),
    "sampleTopP",
    /temperature/,
  );
  throwsKernelError(
    () => sampleTopP(gpu, logits, out, 0, { ...ok, topP: 0 }),
    "sampleTopP",
    /topP/,
  );
  throwsKernelError(
    () => sampleTopP(gpu, logits, out, 0, { ...ok, topP: 1.5 }),
    "sampleTopP",
    /topP/,
  );
  throwsKernelError(
    () => sampleTopP(gpu, logits, out, 0, { ...ok, uniform: 1 }),
    "sampleTopP",
    /uniform/,
  );
  await gpu.sync();
});
