/**
 * Adapter ceilings: the f32 FMA peak from a register-only kernel, and the rate of storage-buffer
 * loads from a kernel that only reads and sums. Together they show what bounds a kernel: a matmul
 * far below the FMA peak whose load count per second is near the probe's is load-bound.
 */
import { type Gpu, params, type Tensor } from "../../kernels/device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "../../kernels/wgsl.ts";
import { type BenchContext, type BenchRow, benchValues, timeBest } from "../bench.ts";

const PEAK_WORKGROUP = 64;
const PEAK_WORKGROUPS = 1024;
const PEAK_UNROLL = 8;

/**
 * Returns WGSL where each invocation runs `chains` independent FMA chains of `vec`-wide values for
 * `p.iterations * PEAK_UNROLL` steps and stores one sum, so nothing but the final store touches
 * memory. The multiplier is read from the params block so the compiler cannot fold the chains.
 */
function peakCode(chains: number, vec: number): string {
  const type = vec === 1 ? "f32" : `vec${vec}<f32>`;
  const init = Array.from(
    { length: chains },
    (_, c) => `  var acc${c} = ${type}(f32(lid) * ${(c + 1) * 1e-3});`,
  );
  const step = Array.from({ length: chains }, (_, c) => `acc${c} = fma(acc${c}, m, add);`).join(
    " ",
  );
  const body = Array.from({ length: PEAK_UNROLL }, () => `    ${step}`);
  const sum = Array.from({ length: chains }, (_, c) => `acc${c}`).join(" + ");
  return `
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
struct Params { iterations: u32, multiplier: f32, addend: f32 }
@group(0) @binding(1) var<uniform> p: Params;
@compute @workgroup_size(${PEAK_WORKGROUP})
fn main(${GRID_BUILTINS}) {
${init.join("\n")}
  let m = ${type}(p.multiplier);
  let add = ${type}(p.addend);
  for (var i = 0u; i < p.iterations; i++) {
${body.join("\n")}
  }
  let s = ${sum};
  out[${LINEAR_WORKGROUP} * ${PEAK_WORKGROUP}u + lid] = ${vec === 1 ? "s" : `dot(s, ${type}(1.0))`};
}`;
}

const PROBE_WORKGROUP = 64;
/** Elements each invocation of the load probe reads. */
const PROBE_PER_INVOCATION = 256;

/**
 * Returns WGSL where invocation `t` of workgroup `g` sums elements g * 64 * 256 + s * 64 + t for
 * s < 256: every load is in bounds, consecutive invocations read consecutive addresses, and each
 * workgroup streams one contiguous block.
 */
function loadProbeCode(vec: number): string {
  const type = vec === 1 ? "f32" : `vec${vec}<f32>`;
  return `
@group(0) @binding(0) var<storage, read> src: array<${type}>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(${PROBE_WORKGROUP})
fn main(${GRID_BUILTINS}) {
  let block = ${LINEAR_WORKGROUP};
  let base = block * ${PROBE_WORKGROUP * PROBE_PER_INVOCATION}u + lid;
  var s0 = ${type}(0.0);
  var s1 = ${type}(0.0);
  for (var s = 0u; s < ${PROBE_PER_INVOCATION}u; s += 2u) {
    s0 += src[base + s * ${PROBE_WORKGROUP}u];
    s1 += src[base + (s + 1u) * ${PROBE_WORKGROUP}u];
  }
  let total = s0 + s1;
  out[block * ${PROBE_WORKGROUP}u + lid] = ${vec === 1 ? "total" : `dot(total, ${type}(1.0))`};
}`;
}

/** Measures the FMA peak (setting `ctx.peakGflops`) and the load probe. */
export async function peakBench(gpu: Gpu, ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];

  // FMA chains: scalar and vec4, several chains per invocation to hide FMA latency.
  const out = gpu.tensor([PEAK_WORKGROUPS * PEAK_WORKGROUP], "f32", "peak out");
  const iterations = 64;
  const configs: Record<string, { chains: number; vec: number }> = {
    "fma 8 chains of f32": { chains: 8, vec: 1 },
    "fma 16 chains of f32": { chains: 16, vec: 1 },
    "fma 4 chains of vec4<f32>": { chains: 4, vec: 4 },
  };
  const fmaGroup: Record<string, () => void> = {};
  for (const [name, { chains, vec }] of Object.entries(configs)) {
    const pipeline = gpu.pipeline("benchPeak", `${chains}x${vec}`, () => peakCode(chains, vec));
    fmaGroup[name] = () =>
      gpu.dispatch(
        "benchPeak",
        pipeline,
        [out],
        [PEAK_WORKGROUPS],
        params([["u", iterations], ["f", 0.999], ["f", 1e-3]]),
      );
  }
  const fmaTimes = await timeBest(gpu, fmaGroup, ctx);
  for (const [name, { chains, vec }] of Object.entries(configs)) {
    const t = fmaTimes[name];
    const flops = 2 * PEAK_WORKGROUPS * PEAK_WORKGROUP * chains * vec * iterations * PEAK_UNROLL;
    rows.push({
      section: "peak",
      name,
      dtype: "f32",
      gflops: flops / t.seconds / 1e9,
      ms: t.seconds * 1e3,
      reps: t.reps,
      note: "register-only FMA chains, one store per invocation",
    });
  }
  const peak = Math.max(...rows.map((r) => r.gflops!));
  ctx.peakGflops = peak;
  for (const row of rows) row.ofPeak = row.gflops! / peak;
  ctx.log(`  f32 FMA peak: ${peak.toFixed(2)} GFLOP/s`);
  out.buffer.destroy();

  // Load probe over a buffer larger than any cache, scalar and vec4 loads.
  const bytes = 64 * 2 ** 20;
  const floats = bytes / 4;
  const src = gpu.upload(benchValues(floats), [floats], "f32", "probe src");
  const loadGroup: Record<string, () => void> = {};
  const sums: Tensor[] = [];
  for (const vec of [1, 4]) {
    const invocations = floats / vec / PROBE_PER_INVOCATION;
    const workgroups = invocations / PROBE_WORKGROUP;
    const probeOut = gpu.tensor([invocations], "f32", "probe out");
    sums.push(probeOut);
    const pipeline = gpu.pipeline("benchLoad", `vec${vec}`, () => loadProbeCode(vec));
    loadGroup[String(vec)] = () =>
      gpu.dispatch("benchLoad", pipeline, [src, probeOut], [workgroups]);
  }
  const loadTimes = await timeBest(gpu, loadGroup, ctx);
  for (const vec of [1, 4]) {
    const t = loadTimes[String(vec)];
    const gbps = bytes / t.seconds / 1e9;
    const loadsPerSecond = floats / vec / t.seconds;
    const type = vec === 1 ? "f32" : `vec${vec}<f32>`;
    rows.push({
      section: "peak",
      name: `load probe ${type}`,
      shape: `${bytes / 2 ** 20} MiB`,
      dtype: "f32",
      gbps,
      ms: t.seconds * 1e3,
      reps: t.reps,
      note: `${(loadsPerSecond / 1e6).toFixed(1)} M loads of one ${type} per second`,
    });
    ctx.log(`  load probe ${type}: ${gbps.toFixed(3)} GB/s`);
  }
  for (const t of [src, ...sums]) t.buffer.destroy();
  return rows;
}
