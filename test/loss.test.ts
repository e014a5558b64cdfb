import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readNpz } from '../src/io/npz.js';
import { bceWithLogits, diceLoss, diceScores, segmentationLoss } from '../src/train/loss.js';
import { GOLDEN_DIR, nchwToNhwc } from './helpers/golden.js';

describe('Dice + BCE loss', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  it("reproduces the golden fixture's loss.dice and loss.bce from single.masks and gt", () => {
    const expected = readNpz(join(GOLDEN_DIR, 'expected.npz'));
    const inputs = readNpz(join(GOLDEN_DIR, 'inputs.npz'));
    const logits = nchwToNhwc(expected['single.masks']);
    const gt = nchwToNhwc(inputs.gt);
    const dice = diceLoss(logits, gt).dataSync()[0];
    const bce = bceWithLogits(logits, gt).dataSync()[0];
    const refDice = (expected['loss.dice'].data as Float32Array)[0];
    const refBce = (expected['loss.bce'].data as Float32Array)[0];
    expect(Math.abs(dice - refDice)).toBeLessThan(1e-6 * Math.max(1, Math.abs(refDice)));
    expect(Math.abs(bce - refBce)).toBeLessThan(1e-6 * Math.max(1, Math.abs(refBce)));
    tf.dispose([logits, gt]);
  });

  it('weights the terms and stays stable for large logits', () => {
    const logits = tf.tensor4d([100, -100, 0, 50], [1, 2, 2, 1]);
    const target = tf.tensor4d([1, 0, 1, 0], [1, 2, 2, 1]);
    const { loss, dice, bce } = segmentationLoss(logits, target, 2, 0.5);
    const [l, d, b] = [loss, dice, bce].map((t) => t.dataSync()[0]);
    expect(Number.isFinite(b)).toBe(true);
    // BCE terms: 0, 0, log 2, 50
    expect(b).toBeCloseTo((Math.LN2 + 50) / 4, 5);
    expect(l).toBeCloseTo(2 * d + 0.5 * b, 5);
    tf.dispose([logits, target, loss, dice, bce]);
  });

  it('scores thresholded Dice per sample, empty-vs-empty as 1', async () => {
    const logits = tf.tensor4d([1, 1, -1, -1, -1, -1, -1, -1], [2, 2, 2, 1]);
    const target = tf.tensor4d([1, 0, 0, 0, 0, 0, 0, 0], [2, 2, 2, 1]);
    const before = tf.memory().numTensors;
    const scores = await diceScores(logits, target);
    expect(tf.memory().numTensors).toBe(before);
    expect(scores[0]).toBeCloseTo(2 / 3, 6);
    expect(scores[1]).toBe(1);
    tf.dispose([logits, target]);
  });
});
