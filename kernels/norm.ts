/**
 * RMSNorm, forward and backward: out = x / sqrt(mean(x^2) + eps) * weight, row by row.
 *
 * One workgroup normalises one row: its invocations stride over the columns, then a tree reduction
 * in workgroup memory gives the row's sum (log2(workgroup size) barrier steps). Subgroup operations
 * are not used, so the kernels run the same on devices with and without them.
 */
import { expectShape, type Gpu, grid, KernelError, params, type Tensor } from "./device.ts";
import { expectDistinct } from "./elementwise.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP, loadFn, storageType } from "./wgsl.ts";

/** Invocations for one column of the weight gradient. */
const COLUMN_WG = 64;

/** Returns the workgroup size for rows of C columns: small rows waste fewer idle invocations. */
function rowWorkgroupSize(C: number): number {
  return C <= 256 ? 64 : 256;
}

/** WGSL statements that sum `acc` over the workgroup into `partial[0]`, ending on a barrier. */
function workgroupSum(wg: number): string {
  return `
  partial[lid] = acc;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { partial[lid] += partial[lid + s]; }
    workgroupBarrier();
  }`;
}

function rowShape(kernel: string, x: Tensor): [number, number] {
  if (x.shape.length !== 2) {
    throw new KernelError(kernel, `tensor '${x.label}' must be (M, C), got shape [${x.shape}]`);
  }
  const [M, C] = x.shape;
  if (C === 0) throw new KernelError(kernel, `tensor '${x.label}' has rows of width 0`);
  return [M, C];
}

/**
 * Records RMSNorm of each row: out[m, c] = x[m, c] * rstd[m] * weight[c] with
 * rstd[m] = 1 / sqrt(mean_c(x[m, c]^2) + eps).
 * x is (M, C) f32, weight is (C) f32/bf16/f16, out is (M, C) f32 and rstd is (M) f32, kept for
 * the backward pass. out must not be x.
 */
export function rmsnormForward(
  gpu: Gpu,
  x: Tensor,
  weight: Tensor,
  out: Tensor,
  rstd: Tensor,
  eps: number,
): void {
  const kernel = "rmsnormForward";
  const [M, C] = rowShape(kernel, x);
  expectShape(kernel, x, [M, C], ["f32"]);
  expectShape(kernel, weight, [C], ["f32", "bf16", "f16"]);
  expectShape(kernel, out, [M, C], ["f32"]);
  expectShape(kernel, rstd, [M], ["f32"]);
  expectDistinct(kernel, x, weight, out, rstd);
  if (!(eps >= 0)) throw new KernelError(kernel, `eps must be >= 0, got ${eps}`);
  const wg = rowWorkgroupSize(C);
  const pipeline = gpu.pipeline(kernel, `${weight.dtype} ${wg}`, () => `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<${storageType(weight.dtype)}>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
struct Params { M: u32, C: u32, eps: f32 }
@group(0) @binding(4) var<uniform> p: Params;
var<workgroup> partial: array<f32, ${wg}>;
${loadFn("weightAt", "weight", weight.dtype)}
@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
  let row = ${LINEAR_WORKGROUP};
  if (row >= p.M) { return; }
  let base = row * p.C;
  var acc = 0.0;
  for (var c = lid; c < p.C; c += ${wg}u) {
    let v = x[base + c];
    acc += v * v;
  }${workgroupSum(wg)}
  let r = 1.0 / sqrt(partial[0] / f32(p.C) + p.eps);
  for (var c = lid; c < p.C; c += ${wg}u) {
    out[base + c] = x[base + c] * r * weightAt(c);
  }
  if (lid == 0u) { rstd[row] = r; }
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    [x, weight, out, rstd],
    grid(M, gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", M], ["u", C], ["f", eps]]),
  );
}

/** Options of `rmsnormBackward`. */
export interface RmsnormBackwardOptions {
  /** Add the input gradient into dx (the residual stream's gradient) instead of overwriting it. */
  accumulate?: boolean;
  /** (C) f32 tensor to add the weight gradient into, for full fine-tuning. */
  dWeight?: Tensor;
}

/**
 * Records the RMSNorm backward pass for dOut (M, C):
 * dx[m, c] = rstd[m] * weight[c] * dOut[m, c] - rstd[m]^3 / C * x[m, c] * sum_k(dOut[m, k] * weight[k] * x[m, k]),
 * written into dx (M, C), or added to it with `opts.accumulate`. With `opts.dWeight` (C), a
 * second pass also adds sum_m dOut[m, c] * x[m, c] * rstd[m] into it. That pass gives each column
 * one invocation that loops over the rows, so no two invocations write one element.
 * x, weight and rstd are those of `rmsnormForward`; dx must be distinct from the inputs.
 */
export function rmsnormBackward(
  gpu: Gpu,
  x: Tensor,
  weight: Tensor,
  rstd: Tensor,
  dOut: Tensor,
  dx: Tensor,
  opts: RmsnormBackwardOptions = {},
): void {
  const kernel = "rmsnormBackward";
  const [M, C] = rowShape(kernel, x);
  expectShape(kernel, x, [M, C], ["f32"]);
  expectShape(kernel, weight, [C], ["f32", "bf16", "f16"]);
  expectShape(kernel, rstd, [M], ["f32"]);
  expectShape(kernel, dOut, [M, C], ["f32"]);
  expectShape(kernel, dx, [M, C], ["f32"]);
  expectDistinct(kernel, x, weight, rstd, dOut, dx);
  if (opts.dWeight) {
    expectShape(kernel, opts.dWeight, [C], ["f32"]);
    expectDistinct(kernel, x, rstd, dOut, dx, opts.dWeight);
  }

  const wg = rowWorkgroupSize(C);
  const accumulate = opts.accumulate ?? false;
  const pipeline = gpu.pipeline(kernel, `${weight.dtype} ${wg} ${accumulate}`, () => `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<${storageType(weight.dtype)}>;
@group(0) @binding(2) var<storage, read> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> dOut: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
struct Params { M: u32, C: u32 }
@group(0) @binding(5) var<uniform> p: Params;
var<workgroup> partial: array<f32, ${wg}>;
${loadFn("weightAt", "weight", weight.dtype)}
@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
  let row = ${LINEAR_WORKGROUP};
  if (row >= p.M) { return; }
  let base = row * p.C;
  var acc = 0.0;
  for (var c = lid; c < p.C; c += ${wg}u) {
    acc += dOut[base + c] * weightAt(c) * x[base + c];
  }${workgroupSum(wg)}
  let r = rstd[row];
  let k = r * r * r * partial[0] / f32(p.C);
  for (var c = lid; c < p.C; c += ${wg}u) {
    let g = r * weightAt(c) * dOut[base + c] - k * x[base + c];
    dx[base + c] ${accumulate ? "+=" : "="} g;
  }
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    [x, weight, rstd, dOut, dx],
    grid(M, gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", M], ["u", C]]),
  );

  if (opts.dWeight) {
    const weightKernel = "rmsnormBackward dWeight";
    const columns = gpu.pipeline(weightKernel, "", () => `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> rstd: array<f32>;
@group(0) @binding(2) var<storage, read> dOut: array<f32>;
@group(0) @binding(3) var<storage, read_write> dWeight: array<f32>;
struct Params { M: u32, C: u32 }
@group(0) @binding(4) var<uniform> p: Params;
@compute @workgroup_size(${COLUMN_WG})
fn main(${GRID_BUILTINS}) {
  let c = ${LINEAR_WORKGROUP} * ${COLUMN_WG}u + lid;
  if (c >= p.C) { return; }
  var acc = 0.0;
  for (var m = 0u; m < p.M; m++) {
    let i = m * p.C + c;
    acc += dOut[i] * x[i] * rstd[m];
  }
  dWeight[c] += acc;
}`);
    gpu.dispatch(
      weightKernel,
      columns,
      [x, rstd, dOut, opts.dWeight],
      grid(Math.ceil(C / COLUMN_WG), gpu.info.maxComputeWorkgroupsPerDimension),
      params([["u", M], ["u", C]]),
    );
  }
}
