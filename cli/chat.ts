/**
 * `chat`: an interactive loop. Each message is formatted with the template and appended to the
 * conversation in the KV cache, so earlier turns stay in context until /reset or the context limit.
 */
import { formatPrompt } from "../data/templates.ts";
import { Session } from "../model/session.ts";
import { chooseTemplate, type ModelCliOptions, openForCli } from "./common.ts";
import { DEFAULTS, DEMO_CHAT } from "./defaults.ts";

/** Options of the chat command. */
export interface ChatCliOptions extends ModelCliOptions {
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  decodeChunk: number;
  system?: string;
  /**
   * Fixed instruction: when set, each message is the input of a record with this instruction
   * rather than the instruction itself. The demo model's default is the demo data's instruction.
   */
  instruction?: string;
  /** Text put before each message used as input (the demo data starts inputs with a space). */
  inputPrefix?: string;
}

/**
 * Returns the instruction and input of a chat message: with a fixed `instruction`, the message
 * (after `prefix`) is the input. In both, the two characters `\n` stand for a line break, so one
 * typed line can hold a text and a question on its own line.
 */
export function chatRecord(
  message: string,
  instruction: string | undefined,
  prefix: string,
): { instruction: string; input?: string } {
  const text = message.replaceAll("\\n", "\n");
  return instruction ? { instruction, input: prefix + text } : { instruction: text };
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
  const demo = o.model === DEFAULTS.model && opened.adapter !== null;
  const fixed = o.instruction ?? (demo ? DEMO_CHAT.instruction : undefined);
  const prefix = o.inputPrefix ??
    (demo && o.instruction === undefined ? DEMO_CHAT.inputPrefix : "");
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
  if (fixed) {
    console.error(
      `Each message is the input of the instruction "${fixed}" (--instruction "" turns this ` +
        `off); type \\n for a line break.`,
    );
  }
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
    const record = chatRecord(message, fixed || undefined, prefix);
    const instruction = turn === 0 && o.system
      ? `${o.system}\n\n${record.instruction}`
      : record.instruction;
    const text = formatPrompt(template, instruction, record.input);
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
