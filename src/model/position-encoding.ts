/**
 * Position encodings, after the official `sam2/modeling/position_encoding.py`:
 * the sine encoding of the FPN neck and memory encoder (and the 1-D one of object pointers,
 * official `get_1d_sine_pe`), the random-Fourier encoding of the prompt encoder, and the axial
 * rotary encoding (RoPE) of memory attention.
 *
 * Constant tables are computed here in float32 steps (`Math.fround`) the way PyTorch computes
 * them; everything that depends on a parameter goes through `Ops` so it trains and exports.
 */
import type { PositionEmbeddingSineConfig } from './config.js';
import { key, type Ops, type ParamSpec } from './ops.js';

const f32 = Math.fround;

/** `temperature ** (2 * (i // 2) / n)` for i < n, as the official float32 arange computes it. */
function sineDimT(n: number, temperature: number): Float32Array {
  const dimT = new Float32Array(n);
  for (let i = 0; i < n; i++) dimT[i] = f32(temperature ** f32((2 * Math.floor(i / 2)) / n));
  return dimT;
}

/** Official `PositionEmbeddingSine`. Output channels: `num_pos_feats` (y half, then x half). */
export class PositionEmbeddingSine {
  private readonly half: number;
  private readonly scale: number;
  private readonly dimT: Float32Array;
  private readonly cache = new Map<string, Float32Array>();

  constructor(readonly cfg: PositionEmbeddingSineConfig) {
    if (cfg.num_pos_feats % 2 !== 0) throw new Error('PositionEmbeddingSine: num_pos_feats must be even');
    if (cfg.scale !== null && !cfg.normalize) throw new Error('PositionEmbeddingSine: normalize must be true if scale is passed');
    this.half = cfg.num_pos_feats / 2;
    this.scale = f32(cfg.scale ?? 2 * Math.PI);
    this.dimT = sineDimT(this.half, cfg.temperature);
  }

  get channels(): number {
    return this.cfg.num_pos_feats;
  }

  /** Encoding of an h x w grid, (h, w, C) channels-last; cached per size (treat as read-only). */
  table(h: number, w: number): Float32Array {
    const cacheKey = `${h}x${w}`;
    const hit = this.cache.get(cacheKey);
    if (hit) return hit;
    const n = this.half;
    const c = 2 * n;
    const embed = (i: number, size: number): number => {
      // arange(1, size + 1), optionally normalized by (last + eps) and scaled
      const v = i + 1;
      return this.cfg.normalize ? f32(f32(v / f32(size + 1e-6)) * this.scale) : v;
    };
    // one encoding row (n values) per coordinate along each axis
    const encodeAxis = (size: number): Float32Array => {
      const out = new Float32Array(size * n);
      for (let i = 0; i < size; i++) {
        const e = embed(i, size);
        for (let k = 0; k < n; k++) {
          const p = f32(e / this.dimT[k]);
          out[i * n + k] = k % 2 === 0 ? Math.sin(p) : Math.cos(p);
        }
      }
      return out;
    };
    const ys = encodeAxis(h);
    const xs = encodeAxis(w);
    const table = new Float32Array(h * w * c);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const o = (y * w + x) * c;
        table.set(ys.subarray(y * n, (y + 1) * n), o);
        table.set(xs.subarray(x * n, (x + 1) * n), o + n);
      }
    }
    this.cache.set(cacheKey, table);
    return table;
  }

  /** (1, h, w, C) constant. */
  forward<T>(ops: Ops<T>, h: number, w: number): T {
    return ops.constant(this.table(h, w), [1, h, w, this.channels]);
  }
}

/**
 * Official `get_1d_sine_pe` of positions held in a (P, 1) tensor: (P, dim) rows
 * [sin(p / t_i), cos(p / t_i)] with the same t_i as `PositionEmbeddingSine` (dim / 2 of them), the
 * division, sin and cos in float32. Object pointers' temporal encoding.
 */
export function sine1dPosition<T>(ops: Ops<T>, pos: T, dim: number, temperature = 10000): T {
  const half = dim / 2;
  const a = ops.div(pos, ops.constant(sineDimT(half, temperature), [1, half]));
  return ops.concat([ops.sin(a), ops.cos(a)], 1);
}

/**
 * Official `PositionEmbeddingRandom` (prompt encoder): sin/cos of 2*pi * (2c - 1) @ G with a
 * gaussian matrix G (2, F) stored as a state-dict buffer. Output channels: 2F (sin half, cos half).
 */
export class PositionEmbeddingRandom {
  constructor(
    readonly numPosFeats: number,
    readonly prefix: string,
  ) {}

  get matrixName(): string {
    return key(this.prefix, 'positional_encoding_gaussian_matrix');
  }

  paramSpecs(): ParamSpec[] {
    return [{ name: this.matrixName, shape: [2, this.numPosFeats], init: { kind: 'normal', std: 1 } }];
  }

  /** `_pe_encoding`: coords (M, 2) in [0, 1] -> (M, 2F). */
  private encode<T>(ops: Ops<T>, coords: T): T {
    const centred = ops.sub(ops.mul(coords, 2), 1);
    const projected = ops.mul(ops.matMul(centred, ops.param(this.matrixName)), 2 * Math.PI);
    return ops.concat([ops.sin(projected), ops.cos(projected)], 1);
  }

  /** Dense encoding of an h x w grid at cell centres: (1, h, w, 2F). */
  forward<T>(ops: Ops<T>, h: number, w: number): T {
    const grid = new Float32Array(h * w * 2);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        grid[(y * w + x) * 2] = f32(f32(x + 0.5) / w);
        grid[(y * w + x) * 2 + 1] = f32(f32(y + 0.5) / h);
      }
    }
    const pe = this.encode(ops, ops.constant(grid, [h * w, 2]));
    return ops.reshape(pe, [1, h, w, 2 * this.numPosFeats]);
  }

  /** Points in input pixels, coords (B, N, 2) as (x, y), imageSize [H, W] -> (B, N, 2F). */
  forwardWithCoords<T>(ops: Ops<T>, coords: T, imageSize: [number, number]): T {
    const n = ops.shape(coords)[1];
    const normalized = ops.div(ops.reshape(coords, [-1, 2]), ops.constant([imageSize[1], imageSize[0]], [2]));
    return ops.reshape(this.encode(ops, normalized), [-1, n, 2 * this.numPosFeats]);
  }
}

/**
 * Official `compute_axial_cis` as cos / sin tables, each (endX * endY, dim / 2); row t is token
 * t = y * endX + x, columns are dim/4 x-frequencies then dim/4 y-frequencies.
 */
export function axialRopeTables(dim: number, endX: number, endY: number, theta: number): { cos: Float32Array; sin: Float32Array } {
  if (dim % 4 !== 0) throw new Error(`axial RoPE needs dim divisible by 4, got ${dim}`);
  const q = dim / 4;
  const freqs = new Float32Array(q);
  for (let i = 0; i < q; i++) freqs[i] = f32(1 / f32(theta ** f32((4 * i) / dim)));
  const n = endX * endY;
  const cos = new Float32Array(n * 2 * q);
  const sin = new Float32Array(n * 2 * q);
  for (let t = 0; t < n; t++) {
    const tx = t % endX;
    const ty = Math.floor(t / endX);
    for (let i = 0; i < q; i++) {
      const ax = f32(tx * freqs[i]);
      const ay = f32(ty * freqs[i]);
      cos[t * 2 * q + i] = Math.cos(ax);
      sin[t * 2 * q + i] = Math.sin(ax);
      cos[t * 2 * q + q + i] = Math.cos(ay);
      sin[t * 2 * q + q + i] = Math.sin(ay);
    }
  }
  return { cos, sin };
}

/**
 * Official `apply_rotary_enc` for one tensor: x (B, heads, N, dim) seen as dim/2 complex numbers
 * (x[2i], x[2i+1]), each multiplied by cos + i sin of its row. cos / sin are (M, dim/2).
 * With `repeatFreqs` (official `repeat_freqs_k`, keys of cross-attention to memories) N may be
 * a multiple r of M and the table is repeated r times along the tokens; otherwise N must equal M.
 */
export function applyRotary<T>(ops: Ops<T>, x: T, cos: T, sin: T, repeatFreqs = false): T {
  const [, , n, dim] = ops.shape(x);
  const [m, half] = ops.shape(cos);
  if (half * 2 !== dim) throw new Error(`applyRotary: table has ${half} frequencies for dim ${dim}`);
  if (n !== m) {
    if (!repeatFreqs || n % m !== 0) throw new Error(`applyRotary: ${n} tokens for a ${m}-row table`);
    const r = n / m;
    cos = ops.tile(cos, [r, 1]);
    sin = ops.tile(sin, [r, 1]);
  }
  // (re, im) -> (re c - im s, re s + im c) as x * C + (x @ P) * S, with C, S the tables repeated per
  // pair and P the constant pair swap with a sign, (x @ P)[2i] = -x[2i+1], (x @ P)[2i+1] = x[2i]:
  // one product and three elementwise ops on whole rows instead of strided 5-D slices (the same
  // values: the product only adds exact zeros)
  const perPair = (t: T) => ops.reshape(ops.tile(ops.reshape(t, [n, half, 1]), [1, 1, 2]), [n, dim]);
  const swap = new Float32Array(dim * dim);
  for (let i = 0; i < half; i++) {
    swap[(2 * i + 1) * dim + 2 * i] = -1;
    swap[2 * i * dim + 2 * i + 1] = 1;
  }
  const swapped = ops.matMul(x, ops.constant(swap, [dim, dim]));
  return ops.add(ops.mul(x, perPair(cos)), ops.mul(swapped, perPair(sin)));
}
