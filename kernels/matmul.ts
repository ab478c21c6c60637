/**
 * Matrix multiplication: the linear layer forward, its two gradients, and a naive baseline.
 *
 * All three forms are one kernel, C[i, j] = alpha * sum_r A(i, r) B(j, r) (+ C[i, j]), where A and
 * B are read either along r (the reduction runs along a row in memory) or across it:
 *
 *     form                 C (I, J)      A(i, r)               B(j, r)
 *     matmul               y (M, N)      x[m, k]  along r      w[n, k]  along r
 *     matmulGradInput      dx (M, K)     dy[m, n] along r      w[n, k]  across r
 *     matmulGradWeight     dW (N, K)     dy[m, n] across r     x[m, k]  across r
 *
 * Each workgroup computes a tile of C of (wgRows * rows) x (wgCols * cols) elements. Each
 * invocation keeps a rows x cols register tile of f32 accumulators and owns rows i0 + a * wgRows
 * and columns j0 + b * wgCols, so neighbouring invocations touch neighbouring addresses. When
 * packed weights are read in pairs across r, an invocation owns adjacent column pairs instead.
 * With `depth > 0` the workgroup stages `depth` reduction steps of both operands in workgroup
 * memory per barrier, zero padded at the edges. With `depth = 0` each invocation reads its
 * operands straight from storage, clamping out-of-range rows and columns to the last one and
 * masking them at the store. Either way it is one pass with no memory beyond the output.
 *
 * Why two paths: on a GPU, staging turns rows + cols storage reads per step and invocation into
 * workgroup-memory reads. Mesa's llvmpipe compiler compiles a storage or workgroup-memory load
 * into a loop over the 8 SIMD lanes with a bounds test per lane and component (read in Mesa 21.3's
 * gallivm/lp_bld_nir_soa.c), and a barrier into coroutine switches. On this machine's lavapipe
 * (Mesa 22.3, LLVM 15) that makes a load cost tens of cycles against well under one for an FMA
 * (scripts/bench/peak.ts measures both). There the only lever is FMAs per loaded value,
 * rows * cols / (rows + cols), so the software tiles skip staging and take the largest register
 * tile that still compiles in a few seconds; packed weights are read two values per u32 load.
 */
import {
  type DType,
  expectShape,
  type Gpu,
  type GpuInfo,
  grid,
  KernelError,
  params,
  type Tensor,
} from "./device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP, loadFn, storageType } from "./wgsl.ts";

/** Workgroup shape, register tile and staging depth of the tiled matmul kernels. */
export interface MatmulTiles {
  /** Invocations per workgroup along output rows. */
  wgRows: number;
  /** Invocations per workgroup along output columns. */
  wgCols: number;
  /** Output rows per invocation (the register tile's height). */
  rows: number;
  /** Output columns per invocation (the register tile's width). */
  cols: number;
  /** Reduction steps staged in workgroup memory per barrier, or 0 to read straight from storage. */
  depth: number;
}

/** Options shared by the tiled matmul launchers. */
export interface MatmulOptions {
  /** Adds the product into the output instead of overwriting it. */
  accumulate?: boolean;
  /** Scales the product before it is written or added (default 1). */
  alpha?: number;
  /** Overrides the tiles `matmulTiles` picks for the device. */
  tiles?: MatmulTiles;
}

/**
 * Tiles for software adapters: 16 invocations of 8 x 16 accumulators reading operands from storage.
 * On lavapipe 8 x 16 ran about 2x faster than 8 x 8 (64 x 4096 x 4096, bf16 weights) and took
 * about 6 s to compile against 4 s. A 16 x 16 tile took about 30 s (docs/benchmarks.md).
 */
export const SOFTWARE_TILES: MatmulTiles = { wgRows: 1, wgCols: 16, rows: 8, cols: 16, depth: 0 };

/**
 * Tiles for software adapters on outputs of fewer than `SMALL_OUTPUT` elements, the shapes of small
 * models: 32 invocations of 8 x 4 accumulators. On lavapipe (Mesa 22.3, 2 cores) they ran 1.5x
 * faster than `SOFTWARE_TILES` over the three forms at 768 x 64 x 176, 768 x 176 x 64 and
 * 768 x 64 x 768, and 1.4x slower at 512 x 512 x 512 (a tile sweep, see docs/benchmarks.md).
 */
export const SMALL_SOFTWARE_TILES: MatmulTiles = {
  wgRows: 2,
  wgCols: 16,
  rows: 8,
  cols: 4,
  depth: 0,
};

/** Output elements below which software adapters use `SMALL_SOFTWARE_TILES`. */
export const SMALL_OUTPUT = 1 << 18;

/**
 * Tiles for GPUs: 16 x 16 invocations of 4 x 4 accumulators, 16 reduction steps staged.
 * NOTE: a conventional choice, checked for correctness on lavapipe but not timed on a GPU.
 */
export const GPU_TILES: MatmulTiles = { wgRows: 16, wgCols: 16, rows: 4, cols: 4, depth: 16 };

/**
 * Returns the matmul tiles for an adapter: `SOFTWARE_TILES` for CPU implementations, where loads
 * bound speed, and `GPU_TILES` otherwise, shrunk to fit the workgroup limits.
 */
export function matmulTiles(info: GpuInfo): MatmulTiles {
  if (info.isSoftware) return { ...SOFTWARE_TILES };
  const tiles = { ...GPU_TILES };
  while (tiles.wgRows * tiles.wgCols > info.maxComputeInvocationsPerWorkgroup) {
    if (tiles.wgRows >= tiles.wgCols) tiles.wgRows /= 2;
    else tiles.wgCols /= 2;
  }
  while (stagedBytes(tiles) > info.maxComputeWorkgroupStorageSize && tiles.depth > 1) {
    tiles.depth /= 2;
  }
  return tiles;
}

function stagedBytes(t: MatmulTiles): number {
  return 4 * t.depth * (t.wgRows * t.rows + t.wgCols * t.cols);
}

/** Layout of an operand relative to the reduction index r: r runs along its rows or across them. */
type Stride = "alongR" | "acrossR";

interface Operand {
  dtype: DType;
  stride: Stride;
}

/** Parameters that specialise the generated kernel, which also make up the pipeline cache key. */
interface Spec {
  a: Operand;
  b: Operand;
  tiles: MatmulTiles;
  /**
   * Whether packed B is read two values per u32 load (direct path only). Along r, the loop steps r
   * by 2, so R must be even. Across r, each invocation owns adjacent column pairs, so J and cols
   * must be even.
   */
  pairs: boolean;
}

function specKey(s: Spec): string {
  const t = s.tiles;
  return `A ${s.a.dtype} ${s.a.stride}, B ${s.b.dtype} ${s.b.stride}${s.pairs ? " pairs" : ""}, ` +
    `wg ${t.wgRows}x${t.wgCols}, tile ${t.rows}x${t.cols}, depth ${t.depth}`;
}

function pairsAcross(s: Spec): boolean {
  return s.pairs && s.b.stride === "acrossR";
}

/** Offset of an invocation's column `y` from its first column `j0`. */
function colOffset(s: Spec, y: number): number {
  const w = s.tiles.wgCols;
  return pairsAcross(s) ? (y >> 1) * 2 * w + (y & 1) : y * w;
}

/** WGSL function unpacking a u32 of two packed B values, lower half first. */
function unpackPairFn(dtype: DType): string {
  if (dtype === "f16") {
    return "fn unpackB(word: u32) -> vec2<f32> { return unpack2x16float(word); }";
  }
  return `fn unpackB(word: u32) -> vec2<f32> {
  return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}`;
}

function checkTiles(kernel: string, gpu: Gpu, t: MatmulTiles): void {
  const values = [t.wgRows, t.wgCols, t.rows, t.cols];
  if (
    !values.every((v) => Number.isInteger(v) && v >= 1) || !Number.isInteger(t.depth) ||
    t.depth < 0
  ) {
    throw new KernelError(kernel, `invalid tiles ${JSON.stringify(t)}`);
  }
  const invocations = t.wgRows * t.wgCols;
  if (invocations > gpu.info.maxComputeInvocationsPerWorkgroup) {
    throw new KernelError(
      kernel,
      `tiles need ${invocations} invocations per workgroup, over this device's limit of ` +
        `${gpu.info.maxComputeInvocationsPerWorkgroup}`,
    );
  }
  if (stagedBytes(t) > gpu.info.maxComputeWorkgroupStorageSize) {
    throw new KernelError(
      kernel,
      `tiles stage ${stagedBytes(t)} bytes in workgroup memory, over this device's limit of ` +
        `${gpu.info.maxComputeWorkgroupStorageSize}`,
    );
  }
}

/** WGSL expression of the linear element index of A(i, r) or B(j, r). */
function elementIndex(stride: Stride, outer: string, r: string, outerSize: string): string {
  return stride === "alongR" ? `${outer} * p.R + ${r}` : `(${r}) * ${outerSize} + ${outer}`;
}

/** Generates the tiled kernel for `spec`. Its bindings are A, B, C and the params block. */
function tiledCode(spec: Spec): string {
  const { a, b, tiles: t } = spec;
  const wgSize = t.wgRows * t.wgCols;
  const tileI = t.wgRows * t.rows;
  const tileJ = t.wgCols * t.cols;
  const L: string[] = [];
  L.push(`
@group(0) @binding(0) var<storage, read> A: array<${storageType(a.dtype)}>;
@group(0) @binding(1) var<storage, read> B: array<${storageType(b.dtype)}>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
struct Params { I: u32, J: u32, R: u32, tilesJ: u32, alpha: f32, accumulate: u32 }
@group(0) @binding(3) var<uniform> p: Params;
${loadFn("loadA", "A", a.dtype)}
${spec.pairs ? unpackPairFn(b.dtype) : loadFn("loadB", "B", b.dtype)}`);
  if (t.depth > 0) {
    L.push(`var<workgroup> As: array<f32, ${t.depth * tileI}>;`);
    L.push(`var<workgroup> Bs: array<f32, ${t.depth * tileJ}>;`);
  }
  L.push(`
@compute @workgroup_size(${wgSize})
fn main(${GRID_BUILTINS}) {
  let tile = ${LINEAR_WORKGROUP};
  let tileI0 = (tile / p.tilesJ) * ${tileI}u;
  let tileJ0 = (tile % p.tilesJ) * ${tileJ}u;
  if (tileI0 >= p.I) { return; }
  let i0 = tileI0 + lid / ${t.wgCols}u;
  let j0 = tileJ0 + ${pairsAcross(spec) ? "2u * " : ""}(lid % ${t.wgCols}u);`);
  for (let x = 0; x < t.rows; x++) {
    for (let y = 0; y < t.cols; y++) L.push(`  var acc${x}_${y} = 0.0;`);
  }
  if (t.depth === 0) L.push(...directLoop(spec));
  else L.push(...stagedLoop(spec));

  // Epilogue: scale, optionally add the old value, store inside the bounds.
  for (let x = 0; x < t.rows; x++) {
    L.push(`  let row${x} = i0 + ${x * t.wgRows}u;`);
    for (let y = 0; y < t.cols; y++) {
      L.push(`  if (row${x} < p.I && j0 + ${colOffset(spec, y)}u < p.J) {
    let o = row${x} * p.J + j0 + ${colOffset(spec, y)}u;
    var v = p.alpha * acc${x}_${y};
    if (p.accumulate != 0u) { v += C[o]; }
    C[o] = v;
  }`);
    }
  }
  L.push("}");
  return L.join("\n");
}

/** Returns the WGSL reduction loop that reads operands straight from storage, with no barriers. */
function directLoop(spec: Spec): string[] {
  const { a, b, tiles: t } = spec;
  const L: string[] = [];
  const aOffset = (r: string) => a.stride === "alongR" ? r : `(${r}) * p.I`;
  // Clamp rows and columns past the edge to the last one, so every load is in bounds.
  for (let x = 0; x < t.rows; x++) {
    const i = `min(i0 + ${x * t.wgRows}u, p.I - 1u)`;
    L.push(`  let a${x}Base = ${a.stride === "alongR" ? `${i} * p.R` : i};`);
  }

  if (spec.pairs && b.stride === "alongR") {
    // Two reduction steps per iteration. One u32 of B contains both, as R is even.
    for (let y = 0; y < t.cols; y++) {
      L.push(`  let b${y}Base = min(j0 + ${colOffset(spec, y)}u, p.J - 1u) * p.R;`);
    }
    L.push(`  for (var r = 0u; r < p.R; r += 2u) {`);
    for (let x = 0; x < t.rows; x++) {
      L.push(`    let a${x}_0 = loadA(a${x}Base + ${aOffset("r")});`);
      L.push(`    let a${x}_1 = loadA(a${x}Base + ${aOffset("r + 1u")});`);
    }
    for (let y = 0; y < t.cols; y++) L.push(`    let b${y} = unpackB(B[(b${y}Base + r) >> 1u]);`);
    for (let x = 0; x < t.rows; x++) {
      for (let y = 0; y < t.cols; y++) {
        L.push(`    acc${x}_${y} = fma(a${x}_0, b${y}.x, acc${x}_${y});`);
        L.push(`    acc${x}_${y} = fma(a${x}_1, b${y}.y, acc${x}_${y});`);
      }
    }
    L.push("  }");
    return L;
  }

  if (spec.pairs) {
    // Columns come in adjacent pairs (j and J even), so one u32 of B covers a pair at each step.
    for (let q = 0; q < t.cols / 2; q++) {
      L.push(`  let b${q}Base = min(j0 + ${colOffset(spec, 2 * q)}u, p.J - 2u);`);
    }
    L.push(`  for (var r = 0u; r < p.R; r++) {`);
    L.push(`    let aOff = ${aOffset("r")};`);
    L.push(`    let bOff = r * p.J;`);
    for (let x = 0; x < t.rows; x++) L.push(`    let a${x} = loadA(a${x}Base + aOff);`);
    for (let q = 0; q < t.cols / 2; q++) {
      L.push(`    let b${q} = unpackB(B[(b${q}Base + bOff) >> 1u]);`);
    }
    for (let x = 0; x < t.rows; x++) {
      for (let y = 0; y < t.cols; y++) {
        const b = `b${y >> 1}.${y & 1 ? "y" : "x"}`;
        L.push(`    acc${x}_${y} = fma(a${x}, ${b}, acc${x}_${y});`);
      }
    }
    L.push("  }");
    return L;
  }

  for (let y = 0; y < t.cols; y++) {
    const j = `min(j0 + ${colOffset(spec, y)}u, p.J - 1u)`;
    L.push(`  let b${y}Base = ${b.stride === "alongR" ? `${j} * p.R` : j};`);
  }
  L.push(`  for (var r = 0u; r < p.R; r++) {`);
  L.push(`    let aOff = ${aOffset("r")};`);
  L.push(`    let bOff = ${b.stride === "alongR" ? "r" : "r * p.J"};`);
  for (let x = 0; x < t.rows; x++) L.push(`    let a${x} = loadA(a${x}Base + aOff);`);
  for (let y = 0; y < t.cols; y++) L.push(`    let b${y} = loadB(b${y}Base + bOff);`);
  for (let x = 0; x < t.rows; x++) {
    for (let y = 0; y < t.cols; y++) L.push(`    acc${x}_${y} = fma(a${x}, b${y}, acc${x}_${y});`);
  }
  L.push("  }");
  return L;
}

/** Returns the WGSL reduction loop that stages `depth` steps of both operands in shared memory. */
function stagedLoop({ a, b, tiles: t }: Spec): string[] {
  const wgSize = t.wgRows * t.wgCols;
  const tileI = t.wgRows * t.rows;
  const tileJ = t.wgCols * t.cols;
  const D = t.depth;
  // Consecutive invocations load consecutive addresses: along r for alongR operands, else across.
  const stage = (
    name: "A" | "B",
    op: Operand,
    tileSize: number,
    origin: string,
    size: string,
  ) => {
    const [outer, step] = op.stride === "alongR"
      ? [`e / ${D}u`, `e % ${D}u`]
      : [`e % ${tileSize}u`, `e / ${tileSize}u`];
    return `    for (var e = lid; e < ${D * tileSize}u; e += ${wgSize}u) {
      let o = ${outer};
      let s = ${step};
      let g = ${origin} + o;
      var v = 0.0;
      if (g < ${size} && r0 + s < p.R) { v = load${name}(${
      elementIndex(op.stride, "g", "r0 + s", size)
    }); }
      ${name}s[s * ${tileSize}u + o] = v;
    }`;
  };

  const L: string[] = [];
  L.push(`  let li = lid / ${t.wgCols}u;`);
  L.push(`  let lj = lid % ${t.wgCols}u;`);
  L.push(`  for (var r0 = 0u; r0 < p.R; r0 += ${D}u) {`);
  L.push(stage("A", a, tileI, "tileI0", "p.I"));
  L.push(stage("B", b, tileJ, "tileJ0", "p.J"));
  L.push("    workgroupBarrier();");

  L.push(`    for (var s = 0u; s < ${D}u; s++) {`);
  for (let x = 0; x < t.rows; x++) {
    L.push(`      let a${x} = As[s * ${tileI}u + li + ${x * t.wgRows}u];`);
  }
  for (let y = 0; y < t.cols; y++) {
    L.push(`      let b${y} = Bs[s * ${tileJ}u + lj + ${y * t.wgCols}u];`);
  }
  for (let x = 0; x < t.rows; x++) {
    for (let y = 0; y < t.cols; y++) {
      L.push(`      acc${x}_${y} = fma(a${x}, b${y}, acc${x}_${y});`);
    }
  }
  L.push("    }");
  L.push("    workgroupBarrier();");
  L.push("  }");

  return L;
}

/** Records the tiled kernel for C (I, J) from operands A and B over a reduction of length R. */
function launchTiled(
  gpu: Gpu,
  kernel: string,
  operands: { A: Tensor; B: Tensor; C: Tensor; a: Operand; b: Operand },
  I: number,
  J: number,
  R: number,
  opts: MatmulOptions,
): void {
  const base = opts.tiles ??
    (gpu.info.isSoftware && I * J < SMALL_OUTPUT
      ? { ...SMALL_SOFTWARE_TILES }
      : matmulTiles(gpu.info));
  checkTiles(kernel, gpu, base);
  // A single output row (decode) gets a one-row register tile instead of computing rows - 1
  // clamped copies. Other short outputs use the full tile, which keeps the pipeline count down.
  const tiles = I === 1 ? { ...base, rows: 1 } : base;
  const b = operands.b;
  const pairs = b.dtype !== "f32" && tiles.depth === 0 &&
    (b.stride === "alongR" ? R % 2 === 0 : J % 2 === 0 && tiles.cols % 2 === 0);
  const spec: Spec = { a: operands.a, b, tiles, pairs };
  const pipeline = gpu.pipeline(kernel, specKey(spec), () => tiledCode(spec));
  const tilesI = Math.ceil(I / (tiles.wgRows * tiles.rows));
  const tilesJ = Math.ceil(J / (tiles.wgCols * tiles.cols));
  gpu.dispatch(
    kernel,
    pipeline,
    [operands.A, operands.B, operands.C],
    grid(tilesI * tilesJ, gpu.info.maxComputeWorkgroupsPerDimension),
    params([
      ["u", I],
      ["u", J],
      ["u", R],
      ["u", tilesJ],
      ["f", opts.alpha ?? 1],
      ["u", opts.accumulate ? 1 : 0],
    ]),
  );
}

const WEIGHT_DTYPES: readonly DType[] = ["f32", "bf16", "f16"];

/**
 * Computes y = alpha * x W^T (+ y with `accumulate`), the linear layer forward.
 * x is (M, K) f32, w is (N, K) f32 or packed bf16/f16, y is (M, N) f32; all row-major. Throws a
 * KernelError naming the tensor and shapes on a mismatch.
 */
export function matmul(gpu: Gpu, x: Tensor, w: Tensor, y: Tensor, opts: MatmulOptions = {}): void {
  const kernel = "matmul";
  const [M, K] = x.shape;
  const N = w.shape[0];
  expectShape(kernel, x, [M, K], ["f32"]);
  expectShape(kernel, w, [N, K], WEIGHT_DTYPES);
  expectShape(kernel, y, [M, N], ["f32"]);
  launchTiled(
    gpu,
    kernel,
    {
      A: x,
      B: w,
      C: y,
      a: { dtype: "f32", stride: "alongR" },
      b: { dtype: w.dtype, stride: "alongR" },
    },
    M,
    N,
    K,
    opts,
  );
}

/**
 * Computes dx = alpha * dY W (+ dx with `accumulate`), the gradient of `matmul` for its input.
 * dy is (M, N) f32, w is (N, K) f32 or packed bf16/f16, dx is (M, K) f32.
 */
export function matmulGradInput(
  gpu: Gpu,
  dy: Tensor,
  w: Tensor,
  dx: Tensor,
  opts: MatmulOptions = {},
): void {
  const kernel = "matmulGradInput";
  const [M, N] = dy.shape;
  const K = w.shape[1];
  expectShape(kernel, dy, [M, N], ["f32"]);
  expectShape(kernel, w, [N, K], WEIGHT_DTYPES);
  expectShape(kernel, dx, [M, K], ["f32"]);
  launchTiled(
    gpu,
    kernel,
    {
      A: dy,
      B: w,
      C: dx,
      a: { dtype: "f32", stride: "alongR" },
      b: { dtype: w.dtype, stride: "acrossR" },
    },
    M,
    K,
    N,
    opts,
  );
}

/**
 * Computes dW = alpha * dY^T X (+ dW with `accumulate`), the gradient of `matmul` for its weight.
 * dy is (M, N) f32, x is (M, K) f32, dw is (N, K) f32.
 */
export function matmulGradWeight(
  gpu: Gpu,
  dy: Tensor,
  x: Tensor,
  dw: Tensor,
  opts: MatmulOptions = {},
): void {
  const kernel = "matmulGradWeight";
  const [M, N] = dy.shape;
  const K = x.shape[1];
  expectShape(kernel, dy, [M, N], ["f32"]);
  expectShape(kernel, x, [M, K], ["f32"]);
  expectShape(kernel, dw, [N, K], ["f32"]);
  launchTiled(
    gpu,
    kernel,
    {
      A: dy,
      B: x,
      C: dw,
      a: { dtype: "f32", stride: "acrossR" },
      b: { dtype: "f32", stride: "acrossR" },
    },
    N,
    K,
    M,
    opts,
  );
}

const NAIVE_WG = 64;

/**
 * Computes y = x W^T with one invocation per output element and no reuse: the benchmark baseline.
 * x is (M, K) f32, w is (N, K) f32 or packed bf16/f16, y is (M, N) f32.
 */
export function matmulNaive(gpu: Gpu, x: Tensor, w: Tensor, y: Tensor): void {
  const kernel = "matmulNaive";
  const [M, K] = x.shape;
  const N = w.shape[0];
  expectShape(kernel, x, [M, K], ["f32"]);
  expectShape(kernel, w, [N, K], WEIGHT_DTYPES);
  expectShape(kernel, y, [M, N], ["f32"]);
  const pipeline = gpu.pipeline(kernel, w.dtype, () => `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<${storageType(w.dtype)}>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
struct Params { M: u32, N: u32, K: u32 }
@group(0) @binding(3) var<uniform> p: Params;
${loadFn("loadW", "w", w.dtype)}
@compute @workgroup_size(${NAIVE_WG})
fn main(${GRID_BUILTINS}) {
  let e = ${LINEAR_WORKGROUP} * ${NAIVE_WG}u + lid;
  if (e >= p.M * p.N) { return; }
  let m = e / p.N;
  let n = e % p.N;
  var s = 0.0;
  for (var k = 0u; k < p.K; k++) {
    s = fma(x[m * p.K + k], loadW(n * p.K + k), s);
  }
  y[e] = s;
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    [x, w, y],
    grid(Math.ceil((M * N) / NAIVE_WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", M], ["u", N], ["u", K]]),
  );
}
