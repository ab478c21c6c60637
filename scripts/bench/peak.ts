/**
 * Adapter ceilings: the f32 FMA peak from a register-only kernel, and the rate of storage-buffer
 * loads from a kernel that only reads and sums. Together they show what bounds a kernel: a matmul
 * far below the FMA peak whose load count per second is near the probe's is load-bound.
 */
import { type Gpu, params } from "../../kernels/device.ts";
import { GRID_BUILTINS, LINEAR_WORKGROUP } from "../../kernels/wgsl.ts";
import { type BenchContext, type BenchRow, benchValues, timeRepeated } from "../bench.ts";

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

  const out = gpu.tensor([PEAK_WORKGROUPS * PEAK_WORKGROUP], "f32", "peak out");
  let peak = 0;
  for (const [chains, vec] of [[8, 1], [16, 1], [4, 4]]) {
    const pipeline = gpu.pipeline("benchPeak", `${chains}x${vec}`, () => peakCode(chains, vec));
    const iterations = 64;
    const flops = 2 * PEAK_WORKGROUPS * PEAK_WORKGROUP * chains * vec * iterations * PEAK_UNROLL;
    const t = await timeRepeated(gpu, () => {
      gpu.dispatch(
        "benchPeak",
        pipeline,
        [out],
        [PEAK_WORKGROUPS],
        params([["u", iterations], ["f", 0.999], ["f", 1e-3]]),
      );
    }, ctx.minSeconds);
    const gflops = flops / t.seconds / 1e9;
    peak = Math.max(peak, gflops);
    rows.push({
      section: "peak",
      name: `fma ${chains} chains of ${vec === 1 ? "f32" : `vec${vec}<f32>`}`,
      dtype: "f32",
      gflops,
      ms: t.seconds * 1e3,
      reps: t.reps,
      note: "register-only FMA chains, one store per invocation",
    });
    ctx.log(`  ${rows.at(-1)!.name}: ${gflops.toFixed(2)} GFLOP/s`);
  }
  ctx.peakGflops = peak;
  for (const row of rows) row.ofPeak = row.gflops! / peak;

  // Load probe over a buffer larger than any cache, scalar and vec4 loads.
  const bytes = 64 * 2 ** 20;
  const floats = bytes / 4;
  const src = gpu.upload(benchValues(floats), [floats], "f32", "probe src");
  for (const vec of [1, 4]) {
    const invocations = floats / vec / PROBE_PER_INVOCATION;
    const workgroups = invocations / PROBE_WORKGROUP;
    const sums = gpu.tensor([invocations], "f32", "probe out");
    const pipeline = gpu.pipeline("benchLoad", `vec${vec}`, () => loadProbeCode(vec));
    const t = await timeRepeated(gpu, () => {
      gpu.dispatch("benchLoad", pipeline, [src, sums], [workgroups]);
    }, ctx.minSeconds);
    const gbps = bytes / t.seconds / 1e9;
    const loadsPerSecond = floats / vec / t.seconds;
    rows.push({
      section: "peak",
      name: `load probe ${vec === 1 ? "f32" : `vec${vec}<f32>`}`,
      shape: `${bytes / 2 ** 20} MiB`,
      dtype: "f32",
      gbps,
      ms: t.seconds * 1e3,
      reps: t.reps,
      note: `${(loadsPerSecond / 1e6).toFixed(1)} M loads/s (one load = ${vec} floats)`,
    });
    ctx.log(`  ${rows.at(-1)!.name}: ${gbps.toFixed(3)} GB/s`);
    sums.buffer.destroy();
  }
  src.buffer.destroy();
  out.buffer.destroy();
  return rows;
}
