import { embeddingBackward, embeddingForward } from "../../kernels/embedding.ts";
import { packHalf, unpackHalf } from "../../kernels/pack.ts";
import { embeddingBackwardRef, embeddingForwardRef } from "../../model/reference/embedding.ts";
import { assertClose, gpuTest, testRng } from "../helpers.ts";

for (const dtype of ["f32", "bf16", "f16"] as const) {
  gpuTest(`embedding forward gathers ${dtype} rows`, async (gpu) => {
    const rng = testRng();
    const V = 37, C = 13, T = 29;
    const table = rng.normals(V * C);
    const tokens = Uint32Array.from({ length: T }, () => rng.int(V));
    const stored = dtype === "f32" ? table : unpackHalf(packHalf(table, dtype), dtype);
    const tableT = dtype === "f32"
      ? gpu.upload(table, [V, C], "f32", "table")
      : gpu.upload(packHalf(table, dtype), [V, C], dtype, "table");
    const out = gpu.tensor([T, C], "f32", "out");
    embeddingForward(gpu, gpu.upload(tokens, [T], "u32", "tokens"), tableT, out);
    const expected = embeddingForwardRef(tokens, stored, C);
    assertClose(await gpu.readF32(out), expected, `embedding ${dtype} seed ${rng.seed}`, {
      rtol: 0,
      atol: 0,
    });
  });
}

gpuTest("embedding backward sums repeated tokens", async (gpu) => {
  const rng = testRng();
  const V = 11, C = 70, T = 33;
  const tokens = Uint32Array.from({ length: T }, () => rng.int(4));
  const dOut = rng.normals(T * C);
  const dTable = gpu.tensor([V, C], "f32", "dTable");
  const initial = rng.normals(V * C);
  gpu.write(dTable, initial);
  embeddingBackward(
    gpu,
    gpu.upload(tokens, [T], "u32", "tokens"),
    gpu.upload(dOut, [T, C], "f32", "dOut"),
    dTable,
  );
  const expected = Float64Array.from(initial);
  embeddingBackwardRef(tokens, dOut, expected, C);
  assertClose(await gpu.readF32(dTable), expected, `embedding backward seed ${rng.seed}`, {
    rtol: 1e-6,
    atol: 1e-6,
  });
});
