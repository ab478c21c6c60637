import { throws } from "node:assert/strict";
import { addBias, biasGrad } from "../../kernels/bias.ts";
import { addBiasRef, biasGradRef } from "../../model/reference/bias.ts";
import { assertClose, gpuTest, testRng } from "../helpers.ts";

const SIZES = [1, 5, 300].flatMap((M) => [1, 3, 64, 257].map((N) => [M, N] as const));

gpuTest("bias add and gradient", async (gpu) => {
  const rng = testRng();
  for (const [M, N] of SIZES) {
    const y = rng.normals(M * N);
    const b = rng.normals(N);
    const dy = rng.normals(M * N);
    const start = rng.normals(N);
    const yT = gpu.upload(y, [M, N], "f32", "y");
    addBias(gpu, yT, gpu.upload(b, [N], "f32", "b"));
    const dyT = gpu.upload(dy, [M, N], "f32", "dy");
    const set = gpu.upload(start, [N], "f32", "db set");
    const added = gpu.upload(start, [N], "f32", "db accumulated");
    biasGrad(gpu, dyT, set, { accumulate: false });
    biasGrad(gpu, dyT, added);

    const what = `M=${M} N=${N} seed ${rng.seed}`;
    const tol = { rtol: 1e-5, atol: 1e-5 };
    assertClose(await gpu.readF32(yT), addBiasRef(y, b), `y ${what}`, tol);
    const db = biasGradRef(dy, N);
    assertClose(await gpu.readF32(set), db, `db ${what}`, tol);
    assertClose(await gpu.readF32(added), db.map((v, i) => v + start[i]), `db + ${what}`, tol);
  }
});

gpuTest("bias kernels reject bad shapes and aliasing", async (gpu) => {
  const y = gpu.tensor([3, 5], "f32", "y");
  throws(() => addBias(gpu, y, gpu.tensor([3], "f32", "short b")), /short b/);
  throws(
    () => addBias(gpu, gpu.tensor([15], "f32", "flat"), gpu.tensor([5], "f32", "b")),
    /\(M, N\)/,
  );
  throws(() => addBias(gpu, y, y), /share a buffer|shape/);
  throws(() => biasGrad(gpu, y, gpu.tensor([5], "u32", "u32 db")), /dtype u32/);
  await gpu.sync();
});
