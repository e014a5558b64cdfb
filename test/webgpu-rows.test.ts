/**
 * The software-adapter Softmax, Sum and matrix Transpose (src/backends/webgpu-rows.ts,
 * webgpu-transpose.ts) against tfjs on the cpu backend: values and gradients, large logits,
 * reductions over trailing and leading axes (ours) and over a middle axis (tfjs's kernel),
 * transposes that collapse to rank 4 or less (ours: by values, or by vec4s where the innermost axis
 * stays) and one that does not (tfjs's), and the collapsing itself. On a software adapter (lavapipe) ours must have run where
 * it applies. Without an adapter these skip, and fail when CI is set.
 */
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import type { CheckedWebGPUBackend } from '../src/backends/webgpu-checked.js';
import { collapsePermutation } from '../src/backends/webgpu-transpose.js';
import { programsDuring, relativeError, webgpuAvailability } from './helpers/webgpu.js';

const gpu = await webgpuAvailability();

interface Case {
  name: string;
  shape: number[];
  /** logits scale: large values test the running maximum */
  scale?: number;
  op: (x: tf.Tensor) => tf.Tensor;
  /** the shader key ours runs under, or null where tfjs's kernel must */
  ours: string | null;
  /** no gradient (through a comparison) */
  valueOnly?: boolean;
}

const CASES: Case[] = [
  { name: 'softmax [2,3,5,7]', shape: [2, 3, 5, 7], op: (x) => tf.softmax(x), ours: 'medtune_sw_softmax' },
  { name: 'softmax of large logits [4,300]', shape: [4, 300], scale: 60, op: (x) => tf.softmax(x), ours: 'medtune_sw_softmax' },
  { name: 'softmax of one column [6,1]', shape: [6, 1], op: (x) => tf.softmax(x), ours: 'medtune_sw_softmax' },
  { name: 'sum over the last two axes [3,4,5,6]', shape: [3, 4, 5, 6], op: (x) => tf.sum(x, [2, 3]), ours: 'medtune_sw_row_sum' },
  { name: 'sum over leading axes, kept [3,4,5,6]', shape: [3, 4, 5, 6], op: (x) => tf.sum(x, [0, 1, 2], true), ours: 'medtune_sw_column_sum' },
  { name: 'sum of everything [7,9]', shape: [7, 9], op: (x) => tf.sum(x), ours: 'medtune_sw_row_sum' },
  { name: 'sum over a middle axis [3,4,5]', shape: [3, 4, 5], op: (x) => tf.sum(x, 1), ours: null },
  // a bool cast to float32 shares the bool's int32 buffer: tfjs's kernel reads it
  { name: 'sum of a thresholded mask [1,16,16,1]', shape: [1, 16, 16, 1], op: (x) => tf.sum(tf.cast(tf.greater(x, 0), 'float32'), [1, 2, 3]), ours: null, valueOnly: true },
  { name: 'transpose [37,5]', shape: [37, 5], op: (x) => tf.transpose(x), ours: 'medtune_sw_transpose_1' },
  { name: 'transpose [3,4,5] to [2,0,1] (a matrix swap once collapsed)', shape: [3, 4, 5], op: (x) => tf.transpose(x, [2, 0, 1]), ours: 'medtune_sw_transpose_1' },
  { name: 'transpose [3,5,6] to [1,0,2]: the innermost axis stays, 6 values', shape: [3, 5, 6], op: (x) => tf.transpose(x, [1, 0, 2]), ours: 'medtune_sw_transpose_1' },
  { name: 'heads split [2,6,3,8] to [0,2,1,3]: by vec4s', shape: [2, 6, 3, 8], op: (x) => tf.transpose(x, [0, 2, 1, 3]), ours: 'medtune_sw_transpose_4' },
  { name: 'window partition [2,2,3,2,3,4] to [0,1,3,2,4,5]: rank 4 once collapsed, by vec4s', shape: [2, 2, 3, 2, 3, 4], op: (x) => tf.transpose(x, [0, 1, 3, 2, 4, 5]), ours: 'medtune_sw_transpose_4' },
  { name: 'transpose [2,3,2,3,2] reversed: rank 5 (tfjs)', shape: [2, 3, 2, 3, 2], op: (x) => tf.transpose(x, [4, 3, 2, 1, 0]), ours: null },
];

/** op(x) and, unless valueOnly, d(sum(op(x) * r))/dx. */
async function valueAndGrad(c: Case): Promise<Float32Array[]> {
  const x = tf.tidy(() => tf.mul(tf.randomNormal(c.shape, 0, 1, 'float32', 3), c.scale ?? 1));
  const y = tf.tidy(() => c.op(x));
  const r = tf.randomNormal(y.shape, 0, 1, 'float32', 4);
  const grads = c.valueOnly ? [] : [tf.grad((xi: tf.Tensor) => tf.sum(tf.mul(c.op(xi), r)))(x)];
  const out = await Promise.all([y, ...grads].map(async (t) => Float32Array.from(await t.data())));
  tf.dispose([x, y, r, ...grads]);
  return out;
}

describe('collapsePermutation', () => {
  it('drops size-1 axes and merges output axes that read neighbouring input axes', () => {
    expect(collapsePermutation([2, 6, 3, 8], [0, 2, 1, 3])).toEqual({ shape: [2, 6, 3, 8], perm: [0, 2, 1, 3] });
    expect(collapsePermutation([2, 2, 3, 2, 3, 4], [0, 1, 3, 2, 4, 5])).toEqual({ shape: [4, 3, 2, 12], perm: [0, 2, 1, 3] });
    expect(collapsePermutation([3, 4, 5], [2, 0, 1])).toEqual({ shape: [12, 5], perm: [1, 0] });
    expect(collapsePermutation([1, 7, 1, 5], [2, 3, 0, 1])).toEqual({ shape: [7, 5], perm: [1, 0] });
    expect(collapsePermutation([4, 5, 6], [0, 1, 2])).toEqual({ shape: [120], perm: [0] });
    expect(collapsePermutation([1, 1], [1, 0])).toEqual({ shape: [], perm: [] });
  });
});

describe.runIf(!gpu.run && process.env.CI)('webgpu softmax, sum and transpose (CI)', () => {
  it('has a WebGPU adapter', () => {
    throw new Error(gpu.reason);
  });
});

describe.runIf(gpu.run)('webgpu softmax, sum and transpose', () => {
  for (const c of CASES) {
    it(`matches tfjs on cpu, value${c.valueOnly ? '' : ' and gradient'}: ${c.name}`, async () => {
      await selectBackend('cpu', { quiet: true });
      const ref = await valueAndGrad(c);
      await selectBackend('webgpu', { quiet: true });
      const before = tf.memory().numTensors;
      const { result: ours, programs } = await programsDuring(() => valueAndGrad(c));
      expect(tf.memory().numTensors).toBe(before);
      ['y', 'dx'].slice(0, ref.length).forEach((what, k) => {
        expect(ours[k].length, what).toBe(ref[k].length);
        expect(relativeError(ours[k], ref[k]), what).toBeLessThan(1e-5);
      });
      if ((tf.backend() as CheckedWebGPUBackend).softwareAdapter) {
        const ran = programs.some((p) => p.endsWith(`:${c.ours}`));
        expect(ran).toBe(c.ours !== null);
      }
      await selectBackend('cpu', { quiet: true });
    });
  }
});
