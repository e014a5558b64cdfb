/**
 * Validation: thresholded Dice over the fixed validation set, overall (the mean over samples) and
 * per label value, and an overlay of its first sample. Scored on the 1/4 low-res mask, or, when
 * the set carries each label's native ground truth (data.val_native_resolution), on the logits
 * upsampled (bilinear) to the slice's own size, as a prediction is delivered.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Batch } from '../data/types.js';
import { diceCoefficient } from '../eval/metrics.js';
import type { SAM2Base } from '../model/sam2.js';
import type { TfOps } from '../model/tf-ops.js';
import { batchTensors, logitsNhwc } from './batch-tensors.js';
import type { EmbeddingCache } from './embedding-cache.js';
import { diceScores } from './loss.js';
import { renderOverlay } from './metrics-log.js';

export interface Validation {
  /** mean Dice over every validation sample */
  dice: number;
  /** mean Dice and sample count per label value, ascending */
  perLabel: Map<number, { dice: number; count: number }>;
  overlay?: ReturnType<typeof renderOverlay>;
}

/** Dice of each sample's (B, m, m, 1) logits upsampled to its native ground truth. */
async function nativeDiceScores(logits: tf.Tensor, native: NonNullable<Batch['native']>): Promise<number[]> {
  const [, m] = logits.shape;
  const scores: number[] = [];
  for (const [b, gt] of native.entries()) {
    const up = tf.tidy(() => tf.image.resizeBilinear(tf.slice(logits, [b, 0, 0, 0], [1, m, m, 1]) as tf.Tensor4D, [gt.height, gt.width], false, true));
    const pred = await up.data();
    up.dispose();
    scores.push(diceCoefficient(gt.mask, Uint8Array.from(pred, (v) => (v > 0 ? 1 : 0))));
  }
  return scores;
}

/** `cache`: the run's embedding cache; the encoder then runs once per validation slice in the whole run. */
export async function validate(model: SAM2Base, ops: TfOps, valSet: Batch[], cache?: EmbeddingCache): Promise<Validation> {
  let sum = 0;
  let count = 0;
  const byLabel = new Map<number, { sum: number; count: number }>();
  let overlay: Validation['overlay'];
  for (const [i, b] of valSet.entries()) {
    const x = batchTensors(b);
    const encoded = await cache?.features(b);
    const logits = tf.tidy(() => logitsNhwc((encoded ? model.predictFromFeatures(ops, encoded, x.boxes) : model.predictFromBoxes(ops, x.images, x.boxes)).masks));
    const scores = Array.from(b.native ? await nativeDiceScores(logits, b.native) : await diceScores(logits, x.masks));
    scores.forEach((d, k) => {
      const l = byLabel.get(b.labelValues[k]) ?? { sum: 0, count: 0 };
      byLabel.set(b.labelValues[k], { sum: l.sum + d, count: l.count + 1 });
    });
    sum += scores.reduce((a, v) => a + v, 0);
    count += b.batchSize;
    if (i === 0) {
      const m = b.maskSize;
      const pred = tf.tidy(() => tf.slice(logits, [0, 0, 0, 0], [1, m, m, 1]));
      overlay = renderOverlay({
        image: b.images.subarray(0, b.imageSize * b.imageSize * 3),
        imageSize: b.imageSize,
        gt: b.masks.subarray(0, m * m),
        pred: (await pred.data()) as Float32Array,
        maskSize: m,
        box: b.boxes.subarray(0, 4),
      });
      pred.dispose();
    }
    tf.dispose([logits, x.images, x.boxes, x.masks, ...(encoded ?? [])]);
  }
  const perLabel = new Map([...byLabel].sort((p, q) => p[0] - q[0]).map(([l, s]) => [l, { dice: s.sum / s.count, count: s.count }]));
  return { dice: sum / count, perLabel, overlay };
}
