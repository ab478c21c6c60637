/** `finetune`: train an adapter or, with --full, every weight; see `train/finetune.ts`. */
import { finetune, type FinetuneOptions } from "../train/finetune.ts";
import { DEFAULTS, DEMO_FINETUNE, RECIPE_FINETUNE } from "./defaults.ts";

/** Options as parsed; the run length and batch size are optional here. */
export type FinetuneCliOptions = Omit<FinetuneOptions, "epochs" | "batchSize"> & {
  epochs?: number;
  batchSize?: number;
};

/**
 * Runs the finetune command and prints the run's summary as JSON. Options left out take the demo
 * settings for the demo model and the published recipe otherwise.
 */
export async function runFinetune(o: FinetuneCliOptions): Promise<void> {
  const demo = o.model === DEFAULTS.model && !o.full;
  const { summary } = await finetune({
    ...o,
    epochs: o.epochs ?? (demo ? DEMO_FINETUNE.epochs : RECIPE_FINETUNE.epochs),
    batchSize: o.batchSize ?? (demo ? DEMO_FINETUNE.batchSize : RECIPE_FINETUNE.batchSize),
    lr: o.lr ?? (demo ? DEMO_FINETUNE.lr : undefined),
    adapterLayers: o.adapterLayers ?? (demo ? DEMO_FINETUNE.adapterLayers : undefined),
  });
  console.log(JSON.stringify(summary, null, 2));
}
