/**
 * The software-adapter matrix product (src/backends/webgpu-matmul.ts) against tfjs on the cpu
 * backend: values and gradients of BatchMatMul and _FusedMatMul (bias, relu) with transposes, a
 * broadcast batch and shapes that fill no tile evenly, outputs written by scalars and as vec4s. On a software adapter (lavapipe) the kernel
 * must have taken every case; on a GPU tfjs's kernel runs and is checked the same way. Without an
 * adapter these skip, and fail when CI is set.
 */
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import type { CheckedWebGPUBackend } from '../src/backends/webgpu-checked.js';
import { programsDuring, relativeError, webgpuAvailability } from './helpers/webgpu.js';

const gpu = await webgpuAvailability();

interface Case {
  a: number[];
  b: number[];
  transposeA?: boolean;
  transposeB?: boolean;
  /** a fused product with a bias over the output columns and this activation */
  fused?: 'linear' | 'relu';
  /** tfjs's matMul gradient does not reduce broadcast batch axes: values only */
  valueOnly?: boolean;
}

const CASES: Case[] = [
  { a: [3, 5, 7], b: [3, 7, 6] },
  { a: [2, 7, 5], b: [2, 7, 6], transposeA: true },
  { a: [2, 5, 7], b: [2, 6, 7], transposeB: true },
  { a: [2, 2, 9, 5], b: [2, 2, 6, 9], transposeA: true, transposeB: true },
  { a: [70, 33], b: [33, 45] },
  { a: [2, 3, 20], b: [2, 20, 130] },
  { a: [37, 19], b: [19, 1] },
  { a: [5, 1000], b: [1000, 3] },
  { a: [4, 9, 3], b: [1, 3, 10], valueOnly: true },
  { a: [1, 6, 3], b: [4, 3, 10], valueOnly: true },
  { a: [13, 8], b: [8, 11], fused: 'linear' },
  { a: [13, 8], b: [11, 8], transposeB: true, fused: 'relu' },
  // N a multiple of 4, written as vec4s: scores q k^T (N off the 8-column tile), a bias with N 12
  { a: [3, 30, 16], b: [3, 36, 16], transposeB: true },
  { a: [17, 10], b: [10, 12], fused: 'relu' },
];

function name(c: Case): string {
  const t = (s: number[], tr?: boolean) => `[${s}]${tr ? 'ᵀ' : ''}`;
  return `${t(c.a, c.transposeA)} x ${t(c.b, c.transposeB)}${c.fused ? ` + bias, ${c.fused}` : ''}`;
}

/** The product and, unless valueOnly, its gradients for a, b (and the bias) under an upstream r. */
async function productAndGrads(c: Case, seed: number): Promise<Float32Array[]> {
  const a = tf.randomNormal(c.a, 0, 1, 'float32', seed);
  const b = tf.randomNormal(c.b, 0, 1, 'float32', seed + 1);
  const n = c.transposeB ? c.b[c.b.length - 2] : c.b[c.b.length - 1];
  const bias = tf.randomNormal([n], 0, 1, 'float32', seed + 2);
  const f = (ai: tf.Tensor, bi: tf.Tensor, biasi: tf.Tensor) =>
    c.fused
      ? tf.fused.matMul({ a: ai as tf.Tensor2D, b: bi as tf.Tensor2D, transposeA: c.transposeA, transposeB: c.transposeB, bias: biasi, activation: c.fused })
      : tf.matMul(ai, bi, c.transposeA, c.transposeB);
  const y = f(a, b, bias);
  const r = tf.randomNormal(y.shape, 0, 1, 'float32', seed + 3);
  const loss = (ai: tf.Tensor, bi: tf.Tensor, biasi?: tf.Tensor) => tf.sum(tf.mul(f(ai, bi, biasi ?? bias), r));
  const grads = c.valueOnly ? [] : tf.grads(loss)(c.fused ? [a, b, bias] : [a, b]);
  const out = await Promise.all([y, ...grads].map(async (t) => Float32Array.from(await t.data())));
  tf.dispose([a, b, bias, r, y, ...grads]);
  return out;
}

describe.runIf(!gpu.run && process.env.CI)('webgpu matMul (CI)', () => {
  it('has a WebGPU adapter', () => {
    throw new Error(gpu.reason);
  });
});

describe.runIf(gpu.run)('webgpu matMul', () => {
  for (const c of CASES) {
    it(`matches tfjs on cpu, value${c.valueOnly ? '' : ' and gradients'}: ${name(c)}`, async () => {
      await selectBackend('cpu', { quiet: true });
      const ref = await productAndGrads(c, 5);
      await selectBackend('webgpu', { quiet: true });
      const backend = tf.backend() as CheckedWebGPUBackend;
      const before = tf.memory().numTensors;
      const { result: ours, programs } = await programsDuring(() => productAndGrads(c, 5));
      expect(tf.memory().numTensors).toBe(before);
      ['y', 'da', 'db', 'dbias'].slice(0, ref.length).forEach((what, k) => {
        expect(ours[k].length, what).toBe(ref[k].length);
        expect(relativeError(ours[k], ref[k]), what).toBeLessThan(1e-5);
      });
      if (backend.softwareAdapter) {
        expect(programs.some((p) => p.startsWith('SoftwareMatMulProgram:'))).toBe(true);
        // tfjs's MatMulPackedProgram, MatMulSmallOutputSizeProgram, ...: none when ours takes every product
        expect(programs.filter((p) => p.startsWith('MatMul'))).toEqual([]);
      }
      await selectBackend('cpu', { quiet: true });
    });
  }
});
