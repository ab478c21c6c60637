/**
 * Reader for the safetensors format: an 8-byte little-endian header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`, then the
 * tensor data, with offsets counted from the first byte after the header. Only the header is read
 * here; tensors become lazy sources that read their own byte range.
 */
import { fmtShape, numel } from "../../kernels/device.ts";
import type { WeightDType, WeightSource } from "../weights.ts";
import { ByteFile, fileTensor } from "./file.ts";

/** Largest header accepted, in bytes: the limit of Hugging Face's safetensors library. */
export const MAX_HEADER_BYTES = 100_000_000;

/** Element sizes of every dtype the safetensors format defines. */
const DTYPE_SIZES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

/** Safetensors dtypes this project loads, and their `WeightDType`. */
const SUPPORTED: Record<string, WeightDType> = { F32: "f32", F16: "f16", BF16: "bf16" };

/** One tensor entry of a safetensors header. */
export interface SafetensorsEntry {
  /** Name as stored in the file. */
  name: string;
  /** Safetensors dtype string, e.g. "BF16". */
  dtype: string;
  shape: number[];
  /** Absolute byte offset of the first element in the file. */
  offset: number;
  /** Data length in bytes. */
  length: number;
}

/** A parsed safetensors file. */
export interface SafetensorsFile {
  file: ByteFile;
  /** Entries by stored name, in header order. */
  tensors: Map<string, SafetensorsEntry>;
  /** The optional `__metadata__` map. */
  metadata: Record<string, string>;
}

/**
 * Reads and validates the header of the safetensors file at `path`: every entry needs a known
 * dtype, a shape of non-negative integers and a byte range that matches the shape and lies inside
 * the file. Throws naming the file and the tensor.
 */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  const file = await ByteFile.open(path);
  if (file.size < 8) {
    throw new Error(
      `${path}: file has ${file.size} bytes, too short for a safetensors header; the file is ` +
        `truncated, so download it again`,
    );
  }
  const lengthBytes = await file.read(0, 8, "the header length");
  const headerLength = new DataView(lengthBytes.buffer).getBigUint64(0, true);
  if (headerLength > BigInt(Math.min(MAX_HEADER_BYTES, file.size - 8))) {
    throw new Error(
      `${path}: safetensors header length ${headerLength} is larger than the file ` +
        `(${file.size} bytes) or than ${MAX_HEADER_BYTES} bytes; the file is truncated or is not ` +
        `a safetensors file`,
    );
  }
  const headerBytes = await file.read(8, Number(headerLength), "the header");
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new Error(`${path}: safetensors header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new Error(`${path}: safetensors header is not a JSON object`);
  }

  const dataStart = 8 + Number(headerLength);
  const tensors = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = (value ?? {}) as Record<string, string>;
      continue;
    }
    tensors.set(name, parseEntry(file, name, value, dataStart));
  }
  return { file, tensors, metadata };
}

function parseEntry(file: ByteFile, name: string, value: unknown, dataStart: number) {
  const invalid = (what: string) =>
    new Error(`${file.path}: tensor "${name}" has ${what} in the safetensors header`);
  if (typeof value !== "object" || value === null) throw invalid("no entry object");
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;

  if (typeof dtype !== "string" || !(dtype in DTYPE_SIZES)) {
    throw new Error(
      `${file.path}: tensor "${name}" has unknown dtype ${JSON.stringify(dtype)}; the ` +
        `safetensors dtypes are ${Object.keys(DTYPE_SIZES).join(", ")}`,
    );
  }
  const isCount = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0;
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw invalid(`an invalid shape ${JSON.stringify(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    throw invalid(`invalid data_offsets ${JSON.stringify(offsets)}`);
  }

  const [begin, end] = offsets as number[];
  const length = numel(shape) * DTYPE_SIZES[dtype];
  if (end - begin !== length) {
    throw new Error(
      `${file.path}: tensor "${name}" has data_offsets [${begin}, ${end}] (${end - begin} ` +
        `bytes) but its shape ${fmtShape(shape)} of ${dtype} needs ${length} bytes; the header ` +
        `is inconsistent, so export the checkpoint again`,
    );
  }
  file.checkRange(dataStart + begin, length, `tensor "${name}" ${fmtShape(shape)} ${dtype}`);
  return { name, dtype, shape: shape as number[], offset: dataStart + begin, length };
}

/**
 * Reads the whole F32 tensor `name` of `st`. Throws naming the file and the tensor when the
 * tensor is missing or has another dtype.
 */
export async function readF32Tensor(
  st: SafetensorsFile,
  name: string,
): Promise<{ shape: number[]; data: Float32Array }> {
  const entry = st.tensors.get(name);
  if (!entry) throw new Error(`${st.file.path}: tensor "${name}" is missing`);
  if (entry.dtype !== "F32") {
    throw new Error(`${st.file.path}: tensor "${name}" has dtype ${entry.dtype}, expected F32`);
  }
  const bytes = await st.file.read(entry.offset, entry.length, `tensor "${name}"`);
  // A copy starts at byte 0 of its own buffer, so it is aligned for a Float32Array.
  return { shape: entry.shape, data: new Float32Array(bytes.slice().buffer) };
}

/**
 * Returns a lazy source named `canonical` for a safetensors entry. Throws naming the file and the
 * stored name unless the dtype is F32, F16 or BF16.
 */
export function safetensorsSource(
  st: SafetensorsFile,
  entry: SafetensorsEntry,
  canonical: string,
): WeightSource {
  const dtype = SUPPORTED[entry.dtype];
  if (!dtype) {
    throw new Error(
      `${st.file.path}: tensor "${entry.name}" has dtype ${entry.dtype}, which this loader does ` +
        `not read; weights must be F32, F16 or BF16, so convert the checkpoint to one of them`,
    );
  }
  return fileTensor(st.file, canonical, entry.shape, dtype, entry.offset, `tensor "${entry.name}"`);
}
