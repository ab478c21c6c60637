/**
 * A minimal reader for the protobuf wire format, enough to walk a serialized message field by field
 * without a schema compiler: tags, varints, 32/64-bit fixed values and length-delimited fields.
 *
 * Every read checks the message bounds, so a truncated or corrupt file fails with an error that
 * names the file and the byte offset instead of returning garbage.
 */

/** Wire types of the protobuf encoding (the low 3 bits of a field tag). */
export const WireType = {
  VARINT: 0,
  I64: 1,
  LEN: 2,
  START_GROUP: 3,
  END_GROUP: 4,
  I32: 5,
} as const;

/** A field tag: the field number and how its value is encoded. */
export interface ProtoTag {
  field: number;
  wire: number;
}

const MAX_VARINT_BYTES = 10;

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Scratch space for decoding little-endian floats without a DataView per message. */
const SCRATCH = new DataView(new ArrayBuffer(8));

/** Sequential reader over one protobuf message (a byte range of `bytes`). */
export class ProtoReader {
  #pos: number;
  readonly #end: number;
  /** Low 32 bits of the last varint read. */
  #low32 = 0;

  /**
   * Creates a reader over `bytes[start, end)`. `source` names the file in error messages.
   */
  constructor(
    readonly bytes: Uint8Array,
    readonly source: string,
    start = 0,
    end = bytes.length,
  ) {
    this.#pos = start;
    this.#end = end;
  }

  /** Byte offset of the next read, from the start of `bytes`. */
  get pos(): number {
    return this.#pos;
  }

  /** True when the whole message has been read. */
  atEnd(): boolean {
    return this.#pos >= this.#end;
  }

  /** Reads a field tag. */
  tag(): ProtoTag {
    const at = this.#pos;
    const key = this.varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 0) this.#fail(at, "field number 0 is invalid");
    return { field, wire };
  }

  /** Reads an unsigned varint; values above 2^53 lose precision (no field used here is that large). */
  varint(): number {
    return this.#readVarint();
  }

  /** Reads an int32 varint; negative values are encoded as 10-byte two's complement varints. */
  int32(): number {
    this.#readVarint();
    return this.#low32 | 0;
  }

  /** Reads a bool varint. */
  bool(): boolean {
    return this.varint() !== 0;
  }

  /** Reads a little-endian float (wire type I32). */
  float(): number {
    const at = this.#take(4, "float");
    for (let i = 0; i < 4; i++) SCRATCH.setUint8(i, this.bytes[at + i]);
    return SCRATCH.getFloat32(0, true);
  }

  /** Reads the payload of a length-delimited field (a view, not a copy). */
  lengthDelimited(): Uint8Array {
    const at = this.#pos;
    const length = this.varint();
    if (length > this.#end - this.#pos) {
      this.#fail(
        at,
        `a field of ${length} bytes runs past the end of the data ` +
          `(${this.#end - this.#pos} bytes left)`,
      );
    }
    const start = this.#pos;
    this.#pos += length;
    return this.bytes.subarray(start, start + length);
  }

  /** Reads a UTF-8 string field. */
  string(): string {
    const at = this.#pos;
    const payload = this.lengthDelimited();
    try {
      return STRICT_UTF8.decode(payload);
    } catch {
      this.#fail(at, "a string field is not valid UTF-8");
    }
  }

  /** Returns a reader over an embedded message field. */
  message(): ProtoReader {
    const payload = this.lengthDelimited();
    const start = payload.byteOffset - this.bytes.byteOffset;
    return new ProtoReader(this.bytes, this.source, start, start + payload.length);
  }

  /** Skips the value of a field with wire type `wire`. */
  skip(wire: number): void {
    const at = this.#pos;
    switch (wire) {
      case WireType.VARINT:
        this.#readVarint();
        return;
      case WireType.I64:
        this.#take(8, "64-bit value");
        return;
      case WireType.LEN:
        this.lengthDelimited();
        return;
      case WireType.I32:
        this.#take(4, "32-bit value");
        return;
      case WireType.START_GROUP:
        for (;;) {
          if (this.atEnd()) this.#fail(at, "a group has no end tag");
          const inner = this.tag();
          if (inner.wire === WireType.END_GROUP) return;
          this.skip(inner.wire);
        }
      default:
        this.#fail(at, `wire type ${wire} is invalid`);
    }
  }

  /** Throws unless the field's wire type is `expected`, so a schema mismatch names the field. */
  expectWire(tag: ProtoTag, expected: number, what: string): void {
    if (tag.wire !== expected) {
      this.#fail(
        this.#pos,
        `field ${tag.field} (${what}) has wire type ${tag.wire}, expected ${expected}`,
      );
    }
  }

  #readVarint(): number {
    const at = this.#pos;
    let value = 0;
    let low32 = 0;
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      if (this.#pos >= this.#end) this.#fail(at, "a varint runs past the end of the data");
      const b = this.bytes[this.#pos++];
      value += (b & 0x7f) * 2 ** (7 * i);
      if (i < 5) low32 |= (b & 0x7f) << (7 * i);
      if ((b & 0x80) === 0) {
        this.#low32 = low32 >>> 0;
        return value;
      }
    }
    this.#fail(at, `a varint is longer than ${MAX_VARINT_BYTES} bytes`);
  }

  #take(n: number, what: string): number {
    const at = this.#pos;
    if (n > this.#end - at) this.#fail(at, `a ${what} runs past the end of the data`);
    this.#pos += n;
    return at;
  }

  #fail(at: number, message: string): never {
    throw new Error(
      `${this.source}: invalid protobuf at byte ${at}: ${message}; the file may be truncated or corrupt`,
    );
  }
}
