/**
 * Every method of Ops, run on TfOps (eager tfjs) and recorded by OnnxOps then run in
 * onnxruntime-node: the two must agree within 1e-5 of the output's scale. Each case also runs
 * with a symbolic batch (traced at batch 2, run at batch 3) where its inputs carry a batch axis.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import seedrandom from 'seedrandom';
import { describe, expect, it } from 'vitest';
import type { HostTensor } from '../src/io/safetensors.js';
import type { Ops } from '../src/model/ops.js';
import { TfOps } from '../src/model/tf-ops.js';
import { readModelMetadata } from '../src/onnx/graph-builder.js';
import { traceGraph } from '../src/onnx/onnx-ops.js';
import { relativeError } from '../src/onnx/parity.js';
import { createSession, runSession } from '../src/onnx/runtime.js';

const TOL = 1e-5;

type Inputs<T> = Record<string, T>;
interface Case {
  name: string;
  /** input shapes at batch B (the first axis of every input is the batch unless `noBatch`) */
  inputs: (b: number) => Record<string, number[]>;
  params?: Record<string, number[]>;
  fn: <T>(ops: Ops<T>, x: Inputs<T>) => T | T[];
  /** value generator for inputs (default: normal) */
  gen?: (rng: () => number) => number;
  /** inputs without a batch axis: no dynamic-batch run */
  noBatch?: boolean;
}

function randn(rng: () => number): number {
  const u = Math.max(rng(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

function fill(shape: number[], rng: () => number, gen: (r: () => number) => number = randn): Float32Array {
  const a = new Float32Array(shape.reduce((x, y) => x * y, 1));
  for (let i = 0; i < a.length; i++) a[i] = gen(rng);
  return a;
}

const positive = (r: () => number) => 0.1 + 3 * r();
const smallInts = (r: () => number) => Math.floor(r() * 4);

const cases: Case[] = [
  { name: 'param+constant', inputs: (b) => ({ x: [b, 3, 4] }), params: { w: [3, 4] }, fn: (o, x) => o.add(o.mul(x.x, o.param('w')), o.constant([1, 2, 3, 4], [4])) },
  { name: 'param returned directly', inputs: (b) => ({ x: [b, 2] }), params: { w: [2, 2] }, fn: (o, x) => [o.param('w'), o.neg(x.x)] },
  {
    name: 'constant with a batch axis',
    inputs: (b) => ({ x: [b, 2, 3] }),
    fn: (o, x) => {
      const b = o.shape(x.x)[0];
      const c = o.constant(Array.from({ length: b }, () => [1, -2, 0.5, 4, 5, 6]).flat(), [b, 2, 3]);
      return o.mul(x.x, c);
    },
  },
  { name: 'add', inputs: (b) => ({ x: [b, 3, 4], y: [1, 1, 4] }), fn: (o, x) => [o.add(x.x, x.y), o.add(x.x, 0.5)] },
  { name: 'sub', inputs: (b) => ({ x: [b, 3, 4], y: [b, 3, 1] }), fn: (o, x) => [o.sub(x.x, x.y), o.sub(x.x, 2)] },
  { name: 'mul', inputs: (b) => ({ x: [b, 3, 4], y: [b, 1, 4] }), fn: (o, x) => [o.mul(x.x, x.y), o.mul(x.x, -3)] },
  { name: 'div', inputs: (b) => ({ x: [b, 3, 4], y: [b, 3, 4] }), gen: positive, fn: (o, x) => [o.div(x.x, x.y), o.div(x.x, 7)] },
  { name: 'neg', inputs: (b) => ({ x: [b, 5] }), fn: (o, x) => o.neg(x.x) },
  { name: 'sqrt', inputs: (b) => ({ x: [b, 5] }), gen: positive, fn: (o, x) => o.sqrt(x.x) },
  { name: 'exp', inputs: (b) => ({ x: [b, 5] }), fn: (o, x) => o.exp(x.x) },
  { name: 'sin', inputs: (b) => ({ x: [b, 5] }), fn: (o, x) => o.sin(o.mul(x.x, 10)) },
  { name: 'cos', inputs: (b) => ({ x: [b, 5] }), fn: (o, x) => o.cos(o.mul(x.x, 10)) },
  { name: 'sigmoid', inputs: (b) => ({ x: [b, 5] }), fn: (o, x) => o.sigmoid(o.mul(x.x, 4)) },
  { name: 'relu', inputs: (b) => ({ x: [b, 5] }), fn: (o, x) => o.relu(x.x) },
  { name: 'gelu', inputs: (b) => ({ x: [b, 64] }), fn: (o, x) => o.gelu(o.mul(x.x, 3)) },
  { name: 'equal', inputs: (b) => ({ x: [b, 8] }), gen: smallInts, fn: (o, x) => [o.equal(x.x, 1), o.equal(x.x, 3)] },
  {
    name: 'matMul',
    inputs: (b) => ({ a: [b, 2, 3, 4], c: [b, 2, 4, 5], at: [b, 2, 4, 3], ct: [b, 2, 5, 4] }),
    fn: (o, x) => [o.matMul(x.a, x.c), o.matMul(x.at, x.c, true), o.matMul(x.a, x.ct, false, true), o.matMul(x.at, x.ct, true, true)],
  },
  {
    name: 'linear',
    inputs: (b) => ({ x: [b, 3, 6], w2: [b, 4, 6] }),
    params: { w: [5, 6], bias: [5] },
    fn: (o, x) => [
      o.linear(x.x, o.param('w'), o.param('bias')),
      o.linear(x.x, o.param('w')),
      o.linear(o.reshape(x.x, [-1, 6]), o.param('w'), o.param('bias')),
      // a computed (non-parameter) weight
      o.linear(x.x, o.reshape(o.slice(x.w2, [0, 0, 0], [1, 4, 6]), [4, 6])),
    ],
  },
  { name: 'softmax', inputs: (b) => ({ x: [b, 3, 7] }), fn: (o, x) => o.softmax(o.mul(x.x, 3)) },
  { name: 'attention', inputs: (b) => ({ q: [b, 2, 5, 8], k: [b, 2, 9, 8], v: [b, 2, 9, 8] }), fn: (o, x) => o.attention(x.q, x.k, x.v) },
  { name: 'layerNorm', inputs: (b) => ({ x: [b, 4, 32] }), params: { g: [32], beta: [32] }, fn: (o, x) => [o.layerNorm(o.add(x.x, 3), o.param('g'), o.param('beta'), 1e-6), o.layerNorm(x.x, o.param('g'), o.param('beta'), 1e-5)] },
  {
    name: 'reshape',
    inputs: (b) => ({ x: [b, 4, 6] }),
    fn: (o, x) => {
      const b = o.shape(x.x)[0];
      return [o.reshape(x.x, [-1, 2, 2, 6]), o.reshape(x.x, [-1, 12]), o.reshape(x.x, [b, 24]), o.reshape(x.x, [b * 2, 12]), o.reshape(x.x, [b, 2, -1])];
    },
  },
  { name: 'transpose', inputs: (b) => ({ x: [b, 2, 3, 4] }), fn: (o, x) => [o.transpose(x.x, [0, 3, 1, 2]), o.transpose(x.x, [2, 0, 3, 1])] },
  {
    name: 'slice',
    inputs: (b) => ({ x: [b, 5, 6] }),
    fn: (o, x) => {
      const b = o.shape(x.x)[0];
      return [o.slice(x.x, [0, 1, 2], [-1, 3, -1]), o.slice(x.x, [0, 0, 0], [b, 5, 2]), o.slice(x.x, [0, 4, 0], [-1, 1, 6]), o.slice(x.x, [0, 0, 0], [1, -1, -1])];
    },
  },
  { name: 'concat', inputs: (b) => ({ x: [b, 2, 3], y: [b, 4, 3], z: [b, 2, 5] }), fn: (o, x) => [o.concat([x.x, x.y], 1), o.concat([x.x, x.z], -1), o.concat([x.x], 0)] },
  { name: 'pad', inputs: (b) => ({ x: [b, 3, 4, 2] }), fn: (o, x) => o.pad(x.x, [[0, 0], [1, 2], [0, 3], [0, 0]]) },
  {
    name: 'tile',
    inputs: (b) => ({ x: [b, 2, 3], t: [1, 2, 3] }),
    fn: (o, x) => [o.tile(x.x, [1, 2, 3]), o.tile(x.t, [o.shape(x.x)[0], 1, 2])],
  },
  { name: 'mean', inputs: (b) => ({ x: [b, 3, 4, 5] }), fn: (o, x) => [o.mean(x.x, [-1]), o.mean(x.x, [1, 2], true)] },
  { name: 'sum', inputs: (b) => ({ x: [b, 3, 4, 5] }), fn: (o, x) => [o.sum(x.x, [-1]), o.sum(x.x, [1, 2], true)] },
  {
    name: 'conv2d',
    inputs: (b) => ({ x: [b, 9, 9, 4] }),
    params: { w3: [6, 4, 3, 3], b3: [6], w2: [5, 4, 2, 2], dw: [4, 1, 7, 7], db: [4] },
    fn: (o, x) => [
      o.conv2d(x.x, o.param('w3'), o.param('b3'), { pad: 1 }),
      o.conv2d(x.x, o.param('w3'), o.param('b3'), { stride: 2, pad: 1 }),
      o.conv2d(x.x, o.param('w2'), undefined, { stride: 2 }),
      o.conv2d(x.x, o.param('dw'), o.param('db'), { pad: 3, groups: 4 }),
    ],
  },
  {
    name: 'convTranspose2d',
    inputs: (b) => ({ x: [b, 3, 4, 6] }),
    params: { w2: [6, 5, 2, 2], b2: [5], w4: [6, 3, 4, 4] },
    fn: (o, x) => [o.convTranspose2d(x.x, o.param('w2'), o.param('b2'), 2), o.convTranspose2d(x.x, o.param('w4'), undefined, 4)],
  },
  {
    name: 'checkpoint (traced inline)',
    inputs: (b) => ({ x: [b, 2, 4] }),
    params: { 'blk.weight': [3, 4], 'blk.bias': [3] },
    fn: (o, x) => o.checkpoint('blk', (b, [h]) => [b.linear(h, b.param('blk.weight'), b.param('blk.bias')), b.relu(h)], [x.x]),
  },
  { name: 'maxPool2d', inputs: (b) => ({ x: [b, 8, 7, 3] }), fn: (o, x) => [o.maxPool2d(x.x, 2), o.maxPool2d(x.x, 3)] },
  {
    name: 'resizeNearest',
    inputs: (b) => ({ x: [b, 4, 6, 3] }),
    fn: (o, x) => [o.resizeNearest(x.x, [8, 12]), o.resizeNearest(x.x, [6, 9]), o.resizeNearest(x.x, [3, 2]), o.resizeNearest(x.x, [2, 3])],
  },
  {
    name: 'resizeBilinear',
    inputs: (b) => ({ x: [b, 4, 6, 3] }),
    fn: (o, x) => [
      o.resizeBilinear(x.x, [8, 12]),
      o.resizeBilinear(x.x, [16, 24]),
      o.resizeBilinear(x.x, [7, 5]),
      o.resizeBilinear(x.x, [2, 3]),
      o.resizeBilinear(x.x, [3, 4]),
    ],
  },
];

function runTf(c: Case, inputs: Record<string, HostTensor>, params: Map<string, HostTensor>): HostTensor[] {
  return tf.tidy(() => {
    const ops = new TfOps(new Map([...params].map(([k, v]) => [k, tf.tensor(v.data, v.shape)])));
    const xs = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, tf.tensor(v.data, v.shape)]));
    const out = c.fn(ops, xs);
    return (Array.isArray(out) ? out : [out]).map((t) => ({ data: t.dataSync() as Float32Array, shape: t.shape }));
  });
}

async function runOnnx(c: Case, inputs: Record<string, HostTensor>, params: Map<string, HostTensor>, dynamic: boolean): Promise<HostTensor[]> {
  const traced = traceGraph(
    {
      name: c.name,
      symbols: dynamic ? { batch: 2 } : undefined,
      build(ops, io) {
        const xs = Object.fromEntries(
          Object.entries(inputs).map(([k, { shape }]) => {
            const batched = dynamic && shape[0] !== 1;
            return [k, io.input(k, batched ? ['batch', ...shape.slice(1)] : shape)];
          }),
        );
        const out = c.fn(ops, xs);
        (Array.isArray(out) ? out : [out]).forEach((t, i) => io.output(`out${i}`, t));
      },
    },
    params,
  );
  const bytes = traced.graph.toModel({ case: c.name });
  expect(readModelMetadata(bytes).case).toBe(c.name);
  const session = await createSession(bytes, { threads: 1 });
  const res = await runSession(session, inputs);
  await session.release();
  return session.outputNames.map((n) => res[n]);
}

describe('OnnxOps matches TfOps through onnxruntime-node', () => {
  for (const c of cases) {
    for (const dynamic of [false, true]) {
      if (dynamic && c.noBatch) continue;
      it(`${c.name}${dynamic ? ' (symbolic batch)' : ''}`, async () => {
        const rng = seedrandom(`onnx-ops:${c.name}`);
        const batch = dynamic ? 3 : 2;
        const inputs: Record<string, HostTensor> = {};
        for (const [k, shape] of Object.entries(c.inputs(batch))) inputs[k] = { data: fill(shape, rng, c.gen), shape };
        const params = new Map<string, HostTensor>();
        for (const [k, shape] of Object.entries(c.params ?? {})) params.set(k, { data: fill(shape, rng), shape });
        const ref = runTf(c, inputs, params);
        const ours = await runOnnx(c, inputs, params, dynamic);
        expect(ours.length).toBe(ref.length);
        ref.forEach((r, i) => {
          expect(ours[i].shape, `output ${i} shape`).toEqual(r.shape);
          const { relError } = relativeError(ours[i].data, r.data);
          expect(relError, `output ${i}`).toBeLessThanOrEqual(TOL);
        });
      });
    }
  }

  it('covers every method of the Ops interface', async () => {
    // the interface has no runtime form: read its method names from ops.ts
    const { readFileSync } = await import('node:fs');
    const src = readFileSync(new URL('../src/model/ops.ts', import.meta.url), 'utf8');
    const body = src.slice(src.indexOf('export interface Ops<T>'), src.indexOf('\n}\n', src.indexOf('export interface Ops<T>')));
    const methods = [...body.matchAll(/^\s{2}(\w+)\(/gm)].map((m) => m[1]);
    expect(methods.length).toBeGreaterThan(30);
    const tested = cases.map((c) => c.fn.toString()).join('\n');
    const missing = methods.filter((m) => !new RegExp(`\\bo\\.${m}\\(`).test(tested));
    expect(missing).toEqual([]);
  });
});
