/**
 * The fused WebGPU LayerNorm (src/backends/webgpu-layer-norm.ts) against tfjs's moments-based one on
 * the cpu backend: values and the gradients for input, weight and bias. Without an adapter these
 * skip, and fail when CI is set.
 */
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { hasFusedLayerNorm } from '../src/model/fused-layer-norm.js';
import { TfOps } from '../src/model/tf-ops.js';
import { webgpuAvailability } from './helpers/webgpu.js';

const gpu = await webgpuAvailability();

/** y, dx, dw, db of TfOps.layerNorm with an upstream gradient r, on the active backend. */
async function layerNormAndGrads(shape: number[], seed: number): Promise<Float32Array[]> {
  const c = shape[shape.length - 1];
  const x = tf.tidy(() => tf.add(tf.mul(tf.randomNormal(shape, 0, 1, 'float32', seed), 3), 0.5));
  const w = tf.randomNormal([c], 1, 0.3, 'float32', seed + 1);
  const b = tf.randomNormal([c], 0, 0.3, 'float32', seed + 2);
  const r = tf.randomNormal(shape, 0, 1, 'float32', seed + 3);
  const ops = new TfOps(new Map());
  const y = ops.layerNorm(x, w, b, 1e-6);
  const grads = tf.grads((xi: tf.Tensor, wi: tf.Tensor, bi: tf.Tensor) => tf.sum(tf.mul(ops.layerNorm(xi, wi, bi, 1e-6), r)))([x, w, b]);
  const out = await Promise.all([y, ...grads].map(async (t) => Float32Array.from(await t.data())));
  tf.dispose([x, w, b, r, y, ...grads]);
  return out;
}

describe.runIf(!gpu.run && process.env.CI)('webgpu LayerNorm (CI)', () => {
  it('has a WebGPU adapter', () => {
    throw new Error(gpu.reason);
  });
});

describe.runIf(gpu.run)('webgpu fused LayerNorm', () => {
  // rows not a multiple of the workgroup, channel counts of the model (Hiera 96..768, decoder 256)
  for (const shape of [[2, 7, 5, 96], [1, 65, 256], [3, 16]]) {
    it(`matches the moments LayerNorm on cpu, value and gradients, shape [${shape}]`, async () => {
      await selectBackend('cpu', { quiet: true });
      const ref = await layerNormAndGrads(shape, 11);
      await selectBackend('webgpu', { quiet: true });
      expect(hasFusedLayerNorm()).toBe(true);
      const before = tf.memory().numTensors;
      const ours = await layerNormAndGrads(shape, 11);
      expect(tf.memory().numTensors).toBe(before);
      ['y', 'dx', 'dweight', 'dbias'].forEach((name, k) => {
        let err = 0;
        let scale = 1;
        for (let i = 0; i < ref[k].length; i++) {
          err = Math.max(err, Math.abs(ours[k][i] - ref[k][i]));
          scale = Math.max(scale, Math.abs(ref[k][i]));
        }
        expect(ours[k].length, name).toBe(ref[k].length);
        expect(err / scale, name).toBeLessThan(1e-5);
      });
      await selectBackend('cpu', { quiet: true });
    });
  }
});
