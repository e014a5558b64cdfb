/** Native TensorFlow: @tensorflow/tfjs-node-gpu (only with a CUDA GPU) or @tensorflow/tfjs-node. */
import * as tf from '@tensorflow/tfjs-core';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { activate, cpuDevice, isNotInstalled, type BackendChoice } from './common.js';

/** Names of the NVIDIA GPUs the kernel driver reports (Linux), empty when none. */
export function cudaGpus(): string[] {
  const dir = '/proc/driver/nvidia/gpus';
  if (!existsSync(dir)) return [];
  try {
    return readdirSync(dir).map((id) => {
      const info = readFileSync(join(dir, id, 'information'), 'utf8');
      return /Model:\s*(.+)/.exec(info)?.[1]?.trim() ?? `NVIDIA GPU ${id}`;
    });
  } catch {
    return [];
  }
}

/** A GPU as TensorFlow reports it when it creates the device. */
export interface TensorflowGpu {
  index: number;
  name: string;
  computeCapability: string;
  memoryMB: number;
  pciBusId: string;
}

/** The GPUs in TensorFlow's "Created device ... GPU:0 with N MB memory: -> device: 0, name: ..." log lines. */
export function parseTensorflowGpus(log: string): TensorflowGpu[] {
  const re = /device:GPU:(\d+) with (\d+) MB memory:\s*->\s*device: \d+, name: (.+?), pci bus id: ([^,]+), compute capability: ([\d.]+)/g;
  return [...log.matchAll(re)].map((m) => ({ index: Number(m[1]), memoryMB: Number(m[2]), name: m[3], pciBusId: m[4], computeCapability: m[5] }));
}

export interface TensorflowPackageProbe {
  ok: boolean;
  tfVersion?: string;
  /** the GPUs TensorFlow created devices for (tfjs-node-gpu) */
  gpus: TensorflowGpu[];
  error?: string;
}

/**
 * Loads a tfjs-node package (a name, or the path of a copy) in a child process, runs one op and
 * reads libtensorflow's version and the GPUs it set up; never loads anything into this process.
 */
export function probeTensorflowPackage(pkg: string, cwd: string = process.cwd(), env: NodeJS.ProcessEnv = process.env): TensorflowPackageProbe {
  const script =
    'const tf = require(process.argv[1]);' +
    "if (tf.getBackend() !== 'tensorflow') throw new Error('backend ' + tf.getBackend());" +
    'tf.add(tf.scalar(1), tf.scalar(1)).data().then(() =>' +
    ' process.stdout.write(JSON.stringify({ tfVersion: tf.backend().binding.TF_Version })));';
  // INFO lines on: TensorFlow names the GPUs it creates devices for there
  const r = spawnSync(process.execPath, ['-e', script, pkg], { cwd, env: { ...env, TF_CPP_MIN_LOG_LEVEL: '0' }, encoding: 'utf8', timeout: 120_000 });
  const gpus = parseTensorflowGpus(r.stderr ?? '');
  if (r.status === 0) {
    try {
      return { ok: true, tfVersion: JSON.parse(r.stdout).tfVersion, gpus };
    } catch {
      // fall through: unreadable output
    }
  }
  const lines = `${r.stderr ?? ''}`.split('\n').filter((l) => /Error/.test(l));
  return { ok: false, gpus, error: lines.slice(0, 2).join(' ').trim() || `exit code ${r.status}${r.error ? ` (${r.error.message})` : ''}` };
}

export const SETUP_HINT = 'npx medtune setup tensorflow';

/** TensorFlow's thread pools as they are (or will be) for this process: read once, when the addon loads. */
export function tensorflowThreads(): { intraOp: number; interOp: number } {
  const n = (v: string | undefined) => (v && Number(v) > 0 ? Number(v) : availableParallelism());
  return { intraOp: n(process.env.TF_NUM_INTRAOP_THREADS), interOp: n(process.env.TF_NUM_INTEROP_THREADS) };
}

let loaded: '@tensorflow/tfjs-node' | '@tensorflow/tfjs-node-gpu' | undefined;

/**
 * Sets TensorFlow's intra- and inter-op pool sizes (`backend_threads`; default all cores) and hides
 * its INFO log lines, before the addon loads: TensorFlow reads them once per process.
 */
function prepareEnvironment(threads: number | undefined): void {
  if (loaded) {
    if (threads && tensorflowThreads().intraOp !== threads) {
      process.stderr.write(`medtune: TensorFlow already runs with ${tensorflowThreads().intraOp} threads in this process; backend_threads=${threads} applies to a new process\n`);
    }
    return;
  }
  const n = String(threads ?? availableParallelism());
  process.env.TF_NUM_INTRAOP_THREADS = n;
  process.env.TF_NUM_INTEROP_THREADS = n;
  process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
}

function describe(pkg: string, device: string): string {
  const version = (tf.backend() as unknown as { binding?: { TF_Version?: string } }).binding?.TF_Version ?? '?';
  const { intraOp } = tensorflowThreads();
  return `${device}, native TensorFlow ${version} (${pkg.split('/')[1]}), ${intraOp} thread${intraOp === 1 ? '' : 's'}`;
}

/** tfjs-node-gpu on a CUDA GPU; throws saying why not (no GPU, package absent or broken). */
export async function useTensorflowGpu(threads?: number): Promise<BackendChoice> {
  const pkg = '@tensorflow/tfjs-node-gpu';
  const gpus = cudaGpus();
  if (gpus.length === 0) throw new Error('no NVIDIA GPU (no /proc/driver/nvidia/gpus)');
  if (loaded === '@tensorflow/tfjs-node') throw new Error('@tensorflow/tfjs-node (CPU) is already loaded in this process');
  prepareEnvironment(threads);
  try {
    await import(pkg as string);
  } catch (err) {
    if (isNotInstalled(err, pkg)) throw new Error(`${pkg} is not installed (\`${SETUP_HINT} --gpu\` builds it for CUDA 12)`);
    throw new Error(`${pkg} is installed but failed to load: ${(err as Error).message}`);
  }
  loaded = pkg;
  (await import('./tensorflow-kernels.js')).registerTensorflowKernels();
  await activate('tensorflow');
  return { backend: 'tensorflow', device: describe(pkg, `CUDA ${gpus.join(', ')}`) };
}

/** tfjs-node on the CPU; throws saying why not, with how to get it. */
export async function useTensorflowCpu(threads?: number): Promise<BackendChoice> {
  const pkg = '@tensorflow/tfjs-node';
  if (loaded === '@tensorflow/tfjs-node-gpu') {
    await activate('tensorflow');
    return { backend: 'tensorflow', device: describe(loaded, 'GPU build') };
  }
  prepareEnvironment(threads);
  try {
    await import(pkg as string);
  } catch (err) {
    if (isNotInstalled(err, pkg)) {
      throw new Error(
        `backend 'tensorflow' needs the optional package ${pkg} (native TensorFlow), which is not installed: ` +
          `run \`${SETUP_HINT}\` (builds it against a current TensorFlow; or \`npm install ${pkg}\` where its prebuilt download works)`,
      );
    }
    throw new Error(`${pkg} is installed but failed to load (\`${SETUP_HINT} --force\` rebuilds it): ${(err as Error).message}`);
  }
  loaded = pkg;
  (await import('./tensorflow-kernels.js')).registerTensorflowKernels();
  await activate('tensorflow');
  return { backend: 'tensorflow', device: describe(pkg, cpuDevice()) };
}

/** `backend: tensorflow`: the GPU build with a CUDA GPU when it loads, else tfjs-node on the CPU. */
export async function useTensorflow(threads?: number): Promise<BackendChoice> {
  if (cudaGpus().length > 0) {
    try {
      return await useTensorflowGpu(threads);
    } catch (err) {
      if (!/is not installed/.test((err as Error).message)) process.stderr.write(`medtune: ${(err as Error).message}; trying @tensorflow/tfjs-node\n`);
    }
  }
  return useTensorflowCpu(threads);
}
