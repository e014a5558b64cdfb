import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { unzipSync, zipSync } from 'fflate';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inspectModel } from '../src/commands/inspect.js';
import { readStateDict, readStateDictShapes, writeStateDict } from '../src/io/checkpoint-file.js';
import { readNpz } from '../src/io/npz.js';
import { encodeSafetensors, parseSafetensors, readSafetensors, type StateDict } from '../src/io/safetensors.js';
import { parseTorchCheckpoint, readTorchStateDict } from '../src/io/torch-checkpoint.js';
import { MODEL_PRESETS, resolveModelConfig } from '../src/model/config.js';
import type { ParamSpec } from '../src/model/ops.js';
import { SAM2Base } from '../src/model/sam2.js';
import {
  checkStateDict,
  countByModule,
  fromTfParams,
  initParams,
  loadStateDict,
  paramCount,
  toTfParams,
} from '../src/model/weights.js';
import { GOLDEN_DIR } from './helpers/golden.js';

const FIXTURES = join(import.meta.dirname, 'fixtures');
const VARIANTS = join(FIXTURES, 'torch-variants');
const PT = join(GOLDEN_DIR, 'weights.pt');
const ST = join(GOLDEN_DIR, 'weights.safetensors');

function bytesOf(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** Same keys, shapes and bit patterns. */
function expectBitwiseEqual(a: StateDict, b: StateDict): void {
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  for (const [k, t] of a) {
    const u = b.get(k)!;
    expect(t.shape, k).toEqual(u.shape);
    expect(bytesOf(t.data).equals(bytesOf(u.data)), `${k} differs`).toBe(true);
  }
}

const goldenSpecs = (): ParamSpec[] => {
  const meta = JSON.parse(readFileSync(join(GOLDEN_DIR, 'meta.json'), 'utf8'));
  return new SAM2Base(resolveModelConfig(meta.model_config)).paramSpecs();
};

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = mkdtempSync(join(tmpdir(), 'medtune-weights-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('torch .pt checkpoints', () => {
  it('the golden weights.pt (written by torch.save) equals weights.safetensors bitwise, all 471 keys', () => {
    const pt = readTorchStateDict(PT);
    const st = readSafetensors(ST);
    expect(pt.size).toBe(471);
    expectBitwiseEqual(pt, st);
    // readStateDict picks the format by content and gives the same
    expectBitwiseEqual(readStateDict(PT), st);
  });

  it('decodes float16, bfloat16, float64, int64, bool, nn.Parameter, strided / offset / stride-0 / 0-d / empty views, in either byte order', () => {
    const expected = readNpz(join(VARIANTS, 'expected.npz'));
    for (const file of ['variants.pt', 'variants-be.pt']) {
      const sd = readTorchStateDict(join(VARIANTS, file));
      const names = [...sd.keys()];
      expect(names).toEqual(Object.keys(expected).filter((k) => !k.startsWith('finetune.')));
      for (const [name, t] of sd) {
        const ref = expected[name];
        // npyjs reports numpy's 0-d arrays as shape [1]; torch's 0-d tensor is shape []
        expect(t.shape, `${file} ${name}`).toEqual(name === 'f.scalar' ? [] : ref.shape);
        expect(bytesOf(t.data).equals(bytesOf(ref.data as Float32Array)), `${file} ${name}`).toBe(true);
      }
    }
  });

  it('unpickles the rest of a checkpoint as plain values: dicts, tuples, lists, numbers', () => {
    const obj = parseTorchCheckpoint(readFileSync(join(VARIANTS, 'finetune.pt')), 'finetune.pt') as Map<string, unknown>;
    expect([...obj.keys()]).toEqual(['model', 'optimizer', 'epoch', 'device']);
    expect(obj.get('epoch')).toBe(41);
    const groups = (obj.get('optimizer') as Map<string, unknown>).get('param_groups') as Array<Map<string, unknown>>;
    expect(groups[0].get('lr')).toBe(1e-4);
    expect(groups[0].get('betas')).toEqual([0.9, 0.999]);
    expect(groups[0].get('params')).toEqual([0, 1]);
  });

  it("reads MedSAM2 finetune checkpoints ({model, optimizer, epoch}) and strips the 'sam2_model.' prefix", () => {
    const expected = readNpz(join(VARIANTS, 'expected.npz'));
    const sd = readStateDict(join(VARIANTS, 'finetune.pt'));
    expect([...sd.keys()]).toEqual(['x.weight', 'x.bias']);
    for (const [k, t] of sd) expect(Array.from(t.data)).toEqual(Array.from(expected[`finetune.${k}`].data as Float32Array));
    expect([...readStateDictShapes(join(VARIANTS, 'finetune.pt'))]).toEqual([
      ['x.weight', { dtype: 'F32', shape: [2, 3] }],
      ['x.bias', { dtype: 'F32', shape: [2] }],
    ]);
  });

  it('a sam2_model.-prefixed golden state dict loads strictly into the golden model', () => {
    const st = readSafetensors(ST);
    const prefixed: StateDict = new Map([...st].map(([k, t]) => [`sam2_model.${k}`, t]));
    const file = join(tmp, 'prefixed.safetensors');
    writeStateDict(file, prefixed);
    const { params, report } = loadStateDict(goldenSpecs(), readStateDict(file), { source: file });
    expect(report).toEqual({ missing: [], unexpected: [], mismatched: [] });
    expect(params.size).toBe(471);
    expectBitwiseEqual(params, st);
  });

  describe('clear errors naming the file and the problem', () => {
    const expectError = (fn: () => unknown, ...patterns: RegExp[]) => {
      let message = '';
      try {
        fn();
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message, 'should have thrown').not.toBe('');
      for (const p of patterns) expect(message).toMatch(p);
    };

    it('truncated file', () => {
      const file = join(tmp, 'truncated.pt');
      const whole = readFileSync(PT);
      for (const cut of [100, whole.length >> 1, whole.length - 10]) {
        writeFileSync(file, whole.subarray(0, cut));
        expectError(() => readStateDict(file), /truncated\.pt/, /truncated or damaged/);
      }
    });

    it('non-zip file, and the legacy (pre-1.6) pickle format', () => {
      const file = join(tmp, 'text.pt');
      writeFileSync(file, 'this is not a checkpoint at all');
      expectError(() => readTorchStateDict(file), /text\.pt/, /not a zip archive/);
      const legacy = join(tmp, 'legacy.pth');
      writeFileSync(legacy, Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]));
      expectError(() => readStateDict(legacy), /legacy\.pth/, /legacy torch\.save format/);
    });

    it('zip without data.pkl', () => {
      const file = join(tmp, 'nopkl.pt');
      writeFileSync(file, zipSync({ 'x/byteorder': new TextEncoder().encode('little'), 'x/data/0': new Uint8Array(8) }, { level: 0 }));
      expectError(() => readStateDict(file), /nopkl\.pt/, /no data\.pkl/, /x\/byteorder/);
    });

    it('pickle without tensors', () => {
      const file = join(tmp, 'notensors.pt');
      // pickle.dumps({'epoch': 3}, protocol=2)
      const pkl = Buffer.from('80027d7100580500000065706f636871014b03732e', 'hex');
      writeFileSync(file, zipSync({ 'notensors/data.pkl': pkl }, { level: 0 }));
      expectError(() => readStateDict(file), /notensors\.pt/, /no tensors/, /epoch/);
    });

    it('missing storage, malformed pickle', () => {
      const entries = unzipSync(readFileSync(join(VARIANTS, 'finetune.pt')));
      delete entries['finetune/data/1'];
      const file = join(tmp, 'nostorage.pt');
      writeFileSync(file, zipSync(entries, { level: 0 }));
      expectError(() => readStateDict(file), /nostorage\.pt/, /'sam2_model\.x\.bias'/, /storage data\/1 is missing/);
      const cut = join(tmp, 'cutpickle.pt');
      writeFileSync(cut, zipSync({ 'a/data.pkl': Buffer.from('80027d710058050000006570', 'hex') }, { level: 0 }));
      expectError(() => readStateDict(cut), /cutpickle\.pt/, /a\/data\.pkl cannot be unpickled/);
    });

    it('missing file or run directory without model.safetensors', () => {
      expectError(() => readStateDict(join(tmp, 'absent.pt')), /absent\.pt/, /no such checkpoint/);
      expectError(() => readStateDict(tmp), /holds no model\.safetensors/);
    });

    it('damaged safetensors', () => {
      const good = readFileSync(ST);
      const file = join(tmp, 'cut.safetensors');
      writeFileSync(file, good.subarray(0, good.length - 100));
      expectError(() => readStateDict(file), /cut\.safetensors/, /truncated/);
    });
  });
});

describe('safetensors and run checkpoints', () => {
  it('round-trips bitwise through writeStateDict / readStateDict (file and run directory), atomically', () => {
    const st = readSafetensors(ST);
    // include values a lossy path would change: NaN payload, -0, subnormal, infinity
    const odd = new Float32Array([NaN, -0, 1e-45, Infinity, -Infinity, 3.4e38]);
    new Uint32Array(odd.buffer)[0] = 0x7fc00123;
    st.set('zz.odd', { data: odd, shape: [2, 3] });
    const file = writeStateDict(join(tmp, 'rt.safetensors'), st);
    expectBitwiseEqual(readStateDict(file), st);
    const dir = join(tmp, 'run', 'step-000010');
    const written = writeStateDict(`${dir}/`, st, { step: '10' });
    expect(written).toBe(join(dir, 'model.safetensors'));
    expectBitwiseEqual(readStateDict(dir), st);
    expect(readdirSync(dir)).toEqual(['model.safetensors']); // no temp file left behind
    expect(readStateDictShapes(dir).get('zz.odd')).toEqual({ dtype: 'F32', shape: [2, 3] });
  });

  it('parseSafetensors rejects inconsistent headers', () => {
    const bytes = encodeSafetensors(new Map([['a', { data: new Float32Array(4), shape: [4] }]]));
    const json = new TextDecoder().decode(bytes.subarray(8, 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true))));
    const bad = json.replace('[4]', '[5]');
    const forged = new Uint8Array(bytes);
    forged.set(new TextEncoder().encode(bad), 8);
    expect(() => parseSafetensors(forged, 'forged.safetensors')).toThrow(/forged\.safetensors.*'a'.*inconsistent with its shape \[5\]/);
    expect(() => encodeSafetensors(new Map([['a', { data: new Float32Array(3), shape: [4] }]]))).toThrow(/'a' has 3 values but shape \[4\]/);
  });
});

describe('parameter specs of the official tiny models', () => {
  const shapes = JSON.parse(readFileSync(join(FIXTURES, 'sam2_tiny_state_dict_shapes.json'), 'utf8'));
  const cases = [
    ['sam2.1-tiny', 'sam2.1/sam2.1_hiera_t', 471, 38_962_754],
    ['sam2-tiny', 'sam2/sam2_hiera_t', 468, 38_946_242],
  ] as const;
  for (const [preset, ref, keys, params] of cases) {
    it(`${preset}: ${keys} keys with the official shapes, ${params.toLocaleString('en-US')} parameters`, async () => {
      const specs = new SAM2Base(MODEL_PRESETS[preset]).paramSpecs();
      const official = new Map(Object.entries(shapes[ref].keys as Record<string, number[]>).map(([k, s]) => [k, { shape: s }]));
      expect(checkStateDict(specs, official)).toEqual({ missing: [], unexpected: [], mismatched: [] });
      expect(specs.length).toBe(keys);
      expect(paramCount(specs)).toBe(params);
      expect(paramCount(specs)).toBe(shapes[ref].param_count);
      expect(countByModule(specs)).toEqual(shapes[ref].by_module);
      // inspect reports the same
      const r = await inspectModel(preset);
      expect(r.param_count).toBe(params);
      expect(r.by_module).toEqual(shapes[ref].by_module);
      expect(r.keys).toEqual(shapes[ref].keys);
    });
  }

  it('inspect on a checkpoint lists its own tensors; on a fixture meta.json builds the model', async () => {
    const fromPt = await inspectModel(PT);
    const fromSt = await inspectModel(ST);
    const fromMeta = await inspectModel(join(GOLDEN_DIR, 'meta.json'));
    expect(fromPt.param_count).toBe(1_380_266);
    expect(fromSt).toEqual(fromPt);
    expect(fromMeta.param_count).toBe(1_380_266);
    expect(Object.keys(fromMeta.keys).sort()).toEqual(Object.keys(fromPt.keys).sort());
    await expect(inspectModel('sam9-huge')).rejects.toThrow(/unknown model 'sam9-huge'.*sam2\.1-tiny/);
  });
});

describe('loading by key name', () => {
  const specs: ParamSpec[] = [
    { name: 'a.weight', shape: [2, 3], init: { kind: 'uniform', bound: 0.5 } },
    { name: 'a.bias', shape: [2], init: { kind: 'zeros' } },
    { name: 'b.scale', shape: [3], init: { kind: 'ones' } },
    { name: 'c', shape: [1, 4], init: { kind: 'truncNormal', std: 0.02 } },
  ];
  const ckpt = (): StateDict =>
    new Map([
      ['a.weight', { data: new Float32Array(6).fill(7), shape: [2, 3] }],
      ['a.bias', { data: new Float32Array(3), shape: [3] }], // wrong shape
      ['c', { data: new Float32Array(4).fill(2), shape: [1, 4] }],
      ['extra.thing', { data: new Float32Array(1), shape: [1] }],
    ]);

  it('strict load throws naming the missing, unexpected and mismatched keys and the source', () => {
    expect(() => loadStateDict(specs, ckpt(), { source: 'ckpt.pt' })).toThrowError(
      /ckpt\.pt[\s\S]*missing keys \(1\):\s+b\.scale[\s\S]*unexpected keys \(1\):\s+extra\.thing[\s\S]*shape mismatches \(1\):\s+a\.bias: checkpoint \[3\], model \[2\]/,
    );
    expect(() => loadStateDict(specs, ckpt())).toThrow(/state dict: does not match/);
  });

  it('the golden weights load strictly; one key short fails naming it', () => {
    const specs = goldenSpecs();
    const sd = readStateDict(PT);
    expect(loadStateDict(specs, sd, { source: PT }).params.size).toBe(471);
    sd.delete('sam_mask_decoder.iou_prediction_head.layers.2.bias');
    expect(() => loadStateDict(specs, sd, { source: PT })).toThrow(/weights\.pt[\s\S]*missing keys \(1\):\s+sam_mask_decoder\.iou_prediction_head\.layers\.2\.bias/);
  });

  it('non-strict load reports what was skipped and initialises it from the specs', () => {
    const { params, report } = loadStateDict(specs, ckpt(), { strict: false, seed: 3 });
    expect(report).toEqual({
      missing: ['b.scale'],
      unexpected: ['extra.thing'],
      mismatched: [{ name: 'a.bias', expected: [2], got: [3] }],
    });
    expect([...params.keys()]).toEqual(specs.map((s) => s.name));
    expect(Array.from(params.get('a.weight')!.data)).toEqual([7, 7, 7, 7, 7, 7]);
    expect(Array.from(params.get('a.bias')!.data)).toEqual([0, 0]);
    expect(Array.from(params.get('b.scale')!.data)).toEqual([1, 1, 1]);
    expect(Array.from(params.get('c')!.data)).toEqual([2, 2, 2, 2]);
  });
});

describe('initParams', () => {
  const specs: ParamSpec[] = [
    { name: 'u', shape: [64, 32], init: { kind: 'uniform', bound: 0.25 } },
    { name: 'n', shape: [4000], init: { kind: 'normal', std: 0.5 } },
    { name: 't', shape: [4000], init: { kind: 'truncNormal', std: 2 } },
    { name: 'z', shape: [3], init: { kind: 'zeros' } },
    { name: 'o', shape: [3], init: { kind: 'ones' } },
    { name: 'k', shape: [2, 2], init: { kind: 'constant', value: 1e-6 } },
  ];

  it('is deterministic per seed and differs across seeds', () => {
    const a = initParams(specs, 1);
    expectBitwiseEqual(a, initParams(specs, 1));
    const b = initParams(specs, 2);
    expect(bytesOf(a.get('u')!.data).equals(bytesOf(b.get('u')!.data))).toBe(false);
    // each parameter has its own stream: order and neighbours do not matter
    const alone = initParams([specs[1]], 1);
    expect(bytesOf(alone.get('n')!.data).equals(bytesOf(a.get('n')!.data))).toBe(true);
  });

  it('honours the init kinds', () => {
    const p = initParams(specs, 5);
    const stats = (x: Float32Array) => {
      const mean = x.reduce((s, v) => s + v, 0) / x.length;
      const std = Math.sqrt(x.reduce((s, v) => s + (v - mean) ** 2, 0) / x.length);
      return { mean, std, min: Math.min(...x), max: Math.max(...x) };
    };
    const u = stats(p.get('u')!.data);
    expect(u.min).toBeGreaterThanOrEqual(-0.25);
    expect(u.max).toBeLessThanOrEqual(0.25);
    expect(u.std).toBeCloseTo(0.25 / Math.sqrt(3), 2);
    const n = stats(p.get('n')!.data);
    expect(Math.abs(n.mean)).toBeLessThan(0.05);
    expect(n.std).toBeGreaterThan(0.47);
    expect(n.std).toBeLessThan(0.53);
    // PyTorch's trunc_normal_ cuts at [-2, 2] absolute
    const t = stats(p.get('t')!.data);
    expect(t.min).toBeGreaterThanOrEqual(-2);
    expect(t.max).toBeLessThanOrEqual(2);
    expect(Array.from(p.get('z')!.data)).toEqual([0, 0, 0]);
    expect(Array.from(p.get('o')!.data)).toEqual([1, 1, 1]);
    expect(Array.from(p.get('k')!.data)).toEqual(Array(4).fill(Math.fround(1e-6)));
    expect(p.get('u')!.shape).toEqual([64, 32]);
  });

  it('initialises the full sam2.1-tiny model with every official shape', () => {
    const specs = new SAM2Base(MODEL_PRESETS['sam2.1-tiny']).paramSpecs();
    const p = initParams(specs, 0);
    expect(p.size).toBe(471);
    expect(paramCount([...p.values()].map((t) => ({ shape: t.shape })))).toBe(38_962_754);
    expect(Array.from(p.get('image_encoder.trunk.blocks.0.norm1.weight')!.data).every((v) => v === 1)).toBe(true);
  });
});

describe('tfjs parameters', () => {
  it('toTfParams / fromTfParams round-trip bitwise and honour trainable', async () => {
    const sd = readStateDict(PT);
    const vars = toTfParams(sd, { trainable: (k) => k.startsWith('image_encoder.') });
    expect(vars.size).toBe(471);
    expect(vars.get('image_encoder.trunk.pos_embed')!.trainable).toBe(true);
    expect(vars.get('sam_mask_decoder.iou_token.weight')!.trainable).toBe(false);
    expectBitwiseEqual(await fromTfParams(vars), sd);
    // two models can coexist (variables are not name-registered)
    const again = toTfParams(sd);
    expect(again.size).toBe(471);
    for (const v of [...vars.values(), ...again.values()]) v.dispose();
  });
});
