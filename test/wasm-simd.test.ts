/**
 * The gradient of Hiera's 2x2 q-pooling (maxPool2x2Grad in wasm-simd.wat) against maxPoolGradNhwc
 * (fast-kernels.ts, the JS loop it replaces) bit for bit: ties, NaN, -Infinity and -0 gradients,
 * channels off the SIMD width, odd sizes. And medtune's SIMD Sum on wasm (src/backends/wasm-simd.ts, sumRows) over leading axes, against
 * wasm's own Sum over the innermost axis of the transposed input (what wasm's kernel does for
 * these axes, so the bits must agree) and against float64; other reductions take wasm's own path.
 * (The same module's AdamW loop is tested in adamw-fused.test.ts.)
 */
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { maxPoolGradNhwc } from '../src/backends/fast-kernels.js';
import { isReplacedWasmKernel } from '../src/backends/wasm-internals.js';

function values(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  });
}

/** x (rows, cols) summed over rows in float64. */
function columnSums(x: Float32Array, rows: number, cols: number): Float64Array {
  const out = new Float64Array(cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c] += x[r * cols + c];
  return out;
}

beforeAll(async () => {
  await selectBackend('wasm', { threads: 2, quiet: true });
});
afterAll(async () => {
  await selectBackend('cpu', { quiet: true });
});

describe('wasm Sum over leading axes', () => {
  it("replaces wasm's Sum", () => {
    expect(isReplacedWasmKernel(tf.Sum)).toBe(true);
  });

  // (shape, axes): a bias gradient, a LayerNorm weight gradient (rank 4), columns off the SIMD width, one axis, all axes
  const CASES: Array<[number[], number[]]> = [
    [[1, 4096, 192], [0, 1]],
    [[2, 16, 16, 384], [0, 1, 2]],
    [[37, 7, 13], [0, 1]],
    [[5, 3], [0]],
    [[6, 35], [0, 1]],
    [[3, 50, 9], [-3, -2]],
  ];
  for (const [shape, axes] of CASES) {
    for (const keepDims of [false, true]) {
      it(`[${shape}] over axes [${axes}]${keepDims ? ', dims kept' : ''}: wasm's own bits, float64's values`, async () => {
        const x = values(tf.util.sizeFromShape(shape), shape.length + axes.length);
        const lead = tf.util.parseAxisParam(axes, shape).length;
        const rows = tf.util.sizeFromShape(shape.slice(0, lead));
        const cols = x.length / rows;
        const before = tf.memory().numTensors;
        const [ours, theirs] = tf.tidy(() => {
          const t = tf.tensor(x, shape);
          // rows last, then wasm's own Sum over that innermost axis
          const transposed = tf.transpose(tf.reshape(t, [rows, cols]));
          return [tf.sum(t, axes, keepDims), tf.sum(transposed, -1)];
        });
        expect(ours.shape).toEqual(keepDims ? shape.map((d, i) => (i < lead ? 1 : d)) : shape.slice(lead));
        const got = (await ours.data()) as Float32Array;
        expect(Array.from(got)).toEqual(Array.from(await theirs.data()));
        const want = columnSums(x, rows, cols);
        for (let c = 0; c < cols; c++) expect(Math.abs(got[c] - want[c])).toBeLessThan(1e-6 * rows);
        tf.dispose([ours, theirs]);
        expect(tf.memory().numTensors).toBe(before);
      });
    }
  }

  it('leaves other reductions to wasm: inner axes, int32', async () => {
    const x = tf.tensor(values(60, 9), [3, 4, 5]);
    const inner = tf.sum(x, [1, 2]);
    const expected = [0, 1, 2].map((r) => (values(60, 9).slice(r * 20, r * 20 + 20) as Float32Array).reduce((a, b) => a + b, 0));
    const got = await inner.data();
    expected.forEach((v, i) => expect(got[i]).toBeCloseTo(v, 5));
    const ints = tf.sum(tf.tensor([[1, 2], [3, 4]], [2, 2], 'int32'), 0);
    expect(ints.dtype).toBe('int32');
    expect(Array.from(await ints.data())).toEqual([4, 6]);
    tf.dispose([x, inner, ints]);
  });
});

describe('wasm MaxPoolGrad of a 2x2 pool, stride 2', () => {
  /** Values on a coarse grid (many ties in a window), with NaN and -Infinity sprinkled in. */
  function pooled(n: number, seed: number): Float32Array {
    const v = values(n, seed).map((x) => Math.round(x * 3) / 3);
    for (let i = 5; i < n; i += 17) v[i] = NaN;
    for (let i = 9; i < n; i += 23) v[i] = -Infinity;
    return v;
  }

  const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

  // NHWC: SIMD channels only, a SIMD group and a tail, one channel, odd height and width (the last row and column in no window)
  for (const shape of [[1, 4, 4, 8], [2, 6, 4, 6], [1, 4, 6, 1], [2, 7, 5, 7]]) {
    it(`[${shape}]: the JS loop's bits`, async () => {
      const [b, h, w, c] = shape;
      const [oh, ow] = [Math.floor(h / 2), Math.floor(w / 2)];
      const x = pooled(b * h * w * c, c + h);
      const dy = values(b * oh * ow * c, 3 * c + w);
      for (let i = 2; i < dy.length; i += 13) dy[i] = -0;
      const info = tf.backend_util.computePool2DInfo(shape as [number, number, number, number], 2, 2, 1, 'valid');
      const want = maxPoolGradNhwc(x, shape, dy, info);
      const before = tf.memory().numTensors;
      const dx = tf.tidy(() => {
        const input = tf.tensor(x, shape);
        const output = tf.maxPool(input as tf.Tensor4D, 2, 2, 'valid');
        return tf.engine().runKernel(tf.MaxPoolGrad, { dy: tf.tensor(dy, [b, oh, ow, c]), input, output }, { filterSize: 2, strides: 2, pad: 'valid' }) as tf.Tensor;
      });
      const got = (await dx.data()) as Float32Array;
      expect(bits(got)).toEqual(bits(want));
      // every window passed on its gradient once (NaN and -Infinity windows aside)
      expect(got.filter((v) => v !== 0).length).toBeGreaterThan(dy.filter((v) => v !== 0).length / 2);
      dx.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });
  }
});
