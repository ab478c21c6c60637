/**
 * `chat`: an interactive loop. Each message is formatted with the template and appended to the
 * conversation in the KV cache, so earlier turns stay in context until /reset or the context limit.
 */
import { formatPrompt } from "../data/templates.ts";
import { Session } from "../model/session.ts";
import { chooseTemplate, type ModelCliOptions, openForCli } from "./common.ts";

/** Options of the chat command. */
export interface ChatCliOptions extends ModelCliOptions {
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  decodeChunk: number;
  system?: string;
}

const encoder = new TextEncoder();

async function* lines(): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of Deno.stdin.readable) {
    buffered += decoder.decode(chunk, { stream: true });
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      yield buffered.slice(0, nl).replace(/\r$/, "");
      buffered = buffered.slice(nl + 1);
    }
  }
  if (buffered) yield buffered;
}

/** Runs the chat command until /exit or end of input. */
export async function runChat(o: ChatCliOptions): Promise<void> {
  const opened = await openForCli(o);
  const tokenizer = opened.tokenizer!;
  const template = chooseTemplate(o, opened);
  const eos = opened.checkpoint.config.eosIds;
  const session = Session.create(opened.llama);
  const interactive = Deno.stdin.isTerminal();
  const prompt = () => {
    if (interactive) Deno.stdout.writeSync(encoder.encode("> "));
  };
  console.error(
    `chat with ${o.model} (template '${template}', context ${session.capacity} tokens). ` +
      `Type /reset to clear the history, /exit or Ctrl-D to quit.`,
  );
  let turn = 0;
  let seed = o.seed;
  prompt();
  for await (const line of lines()) {
    const message = line.trim();
    if (message === "/exit" || message === "/quit") break;
    if (message === "/reset") {
      session.reset();
      turn = 0;
      console.error("(history cleared)");
      prompt();
      continue;
    }
    if (!message) {
      prompt();
      continue;
    }
    const instruction = turn === 0 && o.system ? `${o.system}\n\n${message}` : message;
    const text = formatPrompt(template, instruction);
    const ids = tokenizer.encode(text, { bos: true });
    if (session.position + ids.length + 1 > session.capacity) {
      console.error("(the conversation reached the context limit; history cleared)");
      session.reset();
    }
    if (ids.length + 1 > session.capacity) {
      console.error(`(message of ${ids.length} tokens is longer than the context; shorten it)`);
      prompt();
      continue;
    }
    const decoder = tokenizer.decoder();
    const { stop } = await session.generate(ids, {
      temperature: o.temperature,
      topP: o.topP,
      seed: seed++,
      maxTokens: o.maxTokens,
      eosIds: eos,
      decodeChunk: o.decodeChunk,
      onTokens: (fresh) => {
        let piece = "";
        for (const id of fresh) if (!eos.includes(id)) piece += decoder.push(id);
        if (piece) Deno.stdout.writeSync(encoder.encode(piece));
      },
    });
    Deno.stdout.writeSync(encoder.encode(decoder.flush() + "\n"));
    if (stop === "context") {
      console.error("(context limit reached; history cleared)");
      session.reset();
    } else if (stop === "max-tokens") console.error(`(stopped at --max-tokens ${o.maxTokens})`);
    turn++;
    prompt();
  }
  opened.gpu.destroy();
}
