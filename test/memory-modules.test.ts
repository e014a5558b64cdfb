import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { resolveModelConfig, SAM2_1_TINY, SAM2_TINY, type Sam2Config } from '../src/model/config.js';
import { MemoryAttention } from '../src/model/memory-attention.js';
import { memoryBankTemporal, memoryBankTokens } from '../src/model/memory-bank.js';
import { RoPEAttention } from '../src/model/rope-attention.js';
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

/** x (N, in) @ W^T + b, written out on the host. */
async function linearHost(x: number[][], w: tf.Tensor, b: tf.Tensor): Promise<number[][]> {
  const W = (await w.array()) as number[][];
  const B = (await b.array()) as number[];
  return x.map((row) => W.map((wr, o) => wr.reduce((acc, v, i) => acc + v * row[i], B[o])));
}

describe('memory modules: values worked out by hand', () => {
  let config: Sam2Config;
  let golden: Map<string, tf.Tensor>;
  beforeAll(async () => {
    await selectBackend('cpu', { quiet: true });
    const meta = JSON.parse(readFileSync(join(GOLDEN, 'meta.json'), 'utf8'));
    config = resolveModelConfig(meta.model_config);
    golden = new Map();
    for (const [k, t] of readSafetensors(join(GOLDEN, 'weights.safetensors'))) golden.set(k, tf.tensor(t.data, t.shape));
  });

  it('cross-attention to a single memory token gives out_proj(v_proj(token)) for every query, whatever the queries', async () => {
    const attn = new RoPEAttention(config.memory_attention.layer.cross_attention, 'memory_attention.layers.0.cross_attn_image');
    const ops = new TfOps(golden);
    const token = Array.from({ length: 16 }, (_, i) => Math.sin(i + 1));
    const q = tf.randomNormal([1, 256, 32], 0, 1, 'float32', 7);
    const k = tf.tensor([[token.map((v) => 2 * v)]]);
    const v = tf.tensor([[token]]);
    // the one key is excluded from RoPE like an object-pointer token; softmax over one key is 1
    const out = attn.forward(ops, q, k, v, 1);
    const p = (n: string) => golden.get(`memory_attention.layers.0.cross_attn_image.${n}`)!;
    const want = (await linearHost(await linearHost([token], p('v_proj.weight'), p('v_proj.bias')), p('out_proj.weight'), p('out_proj.bias')))[0];
    const got = (await out.array()) as number[][][];
    expect(got[0]).toHaveLength(256);
    for (const row of [got[0][0], got[0][100], got[0][255]]) row.forEach((x, i) => expect(x).toBeCloseTo(want[i], 5));
    tf.dispose([q, k, v, out]);
  });

  it('memory-bank packing: tpos one-hot rows, pointer distances, maskmem_tpos_enc added, pointers split into Cm tokens', async () => {
    const nm = config.num_maskmem; // 7
    const Cm = config.memory_encoder.out_dim; // 16
    const C = config.image_encoder.neck.d_model; // 32
    const ctx = {
      memories: [
        { features: 0, posEnc: 0, tPos: 0 },
        { features: 0, posEnc: 0, tPos: 6 },
      ],
      objPtrs: [
        { ptr: 0, tDiff: 2 },
        { ptr: 0, tDiff: -1 },
      ],
      tDiffMax: 4,
    };
    const { tposOneHot, objPtrTpos } = memoryBankTemporal(ctx, nm);
    // t_pos 0 takes maskmem_tpos_enc[6], t_pos 6 (the most recent) takes [0]
    expect(Array.from(tposOneHot)).toEqual([0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(objPtrTpos)).toEqual([0.5, -0.25]);
    expect(() => memoryBankTemporal({ ...ctx, memories: [{ features: 0, posEnc: 0, tPos: 7 }] }, nm)).toThrow(/t_pos 7 outside 0..6/);

    // maskmem_tpos_enc row r filled with 100 r; the pointer projection keeps the sine half (identity on it), bias 0
    const projW = Array.from({ length: Cm }, (_, o) => Array.from({ length: C }, (_, i) => (i === o ? 1 : 0)));
    const params = new Map<string, tf.Tensor>([
      ['maskmem_tpos_enc', tf.tensor(Array.from({ length: nm * Cm }, (_, i) => 100 * Math.floor(i / Cm)), [nm, 1, 1, Cm])],
      ['obj_ptr_tpos_proj.weight', tf.tensor(projW)],
      ['obj_ptr_tpos_proj.bias', tf.zeros([Cm])],
    ]);
    const ops = new TfOps(params);
    const h = 2;
    const features = tf.tensor(Array.from({ length: 2 * h * h * Cm }, (_, i) => i), [1, 2, h * h, Cm]);
    const posEnc = tf.fill([1, 2, h * h, Cm], 0.5);
    const ptrs = tf.tensor(Array.from({ length: 2 * C }, (_, i) => 1000 + i), [1, 2, C]);
    const bank = {
      curr: tf.zeros([1, h, h, C]),
      currPos: tf.zeros([1, h, h, C]),
      spatial: { features, posEnc, tposOneHot: tf.tensor(tposOneHot, [2, nm]) },
      objPtrs: { ptrs, tpos: tf.tensor(objPtrTpos, [2, 1]) },
    };
    const t = memoryBankTokens(ops, config, bank);
    expect(t.numObjPtrTokens).toBe(4); // two pointers of C = 32 as 2 tokens of Cm = 16 each
    const mem = (await t.memory.array()) as number[][][];
    const pos = (await t.memoryPos.array()) as number[][][];
    expect(mem[0]).toHaveLength(2 * h * h + 4);
    // spatial tokens: the features in order, positions 0.5 + 100 * (the one-hot row)
    expect(mem[0][5][3]).toBe(5 * Cm + 3);
    expect(pos[0][0][0]).toBe(600.5);
    expect(pos[0][7][15]).toBe(0.5);
    // pointer tokens: pointer-major halves
    expect(mem[0][8].slice(0, 2)).toEqual([1000, 1001]);
    expect(mem[0][9][0]).toBe(1016);
    expect(mem[0][10][0]).toBe(1032);
    // pointer positions: sin(p / 10000^(2 floor(i/2) / 16)) for p = 0.5 (pointer 0) and -0.25 (pointer 1), both tokens alike
    const sine = (p: number) => Array.from({ length: Cm }, (_, i) => Math.sin(p / Math.fround(10000 ** Math.fround((2 * Math.floor(i / 2)) / Cm))));
    for (const [row, p] of [[8, 0.5], [9, 0.5], [10, -0.25], [11, -0.25]] as const) pos[0][row].forEach((x, i) => expect(x).toBeCloseTo(sine(p)[i], 6));
    tf.dispose([features, posEnc, ptrs, ...Object.values(bank.spatial), bank.curr, bank.currPos, bank.objPtrs.tpos, t.memory, t.memoryPos, ...params.values()]);
  });
});

