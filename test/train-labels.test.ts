/**
 * Several labels: validation Dice per label and overall on a hand-computed case (low-res and at
 * the label's native resolution), epochs balanced across labels, and a short run with clicks,
 * a correction round, balanced labels and native-resolution validation that reports per label
 * under the names of labels.json.
 */
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { balancedEpochOrder, epochPermutation } from '../src/data/loader.js';
import type { Batch } from '../src/data/types.js';
import { ellipseInBoxDice } from '../src/eval/baseline.js';
import type { SAM2Base } from '../src/model/sam2.js';
import type { TfOps } from '../src/model/tf-ops.js';
import { parseConfig } from '../src/train/config.js';
import { train } from '../src/train/train.js';
import { validate } from '../src/train/validate.js';
import { tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

/** A model stand-in whose prediction is the given (B, 1, m, m) logits. */
function fixedModel(logits: number[], shape: [number, number, number, number]): SAM2Base {
  return { predictFromBoxes: () => ({ masks: tf.tensor4d(logits, shape) }) } as unknown as SAM2Base;
}

function handBatch(masks: number[], labelValues: number[], m: number, native?: Batch['native']): Batch {
  const B = labelValues.length;
  const S = 4 * m;
  return {
    batchSize: B,
    imageSize: S,
    maskSize: m,
    images: new Float32Array(B * S * S * 3),
    boxes: new Float32Array(B * 4),
    masks: Float32Array.from(masks),
    labelValues: Int32Array.from(labelValues),
    native,
    sources: labelValues.map((l, i) => `hand#${i},label=${l}`),
    slices: labelValues.map((_, i) => ({ path: 'hand', slice: i })),
  };
}

describe('several labels', () => {
  it('validation Dice per label and overall, by hand (2 x 2 low-res masks)', async () => {
    // sample 0 (label 1): exact, Dice 1; sample 1 (label 2): 1 of 2 predicted pixels right on a
    // 1-pixel object, Dice 2/3; sample 2 (label 1): missed, Dice 0
    const gt = [1, 0, 0, 0, /**/ 1, 0, 0, 0, /**/ 0, 0, 0, 1];
    const logits = [5, -5, -5, -5, /**/ 5, 5, -5, -5, /**/ 5, -5, -5, -5];
    const v = await validate(fixedModel(logits, [3, 1, 2, 2]), {} as TfOps, [handBatch(gt, [1, 2, 1], 2)]);
    expect(v.dice).toBeCloseTo((1 + 2 / 3 + 0) / 3, 6);
    expect([...v.perLabel]).toEqual([
      [1, { dice: 0.5, count: 2 }],
      [2, { dice: expect.closeTo(2 / 3, 6), count: 1 }],
    ]);
  });

  it('at native resolution: the logits upsampled (bilinear, half-pixel) to the slice grid', async () => {
    // 2 x 2 logits [[10, -10], [-10, -10]] on a 4 x 4 slice: the top-left 2 x 2 is positive
    // (columns 0, 1 sample 10 and 10 * .75 - 10 * .25 = 5; column 2 gives -5). The ground truth
    // holds those 4 pixels and one more: Dice 2 * 4 / (4 + 5) = 8 / 9.
    const mask = new Uint8Array(16);
    for (const i of [0, 1, 4, 5, 6]) mask[i] = 1;
    const batch = handBatch([1, 0, 0, 0], [3], 2, [{ width: 4, height: 4, mask }]);
    const v = await validate(fixedModel([10, -10, -10, -10], [1, 1, 2, 2]), {} as TfOps, [batch]);
    expect(v.dice).toBeCloseTo(8 / 9, 6);
    expect(v.perLabel.get(3)).toEqual({ dice: expect.closeTo(8 / 9, 6), count: 1 });
  });

  it('the ellipse baseline at native resolution, by hand', () => {
    // box (0, 0, 8, 8) on an 8 px input, scored on a 4 x 4 slice (pixel centres 1, 3, 5, 7): the
    // ellipse holds all but the 4 corners; against a full ground truth, Dice 2 * 12 / (12 + 16)
    const batch = handBatch([1], [1], 1, [{ width: 4, height: 4, mask: new Uint8Array(16).fill(1) }]);
    batch.imageSize = 8;
    batch.boxes.set([0, 0, 8, 8]);
    expect(ellipseInBoxDice(batch)).toEqual([24 / 28]);
  });

  it('balanced epochs draw every label equally often, repeating the rare one; seeded', () => {
    const labels = Int32Array.from([1, 1, 1, 1, 1, 1, 2, 2]);
    const order = balancedEpochOrder('s', 0, labels);
    expect(order).toHaveLength(8);
    expect(Array.from(order).filter((i) => labels[i] === 2)).toHaveLength(4);
    // the common label's 4 draws are 4 distinct samples; the rare label's 2 samples each come twice
    expect(new Set(Array.from(order).filter((i) => labels[i] === 1)).size).toBe(4);
    expect(Array.from(order).filter((i) => i === 6)).toHaveLength(2);
    // each block of two positions holds one of each label
    for (let i = 0; i < 8; i += 2) expect(new Set([labels[order[i]], labels[order[i + 1]]]).size).toBe(2);
    expect(Array.from(balancedEpochOrder('s', 0, labels))).toEqual(Array.from(order));
    expect(Array.from(balancedEpochOrder('s', 1, labels))).not.toEqual(Array.from(order));
    expect(Array.from(epochPermutation('s', 0, 8)).sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it('a run with clicks, a correction round, balanced labels and native validation reports per label by name', async () => {
    const data = tinyData();
    writeFileSync(join(data.train, 'labels.json'), JSON.stringify({ 1: 'liver', 2: 'left kidney' }));
    const base = tinyConfig(data, { max_steps: 2, val_every: 0, save_every: 0, batch_size: 2 });
    const config = parseConfig({
      ...base,
      data: { ...base.data, balance_labels: true, val_native_resolution: true },
      prompts: { box: 0.5, points: 0.5, num_points: [1, 2], correction_rounds: 1 },
    });
    const result = await train({ config, runDir: tmpRunDir('labels'), quiet: true, handleSignals: false });
    expect(result.losses).toHaveLength(2);
    expect(result.losses.every(Number.isFinite)).toBe(true);
    const last = result.valDice.at(-1)!;
    expect(Object.keys(last.perLabel).sort()).toEqual(['left kidney', 'liver']);
    const lines = readFileSync(join(result.runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const val = lines.filter((l) => 'val_dice' in l).at(-1);
    expect(Object.keys(val.val_dice_per_label).sort()).toEqual(['left kidney', 'liver']);
    expect(result.dropped).toEqual({ trainTooSmall: expect.any(Number), valTooSmall: expect.any(Number), valUnloadable: 0, trainSkipped: expect.any(Number) });
  });
});
