/**
 * The software-adapter Conv2D and filter gradient (src/backends/webgpu-conv.ts: patch matrix and
 * product) against tfjs on the cpu backend: values and the gradients for input and filter, with
 * the patch embedding's 7x7 stride 4, 'same' padding and uneven sizes. On a software adapter
 * (lavapipe) ours must have run. Without an adapter these skip, and fail when CI is set.
 */
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import type { CheckedWebGPUBackend } from '../src/backends/webgpu-checked.js';
import { programsDuring, relativeError, webgpuAvailability } from './helpers/webgpu.js';

const gpu = await webgpuAvailability();

interface Case {
  x: [number, number, number, number];
  filter: [number, number, number, number];
  stride: number | [number, number];
  pad: 'valid' | 'same';
}

const CASES: Case[] = [
  { x: [2, 23, 23, 3], filter: [7, 7, 3, 5], stride: 4, pad: 'valid' },
  { x: [1, 9, 11, 4], filter: [3, 3, 4, 6], stride: 1, pad: 'same' },
  { x: [3, 10, 7, 2], filter: [2, 3, 2, 9], stride: [2, 1], pad: 'same' },
];

/** conv2d(x, filter) and the gradients of sum(y * r) for x and the filter. */
async function convAndGrads(c: Case): Promise<Float32Array[]> {
  const x = tf.randomNormal(c.x, 0, 1, 'float32', 7);
  const filter = tf.randomNormal(c.filter, 0, 1, 'float32', 8);
  const conv = (xi: tf.Tensor, fi: tf.Tensor) => tf.conv2d(xi as tf.Tensor4D, fi as tf.Tensor4D, c.stride, c.pad);
  const y = conv(x, filter);
  const r = tf.randomNormal(y.shape, 0, 1, 'float32', 9);
  const grads = tf.grads((xi: tf.Tensor, fi: tf.Tensor) => tf.sum(tf.mul(conv(xi, fi), r)))([x, filter]);
  const out = await Promise.all([y, ...grads].map(async (t) => Float32Array.from(await t.data())));
  tf.dispose([x, filter, y, r, ...grads]);
  return out;
}

describe.runIf(!gpu.run && process.env.CI)('webgpu conv2d (CI)', () => {
  it('has a WebGPU adapter', () => {
    throw new Error(gpu.reason);
  });
});

describe.runIf(gpu.run)('webgpu conv2d', () => {
  for (const c of CASES) {
    it(`matches tfjs on cpu, value and gradients: x [${c.x}], filter [${c.filter}], stride ${c.stride}, ${c.pad}`, async () => {
      await selectBackend('cpu', { quiet: true });
      const ref = await convAndGrads(c);
      await selectBackend('webgpu', { quiet: true });
      const before = tf.memory().numTensors;
      const { result: ours, programs } = await programsDuring(() => convAndGrads(c));
      expect(tf.memory().numTensors).toBe(before);
      ['y', 'dx', 'dfilter'].forEach((what, k) => {
        expect(ours[k].length, what).toBe(ref[k].length);
        expect(relativeError(ours[k], ref[k]), what).toBeLessThan(1e-5);
      });
      if ((tf.backend() as CheckedWebGPUBackend).softwareAdapter) {
        // a patch matrix for y, for the forward under tf.grads and for the filter gradient
        expect(programs.filter((p) => p.endsWith(':medtune_sw_im2col')).length).toBe(3);
      }
      await selectBackend('cpu', { quiet: true });
    });
  }
});
