/**
 * Attention speed at LLaMA-7B head shapes (32 heads of 128, batch 1) with a 10-position adapter
 * prompt, the published LLaMA-Adapter setting, at 128 and 512 tokens. On a software adapter the
 * rows use 4 heads, because 32 would take minutes per row, and each row's shape gives the count.
 *
 * FLOPs count the arithmetic the model needs, as FlashAttention reports do: 4 D per visible
 * (query, key) pair forward (q . k and p v, prompt pairs included) and 10 D more backward
 * (q . k again, dOut . v, dv, dk, dq). Both backward paths recompute q . k and dOut . v once more
 * than that count credits. The default path for the adapter is measured at both lengths, the
 * other path at 128 tokens for comparison.
 */
import type { Gpu, Tensor } from "../../kernels/device.ts";
import {
  attentionBackward,
  attentionForward,
  type AttentionPath,
  attentionPath,
} from "../../kernels/attention.ts";
import { type BenchContext, type BenchRow, benchValues, timeBest } from "../bench.ts";

const HEAD_DIM = 128;
const PROMPT_LENGTH = 10;
const SEQ_LENS = [128, 512];
const LLAMA_HEADS = 32;
const SOFTWARE_HEADS = 4;

/** Forward and forward+backward calls on one set of tensors. */
interface Workload {
  forward: (path: AttentionPath) => void;
  forwardBackward: (path: AttentionPath) => void;
  tensors: Tensor[];
}

function workload(gpu: Gpu, T: number, H: number): Workload {
  const D = HEAD_DIM;
  const L = PROMPT_LENGTH;
  const shape = [1, T, H, D];
  let seed = 1;
  const values = (dims: number[], label: string) =>
    gpu.upload(benchValues(dims.reduce((a, b) => a * b, 1), seed++), dims, "f32", label);
  const q = values(shape, "q");
  const k = values(shape, "k");
  const v = values(shape, "v");
  const dOut = values(shape, "dOut");
  const prompt = {
    keys: values([L, H, D], "prompt keys"),
    values: values([L, H, D], "prompt values"),
    gate: values([H], "gate"),
  };
  const out = gpu.tensor(shape, "f32", "out");
  const lse = gpu.tensor([1, H, T], "f32", "lse");
  const promptLse = gpu.tensor([1, H, T], "f32", "prompt lse");
  const dq = gpu.tensor(shape, "f32", "dq");
  const dk = gpu.tensor(shape, "f32", "dk");
  const dv = gpu.tensor(shape, "f32", "dv");
  const dPrompt = {
    keys: gpu.tensor([L, H, D], "f32", "prompt keys grad"),
    values: gpu.tensor([L, H, D], "f32", "prompt values grad"),
    gate: gpu.tensor([H], "f32", "gate grad"),
  };
  const forward = (path: AttentionPath) =>
    attentionForward(gpu, { q, k, v, out, prompt, lse, promptLse, path });
  const backward = (path: AttentionPath) =>
    attentionBackward(gpu, {
      q,
      k,
      v,
      out,
      dOut,
      lse,
      prompt,
      promptLse,
      dq,
      dk,
      dv,
      dPrompt,
      path,
    });
  return {
    forward,
    forwardBackward: (path) => {
      forward(path);
      backward(path);
    },
    tensors: [q, k, v, dOut, out, lse, promptLse, dq, dk, dv, ...Object.values(prompt)].concat(
      Object.values(dPrompt),
    ),
  };
}

/** Measures forward and forward+backward attention; see the file comment for sizes and FLOPs. */
export async function attentionBench(gpu: Gpu, ctx: BenchContext): Promise<BenchRow[]> {
  const H = gpu.info.isSoftware ? SOFTWARE_HEADS : LLAMA_HEADS;
  const main = attentionPath(gpu.info);
  const other: AttentionPath = main === "tiled" ? "direct" : "tiled";
  const rows: BenchRow[] = [];

  for (const T of SEQ_LENS) {
    const w = workload(gpu, T, H);
    const paths = T === SEQ_LENS[0] ? [main, other] : [main];
    const group: Record<string, () => void> = {};
    for (const path of paths) {
      group[`forward ${path}`] = () => w.forward(path);
      group[`forward+backward ${path}`] = () => w.forwardBackward(path);
    }
    const times = await timeBest(gpu, group, ctx);
    for (const t of w.tensors) t.buffer.destroy();

    const pairs = H * ((T * (T + 1)) / 2 + T * PROMPT_LENGTH);
    const shape = `B=1 T=${T} H=${H} D=${HEAD_DIM} L=${PROMPT_LENGTH}`;
    for (const [key, t] of Object.entries(times)) {
      const [name, path] = key.split(" ");
      const flops = (name === "forward" ? 4 : 14) * HEAD_DIM * pairs;
      const gflops = flops / t.seconds / 1e9;
      const row: BenchRow = {
        section: "attention",
        name: `attention ${name}`,
        shape,
        dtype: "f32",
        gflops,
        ms: t.seconds * 1e3,
        reps: t.reps,
        note: `${path} path${path === main ? "" : " (not the default here)"}`,
      };
      if (ctx.peakGflops) row.ofPeak = gflops / ctx.peakGflops;
      ctx.log(`  attention ${name} ${path} ${shape}: ${gflops.toFixed(3)} GFLOP/s`);
      rows.push(row);
    }
  }
  return rows;
}
