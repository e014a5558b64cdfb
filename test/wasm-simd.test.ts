/**
 * medtune's SIMD Sum on wasm (src/backends/wasm-simd.ts, sumRows) over leading axes, against
 * wasm's own Sum over the innermost axis of the transposed input (what wasm's kernel does for
 * these axes, so the bits must agree) and against float64; other reductions take wasm's own path.
 * (The same module's AdamW loop is tested in adamw-fused.test.ts.)
 */
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
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

describe('wasm Sum over leading axes', () => {
  beforeAll(async () => {
    await selectBackend('wasm', { threads: 2, quiet: true });
  });
  afterAll(async () => {
    await selectBackend('cpu', { quiet: true });
  });

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
