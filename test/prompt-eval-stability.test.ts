/**
 * `dynamic_multimask_via_stability` on hand-built decoder outputs, through TensorFlow.js and
 * through an ONNX graph traced from the same function (what the export carries).
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { describe, expect, it } from 'vitest';
import { dynamicMultimaskViaStability, predictorStability, stabilityScores } from '../src/model/mask-decoder.js';
import { TfOps } from '../src/model/tf-ops.js';
import { traceGraph } from '../src/onnx/onnx-ops.js';
import { createSession, runSession } from '../src/onnx/runtime.js';

const [T, h, w] = [4, 10, 10];
const n = h * w;

/**
 * Token 0 (single mask) of three samples:
 * 0: 49 px at +1, 1 px at 0.01 (inside +-delta), 50 at -1 -> 49 / 50 = 0.98 exactly the threshold: stable
 * 1: 48 px at +1, 2 px at 0.01 -> 48 / 50 = 0.96: unstable -> the best-IoU multimask token (token 2)
 * 2: everything at -1 -> area above -delta empty -> score 1: stable
 * Tokens 1..3 are filled with 10 + token index, so the chosen one is visible in every pixel.
 */
function decoderOutputs(): { masks: Float32Array; ious: Float32Array } {
  const masks = new Float32Array(3 * T * n);
  const single = [
    (i: number) => (i < 49 ? 1 : i < 50 ? 0.01 : -1),
    (i: number) => (i < 48 ? 1 : i < 50 ? 0.01 : -1),
    () => -1,
  ];
  for (let b = 0; b < 3; b++) {
    for (let i = 0; i < n; i++) masks[(b * T) * n + i] = single[b](i);
    for (let t = 1; t < T; t++) masks.fill(10 + t, (b * T + t) * n, (b * T + t + 1) * n);
  }
  const ious = Float32Array.from([0.7, 0.2, 0.9, 0.5, 0.1, 0.2, 0.9, 0.5, 0.3, 0.2, 0.9, 0.5]);
  return { masks, ious };
}

const settings = predictorStability(null)!;

function expectChoice(mask: Float32Array, iou: Float32Array, masks: Float32Array): void {
  expect(Array.from(mask.subarray(0, n))).toEqual(Array.from(masks.subarray(0, n)));
  expect(Array.from(mask.subarray(n, 2 * n))).toEqual(new Array(n).fill(12));
  expect(Array.from(mask.subarray(2 * n, 3 * n))).toEqual(new Array(n).fill(-1));
  expect(Array.from(iou)).toEqual(Array.from(Float32Array.from([0.7, 0.9, 0.3])));
}

describe('dynamic_multimask_via_stability', () => {
  it('uses the official predictors\' settings unless the config switches it off', () => {
    expect(settings).toEqual({ delta: 0.05, thresh: 0.98 });
    expect(predictorStability({ dynamic_multimask_via_stability: false })).toBeUndefined();
    expect(predictorStability({ dynamic_multimask_stability_thresh: 0.9 })).toEqual({ delta: 0.05, thresh: 0.9 });
  });

  it('TensorFlow.js: stability scores and the choice, hand-computed', () => {
    const { masks, ious } = decoderOutputs();
    const ops = new TfOps(new Map());
    const got = tf.tidy(() => {
      const m = tf.tensor(masks, [3, T, h, w]);
      const scores = stabilityScores(ops, ops.slice(m, [0, 0, 0, 0], [-1, 1, h, w]), settings.delta);
      const r = dynamicMultimaskViaStability(ops, m, tf.tensor(ious, [3, T]), settings);
      return { scores: scores.dataSync() as Float32Array, mask: r.mask.dataSync() as Float32Array, iou: r.iou.dataSync() as Float32Array, shape: r.mask.shape };
    });
    expect(Array.from(got.scores)).toEqual(Array.from(Float32Array.from([49 / 50, 48 / 50, 1])));
    expect(got.shape).toEqual([3, 1, h, w]);
    expectChoice(got.mask, got.iou, masks);
  });

  it('ONNX (traced through OnnxOps, symbolic batch): the same choice', async () => {
    const { masks, ious } = decoderOutputs();
    const traced = traceGraph(
      {
        name: 'stability',
        symbols: { batch: 2 },
        build(ops, io) {
          const r = dynamicMultimaskViaStability(ops, io.input('masks', ['batch', T, h, w]), io.input('ious', ['batch', T]), settings);
          io.output('mask', r.mask);
          io.output('iou', r.iou);
        },
      },
      new Map(),
    );
    const session = await createSession(traced.graph.toModel(), { threads: 1 });
    const out = await runSession(session, { masks: { data: masks, shape: [3, T, h, w] }, ious: { data: ious, shape: [3, T] } });
    await session.release();
    expect(out.mask.shape).toEqual([3, 1, h, w]);
    expectChoice(out.mask.data, out.iou.data, masks);
  });
});
