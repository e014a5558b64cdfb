/** A host batch as the tensors the model and the loss take. */
import * as tf from '@tensorflow/tfjs-core';
import type { Batch } from '../data/types.js';

/** Batch -> the three input tensors (images NHWC, boxes, masks as (B, m, m, 1)). */
export function batchTensors(b: Batch): { images: tf.Tensor; boxes: tf.Tensor; masks: tf.Tensor } {
  return {
    images: tf.tensor4d(b.images, [b.batchSize, b.imageSize, b.imageSize, 3]),
    boxes: tf.tensor2d(b.boxes, [b.batchSize, 4]),
    masks: tf.tensor4d(b.masks, [b.batchSize, b.maskSize, b.maskSize, 1]),
  };
}

/** (B, 1, m, m) decoder logits as (B, m, m, 1); the same memory for one mask channel. */
export function logitsNhwc(masks: tf.Tensor): tf.Tensor {
  const [b, c, h, w] = masks.shape;
  if (c !== 1) throw new Error(`expected one mask per prompt, got ${c}`);
  return tf.reshape(masks, [b, h, w, 1]);
}

/** Prompt points on the host: `slots` per sample, coords (B, slots, 2), labels (B, slots). */
export interface HostPoints {
  slots: number;
  coords: Float32Array;
  labels: Float32Array;
}

/** The batch's prompt points: those it was sampled with, or its box as two corners (labels 2, 3). */
export function promptPoints(b: Batch): HostPoints {
  if (b.points) return b.points;
  return { slots: 2, coords: b.boxes, labels: Float32Array.from({ length: b.batchSize * 2 }, (_, i) => 2 + (i % 2)) };
}

/** Host points as the model's point inputs, coords (B, P, 2) and labels (B, P). */
export function pointTensors(p: HostPoints): { coords: tf.Tensor; labels: tf.Tensor } {
  const batch = p.labels.length / p.slots;
  return { coords: tf.tensor3d(p.coords, [batch, p.slots, 2]), labels: tf.tensor2d(p.labels, [batch, p.slots]) };
}
