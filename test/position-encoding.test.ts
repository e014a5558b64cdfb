import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import {
  PositionEmbeddingRandom,
  PositionEmbeddingSine,
  applyRotary,
  axialRopeTables,
} from '../src/model/position-encoding.js';
import { TfOps } from '../src/model/tf-ops.js';
import { loadGolden, relMaxError } from './helpers/golden.js';

const golden = loadGolden();
const ops = new TfOps(golden.params);
const toNchw = (x: tf.Tensor) => tf.transpose(x, [0, 3, 1, 2]);

describe('PositionEmbeddingSine', () => {
  const pe = new PositionEmbeddingSine(golden.config.image_encoder.neck.position_encoding);
  for (const level of [0, 1, 2]) {
    it(`matches the official pos.${level}`, () => {
      const ref = golden.expected[`pos.${level}`];
      const [, c, h, w] = ref.shape;
      expect(pe.channels).toBe(c);
      const ours = pe.forward(ops, h, w);
      expect(ours.shape).toEqual([1, h, w, c]);
      const err = relMaxError(toNchw(ours), ref);
      console.log(`pos.${level} error ${err.toExponential(2)}`);
      expect(err).toBeLessThanOrEqual(1e-4);
      ours.dispose();
    });
  }

  it('supports non-square grids and normalize=false', () => {
    const raw = new PositionEmbeddingSine({ num_pos_feats: 8, normalize: false, scale: null, temperature: 100 });
    const t = raw.table(2, 3); // (2, 3, 8): y half then x half, sin on even and cos on odd channels
    const dimT = [1, 1, 100 ** 0.5, 100 ** 0.5];
    const y = 2; // row 1 -> y_embed 2
    const x = 3; // col 2 -> x_embed 3
    const o = (1 * 3 + 2) * 8;
    for (let k = 0; k < 4; k++) {
      const fy = k % 2 === 0 ? Math.sin(y / dimT[k]) : Math.cos(y / dimT[k]);
      const fx = k % 2 === 0 ? Math.sin(x / dimT[k]) : Math.cos(x / dimT[k]);
      expect(t[o + k]).toBeCloseTo(fy, 6);
      expect(t[o + 4 + k]).toBeCloseTo(fx, 6);
    }
  });
});

describe('PositionEmbeddingRandom', () => {
  const prefix = 'sam_prompt_encoder.pe_layer';
  const gauss = golden.params.get(`${prefix}.positional_encoding_gaussian_matrix`)!;
  const feats = gauss.shape[1] as number;
  const pe = new PositionEmbeddingRandom(feats, prefix);

  it('lists its gaussian matrix', () => {
    expect(pe.paramSpecs()).toEqual([
      { name: `${prefix}.positional_encoding_gaussian_matrix`, shape: [2, feats], init: { kind: 'normal', std: 1 } },
    ]);
  });

  it('dense grid encoding matches the official dense_pe', () => {
    const ref = golden.expected.dense_pe;
    const [, c, h, w] = ref.shape;
    const ours = pe.forward(ops, h, w);
    expect(ours.shape).toEqual([1, h, w, c]);
    const err = relMaxError(toNchw(ours), ref);
    console.log(`dense_pe error ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-4);
    ours.dispose();
  });

  it('encodes pixel coordinates like _pe_encoding(coords / [W, H])', () => {
    const coords = [
      [10, 20],
      [255.5, 0],
      [100, 300],
    ];
    const imageSize: [number, number] = [320, 256]; // H, W
    const ours = pe.forwardWithCoords(ops, tf.tensor(coords.flat(), [1, 3, 2]), imageSize);
    expect(ours.shape).toEqual([1, 3, 2 * feats]);
    const g = gauss.arraySync() as number[][];
    const got = ours.dataSync();
    coords.forEach(([x, y], n) => {
      const cx = 2 * (x / imageSize[1]) - 1;
      const cy = 2 * (y / imageSize[0]) - 1;
      for (let f = 0; f < feats; f++) {
        const a = 2 * Math.PI * (cx * g[0][f] + cy * g[1][f]);
        expect(got[n * 2 * feats + f]).toBeCloseTo(Math.sin(a), 4);
        expect(got[n * 2 * feats + feats + f]).toBeCloseTo(Math.cos(a), 4);
      }
    });
    ours.dispose();
  });
});

describe('axial RoPE', () => {
  it('tables follow compute_axial_cis (x frequencies, then y; token t = y * endX + x)', () => {
    const dim = 8;
    const [endX, endY] = [3, 2];
    const { cos, sin } = axialRopeTables(dim, endX, endY, 100);
    expect(cos.length).toBe(endX * endY * (dim / 2));
    const freqs = [1, 1 / 100 ** 0.5];
    for (let t = 0; t < endX * endY; t++) {
      const tx = t % endX;
      const ty = Math.floor(t / endX);
      const angles = [tx * freqs[0], tx * freqs[1], ty * freqs[0], ty * freqs[1]];
      angles.forEach((a, i) => {
        expect(cos[t * 4 + i]).toBeCloseTo(Math.cos(a), 6);
        expect(sin[t * 4 + i]).toBeCloseTo(Math.sin(a), 6);
      });
    }
  });

  /** Direct complex multiply: (x[2i] + i x[2i+1]) * (cos + i sin), table row = token % rows. */
  function rotateDirect(x: Float32Array, shape: number[], cos: Float32Array, sin: Float32Array, rows: number): Float32Array {
    const [b, h, n, d] = shape;
    const out = new Float32Array(x.length);
    for (let bi = 0; bi < b * h; bi++) {
      for (let t = 0; t < n; t++) {
        const row = t % rows;
        for (let i = 0; i < d / 2; i++) {
          const o = (bi * n + t) * d + 2 * i;
          const [re, im] = [x[o], x[o + 1]];
          const [c, s] = [cos[row * (d / 2) + i], sin[row * (d / 2) + i]];
          out[o] = re * c - im * s;
          out[o + 1] = re * s + im * c;
        }
      }
    }
    return out;
  }

  function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
    return m;
  }

  it('applyRotary rotates pairs (x[2i], x[2i+1]) by the table', () => {
    const dim = 8;
    const { cos, sin } = axialRopeTables(dim, 3, 2, 10000);
    const shape = [2, 2, 6, dim];
    const x = tf.randomNormal(shape, 0, 1, 'float32', 7);
    const y = applyRotary(ops, x, tf.tensor(cos, [6, dim / 2]), tf.tensor(sin, [6, dim / 2]));
    expect(y.shape).toEqual(shape);
    expect(maxDiff(y.dataSync(), rotateDirect(x.dataSync() as Float32Array, shape, cos, sin, 6))).toBeLessThan(1e-6);
    tf.dispose([x, y]);
  });

  it('repeats the table over longer keys when asked (repeat_freqs_k)', () => {
    const dim = 4;
    const { cos, sin } = axialRopeTables(dim, 2, 2, 10000);
    const shape = [1, 1, 12, dim];
    const x = tf.randomNormal(shape, 0, 1, 'float32', 3);
    const c = tf.tensor(cos, [4, dim / 2]);
    const s = tf.tensor(sin, [4, dim / 2]);
    const y = applyRotary(ops, x, c, s, true);
    expect(maxDiff(y.dataSync(), rotateDirect(x.dataSync() as Float32Array, shape, cos, sin, 4))).toBeLessThan(1e-6);
    expect(() => applyRotary(ops, x, c, s)).toThrow();
    tf.dispose([x, y, c, s]);
  });
});
