/**
 * The GPU forward pass against golden values from independent implementations: logits from every
 * checkpoint format, the KV-cache decode path, and greedy generation.
 *
 * Tolerance: 1e-4 absolute on logits (f32 GPU arithmetic against float64 references on the 260K
 * models, whose logits are of order 10).
 */
import assert from "node:assert/strict";
import { loadTokenizer } from "../data/load_tokenizer.ts";
import type { Gpu } from "../kernels/device.ts";
import { openModel } from "../model/open.ts";
import { Session } from "../model/session.ts";
import { assertClose, fixture, gpuFixtureTest, maxAbsDiff } from "./helpers.ts";

const LOGIT_ATOL = 1e-4;

interface LogitsFile {
  tokens: number[];
  logits: number[][];
}

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await Deno.readTextFile(path)) as T;
}

async function checkLogits(
  gpu: Gpu,
  model: string,
  expectedFile: string,
  expectedKey: "logits" | "base_logits",
  storage: "auto" | "f32" | "bf16" | "f16" = "auto",
  atol = LOGIT_ATOL,
): Promise<void> {
  const golden = await readJson<Record<string, unknown>>(fixture(expectedFile));
  const tokens = golden.tokens as number[];
  const expected = (golden[expectedKey] as number[][]).flat();
  const { llama } = await openModel({
    model: fixture(model),
    noTokenizer: true,
    gpu,
    weights: storage,
  });
  const session = Session.create(llama, { prefillChunk: tokens.length });
  const logits = await session.logitsAll(tokens);
  assertClose(logits, expected, `${model} logits (${storage})`, { rtol: 0, atol });
}

gpuFixtureTest("logits of stories260K.bin match the golden base logits", async (gpu) => {
  await checkLogits(
    gpu,
    "models/stories260K.bin",
    "golden/stories260K-adapter.json",
    "base_logits",
  );
});

gpuFixtureTest("logits of stories260K-hf-f32 match the golden base logits", async (gpu) => {
  await checkLogits(
    gpu,
    "models/stories260K-hf-f32",
    "golden/stories260K-adapter.json",
    "base_logits",
  );
});

gpuFixtureTest("logits of stories260K-hf-bf16 match its expected logits", async (gpu) => {
  await checkLogits(
    gpu,
    "models/stories260K-hf-bf16",
    "models/stories260K-hf-bf16/expected_logits.json",
    "logits",
  );
});

gpuFixtureTest("packed bf16 upload of hf-bf16 matches its expected logits", async (gpu) => {
  await checkLogits(
    gpu,
    "models/stories260K-hf-bf16",
    "models/stories260K-hf-bf16/expected_logits.json",
    "logits",
    "bf16",
  );
});

gpuFixtureTest("logits of stories260K-meta-f16 match its expected logits", async (gpu) => {
  await checkLogits(
    gpu,
    "models/stories260K-meta-f16",
    "models/stories260K-meta-f16/expected_logits.json",
    "logits",
  );
  await checkLogits(
    gpu,
    "models/stories260K-meta-f16",
    "models/stories260K-meta-f16/expected_logits.json",
    "logits",
    "f16",
  );
});

gpuFixtureTest("logits of the two-shard Meta bf16 checkpoint match", async (gpu) => {
  await checkLogits(
    gpu,
    "models/stories260K-meta-bf16-2shards",
    "models/stories260K-meta-bf16-2shards/expected_logits.json",
    "logits",
  );
});

gpuFixtureTest("KV-cache decode equals the full-sequence forward", async (gpu) => {
  const golden = await readJson<LogitsFile>(fixture("golden/stories260K-adapter.json"));
  const { llama } = await openModel({
    model: fixture("models/stories260K.bin"),
    noTokenizer: true,
    gpu,
  });
  const session = Session.create(llama, { prefillChunk: golden.tokens.length });
  const full = await session.logitsAll(golden.tokens);
  const stepwise = await session.logitsStepwise(golden.tokens);
  const diff = maxAbsDiff(full, stepwise);
  assert.ok(diff <= 1e-5, `decode and full forward differ by ${diff} (tolerance 1e-5)`);
});

interface GenerationCase {
  model: string;
  tokenizer?: string;
  prompt_ids: number[];
  steps: number;
  ids: number[];
  text?: string;
}

gpuFixtureTest("greedy generation reproduces the golden ids and text", async (gpu) => {
  const golden = await readJson<{ cases: GenerationCase[] }>(fixture("golden/generation.json"));
  for (const c of golden.cases) {
    const { llama } = await openModel({ model: fixture(c.model), noTokenizer: true, gpu });
    const session = Session.create(llama);
    const promptAfterBos = c.prompt_ids.slice(1);
    const { ids } = await session.generate(c.prompt_ids, {
      temperature: 0,
      topP: 1,
      seed: 0,
      maxTokens: c.steps - promptAfterBos.length,
      eosIds: [],
      decodeChunk: 7,
    });
    assert.deepEqual([...promptAfterBos, ...ids], c.ids, `${c.model} greedy ids`);
    if (c.tokenizer && c.text !== undefined) {
      const tokenizer = await loadTokenizer(fixture(c.tokenizer), {
        vocabSize: llama.config.vocabSize,
      });
      // The C program prints a newline after the generated text; no token produces it.
      assert.equal(
        tokenizer.decode([...promptAfterBos, ...ids]) + "\n",
        c.text,
        `${c.model} text`,
      );
    }
  }
});

gpuFixtureTest("seeded sampling is reproducible", async (gpu) => {
  const { llama } = await openModel({
    model: fixture("models/stories260K.bin"),
    noTokenizer: true,
    gpu,
  });
  const run = async (seed: number) => {
    const session = Session.create(llama);
    const { ids } = await session.generate([1], {
      temperature: 1,
      topP: 0.9,
      seed,
      maxTokens: 24,
      eosIds: [],
    });
    return ids;
  };
  const a = await run(7), b = await run(7), c = await run(8);
  assert.deepEqual(a, b, "same seed, same tokens");
  assert.notDeepEqual(a, c, "another seed gives other tokens");
});
