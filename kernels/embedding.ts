/**
 * Token embedding: gather rows of the table forward, scatter-add rows of the gradient backward.
 */
import {
  expectShape,
  fmtShape,
  type Gpu,
  grid,
  KernelError,
  params,
  type Tensor,
} from "./device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP, loadFn, storageType } from "./wgsl.ts";

const WG = 64;

/**
 * Gathers embedding rows: out[t, c] = table[tokens[offset + t], c].
 * tokens is (N) u32 with N >= offset + T, table is (V, C) f32/bf16/f16, out is (T, C) f32. One
 * invocation per output element; a token id >= V writes zeros (callers validate ids on the CPU).
 * The offset lets decode steps read the token that the previous step sampled into the same buffer.
 */
export function embeddingForward(
  gpu: Gpu,
  tokens: Tensor,
  table: Tensor,
  out: Tensor,
  offset = 0,
): void {
  const kernel = "embeddingForward";
  const [V, C] = table.shape;
  const T = out.shape[0];
  if (tokens.shape.length !== 1 || tokens.dtype !== "u32" || tokens.shape[0] < offset + T) {
    throw new KernelError(
      kernel,
      `tokens '${tokens.label}' (${tokens.dtype} ${fmtShape(tokens.shape)}) must be u32 with at ` +
        `least offset ${offset} + ${T} elements`,
    );
  }
  expectShape(kernel, table, [V, C], ["f32", "bf16", "f16"]);
  expectShape(kernel, out, [T, C], ["f32"]);
  const pipeline = gpu.pipeline(kernel, table.dtype, () => `
@group(0) @binding(0) var<storage, read> tokens: array<u32>;
@group(0) @binding(1) var<storage, read> table: array<${storageType(table.dtype)}>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct Params { T: u32, C: u32, V: u32, offset: u32 }
@group(0) @binding(3) var<uniform> p: Params;
${loadFn("tableAt", "table", table.dtype)}
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (i >= p.T * p.C) { return; }
  let t = i / p.C;
  let c = i % p.C;
  let tok = tokens[p.offset + t];
  out[i] = select(0.0, tableAt(tok * p.C + c), tok < p.V);
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    [tokens, table, out],
    grid(Math.ceil((T * C) / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", T], ["u", C], ["u", V], ["u", offset]]),
  );
}

/**
 * Accumulates the embedding gradient: dTable[tokens[t], c] += dOut[t, c] for every t.
 * tokens is (T) u32, dOut is (T, C) f32, dTable is (V, C) f32. One invocation per column walks the
 * tokens in order, so repeated tokens never race.
 */
export function embeddingBackward(gpu: Gpu, tokens: Tensor, dOut: Tensor, dTable: Tensor): void {
  const kernel = "embeddingBackward";
  const [V, C] = dTable.shape;
  const T = tokens.shape[0];
  expectShape(kernel, tokens, [T], ["u32"]);
  expectShape(kernel, dOut, [T, C], ["f32"]);
  expectShape(kernel, dTable, [V, C], ["f32"]);
  if (C === 0) throw new KernelError(kernel, "embedding width is 0");
  const pipeline = gpu.pipeline(kernel, "", () => `
@group(0) @binding(0) var<storage, read> tokens: array<u32>;
@group(0) @binding(1) var<storage, read> dOut: array<f32>;
@group(0) @binding(2) var<storage, read_write> dTable: array<f32>;
struct Params { T: u32, C: u32, V: u32 }
@group(0) @binding(3) var<uniform> p: Params;
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let c = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (c >= p.C) { return; }
  for (var t = 0u; t < p.T; t++) {
    let tok = tokens[t];
    if (tok < p.V) {
      dTable[tok * p.C + c] += dOut[t * p.C + c];
    }
  }
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    [tokens, dOut, dTable],
    grid(Math.ceil(C / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", T], ["u", C], ["u", V]]),
  );
}
