/**
 * LoRA and bottleneck adapters (src/model/adapters.ts, src/train/adapters.ts): target matching,
 * the merged forward against the unmerged one, zero-initialised updates leaving the model as it
 * was, config errors, an adapter run end to end (only adapters change, small adapter file,
 * bitwise resume with dropout) and its export through onnxruntime.
 */
import * as tf from '@tensorflow/tfjs-core';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runExport } from '../src/commands/export.js';
import type { StateDict } from '../src/io/safetensors.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { adapterParamSpecs, Adapters, isAdapterParam, linearLayers, matchTargets, mergeLora, type AdapterTable } from '../src/model/adapters.js';
import { resolveModelChoice } from '../src/model/config.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { initParams } from '../src/model/weights.js';
import { buildGraph, exportGraphs } from '../src/onnx/export.js';
import { GRAPH_FILES } from '../src/onnx/graphs.js';
import { relativeError, runParity } from '../src/onnx/parity.js';
import { ADAPTER_FILE, ADAPTER_META_FILE, plannedAdapters, readAdaptedStateDict } from '../src/train/adapters.js';
import { findCheckpoint } from '../src/train/checkpoint.js';
import { ConfigError, loadConfig, parseConfig } from '../src/train/config.js';
import { train } from '../src/train/train.js';
import { SMALL_MODEL_CONFIG, tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

const modelConfig = resolveModelChoice({ preset: 'sam2.1-tiny', config: SMALL_MODEL_CONFIG, image_size: 64 });
const specs = new SAM2Base(modelConfig).paramSpecs();
const base = initParams(specs, 1);
const TARGETS = ['image_encoder.trunk.blocks.*.attn.qkv', '*.attn.proj', '*.mlp.layers.*', 'sam_mask_decoder.transformer.*'];

function table(kind: 'lora' | 'bottleneck', targets: string[]): AdapterTable {
  const settings = { kind, rank: 4, alpha: 8, dropout: 0, targets };
  return { settings, layers: matchTargets(linearLayers(specs).keys(), targets).layers };
}

/** Adapter parameters as initialised for training, or all drawn at random (a trained adapter). */
function adapterParams(t: AdapterTable, random: boolean): StateDict {
  const s = adapterParamSpecs(t, specs);
  return initParams(random ? s.map((p) => ({ ...p, init: { kind: 'uniform' as const, bound: 0.3 } })) : s, 2);
}

/** Masks and IoU of one box prompt on a fixed image; adapters unmerged when `t` is given. */
function forward(params: StateDict, t?: AdapterTable): Float32Array[] {
  const tfParams = new Map([...params].map(([k, v]) => [k, tf.tensor(v.data, v.shape)]));
  const ops = new TfOps(tfParams, { adapters: t && new Adapters<tf.Tensor>(t.settings, new Set(t.layers)) });
  const out = tf.tidy(() => {
    const image = tf.randomUniform([1, 64, 64, 3], -1, 1, 'float32', 3);
    const r = new SAM2Base(modelConfig).predictFromBoxes(ops, image, tf.tensor2d([[8, 10, 44, 50]]));
    return [r.masks, r.iouPred];
  });
  const values = out.map((x) => x.dataSync() as Float32Array);
  tf.dispose([...out, ...tfParams.values()]);
  return values;
}

const merge = (a: StateDict, b: StateDict): StateDict => new Map([...a, ...b]);

describe('adapter targets', () => {
  it('patterns select linear layers by state-dict prefix; * spans dots', () => {
    const layers = linearLayers(specs);
    const qkv = matchTargets(layers.keys(), ['image_encoder.trunk.blocks.*.attn.qkv']).layers;
    expect(qkv).toHaveLength(12);
    expect(qkv[0]).toBe('image_encoder.trunk.blocks.0.attn.qkv');
    const proj = matchTargets(layers.keys(), ['*.attn.proj']).layers;
    expect(proj).toHaveLength(12); // Hiera's only: the decoder's attention layers are out_proj
    const decoder = matchTargets(layers.keys(), ['sam_mask_decoder.transformer.*']).layers;
    expect(decoder).toContain('sam_mask_decoder.transformer.layers.0.self_attn.q_proj');
    expect(decoder).toContain('sam_mask_decoder.transformer.final_attn_token_to_image.out_proj');
    expect(decoder.every((l) => l.startsWith('sam_mask_decoder.transformer.'))).toBe(true);
    // embeddings (2-D weights too) are not linear layers
    expect(layers.has('sam_mask_decoder.iou_token')).toBe(false);
    expect(matchTargets(layers.keys(), ['*.attn.qkv', 'nothing.here']).unmatched).toEqual(['nothing.here']);
  });

  it('configs/sam2.1-tiny-1024-lora.yaml: rank-8 LoRA on Hiera qkv/proj + decoder attention, under 4 MB', () => {
    const config = loadConfig(join(import.meta.dirname, '..', 'configs', 'sam2.1-tiny-1024-lora.yaml'));
    expect([config.backend, config.model.image_size, config.train.batch_size, config.model.trainable]).toEqual(['auto', 1024, 1, []]);
    const full = new SAM2Base(resolveModelChoice(config.model)).paramSpecs();
    const planned = plannedAdapters(config.adapters!, full);
    const values = planned.specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
    console.log(`rank-8 LoRA on ${planned.layers.length} layers of sam2.1-tiny: ${values.toLocaleString('en')} values, ${(values * 4 / 1e6).toFixed(2)} MB`);
    expect(planned.layers).toHaveLength(2 * 12 + 28); // Hiera qkv + proj; 2 decoder layers x 3 attentions x 4 projections + the final attention's 4
    expect(values * 4).toBeLessThan(4e6);
  });
});

describe('adapter forward', () => {
  const plain = forward(base);

  it('LoRA merged into the weights equals the unmerged forward within 1e-5', () => {
    const t = table('lora', TARGETS);
    const trained = merge(base, adapterParams(t, true));
    const unmerged = forward(trained, t);
    const merged = forward(mergeLora(trained, t.settings));
    for (let i = 0; i < plain.length; i++) {
      expect(relativeError(unmerged[i], plain[i]).relError).toBeGreaterThan(1e-3); // the adapters do act
      const e = relativeError(merged[i], unmerged[i]);
      console.log(`output ${i}: merged vs unmerged rel ${e.relError.toExponential(2)}`);
      expect(e.relError).toBeLessThanOrEqual(1e-5);
    }
    expect([...mergeLora(trained, t.settings).keys()]).toEqual([...base.keys()]);
  });

  it('zero-initialised LoRA B and bottleneck up leave the model exactly as it was', () => {
    for (const t of [table('lora', TARGETS), table('bottleneck', ['*.attn.proj', '*.mlp.layers.1'])]) {
      const out = forward(merge(base, adapterParams(t, false)), t);
      out.forEach((o, i) => expect(o).toEqual(plain[i]));
      expect(relativeError(forward(merge(base, adapterParams(t, true)), t)[0], plain[0]).relError).toBeGreaterThan(1e-3);
    }
  });
});

describe('bottleneck export', () => {
  it('adds the adapters as nodes of the same graphs, matching the TypeScript model in onnxruntime', async () => {
    const t = table('bottleneck', ['*.attn.proj', 'sam_mask_decoder.transformer.layers.*.mlp.layers.1']);
    const params = merge(base, adapterParams(t, true));
    const out = join(tmpRunDir('bottleneck-export'), 'onnx');
    exportGraphs(modelConfig, params, out, { adapters: t });
    const report = await runParity(modelConfig, params, out, { adapters: t });
    expect(report.ok).toBe(true);
    const { onnx } = await import('../src/onnx/graph-builder.js');
    const nodes = (key: 'imageEncoder' | 'maskDecoder') => onnx.ModelProto.decode(readFileSync(join(out, GRAPH_FILES[key]))).graph!.node!.length;
    // each adapter: two products (MatMul + Add each), GELU, the residual Add
    expect(nodes('imageEncoder')).toBeGreaterThan(buildGraph(modelConfig, base, 'imageEncoder').nodes + 12 * 3);
    expect(nodes('maskDecoder')).toBeGreaterThan(buildGraph(modelConfig, base, 'maskDecoder').nodes + 2 * 3);
  });
});

describe('frozen base weights', () => {
  const t = table('lora', TARGETS);
  const weights = merge(base, adapterParams(t, true));
  /** gradients of a fixed loss by state-dict key, for the trainable variables */
  const grads = (baseTrains: boolean, checkpointActivations = false) => {
    const vars = new Map([...weights].map(([k, v]) => [k, tf.variable(tf.tensor(v.data, v.shape), baseTrains || isAdapterParam(k))]));
    const ops = new TfOps(vars, { adapters: new Adapters<tf.Tensor>(t.settings, new Set(t.layers)), checkpointActivations });
    const { value, grads: g } = tf.variableGrads(() => {
      const image = tf.randomUniform([1, 64, 64, 3], -1, 1, 'float32', 3);
      const r = new SAM2Base(modelConfig).predictFromBoxes(ops, image, tf.tensor2d([[8, 10, 44, 50]]));
      return tf.sum(tf.mul(r.masks, tf.randomNormal(r.masks.shape, 0, 1, 'float32', 4))) as tf.Scalar;
    }, [...vars.values()].filter((v) => v.trainable));
    const byKey = new Map([...vars].filter(([, v]) => g[v.name]).map(([k, v]) => [k, g[v.name].dataSync() as Float32Array]));
    tf.dispose([value, ...Object.values(g), ...vars.values()]);
    return byKey;
  };

  it('with checkpointed activations, the adapters inside recomputed blocks get the same gradients', () => {
    const plain = grads(false);
    const recomputed = grads(false, true);
    expect([...recomputed.keys()].sort()).toEqual([...plain.keys()].sort());
    expect(plain.has('image_encoder.trunk.blocks.0.attn.qkv.lora_A.weight')).toBe(true);
    let worst = 0;
    for (const [k, g] of recomputed) worst = Math.max(worst, relativeError(g, plain.get(k)!).relError);
    console.log(`adapter gradients, checkpointed vs plain: worst rel ${worst.toExponential(2)}`);
    expect(worst).toBeLessThanOrEqual(1e-6);
  });

  it('skip the base weight gradients; the adapters\' gradients equal those with a trainable base', async () => {
    /** the gradients, and the matrix products the step ran */
    const profiled = async (baseTrains: boolean) => {
      let out = new Map<string, Float32Array>();
      const info = await tf.profile(() => {
        out = grads(baseTrains);
        return [];
      });
      return { grads: out, products: info.kernels.filter((k) => /MatMul/.test(k.name)).length };
    };
    const { grads: frozen, products: frozenProducts } = await profiled(false);
    const { grads: full, products: fullProducts } = await profiled(true);
    console.log(`matrix products per step: ${frozenProducts} with the base frozen, ${fullProducts} with it trainable`);
    expect(frozenProducts).toBeLessThan(fullProducts);
    expect([...frozen.keys()].every(isAdapterParam)).toBe(true);
    expect(frozen.size).toBe(adapterParamSpecs(t, specs).length);
    let worst = 0;
    for (const [k, g] of frozen) worst = Math.max(worst, relativeError(g, full.get(k)!).relError);
    console.log(`adapter gradients, frozen vs trainable base: worst rel ${worst.toExponential(2)}`);
    expect(worst).toBeLessThanOrEqual(1e-6);
  });
});

describe('adapters config', () => {
  const raw = (adapters: Record<string, unknown>, model: Record<string, unknown> = {}) => ({
    model: { image_size: 64, config: SMALL_MODEL_CONFIG, ...model },
    data: { train: 'x' },
    train: { max_steps: 1, lr: 1e-4 },
    adapters,
  });

  it('defaults: alpha = rank, dropout 0, nothing else trains', () => {
    const c = parseConfig(raw({ kind: 'lora', targets: ['*.attn.qkv'] }));
    expect(c.adapters).toEqual({ kind: 'lora', rank: 8, alpha: null, dropout: 0, targets: ['*.attn.qkv'] });
    expect(c.model.trainable).toEqual([]);
    expect(parseConfig(raw({ kind: 'lora', targets: ['*.attn.qkv'] }, { trainable: ['sam_mask_decoder'] })).model.trainable).toEqual(['sam_mask_decoder']);
  });

  it('names the pattern that selects nothing, a layer off the training path, a bottleneck on a fused projection', () => {
    expect(() => parseConfig(raw({ kind: 'lora', targets: ['*.attn.qkv', '*.attn.qvk'] }))).toThrow(/adapters\.targets\[1\]: '\*\.attn\.qvk' matches no linear layer/);
    expect(() => parseConfig(raw({ kind: 'lora', targets: ['memory_attention.*'] }))).toThrow(/adapters\.targets\[0\]: 'memory_attention\.\*' matches memory_attention\..* outside the 2D training path/);
    expect(() => parseConfig(raw({ kind: 'bottleneck', targets: ['*.attn.*'] }))).toThrow(/fused projection image_encoder\.trunk\.blocks\.0\.attn\.qkv/);
    expect(() => parseConfig(raw({ kind: 'lora', rank: 0, targets: ['*.attn.qkv'] }))).toThrow(ConfigError);
    expect(() => parseConfig(raw({ kind: 'lora', targets: ['*.attn.qkv'], bias: true }))).toThrow(/adapters\.bias: unknown key/);
    expect(() => parseConfig({ ...raw({ kind: 'lora', targets: ['x'] }), adapters: null, model: { trainable: [] } })).toThrow(/model\.trainable: empty/);
  });
});

describe('an adapter run', () => {
  const data = tinyData();
  const adapters = { kind: 'lora', rank: 4, alpha: 8, dropout: 0.1, targets: ['*.attn.qkv', '*.attn.proj', 'sam_mask_decoder.transformer.*'] };
  const config = () => {
    const tiny = tinyConfig(data, { max_steps: 2, batch_size: 1, val_every: 0, val_at_start: false, save_every: 1 });
    const { trainable: _, ...model } = tiny.model;
    return parseConfig({ ...tiny, model, adapters });
  };
  let wholeDir = '';

  it('trains only the adapters, saves them apart and resumes bit for bit', async () => {
    const tensorCounts: number[] = [];
    const whole = await train({ config: config(), runDir: tmpRunDir('lora-whole'), quiet: true, handleSignals: false, onStep: (s) => tensorCounts.push(s.numTensors) });
    wholeDir = whole.runDir;
    expect(whole.step).toBe(2);
    expect(new Set(tensorCounts).size).toBe(1); // no tensor leaks
    const runDir = tmpRunDir('lora-split');
    const first = await train({ config: config(), runDir, quiet: true, handleSignals: false, stopAfterStep: 1 });
    expect(first.step).toBe(1);
    const second = await train({ config: config(), runDir, resume: 'auto', quiet: true, handleSignals: false });
    expect([...first.losses, ...second.losses]).toEqual(whole.losses);
    for (const f of [ADAPTER_FILE, 'optimizer.safetensors']) {
      const a = readFileSync(join(whole.runDir, 'checkpoints', 'latest', f));
      expect(Buffer.compare(a, readFileSync(join(runDir, 'checkpoints', 'latest', f))), f).toBe(0);
    }

    const latest = findCheckpoint(runDir)!;
    expect(readdirSync(latest).sort()).toEqual([ADAPTER_FILE, ADAPTER_META_FILE, 'config.yaml', 'optimizer.safetensors', 'state.json'].sort());
    const saved = readSafetensors(join(latest, ADAPTER_FILE));
    expect([...saved.keys()].every(isAdapterParam)).toBe(true);
    const values = [...saved.values()].reduce((n, t) => n + t.data.length, 0);
    const bytes = statSync(join(latest, ADAPTER_FILE)).size;
    console.log(`adapter file: ${saved.size} tensors, ${values} values, ${bytes} bytes`);
    expect(bytes).toBeGreaterThanOrEqual(values * 4);
    expect(bytes).toBeLessThan(values * 4 + 200 * saved.size);
    const meta = JSON.parse(readFileSync(join(latest, ADAPTER_META_FILE), 'utf8'));
    expect(meta.base).toEqual({ seed: 7 });

    // the base weights are the seeded init, untouched; every adapter moved (B from zero)
    const { params } = readAdaptedStateDict(latest);
    const start = initParams(specs, 7);
    for (const [k, t] of start) expect(params.get(k)!.data, k).toEqual(t.data);
    for (const [k, t] of saved) {
      const init = initParams(plannedAdapters(config().adapters!, specs).specs.filter((s) => s.name === k), 7).get(k)!;
      expect(t.data, k).not.toEqual(init.data);
    }
  }, 900_000);

  it('exports with LoRA merged: the plain graphs, matching the unmerged TypeScript model in onnxruntime', async () => {
    expect(wholeDir).not.toBe('');
    const out = join(tmpRunDir('lora-export'), 'onnx');
    await runExport({ checkpoint: findCheckpoint(wholeDir)!, out, parity: true, tolerance: 1e-4, backend: 'cpu' });
    const report = JSON.parse(readFileSync(join(out, 'parity.json'), 'utf8'));
    expect(report.ok).toBe(true);
    expect(report.entries.length).toBeGreaterThan(0);
    const plainNodes = buildGraph(modelConfig, initParams(specs, 7), 'imageEncoder').nodes;
    const { onnx } = await import('../src/onnx/graph-builder.js');
    const exported = onnx.ModelProto.decode(readFileSync(join(out, GRAPH_FILES.imageEncoder)));
    expect(exported.graph!.node!.length).toBe(plainNodes);
  });
});
