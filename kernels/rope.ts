/**
 * Rotary position embedding (RoPE), forward and backward, in either pairing layout.
 *
 * Pair i of a head of width D turns by the angle position * theta^(-2i/D). The "interleaved"
 * layout pairs dimensions (2i, 2i+1), as llama2.c and Meta checkpoints do. The "half" layout pairs
 * (i, i + D/2), as Hugging Face checkpoints do after permuting q_proj and k_proj.
 *
 * Accuracy: a plain f32 angle, position * freq, is off by up to half an ulp of the product (about
 * 1e-4 rad at position 2048), and WGSL only promises sin and cos to 2^-11 absolute. So the kernel
 * works in turns (fractions of a full circle) and keeps the product exact:
 *   - the CPU computes each pair's turns per position, F = theta^(-2i/D) / 2pi, in float64 and
 *     splits it into hi (12 significant bits) + lo, both f32, kept on the GPU per (D, theta);
 *   - the kernel splits the position into two 12-bit halves, so p0 * hi and p1 * (4096 * hi) are
 *     exact f32 products whose fractional parts are exact, and only pos * lo rounds;
 *   - the sum of the three fractional parts, reduced to a quadrant plus at most 1/8 turn, feeds
 *     Taylor polynomials of sin and cos accurate to 2e-9 on [-pi/4, pi/4].
 * The angle error, from rounding pos * lo and the final sum, is below 1e-6 rad for positions
 * under 2^16, about 1e-5 rad near 2^20 and 2e-4 rad near 2^24, the largest position accepted.
 */
import { expectShape, type Gpu, grid, KernelError, params, type Tensor } from "./device.ts";
import type { RopeLayout } from "../model/config.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "./wgsl.ts";

const WG = 64;

/** Positions must stay below this so that both 12-bit halves of a position fit the exact products. */
export const ROPE_MAX_POSITION = 2 ** 24;

/** Rotary settings: pairing layout, base theta, and the position of the token at index 0. */
export interface RopeOptions {
  layout: RopeLayout;
  theta: number;
  pos0: number;
}

const freqTables = new WeakMap<Gpu, Map<string, Tensor>>();

/**
 * Splits turns per position, theta^(-2i/D) / 2pi, into f32 hi + lo for each pair i, with hi
 * rounded to 12 significant bits. Returns [hi0, lo0, hi1, lo1, ...].
 */
export function ropeTurnsSplit(D: number, theta: number): Float32Array {
  const out = new Float32Array(D);
  for (let i = 0; i < D / 2; i++) {
    const turns = theta ** (-2 * i / D) / (2 * Math.PI);
    let scale = 2 ** (11 - Math.floor(Math.log2(turns)));
    // log2 may round across a power of two; settle the scale so turns * scale is in [2^11, 2^12).
    while (turns * scale >= 4096) scale /= 2;
    while (turns * scale < 2048) scale *= 2;
    const hi = Math.round(turns * scale) / scale;
    out[2 * i] = hi;
    out[2 * i + 1] = Math.fround(turns - hi);
  }
  return out;
}

function turnsTable(gpu: Gpu, D: number, theta: number): Tensor {
  let tables = freqTables.get(gpu);
  if (!tables) {
    tables = new Map();
    freqTables.set(gpu, tables);
  }
  const key = `${D} ${theta}`;
  let table = tables.get(key);
  if (!table) {
    table = gpu.upload(ropeTurnsSplit(D, theta), [D / 2, 2], "f32", `rope turns D=${D} ${theta}`);
    tables.set(key, table);
  }
  return table;
}

/** WGSL functions mapping (position, pair) to turns and turns to (cos, sin). */
const ANGLE_WGSL = `
fn turnsAt(pos: u32, i: u32) -> f32 {
  let hi = turns[2u * i];
  let lo = turns[2u * i + 1u];
  let a0 = f32(pos & 4095u) * hi;
  let a1 = f32(pos >> 12u) * (hi * 4096.0);
  let a2 = f32(pos) * lo;
  return (a0 - round(a0)) + (a1 - round(a1)) + (a2 - round(a2));
}

fn cosSin(t: f32) -> vec2<f32> {
  let q = round(t * 4.0);
  let r = (t - q * 0.25) * 6.283185307179586;
  let r2 = r * r;
  let s = r * (1.0 + r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 / 362880.0))));
  let c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 +
    r2 * (1.0 / 40320.0 - r2 / 3628800.0))));
  switch (i32(q) & 3) {
    case 0: { return vec2<f32>(c, s); }
    case 1: { return vec2<f32>(-s, c); }
    case 2: { return vec2<f32>(-c, -s); }
    default: { return vec2<f32>(s, -c); }
  }
}`;

function rotate(
  gpu: Gpu,
  kernel: string,
  x: Tensor,
  out: Tensor,
  opts: RopeOptions,
  sign: 1 | -1,
): void {
  if (x.shape.length !== 4) {
    throw new KernelError(
      kernel,
      `tensor '${x.label}' must be (B, T, nHeads, D), got shape [${x.shape}]`,
    );
  }
  const [B, T, H, D] = x.shape;
  expectShape(kernel, x, [B, T, H, D], ["f32"]);
  expectShape(kernel, out, [B, T, H, D], ["f32"]);
  if (D % 2 !== 0) throw new KernelError(kernel, `head dimension ${D} must be even`);
  if (opts.layout !== "interleaved" && opts.layout !== "half") {
    throw new KernelError(kernel, `layout must be "interleaved" or "half", got ${opts.layout}`);
  }
  if (!(opts.theta > 0) || !Number.isFinite(opts.theta)) {
    throw new KernelError(kernel, `theta must be a positive number, got ${opts.theta}`);
  }
  if (!Number.isInteger(opts.pos0) || opts.pos0 < 0 || opts.pos0 + T > ROPE_MAX_POSITION) {
    throw new KernelError(
      kernel,
      `positions ${opts.pos0}..${opts.pos0 + T - 1} must be integers in [0, ${ROPE_MAX_POSITION})`,
    );
  }
  const pairs = B * T * H * (D / 2);
  if (pairs === 0) return;

  const inPlace = x.buffer === out.buffer;
  const turns = turnsTable(gpu, D, opts.theta);
  const [first, second] = opts.layout === "interleaved"
    ? ["2u * i", "2u * i + 1u"]
    : ["i", "i + p.half"];
  const key = `${opts.layout} ${sign} ${inPlace ? "in place" : ""}`;
  const pipeline = gpu.pipeline(kernel, key, () => `
@group(0) @binding(0) var<storage, read> turns: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
${inPlace ? "" : "@group(0) @binding(2) var<storage, read> x: array<f32>;"}
struct Params { pairs: u32, T: u32, H: u32, half: u32, pos0: u32 }
@group(0) @binding(${inPlace ? 2 : 3}) var<uniform> p: Params;
${ANGLE_WGSL}
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let j = ${LINEAR_WORKGROUP} * ${WG}u + lid;
  if (j >= p.pairs) { return; }
  let i = j % p.half;
  let row = j / p.half;
  let t = (row / p.H) % p.T;
  let base = row * 2u * p.half;
  let cs = cosSin(turnsAt(p.pos0 + t, i));
  let sn = ${sign === 1 ? "" : "-"}cs.y;
  let x0 = ${inPlace ? "out" : "x"}[base + ${first}];
  let x1 = ${inPlace ? "out" : "x"}[base + ${second}];
  out[base + ${first}] = x0 * cs.x - x1 * sn;
  out[base + ${second}] = x0 * sn + x1 * cs.x;
}`);
  gpu.dispatch(
    kernel,
    pipeline,
    inPlace ? [turns, out] : [turns, out, x],
    grid(Math.ceil(pairs / WG), gpu.info.maxComputeWorkgroupsPerDimension),
    params([["u", pairs], ["u", T], ["u", H], ["u", D / 2], ["u", opts.pos0]]),
  );
}

/**
 * Records the rotary embedding of x (B, T, nHeads, D) f32 into out, which has x's shape and may
 * be x. The token at index t has position pos0 + t, and pair i of every head turns by
 * position * theta^(-2i/D) radians. Pairs follow `opts.layout`. Positions must be below 2^24.
 */
export function ropeForward(gpu: Gpu, x: Tensor, out: Tensor, opts: RopeOptions): void {
  rotate(gpu, "ropeForward", x, out, opts, 1);
}

/**
 * Records the rotary backward pass: dx = dOut rotated by the negative angles, the transpose of
 * the forward rotation. dOut and dx are (B, T, nHeads, D) f32; dx may be dOut.
 */
export function ropeBackward(gpu: Gpu, dOut: Tensor, dx: Tensor, opts: RopeOptions): void {
  rotate(gpu, "ropeBackward", dOut, dx, opts, -1);
}
