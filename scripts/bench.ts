/**
 * Benchmarks the GPU kernels on this machine's WebGPU adapter: `deno task bench [options]`.
 *
 * Prints a table and writes JSON (`--out`, default runs/bench.json) with the adapter, the machine
 * and one row per measurement. Sections live in scripts/bench/; each exports an async function
 * `(gpu, ctx) => rows` and is listed in `SECTIONS` below. The `peak` section runs first so later
 * rows can report their rate as a fraction of the measured FMA peak.
 *
 * Timing method, for every row:
 * 1. Warm-up: record the work once and `gpu.sync()`, which compiles the pipelines and touches the
 *    buffers; this run is not timed.
 * 2. Calibration: time one repetition recorded alone and synced, and choose the repetition count
 *    R so that R repetitions take at least `--min-seconds` (default 0.3 s).
 * 3. Measurement: record R repetitions into ONE submission, then time from the first record call
 *    to the end of `gpu.sync()`. If that took under the minimum, R grows and step 3 repeats. When
 *    the calibration run alone lasted the minimum, it is the measurement, with R = 1.
 *    Nothing is subtracted: the reported time per repetition is total / R and so includes one
 *    submission and one readback round trip, shared by the R repetitions.
 * 4. Steps 1 to 3 run once per kernel of a group, such as the tiled and naive matmul at one
 *    shape. Then the group is timed `--repeats` times more in rotation with R fixed, and each row
 *    keeps its fastest measurement. On a software adapter other processes take CPU time from the
 *    kernels, and rotating spreads bursts of such load over all the kernels being compared.
 * 5. The readback latency (one empty `gpu.sync()`, median of 9) is measured once and reported
 *    separately, so a reader can judge how much of a short measurement it is.
 * Rates are useful work divided by that time: 2 * M * N * K flops for a matmul, bytes read for the
 * load probe. Compare rows of one run rather than runs made while the machine was busy.
 */
import { Command } from "commander";
import { Gpu } from "../kernels/device.ts";
import { attentionBench } from "./bench/attention.ts";
import { matmulBench } from "./bench/matmul.ts";
import { modelBench } from "./bench/model.ts";
import { peakBench } from "./bench/peak.ts";

/** One measurement; fields that do not apply to a row are left out. */
export interface BenchRow {
  section: string;
  name: string;
  /** Shape or size in words, such as "M=64 N=4096 K=4096". */
  shape?: string;
  dtype?: string;
  /** Useful floating-point operations per second, in units of 1e9. */
  gflops?: number;
  /** Bytes read per second, in units of 1e9. */
  gbps?: number;
  /** `gflops` over the measured FMA peak of this run. */
  ofPeak?: number;
  /** Milliseconds per repetition (total over R). */
  ms?: number;
  /** Repetitions R in the timed submission. */
  reps?: number;
  /** Reason a row was skipped, or a comparison with another row. */
  note?: string;
}

/** Settings and results shared by the sections of one run. */
export interface BenchContext {
  /** Minimum duration of one timed submission, in seconds. */
  minSeconds: number;
  /** Timed rounds after calibration; a row reports its fastest. */
  repeats: number;
  /** Largest square size at which the naive matmul is measured. */
  naiveMax: number;
  /** Square sizes of the matmul section. */
  squareSizes: number[];
  /** Whether the matmul section measures the LLaMA-7B shapes (large and slow on a CPU adapter). */
  llamaShapes: boolean;
  /** Tile sets the matmul section compares at the square sizes, as `--tiles` spells them. */
  tiles: string[];
  /** Median duration of an empty `gpu.sync()`, in milliseconds. */
  readbackMs: number;
  /** Measured f32 FMA peak in GFLOP/s, set by the peak section. */
  peakGflops?: number;
  /** Model folder or file of the model section. */
  modelPath: string;
  /** Prints a progress line to stderr. */
  log: (line: string) => void;
}

/** A benchmark section: measures something and returns its rows. */
export type BenchSection = (gpu: Gpu, ctx: BenchContext) => Promise<BenchRow[]>;

/** Result of `timeRepeated`: seconds per repetition and the repetition count of the last run. */
export interface Timing {
  seconds: number;
  reps: number;
  totalSeconds: number;
}

/**
 * Times `record` (which records GPU work without waiting) by the method in this file's header:
 * a warm-up, a one-repetition calibration, then R repetitions in one submission timed to
 * `gpu.sync()`, with R grown until the submission lasts at least `minSeconds`.
 */
export async function timeRepeated(
  gpu: Gpu,
  record: () => void,
  minSeconds: number,
): Promise<Timing> {
  record();
  await gpu.sync();

  let start = performance.now();
  record();
  await gpu.sync();
  let once = (performance.now() - start) / 1000;
  // A calibration run that already lasts the minimum is a valid measurement with R = 1.
  if (once >= minSeconds) return { seconds: once, reps: 1, totalSeconds: once };

  let reps = Math.max(1, Math.ceil(minSeconds / Math.max(once, 1e-4)));
  for (;;) {
    start = performance.now();
    for (let i = 0; i < reps; i++) record();
    await gpu.sync();
    const total = (performance.now() - start) / 1000;
    if (total >= minSeconds) return { seconds: total / reps, reps, totalSeconds: total };
    once = total / reps;
    reps = Math.max(reps + 1, Math.ceil((1.2 * minSeconds) / Math.max(once, 1e-4)));
  }
}

/** Times R = `reps` repetitions recorded into one submission, with no warm-up. */
export async function timeReps(gpu: Gpu, record: () => void, reps: number): Promise<Timing> {
  const start = performance.now();
  for (let i = 0; i < reps; i++) record();
  await gpu.sync();
  const total = (performance.now() - start) / 1000;
  return { seconds: total / reps, reps, totalSeconds: total };
}

/**
 * Times each of a group of kernels by `timeRepeated`, then `ctx.repeats` more times in rotation
 * with the same R, and returns the fastest timing of each, keyed like `group`.
 */
export async function timeBest(
  gpu: Gpu,
  group: Record<string, () => void>,
  ctx: BenchContext,
): Promise<Record<string, Timing>> {
  const best: Record<string, Timing> = {};
  for (const [key, record] of Object.entries(group)) {
    best[key] = await timeRepeated(gpu, record, ctx.minSeconds);
  }
  for (let round = 0; round < ctx.repeats; round++) {
    for (const [key, record] of Object.entries(group)) {
      const t = await timeReps(gpu, record, best[key].reps);
      if (t.seconds < best[key].seconds) best[key] = t;
    }
  }
  return best;
}

/** Returns the median duration of an empty `gpu.sync()` in milliseconds, over `samples` calls. */
export async function measureReadbackMs(gpu: Gpu, samples = 9): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < samples; i++) {
    const start = performance.now();
    await gpu.sync();
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(samples / 2)];
}

/**
 * Fills a new Float32Array with values uniform in [-1, 1) from a fast linear congruential
 * generator: benchmark inputs only need to be ordinary numbers, not good random ones.
 */
export function benchValues(n: number, seed = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** Formats rows as an aligned text table. */
export function formatTable(rows: BenchRow[]): string {
  const fmt = (v: number | undefined, digits: number) => v === undefined ? "" : v.toFixed(digits);
  const table = [
    ["section", "name", "shape", "dtype", "GFLOP/s", "GB/s", "of peak", "ms/rep", "R", "note"],
    ...rows.map((r) => [
      r.section,
      r.name,
      r.shape ?? "",
      r.dtype ?? "",
      fmt(r.gflops, 3),
      fmt(r.gbps, 3),
      r.ofPeak === undefined ? "" : `${(100 * r.ofPeak).toFixed(1)}%`,
      fmt(r.ms, 1),
      r.reps === undefined ? "" : String(r.reps),
      r.note ?? "",
    ]),
  ];
  const widths = table[0].map((_, c) => Math.max(...table.map((row) => row[c].length)));
  return table.map((row) => row.map((cell, c) => cell.padEnd(widths[c])).join("  ").trimEnd())
    .join("\n");
}

/** The sections in run order. */
export const SECTIONS: Record<string, BenchSection> = {
  peak: peakBench,
  matmul: matmulBench,
  attention: attentionBench,
  model: modelBench,
};

function parseList(value: string): number[] {
  const out = value.split(",").map((v) => Number(v.trim()));
  if (out.some((v) => !Number.isInteger(v) || v < 1)) {
    throw new Error(`invalid size list '${value}': expected positive integers separated by commas`);
  }
  return out;
}

async function main(): Promise<void> {
  const program = new Command()
    .name("bench")
    .description("Measure kernel speed on this machine's WebGPU adapter.")
    .option("--out <file>", "JSON file to write", "runs/bench.json")
    .option(
      "--sections <names>",
      `comma-separated sections to run, from: ${Object.keys(SECTIONS).join(", ")}`,
      Object.keys(SECTIONS).join(","),
    )
    .option("--min-seconds <s>", "minimum duration of one timed submission, in seconds", "0.3")
    .option(
      "--repeats <n>",
      "timed rounds per kernel after calibration; rows keep the fastest",
      "2",
    )
    .option("--sizes <list>", "square matmul sizes", "256,512,1024")
    .option("--naive-max <n>", "largest square size at which the naive matmul runs", "1024")
    .option("--no-llama", "skip the LLaMA-7B matmul shapes")
    .option(
      "--model <path>",
      "model of the model section (random demo-sized weights when it has none)",
      new URL("../demo/model", import.meta.url).pathname,
    )
    .option(
      "--tiles <list>",
      "also time the matmul at the square sizes with each of these tiles, comma-separated, each " +
        "as wgRowsxwgCols/rowsxcols/depth (for example 1x16/8x16/0,16x16/4x4/16)",
      "",
    )
    .parse(["deno", "bench", ...Deno.args]);
  const opts = program.opts();

  const names = String(opts.sections).split(",").map((s) => s.trim()).filter((s) => s);
  for (const name of names) {
    if (!SECTIONS[name]) {
      throw new Error(
        `unknown section '${name}': expected one of ${Object.keys(SECTIONS).join(", ")}`,
      );
    }
  }
  const minSeconds = Number(opts.minSeconds);
  if (!(minSeconds > 0)) throw new Error(`invalid --min-seconds '${opts.minSeconds}'`);

  const gpu = await Gpu.create();
  const log = (line: string) => console.error(line);
  log(gpu.describe());
  const repeats = Number(opts.repeats);
  if (!Number.isInteger(repeats) || repeats < 0) {
    throw new Error(`invalid --repeats '${opts.repeats}': expected an integer of 0 or more`);
  }
  const ctx: BenchContext = {
    minSeconds,
    repeats,
    naiveMax: parseList(String(opts.naiveMax))[0],
    squareSizes: parseList(String(opts.sizes)),
    llamaShapes: Boolean(opts.llama),
    tiles: String(opts.tiles).split(",").map((s) => s.trim()).filter((s) => s),
    readbackMs: await measureReadbackMs(gpu),
    modelPath: String(opts.model),
    log,
  };
  log(`readback latency (empty sync, median of 9): ${ctx.readbackMs.toFixed(1)} ms`);

  // Run in SECTIONS order whatever the order on the command line, so the peak comes first.
  const rows: BenchRow[] = [];
  for (const [name, section] of Object.entries(SECTIONS)) {
    if (!names.includes(name)) continue;
    log(`section ${name}`);
    rows.push(...await section(gpu, ctx));
  }

  console.log(formatTable(rows));
  const report = {
    date: new Date().toISOString(),
    adapter: gpu.describe(),
    info: gpu.info,
    machine: {
      os: Deno.build.os,
      arch: Deno.build.arch,
      cpus: navigator.hardwareConcurrency,
      deno: Deno.version.deno,
      loadAverage: Deno.loadavg(),
    },
    minSeconds,
    repeats,
    readbackMs: ctx.readbackMs,
    peakGflops: ctx.peakGflops,
    rows,
  };
  const out = String(opts.out);
  const slash = out.lastIndexOf("/");
  if (slash > 0) await Deno.mkdir(out.slice(0, slash), { recursive: true });
  await Deno.writeTextFile(out, JSON.stringify(report, null, 2) + "\n");
  log(`wrote ${out}`);
  gpu.destroy();
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    // Invalid options and device errors end the run with their message; a bug keeps its stack.
    if (!(e instanceof Error) || e instanceof TypeError) throw e;
    console.error(`bench: ${e.message}`);
    Deno.exit(1);
  }
}
