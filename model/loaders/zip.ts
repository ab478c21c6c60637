/**
 * Reader for the zip container of PyTorch checkpoints (`torch.save` since PyTorch 1.6).
 *
 * PyTorch writes every entry uncompressed ("stored"), so an entry's data is a plain byte range of
 * the file and tensors can be read in place. Compressed or encrypted entries are rejected. Zip64
 * records are followed, so archives and entries over 4 GiB work. CRCs are not checked because that
 * would mean reading every tensor at load time.
 *
 * Record layouts (end of central directory, zip64 locator and end record, central directory and
 * local file headers) follow PKWARE's .ZIP File Format Specification, APPNOTE.TXT.
 */
import type { ByteFile } from "./file.ts";

const EOCD_SIGNATURE = 0x06054b50;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;
const EOCD_BYTES = 22;
/** The end record is followed by a comment of at most 65535 bytes. */
const MAX_EOCD_SEARCH = EOCD_BYTES + 0xffff;
const ZIP64_EXTRA_ID = 0x0001;

/** Names of the compression methods most often met, for messages. */
const METHOD_NAMES: Record<number, string> = { 8: "deflate", 12: "bzip2", 14: "lzma", 93: "zstd" };

/** One entry of the central directory. */
export interface ZipEntry {
  name: string;
  /** Compression method; 0 means stored. */
  method: number;
  /** General purpose flags; bit 0 means encrypted. */
  flags: number;
  compressedSize: number;
  size: number;
  /** Offset of the entry's local file header. */
  localHeaderOffset: number;
}

function u64(view: DataView, at: number): number {
  return Number(view.getBigUint64(at, true));
}

/** An opened zip archive: its central directory, with entry data read on demand. */
export class ZipArchive {
  private constructor(readonly file: ByteFile, readonly entries: Map<string, ZipEntry>) {}

  /** Reads the central directory of `file`. Throws naming the file when it is not a valid zip. */
  static async open(file: ByteFile): Promise<ZipArchive> {
    const path = file.path;
    const notZip = (why: string) =>
      new Error(
        `${path}: not a valid zip archive (${why}); the file is truncated or damaged, so download it again`,
      );

    // Find the end of central directory record, searching back over a possible comment.
    const tailLength = Math.min(file.size, MAX_EOCD_SEARCH);
    const tailStart = file.size - tailLength;
    const tail = await file.read(tailStart, tailLength, "the zip end record");
    const tailView = new DataView(tail.buffer);
    let eocd = -1;
    for (let i = tailLength - EOCD_BYTES; i >= 0; i--) {
      if (tailView.getUint32(i, true) === EOCD_SIGNATURE) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw notZip("no end of central directory record");

    let count = tailView.getUint16(eocd + 10, true);
    let cdSize = tailView.getUint32(eocd + 12, true);
    let cdOffset = tailView.getUint32(eocd + 16, true);
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      const locator = eocd - 20;
      if (locator < 0 || tailView.getUint32(locator, true) !== ZIP64_LOCATOR_SIGNATURE) {
        throw notZip("zip64 fields without a zip64 locator");
      }
      const zip64At = u64(tailView, locator + 8);
      const record = new DataView((await file.read(zip64At, 56, "the zip64 end record")).buffer);
      if (record.getUint32(0, true) !== ZIP64_EOCD_SIGNATURE) throw notZip("bad zip64 end record");
      count = u64(record, 32);
      cdSize = u64(record, 40);
      cdOffset = u64(record, 48);
    }

    const cd = await file.read(cdOffset, cdSize, "the zip central directory");
    const view = new DataView(cd.buffer);
    const decoder = new TextDecoder();
    const entries = new Map<string, ZipEntry>();
    let at = 0;
    for (let i = 0; i < count; i++) {
      if (at + 46 > cd.length || view.getUint32(at, true) !== CENTRAL_SIGNATURE) {
        throw notZip(`central directory entry ${i} is damaged`);
      }
      const nameLength = view.getUint16(at + 28, true);
      const extraLength = view.getUint16(at + 30, true);
      const commentLength = view.getUint16(at + 32, true);
      if (at + 46 + nameLength + extraLength > cd.length) {
        throw notZip(`central directory entry ${i} is damaged`);
      }
      const entry: ZipEntry = {
        name: decoder.decode(cd.subarray(at + 46, at + 46 + nameLength)),
        flags: view.getUint16(at + 8, true),
        method: view.getUint16(at + 10, true),
        compressedSize: view.getUint32(at + 20, true),
        size: view.getUint32(at + 24, true),
        localHeaderOffset: view.getUint32(at + 42, true),
      };
      readZip64Extra(view, at + 46 + nameLength, extraLength, entry);
      entries.set(entry.name, entry);
      at += 46 + nameLength + extraLength + commentLength;
    }
    return new ZipArchive(file, entries);
  }

  /**
   * Returns the absolute byte offset of a stored entry's data, after checking that the entry is
   * neither compressed nor encrypted and that its data lies inside the file.
   */
  async dataOffset(entry: ZipEntry): Promise<number> {
    const path = this.file.path;
    if (entry.method !== 0) {
      const method = METHOD_NAMES[entry.method] ?? "unknown";
      throw new Error(
        `${path}: zip entry "${entry.name}" is compressed (method ${entry.method}, ${method}); ` +
          `PyTorch checkpoints store entries uncompressed, so save it again with torch.save or ` +
          `repack the archive without compression (zip -0)`,
      );
    }
    if (entry.flags & 1) {
      throw new Error(`${path}: zip entry "${entry.name}" is encrypted, which is not supported`);
    }
    const local = await this.file.read(entry.localHeaderOffset, 30, `zip entry "${entry.name}"`);
    const view = new DataView(local.buffer);
    if (view.getUint32(0, true) !== LOCAL_SIGNATURE) {
      throw new Error(
        `${path}: zip entry "${entry.name}" has no local header at byte ` +
          `${entry.localHeaderOffset}; the archive is damaged`,
      );
    }
    const start = entry.localHeaderOffset + 30 + view.getUint16(26, true) +
      view.getUint16(28, true);
    this.file.checkRange(start, entry.size, `zip entry "${entry.name}"`);
    return start;
  }

  /** Reads the whole data of a small stored entry, such as a pickle. */
  async readEntry(entry: ZipEntry): Promise<Uint8Array> {
    return this.file.read(await this.dataOffset(entry), entry.size, `zip entry "${entry.name}"`);
  }
}

/** Replaces the 0xFFFFFFFF fields of `entry` by the 64-bit values of its zip64 extra field. */
function readZip64Extra(view: DataView, start: number, length: number, entry: ZipEntry): void {
  let at = start;
  while (at + 4 <= start + length) {
    const id = view.getUint16(at, true);
    const size = view.getUint16(at + 2, true);
    if (id === ZIP64_EXTRA_ID) {
      let field = at + 4;
      for (const key of ["size", "compressedSize", "localHeaderOffset"] as const) {
        if (entry[key] === 0xffffffff && field + 8 <= at + 4 + size) {
          entry[key] = u64(view, field);
          field += 8;
        }
      }
    }
    at += 4 + size;
  }
}
