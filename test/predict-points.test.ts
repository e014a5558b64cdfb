/**
 * Click prompts (positive / negative points, with or without a box) through the exported mask
 * decoder in onnxruntime, against the TypeScript model (TensorFlow.js) on the golden small256
 * weights; the `--points` option of `medtune predict` and its errors.
 */
import * as tf from '@tensorflow/tfjs-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadInput, parsePoints, runPredict } from '../src/commands/predict.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { predictorStability } from '../src/model/mask-decoder.js';
import { upsampleMasks } from '../src/model/resize.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { exportGraphs } from '../src/onnx/export.js';
import { relativeError } from '../src/onnx/parity.js';
import { segmentImage } from '../src/onnx/predict.js';
import { decodePrompt, embedImage, OnnxModel, type Click } from '../src/onnx/runtime.js';
import { GOLDEN_DIR, loadGolden } from './helpers/golden.js';

const golden = loadGolden();
let dir: string;
let exportDir: string;
let model: OnnxModel;
/** the golden input image, (S, S, 3) channels-last, normalized */
let image: Float32Array;
const S = golden.config.image_size;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'medtune-points-'));
  exportDir = join(dir, 'export');
  exportGraphs(golden.config, readSafetensors(join(GOLDEN_DIR, 'weights.safetensors')), exportDir, { only: ['imageEncoder', 'maskDecoder'] });
  model = OnnxModel.open(exportDir, { threads: 2, needed: ['imageEncoder', 'maskDecoder'] });
  image = tf.tidy(() => tf.transpose(tf.tensor(golden.inputs.image.data as Float32Array, golden.inputs.image.shape), [0, 2, 3, 1]).dataSync() as Float32Array);
});

afterAll(async () => {
  await model.release();
  rmSync(dir, { recursive: true, force: true });
});

/** The TypeScript model on the same prompt, as the predictor runs it (stability fallback): points in model pixels, logits resized to `size`. */
function tfLogits(points: Click[], size: { height: number; width: number }, multimask: boolean): Float32Array {
  const sam = new SAM2Base(golden.config);
  const ops = new TfOps(golden.params);
  return tf.tidy(() => {
    const { imageEmbed, highRes } = sam.imageEmbeddings(ops, tf.tensor(image, [1, S, S, 3]));
    const coords = tf.tensor(points.flatMap(([x, y]) => [(x / size.width) * S, (y / size.height) * S]), [1, points.length, 2]);
    const labels = tf.tensor(points.map((p) => p[2]), [1, points.length]);
    const { sparse, dense } = sam.promptEncoder.forward(ops, { points: { coords, labels } });
    const out = sam.maskDecoder.forward(ops, { imageEmbeddings: imageEmbed, imagePe: sam.promptEncoder.densePe(ops), sparse, dense, multimaskOutput: multimask, stability: predictorStability(golden.config.sam_mask_decoder_extra_args), highResFeatures: highRes });
    const best = tf.argMax(tf.reshape(out.iouPred, [-1])).dataSync()[0];
    const mask = tf.slice(out.masks, [0, best, 0, 0], [1, 1, -1, -1]);
    return upsampleMasks(ops, mask, [size.height, size.width]).dataSync() as Float32Array;
  });
}

describe('click prompts through onnxruntime', () => {
  // a non-square image size, so the click coordinates are scaled differently along x and y
  const size = { height: 192, width: 320 };
  const box: [number, number, number, number] = [80, 40, 230, 150];
  const cases: Array<{ name: string; box?: typeof box; points: Click[]; multimask: boolean }> = [
    { name: 'box + one positive + one negative click', box, points: [[150, 90, 1], [100, 60, 0]], multimask: false },
    { name: 'two positive clicks, no box', points: [[150, 90, 1], [170, 100, 1]], multimask: false },
    { name: 'one positive click, best of three masks', points: [[150, 90, 1]], multimask: true },
  ];
  for (const c of cases) {
    it(`${c.name}: the mask logits of the TypeScript model within 1e-4`, async () => {
      const ours = await decodePrompt(model, await embedImage(model, image), size, { box: c.box, points: c.points }, c.multimask);
      const points: Click[] = c.box ? [[c.box[0], c.box[1], 2], [c.box[2], c.box[3], 3], ...c.points] : c.points;
      const ref = tfLogits(points, size, c.multimask);
      expect(ours.logits.length).toBe(size.height * size.width);
      const err = relativeError(ours.logits, ref);
      expect(err.relError).toBeLessThanOrEqual(1e-4);
      expect(ref.some((v) => v > 0) && ref.some((v) => v <= 0)).toBe(true); // a mask with an edge, not a constant
    });
  }
});

describe('medtune predict --points', () => {
  it('parses [label:]x,y,l;x,y,l and rejects other labels', () => {
    expect(parsePoints('3:10,20,1;30.5,40,0', 1)).toEqual({ label: 3, points: [[10, 20, 1], [30.5, 40, 0]] });
    expect(parsePoints('10,20,1', 2)).toEqual({ label: 2, points: [[10, 20, 1]] });
    expect(() => parsePoints('10,20,2', 1)).toThrow(/--points '10,20,2': expected \[label:\]x,y,l/);
    expect(() => parsePoints('10,20', 1)).toThrow(/--points/);
  });

  it('2D: a box and clicks give the mask of segmentImage on the same prompt; bad clicks are named', async () => {
    const { writeFileSync } = await import('node:fs');
    const { encode } = await import('fast-png');
    const gray = new Uint8Array(S * S);
    for (let i = 0; i < gray.length; i++) gray[i] = Math.round(((image[3 * i] * 0.229 + 0.485) * 255) | 0);
    const png = join(dir, 'slice.png');
    writeFileSync(png, encode({ width: S, height: S, data: gray, channels: 1, depth: 8 }));
    const out = join(dir, 'mask.npy');
    await runPredict({ onnx: exportDir, input: png, out, box: ['60,50,200,190'], points: ['120,120,1;70,60,0'], label: 1 }, () => {});
    const written = (await loadInput(out)).pixels.data;
    const input = await loadInput(png);
    const direct = await segmentImage(model, input.pixels, [60, 50, 200, 190], { points: [[120, 120, 1], [70, 60, 0]] });
    expect(Array.from(written, (v) => (v > 0 ? 1 : 0))).toEqual(Array.from(direct.mask));
    expect(direct.mask.some((v) => v === 1)).toBe(true);
    await expect(runPredict({ onnx: exportDir, input: png, out, points: ['300,10,1'], label: 1 }, () => {})).rejects.toThrow(/point \(300, 10, 1\) lies outside the 256x256 image/);
    await expect(runPredict({ onnx: exportDir, input: png, out, box: ['1:1,1,0,9,9,0'], points: ['2:5,5,1'], label: 1 }, () => {})).rejects.toThrow(/--points for label 2: a 3D prompt needs a box/);
  });
});
