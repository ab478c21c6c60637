/**
 * AdamW and gradient clipping by global norm, entirely on the GPU.
 *
 * Clipping needs the norm of all gradients before any parameter moves. `sumSquares` accumulates
 * each gradient tensor's sum of squares into one 1-element tensor, `clipScale` turns it into the
 * factor min(1, maxNorm / norm), and `adamwStep` reads that factor from the GPU, so clipped training
 * steps need no readback.
 */
import { expectShape, type Gpu, grid, KernelError, numel, params, type Tensor } from "./device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "./wgsl.ts";

const WG = 256;

/** Maximum number of workgroups in the first `sumSquares` pass, each writing one partial sum. */
const SUM_PARTIALS = 256;

/** Minimum number of elements per `sumSquares` invocation, so small tensors use few workgroups. */
const SUM_ELEMENTS_PER_INVOCATION = 4;

/** Added to the norm in `clipScale`, so a zero gradient gives a factor of 1, not a division by 0. */
export const CLIP_NORM_EPSILON = 1e-6;

/** Hyperparameters of one AdamW step. */
export interface AdamwOptions {
  /** Learning rate of this step. */
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay: each step multiplies the parameters by (1 - lr * weightDecay). */
  weightDecay: number;
  /** 1-based step number, used for the bias corrections 1 - beta^step. */
  step: number;
  /** A (1) f32 tensor by which gradients are multiplied, such as the factor from `clipScale`. */
  gradScale?: Tensor;
}

function adamwShader(scaled: boolean): string {
  const scaleBinding = scaled
    ? "@group(0) @binding(4) var<storage, read> gradScale: array<f32>;"
    : "";
  return `
@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
${scaleBinding}
struct Params {
  n: u32, beta1: f32, beta2: f32, eps: f32,
  decay: f32, stepSize: f32, sqrtCorrection2: f32,
}
@group(0) @binding(${scaled ? 5 : 4}) var<uniform> p: Params;

@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (i >= p.n) { return; }
  let g = grad[i]${scaled ? " * gradScale[0]" : ""};
  let w = param[i] * (1.0 - p.decay);
  let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
  let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  param[i] = w - p.stepSize * mi / (sqrt(vi) / p.sqrtCorrection2 + p.eps);
}`;
}

/**
 * Applies one AdamW step in place to param, m and v, all of the same shape and f32. grad has that
 * shape too and is only read. With g = grad * gradScale[0] (1 without `gradScale`):
 *
 *     param *= 1 - lr * weightDecay
 *     m = beta1 * m + (1 - beta1) * g
 *     v = beta2 * v + (1 - beta2) * g^2
 *     param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
 *
 * The bias corrections are computed on the CPU in float64. One invocation per element.
 * Throws a KernelError for mismatched shapes or invalid hyperparameters.
 */
export function adamwStep(
  gpu: Gpu,
  param: Tensor,
  grad: Tensor,
  m: Tensor,
  v: Tensor,
  opts: AdamwOptions,
): void {
  const kernel = "adamwStep";
  const shape = param.shape;
  expectShape(kernel, param, shape, ["f32"]);
  expectShape(kernel, grad, shape, ["f32"]);
  expectShape(kernel, m, shape, ["f32"]);
  expectShape(kernel, v, shape, ["f32"]);
  if (opts.gradScale) expectShape(kernel, opts.gradScale, [1], ["f32"]);
  const args = [param, grad, m, v];
  if (new Set(args.map((t) => t.buffer)).size !== args.length) {
    throw new KernelError(kernel, "param, grad, m and v must be four distinct tensors");
  }
  const scale = opts.gradScale;
  if (scale && [param, m, v].some((t) => t.buffer === scale.buffer)) {
    throw new KernelError(kernel, `gradScale '${scale.label}' must not share a written buffer`);
  }
  const { lr, beta1, beta2, eps, weightDecay, step } = opts;
  if (!Number.isInteger(step) || step < 1) {
    throw new KernelError(kernel, `step must be an integer >= 1, got ${step}`);
  }
  for (const [name, beta] of [["beta1", beta1], ["beta2", beta2]] as const) {
    if (!(beta >= 0 && beta < 1)) {
      throw new KernelError(kernel, `${name} must be in [0, 1), got ${beta}`);
    }
  }
  if (!(eps > 0)) throw new KernelError(kernel, `eps must be > 0, got ${eps}`);
  if (!Number.isFinite(lr) || lr < 0) {
    throw new KernelError(kernel, `lr must be a finite number >= 0, got ${lr}`);
  }
  if (!Number.isFinite(weightDecay) || weightDecay < 0) {
    throw new KernelError(kernel, `weightDecay must be a finite number >= 0, got ${weightDecay}`);
  }

  const n = numel(shape);
  const scaled = opts.gradScale !== undefined;
  const pipeline = gpu.pipeline(kernel, scaled ? "scaled" : "plain", () => adamwShader(scaled));
  const bindings = scaled ? [param, grad, m, v, opts.gradScale as Tensor] : [param, grad, m, v];
  gpu.dispatch(
    kernel,
    pipeline,
    bindings,
    grid(Math.ceil(n / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([
      ["u", n],
      ["f", beta1],
      ["f", beta2],
      ["f", eps],
      ["f", lr * weightDecay],
      ["f", lr / (1 - beta1 ** step)],
      ["f", Math.sqrt(1 - beta2 ** step)],
    ]),
  );
}

/** Per-device (SUM_PARTIALS) f32 tensors holding the partial sums of `sumSquares`. */
const partialsScratch = new WeakMap<Gpu, Tensor>();

const PARTIAL_SHADER = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
struct Params { n: u32 }
@group(0) @binding(2) var<uniform> p: Params;

const WG = ${WG}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = wid.x * WG + lid; i < p.n; i += nwg.x * WG) {
    let xi = x[i];
    s += xi * xi;
  }
  red[lid] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) { red[lid] += red[lid + stride]; }
    workgroupBarrier();
  }
  if (lid == 0u) { partials[wid.x] = red[0]; }
}`;

const TOTAL_SHADER = `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> acc: array<f32>;
struct Params { count: u32 }
@group(0) @binding(2) var<uniform> p: Params;

const WG = ${WG}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < p.count; i += WG) { s += partials[i]; }
  red[lid] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) { red[lid] += red[lid + stride]; }
    workgroupBarrier();
  }
  if (lid == 0u) { acc[0] += red[0]; }
}`;

/**
 * Adds the sum of squares of all elements of x (any shape, f32) to acc[0], acc being a (1) f32
 * tensor that this function never clears.
 *
 * Two passes and no atomics, so on one device the result is the same on every run: up to 256 workgroups each
 * reduce a grid-strided share of x into a partial sum, then one workgroup adds the partials to acc.
 */
export function sumSquares(gpu: Gpu, x: Tensor, acc: Tensor): void {
  const kernel = "sumSquares";
  expectShape(kernel, x, x.shape, ["f32"]);
  expectShape(kernel, acc, [1], ["f32"]);
  if (x.buffer === acc.buffer) {
    throw new KernelError(kernel, `acc '${acc.label}' must not share the buffer of x`);
  }
  const n = numel(x.shape);
  if (n === 0) return;

  let partials = partialsScratch.get(gpu);
  if (!partials) {
    partials = gpu.tensor([SUM_PARTIALS], "f32", "sumSquares partial sums");
    partialsScratch.set(gpu, partials);
  }
  const groups = Math.min(SUM_PARTIALS, Math.ceil(n / (WG * SUM_ELEMENTS_PER_INVOCATION)));
  gpu.dispatch(
    kernel,
    gpu.pipeline(kernel, "partial", () => PARTIAL_SHADER),
    [x, partials],
    [groups],
    params([["u", n]]),
  );
  gpu.dispatch(
    kernel,
    gpu.pipeline(kernel, "total", () => TOTAL_SHADER),
    [partials, acc],
    [1],
    params([["u", groups]]),
  );
}

/**
 * Writes the gradient clipping factor min(1, maxNorm / (sqrt(s) + 1e-6)) into outScale[0], where s
 * is sumOfSquares[0], the summed squares of all gradients (see `sumSquares`). Both tensors are
 * (1) f32 and distinct.
 * Throws a KernelError unless maxNorm > 0.
 */
export function clipScale(
  gpu: Gpu,
  sumOfSquares: Tensor,
  maxNorm: number,
  outScale: Tensor,
): void {
  const kernel = "clipScale";
  expectShape(kernel, sumOfSquares, [1], ["f32"]);
  expectShape(kernel, outScale, [1], ["f32"]);
  if (sumOfSquares.buffer === outScale.buffer) {
    throw new KernelError(kernel, `outScale '${outScale.label}' must not share the input's buffer`);
  }
  if (!(maxNorm > 0) || !Number.isFinite(maxNorm)) {
    throw new KernelError(kernel, `maxNorm must be a finite number > 0, got ${maxNorm}`);
  }
  const pipeline = gpu.pipeline(kernel, "", () => `
@group(0) @binding(0) var<storage, read> sumSquares: array<f32>;
@group(0) @binding(1) var<storage, read_write> outScale: array<f32>;
struct Params { maxNorm: f32, epsilon: f32 }
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(1)
fn main() {
  outScale[0] = min(1.0, p.maxNorm / (sqrt(sumSquares[0]) + p.epsilon));
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    [sumOfSquares, outScale],
    [1],
    params([["f", maxNorm], ["f", CLIP_NORM_EPSILON]]),
  );
}
