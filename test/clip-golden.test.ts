/**
 * The clip training path (src/train/clip-step.ts) on the golden model: a clip of one slice is the
 * 2D training path (same loss, same gradients), and a clip of three slices in eval mode gives the
 * eager propagation's (VolumePropagator over TfFrameGraphs) outputs slice for slice.
 */
import * as tf from '@tensorflow/tfjs-core';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { readNpz, type NpyArray } from '../src/io/npz.js';
import { maxRelError } from '../src/model/reference-compare.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfFrameGraphs } from '../src/model/tf-frame-graphs.js';
import { TfOps } from '../src/model/tf-ops.js';
import { grayToModelInput, VolumePropagator } from '../src/model/video-predictor.js';
import { clipForward, clipObjective } from '../src/train/clip-step.js';
import { parseConfig } from '../src/train/config.js';
import { trainingObjective } from '../src/train/objective.js';
import { GOLDEN_DIR, loadGolden, nchwToNhwc, type Golden } from './helpers/golden.js';

let golden: Golden;
let prop: Record<string, NpyArray>;

beforeAll(async () => {
  await selectBackend('cpu', { quiet: true });
  golden = loadGolden();
  prop = readNpz(join(GOLDEN_DIR, 'propagation.npz'));
});

describe('clip path on the golden model', () => {
  it('a clip of one slice is the 2D step: the same SAM2 loss and the same gradients', () => {
    const model = new SAM2Base(golden.config);
    const vars = new Map([...golden.params].map(([k, t]) => [k, tf.variable(t, true, `clip1/${k}`)]));
    const ops = new TfOps(vars);
    const t = parseConfig({ data: { train: 'x' }, train: { max_steps: 1, lr: 1, loss: 'sam2' } }).train;
    const image = nchwToNhwc(golden.inputs.image);
    const box = tf.tensor(golden.inputs.box.data as Float32Array, [1, 4]);
    const gt = tf.tensor(golden.inputs.gt.data as Float32Array, [1, 64, 64, 1]);
    // gradients up to the image encoder's output (its own follow from there alike, at many times the cost)
    const varList = [...vars].filter(([k]) => !k.startsWith('image_encoder.')).map(([, v]) => v);
    const names = (g: Record<string, tf.Tensor>) => new Map(Object.entries(g).map(([k, v]) => [k.replace('clip1/', ''), v]));
    const before = tf.memory().numTensors;
    let score = 0;
    const clip = tf.variableGrads(() => {
      const out = clipForward(model, ops, [image], box);
      score = out[0].objectScoreLogits.dataSync()[0];
      return clipObjective(out, tf.reshape(gt, [1, 1, 64, 64])).loss;
    }, varList);
    const slice = tf.variableGrads(() => trainingObjective(model.predictFromBoxes(ops, image, box), gt, t).loss, varList);
    // the clip path gates masks by the object score, as the official heads do; the 2D path does not
    expect(score).toBeGreaterThan(0);
    expect(clip.value.dataSync()[0]).toBeCloseTo(slice.value.dataSync()[0], 5);
    const gc = names(clip.grads);
    const gs = names(slice.grads);
    expect([...gc.keys()].sort()).toEqual([...gs.keys()].sort());
    let worst = 0;
    for (const [k, g] of gs) worst = Math.max(worst, maxRelError(gc.get(k)!.dataSync(), g.dataSync(), 1e-3));
    expect(worst).toBeLessThan(1e-4);
    tf.dispose([clip.value, slice.value, ...gc.values(), ...gs.values()]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([image, box, gt, ...vars.values()]);
  });

  it('a clip of three slices in eval mode equals forward propagation from a box on its first slice', async () => {
    const model = new SAM2Base(golden.config);
    const S = golden.config.image_size;
    const [, h, w] = prop.slices.shape;
    expect([h, w]).toEqual([S, S]); // slice pixels are model pixels: the box needs no scaling
    const slices = prop.slices.data as Float32Array;
    const first = 2;
    const n = 3;
    const gray = (i: number) => slices.subarray((first + i) * h * w, (first + i + 1) * h * w);
    // the box of the fixture's mask (on slice 2), inclusive pixel corners as the loader makes them
    const mask = prop.mask.data as unknown as ArrayLike<number | boolean>;
    let [x0, y0, x1, y1] = [w, h, -1, -1];
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (!mask[y * w + x]) continue;
        [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
      }
    }
    const eager = await new VolumePropagator(new TfFrameGraphs(model, golden.params, false)).propagate(
      { numFrames: n, height: h, width: w, image: (i) => grayToModelInput(gray(i)) },
      { frameIdx: 0, box: [x0, y0, x1, y1] },
      { directions: ['forward'] },
    );
    expect(eager.map((r) => r.frameIdx)).toEqual([0, 1, 2]);

    const before = tf.memory().numTensors;
    const ours = tf.tidy(() => {
      const frames = Array.from({ length: n }, (_, i) => tf.tensor(grayToModelInput(gray(i)), [1, S, S, 3]));
      const out = clipForward(model, new TfOps(golden.params), frames, tf.tensor([[x0, y0, x1, y1]]), { training: false });
      return out.map((o) => o.highResMasks);
    });
    const errors = ours.map((t, i) => maxRelError(t.dataSync(), eager[i].logits));
    const positive = eager.map((r) => r.logits.filter((v) => v > 0).length);
    console.log(`clip vs eager propagation, slices ${first}..${first + n - 1}: rel max err ${errors.map((e) => e.toExponential(2)).join(', ')}; mask pixels ${positive.join(', ')}`);
    for (const e of errors) expect(e).toBeLessThan(1e-5);
    // the propagated slices hold an object: the comparison covers the memory path, not NO_OBJ_SCORE fill
    expect(positive.every((p) => p > 0)).toBe(true);
    tf.dispose(ours);
    expect(tf.memory().numTensors).toBe(before);
  });
});
