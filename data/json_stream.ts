/**
 * Streaming readers for training data: JSON Lines (one object a line) and files whose content is
 * one JSON array. Neither reads a file whole. The array reader scans the text chunk by chunk,
 * tracking string and bracket state, cuts out each top-level element and parses that element
 * alone with `JSON.parse`, so memory contains one element at a time.
 *
 * Problems inside the data (broken JSON, a missing comma, an unclosed array) come out as items of
 * kind "error" or "syntax" with the line where they start, and the caller decides whether to skip
 * or stop.
 * Only a missing file or a file that is neither format throws.
 */

/** An error in a data file; the message starts with the file and, where known, the line. */
export class DataError extends Error {
  constructor(readonly file: string, readonly line: number | null, message: string) {
    super(line === null ? `${file}: ${message}` : `${file}:${line}: ${message}`);
    this.name = "DataError";
  }
}

/**
 * One item of a data stream, with the 1-based line where it starts. It is a parsed record, a
 * record that failed to parse ("error"), a syntax error between the records of an array
 * ("syntax") or a whitespace-only line of JSON Lines ("blank").
 */
export type JsonItem =
  | { kind: "value"; line: number; value: unknown }
  | { kind: "error"; line: number; message: string }
  | { kind: "syntax"; line: number; message: string }
  | { kind: "blank"; line: number };

/** Layout of a data file, detected from its first non-whitespace character. */
export type JsonFileFormat = "array" | "jsonl";

const enum State {
  BeforeArray,
  ExpectElement,
  AfterComma,
  InElement,
  AfterElement,
  AfterArray,
  Stopped,
}

const LF = 10;
const QUOTE = 34;
const BACKSLASH = 92;
const COMMA = 44;
const OPEN_BRACKET = 91;
const CLOSE_BRACKET = 93;
const OPEN_BRACE = 123;
const CLOSE_BRACE = 125;

function isSpace(c: number): boolean {
  return c === 32 || c === 9 || c === 10 || c === 13 || c === 0xfeff;
}

/**
 * Incremental scanner for one top-level JSON array. Feed text with `push` in chunks of any size
 * (split anywhere, even inside a string or escape), then call `end`. Each call returns the
 * elements and structural errors completed so far, in file order.
 *
 * An object or array element ends when its brackets balance (outside strings); a scalar ends at
 * whitespace, a comma or ']'. The element's text is then parsed alone, so `JSON.parse` reports
 * any error inside it. After a missing comma the scanner reports an error and starts a new element
 * at the stray character. An element whose brackets never balance runs to the end of the file.
 */
export class JsonArrayScanner {
  #state = State.BeforeArray;
  #line = 1;
  #parts: string[] = [];
  #elementLine = 0;
  /** Brackets open in the current element, innermost last. */
  #open: number[] = [];
  #inString = false;
  #escape = false;
  /** True when the current element is a scalar, which ends at whitespace too. */
  #scalar = false;
  #out: JsonItem[] = [];

  /** Scans one chunk and returns the items it completed. */
  push(chunk: string): JsonItem[] {
    let start = -1;
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk.charCodeAt(i);
      if (this.#state === State.InElement) {
        if (start < 0) start = i;
        if (this.#inString) {
          if (this.#escape) this.#escape = false;
          else if (c === BACKSLASH) this.#escape = true;
          else if (c === QUOTE) this.#inString = false;
          if (c === LF) this.#line++;
          continue;
        }
        if (c === QUOTE) {
          this.#inString = true;
          continue;
        }
        if (this.#scalar && (isSpace(c) || c === COMMA || c === CLOSE_BRACKET)) {
          this.#parts.push(chunk.slice(start, i));
          start = -1;
          this.#finishElement();
          this.#state = State.AfterElement;
          i--; // Rescan this character as the separator.
          continue;
        }
        if (c === LF) this.#line++;
        if (c === OPEN_BRACE || c === OPEN_BRACKET) this.#open.push(c);
        else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
          // A closer pops back to its matching opener, so a mismatched pair such as `[1}` still
          // ends the element at the right place. A closer with no matching opener is ignored.
          const opener = this.#open.lastIndexOf(c === CLOSE_BRACE ? OPEN_BRACE : OPEN_BRACKET);
          if (opener >= 0) this.#open.length = opener;
          if (opener >= 0 && this.#open.length === 0 && !this.#scalar) {
            this.#parts.push(chunk.slice(start, i + 1));
            start = -1;
            this.#finishElement();
            this.#state = State.AfterElement;
          }
        }
        continue;
      }

      if (c === LF) this.#line++;
      if (isSpace(c) || this.#state === State.Stopped) continue;
      switch (this.#state) {
        case State.BeforeArray:
          if (c === OPEN_BRACKET) this.#state = State.ExpectElement;
          else {
            this.#syntaxError(this.#line, `expected '[' to open the array, found ${quoteChar(c)}`);
            this.#state = State.Stopped;
          }
          break;
        case State.ExpectElement:
        case State.AfterComma:
          if (c === CLOSE_BRACKET) {
            if (this.#state === State.AfterComma) {
              this.#syntaxError(this.#line, "trailing comma before ']'");
            }
            this.#state = State.AfterArray;
          } else if (c === COMMA) {
            this.#syntaxError(this.#line, "empty element between commas");
            this.#state = State.AfterComma;
          } else {
            this.#startElement(c);
            start = i;
            i--; // Rescan this character inside the element.
          }
          break;
        case State.AfterElement:
          if (c === COMMA) this.#state = State.AfterComma;
          else if (c === CLOSE_BRACKET) this.#state = State.AfterArray;
          else {
            this.#syntaxError(
              this.#line,
              `expected ',' or ']' after an element, found ${quoteChar(c)}`,
            );
            this.#startElement(c);
            start = i;
            i--;
          }
          break;
        case State.AfterArray:
          this.#syntaxError(this.#line, `unexpected ${quoteChar(c)} after the closing ']'`);
          this.#state = State.Stopped;
          break;
      }
    }
    if (this.#state === State.InElement && start >= 0) this.#parts.push(chunk.slice(start));
    return this.#take();
  }

  /** Ends the input and returns the remaining items, with an error if the array is not closed. */
  end(): JsonItem[] {
    switch (this.#state) {
      case State.InElement:
        if (this.#scalar && !this.#inString) {
          this.#finishElement();
          this.#syntaxError(this.#line, "unexpected end of file: missing ']' to close the array");
        } else {
          this.#error(
            this.#elementLine,
            "unexpected end of file inside this element (unclosed string or bracket)",
          );
        }
        break;
      case State.BeforeArray:
        this.#syntaxError(this.#line, "unexpected end of file: expected '['");
        break;
      case State.ExpectElement:
      case State.AfterComma:
      case State.AfterElement:
        this.#syntaxError(this.#line, "unexpected end of file: missing ']' to close the array");
        break;
    }
    this.#state = State.Stopped;
    return this.#take();
  }

  #startElement(c: number): void {
    this.#state = State.InElement;
    this.#elementLine = this.#line;
    this.#parts = [];
    this.#open = [];
    this.#inString = false;
    this.#escape = false;
    this.#scalar = c !== OPEN_BRACE && c !== OPEN_BRACKET;
  }

  #finishElement(): void {
    const text = this.#parts.join("");
    this.#parts = [];
    try {
      this.#out.push({ kind: "value", line: this.#elementLine, value: JSON.parse(text) });
    } catch (e) {
      this.#error(this.#elementLine, `invalid JSON: ${(e as Error).message}`);
    }
  }

  #error(line: number, message: string): void {
    this.#out.push({ kind: "error", line, message });
  }

  #syntaxError(line: number, message: string): void {
    this.#out.push({ kind: "syntax", line, message });
  }

  #take(): JsonItem[] {
    const out = this.#out;
    this.#out = [];
    return out;
  }
}

function quoteChar(c: number): string {
  return JSON.stringify(String.fromCharCode(c));
}

/** Yields the elements of a JSON array read from text chunks, with their starting lines. */
export async function* jsonArrayItems(
  chunks: AsyncIterable<string> | Iterable<string>,
): AsyncGenerator<JsonItem> {
  const scanner = new JsonArrayScanner();
  for await (const chunk of chunks) yield* scanner.push(chunk);
  yield* scanner.end();
}

/**
 * Yields one item per line of JSON Lines text. A line of only whitespace yields a "blank" item.
 * Any other line is parsed alone, and a line that is not valid JSON yields an "error" item.
 */
export async function* jsonLinesItems(
  chunks: AsyncIterable<string> | Iterable<string>,
): AsyncGenerator<JsonItem> {
  let pending = "";
  let line = 0;
  for await (const chunk of chunks) {
    const text = pending + chunk;
    let from = 0;
    let newline = text.indexOf("\n");
    while (newline >= 0) {
      line++;
      yield parseLine(text.slice(from, newline), line);
      from = newline + 1;
      newline = text.indexOf("\n", from);
    }
    pending = text.slice(from);
  }
  if (pending.length > 0) yield parseLine(pending, line + 1);
}

function parseLine(text: string, line: number): JsonItem {
  if (text.trim().length === 0) return { kind: "blank", line };
  try {
    return { kind: "value", line, value: JSON.parse(text) };
  } catch (e) {
    return { kind: "error", line, message: `invalid JSON: ${(e as Error).message}` };
  }
}

/**
 * Returns the layout that a first non-whitespace character starts: '[' an array, '{' JSON Lines,
 * anything else null.
 */
export function formatOfFirstChar(c: string): JsonFileFormat | null {
  if (c === "[") return "array";
  if (c === "{") return "jsonl";
  return null;
}

/**
 * Reads the records of a data file as a stream: a JSON array or JSON Lines, detected from the
 * first non-whitespace character. Calls `onFormat` once the format is known. Throws `DataError`
 * when the file is missing or starts with anything else; an empty file yields nothing.
 */
export async function* readJsonItems(
  path: string,
  onFormat?: (format: JsonFileFormat) => void,
): AsyncGenerator<JsonItem> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataError(path, null, "file not found");
    throw new DataError(path, null, `cannot open: ${(e as Error).message}`);
  }
  const chunks = file.readable.pipeThrough(new TextDecoderStream())[Symbol.asyncIterator]();
  try {
    // Buffer chunks until the first non-whitespace character decides the format.
    const head: string[] = [];
    let format: JsonFileFormat | null = null;
    let line = 1;
    while (format === null) {
      const next = await chunks.next();
      if (next.done) return;
      head.push(next.value);
      const text = next.value;
      for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c === LF) line++;
        if (isSpace(c)) continue;
        format = formatOfFirstChar(text[i]);
        if (format === null) {
          throw new DataError(
            path,
            line,
            `expected a JSON array ('[') or JSON Lines objects ('{'), found ${quoteChar(c)}`,
          );
        }
        break;
      }
    }
    onFormat?.(format);

    const rest = prepend(head, chunks);
    yield* format === "array" ? jsonArrayItems(rest) : jsonLinesItems(rest);
  } finally {
    await chunks.return?.();
  }
}

/** Yields the buffered chunks `head`, then the rest of `chunks`. */
async function* prepend(head: string[], chunks: AsyncIterator<string>): AsyncGenerator<string> {
  yield* head;
  while (true) {
    const next = await chunks.next();
    if (next.done) return;
    yield next.value;
  }
}
