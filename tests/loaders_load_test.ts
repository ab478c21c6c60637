import assert from "node:assert/strict";
import { loadModel } from "../model/load.ts";
import { fixture, fixtureTest } from "./helpers.ts";
import { encodeSt, readSt, type StContents } from "./loaders_writers.ts";

const HF_F32 = "models/stories260K-hf-f32";

const cases: [string, string, string][] = [
  ["models/stories260K.bin", "llama2.c", "interleaved"],
  ["models/aidreams260K.bin", "llama2.c", "interleaved"],
  [HF_F32, "safetensors", "half"],
  [`${HF_F32}/config.json`, "safetensors", "half"],
  ["models/stories260K-hf-bf16/model.safetensors", "safetensors", "half"],
  ["models/stories260K-meta-f16", "meta", "interleaved"],
  ["models/stories260K-meta-bf16-2shards/consolidated.01.pth", "meta", "interleaved"],
];
for (const [path, format, ropeLayout] of cases) {
  fixtureTest(`loadModel detects ${path.replace("models/", "")}`, async () => {
    const w = await loadModel(fixture(path));
    assert.equal(w.format, format);
    assert.equal(w.config.ropeLayout, ropeLayout);
    assert.equal(w.config.dim, 64);
  });
}

async function loadError(path: string): Promise<string> {
  const err = await loadModel(path).then(
    () => assert.fail(`loading ${path} succeeded`),
    (e: Error) => e,
  );
  return err.message;
}

Deno.test("loadModel reports missing path", async () => {
  const dir = await Deno.makeTempDir();
  const message = await loadError(`${dir}/nowhere`);
  assert.match(message, new RegExp(`^${dir}/nowhere: not found`));
  assert.match(message, /llama2\.c checkpoint file/);
  assert.match(message, /config\.json with model\.safetensors or model\.safetensors\.index\.json/);
  assert.match(message, /params\.json with consolidated\.00\.pth/);
  await Deno.remove(dir);
});

Deno.test("loadModel reports empty directory", async () => {
  const dir = await Deno.makeTempDir();
  const message = await loadError(dir);
  assert.match(
    message,
    new RegExp(`^${dir}: no checkpoint found in this directory \\(it is empty\\)`),
  );
  assert.match(message, /config\.json with model\.safetensors/);
  assert.match(message, /params\.json with consolidated\.00\.pth/);

  await Deno.writeTextFile(`${dir}/config.json`, "{}");
  await Deno.writeTextFile(`${dir}/pytorch_model.bin`, "");
  const withTorchBin = await loadError(dir);
  assert.match(withTorchBin, /it contains config\.json, pytorch_model\.bin/);
  assert.match(withTorchBin, /convert them to safetensors/);
  await Deno.remove(dir, { recursive: true });
});

// ---- Bad safetensors files, edited from the f32 fixture ----

/** Writes config.json and an edited model.safetensors into a temp dir; returns the dir. */
async function writeEdited(edit: (st: StContents) => Uint8Array): Promise<string> {
  const dir = await Deno.makeTempDir();
  await Deno.copyFile(fixture(`${HF_F32}/config.json`), `${dir}/config.json`);
  await Deno.writeFile(
    `${dir}/model.safetensors`,
    edit(readSt(fixture(`${HF_F32}/model.safetensors`))),
  );
  return dir;
}

const Q_PROJ = "model.layers.2.self_attn.q_proj.weight";

fixtureTest("safetensors rejects truncated file", async () => {
  let cutTensor = "";
  const dir = await writeEdited((st) => {
    // The loader checks entries in header order, so it reports the first one past the cut.
    const cut = st.data.length - 1000;
    cutTensor = Object.keys(st.header).find((n) => st.header[n].data_offsets[1] > cut)!;
    const bytes = encodeSt(st.header, st.data);
    return bytes.subarray(0, bytes.length - 1000);
  });
  const message = await loadError(dir);
  assert.match(message, new RegExp(`^${dir}/model\\.safetensors: tensor "${cutTensor}"`));
  assert.match(message, /the file is truncated/);

  await Deno.writeFile(`${dir}/model.safetensors`, Uint8Array.of(100, 0, 0, 0, 0, 0, 0, 0, 0x7b));
  assert.match(await loadError(dir), /safetensors header length 100 is larger than the file/);
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("safetensors rejects wrong shape", async () => {
  const dir = await writeEdited((st) => {
    st.header[Q_PROJ].shape = [32, 128];
    return encodeSt(st.header, st.data);
  });
  const message = await loadError(dir);
  assert.match(message, new RegExp(`^${dir}/model\\.safetensors: tensor "${Q_PROJ}"`));
  assert.match(message, /has shape \[32, 128\], expected \[64, 64\] from .*config\.json/);
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("safetensors rejects inconsistent offsets", async () => {
  const dir = await writeEdited((st) => {
    st.header[Q_PROJ].shape = [64, 63];
    return encodeSt(st.header, st.data);
  });
  const message = await loadError(dir);
  assert.match(message, new RegExp(`tensor "${Q_PROJ}" has data_offsets .* needs 16128 bytes`));
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("safetensors rejects missing tensor", async () => {
  const name = "model.layers.4.mlp.up_proj.weight";
  const dir = await writeEdited((st) => {
    delete st.header[name];
    return encodeSt(st.header, st.data);
  });
  const message = await loadError(dir);
  assert.match(message, new RegExp(`^${dir}/model\\.safetensors: tensor "${name}" is missing`));
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("safetensors rejects unknown dtype", async () => {
  const dir = await writeEdited((st) => {
    st.header[Q_PROJ].dtype = "F8_E4M3";
    st.header[Q_PROJ].shape = [64, 256]; // same byte length at 1 byte per element
    return encodeSt(st.header, st.data);
  });
  const unsupported = await loadError(dir);
  assert.match(unsupported, new RegExp(`^${dir}/model\\.safetensors: tensor "${Q_PROJ}"`));
  assert.match(unsupported, /has dtype F8_E4M3, which this loader does not read/);

  const st = readSt(fixture(`${HF_F32}/model.safetensors`));
  (st.header[Q_PROJ] as { dtype: string }).dtype = "F128";
  await Deno.writeFile(`${dir}/model.safetensors`, encodeSt(st.header, st.data));
  assert.match(await loadError(dir), new RegExp(`tensor "${Q_PROJ}" has unknown dtype "F128"`));

  st.header[Q_PROJ].dtype = "I64";
  st.header[Q_PROJ].shape = [32, 64];
  await Deno.writeFile(`${dir}/model.safetensors`, encodeSt(st.header, st.data));
  assert.match(await loadError(dir), /has dtype I64, which this loader does not read/);
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("safetensors rejects unexpected tensor", async () => {
  const name = "model.layers.0.self_attn.q_proj.bias";
  const dir = await writeEdited((st) => {
    st.header[name] = { dtype: "F32", shape: [1], data_offsets: [0, 4] };
    return encodeSt(st.header, st.data);
  });
  assert.match(await loadError(dir), new RegExp(`unexpected tensor "${name}"`));
  await Deno.remove(dir, { recursive: true });
});
