import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's CommonJS build registers no gradients; the union package registers them all
import '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { autoOrder, selectBackend } from '../src/backend.js';
import { probeWebgpu } from '../src/backends/webgpu.js';
import { installed } from './helpers/packages.js';


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

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let err = 0;
  for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]));
  return err;
}

describe('autoOrder', () => {
  const ok = (value: string) => async () => ({ ok: true as const, value });
  const no = (reason: string) => async () => ({ ok: false as const, reason });

  it('takes the first candidate that works, says why the earlier ones were passed over', async () => {
    const r = await autoOrder({ 'tensorflow-gpu': no('no NVIDIA GPU'), webgpu: no('only a software fallback adapter'), 'tensorflow-cpu': ok('tf'), wasm: ok('wasm') }, false);
    expect(r).toEqual({
      value: 'tf',
      picked: 'tensorflow-cpu',
      passedOver: ['tensorflow on a CUDA GPU: no NVIDIA GPU', 'WebGPU on a hardware adapter: only a software fallback adapter'],
      hint: undefined,
    });
  });

  it('does not try later candidates once one works', async () => {
    const r = await autoOrder({ 'tensorflow-gpu': ok('gpu'), webgpu: () => Promise.reject(new Error('tried')), 'tensorflow-cpu': ok('tf'), wasm: ok('wasm') }, true);
    expect(r.picked).toBe('tensorflow-gpu');
    expect(r.hint).toBeUndefined();
  });

  it('says how to get a faster backend', async () => {
    const wasm = await autoOrder({ 'tensorflow-gpu': no('a'), webgpu: no('b'), 'tensorflow-cpu': no('c'), wasm: ok('wasm') }, false);
    expect(wasm.hint).toMatch(/npx medtune setup tensorflow`/);
    const gpuUnused = await autoOrder({ 'tensorflow-gpu': no('not installed'), webgpu: no('b'), 'tensorflow-cpu': ok('tf'), wasm: ok('wasm') }, true);
    expect(gpuUnused.hint).toMatch(/npx medtune setup tensorflow --gpu/);
  });

  it('fails naming every reason when nothing starts', async () => {
    await expect(autoOrder({ 'tensorflow-gpu': no('a'), webgpu: no('b'), 'tensorflow-cpu': no('c'), wasm: no('d') }, false)).rejects.toThrow(
      /no backend could start: tensorflow on a CUDA GPU: a; WebGPU on a hardware adapter: b; tensorflow on the CPU: c; wasm: d/,
    );
  });
});

describe('selectBackend', () => {
  it('cpu works', async () => {
    const choice = await selectBackend('cpu', { quiet: true });
    expect(choice.backend).toBe('cpu');
    expect(tf.getBackend()).toBe('cpu');
    expect(choice.device).toMatch(/CPU/);
    expect(Array.from(tf.add(tf.tensor([1, 2]), 1).dataSync())).toEqual([2, 3]);
  });

  const hasTfjsNode = installed('@tensorflow/tfjs-node');

  it.skipIf(hasTfjsNode)('tensorflow without @tensorflow/tfjs-node says how to get it', async () => {
    await expect(selectBackend('tensorflow', { quiet: true })).rejects.toThrow(/not installed: run `npx medtune setup tensorflow`/);
  });

  it.skipIf(!hasTfjsNode)('tensorflow with @tensorflow/tfjs-node matches cpu on a small model (and its conv gradients), in the project\'s engine', async () => {
    await selectBackend('cpu', { quiet: true });
    const ref = smallModel();
    const choice = await selectBackend('tensorflow', { quiet: true });
    // tfjs-node registered with the tfjs-core this file imports: one engine
    expect(tf.getBackend()).toBe('tensorflow');
    expect(choice.device).toMatch(/native TensorFlow \d+\.\d+\.\d+ \(tfjs-node(-gpu)?\), \d+ threads?/);
    const ours = smallModel();
    for (let k = 0; k < ref.length; k++) expect(maxAbsDiff(ours[k], ref[k]), `output ${k}`).toBeLessThan(1e-5);
    await selectBackend('cpu', { quiet: true });
  });

  it('auto picks tensorflow on a CUDA GPU, then WebGPU on a hardware adapter, then tensorflow on the CPU, then wasm', async () => {
    const { cudaGpus } = await import('../src/backends/tensorflow.js');
    const { probeWebgpu } = await import('../src/backends/webgpu.js');
    const probe = await probeWebgpu();
    const hardwareWebgpu = probe.ok && !probe.adapter.isFallbackAdapter;
    const gpuTf = cudaGpus().length > 0 && installed('@tensorflow/tfjs-node-gpu');
    const expected = gpuTf ? 'tensorflow' : hardwareWebgpu ? 'webgpu' : hasTfjsNode ? 'tensorflow' : 'wasm';
    const choice = await selectBackend('auto', { quiet: true });
    expect(choice.backend).toBe(expected);
    if (!gpuTf) expect(choice.device).toMatch(/auto: tensorflow on a CUDA GPU: (no NVIDIA GPU|@tensorflow\/tfjs-node-gpu is not installed)/);
    if (expected === 'wasm') expect(choice.device).toMatch(/npx medtune setup tensorflow/);
    await selectBackend('cpu', { quiet: true });
  });

  it('wasm selection works and matches cpu on a small model (and its conv gradients)', async () => {
    await selectBackend('cpu', { quiet: true });
    const ref = smallModel();
    const choice = await selectBackend('wasm', { quiet: true });
    expect(choice.backend).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
    expect(choice.device).toMatch(/WebAssembly/);
    const ours = smallModel();
    for (let k = 0; k < ref.length; k++) expect(maxAbsDiff(ours[k], ref[k]), `output ${k}`).toBeLessThan(1e-5);
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
