/**
 * Next-token cross-entropy fused with its gradient with respect to the logits.
 *
 * For row r with target t >= 0: loss_r = logsumexp(logits[r]) - logits[r, t], and
 * dLogits[r, j] = (softmax(logits[r])_j - [j == t]) * gradScale. Rows whose target is negative
 * (such as -100 for prompt tokens) are left out: their loss and gradient are 0. The summed loss and
 * the count of counted rows are accumulated into a small `stats` tensor on the GPU, so many steps
 * can run before one readback.
 */
import { expectShape, type Gpu, grid, KernelError, params, type Tensor } from "./device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "./wgsl.ts";

const WG = 256;

/** Number of elements of the `stats` tensor: [summed loss, count of counted rows]. */
export const LOSS_STATS_SIZE = 2;

/** Options of `crossEntropy`. */
export interface CrossEntropyOptions {
  /** Factor applied to the gradient, usually 1 / (counted tokens in the batch). Defaults to 1. */
  gradScale?: number;
  /** An (M) f32 tensor that receives each row's loss (0 for masked rows). */
  rowLoss?: Tensor;
}

/** Per-device scratch (M) tensors for per-row losses when the caller passes no `rowLoss`. */
const rowLossScratch = new WeakMap<Gpu, Tensor>();

function scratchRowLoss(gpu: Gpu, M: number): Tensor {
  const cached = rowLossScratch.get(gpu);
  if (cached && cached.shape[0] >= M) return cached;
  // The old scratch tensor is left to the garbage collector: recorded dispatches may still use it.
  const size = Math.max(M, 2 * (cached?.shape[0] ?? 0), 64);
  const t = gpu.tensor([size], "f32", "crossEntropy row losses");
  rowLossScratch.set(gpu, t);
  return t;
}

type GradMode = "separate" | "inPlace" | "none";

/**
 * Returns the WGSL of the per-row pass. `mode` selects where the gradient goes: in place, the logits
 * are bound once as read_write, because WebGPU rejects a writable binding aliased with another.
 */
function rowShader(mode: GradMode): string {
  const logitsAccess = mode === "inPlace" ? "read_write" : "read";
  const gradBinding = mode === "separate"
    ? "@group(0) @binding(3) var<storage, read_write> dLogits: array<f32>;"
    : "";
  const paramsBinding = mode === "separate" ? 4 : 3;
  let storeGrad = "";
  if (mode === "separate") storeGrad = "dLogits[i] = g;";
  if (mode === "inPlace") storeGrad = "logits[i] = g;";
  return `
@group(0) @binding(0) var<storage, ${logitsAccess}> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> rowLoss: array<f32>;
${gradBinding}
struct Params { M: u32, V: u32, gradScale: f32 }
@group(0) @binding(${paramsBinding}) var<uniform> p: Params;

const WG = ${WG}u;
const LOWEST = -3.40282347e38;
var<workgroup> redMax: array<f32, WG>;
var<workgroup> redSum: array<f32, WG>;
var<workgroup> targetLogit: f32;

@compute @workgroup_size(WG)
fn main(${GRID_BUILTINS}) {
  let r = ${LINEAR_WORKGROUP};
  if (r >= p.M) { return; }
  let base = r * p.V;

  // Online max and sum of exp(x - max) over this thread's strided elements.
  var m = LOWEST;
  var s = 0.0;
  for (var j = lid; j < p.V; j += WG) {
    let x = logits[base + j];
    if (x > m) {
      s = s * exp(m - x) + 1.0;
      m = x;
    } else {
      s += exp(x - m);
    }
  }
  redMax[lid] = m;
  redSum[lid] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      let m2 = redMax[lid + stride];
      let s2 = redSum[lid + stride];
      let mm = max(m, m2);
      s = s * exp(m - mm) + s2 * exp(m2 - mm);
      m = mm;
      redMax[lid] = m;
      redSum[lid] = s;
    }
    workgroupBarrier();
  }

  // The target logit is read before any gradient is written, which matters in place.
  let t = targets[r];
  let counted = t >= 0 && u32(t) < p.V;
  if (lid == 0u) {
    targetLogit = 0.0;
    if (counted) { targetLogit = logits[base + u32(t)]; }
  }
  workgroupBarrier();
  let lse = redMax[0] + log(redSum[0]);
  if (lid == 0u) {
    rowLoss[r] = select(0.0, lse - targetLogit, counted);
  }

  for (var j = lid; j < p.V; j += WG) {
    let i = base + j;
    let hit = select(0.0, 1.0, counted && j == u32(t));
    let g = select(0.0, (exp(logits[i] - lse) - hit) * p.gradScale, counted);
    ${storeGrad}
  }
}`;
}

const SUM_SHADER = `
@group(0) @binding(0) var<storage, read> rowLoss: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
struct Params { M: u32, V: u32 }
@group(0) @binding(3) var<uniform> p: Params;

const WG = ${WG}u;
var<workgroup> redLoss: array<f32, WG>;
var<workgroup> redCount: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  var loss = 0.0;
  var count = 0.0;
  for (var r = lid; r < p.M; r += WG) {
    let t = targets[r];
    if (t >= 0 && u32(t) < p.V) {
      loss += rowLoss[r];
      count += 1.0;
    }
  }
  redLoss[lid] = loss;
  redCount[lid] = count;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      redLoss[lid] += redLoss[lid + stride];
      redCount[lid] += redCount[lid + stride];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    stats[0] += redLoss[0];
    stats[1] += redCount[0];
  }
}`;

/**
 * Computes the cross-entropy loss of each row and its gradient, and accumulates the summed loss
 * and the count of counted rows: stats[0] += sum of loss_r, stats[1] += number of counted rows.
 *
 * logits is (M, V) f32, targets is (M) i32 and stats is (2) f32, never cleared here. dLogits is
 * (M, V) f32, or null to compute the loss alone without writing any gradient. dLogits may be the
 * logits tensor itself: the gradient then overwrites the logits, which saves an (M, V) buffer. A
 * target >= V is treated like a masked row, so callers validate token ids on the CPU.
 *
 * Two passes: one workgroup of 256 per row finds max and sum of exp(x - max) in one online sweep
 * and writes the gradient in a second sweep (2 reads and 1 write of each logit); then one
 * workgroup sums the per-row losses in a fixed order, so the result never depends on scheduling.
 * The count is exact in f32 up to 2^24 rows accumulated.
 */
export function crossEntropy(
  gpu: Gpu,
  logits: Tensor,
  targets: Tensor,
  dLogits: Tensor | null,
  stats: Tensor,
  opts: CrossEntropyOptions = {},
): void {
  const kernel = "crossEntropy";
  if (logits.shape.length !== 2) {
    throw new KernelError(kernel, `logits '${logits.label}' must be (M, V), got ${logits.shape}`);
  }
  const [M, V] = logits.shape;
  expectShape(kernel, logits, [M, V], ["f32"]);
  expectShape(kernel, targets, [M], ["i32"]);
  if (dLogits) expectShape(kernel, dLogits, [M, V], ["f32"]);
  expectShape(kernel, stats, [LOSS_STATS_SIZE], ["f32"]);
  if (opts.rowLoss) expectShape(kernel, opts.rowLoss, [M], ["f32"]);
  const gradScale = opts.gradScale ?? 1;
  if (!Number.isFinite(gradScale)) {
    throw new KernelError(kernel, `gradScale must be a finite number, got ${gradScale}`);
  }
  if (V === 0) throw new KernelError(kernel, `logits '${logits.label}' has 0 classes`);
  if (opts.rowLoss && opts.rowLoss.buffer === logits.buffer) {
    throw new KernelError(
      kernel,
      `rowLoss '${opts.rowLoss.label}' must not share the logits buffer`,
    );
  }
  if (M === 0) return;

  let mode: GradMode = "none";
  if (dLogits) mode = dLogits.buffer === logits.buffer ? "inPlace" : "separate";
  const rowLoss = opts.rowLoss ?? scratchRowLoss(gpu, M);
  const rows = gpu.pipeline(kernel, mode, () => rowShader(mode));
  const bindings = mode === "separate"
    ? [logits, targets, rowLoss, dLogits as Tensor]
    : [logits, targets, rowLoss];
  gpu.dispatch(
    kernel,
    rows,
    bindings,
    grid(M, gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", M], ["u", V], ["f", gradScale]]),
  );

  const sum = gpu.pipeline(`${kernel}Sum`, "", () => SUM_SHADER);
  gpu.dispatch(`${kernel}Sum`, sum, [rowLoss, targets, stats], [1], params([["u", M], ["u", V]]));
}
