/**
 * Choosing the TensorFlow.js backend. Each backend's loader lives in src/backends/<name>.ts and is
 * loaded with dynamic import() so the CLI runs without the optional packages.
 *
 * - `tensorflow`: @tensorflow/tfjs-node-gpu when it loads and a CUDA GPU is present, else
 *   @tensorflow/tfjs-node (native TensorFlow on the CPU).
 * - `webgpu`: @tensorflow/tfjs-backend-webgpu over the `webgpu` package (Dawn; Vulkan on Linux).
 * - `wasm`: @tensorflow/tfjs-backend-wasm (SIMD), with CPU fallbacks for its missing gradient kernels.
 * - `cpu`: @tensorflow/tfjs-backend-cpu, plain JavaScript; always available.
 * - `auto`: tfjs-node-gpu with a CUDA GPU, then tfjs-node, then cpu.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendChoice } from './backends/common.js';

export type { BackendChoice } from './backends/common.js';
export type BackendName = 'auto' | 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';
export const BACKEND_NAMES: readonly BackendName[] = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'];

export interface SelectOptions {
  /** do not print the choice */
  quiet?: boolean;
}

// The backend is chosen here and printed once; silence tfjs's own 'install tfjs-node' banner.
tf.env().set('PROD', true);

const announced = new Set<string>();

/**
 * Make `name` the active tfjs backend and report what it runs on. Explicit backends that are not
 * installed throw an Error that says how to install them. The choice is printed (to stderr)
 * once per process.
 */
export async function selectBackend(name: BackendName, opts: SelectOptions = {}): Promise<BackendChoice> {
  let choice: BackendChoice;
  switch (name) {
    case 'cpu':
      choice = await (await import('./backends/cpu.js')).useCpu();
      break;
    case 'wasm':
      choice = await (await import('./backends/wasm.js')).useWasm();
      break;
    case 'webgpu':
      choice = await (await import('./backends/webgpu.js')).useWebgpu();
      break;
    case 'tensorflow':
      choice = await (await import('./backends/tensorflow.js')).useTensorflow(true);
      break;
    case 'auto':
      try {
        choice = await (await import('./backends/tensorflow.js')).useTensorflow(true);
      } catch (err) {
        // not installed is the normal case; a broken install deserves a word
        if (!/is not installed/.test((err as Error).message)) {
          process.stderr.write(`medtune: native TensorFlow unavailable (${(err as Error).message}); using cpu\n`);
        }
        choice = await (await import('./backends/cpu.js')).useCpu();
      }
      break;
    default:
      throw new Error(`unknown backend '${String(name)}'; choose one of ${BACKEND_NAMES.join(', ')}`);
  }
  const line = `medtune: backend ${choice.backend} on ${choice.device}`;
  if (!opts.quiet && !announced.has(line)) {
    process.stderr.write(`${line}\n`);
    announced.add(line);
  }
  return choice;
}
