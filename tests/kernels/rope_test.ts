import { equal, throws } from "node:assert/strict";
import { type Gpu, KernelError, numel } from "../../kernels/device.ts";
import { ropeBackward, ropeForward, type RopeOptions, ropeTurnsSplit } from "../../kernels/rope.ts";
import type { RopeLayout } from "../../model/config.ts";
import { ropeBackwardRef, ropeForwardRef } from "../../model/reference/rope.ts";
import { assertClose, gpuTest, numericGrad, testRng } from "../helpers.ts";

type Shape4 = [number, number, number, number];

const LAYOUTS: RopeLayout[] = ["interleaved", "half"];

/** Absolute tolerance on standard normal inputs at positions below 2048 (measured error ~1e-6). */
const ATOL = 5e-6;

async function runRope(
  gpu: Gpu,
  x: Float32Array,
  shape: Shape4,
  opts: RopeOptions,
  direction: "forward" | "backward",
): Promise<Float32Array> {
  const input = gpu.upload(x, shape, "f32", "x");
  const out = gpu.tensor(shape, "f32", "out");
  if (direction === "forward") ropeForward(gpu, input, out, opts);
  else ropeBackward(gpu, input, out, opts);
  return await gpu.readF32(out);
}

for (const layout of LAYOUTS) {
  gpuTest(`rope ${layout} forward and backward`, async (gpu) => {
    const rng = testRng();
    for (const D of [8, 16, 64]) {
      for (const [B, T, H, pos0] of [[1, 1, 1, 0], [2, 7, 3, 0], [1, 5, 2, 37], [1, 9, 1, 2041]]) {
        const shape: Shape4 = [B, T, H, D];
        const opts = { layout, theta: 10000, pos0 };
        const x = rng.normals(B * T * H * D);
        const what = `${layout} shape [${shape}] pos0 ${pos0} seed ${rng.seed}`;
        const tol = { rtol: 0, atol: ATOL };
        assertClose(
          await runRope(gpu, x, shape, opts, "forward"),
          ropeForwardRef(x, shape, opts),
          `forward ${what}`,
          tol,
        );
        assertClose(
          await runRope(gpu, x, shape, opts, "backward"),
          ropeBackwardRef(x, shape, opts),
          `backward ${what}`,
          tol,
        );
      }
    }
  });
}

gpuTest("rope at large positions", async (gpu) => {
  // The kernel's angle error grows with the position (about 1e-5 rad near 2^20), so the tolerance
  // is looser here than below position 2048.
  const rng = testRng();
  for (const [pos0, atol] of [[65_531, 2e-5], [1_000_003, 1e-4]]) {
    for (const layout of LAYOUTS) {
      const shape: Shape4 = [1, 3, 2, 64];
      const opts = { layout, theta: 500000, pos0 };
      const x = rng.normals(numel(shape));
      assertClose(
        await runRope(gpu, x, shape, opts, "forward"),
        ropeForwardRef(x, shape, opts),
        `forward ${layout} pos0 ${pos0} seed ${rng.seed}`,
        { rtol: 0, atol },
      );
    }
  }
});

gpuTest("rope in place", async (gpu) => {
  const rng = testRng();
  const shape: Shape4 = [2, 5, 3, 16];
  for (const layout of LAYOUTS) {
    const opts = { layout, theta: 10000, pos0: 11 };
    const x = rng.normals(numel(shape));
    const t = gpu.upload(x, shape, "f32", "x");
    ropeForward(gpu, t, t, opts);
    const forward = await gpu.readF32(t);
    assertClose(forward, ropeForwardRef(x, shape, opts), `in-place forward ${layout}`, {
      rtol: 0,
      atol: ATOL,
    });
    ropeBackward(gpu, t, t, opts);
    assertClose(await gpu.readF32(t), x, `in-place backward restores x ${layout}`, {
      rtol: 0,
      atol: ATOL,
    });
  }
});

gpuTest("rope half layout equals permuted interleaved", async (gpu) => {
  // Interleaved dims (2i, 2i+1) of a head are dims (i, i + D/2) of the Hugging Face head.
  const rng = testRng();
  const shape: Shape4 = [1, 7, 3, 16];
  const [B, T, H, D] = shape;
  const toHalf = (i: number) => (i % 2 === 0 ? i / 2 : (i - 1) / 2 + D / 2);
  const interleaved = rng.normals(numel(shape));
  const half = new Float32Array(interleaved.length);
  for (let row = 0; row < B * T * H; row++) {
    for (let i = 0; i < D; i++) half[row * D + toHalf(i)] = interleaved[row * D + i];
  }
  const pos0 = 3;
  const outInterleaved = await runRope(
    gpu,
    interleaved,
    shape,
    { layout: "interleaved", theta: 10000, pos0 },
    "forward",
  );
  const outHalf = await runRope(
    gpu,
    half,
    shape,
    { layout: "half", theta: 10000, pos0 },
    "forward",
  );
  const outHalfAsInterleaved = new Float32Array(outHalf.length);
  for (let row = 0; row < B * T * H; row++) {
    for (let i = 0; i < D; i++) {
      outHalfAsInterleaved[row * D + i] = outHalf[row * D + toHalf(i)];
    }
  }
  assertClose(outHalfAsInterleaved, outInterleaved, `half vs interleaved seed ${rng.seed}`, {
    rtol: 0,
    atol: 1e-6,
  });
});

Deno.test("rope reference backward matches central differences", () => {
  const rng = testRng();
  const shape: Shape4 = [1, 3, 2, 8];
  for (const layout of LAYOUTS) {
    const opts = { layout, theta: 10000, pos0: 5 };
    const x = Float64Array.from(rng.normals(numel(shape)));
    const g = rng.normals(numel(shape));
    const loss = () => ropeForwardRef(x, shape, opts).reduce((s, v, i) => s + v * g[i], 0);
    assertClose(
      ropeBackwardRef(g, shape, opts),
      numericGrad(loss, x),
      `dx ${layout} seed ${rng.seed}`,
      { rtol: 1e-6, atol: 1e-8 },
    );
  }
});

Deno.test("rope turns split is exact enough", () => {
  for (const [D, theta] of [[64, 10000], [128, 500000], [8, 1e6]]) {
    const split = ropeTurnsSplit(D, theta);
    for (let i = 0; i < D / 2; i++) {
      const hi = split[2 * i];
      const lo = split[2 * i + 1];
      const turns = theta ** (-2 * i / D) / (2 * Math.PI);
      // hi has at most 12 significant bits: hi * 2^k is an integer below 2^12 for some k.
      const k = 11 - Math.floor(Math.log2(hi));
      const scaled = hi * 2 ** k;
      equal(Number.isInteger(scaled) && scaled < 4096, true, `hi ${hi} of pair ${i}, D ${D}`);
      const error = Math.abs(hi + lo - turns) / turns;
      equal(error < 2 ** -35, true, `relative error ${error} of pair ${i}, D ${D}`);
    }
  }
});

gpuTest("rope rejects bad shapes and options", async (gpu) => {
  const opts = { layout: "half" as const, theta: 10000, pos0: 0 };
  const x = gpu.tensor([1, 3, 2, 8], "f32", "x");
  throws(
    () => ropeForward(gpu, x, gpu.tensor([1, 3, 2, 6], "f32", "narrow out"), opts),
    KernelError,
  );
  throws(
    () => ropeForward(gpu, gpu.tensor([3, 2, 8], "f32", "3d"), x, opts),
    /\(B, T, nHeads, D\)/,
  );
  const odd = gpu.tensor([1, 3, 2, 7], "f32", "odd");
  throws(() => ropeForward(gpu, odd, odd, opts), /must be even/);
  throws(() => ropeBackward(gpu, x, x, { ...opts, pos0: -1 }), /positions/);
  throws(() => ropeBackward(gpu, x, x, { ...opts, pos0: 2 ** 24 - 2 }), /positions/);
  throws(() => ropeForward(gpu, x, x, { ...opts, theta: 0 }), /theta/);
  throws(
    () => ropeForward(gpu, x, x, { ...opts, layout: "rotated" as RopeLayout }),
    /layout/,
  );
  await gpu.sync();
});
