/** `finetune`: train an adapter or, with --full, every weight; see `train/finetune.ts`. */
import { finetune, type FinetuneOptions } from "../train/finetune.ts";
import { DEFAULTS, DEMO_FINETUNE, FINETUNE_DEFAULTS, RECIPE_FINETUNE } from "./defaults.ts";

/** Options as parsed; the run length and batch size are optional here. */
export type FinetuneCliOptions = Omit<FinetuneOptions, "epochs" | "batchSize"> & {
  epochs?: number;
  batchSize?: number;
};

/**
 * Completes `o` as the finetune command does: the command-line defaults first, then, where `o`
 * leaves them out, the demo settings for the demo model (adapter training only) and the published
 * recipe otherwise.
 */
export function finetuneOptions(
  o: Partial<FinetuneCliOptions> & { model: string; data: string; out: string },
): FinetuneOptions {
  const full = o.full ?? FINETUNE_DEFAULTS.full;
  const demo = o.model === DEFAULTS.model && !full;
  // The demo validation set belongs to the demo data; other data is validated with --val-data or
  // --val-fraction only.
  const demoData = o.model === DEFAULTS.model && o.data === DEFAULTS.data;
  return {
    ...FINETUNE_DEFAULTS,
    ...o,
    valData: o.valData ?? (demoData && !o.valFraction ? DEFAULTS.valData : undefined),
    epochs: o.epochs ?? (demo ? DEMO_FINETUNE.epochs : RECIPE_FINETUNE.epochs),
    batchSize: o.batchSize ?? (demo ? DEMO_FINETUNE.batchSize : RECIPE_FINETUNE.batchSize),
    lr: o.lr ?? (demo ? DEMO_FINETUNE.lr : undefined),
    adapterLayers: o.adapterLayers ?? (demo ? DEMO_FINETUNE.adapterLayers : undefined),
    bias: o.bias ?? (demo ? DEMO_FINETUNE.bias : FINETUNE_DEFAULTS.bias),
  };
}

/**
 * Runs the finetune command and prints the run's summary as JSON. Options left out take the demo
 * settings for the demo model and the published recipe otherwise.
 */
export async function runFinetune(o: FinetuneCliOptions): Promise<void> {
  const { summary } = await finetune(finetuneOptions(o));
  console.log(JSON.stringify(summary, null, 2));
}
