/**
 * The llama-adapter command line: `finetune`, `generate`, `chat` and `eval`.
 *
 * Option parsing lives here; each command's work lives in `cli/`, on top of the library in `mod.ts`.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import { DEFAULTS, FINETUNE_DEFAULTS } from "./cli/defaults.ts";

function int(name: string, min = 0) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) {
      throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got '${v}'`);
    }
    return n;
  };
}

function num(name: string, min = -Infinity, max = Infinity) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}], got '${v}'`);
    }
    return n;
  };
}

function addModelOptions(cmd: Command): Command {
  return cmd
    .option(
      "--model <path>",
      "base model: a Hugging Face directory (config.json + safetensors), a Meta directory " +
        "(params.json + consolidated.NN.pth) or a llama2.c .bin file",
      DEFAULTS.model,
    )
    .option(
      "--tokenizer <path>",
      "tokenizer.model, tokenizer.json or llama2.c tokenizer.bin (default: found beside the model)",
    )
    .addOption(
      new Option("--weights <storage>", "GPU storage of frozen weight matrices")
        .choices(["auto", "f32", "bf16", "f16"]).default("auto"),
    )
    .option("--quiet", "print only results, no adapter or progress lines", false);
}

function addSamplingOptions(cmd: Command): Command {
  return cmd
    .option("--max-tokens <n>", "maximum tokens to generate", int("--max-tokens", 1), 256)
    .option(
      "--temperature <t>",
      "sampling temperature; 0 picks the most likely token (greedy)",
      num("--temperature", 0),
      0.8,
    )
    .option("--top-p <p>", "nucleus sampling mass, in (0, 1]", num("--top-p", 0, 1), 0.95)
    .option("--seed <n>", "random seed for sampling", int("--seed"), 0)
    .option(
      "--adapter <path>",
      "adapter checkpoint (.safetensors) to apply (default for the demo model: its trained adapter)",
    )
    .option("--no-adapter", "use the base model alone, even where a default adapter exists")
    .option(
      "--template <name>",
      "prompt template: the one stored in the adapter by default; 'alpaca' or 'none'",
    )
    .option(
      "--decode-chunk <n>",
      "decode steps encoded per GPU submission (one readback per chunk)",
      int("--decode-chunk", 1),
      16,
    );
}

const program = new Command()
  .name("llama-adapter")
  .description(
    "Fine-tune LLaMA-family models with LLaMA-Adapter (zero-init gated adaption prompts) on any " +
      "GPU through WebGPU, and generate or chat with the result.",
  )
  .showHelpAfterError();

addSamplingOptions(addModelOptions(
  program.command("generate").description("generate a continuation of a prompt"),
))
  .option("--prompt <text>", "prompt text")
  .option("--prompt-file <path>", "read the prompt from a UTF-8 text file instead")
  .option("--no-bos", "do not prepend the beginning-of-sequence token")
  .action(async (opts) => {
    const { runGenerate } = await import("./cli/generate.ts");
    await runGenerate(opts);
  });

addSamplingOptions(addModelOptions(
  program.command("chat").description(
    "interactive chat: type a message; /reset clears the history, /exit or Ctrl-D quits",
  ),
))
  .option("--system <text>", "text placed before the first message")
  .option(
    "--instruction <text>",
    "send each message as the input of this instruction (Alpaca prompt with an input section); " +
      `default for the demo model with its adapter: "Answer using the text."; "" turns it off`,
  )
  .option(
    "--input-prefix <text>",
    "text put before each message sent as input (default: a space for the demo model, else none)",
  )
  .action(async (opts) => {
    const { runChat } = await import("./cli/chat.ts");
    await runChat(opts);
  });

addModelOptions(
  program.command("finetune").description(
    "train an adapter on instruction data (Alpaca JSON/JSONL or pre-tokenised JSONL)",
  ),
)
  .option("--data <path>", "training data: JSON array or JSONL file", DEFAULTS.data)
  .option(
    "--val-data <path>",
    "held-out data for validation loss (default: the demo validation set when training on the " +
      "demo data, else none)",
  )
  .option(
    "--val-fraction <f>",
    "hold out this fraction of --data for validation when --val-data is not given",
    num("--val-fraction", 0, 0.9),
    0,
  )
  .option("--out <dir>", "output folder for checkpoints, metrics and the loss plot", DEFAULTS.out)
  .option(
    "--adapter-layers <k>",
    "number of adapted blocks, counted from the top (default: all but the first two)",
    int("--adapter-layers", 1),
  )
  .option(
    "--bias",
    "also train a bias on every linear layer of the adapted blocks, as LLaMA-Adapter V2 does " +
      "(default: on for the demo model, off otherwise)",
  )
  .option("--no-bias", "train prompts and gates only (LLaMA-Adapter V1)")
  .option(
    "--adapter-len <l>",
    "adaption prompt length per block",
    int("--adapter-len", 1),
    FINETUNE_DEFAULTS.adapterLen,
  )
  .option(
    "--epochs <n>",
    "epochs over the training data (default: 5, the published recipe; 1 for the demo model)",
    num("--epochs", 0),
  )
  .option(
    "--max-steps <n>",
    "stop after this many optimiser steps (overrides --epochs)",
    int("--max-steps", 1),
  )
  .option(
    "--batch-size <n>",
    "examples per micro-batch (default: 4; 8 for the demo model)",
    int("--batch-size", 1),
  )
  .option(
    "--grad-accum <n>",
    "micro-batches per optimiser step",
    int("--grad-accum", 1),
    FINETUNE_DEFAULTS.gradAccum,
  )
  .option(
    "--lr <rate>",
    "peak learning rate (default: 9e-3 x effective batch / 256, the published recipe)",
    num("--lr", 0),
  )
  .option(
    "--min-lr <rate>",
    "learning rate at the end of the cosine decay",
    num("--min-lr", 0),
    FINETUNE_DEFAULTS.minLr,
  )
  .option("--warmup-steps <n>", "linear warm-up length in optimiser steps", int("--warmup-steps"))
  .option(
    "--warmup-epochs <n>",
    "linear warm-up length in epochs (default: 40% of the run, at most 2 epochs, as the " +
      "recipe's 2 of 5; --warmup-steps overrides it)",
    num("--warmup-epochs", 0),
  )
  .option(
    "--weight-decay <w>",
    "AdamW decoupled weight decay",
    num("--weight-decay", 0),
    FINETUNE_DEFAULTS.weightDecay,
  )
  .option(
    "--beta1 <b>",
    "AdamW first-moment decay",
    num("--beta1", 0, 1),
    FINETUNE_DEFAULTS.beta1,
  )
  .option(
    "--beta2 <b>",
    "AdamW second-moment decay",
    num("--beta2", 0, 1),
    FINETUNE_DEFAULTS.beta2,
  )
  .option(
    "--clip-grad <norm>",
    "clip the global gradient norm to this value (0: off)",
    num("--clip-grad", 0),
    FINETUNE_DEFAULTS.clipGrad,
  )
  .option(
    "--max-seq-len <n>",
    "longest training sequence in tokens (default: 512 or the model's context, if shorter)",
    int("--max-seq-len", 2),
  )
  .addOption(
    new Option("--on-long <policy>", "what to do with examples longer than --max-seq-len")
      .choices(["truncate", "skip"]).default(FINETUNE_DEFAULTS.onLong),
  )
  .addOption(
    new Option("--on-bad-record <policy>", "what to do with a malformed record")
      .choices(["skip", "fail"]).default(FINETUNE_DEFAULTS.onBadRecord),
  )
  .addOption(
    new Option("--template <name>", "prompt template for Alpaca records")
      .choices(["alpaca", "none"]).default(FINETUNE_DEFAULTS.template),
  )
  .option(
    "--seed <n>",
    "random seed for prompt initialisation and data order",
    int("--seed"),
    FINETUNE_DEFAULTS.seed,
  )
  .option(
    "--log-every <n>",
    "read the loss back and log metrics every N optimiser steps",
    int("--log-every", 1),
    FINETUNE_DEFAULTS.logEvery,
  )
  .option(
    "--eval-every <n>",
    "validation loss every N optimiser steps (0: at the end only)",
    int("--eval-every"),
    FINETUNE_DEFAULTS.evalEvery,
  )
  .option(
    "--save-every <n>",
    "checkpoint every N optimiser steps (0: at the end only)",
    int("--save-every"),
    FINETUNE_DEFAULTS.saveEvery,
  )
  .option(
    "--keep <n>",
    "number of step checkpoints to keep",
    int("--keep", 1),
    FINETUNE_DEFAULTS.keep,
  )
  .option("--resume", "continue from the last checkpoint in --out", FINETUNE_DEFAULTS.resume)
  .option(
    "--recompute",
    "recompute activations in backward instead of keeping them (less memory)",
    FINETUNE_DEFAULTS.recompute,
  )
  .option(
    "--full",
    "train every weight instead of an adapter (full fine-tuning)",
    FINETUNE_DEFAULTS.full,
  )
  .action(async (opts) => {
    const { runFinetune } = await import("./cli/finetune.ts");
    await runFinetune(opts);
  });

addModelOptions(
  program.command("eval").description(
    "mean loss and perplexity of the model (with --adapter) on a dataset, and exact-match accuracy " +
      "when the data has reference outputs",
  ),
)
  .option("--data <path>", "evaluation data: JSON array or JSONL file", DEFAULTS.testData)
  .option(
    "--adapter <path>",
    "adapter checkpoint to apply (default for the demo model: its trained adapter)",
  )
  .option("--no-adapter", "evaluate the base model alone")
  .option(
    "--no-base",
    "with an adapter, skip the base-model row (by default the base model alone is evaluated " +
      "on the same prompts too)",
  )
  .option("--max-seq-len <n>", "longest sequence in tokens", int("--max-seq-len", 2), 512)
  .option("--batch-size <n>", "examples per batch", int("--batch-size", 1), 8)
  .option("--limit <n>", "evaluate only the first N examples", int("--limit", 1))
  .option("--accuracy", "also generate greedily and report exact-match accuracy", true)
  .option("--no-accuracy", "report loss and perplexity only")
  .option(
    "--show <n>",
    "print the first N generated answers beside the expected ones",
    int("--show", 0),
    0,
  )
  .option("--json", "print machine-readable JSON", false)
  .addOption(
    new Option("--template <name>", "prompt template").choices(["alpaca", "none"]),
  )
  .action(async (opts) => {
    const { runEval } = await import("./cli/eval.ts");
    await runEval(opts);
  });

try {
  await program.parseAsync(["deno", "main.ts", ...Deno.args]);
} catch (e) {
  console.error(`error: ${(e as Error).message}`);
  if (Deno.env.get("LLAMA_ADAPTER_DEBUG")) console.error((e as Error).stack);
  Deno.exit(1);
}
