/**
 * The WASM backend (with medtune's kernel replacements: XNNPACK batched products, the im2col
 * weight gradient, shared-data Identity) against the CPU backend on a whole training forward:
 * `SAM2Base.predictFromBoxes` of the reduced golden model at 64 px, batch 2 — outputs and the
 * gradients of every trained parameter (image encoder + mask decoder) of a Dice/BCE-like loss.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { resolveModelConfig } from '../src/model/config.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { initParams, type StateDict } from '../src/model/weights.js';
import { maxRelError } from '../src/model/reference-compare.js';

const TOL = 1e-4;
const SIZE = 64;
const BATCH = 2;

const meta = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'golden-small256', 'meta.json'), 'utf8'));
const config = resolveModelConfig({ ...meta.model_config, image_size: SIZE });
const model = new SAM2Base(config);
const weights: StateDict = initParams(model.paramSpecs(), 3);
// zero-initialised position embeddings would hide their gradients' paths: give them values
for (const [name, t] of weights) if (name.includes('pos_embed')) t.data.forEach((_, i, a) => (a[i] = Math.sin(i * 0.1) * 0.02));
const isTrained = (name: string) => name.startsWith('image_encoder.') || name.startsWith('sam_mask_decoder.');

function rand(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 - 1;
  });
}

interface Result {
  masks: Float32Array;
  iou: Float32Array;
  loss: number;
  grads: Map<string, Float32Array>;
}

/** One training forward + backward on the active backend. */
function run(): Result {
  const params = new Map<string, tf.Tensor>();
  const vars: tf.Variable[] = [];
  const nameOf = new Map<string, string>();
  for (const [name, t] of weights) {
    const value = tf.tensor(t.data, t.shape);
    if (isTrained(name)) {
      const v = tf.variable(value, true);
      value.dispose();
      params.set(name, v);
      vars.push(v);
      nameOf.set(v.name, name);
    } else {
      params.set(name, value);
    }
  }
  const ops = new TfOps(params);
  const image = tf.tensor(rand(BATCH * SIZE * SIZE * 3, 5), [BATCH, SIZE, SIZE, 3]);
  const boxes = tf.tensor2d([
    [8, 10, 40, 50],
    [20, 4, 60, 30],
  ]);
  const m = SIZE / 4;
  const target = tf.tensor(Array.from({ length: BATCH * m * m }, (_, i) => (i % 7 < 3 ? 1 : 0)), [BATCH, 1, m, m]);
  let masks = new Float32Array();
  let iou = new Float32Array();
  const { value, grads } = tf.variableGrads(() => {
    const out = model.predictFromBoxes(ops, image, boxes);
    masks = Float32Array.from(out.masks.dataSync());
    iou = Float32Array.from(out.iouPred.dataSync());
    const p = tf.sigmoid(out.masks);
    const dice = tf.sub(1, tf.div(tf.add(tf.mul(tf.sum(tf.mul(p, target)), 2), 1), tf.add(tf.sum(tf.add(tf.square(p), target)), 1)));
    const bce = tf.mean(tf.sub(tf.add(tf.relu(out.masks), tf.log1p(tf.exp(tf.neg(tf.abs(out.masks))))), tf.mul(out.masks, target)));
    return tf.addN([dice, bce, tf.mean(out.iouPred)]) as tf.Scalar;
  }, vars);
  const result: Result = { masks, iou, loss: value.dataSync()[0], grads: new Map() };
  for (const [vname, g] of Object.entries(grads)) result.grads.set(nameOf.get(vname)!, Float32Array.from(g.dataSync()));
  tf.dispose([value, ...Object.values(grads), image, boxes, target, ...params.values()]);
  return result;
}

describe('wasm backend vs cpu backend', () => {
  afterAll(async () => {
    await selectBackend('cpu', { quiet: true });
  });

  it('predictFromBoxes outputs and every trained gradient match within 1e-4 relative', async () => {
    await selectBackend('cpu', { quiet: true });
    const t0 = performance.now();
    const cpu = run();
    const t1 = performance.now();
    await selectBackend('wasm', { quiet: true });
    run(); // warm-up (kernel setup)
    const t2 = performance.now();
    const wasm = run();
    const t3 = performance.now();
    console.log(`forward + backward at ${SIZE} px, batch ${BATCH}: cpu ${(t1 - t0).toFixed(0)} ms, wasm ${(t3 - t2).toFixed(0)} ms`);

    expect(maxRelError(wasm.masks, cpu.masks, 1e-12)).toBeLessThan(TOL);
    expect(maxRelError(wasm.iou, cpu.iou, 1e-12)).toBeLessThan(TOL);
    expect(Math.abs(wasm.loss - cpu.loss) / Math.abs(cpu.loss)).toBeLessThan(TOL);
    expect([...wasm.grads.keys()].sort()).toEqual([...cpu.grads.keys()].sort());
    // (a few trained parameters, e.g. the multimask tokens and the pruned coarsest neck level, get no gradient)
    expect(cpu.grads.size).toBeGreaterThan(0.9 * [...weights.keys()].filter(isTrained).length);
    const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    // relative to the tensor's largest gradient, floored at 1e-3 of the model's largest: a few
    // gradients are zero up to rounding (attention key biases: softmax ignores a per-row shift)
    const floor = 1e-3 * Math.max(...[...cpu.grads.values()].map(maxAbs));
    const errors = [...cpu.grads].map(([name, g]) => [name, maxRelError(wasm.grads.get(name)!, g, Math.max(floor, 1e-12)), maxAbs(g)] as const).sort((a, b) => b[1] - a[1]);
    console.log(`${cpu.grads.size} gradients; worst relative errors:\n${errors.slice(0, 3).map(([n, e, m]) => `  ${e.toExponential(2)} ${m.toExponential(2)} ${n}`).join('\n')}`);
    for (const [name, err] of errors) expect(err, name).toBeLessThan(TOL);
  });
});

describe('wasm heap guard', () => {
  afterAll(async () => {
    await selectBackend('cpu', { quiet: true });
  });

  it('refuses an allocation past the 4 GiB heap with a RuntimeError naming the heap, and keeps working', async () => {
    await selectBackend('wasm', { quiet: true });
    const before = tf.memory().numTensors;
    // a kernel output of 4.4 GB: tfjs-backend-wasm would call malloc and write wherever it answered
    const small = tf.zeros([1000]);
    const tooBig = () => tf.tile(small, [1_100_000]);
    expect(tooBig).toThrow(WebAssembly.RuntimeError);
    expect(tooBig).toThrow(/wasm heap exhausted: 4196 MiB asked with [\d.]+ GiB of tensors and [\d.]+ GiB of packed weights live, the heap at [\d.]+ of its 4.00 GiB/);
    // under tf.profile (the dry run measures so) the same error, not the profiler's TypeError on
    // the outputs a failed kernel never made
    await expect(tf.profile(tooBig)).rejects.toThrow(/wasm heap exhausted: 4196 MiB asked/);
    // views share their block: 1 GiB seen through five reshapes is 5 GiB to tf.memory(), 1 to the heap
    const block = tf.zeros([2 ** 28]);
    const views = [1, 2, 4, 8].map((rows) => tf.reshape(block, [rows, -1]));
    expect(tf.memory().numBytes).toBeGreaterThan(4 * 2 ** 30);
    const fits = tf.add(small, 1);
    expect(fits.shape).toEqual([1000]);
    // blocks past 2 GiB (malloc's signed addresses) are given back too: 2 GiB held, 0.25 GiB
    // taken and freed 8 times above it
    const low = tf.zeros([2 ** 28]);
    for (let i = 0; i < 8; i++) tf.zeros([2 ** 26]).dispose();
    tf.dispose([block, ...views, fits, low]);
    small.dispose();
    expect(tf.memory().numTensors).toBe(before);
    const ok = tf.add(tf.ones([3]), 1);
    expect(Array.from(await ok.data())).toEqual([2, 2, 2]);
    ok.dispose();
  });
});
