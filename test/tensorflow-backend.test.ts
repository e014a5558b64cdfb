/**
 * The native TensorFlow backend (tfjs-node built by `medtune setup tensorflow`) against the
 * references: the golden check (forward, gradients, AdamW, 3D propagation), the demo trained on
 * it step by step against wasm, and no tensor leak over 50 training steps. Skipped, with the
 * reason, where @tensorflow/tfjs-node is not installed; with CI set they run and fail instead.
 */
import * as tf from '@tensorflow/tfjs-core';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runGoldenCheck } from '../scripts/golden-check.js';
import { loadConfig } from '../src/train/config.js';
import { train, type TrainResult } from '../src/train/train.js';
import { GOLDEN_DIR } from './helpers/golden.js';
import { tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

const require = createRequire(import.meta.url);
const installed = (() => {
  try {
    require.resolve('@tensorflow/tfjs-node');
    return true;
  } catch {
    return false;
  }
})();
// in CI the backend must be there (.ci/run builds it): run, and fail on its absence
const run = installed || Boolean(process.env.CI);
const title = (name: string) => (run ? name : `${name} (skipped: @tensorflow/tfjs-node is not installed; \`npx medtune setup tensorflow\` builds it)`);

describe('tensorflow backend', () => {
  it.skipIf(!run)(title('passes the golden check: forward, gradients, AdamW, propagation'), async () => {
    const out: string[] = [];
    const report = await runGoldenCheck(GOLDEN_DIR, (l) => out.push(l), { backend: 'tensorflow' });
    expect(out[0]).toMatch(/^backend tensorflow \(/);
    const failures = report.lines.filter((l) => !l.ok).map((l) => `${l.name}: ${l.what} ${l.error}`);
    const worst = (prefix: string) => Math.max(...report.lines.filter((l) => l.name.startsWith(prefix)).map((l) => l.error));
    console.log(`tensorflow: ${report.passed} passed, ${report.failed} failed; worst gradient rel L2 ${worst('grad ').toExponential(2)}, worst AdamW ${worst('adamw ').toExponential(2)}`);
    expect(failures).toEqual([]);
    expect(report.lines.filter((l) => l.name.startsWith('grad ')).length).toBe(281);
    expect(report.lines.filter((l) => l.name.startsWith('adamw ')).length).toBe(13);
    expect(report.lines.some((l) => /propagation/.test(l.name))).toBe(true);
  });

  it.skipIf(!run)(title('trains the demo step by step like wasm (losses within 1e-4 relative)'), async () => {
    const demo = async (backend: string): Promise<TrainResult> => {
      const config = loadConfig(join(import.meta.dirname, '..', 'configs', 'demo.yaml'), {
        overrides: [`backend=${backend}`, 'train.max_steps=12', 'train.val_every=6', 'data.val_samples=8', 'train.save_every=0'],
      });
      return train({ config, runDir: tmpRunDir(`demo-${backend}`), quiet: true, handleSignals: false });
    };
    const ref = await demo('wasm');
    const ours = await demo('tensorflow');
    expect(tf.getBackend()).toBe('tensorflow');
    expect(ours.losses).toHaveLength(12);
    const rel = ours.losses.map((l, i) => Math.abs(l - ref.losses[i]) / Math.max(Math.abs(ref.losses[i]), 1e-6));
    console.log(`demo losses tensorflow ${ours.losses.map((l) => l.toFixed(5)).join(' ')}; max relative difference to wasm ${Math.max(...rel).toExponential(2)}`);
    for (let i = 0; i < 12; i++) expect(rel[i], `step ${i + 1}: tensorflow ${ours.losses[i]} wasm ${ref.losses[i]}`).toBeLessThan(1e-4);
    expect(ours.valDice.map((v) => v.step)).toEqual(ref.valDice.map((v) => v.step));
    // Dice thresholds the masks: a logit near 0 may flip a pixel
    ours.valDice.forEach((v, i) => expect(Math.abs(v.dice - ref.valDice[i].dice), `val Dice at step ${v.step}`).toBeLessThan(1e-3));
  });

  it.skipIf(!run)(title('leaks no tensors over 50 training steps (count and bytes flat)'), async () => {
    const config = tinyConfig(tinyData(), { max_steps: 50, val_every: 0, save_every: 0 });
    config.backend = 'tensorflow';
    config.train.val_at_start = false;
    const counts: number[] = [];
    const bytes: number[] = [];
    await train({
      config,
      runDir: tmpRunDir('tf-leak'),
      quiet: true,
      handleSignals: false,
      onStep: () => {
        counts.push(tf.memory().numTensors);
        bytes.push(tf.memory().numBytes);
      },
    });
    expect(tf.getBackend()).toBe('tensorflow');
    expect(counts).toHaveLength(50);
    // the optimizer's moments exist from step 1 on: everything after is the same set of tensors
    expect(new Set(counts).size, `tensor counts ${[...new Set(counts)].join(', ')}`).toBe(1);
    expect(new Set(bytes).size, `byte counts ${[...new Set(bytes)].join(', ')}`).toBe(1);
  });
});
