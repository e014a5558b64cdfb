/**
 * TfOps methods with fast paths (matMul, linear, attention, conv2d, maxPool2d and the kernels
 * behind them: Conv2DBackpropFilter, MaxPoolGrad, WASM Identity, the XNNPACK batched product) against straightforward
 * references: plain tfjs ops on the CPU backend (values and tf.grads gradients), on small random
 * inputs, run on the cpu and the wasm backends.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selectBackend, type BackendName } from '../src/backend.js';
import { conv2dBackpropFilterNhwc } from '../src/backends/fast-kernels.js';
import { applyRotary } from '../src/model/position-encoding.js';
import { TfOps } from '../src/model/tf-ops.js';
import { maxRelError } from '../src/model/reference-compare.js';

const TOL = 1e-4;

/** Deterministic pseudo-random values in [-1, 1). */
function rand(n: number, seed: number): Float32Array {
  let s = seed * 7919 + 17;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 - 1;
  });
}

interface Input {
  data: Float32Array;
  shape: number[];
}
const input = (shape: number[], seed: number): Input => ({ data: rand(shape.reduce((a, b) => a * b, 1), seed), shape });

/** Value and gradients (w.r.t. every input) of sum(f(...) * r) for a fixed random r, on the active backend. */
function valueAndGrads(f: (...xs: tf.Tensor[]) => tf.Tensor, inputs: Input[]): { value: Float32Array; shape: number[]; grads: Float32Array[] } {
  return tf.tidy(() => {
    const xs = inputs.map((i) => tf.tensor(i.data, i.shape));
    const y = f(...xs);
    const r = tf.tensor(rand(y.size, 99), y.shape);
    const grads = tf.grads((...a: tf.Tensor[]) => tf.sum(tf.mul(f(...a), r)))(xs);
    return {
      value: Float32Array.from(y.dataSync()),
      shape: y.shape,
      grads: grads.map((g) => Float32Array.from(g.dataSync())),
    };
  });
}

/** every (transposeA, transposeB) pair of matMul */
const TRANSPOSE_COMBINATIONS = [
  [false, false],
  [true, false],
  [false, true],
  [true, true],
] as const;

/** Compares f (TfOps, on `backend`) with ref (plain tfjs, on cpu): value and all input gradients. */
async function compare(backend: BackendName, f: (...xs: tf.Tensor[]) => tf.Tensor, ref: (...xs: tf.Tensor[]) => tf.Tensor, inputs: Input[]) {
  await selectBackend('cpu', { quiet: true });
  const want = valueAndGrads(ref, inputs);
  await selectBackend(backend, { quiet: true });
  const got = valueAndGrads(f, inputs);
  await selectBackend('cpu', { quiet: true });
  expect(got.shape).toEqual(want.shape);
  expect(maxRelError(got.value, want.value, 1e-6)).toBeLessThan(TOL);
  got.grads.forEach((g, i) => expect(maxRelError(g, want.grads[i], 1e-6), `gradient of input ${i}`).toBeLessThan(TOL));
}

/** conv2d as im2col (strided slices) + matMul: gradients through slices and a plain product. */
function im2colConv(x: tf.Tensor, w: tf.Tensor, stride: number, pad: number): tf.Tensor {
  const [outC, inC, kh, kw] = w.shape;
  const xp = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]);
  const [b, h, wd] = xp.shape;
  const oh = Math.floor((h - kh) / stride) + 1;
  const ow = Math.floor((wd - kw) / stride) + 1;
  // every stride-th row / column from (ky, kx) on: slice, reshape, slice (all with gradients)
  const xe = tf.pad(xp, [[0, 0], [0, stride * oh + kh - h], [0, stride * ow + kw - wd], [0, 0]]);
  const cols: tf.Tensor[] = [];
  for (let ky = 0; ky < kh; ky++) {
    for (let kx = 0; kx < kw; kx++) {
      const region = tf.reshape(tf.slice(xe, [0, ky, kx, 0], [b, stride * oh, stride * ow, inC]), [b, oh, stride, ow, stride, inC]);
      cols.push(tf.reshape(tf.slice(region, [0, 0, 0, 0, 0, 0], [b, oh, 1, ow, 1, inC]), [b, oh, ow, inC]));
    }
  }
  const patches = tf.reshape(tf.concat(cols, 3), [-1, kh * kw * inC]);
  const wm = tf.reshape(tf.transpose(w, [2, 3, 1, 0]), [kh * kw * inC, outC]);
  return tf.reshape(tf.matMul(patches, wm), [b, oh, ow, outC]);
}

function refAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor): tf.Tensor {
  const d = q.shape[q.rank - 1];
  return tf.matMul(tf.softmax(tf.div(tf.matMul(q, k, false, true), Math.sqrt(d))), v);
}

/**
 * [[1, 2], [3, 4]] op [10, -2] (a row against every row) and [[10], [-2]] op [[1, 2], [3, 4]] (a
 * column against every column); div divides by |b| + 0.5.
 */
const BROADCAST_BY_HAND: Record<string, number[][]> = {
  add: [[11, 0, 13, 2], [11, 12, 1, 2]],
  sub: [[-9, 4, -7, 6], [9, 8, -5, -6]],
  mul: [[10, -4, 30, -8], [10, 20, -6, -8]],
  div: [[1 / 10.5, 2 / 2.5, 3 / 10.5, 4 / 2.5], [10 / 1.5, 10 / 2.5, -2 / 3.5, -2 / 4.5]].map((v) => v.map((x) => Number(Math.fround(x).toFixed(6)))),
};

const ops = new TfOps(new Map());
/** a TfOps whose attention chunks over queries (tiny chunk budget) */
const chunkedOps = new TfOps(new Map(), { attentionChunkBytes: 3 * 1024 });

function suite(backend: 'cpu' | 'wasm') {
  describe(`TfOps on ${backend} vs plain tfjs on cpu`, () => {
    beforeAll(async () => {
      await selectBackend(backend, { quiet: true });
      await selectBackend('cpu', { quiet: true });
    });

    it('matMul: 2-D, every transpose combination', async () => {
      for (const [ta, tb] of TRANSPOSE_COMBINATIONS) {
        const a = input(ta ? [5, 7] : [7, 5], 1);
        const b = input(tb ? [3, 5] : [5, 3], 2);
        await compare(backend, (x, y) => ops.matMul(x, y, ta, tb), (x, y) => tf.matMul(x, y, ta, tb), [a, b]);
      }
    });

    it('matMul: unit leading axes, a batch against one matrix, batched, broadcast batch', async () => {
      // (tfjs's own matMul gradient mishandles broadcast batch axes: the references fold or tile them)
      await compare(backend, (x, y) => ops.matMul(x, y), (x, y) => tf.reshape(tf.matMul(tf.reshape(x, [6, 4]), y), [1, 6, 5]), [input([1, 6, 4], 3), input([4, 5], 4)]);
      await compare(
        backend,
        (x, y) => ops.matMul(x, y, false, true),
        (x, y) => tf.reshape(tf.matMul(tf.reshape(x, [-1, 4]), y, false, true), [2, 3, 6, 5]),
        [input([2, 3, 6, 4], 5), input([5, 4], 6)],
      );
      for (const [ta, tb] of TRANSPOSE_COMBINATIONS) {
        const a = input(ta ? [2, 3, 4, 6] : [2, 3, 6, 4], 7);
        const b = input(tb ? [2, 3, 5, 4] : [2, 3, 4, 5], 8);
        await compare(backend, (x, y) => ops.matMul(x, y, ta, tb), (x, y) => tf.matMul(x, y, ta, tb), [a, b]);
      }
      // large enough per entry for the XNNPACK path on wasm
      for (const [ta, tb] of [
        [false, false],
        [true, true],
      ] as const) {
        const a = input(ta ? [2, 2, 32, 40] : [2, 2, 40, 32], 45);
        const b = input(tb ? [2, 2, 30, 32] : [2, 2, 32, 30], 46);
        await compare(backend, (x, y) => ops.matMul(x, y, ta, tb), (x, y) => tf.matMul(x, y, ta, tb), [a, b]);
      }
      await compare(backend, (x, y) => ops.matMul(x, y), (x, y) => tf.matMul(tf.tile(x, [3, 1, 1]), y), [input([1, 40, 32], 47), input([3, 32, 30], 48)]);
      await compare(backend, (x, y) => ops.matMul(x, y), (x, y) => tf.matMul(tf.tile(x, [3, 1, 1]), y), [input([1, 6, 4], 9), input([3, 4, 5], 10)]);
      await compare(backend, (x, y) => ops.matMul(x, y), (x, y) => tf.matMul(x, tf.tile(y, [3, 1, 1])), [input([3, 6, 4], 11), input([1, 4, 5], 12)]);
    });

    it('linear: with and without bias, any rank', async () => {
      const ref = (x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor) => {
        const y = tf.reshape(tf.matMul(tf.reshape(x, [-1, w.shape[1] as number]), w, false, true), [...x.shape.slice(0, -1), w.shape[0] as number]);
        return b ? tf.add(y, b) : y;
      };
      await compare(backend, (x, w, b) => ops.linear(x, w, b), ref, [input([2, 3, 4, 6], 13), input([5, 6], 14), input([5], 15)]);
      await compare(backend, (x, w) => ops.linear(x, w), (x, w) => ref(x, w), [input([7, 6], 16), input([5, 6], 17)]);
    });

    it('attention: whole and chunked over queries, q-pooled shapes', async () => {
      const qkv = [input([2, 3, 10, 8], 18), input([2, 3, 12, 8], 19), input([2, 3, 12, 8], 20)];
      await compare(backend, (q, k, v) => ops.attention(q, k, v), refAttention, qkv);
      await compare(backend, (q, k, v) => chunkedOps.attention(q, k, v), refAttention, qkv);
      await compare(backend, (q, k, v) => ops.attention(q, k, v), refAttention, [input([4, 1, 4, 16], 21), input([4, 1, 16, 16], 22), input([4, 1, 16, 16], 23)]);
      // large enough per (batch, head) for the XNNPACK path on wasm
      const big = [input([1, 2, 40, 32], 49), input([1, 2, 36, 32], 50), input([1, 2, 36, 32], 51)];
      await compare(backend, (q, k, v) => ops.attention(q, k, v), refAttention, big);
      await compare(backend, (q, k, v) => chunkedOps.attention(q, k, v), refAttention, big);
    });

    it('conv2d: the patch embedding (7x7, stride 4, pad 3) and a 3x3 stride-2 conv, weight and input gradients', async () => {
      const conv = (stride: number, pad: number) => (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => ops.conv2d(x, w, b, { stride, pad });
      const ref = (stride: number, pad: number) => (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.add(im2colConv(x, w, stride, pad), b);
      await compare(backend, conv(4, 3), ref(4, 3), [input([2, 16, 16, 3], 24), input([5, 3, 7, 7], 25), input([5], 26)]);
      await compare(backend, conv(2, 1), ref(2, 1), [input([2, 9, 9, 4], 27), input([6, 4, 3, 3], 28), input([6], 29)]);
      // 1x1: a linear layer
      await compare(backend, conv(1, 0), ref(1, 0), [input([1, 5, 5, 4], 30), input([3, 4, 1, 1], 31), input([3], 32)]);
    });

    it('maxPool2d (q-pooling): value and gradient, many channels (WASM MaxPoolGrad is replaced)', async () => {
      // reference: max over the 2x2 blocks as a reshape + max (its gradient picks the maximum too)
      const ref = (x: tf.Tensor) => {
        const [b, h, w, c] = x.shape;
        return tf.max(tf.transpose(tf.reshape(x, [b, h / 2, 2, w / 2, 2, c]), [0, 1, 3, 5, 2, 4]), [4, 5]);
      };
      await compare(backend, (x) => ops.maxPool2d(x, 2), ref, [input([2, 8, 6, 32], 35)]);
      await compare(backend, (x) => ops.maxPool2d(x, 2), ref, [input([1, 4, 4, 1], 36)]);
    });

    it('resizeNearest: integer upscaling and a general size, values and gradients', async () => {
      for (const size of [
        [16, 16],
        [8, 12],
        [10, 13],
      ] as [number, number][]) {
        // reference: gathers of rows floor(i * in / out) and columns likewise (tfjs's own
        // ResizeNearestNeighborGrad, cpu and wasm, is wrong for several channels: replaced)
        const ref = (x: tf.Tensor) => {
          const idx = (n: number, inSize: number) => tf.tensor1d(Array.from({ length: n }, (_, i) => Math.floor((i * inSize) / n)), 'int32');
          return tf.gather(tf.gather(x, idx(size[0], x.shape[1] as number), 1), idx(size[1], x.shape[2] as number), 2);
        };
        await compare(backend, (x) => ops.resizeNearest(x, size), ref, [input([2, 8, 4, 6], 37)]);
        await compare(backend, (x) => tf.image.resizeNearestNeighbor(x as tf.Tensor4D, size, false, false), ref, [input([2, 8, 4, 6], 38)]);
      }
    });

    it('applyRotary (pair swap as a product): values and gradients vs the complex-pair formula', async () => {
      // reference: the pairs (x[2i], x[2i+1]) sliced out and rotated, as the official code does
      const ref = (x: tf.Tensor, c: tf.Tensor, s: tf.Tensor) => {
        const [b, h, n, d] = x.shape;
        const reps = n / c.shape[0];
        const cc = tf.reshape(tf.tile(c, [reps, 1]), [n, d / 2, 1]);
        const ss = tf.reshape(tf.tile(s, [reps, 1]), [n, d / 2, 1]);
        const pairs = tf.reshape(x, [b, h, n, d / 2, 2]);
        const re = tf.slice(pairs, [0, 0, 0, 0, 0], [b, h, n, d / 2, 1]);
        const im = tf.slice(pairs, [0, 0, 0, 0, 1], [b, h, n, d / 2, 1]);
        return tf.reshape(tf.concat([tf.sub(tf.mul(re, cc), tf.mul(im, ss)), tf.add(tf.mul(re, ss), tf.mul(im, cc))], 4), [b, h, n, d]);
      };
      await compare(backend, (x, c, s) => applyRotary(ops, x, c, s), ref, [input([2, 1, 6, 8], 39), input([6, 4], 40), input([6, 4], 41)]);
      await compare(backend, (x, c, s) => applyRotary(ops, x, c, s, true), ref, [input([1, 2, 12, 8], 42), input([6, 4], 43), input([6, 4], 44)]);
    });

    it('broadcasting add / sub / mul / div and softmax (cpu kernel replacements) vs same-shape ops', async () => {
      const full = (t: tf.Tensor, shape: number[]) => {
        const r = tf.reshape(t, [...Array(shape.length - t.rank).fill(1), ...t.shape]);
        return tf.tile(r, shape.map((d, i) => d / r.shape[i]));
      };
      const shape = [2, 3, 4, 5];
      for (const [name, f] of [
        ['add', (a: tf.Tensor, b: tf.Tensor) => ops.add(a, b)],
        ['sub', (a: tf.Tensor, b: tf.Tensor) => ops.sub(a, b)],
        ['mul', (a: tf.Tensor, b: tf.Tensor) => ops.mul(a, b)],
        ['div', (a: tf.Tensor, b: tf.Tensor) => ops.div(a, tf.add(tf.abs(b), 0.5))],
      ] as const) {
        for (const small of [[5], [4, 5], [1, 1, 4, 5], [3, 4, 5], [1], [2, 3, 4, 1], [2, 3, 1, 1], [2, 1, 1, 1]]) {
          const ref = (a: tf.Tensor, b: tf.Tensor) => f(a, full(b, shape));
          await compare(backend, (a, b) => f(a, b), ref, [input(shape, 52), input(small, 53)]);
          // and the small operand first
          await compare(backend, (a, b) => f(b, a), (a, b) => f(full(b, shape), a), [input(shape, 54), input(small, 55)]);
        }
        // the broadcast kernels on the backend itself, against values worked out by hand
        await selectBackend(backend, { quiet: true });
        const [row, col] = tf.tidy(() => {
          const a = tf.tensor2d([[1, 2], [3, 4]]);
          return [f(a, tf.tensor1d([10, -2])), f(tf.tensor2d([[10], [-2]]), a)].map((t) => Array.from(t.dataSync()));
        });
        await selectBackend('cpu', { quiet: true });
        expect([row, col].map((v) => v.map((x) => Number(x.toFixed(6)))), name).toEqual(BROADCAST_BY_HAND[name]);
      }
      // a scalar number, and shapes the fast paths leave to tfjs (broadcast in the middle)
      await compare(backend, (a) => ops.mul(a, 0.125), (a) => tf.mul(a, tf.fill(shape, 0.125)), [input(shape, 56)]);
      await compare(backend, (a, b) => ops.add(a, b), (a, b) => tf.add(a, tf.tile(b, [1, 1, 4, 1])), [input(shape, 57), input([2, 3, 1, 5], 58)]);
      // softmax: exp(x - max) / sum, written out
      const softRef = (x: tf.Tensor) => {
        const e = tf.exp(tf.sub(x, full(tf.max(x, -1, true), x.shape)));
        return tf.div(e, full(tf.sum(e, -1, true), x.shape));
      };
      await compare(backend, (x) => ops.softmax(x), softRef, [input([3, 7, 9], 59)]);
    });

    it('Conv2DBackpropFilter kernel matches a direct sum, with "same" padding and stride', async () => {
      await selectBackend(backend, { quiet: true });
      const x = input([2, 11, 9, 3], 33);
      const [got, want] = tf.tidy(() => {
        const xt = tf.tensor4d(x.data, x.shape as [number, number, number, number]);
        const dy = tf.tensor4d(rand(2 * 6 * 5 * 4, 34), [2, 6, 5, 4]);
        const dw = tf.engine().runKernel(tf.Conv2DBackpropFilter, { x: xt, dy }, {
          strides: 2,
          pad: 'same',
          dataFormat: 'NHWC',
          filterShape: [3, 3, 3, 4],
        } as unknown as tf.NamedAttrMap) as tf.Tensor;
        const info = tf.backend_util.computeConv2DInfo(xt.shape, [3, 3, 3, 4], 2, 1, 'same');
        return [Float32Array.from(dw.dataSync()), conv2dBackpropFilterNhwc(x.data, x.shape, dy.dataSync() as Float32Array, info)];
      });
      // the direct sum, written out
      const ref = new Float32Array(3 * 3 * 3 * 4);
      const dyv = rand(2 * 6 * 5 * 4, 34);
      for (let ky = 0; ky < 3; ky++)
        for (let kx = 0; kx < 3; kx++)
          for (let ci = 0; ci < 3; ci++)
            for (let co = 0; co < 4; co++) {
              let s = 0;
              for (let b = 0; b < 2; b++)
                for (let oy = 0; oy < 6; oy++)
                  for (let ox = 0; ox < 5; ox++) {
                    // 'same' with stride 2 on 11x9: out 6x5, total pad (6-1)*2+3-11 = 2 -> top 1; (5-1)*2+3-9 = 2 -> left 1
                    const iy = oy * 2 + ky - 1;
                    const ix = ox * 2 + kx - 1;
                    if (iy < 0 || iy >= 11 || ix < 0 || ix >= 9) continue;
                    s += x.data[((b * 11 + iy) * 9 + ix) * 3 + ci] * dyv[((b * 6 + oy) * 5 + ox) * 4 + co];
                  }
              ref[((ky * 3 + kx) * 3 + ci) * 4 + co] = s;
            }
      expect(maxRelError(got, ref, 1e-6)).toBeLessThan(1e-5);
      expect(maxRelError(want, ref, 1e-6)).toBeLessThan(1e-5);
      await selectBackend('cpu', { quiet: true });
    });

    it('leaks no tensors through the custom gradients', async () => {
      await selectBackend(backend, { quiet: true });
      const run = () => {
        const [q, w, b] = [tf.randomNormal([2, 2, 9, 8]), tf.randomNormal([8, 8]), tf.randomNormal([8])];
        const g = tf.grads((qq: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) => tf.sum(ops.attention(ops.linear(qq, ww, bb), qq, qq)))([q, w, b]);
        tf.dispose([q, w, b, ...g]);
      };
      run();
      const before = tf.memory().numTensors;
      run();
      expect(tf.memory().numTensors).toBe(before);
      await selectBackend('cpu', { quiet: true });
    });
  });
}

suite('cpu');
suite('wasm');

afterAll(async () => {
  await selectBackend('cpu', { quiet: true });
});
