/**
 * `npx tsx scripts/profile-step.ts [--backend cpu|wasm] [--model small|tiny] [--threads N] [--size 256] [--batch 4] [--iters 2] [--profile]`
 *
 * Times one training step of the reduced model (the golden small256 widths, the demo's model) or,
 * with `--model tiny`, of sam2.1-tiny:
 * forward + backward of `SAM2Base.predictFromBoxes` and the Dice + BCE loss, gradients for the
 * image encoder and mask decoder (the demo's `trainable`). With --profile it also prints a
 * per-kernel breakdown of one step (tf.profile; kernel wall times, forward and backward together).
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { selectBackend, BACKEND_NAMES, type BackendName } from '../src/backend.js';
import { resolveModelConfig } from '../src/model/config.js';
import { variableGrads } from '../src/model/gradients.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { initParams, toTfParams } from '../src/model/weights.js';
import { segmentationLoss } from '../src/train/loss.js';

const args = await yargs(hideBin(process.argv))
  .option('backend', { choices: BACKEND_NAMES, default: 'wasm' as BackendName })
  .option('model', { choices: ['small', 'tiny'] as const, default: 'small' as const })
  .option('threads', { type: 'number', describe: 'wasm / tensorflow threads (default: every core)' })
  .option('size', { type: 'number', default: 256 })
  .option('batch', { type: 'number', default: 4 })
  .option('iters', { type: 'number', default: 2, describe: 'timed steps after one warm-up' })
  .option('profile', { type: 'boolean', default: false, describe: 'per-kernel breakdown of one step' })
  .option('forward', { type: 'boolean', default: false, describe: 'also time the forward alone' })
  .option('top', { type: 'number', default: 25 })
  .strict()
  .parse();

const { backend, device } = await selectBackend(args.backend, { quiet: true, threads: args.threads });
console.log(`backend ${backend} (${device})`);

const meta = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'test', 'fixtures', 'golden-small256', 'meta.json'), 'utf8'));
const config = resolveModelConfig(args.model === 'tiny' ? { image_size: args.size } : { ...meta.model_config, image_size: args.size });
const model = new SAM2Base(config);
const params = toTfParams(initParams(model.paramSpecs(), 0), {
  trainable: (name) => name.startsWith('image_encoder.') || name.startsWith('sam_mask_decoder.'),
});
const trainable = [...params.values()].filter((v) => v.trainable) as tf.Variable[];
const ops = new TfOps(params);
const B = args.batch;
const S = args.size;
const image = tf.randomNormal([B, S, S, 3], 0, 1, 'float32', 1);
const boxes = tf.tensor2d(Array.from({ length: B }, (_, i) => [S * 0.2 + i, S * 0.3, S * 0.6, S * 0.7 - i]));
const m = S / 4;
const target = tf.tidy(() => tf.cast(tf.greater(tf.randomUniform([B, m, m, 1], 0, 1, 'float32', 2), 0.5), 'float32'));

function step(): number {
  const { value, grads } = variableGrads(() => {
    const masks = model.predictFromBoxes(ops, image, boxes).masks; // (B, 1, m, m)
    const logits = tf.transpose(masks, [0, 2, 3, 1]);
    const l = segmentationLoss(logits, target);
    tf.dispose([l.dice, l.bce]);
    return l.loss;
  }, trainable);
  const v = value.dataSync()[0];
  tf.dispose([value, ...Object.values(grads)]);
  return v;
}

function forward(): void {
  tf.tidy(() => model.predictFromBoxes(ops, image, boxes).masks.dataSync());
}

/** Wall times, and the process's CPU times (user + system: less sensitive to a loaded machine). */
const cpuTimes: number[] = [];
function time(fn: () => void, iters: number): number[] {
  const out: number[] = [];
  cpuTimes.length = 0;
  for (let i = 0; i < iters; i++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    fn();
    out.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpuTimes.push((c.user + c.system) / 1000);
  }
  return out;
}

const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
const cpuNote = () => `; process CPU time ${fmt(cpuTimes)} ms (min ${Math.min(...cpuTimes).toFixed(0)})`;
let t0 = performance.now();
const loss0 = step();
console.log(`warm-up step ${(performance.now() - t0).toFixed(0)} ms, loss ${loss0.toFixed(6)}`);
if (args.forward) {
  forward();
  const fw = time(forward, args.iters);
  console.log(`forward (B=${B}, ${S}px): wall ${fmt(fw)} ms (min ${Math.min(...fw).toFixed(0)})${cpuNote()}`);
}
const steps = time(() => step(), args.iters);
console.log(`train step (B=${B}, ${S}px): wall ${fmt(steps)} ms (min ${Math.min(...steps).toFixed(0)})${cpuNote()}`);

if (args.profile) {
  t0 = performance.now();
  const info = await tf.profile(() => {
    step();
  });
  console.log(`profiled step ${(performance.now() - t0).toFixed(0)} ms (with profiler overhead)`);
  const byKernel = new Map<string, { ms: number; n: number }>();
  const byShape = new Map<string, { ms: number; n: number }>();
  let total = 0;
  for (const k of info.kernels) {
    const ms = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    total += ms;
    const e = byKernel.get(k.name) ?? { ms: 0, n: 0 };
    e.ms += ms;
    e.n++;
    byKernel.set(k.name, e);
    const sk = `${k.name} ${k.inputShapes.map((s) => `[${s}]`).join(' ')}`;
    const s = byShape.get(sk) ?? { ms: 0, n: 0 };
    s.ms += ms;
    s.n++;
    byShape.set(sk, s);
  }
  console.log(`\nkernel time total ${total.toFixed(0)} ms over ${info.kernels.length} kernels`);
  const print = (map: Map<string, { ms: number; n: number }>, title: string) => {
    console.log(`\n${title}`);
    for (const [name, e] of [...map].sort((a, b) => b[1].ms - a[1].ms).slice(0, args.top)) {
      console.log(`${e.ms.toFixed(1).padStart(9)} ms ${((100 * e.ms) / total).toFixed(1).padStart(5)}%  x${String(e.n).padEnd(5)} ${name}`);
    }
  };
  print(byKernel, 'by kernel');
  print(byShape, 'by kernel and input shapes');
}
tf.dispose([image, boxes, target, ...params.values()]);
