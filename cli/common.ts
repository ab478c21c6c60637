/** Pieces shared by the generate, chat and eval commands. */
import { parseTemplateName, type TemplateName } from "../data/templates.ts";
import type { WeightStorage } from "../model/gpu_weights.ts";
import { type OpenedModel, openModel } from "../model/open.ts";
import { DEFAULTS } from "./defaults.ts";

/** Options every model command takes. */
export interface ModelCliOptions {
  model: string;
  tokenizer?: string;
  weights: WeightStorage;
  adapter?: string | boolean;
  template?: string;
  quiet?: boolean;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Opens the model of a command. For the demo model, the demo adapter is applied by default when
 * it has been trained; `--no-adapter` (adapter === false) turns that off.
 */
export async function openForCli(o: ModelCliOptions): Promise<OpenedModel> {
  let adapter = typeof o.adapter === "string" ? o.adapter : undefined;
  if (o.adapter === undefined && o.model === DEFAULTS.model) {
    if (await exists(DEFAULTS.adapter)) adapter = DEFAULTS.adapter;
    else if (!o.quiet) {
      console.error(
        `no trained demo adapter at ${DEFAULTS.adapter}, so the base model runs alone; ` +
          "run `deno task finetune` first to train it",
      );
    }
  }
  const opened = await openModel({
    model: o.model,
    tokenizer: o.tokenizer,
    weights: o.weights,
    adapter,
    log: !o.quiet,
  });
  if (!o.quiet && opened.adapter) {
    const a = opened.adapter;
    console.error(
      `adapter ${adapter}: ${a.adapter.config.layers} blocks, prompt length ` +
        `${a.adapter.config.length}${a.adapter.config.bias ? ", bias tuning" : ""}, ` +
        `template '${a.metadata.template}'`,
    );
  }
  return opened;
}

/** Returns the template to apply: --template, else the adapter's, else none. */
export function chooseTemplate(o: ModelCliOptions, opened: OpenedModel): TemplateName {
  if (o.template) return parseTemplateName(o.template);
  const stored = opened.adapter?.metadata.template;
  if (stored) return parseTemplateName(stored);
  return "none";
}
