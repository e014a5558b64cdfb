import * as tf from '@tensorflow/tfjs-core';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SAM2_1_TINY, SAM2_TINY, type ImageEncoderConfig } from '../src/model/config.js';
import { ImageEncoder, type ImageEncoderOutput } from '../src/model/image-encoder.js';
import { bicubicMatrix, hieraBlocks, windowPartition, windowUnpartition } from '../src/model/hiera.js';
import { conv2d } from '../src/model/ops.js';
import { TfOps } from '../src/model/tf-ops.js';
import { GOLDEN_DIR, loadGolden, nchwToNhwc, relMaxError } from './helpers/golden.js';

const golden = loadGolden();
const toNchw = (x: tf.Tensor) => tf.transpose(x, [0, 3, 1, 2]);

function specShapes(enc: ImageEncoder): Record<string, number[]> {
  const specs = enc.paramSpecs();
  const out = Object.fromEntries(specs.map((s) => [s.name, s.shape]));
  expect(Object.keys(out).length).toBe(specs.length); // no duplicate names
  return out;
}

function imageEncoderKeys(all: Record<string, number[]>): Record<string, number[]> {
  return Object.fromEntries(Object.entries(all).filter(([k]) => k.startsWith('image_encoder.')));
}

describe('ImageEncoder parameters', () => {
  it('match the golden fixture state dict (image_encoder.*)', () => {
    const fixture = imageEncoderKeys(Object.fromEntries([...golden.params].map(([k, t]) => [k, t.shape])));
    expect(specShapes(new ImageEncoder(golden.config.image_encoder))).toEqual(fixture);
  });

  const shapes = JSON.parse(readFileSync(join(GOLDEN_DIR, '..', 'sam2_tiny_state_dict_shapes.json'), 'utf8'));
  const presets: Array<[string, ImageEncoderConfig]> = [
    ['sam2.1/sam2.1_hiera_t', SAM2_1_TINY.image_encoder],
    ['sam2/sam2_hiera_t', SAM2_TINY.image_encoder],
  ];
  for (const [name, cfg] of presets) {
    it(`match the official ${name} state dict at 1024 (image_encoder.*)`, () => {
      const official = imageEncoderKeys(shapes[name].keys);
      expect(Object.keys(official).length).toBeGreaterThan(0);
      expect(specShapes(new ImageEncoder(cfg))).toEqual(official);
      expect(Object.values(official).reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0)).toBe(shapes[name].by_module.image_encoder);
    });
  }
});

describe('Hiera building blocks', () => {
  it('block schedule of the tiny trunk', () => {
    const { blocks, stageEnds } = hieraBlocks(SAM2_1_TINY.image_encoder.trunk);
    expect(stageEnds).toEqual([0, 2, 9, 11]);
    expect(blocks.map((b) => b.windowSize)).toEqual([8, 8, 4, 4, 14, 0, 14, 0, 14, 0, 14, 7]);
    expect(blocks.map((b) => b.qStride)).toEqual([null, 2, null, 2, null, null, null, null, null, null, 2, null]);
    expect(blocks.map((b) => b.numHeads)).toEqual([1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 8, 8]);
  });

  it('window partition pads, orders windows row-major per image, and unpartitions back', () => {
    const ops = new TfOps(new Map());
    const x = tf.randomNormal([2, 5, 7, 3], 0, 1, 'float32', 1);
    const windows = windowPartition(ops, x, 4); // padded to 8 x 8: 2 x 2 windows per image
    expect(windows.shape).toEqual([8, 4, 4, 3]);
    const padded = tf.pad(x, [[0, 0], [0, 3], [0, 1], [0, 0]]);
    // image 1, window (row 1, col 0)
    const expected = tf.slice(padded, [1, 4, 0, 0], [1, 4, 4, 3]);
    expect(tf.max(tf.abs(tf.sub(tf.slice(windows, [6, 0, 0, 0], [1, 4, 4, 3]), expected))).dataSync()[0]).toBe(0);
    const back = windowUnpartition(ops, windows, 4, [8, 8], [5, 7]);
    expect(back.shape).toEqual([2, 5, 7, 3]);
    expect(tf.max(tf.abs(tf.sub(back, x))).dataSync()[0]).toBe(0);
    tf.dispose([x, windows, padded, expected, back]);
  });

  it('bicubic matrix reproduces PyTorch values (7 -> 16, rows sum to 1, identity at the same size)', () => {
    const m = bicubicMatrix(7, 16);
    for (let o = 0; o < 16; o++) {
      let s = 0;
      for (let i = 0; i < 7; i++) s += m[o * 7 + i];
      expect(s).toBeCloseTo(1, 6);
    }
    // output 0: real = 7/16 * 0.5 - 0.5 = -0.28125, taps at -2..1 clamped to 0,0,0,1
    const t = -0.28125 - Math.floor(-0.28125);
    const A = -0.75;
    const cc1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
    const cc2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
    expect(m[0]).toBeCloseTo(cc2(t + 1) + cc1(t) + cc1(1 - t), 6);
    expect(m[1]).toBeCloseTo(cc2(2 - t), 6);
    const id = bicubicMatrix(5, 5);
    for (let i = 0; i < 25; i++) expect(id[i]).toBeCloseTo(i % 6 === 0 ? 1 : 0, 7);
  });
});

describe('ImageEncoder forward on the golden fixture (small256)', () => {
  const ops = new TfOps(golden.params);
  const encoder = new ImageEncoder(golden.config.image_encoder, 'image_encoder');
  let image: tf.Tensor;
  let trunk: tf.Tensor[];
  let out: ImageEncoderOutput<tf.Tensor> & { highRes: tf.Tensor[] };

  beforeAll(() => {
    image = nchwToNhwc(golden.inputs.image);
    // warm-up, then a timed pass
    tf.tidy(() => encoder.forward(ops, image).visionFeatures.dataSync());
    const t0 = performance.now();
    const enc = encoder.forward(ops, image);
    enc.visionFeatures.dataSync();
    console.log(`image encoder forward at ${image.shape[1]}: ${(performance.now() - t0).toFixed(0)} ms (${tf.getBackend()})`);
    trunk = encoder.trunk.forward(ops, image);
    out = {
      ...enc,
      highRes: [conv2d(ops, enc.backboneFpn[0], 'sam_mask_decoder.conv_s0'), conv2d(ops, enc.backboneFpn[1], 'sam_mask_decoder.conv_s1')],
    };
  });
  afterAll(() => tf.dispose([image, ...trunk, ...out.backboneFpn, ...out.visionPosEnc, ...out.highRes]));

  function check(name: string, ours: () => tf.Tensor) {
    it(`${name} within 1e-4`, () => {
      const ref = golden.expected[name];
      const t = ours();
      expect(t.shape).toEqual([ref.shape[0], ref.shape[2], ref.shape[3], ref.shape[1]]);
      const nchw = toNchw(t);
      const err = relMaxError(nchw, ref);
      nchw.dispose();
      console.log(`${name}: max|ours-ref|/max(1,max|ref|) = ${err.toExponential(2)}`);
      expect(err).toBeLessThanOrEqual(1e-4);
    });
  }
  for (const i of [0, 1, 2, 3]) check(`trunk.${i}`, () => trunk[i]);
  check('fpn.0', () => out.highRes[0]);
  check('fpn.1', () => out.highRes[1]);
  check('fpn.2', () => out.backboneFpn[2]);
  for (const i of [0, 1, 2]) check(`pos.${i}`, () => out.visionPosEnc[i]);

  it('keeps 3 levels after scalp, visionFeatures the coarsest', () => {
    expect(out.backboneFpn.length).toBe(3);
    expect(out.visionPosEnc.length).toBe(3);
    expect(out.visionFeatures).toBe(out.backboneFpn[2]);
  });
});

describe('ImageEncoder training path', () => {
  const trainable = ['image_encoder.trunk.pos_embed', 'image_encoder.trunk.patch_embed.proj.weight'];

  it('gives finite, non-zero gradients to pos_embed and patch_embed, without leaking tensors', () => {
    const params = new Map(golden.params);
    const vars = trainable.map((name) => tf.variable(golden.params.get(name)!, true, `enc-test/${name}`));
    trainable.forEach((name, i) => params.set(name, vars[i]));
    const ops = new TfOps(params);
    const encoder = new ImageEncoder(golden.config.image_encoder);
    const image = nchwToNhwc(golden.inputs.image);

    const counts: number[] = [];
    for (let pass = 0; pass < 3; pass++) {
      const norms = tf.tidy(() => {
        const { grads } = tf.variableGrads(() => {
          const enc = encoder.forward(ops, image);
          // touch every kept level so the whole trunk is reached
          return enc.backboneFpn.map((f, i) => tf.mean(tf.square(tf.add(f, i)))).reduce((a, b) => tf.add(a, b)) as tf.Scalar;
        }, vars);
        return trainable.map((name) => {
          const g = grads[vars[trainable.indexOf(name)].name];
          expect(g.shape).toEqual(params.get(name)!.shape);
          return [tf.all(tf.isFinite(g)).dataSync()[0], tf.max(tf.abs(g)).dataSync()[0]];
        });
      });
      norms.forEach(([finite, maxAbs]) => {
        expect(finite).toBe(1);
        expect(maxAbs).toBeGreaterThan(0);
      });
      counts.push(tf.memory().numTensors);
    }
    console.log(`live tensors after each forward+backward: ${counts.join(', ')}`);
    expect(new Set(counts).size).toBe(1);
    tf.dispose([image, ...vars]);
  });
});
