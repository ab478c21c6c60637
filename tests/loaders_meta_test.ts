import assert from "node:assert/strict";
import { packHalf } from "../kernels/pack.ts";
import { loadLlama2c } from "../model/loaders/llama2c.ts";
import { loadMeta, metaHiddenDim } from "../model/loaders/meta.ts";
import type { ModelWeights, WeightSource } from "../model/weights.ts";
import { fixture, fixtureTest, testRng } from "./helpers.ts";
import { pickle, type TableTensor, tensorTable, zip } from "./loaders_writers.ts";

const STORIES = "models/stories260K.bin";
const META_F16 = "models/stories260K-meta-f16";
const META_BF16_2 = "models/stories260K-meta-bf16-2shards";

function tensors(w: ModelWeights): [string, WeightSource][] {
  const list: [string, WeightSource][] = [["tokEmbedding", w.tokEmbedding]];
  w.layers.forEach((layer, l) => {
    for (const [field, source] of Object.entries(layer)) {
      list.push([`layers.${l}.${field}`, source]);
    }
  });
  list.push(["norm", w.norm]);
  return list;
}

/** Checks every tensor against the llama2.c weights rounded to `dtype`, bit for bit. */
async function assertRoundedEqual(w: ModelWeights, dtype: "f16" | "bf16") {
  const ref = await loadLlama2c(fixture(STORIES));
  const refTensors = tensors(ref);
  // The Meta output projection is a copy of the shared llama2.c embedding.
  const pairs = [...tensors(w), ["output", w.output!] as [string, WeightSource]];
  refTensors.push(["output", ref.tokEmbedding]);
  for (const [i, [label, source]] of pairs.entries()) {
    assert.equal(source.dtype, dtype, label);
    assert.deepEqual(source.shape, refTensors[i][1].shape, label);
    const refF32 = await refTensors[i][1].readF32();
    assert.deepEqual(await source.readHalf!(), packHalf(refF32, dtype), label);
    const f32 = await source.readF32();
    const relative = dtype === "bf16" ? 2 ** -8 : 2 ** -11;
    for (let k = 0; k < f32.length; k++) {
      // Half-ulp relative error, plus f16's subnormal spacing for tiny values.
      if (Math.abs(f32[k] - refF32[k]) > Math.abs(refF32[k]) * relative + 2 ** -25) {
        assert.fail(`${label}[${k}]: ${f32[k]} is not ${refF32[k]} rounded to ${dtype}`);
      }
    }
  }
}

fixtureTest("meta f16 loads config", async () => {
  const w = await loadMeta(fixture(META_F16));
  assert.equal(w.format, "meta");
  assert.deepEqual(w.config, {
    dim: 64,
    hiddenDim: 172,
    nLayers: 5,
    nHeads: 8,
    nKvHeads: 4,
    vocabSize: 512,
    maxSeqLen: 2048,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeLayout: "interleaved",
    tiedEmbeddings: false,
    bosId: 1,
    eosIds: [2],
  });
  assert.equal((await loadMeta(fixture(META_F16), { maxSeqLen: 512 })).config.maxSeqLen, 512);
});

fixtureTest("meta f16 equals rounded llama2c", async () => {
  await assertRoundedEqual(await loadMeta(fixture(META_F16)), "f16");
});

fixtureTest("meta bf16 two shards merge", async () => {
  const w = await loadMeta(fixture(META_BF16_2));
  assert.equal(w.config.hiddenDim, 172);
  assert.match(w.layers[0].wq.file, /consolidated\.00\.pth, .*consolidated\.01\.pth$/);
  await assertRoundedEqual(w, "bf16");
});

Deno.test("meta hidden size formula", () => {
  assert.equal(metaHiddenDim(64, 4), 172);
  assert.equal(metaHiddenDim(4096, 256), 11008); // LLaMA 7B
  assert.equal(metaHiddenDim(8192, 4096, 1.3), 28672); // LLaMA 2 70B
  assert.equal(metaHiddenDim(4096, 1024, 1.3), 14336); // Llama 3 8B
});

// ---- Synthetic checkpoints ----

interface SynthTensor {
  name: string;
  shape: number[];
  values: Float32Array;
  /** Store the transpose and describe the tensor as a strided view of it. */
  transposed?: boolean;
}

/** Writes a one-shard f32 Meta checkpoint into a new temp dir; returns the dir. */
async function writeMeta(
  params: Record<string, unknown>,
  list: SynthTensor[],
  options: { method?: number; pickleBytes?: Uint8Array; zip64?: boolean } = {},
): Promise<string> {
  const entries = [];
  const table: TableTensor[] = [];
  for (const [i, t] of list.entries()) {
    let data = t.values;
    let stride = t.shape.length === 2 ? [t.shape[1], 1] : [1];
    if (t.transposed) {
      const [rows, cols] = t.shape;
      data = new Float32Array(rows * cols);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) data[c * rows + r] = t.values[r * cols + c];
      }
      stride = [1, rows];
    }
    table.push({
      name: t.name,
      key: String(i),
      storageClass: "FloatStorage",
      storageNumel: data.length,
      offset: 0,
      shape: t.shape,
      stride,
    });
    entries.push({ name: `consolidated.00/data/${i}`, data: new Uint8Array(data.buffer) });
  }
  const pkl = options.pickleBytes ?? pickle(tensorTable(table));
  const archive = zip([
    { name: "consolidated.00/data.pkl", data: pkl, method: options.method },
    { name: "consolidated.00/byteorder", data: new TextEncoder().encode("little") },
    ...entries,
  ], { zip64: options.zip64 });
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/params.json`, JSON.stringify(params));
  await Deno.writeFile(`${dir}/consolidated.00.pth`, archive);
  return dir;
}

const SMALL = { dim: 8, n_layers: 1, n_heads: 2, n_kv_heads: 1, vocab_size: -1, multiple_of: 4 };

/** Random tensors of a 1-layer model with dim 8, hidden 24, 2 heads, 1 kv head and vocab 5. */
function smallModel(): SynthTensor[] {
  const rng = testRng();
  const t = (name: string, shape: number[]): SynthTensor => ({
    name,
    shape,
    values: Float32Array.from(rng.normals(shape.reduce((a, b) => a * b, 1))),
  });
  return [
    t("tok_embeddings.weight", [5, 8]),
    t("rope.freqs", [2]),
    t("layers.0.attention_norm.weight", [8]),
    t("layers.0.attention.wq.weight", [8, 8]),
    t("layers.0.attention.wk.weight", [4, 8]),
    t("layers.0.attention.wv.weight", [4, 8]),
    t("layers.0.attention.wo.weight", [8, 8]),
    t("layers.0.ffn_norm.weight", [8]),
    t("layers.0.feed_forward.w1.weight", [24, 8]),
    t("layers.0.feed_forward.w2.weight", [8, 24]),
    t("layers.0.feed_forward.w3.weight", [24, 8]),
    t("norm.weight", [8]),
    t("output.weight", [5, 8]),
  ];
}

async function loadError(dir: string): Promise<string> {
  const err = await loadMeta(dir).then(
    () => assert.fail(`loading ${dir} succeeded`),
    (e: Error) => e,
  );
  return err.message;
}

Deno.test("meta reads strided tensor", async () => {
  const list = smallModel();
  const w2 = list.find((t) => t.name === "layers.0.feed_forward.w2.weight")!;
  w2.transposed = true;
  const dir = await writeMeta(SMALL, list);
  const w = await loadMeta(dir);
  assert.equal(w.config.vocabSize, 5);
  assert.equal(w.config.hiddenDim, 24);
  assert.deepEqual(w.layers[0].w2.shape, [8, 24]);
  assert.deepEqual(await w.layers[0].w2.readF32(), w2.values);
  assert.deepEqual(await w.layers[0].w1.readF32(), list[8].values);
  assert.equal(w.layers[0].w1.readHalf, undefined);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("meta reads zip64 archive", async () => {
  const list = smallModel();
  const dir = await writeMeta(SMALL, list, { zip64: true });
  const w = await loadMeta(dir);
  assert.deepEqual(await w.tokEmbedding.readF32(), list[0].values);
  assert.deepEqual(await w.output!.readF32(), list[12].values);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("meta rejects hidden size mismatch", async () => {
  const dir = await writeMeta({ ...SMALL, multiple_of: 32 }, smallModel());
  const message = await loadError(dir);
  assert.match(message, /params\.json: dim 8, multiple_of 32 .* give hidden size 32/);
  assert.match(message, /"layers\.0\.feed_forward\.w1\.weight" .* has 24 rows/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("meta rejects missing tensor", async () => {
  const list = smallModel().filter((t) => t.name !== "layers.0.attention.wv.weight");
  const dir = await writeMeta(SMALL, list);
  const message = await loadError(dir);
  assert.match(message, /tensor "layers\.0\.attention\.wv\.weight" is missing/);
  assert.match(message, /consolidated\.00\.pth/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("meta rejects wrong shape", async () => {
  const list = smallModel();
  list[4] = { ...list[4], shape: [8, 4] };
  const dir = await writeMeta(SMALL, list);
  const message = await loadError(dir);
  assert.match(message, /consolidated\.00\.pth: tensor "layers\.0\.attention\.wk\.weight"/);
  assert.match(message, /has shape \[8, 4\], expected \[4, 8\]/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("meta rejects compressed entry", async () => {
  const dir = await writeMeta(SMALL, smallModel(), { method: 8 });
  const message = await loadError(dir);
  assert.match(message, /consolidated\.00\.pth: zip entry "consolidated\.00\/data\.pkl"/);
  assert.match(message, /is compressed \(method 8, deflate\)/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("meta rejects storage past record", async () => {
  const list = smallModel();
  const table: TableTensor[] = list.map((t, i) => ({
    name: t.name,
    key: String(i),
    storageClass: "FloatStorage",
    storageNumel: t.values.length,
    offset: 0,
    shape: t.shape,
    stride: t.shape.length === 2 ? [t.shape[1], 1] : [1],
  }));
  table[3].offset = 5; // wq now reaches 5 elements past its storage
  const dir = await writeMeta(SMALL, list, { pickleBytes: pickle(tensorTable(table)) });
  assert.match(await loadError(dir), /tensor "layers\.0\.attention\.wq\.weight" .* reaches past/);
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("meta rejects truncated shard", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.copyFile(fixture(`${META_F16}/params.json`), `${dir}/params.json`);
  const bytes = await Deno.readFile(fixture(`${META_F16}/consolidated.00.pth`));
  await Deno.writeFile(`${dir}/consolidated.00.pth`, bytes.subarray(0, bytes.length - 2000));
  assert.match(await loadError(dir), /consolidated\.00\.pth: not a valid zip archive/);
  await Deno.remove(dir, { recursive: true });
});
