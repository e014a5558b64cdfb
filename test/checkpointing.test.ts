/**
 * Gradient checkpointing (train.checkpoint_activations): the Hiera blocks and two-way transformer
 * layers recomputed in the backward pass give the plain path's gradients (golden small256 model,
 * cpu and wasm), hold fewer bytes at the peak, leak no tensors, and train to the same losses.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { TfOps } from '../src/model/tf-ops.js';
import { train } from '../src/train/train.js';
import { goldenPass, worstRelative } from './helpers/golden-pass.js';
import { tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

describe('gradient checkpointing', () => {
  afterAll(async () => {
    await selectBackend('cpu', { quiet: true });
  });

  for (const backend of ['cpu', 'wasm'] as const) {
    it(`gives the plain path's gradients within 1e-6 with a lower peak (golden small256, ${backend})`, async () => {
      await selectBackend(backend, { quiet: true });
      const plain = await goldenPass(false);
      const before = tf.memory().numTensors;
      const checkpointed = await goldenPass(true);
      expect(tf.memory().numTensors).toBe(before);

      expect(Math.abs(checkpointed.loss - plain.loss)).toBeLessThanOrEqual(1e-6 * Math.abs(plain.loss));
      expect([...checkpointed.grads.keys()].sort()).toEqual([...plain.grads.keys()].sort());
      // the trunk's and the two-way transformer's parameters are among them
      expect(plain.grads.has('image_encoder.trunk.blocks.0.attn.qkv.weight')).toBe(true);
      expect(plain.grads.has('sam_mask_decoder.transformer.layers.1.norm4.weight')).toBe(true);
      const worst = worstRelative(checkpointed.grads, plain.grads);
      const mib = (b: number) => (b / 2 ** 20).toFixed(1);
      console.log(
        `${backend}: ${plain.grads.size} gradients, worst relative difference ${worst.error.toExponential(2)} (${worst.name}); ` +
          `tfjs peak ${mib(plain.peakBytes)} MiB plain, ${mib(checkpointed.peakBytes)} MiB checkpointed`,
      );
      expect(worst.error).toBeLessThanOrEqual(1e-6);
      expect(checkpointed.peakBytes).toBeLessThan(0.8 * plain.peakBytes);
    });
  }

  it('names a parameter a checkpointed block reads from outside its module', () => {
    const w = tf.variable(tf.ones([2, 2]), true);
    const ops = new TfOps(new Map([['other.weight', w]]), { checkpointActivations: true });
    const x = tf.ones([1, 2]);
    expect(() => tf.variableGrads(() => tf.sum(ops.checkpoint('block', (o, [input]) => [o.linear(input, o.param('other.weight'))], [x])[0]) as tf.Scalar, [w])).toThrow(
      /checkpointed block 'block' reads parameter 'other.weight' from outside its module/,
    );
    tf.dispose([w, x]);
  });

  it('trains to the same losses with a flat tensor count (tiny model, 3 steps)', async () => {
    await selectBackend('cpu', { quiet: true });
    const data = tinyData();
    const settings = { max_steps: 3, val_every: 0, save_every: 0, val_at_start: false };
    const run = async (checkpointActivations: boolean) => {
      const counts: number[] = [];
      const result = await train({
        config: tinyConfig(data, { ...settings, checkpoint_activations: checkpointActivations }),
        runDir: tmpRunDir(checkpointActivations ? 'ckpt' : 'plain'),
        quiet: true,
        handleSignals: false,
        onStep: (s) => counts.push(s.numTensors),
      });
      return { losses: result.losses, counts };
    };
    const plain = await run(false);
    const checkpointed = await run(true);
    console.log(`losses plain ${plain.losses.join(', ')}; checkpointed ${checkpointed.losses.join(', ')}`);
    expect(checkpointed.losses).toHaveLength(3);
    checkpointed.losses.forEach((l, i) => expect(Math.abs(l - plain.losses[i])).toBeLessThanOrEqual(1e-6 * Math.abs(plain.losses[i])));
    expect(new Set(checkpointed.counts).size).toBe(1);
  });
});
