/** `finetune`: train an adapter; see `train/finetune.ts`. */
import { finetune, type FinetuneOptions } from "../train/finetune.ts";

/** Runs the finetune command. */
export async function runFinetune(o: FinetuneOptions & { full?: boolean }): Promise<void> {
  if (o.full) {
    const { finetuneFull } = await import("../train/finetune_full.ts");
    await finetuneFull(o);
    return;
  }
  const { summary } = await finetune(o);
  console.log(JSON.stringify(summary, null, 2));
}
