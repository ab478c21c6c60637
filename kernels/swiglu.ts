/**
 * The SwiGLU gate of the feed-forward block, forward and backward: out = silu(a) * b, where a is
 * the w1 (gate) projection, b the w3 (up) projection, and silu(a) = a * sigmoid(a).
 */
import { expectShape, type Gpu, grid, KernelError, numel, params, type Tensor } from "./device.ts";
import { expectDistinct } from "./elementwise.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "./wgsl.ts";

const WG = 256;

/**
 * WGSL sigmoid whose exp stays in (0, 1]: e = exp(-|a|), and sigmoid(a) is e / (1 + e) for a < 0.
 * WGSL lets compilers assume infinities are absent, so the code avoids 1 / (1 + exp(-a)), whose
 * exp overflows for a < -88.
 */
const SIGMOID_WGSL = `
fn sigmoid(a: f32) -> f32 {
  let e = exp(-abs(a));
  return select(e, 1.0, a >= 0.0) / (1.0 + e);
}`;

function checkShapes(kernel: string, a: Tensor, others: Tensor[]): number {
  if (a.shape.length !== 2) {
    throw new KernelError(kernel, `tensor '${a.label}' must be (M, F), got shape [${a.shape}]`);
  }
  expectShape(kernel, a, a.shape, ["f32"]);
  for (const t of others) expectShape(kernel, t, a.shape, ["f32"]);
  expectDistinct(kernel, a, ...others);
  return numel(a.shape);
}

/**
 * Records out = silu(a) * b element-wise. a, b and out are (M, F) f32 and distinct tensors.
 */
export function swigluForward(gpu: Gpu, a: Tensor, b: Tensor, out: Tensor): void {
  const kernel = "swigluForward";
  const n = checkShapes(kernel, a, [b, out]);
  const pipeline = gpu.pipeline(kernel, "", () => `
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct Params { n: u32 }
@group(0) @binding(3) var<uniform> p: Params;
${SIGMOID_WGSL}
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (i >= p.n) { return; }
  let x = a[i];
  out[i] = x * sigmoid(x) * b[i];
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    [a, b, out],
    grid(Math.ceil(n / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", n]]),
  );
}

/**
 * Records the SwiGLU backward pass for dOut (M, F):
 * da = dOut * b * s * (1 + a * (1 - s)) with s = sigmoid(a), and db = dOut * silu(a).
 * a, b, dOut, da and db are (M, F) f32 and distinct tensors; da and db are overwritten.
 */
export function swigluBackward(
  gpu: Gpu,
  a: Tensor,
  b: Tensor,
  dOut: Tensor,
  da: Tensor,
  db: Tensor,
): void {
  const kernel = "swigluBackward";
  const n = checkShapes(kernel, a, [b, dOut, da, db]);
  const pipeline = gpu.pipeline(kernel, "", () => `
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> dOut: array<f32>;
@group(0) @binding(3) var<storage, read_write> da: array<f32>;
@group(0) @binding(4) var<storage, read_write> db: array<f32>;
struct Params { n: u32 }
@group(0) @binding(5) var<uniform> p: Params;
${SIGMOID_WGSL}
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (i >= p.n) { return; }
  let x = a[i];
  let s = sigmoid(x);
  let g = dOut[i];
  da[i] = g * b[i] * s * (1.0 + x * (1.0 - s));
  db[i] = g * x * s;
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    [a, b, dOut, da, db],
    grid(Math.ceil(n / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", n]]),
  );
}
