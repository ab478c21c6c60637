import assert from "node:assert/strict";
import { type Gpu, type GpuInfo, KernelError, type Tensor } from "../../kernels/device.ts";
import {
  GPU_TILES,
  matmul,
  matmulGradInput,
  matmulGradWeight,
  matmulNaive,
  type MatmulTiles,
  matmulTiles,
  SOFTWARE_TILES,
} from "../../kernels/matmul.ts";
import { packHalf, unpackHalf } from "../../kernels/pack.ts";
import {
  matmulGradInputRef,
  matmulGradWeightRef,
  matmulRef,
} from "../../model/reference/matmul.ts";
import { assertClose, gpuTest, testRng } from "../helpers.ts";

type WeightType = "f32" | "bf16" | "f16";

/**
 * Tolerance of an f32 kernel against the float64 reference. With unit-normal inputs an output is
 * about sqrt(K) in size and f32 accumulation errs by about sqrt(K) * 6e-8 of that, so a relative
 * 1e-5 (K < 64) or 3e-5 (longer reductions), with the same bound in absolute terms scaled by
 * sqrt(K) for outputs that cancel to near zero, leaves a wide margin and still catches a dropped
 * or doubled term.
 */
function tolerance(K: number): { rtol: number; atol: number } {
  const rtol = K < 64 ? 1e-5 : 3e-5;
  return { rtol, atol: rtol * Math.sqrt(Math.max(K, 1)) };
}

/** Uploads a weight in `dtype` and returns the tensor with the values the GPU will read. */
function uploadWeight(
  gpu: Gpu,
  values: Float32Array,
  shape: number[],
  dtype: WeightType,
): { tensor: Tensor; stored: Float32Array } {
  if (dtype === "f32") return { tensor: gpu.upload(values, shape, "f32", "w"), stored: values };
  const packed = packHalf(values, dtype);
  return { tensor: gpu.upload(packed, shape, dtype, "w"), stored: unpackHalf(packed, dtype) };
}

type Form = "matmul" | "matmulGradInput" | "matmulGradWeight";

interface Case {
  accumulate?: boolean;
  alpha?: number;
  tiles?: MatmulTiles;
}

/**
 * Runs one form on fresh random inputs of shape (M, N, K) (x is (M, K), w is (N, K), y is (M, N))
 * and compares the output with the float64 reference on the weights as stored.
 */
async function checkForm(
  gpu: Gpu,
  rng: ReturnType<typeof testRng>,
  form: Form,
  dtype: WeightType,
  [M, N, K]: readonly number[],
  { accumulate = false, alpha = 1, tiles }: Case,
): Promise<void> {
  const label = `${form} ${dtype} M=${M} N=${N} K=${K} accumulate=${accumulate} alpha=${alpha}` +
    `${tiles ? ` tiles ${JSON.stringify(tiles)}` : ""} seed ${rng.seed}`;
  const opts = { accumulate, alpha, tiles };
  const x = rng.normals(M * K);
  const dy = rng.normals(M * N);
  const xT = gpu.upload(x, [M, K], "f32", "x");
  const dyT = gpu.upload(dy, [M, N], "f32", "dy");

  let product: Float64Array;
  let out: Tensor;
  let initial: Float32Array;
  let reduction: number;
  if (form === "matmul") {
    const w = uploadWeight(gpu, rng.normals(N * K), [N, K], dtype);
    initial = rng.normals(M * N);
    out = gpu.upload(initial, [M, N], "f32", "y");
    matmul(gpu, xT, w.tensor, out, opts);
    product = matmulRef(x, w.stored, M, N, K);
    reduction = K;
  } else if (form === "matmulGradInput") {
    const w = uploadWeight(gpu, rng.normals(N * K), [N, K], dtype);
    initial = rng.normals(M * K);
    out = gpu.upload(initial, [M, K], "f32", "dx");
    matmulGradInput(gpu, dyT, w.tensor, out, opts);
    product = matmulGradInputRef(dy, w.stored, M, N, K);
    reduction = N;
  } else {
    initial = rng.normals(N * K);
    out = gpu.upload(initial, [N, K], "f32", "dw");
    matmulGradWeight(gpu, dyT, xT, out, opts);
    product = matmulGradWeightRef(dy, x, M, N, K);
    reduction = M;
  }

  const expected = new Float64Array(product.length);
  for (let i = 0; i < expected.length; i++) {
    expected[i] = alpha * product[i] + (accumulate ? initial[i] : 0);
  }
  assertClose(await gpu.readF32(out), expected, label, tolerance(reduction));
}

/**
 * (M, N, K) combinations: none a multiple of a tile, M = 1 (decode), odd and even reductions.
 * Packed weights are read two values per load only when the dimension they pair along is even.
 */
const SHAPES: [number, number, number][] = [
  [7, 13, 17],
  [33, 65, 3],
  [70, 130, 129],
  [1, 65, 64],
  [33, 1, 1],
  [33, 65, 130],
  [70, 13, 18],
];

/**
 * Small tiles for the full matrix of forms, weight types, shapes and accumulation: two rows of
 * four invocations with 2 x 4 accumulators each, so the shapes above cross tile edges both ways.
 * Each such pipeline compiles in well under a second on lavapipe, where the default 8 x 16 tile
 * takes several seconds, so the default tiles get their own test on fewer shapes below.
 */
const SMALL_TILES: MatmulTiles = { wgRows: 2, wgCols: 4, rows: 2, cols: 4, depth: 0 };

for (const dtype of ["f32", "bf16", "f16"] as const) {
  gpuTest(`matmul and gradInput match reference, ${dtype} weights`, async (gpu) => {
    const rng = testRng();
    for (const form of ["matmul", "matmulGradInput"] as const) {
      for (const shape of SHAPES) {
        await checkForm(gpu, rng, form, dtype, shape, { tiles: SMALL_TILES });
        await checkForm(gpu, rng, form, dtype, shape, {
          tiles: SMALL_TILES,
          accumulate: true,
          alpha: 0.75,
        });
      }
    }
  });
}

gpuTest("matmulGradWeight matches reference", async (gpu) => {
  const rng = testRng();
  for (const shape of SHAPES) {
    await checkForm(gpu, rng, "matmulGradWeight", "f32", shape, {
      tiles: SMALL_TILES,
      alpha: -0.5,
    });
    await checkForm(gpu, rng, "matmulGradWeight", "f32", shape, {
      tiles: SMALL_TILES,
      accumulate: true,
    });
  }
});

gpuTest("default tiles match reference", async (gpu) => {
  const rng = testRng();
  for (const shape of [[70, 130, 66], [1, 37, 64]]) {
    for (const dtype of ["f32", "bf16"] as const) {
      await checkForm(gpu, rng, "matmul", dtype, shape, {});
      await checkForm(gpu, rng, "matmulGradInput", dtype, shape, { accumulate: true });
    }
    await checkForm(gpu, rng, "matmulGradWeight", "f32", shape, { accumulate: true });
  }
});

// The staged (workgroup-memory) path is what discrete GPUs run; check it here on any adapter.
gpuTest("staged GPU tiles match reference", async (gpu) => {
  const rng = testRng();
  const tiles = matmulTiles({ ...gpu.info, isSoftware: false });
  assert.ok(tiles.depth > 0, `tiles ${JSON.stringify(tiles)} do not stage`);
  for (const shape of [[37, 70, 19], [1, 67, 16], [17, 5, 33]]) {
    await checkForm(gpu, rng, "matmul", "bf16", shape, { tiles });
    await checkForm(gpu, rng, "matmulGradInput", "f16", shape, { tiles, accumulate: true });
    await checkForm(gpu, rng, "matmulGradWeight", "f32", shape, { tiles, alpha: 2 });
  }
});

for (const dtype of ["f32", "bf16"] as const) {
  gpuTest(`matmulNaive matches reference, ${dtype} weights`, async (gpu) => {
    const rng = testRng();
    for (const [M, N, K] of [[7, 13, 17], [33, 65, 64], [1, 130, 3]]) {
      const x = rng.normals(M * K);
      const w = uploadWeight(gpu, rng.normals(N * K), [N, K], dtype);
      const y = gpu.tensor([M, N], "f32", "y");
      matmulNaive(gpu, gpu.upload(x, [M, K], "f32", "x"), w.tensor, y);
      assertClose(
        await gpu.readF32(y),
        matmulRef(x, w.stored, M, N, K),
        `matmulNaive ${dtype} M=${M} N=${N} K=${K} seed ${rng.seed}`,
        tolerance(K),
      );
    }
  });
}

gpuTest("matmulTiles picks tiles per adapter", (gpu) => {
  const software: GpuInfo = { ...gpu.info, isSoftware: true };
  assert.deepEqual(matmulTiles(software), SOFTWARE_TILES);

  const discrete: GpuInfo = {
    ...gpu.info,
    isSoftware: false,
    maxComputeInvocationsPerWorkgroup: 1024,
    maxComputeWorkgroupStorageSize: 32768,
  };
  assert.deepEqual(matmulTiles(discrete), GPU_TILES);

  const small: GpuInfo = {
    ...discrete,
    maxComputeInvocationsPerWorkgroup: 64,
    maxComputeWorkgroupStorageSize: 2048,
  };
  const tiles = matmulTiles(small);
  assert.ok(
    tiles.wgRows * tiles.wgCols <= 64,
    `tiles ${JSON.stringify(tiles)} over 64 invocations`,
  );
  const staged = 4 * tiles.depth * (tiles.wgRows * tiles.rows + tiles.wgCols * tiles.cols);
  assert.ok(staged <= 2048, `tiles ${JSON.stringify(tiles)} stage ${staged} bytes`);
  assert.ok(tiles.depth >= 1);
  return Promise.resolve();
});

gpuTest("matmul rejects mismatched shapes", async (gpu) => {
  const x = gpu.tensor([4, 8], "f32", "x");
  const w = gpu.tensor([5, 9], "f32", "w");
  const y = gpu.tensor([4, 5], "f32", "y");
  assert.throws(
    () => matmul(gpu, x, w, y),
    (e: unknown) =>
      e instanceof KernelError && /^matmul: tensor 'w' has shape \[5, 9\], expected \[5, 8\]/
        .test(e.message),
  );
  const dy = gpu.tensor([4, 5], "f32", "dy");
  const dx = gpu.tensor([4, 7], "f32", "dx");
  assert.throws(
    () => matmulGradInput(gpu, dy, gpu.tensor([5, 8], "f32", "w"), dx),
    (e: unknown) =>
      e instanceof KernelError &&
      /^matmulGradInput: tensor 'dx' has shape \[4, 7\], expected \[4, 8\]/.test(e.message),
  );
  assert.throws(
    () => matmulGradWeight(gpu, dy, x, gpu.tensor([5, 8], "bf16", "dw")),
    (e: unknown) =>
      e instanceof KernelError &&
      /^matmulGradWeight: tensor 'dw' has dtype bf16, expected f32/.test(e.message),
  );
  assert.throws(
    () => matmulNaive(gpu, x, gpu.tensor([5, 8], "u32", "w"), y),
    (e: unknown) =>
      e instanceof KernelError && /^matmulNaive: tensor 'w' has dtype u32/.test(e.message),
  );
  await gpu.sync();
});

gpuTest("matmul rejects tiles over device limits", async (gpu) => {
  const x = gpu.tensor([4, 8], "f32", "x");
  const w = gpu.tensor([5, 8], "f32", "w");
  const y = gpu.tensor([4, 5], "f32", "y");
  const tooWide = { ...SOFTWARE_TILES, wgCols: gpu.info.maxComputeInvocationsPerWorkgroup * 2 };
  assert.throws(
    () => matmul(gpu, x, w, y, { tiles: tooWide }),
    (e: unknown) => e instanceof KernelError && /invocations per workgroup/.test(e.message),
  );
  const tooDeep = { ...GPU_TILES, depth: gpu.info.maxComputeWorkgroupStorageSize };
  assert.throws(
    () => matmul(gpu, x, w, y, { tiles: tooDeep }),
    (e: unknown) => e instanceof KernelError && /workgroup memory/.test(e.message),
  );
  await gpu.sync();
});

gpuTest("large grids fold under workgroup limit", async (gpu) => {
  // Over 65535 workgroups in one dimension: the launchers must fold the grid into two, and every
  // output must still be written exactly once.
  const rng = testRng();
  const maxGroups = gpu.info.maxComputeWorkgroupsPerDimension;
  const tiles = { wgRows: 1, wgCols: 8, rows: 1, cols: 1, depth: 0 };
  const cases = [
    { name: "matmul", N: maxGroups * 8 + 13, groups: (N: number) => Math.ceil(N / 8) },
    { name: "matmulNaive", N: maxGroups * 64 + 13, groups: (N: number) => Math.ceil(N / 64) },
  ];
  for (const { name, N, groups } of cases) {
    assert.ok(groups(N) > maxGroups, `${name}: ${groups(N)} workgroups fit one dimension`);
    // Multiples of 1/64 below 16 in magnitude, so 1.5 * w is exact in f32 and must match exactly.
    const offset = rng.int(1000);
    const w = Float32Array.from({ length: N }, (_, i) => (((i * 7919 + offset) % 1000) - 500) / 64);
    const xT = gpu.upload(Float32Array.of(1.5), [1, 1], "f32", "x");
    const wT = gpu.upload(w, [N, 1], "f32", "w");
    const y = gpu.tensor([1, N], "f32", "y");
    if (name === "matmul") matmul(gpu, xT, wT, y, { tiles });
    else matmulNaive(gpu, xT, wT, y);
    const expected = Float64Array.from(w, (v) => 1.5 * v);
    assertClose(await gpu.readF32(y), expected, `${name} N=${N} seed ${rng.seed}`, {
      rtol: 0,
      atol: 0,
    });
  }
});

gpuTest("matmul over workgroup limit throws before dispatch", async (gpu) => {
  // Tensors whose shapes claim billions of rows but share one tiny buffer: the launcher must throw
  // from the workgroup-count check before any GPU work is recorded.
  const tiny = gpu.tensor([4], "f32", "tiny");
  const fake = (shape: number[], label: string): Tensor => ({
    buffer: tiny.buffer,
    shape,
    dtype: "f32",
    label,
  });
  const M = 2 ** 40;
  const before = gpu.dispatchCount;
  assert.throws(
    () => matmul(gpu, fake([M, 1], "x"), fake([3, 1], "w"), fake([M, 3], "y")),
    (e: unknown) =>
      e instanceof KernelError && /^matmul: dispatch of \[\d+, \d+, 1\] workgroups exceeds/.test(
        e.message,
      ),
  );
  assert.equal(gpu.dispatchCount, before);
  await gpu.sync();
});

gpuTest("tensor over buffer limit throws naming it", (gpu) => {
  const limit = Math.min(gpu.info.maxBufferSize, gpu.info.maxStorageBufferBindingSize);
  const rows = Math.ceil(limit / 4 / 1024) + 1;
  assert.throws(
    () => gpu.tensor([rows, 1024], "f32", "huge weight"),
    (e: unknown) =>
      e instanceof Error && e.message.includes(`tensor 'huge weight' of shape [${rows}, 1024]`),
  );
  return Promise.resolve();
});

gpuTest("WGSL error surfaces at next sync naming kernel", async (gpu) => {
  gpu.pipeline("brokenKernel", "test", () => "@compute @workgroup_size(1) fn main() { let x = ; }");
  await assert.rejects(() => gpu.sync(), (e: unknown) => {
    assert.ok(e instanceof Error);
    assert.match(e.message, /brokenKernel \(test\)/);
    return true;
  });
  // The error is reported once; the device keeps working.
  await gpu.sync();
});
