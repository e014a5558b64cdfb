/**
 * wasm's BatchMatMul and _FusedMatMul replacements (src/backends/wasm-batch-matmul.ts: each
 * product as XNNPACK's threaded 1x1 convolution) against products computed here in float64:
 * plain, transposed either side, batched, a right operand shared across the batch, with a bias,
 * and small products (the unbiased ones left to the kernel replaced, whose bias is wrong), each
 * either way round (b packed, or a); the two ways give the same bits; a weight kept packed between
 * products gives the same values, and new data in its place is read anew. Products with a long K
 * between two activations (weight gradients) are summed in chunks of K: the chunk rule, and the
 * values against float64 with either side packed.
 */
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { forceProductWay, keptFilterBytes, splitChunk, xnnBatchMatMulRegistered } from '../src/backends/wasm-batch-matmul.js';

function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 - 1;
  });
}

/** out[g] = op(a[g]) @ op(b[g or 0]) (+ bias) in float64, for row-major a (G, r, c) and b (Gb, r, c). */
function reference(a: Float32Array, aShape: number[], b: Float32Array, bShape: number[], tA: boolean, tB: boolean, bias?: Float32Array): Float64Array {
  const g = aShape.slice(0, -2).reduce((p, d) => p * d, 1);
  const gb = bShape.slice(0, -2).reduce((p, d) => p * d, 1);
  const [ar, ac] = aShape.slice(-2);
  const [br, bc] = bShape.slice(-2);
  const [m, k] = tA ? [ac, ar] : [ar, ac];
  const n = tB ? br : bc;
  const out = new Float64Array(g * m * n);
  for (let e = 0; e < g; e++) {
    const ao = e * ar * ac;
    const bo = (gb === 1 ? 0 : e) * br * bc;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = bias ? bias[j] : 0;
        for (let t = 0; t < k; t++) s += a[ao + (tA ? t * ac + i : i * ac + t)] * b[bo + (tB ? j * bc + t : t * bc + j)];
        out[(e * m + i) * n + j] = s;
      }
    }
  }
  return out;
}

function expectClose(got: Float32Array, want: Float64Array): void {
  expect(got.length).toBe(want.length);
  const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
  expect(worst / scale).toBeLessThan(2e-6);
}

const CASES: Array<{ name: string; a: number[]; b: number[]; tA?: boolean; tB?: boolean; bias?: boolean }> = [
  { name: 'plain (M, K) @ (K, N)', a: [70, 48], b: [48, 40] },
  { name: 'a transposed', a: [48, 70], b: [48, 40], tA: true },
  { name: 'b transposed', a: [70, 48], b: [40, 48], tB: true },
  { name: 'both transposed', a: [48, 70], b: [40, 48], tA: true, tB: true },
  { name: 'batched (2, 3) entries', a: [2, 3, 40, 36], b: [2, 3, 36, 33] },
  { name: 'batched, b transposed', a: [3, 40, 36], b: [3, 33, 36], tB: true },
  { name: 'b shared across a batch of 3', a: [3, 40, 36], b: [1, 36, 33] },
  { name: 'with a bias', a: [1, 70, 48], b: [1, 48, 40], bias: true },
  { name: 'with a bias, b transposed, batched', a: [2, 70, 48], b: [2, 40, 48], tB: true, bias: true },
  { name: 'small: the replaced kernel', a: [5, 6], b: [6, 7], tA: false },
  { name: 'small with a bias, b transposed (wasm own loop gets this wrong)', a: [5, 6], b: [7, 6], tB: true, bias: true },
  { name: 'small batched with a bias and a transposed', a: [2, 6, 5], b: [2, 6, 7], tA: true, bias: true },
  { name: 'a transposed against a shared b, with a bias: the product, then the bias', a: [2, 60, 50], b: [1, 60, 70], tA: true, bias: true },
];

type Case = (typeof CASES)[number];

function operands(c: Case): { a: Float32Array; b: Float32Array; bias?: Float32Array } {
  const size = (s: number[]) => s.reduce((p, d) => p * d, 1);
  const n = c.tB ? c.b[c.b.length - 2] : c.b[c.b.length - 1];
  return { a: values(size(c.a), 1), b: values(size(c.b), 2), bias: c.bias ? values(n, 3) : undefined };
}

function productOf(c: Case, a: Float32Array, b: Float32Array, bias?: Float32Array): tf.Tensor {
  return tf.tidy(() => {
    const at = tf.tensor(a, c.a);
    const bt = tf.tensor(b, c.b);
    if (bias) return tf.fused.matMul({ a: at as tf.Tensor3D, b: bt as tf.Tensor3D, transposeA: c.tA, transposeB: c.tB, bias: tf.tensor1d(bias) });
    return tf.matMul(at, bt, c.tA, c.tB);
  });
}

describe('wasm products through XNNPACK convolutions, against float64', () => {
  beforeAll(async () => {
    await selectBackend('wasm', { threads: 2, quiet: true });
  });
  afterAll(async () => {
    await selectBackend('cpu', { quiet: true });
  });

  it('replaces both product kernels', () => {
    expect(xnnBatchMatMulRegistered()).toBe(true);
  });

  for (const way of ['direct', 'swapped'] as const) {
    describe(`${way}: ${way === 'direct' ? 'a @ b, b packed' : '(b^T @ a^T)^T, a packed'}`, () => {
      beforeAll(() => forceProductWay(way));
      afterAll(() => forceProductWay(undefined));
      for (const c of CASES) {
        it(c.name, async () => {
          const { a, b, bias } = operands(c);
          const before = tf.memory().numTensors;
          const out = productOf(c, a, b, bias);
          expectClose((await out.data()) as Float32Array, reference(a, c.a, b, c.b, c.tA ?? false, c.tB ?? false, bias));
          out.dispose();
          expect(tf.memory().numTensors).toBe(before);
        });
      }
    });
  }

  it('gives the same bits either way, and while timing settles the way', async () => {
    // the timing may pick either way for a signature, so the choice must not show in the values
    for (const c of CASES.filter((c) => c.a.length === c.b.length)) {
      const { a, b, bias } = operands(c);
      const run = async (way: 'direct' | 'swapped' | undefined) => {
        forceProductWay(way);
        const out = productOf(c, a, b, bias);
        const v = Array.from(await out.data());
        out.dispose();
        return v;
      };
      const direct = await run('direct');
      expect(await run('swapped'), c.name).toEqual(direct);
      // the trial calls alternate the ways, then the faster one stays
      for (let call = 0; call < 5; call++) expect(await run(undefined), `${c.name}, timed call ${call}`).toEqual(direct);
    }
  });

  it('keeps a reused weight packed, with its values, until its data is freed', async () => {
    const x = values(64 * 48, 6);
    const w1 = values(40 * 48, 7);
    const w2 = values(40 * 48, 8);
    const bias = values(40, 9);
    const inputs = tf.tensor(x, [64, 48]);
    const b = tf.tensor1d(bias);
    const before = tf.memory().numTensors;
    // x @ W^T + b, and dY @ W (W as is), each three times: kept from the second use on
    const useWeight = async (w: tf.Tensor, wValues: Float32Array) => {
      for (let i = 0; i < 3; i++) {
        const y = tf.fused.matMul({ a: inputs as tf.Tensor2D, b: w as tf.Tensor2D, transposeB: true, bias: b });
        expectClose((await y.data()) as Float32Array, reference(x, [64, 48], wValues, [40, 48], false, true, bias));
        const back = tf.tidy(() => tf.matMul(tf.slice(inputs, [0, 0], [64, 40]), w));
        expectClose((await back.data()) as Float32Array, reference(x.filter((_, j) => j % 48 < 40), [64, 40], wValues, [40, 48], false, false));
        tf.dispose([y, back]);
      }
    };
    const first = tf.tensor(w1, [40, 48]);
    await useWeight(first, w1);
    // W^T (ours) + W as is, each with XNNPACK's packed copy and its own transposed one
    expect(keptFilterBytes()).toBe(2 * (2 * 4 * 40 * 48));
    first.dispose();
    expect(keptFilterBytes()).toBe(0);
    // new values, likely at the freed weight's address: read anew, not from the old operator
    const second = tf.tensor(w2, [40, 48]);
    await useWeight(second, w2);
    second.dispose();
    expect(keptFilterBytes()).toBe(0);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([inputs, b]);
  });

  describe('a long K summed in chunks', () => {
    it('chunks of the largest divisor of K from 256 down to 128, from K = 1024 on', () => {
      expect([1023, 1024, 1176, 4096, 4900, 65536, 1031, 2 * 1031].map(splitChunk)).toEqual([undefined, 256, 196, 256, 245, 256, undefined, undefined]);
    });

    const LONG: Case[] = [
      { name: 'a weight gradient X^T dY: a transposed, K 1024 in 4 chunks', a: [1024, 40], b: [1024, 24], tA: true },
      { name: 'batched, b transposed, K 1176 in chunks of 196', a: [2, 30, 1176], b: [2, 20, 1176], tB: true },
      { name: 'M < N: a packed, both transposed', a: [1024, 8], b: [40, 1024], tA: true, tB: true },
      { name: 'K 1031 (prime): one product', a: [12, 1031], b: [1031, 10] },
    ];
    for (const c of LONG) {
      it(c.name, async () => {
        const { a, b } = operands(c);
        const before = tf.memory().numTensors;
        const out = productOf(c, a, b);
        expectClose((await out.data()) as Float32Array, reference(a, c.a, b, c.b, c.tA ?? false, c.tB ?? false));
        out.dispose();
        expect(tf.memory().numTensors).toBe(before);
      });
    }
  });

  it('gives the same values on 1 and 2 threads', async () => {
    const a = values(90 * 64, 4);
    const b = values(64 * 80, 5);
    const run = async () => tf.tidy(() => tf.matMul(tf.tensor(a, [90, 64]), tf.tensor(b, [64, 80]))).data();
    const two = await run();
    await selectBackend('wasm', { threads: 1, quiet: true });
    const one = await run();
    expect(Array.from(two)).toEqual(Array.from(one));
  });
});
