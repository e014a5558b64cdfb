import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's CommonJS build registers no gradients; the union package registers them all
import '@tensorflow/tfjs';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { probeWebgpu } from '../src/backends/webgpu.js';

const require = createRequire(import.meta.url);
function installed(pkg: string): boolean {
  try {
    require.resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

/** A few ops the model uses, on fixed inputs, and conv gradients. */
function smallModel(): Float32Array[] {
  return tf.tidy(() => {
    const x = tf.tensor4d(Float32Array.from({ length: 2 * 9 * 9 * 4 }, (_, i) => Math.sin(i * 0.37)), [2, 9, 9, 4]);
    const w = tf.tensor4d(Float32Array.from({ length: 3 * 3 * 4 * 6 }, (_, i) => Math.cos(i * 0.11) * 0.2), [3, 3, 4, 6]);
    const conv = tf.conv2d(x, w, 2, 'same');
    const flat = tf.reshape(conv, [2, -1, 6]);
    const att = tf.softmax(tf.matMul(flat, flat, false, true));
    const mixed = tf.matMul(att, flat);
    // WASM lacks the conv filter-gradient kernel: gw runs through the CPU fallbacks
    const [gx, gw] = tf.grads((v: tf.Tensor, k: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(v as tf.Tensor4D, k as tf.Tensor4D, 1, 'valid'), 0.5)))([x, w]);
    return [conv, mixed, gx, gw].map((t) => t.dataSync() as Float32Array).map((d) => Float32Array.from(d));
  });
}

describe('selectBackend', () => {
  it('cpu works', async () => {
    const choice = await selectBackend('cpu', { quiet: true });
    expect(choice.backend).toBe('cpu');
    expect(tf.getBackend()).toBe('cpu');
    expect(choice.device).toMatch(/CPU/);
    expect(Array.from(tf.add(tf.tensor([1, 2]), 1).dataSync())).toEqual([2, 3]);
  });

  it.skipIf(installed('@tensorflow/tfjs-node'))('tensorflow without @tensorflow/tfjs-node says how to install it', async () => {
    await expect(selectBackend('tensorflow', { quiet: true })).rejects.toThrow(/npm install @tensorflow\/tfjs-node/);
  });

  it.skipIf(installed('@tensorflow/tfjs-node'))('auto falls back to cpu when native TensorFlow is absent', async () => {
    expect((await selectBackend('auto', { quiet: true })).backend).toBe('cpu');
  });

  it('wasm selection works and matches cpu on a small model (and its conv gradients)', async () => {
    await selectBackend('cpu', { quiet: true });
    const ref = smallModel();
    const choice = await selectBackend('wasm', { quiet: true });
    expect(choice.backend).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
    expect(choice.device).toMatch(/WebAssembly/);
    const ours = smallModel();
    for (let k = 0; k < ref.length; k++) {
      expect(ours[k].length).toBe(ref[k].length);
      let err = 0;
      for (let i = 0; i < ref[k].length; i++) err = Math.max(err, Math.abs(ours[k][i] - ref[k][i]));
      expect(err, `output ${k}`).toBeLessThan(1e-5);
    }
    await selectBackend('cpu', { quiet: true });
  });

  it('webgpu comes up and computes where an adapter is, else explains what is missing', async () => {
    const probe = await probeWebgpu();
    if (probe.ok) {
      const choice = await selectBackend('webgpu', { quiet: true });
      expect(choice.backend).toBe('webgpu');
      expect(choice.device).toContain(probe.adapter.vendor);
      // read back asynchronously: tfjs-backend-webgpu's dataSync needs an OffscreenCanvas, which Node lacks
      expect(Array.from(await tf.add(tf.tensor([1, 2]), 1).data())).toEqual([2, 3]);
    } else {
      await expect(selectBackend('webgpu', { quiet: true })).rejects.toThrow(/backend 'webgpu'.*(npm install webgpu|no WebGPU adapter|failed)/);
    }
    await selectBackend('cpu', { quiet: true });
  });

  it('rejects unknown names', async () => {
    await expect(selectBackend('tpu' as never)).rejects.toThrow(/unknown backend 'tpu'.*auto, tensorflow, webgpu, wasm, cpu/);
  });
});
