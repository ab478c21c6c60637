/**
 * Training checkpoints: a folder per saved step with the adapter (or the full weights), the
 * optimiser moments and a JSON state (step, data position, settings). Each is written to a temporary
 * folder and renamed into place, so a crash never leaves a half-written checkpoint. No random
 * generator state is needed: the data order is a function of the seed and the epoch, and nothing
 * else in a step is random.
 *
 *     <out>/checkpoints/step-000120/adapter.safetensors
 *     <out>/checkpoints/step-000120/optimizer.safetensors
 *     <out>/checkpoints/step-000120/state.json
 */
import { encodeSafetensors, type NamedTensor } from "../model/safetensors_write.ts";
import { readF32Tensor, readSafetensors } from "../model/loaders/safetensors.ts";
import { writeFileAtomic } from "./atomic.ts";
import type { BatchPosition } from "../data/batch.ts";

/** Everything besides tensors that a resumed run needs. */
export interface TrainState {
  /** Optimiser steps completed. */
  step: number;
  /** Position of the next batch. */
  position: BatchPosition;
  totalSteps: number;
  /** The options the run was started with, to detect a resume with different settings. */
  settings: Record<string, unknown>;
  /** Best validation loss so far, or null. */
  bestValLoss: number | null;
  /** Tokens trained on so far. */
  tokens: number;
  /** Seconds of training so far (excluding validation). */
  seconds: number;
}

/** Returns the folder name of the checkpoint of `step`. */
export function checkpointName(step: number): string {
  return `step-${String(step).padStart(6, "0")}`;
}

/**
 * Writes a checkpoint folder atomically: files go to `<name>.tmp`, which is then renamed. Older
 * checkpoints beyond the newest `keep` are removed afterwards.
 */
export async function writeCheckpoint(
  out: string,
  state: TrainState,
  files: { name: string; bytes: Uint8Array }[],
  keep: number,
): Promise<string> {
  const root = `${out}/checkpoints`;
  await Deno.mkdir(root, { recursive: true });
  const name = checkpointName(state.step);
  const tmp = `${root}/${name}.tmp`;
  const final = `${root}/${name}`;
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  await Deno.mkdir(tmp);
  for (const f of files) await Deno.writeFile(`${tmp}/${f.name}`, f.bytes);
  await writeFileAtomic(`${tmp}/state.json`, JSON.stringify(state, null, 2) + "\n");
  await Deno.remove(final, { recursive: true }).catch(() => {});
  await Deno.rename(tmp, final);

  const all = await listCheckpoints(out);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) {
    await Deno.remove(`${root}/${old}`, { recursive: true }).catch(() => {});
  }
  return final;
}

/** Returns the complete checkpoint folder names under `<out>/checkpoints`, oldest first. */
export async function listCheckpoints(out: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(`${out}/checkpoints`)) {
      if (e.isDirectory && /^step-\d+$/.test(e.name)) names.push(e.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return names.sort();
}

/** Reads the state of a checkpoint folder. */
export async function readState(dir: string): Promise<TrainState> {
  try {
    return JSON.parse(await Deno.readTextFile(`${dir}/state.json`));
  } catch (e) {
    throw new Error(`cannot read training state ${dir}/state.json: ${(e as Error).message}`);
  }
}

/** Encodes optimiser moments as safetensors: `m.<name>` and `v.<name>` per parameter. */
export function encodeMoments(
  moments: { name: string; shape: number[]; m: Float32Array; v: Float32Array }[],
): Uint8Array {
  const tensors: NamedTensor[] = [];
  for (const x of moments) {
    tensors.push({ name: `m.${x.name}`, shape: x.shape, data: x.m });
    tensors.push({ name: `v.${x.name}`, shape: x.shape, data: x.v });
  }
  return encodeSafetensors(tensors, { format: "llama-adapter-optimizer" });
}

/** Decodes the moments written by `encodeMoments`; throws naming the file and tensor. */
export async function readMoments(
  path: string,
): Promise<Map<string, { m: Float32Array; v: Float32Array }>> {
  // Errors of the safetensors reader start with the path, so the prefix names what the file is.
  try {
    const st = await readSafetensors(path);
    const read = async (name: string) => (await readF32Tensor(st, name)).data;
    const out = new Map<string, { m: Float32Array; v: Float32Array }>();
    for (const key of st.tensors.keys()) {
      if (!key.startsWith("m.")) continue;
      const name = key.slice(2);
      out.set(name, { m: await read(`m.${name}`), v: await read(`v.${name}`) });
    }
    return out;
  } catch (e) {
    throw new Error(`optimizer state ${(e as Error).message}`);
  }
}
