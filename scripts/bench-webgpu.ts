/**
 * The webgpu section of `npm run bench -- --backend webgpu --only webgpu` (also runs on another
 * backend, for comparison): the demo model
 * (configs/demo.yaml: reduced SAM2.1 @128) at a batch, forward and forward+backward img/s with
 * asynchronous readback, programs dispatched and bytes written per step, and GPU time by op class
 * from one profiled forward+backward (timestamp queries through tf.profile).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CheckedWebGPUBackend } from '../src/backends/webgpu-checked.js';
import { resolveModelChoice } from '../src/model/config.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { initParams, toTfParams } from '../src/model/weights.js';
import { loadConfig } from '../src/train/config.js';
import { segmentationLoss } from '../src/train/loss.js';

/** Op classes for the time breakdown, by tfjs kernel name. */
const OP_CLASSES: Array<[string, RegExp]> = [
  ['matmul', /MatMul/],
  ['conv', /Conv|Im2Col/],
  ['reduce', /^(Sum|Mean|Max|Min|Prod|All|Any|ArgMax|ArgMin)$/],
  ['softmax', /Softmax/],
  ['layout', /^(Transpose|Reshape|Concat|Slice|StridedSlice|Pad|PadV2|Tile|Pack|Unpack|SplitV|GatherV2|GatherNd|ScatterNd|MirrorPad|Reverse|Identity|Cast|ResizeBilinear|ResizeNearestNeighbor|.*Grad)$/],
  ['elementwise', /.*/],
];

function opClass(kernel: string): string {
  return OP_CLASSES.find(([, re]) => re.test(kernel))![0];
}

export async function benchWebgpu(opts: { batch: number; iters: number; warmup: number; log: (line: string) => void }): Promise<void> {
  // on another backend (the wasm comparison) only the img/s and the profile's wall times are reported
  const counters = (tf.backend() as Partial<CheckedWebGPUBackend>).counters ?? { dispatches: NaN, bytesWritten: NaN };
  const config = loadConfig('configs/demo.yaml');
  const model = new SAM2Base(resolveModelChoice(config.model));
  const size = model.config.image_size;
  const params = toTfParams(initParams(model.paramSpecs(), 0), {
    trainable: (name) => config.model.trainable.some((p) => name.startsWith(`${p}.`)),
  });
  const trainable = [...params.values()].filter((v) => v.trainable);
  const ops = new TfOps(params);
  const B = opts.batch;
  const image = tf.randomNormal([B, size, size, 3], 0, 1, 'float32', 1);
  const boxes = () => tf.tensor2d(Array.from({ length: B }, (_, i) => [size * 0.2 + i, size * 0.3, size * 0.6, size * 0.7 - i]));
  const m = size / 4;
  const target = tf.tidy(() => tf.cast(tf.greater(tf.randomUniform([B, m, m, 1], 0, 1, 'float32', 2), 0.5), 'float32'));

  const forward = async () => {
    const masks = tf.tidy(() => model.predictFromBoxes(ops, image, boxes()).masks);
    await masks.data();
    masks.dispose();
  };
  const trainStep = async () => {
    const { value, grads } = tf.variableGrads(() => {
      const logits = tf.transpose(model.predictFromBoxes(ops, image, boxes()).masks, [0, 2, 3, 1]);
      const l = segmentationLoss(logits, target);
      tf.dispose([l.dice, l.bce]);
      return l.loss;
    }, trainable);
    // every gradient is read back, as the optimizer step would wait for them
    await Promise.all([value, ...Object.values(grads)].map((t) => t.data()));
    tf.dispose([value, ...Object.values(grads)]);
  };
  const timed = async (fn: () => Promise<void>) => {
    for (let i = 0; i < opts.warmup; i++) await fn();
    const { dispatches, bytesWritten } = counters;
    const t0 = performance.now();
    for (let i = 0; i < opts.iters; i++) await fn();
    const ms = (performance.now() - t0) / opts.iters;
    return {
      ms,
      imgPerSec: (1000 * B) / ms,
      dispatches: (counters.dispatches - dispatches) / opts.iters,
      mib: (counters.bytesWritten - bytesWritten) / opts.iters / 2 ** 20,
    };
  };
  const line = (what: string, r: Awaited<ReturnType<typeof timed>>) =>
    opts.log(
      `${tf.getBackend()} demo model @${size} batch ${B}, ${what}: ${r.imgPerSec.toFixed(2)} img/s (${r.ms.toFixed(0)} ms/step), ` +
        `${r.dispatches.toFixed(0)} dispatches, ${r.mib.toFixed(0)} MiB written per step`,
    );
  line('forward', await timed(forward));
  line('forward+backward', await timed(trainStep));

  const profile = await tf.profile(trainStep);
  const byClass = new Map<string, { ms: number; n: number }>();
  const byKernel = new Map<string, { ms: number; n: number }>();
  let total = 0;
  for (const k of profile.kernels) {
    const ms = Number(k.kernelTimeMs) || 0;
    total += ms;
    for (const [map, key] of [[byClass, opClass(k.name)], [byKernel, k.name]] as const) {
      const e = map.get(key) ?? { ms: 0, n: 0 };
      e.ms += ms;
      e.n++;
      map.set(key, e);
    }
  }
  opts.log(`kernel time by op class, one forward+backward (${total.toFixed(0)} ms in ${profile.kernels.length} kernels):`);
  for (const [name, e] of [...byClass].sort((a, b) => b[1].ms - a[1].ms)) {
    opts.log(`  ${name.padEnd(12)} ${e.ms.toFixed(1).padStart(9)} ms ${((100 * e.ms) / total).toFixed(1).padStart(5)}%  ${e.n} kernels`);
  }
  opts.log('top kernels:');
  for (const [name, e] of [...byKernel].sort((a, b) => b[1].ms - a[1].ms).slice(0, 12)) {
    opts.log(`  ${name.padEnd(28)} ${e.ms.toFixed(1).padStart(9)} ms  ${e.n} calls`);
  }
  tf.dispose([image, target, ...params.values()]);
}
