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
  type MatmulTiles,
  matmulTiles,
} from "../../kernels/matmul.ts";
import { type BenchContext, type BenchRow, benchValues, timeBest, type Timing } from "../bench.ts";

interface Shape {
  M: number;
  N: number;
  K: number;
}

/** LLaMA-7B projections for 64 tokens: attention (4096 x 4096), feed-forward up (11008 x 4096). */
const LLAMA_SHAPES: Shape[] = [
  { M: 64, N: 4096, K: 4096 },
  { M: 64, N: 11008, K: 4096 },
];

function shapeText(s: Shape): string {
  return `M=${s.M} N=${s.N} K=${s.K}`;
}

/** Uploads a (rows, cols) weight of ordinary values as f32 or bf16 (the upper half of an f32). */
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

/** Returns the row of a timed matmul of `shape`, rated against the peak when it is known. */
function timedRow(
  ctx: BenchContext,
  name: string,
  shape: Shape,
  dtype: DType,
  t: Timing,
): BenchRow {
  const gflops = (2 * shape.M * shape.N * shape.K) / t.seconds / 1e9;
  const row: BenchRow = {
    section: "matmul",
    name,
    shape: shapeText(shape),
    dtype,
    gflops,
    ms: t.seconds * 1e3,
    reps: t.reps,
  };
  if (ctx.peakGflops) row.ofPeak = gflops / ctx.peakGflops;
  ctx.log(`  ${name} ${row.shape} ${dtype}: ${gflops.toFixed(3)} GFLOP/s`);
  return row;
}

/**
 * Measures at one shape the tiled matmul with f32 and bf16 weights and, when `naive` is set, the
 * naive matmul with f32 weights, timed in rotation. The tiled f32 row's note gives its speed-up.
 */
async function measureShape(
  gpu: Gpu,
  ctx: BenchContext,
  shape: Shape,
  naive: boolean,
): Promise<BenchRow[]> {
  const { M, N, K } = shape;
  const x = gpu.upload(benchValues(M * K, 3), [M, K], "f32", "x");
  const y = gpu.tensor([M, N], "f32", "y");
  const tensors: Tensor[] = [x, y];
  const group: Record<string, () => void> = {};
  const skipped: BenchRow[] = [];
  let naiveRecord: (() => void) | null = null;
  for (const dtype of ["f32", "bf16"] as const) {
    const tooLarge = weightTooLarge(gpu, N, K, dtype);
    if (tooLarge) {
      skipped.push({
        section: "matmul",
        name: "matmul",
        shape: shapeText(shape),
        dtype,
        note: tooLarge,
      });
      continue;
    }
    const w = uploadWeight(gpu, N, K, dtype, 2);
    tensors.push(w);
    group[`matmul ${dtype}`] = () => matmul(gpu, x, w, y);
    if (naive && dtype === "f32") naiveRecord = () => matmulNaive(gpu, x, w, y);
  }
  if (naiveRecord) group["matmulNaive f32"] = naiveRecord;

  const times = await timeBest(gpu, group, ctx);
  for (const t of tensors) t.buffer.destroy();

  const rows: BenchRow[] = [...skipped];
  for (const [key, t] of Object.entries(times)) {
    const [name, dtype] = key.split(" ");
    rows.push(timedRow(ctx, name, shape, dtype as DType, t));
  }
  const tiled = rows.find((r) => r.name === "matmul" && r.dtype === "f32" && r.gflops);
  const slow = rows.find((r) => r.name === "matmulNaive");
  if (tiled && slow) {
    const ratio = tiled.gflops! / slow.gflops!;
    tiled.note = `${ratio.toFixed(1)}x naive`;
    slow.note = `tiled f32 is ${ratio.toFixed(1)}x this`;
  }
  return rows;
}

/** Measures the backward forms at `shape`: dx with bf16 weights and dW, timed in rotation. */
async function measureBackward(gpu: Gpu, ctx: BenchContext, shape: Shape): Promise<BenchRow[]> {
  const { M, N, K } = shape;
  const dy = gpu.upload(benchValues(M * N, 4), [M, N], "f32", "dy");
  const x = gpu.upload(benchValues(M * K, 3), [M, K], "f32", "x");
  const dx = gpu.tensor([M, K], "f32", "dx");
  const w = uploadWeight(gpu, N, K, "bf16", 2);
  const dw = gpu.tensor([N, K], "f32", "dw");
  const times = await timeBest(gpu, {
    gradInput: () => matmulGradInput(gpu, dy, w, dx),
    gradWeight: () => matmulGradWeight(gpu, dy, x, dw),
  }, ctx);
  for (const t of [dy, x, dx, w, dw]) t.buffer.destroy();
  return [
    timedRow(ctx, "matmulGradInput", shape, "bf16", times.gradInput),
    timedRow(ctx, "matmulGradWeight", shape, "f32", times.gradWeight),
  ];
}

/**
 * Parses a tile set written wgRowsxwgCols/rowsxcols/depth, such as `1x16/8x16/0`; throws naming
 * the text when it does not match.
 */
export function parseTiles(text: string): MatmulTiles {
  const m = /^(\d+)x(\d+)\/(\d+)x(\d+)\/(\d+)$/.exec(text);
  if (!m) {
    throw new Error(
      `invalid tiles '${text}': expected wgRowsxwgCols/rowsxcols/depth, such as 1x16/8x16/0`,
    );
  }
  const [wgRows, wgCols, rows, cols, depth] = m.slice(1).map(Number);
  return { wgRows, wgCols, rows, cols, depth };
}

/** Times the tiled matmul at `shape` with each tile set and both weight types, in rotation. */
async function measureTiles(
  gpu: Gpu,
  ctx: BenchContext,
  shape: Shape,
  tileSets: string[],
): Promise<BenchRow[]> {
  const { M, N, K } = shape;
  const x = gpu.upload(benchValues(M * K, 3), [M, K], "f32", "x");
  const y = gpu.tensor([M, N], "f32", "y");
  const weights = {
    f32: uploadWeight(gpu, N, K, "f32", 2),
    bf16: uploadWeight(gpu, N, K, "bf16", 2),
  };
  const group: Record<string, () => void> = {};
  for (const text of tileSets) {
    const tiles = parseTiles(text);
    for (const [dtype, w] of Object.entries(weights)) {
      group[`${text} ${dtype}`] = () => matmul(gpu, x, w, y, { tiles });
    }
  }
  const times = await timeBest(gpu, group, ctx);
  for (const t of [x, y, weights.f32, weights.bf16]) t.buffer.destroy();

  return Object.entries(times).map(([key, t]) => {
    const [text, dtype] = key.split(" ");
    return { ...timedRow(ctx, "matmul", shape, dtype as DType, t), note: `tiles ${text}` };
  });
}

/** Measures the tiled and naive matmuls; the tiled f32 row's note gives its speed-up over naive. */
export async function matmulBench(gpu: Gpu, ctx: BenchContext): Promise<BenchRow[]> {
  ctx.tiles.forEach(parseTiles);
  ctx.log(`  tiles: ${JSON.stringify(matmulTiles(gpu.info))}`);
  const rows: BenchRow[] = [];
  // The naive kernel runs where its work is at most that of the naiveMax square.
  const naiveFlops = 2 * ctx.naiveMax ** 3;

  const shapes: Shape[] = [
    ...ctx.squareSizes.map((s) => ({ M: s, N: s, K: s })),
    ...(ctx.llamaShapes ? LLAMA_SHAPES : []),
  ];
  for (const shape of shapes) {
    const naive = 2 * shape.M * shape.N * shape.K <= naiveFlops;
    rows.push(...await measureShape(gpu, ctx, shape, naive));
  }

  if (ctx.tiles.length) {
    for (const size of ctx.squareSizes) {
      rows.push(...await measureTiles(gpu, ctx, { M: size, N: size, K: size }, ctx.tiles));
    }
  }

  // The backward forms at the attention shape, as a training step runs them.
  if (ctx.llamaShapes) rows.push(...await measureBackward(gpu, ctx, LLAMA_SHAPES[0]));
  return rows;
}
