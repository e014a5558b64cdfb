/**
 * Prompts beyond boxes in training (`prompts:`): clicks drawn from the ground truth, seeded per
 * sample and the same after a resume; a correction-round step whose loss equals the two rounds
 * built by hand (first prediction -> click from its error -> second prediction with the click
 * and the first logits as mask prompt, losses summed); the default (box alone) step equals the
 * seed recipe's forward and loss.
 */
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { nextCorrectionClick } from '../src/data/clicks.js';
import { createTrainLoader, type TrainLoaderOptions } from '../src/data/loader.js';
import type { PromptSampling } from '../src/data/prompts.js';
import type { Batch } from '../src/data/types.js';
import { upsampleMasks } from '../src/model/resize.js';
import { logitsNhwc } from '../src/train/batch-tensors.js';
import { parseConfig, type TrainConfig } from '../src/train/config.js';
import { segmentationLoss } from '../src/train/loss.js';
import { setupModel, type ModelSetup } from '../src/train/setup.js';
import { trainStep } from '../src/train/step.js';
import { train } from '../src/train/train.js';
import { tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

const data = tinyData();
const CLICKS: PromptSampling = { box: 0.5, points: 0.5, numPoints: [1, 3] };
const loaderOptions = (seed: number, prompts?: PromptSampling, batchSize = 4): TrainLoaderOptions => ({
  files: data.train,
  imageSize: 64,
  batchSize,
  bboxShift: 5,
  seed,
  augment: { flipH: true },
  prompts,
  log: () => undefined,
});

async function take(opts: TrainLoaderOptions, n: number, state?: Record<string, unknown>): Promise<Batch[]> {
  const loader = createTrainLoader({ ...opts, state });
  const out: Batch[] = [];
  for (let i = 0; i < n; i++) out.push(await loader.next());
  await loader.close();
  return out;
}

function withPrompts(prompts: Record<string, unknown>, train: Record<string, unknown> = {}): TrainConfig {
  const c = tinyConfig(data, train);
  return parseConfig({ ...c, prompts });
}

/** A loader that hands out the same batch every time. */
function fixedLoader(batch: Batch) {
  return { next: async () => batch } as unknown as Parameters<typeof trainStep>[1];
}

describe('training prompts', () => {
  it('clicks are drawn inside the object, seeded per sample, the same after a resume, and leave the box stream as it was', async () => {
    const a = await take(loaderOptions(3, CLICKS), 4);
    const b = await take(loaderOptions(3, CLICKS), 4);
    const other = await take(loaderOptions(4, CLICKS), 4);
    const boxOnly = await take(loaderOptions(3), 4);
    expect(a.map((x) => Array.from(x.points!.coords))).toEqual(b.map((x) => Array.from(x.points!.coords)));
    expect(a.map((x) => Array.from(x.points!.labels))).toEqual(b.map((x) => Array.from(x.points!.labels)));
    expect(a.map((x) => Array.from(x.points!.coords))).not.toEqual(other.map((x) => Array.from(x.points!.coords)));
    let boxes = 0;
    let clicks = 0;
    for (const [i, batch] of a.entries()) {
      // the images, masks and boxes are those of the box-only stream
      expect(batch.sources).toEqual(boxOnly[i].sources);
      expect(Array.from(batch.masks)).toEqual(Array.from(boxOnly[i].masks));
      expect(Array.from(batch.boxes)).toEqual(Array.from(boxOnly[i].boxes));
      const { slots, coords, labels } = batch.points!;
      expect(slots).toBe(5); // 2 box corners + at most 3 clicks
      for (let s = 0; s < batch.batchSize; s++) {
        const l = Array.from(labels.subarray(s * slots, (s + 1) * slots));
        const hasBox = l[0] === 2;
        const n = l.filter((v) => v === 1).length;
        expect(hasBox || n >= 1).toBe(true); // never without a prompt
        expect(n).toBeLessThanOrEqual(3);
        if (hasBox) {
          boxes++;
          expect(l[1]).toBe(3);
          expect(Array.from(coords.subarray(s * slots * 2, s * slots * 2 + 4))).toEqual(Array.from(batch.boxes.subarray(s * 4, s * 4 + 4)));
        }
        // clicks, then padding (-1 at 0, 0)
        const first = hasBox ? 2 : 0;
        expect(l.slice(first)).toEqual([...Array(n).fill(1), ...Array(slots - first - n).fill(-1)]);
        for (let k = first; k < slots; k++) {
          const [x, y] = coords.subarray((s * slots + k) * 2, (s * slots + k) * 2 + 2);
          if (l[k] === 1) {
            clicks++;
            expect(batch.fullMasks![s * 64 * 64 + y * 64 + x], `click ${x},${y} of sample ${s}`).toBe(1);
          } else expect([x, y]).toEqual([0, 0]);
        }
      }
    }
    expect(boxes).toBeGreaterThan(0);
    expect(clicks).toBeGreaterThan(0);
    expect(boxes).toBeLessThan(16);

    // resumed from the state after batch 2: batches 3 and 4 again, clicks included
    const loader = createTrainLoader(loaderOptions(3, CLICKS));
    await loader.next();
    await loader.next();
    const state = loader.state();
    await loader.close();
    const resumed = await take(loaderOptions(3, CLICKS), 2, state);
    expect(resumed.map((x) => Array.from(x.points!.coords))).toEqual(a.slice(2).map((x) => Array.from(x.points!.coords)));

    // a worker thread draws the same clicks
    const fromWorker = await take({ ...loaderOptions(3, CLICKS), workers: 1 }, 2);
    expect(fromWorker.map((x) => Array.from(x.points!.coords))).toEqual(a.slice(0, 2).map((x) => Array.from(x.points!.coords)));
    expect(fromWorker.map((x) => Array.from(x.points!.labels))).toEqual(a.slice(0, 2).map((x) => Array.from(x.points!.labels)));
    expect(Array.from(fromWorker[1].labelValues)).toEqual(Array.from(a[1].labelValues));
  });

  it('a correction-round step: its loss is the two rounds built by hand, summed', async () => {
    const config = withPrompts({ box: 1, points: 0.5, num_points: [1, 2], correction_rounds: 1 });
    const [batch] = await take(loaderOptions(5, { box: 1, points: 0.5, numPoints: [1, 2] }, 2), 1);
    const S = 64;
    const B = batch.batchSize;
    const m = batch.maskSize;

    // by hand, on a fresh model with the same seeded weights
    const hand = setupModel(config, tmpRunDir('hand'), undefined, () => undefined);
    const images = tf.tensor4d(batch.images, [B, S, S, 3]);
    const target = tf.tensor4d(batch.masks, [B, m, m, 1]);
    const { slots, coords, labels } = batch.points!;
    const emb = hand.model.imageEmbeddings(hand.ops, images);
    const first = hand.model.decodePrompts(hand.ops, emb, { coords: tf.tensor3d(coords, [B, slots, 2]), labels: tf.tensor2d(labels, [B, slots]) });
    const firstHigh = await upsampleMasks(hand.ops, first.masks, [S, S]).data();
    const firstLow = await first.masks.data();
    const coords2: number[] = [];
    const labels2: number[] = [];
    for (let b = 0; b < B; b++) {
      const pred = Array.from(firstHigh.subarray(b * S * S, (b + 1) * S * S), (v) => (v > 0 ? 1 : 0));
      const click = nextCorrectionClick(batch.fullMasks!.subarray(b * S * S, (b + 1) * S * S), pred, S, S);
      // the click lies in the error: positive where the object was missed, negative where it was not
      expect(pred[click.y * S + click.x]).toBe(1 - click.label);
      expect(batch.fullMasks![b * S * S + click.y * S + click.x]).toBe(click.label);
      coords2.push(...coords.subarray(b * slots * 2, (b + 1) * slots * 2), click.x, click.y);
      labels2.push(...labels.subarray(b * slots, (b + 1) * slots), click.label);
    }
    const second = hand.model.decodePrompts(
      hand.ops,
      emb,
      { coords: tf.tensor3d(coords2, [B, slots + 1, 2]), labels: tf.tensor2d(labels2, [B, slots + 1]) },
      tf.tensor4d(firstLow, [B, 1, m, m]),
    );
    const l1 = await segmentationLoss(logitsNhwc(first.masks), target).loss.data();
    const l2 = await segmentationLoss(logitsNhwc(second.masks), target).loss.data();
    const expected = l1[0] + l2[0];

    const run = setupModel(config, tmpRunDir('rounds'), undefined, () => undefined);
    const corrections = { rounds: 1, probability: 1, seed: 'x' };
    const stats = await trainStep(run, fixedLoader(batch), config.train, 0, 1, 'unused', corrections);
    // the rounds leak nothing (AdamW's moments exist from the first step on)
    const live = tf.memory().numTensors;
    await trainStep(run, fixedLoader(batch), config.train, 1, 1, 'unused', corrections);
    expect(tf.memory().numTensors).toBe(live);
    expect(stats.loss).toBeCloseTo(expected, 5);
    expect(stats.terms.dice + stats.terms.bce).toBeCloseTo(expected, 5);
    // a second round changes the loss: it is not the first round's alone
    expect(Math.abs(stats.loss - 2 * l1[0])).toBeGreaterThan(1e-4);
    // correction_prob 0: no round is drawn, the loss is the first round's
    const none = setupModel(config, tmpRunDir('no-rounds'), undefined, () => undefined);
    const first1 = await trainStep(none, fixedLoader(batch), config.train, 0, 1, 'unused', { ...corrections, probability: 0 });
    expect(first1.loss).toBeCloseTo(l1[0], 5);
  });

  it('a run with clicks and correction rounds in some batches resumes bit for bit', async () => {
    const config = withPrompts(
      // with seed 7 the draws put the rounds in steps 2 and 3, not in step 1
      { box: 0.5, points: 0.5, num_points: [1, 2], correction_rounds: 2, correction_prob: 0.75 },
      { max_steps: 3, batch_size: 2, val_every: 0, save_every: 0 },
    );
    const quiet = { quiet: true, handleSignals: false };
    const whole = await train({ config, runDir: tmpRunDir('prompts-whole'), ...quiet });
    const runDir = tmpRunDir('prompts-split');
    const first = await train({ config, runDir, ...quiet, stopAfterStep: 1 });
    const second = await train({ config, runDir, resume: 'auto', ...quiet });
    expect([...first.losses, ...second.losses]).toEqual(whole.losses);
    const a = readFileSync(join(whole.runDir, 'checkpoints', 'latest', 'model.safetensors'));
    const b = readFileSync(join(runDir, 'checkpoints', 'latest', 'model.safetensors'));
    expect(Buffer.compare(a, b)).toBe(0);
  });

  it('the default prompt (the box alone) gives the seed recipe loss: predictFromBoxes + Dice + BCE', async () => {
    const config = tinyConfig(data);
    expect(config.prompts).toEqual({ box: 1, points: 0, num_points: [1, 1], correction_rounds: 0, correction_prob: 1 });
    const [batch] = await take(loaderOptions(5, undefined, 2), 1);
    expect(batch.points).toBeUndefined();
    const S = 64;
    const B = batch.batchSize;
    const hand: ModelSetup = setupModel(config, tmpRunDir('seed-hand'), undefined, () => undefined);
    const out = hand.model.predictFromBoxes(hand.ops, tf.tensor4d(batch.images, [B, S, S, 3]), tf.tensor2d(batch.boxes, [B, 4]));
    const expected = (await segmentationLoss(logitsNhwc(out.masks), tf.tensor4d(batch.masks, [B, batch.maskSize, batch.maskSize, 1])).loss.data())[0];
    const run = setupModel(config, tmpRunDir('seed'), undefined, () => undefined);
    const stats = await trainStep(run, fixedLoader(batch), config.train, 0, 1, 'unused');
    expect(stats.loss).toBe(expected);
  });
});
