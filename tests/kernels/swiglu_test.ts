import { throws } from "node:assert/strict";
import { KernelError } from "../../kernels/device.ts";
import { swigluBackward, swigluForward } from "../../kernels/swiglu.ts";
import { swigluBackwardRef, swigluForwardRef } from "../../model/reference/swiglu.ts";
import { assertClose, gpuTest, numericGrad, testRng } from "../helpers.ts";

const SIZES = [1, 3, 33].flatMap((M) => [1, 7, 64, 257].map((F) => [M, F] as const));

/** Gate inputs: normals of scale 3, with saturating values at the start to check for NaN. */
function gateInputs(rng: ReturnType<typeof testRng>, n: number): Float32Array {
  const a = rng.normals(n, 3);
  const extremes = [-100, 100, -30, 30, -1e-30];
  for (let i = 0; i < Math.min(n, extremes.length); i++) a[i] = extremes[i];
  return a;
}

gpuTest("swiglu forward and backward", async (gpu) => {
  const rng = testRng();
  for (const [M, F] of SIZES) {
    const n = M * F;
    const a = gateInputs(rng, n);
    const b = rng.normals(n);
    const dOut = rng.normals(n);
    const aT = gpu.upload(a, [M, F], "f32", "a");
    const bT = gpu.upload(b, [M, F], "f32", "b");
    const out = gpu.tensor([M, F], "f32", "out");
    swigluForward(gpu, aT, bT, out);
    const da = gpu.upload(rng.normals(n), [M, F], "f32", "da");
    const db = gpu.upload(rng.normals(n), [M, F], "f32", "db");
    swigluBackward(gpu, aT, bT, gpu.upload(dOut, [M, F], "f32", "dOut"), da, db);

    const what = `M=${M} F=${F} seed ${rng.seed}`;
    const tol = { rtol: 1e-5, atol: 1e-6 };
    assertClose(await gpu.readF32(out), swigluForwardRef(a, b), `out ${what}`, tol);
    const ref = swigluBackwardRef(a, b, dOut);
    assertClose(await gpu.readF32(da), ref.da, `da ${what}`, tol);
    assertClose(await gpu.readF32(db), ref.db, `db ${what}`, tol);
  }
});

Deno.test("swiglu reference backward matches central differences", () => {
  const rng = testRng();
  const n = 21;
  const a = Float64Array.from(rng.normals(n, 3));
  const b = Float64Array.from(rng.normals(n));
  const g = rng.normals(n);
  const loss = () => swigluForwardRef(a, b).reduce((s, v, i) => s + v * g[i], 0);
  const ref = swigluBackwardRef(a, b, g);
  const tol = { rtol: 1e-6, atol: 1e-8 };
  assertClose(ref.da, numericGrad(loss, a), `da seed ${rng.seed}`, tol);
  assertClose(ref.db, numericGrad(loss, b), `db seed ${rng.seed}`, tol);
});

gpuTest("swiglu rejects bad shapes and aliasing", async (gpu) => {
  const a = gpu.tensor([3, 5], "f32", "a");
  const b = gpu.tensor([3, 5], "f32", "b");
  const out = gpu.tensor([3, 5], "f32", "out");
  throws(() => swigluForward(gpu, a, gpu.tensor([5, 3], "f32", "b transposed"), out), KernelError);
  throws(() => swigluForward(gpu, a, b, a), /share a buffer/);
  throws(() => swigluForward(gpu, gpu.tensor([15], "f32", "flat"), b, out), /\(M, F\)/);
  const dOut = gpu.tensor([3, 5], "f32", "dOut");
  throws(() => swigluBackward(gpu, a, b, dOut, out, out), /share a buffer/);
  throws(
    () => swigluBackward(gpu, a, b, dOut, out, gpu.tensor([3, 5], "u32", "u32 db")),
    /dtype u32/,
  );
  await gpu.sync();
});
