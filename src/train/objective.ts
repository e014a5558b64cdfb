/**
 * The training objective the config names (`train.loss`), on the decoder output of each prompt
 * round (one, or more with correction rounds: the loss sums over rounds, as SAM2's trainer's):
 * - `dice_bce` (default; the seed recipe, MedSAM2): Dice + BCE on the single mask;
 * - `sam2`: SAM2's own loss, focal x 20 + Dice + IoU prediction + object score (sam2-loss.ts),
 *   which also trains the IoU and object-score heads.
 * Returns the total and its named terms (logged as `train/<name>_loss`).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { MaskDecoderOutput } from '../model/mask-decoder.js';
import { logitsNhwc } from './batch-tensors.js';
import type { TrainConfig } from './config.js';
import { segmentationLoss } from './loss.js';
import { sam2Loss } from './sam2-loss.js';

export interface Objective {
  loss: tf.Scalar;
  terms: Record<string, tf.Scalar>;
}

/** `target`: (B, m, m, 1) binary masks at the decoder's low resolution. */
export function trainingObjective(output: MaskDecoderOutput<tf.Tensor> | Array<MaskDecoderOutput<tf.Tensor>>, target: tf.Tensor, t: TrainConfig['train']): Objective {
  const rounds = Array.isArray(output) ? output : [output];
  if (t.loss === 'sam2') {
    const [b, m] = target.shape;
    const targetNchw = tf.reshape(target, [b, 1, m, m]);
    const l = sam2Loss(rounds.map((out) => ({ masks: out.masks, ious: out.iouPred, objectScores: out.objectScoreLogits })), targetNchw);
    return { loss: l.loss, terms: { focal: l.focal, dice: l.dice, iou: l.iou, object_score: l.objectScore } };
  }
  const perRound = rounds.map((out) => segmentationLoss(logitsNhwc(out.masks), target, t.dice_weight, t.bce_weight));
  if (perRound.length === 1) return { loss: perRound[0].loss, terms: { dice: perRound[0].dice, bce: perRound[0].bce } };
  const sum = (k: 'loss' | 'dice' | 'bce') => tf.addN(perRound.map((l) => l[k])) as tf.Scalar;
  return { loss: sum('loss'), terms: { dice: sum('dice'), bce: sum('bce') } };
}
