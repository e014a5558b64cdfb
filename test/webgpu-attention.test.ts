/**
 * The fused WebGPU attention (src/backends/webgpu-attention.ts), which TfOps.attention runs for
 * scores over its budget, against TfOps.attention built from products and a softmax on the cpu
 * backend: the output and the gradients for q, k and v, over
 * head widths of the model (rows written out, and, at 96 on a software adapter, looped) and query /
 * key counts off the workgroup size; and a one-key case
 * computed by hand with more rows than one dispatch dimension holds. Without an adapter these
 * skip, and fail when CI is set.
 */
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { FUSED_ATTENTION, fusedAttention, hasFusedAttention } from '../src/model/fused-attention.js';
import { gradients } from '../src/model/gradients.js';
import { TfOps } from '../src/model/tf-ops.js';
import { webgpuAvailability } from './helpers/webgpu.js';

const gpu = await webgpuAvailability();

/**
 * out, dq, dk, dv of TfOps.attention with an upstream gradient r, on the active backend, scores
 * above `budget` bytes fused; `checkpointed`: inside a block recomputed in the backward pass.
 */
async function attentionAndGrads(b: number, h: number, nq: number, nk: number, d: number, seed: number, budget?: number, checkpointed = false): Promise<Float32Array[]> {
  const q = tf.randomNormal([b, h, nq, d], 0, 1, 'float32', seed);
  const k = tf.randomNormal([b, h, nk, d], 0, 1, 'float32', seed + 1);
  const v = tf.randomNormal([b, h, nk, d], 0, 1, 'float32', seed + 2);
  const r = tf.randomNormal([b, h, nq, d], 0, 1, 'float32', seed + 3);
  const ops = new TfOps(new Map(), { attentionChunkBytes: budget, checkpointActivations: checkpointed });
  const out = ops.attention(q, k, v);
  const attend = () => ops.checkpoint('block', (o, [qi, ki, vi]) => [o.attention(qi, ki, vi)], [q, k, v])[0];
  const { value, grads } = gradients(() => tf.sum(tf.mul(attend(), r)), [q, k, v]);
  const all = [out, ...(grads as tf.Tensor[])];
  const values = await Promise.all(all.map(async (t) => Float32Array.from(await t.data())));
  tf.dispose([q, k, v, r, value, ...all]);
  return values;
}

function relativeError(ours: Float32Array, ref: Float32Array): number {
  let err = 0;
  let scale = 1e-6;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(ours[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return err / scale;
}

describe.runIf(!gpu.run && process.env.CI)('webgpu attention (CI)', () => {
  it('has a WebGPU adapter', () => {
    throw new Error(gpu.reason);
  });
});

describe.runIf(gpu.run)('webgpu fused attention', () => {
  // (batch, heads, queries, keys, head width): the demo's windows, Hiera's width 96, decoder cross-attention
  for (const [b, h, nq, nk, d] of [[2, 3, 37, 29, 16], [1, 1, 70, 70, 96], [4, 8, 9, 65, 32]]) {
    it(`matches products and a softmax on cpu, output and gradients, q [${b},${h},${nq},${d}] k [${b},${h},${nk},${d}]`, async () => {
      await selectBackend('cpu', { quiet: true });
      expect(hasFusedAttention(d)).toBe(false);
      const ref = await attentionAndGrads(b, h, nq, nk, d, 5);
      await selectBackend('webgpu', { quiet: true });
      expect(hasFusedAttention(d)).toBe(true);
      const before = tf.memory().numTensors;
      const ours = await attentionAndGrads(b, h, nq, nk, d, 5, 0);
      expect(tf.memory().numTensors).toBe(before);
      ['out', 'dq', 'dk', 'dv'].forEach((name, i) => {
        expect(ours[i].length, name).toBe(ref[i].length);
        expect(relativeError(ours[i], ref[i]), name).toBeLessThan(2e-5);
      });
      await selectBackend('cpu', { quiet: true });
    });
  }

  it('gives the same gradients inside a checkpointed block (recomputed in the backward pass)', async () => {
    await selectBackend('cpu', { quiet: true });
    const ref = await attentionAndGrads(2, 2, 33, 21, 16, 9);
    await selectBackend('webgpu', { quiet: true });
    const before = tf.memory().numTensors;
    const ours = await attentionAndGrads(2, 2, 33, 21, 16, 9, 0, true);
    expect(tf.memory().numTensors).toBe(before);
    ['out', 'dq', 'dk', 'dv'].forEach((name, i) => expect(relativeError(ours[i], ref[i]), name).toBeLessThan(2e-5));
    await selectBackend('cpu', { quiet: true });
  });

  it('runs TfOps.attention fused only for scores over its budget', async () => {
    await selectBackend('webgpu', { quiet: true });
    const q = tf.randomNormal([1, 2, 40, 16]);
    const kernelsOf = async (budget: number) => (await tf.profile(() => new TfOps(new Map(), { attentionChunkBytes: budget }).attention(q, q, q))).kernelNames;
    // the scores are 1 x 2 x 40 x 40 floats, 12,800 bytes
    expect(await kernelsOf(12_800)).not.toContain(FUSED_ATTENTION);
    expect(await kernelsOf(12_799)).toContain(FUSED_ATTENTION);
    q.dispose();
    await selectBackend('cpu', { quiet: true });
  });

  it('with one key, returns v and passes dy to v alone, over more rows than 65535 workgroups of 64', async () => {
    await selectBackend('webgpu', { quiet: true });
    const rows = 65536 * 64 + 3;
    const shape = [1, rows, 1, 4];
    const q = tf.randomNormal(shape, 0, 1, 'float32', 1);
    const k = tf.randomNormal(shape, 0, 1, 'float32', 2);
    const v = tf.randomNormal(shape, 0, 1, 'float32', 3);
    const dy = tf.randomNormal(shape, 0, 1, 'float32', 4);
    // softmax over one key is 1: out = v; d out / d v = dy; q and k change nothing
    const { value, grads } = gradients(() => fusedAttention(q, k, v), [q, k, v], dy);
    const [vv, dyv, out, dq, dk, dv] = await Promise.all([v, dy, value, ...(grads as tf.Tensor[])].map((t) => t.data()));
    expect(relativeError(out as Float32Array, vv as Float32Array)).toBeLessThan(1e-6);
    expect(relativeError(dv as Float32Array, dyv as Float32Array)).toBeLessThan(1e-6);
    const largest = (x: Float32Array) => x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    expect(largest(dq as Float32Array)).toBeLessThan(1e-5);
    expect(largest(dk as Float32Array)).toBeLessThan(1e-5);
    tf.dispose([q, k, v, dy, value, ...(grads as tf.Tensor[])]);
    await selectBackend('cpu', { quiet: true });
  });
});
