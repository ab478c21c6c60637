/**
 * The command line as a user runs it: help text, generation on a fixture model, clear errors for
 * a missing model and bad options, and a short fine-tune/eval/generate round trip.
 */
import assert from "node:assert/strict";
import { chatRecord } from "../cli/chat.ts";
import { fixture, fixtureTest } from "./helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function run(
  args: string[],
  stdin?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, ...args],
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  });
  const child = cmd.spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const out = await child.output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("help lists every command and option with defaults", async () => {
  const top = await run(["--help"]);
  assert.equal(top.code, 0);
  for (const c of ["finetune", "generate", "chat", "eval"]) assert.match(top.stdout, new RegExp(c));
  const ft = await run(["finetune", "--help"]);
  assert.equal(ft.code, 0);
  for (const opt of ["--adapter-layers", "--adapter-len", "--lr", "--resume", "--max-seq-len"]) {
    assert.ok(ft.stdout.includes(opt), `finetune --help mentions ${opt}`);
  }
  assert.match(ft.stdout, /default: 10/);
  const gen = await run(["generate", "--help"]);
  assert.match(gen.stdout, /--temperature/);
  assert.match(gen.stdout, /--top-p/);
});

Deno.test("missing model path lists what was looked for", async () => {
  const r = await run(["generate", "--model", "/nonexistent/model", "--prompt", "hi"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not found/);
  assert.match(r.stderr, /config\.json/);
  assert.match(r.stderr, /params\.json/);
});

Deno.test("invalid option value names the option", async () => {
  const r = await run(["generate", "--prompt", "hi", "--top-p", "2"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /--top-p/);
});

fixtureTest("generate reproduces the golden greedy text", async () => {
  const golden = JSON.parse(await Deno.readTextFile(fixture("golden/generation.json")));
  const c = golden.cases[1];
  const r = await run([
    "generate",
    "--model",
    fixture(c.model),
    "--prompt",
    c.prompt,
    "--temperature",
    "0",
    "--max-tokens",
    String(c.steps - (c.prompt_ids.length - 1)),
    "--quiet",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, c.text);
});

fixtureTest("chat answers, resets and exits", async () => {
  const r = await run(
    [
      "chat",
      "--model",
      fixture("models/aidreams260K.bin"),
      "--temperature",
      "0",
      "--max-tokens",
      "8",
      "--quiet",
    ],
    "Once upon a time\n/reset\nThe dream\n/exit\n",
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /history cleared/);
  assert.equal(r.stdout.trim().split("\n").length, 2, `two answers expected:\n${r.stdout}`);
});

Deno.test("prompt file with invalid UTF-8 is rejected", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeFile(`${dir}/prompt.txt`, new Uint8Array([0x48, 0x69, 0xff, 0xfe]));
  const r = await run(["generate", "--prompt-file", `${dir}/prompt.txt`]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not valid UTF-8/);
  const both = await run(["generate"]);
  assert.match(both.stderr, /--prompt/);
});

Deno.test("chat message as instruction or input", () => {
  assert.deepEqual(chatRecord("Name a colour.", undefined, " "), {
    instruction: "Name a colour.",
  });
  assert.deepEqual(chatRecord("Tom has a cat.\\nWho has the cat?", "Answer using the text.", " "), {
    instruction: "Answer using the text.",
    input: " Tom has a cat.\nWho has the cat?",
  });
  assert.deepEqual(chatRecord("a\\nb", undefined, ""), { instruction: "a\nb" });
});
