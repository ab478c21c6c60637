import assert from "node:assert/strict";
import { loadLlama2c } from "../model/loaders/llama2c.ts";
import { fixture, fixtureTest, testRng } from "./helpers.ts";

/** Reads every float of a llama2.c file after the header, independently of the loader. */
function fileFloats(path: string): Float32Array {
  const bytes = Deno.readFileSync(path);
  return new Float32Array(bytes.buffer.slice(28));
}

fixtureTest("llama2c loads stories260K config", async () => {
  const w = await loadLlama2c(fixture("models/stories260K.bin"));
  assert.equal(w.format, "llama2.c");
  assert.deepEqual(w.config, {
    dim: 64,
    hiddenDim: 172,
    nLayers: 5,
    nHeads: 8,
    nKvHeads: 4,
    vocabSize: 512,
    maxSeqLen: 512,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeLayout: "interleaved",
    tiedEmbeddings: true,
    bosId: 1,
    eosIds: [2],
  });
  assert.equal(w.output, null);
  assert.equal(w.layers.length, 5);
  assert.deepEqual(w.layers[4].wk.shape, [32, 64]);
  assert.deepEqual(w.layers[4].w2.shape, [64, 172]);
  assert.equal(w.layers[2].wq.name, "layers.2.attention.wq");
  assert.equal(w.layers[2].wq.readHalf, undefined);
});

fixtureTest("llama2c tensors match file offsets", async () => {
  const path = fixture("models/stories260K.bin");
  const w = await loadLlama2c(path);
  const all = fileFloats(path);
  const C = 64, F = 172, L = 5, V = 512, KV = 32;
  // Offsets in floats, written out from the format description.
  const emb = 0;
  const rmsAtt = emb + V * C;
  const wq = rmsAtt + L * C;
  const wk = wq + L * C * C;
  const wv = wk + L * KV * C;
  const wo = wv + L * KV * C;
  const rmsFfn = wo + L * C * C;
  const w1 = rmsFfn + L * C;
  const w2 = w1 + L * F * C;
  const w3 = w2 + L * C * F;
  const rmsFinal = w3 + L * F * C;
  const slice = (start: number, n: number) => all.subarray(start, start + n);

  assert.deepEqual(await w.tokEmbedding.readF32(), slice(emb, V * C));
  assert.deepEqual(await w.norm.readF32(), slice(rmsFinal, C));
  const l = 3;
  assert.deepEqual(await w.layers[l].attnNorm.readF32(), slice(rmsAtt + l * C, C));
  assert.deepEqual(await w.layers[l].wq.readF32(), slice(wq + l * C * C, C * C));
  assert.deepEqual(await w.layers[l].wk.readF32(), slice(wk + l * KV * C, KV * C));
  assert.deepEqual(await w.layers[l].wv.readF32(), slice(wv + l * KV * C, KV * C));
  assert.deepEqual(await w.layers[l].wo.readF32(), slice(wo + l * C * C, C * C));
  assert.deepEqual(await w.layers[l].ffnNorm.readF32(), slice(rmsFfn + l * C, C));
  assert.deepEqual(await w.layers[l].w1.readF32(), slice(w1 + l * F * C, F * C));
  assert.deepEqual(await w.layers[l].w2.readF32(), slice(w2 + l * C * F, C * F));
  assert.deepEqual(await w.layers[l].w3.readF32(), slice(w3 + l * F * C, F * C));
});

fixtureTest("llama2c loads aidreams260K", async () => {
  const w = await loadLlama2c(fixture("models/aidreams260K.bin"));
  assert.equal(w.config.nLayers, 4);
  assert.equal(w.config.nHeads, 4);
  assert.equal(w.config.maxSeqLen, 128);
  assert.equal(w.layers.length, 4);
});

/** Writes a random llama2.c checkpoint to a temp file and returns its path and floats. */
async function writeSynthetic(
  header: number[],
  floatCount: number,
  extraBytes = 0,
): Promise<{ path: string; floats: Float32Array }> {
  const rng = testRng();
  const floats = Float32Array.from(rng.normals(floatCount));
  const bytes = new Uint8Array(28 + 4 * floatCount + extraBytes);
  const view = new DataView(bytes.buffer);
  header.forEach((v, i) => view.setInt32(4 * i, v, true));
  bytes.set(new Uint8Array(floats.buffer), 28);
  const dir = await Deno.makeTempDir();
  const path = `${dir}/model.bin`;
  await Deno.writeFile(path, bytes);
  return { path, floats };
}

/** Float count of a llama2.c file with dim C, hidden F, L layers, kv width KV, vocab V, seq T. */
function llama2cFloats(
  C: number,
  F: number,
  L: number,
  KV: number,
  V: number,
  T: number,
  D: number,
) {
  return V * C + L * (2 * C + 2 * C * C + 2 * KV * C + 3 * F * C) + C + T * D;
}

Deno.test("llama2c negative vocab reads classifier", async () => {
  const C = 8, F = 12, L = 2, H = 2, HKV = 1, V = 10, T = 3;
  const D = C / H;
  const n = llama2cFloats(C, F, L, HKV * D, V, T, D) + V * C;
  const { path, floats } = await writeSynthetic([C, F, L, H, HKV, -V, T], n);
  const w = await loadLlama2c(path);
  assert.equal(w.config.vocabSize, V);
  assert.equal(w.config.tiedEmbeddings, false);
  assert.ok(w.output);
  assert.deepEqual(w.output.shape, [V, C]);
  assert.deepEqual(await w.output.readF32(), floats.subarray(n - V * C));
  assert.deepEqual(await w.tokEmbedding.readF32(), floats.subarray(0, V * C));
  await Deno.remove(path);
});

async function loadError(path: string): Promise<string> {
  const err = await loadLlama2c(path).then(
    () => assert.fail(`loading ${path} succeeded`),
    (e: Error) => e,
  );
  return err.message;
}

fixtureTest("llama2c rejects truncated file", async () => {
  const bytes = await Deno.readFile(fixture("models/stories260K.bin"));
  const dir = await Deno.makeTempDir();
  const path = `${dir}/stories260K.bin`;
  // Cut inside layer 1's w2.
  const C = 64, F = 172, L = 5, V = 512, KV = 32;
  const w2Start = V * C + L * C + 2 * L * C * C + 2 * L * KV * C + L * C + L * F * C;
  await Deno.writeFile(path, bytes.subarray(0, 28 + 4 * (w2Start + C * F + 100)));
  const message = await loadError(path);
  assert.match(message, new RegExp(`^${path}: `));
  assert.match(message, /truncated/);
  assert.match(message, /tensor "layers\.1\.feed_forward\.w2"/);

  await Deno.writeFile(path, bytes.subarray(0, 20));
  assert.match(await loadError(path), /shorter than the 28-byte llama2\.c header/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("llama2c rejects trailing bytes", async () => {
  const C = 8, F = 12, L = 2, H = 2, HKV = 2, V = 10, T = 3;
  const D = C / H;
  const n = llama2cFloats(C, F, L, HKV * D, V, T, D);
  const { path } = await writeSynthetic([C, F, L, H, HKV, V, T], n, 12);
  assert.match(await loadError(path), /12 bytes after the last tensor/);
  await Deno.remove(path);
});

Deno.test("llama2c rejects invalid header", async () => {
  const { path } = await writeSynthetic([10, 12, 2, 3, 1, 10, 3], 100);
  assert.match(await loadError(path), /dim 10 is not divisible by the 3 attention heads/);
  const versioned = await writeSynthetic([0x616b3432, 1, 0, 0, 0, 0, 0], 100);
  assert.match(await loadError(versioned.path), /export version 1 is not supported/);
  await Deno.remove(path);
  await Deno.remove(versioned.path);
});

Deno.test("llama2c reports missing file", async () => {
  const dir = await Deno.makeTempDir();
  await assert.rejects(loadLlama2c(`${dir}/absent.bin`), /absent\.bin: file not found/);
  await Deno.remove(dir);
});
