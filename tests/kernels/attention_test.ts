import assert from "node:assert/strict";
import type { Gpu, Tensor } from "../../kernels/device.ts";
import {
  attentionBackward,
  type AttentionBackwardArgs,
  attentionForward,
  type AttentionForwardArgs,
  type AttentionPath,
  attentionPath,
} from "../../kernels/attention.ts";
import {
  attentionBackwardRef,
  type AttentionDims,
  attentionForwardRef,
  type AttentionRefInputs,
} from "../../model/reference/attention.ts";
import { assertClose, gpuTest, numericGrad, testRng } from "../helpers.ts";

// float32 kernels against float64. Forward sums up to ~40 products per element. Backward also sums
// over queries, heads and batch rows, so it gets the looser relative bound.
const FORWARD_TOL = { rtol: 1e-5, atol: 2e-6 };
const BACKWARD_TOL = { rtol: 1e-4, atol: 1e-5 };

interface Inputs {
  x: AttentionRefInputs & { q: Float32Array; k: Float32Array; v: Float32Array };
  pk: Float32Array;
  pv: Float32Array;
  gate: Float32Array;
  dOut: Float32Array;
}

function randomInputs(rng: ReturnType<typeof testRng>, d: AttentionDims, gateScale = 1): Inputs {
  const { B, T, S, H, Hkv, D, L } = d;
  const x = {
    q: rng.normals(B * T * H * D),
    k: rng.normals(B * S * Hkv * D),
    v: rng.normals(B * S * Hkv * D),
  };
  const pk = rng.normals(L * Hkv * D);
  const pv = rng.normals(L * Hkv * D);
  const gate = rng.uniforms(H, -gateScale, gateScale);
  const dOut = rng.normals(B * T * H * D);
  return { x: { ...x, pk, pv, gate }, pk, pv, gate, dOut };
}

interface GpuTensors {
  forward: AttentionForwardArgs;
  backward: AttentionBackwardArgs;
}

/** Uploads the inputs and allocates outputs; `withPrompt` false leaves the prompt out entirely. */
function uploadCase(
  gpu: Gpu,
  d: AttentionDims,
  inp: Inputs,
  withPrompt: boolean,
  path: AttentionPath,
): GpuTensors {
  const { B, T, S, H, Hkv, D, L } = d;
  const qShape = [B, T, H, D];
  const kvShape = [B, S, Hkv, D];
  const q = gpu.upload(inp.x.q, qShape, "f32", "q");
  const k = gpu.upload(inp.x.k, kvShape, "f32", "k");
  const v = gpu.upload(inp.x.v, kvShape, "f32", "v");
  const out = gpu.tensor(qShape, "f32", "out");
  const lse = gpu.tensor([B, H, T], "f32", "lse");
  const promptLse = gpu.tensor([B, H, T], "f32", "promptLse");
  const prompt = withPrompt
    ? {
      keys: gpu.upload(inp.pk, [L, Hkv, D], "f32", "pk"),
      values: gpu.upload(inp.pv, [L, Hkv, D], "f32", "pv"),
      gate: gpu.upload(inp.gate, [H], "f32", "gate"),
    }
    : undefined;
  const dPrompt = withPrompt
    ? {
      keys: gpu.tensor([L, Hkv, D], "f32", "dpk"),
      values: gpu.tensor([L, Hkv, D], "f32", "dpv"),
      gate: gpu.tensor([H], "f32", "dgate"),
    }
    : undefined;
  const pos0 = d.pos0;
  return {
    forward: {
      q,
      k,
      v,
      out,
      pos0,
      prompt,
      lse,
      promptLse: withPrompt ? promptLse : undefined,
      path,
    },
    backward: {
      q,
      k,
      v,
      out,
      dOut: gpu.upload(inp.dOut, qShape, "f32", "dOut"),
      lse,
      pos0,
      prompt,
      promptLse: withPrompt ? promptLse : undefined,
      dq: gpu.tensor(qShape, "f32", "dq"),
      dk: gpu.tensor(kvShape, "f32", "dk"),
      dv: gpu.tensor(kvShape, "f32", "dv"),
      dPrompt,
      path,
    },
  };
}

function describe(d: AttentionDims): string {
  return `B=${d.B} T=${d.T} S=${d.S} H=${d.H} Hkv=${d.Hkv} D=${d.D} L=${d.L} pos0=${d.pos0}`;
}

// The direct path (the default on this CI's software adapter) runs every case. The tiled path, for
// GPUs, compiles a pipeline per head size, which takes seconds each on lavapipe, so its cases
// share D = 16 except for the vec2 layout (D = 6) and the small-tile path (D = 256).
const CASES: (AttentionDims & { paths: AttentionPath[] })[] = [
  { B: 2, T: 5, S: 5, H: 4, Hkv: 2, D: 8, L: 3, pos0: 0, paths: ["direct"] },
  { B: 1, T: 33, S: 40, H: 2, Hkv: 2, D: 16, L: 3, pos0: 4, paths: ["direct", "tiled"] },
  { B: 2, T: 33, S: 33, H: 2, Hkv: 1, D: 64, L: 0, pos0: 0, paths: ["direct"] },
  { B: 2, T: 33, S: 33, H: 4, Hkv: 2, D: 16, L: 3, pos0: 0, paths: ["tiled"] },
  // Decode: one query at position 9 of a 12-slot cache.
  { B: 2, T: 1, S: 12, H: 4, Hkv: 2, D: 64, L: 3, pos0: 9, paths: ["direct"] },
  { B: 2, T: 1, S: 12, H: 4, Hkv: 2, D: 16, L: 3, pos0: 9, paths: ["tiled"] },
  { B: 1, T: 5, S: 9, H: 3, Hkv: 3, D: 16, L: 0, pos0: 2, paths: ["direct", "tiled"] },
  { B: 1, T: 33, S: 33, H: 4, Hkv: 1, D: 8, L: 3, pos0: 0, paths: ["direct"] },
  // More prompt positions than one key block, and a head size that is not a multiple of 4.
  { B: 1, T: 5, S: 7, H: 2, Hkv: 1, D: 6, L: 35, pos0: 1, paths: ["direct", "tiled"] },
  // Large heads take the small-tile path.
  { B: 1, T: 3, S: 5, H: 2, Hkv: 1, D: 256, L: 3, pos0: 2, paths: ["direct", "tiled"] },
];

const PATHS: AttentionPath[] = ["direct", "tiled"];

for (const path of PATHS) {
  for (const d of CASES.filter((c) => c.paths.includes(path))) {
    gpuTest(`attention ${path} forward and backward, ${describe(d)}`, async (gpu) => {
      const rng = testRng();
      const what = `${path} ${describe(d)} seed ${rng.seed}`;
      const inp = randomInputs(rng, d);
      const t = uploadCase(gpu, d, inp, d.L > 0, path);
      attentionForward(gpu, t.forward);
      attentionBackward(gpu, t.backward);

      const ref = attentionForwardRef(d, inp.x);
      assertClose(await gpu.readF32(t.forward.out), ref.out, `out ${what}`, FORWARD_TOL);
      assertClose(await gpu.readF32(t.forward.lse!), ref.lse, `lse ${what}`, FORWARD_TOL);
      if (d.L > 0) {
        const promptLse = await gpu.readF32(t.forward.promptLse!);
        assertClose(promptLse, ref.promptLse, `promptLse ${what}`, FORWARD_TOL);
      }

      const g = attentionBackwardRef(d, inp.x, inp.dOut);
      const b = t.backward;
      assertClose(await gpu.readF32(b.dq), g.dq, `dq ${what}`, BACKWARD_TOL);
      assertClose(await gpu.readF32(b.dk), g.dk, `dk ${what}`, BACKWARD_TOL);
      assertClose(await gpu.readF32(b.dv), g.dv, `dv ${what}`, BACKWARD_TOL);
      if (d.L > 0) {
        assertClose(await gpu.readF32(b.dPrompt!.keys), g.dpk, `dpk ${what}`, BACKWARD_TOL);
        assertClose(await gpu.readF32(b.dPrompt!.values), g.dpv, `dpv ${what}`, BACKWARD_TOL);
        assertClose(await gpu.readF32(b.dPrompt!.gate), g.dgate, `dgate ${what}`, BACKWARD_TOL);
      }
    });
  }
}

for (const path of PATHS) {
  gpuTest(`attention ${path} forward without saved lse`, async (gpu) => {
    const rng = testRng();
    const d: AttentionDims = { B: 1, T: 5, S: 8, H: 2, Hkv: 1, D: 16, L: 3, pos0: 3 };
    const inp = randomInputs(rng, d);
    const t = uploadCase(gpu, d, inp, true, path);
    attentionForward(gpu, { ...t.forward, lse: undefined, promptLse: undefined });
    const ref = attentionForwardRef(d, inp.x);
    assertClose(
      await gpu.readF32(t.forward.out),
      ref.out,
      `out ${path} seed ${rng.seed}`,
      FORWARD_TOL,
    );
  });

  gpuTest(`attention ${path} backward accumulates into gradients`, async (gpu) => {
    const rng = testRng();
    const d: AttentionDims = { B: 2, T: 6, S: 8, H: 4, Hkv: 2, D: 16, L: 3, pos0: 2 };
    const inp = randomInputs(rng, d);
    const t = uploadCase(gpu, d, inp, true, path);
    const b = t.backward;
    const targets: [Tensor, number][] = [
      [b.dq, inp.x.q.length],
      [b.dk, inp.x.k.length],
      [b.dv, inp.x.v.length],
      [b.dPrompt!.keys, inp.pk.length],
      [b.dPrompt!.values, inp.pv.length],
      [b.dPrompt!.gate, d.H],
    ];
    const initial = targets.map(([tensor, n]) => {
      const values = rng.normals(n);
      gpu.write(tensor, values);
      return values;
    });
    attentionForward(gpu, t.forward);
    attentionBackward(gpu, { ...b, accumulate: true });

    const g = attentionBackwardRef(d, inp.x, inp.dOut);
    const grads = [g.dq, g.dk, g.dv, g.dpk, g.dpv, g.dgate];
    for (let i = 0; i < targets.length; i++) {
      const expected = grads[i].map((x, j) => x + initial[i][j]);
      const name = targets[i][0].label;
      const actual = await gpu.readF32(targets[i][0]);
      assertClose(actual, expected, `${name} ${path} seed ${rng.seed}`, BACKWARD_TOL);
    }
  });

  gpuTest(`attention ${path} with zero gates equals plain attention`, async (gpu) => {
    const rng = testRng();
    const d: AttentionDims = { B: 2, T: 33, S: 37, H: 4, Hkv: 2, D: 16, L: 3, pos0: 4 };
    const inp = randomInputs(rng, d);
    inp.gate.fill(0);
    const plain = uploadCase(gpu, d, inp, false, path);
    const adapted = uploadCase(gpu, d, inp, true, path);
    for (const t of [plain, adapted]) {
      attentionForward(gpu, t.forward);
      attentionBackward(gpu, t.backward);
    }

    // Same bits, not merely close: the prompt part is multiplied by tanh(0) = 0.
    const plainOut = await gpu.readF32(plain.forward.out);
    const adaptedOut = await gpu.readF32(adapted.forward.out);
    assert.deepStrictEqual(new Uint32Array(adaptedOut.buffer), new Uint32Array(plainOut.buffer));
    const plainLse = await gpu.readF32(plain.forward.lse!);
    const adaptedLse = await gpu.readF32(adapted.forward.lse!);
    assert.deepStrictEqual(adaptedLse, plainLse);

    for (const name of ["dq", "dk", "dv"] as const) {
      const a = await gpu.readF32(adapted.backward[name]);
      const p = await gpu.readF32(plain.backward[name]);
      const differing = a.findIndex((x, i) => x !== p[i]);
      assert.equal(
        differing,
        -1,
        `${name} element ${differing}: ${a[differing]} vs ${p[differing]}`,
      );
    }
    const dPrompt = adapted.backward.dPrompt!;
    const dpk = await gpu.readF32(dPrompt.keys);
    const dpv = await gpu.readF32(dPrompt.values);
    assert.ok(
      dpk.every((x) => x === 0),
      `dpk is not all zero: max ${Math.max(...dpk.map(Math.abs))}`,
    );
    assert.ok(
      dpv.every((x) => x === 0),
      `dpv is not all zero: max ${Math.max(...dpv.map(Math.abs))}`,
    );

    // The first gradient reaches the gates alone.
    const g = attentionBackwardRef(d, inp.x, inp.dOut);
    assert.ok(g.dgate.some((x) => Math.abs(x) > 1e-3), "reference gate gradient is zero");
    assertClose(
      await gpu.readF32(dPrompt.gate),
      g.dgate,
      `dgate ${path} seed ${rng.seed}`,
      BACKWARD_TOL,
    );
  });
}

gpuTest("attention backward reference matches central differences", () => {
  const rng = testRng();
  const d: AttentionDims = { B: 2, T: 3, S: 6, H: 4, Hkv: 2, D: 4, L: 2, pos0: 2 };
  const inp = randomInputs(rng, d);
  const x = {
    q: Float64Array.from(inp.x.q),
    k: Float64Array.from(inp.x.k),
    v: Float64Array.from(inp.x.v),
    pk: Float64Array.from(inp.pk),
    pv: Float64Array.from(inp.pv),
    gate: Float64Array.from(inp.gate),
  };
  const loss = () => {
    const out = attentionForwardRef(d, x).out;
    let sum = 0;
    for (let i = 0; i < out.length; i++) sum += out[i] * inp.dOut[i];
    return sum;
  };
  const g = attentionBackwardRef(d, x, inp.dOut);
  const tol = { rtol: 1e-6, atol: 1e-8 };
  const what = `seed ${rng.seed}`;
  assertClose(g.dq, numericGrad(loss, x.q), `dq ${what}`, tol);
  assertClose(g.dk, numericGrad(loss, x.k), `dk ${what}`, tol);
  assertClose(g.dv, numericGrad(loss, x.v), `dv ${what}`, tol);
  assertClose(g.dpk, numericGrad(loss, x.pk), `dpk ${what}`, tol);
  assertClose(g.dpv, numericGrad(loss, x.pv), `dpv ${what}`, tol);
  assertClose(g.dgate, numericGrad(loss, x.gate), `dgate ${what}`, tol);
  // No query attends to keys past pos0 + T - 1.
  assert.ok(g.dk.slice((d.pos0 + d.T) * d.Hkv * d.D, d.S * d.Hkv * d.D).every((v) => v === 0));
  return Promise.resolve();
});

gpuTest("attention rejects mismatched shapes", async (gpu) => {
  const d: AttentionDims = { B: 1, T: 5, S: 5, H: 2, Hkv: 1, D: 8, L: 3, pos0: 0 };
  const inp = randomInputs(testRng(), d);
  const t = uploadCase(gpu, d, inp, true, "direct");
  const wrongOut = gpu.tensor([1, 5, 2, 4], "f32", "out");
  assert.throws(
    () => attentionForward(gpu, { ...t.forward, out: wrongOut }),
    /attentionForward: tensor 'out' has shape \[1, 5, 2, 4\], expected \[1, 5, 2, 8\]/,
  );
  const wrongGate = gpu.tensor([3], "f32", "gate");
  assert.throws(
    () =>
      attentionForward(gpu, { ...t.forward, prompt: { ...t.forward.prompt!, gate: wrongGate } }),
    /attentionForward: tensor 'gate' has shape \[3\], expected \[2\]/,
  );
  assert.throws(
    () => attentionForward(gpu, { ...t.forward, pos0: 1 }),
    /attentionForward: pos0 = 1 with T = 5 queries needs pos0 \+ T <= S = 5 keys/,
  );
  const threeKvHeads = gpu.tensor([1, 5, 3, 8], "f32", "k");
  assert.throws(
    () => attentionForward(gpu, { ...t.forward, k: threeKvHeads, v: threeKvHeads }),
    /attentionForward: 2 query heads are not a multiple of 3 kv heads/,
  );
  const wrongDk = gpu.tensor([1, 4, 1, 8], "f32", "dk");
  assert.throws(
    () => attentionBackward(gpu, { ...t.backward, dk: wrongDk }),
    /attentionBackward: tensor 'dk' has shape \[1, 4, 1, 8\], expected \[1, 5, 1, 8\]/,
  );
  assert.throws(
    () => attentionBackward(gpu, { ...t.backward, promptLse: undefined }),
    /attentionBackward: a prompt needs promptLse from forward/,
  );
  await gpu.sync();
});

gpuTest("attention path follows adapter kind", (gpu) => {
  assert.equal(attentionPath({ ...gpu.info, isSoftware: true }), "direct");
  assert.equal(attentionPath({ ...gpu.info, isSoftware: false }), "tiled");
  return Promise.resolve();
});
