/**
 * A restricted reader for the pickle that `torch.save` writes for a dict of tensors.
 *
 * Python's pickle can call any importable function, so loading an untrusted checkpoint with it can
 * run arbitrary code. This reader interprets the stack machine itself and never calls anything:
 * it accepts only the opcodes a tensor table uses (protocols 2 to 4) and only these globals:
 *   - `collections.OrderedDict`, which becomes an empty dict;
 *   - `torch._utils._rebuild_tensor_v2` and `torch._utils._rebuild_parameter`, which become
 *     tensor descriptions (storage, offset, shape, stride);
 *   - `torch.FloatStorage`, `torch.HalfStorage` and `torch.BFloat16Storage`, which may only appear
 *     in a persistent id `("storage", class, key, location, numel)` naming a storage record.
 * Any other global is rejected when the GLOBAL opcode names it, before any later opcode runs.
 */
import type { WeightDType } from "../weights.ts";

/** Storage classes accepted, with the element type they store. */
const STORAGE_CLASSES: Record<string, WeightDType> = {
  "torch.FloatStorage": "f32",
  "torch.HalfStorage": "f16",
  "torch.BFloat16Storage": "bf16",
};

const ORDERED_DICT = "collections.OrderedDict";
const REBUILD_TENSOR = "torch._utils._rebuild_tensor_v2";
const REBUILD_PARAMETER = "torch._utils._rebuild_parameter";
const ALLOWED_GLOBALS = [
  ORDERED_DICT,
  REBUILD_TENSOR,
  REBUILD_PARAMETER,
  ...Object.keys(STORAGE_CLASSES),
];

/** A storage record of the checkpoint archive, as named by a persistent id. */
export interface StorageRef {
  kind: "storage";
  dtype: WeightDType;
  /** Record name under `<archive>/data/`. */
  key: string;
  /** Number of elements in the storage. */
  numel: number;
}

/** A tensor as a view of a storage: element offset, shape and strides in elements. */
export interface TensorRef {
  kind: "tensor";
  storage: StorageRef;
  offset: number;
  shape: number[];
  stride: number[];
}

/** A Python tuple. */
class Tuple {
  constructor(readonly items: PickleValue[]) {}
}

/** A Python dict or OrderedDict. */
class Dict {
  readonly map = new Map<PickleValue, PickleValue>();
}

/** An allowed global, by its dotted name. */
class Global {
  constructor(readonly name: string) {}
}

/** A value on the pickle stack. */
export type PickleValue =
  | null
  | boolean
  | number
  | string
  | PickleValue[]
  | Tuple
  | Dict
  | Global
  | StorageRef
  | TensorRef;

const MARK = Symbol("mark");

/** Opcode names, for messages about opcodes this reader does not accept. */
const OPCODE_NAMES: Record<number, string> = {
  0x63: "GLOBAL",
  0x69: "INST",
  0x6f: "OBJ",
  0x81: "NEWOBJ",
  0x92: "NEWOBJ_EX",
  0x50: "PERSID",
  0x62: "BUILD",
  0x67: "GET",
  0x70: "PUT",
  0x53: "STRING",
  0x56: "UNICODE",
  0x49: "INT",
  0x4c: "LONG",
  0x46: "FLOAT",
};

/**
 * Interprets a pickle with the restrictions above and returns its value. `source` names the file
 * and entry for errors. Throws on any other global, opcode or malformed data.
 */
export function unpickle(bytes: Uint8Array, source: string): PickleValue {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const stack: (PickleValue | typeof MARK)[] = [];
  const memo = new Map<number, PickleValue>();
  let pos = 0;

  const fail = (message: string): never => {
    throw new Error(`${source}: ${message} (pickle byte ${pos})`);
  };
  const need = (n: number) => {
    if (pos + n > bytes.length) fail("pickle ends in the middle of an opcode");
  };
  const u8 = () => {
    need(1);
    return bytes[pos++];
  };
  const u16 = () => {
    need(2);
    pos += 2;
    return view.getUint16(pos - 2, true);
  };
  const u32 = () => {
    need(4);
    pos += 4;
    return view.getUint32(pos - 4, true);
  };
  const u64 = () => {
    need(8);
    pos += 8;
    const v = view.getBigUint64(pos - 8, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`length ${v} is too large`);
    return Number(v);
  };
  const text = (n: number) => {
    need(n);
    pos += n;
    return decoder.decode(bytes.subarray(pos - n, pos));
  };
  const line = () => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail("pickle ends inside a GLOBAL name");
    const s = text(end - pos);
    pos++;
    return s;
  };
  const pop = (): PickleValue => {
    const v = stack.pop();
    if (v === undefined || v === MARK) return fail("pickle stack underflow");
    return v as PickleValue;
  };
  const top = (): PickleValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) return fail("pickle stack underflow");
    return v as PickleValue;
  };
  const popMark = (): PickleValue[] => {
    const at = stack.lastIndexOf(MARK);
    if (at < 0) fail("pickle has no MARK for a TUPLE, SETITEMS or APPENDS");
    const items = stack.splice(at) as PickleValue[];
    return items.slice(1);
  };
  const global = (module: string, name: string): Global => {
    const dotted = `${module}.${name}`;
    if (ALLOWED_GLOBALS.includes(dotted)) return new Global(dotted);
    const hint = /Storage$/.test(dotted)
      ? ` Storage type ${dotted} is not supported because weights must be float32, float16 or ` +
        `bfloat16.`
      : ` The file may be malicious or may not be a PyTorch tensor checkpoint, so it was not loaded.`;
    return fail(
      `pickle references the global "${dotted}", which a tensor checkpoint does not need; only ` +
        `${ALLOWED_GLOBALS.join(", ")} are accepted.${hint}`,
    );
  };
  const setItems = (target: PickleValue, items: PickleValue[]) => {
    if (!(target instanceof Dict)) fail("SETITEM on a value that is not a dict");
    for (let i = 0; i + 1 < items.length; i += 2) (target as Dict).map.set(items[i], items[i + 1]);
  };
  const appendItems = (target: PickleValue, items: PickleValue[]) => {
    if (!Array.isArray(target)) fail("APPEND on a value that is not a list");
    (target as PickleValue[]).push(...items);
  };

  while (true) {
    const opcode = u8();
    switch (opcode) {
      case 0x80: // PROTO
        if (u8() > 5) fail("pickle protocol is newer than 5");
        break;
      case 0x95: // FRAME: an 8-byte frame length, which needs no action here
        u64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) fail("pickle stops with more than one value on the stack");
        return pop();
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        need(4);
        pos += 4;
        stack.push(view.getInt32(pos - 4, true));
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: { // LONG1: little-endian two's complement of n bytes
        const n = u8();
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[pos + i]);
        if (n > 0 && bytes[pos + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        pos += n;
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) {
          fail(`integer ${v} is too large`);
        }
        stack.push(Number(v));
        break;
      }
      case 0x47: // BINFLOAT: big-endian float64
        need(8);
        pos += 8;
        stack.push(view.getFloat64(pos - 8, false));
        break;
      case 0x58: // BINUNICODE
        stack.push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(text(u64()));
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new Tuple([]));
        break;
      case 0x85: // TUPLE1
        stack.push(new Tuple([pop()]));
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        stack.push(new Tuple([pop(), b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        stack.push(new Tuple([pop(), b, c]));
        break;
      }
      case 0x74: // TUPLE
        stack.push(new Tuple(popMark()));
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Dict());
        break;
      case 0x61: { // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: { // LONG_BINGET
        const index = opcode === 0x68 ? u8() : u32();
        if (!memo.has(index)) fail(`memo entry ${index} is read before it is written`);
        stack.push(memo.get(index)!);
        break;
      }
      case 0x63: { // GLOBAL: "module\nname\n"
        const module = line();
        stack.push(global(module, line()));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") {
          fail("STACK_GLOBAL needs two strings");
        }
        stack.push(global(module as string, name as string));
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistentStorage(pop(), fail));
        break;
      case 0x52: { // REDUCE
        const args = pop();
        const callable = pop();
        stack.push(reduce(callable, args, fail));
        break;
      }
      case 0x62: { // BUILD: allowed only to set the attributes of an OrderedDict, which are dropped
        pop();
        if (!(top() instanceof Dict)) fail("BUILD is allowed only on an OrderedDict");
        break;
      }
      default: {
        const name = OPCODE_NAMES[opcode] ?? "unknown";
        pos--;
        fail(
          `pickle opcode 0x${
            opcode.toString(16).padStart(2, "0")
          } (${name}) is not accepted in a ` +
            `tensor checkpoint`,
        );
      }
    }
  }
}

/** Returns the storage a persistent id `("storage", class, key, location, numel)` names. */
function persistentStorage(pid: PickleValue, fail: (m: string) => never): StorageRef {
  const items = pid instanceof Tuple ? pid.items : [];
  const [tag, cls, key, , numel] = items;
  if (items.length !== 5 || tag !== "storage") {
    fail('persistent id is not a ("storage", class, key, location, numel) tuple');
  }
  if (!(cls instanceof Global) || !(cls.name in STORAGE_CLASSES)) {
    fail("persistent id does not name a FloatStorage, HalfStorage or BFloat16Storage class");
  }
  if (typeof key !== "string" || !Number.isSafeInteger(numel) || (numel as number) < 0) {
    fail("persistent id has an invalid storage key or element count");
  }
  return {
    kind: "storage",
    dtype: STORAGE_CLASSES[(cls as Global).name],
    key: key as string,
    numel: numel as number,
  };
}

function isIntTuple(v: PickleValue): v is Tuple {
  return v instanceof Tuple && v.items.every((x) => Number.isSafeInteger(x) && (x as number) >= 0);
}

/** Applies an allowed callable to its argument tuple without running any code. */
function reduce(callable: PickleValue, args: PickleValue, fail: (m: string) => never): PickleValue {
  if (!(callable instanceof Global)) return fail("REDUCE calls a value that is not a global");
  if (!(args instanceof Tuple)) return fail("REDUCE arguments are not a tuple");
  const a = args.items;

  if (callable.name === ORDERED_DICT) {
    if (a.length !== 0) fail("OrderedDict is called with arguments");
    return new Dict();
  }
  if (callable.name === REBUILD_TENSOR) {
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    const [storage, offset, shape, stride] = a;
    if (a.length < 6 || a.length > 7 || (storage as StorageRef)?.kind !== "storage") {
      fail("_rebuild_tensor_v2 is called with unexpected arguments");
    }
    if (!Number.isSafeInteger(offset) || (offset as number) < 0) {
      fail("_rebuild_tensor_v2 has an invalid storage offset");
    }
    if (!isIntTuple(shape) || !isIntTuple(stride) || shape.items.length !== stride.items.length) {
      fail("_rebuild_tensor_v2 has an invalid shape or stride");
    }
    return {
      kind: "tensor",
      storage: storage as StorageRef,
      offset: offset as number,
      shape: (shape as Tuple).items as number[],
      stride: (stride as Tuple).items as number[],
    };
  }
  if (callable.name === REBUILD_PARAMETER) {
    // (data, requires_grad, backward_hooks): a Parameter is its tensor here.
    const data = a[0] as TensorRef;
    if (a.length !== 3 || data?.kind !== "tensor") {
      fail("_rebuild_parameter has unexpected arguments");
    }
    return data;
  }
  return fail(`${callable.name} cannot be called`);
}

/**
 * Reads the tensor table that `torch.save` writes for a state dict: a dict (or OrderedDict) from
 * tensor names to tensors. Throws naming `source` if the pickle contains anything else.
 */
export function readTensorTable(bytes: Uint8Array, source: string): Map<string, TensorRef> {
  const value = unpickle(bytes, source);
  if (!(value instanceof Dict)) {
    throw new Error(`${source}: pickle does not contain a dict of tensors`);
  }
  const table = new Map<string, TensorRef>();
  for (const [name, tensor] of value.map) {
    if (typeof name !== "string" || (tensor as TensorRef)?.kind !== "tensor") {
      throw new Error(
        `${source}: pickle entry ${JSON.stringify(name)} is not a tensor; the file is not a ` +
          `state dict of tensors`,
      );
    }
    table.set(name, tensor as TensorRef);
  }
  return table;
}
