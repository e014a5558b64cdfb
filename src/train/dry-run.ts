/**
 * `medtune train --dry-run`: training steps of the chosen config and backend in a child process,
 * measured — s/step, tfjs's peak tensor bytes, the peak WASM heap (wasm) and the peak RSS (native
 * TensorFlow's memory is in it) — and whether that fits, before any training starts. A child,
 * because a step that does not fit aborts the wasm runtime or gets the process killed, and
 * because its peak RSS must be its own.
 */
import * as tf from '@tensorflow/tfjs-core';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { freemem, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { selectBackend } from '../backend.js';
import { configToYaml, readResolvedConfig, type TrainConfig } from './config.js';
import { setupData, setupModel } from './setup.js';
import { optimizerStep } from './train.js';

/** tfjs-backend-wasm's heap: 32-bit addresses. */
export const WASM_HEAP_LIMIT_BYTES = 4 * 2 ** 30;

export interface StepMeasurement {
  backend: string;
  device: string;
  imageSize: number;
  batchSize: number;
  checkpointActivations: boolean;
  /**
   * seconds of the last step (the first compiles kernels and grows the heap); null after one step.
   * Steps of more than 2 micro-batches run 2 (the same peak: the sum so far beside the new
   * gradients), their time scaled up.
   */
  secondsPerStep: number | null;
  /** CPU seconds of that step, all threads (on a loaded machine the fairer figure) */
  cpuSecondsPerStep: number | null;
  /** micro-batches each measured step ran */
  microBatches: number;
  /** tfjs's peak of live tensor bytes during the first step */
  tfjsPeakBytes: number;
  /** wasm: the heap's size after the steps (it grows, never shrinks: its peak); else null */
  wasmHeapBytes: number | null;
  /** the process's peak resident memory */
  peakRssBytes: number;
}

/** The wasm heap's current size (its peak so far), or null on another backend. */
export function wasmHeapBytes(): number | null {
  if (tf.getBackend() !== 'wasm') return null;
  return (tf.backend() as unknown as { wasm: { HEAPU8: Uint8Array } }).wasm.HEAPU8.buffer.byteLength;
}

/**
 * In this process: `steps` optimizer steps of `config` (weights as configured, the training data,
 * no validation, nothing saved), measured.
 */
export async function measureSteps(config: TrainConfig, steps = 2): Promise<StepMeasurement> {
  const { backend, device } = await selectBackend(config.backend, { quiet: true, threads: config.backend_threads ?? undefined });
  const runDir = mkdtempSync(join(tmpdir(), 'medtune-dry-run-'));
  // the memory of a step does not depend on which samples it draws: all of data.train, no split
  const microBatches = Math.min(config.train.grad_accum, 2);
  const measured: TrainConfig = { ...config, data: { ...config.data, val: null, val_fraction: 0 }, train: { ...config.train, grad_accum: microBatches } };
  const scale = config.train.grad_accum / microBatches;
  const run = setupModel(measured, runDir, undefined, () => {});
  const { loader } = await setupData(measured, run.modelConfig.image_size, runDir, undefined, () => {});
  const t = measured.train;
  try {
    const profile = await tf.profile(async () => {
      await optimizerStep(run, loader, measured, 0, 1, runDir);
    });
    let secondsPerStep: number | null = null;
    let cpuSecondsPerStep: number | null = null;
    for (let step = 1; step < steps; step++) {
      const start = performance.now();
      const cpuStart = process.cpuUsage();
      await optimizerStep(run, loader, measured, step, 1, runDir);
      secondsPerStep = (scale * (performance.now() - start)) / 1000;
      const cpu = process.cpuUsage(cpuStart);
      cpuSecondsPerStep = (scale * (cpu.user + cpu.system)) / 1e6;
    }
    return {
      backend,
      device,
      imageSize: run.modelConfig.image_size,
      batchSize: t.batch_size,
      checkpointActivations: t.checkpoint_activations,
      secondsPerStep,
      cpuSecondsPerStep,
      microBatches,
      tfjsPeakBytes: profile.peakBytes,
      wasmHeapBytes: wasmHeapBytes(),
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
    };
  } finally {
    await loader.close();
    run.optimizer.dispose();
    tf.dispose([...run.params.values()]);
    rmSync(runDir, { recursive: true, force: true });
  }
}

export interface DryRunResult {
  /** absent when the step failed */
  measurement?: StepMeasurement;
  /** why the step did not complete */
  failure?: string;
  fits: boolean;
  /** what to print, line by line */
  lines: string[];
}

const MARKER = 'MEDTUNE_DRY_RUN ';
const CHILD = fileURLToPath(import.meta.url);

/** The dry run: `steps` steps of `config` in a child process, and the verdict. */
export function dryRun(config: TrainConfig, steps = 2): DryRunResult {
  const dir = mkdtempSync(join(tmpdir(), 'medtune-dry-run-config-'));
  const configFile = join(dir, 'config.yaml');
  writeFileSync(configFile, configToYaml(config));
  const available = freemem();
  const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
  const child = spawnSync(process.execPath, ['--import', tsx, CHILD, configFile, String(steps)], { encoding: 'utf8', maxBuffer: 64 << 20 });
  rmSync(dir, { recursive: true, force: true });
  const line = child.stdout?.split('\n').find((l) => l.startsWith(MARKER));
  if (line) return verdict(config, JSON.parse(line.slice(MARKER.length)) as StepMeasurement, undefined, available);
  // (minified runtime source that Node prints beside an uncaught error is no message: left out)
  const output = `${child.stderr ?? ''}\n${child.stdout ?? ''}`.split('\n').filter((l) => l.length < 1000);
  const outOfMemory = output.find((l) => OUT_OF_MEMORY.test(l));
  const how = child.signal ? `killed by ${child.signal}` : `exit code ${child.status}`;
  // SIGKILL: the kernel's OOM killer (or a user); anything else is a plain error in the run
  if (!outOfMemory && child.signal !== 'SIGKILL') {
    // Node prints the throwing source line first, then `SomeError: message`
    const error = output.find((l) => /^\w*Error\b/.test(l)) ?? output.filter((l) => l.trim()).at(-1) ?? '';
    throw new Error(`the dry run's step failed (${how}): ${error.trim()}`);
  }
  return verdict(config, undefined, `${how}${outOfMemory ? `: ${outOfMemory.trim().slice(0, 300)}` : ', the system ran out of memory?'}`, available);
}

/** How a step that ran out of memory ends: the wasm runtime's abort, V8's or the allocator's messages. */
const OUT_OF_MEMORY = /wasm heap exhausted|Aborted\(|memory access out of bounds|out of memory|Array buffer allocation failed|Cannot enlarge memory|std::bad_alloc/i;

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(2)} GiB`;

/** Whether it fits, said with the figures, and the switches that cut memory when it does not (or barely does). */
export function verdict(config: TrainConfig, m: StepMeasurement | undefined, failure: string | undefined, availableBytes: number): DryRunResult {
  const t = config.train;
  const lines = [
    `dry run: ${config.model.preset} @${m?.imageSize ?? config.model.image_size ?? 'its size'}, batch ${t.batch_size}` +
      `${t.grad_accum > 1 ? ` x ${t.grad_accum} accumulated` : ''}, backend ${m ? `${m.backend} (${m.device})` : config.backend}, ` +
      `checkpoint_activations ${t.checkpoint_activations ? 'on' : 'off'}, trained: ${config.model.trainable.join(', ')}`,
  ];
  let fits: boolean;
  let tight = false;
  if (!m) {
    fits = false;
    lines.push(`does not fit: the step failed (${failure})${config.backend === 'wasm' || /abort|out of bounds/i.test(failure ?? '') ? '; the wasm heap is capped at 4 GiB' : ''}`);
  } else {
    lines.push(
      `  step: ${m.secondsPerStep !== null ? `${m.secondsPerStep.toFixed(1)} s (${m.cpuSecondsPerStep!.toFixed(1)} s of CPU)` : 'not timed (one step)'}` +
        `${m.microBatches < t.grad_accum ? ` (timed over ${m.microBatches} of its ${t.grad_accum} micro-batches)` : ''}; ` +
        `tfjs peak ${gib(m.tfjsPeakBytes)} (tensor bytes, views counted)` +
        (m.wasmHeapBytes !== null ? `; wasm heap ${gib(m.wasmHeapBytes)} of ${gib(WASM_HEAP_LIMIT_BYTES)}` : '') +
        `; peak RSS ${gib(m.peakRssBytes)} (${gib(availableBytes)} available of ${gib(totalmem())})`,
    );
    const overRam = m.peakRssBytes > availableBytes;
    // the heap grows in steps and another batch's sample may need more: keep a tenth spare
    tight = (m.wasmHeapBytes !== null && m.wasmHeapBytes > 0.9 * WASM_HEAP_LIMIT_BYTES) || m.peakRssBytes > 0.9 * availableBytes;
    fits = !overRam;
    lines.push(overRam ? `does not fit: the step's peak RSS is above the memory available` : tight ? 'fits, with under a tenth to spare' : 'fits');
  }
  if (!fits || tight) lines.push(...switches(config).map((s) => `  to use less memory: ${s}`));
  return { measurement: m, failure, fits, lines };
}

/** The config switches that cut a step's memory, those not in use already. */
function switches(config: TrainConfig): string[] {
  const t = config.train;
  const out: string[] = [];
  if (!t.checkpoint_activations) out.push('train.checkpoint_activations: true (recompute activations in the backward pass: one more forward per step)');
  if (config.model.trainable.some((p) => p === 'image_encoder' || p.startsWith('image_encoder.'))) {
    out.push('adapters: {kind: lora, rank: 8} (LoRA: the image encoder frozen but for small adapters)');
    out.push('model.trainable: [sam_mask_decoder] (freeze the image encoder)');
  }
  if (t.batch_size > 1) {
    const smaller = t.batch_size % 2 === 0 ? t.batch_size / 2 : 1;
    out.push(`train.batch_size: ${smaller} with train.grad_accum: ${(t.grad_accum * t.batch_size) / smaller} (the same effective batch)`);
  }
  if (config.backend !== 'tensorflow') out.push('backend: tensorflow (native memory, no 4 GiB cap; see medtune setup tensorflow)');
  return out;
}

// the child: `node --import tsx dry-run.ts <resolved config.yaml> <steps>`
if (process.argv[1] && resolve(process.argv[1]) === CHILD) {
  const [configFile, steps] = process.argv.slice(2);
  const m = await measureSteps(readResolvedConfig(configFile), Number(steps));
  console.log(`${MARKER}${JSON.stringify(m)}`);
  process.exit(0);
}
