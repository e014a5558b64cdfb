/**
 * Gradient checkpointing (train.checkpoint_activations): the Hiera blocks and two-way transformer
 * layers recomputed in the backward pass give the plain path's gradients (golden small256 model,
 * cpu and wasm), hold fewer bytes at the peak, leak no tensors, and train to the same losses.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { train } from '../src/train/train.js';
import { loadGolden, nchwToNhwc } from './helpers/golden.js';
import { tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

const golden = loadGolden();
const model = new SAM2Base(golden.config);
const size = golden.config.image_size;
const isTrained = (name: string) => name.startsWith('image_encoder.') || name.startsWith('sam_mask_decoder.');

interface Pass {
  loss: number;
  grads: Map<string, Float32Array>;
  /** tfjs's peak of allocated tensor bytes during the forward + backward */
  peakBytes: number;
}

/** One forward + backward of predictFromBoxes on the golden model and inputs. */
async function pass(checkpointActivations: boolean): Promise<Pass> {
  const params = new Map(golden.params);
  const nameOf = new Map<string, string>();
  const vars: tf.Variable[] = [];
  for (const [name, t] of golden.params) {
    if (!isTrained(name)) continue;
    const v = tf.variable(t, true);
    params.set(name, v);
    vars.push(v);
    nameOf.set(v.name, name);
  }
  const ops = new TfOps(params, { checkpointActivations });
  const image = nchwToNhwc(golden.inputs.image);
  const boxes = tf.tensor(golden.inputs.box.data as Float32Array, [1, 4]);
  const m = size / 4;
  const target = tf.tensor(Array.from({ length: m * m }, (_, i) => (i % 7 < 3 ? 1 : 0)), [1, 1, m, m]);
  let result: { value: tf.Scalar; grads: tf.NamedTensorMap } | undefined;
  const profile = await tf.profile(() => {
    result = tf.variableGrads(() => {
      const out = model.predictFromBoxes(ops, image, boxes);
      return tf.add(tf.mean(tf.square(tf.sub(tf.sigmoid(out.masks), target))), tf.mean(out.iouPred)) as tf.Scalar;
    }, vars);
  });
  const { value, grads } = result!;
  const out: Pass = { loss: (await value.data())[0], grads: new Map(), peakBytes: profile.peakBytes };
  for (const [vname, g] of Object.entries(grads)) out.grads.set(nameOf.get(vname)!, (await g.data()) as Float32Array);
  tf.dispose([value, ...Object.values(grads), image, boxes, target, ...vars]);
  return out;
}

/** max |a - b| over the largest |b| of each gradient (floored): the worst gradient's figure. */
function worstRelative(ours: Map<string, Float32Array>, ref: Map<string, Float32Array>): { name: string; error: number } {
  let worst = { name: '', error: 0 };
  for (const [name, r] of ref) {
    const o = ours.get(name)!;
    let diff = 0;
    let scale = 1e-12;
    for (let i = 0; i < r.length; i++) {
      diff = Math.max(diff, Math.abs(o[i] - r[i]));
      scale = Math.max(scale, Math.abs(r[i]));
    }
    if (diff / scale >= worst.error) worst = { name, error: diff / scale };
  }
  return worst;
}

describe('gradient checkpointing', () => {
  afterAll(async () => {
    await selectBackend('cpu', { quiet: true });
  });

  for (const backend of ['cpu', 'wasm'] as const) {
    it(`gives the plain path's gradients within 1e-6 with a lower peak (golden small256, ${backend})`, async () => {
      await selectBackend(backend, { quiet: true });
      const plain = await pass(false);
      const before = tf.memory().numTensors;
      const checkpointed = await pass(true);
      expect(tf.memory().numTensors).toBe(before);

      expect(Math.abs(checkpointed.loss - plain.loss)).toBeLessThanOrEqual(1e-6 * Math.abs(plain.loss));
      expect([...checkpointed.grads.keys()].sort()).toEqual([...plain.grads.keys()].sort());
      // the trunk's and the two-way transformer's parameters are among them
      expect(plain.grads.has('image_encoder.trunk.blocks.0.attn.qkv.weight')).toBe(true);
      expect(plain.grads.has('sam_mask_decoder.transformer.layers.1.norm4.weight')).toBe(true);
      const worst = worstRelative(checkpointed.grads, plain.grads);
      const mib = (b: number) => (b / 2 ** 20).toFixed(1);
      console.log(
        `${backend}: ${plain.grads.size} gradients, worst relative difference ${worst.error.toExponential(2)} (${worst.name}); ` +
          `tfjs peak ${mib(plain.peakBytes)} MiB plain, ${mib(checkpointed.peakBytes)} MiB checkpointed`,
      );
      expect(worst.error).toBeLessThanOrEqual(1e-6);
      expect(checkpointed.peakBytes).toBeLessThan(0.8 * plain.peakBytes);
    });
  }

  it('names a parameter a checkpointed block reads from outside its module', () => {
    const w = tf.variable(tf.ones([2, 2]), true);
    const ops = new TfOps(new Map([['other.weight', w]]), { checkpointActivations: true });
    const x = tf.ones([1, 2]);
    expect(() => tf.variableGrads(() => tf.sum(ops.checkpoint('block', (o, [input]) => [o.linear(input, o.param('other.weight'))], [x])[0]) as tf.Scalar, [w])).toThrow(
      /checkpointed block 'block' reads parameter 'other.weight' from outside its module/,
    );
    tf.dispose([w, x]);
  });

  it('trains to the same losses with a flat tensor count (tiny model, 3 steps)', async () => {
    await selectBackend('cpu', { quiet: true });
    const data = tinyData();
    const settings = { max_steps: 3, val_every: 0, save_every: 0, val_at_start: false };
    const run = async (checkpointActivations: boolean) => {
      const counts: number[] = [];
      const result = await train({
        config: tinyConfig(data, { ...settings, checkpoint_activations: checkpointActivations }),
        runDir: tmpRunDir(checkpointActivations ? 'ckpt' : 'plain'),
        quiet: true,
        handleSignals: false,
        onStep: (s) => counts.push(s.numTensors),
      });
      return { losses: result.losses, counts };
    };
    const plain = await run(false);
    const checkpointed = await run(true);
    console.log(`losses plain ${plain.losses.join(', ')}; checkpointed ${checkpointed.losses.join(', ')}`);
    expect(checkpointed.losses).toHaveLength(3);
    checkpointed.losses.forEach((l, i) => expect(Math.abs(l - plain.losses[i])).toBeLessThanOrEqual(1e-6 * Math.abs(plain.losses[i])));
    expect(new Set(checkpointed.counts).size).toBe(1);
  });
});
