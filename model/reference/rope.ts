/** Float64 reference of the rotary position embedding, forward and backward. */
import type { RopeLayout } from "../config.ts";

/** Rotary settings: pairing layout, base theta, and the position of the first token. */
export interface RopeRefOptions {
  layout: RopeLayout;
  theta: number;
  pos0: number;
}

/**
 * Returns the dimension indices rotated together as pair i of a head of width D:
 * (2i, 2i+1) for "interleaved", (i, i + D/2) for "half".
 */
export function ropePair(layout: RopeLayout, i: number, D: number): [number, number] {
  return layout === "interleaved" ? [2 * i, 2 * i + 1] : [i, i + D / 2];
}

/**
 * Rotates x (B, T, H, D) by position: the token at index t has position pos0 + t, and pair i of
 * each head turns by the angle position * theta^(-2i/D). `sign` -1 turns the other way, which is
 * the backward pass because a rotation's transpose is its inverse.
 */
function rotate(
  x: ArrayLike<number>,
  shape: readonly [number, number, number, number],
  opts: RopeRefOptions,
  sign: 1 | -1,
): Float64Array {
  const [B, T, H, D] = shape;
  const out = new Float64Array(B * T * H * D);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const pos = opts.pos0 + t;
      for (let h = 0; h < H; h++) {
        const base = ((b * T + t) * H + h) * D;
        for (let i = 0; i < D / 2; i++) {
          const angle = sign * pos * opts.theta ** (-2 * i / D);
          const cos = Math.cos(angle);
          const sin = Math.sin(angle);
          const [p, q] = ropePair(opts.layout, i, D);
          const x0 = x[base + p];
          const x1 = x[base + q];
          out[base + p] = x0 * cos - x1 * sin;
          out[base + q] = x0 * sin + x1 * cos;
        }
      }
    }
  }
  return out;
}

/** Returns x (B, T, H, D) with each head's pairs rotated by their position's angles. */
export function ropeForwardRef(
  x: ArrayLike<number>,
  shape: readonly [number, number, number, number],
  opts: RopeRefOptions,
): Float64Array {
  return rotate(x, shape, opts, 1);
}

/** Returns dx for dOut (B, T, H, D): dOut rotated by the negative angles. */
export function ropeBackwardRef(
  dOut: ArrayLike<number>,
  shape: readonly [number, number, number, number],
  opts: RopeRefOptions,
): Float64Array {
  return rotate(dOut, shape, opts, -1);
}
