/**
 * Element-wise kernels and reductions over whole tensors: add, scale, fill, row copies, the sum of
 * squares used for gradient-norm clipping, and a check for NaN or infinite values.
 *
 * Every kernel runs one invocation per element over a grid folded by `grid()`, so tensors with
 * more than 65535 x 256 elements stay under the per-dimension workgroup limit.
 */
import {
  type Binding,
  expectShape,
  type Gpu,
  grid,
  KernelError,
  numel,
  params,
  type Tensor,
} from "./device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "./wgsl.ts";

const WG = 256;

/** Count of partial sums the first pass of `sumSquares` writes; the second pass adds them up. */
const SUM_PARTIALS = 256;

/**
 * Throws a KernelError when two of `tensors` share a GPU buffer. WebGPU rejects a dispatch that
 * binds one buffer as both read-only and writable storage, so kernels without an in-place variant
 * check this first and name the tensors.
 */
export function expectDistinct(kernel: string, ...tensors: Tensor[]): void {
  for (let i = 0; i < tensors.length; i++) {
    for (let j = i + 1; j < tensors.length; j++) {
      if (tensors[i].buffer === tensors[j].buffer) {
        throw new KernelError(
          kernel,
          `tensors '${tensors[i].label}' and '${tensors[j].label}' share a buffer; ` +
            `this kernel needs them distinct`,
        );
      }
    }
  }
}

/**
 * Records `out[i] = expr` for every element. `inputs` maps WGSL names used in `expr` to f32
 * tensors of out's shape. An input that is `out` itself reads the output binding, so in-place
 * updates never bind one buffer twice. `uniforms` become fields of `p` after `n`.
 */
function mapElements(
  gpu: Gpu,
  kernel: string,
  inputs: Record<string, Tensor>,
  out: Tensor,
  expr: string,
  uniforms: readonly (readonly [string, "u" | "i" | "f", number])[] = [],
): void {
  expectShape(kernel, out, out.shape, ["f32"]);
  for (const t of Object.values(inputs)) expectShape(kernel, t, out.shape, ["f32"]);

  // One binding per distinct buffer: the output first, then inputs that are not the output.
  const bindings: Binding[] = [out];
  const declarations = ["@group(0) @binding(0) var<storage, read_write> out: array<f32>;"];
  const loads: string[] = [];
  const aliasKey: string[] = [];
  for (const [name, t] of Object.entries(inputs)) {
    let source = bindings.findIndex((b) => "buffer" in b && b.buffer === t.buffer);
    if (source < 0) {
      source = bindings.length;
      bindings.push(t);
      declarations.push(
        `@group(0) @binding(${source}) var<storage, read> in${source}: array<f32>;`,
      );
    }
    loads.push(`let ${name} = ${source === 0 ? "out" : `in${source}`}[i];`);
    aliasKey.push(`${name}${source}`);
  }
  const fields = [
    "n: u32",
    ...uniforms.map(([name, kind]) => `${name}: ${{ u: "u32", i: "i32", f: "f32" }[kind]}`),
  ];
  const pipeline = gpu.pipeline(kernel, aliasKey.join(","), () => `
${declarations.join("\n")}
struct Params { ${fields.join(", ")} }
@group(0) @binding(${bindings.length}) var<uniform> p: Params;
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (i >= p.n) { return; }
  ${loads.join("\n  ")}
  out[i] = ${expr};
}`);
  const n = numel(out.shape);
  gpu.dispatch(
    kernel,
    pipeline,
    bindings,
    grid(Math.ceil(n / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", n], ...uniforms.map(([, kind, v]) => [kind, v] as const)]),
  );
}

/**
 * Records out = a + b element-wise. a, b and out are f32 tensors of one shape; out may be a or b
 * (the residual add in place).
 */
export function add(gpu: Gpu, a: Tensor, b: Tensor, out: Tensor): void {
  mapElements(gpu, "add", { a, b }, out, "a + b");
}

/** Records out = alpha * x element-wise; x and out are f32 tensors of one shape, out may be x. */
export function scale(gpu: Gpu, x: Tensor, alpha: number, out: Tensor): void {
  mapElements(gpu, "scale", { x }, out, "p.alpha * x", [["alpha", "f", alpha]]);
}

/** Records setting every element of x (f32, u32 or i32) to `value`. */
export function fill(gpu: Gpu, x: Tensor, value: number): void {
  const kernel = "fill";
  expectShape(kernel, x, x.shape, ["f32", "u32", "i32"]);
  if (x.dtype !== "f32" && !Number.isInteger(value)) {
    throw new KernelError(kernel, `value ${value} is not an integer for ${x.dtype} tensor`);
  }
  if (value === 0 && !Object.is(value, -0)) {
    gpu.clear(x);
    return;
  }
  const type = x.dtype;
  const kinds = { f32: "f", u32: "u", i32: "i" } as const;
  const kind = kinds[type as keyof typeof kinds];
  const pipeline = gpu.pipeline(kernel, type, () => `
@group(0) @binding(0) var<storage, read_write> x: array<${type}>;
struct Params { n: u32, value: ${type} }
@group(0) @binding(1) var<uniform> p: Params;
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (i >= p.n) { return; }
  x[i] = p.value;
}`);
  const n = numel(x.shape);
  gpu.dispatch(
    kernel,
    pipeline,
    [x],
    grid(Math.ceil(n / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", n], [kind, value]]),
  );
}

/**
 * Records a copy of `rows` rows from src, starting at row `srcRow`, into dst from row `dstRow`.
 * A tensor's rows are its first dimension. src and dst need the same dtype and the same row size
 * (the product of the other dimensions), and a row must be a multiple of 4 bytes long.
 */
export function copyRows(
  gpu: Gpu,
  src: Tensor,
  srcRow: number,
  dst: Tensor,
  dstRow: number,
  rows: number,
): void {
  const kernel = "copyRows";
  if (src.shape.length === 0 || dst.shape.length === 0) {
    throw new KernelError(kernel, `tensors '${src.label}' and '${dst.label}' need a row dimension`);
  }
  expectShape(kernel, dst, [dst.shape[0], ...src.shape.slice(1)], [src.dtype]);
  expectDistinct(kernel, src, dst);

  const width = numel(src.shape.slice(1));
  const elementBytes = src.dtype === "bf16" || src.dtype === "f16" ? 2 : 4;
  const rowBytes = width * elementBytes;
  if (rowBytes % 4 !== 0) {
    throw new KernelError(
      kernel,
      `rows of '${src.label}' are ${rowBytes} bytes; buffer copies need a multiple of 4`,
    );
  }

  for (const [name, v] of [["srcRow", srcRow], ["dstRow", dstRow], ["rows", rows]] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new KernelError(kernel, `${name} must be a non-negative integer, got ${v}`);
    }
  }
  if (srcRow + rows > src.shape[0] || dstRow + rows > dst.shape[0]) {
    throw new KernelError(
      kernel,
      `copy of ${rows} rows from row ${srcRow} of '${src.label}' (${src.shape[0]} rows) to row ` +
        `${dstRow} of '${dst.label}' (${dst.shape[0]} rows) is out of bounds`,
    );
  }

  if (rows === 0 || rowBytes === 0) return;
  gpu.copy(src, srcRow * rowBytes, dst, dstRow * rowBytes, rows * rowBytes);
}

const partialsByGpu = new WeakMap<Gpu, Tensor>();

/**
 * Records out[outIndex] += sum(x^2) over every element of the f32 tensor x; out is an f32 tensor
 * of any shape, distinct from x.
 *
 * Two passes, so no two invocations write one address: up to `SUM_PARTIALS` workgroups each
 * reduce a strided share of x in workgroup memory into a partial sum, then one workgroup adds the
 * partials into out[outIndex]. The partial sums live in a scratch tensor kept per device; WebGPU
 * orders dispatches, so successive calls reuse it safely.
 */
export function sumSquares(gpu: Gpu, x: Tensor, out: Tensor, outIndex: number): void {
  const kernel = "sumSquares";
  expectShape(kernel, x, x.shape, ["f32"]);
  expectShape(kernel, out, out.shape, ["f32"]);
  expectDistinct(kernel, x, out);
  if (!Number.isInteger(outIndex) || outIndex < 0 || outIndex >= numel(out.shape)) {
    throw new KernelError(
      kernel,
      `outIndex ${outIndex} is outside tensor '${out.label}' of ${numel(out.shape)} elements`,
    );
  }
  let partials = partialsByGpu.get(gpu);
  if (!partials) {
    partials = gpu.tensor([SUM_PARTIALS], "f32", "sumSquares partials");
    partialsByGpu.set(gpu, partials);
  }
  const n = numel(x.shape);
  const groups = Math.max(1, Math.min(SUM_PARTIALS, Math.ceil(n / WG)));

  const reduceTail = `
  partial[lid] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { partial[lid] += partial[lid + s]; }
    workgroupBarrier();
  }`;
  const first = gpu.pipeline(`${kernel} partials`, "", () => `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
struct Params { n: u32, groups: u32 }
@group(0) @binding(2) var<uniform> p: Params;
var<workgroup> partial: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var i = wid.x * ${WG}u + lid; i < p.n; i += p.groups * ${WG}u) {
    let v = x[i];
    acc += v * v;
  }${reduceTail}
  if (lid == 0u) { partials[wid.x] = partial[0]; }
}`);
  gpu.dispatch(
    `${kernel} partials`,
    first,
    [x, partials],
    [groups],
    params([["u", n], ["u", groups]]),
  );

  const second = gpu.pipeline(`${kernel} total`, "", () => `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct Params { groups: u32, index: u32 }
@group(0) @binding(2) var<uniform> p: Params;
var<workgroup> partial: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var i = lid; i < p.groups; i += ${WG}u) { acc += partials[i]; }${reduceTail}
  if (lid == 0u) { out[p.index] += partial[0]; }
}`);
  gpu.dispatch(
    `${kernel} total`,
    second,
    [partials, out],
    [1],
    params([["u", groups], ["u", outIndex]]),
  );
}

/**
 * Records a check of the f32 tensor x: sets flags[index] to 1 when any element is NaN or
 * infinite, and leaves it unchanged otherwise, so one flag can collect several tensors. flags is
 * a u32 tensor distinct from x. The test reads exponent bits, because WGSL lets compilers assume
 * that float comparisons never see a NaN.
 */
export function flagNonFinite(gpu: Gpu, x: Tensor, flags: Tensor, index: number): void {
  const kernel = "flagNonFinite";
  expectShape(kernel, x, x.shape, ["f32"]);
  expectShape(kernel, flags, flags.shape, ["u32"]);
  expectDistinct(kernel, x, flags);
  if (!Number.isInteger(index) || index < 0 || index >= numel(flags.shape)) {
    throw new KernelError(
      kernel,
      `index ${index} is outside tensor '${flags.label}' of ${numel(flags.shape)} elements`,
    );
  }
  const pipeline = gpu.pipeline(kernel, "", () => `
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> flags: array<atomic<u32>>;
struct Params { n: u32, index: u32 }
@group(0) @binding(2) var<uniform> p: Params;
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (i >= p.n) { return; }
  if ((x[i] & 0x7f800000u) == 0x7f800000u) { atomicOr(&flags[p.index], 1u); }
}`);
  const n = numel(x.shape);
  gpu.dispatch(
    kernel,
    pipeline,
    [x, flags],
    grid(Math.ceil(n / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", n], ["u", index]]),
  );
}

/**
 * Returns true when every element of the f32 tensor x is finite. It waits for the GPU (one
 * readback); a training step should collect `flagNonFinite` flags and read them once instead.
 */
export async function allFinite(gpu: Gpu, x: Tensor): Promise<boolean> {
  const flags = gpu.tensor([1], "u32", `allFinite flag for ${x.label}`);
  try {
    gpu.clear(flags);
    flagNonFinite(gpu, x, flags, 0);
    const [flag] = await gpu.read(flags);
    return flag === 0;
  } finally {
    flags.buffer.destroy();
  }
}
