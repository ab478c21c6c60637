/**
 * The embedded demo: the committed base model loads, a shortened adapter fine-tune raises exact
 * match on validation records, and the README's commands run as written (with small step counts and a
 * temporary output folder).
 */
import assert from "node:assert/strict";
import { DEFAULTS } from "../cli/defaults.ts";
import { evaluate } from "../cli/eval.ts";
import { finetuneOptions } from "../cli/finetune.ts";
import { finetune } from "../train/finetune.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const VAL_LIMIT = 48;

async function demoModelPresent(): Promise<boolean> {
  try {
    return (await Deno.stat(`${DEFAULTS.model}/model.safetensors`)).isFile;
  } catch {
    return false;
  }
}

Deno.test({
  name: "demo adapter raises exact match",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    assert.ok(await demoModelPresent(), `the demo model is missing from ${DEFAULTS.model}`);
    const out = await Deno.makeTempDir({ prefix: "llama-adapter-demo-" });
    // The command's settings for the demo model (bias tuning on), shortened to 200 of 300 steps.
    const { adapterPath } = await finetune(finetuneOptions({
      model: DEFAULTS.model,
      data: DEFAULTS.data,
      out,
      maxSteps: 200,
      warmupSteps: 10,
      onBadRecord: "fail",
      keep: 1,
      quiet: true,
    }));
    const options = {
      model: DEFAULTS.model,
      weights: "auto" as const,
      data: DEFAULTS.valData,
      maxSeqLen: 256,
      batchSize: 8,
      limit: VAL_LIMIT,
      accuracy: true,
      json: true,
      quiet: true,
      template: "alpaca",
    };
    const adapted = await evaluate({ ...options, adapter: adapterPath });
    const base = adapted.base!;
    // The base model writes story sentences after the Alpaca prompt: 0 of these 48 answers exact,
    // 6.7 nats per answer token on the first 24. After 200 steps: 10 of 48 exact, 1.2 nats.
    const correct = (r: typeof base) => r.exactMatch!.correct;
    assert.ok(
      correct(adapted) >= correct(base) + 4,
      `exact match ${correct(adapted)}/${VAL_LIMIT} after 200 steps should be at least 4 above ` +
        `the base model's ${correct(base)}/${VAL_LIMIT}`,
    );
    assert.ok(
      adapted.loss < base.loss - 3,
      `answer loss ${adapted.loss} after 200 steps should be at least 3 below ${base.loss}`,
    );
    assert.equal(adapted.exactMatch!.total, VAL_LIMIT);
    await Deno.remove(out, { recursive: true });
  },
});

/**
 * Runs `deno task <args>` in the repository root with `stdin`, returning the exit code, stdout
 * and both streams together.
 */
async function task(
  args: string[],
  stdin = "",
): Promise<{ code: number; out: string; stdout: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", ...args],
    cwd: ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(stdin));
  await writer.close();
  const r = await child.output();
  const stdout = new TextDecoder().decode(r.stdout);
  return { code: r.code, out: stdout + new TextDecoder().decode(r.stderr), stdout };
}

Deno.test({
  name: "README commands run on the demo",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    assert.ok(await demoModelPresent(), `the demo model is missing from ${DEFAULTS.model}`);
    const readme = await Deno.readTextFile(`${ROOT}README.md`);
    // The quick start's commands, with the launcher that fetches Deno through npm.
    for (const command of ["finetune", "test"]) {
      assert.ok(
        readme.includes(`npx --yes deno@2.9.6 task ${command}`),
        `README shows 'npx --yes deno@2.9.6 task ${command}'`,
      );
    }
    for (const command of ["eval", "chat --temperature 0", "generate --no-adapter --prompt"]) {
      assert.ok(readme.includes(`deno task ${command}`), `README shows 'deno task ${command}'`);
    }
    const pinned = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
    assert.ok(pinned.tasks.finetune && pinned.tasks.test, "deno.json defines the tasks");

    const out = await Deno.makeTempDir({ prefix: "llama-adapter-readme-" });
    const ft = await task(["finetune", "--max-steps", "2", "--out", out, "--quiet"]);
    assert.equal(ft.code, 0, ft.out);
    const adapter = `${out}/adapter.safetensors`;
    const ev = await task(["eval", "--adapter", adapter, "--limit", "3", "--json", "--quiet"]);
    assert.equal(ev.code, 0, ev.out);
    const evaluated = JSON.parse(ev.stdout);
    assert.equal(evaluated.adapter, adapter);
    assert.equal(evaluated.exactMatch.total, 3);
    assert.equal(evaluated.base.adapter, null, "eval compares with the base model by default");
    assert.equal(evaluated.base.exactMatch.total, 3);
    const gen = await task([
      "generate",
      "--adapter",
      adapter,
      "--prompt",
      "Once upon a time",
      "--max-tokens",
      "8",
      "--quiet",
    ]);
    assert.equal(gen.code, 0, gen.out);
    // With the adapter's template the output is the response alone, not the prompt.
    assert.ok(!gen.stdout.includes("Once upon a time"), gen.stdout);
    // Without an adapter or template the continuation follows the prompt, with a space between.
    const story = await task([
      "generate",
      "--no-adapter",
      "--prompt",
      "Tom has a red kite.",
      "--max-tokens",
      "8",
      "--temperature",
      "0",
      "--quiet",
    ]);
    assert.equal(story.code, 0, story.out);
    assert.match(story.stdout, /^Tom has a red kite\. \S/, story.stdout);
    const chat = await task(
      ["chat", "--adapter", adapter, "--max-tokens", "8", "--quiet"],
      "What colour is the ball?\n/exit\n",
    );
    assert.equal(chat.code, 0, chat.out);
  },
});
