/**
 * Token selection on the GPU: greedy argmax and nucleus (top-p) sampling.
 *
 * Each call writes one token id into a u32 tensor at a given index, so decoding can record many
 * steps (forward, sample, embed the sampled token) in one submission and read the tokens back once.
 * The random number of a sampling step is drawn on the CPU from a seeded generator and passed in as
 * `uniform`, so a seeded run is reproducible.
 */
import { expectShape, type Gpu, KernelError, numel, params, type Tensor } from "./device.ts";

const WG = 256;

/** Largest f32 below 1, the most that `uniform` is rounded to. */
const MAX_UNIFORM_F32 = 1 - 2 ** -24;

/** Options of `argmax`. */
export interface ArgmaxOptions {
  /** Row of a (rows, V) logits tensor to read; 0 by default. */
  row?: number;
}

/** Options of `sampleTopP`. */
export interface SampleTopPOptions {
  /** Divisor of the logits before the softmax; must be > 0 (use `argmax` for greedy decoding). */
  temperature: number;
  /** Probability mass of the most probable tokens kept, in (0, 1]; 1 keeps every token. */
  topP: number;
  /** A uniform random number in [0, 1), rounded to f32, that picks the token. */
  uniform: number;
  /** Row of a (rows, V) logits tensor to read; 0 by default. */
  row?: number;
}

/** WGSL shared by both kernels: the bindings and the parameters that locate the row. */
const HEADER = `
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
const WG = ${WG}u;
const NONE = 0xffffffffu;
const LOWEST = -3.40282347e38;
`;

/** Validates the logits, row, out and outIndex arguments; returns V and the row's first element. */
function locateRow(
  kernel: string,
  logits: Tensor,
  out: Tensor,
  outIndex: number,
  row: number,
): { V: number; base: number } {
  const shape = logits.shape;
  if (shape.length !== 1 && shape.length !== 2) {
    throw new KernelError(
      kernel,
      `logits '${logits.label}' must be (V) or (rows, V), got [${shape.join(", ")}]`,
    );
  }
  const rows = shape.length === 2 ? shape[0] : 1;
  const V = shape[shape.length - 1];
  expectShape(kernel, logits, shape, ["f32"]);
  expectShape(kernel, out, [numel(out.shape)], ["u32"]);
  if (V === 0) throw new KernelError(kernel, `logits '${logits.label}' has 0 classes`);
  if (!Number.isInteger(row) || row < 0 || row >= rows) {
    throw new KernelError(kernel, `row ${row} is out of range for ${rows} rows of logits`);
  }
  if (!Number.isInteger(outIndex) || outIndex < 0 || outIndex >= numel(out.shape)) {
    throw new KernelError(
      kernel,
      `outIndex ${outIndex} is out of range for tensor '${out.label}' of ${numel(out.shape)} ids`,
    );
  }
  if (out.buffer === logits.buffer) {
    throw new KernelError(kernel, `out '${out.label}' must not share the logits buffer`);
  }
  return { V, base: row * V };
}

const ARGMAX_SHADER = `${HEADER}
struct Params { V: u32, base: u32, outIndex: u32 }
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> bestValue: array<f32, WG>;
var<workgroup> bestIndex: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  // Each thread scans its strided elements in increasing order, so a strict > keeps the lowest
  // index among equal values.
  var value = 0.0;
  var index = NONE;
  for (var j = lid; j < p.V; j += WG) {
    let x = logits[p.base + j];
    if (index == NONE || x > value) {
      value = x;
      index = j;
    }
  }
  bestValue[lid] = value;
  bestIndex[lid] = index;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      let v2 = bestValue[lid + stride];
      let i2 = bestIndex[lid + stride];
      if (i2 != NONE && (index == NONE || v2 > value || (v2 == value && i2 < index))) {
        value = v2;
        index = i2;
        bestValue[lid] = value;
        bestIndex[lid] = index;
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) { out[p.outIndex] = bestIndex[0]; }
}`;

/**
 * Writes the index of the largest logit of one row into out[outIndex] as a u32. Equal maxima
 * resolve to the lowest index, and NaN logits give an unspecified index.
 *
 * logits is (V) or (rows, V) f32 (`opts.row` selects the row), out is a 1-D u32 tensor. One
 * workgroup of 256 reads the row once. Throws a KernelError for invalid shapes or indices.
 */
export function argmax(
  gpu: Gpu,
  logits: Tensor,
  out: Tensor,
  outIndex: number,
  opts: ArgmaxOptions = {},
): void {
  const kernel = "argmax";
  const { V, base } = locateRow(kernel, logits, out, outIndex, opts.row ?? 0);
  const pipeline = gpu.pipeline(kernel, "", () => ARGMAX_SHADER);
  gpu.dispatch(
    kernel,
    pipeline,
    [logits, out],
    [1],
    params([["u", V], ["u", base], ["u", outIndex]]),
  );
}

/**
 * Bisection passes of `sampleTopP`. Each resolves 2 bits of the 32-bit key, because a vec4 of sums
 * fits the current threshold's mass and the masses of its 3 extensions.
 */
const PASSES = 16;

const TOP_P_SHADER = `${HEADER}
struct Params {
  V: u32, base: u32, outIndex: u32, keepAll: u32,
  invTemperature: f32, topP: f32, uniform: f32,
}
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> redMax: array<f32, WG>;
var<workgroup> redMass: array<vec4<f32>, WG>;
var<workgroup> chunkMass: array<f32, WG>;
var<workgroup> chunkTies: array<u32, WG>;
var<workgroup> threshold: u32;
var<workgroup> targetMass: f32;
var<workgroup> tiesKept: u32;
var<workgroup> pickThread: u32;
var<workgroup> pickOffset: f32;

// Maps an f32 to a u32 whose unsigned order is the float order (-0 sorts just below +0).
fn orderKey(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn keyLogit(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  // Pass 1: the max logit, so every weight exp((x - max) / T) is in (0, 1].
  var m = LOWEST;
  for (var j = lid; j < p.V; j += WG) { m = max(m, logits[p.base + j]); }
  redMax[lid] = m;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) { redMax[lid] = max(redMax[lid], redMax[lid + stride]); }
    workgroupBarrier();
  }
  let mx = redMax[0];
  if (lid == 0u) { threshold = 0u; }
  workgroupBarrier();

  // Passes 2 to ${PASSES + 1}: find the largest key theta with mass(key >= theta) >= topP * total,
  // 2 bits at a time from the top. Lane 0 of the sums is mass(key >= theta), which is the total
  // mass in the first pass, and lanes 1..3 are the masses of the 3 candidates extending theta.
  if (p.keepAll == 0u) {
    for (var step = 0u; step < ${PASSES}u; step++) {
      let shift = 30u - 2u * step;
      let theta = threshold;
      var sums = vec4<f32>(0.0);
      for (var j = lid; j < p.V; j += WG) {
        let x = logits[p.base + j];
        let k = orderKey(x);
        if (k >= theta) {
          let w = exp((x - mx) * p.invTemperature);
          let digit = (k - theta) >> shift;
          sums += w * vec4<f32>(1.0, select(0.0, 1.0, digit >= 1u), select(0.0, 1.0, digit >= 2u),
                                select(0.0, 1.0, digit >= 3u));
        }
      }
      redMass[lid] = sums;
      workgroupBarrier();
      for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) { redMass[lid] += redMass[lid + stride]; }
        workgroupBarrier();
      }
      if (lid == 0u) {
        let mass = redMass[0];
        if (step == 0u) { targetMass = p.topP * mass.x; }
        var next = theta;
        if (mass.w >= targetMass) {
          next = theta | (3u << shift);
        } else if (mass.z >= targetMass) {
          next = theta | (2u << shift);
        } else if (mass.y >= targetMass) {
          next = theta | (1u << shift);
        }
        threshold = next;
      }
      workgroupBarrier();
    }
  }

  // Contiguous chunks from here on, so per-thread sums can be scanned in index order.
  let theta = threshold;
  let keepAll = p.keepAll != 0u;
  let chunk = (p.V + WG - 1u) / WG;
  let start = min(lid * chunk, p.V);
  let end = min(start + chunk, p.V);

  // Tokens tied at theta are kept lowest index first, as many as the target mass needs.
  var above = 0.0;
  var ties = 0u;
  for (var j = start; j < end; j++) {
    let x = logits[p.base + j];
    let k = orderKey(x);
    if (keepAll || k > theta) {
      above += exp((x - mx) * p.invTemperature);
    } else if (k == theta) {
      ties += 1u;
    }
  }
  chunkMass[lid] = above;
  chunkTies[lid] = ties;
  workgroupBarrier();
  if (lid == 0u) {
    var aboveTotal = 0.0;
    var tiesBefore = 0u;
    for (var t = 0u; t < WG; t++) {
      aboveTotal += chunkMass[t];
      let count = chunkTies[t];
      chunkTies[t] = tiesBefore;
      tiesBefore += count;
    }
    var kept = 0u;
    if (!keepAll && tiesBefore > 0u) {
      let w = exp((keyLogit(theta) - mx) * p.invTemperature);
      let needed = ceil((targetMass - aboveTotal) / w);
      kept = u32(clamp(needed, 1.0, f32(tiesBefore)));
    }
    tiesKept = kept;
  }
  workgroupBarrier();

  // The kept mass of each chunk, then the chunk where the scaled uniform falls.
  let firstTieRank = chunkTies[lid];
  let kept = tiesKept;
  var selected = 0.0;
  var rank = firstTieRank;
  for (var j = start; j < end; j++) {
    let x = logits[p.base + j];
    let k = orderKey(x);
    var keep = keepAll || k > theta;
    if (!keep && k == theta) {
      keep = rank < kept;
      rank += 1u;
    }
    if (keep) { selected += exp((x - mx) * p.invTemperature); }
  }
  chunkMass[lid] = selected;
  workgroupBarrier();
  if (lid == 0u) {
    var total = 0.0;
    for (var t = 0u; t < WG; t++) { total += chunkMass[t]; }
    let u = p.uniform * total;
    var prefix = 0.0;
    var chosen = NONE;
    var last = 0u;
    var lastPrefix = 0.0;
    for (var t = 0u; t < WG; t++) {
      let c = chunkMass[t];
      if (c > 0.0) {
        last = t;
        lastPrefix = prefix;
        if (chosen == NONE && prefix + c > u) {
          chosen = t;
          pickOffset = u - prefix;
        }
      }
      prefix += c;
    }
    // Rounding can leave u at or above the last cumulative sum; the last kept token takes it.
    if (chosen == NONE) {
      chosen = last;
      pickOffset = u - lastPrefix;
    }
    pickThread = chosen;
  }
  workgroupBarrier();

  // The chosen thread walks its chunk in index order.
  if (lid == pickThread) {
    let offset = pickOffset;
    var run = 0.0;
    var token = NONE;
    var lastKept = NONE;
    var r = firstTieRank;
    for (var j = start; j < end; j++) {
      let x = logits[p.base + j];
      let k = orderKey(x);
      var keep = keepAll || k > theta;
      if (!keep && k == theta) {
        keep = r < kept;
        r += 1u;
      }
      if (keep) {
        run += exp((x - mx) * p.invTemperature);
        lastKept = j;
        if (run > offset) {
          token = j;
          break;
        }
      }
    }
    out[p.outIndex] = select(token, lastKept, token == NONE);
  }
}`;

/**
 * Samples a token from one row of logits by nucleus (top-p) sampling and writes its index into
 * out[outIndex] as a u32.
 *
 * logits is (V) or (rows, V) f32 (`opts.row` selects the row), out is a 1-D u32 tensor. The
 * distribution is softmax(logits / temperature). Tokens are ranked by logit, larger first, and
 * equal logits by lower index first. The kept set is the shortest prefix of that ranking whose
 * mass is >= topP (all tokens when topP is 1). The kept probabilities are renormalised, and the
 * token is the first one, in increasing index order, whose cumulative kept probability exceeds
 * `uniform`.
 *
 * No sort: one workgroup of 256 finds the ranking threshold by bisection over the 32 bits of an
 * order-preserving integer key of the logits, 2 bits per pass. That makes 16 passes over the row,
 * plus the max, the ties at the threshold, the kept mass per chunk and a walk over one chunk.
 * Throws a KernelError for invalid shapes, indices or options.
 *
 * NOTE: one workgroup runs on one CPU thread under Mesa's lavapipe, where a sample at V = 32000
 * took about 35 ms (Deno 2.9.6, LLVM 15 lavapipe, 2-core x86-64 machine). Use `argmax` there when
 * greedy decoding suffices.
 */
export function sampleTopP(
  gpu: Gpu,
  logits: Tensor,
  out: Tensor,
  outIndex: number,
  opts: SampleTopPOptions,
): void {
  const kernel = "sampleTopP";
  const { V, base } = locateRow(kernel, logits, out, outIndex, opts.row ?? 0);
  const { temperature, topP, uniform } = opts;
  if (!(temperature > 0) || !Number.isFinite(Math.fround(1 / temperature))) {
    throw new KernelError(
      kernel,
      `temperature must be a number > 0, got ${temperature}; use argmax for greedy decoding`,
    );
  }
  if (!(topP > 0 && topP <= 1)) {
    throw new KernelError(kernel, `topP must be in (0, 1], got ${topP}`);
  }
  if (!(uniform >= 0 && uniform < 1)) {
    throw new KernelError(kernel, `uniform must be in [0, 1), got ${uniform}`);
  }
  const pipeline = gpu.pipeline(kernel, "", () => TOP_P_SHADER);
  gpu.dispatch(
    kernel,
    pipeline,
    [logits, out],
    [1],
    params([
      ["u", V],
      ["u", base],
      ["u", outIndex],
      ["u", topP >= 1 ? 1 : 0],
      ["f", 1 / temperature],
      ["f", topP],
      ["f", Math.min(Math.fround(uniform), MAX_UNIFORM_F32)],
    ]),
  );
}
