/**
 * Causal attention with the LLaMA-Adapter prompt, forward and backward, in the flash style.
 *
 * Layouts (row-major, f32): q and out are (B, T, H, D); k and v are (B, S, Hkv, D) with
 * S >= pos0 + T; the prompt keys and values are (L, Hkv, D) and the gate is (H). Query t of batch
 * row b sits at position pos0 + t and attends to keys 0 .. pos0 + t, so a KV cache of capacity S
 * works as is. Head h reads kv head floor(h / (H / Hkv)). With scale = 1 / sqrt(D), each row
 * computes
 *
 *   out = tanh(gate[h]) * softmax_l(q . pk[l] * scale) pv
 *       + softmax_{s <= pos0+t}(q . k[s] * scale) v
 *
 * with two separate softmaxes. Forward walks the keys block by block with an online softmax, so
 * no (T x S) matrix is ever stored. It saves each row's log-sum-exp, from which backward
 * recomputes the probabilities. Reductions across queries (dk, dv, the prompt gradients, the
 * gate gradient) are owned by one invocation or go through per-block partial sums and a
 * fixed-order reduction, so results are deterministic and need no atomics.
 *
 * Two implementations compute the same thing: the "tiled" kernels of `attention_tiled.ts` stage
 * tiles in workgroup memory, for GPUs; the "direct" kernels of `attention_direct.ts` keep register
 * tiles and read storage directly, for CPU implementations of WebGPU, where every load is costly.
 * `attentionPath` picks one from the adapter, and the `path` argument overrides it.
 */
import {
  expectShape,
  type Gpu,
  type GpuInfo,
  grid,
  KernelError,
  numel,
  params,
  type Tensor,
} from "./device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "./wgsl.ts";
import type { AttentionDims } from "../model/reference/attention.ts";
import { tiledBackward, tiledForward, tiledQueryBlocks, vectorWidth } from "./attention_tiled.ts";
import {
  DIRECT_DECODE_TILES,
  DIRECT_TILES,
  directBackwardKeys,
  directBackwardRows,
  directBlocks,
  directForward,
  directWorkSize,
} from "./attention_direct.ts";

/** Storage buffers bound by the tiled query-gradient kernel, the most of any kernel here. */
const MAX_STORAGE_BINDINGS = 13;

const REDUCE_WORKGROUP = 64;

/** Implementation of the attention kernels; see the file comment. */
export type AttentionPath = "tiled" | "direct";

/** Returns the path for an adapter: "direct" on CPU implementations, else "tiled". */
export function attentionPath(info: GpuInfo): AttentionPath {
  return info.isSoftware ? "direct" : "tiled";
}

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
  /** Implementation to use; default `attentionPath(gpu.info)`. */
  path?: AttentionPath;
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
  /** Receives dL/dk, (B, S, Hkv, D); zero at positions no query attends to. */
  dk: Tensor;
  /** Receives dL/dv, (B, S, Hkv, D). */
  dv: Tensor;
  /** Receives the prompt gradients; required with a prompt of L > 0. */
  dPrompt?: AttentionPromptGrads;
  /** Add every gradient into its tensor instead of overwriting it. Default false. */
  accumulate?: boolean;
  /** Implementation to use; default `attentionPath(gpu.info)`. */
  path?: AttentionPath;
}

/** Validates the shared arguments and returns the sizes; `kernel` names the caller in errors. */
function checkInputs(
  kernel: string,
  gpu: Gpu,
  a: { q: Tensor; k: Tensor; v: Tensor; pos0?: number; prompt?: AttentionPrompt },
): AttentionDims {
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
 * smallest binding of a vec4 array). Every call reuses it: dispatches run in recording order, so
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

/** Placeholders bound where a prompt tensor is absent; never read or written. */
function absentPrompt(gpu: Gpu, prompt: AttentionPrompt | undefined, L: number) {
  const unused = scratch(gpu, "unused input", 16);
  return L > 0 && prompt
    ? { pk: prompt.keys, pv: prompt.values, gate: prompt.gate }
    : { pk: unused, pv: unused, gate: unused };
}

/**
 * Computes causal attention with an optional adapter prompt; see the file comment for layouts.
 * Prompt and plain calls run the same token code, so with every gate at 0 the output and lse
 * equal those of plain attention exactly. Throws a KernelError on a shape mismatch, naming the
 * tensor and the sizes.
 */
export function attentionForward(gpu: Gpu, a: AttentionForwardArgs): void {
  const kernel = "attentionForward";
  const d = checkInputs(kernel, gpu, a);
  const { B, T, H, D } = d;
  expectShape(kernel, a.out, [B, T, H, D], ["f32"]);
  if (a.lse) expectShape(kernel, a.lse, [B, H, T], ["f32"]);
  if (a.promptLse) {
    if (!a.prompt) throw new KernelError(kernel, "promptLse was given without a prompt");
    expectShape(kernel, a.promptLse, [B, H, T], ["f32"]);
  }
  if (T === 0 || B === 0 || H === 0) return;

  const tensors = {
    q: a.q,
    k: a.k,
    v: a.v,
    out: a.out,
    ...absentPrompt(gpu, a.prompt, d.L),
    lse: a.lse ?? scratch(gpu, "unused lse", 16),
    promptLse: a.promptLse ?? scratch(gpu, "unused prompt lse", 16),
  };
  const flags = { lse: !!a.lse, promptLse: !!a.promptLse && d.L > 0 };
  if ((a.path ?? attentionPath(gpu.info)) === "tiled") {
    tiledForward(gpu, d, tensors, flags);
  } else {
    const tiles = T === 1 ? DIRECT_DECODE_TILES : DIRECT_TILES;
    const blocks = B * H * directBlocks(T, tiles);
    const work = scratch(gpu, "work", directWorkSize(blocks, tiles, D, 1));
    directForward(gpu, d, { ...tensors, work }, flags, tiles);
  }
}

/**
 * Computes the gradients of attention from dOut and what forward saved, and those of the adapter
 * prompt and gate when a prompt is given; see the file comment for layouts.
 *
 * Both paths first compute, per query row, promptDelta = dOut . softmax_l(prompt scores) pv and
 * delta = dOut . out - tanh(gate) * promptDelta. Then they compute dq, dk and dv with P recomputed
 * from the saved log-sum-exp and dS = P (dOut . v - delta). The prompt gradients are summed from
 * partial sums in a fixed order, and dgate = (1 - tanh^2 gate) * sum over b, t of promptDelta.
 *
 * Work tensors (2 B H T floats, plus partial sums of the prompt gradients and, on the direct path,
 * running sums) are kept per device and reused. Throws a KernelError on a shape mismatch, naming
 * the tensor and the sizes.
 */
export function attentionBackward(gpu: Gpu, a: AttentionBackwardArgs): void {
  const kernel = "attentionBackward";
  const d = checkInputs(kernel, gpu, a);
  const { B, T, S, H, Hkv, D, L } = d;
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

  const accumulate = !!a.accumulate;
  const tiled = (a.path ?? attentionPath(gpu.info)) === "tiled";
  // Partial sums of dpk and dpv: `perGroup` consecutive blocks for each (b, kv head).
  const perGroup = tiled ? (H / Hkv) * tiledQueryBlocks(gpu, D, T) : 1;
  const partialSize = L > 0 ? B * Hkv * perGroup * L * D : 16;
  const tensors = {
    q: a.q,
    k: a.k,
    v: a.v,
    out: a.out,
    dOut: a.dOut,
    ...absentPrompt(gpu, a.prompt, L),
    lse: a.lse,
    promptLse: L > 0 ? a.promptLse! : scratch(gpu, "unused input", 16),
    delta: scratch(gpu, "delta", 2 * B * H * T),
    dq: a.dq,
    dk: a.dk,
    dv: a.dv,
    promptKeyPartials: scratch(gpu, "prompt key partial sums", partialSize),
    promptValuePartials: scratch(gpu, "prompt value partial sums", partialSize),
  };

  if (tiled) {
    tiledBackward(gpu, d, tensors, accumulate);
  } else {
    const t = DIRECT_TILES;
    const rowWork = directWorkSize(B * H * directBlocks(T, t), t, D, 1);
    const keyWork = directWorkSize(B * Hkv * directBlocks(Math.max(S, L), t), t, D, 2);
    const work = scratch(gpu, "work", Math.max(rowWork, keyWork));
    if (T > 0) directBackwardRows(gpu, d, { ...tensors, work }, accumulate, t);
    directBackwardKeys(gpu, d, { ...tensors, work }, accumulate, t);
  }

  if (L > 0) {
    const g = a.dPrompt!;
    const threads = 2 * L * Hkv * (D / vectorWidth(D)) + H;
    const pipeline = gpu.pipeline(`${kernel} prompt`, `D${D}`, () => promptShader(D));
    gpu.dispatch(
      `${kernel} prompt`,
      pipeline,
      [
        tensors.promptKeyPartials,
        tensors.promptValuePartials,
        tensors.delta,
        tensors.gate,
        g.keys,
        g.values,
        g.gate,
      ],
      grid(Math.ceil(threads / REDUCE_WORKGROUP), gpu.info.maxComputeWorkgroupsPerDimension),
      params([
        ["u", B],
        ["u", T],
        ["u", H],
        ["u", Hkv],
        ["u", L],
        ["u", perGroup],
        ["u", accumulate ? 1 : 0],
      ]),
    );
  }
}

function promptShader(D: number): string {
  const W = vectorWidth(D);
  return `
alias VT = vec${W}<f32>;
const DV = ${D / W}u;
@group(0) @binding(0) var<storage, read> keyPartials: array<VT>;
@group(0) @binding(1) var<storage, read> valuePartials: array<VT>;
@group(0) @binding(2) var<storage, read> delta: array<f32>;
@group(0) @binding(3) var<storage, read> gate: array<f32>;
@group(0) @binding(4) var<storage, read_write> dpk: array<VT>;
@group(0) @binding(5) var<storage, read_write> dpv: array<VT>;
@group(0) @binding(6) var<storage, read_write> dgate: array<f32>;
struct Params { B: u32, T: u32, H: u32, Hkv: u32, L: u32, perGroup: u32, accumulate: u32 }
@group(0) @binding(7) var<uniform> p: Params;

// Invocations 0 .. 2 L Hkv DV - 1 each sum one vector of dpk or dpv over the partial sums of
// every batch row and every block of its kv head, in that order. The next H invocations sum dgate.
@compute @workgroup_size(${REDUCE_WORKGROUP})
fn main(${GRID_BUILTINS}) {
  let i = ${LINEAR_WORKGROUP} * ${REDUCE_WORKGROUP}u + lid;
  let keep = p.accumulate != 0u;
  let n = p.L * p.Hkv * DV;
  if (i < 2u * n) {
    let e = i % n;
    let x = e % DV;
    let kvh = (e / DV) % p.Hkv;
    let l = e / (DV * p.Hkv);
    var sum = VT();
    for (var b = 0u; b < p.B; b++) {
      for (var j = 0u; j < p.perGroup; j++) {
        let o = (((b * p.Hkv + kvh) * p.perGroup + j) * p.L + l) * DV + x;
        if (i < n) {
          sum += keyPartials[o];
        } else {
          sum += valuePartials[o];
        }
      }
    }
    if (i < n) {
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
