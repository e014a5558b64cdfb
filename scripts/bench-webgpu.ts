/**
 * The webgpu section of `npm run bench -- --backend webgpu --only webgpu` (also runs on another
 * backend, for comparison): the demo model (configs/demo.yaml: reduced SAM2.1 @128) or a preset at
 * a size and batch, forward and training-step (forward+backward+AdamW) img/s with asynchronous
 * readback, the process's CPU time per step (on lavapipe the adapter's threads are this process's,
 * so it compares runs on a loaded machine), peak GPU buffers, programs dispatched and bytes written
 * per step, and GPU time by op class, by kernel and by kernel and input shapes from one profiled
 * forward+backward (timestamp queries through tf.profile).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CheckedWebGPUBackend } from '../src/backends/webgpu-checked.js';
import { resolveModelChoice, type ModelChoice } from '../src/model/config.js';
import { variableGrads } from '../src/model/gradients.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { initParams, toTfParams } from '../src/model/weights.js';
import { loadConfig } from '../src/train/config.js';
import { segmentationLoss } from '../src/train/loss.js';
import { AdamW, buildParamGroups } from '../src/train/optimizer.js';

/** Op classes for the time breakdown, by tfjs kernel name. */
const OP_CLASSES: Array<[string, RegExp]> = [
  ['matmul', /MatMul/],
  ['conv', /Conv|Im2Col/],
  ['reduce', /^(Sum|Mean|Max|Min|Prod|All|Any|ArgMax|ArgMin)$/],
  ['softmax', /Softmax/],
  ['attention', /^MedtuneAttention/],
  ['layer norm', /^MedtuneLayerNorm/],
  ['layout', /^(Transpose|Reshape|Concat|Slice|StridedSlice|Pad|PadV2|Tile|Pack|Unpack|SplitV|GatherV2|GatherNd|ScatterNd|MirrorPad|Reverse|Identity|Cast|ResizeBilinear|ResizeNearestNeighbor|.*Grad)$/],
  ['elementwise', /.*/],
];

function opClass(kernel: string): string {
  return OP_CLASSES.find(([, re]) => re.test(kernel))![0];
}

export interface WebgpuBenchOptions {
  /** 'demo' (configs/demo.yaml's model) or a preset such as 'sam2.1-tiny' */
  model: string;
  /** input size (default: the model's) */
  size?: number;
  batch: number;
  iters: number;
  warmup: number;
  log: (line: string) => void;
}

export async function benchWebgpu(opts: WebgpuBenchOptions): Promise<void> {
  // on another backend (the wasm comparison) only the img/s and the profile's wall times are reported
  const counters = (tf.backend() as Partial<CheckedWebGPUBackend>).counters ?? { dispatches: NaN, bytesWritten: NaN };
  const choice: ModelChoice = opts.model === 'demo' ? loadConfig('configs/demo.yaml').model : { preset: opts.model };
  const model = new SAM2Base(resolveModelChoice({ ...choice, image_size: opts.size ?? choice.image_size }));
  const size = model.config.image_size;
  // what medtune trains: image encoder and mask decoder
  const params = toTfParams(initParams(model.paramSpecs(), 0), {
    trainable: (name) => name.startsWith('image_encoder.') || name.startsWith('sam_mask_decoder.'),
  });
  const trainableParams = new Map([...params].filter(([, v]) => v.trainable));
  const trainable = [...trainableParams.values()];
  const keyOfVar = new Map([...trainableParams].map(([k, v]) => [v.name, k]));
  const optimizer = new AdamW(trainableParams, buildParamGroups(trainableParams, { lr: 1e-5, weightDecay: 0.01 }));
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
    const { value, grads } = variableGrads(() => {
      const logits = tf.transpose(model.predictFromBoxes(ops, image, boxes()).masks, [0, 2, 3, 1]);
      const l = segmentationLoss(logits, target);
      tf.dispose([l.dice, l.bce]);
      return l.loss;
    }, trainable);
    await value.data();
    optimizer.step(new Map(Object.entries(grads).map(([name, g]) => [keyOfVar.get(name)!, g])));
    // the step is done when the updated weights are
    await trainable[trainable.length - 1].data();
    tf.dispose([value, ...Object.values(grads)]);
  };
  const timed = async (fn: () => Promise<void>) => {
    for (let i = 0; i < opts.warmup; i++) await fn();
    const { dispatches, bytesWritten } = counters;
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    for (let i = 0; i < opts.iters; i++) await fn();
    const ms = (performance.now() - t0) / opts.iters;
    const cpu = process.cpuUsage(cpu0);
    return {
      ms,
      // this process's CPU time, the software adapter's threads included: less sensitive to a loaded machine
      cpuMs: (cpu.user + cpu.system) / 1000 / opts.iters,
      imgPerSec: (1000 * B) / ms,
      dispatches: (counters.dispatches - dispatches) / opts.iters,
      mib: (counters.bytesWritten - bytesWritten) / opts.iters / 2 ** 20,
    };
  };
  const line = (what: string, r: Awaited<ReturnType<typeof timed>>) =>
    opts.log(
      `${tf.getBackend()} ${opts.model} @${size} batch ${B}, ${what}: ${r.imgPerSec.toPrecision(3)} img/s (${r.ms.toFixed(0)} ms/step, CPU ${r.cpuMs.toFixed(0)} ms/step)` +
        (Number.isNaN(r.dispatches) ? '' : `, ${r.dispatches.toFixed(0)} dispatches, ${r.mib.toFixed(0)} MiB written per step`),
    );
  line('forward', await timed(forward));
  line('training step (forward+backward+AdamW)', await timed(trainStep));
  const gpuBytes = (tf.memory() as { numBytesAllocatedInGPU?: number }).numBytesAllocatedInGPU;
  if (gpuBytes !== undefined) opts.log(`GPU buffers allocated (tfjs pool, the peak): ${(gpuBytes / 2 ** 30).toFixed(2)} GiB`);

  const profile = await tf.profile(trainStep);
  const byClass = new Map<string, { ms: number; n: number }>();
  const byKernel = new Map<string, { ms: number; n: number }>();
  const byShape = new Map<string, { ms: number; n: number }>();
  let total = 0;
  for (const k of profile.kernels) {
    const ms = Number(k.kernelTimeMs) || 0;
    total += ms;
    const shapes = `${k.name} ${k.inputShapes.map((s) => `[${s}]`).join(' ')}`;
    for (const [map, key] of [[byClass, opClass(k.name)], [byKernel, k.name], [byShape, shapes]] as const) {
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
  opts.log('top kernels by input shapes:');
  for (const [name, e] of [...byShape].sort((a, b) => b[1].ms - a[1].ms).slice(0, 12)) {
    opts.log(`  ${e.ms.toFixed(1).padStart(9)} ms  ${String(e.n).padStart(4)} calls  ${name}`);
  }
  optimizer.dispose();
  tf.dispose([image, target, ...params.values()]);
}
