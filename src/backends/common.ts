/** Pieces shared by the backend loaders in this folder. */
import * as tf from '@tensorflow/tfjs-core';

export interface BackendChoice {
  /** the tfjs backend now active: 'tensorflow' | 'webgpu' | 'wasm' | 'cpu' */
  backend: string;
  /** what it runs on, in words */
  device: string;
}

export function isNotInstalled(err: unknown, pkg: string): boolean {
  const e = err as NodeJS.ErrnoException;
  return (e?.code === 'ERR_MODULE_NOT_FOUND' || e?.code === 'MODULE_NOT_FOUND') && String(e.message).includes(pkg);
}

export function installHint(pkg: string, what: string): Error {
  return new Error(`backend '${what}' needs the optional package ${pkg}, which is not installed: run \`npm install ${pkg}\``);
}

/** Make `name` the active tfjs backend, or throw saying it failed. */
export async function activate(name: string): Promise<void> {
  let ok: boolean;
  try {
    ok = await tf.setBackend(name);
  } catch (err) {
    throw new Error(`backend '${name}' failed to initialise: ${(err as Error).message}`);
  }
  if (!ok || tf.getBackend() !== name) throw new Error(`backend '${name}' failed to initialise`);
  await tf.ready();
  throwKernelErrorsWhenTimed(tf.backend());
}

const timingWrapped = new WeakSet<tf.KernelBackend>();

/**
 * tfjs backends time a kernel in an async `time(f)`, so under `tf.profile` (the dry run's peak
 * bytes) a kernel that throws — a heap that is full — turns into a rejected promise nobody reads,
 * and the profiler goes on to fail on the missing outputs with a TypeError. The kernel's own
 * error is thrown instead.
 */
function throwKernelErrorsWhenTimed(backend: tf.KernelBackend): void {
  if (timingWrapped.has(backend)) return;
  timingWrapped.add(backend);
  const time = backend.time.bind(backend);
  backend.time = (f: () => void) => {
    let failed: { error: unknown } | undefined;
    const timing = time(() => {
      try {
        f();
      } catch (error) {
        failed = { error };
        throw error;
      }
    });
    if (failed) {
      timing.catch(() => {}); // the same error, thrown below
      throw failed.error;
    }
    return timing;
  };
}

/** Registers `kernelFunc` as `backendName`'s kernel under a name of medtune's own (no tfjs kernel to keep); a second call replaces the first. */
export function registerOwnKernel(kernelName: string, backendName: string, kernelFunc: tf.KernelFunc): void {
  if (tf.getKernel(kernelName, backendName)) tf.unregisterKernel(kernelName, backendName);
  tf.registerKernel({ kernelName, backendName, kernelFunc });
}

export function cpuDevice(): string {
  return `CPU (${process.arch})`;
}

/**
 * tfjs flag: the largest attention score tensor (bytes) the active backend takes; TfOps computes
 * attention in query chunks below it. WebGPU: the device's largest storage binding. wasm: a
 * slice of its 4 GiB heap, since a softmax gradient holds several score-sized tensors at once.
 */
export const ATTENTION_BUDGET_FLAG = 'MEDTUNE_ATTENTION_BYTES';

export function setAttentionBudget(bytes: number): void {
  if (!(ATTENTION_BUDGET_FLAG in tf.env().getFlags())) tf.env().registerFlag(ATTENTION_BUDGET_FLAG, () => Number.POSITIVE_INFINITY);
  tf.env().set(ATTENTION_BUDGET_FLAG, bytes);
}
