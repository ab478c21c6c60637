/** `finetune`: train an adapter or, with --full, every weight; see `train/finetune.ts`. */
import { finetune, type FinetuneOptions } from "../train/finetune.ts";

/** Runs the finetune command and prints the run's summary as JSON. */
export async function runFinetune(o: FinetuneOptions): Promise<void> {
  const { summary } = await finetune(o);
  console.log(JSON.stringify(summary, null, 2));
}
