/**
 * The fine-tuning loss of MedSAM2's `finetune_sam2_img.py`: MONAI
 * `DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")` + `BCEWithLogitsLoss()`.
 * Inputs are channels-last, (B, H, W, C) logits and binary targets of the same shape.
 */
import * as tf from '@tensorflow/tfjs-core';

const SMOOTH = 1e-5;

/** 1 - (2 sum(p g) + smooth) / (sum(p^2) + sum(g^2) + smooth) per sample and channel, then the mean. */
export function diceLoss(logits: tf.Tensor, target: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    const p = tf.sigmoid(logits);
    const inter = tf.sum(tf.mul(p, target), [1, 2]);
    const denom = tf.add(tf.sum(tf.square(p), [1, 2]), tf.sum(tf.square(target), [1, 2]));
    const dice = tf.div(tf.add(tf.mul(inter, 2), SMOOTH), tf.add(denom, SMOOTH));
    return tf.mean(tf.sub(1, dice));
  });
}

/** Mean binary cross-entropy with logits, in the stable form max(x,0) - x y + log(1 + exp(-|x|)). */
export function bceWithLogits(logits: tf.Tensor, target: tf.Tensor): tf.Scalar {
  return tf.tidy(() =>
    tf.mean(tf.add(tf.sub(tf.relu(logits), tf.mul(logits, target)), tf.log1p(tf.exp(tf.neg(tf.abs(logits)))))),
  );
}

export interface LossTerms {
  loss: tf.Scalar;
  dice: tf.Scalar;
  bce: tf.Scalar;
}

export function segmentationLoss(logits: tf.Tensor, target: tf.Tensor, diceWeight = 1, bceWeight = 1): LossTerms {
  const dice = diceLoss(logits, target);
  const bce = bceWithLogits(logits, target);
  const loss = tf.tidy(() => tf.add(tf.mul(dice, diceWeight), tf.mul(bce, bceWeight))) as tf.Scalar;
  return { loss, dice, bce };
}

/** Dice coefficient of the thresholded prediction (logit > 0) per sample: the validation metric. */
export async function diceScores(logits: tf.Tensor, target: tf.Tensor): Promise<Float32Array> {
  const scores = tf.tidy(() => {
    const pred = tf.cast(tf.greater(logits, 0), 'float32');
    const axes = [1, 2, 3];
    const inter = tf.sum(tf.mul(pred, target), axes);
    const total = tf.add(tf.sum(pred, axes), tf.sum(target, axes));
    // both empty: a perfect answer
    return tf.where(tf.equal(total, 0), tf.onesLike(total), tf.div(tf.mul(inter, 2), tf.maximum(total, 1e-12)));
  });
  try {
    return (await scores.data()) as Float32Array;
  } finally {
    scores.dispose();
  }
}
