/**
 * Chooses and loads a tokenizer from a path: a tokenizer file, a model folder, or a model file with
 * its tokenizer beside it.
 *
 * File formats by name: `*.model` is SentencePiece, `*.json` is a Hugging Face tokenizer.json, and a
 * `.bin` whose name starts with or contains a "tok" word (`tokenizer.bin`, `model-tok512.bin`) is a
 * llama2.c tokenizer. Any other file is taken as a model, and its folder is searched.
 */
import { basename, dirname, extname, join } from "node:path";
import { loadHfTokenizer } from "./hf_tokenizer.ts";
import { loadLlama2cTokenizer } from "./llama2c_tokenizer.ts";
import { loadSentencePiece, UnsupportedTokenizerError } from "./sentencepiece.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** Tokenizer files looked for in a model folder, in order of preference. */
export const TOKENIZER_FILES = ["tokenizer.model", "tokenizer.json", "tokenizer.bin"];

/** Options for `loadTokenizer`. */
export interface LoadTokenizerOptions {
  /**
   * The model's vocabulary size. A tokenizer with more tokens is rejected, and a llama2.c
   * tokenizer must have exactly this many, because its format has no separate vocabulary size.
   */
  vocabSize?: number;
}

/** The outcome of a tokenizer search. */
export interface TokenizerSearch {
  /** Existing tokenizer files, in order of preference. */
  found: string[];
  /** Every path and pattern that was checked, for error messages. */
  lookedFor: string[];
}

/** True when the file name alone marks a tokenizer file (see the module comment). */
export function isTokenizerFileName(path: string): boolean {
  const name = basename(path).toLowerCase();
  const ext = extname(name);
  if (ext === ".model" || ext === ".json") return true;
  return ext === ".bin" && /(^|[-_.])tok/.test(name);
}

async function fileExists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/**
 * Lists the tokenizer files that could serve `path`:
 * - a tokenizer file: itself;
 * - a folder: its tokenizer.model, tokenizer.json, tokenizer.bin, then tokenizer.model in the
 *   parent folder (Meta's downloads keep it beside the model folders);
 * - a llama2.c model `X.bin`: `X-tok*.bin` and tokenizer.bin in its folder, then tokenizer.model and
 *   tokenizer.json there;
 * - any other model file: the same as for its folder.
 */
export async function findTokenizer(path: string): Promise<TokenizerSearch> {
  const info = await statOrNull(path);
  if (info?.isFile && isTokenizerFileName(path)) return { found: [path], lookedFor: [path] };
  if (!info) return { found: [], lookedFor: [path] };

  const folder = info.isDirectory ? path : dirname(path);
  const inFolder = (name: string) => join(folder, name);
  const lookedFor: string[] = [];
  const found: string[] = [];

  if (info.isFile && extname(path) === ".bin") {
    const stem = basename(path, ".bin");
    lookedFor.push(inFolder(`${stem}-tok*.bin`));
    const siblings: string[] = [];
    for await (const entry of Deno.readDir(folder)) {
      if (entry.isFile && entry.name.startsWith(`${stem}-tok`) && entry.name.endsWith(".bin")) {
        siblings.push(inFolder(entry.name));
      }
    }
    found.push(...siblings.sort());
    const order = ["tokenizer.bin", "tokenizer.model", "tokenizer.json"];
    for (const name of order) lookedFor.push(inFolder(name));
  } else {
    for (const name of TOKENIZER_FILES) lookedFor.push(inFolder(name));
    lookedFor.push(join(folder, "..", "tokenizer.model"));
  }

  for (const candidate of lookedFor) {
    if (!candidate.includes("*") && await fileExists(candidate)) found.push(candidate);
  }
  return { found, lookedFor };
}

/**
 * Loads one tokenizer file, choosing the format by its name (see the module comment). Throws when
 * the tokenizer does not fit `options.vocabSize`.
 */
export async function loadTokenizerFile(
  path: string,
  options: LoadTokenizerOptions = {},
): Promise<Tokenizer> {
  const ext = extname(path).toLowerCase();
  let tokenizer: Tokenizer;
  if (ext === ".model") {
    tokenizer = await loadSentencePiece(path);
  } else if (ext === ".json") {
    tokenizer = await loadHfTokenizer(path);
  } else if (ext === ".bin") {
    tokenizer = await loadLlama2cTokenizer(path, options.vocabSize);
  } else {
    throw new Error(
      `${path}: unknown tokenizer format; expected a .model (SentencePiece), .json ` +
        `(Hugging Face) or .bin (llama2.c) file`,
    );
  }
  const { vocabSize } = options;
  if (vocabSize !== undefined && tokenizer.vocabSize > vocabSize) {
    throw new Error(
      `${path}: the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary has ` +
        `${vocabSize}; use the tokenizer the model was trained with`,
    );
  }
  return tokenizer;
}

/**
 * Loads the tokenizer for `path` (a tokenizer file, a model folder or a model file; see
 * `findTokenizer`), trying the candidates in order. A candidate that uses an unsupported feature
 * (a SentencePiece unigram model, say) is passed over for the next one. Throws with the list of
 * paths looked for when none exists.
 */
export async function loadTokenizer(
  path: string,
  options: LoadTokenizerOptions = {},
): Promise<Tokenizer> {
  const { found, lookedFor } = await findTokenizer(path);
  if (found.length === 0) {
    throw new Error(
      `no tokenizer found for ${path}; looked for:\n  ${lookedFor.join("\n  ")}\n` +
        `pass the path of a tokenizer.model, tokenizer.json or llama2.c tokenizer.bin`,
    );
  }
  const unsupported: string[] = [];
  for (const candidate of found) {
    try {
      return await loadTokenizerFile(candidate, options);
    } catch (e) {
      if (!(e instanceof UnsupportedTokenizerError)) throw e;
      unsupported.push(e.message);
    }
  }
  throw new UnsupportedTokenizerError(
    `no supported tokenizer for ${path}:\n  ${unsupported.join("\n  ")}`,
  );
}
