/**
 * Random-access reading of checkpoint files, and lazy tensors over their byte ranges.
 *
 * A checkpoint can be many gigabytes, so nothing here reads a whole file: `ByteFile.read` opens the
 * file, seeks to a range, reads it and closes the file again. Opening per read keeps no handle alive
 * between calls, so a `WeightSource` can sit unread for the life of the program.
 */
import { fmtShape, numel } from "../../kernels/device.ts";
import { unpackHalf } from "../../kernels/pack.ts";
import type { WeightDType, WeightSource } from "../weights.ts";

/** Bytes per element of each stored type. */
export const DTYPE_BYTES: Record<WeightDType, number> = { f32: 4, bf16: 2, f16: 2 };

/** A file of known size whose byte ranges are read on demand. */
export class ByteFile {
  private constructor(readonly path: string, readonly size: number) {}

  /** Stats `path` and returns a reader for it; throws if it is missing or not a regular file. */
  static async open(path: string): Promise<ByteFile> {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new Error(`${path}: file not found`);
      throw e;
    }
    if (!info.isFile) throw new Error(`${path}: not a regular file`);
    return new ByteFile(path, info.size);
  }

  /**
   * Reads `length` bytes at `offset` into a fresh buffer. `what` names the data in errors, e.g.
   * `tensor "norm.weight"`. Throws when the range ends past the end of the file.
   */
  async read(offset: number, length: number, what: string): Promise<Uint8Array> {
    this.checkRange(offset, length, what);
    const out = new Uint8Array(length);
    if (length === 0) return out;
    const file = await Deno.open(this.path, { read: true });
    try {
      await file.seek(offset, Deno.SeekMode.Start);
      let filled = 0;
      while (filled < length) {
        const n = await file.read(out.subarray(filled));
        if (n === null) {
          throw new Error(
            `${this.path}: ${what} ends at byte ${offset + length} but the file ended at byte ` +
              `${offset + filled}; the file changed or was truncated after it was opened`,
          );
        }
        filled += n;
      }
    } finally {
      file.close();
    }
    return out;
  }

  /** Throws, naming `what`, unless bytes [offset, offset + length) lie inside the file. */
  checkRange(offset: number, length: number, what: string): void {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0
    ) {
      throw new Error(
        `${this.path}: ${what} has an invalid byte range (${offset}, ${length} bytes)`,
      );
    }
    if (offset + length > this.size) {
      throw new Error(
        `${this.path}: ${what} needs bytes ${offset}..${offset + length} but the file has only ` +
          `${this.size} bytes; the file is truncated, so download or export it again`,
      );
    }
  }
}

/** Converts little-endian stored elements to f32 values. `bytes` must start at offset 0 of its buffer. */
export function decodeF32(bytes: Uint8Array, dtype: WeightDType): Float32Array {
  if (bytes.byteOffset !== 0) bytes = bytes.slice();
  if (dtype === "f32") return new Float32Array(bytes.buffer, 0, bytes.length / 4);
  return unpackHalf(new Uint16Array(bytes.buffer, 0, bytes.length / 2), dtype);
}

/** Reinterprets little-endian 16-bit elements as a Uint16Array (copying when unaligned). */
export function decodeHalf(bytes: Uint8Array): Uint16Array {
  if (bytes.byteOffset % 2 !== 0) bytes = bytes.slice();
  return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2);
}

/** Builds a `WeightSource` from a function that reads the tensor's raw little-endian bytes. */
export function lazySource(
  name: string,
  shape: number[],
  dtype: WeightDType,
  file: string,
  readBytes: () => Promise<Uint8Array>,
): WeightSource {
  const source: WeightSource = {
    name,
    shape,
    dtype,
    file,
    readF32: async () => decodeF32(await readBytes(), dtype),
  };
  if (dtype !== "f32") source.readHalf = async () => decodeHalf(await readBytes());
  return source;
}

/**
 * Returns a lazy tensor stored contiguously at byte `offset` of `file`. The range is checked now,
 * so a truncated file fails when it is loaded rather than when the tensor is first read.
 * `what` names the tensor as the file stores it, for errors.
 */
export function fileTensor(
  file: ByteFile,
  name: string,
  shape: number[],
  dtype: WeightDType,
  offset: number,
  what = `tensor "${name}"`,
): WeightSource {
  const length = numel(shape) * DTYPE_BYTES[dtype];
  file.checkRange(offset, length, `${what} ${fmtShape(shape)} ${dtype}`);
  return lazySource(name, shape, dtype, file.path, () => file.read(offset, length, what));
}
