/**
 * Matmul speed: the tiled kernels at square sizes and at LLaMA-7B linear-layer shapes for 64
 * tokens, with f32 and bf16 weights, against the naive one-output-per-invocation kernel.
 */
import type { DType, Gpu, Tensor } from "../../kernels/device.ts";
import {
  matmul,
  matmulGradInput,
  matmulGradWeight,
  matmulNaive,
  matmulTiles,
} from "../../kernels/matmul.ts";
import { type BenchContext, type BenchRow, benchValues, timeRepeated } from "../bench.ts";

interface Shape {
  M: number;
  N: number;
  K: number;
  label: string;
}

/** LLaMA-7B projections for 64 tokens: attention (4096 x 4096) and feed-forward up (11008 x 4096). */
const LLAMA_SHAPES: Shape[] = [
  { M: 64, N: 4096, K: 4096, label: "LLaMA attention" },
  { M: 64, N: 11008, K: 4096, label: "LLaMA feed-forward" },
];

function shapeText(s: Shape): string {
  return `M=${s.M} N=${s.N} K=${s.K}`;
}

/** Uploads an (rows, cols) weight of ordinary values as f32 or bf16 (the upper half of each f32). */
function uploadWeight(gpu: Gpu, rows: number, cols: number, dtype: DType, seed: number): Tensor {
  const values = benchValues(rows * cols, seed);
  if (dtype === "f32") return gpu.upload(values, [rows, cols], "f32", "w");
  const bits = new Uint32Array(values.buffer);
  const half = new Uint16Array(values.length);
  for (let i = 0; i < half.length; i++) half[i] = bits[i] >>> 16;
  return gpu.upload(half, [rows, cols], dtype, "w");
}

/** Returns the reason a weight cannot be a single tensor on this device, or null if it can. */
function weightTooLarge(gpu: Gpu, rows: number, cols: number, dtype: DType): string | null {
  const bytes = rows * cols * (dtype === "f32" ? 4 : 2);
  const limit = Math.min(gpu.info.maxBufferSize, gpu.info.maxStorageBufferBindingSize);
  if (bytes <= limit) return null;
  return `skipped: ${dtype} weight is ${(bytes / 2 ** 20).toFixed(0)} MiB, over this device's ` +
    `${(limit / 2 ** 20).toFixed(0)} MiB storage binding limit`;
}

type Variant = "tiled" | "naive" | "gradInput" | "gradWeight";

async function measure(
  gpu: Gpu,
  ctx: BenchContext,
  shape: Shape,
  dtype: DType,
  variant: Variant,
): Promise<BenchRow> {
  const { M, N, K } = shape;
  const name = variant === "tiled" ? "matmul" : variant === "naive" ? "matmulNaive" : variant ===
      "gradInput"
    ? "matmulGradInput"
    : "matmulGradWeight";
  const row: BenchRow = { section: "matmul", name, shape: shapeText(shape), dtype };
  const tooLarge = weightTooLarge(gpu, N, K, dtype);
  if (tooLarge) return { ...row, note: tooLarge };

  const w = uploadWeight(gpu, N, K, dtype, 2);
  const x = gpu.upload(benchValues(M * K, 3), [M, K], "f32", "x");
  const y = gpu.tensor([M, N], "f32", "y");
  const record = {
    tiled: () => matmul(gpu, x, w, y),
    naive: () => matmulNaive(gpu, x, w, y),
    gradInput: () => matmulGradInput(gpu, y, w, x),
    gradWeight: () => matmulGradWeight(gpu, y, x, w),
  }[variant];
  const t = await timeRepeated(gpu, record, ctx.minSeconds);
  for (const tensor of [w, x, y]) tensor.buffer.destroy();

  const gflops = (2 * M * N * K) / t.seconds / 1e9;
  const result: BenchRow = {
    ...row,
    gflops,
    ms: t.seconds * 1e3,
    reps: t.reps,
  };
  if (ctx.peakGflops) result.ofPeak = gflops / ctx.peakGflops;
  ctx.log(`  ${name} ${row.shape} ${dtype}: ${gflops.toFixed(3)} GFLOP/s`);
  return result;
}

/** Measures the tiled and naive matmuls; the tiled row's note gives its speed-up over naive. */
export async function matmulBench(gpu: Gpu, ctx: BenchContext): Promise<BenchRow[]> {
  const tiles = matmulTiles(gpu.info);
  ctx.log(`  tiles: ${JSON.stringify(tiles)}`);
  const rows: BenchRow[] = [];
  // The naive kernel runs where its work is at most that of the naiveMax square.
  const naiveFlops = 2 * ctx.naiveMax ** 3;

  const shapes: Shape[] = [
    ...ctx.squareSizes.map((s) => ({ M: s, N: s, K: s, label: `square ${s}` })),
    ...(ctx.llamaShapes ? LLAMA_SHAPES : []),
  ];
  for (const shape of shapes) {
    const f32 = await measure(gpu, ctx, shape, "f32", "tiled");
    const bf16 = await measure(gpu, ctx, shape, "bf16", "tiled");
    rows.push(f32, bf16);
    if (2 * shape.M * shape.N * shape.K <= naiveFlops) {
      const naive = await measure(gpu, ctx, shape, "f32", "naive");
      rows.push(naive);
      if (f32.gflops && naive.gflops) {
        const ratio = f32.gflops / naive.gflops;
        f32.note = `${ratio.toFixed(1)}x naive`;
        naive.note = `tiled f32 is ${ratio.toFixed(1)}x this`;
      }
    }
  }

  // The backward forms at the attention shape, as a training step runs them.
  if (ctx.llamaShapes) {
    const attention = LLAMA_SHAPES[0];
    rows.push(await measure(gpu, ctx, attention, "bf16", "gradInput"));
    rows.push(await measure(gpu, ctx, attention, "f32", "gradWeight"));
  }
  return rows;
}
