/**
 * The backward pass that frees as it goes (src/model/gradients.ts): tfjs's gradients bit for bit
 * — on hand-built graphs whose gradient functions hand tensors back (identity, a shared dy, a
 * multi-output op, an input used twice) and on the golden small256 model, plain and checkpointed —
 * with a lower peak of live tensor bytes, nothing leaked, and the caller's dy left alive.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { gradients, variableGrads } from '../src/model/gradients.js';
import { goldenPass } from './helpers/golden-pass.js';

async function values(ts: Array<tf.Tensor | null>): Promise<Array<number[] | null>> {
  return Promise.all(ts.map(async (t) => (t ? Array.from(await t.data()) : null)));
}

/** A graph of awkward cases: gradients that are their dy, an input used twice, split, a dead branch. */
function awkward(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  const same = tf.add(a, 0); // Add's gradient reshapes dy: the same data
  const [left, right] = tf.split(tf.mul(same, b), 2, 1); // two outputs, one unused below
  const twice = tf.mul(left, left);
  const unused = tf.exp(right);
  unused.dispose();
  const kept = tf.clone(twice);
  return tf.sum(tf.add(tf.tanh(kept), tf.matMul(a, b, false, true)));
}

describe('gradients freed as the backward pass goes', () => {
  afterAll(async () => {
    await selectBackend('cpu', { quiet: true });
  });

  it('equals tf.grads bit for bit on a graph of aliasing gradients, with and without dy', async () => {
    await selectBackend('cpu', { quiet: true });
    const a = tf.tensor2d([[0.3, -1.2, 0.7, 2.0], [1.5, 0.1, -0.4, 0.9]]);
    const b = tf.tensor2d([[0.5, 0.25, -1.0, 0.75], [-0.6, 1.1, 0.2, -0.3]]);
    const dy = tf.scalar(2.5);
    for (const seed of [undefined, dy]) {
      const before = tf.memory().numTensors;
      const theirs = tf.grads((x: tf.Tensor, y: tf.Tensor) => awkward(x, y))([a, b], seed);
      const ours = gradients(() => awkward(a, b), [a, b], seed);
      expect(await values(ours.grads)).toEqual(await values(theirs));
      const direct = tf.tidy(() => awkward(a, b));
      expect(Array.from(await ours.value.data())).toEqual(Array.from(await direct.data()));
      tf.dispose([...theirs, ...(ours.grads as tf.Tensor[]), ours.value, direct]);
      expect(tf.memory().numTensors).toBe(before);
    }
    expect(dy.isDisposed).toBe(false);
    expect(Array.from(await dy.data())).toEqual([2.5]);
    tf.disposeVariables();
  });

  it('gives null for an x the result does not depend on, or an error naming the problem', () => {
    const x = tf.ones([2]);
    const free = tf.ones([2]);
    const { value, grads } = gradients(() => tf.sum(tf.square(x)), [x, free], undefined, true);
    expect(grads[1]).toBeNull();
    expect(() => gradients(() => tf.sum(x), [free])).toThrow(/does not depend on the tensors asked for/);
    const v = tf.variable(tf.ones([2]));
    expect(() => variableGrads(() => tf.sum(x) as tf.Scalar, [v])).toThrow(/depends on none of the variables/);
    expect(() => variableGrads(() => tf.mul(v, 2) as unknown as tf.Scalar, [v])).toThrow(/must return a scalar, got shape \[2\]/);
    tf.dispose([x, free, value, grads[0]!, v]);
  });

  it('frees a deep chain as it goes: the peak is lower and nothing leaks', async () => {
    const weights = Array.from({ length: 24 }, (_, i) => tf.variable(tf.mul(tf.randomNormal([64, 64], 0, 1, 'float32', i), 0.1)));
    const input = tf.randomNormal([256, 64], 0, 1, 'float32', 99);
    // a layer's tidy frees what its backward does not need, as model code does
    const loss = () => tf.mean(weights.reduce((h, w) => tf.tidy(() => tf.tanh(tf.matMul(h, w))), input)) as tf.Scalar;
    // the peak above what lived before
    const peak = async (differentiate: typeof variableGrads) => {
      let result: ReturnType<typeof variableGrads> | undefined;
      const start = tf.memory().numBytes;
      const profile = await tf.profile(() => {
        result = differentiate(loss, weights);
      });
      const { value, grads } = result!;
      const flat = [value, ...weights.map((w) => grads[w.name])];
      const numbers = await values(flat);
      tf.dispose(flat);
      return { peak: profile.peakBytes - start, numbers };
    };
    const before = tf.memory().numTensors;
    const theirs = await peak(tf.variableGrads);
    const ours = await peak(variableGrads);
    expect(tf.memory().numTensors).toBe(before);
    expect(ours.numbers).toEqual(theirs.numbers);
    console.log(`24-layer chain: tfjs peak ${(theirs.peak / 2 ** 20).toFixed(2)} MiB with tf.variableGrads, ${(ours.peak / 2 ** 20).toFixed(2)} MiB freeing`);
    // tfjs holds, by the end, the saved tensors and all 72 gradients; this, only the forward's tensors (bytes
    // are counted per tensor, the clones each op saves included: the real saving is larger)
    expect(ours.peak).toBeLessThan(0.8 * theirs.peak);
    tf.dispose([...weights, input]);
  });

  // (the freeing is backend-blind; wasm runs the model fastest)
  for (const backend of ['wasm'] as const) {
    it(`equals tf.variableGrads bit for bit on the golden small256 model, plain and checkpointed, with a lower peak (${backend})`, async () => {
      await selectBackend(backend, { quiet: true });
      for (const checkpointed of [false, true]) {
        const theirs = await goldenPass(checkpointed);
        const before = tf.memory().numTensors;
        const ours = await goldenPass(checkpointed, variableGrads);
        expect(tf.memory().numTensors).toBe(before);
        expect(ours.loss).toBe(theirs.loss);
        expect([...ours.grads.keys()].sort()).toEqual([...theirs.grads.keys()].sort());
        for (const [name, g] of theirs.grads) expect(ours.grads.get(name), name).toEqual(g);
        const mib = (b: number) => (b / 2 ** 20).toFixed(1);
        console.log(`${backend}${checkpointed ? ', checkpointed' : ''}: tfjs peak ${mib(theirs.peakBytes)} MiB with tf.variableGrads, ${mib(ours.peakBytes)} MiB freeing`);
        // measured: 464 -> 279 MiB plain, 76 -> 59 MiB checkpointed (the model's weights included)
        expect(ours.peakBytes).toBeLessThan((checkpointed ? 0.9 : 0.7) * theirs.peakBytes);
      }
    });
  }
});
