/**
 * Writes a model in the Hugging Face Llama layout: `config.json` and `model.safetensors` (f32),
 * with q_proj/k_proj rows in the "rotate half" order Hugging Face expects.
 */
import type { Gpu } from "../kernels/device.ts";
import { writeFileAtomic } from "../train/atomic.ts";
import { headDim, type ModelConfig } from "./config.ts";
import type { GpuWeights } from "./gpu_weights.ts";
import { encodeSafetensors, type NamedTensor } from "./safetensors_write.ts";

/**
 * Reorders the rows of each head of a q/k projection (rows = heads * D, cols) from interleaved
 * rotary pairs (2i, 2i+1) to rotate-half pairs (i, i + D/2).
 */
export function interleavedToHalf(
  w: Float32Array,
  heads: number,
  D: number,
  cols: number,
): Float32Array {
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < D; j++) {
      const src = j < D / 2 ? 2 * j : 2 * (j - D / 2) + 1;
      out.set(w.subarray((h * D + src) * cols, (h * D + src + 1) * cols), (h * D + j) * cols);
    }
  }
  return out;
}

/** Returns the config.json object of a model. */
export function hfConfigJson(c: ModelConfig): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxSeqLen,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tiedEmbeddings,
    hidden_act: "silu",
    bos_token_id: c.bosId,
    eos_token_id: c.eosIds.length === 1 ? c.eosIds[0] : c.eosIds,
    torch_dtype: "float32",
  };
}

/** Reads every weight back from the GPU and encodes config.json and model.safetensors. */
export async function encodeHfModel(
  gpu: Gpu,
  w: GpuWeights,
): Promise<{ config: string; safetensors: Uint8Array }> {
  const c = w.config;
  if (w.storage !== "f32") throw new Error(`saving needs f32 weights, these are ${w.storage}`);
  const D = headDim(c);
  const read = async (t: GpuWeights["norm"]) => await gpu.readF32(t);
  const tensors: NamedTensor[] = [];
  const add = (name: string, shape: number[], data: Float32Array) =>
    tensors.push({ name, shape, data });
  add("model.embed_tokens.weight", w.tokEmbedding.shape, await read(w.tokEmbedding));
  for (let l = 0; l < c.nLayers; l++) {
    const lw = w.layers[l];
    const p = `model.layers.${l}`;
    let wq = await read(lw.wq), wk = await read(lw.wk);
    if (c.ropeLayout === "interleaved") {
      wq = interleavedToHalf(wq, c.nHeads, D, c.dim);
      wk = interleavedToHalf(wk, c.nKvHeads, D, c.dim);
    }
    add(`${p}.input_layernorm.weight`, lw.attnNorm.shape, await read(lw.attnNorm));
    add(`${p}.self_attn.q_proj.weight`, lw.wq.shape, wq);
    add(`${p}.self_attn.k_proj.weight`, lw.wk.shape, wk);
    add(`${p}.self_attn.v_proj.weight`, lw.wv.shape, await read(lw.wv));
    add(`${p}.self_attn.o_proj.weight`, lw.wo.shape, await read(lw.wo));
    add(`${p}.post_attention_layernorm.weight`, lw.ffnNorm.shape, await read(lw.ffnNorm));
    add(`${p}.mlp.gate_proj.weight`, lw.w1.shape, await read(lw.w1));
    add(`${p}.mlp.down_proj.weight`, lw.w2.shape, await read(lw.w2));
    add(`${p}.mlp.up_proj.weight`, lw.w3.shape, await read(lw.w3));
  }
  add("model.norm.weight", w.norm.shape, await read(w.norm));
  if (!c.tiedEmbeddings) add("lm_head.weight", w.output.shape, await read(w.output));
  const config = JSON.stringify(hfConfigJson({ ...c, ropeLayout: "half" }), null, 2) + "\n";
  return { config, safetensors: encodeSafetensors(tensors, { format: "pt" }) };
}

/** Writes `dir/config.json` and `dir/model.safetensors` atomically, creating `dir`. */
export async function saveHfModel(dir: string, gpu: Gpu, w: GpuWeights): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const { config, safetensors } = await encodeHfModel(gpu, w);
  await writeFileAtomic(`${dir}/model.safetensors`, safetensors);
  await writeFileAtomic(`${dir}/config.json`, config);
}
