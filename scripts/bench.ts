/**
 * `npm run bench [-- --backend cpu|wasm|... --sizes 256,512 --iters 2 --only model,train,onnx,data --threads 1,2,all]`
 *
 * Prints img/s of the full sam2.1-tiny image path (image encoder + prompt encoder + mask decoder),
 * forward and forward+backward, per image at each size on the selected backend; training img/s
 * (real optimizer steps of `medtune train`) for the demo and for sam2.1-tiny at each size;
 * onnxruntime-node latencies of the exported graphs; data-pipeline samples/s; the sam2.1-tiny
 * training step @256 batch 1 at each thread count of `--threads` (wasm, tensorflow).
 * `--only webgpu` (with `--backend webgpu`): the demo model's forward and forward+backward img/s,
 * dispatches and bytes written per step, and GPU time by op class (tf.profile, timestamp queries).
 * `--only cache`: decoder-only fine-tuning of the demo with the embedding cache, epoch 1 against epoch 2.
 */
import * as tf from '@tensorflow/tfjs-core';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { selectBackend, BACKEND_NAMES, type BackendName } from '../src/backend.js';
import { measureLoaderThroughput } from '../src/data/loader-bench.js';
import { resolveModelConfig, SAM2_1_TINY } from '../src/model/config.js';
import { variableGrads } from '../src/model/gradients.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { initParams, toTfParams } from '../src/model/weights.js';
import { benchOnnx } from '../src/onnx/bench.js';
import { loadConfig } from '../src/train/config.js';
import { openEmbeddingCache } from '../src/train/embedding-cache.js';
import { setupData, setupModel } from '../src/train/setup.js';
import { wasmHeapBytes } from '../src/train/dry-run.js';
import { optimizerStep, train } from '../src/train/train.js';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, freemem, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';

const args = await yargs(hideBin(process.argv))
  .option('backend', { choices: BACKEND_NAMES, default: 'auto' as BackendName })
  .option('sizes', { type: 'string', default: '256,512', describe: 'image sizes for the model timings' })
  .option('iters', { type: 'number', default: 2, describe: 'timed repetitions' })
  .option('warmup', { type: 'number', default: 1, describe: 'untimed repetitions first (kernels compiled, buffers allocated)' })
  .option('only', { type: 'string', default: 'model,train,steps,cache,threads,onnx,data', describe: 'sections to run: model,train,steps,cache,threads,onnx,data,webgpu' })
  .option('threads', { type: 'string', default: '1,2,all', describe: "threads section: the backend's thread counts (all: every core)" })
  .option('train-steps', { type: 'number', default: 3, describe: 'timed optimizer steps per training benchmark' })
  .option('step-child', { type: 'string', hidden: true, describe: 'internal: one training-step figure (SIZExBATCH) in this process' })
  .option('step-threads', { type: 'number', hidden: true, describe: "internal: the step figure's backend threads (default all cores)" })
  .option('set', { type: 'string', array: true, default: [] as string[], describe: "config overrides of the training sections, e.g. 'train.checkpoint_activations=true' or 'adapters={kind: lora, targets: [\"*.attn.qkv\"]}'" })
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
    const { value, grads } = variableGrads(() => tf.mean(model.predictFromBoxes(ops, image, boxes).masks) as tf.Scalar, trainable);
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
async function benchTraining(configPath: string, overrides: string[], steps: number, onStep?: (step: number) => void): Promise<number> {
  const runDir = mkdtempSync(join(tmpdir(), 'medtune-bench-'));
  const config = loadConfig(configPath, {
    overrides: [...overrides, ...args.set, `train.max_steps=${steps + 1}`, 'train.val_every=0', 'train.save_every=0', 'train.val_at_start=false', 'data.val=null'],
  });
  const stepEnds: number[] = [];
  try {
    await train({
      config,
      runDir,
      quiet: true,
      handleSignals: false,
      onStep: ({ step }) => {
        stepEnds.push(performance.now());
        onStep?.(step);
      },
    });
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
  const seconds = (stepEnds[stepEnds.length - 1] - stepEnds[0]) / 1000;
  return (steps * config.train.batch_size * config.train.grad_accum) / seconds;
}

if (args['step-child']) await stepFigure(args['step-child']);

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

if (sections.has('cache')) {
  await benchEmbeddingCache(backend, 'decoder-only demo (@128, batch 8)', []);
  // the full-size encoder, on three of the demo's volumes at 256
  await benchEmbeddingCache(backend, 'decoder-only sam2.1-tiny (@256, batch 4, 3 volumes)', [
    'model.config=null',
    'model.image_size=256',
    'train.batch_size=4',
    'data.generate.train_volumes=3',
  ]);
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

if (sections.has('steps')) await benchTrainingSteps(backend);
if (sections.has('threads')) benchThreads(backend);

// ------------------------------------------------------------------------------------------
// Training steps of sam2.1-tiny at 256/512 (batch 1 and 4) and 1024 (batch 1): img/s, peak RSS
// and ops dispatched per step. Each figure runs in a fresh process (`--step-child`) so that its
// peak RSS is its own.

interface StepFigure {
  size: number;
  batch: number;
  imgPerS: number;
  /** CPU seconds (all threads) per timed step: a figure that holds up better than img/s on a shared machine */
  cpuSPerStep: number;
  peakRssMiB: number;
  /** wasm: the heap's size after the steps (its peak) */
  wasmHeapMiB: number | null;
  /** tfjs kernels run per step (forward, backward, optimizer) */
  kernels: number;
  /** TensorFlow eager ops per step (tensorflow backend only: its C API calls) */
  tfOps?: number;
  top: string;
}

/** Counts kernel dispatches through the engine and, on tensorflow, ops through the addon's executeOp. */
function countDispatches(): { reset(): void; snapshot(): { kernels: Map<string, number>; tfOps?: Map<string, number> } } {
  let kernels = new Map<string, number>();
  let tfOps: Map<string, number> | undefined;
  const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  const engine = tf.engine() as unknown as { runKernel: (name: string, ...rest: unknown[]) => unknown };
  const runKernel = engine.runKernel.bind(engine);
  engine.runKernel = (name, ...rest) => {
    bump(kernels, name);
    return runKernel(name, ...rest);
  };
  const backend = tf.backend() as unknown as { binding?: Record<string, unknown> };
  if (backend.binding) {
    // the addon's functions are read-only: give the backend a binding whose executeOp counts
    const native = backend.binding;
    const counting: Record<string, unknown> = {};
    for (const key of Object.getOwnPropertyNames(native)) {
      const v = native[key];
      counting[key] = typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(native) : v;
    }
    const executeOp = native.executeOp as (name: string, ...rest: unknown[]) => unknown;
    counting.executeOp = (name: string, ...rest: unknown[]) => {
      bump(tfOps!, name);
      return executeOp.call(native, name, ...rest);
    };
    backend.binding = counting;
    tfOps = new Map();
  }
  return {
    reset() {
      kernels = new Map();
      if (tfOps) tfOps = new Map();
    },
    snapshot: () => ({ kernels: new Map(kernels), tfOps: tfOps && new Map(tfOps) }),
  };
}

function sumOf(m: Map<string, number>): number {
  return [...m.values()].reduce((a, b) => a + b, 0);
}

/** The child: one figure, printed as a JSON line. */
async function stepFigure(spec: string): Promise<never> {
  const [size, batch] = spec.split('x').map(Number);
  const threads = args['step-threads'];
  await selectBackend(args.backend, { quiet: true, threads });
  const counter = countDispatches();
  let counted: ReturnType<typeof counter.snapshot> | undefined;
  let cpuStart: NodeJS.CpuUsage | undefined;
  let cpuUsed: NodeJS.CpuUsage | undefined;
  const steps = Math.max(args['train-steps'], 1);
  const imgPerS = await benchTraining(
    'configs/ct-lesion-small.yaml',
    [
      `backend=${args.backend}`,
      'model.config=null',
      `model.image_size=${size}`,
      `train.batch_size=${batch}`,
      ...(threads ? [`backend_threads=${threads}`] : []),
    ],
    steps,
    // step 2 (the first timed one) is counted; CPU time from the end of step 1 to the last
    (step) => {
      if (step === 1) {
        counter.reset();
        cpuStart = process.cpuUsage();
      } else if (step === 2) counted = counter.snapshot();
      cpuUsed = process.cpuUsage(cpuStart);
    },
  );
  const ops = counted!.tfOps ?? counted!.kernels;
  const top = [...ops.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, n]) => `${k} ${n}`).join(', ');
  const heap = wasmHeapBytes();
  const figure: StepFigure = {
    size,
    batch,
    imgPerS,
    cpuSPerStep: (cpuUsed!.user + cpuUsed!.system) / 1e6 / steps,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
    wasmHeapMiB: heap === null ? null : heap / 2 ** 20,
    kernels: sumOf(counted!.kernels),
    tfOps: counted!.tfOps && sumOf(counted!.tfOps),
    top,
  };
  console.log(`STEP ${JSON.stringify(figure)}`);
  process.exit(0);
}

function runStepFigure(backend: string, size: number, batch: number, threads?: number): StepFigure | string {
  const childArgs = ['--backend', backend, '--step-child', `${size}x${batch}`, '--train-steps', String(args['train-steps']), ...args.set.flatMap((o) => ['--set', o])];
  if (threads) childArgs.push('--step-threads', String(threads));
  const r = spawnSync(process.execPath, [...process.execArgv, process.argv[1], ...childArgs], {
    encoding: 'utf8',
    maxBuffer: 16 << 20,
  });
  const line = r.stdout?.split('\n').find((l) => l.startsWith('STEP '));
  if (line) return JSON.parse(line.slice(5)) as StepFigure;
  const why = `${r.stderr ?? ''}${r.stdout ?? ''}`.split('\n').filter((l) => /error|abort|heap/i.test(l)).slice(0, 2).join(' ');
  return `failed (${r.signal ? `killed by ${r.signal}` : `exit ${r.status}`}${why ? `: ${why.slice(0, 300)}` : ''})`;
}

async function benchTrainingSteps(backend: string): Promise<void> {
  const gib = (mib: number) => (mib / 1024).toFixed(2);
  const say = (size: number, batch: number, f: StepFigure | string) =>
    console.log(
      typeof f === 'string'
        ? `training step, sam2.1-tiny @${size} batch ${batch}: ${f}`
        : `training step, sam2.1-tiny @${size} batch ${batch}: ${f.imgPerS.toFixed(3)} img/s (${((1000 * batch) / f.imgPerS).toFixed(0)} ms/step, ${f.cpuSPerStep.toFixed(1)} CPU s/step), ` +
            `peak RSS ${gib(f.peakRssMiB)} GiB${f.wasmHeapMiB !== null ? `, wasm heap ${gib(f.wasmHeapMiB)} GiB` : ''}, ${f.kernels} tfjs kernels${f.tfOps !== undefined ? ` / ${f.tfOps} TensorFlow ops` : ''} per step; most: ${f.top}`,
    );
  console.log(`training steps in fresh processes (${args['train-steps']} timed after 1 warm-up${args.set.length > 0 ? `, with ${args.set.join(' ')}` : ''}; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')} on ${availableParallelism()} cores):`);
  let rss512: number | undefined;
  for (const size of [256, 512]) {
    for (const batch of [1, 4]) {
      const f = runStepFigure(backend, size, batch);
      say(size, batch, f);
      if (typeof f !== 'string' && size === 512 && batch === 1) rss512 = f.peakRssMiB;
    }
  }
  // @1024 holds 4x the activations of @512: run it only where that fits in the memory free now
  const needMiB = rss512 !== undefined ? 4 * rss512 : undefined;
  const freeMiB = freemem() / 2 ** 20;
  if (needMiB === undefined) console.log('training step, sam2.1-tiny @1024 batch 1: not run (no @512 figure to size it from)');
  else if (needMiB > freeMiB) {
    console.log(`training step, sam2.1-tiny @1024 batch 1: not run: needs about ${gib(needMiB)} GiB (4x the @512 peak RSS), ${gib(freeMiB)} GiB free here`);
  } else say(1024, 1, runStepFigure(backend, 1024, 1));
}

// ------------------------------------------------------------------------------------------
// Decoder-only fine-tuning with the embedding cache (configs/demo-decoder-only.yaml from a seeded
// init, validation off): the steps of epoch 1 (encoder run, entries written) against those of
// epoch 2 (entries read back), each step timed as `medtune train` runs it.

async function benchEmbeddingCache(backend: string, label: string, overrides: string[]): Promise<void> {
  const runDir = mkdtempSync(join(tmpdir(), 'medtune-bench-cache-'));
  const config = loadConfig('configs/demo-decoder-only.yaml', {
    overrides: [`backend=${backend}`, 'model.checkpoint=null', 'data.val=null', `data.train=${join(runDir, 'data')}`, ...overrides],
  });
  const quiet = () => undefined;
  const run = setupModel(config, runDir, undefined, quiet);
  try {
    run.embeddingCache = await openEmbeddingCache(config, run, runDir, quiet);
    const { loader } = await setupData(config, run.modelConfig.image_size, runDir, undefined, quiet);
    // whole batches of each epoch (a batch across the boundary counts to epoch 2)
    const perEpoch = Math.floor(loader.size / config.train.batch_size);
    // wall and CPU time (this process, all threads) of each step: on a shared machine the CPU time is the steadier figure
    const wallMs: number[] = [];
    const cpuMs: number[] = [];
    for (let step = 0; step < 2 * perEpoch + 1; step++) {
      const start = performance.now();
      const cpu = process.cpuUsage();
      await optimizerStep(run, loader, config, step, 1, runDir);
      const used = process.cpuUsage(cpu);
      cpuMs.push((used.user + used.system) / 1000);
      wallMs.push(performance.now() - start);
    }
    await loader.close();
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    const compare = (ms: number[]) => {
      const epoch1 = sum(ms.slice(0, perEpoch));
      const epoch2 = sum(ms.slice(perEpoch + 1));
      return `epoch 1 ${(epoch1 / 1000).toFixed(2)} s, epoch 2 ${(epoch2 / 1000).toFixed(2)} s: ${(epoch1 / epoch2).toFixed(1)}x`;
    };
    const stats = run.embeddingCache!.stats;
    console.log(
      `embedding cache, ${label}, ${perEpoch} steps an epoch (${stats.misses} slices encoded, ${stats.hits} read back; ` +
        `load average ${loadavg().map((l) => l.toFixed(1)).join(' ')} on ${availableParallelism()} cores): wall ${compare(wallMs)}; CPU ${compare(cpuMs)}`,
    );
  } finally {
    run.optimizer.dispose();
    tf.dispose([...run.params.values()]);
    rmSync(runDir, { recursive: true, force: true });
  }
}

/** The sam2.1-tiny training step @256 batch 1 at each thread count of `--threads`, each in a fresh process. */
function benchThreads(backend: string): void {
  if (backend !== 'wasm' && backend !== 'tensorflow') {
    console.log(`training step by threads: not run (the ${backend} backend has no thread count to set)`);
    return;
  }
  const cores = availableParallelism();
  const counts = [...new Set(args.threads.split(',').map((t) => (t === 'all' ? cores : Number(t))))];
  if (counts.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--threads: positive integers or 'all', got '${args.threads}'`);
  console.log(`training step, sam2.1-tiny @256 batch 1 by threads (${cores} cores, load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}):`);
  let oneThread: number | undefined;
  for (const threads of counts) {
    const f = runStepFigure(backend, 256, 1, threads);
    const label = `  ${threads} thread${threads === 1 ? '' : 's'}${threads === cores ? ' (all cores)' : ''}`;
    if (typeof f === 'string') {
      console.log(`${label}: ${f}`);
      continue;
    }
    if (threads === 1) oneThread = f.imgPerS;
    const speedup = oneThread && threads > 1 ? `, ${(f.imgPerS / oneThread).toFixed(2)}x 1 thread` : '';
    console.log(`${label}: ${f.imgPerS.toFixed(3)} img/s (${(1000 / f.imgPerS).toFixed(0)} ms/step)${speedup}`);
  }
}
