import { deepEqual, equal, throws } from "node:assert/strict";
import { KernelError } from "../../kernels/device.ts";
import {
  add,
  allFinite,
  copyRows,
  fill,
  flagNonFinite,
  scale,
  sumSquares,
} from "../../kernels/elementwise.ts";
import { assertClose, gpuTest, testRng } from "../helpers.ts";

gpuTest("add into a new tensor and in place", async (gpu) => {
  const rng = testRng();
  const shape = [33, 257];
  const n = 33 * 257;
  const a = rng.normals(n);
  const b = rng.normals(n);
  const sum = Float64Array.from(a, (v, i) => v + b[i]);
  const tol = { rtol: 1e-7, atol: 0 };

  const out = gpu.tensor(shape, "f32", "out");
  add(gpu, gpu.upload(a, shape, "f32", "a"), gpu.upload(b, shape, "f32", "b"), out);
  assertClose(await gpu.readF32(out), sum, `a + b seed ${rng.seed}`, tol);

  const residual = gpu.upload(a, shape, "f32", "residual");
  add(gpu, residual, gpu.upload(b, shape, "f32", "b"), residual);
  assertClose(await gpu.readF32(residual), sum, `a += b seed ${rng.seed}`, tol);

  const bInPlace = gpu.upload(b, shape, "f32", "b in place");
  add(gpu, gpu.upload(a, shape, "f32", "a"), bInPlace, bInPlace);
  assertClose(await gpu.readF32(bInPlace), sum, `b += a seed ${rng.seed}`, tol);

  const doubled = gpu.upload(a, shape, "f32", "doubled");
  add(gpu, doubled, doubled, doubled);
  assertClose(await gpu.readF32(doubled), a.map((v) => 2 * v), `a + a in place`, tol);
});

gpuTest("scale into a new tensor and in place", async (gpu) => {
  const rng = testRng();
  const n = 1001;
  const x = rng.normals(n);
  const alpha = -0.37;
  const expected = Float64Array.from(x, (v) => alpha * v);
  const tol = { rtol: 1e-7, atol: 0 };

  const out = gpu.tensor([n], "f32", "out");
  scale(gpu, gpu.upload(x, [n], "f32", "x"), alpha, out);
  assertClose(await gpu.readF32(out), expected, `scale seed ${rng.seed}`, tol);

  const inPlace = gpu.upload(x, [7, 11, 13], "f32", "x in place");
  scale(gpu, inPlace, alpha, inPlace);
  assertClose(await gpu.readF32(inPlace), expected, `scale in place seed ${rng.seed}`, tol);
});

gpuTest("fill f32, u32 and i32 tensors", async (gpu) => {
  const f = gpu.upload(new Float32Array([1, 2, 3, 4, 5]), [5], "f32", "f");
  fill(gpu, f, -2.5);
  deepEqual([...await gpu.readF32(f)], [-2.5, -2.5, -2.5, -2.5, -2.5]);
  fill(gpu, f, 0);
  deepEqual([...await gpu.readF32(f)], [0, 0, 0, 0, 0]);

  const u = gpu.tensor([3, 3], "u32", "u");
  fill(gpu, u, 0xffffffff);
  deepEqual([...await gpu.read(u)], Array(9).fill(0xffffffff));

  const i = gpu.tensor([4], "i32", "i");
  fill(gpu, i, -7);
  deepEqual([...await gpu.read(i)], [-7, -7, -7, -7]);

  throws(() => fill(gpu, u, 1.5), /not an integer/);
  throws(() => fill(gpu, gpu.tensor([4], "bf16", "packed"), 1), KernelError);
});

gpuTest("copyRows copies a row range", async (gpu) => {
  const src = gpu.upload(Float32Array.from({ length: 15 }, (_, i) => i), [5, 3], "f32", "src");
  const dst = gpu.upload(new Float32Array(21).fill(-1), [7, 3], "f32", "dst");
  copyRows(gpu, src, 1, dst, 4, 3);
  const expected = Array(21).fill(-1);
  for (let r = 0; r < 3; r++) {
    for (let c = 0; c < 3; c++) expected[(4 + r) * 3 + c] = (1 + r) * 3 + c;
  }
  deepEqual([...await gpu.readF32(dst)], expected);

  throws(() => copyRows(gpu, src, 3, dst, 0, 3), /out of bounds/);
  throws(() => copyRows(gpu, src, 0, dst, 5, 3), /out of bounds/);
  throws(() => copyRows(gpu, src, 0, gpu.tensor([7, 4], "f32", "wide"), 0, 1), KernelError);
  throws(() => copyRows(gpu, src, 0, gpu.tensor([7, 3], "u32", "u32 dst"), 0, 1), /dtype/);
  throws(() => copyRows(gpu, src, 0, src, 2, 1), /share a buffer/);
  throws(() => copyRows(gpu, src, -1, dst, 0, 1), /srcRow/);
  const packed = gpu.tensor([4, 3], "bf16", "packed");
  throws(() => copyRows(gpu, packed, 0, gpu.tensor([4, 3], "bf16", "packed dst"), 0, 1), /bytes/);
});

gpuTest("sumSquares accumulates into one element", async (gpu) => {
  const rng = testRng();
  // 70001 elements exceed 256 workgroups of 256 invocations, so invocations loop; 5 and 1 do not.
  const sizes = [70001, 5, 1];
  const xs = sizes.map((n) => rng.normals(n));
  const out = gpu.upload(new Float32Array([0.5, 10, -1]), [3], "f32", "out");
  for (const x of xs) sumSquares(gpu, gpu.upload(x, [x.length], "f32", "x"), out, 1);
  sumSquares(gpu, gpu.upload(xs[1], [5], "f32", "x"), out, 2);

  const squares = (x: Float32Array) => x.reduce((s, v) => s + v * v, 0);
  const expected = [0.5, 10 + xs.reduce((s, x) => s + squares(x), 0), -1 + squares(xs[1])];
  assertClose(await gpu.readF32(out), expected, `sum of squares seed ${rng.seed}`, {
    rtol: 1e-5,
    atol: 0,
  });

  const x = gpu.tensor([4], "f32", "x");
  throws(() => sumSquares(gpu, x, out, 3), /outIndex 3/);
  throws(() => sumSquares(gpu, x, x, 0), /share a buffer/);
  throws(() => sumSquares(gpu, gpu.tensor([4], "u32", "u32 x"), out, 0), KernelError);
});

gpuTest("flagNonFinite finds NaN and infinities", async (gpu) => {
  const rng = testRng();
  const finite = rng.normals(1000);
  finite[17] = 3e38;
  finite[18] = -1e-45;
  const flags = gpu.upload(new Uint32Array([0, 0, 0, 0]), [4], "u32", "flags");
  flagNonFinite(gpu, gpu.upload(finite, [1000], "f32", "finite"), flags, 0);
  for (const [index, bad] of [[1, NaN], [2, Infinity], [3, -Infinity]]) {
    const x = Float32Array.from(finite);
    x[999 - index] = bad;
    flagNonFinite(gpu, gpu.upload(x, [1000], "f32", `with ${bad}`), flags, index);
  }
  deepEqual([...await gpu.read(flags)], [0, 1, 1, 1]);

  equal(await allFinite(gpu, gpu.upload(finite, [1000], "f32", "finite")), true);
  const nan = Float32Array.from(finite);
  nan[0] = NaN;
  equal(await allFinite(gpu, gpu.upload(nan, [1000], "f32", "nan")), false);
  throws(() => flagNonFinite(gpu, gpu.tensor([4], "f32", "x"), flags, 4), /index 4/);
});

gpuTest("elementwise kernels fold large grids", async (gpu) => {
  // More elements than 65535 workgroups of 256 invocations cover in one grid dimension.
  const n = 65535 * 256 + 1000;
  const x = gpu.tensor([n], "f32", "large");
  fill(gpu, x, 1.5);
  scale(gpu, x, 2, x);
  add(gpu, x, x, x);
  const total = gpu.upload(new Float32Array([0]), [1], "f32", "total");
  sumSquares(gpu, x, total, 0);
  const flags = gpu.upload(new Uint32Array([0]), [1], "u32", "flags");
  flagNonFinite(gpu, x, flags, 0);

  const tail = await gpu.readF32(x, n - 2000, 2000);
  deepEqual(new Set(tail), new Set([6]));
  const head = await gpu.readF32(x, 0, 1000);
  deepEqual(new Set(head), new Set([6]));
  assertClose(await gpu.readF32(total), [36 * n], "sum of squares of a large tensor", {
    rtol: 1e-6,
    atol: 0,
  });
  deepEqual([...await gpu.read(flags)], [0]);
  x.buffer.destroy();
});
