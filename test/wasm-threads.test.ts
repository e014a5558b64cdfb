/**
 * The wasm backend on several threads (the package's threaded SIMD build over worker_threads,
 * src/backends/wasm-threads.ts): the thread count asked for is the one XNNPACK runs, the work of a
 * product is spread over those threads, and the golden small256 model gives the single-threaded
 * values and passes the fixture's forward and gradient checks.
 */
import * as tf from '@tensorflow/tfjs-core';
import { getThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runGoldenCheck } from '../scripts/golden-check.js';
import { selectBackend } from '../src/backend.js';
import { WASM_MAX_THREADS } from '../src/backends/wasm-threads.js';
import { readNpz } from '../src/io/npz.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { resolveModelConfig } from '../src/model/config.js';
import { FORWARD_TOL, maxRelError } from '../src/model/reference-compare.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { GOLDEN_DIR } from './helpers/golden.js';

const cores = availableParallelism();
/** at least 2, so that the threaded build runs even on a one-core machine */
const MANY = Math.min(Math.max(cores, 2), WASM_MAX_THREADS);

describe('wasm thread count', () => {
  const counts = [...new Set([1, 2, MANY])];
  it(`runs the threads asked for: ${counts.join(', ')}, and 1 again after them`, async () => {
    for (const threads of [...counts, 1]) {
      const { device } = await selectBackend('wasm', { threads, quiet: true });
      expect(tf.getBackend()).toBe('wasm');
      expect(getThreadsCount()).toBe(threads);
      expect(device).toContain(`${threads} thread${threads === 1 ? '' : 's'}`);
    }
  });

  // CI must not pass on a machine where this reads "1 thread" for want of cores
  it.skipIf(cores === 1 && !process.env.CI)(`by default runs every core (${cores}; at most ${WASM_MAX_THREADS})`, async () => {
    expect(cores, 'a one-core machine cannot show the default using every core').toBeGreaterThan(1);
    await selectBackend('wasm', { quiet: true });
    expect(getThreadsCount()).toBe(Math.min(cores, WASM_MAX_THREADS));
  });

  it('says how many threads it runs when more are asked than the build has', async () => {
    const { device } = await selectBackend('wasm', { threads: WASM_MAX_THREADS + 4, quiet: true });
    expect(getThreadsCount()).toBe(WASM_MAX_THREADS);
    expect(device).toContain(`${WASM_MAX_THREADS} threads (${WASM_MAX_THREADS + 4} asked; the threaded build runs at most ${WASM_MAX_THREADS})`);
  });
});

/** CPU time (clock ticks) of each thread of this process, by thread id (Linux /proc). */
function threadTicks(): Map<string, number> {
  const ticks = new Map<string, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks.set(tid, Number(fields[11]) + Number(fields[12])); // utime + stime
  }
  return ticks;
}

/** Per-thread CPU ticks of some 1024x1024 products, busiest first. */
function ticksOfProducts(): number[] {
  const a = tf.randomNormal([1024, 1024], 0, 1, 'float32', 1);
  tf.matMul(a, a).dispose(); // operators set up before the count starts
  const before = threadTicks();
  for (let i = 0; i < 8; i++) {
    const p = tf.matMul(a, a);
    p.dataSync();
    p.dispose();
  }
  const after = threadTicks();
  a.dispose();
  return [...after].map(([tid, t]) => t - (before.get(tid) ?? 0)).sort((x, y) => y - x);
}

describe.skipIf(process.platform !== 'linux')('wasm work on its threads (per-thread CPU time from /proc)', () => {
  it('a product on 2 threads keeps a second thread busy; on 1 thread none', async () => {
    await selectBackend('wasm', { threads: 1, quiet: true });
    const one = ticksOfProducts();
    await selectBackend('wasm', { threads: 2, quiet: true });
    const two = ticksOfProducts();
    console.log(`CPU ticks of the busiest threads, 1 thread: ${one.slice(0, 3).join(', ')}; 2 threads: ${two.slice(0, 3).join(', ')}`);
    expect(one[0]).toBeGreaterThan(20);
    expect(one[1]).toBeLessThan(0.1 * one[0]);
    // XNNPACK splits a product in even tiles; work stealing may shift some under load
    expect(two[1]).toBeGreaterThan(0.25 * two[0]);
  });
});

describe('wasm on several threads against the golden fixture', () => {
  const meta = JSON.parse(readFileSync(join(GOLDEN_DIR, 'meta.json'), 'utf8'));
  const model = new SAM2Base(resolveModelConfig(meta.model_config));
  const weights = readSafetensors(join(GOLDEN_DIR, 'weights.safetensors'));
  const inputs = readNpz(join(GOLDEN_DIR, 'inputs.npz'));
  const expected = readNpz(join(GOLDEN_DIR, 'expected.npz'));
  const nchw = (x: tf.Tensor) => tf.transpose(x, [0, 3, 1, 2]);

  /** The image embeddings and single-mask decoder outputs, on a fresh wasm backend of `threads`. */
  async function forward(threads: number): Promise<Record<string, Float32Array>> {
    await selectBackend('wasm', { threads, quiet: true });
    const params = new Map([...weights].map(([name, t]) => [name, tf.tensor(t.data, t.shape)]));
    const ops = new TfOps(params);
    const tensors = tf.tidy(() => {
      const image = tf.transpose(tf.tensor(inputs.image.data as Float32Array, inputs.image.shape), [0, 2, 3, 1]);
      const box = tf.tensor(inputs.box.data as Float32Array, inputs.box.shape);
      const { imageEmbed, highRes } = model.imageEmbeddings(ops, image);
      const dec = model.predictFromBoxes(ops, image, box, false);
      return {
        image_embed: nchw(imageEmbed),
        'high_res.0': nchw(highRes[0]),
        'high_res.1': nchw(highRes[1]),
        'single.masks': dec.masks,
        'single.iou': dec.iouPred,
        'single.tokens': dec.samTokensOut,
        'single.obj': dec.objectScoreLogits,
      };
    });
    const out = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, t.dataSync() as Float32Array]));
    tf.dispose([...params.values(), ...Object.values(tensors)]);
    return out;
  }

  it(`gives the single-threaded forward on ${MANY} threads, both within the README tolerance of the reference`, async () => {
    const single = await forward(1);
    const threaded = await forward(MANY);
    for (const [name, values] of Object.entries(threaded)) {
      const ref = expected[name].data as Float32Array;
      const vsSingle = maxRelError(values, single[name]);
      console.log(`${name.padEnd(13)} ${MANY} threads vs 1: ${vsSingle.toExponential(2)}, vs reference: ${maxRelError(values, ref).toExponential(2)}`);
      expect(vsSingle).toBeLessThanOrEqual(FORWARD_TOL);
      expect(maxRelError(values, ref)).toBeLessThanOrEqual(FORWARD_TOL);
      expect(maxRelError(single[name], ref)).toBeLessThanOrEqual(FORWARD_TOL);
    }
  });

  it(`passes every forward and gradient check of golden-check on ${MANY} threads`, async () => {
    const report = await runGoldenCheck(GOLDEN_DIR, () => {}, { backend: 'wasm', threads: MANY, sections: ['forward', 'gradients'] });
    expect(getThreadsCount()).toBe(MANY);
    expect(report.lines.filter((l) => !l.ok).map((l) => `${l.name}: ${l.what} ${l.error}`)).toEqual([]);
    expect(report.lines.filter((l) => l.name.startsWith('grad ')).length).toBe(281);
  });
});
