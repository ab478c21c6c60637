import assert from "node:assert/strict";
import { loadMeta } from "../model/loaders/meta.ts";
import { readTensorTable, unpickle } from "../model/loaders/pickle.ts";
import { pickle, tensorTable, zip } from "./loaders_writers.ts";

const ascii = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));

/** Returns a protocol 2 pickle that runs `os.system(command)` when Python loads it. */
function systemCall(command: string): Uint8Array {
  const cmd = new TextEncoder().encode(command);
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, cmd.length, true);
  return Uint8Array.from([
    ...ascii("\x80\x02cos\nsystem\n(X"),
    ...len,
    ...cmd,
    ...ascii("tR."),
  ]);
}

Deno.test("pickle rejects os.system", async () => {
  const dir = await Deno.makeTempDir();
  const marker = `${dir}/executed`;
  assert.throws(
    () => unpickle(systemCall(`touch ${marker}`), "evil.pkl"),
    /^Error: evil\.pkl: pickle references the global "os\.system", which a tensor checkpoint does not need/,
  );
  await assert.rejects(Deno.stat(marker), Deno.errors.NotFound);
  await Deno.remove(dir);
});

Deno.test("pickle rejects builtins.eval by STACK_GLOBAL", () => {
  // Protocol 4: SHORT_BINUNICODE "builtins", SHORT_BINUNICODE "eval", STACK_GLOBAL.
  const bytes = Uint8Array.from([
    ...ascii("\x80\x04\x8c\x08builtins\x8c\x04eval\x93"),
    ...ascii("\x8c\x041+1\x85R."),
  ]);
  assert.throws(() => unpickle(bytes, "evil.pkl"), /global "builtins\.eval"/);
});

Deno.test("pickle rejects other storage types", () => {
  const bytes = pickle(tensorTable([{
    name: "w",
    key: "0",
    storageClass: "LongStorage",
    storageNumel: 4,
    offset: 0,
    shape: [2, 2],
    stride: [2, 1],
  }]));
  assert.throws(
    () => unpickle(bytes, "model.pth"),
    /global "torch\.LongStorage".*weights must be float32, float16 or bfloat16/,
  );
});

Deno.test("pickle rejects unknown opcode", () => {
  // INST "os system" builds an object by calling a class; it is never accepted.
  assert.throws(
    () => unpickle(ascii("\x80\x02(ios\nsystem\n."), "evil.pkl"),
    /evil\.pkl: pickle opcode 0x69 \(INST\) is not accepted/,
  );
});

Deno.test("pickle rejects truncated data", () => {
  const bytes = pickle({ dict: [["a", "hello"]] });
  assert.throws(
    () => unpickle(bytes.subarray(0, bytes.length - 5), "cut.pkl"),
    /cut\.pkl: pickle ends in the middle of an opcode/,
  );
});

Deno.test("pickle reads tensor table", () => {
  const bytes = pickle(tensorTable([
    {
      name: "a.weight",
      key: "0",
      storageClass: "HalfStorage",
      storageNumel: 12,
      offset: 2,
      shape: [2, 5],
      stride: [5, 1],
    },
    {
      name: "b",
      key: "7",
      storageClass: "BFloat16Storage",
      storageNumel: 6,
      offset: 0,
      shape: [3, 2],
      stride: [1, 3],
    },
  ]));
  const table = readTensorTable(bytes, "t.pkl");
  assert.deepEqual([...table.keys()], ["a.weight", "b"]);
  assert.deepEqual(table.get("a.weight"), {
    kind: "tensor",
    storage: { kind: "storage", dtype: "f16", key: "0", numel: 12 },
    offset: 2,
    shape: [2, 5],
    stride: [5, 1],
  });
  assert.equal(table.get("b")!.storage.dtype, "bf16");
  assert.deepEqual(table.get("b")!.stride, [1, 3]);
});

Deno.test("pickle reads memo, LONG1 and BUILD", () => {
  // Written by hand as torch.save does for an OrderedDict state dict with `_metadata`:
  //   OrderedDict() ; memo 0 ; SETITEMS("w", _rebuild_parameter(_rebuild_tensor_v2(...)))
  //   ; BUILD {"_metadata": {}}
  const parts: number[] = [
    ...ascii("\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01("),
    ...ascii("X\x01\x00\x00\x00w"),
    ...ascii("ctorch._utils\n_rebuild_parameter\n("),
    ...ascii("ctorch._utils\n_rebuild_tensor_v2\n("),
    ...ascii(
      "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x003X\x03\x00\x00\x00cpu",
    ),
    // numel 300 as LONG1 with 2 bytes
    ...ascii("\x8a\x02\x2c\x01tQ"),
    ...ascii("K\x00K\x03M\x2c\x01\x86K\x64K\x01\x86\x89h\x00)RtR"),
    ...ascii("\x88}tR"),
    ...ascii("u}X\x09\x00\x00\x00_metadata}sb."),
  ];
  const table = readTensorTable(Uint8Array.from(parts), "hand.pkl");
  assert.deepEqual(table.get("w"), {
    kind: "tensor",
    storage: { kind: "storage", dtype: "f32", key: "3", numel: 300 },
    offset: 0,
    shape: [3, 300],
    stride: [100, 1],
  });
});

Deno.test("meta rejects pickle global", async () => {
  const dir = await Deno.makeTempDir();
  const marker = `${dir}/executed`;
  await Deno.writeTextFile(
    `${dir}/params.json`,
    JSON.stringify({ dim: 8, n_layers: 1, n_heads: 2, vocab_size: 5, multiple_of: 4 }),
  );
  const archive = zip([{ name: "consolidated.00/data.pkl", data: systemCall(`touch ${marker}`) }]);
  await Deno.writeFile(`${dir}/consolidated.00.pth`, archive);
  await assert.rejects(
    loadMeta(dir),
    (e: Error) => {
      assert.match(
        e.message,
        new RegExp(`^${dir}/consolidated\\.00\\.pth \\(consolidated\\.00/data\\.pkl\\): `),
      );
      assert.match(e.message, /global "os\.system"/);
      return true;
    },
  );
  await assert.rejects(Deno.stat(marker), Deno.errors.NotFound);
  await Deno.remove(dir, { recursive: true });
});
