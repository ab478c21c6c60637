/**
 * Causal attention with the LLaMA-Adapter prompt, forward and backward, in the flash style.
 *
 * Layouts (row-major, f32): q and out are (B, T, H, D); k and v are (B, S, Hkv, D) with
 * S >= pos0 + T; the prompt keys and values are (L, Hkv, D) and the gate is (H). Query t of batch
 * row b sits at position pos0 + t and sees keys 0 .. pos0 + t, so a KV cache of capacity S works
 * as is. Head h reads kv head floor(h / (H / Hkv)). With scale = 1 / sqrt(D), each row computes
 *
 *   out = tanh(gate[h]) * softmax_l(q . pk[l] * scale) pv + softmax_{s <= pos0+t}(q . k[s] * scale) v
 *
 * with two separate softmaxes. Every kernel keeps its tiles in workgroup memory and walks the keys
 * block by block with an online softmax, so no (T x S) matrix is ever stored. Backward recomputes
 * the probabilities from q, k and the log-sum-exp rows that forward saved. Reductions across
 * queries (dk, dv, the prompt gradients, the gate gradient) are owned by one workgroup or go
 * through per-block partial sums and a fixed-order reduction, so results are deterministic and
 * need no atomics.
 *
 * Tensors are stored as vec4 (vec2 when D is not a multiple of 4) so each load moves 16 bytes.
 * Workgroups are 64 invocations: `rows` tile rows with 64 / rows invocations per row. Each
 * invocation owns every (64 / rows)-th vector of its row's accumulator, so neighbouring
 * invocations read neighbouring words of the staged tiles.
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

/** Storage buffers bound by the query-gradient kernel, the most of any kernel here. */
const MAX_STORAGE_BINDINGS = 12;

/** Adapter prompt of one layer. */
export interface AttentionPrompt {
  /** Prompt keys (L, Hkv, D) f32: the adaption prompt through the frozen wk, without rotary. */
  keys: Tensor;
  /** Prompt values (L, Hkv, D) f32: the adaption prompt through the frozen wv. */
  values: Tensor;
  /** Gate (H) f32; the prompt output of head h is scaled by tanh(gate[h]). */
  gate: Tensor;
}

/** Arguments of `attentionForward`. */
export interface AttentionForwardArgs {
  /** Queries (B, T, H, D) f32, rotary already applied. */
  q: Tensor;
  /** Keys (B, S, Hkv, D) f32, rotary already applied; positions past pos0 + T - 1 are ignored. */
  k: Tensor;
  /** Values (B, S, Hkv, D) f32. */
  v: Tensor;
  /** Output (B, T, H, D) f32. */
  out: Tensor;
  /** Position of query 0; keys 0 .. pos0 - 1 come from earlier calls (a KV cache). Default 0. */
  pos0?: number;
  /** Adapter prompt; without it (or with L = 0) this is plain causal attention. */
  prompt?: AttentionPrompt;
  /** Receives the log-sum-exp of each token-softmax row, (B, H, T) f32; backward needs it. */
  lse?: Tensor;
  /** Receives the log-sum-exp of each prompt-softmax row, (B, H, T) f32; backward needs it. */
  promptLse?: Tensor;
}

/** Gradients of the adapter prompt, shaped like `AttentionPrompt`. */
export interface AttentionPromptGrads {
  /** Gradient of the prompt keys, (L, Hkv, D) f32, summed over batch rows, queries and heads. */
  keys: Tensor;
  /** Gradient of the prompt values, (L, Hkv, D) f32. */
  values: Tensor;
  /** Gradient of the gate, (H) f32. */
  gate: Tensor;
}

/** Arguments of `attentionBackward`: the forward inputs and outputs, dOut and the gradients. */
export interface AttentionBackwardArgs {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  /** The forward output (B, T, H, D). */
  out: Tensor;
  /** Gradient of the loss with respect to out, (B, T, H, D) f32. */
  dOut: Tensor;
  /** Token-softmax log-sum-exp saved by forward, (B, H, T). */
  lse: Tensor;
  pos0?: number;
  prompt?: AttentionPrompt;
  /** Prompt-softmax log-sum-exp saved by forward, (B, H, T); required with a prompt. */
  promptLse?: Tensor;
  /** Receives dL/dq, (B, T, H, D). */
  dq: Tensor;
  /** Receives dL/dk, (B, S, Hkv, D); zero at positions no query sees. */
  dk: Tensor;
  /** Receives dL/dv, (B, S, Hkv, D). */
  dv: Tensor;
  /** Receives the prompt gradients; required with a prompt of L > 0. */
  dPrompt?: AttentionPromptGrads;
  /** Add every gradient into its tensor instead of overwriting it. Default false. */
  accumulate?: boolean;
}

interface Dims {
  B: number;
  T: number;
  S: number;
  H: number;
  Hkv: number;
  D: number;
  L: number;
  pos0: number;
}

/** Tile geometry of one kernel: `rows` x `cols` score tiles and the work split of 64 invocations. */
interface Tiles {
  rows: number;
  cols: number;
  threadsPerRow: number;
  /** Accumulator vectors per invocation. */
  accVectors: number;
  /** Score entries per invocation. */
  entries: number;
}

/** Vector width used for a head of size D: 4 floats when D is a multiple of 4, else 2. */
function vectorWidth(D: number): number {
  return D % 4 === 0 ? 4 : 2;
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

/** Validates the shared arguments and returns the sizes; `kernel` names the caller in errors. */
function checkInputs(
  kernel: string,
  gpu: Gpu,
  a: { q: Tensor; k: Tensor; v: Tensor; pos0?: number; prompt?: AttentionPrompt },
): Dims {
  if (a.q.shape.length !== 4 || a.k.shape.length !== 4) {
    throw new KernelError(
      kernel,
      `q has shape [${a.q.shape.join(", ")}] and k has shape [${a.k.shape.join(", ")}], ` +
        `expected (B, T, H, D) and (B, S, Hkv, D)`,
    );
  }
  const [B, T, H, D] = a.q.shape;
  const [, S, Hkv] = a.k.shape;
  const pos0 = a.pos0 ?? 0;
  expectShape(kernel, a.q, [B, T, H, D], ["f32"]);
  expectShape(kernel, a.k, [B, S, Hkv, D], ["f32"]);
  expectShape(kernel, a.v, [B, S, Hkv, D], ["f32"]);
  if (D < 2 || D % 2 !== 0) {
    throw new KernelError(kernel, `head size D = ${D} must be even and at least 2`);
  }
  if (Hkv < 1 || H % Hkv !== 0) {
    throw new KernelError(kernel, `${H} query heads are not a multiple of ${Hkv} kv heads`);
  }
  if (!Number.isInteger(pos0) || pos0 < 0 || pos0 + T > S) {
    throw new KernelError(
      kernel,
      `pos0 = ${pos0} with T = ${T} queries needs pos0 + T <= S = ${S} keys`,
    );
  }
  let L = 0;
  if (a.prompt) {
    L = a.prompt.keys.shape[0];
    expectShape(kernel, a.prompt.keys, [L, Hkv, D], ["f32"]);
    expectShape(kernel, a.prompt.values, [L, Hkv, D], ["f32"]);
    expectShape(kernel, a.prompt.gate, [H], ["f32"]);
  }
  const maxStorage = gpu.device.limits.maxStorageBuffersPerShaderStage;
  if (maxStorage < MAX_STORAGE_BINDINGS) {
    throw new KernelError(
      kernel,
      `needs ${MAX_STORAGE_BINDINGS} storage buffers per shader stage, this device allows ` +
        `${maxStorage}`,
    );
  }
  return { B, T, S, H, Hkv, D, L, pos0 };
}

const scratchByGpu = new WeakMap<Gpu, Map<string, Tensor>>();

/**
 * Returns a per-device f32 work tensor of at least `elements` elements (and at least 16, the
 * smallest binding of a vec4 array). Reused by every call: dispatches run in recording order, so
 * a later call overwrites it only after earlier dispatches have read it. A larger request replaces
 * it, and recorded dispatches keep the old buffer alive.
 */
function scratch(gpu: Gpu, name: string, elements: number): Tensor {
  let tensors = scratchByGpu.get(gpu);
  if (!tensors) {
    tensors = new Map();
    scratchByGpu.set(gpu, tensors);
  }
  const want = Math.max(16, elements);
  const have = tensors.get(name);
  if (have && numel(have.shape) >= want) return have;
  const t = gpu.tensor([want], "f32", `attention ${name}`);
  tensors.set(name, t);
  return t;
}

// ---------------------------------------------------------------------------------------------
// Forward

const FLAG_WRITE_LSE = 1;
const FLAG_WRITE_PROMPT_LSE = 2;

function forwardTiles(gpu: Gpu, D: number): Tiles {
  return chooseTiles("attentionForward", gpu, D, (r, c) => 4 * ((r + 2 * c) * D + r * c));
}

/**
 * Computes causal attention with an optional adapter prompt; see the file comment for layouts.
 *
 * One workgroup owns `rows` queries of one (b, h) and keeps their q rows in workgroup memory. It
 * first walks the L prompt keys, then keys 0 .. pos0 + t in blocks of `cols`, each with an online
 * softmax (running max and sum rescale the accumulator), and writes
 * out = tanh(gate) * prompt part + token part. Workgroup memory is (rows + 2 cols) D + rows cols
 * floats. Prompt and plain calls run the same token code, so with a gate of 0 the output equals
 * plain attention bit for bit. Throws a KernelError on a shape mismatch, naming the tensor.
 */
export function attentionForward(gpu: Gpu, a: AttentionForwardArgs): void {
  const kernel = "attentionForward";
  const dims = checkInputs(kernel, gpu, a);
  const { B, T, S, H, Hkv, D, L, pos0 } = dims;
  expectShape(kernel, a.out, [B, T, H, D], ["f32"]);
  if (a.lse) expectShape(kernel, a.lse, [B, H, T], ["f32"]);
  if (a.promptLse) {
    if (!a.prompt) throw new KernelError(kernel, "promptLse was given without a prompt");
    expectShape(kernel, a.promptLse, [B, H, T], ["f32"]);
  }
  if (T === 0 || B === 0 || H === 0) return;

  const tiles = forwardTiles(gpu, D);
  const nQB = Math.ceil(T / tiles.rows);
  const pipeline = gpu.pipeline(kernel, `D${D}`, () => forwardShader(D, tiles));
  const dummy = scratch(gpu, "unused input", 16);
  const hasPrompt = L > 0;
  const flags = (a.lse ? FLAG_WRITE_LSE : 0) |
    (a.promptLse && hasPrompt ? FLAG_WRITE_PROMPT_LSE : 0);
  const bindings: Binding[] = [
    a.q,
    a.k,
    a.v,
    hasPrompt ? a.prompt!.keys : dummy,
    hasPrompt ? a.prompt!.values : dummy,
    hasPrompt ? a.prompt!.gate : dummy,
    a.out,
    a.lse ?? scratch(gpu, "unused lse", 16),
    a.promptLse ?? scratch(gpu, "unused prompt lse", 16),
  ];
  gpu.dispatch(
    kernel,
    pipeline,
    bindings,
    grid(B * H * nQB, gpu.info.maxComputeWorkgroupsPerDimension),
    params([
      ["u", B],
      ["u", T],
      ["u", S],
      ["u", H],
      ["u", Hkv],
      ["u", L],
      ["u", pos0],
      ["u", nQB],
      ["f", 1 / Math.sqrt(D)],
      ["u", flags],
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

// Folds the first nj staged keys into row r's softmax; every invocation of the row computes the
// same m and l, and updates its own accumulator vectors.
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

/**
 * Computes the gradients of attention (and of the adapter prompt and gate when a prompt is
 * given) from dOut and what forward saved; see the file comment for layouts. Four passes:
 *
 * 1. per query row (one invocation each): delta = dOut . out - tanh(gate) * promptDelta and
 *    promptDelta = dOut . (prompt softmax) pv, recomputed from q, the prompt and promptLse;
 * 2. per block of `rows` queries of one (b, h): dq from the token keys and the prompt keys, with
 *    P = exp(q . k * scale - lse) and dS = P (dOut . v - delta); the prompt blocks also write
 *    this block's partial sums of dpk and dpv;
 * 3. per block of `rows` keys of one (b, kv head): dk and dv, looping over the heads that share
 *    the kv head and over the query blocks that see the keys;
 * 4. with a prompt: dpk and dpv as fixed-order sums of the partials, and the gate gradient
 *    (1 - tanh^2 gate) * sum over b, t of promptDelta.
 *
 * Work tensors (2 B H T floats, plus 2 L D floats per query block and head with a prompt) are
 * kept per device and reused. Throws a KernelError on a shape mismatch, naming the tensor.
 */
export function attentionBackward(gpu: Gpu, a: AttentionBackwardArgs): void {
  const kernel = "attentionBackward";
  const dims = checkInputs(kernel, gpu, a);
  const { B, T, S, H, Hkv, D, L } = dims;
  expectShape(kernel, a.out, [B, T, H, D], ["f32"]);
  expectShape(kernel, a.dOut, [B, T, H, D], ["f32"]);
  expectShape(kernel, a.lse, [B, H, T], ["f32"]);
  expectShape(kernel, a.dq, [B, T, H, D], ["f32"]);
  expectShape(kernel, a.dk, [B, S, Hkv, D], ["f32"]);
  expectShape(kernel, a.dv, [B, S, Hkv, D], ["f32"]);
  if (L > 0) {
    if (!a.promptLse) throw new KernelError(kernel, "a prompt needs promptLse from forward");
    if (!a.dPrompt) throw new KernelError(kernel, "a prompt needs dPrompt for its gradients");
    expectShape(kernel, a.promptLse, [B, H, T], ["f32"]);
    expectShape(kernel, a.dPrompt.keys, [L, Hkv, D], ["f32"]);
    expectShape(kernel, a.dPrompt.values, [L, Hkv, D], ["f32"]);
    expectShape(kernel, a.dPrompt.gate, [H], ["f32"]);
  }
  if (B === 0 || H === 0 || S === 0) return;

  const accumulate = a.accumulate ? 1 : 0;
  const qt = queryTiles(gpu, D);
  const kt = keyTiles(gpu, D);
  const nQB = Math.ceil(T / qt.rows);
  const nKB = Math.ceil(S / kt.rows);
  const hasPrompt = L > 0;
  const dummy = scratch(gpu, "unused input", 16);
  const pk = hasPrompt ? a.prompt!.keys : dummy;
  const pv = hasPrompt ? a.prompt!.values : dummy;
  const gate = hasPrompt ? a.prompt!.gate : dummy;
  const promptLse = hasPrompt ? a.promptLse! : dummy;
  const delta = scratch(gpu, "delta", 2 * B * H * T);
  const partial = scratch(gpu, "prompt partial sums", hasPrompt ? B * H * nQB * 2 * L * D : 16);
  const maxGroups = gpu.info.maxComputeWorkgroupsPerDimension;
  const shape = (extra: [("u" | "f"), number][]) =>
    params([
      ["u", B],
      ["u", T],
      ["u", S],
      ["u", H],
      ["u", Hkv],
      ["u", L],
      ["u", dims.pos0],
      ["f", 1 / Math.sqrt(D)],
      ["u", accumulate],
      ...extra,
    ]);

  if (T > 0) {
    const deltaPipeline = gpu.pipeline(`${kernel} delta`, `D${D}`, () => deltaShader(D));
    gpu.dispatch(
      `${kernel} delta`,
      deltaPipeline,
      [a.q, pk, pv, gate, a.dOut, a.out, promptLse, delta],
      grid(Math.ceil((B * H * T) / WORKGROUP), maxGroups),
      shape([]),
    );

    const queryPipeline = gpu.pipeline(`${kernel} dq`, `D${D}`, () => queryShader(D, qt));
    gpu.dispatch(
      `${kernel} dq`,
      queryPipeline,
      [a.q, a.k, a.v, pk, pv, gate, a.dOut, a.lse, promptLse, delta, a.dq, partial],
      grid(B * H * nQB, maxGroups),
      shape([["u", nQB]]),
    );
  }

  const keyPipeline = gpu.pipeline(`${kernel} dk dv`, `D${D}`, () => keyShader(D, kt));
  gpu.dispatch(
    `${kernel} dk dv`,
    keyPipeline,
    [a.q, a.k, a.v, a.dOut, a.lse, delta, a.dk, a.dv],
    grid(B * Hkv * nKB, maxGroups),
    shape([["u", nKB]]),
  );

  if (hasPrompt) {
    const g = a.dPrompt!;
    const threads = 2 * L * Hkv * (D / vectorWidth(D)) + H;
    const reducePipeline = gpu.pipeline(`${kernel} prompt`, `D${D}`, () => promptShader(D));
    gpu.dispatch(
      `${kernel} prompt`,
      reducePipeline,
      [partial, delta, gate, g.keys, g.values, g.gate],
      grid(Math.ceil(threads / WORKGROUP), maxGroups),
      shape([["u", nQB]]),
    );
  }
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
@group(0) @binding(11) var<storage, read_write> partial: array<VT>;
${BACKWARD_PARAMS}
@group(0) @binding(12) var<uniform> p: Params;

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
          let base = (w * 2u * p.L + s) * DV + dv;
          partial[base] = gk * p.scale;
          partial[base + p.L * DV] = gv * tg;
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

  // Query t sees key s when s <= pos0 + t, so the block's first key limits the queries to walk.
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

function promptShader(D: number): string {
  const W = vectorWidth(D);
  return `
alias VT = vec${W}<f32>;
const DV = ${D / W}u;
@group(0) @binding(0) var<storage, read> partial: array<VT>;
@group(0) @binding(1) var<storage, read> delta: array<f32>;
@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read_write> dpk: array<VT>;
@group(0) @binding(4) var<storage, read_write> dpv: array<VT>;
@group(0) @binding(5) var<storage, read_write> dgate: array<f32>;
${BACKWARD_PARAMS}
@group(0) @binding(6) var<uniform> p: Params;

// Invocations 0 .. 2 L Hkv DV - 1 sum one vector of dpk or dpv over the partials of every batch
// row, head of the kv group and query block, in that order; the next H invocations sum dgate.
@compute @workgroup_size(${WORKGROUP})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${WORKGROUP}u + lid;
  let keep = p.accumulate != 0u;
  let n = p.L * p.Hkv * DV;
  let group = p.H / p.Hkv;
  if (i < 2u * n) {
    let plane = i / n;
    let e = i % n;
    let x = e % DV;
    let kvh = (e / DV) % p.Hkv;
    let l = e / (DV * p.Hkv);
    var sum = VT();
    for (var b = 0u; b < p.B; b++) {
      for (var gi = 0u; gi < group; gi++) {
        let h = kvh * group + gi;
        for (var qb = 0u; qb < p.nBlocks; qb++) {
          let w = (b * p.H + h) * p.nBlocks + qb;
          sum += partial[((w * 2u + plane) * p.L + l) * DV + x];
        }
      }
    }
    if (plane == 0u) {
      dpk[e] = select(VT(), dpk[e], keep) + sum;
    } else {
      dpv[e] = select(VT(), dpv[e], keep) + sum;
    }
  } else if (i < 2u * n + p.H) {
    let h = i - 2u * n;
    let tg = tanh(gate[h]);
    let rows = p.B * p.H * p.T;
    var sum = 0.0;
    for (var b = 0u; b < p.B; b++) {
      for (var t = 0u; t < p.T; t++) {
        sum += delta[rows + (b * p.H + h) * p.T + t];
      }
    }
    dgate[h] = select(0.0, dgate[h], keep) + (1.0 - tg * tg) * sum;
  }
}`;
}
