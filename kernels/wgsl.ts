/**
 * WGSL snippets shared by kernel generators: element access for packed 16-bit weights and the
 * linear workgroup index of a grid folded by `grid()`.
 */
import type { DType } from "./device.ts";

/** Returns the WGSL storage element type of a buffer of `dtype` (packed types use u32). */
export function storageType(dtype: DType): string {
  if (dtype === "f32") return "f32";
  if (dtype === "i32") return "i32";
  return "u32";
}

/**
 * Returns a WGSL function `fn <name>(i: u32) -> f32` reading element i of buffer `buf`, unpacking
 * bf16 (the upper 16 bits of an f32) or f16 values stored two per u32, low half first.
 */
export function loadFn(name: string, buf: string, dtype: DType): string {
  if (dtype === "f32") return `fn ${name}(i: u32) -> f32 { return ${buf}[i]; }`;
  if (dtype === "bf16") {
    return `fn ${name}(i: u32) -> f32 {
  let word = ${buf}[i >> 1u];
  let bits = select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u);
  return bitcast<f32>(bits);
}`;
  }
  if (dtype === "f16") {
    return `fn ${name}(i: u32) -> f32 {
  let pair = unpack2x16float(${buf}[i >> 1u]);
  return select(pair.x, pair.y, (i & 1u) == 1u);
}`;
  }
  throw new Error(`loadFn: no float load for dtype ${dtype}`);
}

/** WGSL expression of the linear workgroup index for a grid folded over x and y by `grid()`. */
export const LINEAR_WORKGROUP = "(wid.x + wid.y * nwg.x)";

/** WGSL entry-point builtins matching `LINEAR_WORKGROUP`. */
export const GRID_BUILTINS =
  "@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, " +
  "@builtin(local_invocation_index) lid: u32";
