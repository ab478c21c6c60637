/** Atomic file writes: write a temporary file beside the target, then rename it over the target. */

/**
 * Writes `data` to `path` atomically: a reader sees the old file or the new one, never a partial
 * one. The temporary file is removed if writing fails.
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${Date.now()}`;
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    const f = await Deno.open(tmp, { read: true, write: true });
    try {
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`failed to write ${path}: ${(e as Error).message}`);
  }
}
