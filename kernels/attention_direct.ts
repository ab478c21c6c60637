/**
 * The "direct" attention kernels for CPU implementations of WebGPU (Mesa's lavapipe/llvmpipe).
 *
 * Why a second path: on lavapipe (Mesa 22.3, LLVM 15, measured on a 2-core VM) one float loaded
 * from a storage buffer or from workgroup memory costs about as much as a hundred FMAs. Loading a
 * vec4 costs the same as four scalar loads, and a barrier splits the shader into coroutines. There
 * `scripts/bench/attention.ts` measured the workgroup-tiled kernels of `attention_tiled.ts` at
 * about 0.04 GFLOP/s forward and these at 0.26-0.30 (D = 128, 128 and 512 tokens). Keeping whole
 * head rows in fully unrolled registers would save more loads, but a trial with 8 rows of D = 64
 * took minutes to compile.
 *
 * So each invocation here keeps a register tile of `rows` x `keys` scores (or `keys` x `rows` in
 * the key-side kernel) and walks the head dimension in a runtime loop, loading `rows` + `keys`
 * values per `rows * keys` FMAs. Running sums that span the head dimension (the output, dq, dk,
 * dv) live in a work buffer, one private slot per invocation and row, read and written once per
 * key block. D is a uniform, so one pipeline per kernel serves every head size. Three kernels:
 *
 * - `forward`: one row of attention over one key source (the prompt or the tokens) with an
 *   online softmax; launched once per source, the second launch adding to the first's output.
 * - `rows`: the query side of backward. Mode "delta" computes per row promptDelta = sum over
 *   prompt keys of P dP and delta = dOut . out - tanh(gate) promptDelta; mode "dq" adds
 *   scale * sum_j dS_j k_j to dq, once for the prompt keys and once for the tokens.
 * - `keys`: the key side of backward. For each key, dk += scale * sum dS q and
 *   dv += gain * sum P dOut over the queries that attend to it and the heads that share its kv
 *   head. For the prompt keys it writes one partial sum per batch row, which `attention.ts`
 *   reduces.
 */
import { type Gpu, grid, params, type Tensor } from "./device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "./wgsl.ts";
import type { AttentionDims } from "../model/reference/attention.ts";

/** Register tile of the direct kernels. */
export interface DirectTiles {
  /** Invocations per workgroup. */
  lanes: number;
  /** Query rows per invocation (key rows in the key-side kernel). */
  rows: number;
  /** Keys per block (queries per block in the key-side kernel). */
  keys: number;
}

/**
 * 8 x 8 register tiles: 64 FMAs per 16 loads when computing scores. On lavapipe (2-core VM) they
 * ran about 2x faster than 4 x 4 tiles, and 8 x 16 tiles another 1.3x at twice the compile time
 * (about 13 s for the three pipelines, without Mesa's shader cache).
 */
export const DIRECT_TILES: DirectTiles = { lanes: 16, rows: 8, keys: 8 };

/** Tiles for a single query row (decode): no register rows wasted on absent queries. */
export const DIRECT_DECODE_TILES: DirectTiles = { lanes: 16, rows: 1, keys: 8 };

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Returns `max(a, max(b, ...))` over the terms. */
function maxOf(terms: string[]): string {
  return terms.reduce((a, b) => `max(${a}, ${b})`);
}

function tilesKey(t: DirectTiles): string {
  return `lanes ${t.lanes}, tile ${t.rows}x${t.keys}`;
}

/** Returns the number of row blocks (workgroups per head and batch row) covering `n` rows. */
export function directBlocks(n: number, t: DirectTiles): number {
  return Math.max(1, Math.ceil(n / (t.lanes * t.rows)));
}

/** Returns the work-buffer floats for `workgroups` workgroups with `planes` sums per row. */
export function directWorkSize(workgroups: number, t: DirectTiles, D: number, planes: number) {
  return workgroups * t.lanes * t.rows * D * planes;
}

// ---------------------------------------------------------------------------------------------
// Forward

const FWD_WRITE_STAT = 1;
const FWD_GATED = 2;
const FWD_ADD = 4;

/** One key source of a forward launch. */
interface KeySource {
  keys: Tensor;
  values: Tensor;
  /** Keys in the source: S for tokens, L for the prompt. */
  count: number;
  /** Elements between batch rows of the source: S Hkv D for tokens, 0 for the shared prompt. */
  batchStride: number;
  causal: boolean;
}

/**
 * Records the forward pass: the prompt launch (when L > 0) writes tanh(gate) times its softmax
 * output into `out` and its log-sum-exp into `promptLse`; the token launch writes or adds its own.
 * `work` holds directWorkSize(B H blocks, tiles, D, 1) floats.
 */
export function directForward(
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
    work: Tensor;
  },
  flags: { lse: boolean; promptLse: boolean },
  tiles: DirectTiles,
): void {
  const kernel = "attentionForward";
  const pipeline = gpu.pipeline(kernel, `direct ${tilesKey(tiles)}`, () => forwardShader(tiles));
  const nBlocks = directBlocks(d.T, tiles);
  const launch = (src: KeySource, stat: Tensor, f: number) => {
    gpu.dispatch(
      kernel,
      pipeline,
      [t.q, src.keys, src.values, t.gate, t.out, t.work, stat],
      grid(d.B * d.H * nBlocks, gpu.info.maxComputeWorkgroupsPerDimension),
      params([
        ["u", d.B],
        ["u", d.T],
        ["u", d.H],
        ["u", d.Hkv],
        ["u", d.D],
        ["u", src.count],
        ["u", src.batchStride],
        ["u", d.pos0],
        ["u", src.causal ? 1 : 0],
        ["u", nBlocks],
        ["f", 1 / Math.sqrt(d.D)],
        ["u", f],
      ]),
    );
  };
  if (d.L > 0) {
    const prompt = { keys: t.pk, values: t.pv, count: d.L, batchStride: 0, causal: false };
    launch(prompt, t.promptLse, FWD_GATED | (flags.promptLse ? FWD_WRITE_STAT : 0));
  }
  const tokens = {
    keys: t.k,
    values: t.v,
    count: d.S,
    batchStride: d.S * d.Hkv * d.D,
    causal: true,
  };
  launch(tokens, t.lse, (d.L > 0 ? FWD_ADD : 0) | (flags.lse ? FWD_WRITE_STAT : 0));
}

/** Returns WGSL locating this invocation's rows: workgroup w is (b, h, block), rows tBase + x. */
function rowPrologue(t: DirectTiles, total: string): string {
  return `
  let w = ${LINEAR_WORKGROUP};
  if (w >= ${total}) {
    return;
  }
  let blk = w % p.nBlocks;
  let h = (w / p.nBlocks) % p.H;
  let b = w / (p.nBlocks * p.H);
  let kvh = h / (p.H / p.Hkv);
  let tBase = (blk * ${t.lanes}u + lid) * ${t.rows}u;
  if (tBase >= p.T) {
    return;
  }
  let kvStride = p.Hkv * p.D;
  let keyBase = b * p.keyBatchStride + kvh * p.D;
  // This invocation's private slots in the work buffer, one head row each.
  let slot = (w * ${t.lanes}u + lid) * ${t.rows}u * p.D;`;
}

function forwardShader(t: DirectTiles): string {
  const X = range(t.rows);
  const J = range(t.keys);
  const L: string[] = [];
  const each = (f: (x: number) => string) => X.map(f).join("\n");
  const eachXJ = (f: (x: number, j: number) => string) =>
    X.flatMap((x) => J.map((j) => f(x, j))).join("\n");
  L.push(`
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> keys: array<f32>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
@group(0) @binding(3) var<storage, read> gate: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> work: array<f32>;
@group(0) @binding(6) var<storage, read_write> stat: array<f32>;
struct Params {
  B: u32, T: u32, H: u32, Hkv: u32, D: u32, nKeys: u32, keyBatchStride: u32, pos0: u32,
  causal: u32, nBlocks: u32, scale: f32, flags: u32,
}
@group(0) @binding(7) var<uniform> p: Params;
const NEG_BIG = -1.0e30;

@compute @workgroup_size(${t.lanes})
fn main(${GRID_BUILTINS}) {
  ${rowPrologue(t, "p.B * p.H * p.nBlocks")}
${
    each((x) =>
      `  let t${x} = tBase + ${x}u;
  let r${x} = ((b * p.T + min(t${x}, p.T - 1u)) * p.H + h) * p.D;
  let a${x} = slot + ${x}u * p.D;
  let lim${x} = select(0u, select(p.nKeys, p.pos0 + t${x} + 1u, p.causal != 0u), t${x} < p.T);
  var m${x} = NEG_BIG;
  var l${x} = 0.0;`
    )
  }
  // Keys past the last row's limit are never needed.
  let count = ${maxOf(X.map((x) => `lim${x}`))};
  for (var d = 0u; d < p.D; d++) {
${each((x) => `    work[a${x} + d] = 0.0;`)}
  }

  for (var s0 = 0u; s0 < count; s0 += ${t.keys}u) {
${J.map((j) => `    let k${j} = keyBase + min(s0 + ${j}u, count - 1u) * kvStride;`).join("\n")}
${eachXJ((x, j) => `    var sc${x}_${j} = 0.0;`)}
    for (var d = 0u; d < p.D; d++) {
${each((x) => `      let q${x} = q[r${x} + d];`)}
${J.map((j) => `      let kd${j} = keys[k${j} + d];`).join("\n")}
${eachXJ((x, j) => `      sc${x}_${j} = fma(q${x}, kd${j}, sc${x}_${j});`)}
    }
${
    eachXJ((x, j) =>
      `    let z${x}_${j} = select(NEG_BIG, sc${x}_${j} * p.scale, s0 + ${j}u < lim${x});`
    )
  }
${
    each((x) =>
      `    let mn${x} = ${maxOf([`m${x}`, ...J.map((j) => `z${x}_${j}`)])};
    let al${x} = exp(m${x} - mn${x});
${
        J.map((j) =>
          `    let p${x}_${j} = select(0.0, exp(z${x}_${j} - mn${x}), s0 + ${j}u < lim${x});`
        ).join("\n")
      }
    l${x} = l${x} * al${x} + ${J.map((j) => `p${x}_${j}`).join(" + ")};
    m${x} = mn${x};`
    )
  }
    for (var d = 0u; d < p.D; d++) {
${J.map((j) => `      let vd${j} = values[k${j} + d];`).join("\n")}
${
    each((x) =>
      `      work[a${x} + d] = work[a${x} + d] * al${x} + ${
        J.map((j) => `p${x}_${j} * vd${j}`).join(" + ")
      };`
    )
  }
    }
  }

  var tg = 0.0;
  if ((p.flags & ${FWD_GATED}u) != 0u) {
    tg = tanh(gate[h]);
  }
${
    each((x) =>
      `  if (t${x} < p.T) {
    let inv = 1.0 / l${x};
    for (var d = 0u; d < p.D; d++) {
      let o = work[a${x} + d] * inv;
      if ((p.flags & ${FWD_GATED}u) != 0u) {
        out[r${x} + d] = tg * o;
      } else if ((p.flags & ${FWD_ADD}u) != 0u) {
        out[r${x} + d] = out[r${x} + d] + o;
      } else {
        out[r${x} + d] = o;
      }
    }
    if ((p.flags & ${FWD_WRITE_STAT}u) != 0u) {
      stat[(b * p.H + h) * p.T + t${x}] = m${x} + log(l${x});
    }
  }`
    )
  }
}`);
  return L.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Backward, query side

const ROWS_MODE_DELTA = 0;
const ROWS_MODE_DQ = 1;

/**
 * Records the query side of backward: delta and promptDelta into `delta` (2, B, H, T), then dq
 * from the prompt keys (when L > 0) and from the token keys. `work` holds
 * directWorkSize(B H blocks, tiles, D, 1) floats.
 */
export function directBackwardRows(
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
    work: Tensor;
  },
  accumulate: boolean,
  tiles: DirectTiles,
): void {
  const kernel = "attentionBackward dq";
  const pipeline = gpu.pipeline(kernel, `direct ${tilesKey(tiles)}`, () => rowsShader(tiles));
  const nBlocks = directBlocks(d.T, tiles);
  const launch = (
    mode: number,
    prompt: boolean,
    keep: boolean,
  ) => {
    const src = prompt
      ? { keys: t.pk, values: t.pv, count: d.L, batchStride: 0 }
      : { keys: t.k, values: t.v, count: d.S, batchStride: d.S * d.Hkv * d.D };
    gpu.dispatch(
      kernel,
      pipeline,
      [
        t.q,
        t.dOut,
        t.out,
        src.keys,
        src.values,
        t.gate,
        prompt ? t.promptLse : t.lse,
        t.delta,
        t.dq,
        t.work,
      ],
      grid(d.B * d.H * nBlocks, gpu.info.maxComputeWorkgroupsPerDimension),
      params([
        ["u", d.B],
        ["u", d.T],
        ["u", d.H],
        ["u", d.Hkv],
        ["u", d.D],
        ["u", src.count],
        ["u", src.batchStride],
        ["u", d.pos0],
        ["u", prompt ? 0 : 1],
        ["u", nBlocks],
        ["f", 1 / Math.sqrt(d.D)],
        ["u", mode],
        ["u", keep ? 1 : 0],
        ["u", d.L],
      ]),
    );
  };
  launch(ROWS_MODE_DELTA, true, false);
  if (d.L > 0) launch(ROWS_MODE_DQ, true, accumulate);
  launch(ROWS_MODE_DQ, false, accumulate || d.L > 0);
}

function rowsShader(t: DirectTiles): string {
  const X = range(t.rows);
  const J = range(t.keys);
  const each = (f: (x: number) => string) => X.map(f).join("\n");
  const eachXJ = (f: (x: number, j: number) => string) =>
    X.flatMap((x) => J.map((j) => f(x, j))).join("\n");
  return `
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> dO: array<f32>;
@group(0) @binding(2) var<storage, read> out: array<f32>;
@group(0) @binding(3) var<storage, read> keys: array<f32>;
@group(0) @binding(4) var<storage, read> values: array<f32>;
@group(0) @binding(5) var<storage, read> gate: array<f32>;
@group(0) @binding(6) var<storage, read> rowLse: array<f32>;
@group(0) @binding(7) var<storage, read_write> delta: array<f32>;
@group(0) @binding(8) var<storage, read_write> dq: array<f32>;
@group(0) @binding(9) var<storage, read_write> work: array<f32>;
struct Params {
  B: u32, T: u32, H: u32, Hkv: u32, D: u32, nKeys: u32, keyBatchStride: u32, pos0: u32,
  causal: u32, nBlocks: u32, scale: f32, mode: u32, keep: u32, L: u32,
}
@group(0) @binding(10) var<uniform> p: Params;

@compute @workgroup_size(${t.lanes})
fn main(${GRID_BUILTINS}) {
  ${rowPrologue(t, "p.B * p.H * p.nBlocks")}
  let rows = p.B * p.H * p.T;
  let dqMode = p.mode == ${ROWS_MODE_DQ}u;
  let prompt = p.causal == 0u;
  var tg = 0.0;
  if (p.L > 0u) {
    tg = tanh(gate[h]);
  }
  // The prompt's dS uses tanh(gate) dP and its delta tanh(gate) promptDelta.
  let gain = select(1.0, tg, prompt);
${
    each((x) =>
      `  let t${x} = tBase + ${x}u;
  let r${x} = ((b * p.T + min(t${x}, p.T - 1u)) * p.H + h) * p.D;
  let row${x} = (b * p.H + h) * p.T + min(t${x}, p.T - 1u);
  let a${x} = slot + ${x}u * p.D;
  let lim${x} = select(0u, select(p.nKeys, p.pos0 + t${x} + 1u, p.causal != 0u), t${x} < p.T);
  let lse${x} = rowLse[row${x}];
  var rd${x} = 0.0;
  if (dqMode) {
    rd${x} = select(delta[row${x}], tg * delta[rows + row${x}], prompt);
  }
  var acc${x} = 0.0;`
    )
  }
  let count = ${maxOf(X.map((x) => `lim${x}`))};
  if (dqMode) {
    for (var d = 0u; d < p.D; d++) {
${each((x) => `      work[a${x} + d] = 0.0;`)}
    }
  }

  for (var s0 = 0u; s0 < count; s0 += ${t.keys}u) {
${J.map((j) => `    let k${j} = keyBase + min(s0 + ${j}u, count - 1u) * kvStride;`).join("\n")}
${eachXJ((x, j) => `    var sc${x}_${j} = 0.0;\n    var dp${x}_${j} = 0.0;`)}
    for (var d = 0u; d < p.D; d++) {
${each((x) => `      let q${x} = q[r${x} + d];\n      let g${x} = dO[r${x} + d];`)}
${
    J.map((j) => `      let kd${j} = keys[k${j} + d];\n      let vd${j} = values[k${j} + d];`).join(
      "\n",
    )
  }
${
    eachXJ((x, j) =>
      `      sc${x}_${j} = fma(q${x}, kd${j}, sc${x}_${j});\n` +
      `      dp${x}_${j} = fma(g${x}, vd${j}, dp${x}_${j});`
    )
  }
    }
${
    eachXJ((x, j) =>
      `    let p${x}_${j} = select(0.0, exp(sc${x}_${j} * p.scale - lse${x}), ` +
      `s0 + ${j}u < lim${x});`
    )
  }
    if (dqMode) {
${eachXJ((x, j) => `      let ds${x}_${j} = p${x}_${j} * (gain * dp${x}_${j} - rd${x});`)}
      for (var d = 0u; d < p.D; d++) {
${J.map((j) => `        let kd${j} = keys[k${j} + d];`).join("\n")}
${
    each((x) =>
      `        work[a${x} + d] = work[a${x} + d] + ${
        J.map((j) => `ds${x}_${j} * kd${j}`).join(" + ")
      };`
    )
  }
      }
    } else {
${each((x) => `      acc${x} += ${J.map((j) => `p${x}_${j} * dp${x}_${j}`).join(" + ")};`)}
    }
  }

${
    each((x) =>
      `  if (t${x} < p.T) {
    if (dqMode) {
      for (var d = 0u; d < p.D; d++) {
        let prior = select(0.0, dq[r${x} + d], p.keep != 0u);
        dq[r${x} + d] = prior + work[a${x} + d] * p.scale;
      }
    } else {
      var outDot = 0.0;
      for (var d = 0u; d < p.D; d++) {
        outDot = fma(dO[r${x} + d], out[r${x} + d], outDot);
      }
      delta[row${x}] = outDot - tg * acc${x};
      delta[rows + row${x}] = acc${x};
    }
  }`
    )
  }
}`;
}

// ---------------------------------------------------------------------------------------------
// Backward, key side

/**
 * Records the key side of backward for the token keys (dk and dv, (B, S, Hkv, D)) and, when
 * L > 0, for the prompt keys (one partial sum per batch row into `promptKeyPartials` and
 * `promptValuePartials`, each (B, Hkv, L, D)). `work` holds
 * directWorkSize(B Hkv blocks, tiles, D, 2) floats for the larger of the two.
 */
export function directBackwardKeys(
  gpu: Gpu,
  d: AttentionDims,
  t: {
    q: Tensor;
    k: Tensor;
    v: Tensor;
    dOut: Tensor;
    pk: Tensor;
    pv: Tensor;
    gate: Tensor;
    lse: Tensor;
    promptLse: Tensor;
    delta: Tensor;
    dk: Tensor;
    dv: Tensor;
    promptKeyPartials: Tensor;
    promptValuePartials: Tensor;
    work: Tensor;
  },
  accumulate: boolean,
  tiles: DirectTiles,
): void {
  const kernel = "attentionBackward dk dv";
  const pipeline = gpu.pipeline(kernel, `direct ${tilesKey(tiles)}`, () => keysShader(tiles));
  const launch = (prompt: boolean) => {
    const n = prompt ? d.L : d.S;
    const nBlocks = directBlocks(n, tiles);
    const kvRow = d.Hkv * d.D;
    // Element strides of the targets: (batch, key, kv head).
    const target = prompt ? [d.Hkv * d.L * d.D, d.D, d.L * d.D] : [d.S * kvRow, kvRow, d.D];
    gpu.dispatch(
      kernel,
      pipeline,
      [
        t.q,
        t.dOut,
        prompt ? t.pk : t.k,
        prompt ? t.pv : t.v,
        t.gate,
        prompt ? t.promptLse : t.lse,
        t.delta,
        prompt ? t.promptKeyPartials : t.dk,
        prompt ? t.promptValuePartials : t.dv,
        t.work,
      ],
      grid(d.B * d.Hkv * nBlocks, gpu.info.maxComputeWorkgroupsPerDimension),
      params([
        ["u", d.B],
        ["u", d.T],
        ["u", d.H],
        ["u", d.Hkv],
        ["u", d.D],
        ["u", n],
        ["u", prompt ? 0 : d.S * kvRow],
        ["u", d.pos0],
        ["u", prompt ? 0 : 1],
        ["u", nBlocks],
        ["f", 1 / Math.sqrt(d.D)],
        ["u", !prompt && accumulate ? 1 : 0],
        ["u", d.L],
        ...target.map((s) => ["u", s] as ["u", number]),
      ]),
    );
  };
  launch(false);
  if (d.L > 0) launch(true);
}

function keysShader(t: DirectTiles): string {
  // Tile rows are keys (x) and columns are queries (j).
  const X = range(t.rows);
  const J = range(t.keys);
  const each = (f: (x: number) => string) => X.map(f).join("\n");
  const eachJ = (f: (j: number) => string) => J.map(f).join("\n");
  const eachXJ = (f: (x: number, j: number) => string) =>
    X.flatMap((x) => J.map((j) => f(x, j))).join("\n");
  return `
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> dO: array<f32>;
@group(0) @binding(2) var<storage, read> keys: array<f32>;
@group(0) @binding(3) var<storage, read> values: array<f32>;
@group(0) @binding(4) var<storage, read> gate: array<f32>;
@group(0) @binding(5) var<storage, read> colLse: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dk: array<f32>;
@group(0) @binding(8) var<storage, read_write> dv: array<f32>;
@group(0) @binding(9) var<storage, read_write> work: array<f32>;
struct Params {
  B: u32, T: u32, H: u32, Hkv: u32, D: u32, nKeys: u32, keyBatchStride: u32, pos0: u32,
  causal: u32, nBlocks: u32, scale: f32, keep: u32, L: u32,
  targetBatch: u32, targetKey: u32, targetHead: u32,
}
@group(0) @binding(10) var<uniform> p: Params;

@compute @workgroup_size(${t.lanes})
fn main(${GRID_BUILTINS}) {
  let w = ${LINEAR_WORKGROUP};
  if (w >= p.B * p.Hkv * p.nBlocks) {
    return;
  }
  let blk = w % p.nBlocks;
  let kvh = (w / p.nBlocks) % p.Hkv;
  let b = w / (p.nBlocks * p.Hkv);
  let sBase = (blk * ${t.lanes}u + lid) * ${t.rows}u;
  if (sBase >= p.nKeys) {
    return;
  }
  let kvStride = p.Hkv * p.D;
  let keyBase = b * p.keyBatchStride + kvh * p.D;
  let slot = (w * ${t.lanes}u + lid) * ${2 * t.rows}u * p.D;
  let rows = p.B * p.H * p.T;
  let prompt = p.causal == 0u;
${
    each((x) =>
      `  let s${x} = sBase + ${x}u;
  let k${x} = keyBase + min(s${x}, p.nKeys - 1u) * kvStride;
  let a${x} = slot + ${2 * x}u * p.D;
  let ok${x} = s${x} < p.nKeys;`
    )
  }
  for (var d = 0u; d < p.D; d++) {
${each((x) => `    work[a${x} + d] = 0.0;\n    work[a${x} + p.D + d] = 0.0;`)}
  }

  // Query t attends to key s when s <= pos0 + t, and every query attends to the prompt.
  let tFirst = select(0u, select(0u, sBase - p.pos0, sBase > p.pos0), p.causal != 0u);
  let group = p.H / p.Hkv;
  for (var gi = 0u; gi < group; gi++) {
    let h = kvh * group + gi;
    var gain = 1.0;
    if (prompt) {
      gain = tanh(gate[h]);
    }
    for (var t0 = tFirst; t0 < p.T; t0 += ${t.keys}u) {
${
    eachJ((j) =>
      `      let t${j} = t0 + ${j}u;
      let q${j} = ((b * p.T + min(t${j}, p.T - 1u)) * p.H + h) * p.D;
      let row${j} = (b * p.H + h) * p.T + min(t${j}, p.T - 1u);
      let lse${j} = colLse[row${j}];
      let cd${j} = select(delta[row${j}], gain * delta[rows + row${j}], prompt);`
    )
  }
${eachXJ((x, j) => `      var sc${x}_${j} = 0.0;\n      var dp${x}_${j} = 0.0;`)}
      for (var d = 0u; d < p.D; d++) {
${each((x) => `        let kd${x} = keys[k${x} + d];\n        let vd${x} = values[k${x} + d];`)}
${eachJ((j) => `        let qd${j} = q[q${j} + d];\n        let gd${j} = dO[q${j} + d];`)}
${
    eachXJ((x, j) =>
      `        sc${x}_${j} = fma(kd${x}, qd${j}, sc${x}_${j});\n` +
      `        dp${x}_${j} = fma(vd${x}, gd${j}, dp${x}_${j});`
    )
  }
      }
${
    eachXJ((x, j) =>
      `      let seen${x}_${j} = ok${x} && t${j} < p.T && (prompt || s${x} <= p.pos0 + t${j});
      let p${x}_${j} = select(0.0, exp(sc${x}_${j} * p.scale - lse${j}), seen${x}_${j});
      let ds${x}_${j} = p${x}_${j} * (gain * dp${x}_${j} - cd${j});`
    )
  }
      for (var d = 0u; d < p.D; d++) {
${eachJ((j) => `        let qd${j} = q[q${j} + d];\n        let gd${j} = dO[q${j} + d];`)}
${
    each((x) =>
      `        work[a${x} + d] = work[a${x} + d] + ${
        J.map((j) => `ds${x}_${j} * qd${j}`).join(" + ")
      };
        work[a${x} + p.D + d] = work[a${x} + p.D + d] + gain * (${
        J.map((j) => `p${x}_${j} * gd${j}`).join(" + ")
      });`
    )
  }
      }
    }
  }

${
    each((x) =>
      `  if (ok${x}) {
    let o = b * p.targetBatch + s${x} * p.targetKey + kvh * p.targetHead;
    for (var d = 0u; d < p.D; d++) {
      let keep = p.keep != 0u;
      dk[o + d] = select(0.0, dk[o + d], keep) + work[a${x} + d] * p.scale;
      dv[o + d] = select(0.0, dv[o + d], keep) + work[a${x} + p.D + d];
    }
  }`
    )
  }
}`;
}
