import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { readNpz, type NpyArray } from '../../src/io/npz.js';
import { readSafetensors } from '../../src/io/safetensors.js';
import { resolveModelConfig, type Sam2Config } from '../../src/model/config.js';
import { maxRelError } from '../../src/model/reference-compare.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const GOLDEN_DIR = join(import.meta.dirname, '..', 'fixtures', 'golden-small256');

export interface Golden {
  config: Sam2Config;
  params: Map<string, tf.Tensor>;
  inputs: Record<string, NpyArray>;
  expected: Record<string, NpyArray>;
}

/** Loads the golden fixture: its config, weights as tfjs tensors, inputs and expected outputs. */
export function loadGolden(dir = GOLDEN_DIR): Golden {
  const meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8'));
  const params = new Map<string, tf.Tensor>();
  for (const [name, t] of readSafetensors(join(dir, 'weights.safetensors'))) params.set(name, tf.tensor(t.data, t.shape));
  return {
    config: resolveModelConfig(meta.model_config),
    params,
    inputs: readNpz(join(dir, 'inputs.npz')),
    expected: readNpz(join(dir, 'expected.npz')),
  };
}

/** NCHW reference array -> NHWC tfjs tensor (our layout). */
export function nchwToNhwc(a: NpyArray): tf.Tensor {
  return tf.tidy(() => tf.transpose(tf.tensor(a.data as Float32Array, a.shape), [0, 2, 3, 1]));
}

/** The README's forward error of a tfjs tensor against a reference array. */
export function relMaxError(ours: tf.Tensor, ref: NpyArray): number {
  return maxRelError(ours.dataSync(), ref.data as Float32Array);
}
