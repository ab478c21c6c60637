/**
 * Seeded pseudo-random numbers: SplitMix64 state stepping, 53-bit uniform doubles, and standard
 * normals by the Box-Muller transform. The whole state is one bigint, so it can be saved in a
 * training checkpoint and restored exactly.
 */

const MASK64 = (1n << 64n) - 1n;

/** A seeded generator whose state can be saved and restored. */
export class Rng {
  #state: bigint;
  #spare: number | null = null;

  constructor(seed: number | bigint) {
    this.#state = BigInt.asUintN(64, BigInt(seed));
  }

  /** Returns the next 64-bit output of SplitMix64. */
  nextU64(): bigint {
    this.#state = (this.#state + 0x9e3779b97f4a7c15n) & MASK64;
    let z = this.#state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
    return z ^ (z >> 31n);
  }

  /** Returns a uniform double in [0, 1) with 53 random bits. */
  uniform(): number {
    return Number(this.nextU64() >> 11n) / 2 ** 53;
  }

  /** Returns a uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** Returns a standard normal sample. */
  normal(): number {
    if (this.#spare !== null) {
      const s = this.#spare;
      this.#spare = null;
      return s;
    }
    let u = this.uniform();
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.#spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** Fills a new Float32Array with standard normals times `scale`. */
  normals(n: number, scale = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal() * scale;
    return out;
  }

  /** Fills a new Float32Array with uniforms in [lo, hi). */
  uniforms(n: number, lo = -1, hi = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * this.uniform();
    return out;
  }

  /** Shuffles `a` in place (Fisher-Yates). */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }

  /** The state as a decimal string, for checkpoints. */
  save(): string {
    return JSON.stringify({ state: this.#state.toString(), spare: this.#spare });
  }

  /** Restores a state written by `save`. */
  static restore(saved: string): Rng {
    const { state, spare } = JSON.parse(saved);
    const rng = new Rng(BigInt(state));
    rng.#spare = spare;
    return rng;
  }
}
