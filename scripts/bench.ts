/**
 * `npm run bench [-- --backend cpu|wasm|... --sizes 256,512 --iters 2 --only model,train,onnx,data]`
 *
 * Prints img/s of the full sam2.1-tiny image path (image encoder + prompt encoder + mask decoder),
 * forward and forward+backward, per image at each size on the selected backend; training img/s
 * (real optimizer steps of `medtune train`) for the demo and for sam2.1-tiny at each size;
 * onnxruntime-node latencies of the exported graphs; data-pipeline samples/s.
 * `--only webgpu` (with `--backend webgpu`): the demo model's forward and forward+backward img/s,
 * dispatches and bytes written per step, and GPU time by op class (tf.profile, timestamp queries).
 */
import * as tf from '@tensorflow/tfjs-core';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { selectBackend, BACKEND_NAMES, type BackendName } from '../src/backend.js';
import { measureLoaderThroughput } from '../src/data/loader.js';
import { resolveModelConfig, SAM2_1_TINY } from '../src/model/config.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { initParams, toTfParams } from '../src/model/weights.js';
import { benchOnnx } from '../src/onnx/bench.js';
import { loadConfig } from '../src/train/config.js';
import { train } from '../src/train/train.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = await yargs(hideBin(process.argv))
  .option('backend', { choices: BACKEND_NAMES, default: 'auto' as BackendName })
  .option('sizes', { type: 'string', default: '256,512', describe: 'image sizes for the model timings' })
  .option('iters', { type: 'number', default: 2, describe: 'timed repetitions' })
  .option('warmup', { type: 'number', default: 1, describe: 'untimed repetitions first (kernels compiled, buffers allocated)' })
  .option('only', { type: 'string', default: 'model,train,onnx,data', describe: 'sections to run: model,train,onnx,data,webgpu' })
  .option('train-steps', { type: 'number', default: 3, describe: 'timed optimizer steps per training benchmark' })
  .option('batch', { type: 'number', default: 8, describe: 'batch of the webgpu section (the demo trains at 8)' })
  .option('webgpu-model', { type: 'string', default: 'demo', describe: "webgpu section's model: demo or a preset (sam2.1-tiny)" })
  .option('webgpu-size', { type: 'number', describe: "webgpu section's input size (default: the model's)" })
  .strict()
  .parse();
const sections = new Set(args.only.split(','));

function timeIt(iters: number, fn: () => void): number {
  for (let i = 0; i < args.warmup; i++) fn();
  const start = performance.now();
  for (let i = 0; i < iters; i++) fn();
  return (performance.now() - start) / iters;
}

/** Forward and forward+backward of the image path at one resolution, batch 1. */
function benchImagePath(size: number, iters: number): { forwardMs: number; trainMs: number } {
  const config = resolveModelConfig({ image_size: size }, SAM2_1_TINY);
  const model = new SAM2Base(config);
  const params = toTfParams(initParams(model.paramSpecs(), 0), {
    trainable: (name) => name.startsWith('image_encoder.') || name.startsWith('sam_mask_decoder.'),
  });
  const ops = new TfOps(params);
  const image = tf.randomNormal([1, size, size, 3], 0, 1, 'float32', 1);
  const boxes = tf.tensor2d([[size * 0.25, size * 0.3, size * 0.6, size * 0.7]]);
  const forwardMs = timeIt(iters, () => {
    tf.tidy(() => model.predictFromBoxes(ops, image, boxes).masks.dataSync());
  });
  const trainable = [...params.values()].filter((v) => v.trainable);
  const trainMs = timeIt(iters, () => {
    const { value, grads } = tf.variableGrads(() => tf.mean(model.predictFromBoxes(ops, image, boxes).masks) as tf.Scalar, trainable);
    value.dataSync();
    tf.dispose([value, ...Object.values(grads)]);
  });
  tf.dispose([image, boxes, ...params.values()]);
  return { forwardMs, trainMs };
}

/**
 * img/s of real `medtune train` steps (data loading, forward, backward, AdamW) from a config, with
 * validation and checkpoints off; the first step (warm-up) is not timed.
 */
async function benchTraining(configPath: string, overrides: string[], steps: number): Promise<number> {
  const runDir = mkdtempSync(join(tmpdir(), 'medtune-bench-'));
  const config = loadConfig(configPath, {
    overrides: [...overrides, `train.max_steps=${steps + 1}`, 'train.val_every=0', 'train.save_every=0', 'train.val_at_start=false', 'data.val=null'],
  });
  const stepEnds: number[] = [];
  try {
    await train({ config, runDir, quiet: true, handleSignals: false, onStep: () => stepEnds.push(performance.now()) });
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
  const seconds = (stepEnds[stepEnds.length - 1] - stepEnds[0]) / 1000;
  return (steps * config.train.batch_size * config.train.grad_accum) / seconds;
}

const { backend, device } = await selectBackend(args.backend);
console.log(`backend ${backend} (${device})`);

if (sections.has('model')) {
  for (const size of args.sizes.split(',').map(Number)) {
    const { forwardMs, trainMs } = benchImagePath(size, args.iters);
    console.log(
      `sam2.1-tiny image path @${size}: forward ${forwardMs.toFixed(0)} ms/img (${(1000 / forwardMs).toFixed(3)} img/s), ` +
        `forward+backward ${trainMs.toFixed(0)} ms/img (${(1000 / trainMs).toFixed(3)} img/s)`,
    );
  }
}

if (sections.has('train')) {
  const demo = await benchTraining('configs/demo.yaml', [`backend=${backend}`], args['train-steps']);
  console.log(`training, demo config (reduced model @128, batch 8): ${demo.toFixed(2)} img/s`);
  for (const size of args.sizes.split(',').map(Number)) {
    const tiny = await benchTraining(
      'configs/ct-lesion-small.yaml',
      [`backend=${backend}`, 'model.config=null', `model.image_size=${size}`, 'train.batch_size=1'],
      args['train-steps'],
    );
    console.log(`training, sam2.1-tiny @${size} (batch 1, real CT slices): ${tiny.toFixed(3)} img/s`);
  }
}

if (sections.has('webgpu')) {
  const { benchWebgpu } = await import('./bench-webgpu.js');
  await benchWebgpu({
    model: args['webgpu-model'],
    size: args['webgpu-size'],
    batch: args.batch,
    iters: args.iters,
    warmup: args.warmup,
    log: (line) => console.log(line),
  });
}

if (sections.has('onnx')) {
  console.log('onnxruntime-node (CPU), sam2.1-tiny, batch 1, 2 threads:');
  await benchOnnx({ imageSizes: [512, 1024], threads: 2, log: (line) => console.log(`  ${line}`) });
}

if (sections.has('data')) {
  for (const imageSize of [256, 512]) {
    const r = await measureLoaderThroughput({ files: 'data/ct-lesion-npz', imageSize, batchSize: 8, augment: true });
    console.log(`data pipeline @${imageSize} (real CT, augmented): ${r.samplesPerSec.toFixed(0)} samples/s`);
  }
}
