import assert from "node:assert/strict";
import { packHalf } from "../kernels/pack.ts";
import { loadHuggingFace } from "../model/loaders/huggingface.ts";
import { loadLlama2c } from "../model/loaders/llama2c.ts";
import type { ModelWeights, WeightSource } from "../model/weights.ts";
import { fixture, fixtureTest } from "./helpers.ts";
import { encodeSt, readSt, subsetSt } from "./loaders_writers.ts";

const STORIES = "models/stories260K.bin";
const HF_F32 = "models/stories260K-hf-f32";
const HF_BF16 = "models/stories260K-hf-bf16";

/** Lists every tensor of a model with a label, in a fixed order. */
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

/**
 * Reorders the rows of each head of an (H*D, C) matrix from Hugging Face's rotate-half order to
 * interleaved order: half-order row j < D/2 is interleaved row 2j, and row j >= D/2 is 2(j - D/2) + 1.
 */
function unpermuteHalf(x: Float32Array, rows: number, cols: number, D: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) {
    const head = Math.floor(r / D), j = r % D;
    const target = head * D + (j < D / 2 ? 2 * j : 2 * (j - D / 2) + 1);
    out.set(x.subarray(r * cols, (r + 1) * cols), target * cols);
  }
  return out;
}

async function interleavedF32(label: string, source: WeightSource, D: number) {
  const values = await source.readF32();
  if (!/\.(wq|wk)$/.test(label)) return values;
  return unpermuteHalf(values, source.shape[0], source.shape[1], D);
}

fixtureTest("huggingface f32 loads config", async () => {
  const w = await loadHuggingFace(fixture(HF_F32));
  assert.equal(w.format, "safetensors");
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
    ropeLayout: "half",
    tiedEmbeddings: true,
    bosId: 1,
    eosIds: [2],
  });
  assert.equal(w.output, null);
  assert.equal(w.layers[1].w3.name, "layers.1.feed_forward.w3");
});

fixtureTest("huggingface f32 equals llama2c weights", async () => {
  const hf = await loadHuggingFace(fixture(HF_F32));
  const ref = await loadLlama2c(fixture(STORIES));
  const refTensors = tensors(ref);
  for (const [i, [label, source]] of tensors(hf).entries()) {
    assert.equal(source.dtype, "f32", label);
    assert.deepEqual(source.shape, refTensors[i][1].shape, label);
    const actual = await interleavedF32(label, source, 8);
    assert.deepEqual(actual, await refTensors[i][1].readF32(), label);
  }
});

fixtureTest("huggingface bf16 equals rounded llama2c", async () => {
  const hf = await loadHuggingFace(fixture(HF_BF16));
  const ref = await loadLlama2c(fixture(STORIES));
  const refTensors = tensors(ref);
  for (const [i, [label, source]] of tensors(hf).entries()) {
    assert.equal(source.dtype, "bf16", label);
    const expected = packHalf(await refTensors[i][1].readF32(), "bf16");
    const half = await source.readHalf!();
    const rows = source.shape.length === 2 ? source.shape[0] : 1;
    const cols = source.shape.length === 2 ? source.shape[1] : source.shape[0];
    // Reorder the 16-bit values by reusing the f32 row permutation on their numeric codes.
    const actual = /\.(wq|wk)$/.test(label)
      ? Uint16Array.from(unpermuteHalf(Float32Array.from(half), rows, cols, 8))
      : half;
    assert.deepEqual(actual, expected, label);
    const f32 = await interleavedF32(label, source, 8);
    const refF32 = await refTensors[i][1].readF32();
    for (let k = 0; k < f32.length; k++) {
      const diff = Math.abs(f32[k] - refF32[k]);
      if (diff > Math.abs(refF32[k]) * 2 ** -8) {
        assert.fail(`${label}[${k}]: ${f32[k]} is not ${refF32[k]} rounded to bf16`);
      }
    }
  }
});

async function tempModel(files: Record<string, Uint8Array | string>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const [name, contents] of Object.entries(files)) {
    if (typeof contents === "string") await Deno.writeTextFile(`${dir}/${name}`, contents);
    else await Deno.writeFile(`${dir}/${name}`, contents);
  }
  return dir;
}

function configText(edit: (c: Record<string, unknown>) => void = () => {}): string {
  const c = JSON.parse(Deno.readTextFileSync(fixture(`${HF_F32}/config.json`)));
  edit(c);
  return JSON.stringify(c);
}

async function loadError(dir: string): Promise<string> {
  const err = await loadHuggingFace(dir).then(
    () => assert.fail(`loading ${dir} succeeded`),
    (e: Error) => e,
  );
  return err.message;
}

fixtureTest("huggingface loads sharded index", async () => {
  const st = readSt(fixture(`${HF_F32}/model.safetensors`));
  const names = Object.keys(st.header);
  const half = Math.floor(names.length / 2);
  const shardA = "model-00001-of-00002.safetensors";
  const shardB = "model-00002-of-00002.safetensors";
  const weightMap: Record<string, string> = {};
  names.forEach((n, i) => weightMap[n] = i < half ? shardA : shardB);
  const dir = await tempModel({
    "config.json": configText(),
    [shardA]: subsetSt(st, names.slice(0, half)),
    [shardB]: subsetSt(st, names.slice(half)),
    "model.safetensors.index.json": JSON.stringify({ metadata: {}, weight_map: weightMap }),
  });

  const sharded = await loadHuggingFace(dir);
  const single = await loadHuggingFace(fixture(HF_F32));
  assert.equal(sharded.layers[0].wq.file, `${dir}/${shardA}`);
  assert.equal(sharded.norm.file, `${dir}/${shardB}`);
  const singleTensors = tensors(single);
  for (const [i, [label, source]] of tensors(sharded).entries()) {
    assert.deepEqual(await source.readF32(), await singleTensors[i][1].readF32(), label);
  }

  // An index naming a tensor its shard lacks.
  weightMap["model.norm.weight"] = shardA;
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ weight_map: weightMap }),
  );
  const message = await loadError(dir);
  assert.match(
    message,
    /model-00001-of-00002\.safetensors: tensor "model\.norm\.weight" is missing/,
  );
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("huggingface reads separate lm_head", async () => {
  const st = readSt(fixture(`${HF_F32}/model.safetensors`));
  const emb = st.header["model.embed_tokens.weight"];
  const data = new Uint8Array(st.data.length + (emb.data_offsets[1] - emb.data_offsets[0]));
  data.set(st.data);
  // The head is the embedding with its bytes reversed, so it differs from the embedding.
  const head = st.data.slice(emb.data_offsets[0], emb.data_offsets[1]).reverse();
  data.set(head, st.data.length);
  const header = {
    ...st.header,
    "lm_head.weight": { ...emb, data_offsets: [st.data.length, data.length] },
  };
  const dir = await tempModel({
    "config.json": configText((c) => c.tie_word_embeddings = false),
    "model.safetensors": encodeSt(header, data),
  });
  const w = await loadHuggingFace(dir);
  assert.equal(w.config.tiedEmbeddings, false);
  assert.ok(w.output);
  assert.deepEqual(w.output.shape, [512, 64]);
  assert.deepEqual(await w.output.readF32(), new Float32Array(head.buffer));
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("huggingface config fields and defaults", async () => {
  const st = Deno.readFileSync(fixture(`${HF_F32}/model.safetensors`));
  const dir = await tempModel({
    "config.json": configText((c) => {
      c.eos_token_id = [2, 7];
      c.rope_theta = 500000;
      delete c.rms_norm_eps;
      delete c.bos_token_id;
    }),
    "model.safetensors": st,
  });
  const w = await loadHuggingFace(dir);
  assert.deepEqual(w.config.eosIds, [2, 7]);
  assert.equal(w.config.ropeTheta, 500000);
  assert.equal(w.config.normEps, 1e-6);
  assert.equal(w.config.bosId, 1);

  await Deno.writeTextFile(`${dir}/config.json`, configText((c) => delete c.num_key_value_heads));
  // With kv heads defaulting to 8, k_proj's stored shape [32, 64] no longer fits.
  const message = await loadError(dir);
  assert.match(
    message,
    /tensor "model\.layers\.0\.self_attn\.k_proj\.weight" has shape \[32, 64\]/,
  );
  assert.match(message, /expected \[64, 64\]/);

  await Deno.writeTextFile(`${dir}/config.json`, configText((c) => c.rope_scaling = { factor: 8 }));
  assert.match(await loadError(dir), /config\.json: rope_scaling .* is not supported/);
  await Deno.writeTextFile(`${dir}/config.json`, configText((c) => c.model_type = "gpt2"));
  assert.match(await loadError(dir), /model_type "gpt2" is not supported/);
  await Deno.writeTextFile(`${dir}/config.json`, configText((c) => delete c.hidden_size));
  assert.match(await loadError(dir), /config\.json: "hidden_size" is missing/);
  await Deno.remove(dir, { recursive: true });
});
