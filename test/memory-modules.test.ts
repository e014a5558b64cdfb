import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { resolveModelConfig, SAM2_1_TINY, SAM2_TINY, type Sam2Config } from '../src/model/config.js';
import { MemoryAttention } from '../src/model/memory-attention.js';
import { MemoryEncoder } from '../src/model/memory-encoder.js';
import type { ParamSpec } from '../src/model/ops.js';
import { TfOps } from '../src/model/tf-ops.js';

const FIXTURES = join(import.meta.dirname, 'fixtures');
const GOLDEN = join(FIXTURES, 'golden-small256');

function specMap(specs: ParamSpec[]): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const s of specs) {
    expect(out[s.name], `duplicate key ${s.name}`).toBeUndefined();
    out[s.name] = s.shape;
  }
  return out;
}

function modules(config: Sam2Config) {
  return {
    enc: new MemoryEncoder(config.memory_encoder, 'memory_encoder'),
    att: new MemoryAttention(config.memory_attention, 'memory_attention'),
  };
}

function pick(all: Record<string, number[]>, prefix: string): Record<string, number[]> {
  return Object.fromEntries(Object.entries(all).filter(([k]) => k.startsWith(prefix + '.')));
}

describe('memory modules: parameters', () => {
  const shapes = JSON.parse(readFileSync(join(FIXTURES, 'sam2_tiny_state_dict_shapes.json'), 'utf8'));
  const cases: Array<[string, Sam2Config]> = [
    ['sam2.1/sam2.1_hiera_t', SAM2_1_TINY],
    ['sam2/sam2_hiera_t', SAM2_TINY],
  ];
  for (const [name, config] of cases) {
    it(`match the official state dict of ${name}`, () => {
      const ref: Record<string, number[]> = shapes[name].keys;
      const { enc, att } = modules(config);
      expect(specMap(enc.paramSpecs())).toEqual(pick(ref, 'memory_encoder'));
      expect(specMap(att.paramSpecs())).toEqual(pick(ref, 'memory_attention'));
    });
  }

  it('match the small256 fixture weights', () => {
    const meta = JSON.parse(readFileSync(join(GOLDEN, 'meta.json'), 'utf8'));
    const config = resolveModelConfig(meta.model_config);
    const weights = readSafetensors(join(GOLDEN, 'weights.safetensors'));
    const ref: Record<string, number[]> = {};
    for (const [k, t] of weights) ref[k] = t.shape;
    const { enc, att } = modules(config);
    expect(specMap(enc.paramSpecs())).toEqual(pick(ref, 'memory_encoder'));
    expect(specMap(att.paramSpecs())).toEqual(pick(ref, 'memory_attention'));
  });
});

describe('memory modules: forward', () => {
  let config: Sam2Config;
  let params: Map<string, tf.Tensor>;
  beforeAll(async () => {
    await selectBackend('cpu', { quiet: true });
    const meta = JSON.parse(readFileSync(join(GOLDEN, 'meta.json'), 'utf8'));
    config = resolveModelConfig(meta.model_config);
    params = new Map();
    for (const [k, t] of readSafetensors(join(GOLDEN, 'weights.safetensors'))) {
      if (k.startsWith('memory_')) params.set(k, tf.tensor(t.data, t.shape));
    }
  });

  it('memory encoder and memory attention give finite outputs of the right shapes, without leaks', () => {
    const ops = new TfOps(params);
    const { enc, att } = modules(config);
    const C = config.memory_attention.d_model;
    const memDim = config.memory_encoder.out_dim;
    // an 8x8 feature grid (128x128 masks) keeps this quick; it also takes RoPE's sqrt(N) grid path
    const h = 8;
    const S = 16 * h;
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const pix = tf.randomNormal([2, h, h, C], 0, 1, 'float32', 1);
      const masks = tf.randomNormal([2, S, S, 1], 0, 3, 'float32', 2);
      const mem = enc.forward(ops, pix, masks, false);
      expect(mem.visionFeatures.shape).toEqual([2, h, h, memDim]);
      expect(mem.visionPosEnc.shape).toEqual([2, h, h, memDim]);
      // (B, 1, H, W) masks are the same data
      const mem2 = enc.forward(ops, pix, tf.reshape(masks, [2, 1, S, S]), false);
      expect(tf.max(tf.abs(tf.sub(mem.visionFeatures, mem2.visionFeatures))).dataSync()[0]).toBe(0);

      // two spatial memories + 4 object-pointer tokens
      const nPtr = 4;
      const memory = tf.concat([tf.reshape(mem.visionFeatures, [2, -1, memDim]), tf.randomNormal([2, nPtr, memDim], 0, 1, 'float32', 3)], 1);
      const memory2 = tf.concat([tf.reshape(mem.visionFeatures, [2, -1, memDim]), memory], 1);
      const memoryPos = tf.randomNormal(memory2.shape, 0, 1, 'float32', 4);
      const curr = tf.randomNormal([2, h * h, C], 0, 1, 'float32', 5);
      const currPos = tf.randomNormal([2, h * h, C], 0, 1, 'float32', 6);
      const out = att.forward(ops, { curr, currPos, memory: memory2, memoryPos, numObjPtrTokens: nPtr });
      expect(out.shape).toEqual([2, h * h, C]);
      for (const t of [mem.visionFeatures, mem.visionPosEnc, out]) {
        expect(tf.all(tf.isFinite(t)).dataSync()[0]).toBe(1);
      }
    });
    expect(tf.memory().numTensors).toBe(before);
  });
});
