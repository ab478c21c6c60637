/** `generate`: continue one prompt and stream the text to stdout. */
import { formatPrompt } from "../data/templates.ts";
import { Session } from "../model/session.ts";
import { chooseTemplate, type ModelCliOptions, openForCli } from "./common.ts";

/** Options of the generate command. */
export interface GenerateCliOptions extends ModelCliOptions {
  prompt?: string;
  promptFile?: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  decodeChunk: number;
  bos: boolean;
}

const encoder = new TextEncoder();

/** Runs the generate command. */
export async function runGenerate(o: GenerateCliOptions): Promise<void> {
  const prompt = await readPrompt(o);
  const opened = await openForCli(o);
  const tokenizer = opened.tokenizer!;
  const template = chooseTemplate(o, opened);
  const text = formatPrompt(template, prompt);
  const ids = tokenizer.encode(text, { bos: o.bos });
  const session = Session.create(opened.llama);
  const decoder = tokenizer.decoder();
  if (template === "none") {
    await Deno.stdout.write(encoder.encode(prompt));
    // Without a template the continuation follows the prompt's text. Pushing the prompt ids into
    // the decoder first keeps the leading space that decoding the whole sequence would give.
    for (const id of ids) decoder.push(id);
  } else if (!o.quiet) console.error(`template: ${template}`);
  const start = performance.now();
  let firstToken = 0;
  const { ids: out, stop } = await session.generate(ids, {
    temperature: o.temperature,
    topP: o.topP,
    seed: o.seed,
    maxTokens: o.maxTokens,
    eosIds: opened.checkpoint.config.eosIds,
    decodeChunk: o.decodeChunk,
    onTokens: (fresh) => {
      if (!firstToken) firstToken = performance.now();
      let piece = "";
      for (const id of fresh) {
        if (!opened.checkpoint.config.eosIds.includes(id)) piece += decoder.push(id);
      }
      if (piece) Deno.stdout.writeSync(encoder.encode(piece));
    },
  });
  const rest = decoder.flush();
  if (rest) await Deno.stdout.write(encoder.encode(rest));
  await Deno.stdout.write(encoder.encode("\n"));
  if (!o.quiet) {
    const seconds = (performance.now() - start) / 1000;
    const reason = stop === "eos"
      ? "end-of-sequence token"
      : stop === "context"
      ? `context limit of ${session.capacity} tokens`
      : `--max-tokens ${o.maxTokens}`;
    console.error(
      `[${out.length} tokens in ${seconds.toFixed(2)} s, first after ` +
        `${((firstToken - start) / 1000).toFixed(2)} s; stopped at the ${reason}]`,
    );
  }
  opened.gpu.destroy();
}

/** Returns the prompt from --prompt or --prompt-file; throws for invalid UTF-8 or neither given. */
export async function readPrompt(o: { prompt?: string; promptFile?: string }): Promise<string> {
  if ((o.prompt === undefined) === (o.promptFile === undefined)) {
    throw new Error("give the prompt with either --prompt TEXT or --prompt-file PATH");
  }
  if (o.promptFile !== undefined) {
    const bytes = await Deno.readFile(o.promptFile);
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      throw new Error(`${o.promptFile}: the prompt is not valid UTF-8 text; save it as UTF-8`);
    }
  }
  if (o.prompt!.includes("\uFFFD")) {
    throw new Error(
      "the prompt contains U+FFFD replacement characters, a sign of bytes that are not valid " +
        "UTF-8; pass the prompt as UTF-8 text",
    );
  }
  return o.prompt!;
}
