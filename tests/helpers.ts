/**
 * Shared test helpers: the fixtures folder, one GPU device per test file, fresh random inputs and
 * comparisons that report the worst element.
 */
import { Gpu } from "../kernels/device.ts";
import { Rng } from "../model/rng.ts";

/** Folder of the shared fixtures; `LLAMA_ADAPTER_FIXTURES` overrides the default. */
export const FIXTURES = Deno.env.get("LLAMA_ADAPTER_FIXTURES") ??
  new URL("../../shared/fixtures", import.meta.url).pathname;

function fixturesPresent(): boolean {
  try {
    return Deno.statSync(FIXTURES).isDirectory;
  } catch {
    return false;
  }
}

/** True when the fixtures folder exists. */
export const HAVE_FIXTURES = fixturesPresent();

let warned = false;

/** Returns the path of a file in the fixtures folder. */
export function fixture(path: string): string {
  return `${FIXTURES}/${path}`;
}

/** Registers a test that needs the fixtures; it is ignored, with one line saying why, without them. */
export function fixtureTest(name: string, fn: () => Promise<void> | void): void {
  if (!HAVE_FIXTURES && !warned) {
    warned = true;
    console.error(
      `fixtures not found at ${FIXTURES}: tests that need them are skipped ` +
        `(set LLAMA_ADAPTER_FIXTURES to the shared fixtures folder)`,
    );
  }
  Deno.test({ name, ignore: !HAVE_FIXTURES, sanitizeOps: false, sanitizeResources: false, fn });
}

let gpuPromise: Promise<Gpu> | null = null;

/** Returns the GPU device shared by the tests of one file. */
export function testGpu(): Promise<Gpu> {
  if (!gpuPromise) gpuPromise = Gpu.create();
  return gpuPromise;
}

/** Registers a test that uses the GPU; WebGPU keeps ops alive, so sanitizers are off. */
export function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void>): void {
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => fn(await testGpu()),
  });
}

/** Registers a GPU test that also needs the fixtures. */
export function gpuFixtureTest(name: string, fn: (gpu: Gpu) => Promise<void>): void {
  fixtureTest(name, async () => fn(await testGpu()));
}

/** A seeded generator for one test; the seed is printed on failure through `assertClose`. */
export function testRng(seed = Date.now() % 1_000_000): Rng & { seed: number } {
  const rng = new Rng(seed) as Rng & { seed: number };
  rng.seed = seed;
  return rng;
}

/**
 * Asserts |actual - expected| <= atol + rtol * |expected| element-wise. On failure the message
 * names `what`, the worst index, both values and the max differences.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  { rtol = 1e-5, atol = 1e-6 }: { rtol?: number; atol?: number } = {},
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length}, expected ${expected.length}`);
  }
  let worst = -1;
  let worstExcess = 0;
  let maxAbs = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    const diff = Math.abs(a - e);
    if (!Number.isFinite(a) && a !== e) {
      throw new Error(`${what}: element ${i} is ${a}, expected ${e}`);
    }
    maxAbs = Math.max(maxAbs, diff);
    const excess = diff - (atol + rtol * Math.abs(e));
    if (excess > worstExcess || (worst < 0 && excess > 0)) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
        `(max abs diff ${maxAbs.toExponential(3)}, rtol ${rtol}, atol ${atol})`,
    );
  }
}

/** Returns the max absolute difference of two arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/**
 * Returns the central-difference derivative of `f` with respect to each of `x`'s elements
 * (x is perturbed in place and restored).
 */
export function numericGrad(f: () => number, x: Float64Array, eps = 1e-6): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const old = x[i];
    x[i] = old + eps;
    const up = f();
    x[i] = old - eps;
    const down = f();
    x[i] = old;
    g[i] = (up - down) / (2 * eps);
  }
  return g;
}
