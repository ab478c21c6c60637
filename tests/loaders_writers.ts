/**
 * Writers of small checkpoint files for loader tests: safetensors files, and PyTorch zip archives
 * with a protocol 2 pickle, built independently of the loaders they test.
 */

/** A safetensors header entry as the file stores it. */
export interface StEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/** A safetensors file split into its parsed header and data section. */
export interface StContents {
  header: Record<string, StEntry>;
  data: Uint8Array;
}

/** Reads a safetensors file into its header object and data bytes. */
export function readSt(path: string): StContents {
  const bytes = Deno.readFileSync(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  delete header.__metadata__;
  return { header, data: bytes.slice(8 + n) };
}

/** Encodes a safetensors file from a header object and its data bytes. */
export function encodeSt(header: Record<string, unknown>, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

/** Copies `names` of a safetensors file into a new file with recomputed offsets. */
export function subsetSt(src: StContents, names: string[]): Uint8Array {
  const header: Record<string, StEntry> = {};
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    const e = src.header[name];
    const bytes = src.data.subarray(e.data_offsets[0], e.data_offsets[1]);
    header[name] = {
      dtype: e.dtype,
      shape: e.shape,
      data_offsets: [offset, offset + bytes.length],
    };
    parts.push(bytes);
    offset += bytes.length;
  }
  const data = new Uint8Array(offset);
  let at = 0;
  for (const p of parts) {
    data.set(p, at);
    at += p.length;
  }
  return encodeSt(header, data);
}

// ---- Pickle (protocol 2) ----

/** A Python value for the pickle writer. */
export type PyValue =
  | number
  | string
  | boolean
  | null
  | PyValue[]
  | { tuple: PyValue[] }
  | { global: string }
  | { call: PyValue; args: PyValue[] }
  | { persid: PyValue }
  | { dict: [PyValue, PyValue][] };

/** Serialises a value as a protocol 2 pickle, with no memoisation. */
export function pickle(value: PyValue): Uint8Array {
  const out: number[] = [0x80, 2];
  const text = (s: string) => out.push(...new TextEncoder().encode(s));
  const u32 = (n: number) => out.push(n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255);
  const emit = (v: PyValue): void => {
    if (v === null) out.push(0x4e); // NONE
    else if (v === true) out.push(0x88); // NEWTRUE
    else if (v === false) out.push(0x89); // NEWFALSE
    else if (typeof v === "number") {
      out.push(0x4a); // BININT
      u32(v);
    } else if (typeof v === "string") {
      const bytes = new TextEncoder().encode(v);
      out.push(0x58); // BINUNICODE
      u32(bytes.length);
      out.push(...bytes);
    } else if (Array.isArray(v)) {
      out.push(0x5d, 0x28); // EMPTY_LIST, MARK
      v.forEach(emit);
      out.push(0x65); // APPENDS
    } else if ("tuple" in v) {
      out.push(0x28); // MARK
      v.tuple.forEach(emit);
      out.push(0x74); // TUPLE
    } else if ("global" in v) {
      const dot = v.global.lastIndexOf(".");
      out.push(0x63); // GLOBAL
      text(`${v.global.slice(0, dot)}\n${v.global.slice(dot + 1)}\n`);
    } else if ("call" in v) {
      emit(v.call);
      emit({ tuple: v.args });
      out.push(0x52); // REDUCE
    } else if ("persid" in v) {
      emit(v.persid);
      out.push(0x51); // BINPERSID
    } else {
      out.push(0x7d, 0x28); // EMPTY_DICT, MARK
      for (const [k, x] of v.dict) {
        emit(k);
        emit(x);
      }
      out.push(0x75); // SETITEMS
    }
  };
  emit(value);
  out.push(0x2e); // STOP
  return new Uint8Array(out);
}

/** A tensor entry for `tensorTable`: storage key, storage class, offset, shape and stride. */
export interface TableTensor {
  name: string;
  key: string;
  /** A torch storage class name such as "HalfStorage". */
  storageClass: string;
  storageNumel: number;
  offset: number;
  shape: number[];
  stride: number[];
}

/** Builds the value torch.save pickles for a dict of tensors. */
export function tensorTable(tensors: TableTensor[]): PyValue {
  const orderedDict = { call: { global: "collections.OrderedDict" }, args: [] };
  return {
    dict: tensors.map((t) => [t.name, {
      call: { global: "torch._utils._rebuild_tensor_v2" },
      args: [
        {
          persid: {
            tuple: ["storage", { global: `torch.${t.storageClass}` }, t.key, "cpu", t.storageNumel],
          },
        },
        t.offset,
        { tuple: t.shape },
        { tuple: t.stride },
        false,
        orderedDict,
      ],
    }]),
  };
}

// ---- Zip ----

/** One zip entry; `method` other than 0 writes the header of a compressed entry. */
export interface ZipEntry {
  name: string;
  data: Uint8Array;
  method?: number;
}

/**
 * Writes a zip archive of stored entries (CRC fields are left zero). With `zip64`, every size and
 * offset is written as 0xFFFFFFFF with its value in a zip64 extra field, and the end records are
 * the zip64 ones, as a writer does for archives over 4 GiB.
 */
export function zip(entries: ZipEntry[], { zip64 = false } = {}): Uint8Array {
  const chunks: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  const FULL = 0xffffffff;
  let offset = 0;
  for (const e of entries) {
    const name = new TextEncoder().encode(e.name);
    const localExtra = zip64 ? 20 : 0;
    const local = new Uint8Array(30 + name.length + localExtra);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, zip64 ? 45 : 20, true);
    lv.setUint16(8, e.method ?? 0, true);
    lv.setUint32(18, zip64 ? FULL : e.data.length, true);
    lv.setUint32(22, zip64 ? FULL : e.data.length, true);
    lv.setUint16(26, name.length, true);
    lv.setUint16(28, localExtra, true);
    local.set(name, 30);
    if (zip64) {
      const at = 30 + name.length;
      lv.setUint16(at, 0x0001, true);
      lv.setUint16(at + 2, 16, true);
      lv.setBigUint64(at + 4, BigInt(e.data.length), true);
      lv.setBigUint64(at + 12, BigInt(e.data.length), true);
    }

    const centralExtra = zip64 ? 28 : 0;
    const cd = new Uint8Array(46 + name.length + centralExtra);
    const cv = new DataView(cd.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, zip64 ? 45 : 20, true);
    cv.setUint16(6, zip64 ? 45 : 20, true);
    cv.setUint16(10, e.method ?? 0, true);
    cv.setUint32(20, zip64 ? FULL : e.data.length, true);
    cv.setUint32(24, zip64 ? FULL : e.data.length, true);
    cv.setUint16(28, name.length, true);
    cv.setUint16(30, centralExtra, true);
    cv.setUint32(42, zip64 ? FULL : offset, true);
    cd.set(name, 46);
    if (zip64) {
      const at = 46 + name.length;
      cv.setUint16(at, 0x0001, true);
      cv.setUint16(at + 2, 24, true);
      cv.setBigUint64(at + 4, BigInt(e.data.length), true);
      cv.setBigUint64(at + 12, BigInt(e.data.length), true);
      cv.setBigUint64(at + 20, BigInt(offset), true);
    }

    chunks.push(local, e.data);
    central.push(cd);
    offset += local.length + e.data.length;
  }
  const cdSize = central.reduce((a, c) => a + c.length, 0);
  const ends: Uint8Array[] = [];
  if (zip64) {
    const record = new Uint8Array(56);
    const rv = new DataView(record.buffer);
    rv.setUint32(0, 0x06064b50, true);
    rv.setBigUint64(4, 44n, true);
    rv.setUint16(12, 45, true);
    rv.setUint16(14, 45, true);
    rv.setBigUint64(24, BigInt(entries.length), true);
    rv.setBigUint64(32, BigInt(entries.length), true);
    rv.setBigUint64(40, BigInt(cdSize), true);
    rv.setBigUint64(48, BigInt(offset), true);
    const locator = new Uint8Array(20);
    const lv = new DataView(locator.buffer);
    lv.setUint32(0, 0x07064b50, true);
    lv.setBigUint64(8, BigInt(offset + cdSize), true);
    lv.setUint32(16, 1, true);
    ends.push(record, locator);
  }
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, zip64 ? 0xffff : entries.length, true);
  ev.setUint16(10, zip64 ? 0xffff : entries.length, true);
  ev.setUint32(12, zip64 ? FULL : cdSize, true);
  ev.setUint32(16, zip64 ? FULL : offset, true);
  const all = [...chunks, ...central, ...ends, end];
  const out = new Uint8Array(all.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of all) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
