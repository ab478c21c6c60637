/**
 * Adapter and optimiser-moment files: they round-trip exactly, and a truncated file, a missing
 * tensor or a tensor of another dtype is rejected with the file and tensor named. No GPU needed.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { ModelConfig } from "../model/config.ts";
import { encodeAdapter, loadAdapter, readAdapterFile } from "../model/adapter_file.ts";
import { type Adapter, biasBlockSize, biasSizes } from "../model/adapter.ts";
import { readSafetensors } from "../model/loaders/safetensors.ts";
import { encodeMoments, readMoments } from "../train/checkpoint.ts";

const CONFIG: ModelConfig = {
  dim: 8,
  hiddenDim: 16,
  nLayers: 3,
  nHeads: 2,
  nKvHeads: 1,
  vocabSize: 32,
  maxSeqLen: 16,
  normEps: 1e-5,
  ropeTheta: 10000,
  ropeLayout: "interleaved",
  tiedEmbeddings: true,
  bosId: 1,
  eosIds: [2],
};

function counting(n: number, scale: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => (i - n / 2) * scale);
}

const ADAPTER: Adapter = {
  config: { layers: 2, length: 3, bias: false },
  prompts: counting(2 * 3 * CONFIG.dim, 0.125),
  gates: counting(2 * CONFIG.nHeads, 0.5),
};

const META = {
  template: "alpaca",
  baseModel: "test-model",
  fingerprint: { arch: "8/16/3/2/1/32", stats: [1, 2, 3] },
  extra: { step: "7" },
};

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "adapter_file_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Returns `bytes` with the dtype of every tensor named in the header changed to F16. */
function relabelDtype(bytes: Uint8Array): Uint8Array {
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  // "F16" keeps the header length, so the data offsets stay valid; only the byte count per element
  // changes, which the reader must notice.
  const changed = new TextEncoder().encode(header.replaceAll('"F32"', '"F16"'));
  const out = bytes.slice();
  out.set(changed, 8);
  return out;
}

Deno.test("adapter file round trip", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "adapter.safetensors");
    await Deno.writeFile(path, encodeAdapter(CONFIG, ADAPTER, META));
    const file = await readAdapterFile(path);
    assert.deepEqual(file.adapter.config, ADAPTER.config);
    assert.deepEqual(file.adapter.prompts, ADAPTER.prompts);
    assert.deepEqual(file.adapter.gates, ADAPTER.gates);
    assert.equal(file.firstLayer, 1);
    assert.equal(file.metadata.template, "alpaca");
    assert.equal(file.metadata.baseModel, "test-model");
    assert.deepEqual(file.metadata.fingerprint, META.fingerprint);
    assert.deepEqual(file.metadata.extra, { step: "7" });
  });
});

Deno.test("adapter file with bias tuning round trip", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "adapter.safetensors");
    const adapter: Adapter = {
      ...ADAPTER,
      config: { ...ADAPTER.config, bias: true },
      biases: counting(2 * biasBlockSize(CONFIG), 0.25),
    };
    await Deno.writeFile(path, encodeAdapter(CONFIG, adapter, META));
    const file = await readAdapterFile(path);
    assert.deepEqual(file.adapter.config, adapter.config);
    assert.deepEqual(file.adapter.biases, adapter.biases);
    assert.deepEqual(file.biasSizes, biasSizes(CONFIG));
    const names = [...(await readSafetensors(path)).tensors.keys()];
    for (const name of ["layers.1.attention.wq.bias", "layers.2.feed_forward.w2.bias"]) {
      assert.ok(names.includes(name), `${name} missing from [${names}]`);
    }
    const loaded = await loadAdapter(path, CONFIG, META.fingerprint);
    assert.deepEqual(loaded.adapter.biases, adapter.biases);
    // Same width and heads, another feed-forward size: the w1 bias no longer fits.
    await assert.rejects(
      loadAdapter(path, { ...CONFIG, hiddenDim: 24 }, META.fingerprint),
      /another base model \(bias of w1 has 16 values, the model's layer has 24 outputs\)/,
    );
  });
});

Deno.test("adapter file damage rejected", async () => {
  await withDir(async (dir) => {
    const bytes = encodeAdapter(CONFIG, ADAPTER, META);
    const cases: [string, Uint8Array, RegExp][] = [
      ["empty.safetensors", new Uint8Array(0), /too short for a safetensors header/],
      ["cut_header.safetensors", bytes.slice(0, 40), /header length \d+ is larger than the file/],
      ["cut_data.safetensors", bytes.slice(0, bytes.length - 4), /tensor "layers\.2\.attention/],
      ["f16.safetensors", relabelDtype(bytes), /needs \d+ bytes|dtype F16, expected F32/],
    ];
    for (const [name, content, message] of cases) {
      const path = join(dir, name);
      await Deno.writeFile(path, content);
      await assert.rejects(readAdapterFile(path), (e: Error) => {
        assert.match(e.message, /^adapter /, name);
        assert.ok(e.message.includes(path), `${name}: ${e.message}`);
        assert.match(e.message, message, name);
        return true;
      });
    }
  });
});

Deno.test("adapter file missing gate rejected", async () => {
  await withDir(async (dir) => {
    // Two adapted blocks in the metadata but a file written for one: the second gate is missing.
    const singleBlock = encodeAdapter(CONFIG, {
      config: { layers: 1, length: 6 },
      prompts: ADAPTER.prompts,
      gates: ADAPTER.gates.slice(0, 2),
    }, META);
    const path = join(dir, "one.safetensors");
    await Deno.writeFile(path, singleBlock);
    const file = await readAdapterFile(path);
    assert.equal(file.adapter.config.layers, 1);

    // A same-length replacement in the header keeps the data offsets valid.
    const n = Number(new DataView(singleBlock.buffer).getBigUint64(0, true));
    const header = new TextDecoder().decode(singleBlock.subarray(8, 8 + n));
    const edited = header.replace(
      '"adapter_layers":"1","adapter_len":"6","first_layer":"2"',
      '"adapter_layers":"2","adapter_len":"3","first_layer":"1"',
    );
    assert.notEqual(edited, header, "the metadata was not found in the header");
    const bytes = singleBlock.slice();
    bytes.set(new TextEncoder().encode(edited), 8);
    const broken = join(dir, "broken.safetensors");
    await Deno.writeFile(broken, bytes);
    await assert.rejects(readAdapterFile(broken), /tensor "layers\.1\.attention\.gate" is missing/);
  });
});

Deno.test("optimizer moments round trip and damage", async () => {
  await withDir(async (dir) => {
    const moments = [
      { name: "prompts", shape: [2, 4], m: counting(8, 0.25), v: counting(8, 0.5) },
      { name: "gates", shape: [3], m: counting(3, 1), v: counting(3, 2) },
    ];
    const bytes = encodeMoments(moments);
    const path = join(dir, "optimizer.safetensors");
    await Deno.writeFile(path, bytes);
    const read = await readMoments(path);
    assert.deepEqual([...read.keys()].sort(), ["gates", "prompts"]);
    for (const x of moments) {
      assert.deepEqual(read.get(x.name)!.m, x.m);
      assert.deepEqual(read.get(x.name)!.v, x.v);
    }

    const cut = join(dir, "cut.safetensors");
    await Deno.writeFile(cut, bytes.slice(0, bytes.length - 8));
    await assert.rejects(readMoments(cut), (e: Error) => {
      assert.match(e.message, /^optimizer state /);
      assert.ok(e.message.includes(cut), e.message);
      return true;
    });
  });
});
