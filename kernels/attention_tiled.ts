/**
 * The workgroup-tiled attention kernels, for GPUs; `attention.ts` documents the computation and
 * chooses between these and the direct kernels of `attention_direct.ts`.
 *
 * Tensors are read as vec4 (vec2 when D is not a multiple of 4) so each load moves 16 bytes.
 * Workgroups are 64 invocations: `rows` tile rows with 64 / rows invocations per row. Each
 * invocation owns every (64 / rows)-th vector of its row's accumulator, so neighbouring
 * invocations read neighbouring words of the staged tiles. Key blocks (or query blocks, in the
 * key-side kernel) are staged in workgroup memory and walked with an online softmax.
 */
import { type Gpu, grid, KernelError, params, type Tensor } from "./device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "./wgsl.ts";
import type { AttentionDims } from "../model/reference/attention.ts";

const WORKGROUP = 64;

/**
 * Workgroup memory a kernel may use. Capped below the 48-228 KiB of current discrete GPUs so that
 * several workgroups stay resident per compute unit; an estimate, not a measured optimum.
 */
const WORKGROUP_MEMORY_BUDGET_BYTES = 32768;

/** Tile shapes (rows, columns) in order of preference; the first that fits the budget is used. */
const TILE_CANDIDATES: readonly [number, number][] = [
  [16, 32],
  [16, 16],
  [8, 16],
  [8, 8],
  [4, 8],
  [4, 4],
  [2, 4],
  [2, 2],
  [1, 2],
  [1, 1],
];

/** Tile geometry of one kernel: `rows` x `cols` score tiles, split over 64 invocations. */
interface Tiles {
  rows: number;
  cols: number;
  threadsPerRow: number;
  /** Accumulator vectors per invocation. */
  accVectors: number;
  /** Score entries per invocation. */
  entries: number;
}

/**
 * Picks the largest tile whose workgroup memory, `bytes(rows, cols)`, fits the device and the
 * budget. Throws a KernelError naming D when none fits.
 */
function chooseTiles(
  kernel: string,
  gpu: Gpu,
  D: number,
  bytes: (rows: number, cols: number) => number,
): Tiles {
  const limit = Math.min(gpu.info.maxComputeWorkgroupStorageSize, WORKGROUP_MEMORY_BUDGET_BYTES);
  const vectors = D / vectorWidth(D);
  for (const [rows, cols] of TILE_CANDIDATES) {
    if (bytes(rows, cols) > limit) continue;
    const threadsPerRow = WORKGROUP / rows;
    return {
      rows,
      cols,
      threadsPerRow,
      accVectors: Math.ceil(vectors / threadsPerRow),
      entries: Math.ceil(cols / threadsPerRow),
    };
  }
  throw new KernelError(
    kernel,
    `head size D = ${D} needs ${bytes(1, 1)} bytes of workgroup memory for the smallest tile, ` +
      `over this device's usable ${limit} bytes`,
  );
}

/** WGSL constants shared by the kernels of one pipeline. */
function header(D: number, tiles: Tiles): string {
  const W = vectorWidth(D);
  return `
alias VT = vec${W}<f32>;
const DV = ${D / W}u;
const R = ${tiles.rows}u;
const C = ${tiles.cols}u;
const TPR = ${tiles.threadsPerRow}u;
const NA = ${tiles.accVectors}u;
const NE = ${tiles.entries}u;
const WG = ${WORKGROUP}u;
const NEG_BIG = -1.0e30;`;
}

/** Returns the vector width used for a head of size D: 4 when D is a multiple of 4, else 2. */
export function vectorWidth(D: number): number {
  return D % 4 === 0 ? 4 : 2;
}

const FLAG_WRITE_LSE = 1;
const FLAG_WRITE_PROMPT_LSE = 2;

function forwardTiles(gpu: Gpu, D: number): Tiles {
  return chooseTiles("attentionForward", gpu, D, (r, c) => 4 * ((r + 2 * c) * D + r * c));
}

/**
 * Records the forward pass. One workgroup owns `rows` queries of one (b, h) and keeps their q rows
 * in workgroup memory. It first walks the L prompt keys, then keys 0 .. pos0 + t in blocks of
 * `cols`, each with an online softmax (a running max and sum rescale the accumulator), and writes
 * out = tanh(gate) * prompt part + token part. Workgroup memory is (rows + 2 cols) D + rows cols
 * floats. pk, pv, gate, lse and promptLse may be placeholders when unused.
 */
export function tiledForward(
  gpu: Gpu,
  d: AttentionDims,
  t: {
    q: Tensor;
    k: Tensor;
    v: Tensor;
    out: Tensor;
    pk: Tensor;
    pv: Tensor;
    gate: Tensor;
    lse: Tensor;
    promptLse: Tensor;
  },
  flags: { lse: boolean; promptLse: boolean },
): void {
  const kernel = "attentionForward";
  const tiles = forwardTiles(gpu, d.D);
  const nQB = Math.ceil(d.T / tiles.rows);
  const pipeline = gpu.pipeline(kernel, `tiled D${d.D}`, () => forwardShader(d.D, tiles));
  const f = (flags.lse ? FLAG_WRITE_LSE : 0) | (flags.promptLse ? FLAG_WRITE_PROMPT_LSE : 0);
  gpu.dispatch(
    kernel,
    pipeline,
    [t.q, t.k, t.v, t.pk, t.pv, t.gate, t.out, t.lse, t.promptLse],
    grid(d.B * d.H * nQB, gpu.info.maxComputeWorkgroupsPerDimension),
    params([
      ["u", d.B],
      ["u", d.T],
      ["u", d.S],
      ["u", d.H],
      ["u", d.Hkv],
      ["u", d.L],
      ["u", d.pos0],
      ["u", nQB],
      ["f", 1 / Math.sqrt(d.D)],
      ["u", f],
    ]),
  );
}

function forwardShader(D: number, tiles: Tiles): string {
  // Stages keys and values of one block, positions s0 .. s0 + C - 1 (zeros past `count`).
  const stage = (keys: string, values: string, base: string, count: string) => `
      workgroupBarrier();
      for (var i = lid; i < C * DV; i += WG) {
        let s = s0 + i / DV;
        var kx = VT();
        var vx = VT();
        if (s < ${count}) {
          let g = ${base} + s * kvStride + i % DV;
          kx = ${keys}[g];
          vx = ${values}[g];
        }
        Ks[i] = kx;
        Vs[i] = vx;
      }
      workgroupBarrier();`;
  return `${header(D, tiles)}
@group(0) @binding(0) var<storage, read> q: array<VT>;
@group(0) @binding(1) var<storage, read> k: array<VT>;
@group(0) @binding(2) var<storage, read> v: array<VT>;
@group(0) @binding(3) var<storage, read> pk: array<VT>;
@group(0) @binding(4) var<storage, read> pv: array<VT>;
@group(0) @binding(5) var<storage, read> gate: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<VT>;
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;
@group(0) @binding(8) var<storage, read_write> plse: array<f32>;
struct Params {
  B: u32, T: u32, S: u32, H: u32, Hkv: u32, L: u32, pos0: u32, nQB: u32, scale: f32, flags: u32,
}
@group(0) @binding(9) var<uniform> p: Params;

var<workgroup> Qs: array<VT, R * DV>;
var<workgroup> Ks: array<VT, C * DV>;
var<workgroup> Vs: array<VT, C * DV>;
var<workgroup> Ss: array<f32, R * C>;

// Online softmax state of this invocation's row.
var<private> m: f32;
var<private> l: f32;
var<private> acc: array<VT, NA>;

// Ss[r, j] = Qs[r] . Ks[j] * scale for the columns j = c, c + TPR, ...
fn scoreRow(r: u32, c: u32) {
  for (var e = 0u; e < NE; e++) {
    let j = c + e * TPR;
    if (j < C) {
      var s = 0.0;
      for (var dv = 0u; dv < DV; dv++) {
        s += dot(Qs[r * DV + dv], Ks[j * DV + dv]);
      }
      Ss[r * C + j] = s * p.scale;
    }
  }
}

// Folds the first nj staged keys into row r's softmax. Every invocation of the row computes the
// same m and l, and each updates its own accumulator vectors.
fn onlineSoftmax(r: u32, c: u32, nj: u32) {
  var mb = m;
  for (var j = 0u; j < nj; j++) {
    mb = max(mb, Ss[r * C + j]);
  }
  let alpha = exp(m - mb);
  l *= alpha;
  for (var a = 0u; a < NA; a++) {
    acc[a] *= alpha;
  }
  for (var j = 0u; j < nj; j++) {
    let pj = exp(Ss[r * C + j] - mb);
    l += pj;
    for (var a = 0u; a < NA; a++) {
      let dv = c + a * TPR;
      if (dv < DV) {
        acc[a] += pj * Vs[j * DV + dv];
      }
    }
  }
  m = mb;
}

@compute @workgroup_size(WG)
fn main(${GRID_BUILTINS}) {
  let w = ${LINEAR_WORKGROUP};
  if (w >= p.B * p.H * p.nQB) {
    return;
  }
  let qb = w % p.nQB;
  let h = (w / p.nQB) % p.H;
  let b = w / (p.nQB * p.H);
  let kvh = h / (p.H / p.Hkv);
  let r = lid / TPR;
  let c = lid % TPR;
  let t0 = qb * R;
  let t = t0 + r;
  let kvStride = p.Hkv * DV;

  for (var i = lid; i < R * DV; i += WG) {
    let tt = t0 + i / DV;
    var x = VT();
    if (tt < p.T) {
      x = q[((b * p.T + tt) * p.H + h) * DV + i % DV];
    }
    Qs[i] = x;
  }

  // Prompt part: its own softmax over all L prompt keys, no mask.
  var promptOut: array<VT, NA>;
  var tg = 0.0;
  if (p.L > 0u) {
    tg = tanh(gate[h]);
    m = NEG_BIG;
    l = 0.0;
    acc = array<VT, NA>();
    for (var s0 = 0u; s0 < p.L; s0 += C) {
      ${stage("pk", "pv", "kvh * DV", "p.L")}
      scoreRow(r, c);
      workgroupBarrier();
      onlineSoftmax(r, c, min(C, p.L - s0));
    }
    let inv = 1.0 / l;
    for (var a = 0u; a < NA; a++) {
      promptOut[a] = acc[a] * inv;
    }
    if (t < p.T && c == 0u && (p.flags & ${FLAG_WRITE_PROMPT_LSE}u) != 0u) {
      plse[(b * p.H + h) * p.T + t] = m + log(l);
    }
  }

  // Token part: keys 0 .. pos0 + t; the block walks up to the last row's limit.
  m = NEG_BIG;
  l = 0.0;
  acc = array<VT, NA>();
  let count = p.pos0 + min(p.T, t0 + R);
  let limit = min(p.pos0 + t + 1u, count);
  let kvBase = b * p.S * kvStride + kvh * DV;
  for (var s0 = 0u; s0 < count; s0 += C) {
    ${stage("k", "v", "kvBase", "count")}
    scoreRow(r, c);
    workgroupBarrier();
    onlineSoftmax(r, c, select(0u, min(C, limit - s0), limit > s0));
  }

  if (t < p.T) {
    let inv = 1.0 / l;
    let o = ((b * p.T + t) * p.H + h) * DV;
    for (var a = 0u; a < NA; a++) {
      let dv = c + a * TPR;
      if (dv < DV) {
        let token = acc[a] * inv;
        out[o + dv] = select(token, tg * promptOut[a] + token, p.L > 0u);
      }
    }
    if (c == 0u && (p.flags & ${FLAG_WRITE_LSE}u) != 0u) {
      lse[(b * p.H + h) * p.T + t] = m + log(l);
    }
  }
}`;
}

// ---------------------------------------------------------------------------------------------
// Backward

function queryTiles(gpu: Gpu, D: number): Tiles {
  return chooseTiles("attentionBackward", gpu, D, (r, c) => 4 * (2 * (r + c) * D + 2 * r * c));
}

function keyTiles(gpu: Gpu, D: number): Tiles {
  return chooseTiles(
    "attentionBackward",
    gpu,
    D,
    (r, c) => 4 * (2 * (r + c) * D + 2 * r * c + 2 * c),
  );
}

/** Returns the number of query blocks per (b, h) of the query-side backward kernel. */
export function tiledQueryBlocks(gpu: Gpu, D: number, T: number): number {
  return Math.ceil(T / queryTiles(gpu, D).rows);
}

/**
 * Records backward in three passes:
 *
 * 1. per query row (one invocation each): delta = dOut . out - tanh(gate) * promptDelta and
 *    promptDelta = dOut . (prompt softmax) pv, recomputed from q, the prompt and promptLse, into
 *    `delta` (2, B, H, T);
 * 2. per block of `rows` queries of one (b, h): dq from the token keys and the prompt keys, with
 *    P = exp(q . k * scale - lse) and dS = P (dOut . v - delta); the prompt blocks also write this
 *    block's partial sums of dpk and dpv into the partial tensors, block (b, h, query block)
 *    at index (b H + h) nQB + query block, each (L, D);
 * 3. per block of `rows` keys of one (b, kv head): dk and dv, looping over the heads that share
 *    the kv head and over the query blocks that see the keys.
 */
export function tiledBackward(
  gpu: Gpu,
  d: AttentionDims,
  t: {
    q: Tensor;
    k: Tensor;
    v: Tensor;
    out: Tensor;
    dOut: Tensor;
    pk: Tensor;
    pv: Tensor;
    gate: Tensor;
    lse: Tensor;
    promptLse: Tensor;
    delta: Tensor;
    dq: Tensor;
    dk: Tensor;
    dv: Tensor;
    promptKeyPartials: Tensor;
    promptValuePartials: Tensor;
  },
  accumulate: boolean,
): void {
  const kernel = "attentionBackward";
  const { B, T, S, H, Hkv, D } = d;
  const qt = queryTiles(gpu, D);
  const kt = keyTiles(gpu, D);
  const nQB = Math.ceil(T / qt.rows);
  const nKB = Math.ceil(S / kt.rows);
  const maxGroups = gpu.info.maxComputeWorkgroupsPerDimension;
  const shape = (nBlocks: number) =>
    params([
      ["u", B],
      ["u", T],
      ["u", S],
      ["u", H],
      ["u", Hkv],
      ["u", d.L],
      ["u", d.pos0],
      ["f", 1 / Math.sqrt(D)],
      ["u", accumulate ? 1 : 0],
      ["u", nBlocks],
    ]);

  if (T > 0) {
    const deltaPipeline = gpu.pipeline(`${kernel} delta`, `tiled D${D}`, () => deltaShader(D));
    gpu.dispatch(
      `${kernel} delta`,
      deltaPipeline,
      [t.q, t.pk, t.pv, t.gate, t.dOut, t.out, t.promptLse, t.delta],
      grid(Math.ceil((B * H * T) / WORKGROUP), maxGroups),
      shape(0),
    );

    const queryPipeline = gpu.pipeline(`${kernel} dq`, `tiled D${D}`, () => queryShader(D, qt));
    gpu.dispatch(
      `${kernel} dq`,
      queryPipeline,
      [
        t.q,
        t.k,
        t.v,
        t.pk,
        t.pv,
        t.gate,
        t.dOut,
        t.lse,
        t.promptLse,
        t.delta,
        t.dq,
        t.promptKeyPartials,
        t.promptValuePartials,
      ],
      grid(B * H * nQB, maxGroups),
      shape(nQB),
    );
  }

  const keyPipeline = gpu.pipeline(`${kernel} dk dv`, `tiled D${D}`, () => keyShader(D, kt));
  gpu.dispatch(
    `${kernel} dk dv`,
    keyPipeline,
    [t.q, t.k, t.v, t.dOut, t.lse, t.delta, t.dk, t.dv],
    grid(B * Hkv * nKB, maxGroups),
    shape(nKB),
  );
}

const BACKWARD_PARAMS = `struct Params {
  B: u32, T: u32, S: u32, H: u32, Hkv: u32, L: u32, pos0: u32, scale: f32, accumulate: u32,
  nBlocks: u32,
}`;

function deltaShader(D: number): string {
  const W = vectorWidth(D);
  return `
alias VT = vec${W}<f32>;
const DV = ${D / W}u;
@group(0) @binding(0) var<storage, read> q: array<VT>;
@group(0) @binding(1) var<storage, read> pk: array<VT>;
@group(0) @binding(2) var<storage, read> pv: array<VT>;
@group(0) @binding(3) var<storage, read> gate: array<f32>;
@group(0) @binding(4) var<storage, read> dO: array<VT>;
@group(0) @binding(5) var<storage, read> out: array<VT>;
@group(0) @binding(6) var<storage, read> plse: array<f32>;
@group(0) @binding(7) var<storage, read_write> delta: array<f32>;
${BACKWARD_PARAMS}
@group(0) @binding(8) var<uniform> p: Params;

// One invocation per row (b, h, t); delta is (2, B, H, T): the token delta, then promptDelta.
@compute @workgroup_size(${WORKGROUP})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WORKGROUP}u + lid;
  let rows = p.B * p.H * p.T;
  if (i >= rows) {
    return;
  }
  let t = i % p.T;
  let h = (i / p.T) % p.H;
  let b = i / (p.T * p.H);
  let o = ((b * p.T + t) * p.H + h) * DV;
  var outDot = 0.0;
  for (var dv = 0u; dv < DV; dv++) {
    outDot += dot(dO[o + dv], out[o + dv]);
  }
  var promptDelta = 0.0;
  var tg = 0.0;
  if (p.L > 0u) {
    tg = tanh(gate[h]);
    let kvh = h / (p.H / p.Hkv);
    let rowLse = plse[i];
    for (var l = 0u; l < p.L; l++) {
      let pi = (l * p.Hkv + kvh) * DV;
      var s = 0.0;
      var dp = 0.0;
      for (var dv = 0u; dv < DV; dv++) {
        s += dot(q[o + dv], pk[pi + dv]);
        dp += dot(dO[o + dv], pv[pi + dv]);
      }
      promptDelta += exp(s * p.scale - rowLse) * dp;
    }
  }
  delta[i] = outDot - tg * promptDelta;
  delta[rows + i] = promptDelta;
}`;
}

function queryShader(D: number, tiles: Tiles): string {
  // Stages keys and values s0 .. s0 + C - 1 of one block (zeros past `count`).
  const stage = (keys: string, values: string, base: string, count: string) => `
      workgroupBarrier();
      for (var i = lid; i < C * DV; i += WG) {
        let s = s0 + i / DV;
        var kx = VT();
        var vx = VT();
        if (s < ${count}) {
          let g = ${base} + s * kvStride + i % DV;
          kx = ${keys}[g];
          vx = ${values}[g];
        }
        Ks[i] = kx;
        Vs[i] = vx;
      }
      workgroupBarrier();`;
  return `${header(D, tiles)}
@group(0) @binding(0) var<storage, read> q: array<VT>;
@group(0) @binding(1) var<storage, read> k: array<VT>;
@group(0) @binding(2) var<storage, read> v: array<VT>;
@group(0) @binding(3) var<storage, read> pk: array<VT>;
@group(0) @binding(4) var<storage, read> pv: array<VT>;
@group(0) @binding(5) var<storage, read> gate: array<f32>;
@group(0) @binding(6) var<storage, read> dO: array<VT>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;
@group(0) @binding(8) var<storage, read> plse: array<f32>;
@group(0) @binding(9) var<storage, read> delta: array<f32>;
@group(0) @binding(10) var<storage, read_write> dq: array<VT>;
@group(0) @binding(11) var<storage, read_write> keyPartials: array<VT>;
@group(0) @binding(12) var<storage, read_write> valuePartials: array<VT>;
${BACKWARD_PARAMS}
@group(0) @binding(13) var<uniform> p: Params;

var<workgroup> Qs: array<VT, R * DV>;
var<workgroup> dOs: array<VT, R * DV>;
var<workgroup> Ks: array<VT, C * DV>;
var<workgroup> Vs: array<VT, C * DV>;
var<workgroup> Ps: array<f32, R * C>;
var<workgroup> dSs: array<f32, R * C>;

var<private> dqAcc: array<VT, NA>;

// For row r and the columns j = c, c + TPR, ... below nj: P = exp(Qs[r] . Ks[j] * scale - rowLse)
// and dS = P (gain * dOs[r] . Vs[j] - rowDelta). Columns at or past nj get zeros.
fn gradEntries(r: u32, c: u32, nj: u32, rowLse: f32, gain: f32, rowDelta: f32) {
  for (var e = 0u; e < NE; e++) {
    let j = c + e * TPR;
    if (j < C) {
      var pr = 0.0;
      var ds = 0.0;
      if (j < nj) {
        var s = 0.0;
        var dp = 0.0;
        for (var dv = 0u; dv < DV; dv++) {
          s += dot(Qs[r * DV + dv], Ks[j * DV + dv]);
          dp += dot(dOs[r * DV + dv], Vs[j * DV + dv]);
        }
        pr = exp(s * p.scale - rowLse);
        ds = pr * (gain * dp - rowDelta);
      }
      Ps[r * C + j] = pr;
      dSs[r * C + j] = ds;
    }
  }
}

fn accumulateDq(r: u32, c: u32) {
  for (var j = 0u; j < C; j++) {
    let ds = dSs[r * C + j];
    for (var a = 0u; a < NA; a++) {
      let dv = c + a * TPR;
      if (dv < DV) {
        dqAcc[a] += ds * Ks[j * DV + dv];
      }
    }
  }
}

@compute @workgroup_size(WG)
fn main(${GRID_BUILTINS}) {
  let w = ${LINEAR_WORKGROUP};
  let nQB = p.nBlocks;
  if (w >= p.B * p.H * nQB) {
    return;
  }
  let qb = w % nQB;
  let h = (w / nQB) % p.H;
  let b = w / (nQB * p.H);
  let kvh = h / (p.H / p.Hkv);
  let r = lid / TPR;
  let c = lid % TPR;
  let t0 = qb * R;
  let t = t0 + r;
  let valid = t < p.T;
  let kvStride = p.Hkv * DV;
  let row = (b * p.H + h) * p.T + min(t, p.T - 1u);
  let rows = p.B * p.H * p.T;

  for (var i = lid; i < R * DV; i += WG) {
    let tt = t0 + i / DV;
    var qx = VT();
    var gx = VT();
    if (tt < p.T) {
      let g = ((b * p.T + tt) * p.H + h) * DV + i % DV;
      qx = q[g];
      gx = dO[g];
    }
    Qs[i] = qx;
    dOs[i] = gx;
  }

  // Prompt keys: dq += dS pk, and this block's partial sums of dpk = dS^T q, dpv = tg P^T dO.
  if (p.L > 0u) {
    let tg = tanh(gate[h]);
    let rowLse = plse[row];
    let rowDelta = tg * delta[rows + row];
    for (var s0 = 0u; s0 < p.L; s0 += C) {
      ${stage("pk", "pv", "kvh * DV", "p.L")}
      gradEntries(r, c, select(0u, min(C, p.L - s0), valid), rowLse, tg, rowDelta);
      workgroupBarrier();
      accumulateDq(r, c);
      for (var i = lid; i < C * DV; i += WG) {
        let j = i / DV;
        let dv = i % DV;
        let s = s0 + j;
        if (s < p.L) {
          var gk = VT();
          var gv = VT();
          for (var rr = 0u; rr < R; rr++) {
            gk += dSs[rr * C + j] * Qs[rr * DV + dv];
            gv += Ps[rr * C + j] * dOs[rr * DV + dv];
          }
          let o = (w * p.L + s) * DV + dv;
          keyPartials[o] = gk * p.scale;
          valuePartials[o] = gv * tg;
        }
      }
    }
  }

  // Token keys 0 .. pos0 + t.
  let rowLse = lse[row];
  let rowDelta = delta[row];
  let count = p.pos0 + min(p.T, t0 + R);
  let limit = select(0u, p.pos0 + t + 1u, valid);
  let kvBase = b * p.S * kvStride + kvh * DV;
  for (var s0 = 0u; s0 < count; s0 += C) {
    ${stage("k", "v", "kvBase", "count")}
    gradEntries(r, c, select(0u, min(C, limit - s0), limit > s0), rowLse, 1.0, rowDelta);
    workgroupBarrier();
    accumulateDq(r, c);
  }

  if (valid) {
    let o = ((b * p.T + t) * p.H + h) * DV;
    for (var a = 0u; a < NA; a++) {
      let dv = c + a * TPR;
      if (dv < DV) {
        let prior = select(VT(), dq[o + dv], p.accumulate != 0u);
        dq[o + dv] = prior + dqAcc[a] * p.scale;
      }
    }
  }
}`;
}

function keyShader(D: number, tiles: Tiles): string {
  return `${header(D, tiles)}
@group(0) @binding(0) var<storage, read> q: array<VT>;
@group(0) @binding(1) var<storage, read> k: array<VT>;
@group(0) @binding(2) var<storage, read> v: array<VT>;
@group(0) @binding(3) var<storage, read> dO: array<VT>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dk: array<VT>;
@group(0) @binding(7) var<storage, read_write> dv: array<VT>;
${BACKWARD_PARAMS}
@group(0) @binding(8) var<uniform> p: Params;

// Rows of the tiles are keys, columns are queries.
var<workgroup> Ks: array<VT, R * DV>;
var<workgroup> Vs: array<VT, R * DV>;
var<workgroup> Qs: array<VT, C * DV>;
var<workgroup> dOs: array<VT, C * DV>;
var<workgroup> Ps: array<f32, R * C>;
var<workgroup> dSs: array<f32, R * C>;
var<workgroup> lseS: array<f32, C>;
var<workgroup> deltaS: array<f32, C>;

var<private> dkAcc: array<VT, NA>;
var<private> dvAcc: array<VT, NA>;

@compute @workgroup_size(WG)
fn main(${GRID_BUILTINS}) {
  let w = ${LINEAR_WORKGROUP};
  let nKB = p.nBlocks;
  if (w >= p.B * p.Hkv * nKB) {
    return;
  }
  let kb = w % nKB;
  let kvh = (w / nKB) % p.Hkv;
  let b = w / (nKB * p.Hkv);
  let r = lid / TPR;
  let c = lid % TPR;
  let s0 = kb * R;
  let s = s0 + r;
  let kvStride = p.Hkv * DV;
  let kvBase = b * p.S * kvStride + kvh * DV;

  for (var i = lid; i < R * DV; i += WG) {
    let ss = s0 + i / DV;
    var kx = VT();
    var vx = VT();
    if (ss < p.S) {
      let g = kvBase + ss * kvStride + i % DV;
      kx = k[g];
      vx = v[g];
    }
    Ks[i] = kx;
    Vs[i] = vx;
  }

  // Query t attends to key s when s <= pos0 + t, so the block's first key bounds the queries.
  let group = p.H / p.Hkv;
  let tFirst = select(0u, s0 - p.pos0, s0 > p.pos0);
  for (var gi = 0u; gi < group; gi++) {
    let h = kvh * group + gi;
    for (var t0 = tFirst; t0 < p.T; t0 += C) {
      workgroupBarrier();
      for (var i = lid; i < C * DV; i += WG) {
        let tt = t0 + i / DV;
        var qx = VT();
        var gx = VT();
        if (tt < p.T) {
          let g = ((b * p.T + tt) * p.H + h) * DV + i % DV;
          qx = q[g];
          gx = dO[g];
        }
        Qs[i] = qx;
        dOs[i] = gx;
      }
      for (var i = lid; i < C; i += WG) {
        let tt = min(t0 + i, p.T - 1u);
        lseS[i] = lse[(b * p.H + h) * p.T + tt];
        deltaS[i] = delta[(b * p.H + h) * p.T + tt];
      }
      workgroupBarrier();

      for (var e = 0u; e < NE; e++) {
        let j = c + e * TPR;
        if (j < C) {
          let tt = t0 + j;
          var pr = 0.0;
          var ds = 0.0;
          if (tt < p.T && s < p.S && s <= p.pos0 + tt) {
            var sc = 0.0;
            var dp = 0.0;
            for (var x = 0u; x < DV; x++) {
              sc += dot(Ks[r * DV + x], Qs[j * DV + x]);
              dp += dot(Vs[r * DV + x], dOs[j * DV + x]);
            }
            pr = exp(sc * p.scale - lseS[j]);
            ds = pr * (dp - deltaS[j]);
          }
          Ps[r * C + j] = pr;
          dSs[r * C + j] = ds;
        }
      }
      workgroupBarrier();

      for (var j = 0u; j < C; j++) {
        let pr = Ps[r * C + j];
        let ds = dSs[r * C + j];
        for (var a = 0u; a < NA; a++) {
          let x = c + a * TPR;
          if (x < DV) {
            dvAcc[a] += pr * dOs[j * DV + x];
            dkAcc[a] += ds * Qs[j * DV + x];
          }
        }
      }
    }
  }

  if (s < p.S) {
    let o = kvBase + s * kvStride;
    for (var a = 0u; a < NA; a++) {
      let x = c + a * TPR;
      if (x < DV) {
        let keep = p.accumulate != 0u;
        dk[o + x] = select(VT(), dk[o + x], keep) + dkAcc[a] * p.scale;
        dv[o + x] = select(VT(), dv[o + x], keep) + dvAcc[a];
      }
    }
  }
}`;
}
