/**
 * Bias of a linear layer, forward and backward: y[m, n] += b[n] over the rows of y, and its
 * gradient db[n] = sum over m of dY[m, n], the column sums of the output gradient.
 */
import { expectShape, type Gpu, grid, KernelError, params, type Tensor } from "./device.ts";
import { expectDistinct } from "./elementwise.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "./wgsl.ts";

const WG = 256;

/** Returns [M, N] of a 2-d f32 tensor, or throws a KernelError naming it. */
function rowsCols(kernel: string, y: Tensor): [number, number] {
  if (y.shape.length !== 2) {
    throw new KernelError(kernel, `tensor '${y.label}' must be (M, N), got shape [${y.shape}]`);
  }
  expectShape(kernel, y, y.shape, ["f32"]);
  return [y.shape[0], y.shape[1]];
}

/** Records y[m, n] += b[n] in place. y is (M, N) f32 and b is (N) f32, in another buffer. */
export function addBias(gpu: Gpu, y: Tensor, b: Tensor): void {
  const kernel = "addBias";
  const [M, N] = rowsCols(kernel, y);
  expectShape(kernel, b, [N], ["f32"]);
  expectDistinct(kernel, y, b);
  const pipeline = gpu.pipeline(kernel, "", () => `
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
struct Params { n: u32, cols: u32 }
@group(0) @binding(2) var<uniform> p: Params;
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (i >= p.n) { return; }
  y[i] = y[i] + b[i % p.cols];
}`);
  const n = M * N;
  gpu.dispatch(
    kernel,
    pipeline,
    [y, b],
    grid(Math.ceil(n / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", n], ["u", N]]),
  );
}

/**
 * Records db[n] += sum over m of dy[m, n] (or db = that sum with `accumulate: false`), the
 * gradient of `addBias`. dy is (M, N) f32 and db is (N) f32. One invocation per column adds its
 * rows in order, so the sum does not depend on the workgroup size.
 */
export function biasGrad(
  gpu: Gpu,
  dy: Tensor,
  db: Tensor,
  opts: { accumulate?: boolean } = {},
): void {
  const kernel = "biasGrad";
  const [M, N] = rowsCols(kernel, dy);
  expectShape(kernel, db, [N], ["f32"]);
  expectDistinct(kernel, dy, db);
  const pipeline = gpu.pipeline(kernel, "", () => `
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read_write> db: array<f32>;
struct Params { rows: u32, cols: u32, accumulate: u32 }
@group(0) @binding(2) var<uniform> p: Params;
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let n = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (n >= p.cols) { return; }
  var s = 0.0;
  for (var m = 0u; m < p.rows; m++) {
    s += dy[m * p.cols + n];
  }
  db[n] = select(s, db[n] + s, p.accumulate == 1u);
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    [dy, db],
    grid(Math.ceil(N / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", M], ["u", N], ["u", opts.accumulate === false ? 0 : 1]]),
  );
}
