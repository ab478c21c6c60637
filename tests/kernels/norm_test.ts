import { throws } from "node:assert/strict";
import { KernelError } from "../../kernels/device.ts";
import { rmsnormBackward, rmsnormForward } from "../../kernels/norm.ts";
import { packHalf, unpackHalf } from "../../kernels/pack.ts";
import { rmsnormBackwardRef, rmsnormForwardRef } from "../../model/reference/norm.ts";
import { assertClose, gpuTest, numericGrad, testRng } from "../helpers.ts";

const EPS = 1e-5;
const SIZES = [1, 7, 64, 257].flatMap((C) => [1, 3, 33].map((M) => [M, C] as const));

for (const dtype of ["f32", "bf16", "f16"] as const) {
  gpuTest(`rmsnorm forward with ${dtype} weight`, async (gpu) => {
    const rng = testRng();
    for (const [M, C] of SIZES) {
      const x = rng.normals(M * C, 2);
      const w = rng.normals(C);
      const stored = dtype === "f32" ? w : unpackHalf(packHalf(w, dtype), dtype);
      const weight = dtype === "f32"
        ? gpu.upload(w, [C], "f32", "weight")
        : gpu.upload(packHalf(w, dtype), [C], dtype, "weight");
      const out = gpu.tensor([M, C], "f32", "out");
      const rstd = gpu.tensor([M], "f32", "rstd");
      rmsnormForward(gpu, gpu.upload(x, [M, C], "f32", "x"), weight, out, rstd, EPS);

      const ref = rmsnormForwardRef(x, stored, M, C, EPS);
      const what = `M=${M} C=${C} ${dtype} seed ${rng.seed}`;
      assertClose(await gpu.readF32(out), ref.out, `out ${what}`, { rtol: 1e-5, atol: 1e-6 });
      assertClose(await gpu.readF32(rstd), ref.rstd, `rstd ${what}`, { rtol: 1e-5, atol: 0 });
    }
  });
}

/**
 * Returns, per element, the magnitude of the two terms whose difference is dx:
 * rstd * |weight * dOut| + rstd^3 / C * |x| * sum_k |dOut * weight * x|. When they nearly cancel
 * (a row with C = 1, or a tiny x), f32 loses digits relative to this scale, not to dx itself.
 */
function dxTermScale(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  dOut: ArrayLike<number>,
  M: number,
  C: number,
): Float64Array {
  const { rstd } = rmsnormForwardRef(x, w, M, C, EPS);
  const scale = new Float64Array(M * C);
  for (let m = 0; m < M; m++) {
    const r = rstd[m];
    let dot = 0;
    for (let c = 0; c < C; c++) dot += Math.abs(dOut[m * C + c] * w[c] * x[m * C + c]);
    for (let c = 0; c < C; c++) {
      const i = m * C + c;
      scale[i] = r * Math.abs(w[c] * dOut[i]) + (r ** 3 / C) * Math.abs(x[i]) * dot;
    }
  }
  return scale;
}

/** Asserts |actual - expected| <= 1e-5 * scale + 1e-6 element-wise, naming the worst element. */
function assertScaledClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  scale: ArrayLike<number>,
  what: string,
): void {
  let worst = -1;
  let worstRatio = 1;
  for (let i = 0; i < expected.length; i++) {
    const ratio = Math.abs(actual[i] - expected[i]) / (1e-5 * scale[i] + 1e-6);
    if (!(ratio <= worstRatio)) {
      worst = i;
      worstRatio = ratio;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
        `(term scale ${scale[worst]}, ${worstRatio.toFixed(2)} times the tolerance)`,
    );
  }
}

for (const dtype of ["f32", "bf16"] as const) {
  gpuTest(`rmsnorm backward with ${dtype} weight`, async (gpu) => {
    const rng = testRng();
    for (const [M, C] of SIZES) {
      const x = rng.normals(M * C, 2);
      const w = rng.normals(C);
      const dOut = rng.normals(M * C);
      const stored = dtype === "f32" ? w : unpackHalf(packHalf(w, dtype), dtype);
      const weight = dtype === "f32"
        ? gpu.upload(w, [C], "f32", "weight")
        : gpu.upload(packHalf(w, dtype), [C], dtype, "weight");
      const xT = gpu.upload(x, [M, C], "f32", "x");
      const out = gpu.tensor([M, C], "f32", "out");
      const rstd = gpu.tensor([M], "f32", "rstd");
      rmsnormForward(gpu, xT, weight, out, rstd, EPS);

      const dOutT = gpu.upload(dOut, [M, C], "f32", "dOut");
      const dx = gpu.upload(rng.normals(M * C), [M, C], "f32", "dx");
      rmsnormBackward(gpu, xT, weight, rstd, dOutT, dx);

      const dxPrior = rng.normals(M * C);
      const dxSum = gpu.upload(dxPrior, [M, C], "f32", "dx accumulated");
      const dWeightPrior = rng.normals(C);
      const dWeight = gpu.upload(dWeightPrior, [C], "f32", "dWeight");
      rmsnormBackward(gpu, xT, weight, rstd, dOutT, dxSum, { accumulate: true, dWeight });

      const ref = rmsnormBackwardRef(x, stored, dOut, M, C, EPS);
      const scale = dxTermScale(x, stored, dOut, M, C);
      const what = `M=${M} C=${C} ${dtype} seed ${rng.seed}`;
      assertScaledClose(await gpu.readF32(dx), ref.dx, scale, `dx ${what}`);
      const dxExpected = ref.dx.map((v, i) => v + dxPrior[i]);
      assertScaledClose(await gpu.readF32(dxSum), dxExpected, scale, `accumulated dx ${what}`);
      const dWeightExpected = ref.dWeight.map((v, i) => v + dWeightPrior[i]);
      assertClose(await gpu.readF32(dWeight), dWeightExpected, `dWeight ${what}`, {
        rtol: 1e-5,
        atol: 1e-5,
      });
    }
  });
}

Deno.test("rmsnorm reference backward matches central differences", () => {
  const rng = testRng();
  const M = 3, C = 7;
  const x = Float64Array.from(rng.normals(M * C, 2));
  const w = Float64Array.from(rng.normals(C));
  const g = rng.normals(M * C);
  const loss = () => {
    const { out } = rmsnormForwardRef(x, w, M, C, EPS);
    return out.reduce((s, v, i) => s + v * g[i], 0);
  };
  const ref = rmsnormBackwardRef(x, w, g, M, C, EPS);
  const tol = { rtol: 1e-6, atol: 1e-8 };
  assertClose(ref.dx, numericGrad(loss, x), `dx seed ${rng.seed}`, tol);
  assertClose(ref.dWeight, numericGrad(loss, w), `dWeight seed ${rng.seed}`, tol);
});

gpuTest("rmsnorm rejects mismatched shapes", async (gpu) => {
  const x = gpu.tensor([3, 8], "f32", "x");
  const weight = gpu.tensor([8], "f32", "weight");
  const out = gpu.tensor([3, 8], "f32", "out");
  const rstd = gpu.tensor([3], "f32", "rstd");
  const shortWeight = gpu.tensor([7], "f32", "short weight");
  throws(() => rmsnormForward(gpu, x, shortWeight, out, rstd, EPS), KernelError);
  const badRstd = gpu.tensor([4], "f32", "bad rstd");
  throws(() => rmsnormForward(gpu, x, weight, out, badRstd, EPS), KernelError);
  const flat = gpu.tensor([24], "f32", "flat");
  throws(() => rmsnormForward(gpu, flat, weight, out, rstd, EPS), /must be \(M, C\)/);
  throws(() => rmsnormForward(gpu, x, weight, x, rstd, EPS), /share a buffer/);
  const wideDx = gpu.tensor([3, 9], "f32", "wide dx");
  throws(() => rmsnormBackward(gpu, x, weight, rstd, out, wideDx), KernelError);
  const badDWeight = gpu.tensor([9], "f32", "bad dWeight");
  throws(
    () =>
      rmsnormBackward(gpu, x, weight, rstd, out, gpu.tensor([3, 8], "f32", "dx"), {
        dWeight: badDWeight,
      }),
    /bad dWeight/,
  );
  await gpu.sync();
});
