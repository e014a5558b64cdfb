/**
 * The WebGPU backend end to end (lavapipe in CI): the golden forward and gradients of small256,
 * a training run whose per-step losses equal the wasm backend's, no growth of live tensors or GPU
 * memory, and a GPU error that stops training with the last good checkpoint intact. Without an
 * adapter these skip, and fail when CI is set.
 */
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runGoldenCheck } from '../scripts/golden-check.js';
import { selectBackend } from '../src/backend.js';
import { tfjsWebgpuKernel } from '../src/backends/webgpu-kernels.js';
import { findCheckpoint, loadCheckpoint } from '../src/train/checkpoint.js';
import { train } from '../src/train/train.js';
import { GOLDEN_DIR } from './helpers/golden.js';
import { SMALL_MODEL_CONFIG, tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';
import { webgpuAvailability } from './helpers/webgpu.js';

const gpu = await webgpuAvailability();
const data = tinyData();

/**
 * The tiny model with one block per trunk stage, batch 1, no validation or checkpoints: lavapipe
 * pays per dispatch, so steps cost what the model's op count does.
 */
function runConfig(backend: 'webgpu' | 'wasm', steps: number, train: Record<string, unknown> = {}) {
  const config = tinyConfig(data, { max_steps: steps, batch_size: 1, val_every: 0, save_every: 0, val_at_start: false, ...train });
  const trunk = { embed_dim: 16, stages: [1, 1, 1, 1], global_att_blocks: [2] };
  const shallow = { ...SMALL_MODEL_CONFIG, image_encoder: { ...SMALL_MODEL_CONFIG.image_encoder, trunk } };
  return { ...config, backend, model: { ...config.model, config: shallow } };
}

describe.runIf(!gpu.run && process.env.CI)('webgpu (CI)', () => {
  it('has a WebGPU adapter', () => {
    throw new Error(gpu.reason);
  });
});

describe.runIf(gpu.run)('webgpu backend', () => {
  it('matches the official SAM2 forward and gradients (golden small256)', async () => {
    const report = await runGoldenCheck(GOLDEN_DIR, () => {}, { backend: 'webgpu', sections: ['forward', 'gradients'] });
    for (const l of report.lines.filter((l) => !l.ok)) console.log(`FAIL ${l.name}: ${l.what} ${l.error}`);
    expect(report.lines.filter((l) => l.name.startsWith('grad ')).length).toBeGreaterThan(100);
    expect(report.lines.some((l) => l.name === 'single.masks')).toBe(true);
    expect(report.failed).toBe(0);
    console.log(`golden forward + gradients on webgpu: ${report.passed} passed`);
  });

  /** 50 steps on wasm and on webgpu, with the live tensors and GPU bytes after each webgpu step. */
  let runs: Promise<{ wasm: number[]; webgpu: number[]; counts: Array<{ tensors: number; bytes: number }> }> | undefined;
  const fiftySteps = () =>
    (runs ??= (async () => {
      const wasm = await train({ config: runConfig('wasm', 50), runDir: tmpRunDir('wasm'), quiet: true, handleSignals: false });
      const counts: Array<{ tensors: number; bytes: number }> = [];
      const webgpu = await train({
        config: runConfig('webgpu', 50),
        runDir: tmpRunDir('webgpu'),
        quiet: true,
        handleSignals: false,
        onStep: (s) => counts.push({ tensors: s.numTensors, bytes: (tf.memory() as unknown as { numBytesInGPU: number }).numBytesInGPU }),
      });
      return { wasm: wasm.losses, webgpu: webgpu.losses, counts };
    })());

  it('trains 50 steps with the same per-step losses as wasm (1e-4 relative)', async () => {
    const { wasm, webgpu } = await fiftySteps();
    expect(tf.getBackend()).toBe('webgpu');
    expect(webgpu).toHaveLength(50);
    const rel = webgpu.map((l, i) => Math.abs(l - wasm[i]) / Math.abs(wasm[i]));
    console.log(`losses webgpu ${webgpu.map((l) => l.toFixed(5)).join(', ')}; max rel diff vs wasm ${Math.max(...rel).toExponential(2)}`);
    for (const [i, r] of rel.entries()) expect(r, `step ${i + 1}`).toBeLessThanOrEqual(1e-4);
  }, 900_000);

  it('keeps live tensors and GPU bytes flat over those 50 steps', async () => {
    const { counts } = await fiftySteps();
    expect(counts).toHaveLength(50);
    // from step 2 on (the optimizer's moments exist after step 1); buffers tfjs releases at its
    // next queue submission may still count at a step's end: steps 11-50 may not exceed steps 2-10
    const settled = counts.slice(1);
    console.log(`step 2: ${settled[0].tensors} tensors, ${settled[0].bytes} GPU bytes; step 50: ${counts[49].tensors}, ${counts[49].bytes}`);
    expect(new Set(settled.map((c) => c.tensors)).size).toBe(1);
    const maxBytes = (cs: typeof counts) => Math.max(...cs.map((c) => c.bytes));
    expect(maxBytes(settled.slice(9))).toBeLessThanOrEqual(maxBytes(settled.slice(0, 9)));
  }, 900_000);

  it('stops training on a GPU error naming the op, the last good checkpoint intact', async () => {
    const runDir = tmpRunDir('webgpu-error');
    const chunkedAddN = tf.getKernel(tf.AddN, 'webgpu')!;
    // tfjs's own AddN binds one buffer per input: clipGradNorm's addN over every gradient norm exceeds the limit
    const unchunked = () => {
      tf.unregisterKernel(tf.AddN, 'webgpu');
      tf.registerKernel(tfjsWebgpuKernel(tf.AddN));
    };
    const restore = () => {
      tf.unregisterKernel(tf.AddN, 'webgpu');
      tf.registerKernel(chunkedAddN);
    };
    let saved: Buffer | undefined;
    try {
      const run = train({
        config: runConfig('webgpu', 4, { save_every: 2 }),
        runDir,
        quiet: true,
        handleSignals: false,
        // the step-2 checkpoint is written after this callback; step 3 then fails
        onStep: (s) => s.step === 2 && unchunked(),
      });
      await expect(run).rejects.toThrow(/WebGPU error: .*AddN.*maxStorageBuffersPerShaderStage|WebGPU error: .*AddN.*storage buffers/s);
    } finally {
      restore();
    }
    const latest = loadCheckpoint(findCheckpoint(runDir)!);
    expect(latest.state.step).toBe(2);
    saved = readFileSync(join(runDir, 'checkpoints', 'latest', 'model.safetensors'));
    expect(saved.length).toBeGreaterThan(0);
    // the backend works again after the error was raised
    await selectBackend('webgpu', { quiet: true });
    expect(Array.from(await tf.addN(Array.from({ length: 40 }, (_, i) => tf.scalar(i))).data())).toEqual([780]);
  });
});
