import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { AdamW, buildParamGroups, clipGradNorm, GradAccumulator, layerId } from '../src/train/optimizer.js';
import { GOLDEN_DIR } from './helpers/golden.js';

const trainable = (k: string) => k.startsWith('image_encoder.') || k.startsWith('sam_mask_decoder.');

describe('AdamW', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  it('reproduces torch.optim.AdamW(lr=1e-3, weight_decay=0.01) one step from the golden gradients', () => {
    const weights = readSafetensors(join(GOLDEN_DIR, 'weights.safetensors'));
    const gradsHost = readSafetensors(join(GOLDEN_DIR, 'grads.safetensors'));
    const expected = readSafetensors(join(GOLDEN_DIR, 'adamw_step1.safetensors'));
    const params = new Map<string, tf.Variable>();
    for (const [k, t] of weights) if (trainable(k)) params.set(k, tf.variable(tf.tensor(t.data, t.shape)));
    const opt = new AdamW(params, buildParamGroups(params, { lr: 1e-3, weightDecay: 0.01 }));
    const grads = new Map([...gradsHost].map(([k, t]) => [k, tf.tensor(t.data, t.shape)]));
    opt.step(grads);

    let worst = 0;
    for (const [k, ref] of expected) {
      const ours = params.get(k)!.dataSync();
      let err = 0;
      for (let i = 0; i < ref.data.length; i++) err = Math.max(err, Math.abs(ours[i] - ref.data[i]));
      worst = Math.max(worst, err);
      expect(err, k).toBeLessThanOrEqual(1e-6);
    }
    console.log(`AdamW step 1: ${expected.size} tensors, max abs error ${worst.toExponential(2)}`);

    // parameters without a gradient are untouched, weight decay included
    const untouched = [...params.keys()].filter((k) => !gradsHost.has(k));
    expect(untouched.length).toBeGreaterThan(0);
    for (const k of untouched) expect(Buffer.compare(Buffer.from(params.get(k)!.dataSync().buffer), Buffer.from(weights.get(k)!.data.buffer))).toBe(0);
    tf.dispose([...grads.values(), ...params.values()]);
    opt.dispose();
  });

  it('round-trips its state and continues identically', async () => {
    const make = () => new Map([['a.weight', tf.variable(tf.tensor([1, -2, 3, 0.5], [2, 2]))], ['a.bias', tf.variable(tf.tensor([0.1, 0.2]))]]);
    const g = () => new Map([['a.weight', tf.tensor([0.3, -0.1, 0.2, 0.05], [2, 2])], ['a.bias', tf.tensor([1, -1])]]);
    const p1 = make();
    const o1 = new AdamW(p1, buildParamGroups(p1, { lr: 0.01, weightDecay: 0.1, noDecayBiasNorm: true }));
    o1.step(g());
    const p2 = new Map([...p1].map(([k, v]) => [k, tf.variable(v.clone())]));
    const o2 = new AdamW(p2, buildParamGroups(p2, { lr: 0.01, weightDecay: 0.1, noDecayBiasNorm: true }));
    o2.loadState(await o1.exportState());
    o1.step(g(), 0.5);
    o2.step(g(), 0.5);
    for (const k of p1.keys()) expect([...p2.get(k)!.dataSync()]).toEqual([...p1.get(k)!.dataSync()]);
  });

  it('builds groups: image-encoder lr, no decay on biases and norms, layer decay', () => {
    const shapes = new Map<string, { shape: number[] }>([
      ['image_encoder.trunk.pos_embed', { shape: [1, 8, 7, 7] }],
      ['image_encoder.trunk.blocks.0.attn.qkv.weight', { shape: [24, 8] }],
      ['image_encoder.trunk.blocks.1.norm1.weight', { shape: [8] }],
      ['image_encoder.neck.convs.0.conv.bias', { shape: [8] }],
      ['sam_mask_decoder.iou_token.weight', { shape: [1, 8] }],
    ]);
    const groups = buildParamGroups(shapes, { lr: 5e-5, imageEncoderLr: 3e-5, weightDecay: 0.1, noDecayBiasNorm: true });
    const of = (k: string) => groups.find((g) => g.keys.includes(k))!;
    expect(of('image_encoder.trunk.pos_embed')).toMatchObject({ lr: 3e-5, weightDecay: 0.1 });
    expect(of('image_encoder.trunk.blocks.1.norm1.weight')).toMatchObject({ lr: 3e-5, weightDecay: 0 });
    expect(of('image_encoder.neck.convs.0.conv.bias')).toMatchObject({ lr: 3e-5, weightDecay: 0 });
    expect(of('sam_mask_decoder.iou_token.weight')).toMatchObject({ lr: 5e-5, weightDecay: 0.1 });
    expect(layerId('image_encoder.trunk.blocks.1.norm1.weight', 2)).toBe(2);
    const decayed = buildParamGroups(shapes, { lr: 1, weightDecay: 0, layerDecay: 0.5 });
    const lrOf = (k: string) => decayed.find((g) => g.keys.includes(k))!.lr;
    expect(lrOf('image_encoder.trunk.pos_embed')).toBe(0.125);
    expect(lrOf('image_encoder.trunk.blocks.0.attn.qkv.weight')).toBe(0.25);
    expect(lrOf('image_encoder.trunk.blocks.1.norm1.weight')).toBe(0.5);
    expect(lrOf('image_encoder.neck.convs.0.conv.bias')).toBe(1);
  });

  it('clips by global norm like clip_grad_norm_ and averages accumulated gradients', async () => {
    const grads = new Map([['a', tf.tensor([3, 0])], ['b', tf.tensor([4])]]);
    const { norm, scale } = await clipGradNorm(grads, 1);
    expect(norm).toBeCloseTo(5, 6);
    expect(scale).toBeCloseTo(1 / (5 + 1e-6), 9);
    expect((await clipGradNorm(grads, 10)).scale).toBe(1);
    expect((await clipGradNorm(grads)).scale).toBe(1);
    // the optimizer applies the coefficient: the same update as from gradients scaled first
    const updated = async (gradScale: number, prescale: number) => {
      const p = new Map([['a', tf.variable(tf.tensor([0.5, -1]))], ['b', tf.variable(tf.tensor([2]))]]);
      const opt = new AdamW(p, buildParamGroups(p, { lr: 0.1, weightDecay: 0.01 }));
      const g = new Map([...grads].map(([k, t]) => [k, tf.mul(t, prescale)]));
      opt.step(g, 1, gradScale);
      opt.step(g, 1, gradScale);
      const out = [...p.values()].flatMap((v) => [...v.dataSync()]);
      tf.dispose([...g.values(), ...p.values()]);
      opt.dispose();
      return out;
    };
    expect(await updated(scale, 1)).toEqual(await updated(1, scale));
    const acc = new GradAccumulator();
    acc.add(new Map([['a', tf.tensor([1, 2])]]));
    acc.add(new Map([['a', tf.tensor([3, 6])]]));
    expect([...acc.take().get('a')!.dataSync()]).toEqual([2, 4]);
  });
});
