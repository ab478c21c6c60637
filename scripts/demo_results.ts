/**
 * Measures the numbers of the demo results page (docs/results.md). It trains the default adapter
 * (what `deno task finetune` does with no arguments: prompts, gates and biases), the same adapter
 * without biases (`--no-bias`, LLaMA-Adapter V1), and a full fine-tune of the same base model on
 * the same data. It evaluates the base model and the three on the test split, prints the tables in
 * Markdown and writes the raw results to `runs/demo-results.json`.
 *
 *     deno run -A scripts/demo_results.ts [--full-lr RATE] [--limit N] [--skip-v1] [--skip-full]
 */
import { Command } from "commander";
import { DEFAULTS, DEMO_FINETUNE } from "../cli/defaults.ts";
import { type EvalResult, evaluate } from "../cli/eval.ts";
import { finetuneOptions } from "../cli/finetune.ts";
import { finetune, type FinetuneResult } from "../train/finetune.ts";

const root = new URL("../", import.meta.url).pathname;
const o = new Command()
  .option("--full-lr <rate>", "peak learning rate of full fine-tuning", Number, 1e-3)
  .option("--limit <n>", "evaluate the first N test examples only", Number)
  .option("--skip-full", "leave out full fine-tuning", false)
  .option("--skip-v1", "leave out the adapter without biases", false)
  .parse(["deno", "demo_results", ...Deno.args]).opts();

const common = {
  model: DEFAULTS.model,
  data: DEFAULTS.data,
  valData: DEFAULTS.valData,
  onBadRecord: "fail" as const,
  keep: 1,
};

async function size(path: string): Promise<number> {
  const info = await Deno.stat(path);
  if (info.isFile) return info.size;
  let total = 0;
  for await (const e of Deno.readDir(path)) {
    if (e.isFile) total += (await Deno.stat(`${path}/${e.name}`)).size;
  }
  return total;
}

async function evalModel(model: string, adapter: string | false): Promise<EvalResult> {
  return await evaluate({
    model,
    adapter,
    weights: "auto",
    data: DEFAULTS.testData,
    maxSeqLen: 256,
    batchSize: 8,
    limit: o.limit,
    accuracy: true,
    json: true,
    quiet: true,
    template: "alpaca",
  });
}

// Both runs take the command's settings; full fine-tuning keeps the demo's run length and batch.
const adapterRun = await finetune(finetuneOptions({ ...common, out: DEFAULTS.out }));
// One evaluation gives both rows: the adapter, and the base model alone on the same prompts.
const adapted = await evalModel(DEFAULTS.model, adapterRun.adapterPath);
const base = adapted.base!;

let v1Run = null, v1: EvalResult | null = null;
if (!o.skipV1) {
  v1Run = await finetune(finetuneOptions({ ...common, bias: false, out: `${root}runs/demo-v1` }));
  v1 = await evalModel(DEFAULTS.model, v1Run.adapterPath);
}

let fullRun = null, full: EvalResult | null = null;
if (!o.skipFull) {
  fullRun = await finetune(finetuneOptions({
    ...common,
    full: true,
    out: `${root}runs/demo-full`,
    lr: o.fullLr,
    epochs: DEMO_FINETUNE.epochs,
    batchSize: DEMO_FINETUNE.batchSize,
  }));
  full = await evalModel(fullRun.adapterPath, false);
}

const pct = (r: EvalResult) =>
  r.exactMatch
    ? `${(100 * r.exactMatch.accuracy).toFixed(1)}% (${r.exactMatch.correct}/${r.exactMatch.total})`
    : "-";
const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(2)} MB`;
/** Returns the table row of a trained method; `checkpoint` is the file whose size is reported. */
async function trainedRow(
  method: string,
  run: FinetuneResult,
  checkpoint: string,
  result: EvalResult,
): Promise<string[]> {
  return [
    method,
    String(run.summary.trainableParameters),
    mb(await size(checkpoint)),
    `${(run.summary.seconds as number).toFixed(0)} s`,
    result.loss.toFixed(3),
    pct(result),
  ];
}

const rows = [
  ["base model, no training", "0", "-", "-", base.loss.toFixed(3), pct(base)],
];
if (v1Run && v1) {
  const method = "LLaMA-Adapter V1: prompts and gates (`--no-bias`)";
  rows.push(await trainedRow(method, v1Run, v1Run.adapterPath, v1));
}
rows.push(
  await trainedRow(
    "LLaMA-Adapter with bias tuning (`deno task finetune`)",
    adapterRun,
    adapterRun.adapterPath,
    adapted,
  ),
);
if (fullRun && full) {
  const checkpoint = `${fullRun.adapterPath}/model.safetensors`;
  rows.push(await trainedRow("full fine-tuning (`--full`)", fullRun, checkpoint, full));
}
const table = [
  "| method | trainable parameters | checkpoint | training time | test loss | exact match |",
  "| --- | ---: | ---: | ---: | ---: | ---: |",
  ...rows.map((r) => `| ${r.join(" | ")} |`),
].join("\n");
const models: [string, EvalResult | null][] = [
  ["base", base],
  ["V1", v1],
  ["bias tuning", adapted],
  ["full", full],
];
const columns = models.filter(([, r]) => r !== null) as [string, EvalResult][];
const byTask = [
  `| task | ${columns.map(([name]) => name).join(" | ")} |`,
  `| --- | ${columns.map(() => "---:").join(" | ")} |`,
  ...Object.keys(adapted.exactMatch?.byTask ?? {}).map((task) => {
    const cells = columns.map(([, r]) => {
      const t = r.exactMatch?.byTask[task];
      return t ? `${t.correct}/${t.total}` : "-";
    });
    return `| ${task} | ${cells.join(" | ")} |`;
  }),
].join("\n");
const samples = adapted.samples.slice(0, 3).map((s) =>
  `- ${s.instruction.trim()} expected \`${s.expected.trim()}\`, adapter \`${s.got.trim()}\``
).join("\n");
const report = {
  date: new Date().toISOString(),
  base,
  adapted,
  v1,
  full,
  adapterSummary: adapterRun.summary,
  v1Summary: v1Run?.summary ?? null,
  fullSummary: fullRun?.summary ?? null,
};
await Deno.mkdir(`${root}runs`, { recursive: true });
await Deno.writeTextFile(`${root}runs/demo-results.json`, JSON.stringify(report, null, 2) + "\n");
console.log(table);
console.log();
console.log(byTask);
console.log();
console.log(samples);
