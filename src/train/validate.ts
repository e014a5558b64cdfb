/** Validation: mean thresholded Dice over the fixed validation set, and an overlay of its first sample. */
import * as tf from '@tensorflow/tfjs-core';
import type { Batch } from '../data/types.js';
import type { SAM2Base } from '../model/sam2.js';
import type { TfOps } from '../model/tf-ops.js';
import { batchTensors, logitsNhwc } from './batch-tensors.js';
import type { EmbeddingCache } from './embedding-cache.js';
import { diceScores } from './loss.js';
import { renderOverlay } from './metrics-log.js';

export interface Validation {
  dice: number;
  overlay?: ReturnType<typeof renderOverlay>;
}

/** `cache`: the run's embedding cache; the encoder then runs once per validation slice in the whole run. */
export async function validate(model: SAM2Base, ops: TfOps, valSet: Batch[], cache?: EmbeddingCache): Promise<Validation> {
  let sum = 0;
  let count = 0;
  let overlay: Validation['overlay'];
  for (const [i, b] of valSet.entries()) {
    const x = batchTensors(b);
    const encoded = await cache?.features(b);
    const logits = tf.tidy(() => logitsNhwc((encoded ? model.predictFromFeatures(ops, encoded, x.boxes) : model.predictFromBoxes(ops, x.images, x.boxes)).masks));
    sum += (await diceScores(logits, x.masks)).reduce((a, v) => a + v, 0);
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
  return { dice: sum / count, overlay };
}
