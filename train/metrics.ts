/** Training metrics as JSON Lines: one object per logged step, appended as the run goes. */

/** Appends JSON records to a file, one per line. */
export class MetricsLog {
  readonly path: string;
  #file: Deno.FsFile;
  #encoder = new TextEncoder();

  private constructor(path: string, file: Deno.FsFile) {
    this.path = path;
    this.#file = file;
  }

  /** Opens `path` for appending (a resumed run continues the same file). */
  static async open(path: string, append: boolean): Promise<MetricsLog> {
    const file = await Deno.open(path, {
      write: true,
      create: true,
      append,
      truncate: !append,
    });
    return new MetricsLog(path, file);
  }

  /** Writes one record as a line. */
  async write(record: Record<string, unknown>): Promise<void> {
    await this.#file.write(this.#encoder.encode(JSON.stringify(record) + "\n"));
  }

  close(): void {
    this.#file.close();
  }
}

/** Reads the records of a metrics file; lines that are not JSON objects are skipped. */
export async function readMetrics(path: string): Promise<Record<string, unknown>[]> {
  const text = await Deno.readTextFile(path);
  const out: Record<string, unknown>[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // A line cut short by a killed run is expected at the end of the file.
    }
  }
  return out;
}
