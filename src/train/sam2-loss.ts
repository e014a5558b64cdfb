/**
 * SAM2's own training loss (`loss: sam2`), as the official trainer's MultiStepMultiMasksAndIous
 * with the SAM2.1 training config: focal (alpha 0.25, gamma 2) x 20 + Dice x 1 + IoU prediction
 * (L1, every mask supervised) x 1 + object score BCE x 1.
 *
 * Per prediction step (the first prompt, then each correction click) and per object:
 * - focal and Dice are computed for each of the M output masks; only the mask with the lowest
 *   20 focal + Dice is back-propagated (with several masks), as SAM does;
 * - the IoU head is trained towards the real IoU of each thresholded mask;
 * - mask, Dice and IoU terms count only where the object is present; the object-score head learns
 *   whether it is (so that propagation can stop where an object ends).
 * Terms are summed over steps and averaged over objects (the official `num_objects` is the batch).
 * Masks are channels-first like the decoder's output: logits (B, M, H, W), target (B, 1, H, W).
 */
import * as tf from '@tensorflow/tfjs-core';

export interface Sam2LossWeights {
  focal: number;
  dice: number;
  iou: number;
  objectScore: number;
}

/** The SAM2.1 training config's weights (loss_mask 20, loss_dice 1, loss_iou 1, loss_class 1). */
export const SAM2_LOSS_WEIGHTS: Sam2LossWeights = { focal: 20, dice: 1, iou: 1, objectScore: 1 };
const FOCAL_ALPHA = 0.25;
const FOCAL_GAMMA = 2;

/** One prediction step of the decoder for a batch of objects. */
export interface PredictionStep {
  /** (B, M, H, W) mask logits */
  masks: tf.Tensor;
  /** (B, M) predicted IoUs */
  ious: tf.Tensor;
  /** (B, 1) object score logits */
  objectScores: tf.Tensor;
}

export interface Sam2LossTerms {
  loss: tf.Scalar;
  focal: tf.Scalar;
  dice: tf.Scalar;
  iou: tf.Scalar;
  objectScore: tf.Scalar;
}

/**
 * f(x) as a constant for the gradient (tfjs has no stop_gradient, and the tape fails on ops without
 * a gradient, such as Greater, even where the gradient would be zero).
 */
function withoutGradient(f: (x: tf.Tensor) => tf.Tensor): (x: tf.Tensor) => tf.Tensor {
  return tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
    // saved: x itself may be freed (by the caller's tidy) before the backward pass
    save([x]);
    return { value: f(x), gradFunc: (_dy: tf.Tensor, saved: tf.Tensor[]) => tf.zerosLike(saved[0]) };
  }) as (x: tf.Tensor) => tf.Tensor;
}

/** 1 where x > 0, else 0 (float). */
const thresholded = withoutGradient((x) => tf.cast(tf.greater(x, 0), 'float32'));

/** Elementwise binary cross-entropy with logits, max(x,0) - x y + log(1 + exp(-|x|)). */
function bceElementwise(logits: tf.Tensor, target: tf.Tensor): tf.Tensor {
  return tf.add(tf.sub(tf.relu(logits), tf.mul(logits, target)), tf.log1p(tf.exp(tf.neg(tf.abs(logits)))));
}

/** Sigmoid focal loss per element; alpha < 0 disables the class weighting, gamma 0 the modulation. */
function focalElementwise(logits: tf.Tensor, target: tf.Tensor, alpha: number, gamma: number): tf.Tensor {
  let loss = bceElementwise(logits, target);
  if (gamma !== 0) {
    const p = tf.sigmoid(logits);
    const pt = tf.add(tf.mul(p, target), tf.mul(tf.sub(1, p), tf.sub(1, target)));
    loss = tf.mul(loss, tf.pow(tf.sub(1, pt), gamma));
  }
  if (alpha >= 0) loss = tf.mul(loss, tf.add(tf.mul(target, alpha), tf.mul(tf.sub(1, target), 1 - alpha)));
  return loss;
}

/** (B, M) focal, Dice and IoU-prediction losses of each mask, before the best-mask choice. */
function perMaskTerms(step: PredictionStep, target: tf.Tensor): { focal: tf.Tensor; dice: tf.Tensor; iou: tf.Tensor } {
  const [b, m, h, w] = step.masks.shape;
  const logits = tf.reshape(step.masks, [b, m, h * w]);
  const t = tf.broadcastTo(tf.reshape(target, [b, 1, h * w]), [b, m, h * w]);
  const focal = tf.mean(focalElementwise(logits, t, FOCAL_ALPHA, FOCAL_GAMMA), -1);
  const p = tf.sigmoid(logits);
  const dice = tf.sub(1, tf.div(tf.add(tf.mul(tf.sum(tf.mul(p, t), -1), 2), 1), tf.add(tf.add(tf.sum(p, -1), tf.sum(t, -1)), 1)));
  // the IoU the head should have predicted: of the thresholded mask, a constant for the gradient
  const pred = thresholded(logits);
  const gt = tf.cast(tf.greater(t, 0), 'float32'); // target: no gradient path
  const inter = tf.sum(tf.mul(pred, gt), -1);
  const union = tf.sub(tf.add(tf.sum(pred, -1), tf.sum(gt, -1)), inter);
  const actualIou = tf.div(inter, tf.maximum(union, 1));
  const iou = tf.abs(tf.sub(step.ious, actualIou));
  return { focal, dice, iou };
}

/** SAM2's loss over prediction steps; `target` (B, 1, H, W) binary, at the masks' resolution. */
export function sam2Loss(steps: PredictionStep[], target: tf.Tensor, weights: Sam2LossWeights = SAM2_LOSS_WEIGHTS): Sam2LossTerms {
  if (steps.length === 0) throw new Error('sam2Loss: no prediction step');
  const numObjects = Math.max(target.shape[0], 1);
  const sums = tf.tidy(() => {
    // 1 where the object is present in the target, per object (B, 1)
    const present = tf.cast(tf.any(tf.greater(tf.reshape(target, [target.shape[0], -1]), 0), -1, true), 'float32');
    let focal: tf.Tensor = tf.scalar(0);
    let dice: tf.Tensor = tf.scalar(0);
    let iou: tf.Tensor = tf.scalar(0);
    let objectScore: tf.Tensor = tf.scalar(0);
    for (const step of steps) {
      const terms = perMaskTerms(step, target);
      const m = step.masks.shape[1] as number;
      let f = terms.focal;
      let d = terms.dice;
      if (m > 1) {
        // back-propagate focal and Dice only through the mask that fits best
        // int32 one-hot, then cast: tfjs-backend-wasm's OneHot writes int bits into a float32 output
        const best = withoutGradient((c) => tf.cast(tf.oneHot(tf.argMin(c, -1), m), 'float32'))(tf.add(tf.mul(f, weights.focal), tf.mul(d, weights.dice)));
        f = tf.sum(tf.mul(f, best), -1, true);
        d = tf.sum(tf.mul(d, best), -1, true);
      }
      const i = tf.mean(terms.iou, -1, true);
      focal = tf.add(focal, tf.sum(tf.mul(f, present)));
      dice = tf.add(dice, tf.sum(tf.mul(d, present)));
      iou = tf.add(iou, tf.sum(tf.mul(i, present)));
      objectScore = tf.add(objectScore, tf.sum(focalElementwise(step.objectScores, present, -1, 0)));
    }
    return [focal, dice, iou, objectScore].map((x) => tf.div(x, numObjects) as tf.Scalar);
  });
  const [focal, dice, iou, objectScore] = sums;
  const loss = tf.tidy(() =>
    tf.addN([tf.mul(focal, weights.focal), tf.mul(dice, weights.dice), tf.mul(iou, weights.iou), tf.mul(objectScore, weights.objectScore)]),
  ) as tf.Scalar;
  return { loss, focal, dice, iou, objectScore };
}
