// SAM2's loss against the official MultiStepMultiMasksAndIous (SAM2.1 training config) on the same inputs.
import * as tf from '@tensorflow/tfjs-core';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readNpz, type NpyArray } from '../src/io/npz.js';
import { sam2Loss, type PredictionStep } from '../src/train/sam2-loss.js';

const fixture = readNpz(join(import.meta.dirname, 'fixtures', 'sam2-loss', 'loss.npz'));
const t = (a: NpyArray) => tf.tensor(a.data as Float32Array, a.shape);

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe.each(['multi', 'single'])('sam2Loss (%s-mask case)', (name) => {
  const steps = Object.keys(fixture).filter((k) => k.startsWith(`${name}.step`) && k.endsWith('.masks')).length;
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  it('gives the official terms and total within 1e-5', async () => {
    const target = t(fixture[`${name}.target`]);
    const input: PredictionStep[] = Array.from({ length: steps }, (_, s) => ({
      masks: t(fixture[`${name}.step${s}.masks`]),
      ious: t(fixture[`${name}.step${s}.ious`]),
      objectScores: t(fixture[`${name}.step${s}.obj`]),
    }));
    const terms = sam2Loss(input, target);
    const ours = {
      loss_mask: terms.focal,
      loss_dice: terms.dice,
      loss_iou: terms.iou,
      loss_class: terms.objectScore,
      core_loss: terms.loss,
    };
    for (const [key, value] of Object.entries(ours)) {
      const ref = (fixture[`${name}.${key}`].data as Float32Array)[0];
      expect(Math.abs((await value.data())[0] - ref), key).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(ref)));
    }
    tf.dispose([target, ...Object.values(ours), ...input.flatMap((s) => [s.masks, s.ious, s.objectScores])]);
  });

  it('gives the official gradients for mask logits, IoU predictions and object scores within 1e-5', async () => {
    const target = t(fixture[`${name}.target`]);
    const leaves = Array.from({ length: steps }, (_, s) => ['masks', 'ious', 'obj'].map((k) => t(fixture[`${name}.step${s}.${k}`]))).flat();
    const grads = tf.grads((...xs: tf.Tensor[]) => {
      const input = Array.from({ length: steps }, (_, s) => ({ masks: xs[3 * s], ious: xs[3 * s + 1], objectScores: xs[3 * s + 2] }));
      const terms = sam2Loss(input, target);
      tf.dispose([terms.focal, terms.dice, terms.iou, terms.objectScore]);
      return terms.loss;
    })(leaves);
    for (let s = 0; s < steps; s++) {
      for (const [j, k] of ['masks', 'ious', 'obj'].entries()) {
        const ref = fixture[`${name}.step${s}.${k}.grad`].data as Float32Array;
        const got = await grads[3 * s + j].data();
        const scale = Math.max(1e-3, ...Array.from(ref, Math.abs));
        expect(maxAbs(got, ref) / scale, `step ${s} ${k}`).toBeLessThanOrEqual(1e-5);
      }
    }
    tf.dispose([target, ...leaves, ...grads]);
  });
});

describe('sam2Loss', () => {
  it('ignores mask terms of an absent object but still trains its object score', async () => {
    await tf.setBackend('cpu');
    // one object, absent: focal, Dice and IoU are zero, the object-score BCE is log(1 + e^2) for logit 2
    const terms = sam2Loss(
      [{ masks: tf.fill([1, 3, 4, 4], 5), ious: tf.tensor2d([[0.9, 0.1, 0.5]]), objectScores: tf.tensor2d([[2]]) }],
      tf.zeros([1, 1, 4, 4]),
    );
    expect((await terms.focal.data())[0]).toBe(0);
    expect((await terms.dice.data())[0]).toBe(0);
    expect((await terms.iou.data())[0]).toBe(0);
    expect((await terms.objectScore.data())[0]).toBeCloseTo(Math.log1p(Math.exp(2)), 6);
  });

  it('rejects an empty step list', () => {
    expect(() => sam2Loss([], tf.zeros([1, 1, 2, 2]))).toThrow(/no prediction step/);
  });
});
