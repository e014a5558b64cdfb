/**
 * Simulated correction rounds, as SAM2's trainer runs them (`_iter_correct_pt_sampling`): after
 * each prediction, one click from its error (src/data/clicks.ts: false negative -> positive, false
 * positive -> negative, deepest inside the larger error region, on the prediction upsampled to the
 * input size) joins the points, and the prediction's low-res logits become the next round's mask
 * prompt. The loss is then taken on every round's output (objective.ts).
 *
 * The rounds are planned here without gradient, before the step's taped forward pass: choosing a
 * click needs a read-back, which tfjs's gradient tape cannot wait for. The taped pass replays the
 * same prompts on the same weights, so it sees the same predictions; the clicks and fed-back
 * masks are constants of the loss (the official trainer back-propagates through the fed-back
 * logits; here the intermediate predictions are detached).
 */
import * as tf from '@tensorflow/tfjs-core';
import { nextCorrectionClick } from '../data/clicks.js';
import type { ImageEmbeddings, SAM2Base } from '../model/sam2.js';
import { upsampleMasks } from '../model/resize.js';
import type { TfOps } from '../model/tf-ops.js';
import { pointTensors, type HostPoints } from './batch-tensors.js';

/** The prompts of one round: its points, and from the second round on the previous low-res logits (B, 1, m, m). */
export interface PromptRound {
  points: HostPoints;
  maskInput?: Float32Array;
}

/** `points` with one more slot per sample holding `clicks[b]`. */
export function appendClicks(points: HostPoints, clicks: Array<{ x: number; y: number; label: number }>): HostPoints {
  const { slots } = points;
  const next = slots + 1;
  const coords = new Float32Array(clicks.length * next * 2);
  const labels = new Float32Array(clicks.length * next);
  clicks.forEach((c, b) => {
    coords.set(points.coords.subarray(b * slots * 2, (b + 1) * slots * 2), b * next * 2);
    coords.set([c.x, c.y], (b * next + slots) * 2);
    labels.set(points.labels.subarray(b * slots, (b + 1) * slots), b * next);
    labels[b * next + slots] = c.label;
  });
  return { slots: next, coords, labels };
}

/** The mask-prompt input of a round, (B, 1, m, m). */
export function maskInputTensor(mask: Float32Array, batch: number): tf.Tensor {
  const m = Math.round(Math.sqrt(mask.length / batch));
  return tf.tensor4d(mask, [batch, 1, m, m]);
}

/**
 * The first round's prompts followed by `rounds` correction rounds, for a batch of `images`
 * (B, S, S, 3) with ground truth `gtFull` (B, S, S) at input resolution. `embed` gives the
 * images' embeddings (from the embedding cache when the encoder is frozen).
 */
export async function planCorrectionRounds(
  model: SAM2Base,
  ops: TfOps,
  images: tf.Tensor,
  first: HostPoints,
  gtFull: Float32Array,
  rounds: number,
  embed: () => ImageEmbeddings<tf.Tensor> = () => model.imageEmbeddings(ops, images),
): Promise<PromptRound[]> {
  const plan: PromptRound[] = [{ points: first }];
  if (rounds === 0) return plan;
  const [batch, S] = images.shape;
  const [imageEmbed, s0, s1] = tf.tidy(() => {
    const e = embed();
    return [e.imageEmbed, ...e.highRes];
  });
  const embeddings = { imageEmbed, highRes: [s0, s1] as [tf.Tensor, tf.Tensor] };
  try {
    for (let r = 0; r < rounds; r++) {
      const prev = plan[plan.length - 1];
      const [low, high] = tf.tidy(() => {
        const p = pointTensors(prev.points);
        const out = model.decodePrompts(ops, embeddings, p, prev.maskInput && maskInputTensor(prev.maskInput, batch));
        return [out.masks, upsampleMasks(ops, out.masks, [S, S])];
      });
      const [lowData, highData] = await Promise.all([low.data(), high.data()]);
      tf.dispose([low, high]);
      const clicks = Array.from({ length: batch }, (_, b) => {
        const pred = highData.subarray(b * S * S, (b + 1) * S * S).map((v) => (v > 0 ? 1 : 0));
        return nextCorrectionClick(gtFull.subarray(b * S * S, (b + 1) * S * S), pred, S, S);
      });
      plan.push({ points: appendClicks(prev.points, clicks), maskInput: lowData as Float32Array });
    }
  } finally {
    tf.dispose([imageEmbed, s0, s1]);
  }
  return plan;
}
